//! A mock Bedrock runtime speaking the real protocol: it verifies each
//! request's SigV4 signature by recomputing it from the spec with `hmac` +
//! `sha2` (independently of the `aws-sigv4` crate the gateway signs with),
//! or a Bedrock API key (`Authorization: Bearer`), and serves `Converse`
//! (JSON) and `ConverseStream` as real event-stream frames (prelude,
//! string headers, payload, CRC32s; encoded here with `crc32fast`), the
//! bytes cut at random offsets into chunks. Faults can be injected: a bad
//! CRC, a truncated frame, an oversized frame, throttling.

use super::mini_server::{MiniBody, MiniReply, MiniRequest, MiniServer};
use bytes::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Something to break in the next answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    /// Flip a byte of the third frame's message CRC.
    BadCrc,
    /// Stop 5 bytes before the end of the last frame.
    Truncated,
    /// Append a frame whose prelude announces 32 MiB (and send 64 KiB of it).
    Oversized,
    /// Answer 429 `ThrottlingException`.
    Throttle,
    /// Answer 400 `ValidationException` (with a message naming a field).
    Validation,
    /// Answer 403 `AccessDeniedException` (with a message quoting an ARN).
    AccessDenied,
}

#[derive(Default)]
struct State {
    /// Access key id → (secret, session token required).
    keys: HashMap<String, (String, Option<String>)>,
    api_keys: Vec<String>,
    converse: String,
    /// `[event-type, payload]` JSON Lines.
    stream: String,
    fault: Option<Fault>,
    seed: u64,
    requests: Vec<MiniRequest>,
    rejected: Vec<String>,
}

/// The mock; clones share its state.
#[derive(Clone)]
pub struct BedrockMock {
    state: Arc<Mutex<State>>,
    server: Arc<MiniServer>,
}

