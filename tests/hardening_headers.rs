#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Header limits on every request of every connection (issue 14;
//! `RELIABILITY.md` rows 3, 4, 38, 39): `downstream.max_header_bytes` (431)
//! and `downstream.header_timeout` (408) hold for the second request of a
//! keep-alive connection and after leading empty lines, on plaintext and on
//! HTTP/1.1 over TLS, and an HTTP/2 client that never sends its preface is
//! closed at `header_timeout`. Raw sockets, so the bytes on the wire are the
//! ones written here; the real gateway binary in front of a mock upstream.
//! And the other way (row 43): of a provider's response headers only the
//! allow-listed ones reach the client, on every response path.

mod support;

use hyper_util::rt::{TokioExecutor, TokioIo};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{
    assert_error, Behavior, Gateway, MockUpstream, Recorded, Reply, TestCa, CONFIG_HEAD,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

const KEY: &str = "tg-hardening-headers-key-01";
/// The header deadline every gateway here runs with.
const HEADER_TIMEOUT: Duration = Duration::from_secs(1);
/// Generous bound for anything that should be immediate (2 shared cores).
const QUICK: Duration = Duration::from_secs(10);
const TOO_LARGE: (u16, &str, &str) = (431, "invalid_request_error", "request_header_too_large");
const TIMEOUT: (u16, &str, &str) = (408, "invalid_request_error", "request_timeout");

fn providers(port: u16) -> String {
    format!(
        r#"downstream: {{ header_timeout: 1s }}
providers:
  up:
    kind: openai
    base_url: "http://127.0.0.1:{port}/v1"
    api_key: "sk-hardening-upstream"
    health_check: {{ enabled: false }}
models:
  m:
    routes: [ {{ provider: up, model: up-m }} ]
keys:
  - {{ name: k, key: "{KEY}" }}
"#
    )
}

/// A plaintext gateway in front of `port`.
fn plain_config(port: u16) -> String {
    format!("{CONFIG_HEAD}{}", providers(port))
}

/// A TLS gateway (`listen`) with a plaintext listener beside it.
fn tls_config(cert: &std::path::Path, key: &std::path::Path, port: u16) -> String {
    format!(
        r#"
listen: "{{LISTEN}}"
plain_listen: "{{PLAIN}}"
metrics_listen: "{{METRICS}}"
server: {{ pid_file: "{{TMP}}/t.pid", upgrade_sock: "{{TMP}}/u.sock" }}
tls: {{ cert: "{}", key: "{}" }}
{}"#,
        cert.display(),
        key.display(),
        providers(port)
    )
}

fn chat_body() -> String {
    serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).to_string()
}

