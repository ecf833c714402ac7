//! The admin API client behind `tollgate keys ...` and `tollgate teams
//! ...`: one plain-HTTP/1.1 request to `admin_listen` (which serves plain
//! HTTP), so an operator needs no curl.

use super::AdminCall;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Longest answer read.
const MAX_ANSWER: u64 = 64 * 1024 * 1024;

/// The admin key: from `key_file` (trimmed), else `TOLLGATE_ADMIN_KEY`.
pub fn admin_key(call: &AdminCall) -> Result<String, String> {
    let key = match &call.key_file {
        Some(f) => std::fs::read_to_string(f)
            .map_err(|e| format!("--admin-key-file {}: {e}", f.display()))?
            .trim()
            .to_string(),
        None => std::env::var("TOLLGATE_ADMIN_KEY").unwrap_or_default(),
    };
    if key.is_empty() {
        return Err("no admin key: set TOLLGATE_ADMIN_KEY or pass --admin-key-file FILE".into());
    }
    Ok(key)
}

/// Makes the call; returns the status and the body.
pub fn call(c: &AdminCall, key: &str) -> Result<(u16, String), String> {
    let rest = c
        .admin
        .strip_prefix("http://")
        .ok_or("--admin must be an http:// URL (admin_listen serves plain HTTP)")?;
    let authority = rest.split('/').next().unwrap_or(rest);
    let addr = authority
        .to_socket_addrs()
        .map_err(|e| format!("--admin {authority}: {e}"))?
        .next()
        .ok_or(format!("--admin {authority}: no address"))?;
    let timeout = Duration::from_secs(30);
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("cannot reach the admin API at {authority}: {e}"))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let body = c.body.as_ref().map(|b| b.to_string()).unwrap_or_default();
    let head = format!(
        "{} {} HTTP/1.1\r\nHost: {authority}\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        c.method,
        c.path,
        body.len()
    );
    s.write_all(head.as_bytes())
        .and_then(|()| s.write_all(body.as_bytes()))
        .map_err(|e| format!("sending to the admin API: {e}"))?;
    let mut raw = Vec::new();
    s.take(MAX_ANSWER)
        .read_to_end(&mut raw)
        .map_err(|e| format!("reading the admin API's answer: {e}"))?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("the admin API's answer has no header")?;
    let header = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = header
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or("the admin API's answer has no status")?;
    let mut body = raw[split + 4..].to_vec();
    let chunked = header.lines().any(|l| {
        l.to_ascii_lowercase().starts_with("transfer-encoding:")
            && l.to_ascii_lowercase().contains("chunked")
    });
    if chunked {
        body = dechunk(&body);
    }
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&b[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok())
            .unwrap_or(0);
        if size == 0 || b.len() < eol + 2 + size {
            break;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[(eol + 4 + size).min(b.len())..];
    }
    out
}

/// Runs a `keys`/`teams` command: prints the answer (pretty JSON) and
/// returns whether it succeeded.
pub fn run(c: &AdminCall) -> Result<bool, String> {
    let key = admin_key(c)?;
    let (status, body) = call(c, &key)?;
    let shown = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or(body);
    if (200..300).contains(&status) {
        println!("{shown}");
        Ok(true)
    } else {
        eprintln!("error: the admin API answered {status}:\n{shown}");
        Ok(false)
    }
}
