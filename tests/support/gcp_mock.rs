//! A mock Google OAuth token endpoint and Vertex AI API on one server.
//!
//! `POST /token` takes `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`
//! and an `assertion`, verifies the JWT's RS256 signature against the test
//! service account's public key (with `ring`, independently of the
//! `jsonwebtoken` crate that signs), and its claims (`iss`, `scope`, `aud` =
//! this endpoint's URL, `iat` near now, `exp` at most an hour later), then
//! issues `ya29.mock-<n>` valid for `expires_in` seconds (settable, so a
//! test can force refreshes). Vertex paths (`/v1/projects/…:method`) answer
//! only a bearer token it issued that has not expired.

use super::mini_server::{MiniReply, MiniRequest, MiniServer};
use base64::Engine as _;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The test service account's public key (PKCS#1 DER).
pub const PUBLIC_KEY: &[u8] = include_bytes!("../fixtures/gcp/test-sa-public.der");
/// Its key file.
pub const KEY_FILE: &str = include_str!("../fixtures/gcp/test-sa.json");
pub const CLIENT_EMAIL: &str = "gateway@tollgate-test.iam.gserviceaccount.com";

#[derive(Default)]
struct State {
    /// Token → when it stops working.
    tokens: HashMap<String, Instant>,
    /// Vertex calls: (path, body).
    calls: Vec<MiniRequest>,
    rejected: Vec<String>,
    /// Answers by method (`rawPredict`, `streamRawPredict`,
    /// `generateContent`, `streamGenerateContent`), overriding the
    /// built-in ones; SSE answers are cut into 17-byte chunks.
    answers: HashMap<String, String>,
    /// Every Vertex call answers this status (a JSON error) instead.
    fault: Option<u16>,
}

pub struct GcpMock {
    server: MiniServer,
    state: Arc<Mutex<State>>,
    token_hits: Arc<AtomicUsize>,
    expires_in: Arc<AtomicU64>,
    fail: Arc<AtomicBool>,
}

fn check_assertion(jwt: &str, aud: &str) -> Result<(), String> {
    let parts: Vec<&str> = jwt.split('.').collect();
    if parts.len() != 3 {
        return Err("not a JWS".into());
    }
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header: serde_json::Value =
        serde_json::from_slice(&b64.decode(parts[0]).map_err(|_| "header b64")?)
            .map_err(|_| "header json")?;
    if header["alg"] != "RS256" {
        return Err("alg is not RS256".into());
    }
    let sig = b64.decode(parts[2]).map_err(|_| "signature b64")?;
    ring::signature::UnparsedPublicKey::new(
        &ring::signature::RSA_PKCS1_2048_8192_SHA256,
        PUBLIC_KEY,
    )
    .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &sig)
    .map_err(|_| "bad signature")?;
    let c: serde_json::Value =
        serde_json::from_slice(&b64.decode(parts[1]).map_err(|_| "claims b64")?)
            .map_err(|_| "claims json")?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let iat = c["iat"].as_i64().ok_or("no iat")?;
    let exp = c["exp"].as_i64().ok_or("no exp")?;
    if c["iss"] != CLIENT_EMAIL {
        return Err("wrong iss".into());
    }
    if c["scope"] != "https://www.googleapis.com/auth/cloud-platform" {
        return Err("wrong scope".into());
    }
    if c["aud"] != aud {
        return Err(format!("wrong aud {}", c["aud"]));
    }
    if (iat - now).abs() > 300 {
        return Err("iat not near now".into());
    }
    if exp <= iat || exp - iat > 3600 {
        return Err("exp not within an hour of iat".into());
    }
    Ok(())
}

