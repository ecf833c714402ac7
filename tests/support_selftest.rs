//! Self-tests for `tests/support` (mock upstream, test CA, Prometheus parser).
//! They do not run the gateway binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use support::mock::{Behavior, MockUpstream, Reply};
use support::prom;
use support::tls::TestCa;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const METRICS: &str = r#"# HELP tollgate_requests_total Requests.
# TYPE tollgate_requests_total counter
tollgate_requests_total{route="chat",status="200",provider="openai"} 3
tollgate_requests_total{provider="openai",route="chat",status="502"} 1
tollgate_requests_total{route="embed",status="200",provider="openai"} 2
tollgate_up 1
tollgate_latency_seconds_bucket{route="chat",le="+Inf"} 4
tollgate_weird{msg="a \"quoted\", {brace} \\ x"} 2.5e0 1700000000000
"#;

#[test]
fn prom_parses_samples() {
    use prom::{assert_sample, sample, series_count, sum};
    assert_eq!(
        sample(
            METRICS,
            "tollgate_requests_total",
            &[("status", "502"), ("route", "chat")]
        ),
        Some(1.0)
    );
    assert_sample(
        METRICS,
        "tollgate_requests_total",
        &[("provider", "openai"), ("route", "chat"), ("status", "200")],
        3.0,
    );
    assert_eq!(sample(METRICS, "tollgate_up", &[]), Some(1.0));
    assert_eq!(
        sample(
            METRICS,
            "tollgate_latency_seconds_bucket",
            &[("le", "+Inf")]
        ),
        Some(4.0)
    );
    assert_eq!(
        sample(
            METRICS,
            "tollgate_weird",
            &[("msg", r#"a "quoted", {brace} \ x"#)]
        ),
        Some(2.5)
    );
    assert_eq!(
        sample(METRICS, "tollgate_requests_total", &[("route", "none")]),
        None
    );
    assert_eq!(sample(METRICS, "tollgate_requests", &[]), None);
    assert_eq!(
        sum(METRICS, "tollgate_requests_total", &[("status", "200")]),
        5.0
    );
    assert_eq!(series_count(METRICS, "tollgate_requests_"), 3);
    assert_eq!(series_count(METRICS, "tollgate_"), 6);
    let ambiguous = std::panic::catch_unwind(|| sample(METRICS, "tollgate_requests_total", &[]));
    assert!(ambiguous.is_err(), "ambiguous match must panic");
}

/// Sends a raw HTTP/1.1 request and returns the stream positioned after the
/// response head, plus the head and any body bytes already read.
async fn raw_request(addr: std::net::SocketAddr, req: &str) -> (TcpStream, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    loop {
        let n = s.read(&mut tmp).await.unwrap();
        assert!(n > 0, "EOF before response head");
        buf.extend_from_slice(&tmp[..n]);
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..p]).to_ascii_lowercase();
            return (s, head, buf[p + 4..].to_vec());
        }
    }
}

/// Takes one complete chunk off the front of `buf` (`Some(vec![])` for the
/// terminating zero-size chunk); `None` if it is not complete yet.
fn take_chunk(buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    let line_end = buf.windows(2).position(|w| w == b"\r\n")?;
    let size_str = String::from_utf8_lossy(&buf[..line_end]).to_string();
    let size = usize::from_str_radix(size_str.split(';').next()?.trim(), 16).unwrap();
    let total = line_end + 2 + size + 2;
    if buf.len() < total {
        return None;
    }
    let data = buf[line_end + 2..line_end + 2 + size].to_vec();
    assert_eq!(&buf[total - 2..total], b"\r\n", "chunk trailer");
    buf.drain(..total);
    Some(data)
}

