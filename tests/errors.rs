//! Client-side bad input (`../shared/RELIABILITY.md` rows 1–15, except 13
//! which `headers` covers): the real gateway binary in front of mock
//! upstreams. Each test checks the status, the OpenAI error body
//! `{"error":{"message","type","param","code"}}` with the `type`/`code` from
//! `src/base/error.rs`, and that no rejected request reached any upstream.
//!
//! Framing rows (chunked bodies, stalls, slowloris, huge headers, smuggling,
//! upgrades, pipelining, odd request targets) use a raw TCP client so the
//! bytes on the wire are exactly the ones written here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use serde_json::{json, Value};
use support::prom;
use support::raw_client::{chunked, End, Raw};
use support::{assert_error, find, text, Behavior, Gateway, MockUpstream, CONFIG_HEAD};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// alice may use `fast` only.
const KEY: &str = "tg-errors-alice-key-0001";
/// bob may use every alias.
const KEY_BOB: &str = "tg-errors-bob-key-000002";
const PROVIDER_KEY: &str = "sk-provider-errors-secret-7f3a";
const MIB: u64 = 1024 * 1024;
/// Generous bound for anything that should be immediate (2 shared cores).
const QUICK: Duration = Duration::from_secs(10);

/// One provider `up` (the mock at `port`), aliases `fast` and `restricted`,
/// keys alice (`fast` only) and bob (all). Body idle timeout 1 s, header
/// deadline 2 s.
fn config(port: u16, max_body: u64) -> String {
    format!(
        r#"{CONFIG_HEAD}max_body_bytes: {max_body}
downstream: {{ body_idle_timeout: 1s, header_timeout: 2s }}
providers:
  up:
    kind: openai
    base_url: "http://127.0.0.1:{port}/v1"
    api_key: "{PROVIDER_KEY}"
    health_check: {{ enabled: false }}
models:
  fast:
    routes: [ {{ provider: up, model: up-fast }} ]
  restricted:
    routes: [ {{ provider: up, model: up-restricted }} ]
keys:
  - {{ name: alice, key: "{KEY}", models: [fast] }}
  - {{ name: bob, key: "{KEY_BOB}" }}
"#
    )
}

/// A gateway, the configured upstream `up`, and `evil`: a server no config
/// names, which must never be contacted.
struct Env {
    gw: Gateway,
    up: MockUpstream,
    evil: MockUpstream,
}

impl Env {
    async fn start(max_body: u64) -> Env {
        let up = MockUpstream::start(Behavior::ChatEcho).await;
        // Apart from every test's ports: another test's gateway aiming at a
        // port it freed once reached an evil mock given that port.
        let evil = MockUpstream::start_apart(Behavior::ChatEcho).await;
        let gw = Gateway::start(&config(up.port(), max_body)).await;
        Env { gw, up, evil }
    }

    async fn raw(&self) -> Raw {
        Raw::connect(&self.gw.listen_addr()).await
    }

    /// POST /v1/chat/completions with reqwest; `(status, body)`.
    async fn post(&self, key: Option<&str>, body: impl Into<reqwest::Body>) -> (u16, Vec<u8>) {
        let mut req = support::client()
            .post(self.gw.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(body);
        if let Some(k) = key {
            req = req.header("authorization", format!("Bearer {k}"));
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("request failed: {e}; log:\n{}", self.gw.logs()));
        let status = resp.status().as_u16();
        (status, resp.bytes().await.expect("body").to_vec())
    }

    /// Neither upstream has seen a request.
    fn assert_no_upstream(&self, what: &str) {
        assert_eq!(
            self.up.hits(),
            0,
            "{what}: reached the upstream: {:?}",
            self.up.requests()
        );
        self.assert_evil_untouched(what);
    }

    fn assert_evil_untouched(&self, what: &str) {
        assert_eq!(
            self.evil.hits(),
            0,
            "{what}: reached an upstream that is not in the config: {:?}",
            self.evil.requests()
        );
    }

    /// The gateway still answers `/healthz` and proxies a valid request
    /// (which adds one hit on `up`).
    async fn assert_serving(&self) {
        let hits = self.up.hits();
        let r = support::client()
            .get(self.gw.url("/healthz"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("healthz failed: {e}; log:\n{}", self.gw.logs()));
        assert_eq!(r.status().as_u16(), 200);
        let (status, body) = self.post(Some(KEY), chat("fast")).await;
        assert_eq!(status, 200, "valid request: {}", text(&body));
        let v: Value = serde_json::from_slice(&body).expect("chat completion JSON");
        assert_eq!(v["model"], "up-fast");
        assert_eq!(
            self.up.hits(),
            hits + 1,
            "the valid request reached up once"
        );
    }
}

/// A small valid chat body for `model`.
fn chat(model: &str) -> String {
    json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}).to_string()
}

const BAD_REQUEST: (u16, &str, &str) = (400, "invalid_request_error", "invalid_request");
const INVALID_KEY: (u16, &str, &str) = (401, "authentication_error", "invalid_api_key");
const NOT_ALLOWED: (u16, &str, &str) = (403, "permission_error", "model_not_allowed");
const MODEL_NOT_FOUND: (u16, &str, &str) = (404, "invalid_request_error", "model_not_found");
const UNKNOWN_URL: (u16, &str, &str) = (404, "invalid_request_error", "unknown_url");
const WRONG_METHOD: (u16, &str, &str) = (405, "invalid_request_error", "method_not_allowed");
const TIMEOUT: (u16, &str, &str) = (408, "invalid_request_error", "request_timeout");
const TOO_LARGE: (u16, &str, &str) = (413, "invalid_request_error", "request_too_large");
const HEADER_TOO_LARGE: (u16, &str, &str) =
    (431, "invalid_request_error", "request_header_too_large");

/// `POST path` with the given extra header lines and a Content-Length body.
fn raw_post(path: &str, extra: &[&str], body: &str) -> Vec<u8> {
    let mut s = format!("POST {path} HTTP/1.1\r\nHost: tollgate.test\r\n");
    for h in extra {
        s.push_str(h);
        s.push_str("\r\n");
    }
    s.push_str("Content-Type: application/json\r\n");
    s.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.into_bytes()
}

