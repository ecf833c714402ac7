//! A raw HTTP/1.1 client on a TCP socket, for framing tests: the bytes on
//! the wire are exactly the ones the test writes, and it reads responses
//! (Content-Length, chunked or close-delimited) and how the connection ends.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::assert::{assert_error, find, text};

/// One response as read off the wire.
#[derive(Debug)]
pub struct RawResp {
    pub status: u16,
    /// Lowercase names.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    #[track_caller]
    pub fn assert_error(&self, want: (u16, &str, &str)) -> Value {
        assert_error(self.status, &self.body, want)
    }
}

/// How a connection ended after the last response.
#[derive(Debug, PartialEq)]
pub enum End {
    /// EOF or reset.
    Closed,
    /// More bytes arrived.
    Data(Vec<u8>),
    /// Still open when the wait ended.
    Open,
}

pub struct Raw {
    /// The socket (tests may write to it directly).
    pub s: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    pub async fn connect(addr: &str) -> Raw {
        let s = TcpStream::connect(addr).await.expect("connect to gateway");
        s.set_nodelay(true).expect("nodelay");
        Raw { s, buf: Vec::new() }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).await.expect("write request");
        self.s.flush().await.expect("flush");
    }

    /// Reads more into `buf`; `Ok(0)` on EOF.
    pub async fn fill(&mut self, deadline: tokio::time::Instant) -> Result<usize, String> {
        let mut tmp = vec![0u8; 64 * 1024];
        match tokio::time::timeout_at(deadline, self.s.read(&mut tmp)).await {
            Err(_) => Err("timed out".into()),
            Ok(Err(e)) => Err(format!("read error: {e}")),
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&tmp[..n]);
                Ok(n)
            }
        }
    }

    /// Reads one complete response (Content-Length or chunked body).
    pub async fn response(&mut self, timeout: Duration) -> Result<RawResp, String> {
        let deadline = tokio::time::Instant::now() + timeout;
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i;
            }
            match self.fill(deadline).await {
                Ok(0) => {
                    return Err(format!(
                        "closed before a complete response header; got {:?}",
                        text(&self.buf)
                    ))
                }
                Ok(_) => {}
                Err(e) => return Err(format!("{e}; got {:?}", text(&self.buf))),
            }
        };
        let head = text(&self.buf[..head_end]);
        self.buf.drain(..head_end + 4);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line {status_line:?}"))?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let mut resp = RawResp {
            status,
            headers,
            body: Vec::new(),
        };
        if status == 101 || status == 204 || status == 304 || (100..200).contains(&status) {
            return Ok(resp);
        }
        if let Some(n) = resp.header("content-length") {
            let n: usize = n.parse().map_err(|_| format!("bad content-length {n}"))?;
            while self.buf.len() < n {
                match self.fill(deadline).await {
                    Ok(0) => return Err(format!("closed inside the body: {resp:?}")),
                    Ok(_) => {}
                    Err(e) => return Err(format!("{e} inside the body: {resp:?}")),
                }
            }
            resp.body = self.buf.drain(..n).collect();
        } else if resp
            .header("transfer-encoding")
            .is_some_and(|t| t.eq_ignore_ascii_case("chunked"))
        {
            loop {
                let line_end = loop {
                    if let Some(i) = find(&self.buf, b"\r\n") {
                        break i;
                    }
                    if self.fill(deadline).await.map_err(|e| e.to_string())? == 0 {
                        return Err("closed inside a chunked body".into());
                    }
                };
                let size_text = text(&self.buf[..line_end]);
                let size =
                    usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                        .map_err(|_| format!("bad chunk size {size_text:?}"))?;
                while self.buf.len() < line_end + 2 + size + 2 {
                    if self.fill(deadline).await.map_err(|e| e.to_string())? == 0 {
                        return Err("closed inside a chunk".into());
                    }
                }
                let chunk: Vec<u8> = self.buf[line_end + 2..line_end + 2 + size].to_vec();
                self.buf.drain(..line_end + 2 + size + 2);
                if size == 0 {
                    break;
                }
                resp.body.extend_from_slice(&chunk);
            }
        } else {
            // Delimited by close.
            loop {
                match self.fill(deadline).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            resp.body = std::mem::take(&mut self.buf);
        }
        Ok(resp)
    }

    /// Waits up to `timeout` to see whether the peer closes the connection.
    pub async fn end(&mut self, timeout: Duration) -> End {
        let deadline = tokio::time::Instant::now() + timeout;
        if !self.buf.is_empty() {
            return End::Data(std::mem::take(&mut self.buf));
        }
        match self.fill(deadline).await {
            Ok(0) => End::Closed,
            Ok(_) => End::Data(std::mem::take(&mut self.buf)),
            Err(e) if e.starts_with("read error") => End::Closed,
            Err(_) => End::Open,
        }
    }
}

/// `body` as chunked transfer coding in pieces of `piece` bytes, with or
/// without the final `0` chunk.
pub fn chunked(body: &[u8], piece: usize, terminate: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for c in body.chunks(piece) {
        out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        out.extend_from_slice(c);
        out.extend_from_slice(b"\r\n");
    }
    if terminate {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    out
}