impl BedrockMock {
    pub async fn start(converse: &str, stream_jsonl: &str) -> Self {
        let state = Arc::new(Mutex::new(State {
            converse: converse.into(),
            stream: stream_jsonl.into(),
            seed: 1,
            ..State::default()
        }));
        let st = state.clone();
        let server = MiniServer::start(move |r| answer(&st, r)).await;
        Self {
            state,
            server: Arc::new(server),
        }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    /// `host:port` as the client sends it in `Host`.
    pub fn host(&self) -> String {
        self.server.addr.to_string()
    }

    /// Accepts SigV4 signatures made with this key pair (and token).
    pub fn allow_key(&self, id: &str, secret: &str, token: Option<&str>) {
        self.state
            .lock()
            .unwrap()
            .keys
            .insert(id.into(), (secret.into(), token.map(str::to_string)));
    }

    /// Accepts `Authorization: Bearer <key>`.
    pub fn allow_api_key(&self, key: &str) {
        self.state.lock().unwrap().api_keys.push(key.into());
    }

    pub fn set_fault(&self, f: Fault) {
        self.state.lock().unwrap().fault = Some(f);
    }

    /// Seed of the random chunk boundaries.
    pub fn set_seed(&self, seed: u64) {
        self.state.lock().unwrap().seed = seed.max(1);
    }

    pub fn requests(&self) -> Vec<MiniRequest> {
        self.state.lock().unwrap().requests.clone()
    }

    /// Why requests were refused (bad signature, unknown key…).
    pub fn rejected(&self) -> Vec<String> {
        self.state.lock().unwrap().rejected.clone()
    }
}

fn error(status: u16, kind: &str, message: &str) -> MiniReply {
    MiniReply::json(
        status,
        serde_json::json!({ "message": message }).to_string(),
    )
    .with_header(
        "x-amzn-errortype",
        &format!("{kind}:http://internal.amazon.com/coral/com.amazon.bedrock/"),
    )
}

fn answer(st: &Arc<Mutex<State>>, r: MiniRequest) -> MiniReply {
    let mut s = st.lock().unwrap();
    s.requests.push(r.clone());
    if let Err(why) = authenticate(&s, &r) {
        s.rejected.push(why.clone());
        let kind = if why.starts_with("signature") {
            "InvalidSignatureException"
        } else {
            "UnrecognizedClientException"
        };
        return error(403, kind, &why);
    }
    let fault = s.fault.unwrap_or(Fault::None);
    if fault == Fault::Throttle {
        return error(
            429,
            "ThrottlingException",
            "Too many requests, please wait before trying again.",
        );
    }
    if fault == Fault::Validation {
        return error(
            400,
            "ValidationException",
            "messages.0.content: Conversation blocks must not be blank",
        );
    }
    if fault == Fault::AccessDenied {
        return error(
            403,
            "AccessDeniedException",
            "User arn:aws:iam::123456789012:user/gw is not authorized to invoke model",
        );
    }
    let path = r.path.split('?').next().unwrap_or("");
    if r.method != "POST" || !path.starts_with("/model/") {
        return error(404, "UnknownOperationException", "unknown operation");
    }
    if path.ends_with("/invoke") {
        if path.contains("cohere.embed") {
            return MiniReply::json(200, include_str!("../fixtures/bedrock/cohere_embed.json"))
                .with_header("x-amzn-bedrock-input-token-count", "7");
        }
        if path.contains("amazon.titan-embed") {
            return MiniReply::json(200, include_str!("../fixtures/bedrock/titan_embed.json"));
        }
        return error(400, "ValidationException", "not an embedding model");
    }
    if path.ends_with("/converse") {
        return MiniReply::json(200, s.converse.clone());
    }
    if !path.ends_with("/converse-stream") {
        return error(404, "UnknownOperationException", "unknown operation");
    }
    let mut bytes = Vec::new();
    let mut ends = Vec::new();
    for line in s.stream.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).expect("jsonl");
        bytes.extend(frame(
            &[
                (":event-type", v[0].as_str().unwrap()),
                (":content-type", "application/json"),
                (":message-type", "event"),
            ],
            v[1].to_string().as_bytes(),
        ));
        ends.push(bytes.len());
    }
    match fault {
        Fault::BadCrc => {
            let at = ends[2] - 1;
            bytes[at] ^= 0x5a;
        }
        Fault::Truncated => {
            bytes.truncate(bytes.len() - 5);
        }
        Fault::Oversized => {
            bytes.extend_from_slice(&(32u32 * 1024 * 1024).to_be_bytes());
            bytes.extend_from_slice(&[0u8; 64 * 1024]);
        }
        _ => {}
    }
    let chunks = split_random(&bytes, &mut s.seed);
    MiniReply {
        status: 200,
        headers: vec![(
            "content-type".into(),
            "application/vnd.amazon.eventstream".into(),
        )],
        body: MiniBody::Chunks(chunks, Duration::from_millis(1)),
    }
}

/// Cuts `bytes` at random offsets (1 to 40 bytes apart).
fn split_random(bytes: &[u8], seed: &mut u64) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        // xorshift64
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        let n = 1 + (*seed % 40) as usize;
        let end = (at + n).min(bytes.len());
        out.push(Bytes::copy_from_slice(&bytes[at..end]));
        at = end;
    }
    out
}