fn bearer(key: &str) -> String {
    format!("Authorization: Bearer {key}")
}

// ---------------------------------------------------------------------------
// Row 1: body over max_body_bytes
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row01_body_over_limit_is_413_by_content_length_and_chunked() {
    let env = Env::start(1000).await;
    let big = json!({"model": "fast", "messages": [{"role": "user", "content": "x".repeat(2000)}]})
        .to_string();

    // Content-Length over the limit (reqwest sends it whole).
    let (status, body) = env.post(Some(KEY), big.clone()).await;
    let v = assert_error(status, &body, TOO_LARGE);
    assert!(
        v["error"]["message"].as_str().unwrap().contains("1000"),
        "the message names the limit: {v}"
    );

    // A huge Content-Length is refused from the header alone: no body byte
    // is ever sent, and the answer comes before the 1 s body-idle timeout
    // could turn it into a 408.
    let mut c = env.raw().await;
    c.send(
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\n{}\r\nContent-Type: application/json\r\nContent-Length: 10000000000\r\n\r\n",
            bearer(KEY)
        )
        .as_bytes(),
    )
    .await;
    let r = c
        .response(QUICK)
        .await
        .expect("413 for a huge Content-Length");
    r.assert_error(TOO_LARGE);
    assert_eq!(
        c.end(QUICK).await,
        End::Closed,
        "unread body: connection closed"
    );

    // Chunked over the limit, never terminated: the gateway must stop at
    // the limit and answer 413, not wait for the end (408) or forward it.
    let mut c = env.raw().await;
    let mut req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\n{}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
        bearer(KEY)
    )
    .into_bytes();
    req.extend_from_slice(&chunked(big.as_bytes(), 500, false));
    c.send(&req).await;
    let r = c.response(QUICK).await.expect("413 for a chunked body");
    r.assert_error(TOO_LARGE);
    assert_eq!(
        c.end(QUICK).await,
        End::Closed,
        "unread body: connection closed"
    );

    // Chunked over the limit and terminated.
    let mut c = env.raw().await;
    let mut req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\n{}\r\nTransfer-Encoding: chunked\r\n\r\n",
        bearer(KEY)
    )
    .into_bytes();
    req.extend_from_slice(&chunked(big.as_bytes(), 300, true));
    c.send(&req).await;
    c.response(QUICK)
        .await
        .expect("413 for a terminated chunked body")
        .assert_error(TOO_LARGE);

    env.assert_no_upstream("bodies over max_body_bytes");

    // Control: a chunked body under the limit goes through, rewritten.
    let small = chat("fast");
    let mut c = env.raw().await;
    let mut req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\n{}\r\nTransfer-Encoding: chunked\r\n\r\n",
        bearer(KEY)
    )
    .into_bytes();
    req.extend_from_slice(&chunked(small.as_bytes(), 16, true));
    c.send(&req).await;
    let r = c
        .response(QUICK)
        .await
        .expect("200 for a small chunked body");
    assert_eq!(r.status, 200, "{}", text(&r.body));
    let seen = env.up.last().expect("forwarded");
    assert_eq!(seen.json()["model"], "up-fast");
    assert_eq!(env.up.hits(), 1);
    env.assert_evil_untouched("chunked control");
}

// ---------------------------------------------------------------------------
// Row 2: body stalls
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row02_stalled_body_gets_408_after_body_idle_timeout() {
    let env = Env::start(MIB).await;
    for sent in [1000usize, 0] {
        let mut c = env.raw().await;
        let mut req = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\n{}\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n",
            bearer(KEY)
        )
        .into_bytes();
        let prefix = format!("{{\"model\":\"fast\",\"pad\":\"{}", "a".repeat(sent));
        req.extend_from_slice(&prefix.as_bytes()[..sent.min(prefix.len())]);
        let t0 = Instant::now();
        c.send(&req).await;
        let r = c
            .response(Duration::from_secs(15))
            .await
            .unwrap_or_else(|e| panic!("{sent} bytes sent then stall: no 408: {e}"));
        let waited = t0.elapsed();
        r.assert_error(TIMEOUT);
        assert!(
            waited >= Duration::from_millis(800),
            "408 came after {waited:?}, before the 1 s body-idle timeout"
        );
        assert!(
            waited <= Duration::from_secs(8),
            "408 came only after {waited:?} (body-idle timeout is 1 s)"
        );
        assert_eq!(
            c.end(QUICK).await,
            End::Closed,
            "connection closed after 408"
        );
    }
    env.assert_no_upstream("stalled bodies");
    // The worker was freed: normal traffic is served.
    env.assert_serving().await;
}

// ---------------------------------------------------------------------------
// Row 3: slowloris
// ---------------------------------------------------------------------------