impl GcpMock {
    pub async fn start(expires_in: Duration) -> Self {
        let state = Arc::new(Mutex::new(State::default()));
        let token_hits = Arc::new(AtomicUsize::new(0));
        let exp = Arc::new(AtomicU64::new(expires_in.as_secs()));
        let fail = Arc::new(AtomicBool::new(false));
        let (st, hits, e, f) = (state.clone(), token_hits.clone(), exp.clone(), fail.clone());
        let aud: Arc<Mutex<String>> = Arc::new(Mutex::new(String::new()));
        let aud2 = aud.clone();
        let server = MiniServer::start(move |r| {
            let path = r.path.split('?').next().unwrap_or("").to_string();
            if path == "/token" {
                let n = hits.fetch_add(1, Ordering::SeqCst) + 1;
                if f.load(Ordering::SeqCst) {
                    return MiniReply::json(500, r#"{"error":"internal_failure"}"#);
                }
                let form = r.form();
                let get = |k: &str| form.iter().find(|(a, _)| a == k).map(|(_, v)| v.clone());
                if get("grant_type").as_deref() != Some("urn:ietf:params:oauth:grant-type:jwt-bearer") {
                    return MiniReply::json(400, r#"{"error":"unsupported_grant_type"}"#);
                }
                let aud = aud2.lock().unwrap().clone();
                if let Err(why) = check_assertion(&get("assertion").unwrap_or_default(), &aud) {
                    st.lock().unwrap().rejected.push(why);
                    return MiniReply::json(400, r#"{"error":"invalid_grant","error_description":"Invalid JWT Signature."}"#);
                }
                let secs = e.load(Ordering::SeqCst);
                let token = format!("ya29.mock-{n}");
                st.lock().unwrap().tokens.insert(token.clone(), Instant::now() + Duration::from_secs(secs));
                return MiniReply::json(200, format!(
                    r#"{{"access_token":"{token}","expires_in":{secs},"token_type":"Bearer"}}"#
                ));
            }
            let mut s = st.lock().unwrap();
            s.calls.push(r.clone());
            let bearer = r.header("authorization").and_then(|a| a.strip_prefix("Bearer ")).unwrap_or("");
            match s.tokens.get(bearer) {
                Some(until) if Instant::now() < *until => {}
                _ => {
                    return MiniReply::json(401, r#"{"error":{"code":401,"message":"Request had invalid authentication credentials.","status":"UNAUTHENTICATED"}}"#);
                }
            }
            if !path.starts_with("/v1/projects/") {
                return MiniReply::json(404, r#"{"error":{"code":404,"status":"NOT_FOUND"}}"#);
            }
            if let Some(status) = s.fault {
                return MiniReply::json(status, format!(r#"{{"error":{{"code":{status},"message":"injected","status":"UNAVAILABLE"}}}}"#));
            }
            let method = path.rsplit(':').next().unwrap_or("").to_string();
            if let Some(body) = s.answers.get(&method) {
                if method.starts_with("stream") {
                    let chunks = body
                        .as_bytes()
                        .chunks(17)
                        .map(bytes::Bytes::copy_from_slice)
                        .collect();
                    return MiniReply {
                        status: 200,
                        headers: vec![("content-type".into(), "text/event-stream".into())],
                        body: super::mini_server::MiniBody::Chunks(chunks, Duration::from_millis(1)),
                    };
                }
                return MiniReply::json(200, body.clone());
            }
            if path.ends_with(":rawPredict") {
                return MiniReply::json(200, r#"{"id":"msg_vrtx_01","type":"message","role":"assistant","model":"claude-sonnet-4","content":[{"type":"text","text":"Hello from Claude on Vertex."}],"stop_reason":"end_turn","usage":{"input_tokens":12,"output_tokens":7}}"#);
            }
            if path.ends_with(":generateContent") {
                return MiniReply::json(200, r#"{"candidates":[{"content":{"role":"model","parts":[{"text":"Hello from Gemini on Vertex."}]},"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":5,"candidatesTokenCount":6,"totalTokenCount":11},"modelVersion":"gemini-2.5-flash"}"#);
            }
            MiniReply::json(404, r#"{"error":{"code":404,"status":"NOT_FOUND"}}"#)
        })
        .await;
        *aud.lock().unwrap() = format!("{}/token", server.url());
        Self {
            server,
            state,
            token_hits,
            expires_in: exp,
            fail,
        }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    /// The token endpoint URL (the JWT's `aud`).
    pub fn token_uri(&self) -> String {
        format!("{}/token", self.server.url())
    }

    pub fn token_hits(&self) -> usize {
        self.token_hits.load(Ordering::SeqCst)
    }

    pub fn set_expires_in(&self, d: Duration) {
        self.expires_in.store(d.as_secs(), Ordering::SeqCst);
    }

    pub fn set_fail(&self, fail: bool) {
        self.fail.store(fail, Ordering::SeqCst);
    }

    /// Answers `method` (`rawPredict`, `streamRawPredict`,
    /// `generateContent`, `streamGenerateContent`) with `body` (SSE for
    /// the stream methods).
    pub fn answer(&self, method: &str, body: &str) {
        self.state
            .lock()
            .unwrap()
            .answers
            .insert(method.into(), body.into());
    }

    /// Every Vertex call answers `status` (None: normal answers again).
    pub fn set_fault(&self, status: Option<u16>) {
        self.state.lock().unwrap().fault = status;
    }

    pub fn calls(&self) -> Vec<MiniRequest> {
        self.state.lock().unwrap().calls.clone()
    }

    pub fn rejected(&self) -> Vec<String> {
        self.state.lock().unwrap().rejected.clone()
    }
}
