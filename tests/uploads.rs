#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Uploads of any framing (issue 19): chunked HTTP/1.1 bodies of any size
//! up to `max_body_bytes` reach the upstream whole, rewritten, with a
//! `Content-Length`, on every attempt (after a 503 and a dead port too);
//! over the limit they get 413 and never go upstream; keep-alive and
//! `Expect: 100-continue` still work. And what Pingora would answer by
//! itself with an empty body (a malformed request line or header line,
//! CONNECT) reaches the client as a JSON error, as does bad chunk framing.
//! The real binary, mock upstreams on loopback. (HTTP/2 without a
//! `Content-Length`: `tests/promises_errors.rs`.)

mod support;

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use support::raw_client::{chunked, End, Raw};
use support::{assert_json_error, text, Behavior, Gateway, MockUpstream};

const KEY: &str = "tg-uploads-key-000001";
/// Generous bound for what should be quick (2 shared, noisy cores).
const QUICK: Duration = Duration::from_secs(20);
/// Pingora's retry buffer (`BODY_BUF_LIMIT`, 0.9.1).
const RETRY_BUFFER: usize = 64 * 1024;
const MIB: usize = 1024 * 1024;

/// One `kind: openai` provider per port (alias `m` falls back across them
/// in order, upstream models `up-0`, `up-1`…), health checks off, one
/// attempt per provider; `top` goes at the top level.
fn config(ports: &[u16], top: &str) -> String {
    support::fallback_chain(ports, &[], top, KEY)
}

/// A chat body of exactly `len` bytes (padding inside the message) for
/// `model`.
fn body_of(model: &str, len: usize) -> String {
    let head = format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":""#);
    let tail = r#""}]}"#;
    format!("{head}{}{tail}", "x".repeat(len - head.len() - tail.len()))
}

/// `body` as a stream of 4 KiB pieces: reqwest sends it with
/// `Transfer-Encoding: chunked` and no `Content-Length`.
fn streamed(body: String) -> reqwest::Body {
    let pieces: Vec<Result<Bytes, Infallible>> = Bytes::from(body)
        .chunks(4096)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    reqwest::Body::wrap_stream(futures_util::stream::iter(pieces))
}

async fn post_streamed(gw: &Gateway, body: String) -> (u16, Option<String>, Bytes) {
    let r = support::client()
        .post(gw.url("/v1/chat/completions"))
        .header("authorization", format!("Bearer {KEY}"))
        .header("content-type", "application/json")
        .body(streamed(body))
        .send()
        .await
        .unwrap_or_else(|e| panic!("request failed: {e}; log:\n{}", gw.logs()));
    let status = r.status().as_u16();
    let ct = support::header(&r, "content-type");
    (status, ct, r.bytes().await.unwrap())
}

/// Asserts `up`'s last request is `want` byte for byte, framed by a
/// `Content-Length` of its length and no `Transfer-Encoding`.
#[track_caller]
fn assert_forwarded_whole(up: &MockUpstream, want: &str) {
    let sent = up.last().expect("forwarded");
    assert_eq!(sent.body.len(), want.len(), "upstream body length");
    assert!(
        sent.body == want.as_bytes(),
        "upstream body differs from the rewritten body"
    );
    assert_eq!(sent.header("content-length"), Some(want.len().to_string()));
    assert_eq!(sent.header("transfer-encoding"), None);
    assert_eq!(sent.header("expect"), None);
}