#[tokio::test]
async fn sse_chunks_arrive_separately() {
    let interval = Duration::from_millis(250);
    let events = vec![
        "data: {\"a\":1}\n\n".to_string(),
        "data: {\"a\":2}\n\n".to_string(),
        "data: [DONE]\n\n".to_string(),
    ];
    let up = MockUpstream::start(Behavior::sse(events.clone(), interval)).await;
    let (mut s, head, mut buf) = raw_request(
        up.addr(),
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
    )
    .await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    assert!(!head.contains("content-length"), "{head}");

    let mut got: Vec<(Vec<u8>, Instant)> = Vec::new();
    let mut tmp = [0u8; 4096];
    'outer: loop {
        while let Some(c) = take_chunk(&mut buf) {
            if c.is_empty() {
                break 'outer;
            }
            got.push((c, Instant::now()));
        }
        let n = s.read(&mut tmp).await.unwrap();
        assert!(n > 0, "EOF inside chunked body");
        buf.extend_from_slice(&tmp[..n]);
    }
    let bodies: Vec<String> = got
        .iter()
        .map(|(c, _)| String::from_utf8(c.clone()).unwrap())
        .collect();
    assert_eq!(bodies, events, "one chunk per event, verbatim");
    for w in got.windows(2) {
        let gap = w[1].1 - w[0].1;
        assert!(gap >= interval - Duration::from_millis(50), "gap {gap:?}");
    }

    let r = up.last().unwrap();
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/v1/chat/completions");
    assert_eq!(r.header("host").as_deref(), Some("x"));
    assert_eq!(&r.body[..], b"{}");
}

#[tokio::test]
async fn chat_echo_health_and_recording() {
    let up = MockUpstream::start(Behavior::ChatEcho).await;
    let c = support::client();
    let resp = c
        .post(format!("{}/v1/chat/completions?x=1", up.url()))
        .header("Authorization", "Bearer sk-up")
        .body(r#"{"model":"gpt-test","messages":[]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "gpt-test");
    assert_eq!(v["choices"][0]["message"]["content"], "echo");
    assert_eq!(v["usage"]["total_tokens"], 8);

    let resp = c
        .post(format!("{}/v1/chat/completions", up.url()))
        .body(r#"{"model":"m2","stream":true}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let text = resp.text().await.unwrap();
    assert_eq!(text.matches("data: ").count(), 6, "{text}");
    assert!(text.contains("\"finish_reason\":\"stop\""), "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    assert!(text.contains("\"model\":\"m2\""), "{text}");

    let h = c.get(format!("{}/health", up.url())).send().await.unwrap();
    assert_eq!(h.status(), 200);
    assert_eq!(h.text().await.unwrap(), "ok");
    assert_eq!(up.health_hits(), 1);
    assert_eq!(up.hits(), 2);
    let first = &up.requests()[0];
    assert_eq!(first.path, "/v1/chat/completions?x=1");
    assert_eq!(
        support::mock::header(first, "AUTHORIZATION").as_deref(),
        Some("Bearer sk-up")
    );

    up.set_behavior(Behavior::Func(Arc::new(|r| {
        Reply::json(418, format!("{{\"path\":\"{}\"}}", r.path))
    })));
    let resp = c.get(format!("{}/p", up.url())).send().await.unwrap();
    assert_eq!(resp.status(), 418);
    assert_eq!(resp.text().await.unwrap(), r#"{"path":"/p"}"#);

    up.set_behavior(Behavior::Json {
        status: 503,
        body: "{}".into(),
        headers: vec![("retry-after".into(), "1".into())],
    });
    let resp = c.get(format!("{}/q", up.url())).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "1");
    assert_eq!(resp.headers()["content-length"], "2");
}

#[tokio::test]
async fn cancelled_stream_is_counted() {
    let events = support::mock::sse_chat_events("m", 40);
    let up = MockUpstream::start(Behavior::sse(events, Duration::from_millis(20))).await;
    let (mut s, _head, buf) = raw_request(up.addr(), "GET /s HTTP/1.1\r\nHost: x\r\n\r\n").await;
    if buf.is_empty() {
        let mut tmp = [0u8; 1024];
        assert!(s.read(&mut tmp).await.unwrap() > 0);
    }
    drop(s);
    assert!(
        up.wait_cancelled(1, Duration::from_secs(5)).await,
        "client disconnect not detected"
    );
    assert_eq!(up.cancelled(), 1);
}

#[tokio::test]
async fn stop_refuses_and_cuts_connections() {
    let mut up = MockUpstream::start(Behavior::Hang).await;
    let mut s = TcpStream::connect(up.addr()).await.unwrap();
    s.write_all(b"GET /h HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(up.wait_hits(1, Duration::from_secs(5)).await);
    up.stop();
    let mut tmp = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut tmp))
        .await
        .expect("hung connection was not cut")
        .unwrap_or(0);
    assert_eq!(n, 0, "expected EOF after stop");
    // Give the runtime a moment to drop the listener.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        TcpStream::connect(up.addr()).await.is_err(),
        "still accepting"
    );
}

