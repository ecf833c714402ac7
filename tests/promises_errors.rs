#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Error answers the README's table and docs/config.md promise and no other
//! test pinned (issue 24): HTTP/2 bodies without Content-Length of any
//! size (issue 19; HTTP/1 chunked uploads: `tests/uploads.rs`), HTTP/2's 408, 503 `upstream_unavailable` behind open breakers,
//! a custom or empty `route_header`, and the TLS handshake deadline. The
//! real binary, mock upstreams on loopback.

mod support;

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::prom::sample;
use support::{assert_json_error, Behavior, Gateway, MockUpstream, TestCa};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const KEY: &str = "tg-promises-errors-01";
/// Generous bound for what should be quick (2 shared, noisy cores).
const QUICK: Duration = Duration::from_secs(10);
/// Pingora's retry buffer (`BODY_BUF_LIMIT`, 0.9.1).
const RETRY_BUFFER: usize = 64 * 1024;

/// One `kind: openai` provider per port (alias `m` falls back across them
/// in order, upstream models `up-0`, `up-1`…), health checks off, one
/// attempt per provider. `provider_extra` goes into every provider's map,
/// `top` at the top level.
fn config(ports: &[u16], provider_extra: &[&str], top: &str) -> String {
    support::fallback_chain(ports, provider_extra, top, KEY)
}

/// A chat body of exactly `len` bytes (padding inside the message).
fn body_of(len: usize) -> String {
    let head = r#"{"model":"m","messages":[{"role":"user","content":""#;
    let tail = r#""}]}"#;
    format!("{head}{}{tail}", "x".repeat(len - head.len() - tail.len()))
}