/// Sends a request header one byte every 100 ms for 1.2 s, then nothing
/// (a byte written after the gateway's 408 would make it reset the
/// connection, and the reset can discard the 408 before it is read); returns
/// when the gateway closed the connection: (what it sent back, time from the
/// first byte, whether it closed).
async fn slowloris(addr: String) -> (Vec<u8>, Duration, bool) {
    let s = TcpStream::connect(&addr).await.expect("connect");
    s.set_nodelay(true).expect("nodelay");
    let (mut rd, mut wr) = s.into_split();
    let header = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\n{}\r\nX-Slow: {}\r\n\r\n",
        bearer(KEY),
        "z".repeat(400)
    );
    let t0 = Instant::now();
    let writer = tokio::spawn(async move {
        for b in header.bytes().take(12) {
            if wr.write_all(&[b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Hold the write side open, silent, until the test ends.
        std::future::pending::<()>().await;
        drop(wr);
    });
    let mut got = Vec::new();
    let mut tmp = [0u8; 4096];
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(20), rd.read(&mut tmp)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => got.extend_from_slice(&tmp[..n]),
            Err(_) => break false,
        }
    };
    let waited = t0.elapsed();
    writer.abort();
    (got, waited, closed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row03_slowloris_is_cut_at_the_header_deadline_while_others_are_served() {
    let env = Env::start(MIB).await;
    let slow: Vec<_> = (0..4)
        .map(|_| tokio::spawn(slowloris(env.gw.listen_addr())))
        .collect();
    // While the slow clients trickle their headers, normal clients are
    // served promptly.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..5 {
        let t0 = Instant::now();
        let (status, body) = env.post(Some(KEY), chat("fast")).await;
        assert_eq!(status, 200, "normal client #{i}: {}", text(&body));
        assert!(
            t0.elapsed() < Duration::from_secs(3),
            "normal client #{i} took {:?} during the slowloris",
            t0.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(env.up.hits(), 5);
    for h in slow {
        let (got, waited, closed) = h.await.expect("slowloris task");
        assert!(closed, "slowloris connection still open after {waited:?}");
        // The header (≈ 480 bytes) never completes; the deadline is 2 s.
        assert!(
            waited >= Duration::from_millis(1500) && waited <= Duration::from_secs(10),
            "slowloris cut after {waited:?}; the header deadline is 2 s"
        );
        // Closed with the documented 408, never a bare close.
        let head_end = find(&got, b"\r\n\r\n")
            .unwrap_or_else(|| panic!("no 408 before the close: {:?}", text(&got)));
        let head = text(&got[..head_end]);
        assert!(head.starts_with("HTTP/1.1 408"), "response: {head}");
        assert_error(408, &got[head_end + 4..], TIMEOUT);
    }
    assert_eq!(env.up.hits(), 5, "no slowloris request was forwarded");
    env.assert_evil_untouched("slowloris");
    env.assert_serving().await;
}

// ---------------------------------------------------------------------------
// Row 4: huge or too many headers
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row04_huge_headers_get_431_and_too_many_headers_are_refused() {
    let env = Env::start(MIB).await;
    let body = chat("fast");

    // One 70 KB header (> 64 KiB default max_header_bytes).
    let big = format!("X-Big: {}", "b".repeat(70 * 1024));
    let mut c = env.raw().await;
    c.send(&raw_post(
        "/v1/chat/completions",
        &[&bearer(KEY), &big],
        &body,
    ))
    .await;
    let r = c.response(QUICK).await.expect("431 for a 70 KB header");
    r.assert_error(HEADER_TOO_LARGE);
    assert_eq!(c.end(QUICK).await, End::Closed, "closed after 431");

    // Many headers adding up to > 64 KiB.
    let many: Vec<String> = (0..1100)
        .map(|i| format!("X-Pad-{i:04}: {}", "p".repeat(50)))
        .collect();
    let mut extra: Vec<&str> = vec![];
    let auth = bearer(KEY);
    extra.push(&auth);
    extra.extend(many.iter().map(String::as_str));
    let mut c = env.raw().await;
    c.send(&raw_post("/v1/chat/completions", &extra, &body))
        .await;
    let r = c.response(QUICK).await.expect("431 for 1100 headers");
    r.assert_error(HEADER_TOO_LARGE);

    // Too many (300) small headers, well under 64 KiB: over 256 fields is
    // 431 too (docs/config.md, `max_header_bytes`), then close.
    let many: Vec<String> = (0..300).map(|i| format!("X-N-{i}: v")).collect();
    let mut extra: Vec<&str> = vec![&auth];
    extra.extend(many.iter().map(String::as_str));
    let mut c = env.raw().await;
    c.send(&raw_post("/v1/chat/completions", &extra, &body))
        .await;
    let r = c.response(QUICK).await.expect("a response for 300 headers");
    r.assert_error(HEADER_TOO_LARGE);
    assert_eq!(c.end(QUICK).await, End::Closed, "closed after 431");

    // 256 fields exactly (the request's own four, and 252 more) are served.
    let many: Vec<String> = (0..252).map(|i| format!("X-N-{i}: v")).collect();
    let mut extra: Vec<&str> = vec![&auth];
    extra.extend(many.iter().map(String::as_str));
    let mut c = env.raw().await;
    c.send(&raw_post("/v1/chat/completions", &extra, &body))
        .await;
    let r = c.response(QUICK).await.expect("a response for 256 headers");
    assert_eq!(r.status, 200, "256 header fields: {r:?}");
    assert_eq!(env.up.hits(), 1);
    env.up.reset();

    env.assert_no_upstream("oversized headers");
    env.assert_serving().await;
}

// ---------------------------------------------------------------------------
// Row 5: request smuggling
// ---------------------------------------------------------------------------

/// Row 5's outcome: 400 then close (or a plain close), never forwarded.
/// An empty-body 400 is Pingora's own framing reject; a body, when there is
/// one, must be the OpenAI error. Returns what went wrong, if anything.
async fn refused_framing(env: &Env, c: &mut Raw, what: &str) -> Option<String> {
    let before = env.up.hits();
    let mut wrong = Vec::new();
    match c.response(QUICK).await {
        Ok(r) => {
            if r.status != 400 {
                wrong.push(format!("status {} (want 400)", r.status));
            } else if !r.body.is_empty() {
                r.assert_error(BAD_REQUEST);
            }
            match c.end(Duration::from_secs(3)).await {
                End::Closed => {}
                End::Open => wrong.push("connection left open".into()),
                End::Data(d) => wrong.push(format!(
                    "a second response on the connection (smuggled request ran): {:?}",
                    text(&d[..d.len().min(120)])
                )),
            }
        }
        Err(e) => {
            if !(e.starts_with("closed") || e.contains("read error")) {
                wrong.push(format!("neither a 400 nor a close: {e}"));
            }
        }
    }
    // No wait needed: the connection is closed (or we gave up on it), and
    // the gateway answers only after an upstream has the request, so a
    // forwarded request is already counted.
    let hits = env.up.hits() - before;
    if hits > 0 {
        wrong.push(format!("forwarded upstream {hits} time(s)"));
    }
    (!wrong.is_empty()).then(|| format!("{what}: {}", wrong.join("; ")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row05_ambiguous_framing_is_400_and_never_forwarded() {
    let env = Env::start(MIB).await;
    let body = chat("fast");
    let auth = bearer(KEY);
    // The request a smuggler hides after the outer body.
    let smuggled = String::from_utf8(raw_post(
        "/v1/chat/completions",
        &[&auth],
        &json!({"model": "fast", "user": "smuggled"}).to_string(),
    ))
    .expect("utf8");
    let mut failures: Vec<String> = Vec::new();

    // Content-Length and Transfer-Encoding together. The chunked body is a
    // valid request, so forwarding it would show as a hit, and a request
    // hidden after it would show as a second response.
    let mut req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\n{auth}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&chunked(body.as_bytes(), 1000, true));
    req.extend_from_slice(smuggled.as_bytes());
    let mut c = env.raw().await;
    c.send(&req).await;
    failures.extend(refused_framing(&env, &mut c, "CL + TE").await);

    // Transfer-Encoding before Content-Length, CL covering a smuggled request.
    let inner = chunked(body.as_bytes(), 1000, true);
    let mut req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\n{auth}\r\nTransfer-Encoding: chunked\r\nContent-Length: {}\r\n\r\n",
        inner.len() + smuggled.len()
    )
    .into_bytes();
    req.extend_from_slice(&inner);
    req.extend_from_slice(smuggled.as_bytes());
    let mut c = env.raw().await;
    c.send(&req).await;
    failures.extend(refused_framing(&env, &mut c, "TE + CL").await);

    // Transfer-Encoding variants that are not exactly one `chunked`.
    for te in [
        "Transfer-Encoding: chunked, chunked",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
        "Transfer-Encoding: gzip, chunked",
        "Transfer-Encoding: identity",
        "Transfer-Encoding: xchunked",
        "Transfer-Encoding: chunked, identity",
    ] {
        let mut req = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\n{auth}\r\nContent-Type: application/json\r\n{te}\r\n\r\n"
        )
        .into_bytes();
        req.extend_from_slice(&chunked(body.as_bytes(), 1000, true));
        let mut c = env.raw().await;
        c.send(&req).await;
        failures.extend(refused_framing(&env, &mut c, &te.replace("\r\n", " | ")).await);
    }

    // Malformed or conflicting Content-Length.
    for cl in [
        format!("Content-Length: {}x", body.len()),
        format!("Content-Length: -{}", body.len()),
        format!("Content-Length: +{}", body.len()),
        format!("Content-Length: {}, {}", body.len(), body.len() + 1),
        format!(
            "Content-Length: {}\r\nContent-Length: {}",
            body.len(),
            body.len() + 5
        ),
        "Content-Length: 0x20".to_string(),
        "Content-Length: ".to_string(),
    ] {
        let req = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\n{auth}\r\nContent-Type: application/json\r\n{cl}\r\n\r\n{body}"
        );
        let mut c = env.raw().await;
        c.send(req.as_bytes()).await;
        failures.extend(refused_framing(&env, &mut c, &cl.replace("\r\n", " | ")).await);
    }

    let smuggled_runs = env
        .up
        .requests()
        .iter()
        .filter(|r| r.json()["user"] == "smuggled")
        .count();
    assert!(
        failures.is_empty() && smuggled_runs == 0,
        "ambiguous framing was not refused ({smuggled_runs} smuggled request(s) ran upstream):\n{}",
        failures.join("\n")
    );
    env.assert_no_upstream("ambiguous framing");
    env.assert_serving().await;
}

// ---------------------------------------------------------------------------
// Row 6: Upgrade
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row06_upgrade_on_api_path_is_never_a_tunnel() {
    let env = Env::start(MIB).await;
    let body = chat("fast");
    for upgrade in ["websocket", "h2c", "tls/1.2"] {
        let mut c = env.raw().await;
        let req = raw_post(
            "/v1/chat/completions",
            &[
                &bearer(KEY),
                "Connection: Upgrade",
                &format!("Upgrade: {upgrade}"),
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
                "Sec-WebSocket-Version: 13",
            ],
            &body,
        );
        c.send(&req).await;
        let r = c.response(QUICK).await.expect("a response to an upgrade");
        // The one answer: 400, and the connection is closed.
        r.assert_error(BAD_REQUEST);
        // Bytes after the response are not relayed anywhere: the gateway
        // closes the connection, and once it has, nothing sent on it can
        // reach an upstream later.
        let _ = c.s.write_all(b"\x81\x85hello-after-upgrade").await;
        let deadline = tokio::time::Instant::now() + QUICK;
        let closed = loop {
            match c.fill(deadline).await {
                Ok(0) => break true,
                Ok(_) => {}
                Err(e) => break e.starts_with("read error"),
            }
        };
        assert!(
            closed,
            "Upgrade: {upgrade}: the connection stayed open after the 400"
        );
    }
    // The gateway refuses upgrades (400): nothing was forwarded.
    env.assert_no_upstream("Upgrade requests");
    env.assert_serving().await;
}

// ---------------------------------------------------------------------------
// Row 7: early reject with a pipelined request behind the body
// ---------------------------------------------------------------------------

/// After an early error response on `c`, the connection is either closed, or
/// the request queued behind the refused body is answered as itself (the
/// gateway drained the refused body and parsed the next request correctly).
async fn assert_pipelined_not_smuggled(env: &Env, c: &mut Raw, what: &str) {
    // Let anything that was (wrongly) executed reach the mock.
    match c.response(Duration::from_secs(5)).await {
        Err(_) => {
            // Closed: whatever the gateway forwarded from this connection
            // reached the upstream before it closed (no wait needed).
            assert_eq!(c.end(QUICK).await, End::Closed, "{what}: closed");
            assert_eq!(env.up.hits(), 0, "{what}: {:?}", env.up.requests());
        }
        Ok(r) => {
            assert_eq!(r.status, 200, "{what}: second response {r:?}");
            let reqs = env.up.requests();
            assert_eq!(reqs.len(), 1, "{what}: {reqs:?}");
            assert_eq!(reqs[0].json()["user"], "second", "{what}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row07_early_reject_does_not_run_the_pipelined_body_as_a_request() {
    let env = Env::start(1000).await;
    let auth = bearer(KEY);
    // A body that is itself a valid request with a valid key.
    let smuggled_body = json!({"model": "fast", "user": "smuggled"}).to_string();
    let smuggled = String::from_utf8(raw_post("/v1/chat/completions", &[&auth], &smuggled_body))
        .expect("utf8");
    let second_body = json!({"model": "fast", "user": "second"}).to_string();
    let second = raw_post("/v1/chat/completions", &[&auth], &second_body);

    // Early 401: a wrong key, the body not read.
    let mut req = raw_post(
        "/v1/chat/completions",
        &["Authorization: Bearer wrong-key-0000000"],
        &smuggled,
    );
    req.extend_from_slice(&second);
    let mut c = env.raw().await;
    c.send(&req).await;
    c.response(QUICK)
        .await
        .expect("401 first")
        .assert_error(INVALID_KEY);
    assert_pipelined_not_smuggled(&env, &mut c, "after 401").await;
    env.up.reset();

    // Early 413: Content-Length over the 1000-byte limit.
    let padded = format!("{smuggled}{}", " ".repeat(1100 - smuggled.len().min(1100)));
    let mut req = raw_post("/v1/chat/completions", &[&auth], &padded);
    req.extend_from_slice(&second);
    let mut c = env.raw().await;
    c.send(&req).await;
    c.response(QUICK)
        .await
        .expect("413 first")
        .assert_error(TOO_LARGE);
    assert_pipelined_not_smuggled(&env, &mut c, "after 413").await;
    env.up.reset();

    // Early 404 (unknown model) after the body was read completely: the
    // next pipelined request is the real second one.
    let mut req = raw_post(
        "/v1/chat/completions",
        &[&auth],
        &json!({"model": "nope", "user": "first"}).to_string(),
    );
    req.extend_from_slice(&second);
    let mut c = env.raw().await;
    c.send(&req).await;
    c.response(QUICK)
        .await
        .expect("404 first")
        .assert_error(MODEL_NOT_FOUND);
    assert_pipelined_not_smuggled(&env, &mut c, "after 404").await;

    let smuggled_hits = env
        .up
        .requests()
        .iter()
        .filter(|r| r.json()["user"] == "smuggled")
        .count();
    assert_eq!(smuggled_hits, 0, "a refused body ran as a request");
    env.assert_evil_untouched("pipelining");
}

// ---------------------------------------------------------------------------
// Row 8: bad JSON
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row08_invalid_json_non_object_empty_and_missing_model_are_400() {
    let env = Env::start(MIB).await;
    let cases: &[(&str, &str, Option<&str>)] = &[
        ("invalid JSON", "{\"model\": \"fast\",", None),
        ("garbage", "not json at all", None),
        ("JSON array", "[{\"model\": \"fast\"}]", None),
        ("JSON string", "\"fast\"", None),
        ("JSON number", "42", None),
        ("JSON null", "null", None),
        ("empty body", "", None),
        ("whitespace body", "  \n ", None),
        ("missing model", "{\"messages\": []}", Some("model")),
        ("model not a string", "{\"model\": 5}", Some("model")),
        ("model null", "{\"model\": null}", Some("model")),
        ("empty model", "{\"model\": \"\"}", Some("model")),
        ("trailing garbage", "{\"model\": \"fast\"} {}", None),
    ];
    for (what, body, param) in cases {
        let (status, resp) = env.post(Some(KEY), body.to_string()).await;
        let v = assert_error(status, &resp, BAD_REQUEST);
        if let Some(p) = param {
            assert_eq!(v["error"]["param"], *p, "{what}: {v}");
        }
    }
    env.assert_no_upstream("bad JSON");
    env.assert_serving().await;
}

// ---------------------------------------------------------------------------
// Row 9: deep nesting, duplicate model
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row09_deep_nesting_and_duplicate_model_are_400_without_crash() {
    let mut env = Env::start(MIB).await;
    let depth = 100_000;
    let arrays = format!(
        "{{\"model\":\"fast\",\"messages\":{}{}}}",
        "[".repeat(depth),
        "]".repeat(depth)
    );
    let objects = format!(
        "{{\"model\":\"fast\",\"x\":{}1{}}}",
        "{\"a\":".repeat(depth),
        "}".repeat(depth)
    );
    // Unbalanced: never closed.
    let open = format!("{{\"model\":\"fast\",\"x\":{}", "[".repeat(depth));
    for body in [&arrays, &objects, &open] {
        let (status, resp) = env.post(Some(KEY), body.clone()).await;
        assert_error(status, &resp, BAD_REQUEST);
    }

    for body in [
        r#"{"model":"fast","model":"restricted","messages":[]}"#,
        r#"{"model":"restricted","messages":[],"model":"fast"}"#,
        r#"{"model":"fast","model":"fast"}"#,
        r#"{"model":"fast","\u006dodel":"restricted"}"#,
    ] {
        let (status, resp) = env.post(Some(KEY), body.to_string()).await;
        assert_error(status, &resp, BAD_REQUEST);
        let (status, resp) = env.post(Some(KEY_BOB), body.to_string()).await;
        assert_error(status, &resp, BAD_REQUEST);
    }
    env.assert_no_upstream("deep nesting / duplicate model");
    assert!(env.gw.is_running(), "gateway crashed:\n{}", env.gw.logs());
    env.assert_serving().await;
}

// ---------------------------------------------------------------------------
// Row 10: unknown / disallowed model
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row10_unknown_model_404_and_disallowed_model_403() {
    let env = Env::start(MIB).await;
    for key in [KEY, KEY_BOB] {
        let (status, body) = env.post(Some(key), chat("gpt-nonexistent")).await;
        let v = assert_error(status, &body, MODEL_NOT_FOUND);
        assert_eq!(v["error"]["param"], "model");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("gpt-nonexistent"),
            "{v}"
        );
        // Case-sensitive: `FAST` is not `fast`.
        let (status, body) = env.post(Some(key), chat("FAST")).await;
        assert_error(status, &body, MODEL_NOT_FOUND);
        // The upstream name of a route is not an alias.
        let (status, body) = env.post(Some(key), chat("up-fast")).await;
        assert_error(status, &body, MODEL_NOT_FOUND);
    }
    // A 10 KB model name is not echoed back whole.
    let long = "m".repeat(10_000);
    let (status, body) = env.post(Some(KEY), chat(&long)).await;
    assert_error(status, &body, MODEL_NOT_FOUND);
    assert!(
        body.len() < 2000,
        "error echoes a 10 KB name: {} bytes",
        body.len()
    );

    let (status, body) = env.post(Some(KEY), chat("restricted")).await;
    let v = assert_error(status, &body, NOT_ALLOWED);
    assert_eq!(v["error"]["param"], "model");
    env.assert_no_upstream("unknown / disallowed models");

    // bob may use `restricted`.
    let (status, body) = env.post(Some(KEY_BOB), chat("restricted")).await;
    assert_eq!(status, 200, "{}", text(&body));
    assert_eq!(env.up.last().unwrap().json()["model"], "up-restricted");
}

// ---------------------------------------------------------------------------
// Row 11: bad Authorization
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row11_bad_authorization_is_401_and_never_logged() {
    let env = Env::start(MIB).await;
    let canary = "leakcanary7c1e";
    let long_key = format!("{canary}{}", "k".repeat(10 * 1024));
    let mut cases: Vec<(&str, HeaderMap)> = Vec::new();

    cases.push(("missing", HeaderMap::new()));
    let mut h = HeaderMap::new();
    h.append(
        AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {KEY}")).unwrap(),
    );
    h.append(
        AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {KEY}")).unwrap(),
    );
    cases.push(("duplicated (same valid key twice)", h));
    let mut h = HeaderMap::new();
    h.append(
        AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {KEY}")).unwrap(),
    );
    h.append(
        AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {canary}-dup")).unwrap(),
    );
    cases.push(("duplicated (valid + unknown)", h));
    let mut h = HeaderMap::new();
    h.insert(
        AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {long_key}")).unwrap(),
    );
    cases.push(("10 KB long", h));
    let mut h = HeaderMap::new();
    h.insert(
        AUTHORIZATION,
        HeaderValue::from_bytes(format!("Bearer {canary}-ключ-🔑").as_bytes()).unwrap(),
    );
    cases.push(("non-ASCII", h));
    let mut h = HeaderMap::new();
    h.insert(
        AUTHORIZATION,
        HeaderValue::from_bytes(format!("Bearer {KEY}\u{e9}").as_bytes()).unwrap(),
    );
    cases.push(("valid key + non-ASCII suffix", h));
    let mut h = HeaderMap::new();
    h.insert(
        AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {canary}-unknown")).unwrap(),
    );
    cases.push(("unknown key", h));
    let mut h = HeaderMap::new();
    h.insert(
        AUTHORIZATION,
        HeaderValue::from_str(&format!("Basic {KEY}")).unwrap(),
    );
    cases.push(("wrong scheme", h));
    let mut h = HeaderMap::new();
    h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer "));
    cases.push(("empty bearer", h));
    let mut h = HeaderMap::new();
    h.insert(
        AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {}", &KEY[..KEY.len() - 1])).unwrap(),
    );
    cases.push(("key prefix", h));
    let mut h = HeaderMap::new();
    h.append("x-api-key", HeaderValue::from_str(KEY).unwrap());
    h.append("x-api-key", HeaderValue::from_str(KEY).unwrap());
    cases.push(("x-api-key duplicated", h));

    for (what, headers) in cases {
        let resp = support::client()
            .post(env.gw.url("/v1/chat/completions"))
            .headers(headers)
            .header("content-type", "application/json")
            .body(chat("fast"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let status = resp.status().as_u16();
        let body = resp.bytes().await.unwrap();
        let v = assert_error(status, &body, INVALID_KEY);
        let body_text = v.to_string();
        assert!(
            !body_text.contains(KEY) && !body_text.contains(canary),
            "{what}: the error body echoes the key: {body_text}"
        );
    }
    // The same on the models listing.
    let resp = support::client()
        .get(env.gw.url("/v1/models"))
        .header("authorization", format!("Bearer {canary}-models"))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    assert_error(status, &resp.bytes().await.unwrap(), INVALID_KEY);
    env.assert_no_upstream("bad Authorization");

    // A last valid request: once its access-log line is in the log, so is
    // every earlier one (one writer, in order).
    let last = support::client()
        .post(env.gw.url("/v1/chat/completions"))
        .header("authorization", format!("Bearer {KEY}"))
        .header("content-type", "application/json")
        .header("x-request-id", "row11-last")
        .body(chat("fast"))
        .send()
        .await
        .unwrap();
    assert_eq!(last.status().as_u16(), 200);
    env.gw.access_line("row11-last").await;
    let logs = env.gw.logs();
    assert!(!logs.is_empty(), "the gateway logged nothing at all");
    for secret in [KEY, canary, PROVIDER_KEY, &long_key[..64]] {
        assert!(
            !logs.contains(secret),
            "secret {secret:?} appears in the gateway log:\n{logs}"
        );
    }
}

// ---------------------------------------------------------------------------
// Row 12: body fields do not redirect
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row12_body_fields_never_change_the_upstream_or_key() {
    let env = Env::start(MIB).await;
    let evil = env.evil.url();
    let body = json!({
        "model": "fast",
        "messages": [{"role": "user", "content": "hi"}],
        "api_base": format!("{evil}/v1"),
        "base_url": format!("{evil}/v1"),
        "api_key": "sk-client-supplied-evil",
        "extra_headers": {"Authorization": "Bearer sk-extra-evil", "X-Evil": "1", "Host": "evil.test"},
        "extra_body": {"api_base": format!("{evil}/v1")},
        "provider": "evil",
        "url": format!("{evil}/v1/chat/completions"),
    });
    let (status, resp) = env.post(Some(KEY), body.to_string()).await;
    assert_eq!(status, 200, "{}", text(&resp));
    env.assert_evil_untouched("api_base / base_url in the body");
    assert_eq!(env.up.hits(), 1);
    let seen = env.up.last().unwrap();
    assert_eq!(seen.path, "/v1/chat/completions");
    assert_eq!(
        seen.header("authorization").as_deref(),
        Some(format!("Bearer {PROVIDER_KEY}").as_str()),
        "the provider key comes from the config only"
    );
    assert_eq!(seen.header("x-evil"), None, "extra_headers became headers");
    assert_eq!(
        seen.header("host").as_deref(),
        Some(format!("127.0.0.1:{}", env.up.port()).as_str())
    );
    // Only `model` is rewritten; the rest is passed through as data.
    let sent = seen.json();
    assert_eq!(sent["model"], "up-fast");
    assert_eq!(sent["api_key"], "sk-client-supplied-evil");
}

// ---------------------------------------------------------------------------
// Row 14: odd paths, absolute-form, Host tricks, wrong method
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row14_odd_paths_route_on_the_normalized_path_only() {
    let env = Env::start(MIB).await;
    let auth = bearer(KEY);
    let body = chat("fast");
    let evil_host = format!("127.0.0.1:{}", env.evil.port());
    let up_host = format!("127.0.0.1:{}", env.up.port());

    // Normalizable paths: routed as /v1/chat/completions.
    for path in [
        "//v1/chat/completions",
        "/v1//chat///completions",
        "/v1/chat/completions/",
    ] {
        let before = env.up.hits();
        let mut c = env.raw().await;
        c.send(&raw_post(path, &[&auth], &body)).await;
        let r = c.response(QUICK).await.expect(path);
        assert_eq!(r.status, 200, "{path}: {}", text(&r.body));
        assert_eq!(env.up.hits(), before + 1, "{path}");
        assert_eq!(
            env.up.last().unwrap().path,
            "/v1/chat/completions",
            "{path}"
        );
    }

    // Dot segments and escapes: unknown, whatever key.
    for path in [
        "/v1/%2e%2e/v1/chat/completions",
        "/v1/../v1/chat/completions",
        "/v1/./chat/completions",
        "/v1/chat/completions/..",
        "/v1/chat%2fcompletions",
        "/v1/chat/completions%00",
        "/v1/chat/completions;x=1",
        "/admin",
        "/v1/models/../chat/completions",
        "/V1/CHAT/COMPLETIONS",
    ] {
        let before = env.up.hits();
        let mut c = env.raw().await;
        c.send(&raw_post(path, &[&auth], &body)).await;
        let r = c.response(QUICK).await.expect(path);
        if r.status == 400 && r.body.is_empty() {
            // Pingora refused the request line itself.
        } else {
            r.assert_error(UNKNOWN_URL);
        }
        assert_eq!(env.up.hits(), before, "{path} reached the upstream");
    }

    // Absolute-form request targets naming another server: either routed
    // as the path (to the configured upstream), or refused.
    for target in [
        format!("http://{evil_host}/v1/chat/completions"),
        "http://evil.test/v1/chat/completions".to_string(),
        format!("https://{evil_host}/v1/chat/completions"),
    ] {
        let authority = target.split('/').nth(2).unwrap().to_string();
        for host in [authority.as_str(), "tollgate.test"] {
            let before = env.up.hits();
            let req = format!(
                "POST {target} HTTP/1.1\r\nHost: {host}\r\n{auth}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            let mut c = env.raw().await;
            c.send(req.as_bytes()).await;
            let what = format!("{target} with Host {host}");
            let r = c
                .response(QUICK)
                .await
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            if host == authority {
                // Routed by its path alone, to the configured upstream
                // with the configured Host.
                assert_eq!(r.status, 200, "{what}: {}", text(&r.body));
                assert_eq!(env.up.hits(), before + 1, "{what}");
                let seen = env.up.last().unwrap();
                assert_eq!(seen.path, "/v1/chat/completions", "{what}");
                assert_eq!(
                    seen.header("host").as_deref(),
                    Some(up_host.as_str()),
                    "{what}"
                );
            } else {
                // A Host that contradicts the target: Pingora's 400 (before
                // the gateway sees a request), then close.
                assert_eq!(r.status, 400, "{what}: {r:?}");
                assert_eq!(r.header("connection"), Some("close"), "{what}");
                assert_eq!(c.end(QUICK).await, End::Closed, "{what}");
                assert_eq!(env.up.hits(), before, "{what}");
            }
        }
    }

    // Host header tricks on an origin-form request: the upstream is still
    // the configured one, with the configured Host.
    for extra in [
        format!("Host: {evil_host}"),
        format!("Host: {evil_host}\r\nX-Forwarded-Host: {evil_host}"),
        format!("Host: tollgate.test\r\nX-Forwarded-Host: {evil_host}\r\nX-Original-URL: /admin\r\nX-Rewrite-URL: /admin\r\nForwarded: host={evil_host}"),
    ] {
        let before = env.up.hits();
        let req = format!(
            "POST /v1/chat/completions HTTP/1.1\r\n{extra}\r\n{auth}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let mut c = env.raw().await;
        c.send(req.as_bytes()).await;
        let r = c.response(QUICK).await.expect(&extra);
        assert_eq!(r.status, 200, "{extra}: {}", text(&r.body));
        assert_eq!(env.up.hits(), before + 1, "{extra}");
        let seen = env.up.last().unwrap();
        assert_eq!(seen.header("host").as_deref(), Some(up_host.as_str()), "{extra}");
        for h in ["x-forwarded-host", "x-original-url", "x-rewrite-url", "forwarded"] {
            assert_eq!(seen.header(h), None, "{extra}: {h} forwarded");
        }
    }

    // Two Host headers: refused by the HTTP layer.
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: tollgate.test\r\nHost: {evil_host}\r\n{auth}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let before = env.up.hits();
    let mut c = env.raw().await;
    c.send(req.as_bytes()).await;
    let r = c
        .response(QUICK)
        .await
        .expect("two Host headers: a response");
    assert_eq!(r.status, 400, "two Host headers: {r:?}");
    assert_eq!(r.header("connection"), Some("close"), "two Host headers");
    assert_eq!(c.end(QUICK).await, End::Closed, "two Host headers");
    assert_eq!(
        env.up.hits(),
        before,
        "two Host headers reached the upstream"
    );

    // Wrong method: 405 with Allow, before auth (no key needed).
    for (method, path, allow) in [
        ("GET", "/v1/chat/completions", "POST"),
        ("PUT", "/v1/chat/completions", "POST"),
        ("DELETE", "/v1/embeddings", "POST"),
        ("POST", "/v1/models", "GET"),
    ] {
        for key in [None, Some(KEY)] {
            let mut req = format!("{method} {path} HTTP/1.1\r\nHost: t\r\n");
            if let Some(k) = key {
                req.push_str(&bearer(k));
                req.push_str("\r\n");
            }
            req.push_str("Content-Length: 0\r\n\r\n");
            let mut c = env.raw().await;
            c.send(req.as_bytes()).await;
            let r = c.response(QUICK).await.expect("405");
            r.assert_error(WRONG_METHOD);
            assert_eq!(r.header("allow"), Some(allow), "{method} {path}");
        }
    }
    // Normalized path + wrong method is still 405, not a route.
    let mut c = env.raw().await;
    c.send(b"GET //v1//chat/completions/ HTTP/1.1\r\nHost: t\r\n\r\n")
        .await;
    c.response(QUICK)
        .await
        .expect("405")
        .assert_error(WRONG_METHOD);

    env.assert_evil_untouched("odd paths and hosts");
}

// ---------------------------------------------------------------------------
// Row 15: bounded metric labels
// ---------------------------------------------------------------------------

/// A small xorshift PRNG: no `rand` dev-dependency needed.
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            ^ u64::from(std::process::id());
        Rng(seed | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// `rnd` + 16 hex digits: never a configured name.
    fn token(&mut self) -> String {
        format!("rnd{:016x}", self.next())
    }
}

/// Every series as `name{sorted labels}`.
fn series(text: &str) -> BTreeSet<String> {
    prom::parse(text)
        .into_iter()
        .filter(|s| s.name.starts_with("tollgate_"))
        .map(|s| {
            let mut l = s.labels.clone();
            l.sort();
            format!("{}{l:?}", s.name)
        })
        .collect()
}

/// One request of each kind, with fresh random values (recorded in
/// `randoms`): valid key + random `user`, valid key + random model, random
/// key, no key.
fn random_round(rng: &mut Rng, randoms: &mut Vec<String>) -> Vec<(Option<String>, String)> {
    let (model, key, user, anon) = (rng.token(), rng.token(), rng.token(), rng.token());
    randoms.extend([model.clone(), key.clone(), user.clone(), anon.clone()]);
    let valid_user = json!({"model": "fast", "user": user, "messages": []}).to_string();
    let random_model = json!({"model": model, "user": user}).to_string();
    vec![
        (Some(KEY.to_string()), valid_user.clone()),
        (Some(KEY_BOB.to_string()), valid_user),
        (Some(KEY.to_string()), random_model.clone()),
        (Some(key.clone()), random_model),
        (Some(key), chat("fast")),
        (None, json!({"model": anon}).to_string()),
    ]
}

async fn send_round(env: &Env, reqs: Vec<(Option<String>, String)>) {
    for (key, body) in reqs {
        let (status, resp) = env.post(key.as_deref(), body).await;
        assert!(
            [200, 401, 404].contains(&status),
            "unexpected {status}: {}",
            text(&resp)
        );
    }
}

/// POST to a random unknown path with a random `x-request-id`.
async fn random_path(env: &Env, rng: &mut Rng, randoms: &mut Vec<String>) {
    let token = rng.token();
    randoms.push(token.clone());
    let resp = support::client()
        .post(env.gw.url(&format!("/v1/{token}")))
        .header("x-request-id", token.as_str())
        .header("authorization", format!("Bearer {KEY}"))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    assert_error(status, &resp.bytes().await.unwrap(), UNKNOWN_URL);
}

/// `/metrics` once `tollgate_requests_total` adds up to `n` API requests
/// (it counts every request, answered or refused, as it ends; the readiness
/// probes on `/healthz` are left out); panics after [`QUICK`].
async fn counted(env: &Env, n: f64) -> String {
    let deadline = Instant::now() + QUICK;
    loop {
        let text = env.gw.metrics_text().await;
        let got: f64 = prom::samples(&text, "tollgate_requests_total", &[])
            .iter()
            .filter(|s| s.label("endpoint") != Some("healthz"))
            .map(|s| s.value)
            .sum();
        if got == n {
            return text;
        }
        assert!(
            got < n && Instant::now() < deadline,
            "tollgate_requests_total adds up to {got}, want {n}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row15_random_models_keys_and_users_keep_metric_labels_bounded() {
    let env = Env::start(MIB).await;
    let mut rng = Rng::new();
    let mut randoms: Vec<String> = Vec::new();

    // One request of each kind first, so every legitimate series exists.
    send_round(&env, random_round(&mut rng, &mut randoms)).await;
    random_path(&env, &mut rng, &mut randoms).await;
    let mut rounds = 1;
    // Metrics are recorded as each request ends: wait until all 7 are.
    let baseline = series(&counted(&env, 7.0).await);
    assert!(
        baseline
            .iter()
            .any(|s| s.starts_with("tollgate_requests_total")),
        "no request series at all: {baseline:?}"
    );

    // 100+ more requests with fresh random values.
    let mut sent = 0;
    while sent < 100 {
        let reqs = random_round(&mut rng, &mut randoms);
        sent += reqs.len() + 1;
        rounds += 1;
        send_round(&env, reqs).await;
        random_path(&env, &mut rng, &mut randoms).await;
    }
    let text_after = counted(&env, (7 * rounds) as f64).await;
    let after = series(&text_after);

    let new: Vec<&String> = after.difference(&baseline).collect();
    assert!(
        new.is_empty(),
        "random input created {} new series (baseline {}): {new:#?}",
        new.len(),
        baseline.len()
    );
    assert_eq!(
        prom::series_count(&text_after, "tollgate_"),
        after.len(),
        "duplicate series lines"
    );
    for r in &randoms {
        assert!(
            !text_after.contains(r.as_str()),
            "random value {r} is in /metrics"
        );
    }
    for s in prom::parse(&text_after) {
        for (k, v) in &s.labels {
            assert!(
                !v.contains(KEY) && !v.contains(KEY_BOB) && !v.contains(PROVIDER_KEY),
                "a secret in {}{{{k}}}",
                s.name
            );
        }
        // Only configured names (or the "-" placeholder) as key / model labels.
        if let Some(k) = s.label("key") {
            assert!(["alice", "bob", "-"].contains(&k), "key label {k:?}");
        }
        for l in ["request_model", "response_model", "provider"] {
            if let Some(m) = s.label(l) {
                assert!(
                    ["fast", "restricted", "up-fast", "up-restricted", "up", "-"].contains(&m),
                    "{l} label {m:?} in {}",
                    s.name
                );
            }
        }
    }
    // The valid requests with random users were all served.
    assert_eq!(env.up.hits(), 2 * rounds, "upstream hits");
}