/// Encodes one event-stream frame with string headers.
pub fn frame(headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::new();
    for (k, v) in headers {
        h.push(k.len() as u8);
        h.extend_from_slice(k.as_bytes());
        h.push(7); // string
        h.extend_from_slice(&(v.len() as u16).to_be_bytes());
        h.extend_from_slice(v.as_bytes());
    }
    let total = 12 + h.len() + payload.len() + 4;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&(total as u32).to_be_bytes());
    out.extend_from_slice(&(h.len() as u32).to_be_bytes());
    let prelude_crc = crc32fast::hash(&out);
    out.extend_from_slice(&prelude_crc.to_be_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(payload);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

fn authenticate(s: &State, r: &MiniRequest) -> Result<(), String> {
    let auth = r.header("authorization").ok_or("no authorization header")?;
    if let Some(key) = auth.strip_prefix("Bearer ") {
        return if s.api_keys.iter().any(|k| k == key) {
            Ok(())
        } else {
            Err("unknown API key".into())
        };
    }
    verify_sigv4(s, r, auth)
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("hmac key");
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// URI-encodes a path segment the SigV4 way (unreserved bytes kept).
fn uri_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Recomputes the signature from the spec (docs "Create a canonical request
/// for Signature Version 4"): non-S3 services encode each path segment
/// once more.
fn verify_sigv4(s: &State, r: &MiniRequest, auth: &str) -> Result<(), String> {
    let rest = auth
        .strip_prefix("AWS4-HMAC-SHA256 ")
        .ok_or("not AWS4-HMAC-SHA256")?;
    let mut cred = None;
    let mut signed = None;
    let mut sig = None;
    for part in rest.split(", ") {
        if let Some(v) = part.strip_prefix("Credential=") {
            cred = Some(v);
        } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
            signed = Some(v);
        } else if let Some(v) = part.strip_prefix("Signature=") {
            sig = Some(v);
        }
    }
    let (cred, signed, sig) = (
        cred.ok_or("no Credential")?,
        signed.ok_or("no SignedHeaders")?,
        sig.ok_or("no Signature")?,
    );
    let mut c = cred.split('/');
    let (id, date, region, service, term) = (
        c.next().unwrap_or(""),
        c.next().unwrap_or(""),
        c.next().unwrap_or(""),
        c.next().unwrap_or(""),
        c.next().unwrap_or(""),
    );
    if term != "aws4_request" || service != "bedrock" {
        return Err(format!(
            "bad credential scope {date}/{region}/{service}/{term}"
        ));
    }
    let (secret, token) = s
        .keys
        .get(id)
        .ok_or_else(|| format!("unknown access key {id}"))?;
    if let Some(t) = token {
        if r.header("x-amz-security-token") != Some(t.as_str()) {
            return Err("missing or wrong x-amz-security-token".into());
        }
    }
    let amz_date = r.header("x-amz-date").ok_or("no x-amz-date")?;
    if !amz_date.starts_with(date) {
        return Err("x-amz-date does not match the scope date".into());
    }
    let names: Vec<&str> = signed.split(';').collect();
    for must in ["host", "x-amz-date"] {
        if !names.contains(&must) {
            return Err(format!("{must} is not signed"));
        }
    }
    if token.is_some() && !names.contains(&"x-amz-security-token") {
        return Err("x-amz-security-token is not signed".into());
    }
    let (path, query) = r.path.split_once('?').unwrap_or((&r.path, ""));
    let canonical_uri = path
        .split('/')
        .map(uri_encode)
        .collect::<Vec<_>>()
        .join("/");
    let mut q: Vec<&str> = query.split('&').filter(|p| !p.is_empty()).collect();
    q.sort_unstable();
    let mut headers = String::new();
    for n in &names {
        let v = r
            .header(n)
            .ok_or_else(|| format!("signed header {n} not sent"))?;
        let v = v.split_whitespace().collect::<Vec<_>>().join(" ");
        headers.push_str(&format!("{n}:{v}\n"));
    }
    let payload = sha256_hex(&r.body);
    let creq = format!(
        "{}\n{canonical_uri}\n{}\n{headers}\n{signed}\n{payload}",
        r.method,
        q.join("&")
    );
    let sts = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{date}/{region}/{service}/aws4_request\n{}",
        sha256_hex(creq.as_bytes())
    );
    let k = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k = hmac(&k, region.as_bytes());
    let k = hmac(&k, service.as_bytes());
    let k = hmac(&k, b"aws4_request");
    let want = hex::encode(hmac(&k, sts.as_bytes()));
    if want != sig {
        return Err("signature does not match".into());
    }
    Ok(())
}