fn chat_body() -> String {
    r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_backend_behind_an_open_breaker_gets_503_upstream_unavailable() {
    // Two routes whose only backend answers 500; each breaker opens on the
    // first failure, for 30 s and 20 s.
    let a = MockUpstream::start(Behavior::json(500, r#"{"error":"boom"}"#)).await;
    let b = MockUpstream::start(Behavior::json(500, r#"{"error":"boom"}"#)).await;
    let breaker = |s: u32| {
        format!(
            ", dns_refresh: 200ms, breaker: {{ consecutive_failures: 1, min_requests: 1, cooldown: {s}s }}"
        )
    };
    let (ba, bb) = (breaker(30), breaker(20));
    let gw = Gateway::start(&config(&[a.port(), b.port()], &[&ba, &bb], "")).await;
    let client = support::client();
    let post = || {
        client
            .post(gw.url("/v1/chat/completions"))
            .header("authorization", format!("Bearer {KEY}"))
            .header("content-type", "application/json")
            .body(chat_body())
            .send()
    };

    // The first request fails on both: the last attempt's error, 502.
    let t0 = Instant::now();
    let r = post().await.unwrap();
    let (status, ct) = (r.status().as_u16(), support::header(&r, "content-type"));
    let body = r.bytes().await.unwrap();
    assert_json_error(
        status,
        ct.as_deref(),
        &body,
        (502, "api_error", "upstream_error"),
    );
    assert_eq!((a.hits(), b.hits()), (1, 1));
    // Both breakers are open (exported by the background ticker, here
    // every 200 ms with the DNS refresh).
    for (p, port) in [("p0", a.port()), ("p1", b.port())] {
        let backend = format!("127.0.0.1:{port}");
        let labels = [("provider", p), ("backend", backend.as_str())];
        let deadline = Instant::now() + QUICK;
        loop {
            let state = sample(&gw.metrics_text().await, "tollgate_breaker_state", &labels);
            if state == Some(1.0) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{p}'s breaker is {state:?}, not open"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // Now no attempt can be made: 503 upstream_unavailable, Retry-After the
    // seconds until the first breaker (20 s) lets a probe through.
    let r = post().await.unwrap();
    let elapsed = t0.elapsed().as_secs();
    let (status, ct) = (r.status().as_u16(), support::header(&r, "content-type"));
    let retry_after: u64 = support::header(&r, "retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    let body = r.bytes().await.unwrap();
    assert_json_error(
        status,
        ct.as_deref(),
        &body,
        (503, "api_error", "upstream_unavailable"),
    );
    assert!(
        retry_after <= 20 && retry_after + elapsed + 1 >= 20,
        "Retry-After {retry_after} s, {elapsed} s after the breakers opened"
    );
    assert_eq!((a.hits(), b.hits()), (1, 1), "a 503 reached an upstream");
    gw.wait_metric(
        "tollgate_errors_total",
        &[("code", "upstream_unavailable")],
        1.0,
    )
    .await;
}

/// Every header of `resp` whose value is `value`.
fn headers_with_value(resp: &reqwest::Response, value: &str) -> Vec<String> {
    resp.headers()
        .iter()
        .filter(|(_, v)| v.as_bytes() == value.as_bytes())
        .map(|(k, _)| k.as_str().to_string())
        .collect()
}

async fn chat(gw: &Gateway, model: &str) -> reqwest::Response {
    support::client()
        .post(gw.url("/v1/chat/completions"))
        .header("authorization", format!("Bearer {KEY}"))
        .header("content-type", "application/json")
        .body(format!(
            r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}]}}"#
        ))
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_route_header_names_the_route_under_that_name_only() {
    let up = MockUpstream::start(Behavior::ChatEcho).await;
    let gw = Gateway::start(&config(&[up.port()], &[], "route_header: x-served-by")).await;

    let r = chat(&gw, "m").await;
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        support::header(&r, "x-served-by").as_deref(),
        Some("p0/up-0")
    );
    assert_eq!(headers_with_value(&r, "p0/up-0"), ["x-served-by"]);
    assert_eq!(support::header(&r, "x-tollgate-route"), None);

    // The gateway's own errors do not carry it.
    let r = chat(&gw, "no-such-alias").await;
    assert_eq!(r.status().as_u16(), 404);
    assert_eq!(support::header(&r, "x-served-by"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_route_header_turns_it_off() {
    let up = MockUpstream::start(Behavior::ChatEcho).await;
    let gw = Gateway::start(&config(&[up.port()], &[], r#"route_header: """#)).await;
    let r = chat(&gw, "m").await;
    assert_eq!(r.status().as_u16(), 200);
    assert!(support::header(&r, "x-request-id").is_some());
    assert_eq!(
        headers_with_value(&r, "p0/up-0"),
        Vec::<String>::new(),
        "a header still names the route: {:?}",
        r.headers()
    );
    assert_eq!(up.hits(), 1);
}

// ---------------------------------------------------------------------------
// TLS and HTTP/2
// ---------------------------------------------------------------------------

struct Tls {
    ca: TestCa,
    cert: PathBuf,
    key: PathBuf,
}

fn tls_files() -> Tls {
    let ca = TestCa::new();
    let (cert, key) = ca.issue_files("server", &["localhost", "127.0.0.1"]);
    Tls { ca, cert, key }
}

/// [`config`] served over TLS on `listen` (readiness over `plain_listen`).
fn tls_config(t: &Tls, port: u16, top: &str) -> String {
    let tls = format!(
        "plain_listen: \"{{PLAIN}}\"\ntls:\n  cert: \"{}\"\n  key: \"{}\"\n{top}",
        t.cert.display(),
        t.key.display()
    );
    config(&[port], &[], &tls)
}

async fn tls_connect(
    addr: &str,
    ca: &TestCa,
    alpn: &[&[u8]],
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut cfg = (*ca.client_config()).clone();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
}

/// Starts a TLS gateway and waits until its TLS listener completes handshakes.
async fn start_tls(t: &Tls, yaml: &str) -> Gateway {
    let gw = Gateway::start(yaml).await;
    let deadline = Instant::now() + QUICK;
    while tls_connect(&gw.listen_addr(), &t.ca, &[b"http/1.1"])
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "no TLS listener; log:\n{}",
            gw.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    gw
}

type Sender = tokio::sync::mpsc::Sender<Result<Frame<Bytes>, Infallible>>;
type H2Body = StreamBody<tokio_stream_shim::Rx>;

/// A minimal `Stream` over an mpsc receiver (no tokio-stream dependency).
mod tokio_stream_shim {
    use super::*;
    pub struct Rx(pub tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, Infallible>>);
    impl futures_util::Stream for Rx {
        type Item = Result<Frame<Bytes>, Infallible>;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Self::Item>> {
            self.0.poll_recv(cx)
        }
    }
}

/// One HTTP/2 connection (ALPN `h2`).
async fn h2(gw: &Gateway, t: &Tls) -> hyper::client::conn::http2::SendRequest<H2Body> {
    let tls = tls_connect(&gw.listen_addr(), &t.ca, &[b"h2"])
        .await
        .expect("TLS handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]), "ALPN");
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    send
}

/// An HTTP/2 chat request whose body frames come from the returned sender;
/// `content_length` is sent when given.
fn h2_request(content_length: Option<usize>) -> (http::Request<H2Body>, Sender) {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let mut b = http::Request::post("https://localhost/v1/chat/completions")
        .header("authorization", format!("Bearer {KEY}"))
        .header("content-type", "application/json");
    if let Some(n) = content_length {
        b = b.header("content-length", n.to_string());
    }
    (
        b.body(StreamBody::new(tokio_stream_shim::Rx(rx))).unwrap(),
        tx,
    )
}

async fn h2_answer(
    send: &mut hyper::client::conn::http2::SendRequest<H2Body>,
    req: http::Request<H2Body>,
) -> (u16, Option<String>, Bytes) {
    let r = tokio::time::timeout(QUICK * 2, send.send_request(req))
        .await
        .expect("an answer in time")
        .expect("h2 response");
    assert_eq!(r.version(), http::Version::HTTP_2);
    let status = r.status().as_u16();
    let ct = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string());
    let body = r.into_body().collect().await.unwrap().to_bytes();
    (status, ct, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_bodies_without_content_length_of_any_size_reach_the_upstream_whole() {
    let t = tls_files();
    let up = MockUpstream::start(Behavior::ChatEcho).await;
    let gw = start_tls(&t, &tls_config(&t, up.port(), "max_body_bytes: 2097152")).await;
    let mut send = h2(&gw, &t).await;

    // Up to the retry buffer, one byte past it, and more, in frames of
    // several sizes (the first one empty), on one connection.
    for (i, (len, piece)) in [
        (RETRY_BUFFER, 8192),
        (RETRY_BUFFER + 1, 8192),
        (1024 * 1024, 16384),
        (2 * 1024 * 1024, 1000),
    ]
    .into_iter()
    .enumerate()
    {
        let (req, tx) = h2_request(None);
        let body = Bytes::from(body_of(len));
        let feed = tokio::spawn(async move {
            let _ = tx.send(Ok(Frame::data(Bytes::new()))).await;
            for c in body.chunks(piece) {
                let _ = tx.send(Ok(Frame::data(Bytes::copy_from_slice(c)))).await;
            }
        });
        let (status, _, resp) = h2_answer(&mut send, req).await;
        feed.await.unwrap();
        assert_eq!(status, 200, "{len} bytes: {}", support::text(&resp));
        let sent = up.last().expect("forwarded");
        let want = body_of(len).replacen(r#""model":"m""#, r#""model":"up-0""#, 1);
        assert!(
            sent.body == want.as_bytes(),
            "{len} bytes: body not rewritten whole"
        );
        assert_eq!(sent.header("content-length"), Some(want.len().to_string()));
        assert_eq!(sent.header("transfer-encoding"), None);
        assert_eq!(up.hits(), i + 1);
    }

    // One byte over max_body_bytes: 413, never upstream; the connection
    // still serves the next stream.
    let (req, tx) = h2_request(None);
    let body = Bytes::from(body_of(2 * 1024 * 1024 + 1));
    let feed = tokio::spawn(async move {
        for c in body.chunks(16384) {
            if tx
                .send(Ok(Frame::data(Bytes::copy_from_slice(c))))
                .await
                .is_err()
            {
                break;
            }
        }
    });
    let (status, ct, resp) = h2_answer(&mut send, req).await;
    feed.await.unwrap();
    assert_json_error(
        status,
        ct.as_deref(),
        &resp,
        (413, "invalid_request_error", "request_too_large"),
    );
    assert_eq!(up.hits(), 4, "the 413 reached the upstream");
    let (req, tx) = h2_request(None);
    tx.send(Ok(Frame::data(Bytes::from(chat_body()))))
        .await
        .unwrap();
    drop(tx);
    let (status, _, _) = h2_answer(&mut send, req).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_body_that_stalls_gets_408_after_body_idle_timeout() {
    let t = tls_files();
    let up = MockUpstream::start(Behavior::ChatEcho).await;
    let yaml = tls_config(&t, up.port(), "downstream: { body_idle_timeout: 1s }");
    let gw = start_tls(&t, &yaml).await;
    let mut send = h2(&gw, &t).await;

    // Content-Length promises 100 bytes; 9 come, then nothing (the stream
    // stays open: the sender is kept alive until the answer is in).
    let (req, tx) = h2_request(Some(100));
    tx.send(Ok(Frame::data(Bytes::from_static(b"{\"model\":"))))
        .await
        .unwrap();
    let t0 = Instant::now();
    let (status, ct, resp) = h2_answer(&mut send, req).await;
    let took = t0.elapsed();
    drop(tx);
    assert_json_error(
        status,
        ct.as_deref(),
        &resp,
        (408, "invalid_request_error", "request_timeout"),
    );
    assert!(
        took >= Duration::from_millis(1000) && took < QUICK,
        "408 after {took:?}; body_idle_timeout is 1 s"
    );
    assert_eq!(up.hits(), 0);
    // The connection still serves other streams.
    let (req, tx) = h2_request(None);
    tx.send(Ok(Frame::data(Bytes::from(chat_body()))))
        .await
        .unwrap();
    drop(tx);
    let (status, _, _) = h2_answer(&mut send, req).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_handshake_that_stalls_is_closed_at_header_timeout() {
    let t = tls_files();
    let up = MockUpstream::start(Behavior::ChatEcho).await;
    let yaml = tls_config(&t, up.port(), "downstream: { header_timeout: 1s }");
    let gw = start_tls(&t, &yaml).await;

    // One client sends nothing; one starts a record header and stops.
    for opening in [&b""[..], &b"\x16\x03\x01"[..]] {
        // The server's clock starts at accept, after this.
        let t0 = Instant::now();
        let mut tcp = TcpStream::connect(gw.listen_addr()).await.unwrap();
        tcp.write_all(opening).await.unwrap();
        let mut buf = Vec::new();
        let read = tokio::time::timeout(QUICK, tcp.read_to_end(&mut buf)).await;
        let took = t0.elapsed();
        assert!(read.is_ok(), "still open after {QUICK:?} ({opening:?})");
        assert!(buf.is_empty(), "the server wrote {buf:?}");
        assert!(
            took >= Duration::from_millis(1000),
            "closed after {took:?}, before the 1 s header_timeout ({opening:?})"
        );
    }
    // Counted once the handshake task ends, which may be just after the
    // client saw the close: polled.
    let timeouts = gw
        .wait_sample(
            "tollgate_tls_handshakes_total",
            &[("result", "timeout")],
            2.0,
            QUICK,
        )
        .await;
    assert_eq!(timeouts, Some(2.0));
    // A real client still gets in.
    let mut ok = tls_connect(&gw.listen_addr(), &t.ca, &[b"http/1.1"])
        .await
        .expect("handshake");
    ok.write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(QUICK, ok.read_to_end(&mut out)).await;
    assert!(
        support::text(&out).starts_with("HTTP/1.1 200"),
        "{}",
        support::text(&out)
    );
}