#[tokio::test]
async fn tls_mock_is_trusted_via_test_ca() {
    let ca = TestCa::new();
    assert!(ca.ca_pem().starts_with("-----BEGIN CERTIFICATE-----"));
    assert!(std::fs::read_to_string(ca.ca_file())
        .unwrap()
        .contains("BEGIN CERTIFICATE"));
    let up = MockUpstream::start_tls(Behavior::json(200, r#"{"ok":true}"#), &ca).await;

    for name in ["localhost", "127.0.0.1"] {
        let connector = tokio_rustls::TlsConnector::from(ca.client_config());
        let tcp = TcpStream::connect(up.addr()).await.unwrap();
        let server_name = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
        let mut tls = connector.connect(server_name, tcp).await.unwrap();
        tls.write_all(b"GET /x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = Vec::new();
        let _ = tls.read_to_end(&mut out).await;
        let out = String::from_utf8_lossy(&out);
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        assert!(out.ends_with(r#"{"ok":true}"#), "{out}");
    }
    assert_eq!(up.hits(), 2);

    // A client that does not trust the test CA must fail the handshake.
    let other = TestCa::new();
    let connector = tokio_rustls::TlsConnector::from(other.client_config());
    let tcp = TcpStream::connect(up.addr()).await.unwrap();
    let sn = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    assert!(connector.connect(sn, tcp).await.is_err());
}

#[tokio::test]
async fn gated_reply_sends_each_chunk_only_when_let_through() {
    use support::{Gate, ReplyBody};
    let gate = Gate::new();
    let g = gate.clone();
    let events = ["data: 1\n\n", "data: 2\n\n", "data: [DONE]\n\n"];
    let up = MockUpstream::start(Behavior::func(move |_| Reply {
        status: 200,
        headers: vec![("content-type".into(), "text/event-stream".into())],
        body: ReplyBody::Gated(
            events.iter().map(|e| bytes::Bytes::from(*e)).collect(),
            g.clone(),
        ),
    }))
    .await;
    let (mut s, head, mut buf) = raw_request(
        up.addr(),
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
    )
    .await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    let mut tmp = [0u8; 4096];
    for (i, want) in events.iter().enumerate() {
        let got = loop {
            if let Some(c) = take_chunk(&mut buf) {
                break c;
            }
            let n = s.read(&mut tmp).await.unwrap();
            assert!(n > 0, "EOF inside chunked body");
            buf.extend_from_slice(&tmp[..n]);
        };
        assert_eq!(got, want.as_bytes(), "chunk {i}");
        // Nothing more comes until the gate opens.
        let more = tokio::time::timeout(Duration::from_millis(200), s.read(&mut tmp)).await;
        assert!(more.is_err(), "chunk {} came before the gate opened", i + 1);
        gate.open(1);
    }
}

#[tokio::test]
async fn refused_port_refuses_and_is_not_handed_out_again() {
    let port = support::refused_port();
    let err = TcpStream::connect(("127.0.0.1", port)).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    // The port stays reserved: binding it explicitly fails.
    assert!(std::net::TcpListener::bind(("127.0.0.1", port)).is_err());
}