/// A raw chunked chat request's header (`extra` lines added).
fn chunked_head(path: &str, extra: &[&str]) -> Vec<u8> {
    let mut s = format!(
        "POST {path} HTTP/1.1\r\nHost: tollgate.test\r\nAuthorization: Bearer {KEY}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
    );
    for h in extra {
        s.push_str(h);
        s.push_str("\r\n");
    }
    s.push_str("\r\n");
    s.into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_uploads_of_64_kib_to_8_mib_reach_the_upstream_whole_with_content_length() {
    let up = MockUpstream::start(Behavior::ChatEcho).await;
    let gw = Gateway::start(&config(&[up.port()], "")).await;
    for (i, len) in [RETRY_BUFFER, RETRY_BUFFER + 1, MIB, 8 * MIB]
        .into_iter()
        .enumerate()
    {
        let (status, _, resp) = post_streamed(&gw, body_of("m", len)).await;
        assert_eq!(status, 200, "{len} bytes: {}", text(&resp));
        let v: serde_json::Value = serde_json::from_slice(&resp).unwrap();
        assert_eq!(v["model"], "up-0", "{len} bytes");
        // The model is rewritten: "m" becomes "up-0", 3 bytes longer.
        assert_forwarded_whole(&up, &body_of("up-0", len + 3));
        assert_eq!(up.hits(), i + 1, "one upstream request per upload");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_1_mib_upload_falls_back_whole_after_a_503_and_a_dead_port() {
    let failing = MockUpstream::start(Behavior::json(503, r#"{"error":"busy"}"#)).await;
    let dead = support::refused_port();
    let healthy = MockUpstream::start(Behavior::ChatEcho).await;
    let gw = Gateway::start(&config(&[failing.port(), dead, healthy.port()], "")).await;

    let (status, _, resp) = post_streamed(&gw, body_of("m", MIB)).await;
    assert_eq!(status, 200, "{}", text(&resp));
    // The first attempt got its whole body, the third (after the refused
    // connect) its own, rewritten for its route's model.
    assert_eq!(failing.hits(), 1);
    assert_forwarded_whole(&failing, &body_of("up-0", MIB + 3));
    assert_eq!(healthy.hits(), 1);
    assert_forwarded_whole(&healthy, &body_of("up-2", MIB + 3));
    let v: serde_json::Value = serde_json::from_slice(&resp).unwrap();
    assert_eq!(v["model"], "up-2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_upload_over_max_body_bytes_gets_413_and_never_reaches_the_upstream() {
    let up = MockUpstream::start(Behavior::ChatEcho).await;
    let gw = Gateway::start(&config(&[up.port()], &format!("max_body_bytes: {MIB}"))).await;

    let (status, ct, resp) = post_streamed(&gw, body_of("m", MIB + 1)).await;
    assert_json_error(
        status,
        ct.as_deref(),
        &resp,
        (413, "invalid_request_error", "request_too_large"),
    );
    assert_eq!(up.hits(), 0, "the 413 reached the upstream");
    // Exactly the limit goes through.
    let (status, _, resp) = post_streamed(&gw, body_of("m", MIB)).await;
    assert_eq!(status, 200, "{}", text(&resp));
    assert_eq!(up.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_requests_share_a_keep_alive_connection_and_a_long_one_closes_it_after_its_answer()
{
    let up = MockUpstream::start(Behavior::ChatEcho).await;
    let gw = Gateway::start(&config(&[up.port()], "")).await;
    let mut c = Raw::connect(&gw.listen_addr()).await;

    // Two chunked requests of up to 64 KiB, one after the other on one
    // connection: both answered, the connection stays open.
    for len in [1000, RETRY_BUFFER] {
        let mut req = chunked_head("/v1/chat/completions", &[]);
        req.extend_from_slice(&chunked(body_of("m", len).as_bytes(), 1000, true));
        c.send(&req).await;
        let r = c.response(QUICK).await.expect("an answer");
        assert_eq!(r.status, 200, "{len} bytes: {}", text(&r.body));
        assert_ne!(r.header("connection"), Some("close"), "{len} bytes: {r:?}");
        assert_forwarded_whole(&up, &body_of("up-0", len + 3));
    }
    // A longer one on the same connection: answered, then the connection
    // closes (announced, never left hanging).
    let mut req = chunked_head("/v1/chat/completions", &[]);
    req.extend_from_slice(&chunked(
        body_of("m", RETRY_BUFFER + 1).as_bytes(),
        4096,
        true,
    ));
    c.send(&req).await;
    let r = c.response(QUICK).await.expect("an answer");
    assert_eq!(r.status, 200, "{}", text(&r.body));
    assert_eq!(r.header("connection"), Some("close"), "{r:?}");
    assert_forwarded_whole(&up, &body_of("up-0", RETRY_BUFFER + 4));
    assert_eq!(c.end(QUICK).await, End::Closed);
    assert_eq!(up.hits(), 3);

    // A new connection serves the next request.
    let mut c = Raw::connect(&gw.listen_addr()).await;
    let mut req = chunked_head("/v1/chat/completions", &[]);
    req.extend_from_slice(&chunked(body_of("m", 2 * MIB).as_bytes(), 65536, true));
    c.send(&req).await;
    let r = c.response(QUICK).await.expect("an answer");
    assert_eq!(r.status, 200, "{}", text(&r.body));
    assert_forwarded_whole(&up, &body_of("up-0", 2 * MIB + 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_upload_that_expects_100_continue_gets_it_then_goes_through() {
    let up = MockUpstream::start(Behavior::ChatEcho).await;
    let gw = Gateway::start(&config(&[up.port()], "")).await;
    let mut c = Raw::connect(&gw.listen_addr()).await;

    c.send(&chunked_head(
        "/v1/chat/completions",
        &["Expect: 100-continue"],
    ))
    .await;
    let r = c
        .response(QUICK)
        .await
        .expect("100 Continue before the body");
    assert_eq!(r.status, 100, "{r:?}");
    assert_eq!(up.hits(), 0);
    c.send(&chunked(body_of("m", MIB).as_bytes(), 8192, true))
        .await;
    let r = c.response(QUICK).await.expect("an answer");
    assert_eq!(r.status, 200, "{}", text(&r.body));
    assert_forwarded_whole(&up, &body_of("up-0", MIB + 3));
}

/// Reads one response off `c` and asserts it is a JSON error with `want`,
/// and that the connection closes after it.
async fn assert_refused(c: &mut Raw, want: (u16, &str, &str)) -> serde_json::Value {
    let r = c.response(QUICK).await.expect("an answer");
    let v = assert_json_error(r.status, r.header("content-type"), &r.body, want);
    assert_eq!(c.end(QUICK).await, End::Closed, "closed after the error");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_pingora_answers_itself_reaches_clients_as_json_errors() {
    let up = MockUpstream::start(Behavior::ChatEcho).await;
    let gw = Gateway::start(&config(&[up.port()], "")).await;
    let bad_request = (400, "invalid_request_error", "invalid_request");

    // A malformed chunk size in the middle of the body.
    let mut c = Raw::connect(&gw.listen_addr()).await;
    let mut req = chunked_head("/v1/chat/completions", &[]);
    req.extend_from_slice(&chunked(
        body_of("m", 2000).as_bytes()[..1000].as_ref(),
        500,
        false,
    ));
    req.extend_from_slice(b"zz\r\nxx\r\n0\r\n\r\n");
    c.send(&req).await;
    assert_refused(&mut c, bad_request).await;

    // A header line without a colon.
    let mut c = Raw::connect(&gw.listen_addr()).await;
    c.send(
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {KEY}\r\n\
             this line has no colon\r\nContent-Length: 2\r\n\r\n{{}}"
        )
        .as_bytes(),
    )
    .await;
    assert_refused(&mut c, bad_request).await;

    // A malformed request line.
    let mut c = Raw::connect(&gw.listen_addr()).await;
    c.send(b"POST /v1/chat/completions HTTP/9.9 extra\r\nHost: t\r\n\r\n")
        .await;
    assert_refused(&mut c, bad_request).await;

    // Transfer-Encoding Pingora will not frame a request body by.
    let mut c = Raw::connect(&gw.listen_addr()).await;
    c.send(b"POST /v1/chat/completions HTTP/1.0\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        .await;
    assert_refused(&mut c, bad_request).await;

    // CONNECT, which Pingora refuses with 405.
    let mut c = Raw::connect(&gw.listen_addr()).await;
    c.send(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
        .await;
    let r = c.response(QUICK).await.expect("an answer");
    assert_json_error(
        r.status,
        r.header("content-type"),
        &r.body,
        (405, "invalid_request_error", "method_not_allowed"),
    );
    assert!(r.header("allow").is_some(), "{r:?}");

    // On the Messages endpoint, Anthropic's shape.
    let mut c = Raw::connect(&gw.listen_addr()).await;
    c.send(b"POST /v1/messages HTTP/1.1\r\nHost: t\r\nno colon\r\n\r\n")
        .await;
    let r = c.response(QUICK).await.expect("an answer");
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("JSON");
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
    assert!(v["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));

    assert_eq!(up.hits(), 0, "a refused request reached the upstream");
    // The gateway still serves well-formed requests.
    let (status, _, resp) = post_streamed(&gw, body_of("m", 100)).await;
    assert_eq!(status, 200, "{}", text(&resp));
}

/// A client must not pipeline after a POST (RFC 9112 section 9.3.2); one
/// that does loses the pipelined request with the connection, as Pingora
/// does by default, whether the body took the chunked path of up to 64 KiB
/// or the longer one (whose bytes past the body are forgotten, module docs
/// of `proxy/body.rs`). It is never left waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_pipelined_behind_a_chunked_body_is_dropped_with_the_connection_never_left_hanging(
) {
    let up = MockUpstream::start(Behavior::ChatEcho).await;
    let gw = Gateway::start(&config(&[up.port()], "")).await;
    for (i, len) in [1000, RETRY_BUFFER + 1, MIB].into_iter().enumerate() {
        let mut c = Raw::connect(&gw.listen_addr()).await;
        let mut req = chunked_head("/v1/chat/completions", &[]);
        req.extend_from_slice(&chunked(body_of("m", len).as_bytes(), 4096, true));
        // A second request in the same write, before the first's answer.
        req.extend_from_slice(&chunked_head("/v1/chat/completions", &[]));
        req.extend_from_slice(&chunked(body_of("m", 100).as_bytes(), 4096, true));
        c.send(&req).await;
        match c.response(QUICK).await {
            Ok(r) => assert_eq!(r.status, 200, "{len} bytes: {}", text(&r.body)),
            // Pingora may also refuse the bytes after the body outright.
            Err(e) => assert!(e.starts_with("closed"), "{len} bytes: {e}"),
        }
        assert_eq!(c.end(QUICK).await, End::Closed, "{len} bytes");
        assert!(up.hits() <= i + 1, "the pipelined request was served");
    }
}