/// A complete chat request; `extra` is inserted as header lines.
fn chat_request(extra: &str) -> Vec<u8> {
    let body = chat_body();
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {KEY}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{extra}\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A header line of about `n` bytes.
fn big_header(n: usize) -> String {
    format!("x-big: {}\r\n", "a".repeat(n))
}

/// One HTTP/1.1 response read off a raw connection.
#[derive(Debug)]
struct Resp {
    status: u16,
    head: String,
    body: Vec<u8>,
}

/// Reads one response (`Content-Length` framed, as every response here is).
/// `None` when the connection closes (or fails) before a whole response.
async fn read_response<S: AsyncRead + Unpin>(s: &mut S) -> Option<Resp> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match tokio::time::timeout(QUICK, s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return None,
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < end + len {
        match tokio::time::timeout(QUICK, s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return None,
        }
    }
    Some(Resp {
        status,
        head,
        body: buf[end..end + len].to_vec(),
    })
}

/// Whether the peer closes the connection (EOF or reset) within `within`,
/// discarding anything it still sends.
async fn closes<S: AsyncRead + Unpin>(s: &mut S, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// Sends a normal chat request on `s` and expects a 200 keep-alive answer.
async fn served<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, what: &str) {
    s.write_all(&chat_request("")).await.unwrap();
    let r = read_response(s)
        .await
        .unwrap_or_else(|| panic!("{what}: no answer"));
    assert_eq!(r.status, 200, "{what}: {r:?}");
    assert!(
        !r.head.to_ascii_lowercase().contains("connection: close"),
        "{what}: the connection should stay open: {r:?}"
    );
}

/// Expects a 431 JSON answer on `s`, then its close.
async fn refused_431<S: AsyncRead + Unpin>(s: &mut S, what: &str) {
    let r = read_response(s)
        .await
        .unwrap_or_else(|| panic!("{what}: closed without the 431"));
    assert_error(r.status, &r.body, TOO_LARGE);
    assert!(
        r.head
            .to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{what}: {r:?}"
    );
    assert!(closes(s, QUICK).await, "{what}: still open after the 431");
}

/// Writes `request` one byte every 100 ms from a task, until `stop` is set
/// or the socket fails; the bytes never end the header.
fn dribble<W: AsyncWrite + Unpin + Send + 'static>(mut w: W, stop: Arc<AtomicBool>) {
    tokio::spawn(async move {
        let head = b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\nx-slow: ";
        let bytes = head.iter().copied().chain(std::iter::repeat(b'a'));
        for b in bytes {
            if stop.load(Ordering::SeqCst) || w.write_all(&[b]).await.is_err() {
                return;
            }
            let _ = w.flush().await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
}

/// Expects the dribbled request on `r` to end with a 408 JSON answer and
/// a close, after `HEADER_TIMEOUT` and well before ten of them.
async fn cut_at_the_deadline<R: AsyncRead + Unpin>(
    r: &mut R,
    t0: Instant,
    stop: &AtomicBool,
    what: &str,
) {
    let resp = read_response(r).await;
    stop.store(true, Ordering::SeqCst);
    let waited = t0.elapsed();
    let resp = resp.unwrap_or_else(|| panic!("{what}: closed after {waited:?} without a 408"));
    assert_error(resp.status, &resp.body, TIMEOUT);
    assert!(closes(r, QUICK).await, "{what}: still open after the 408");
    assert!(
        waited >= HEADER_TIMEOUT,
        "{what}: cut after {waited:?}, before the deadline"
    );
    assert!(
        waited < HEADER_TIMEOUT * 10,
        "{what}: cut only after {waited:?}"
    );
}

// ---------------------------------------------------------------------------
// Plaintext HTTP/1.1
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_request_with_a_200_kb_header_gets_431_and_is_never_forwarded() {
    let up = MockUpstream::start(Behavior::ChatEcho).await;
    let gw = Gateway::start(&plain_config(up.port())).await;
    let mut c = TcpStream::connect(gw.listen_addr()).await.unwrap();
    served(&mut c, "first request").await;
    c.write_all(&chat_request(&big_header(200_000)))
        .await
        .unwrap();
    refused_431(&mut c, "second request").await;
    assert_eq!(up.hits(), 1, "the 200 KB request reached the upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leading_empty_lines_do_not_skip_the_size_limit() {
    let up = MockUpstream::start(Behavior::ChatEcho).await;
    let gw = Gateway::start(&plain_config(up.port())).await;

    // A connection that starts with empty lines.
    let mut c = TcpStream::connect(gw.listen_addr()).await.unwrap();
    let mut req = b"\r\n\r\n".to_vec();
    req.extend(chat_request(&big_header(200_000)));
    c.write_all(&req).await.unwrap();
    refused_431(&mut c, "first request after \\r\\n\\r\\n").await;

    // The second request of a keep-alive connection, after empty lines.
    let mut c = TcpStream::connect(gw.listen_addr()).await.unwrap();
    served(&mut c, "first request").await;
    c.write_all(&req).await.unwrap();
    refused_431(&mut c, "second request after \\r\\n\\r\\n").await;
    assert_eq!(up.hits(), 1, "a 200 KB request reached the upstream");

    // Empty lines before a normal request are fine (RFC 9112 section 2.2).
    let mut c = TcpStream::connect(gw.listen_addr()).await.unwrap();
    c.write_all(b"\r\n\r\n").await.unwrap();
    served(&mut c, "after empty lines").await;
    c.write_all(b"\r\n").await.unwrap();
    served(&mut c, "second, after an empty line").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dribbled_second_request_gets_408_while_another_client_is_served() {
    let up = MockUpstream::start(Behavior::ChatEcho).await;
    let gw = Gateway::start(&plain_config(up.port())).await;
    let mut c = TcpStream::connect(gw.listen_addr()).await.unwrap();
    served(&mut c, "first request").await;

    let (mut r, w) = c.into_split();
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    dribble(w, stop.clone());
    // Meanwhile another client is served, on a keep-alive connection too.
    let other = tokio::spawn({
        let addr = gw.listen_addr();
        async move {
            let mut o = TcpStream::connect(addr).await.unwrap();
            for i in 0..3 {
                served(&mut o, &format!("other client, request {i}")).await;
            }
        }
    });
    cut_at_the_deadline(&mut r, t0, &stop, "dribbled second request").await;
    other.await.unwrap();
    assert_eq!(up.hits(), 4, "only the normal requests went upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_requests_on_one_connection_are_still_served() {
    let up = MockUpstream::start(Behavior::ChatEcho).await;
    let gw = Gateway::start(&plain_config(up.port())).await;
    let mut c = TcpStream::connect(gw.listen_addr()).await.unwrap();
    for i in 0..20 {
        served(&mut c, &format!("request {i}")).await;
    }
    // A header just under the default 64 KiB limit is accepted on a later
    // request too.
    c.write_all(&chat_request(&big_header(60_000)))
        .await
        .unwrap();
    let r = read_response(&mut c).await.expect("answer");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(up.hits(), 21);
}

// ---------------------------------------------------------------------------
// TLS: HTTP/1.1 and HTTP/2
// ---------------------------------------------------------------------------

struct Tls {
    ca: TestCa,
    gw: Gateway,
    _up: MockUpstream,
}

async fn start_tls() -> Tls {
    let ca = TestCa::new();
    let (cert, key) = ca.issue_files("server", &["localhost"]);
    let up = MockUpstream::start(Behavior::ChatEcho).await;
    let gw = Gateway::start(&tls_config(&cert, &key, up.port())).await;
    let t = Tls { ca, gw, _up: up };
    let deadline = Instant::now() + QUICK;
    while t.connect(&[b"http/1.1"]).await.is_err() {
        assert!(Instant::now() < deadline, "TLS listener not ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    t
}

impl Tls {
    async fn connect(
        &self,
        alpn: &[&[u8]],
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let mut cfg = rustls::ClientConfig::builder_with_provider(support::tls::ring_provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(self.ca.root_store())
            .with_no_client_auth();
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let tcp = TcpStream::connect(self.gw.listen_addr()).await?;
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(name, tcp)
            .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_a_second_request_with_a_200_kb_header_gets_431() {
    let t = start_tls().await;
    // A health check, which needs no key: the limit comes before anything.
    let req = format!(
        "GET /healthz HTTP/1.1\r\nhost: gw\r\n{}\r\n",
        big_header(200_000)
    );
    let mut c = t.connect(&[b"http/1.1"]).await.unwrap();
    served(&mut c, "first request").await;
    c.write_all(req.as_bytes()).await.unwrap();
    refused_431(&mut c, "second request over TLS").await;

    // After leading empty lines.
    let mut c = t.connect(&[b"http/1.1"]).await.unwrap();
    served(&mut c, "first request").await;
    c.write_all(format!("\r\n\r\n{req}").as_bytes())
        .await
        .unwrap();
    refused_431(&mut c, "second request over TLS after \\r\\n\\r\\n").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_a_dribbled_second_request_gets_408() {
    let t = start_tls().await;
    let mut c = t.connect(&[b"http/1.1"]).await.unwrap();
    served(&mut c, "first request").await;
    let (mut r, w) = tokio::io::split(c);
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    dribble(w, stop.clone());
    cut_at_the_deadline(&mut r, t0, &stop, "dribbled second request over TLS").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_client_that_never_sends_its_preface_is_closed_at_the_header_deadline() {
    let t = start_tls().await;
    // Taken before the handshakes: the deadline starts after them, so
    // `t0.elapsed()` never undercounts how long the gateway waited.
    let t0 = Instant::now();
    let silent = t.connect(&[b"h2"]).await.unwrap();
    assert_eq!(silent.get_ref().1.alpn_protocol(), Some(&b"h2"[..]), "ALPN");
    let mut half = t.connect(&[b"h2"]).await.unwrap();
    half.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    half.flush().await.unwrap();
    let check = |mut s: tokio_rustls::client::TlsStream<TcpStream>, what: &'static str| async move {
        assert!(
            closes(&mut s, HEADER_TIMEOUT * 10).await,
            "{what}: still open after {:?}",
            t0.elapsed()
        );
        let waited = t0.elapsed();
        assert!(
            waited >= HEADER_TIMEOUT,
            "{what}: closed after {waited:?}, before the deadline"
        );
    };
    tokio::join!(
        check(silent, "no preface at all"),
        check(half, "half a preface")
    );

    // A client that does speak HTTP/2 is served, and a later stream's
    // header list is capped like the first one's.
    let tls = t.connect(&[b"h2"]).await.unwrap();
    let (mut h2, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    let chat = |extra: Option<String>| {
        let mut b = http::Request::post("https://localhost/v1/chat/completions")
            .header("authorization", format!("Bearer {KEY}"))
            .header("content-type", "application/json");
        if let Some(v) = extra {
            b = b.header("x-big", v);
        }
        b.body(http_body_util::Full::new(bytes::Bytes::from(chat_body())))
            .unwrap()
    };
    let r = h2.send_request(chat(None)).await.unwrap();
    assert_eq!(r.status(), 200);
    match h2.send_request(chat(Some("a".repeat(70_000)))).await {
        Ok(r) => assert_eq!(r.status(), 431),
        Err(e) => assert!(format!("{e:?}").contains("REFUSED"), "{e:?}"),
    }
    let r = h2.send_request(chat(None)).await.unwrap();
    assert_eq!(r.status(), 200, "the connection survives a refused stream");
}

// ---------------------------------------------------------------------------
// Response headers (row 43)
// ---------------------------------------------------------------------------

/// What a provider may send that must not reach clients.
const LEAKS: &[(&str, &str)] = &[
    ("openai-organization", "org-gateway-account"),
    ("openai-project", "proj_gateway"),
    ("openai-processing-ms", "321"),
    ("set-cookie", "__cf_bm=provider-cookie; path=/"),
    ("x-ratelimit-limit-requests", "5000"),
    ("x-ratelimit-remaining-requests", "4242"),
    ("anthropic-ratelimit-requests-remaining", "77"),
    ("request-id", "req_provider_1"),
    ("x-request-id", "req_provider_2"),
    ("server", "provider-edge"),
    ("x-provider-custom", "internal"),
];

/// `reply` with every header of [`LEAKS`] added.
fn leaky(mut reply: Reply) -> Reply {
    reply
        .headers
        .extend(LEAKS.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    reply
}

/// One mock for both kinds: OpenAI chat on `/v1/chat/completions`,
/// Anthropic Messages on `/v1/messages`, JSON or SSE as asked.
fn provider() -> Behavior {
    Behavior::func(|r: &Recorded| {
        let stream = r.json()["stream"] == true;
        let reply = match (r.path.as_str(), stream) {
            ("/v1/messages", false) => {
                Reply::json(200, include_str!("fixtures/anthropic/message_text.json"))
            }
            ("/v1/messages", true) => {
                Reply::sse_split(include_str!("fixtures/anthropic/stream_text.sse"), 64)
            }
            (_, false) => Reply::json(
                200,
                serde_json::json!({
                    "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "up-m",
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": "hi"}}],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}})
                .to_string(),
            ),
            (_, true) => Reply::sse(
                support::sse_chat_events("up-m", 2),
                Duration::from_millis(1),
            ),
        };
        leaky(reply)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_response_headers_are_filtered_on_every_path() {
    let up = MockUpstream::start(provider()).await;
    let yaml = format!(
        r#"{CONFIG_HEAD}providers:
  oai:
    kind: openai
    base_url: "http://127.0.0.1:{port}/v1"
    api_key: "sk-hardening-upstream"
    health_check: {{ enabled: false }}
  ant:
    kind: anthropic
    base_url: "http://127.0.0.1:{port}/v1"
    api_key: "sk-ant-hardening-upstream"
    health_check: {{ enabled: false }}
models:
  m:
    routes: [ {{ provider: oai, model: up-m }} ]
  c:
    routes: [ {{ provider: ant, model: claude-sonnet-4-5 }} ]
keys:
  - {{ name: k, key: "{KEY}", limits: {{ rpm: 1000 }} }}
"#,
        port = up.port()
    );
    let gw = Gateway::start(&yaml).await;
    let cases = [
        ("/v1/chat/completions", "m", false, "chat, OpenAI route"),
        (
            "/v1/chat/completions",
            "m",
            true,
            "chat stream, OpenAI route",
        ),
        ("/v1/chat/completions", "c", false, "chat, anthropic route"),
        (
            "/v1/chat/completions",
            "c",
            true,
            "chat stream, anthropic route",
        ),
        ("/v1/messages", "c", false, "messages, anthropic route"),
        (
            "/v1/messages",
            "c",
            true,
            "messages stream, anthropic route",
        ),
        ("/v1/messages", "m", false, "messages, OpenAI route"),
        ("/v1/messages", "m", true, "messages stream, OpenAI route"),
    ];
    for (path, model, stream, what) in cases {
        let body = serde_json::json!({"model": model, "stream": stream, "max_tokens": 50,
            "messages": [{"role": "user", "content": "hi"}]});
        let r = support::client()
            .post(gw.url(path))
            .header("authorization", format!("Bearer {KEY}"))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let text = r.text().await.unwrap();
        assert_eq!(status, 200, "{what}: {text}");
        assert!(!text.is_empty(), "{what}: empty body");
        for (name, _) in LEAKS {
            if let Some(v) = headers.get(*name) {
                // The gateway's own versions of two of them are expected.
                let ours = match *name {
                    "x-ratelimit-limit-requests" => v == "1000",
                    "x-ratelimit-remaining-requests" => v != "4242",
                    "x-request-id" => v != "req_provider_2",
                    _ => false,
                };
                assert!(
                    ours,
                    "{what}: the provider's {name}: {v:?} reached the client"
                );
            }
        }
        assert!(
            headers.get("x-request-id").is_some(),
            "{what}: the gateway's x-request-id is missing"
        );
        assert_eq!(
            headers
                .get("x-ratelimit-limit-requests")
                .map(|v| v.to_str().unwrap()),
            Some("1000"),
            "{what}: the gateway's own rate headers must stay"
        );
        assert!(
            headers.get("content-type").is_some(),
            "{what}: content-type is allow-listed"
        );
    }
    assert_eq!(up.hits(), cases.len());
}
