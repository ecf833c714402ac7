#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Upstream faults during streaming (SSE) responses, end to end: the real
//! gateway binary in front of mock upstreams on loopback
//! (`../shared/RELIABILITY.md` rows 17 and 20–25).
//!
//! Most faults need exact control of the wire (a late header, a reset after
//! N events, one byte per TCP write, a body cut short), so this file has its
//! own scripted raw-socket upstream, [`RawUpstream`]. Scenarios that a
//! well-formed HTTP response can express use `support::MockUpstream`.
//!
//! `tests/accounting.rs` already checks that a stream closed (FIN) by the
//! upstream ends with an error event and is counted as partial; here the
//! faults are a reset (RST), silence past `idle`, the `total` limit, a late
//! first byte, HTML instead of SSE, malformed SSE, odd framing, over-long
//! lines and a short non-stream body.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use serde_json::{json, Value};
use support::prom::{assert_sample, sample};
use support::{
    assert_json_error, find, header, text, wait_until, Behavior, Gateway, MockUpstream, Reply,
    ReplyBody, CONFIG_HEAD,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::AbortHandle;

const KEY: &str = "tg-stream-faults-key-01";
/// Generous bound for anything that should be quick (2 shared cores).
const QUICK: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// Gateway config and client helpers
// ---------------------------------------------------------------------------

/// One OpenAI-kind provider per `(name, port)` (health checks off), the
/// given `models:` entries (already indented), and the key [`KEY`].
fn config(providers: &[(&str, u16)], models: &str) -> String {
    let mut p = String::new();
    for (name, port) in providers {
        p.push_str(&format!(
            "  {name}:\n    kind: openai\n    base_url: \"http://127.0.0.1:{port}/v1\"\n    \
             api_key: \"sk-stream-faults\"\n    health_check: {{ enabled: false }}\n"
        ));
    }
    format!(
        r#"{CONFIG_HEAD}providers:
{p}models:
{models}
keys:
  - {{ name: tester, key: "{KEY}" }}
"#
    )
}

/// A streaming chat request body for `model`.
fn stream_body(model: &str, include_usage: bool) -> Value {
    let mut b = json!({"model": model, "stream": true,
        "messages": [{"role": "user", "content": "Tell me a story."}]});
    if include_usage {
        b["stream_options"] = json!({"include_usage": true});
    }
    b
}

async fn post(gw: &Gateway, rid: &str, body: &Value) -> reqwest::Response {
    support::client()
        .post(gw.url("/v1/chat/completions"))
        .header("authorization", format!("Bearer {KEY}"))
        .header("content-type", "application/json")
        .header("x-request-id", rid)
        .body(body.to_string())
        .send()
        .await
        .unwrap_or_else(|e| panic!("request {rid} failed: {e}; log:\n{}", gw.logs()))
}

type ByteStream = std::pin::Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

fn body_stream(resp: reqwest::Response) -> ByteStream {
    Box::pin(resp.bytes_stream())
}

/// Reads into `buf` until it contains `needle`; false on end, error or
/// after `timeout`.
async fn read_until(
    s: &mut ByteStream,
    buf: &mut Vec<u8>,
    needle: &[u8],
    timeout: Duration,
) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if find(buf, needle).is_some() {
            return true;
        }
        match tokio::time::timeout_at(deadline, s.next()).await {
            Ok(Some(Ok(b))) => buf.extend_from_slice(&b),
            _ => return false,
        }
    }
}

/// How a body read ended.
#[derive(Debug, PartialEq)]
enum BodyEnd {
    /// The response completed normally.
    Clean,
    /// The connection failed mid-body (reset, or closed short).
    Error(String),
}

/// Reads the rest of a body into `buf`, keeping what arrived before an error.
/// Panics if it has not ended within `timeout`.
async fn read_rest(s: &mut ByteStream, buf: &mut Vec<u8>, timeout: Duration) -> BodyEnd {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, s.next()).await {
            Ok(Some(Ok(b))) => buf.extend_from_slice(&b),
            Ok(Some(Err(e))) => return BodyEnd::Error(format!("{e:?}")),
            Ok(None) => return BodyEnd::Clean,
            Err(_) => panic!(
                "the response did not end within {timeout:?}; got {} bytes, tail {:?}",
                buf.len(),
                tail(buf)
            ),
        }
    }
}

/// The last 300 bytes, for messages about large bodies.
fn tail(b: &[u8]) -> String {
    text(&b[b.len().saturating_sub(300)..])
}

/// The `data` of each dispatched event of an LF-framed SSE text (the SSE
/// rules: `data:` lines joined with `\n`, a blank line dispatches, an
/// unterminated event at the end is dropped).
fn sse_data(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur: Option<String> = None;
    for line in text.split('\n') {
        if line.is_empty() {
            if let Some(d) = cur.take() {
                out.push(d);
            }
            continue;
        }
        if let Some(v) = line.strip_prefix("data:") {
            let v = v.strip_prefix(' ').unwrap_or(v);
            match &mut cur {
                Some(d) => {
                    d.push('\n');
                    d.push_str(v);
                }
                None => cur = Some(v.to_string()),
            }
        }
    }
    out
}

/// Asserts that a client stream ends with exactly one OpenAI error event
/// (`data: {"error":{...}}` on its own, terminated) carrying `code`, and
/// that no event is a `[DONE]`.
#[track_caller]
fn assert_ends_with_error_event(body: &[u8], code: &str, what: &str) -> Value {
    let t = text(body);
    let events = sse_data(&t);
    assert!(
        !events.iter().any(|d| d == "[DONE]"),
        "{what}: a fake [DONE] was sent; tail {:?}",
        tail(body)
    );
    assert!(
        t.ends_with("\n\n"),
        "{what}: the stream does not end with a terminated event; tail {:?}",
        tail(body)
    );
    let last = events
        .last()
        .unwrap_or_else(|| panic!("{what}: no event at all; tail {:?}", tail(body)));
    let v: Value = serde_json::from_str(last).unwrap_or_else(|e| {
        panic!(
            "{what}: the last event is not a JSON error ({e}): {:?}",
            &last[last.len().saturating_sub(300)..]
        )
    });
    assert_eq!(v["error"]["code"], code, "{what}: last event {v}");
    assert_eq!(v["error"]["type"], "api_error", "{what}: last event {v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{what}: {v}"
    );
    let errors = events.iter().filter(|d| d.contains("\"error\"")).count();
    assert_eq!(errors, 1, "{what}: {errors} error events in {t:?}");
    v
}

/// The gateway still answers `/healthz` and a streamed request through `up`
/// (a `ChatEcho` mock) end to end.
async fn assert_healthy(gw: &Gateway, alias: &str, upstream_model: &str, rid: &str) {
    let r = support::client()
        .get(gw.url("/healthz"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("healthz failed: {e}; log:\n{}", gw.logs()));
    assert_eq!(r.status().as_u16(), 200);
    let resp = post(gw, rid, &stream_body(alias, false)).await;
    assert_eq!(resp.status().as_u16(), 200, "log:\n{}", gw.logs());
    let mut s = body_stream(resp);
    let mut buf = Vec::new();
    assert_eq!(read_rest(&mut s, &mut buf, QUICK).await, BodyEnd::Clean);
    assert_eq!(
        text(&buf),
        support::sse_chat_events(upstream_model, 3).concat(),
        "stream after the fault"
    );
}

/// `(VmRSS, VmHWM)` of a process in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// o200k tokens of `s` (the tokenizer the gateway uses for `gpt-4o*`).
fn o200k(s: &str) -> u64 {
    tiktoken_rs::o200k_base_singleton().encode_ordinary(s).len() as u64
}

// ---------------------------------------------------------------------------
// SSE and HTTP building blocks
// ---------------------------------------------------------------------------

/// A `chat.completion.chunk` event carrying `delta`.
fn chunk_event(model: &str, delta: Value) -> String {
    let v = json!({"id": "chatcmpl-faults", "object": "chat.completion.chunk",
        "created": 1718000000, "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": null}]});
    format!("data: {v}\n\n")
}

/// A role event then one content event per piece (no `[DONE]`).
fn content_events(model: &str, pieces: &[&str]) -> Vec<String> {
    let mut v = vec![chunk_event(
        model,
        json!({"role": "assistant", "content": ""}),
    )];
    v.extend(
        pieces
            .iter()
            .map(|p| chunk_event(model, json!({ "content": p }))),
    );
    v
}

const SSE_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
    cache-control: no-cache\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\r\n";
const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// One HTTP/1.1 chunk holding `data`.
fn http_chunk(data: &[u8]) -> Vec<u8> {
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out
}

// ---------------------------------------------------------------------------
// A scripted raw-socket upstream
// ---------------------------------------------------------------------------

/// One step of a raw upstream's answer.
#[derive(Clone)]
enum Step {
    /// Write these bytes and flush (one `write_all`; the socket has
    /// `TCP_NODELAY`, so separate steps leave as separate segments).
    Write(Vec<u8>),
    Sleep(Duration),
    /// Wait for the test to signal (at most 20 s).
    Wait(Arc<Notify>),
    /// Send nothing; keep reading until the peer closes the connection
    /// (counted in `peer_closed`, and the script stops) or the time passes.
    Silence(Duration),
    /// Close with a TCP reset (`SO_LINGER` 0).
    Reset,
}

type Script = dyn Fn(&Value) -> Vec<Step> + Send + Sync;

/// What a [`RawUpstream`] saw.
#[derive(Default)]
struct RawLog {
    /// Request bodies (JSON), in arrival order.
    bodies: Mutex<Vec<Value>>,
    /// Connections the gateway closed while a `Silence` step was waiting.
    peer_closed: AtomicUsize,
    /// Connections on which a `Write` failed (the gateway had gone away).
    write_failed: AtomicUsize,
    /// Body-and-header bytes written successfully, over all connections.
    written: AtomicU64,
}

/// An HTTP/1.1 upstream on a raw socket: it reads one request per
/// connection, then plays the steps the script picks for its JSON body.
/// When the steps run out the connection is closed (FIN).
struct RawUpstream {
    addr: SocketAddr,
    log: Arc<RawLog>,
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

impl RawUpstream {
    async fn start(script: impl Fn(&Value) -> Vec<Step> + Send + Sync + 'static) -> RawUpstream {
        let script: Arc<Script> = Arc::new(script);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(RawLog::default());
        let tasks = Arc::new(Mutex::new(Vec::new()));
        let (log2, tasks2) = (log.clone(), tasks.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                };
                s.set_nodelay(true).unwrap();
                let t = tokio::spawn(serve_raw(s, script.clone(), log2.clone()));
                let mut tasks = tasks2.lock().unwrap();
                tasks.retain(|h: &AbortHandle| !h.is_finished());
                tasks.push(t.abort_handle());
            }
        });
        tasks.lock().unwrap().push(accept.abort_handle());
        RawUpstream { addr, log, tasks }
    }

    fn port(&self) -> u16 {
        self.addr.port()
    }

    fn hits(&self) -> usize {
        self.log.bodies.lock().unwrap().len()
    }

    fn peer_closed(&self) -> usize {
        self.log.peer_closed.load(Ordering::SeqCst)
    }

    fn write_failed(&self) -> usize {
        self.log.write_failed.load(Ordering::SeqCst)
    }

    fn written(&self) -> u64 {
        self.log.written.load(Ordering::SeqCst)
    }
}

/// Reads one request (header and `Content-Length` body); `None` on EOF.
async fn read_request(s: &mut TcpStream) -> Option<Value> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 16 * 1024];
    let head_end = loop {
        let n = s.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
        if let Some(p) = find(&buf, b"\r\n\r\n") {
            break p + 4;
        }
    };
    let head = text(&buf[..head_end]).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = s.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    }
    Some(serde_json::from_slice(&buf[head_end..head_end + len]).unwrap_or(Value::Null))
}

async fn serve_raw(mut s: TcpStream, script: Arc<Script>, log: Arc<RawLog>) {
    let Some(body) = read_request(&mut s).await else {
        return;
    };
    let steps = script(&body);
    log.bodies.lock().unwrap().push(body);
    for step in steps {
        match step {
            Step::Write(b) => {
                let ok = s.write_all(&b).await.is_ok() && s.flush().await.is_ok();
                if !ok {
                    log.write_failed.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                log.written.fetch_add(b.len() as u64, Ordering::SeqCst);
            }
            Step::Sleep(d) => tokio::time::sleep(d).await,
            Step::Wait(n) => {
                let _ = tokio::time::timeout(Duration::from_secs(20), n.notified()).await;
            }
            Step::Silence(d) => {
                let deadline = tokio::time::Instant::now() + d;
                let mut tmp = [0u8; 1024];
                loop {
                    match tokio::time::timeout_at(deadline, s.read(&mut tmp)).await {
                        Err(_) => break,
                        Ok(Ok(0)) | Ok(Err(_)) => {
                            log.peer_closed.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                        Ok(Ok(_)) => {}
                    }
                }
            }
            Step::Reset => {
                s.set_zero_linger().unwrap();
                drop(s);
                return;
            }
        }
    }
}

/// The steps of a whole SSE answer: header, one chunk per event (with
/// `gap` between them), the last chunk.
fn sse_steps(events: &[String], gap: Duration) -> Vec<Step> {
    let mut steps = vec![Step::Write(SSE_HEAD.to_vec())];
    for e in events {
        steps.push(Step::Write(http_chunk(e.as_bytes())));
        steps.push(Step::Sleep(gap));
    }
    steps.push(Step::Write(LAST_CHUNK.to_vec()));
    steps
}

fn model_of(body: &Value) -> String {
    body["model"].as_str().unwrap_or("").to_string()
}

// ---------------------------------------------------------------------------
// Row 17: a stream whose first byte is late fails over
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_with_a_late_first_byte_fails_over_before_any_byte_reaches_the_client() {
    // `late` reads the request, stays silent for 10 s (unless the gateway
    // hangs up first), then would answer a full stream saying LATE.
    let late = RawUpstream::start(|b| {
        let mut steps = vec![Step::Silence(Duration::from_secs(10))];
        let mut events = content_events(&model_of(b), &["LATE", "LATE"]);
        events.push("data: [DONE]\n\n".into());
        steps.extend(sse_steps(&events, Duration::ZERO));
        steps
    })
    .await;
    let good = MockUpstream::start(Behavior::ChatEcho).await;
    let models = "  ttft:\n    routes:\n      \
        - { provider: late, model: gpt-4o-late, timeouts: { first_byte: 300ms } }\n      \
        - { provider: good, model: gpt-4o-good }\n  \
        ttft-only:\n    routes:\n      \
        - { provider: late, model: gpt-4o-late, timeouts: { first_byte: 300ms } }";
    let gw = Gateway::start(&config(
        &[("late", late.port()), ("good", good.port())],
        models,
    ))
    .await;

    let t0 = Instant::now();
    let resp = post(&gw, "ttft-1", &stream_body("ttft", false)).await;
    let waited = t0.elapsed();
    assert_eq!(resp.status().as_u16(), 200, "log:\n{}", gw.logs());
    assert_eq!(
        header(&resp, "x-tollgate-route").as_deref(),
        Some("good/gpt-4o-good")
    );
    assert!(
        header(&resp, "content-type").is_some_and(|c| c.starts_with("text/event-stream")),
        "{:?}",
        resp.headers()
    );
    let mut s = body_stream(resp);
    let mut buf = Vec::new();
    assert_eq!(read_rest(&mut s, &mut buf, QUICK).await, BodyEnd::Clean);
    // Route 2's stream, complete and byte for byte; nothing from route 1.
    assert_eq!(
        text(&buf),
        support::sse_chat_events("gpt-4o-good", 3).concat()
    );
    assert!(!text(&buf).contains("LATE"));
    assert!(
        waited >= Duration::from_millis(280),
        "answered after {waited:?}, before first_byte (300ms) passed"
    );
    assert!(waited < Duration::from_secs(5), "fail-over took {waited:?}");
    assert_eq!((late.hits(), good.hits()), (1, 1));
    assert_eq!(late.log.bodies.lock().unwrap()[0]["model"], "gpt-4o-late");
    assert_eq!(good.last().unwrap().json()["model"], "gpt-4o-good");
    // The late attempt was abandoned: its connection is closed.
    assert!(
        wait_until(QUICK, || late.peer_closed() == 1).await,
        "the late upstream's connection was left open"
    );
    assert_eq!(late.written(), 0, "the late upstream got to answer");

    let line = gw.access_line("ttft-1").await;
    assert_eq!(line["status"], 200, "{line}");
    assert_eq!(line["attempts"], 2, "{line}");
    assert_eq!(line["provider"], "good", "{line}");
    let log = line["attempt_log"].as_array().expect("attempt_log");
    assert!(
        log.len() == 2
            && log[0].as_str().unwrap().starts_with("late@")
            && log[0].as_str().unwrap().ends_with(":timeout")
            && log[1].as_str().unwrap().ends_with(":success"),
        "{line}"
    );
    assert!(line["error"].is_null(), "{line}");

    // Row 17 with no route left: 504 upstream_timeout, not streamed.
    let t0 = Instant::now();
    let resp = post(&gw, "ttft-2", &stream_body("ttft-only", false)).await;
    let status = resp.status().as_u16();
    let ctype = header(&resp, "content-type");
    let body = resp.bytes().await.unwrap();
    assert_json_error(
        status,
        ctype.as_deref(),
        &body,
        (504, "api_error", "upstream_timeout"),
    );
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    assert_eq!(
        late.hits(),
        2,
        "no extra retry on a single-address provider"
    );

    // Metrics are recorded just before the access-log line is written,
    // after the response went out: wait for the line, then scrape.
    let _ = gw.access_line("ttft-2").await;
    let m = gw.metrics_text().await;
    assert_sample(
        &m,
        "tollgate_upstream_attempts_total",
        &[("provider", "late"), ("outcome", "timeout")],
        2.0,
    );
    assert_sample(
        &m,
        "tollgate_upstream_attempts_total",
        &[("provider", "good"), ("outcome", "success")],
        1.0,
    );
    assert_sample(
        &m,
        "tollgate_retries_total",
        &[("request_model", "ttft"), ("kind", "fallback")],
        1.0,
    );
    assert_sample(
        &m,
        "tollgate_errors_total",
        &[("code", "upstream_timeout")],
        1.0,
    );
}

// ---------------------------------------------------------------------------
// Row 22: silence mid-stream past `idle`
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silence_mid_stream_ends_with_a_timeout_error_event_after_idle() {
    const PIECES: [&str; 2] = ["Once upon", " a time"];
    // The header after 200 ms (well within first_byte), three events, then
    // silence until the gateway hangs up (at most 10 s). The header delay
    // makes the timing deterministic: the attempt's watchdog is surely
    // watching the first-byte phase when the header arrives.
    let up = RawUpstream::start(|b| {
        let events = content_events(&model_of(b), &PIECES);
        let mut steps = vec![
            Step::Sleep(Duration::from_millis(200)),
            Step::Write(SSE_HEAD.to_vec()),
        ];
        for e in &events {
            steps.push(Step::Write(http_chunk(e.as_bytes())));
            steps.push(Step::Sleep(Duration::from_millis(20)));
        }
        steps.push(Step::Silence(Duration::from_secs(10)));
        steps
    })
    .await;
    // `idle-watch`: first_byte ≠ idle, the watchdog enforces idle.
    // `idle-plain`: first_byte = idle, Pingora's read timeout does.
    let models = "  idle-watch:\n    routes:\n      \
        - { provider: silent, model: gpt-4o-watch, timeouts: { first_byte: 5s, idle: 600ms } }\n  \
        idle-plain:\n    routes:\n      \
        - { provider: silent, model: gpt-4o-plain, timeouts: { idle: 600ms } }";
    let gw = Gateway::start(&config(&[("silent", up.port())], models)).await;

    for (n, (alias, upstream_model)) in [
        ("idle-watch", "gpt-4o-watch"),
        ("idle-plain", "gpt-4o-plain"),
    ]
    .into_iter()
    .enumerate()
    {
        let rid = format!("idle-{n}");
        let sent = content_events(upstream_model, &PIECES).concat();
        let resp = post(&gw, &rid, &stream_body(alias, false)).await;
        assert_eq!(resp.status().as_u16(), 200, "{alias}; log:\n{}", gw.logs());
        let mut s = body_stream(resp);
        let mut buf = Vec::new();
        assert!(
            read_until(&mut s, &mut buf, sent.as_bytes(), QUICK).await,
            "{alias}: the three events did not arrive: {:?}",
            text(&buf)
        );
        let got_events = Instant::now();
        let end = read_rest(&mut s, &mut buf, QUICK).await;
        let silence = got_events.elapsed();
        assert_eq!(end, BodyEnd::Clean, "{alias}: error event then a clean end");
        let t = text(&buf);
        assert!(t.starts_with(&sent), "{alias}: {t:?}");
        let rest = &buf[sent.len()..];
        assert_ends_with_error_event(rest, "upstream_timeout", alias);
        assert_eq!(sse_data(&text(rest)).len(), 1, "{alias}: {t:?}");
        assert!(
            silence >= Duration::from_millis(400) && silence < Duration::from_secs(3),
            "{alias}: the stream was cut {silence:?} after the last event (idle 600ms)"
        );
        // The upstream request was abandoned, not left hanging.
        assert!(
            wait_until(QUICK, || up.peer_closed() == n + 1).await,
            "{alias}: the silent upstream's connection was left open"
        );

        let line = gw.access_line(&rid).await;
        assert_eq!(line["status"], 200, "{alias}: {line}");
        assert_eq!(line["partial"], true, "{alias}: {line}");
        assert_eq!(line["error"], "upstream_timeout", "{alias}: {line}");
        assert_eq!(line["usage_source"], "estimated", "{alias}: {line}");
        assert_eq!(
            line["completion_tokens"],
            o200k(&PIECES.concat()),
            "{alias}: only what was streamed is counted: {line}"
        );
        let m = gw.metrics_text().await;
        assert_sample(
            &m,
            "tollgate_partial_streams_total",
            &[("request_model", alias), ("provider", "silent")],
            1.0,
        );
    }
    assert_eq!(up.hits(), 2, "a broken stream was retried");
    let m = gw.metrics_text().await;
    assert_sample(
        &m,
        "tollgate_errors_total",
        &[("code", "upstream_timeout")],
        2.0,
    );
}

// ---------------------------------------------------------------------------
// Row 21: reset after N events; the `total` limit
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_after_n_events_ends_with_an_upstream_error_event() {
    const PIECES: [&str; 2] = ["The quick", " brown fox"];
    let sent_all = Arc::new(Notify::new());
    let go = sent_all.clone();
    // Three events; once the client has them all, a TCP reset.
    let up = RawUpstream::start(move |b| {
        let events = content_events(&model_of(b), &PIECES);
        let mut steps = vec![Step::Write(SSE_HEAD.to_vec())];
        steps.extend(events.iter().map(|e| Step::Write(http_chunk(e.as_bytes()))));
        steps.push(Step::Wait(go.clone()));
        steps.push(Step::Reset);
        steps
    })
    .await;
    let models = "  rst:\n    routes:\n      - { provider: rst, model: gpt-4o-rst }";
    let gw = Gateway::start(&config(&[("rst", up.port())], models)).await;

    let sent = content_events("gpt-4o-rst", &PIECES).concat();
    let t0 = Instant::now();
    let resp = post(&gw, "rst-1", &stream_body("rst", false)).await;
    assert_eq!(resp.status().as_u16(), 200, "log:\n{}", gw.logs());
    let mut s = body_stream(resp);
    let mut buf = Vec::new();
    assert!(
        read_until(&mut s, &mut buf, sent.as_bytes(), QUICK).await,
        "the three events did not arrive: {:?}",
        text(&buf)
    );
    sent_all.notify_one();
    assert_eq!(read_rest(&mut s, &mut buf, QUICK).await, BodyEnd::Clean);
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    assert!(text(&buf).starts_with(&sent), "{:?}", text(&buf));
    assert_ends_with_error_event(&buf[sent.len()..], "upstream_error", "reset");
    assert_eq!(up.hits(), 1, "a broken stream was retried");

    let line = gw.access_line("rst-1").await;
    assert_eq!(line["partial"], true, "{line}");
    assert_eq!(line["error"], "upstream_error", "{line}");
    assert_eq!(line["completion_tokens"], o200k(&PIECES.concat()), "{line}");
    let m = gw.metrics_text().await;
    assert_sample(
        &m,
        "tollgate_partial_streams_total",
        &[("request_model", "rst"), ("provider", "rst")],
        1.0,
    );
    // The attempt itself succeeded (headers accepted); the break is not a
    // failed attempt and was not retried.
    assert_sample(
        &m,
        "tollgate_upstream_attempts_total",
        &[("provider", "rst"), ("outcome", "success")],
        1.0,
    );
    assert_eq!(
        sample(
            &m,
            "tollgate_upstream_attempts_total",
            &[("provider", "rst"), ("outcome", "read_error")]
        )
        .unwrap_or(0.0),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_inside_an_event_still_ends_with_a_parseable_error_event() {
    const PIECES: [&str; 1] = ["Half"];
    let gate = Arc::new(Notify::new());
    let go = gate.clone();
    // Two whole events, then the first half of a third, then a reset.
    let up = RawUpstream::start(move |b| {
        let model = model_of(b);
        let events = content_events(&model, &PIECES);
        let third = chunk_event(&model, json!({"content": " and half"}));
        let mut steps = vec![Step::Write(SSE_HEAD.to_vec())];
        steps.extend(events.iter().map(|e| Step::Write(http_chunk(e.as_bytes()))));
        steps.push(Step::Wait(go.clone()));
        steps.push(Step::Write(http_chunk(
            &third.as_bytes()[..third.len() / 2],
        )));
        steps.push(Step::Sleep(Duration::from_millis(150)));
        steps.push(Step::Reset);
        steps
    })
    .await;
    let models = "  half:\n    routes:\n      - { provider: half, model: gpt-4o-half }";
    let gw = Gateway::start(&config(&[("half", up.port())], models)).await;

    // Without include_usage the gateway holds unfinished events back (it
    // may cut the usage chunk); with it, bytes pass as they come.
    for (n, include_usage) in [false, true].into_iter().enumerate() {
        let what = format!("include_usage={include_usage}");
        let sent = content_events("gpt-4o-half", &PIECES).concat();
        let resp = post(
            &gw,
            &format!("half-{n}"),
            &stream_body("half", include_usage),
        )
        .await;
        assert_eq!(resp.status().as_u16(), 200, "{what}; log:\n{}", gw.logs());
        let mut s = body_stream(resp);
        let mut buf = Vec::new();
        assert!(
            read_until(&mut s, &mut buf, sent.as_bytes(), QUICK).await,
            "{what}: {:?}",
            text(&buf)
        );
        gate.notify_one();
        assert_eq!(read_rest(&mut s, &mut buf, QUICK).await, BodyEnd::Clean);
        assert!(text(&buf).starts_with(&sent), "{what}: {:?}", text(&buf));
        // Whatever happens to the half event, an SDK must be able to parse
        // the final error event on its own.
        assert_ends_with_error_event(&buf[sent.len()..], "upstream_error", &what);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn total_limit_cuts_a_long_stream_with_a_timeout_error_event() {
    // 40 events 100 ms apart (4 s), then [DONE]; `total` is 800 ms.
    let pieces: Vec<String> = (0..39).map(|i| format!(" w{i}")).collect();
    let up = RawUpstream::start(move |b| {
        let refs: Vec<&str> = pieces.iter().map(String::as_str).collect();
        let mut events = content_events(&model_of(b), &refs);
        events.push("data: [DONE]\n\n".into());
        sse_steps(&events, Duration::from_millis(100))
    })
    .await;
    let models = "  long:\n    routes:\n      \
        - { provider: long, model: gpt-4o-long, timeouts: { total: 800ms } }";
    let gw = Gateway::start(&config(&[("long", up.port())], models)).await;

    let t0 = Instant::now();
    let resp = post(&gw, "total-1", &stream_body("long", false)).await;
    assert_eq!(resp.status().as_u16(), 200, "log:\n{}", gw.logs());
    let mut s = body_stream(resp);
    let mut buf = Vec::new();
    assert_eq!(read_rest(&mut s, &mut buf, QUICK).await, BodyEnd::Clean);
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(700) && took < Duration::from_secs(3),
        "cut after {took:?} (total 800ms, full stream 4 s)"
    );
    let t = text(&buf);
    // A whole-event prefix of what the upstream sent, then the error event.
    let all_pieces: Vec<String> = (0..39).map(|i| format!(" w{i}")).collect();
    let refs: Vec<&str> = all_pieces.iter().map(String::as_str).collect();
    let sent = content_events("gpt-4o-long", &refs);
    let mut prefix = 0;
    let mut k = 0;
    while k < sent.len() && t[prefix..].starts_with(&sent[k]) {
        prefix += sent[k].len();
        k += 1;
    }
    assert!(
        (3..sent.len()).contains(&k),
        "{k} whole events before the cut: {t:?}"
    );
    assert_ends_with_error_event(&buf[prefix..], "upstream_timeout", "total");
    assert!(
        wait_until(QUICK, || up.write_failed() == 1).await,
        "the upstream kept streaming after the cut"
    );
    let line = gw.access_line("total-1").await;
    assert_eq!(line["partial"], true, "{line}");
    assert_eq!(line["error"], "upstream_timeout", "{line}");
}

// ---------------------------------------------------------------------------
// Row 20: HTML where SSE was expected
// ---------------------------------------------------------------------------

const HTML: &str = "<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head>\
    <body><h1>Bad Gateway</h1><p>cloudflare</p></body></html>";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn html_where_sse_was_expected_is_a_502_or_fails_over() {
    let html = MockUpstream::start(Behavior::func(|_| Reply {
        status: 200,
        headers: vec![("content-type".into(), "text/html; charset=utf-8".into())],
        body: ReplyBody::Full(Bytes::from(HTML)),
    }))
    .await;
    let good = MockUpstream::start(Behavior::ChatEcho).await;
    let models = "  html-only:\n    routes:\n      - { provider: html, model: gpt-4o-html }\n  \
        html-then-good:\n    routes:\n      - { provider: html, model: gpt-4o-html }\n      \
        - { provider: good, model: gpt-4o-good }";
    let gw = Gateway::start(&config(
        &[("html", html.port()), ("good", good.port())],
        models,
    ))
    .await;

    // No route left: our own 502, never the HTML.
    let resp = post(&gw, "html-1", &stream_body("html-only", false)).await;
    let status = resp.status().as_u16();
    let ctype = header(&resp, "content-type");
    let body = resp.bytes().await.unwrap();
    assert!(!text(&body).contains("<html"), "{:?}", text(&body));
    assert_json_error(
        status,
        ctype.as_deref(),
        &body,
        (502, "api_error", "upstream_error"),
    );
    assert_eq!((html.hits(), good.hits()), (1, 0));

    // A route left: it fails over before any byte reaches the client.
    let resp = post(&gw, "html-2", &stream_body("html-then-good", false)).await;
    assert_eq!(resp.status().as_u16(), 200, "log:\n{}", gw.logs());
    assert_eq!(
        header(&resp, "x-tollgate-route").as_deref(),
        Some("good/gpt-4o-good")
    );
    let mut s = body_stream(resp);
    let mut buf = Vec::new();
    assert_eq!(read_rest(&mut s, &mut buf, QUICK).await, BodyEnd::Clean);
    assert_eq!(
        text(&buf),
        support::sse_chat_events("gpt-4o-good", 3).concat()
    );
    assert_eq!((html.hits(), good.hits()), (2, 1));

    let line = gw.access_line("html-2").await;
    assert_eq!(line["attempts"], 2, "{line}");
    let m = gw.metrics_text().await;
    assert_sample(
        &m,
        "tollgate_upstream_attempts_total",
        &[("provider", "html"), ("outcome", "bad_response")],
        2.0,
    );
    assert_sample(
        &m,
        "tollgate_errors_total",
        &[("code", "upstream_error")],
        1.0,
    );
    // Only stream requests judge the content type (docs/config.md): the
    // same 200 HTML answering a non-stream request is passed on as is.
    let resp = support::client()
        .post(gw.url("/v1/chat/completions"))
        .header("authorization", format!("Bearer {KEY}"))
        .body(
            json!({"model": "html-only", "messages": [{"role": "user", "content": "x"}]})
                .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(html.hits(), 3);
}

// ---------------------------------------------------------------------------
// Row 25: malformed SSE passes through
// ---------------------------------------------------------------------------

/// Broken JSON, an unknown `event:`, comments, `id:`/`retry:` fields, a
/// `usage` that does not parse, and no `[DONE]`; the last event is not even
/// terminated by a blank line.
fn malformed_events() -> Vec<String> {
    vec![
        ": keep-alive\n\n".into(),
        "event: mystery\ndata: {\"weird\": true}\n\n".into(),
        chunk_event("gpt-4o-bad", json!({"role": "assistant", "content": ""})),
        chunk_event("gpt-4o-bad", json!({"content": "Hello there"})),
        "data: {not json at all\n\n".into(),
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\" general\"}}]\n\n".into(),
        "id: 7\nretry: 10\ndata: plain text, no JSON\n\n".into(),
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\": 5,\n\n".into(),
        ": another comment\n".into(),
        "data: {\"error\": \n\n".into(),
        "event: ping\n\n".into(),
        "data: {\"trailing\": \"unterminated\"}\n".into(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_sse_passes_through_byte_for_byte_and_is_estimated() {
    let up = MockUpstream::start(Behavior::sse(malformed_events(), Duration::from_millis(5))).await;
    let models = "  bad:\n    routes:\n      - { provider: bad, model: gpt-4o-bad }";
    let gw = Gateway::start(&config(&[("bad", up.port())], models)).await;
    let expected = malformed_events().concat();

    for (n, include_usage) in [false, true].into_iter().enumerate() {
        let what = format!("include_usage={include_usage}");
        let rid = format!("bad-{n}");
        let resp = post(&gw, &rid, &stream_body("bad", include_usage)).await;
        assert_eq!(resp.status().as_u16(), 200, "{what}; log:\n{}", gw.logs());
        let mut s = body_stream(resp);
        let mut buf = Vec::new();
        assert_eq!(
            read_rest(&mut s, &mut buf, QUICK).await,
            BodyEnd::Clean,
            "{what}"
        );
        // Exactly the upstream's bytes: nothing dropped, fixed or appended.
        assert_eq!(text(&buf), expected, "{what}");

        let line = gw.access_line(&rid).await;
        assert_eq!(line["status"], 200, "{what}: {line}");
        assert!(line["error"].is_null(), "{what}: {line}");
        assert_eq!(line["usage_source"], "estimated", "{what}: {line}");
        // The text that could be read is counted.
        let completion = line["completion_tokens"].as_u64().unwrap();
        assert!(
            completion >= o200k("Hello there"),
            "{what}: completion_tokens {completion}: {line}"
        );
        // No end marker: documented as a partial stream.
        assert_eq!(line["partial"], true, "{what}: {line}");
    }
    assert!(!gw.logs().contains("panicked"), "log:\n{}", gw.logs());
    let m = gw.metrics_text().await;
    assert_sample(
        &m,
        "tollgate_usage_estimated_total",
        &[("request_model", "bad"), ("provider", "bad")],
        2.0,
    );

    // Still healthy for the next request on the same upstream.
    up.set_behavior(Behavior::ChatEcho);
    assert_healthy(&gw, "bad", "gpt-4o-bad", "bad-after").await;
    assert_eq!(up.hits(), 3);
}

// ---------------------------------------------------------------------------
// Row 23: odd splits, CRLF/CR endings, a UTF-8 character across reads
// ---------------------------------------------------------------------------

/// A stream mixing CRLF, CR and LF line endings, an `event:` line, a
/// comment and multi-byte characters; with a usage chunk when `usage`.
fn mixed_stream(model: &str, usage: bool) -> String {
    let ev = |delta: Value| {
        json!({"id": "chatcmpl-split", "object": "chat.completion.chunk", "created": 1718000000,
            "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": null}]})
        .to_string()
    };
    let mut s = String::new();
    s += &format!(
        "data: {}\r\n\r\n",
        ev(json!({"role": "assistant", "content": ""}))
    );
    s += &format!("data: {}\r\r", ev(json!({"content": "héllo"})));
    s += &format!(
        "event: message\r\ndata: {}\n\n",
        ev(json!({"content": " 世界"}))
    );
    s += ": comment\r\n\r\n";
    s += &format!("data: {}\r\n\r\n", ev(json!({"content": " 🚀 ok"})));
    if usage {
        let u = json!({"id": "chatcmpl-split", "object": "chat.completion.chunk",
            "created": 1718000000, "model": model, "choices": [],
            "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}});
        s += &format!("data: {u}\r\r");
    }
    s += "data: [DONE]\r\n\r\n";
    s
}

const MIXED_TEXT: &str = "héllo 世界 🚀 ok";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_splits_line_endings_and_split_utf8_arrive_byte_identical() {
    let up = RawUpstream::start(|b| {
        let model = model_of(b);
        let mut steps = vec![Step::Write(SSE_HEAD.to_vec())];
        if model == "gpt-4o-bytes" {
            // Every byte its own HTTP chunk and TCP write.
            for &byte in mixed_stream(&model, true).as_bytes() {
                steps.push(Step::Write(http_chunk(&[byte])));
                steps.push(Step::Sleep(Duration::from_millis(1)));
            }
        } else {
            // Chosen splits, 30 ms apart: inside é (2 bytes), 世 (3) and
            // 🚀 (4), between a CR and its LF, right after a lone CR.
            let s = mixed_stream(&model, false).into_bytes();
            let at = |needle: &str, off: usize| find(&s, needle.as_bytes()).unwrap() + off;
            let mut cuts = vec![
                at("\r\n", 1),
                at("é", 1),
                at("\r\r", 1),
                at("\r\r", 2),
                at("世", 1),
                at("世", 2),
                at("界", 2),
                at("\n\n", 1),
                at(": comment\r", 10),
                at("🚀", 1),
                at("🚀", 3),
                s.len() - 1,
            ];
            cuts.sort_unstable();
            cuts.dedup();
            let mut prev = 0;
            for c in cuts.into_iter().chain([s.len()]) {
                steps.push(Step::Write(http_chunk(&s[prev..c])));
                steps.push(Step::Sleep(Duration::from_millis(30)));
                prev = c;
            }
        }
        steps.push(Step::Write(LAST_CHUNK.to_vec()));
        steps
    })
    .await;
    let models =
        "  split-bytes:\n    routes:\n      - { provider: split, model: gpt-4o-bytes }\n  \
        split-odd:\n    routes:\n      - { provider: split, model: gpt-4o-odd }";
    let gw = Gateway::start(&config(&[("split", up.port())], models)).await;

    // 1. One byte per read, with the usage chunk the client asked for.
    let resp = post(&gw, "split-1", &stream_body("split-bytes", true)).await;
    assert_eq!(resp.status().as_u16(), 200, "log:\n{}", gw.logs());
    let mut s = body_stream(resp);
    let mut buf = Vec::new();
    assert_eq!(read_rest(&mut s, &mut buf, QUICK).await, BodyEnd::Clean);
    assert_eq!(
        buf,
        mixed_stream("gpt-4o-bytes", true).into_bytes(),
        "got {:?}",
        text(&buf)
    );
    let line = gw.access_line("split-1").await;
    assert_eq!(line["usage_source"], "reported", "{line}");
    assert_eq!(
        (&line["prompt_tokens"], &line["completion_tokens"]),
        (&json!(11), &json!(7)),
        "{line}"
    );
    assert_eq!(line["partial"], false, "{line}");

    // 2. Odd splits; the client did not ask for usage, so the gateway holds
    // unfinished events back while it looks for a usage chunk to cut.
    let resp = post(&gw, "split-2", &stream_body("split-odd", false)).await;
    assert_eq!(resp.status().as_u16(), 200, "log:\n{}", gw.logs());
    let mut s = body_stream(resp);
    let mut buf = Vec::new();
    assert_eq!(read_rest(&mut s, &mut buf, QUICK).await, BodyEnd::Clean);
    assert_eq!(
        buf,
        mixed_stream("gpt-4o-odd", false).into_bytes(),
        "got {:?}",
        text(&buf)
    );
    let line = gw.access_line("split-2").await;
    assert_eq!(line["usage_source"], "estimated", "{line}");
    // The streamed text was read intact across the splits.
    assert_eq!(line["completion_tokens"], o200k(MIXED_TEXT), "{line}");
    assert_eq!(line["partial"], false, "{line}");
}

// ---------------------------------------------------------------------------
// Row 24: a 1 MiB line passes; an endless line is cut
// ---------------------------------------------------------------------------

const MIB: usize = 1024 * 1024;

/// `n` bytes of ASCII prose (many short words, cheap to tokenize).
fn prose(n: usize) -> String {
    let words = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do ";
    words.repeat(n / words.len() + 1)[..n].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_mib_line_passes_and_an_endless_line_is_cut_with_bounded_memory() {
    const ENDLESS: usize = 128 * MIB;
    let up = RawUpstream::start(|b| {
        let model = model_of(b);
        let role = chunk_event(&model, json!({"role": "assistant", "content": ""}));
        let mut steps = vec![
            Step::Write(SSE_HEAD.to_vec()),
            Step::Write(http_chunk(role.as_bytes())),
        ];
        if model == "gpt-4o-big" {
            let line = chunk_event(&model, json!({ "content": prose(MIB) }));
            for piece in line.as_bytes().chunks(64 * 1024) {
                steps.push(Step::Write(http_chunk(piece)));
            }
        } else {
            // A data line that never ends (128 MiB without a line break).
            let open = "data: {\"id\":\"chatcmpl-endless\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"";
            steps.push(Step::Write(http_chunk(open.as_bytes())));
            let block = http_chunk(prose(256 * 1024).as_bytes());
            for _ in 0..ENDLESS / (256 * 1024) {
                steps.push(Step::Write(block.clone()));
            }
            steps.push(Step::Write(http_chunk(b"\"}}]}\n\n")));
        }
        steps.push(Step::Write(http_chunk(b"data: [DONE]\n\n")));
        steps.push(Step::Write(LAST_CHUNK.to_vec()));
        steps
    })
    .await;
    let good = MockUpstream::start(Behavior::ChatEcho).await;
    let models = "  big:\n    routes:\n      - { provider: big, model: gpt-4o-big }\n  \
        endless:\n    routes:\n      - { provider: big, model: gpt-4o-endless }\n  \
        after:\n    routes:\n      - { provider: good, model: gpt-4o-good }";
    let gw = Gateway::start(&config(
        &[("big", up.port()), ("good", good.port())],
        models,
    ))
    .await;

    // A 1 MiB line, with and without the gateway holding events back.
    for (n, include_usage) in [false, true].into_iter().enumerate() {
        let resp = post(&gw, &format!("big-{n}"), &stream_body("big", include_usage)).await;
        assert_eq!(resp.status().as_u16(), 200, "log:\n{}", gw.logs());
        let mut s = body_stream(resp);
        let mut buf = Vec::new();
        assert_eq!(read_rest(&mut s, &mut buf, QUICK).await, BodyEnd::Clean);
        let mut expected = chunk_event("gpt-4o-big", json!({"role": "assistant", "content": ""}));
        expected += &chunk_event("gpt-4o-big", json!({ "content": prose(MIB) }));
        expected += "data: [DONE]\n\n";
        assert!(
            buf == expected.as_bytes(),
            "include_usage={include_usage}: {} bytes received, {} sent; tail {:?}",
            buf.len(),
            expected.len(),
            tail(&buf)
        );
    }

    // An endless line: cut past the cap with an error event; memory bounded.
    let (rss_before, hwm_before) = memory_kib(gw.pid());
    let resp = post(&gw, "endless-1", &stream_body("endless", false)).await;
    assert_eq!(resp.status().as_u16(), 200, "log:\n{}", gw.logs());
    let mut s = body_stream(resp);
    // Count the bytes and keep only the tail (the gateway may forward it all).
    let mut got = 0usize;
    let mut end_part = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let end = loop {
        match tokio::time::timeout_at(deadline, s.next()).await {
            Ok(Some(Ok(b))) => {
                got += b.len();
                end_part.extend_from_slice(&b);
                if end_part.len() > 256 * 1024 {
                    end_part.drain(..end_part.len() - 64 * 1024);
                }
            }
            Ok(Some(Err(e))) => break BodyEnd::Error(format!("{e:?}")),
            Ok(None) => break BodyEnd::Clean,
            Err(_) => panic!("the endless stream did not end; got {} MiB", got / MIB),
        }
    };
    let (_, hwm_after) = memory_kib(gw.pid());
    // Bounded: the peak grows by a fixed amount (the 4 MiB scan cap and its
    // copies: 40-60 MiB measured, the same for a 16, 64 or 128 MiB line),
    // never by the line's length (buffering this line would take 128 MiB).
    let grew_mib = hwm_after.saturating_sub(hwm_before.max(rss_before)) / 1024;
    assert!(
        grew_mib < 96,
        "gateway peak RSS grew by {grew_mib} MiB for one {} MiB line",
        ENDLESS / MIB
    );
    assert!(
        got < 16 * MIB,
        "the endless line was not cut: the client got {} MiB (upstream wrote {} MiB), \
         ending {end:?} with {:?}",
        got / MIB,
        up.written() / MIB as u64,
        tail(&end_part)
    );
    assert_eq!(end, BodyEnd::Clean, "error event then a clean end");
    assert_ends_with_error_event(&end_part, "upstream_error", "endless line");
    assert!(
        wait_until(QUICK, || up.write_failed() == 1).await,
        "the upstream was not aborted: it wrote {} MiB",
        up.written() / MIB as u64
    );

    // Healthy afterwards.
    assert_healthy(&gw, "after", "gpt-4o-good", "after-1").await;
}

// ---------------------------------------------------------------------------
// A non-stream body cut short
// ---------------------------------------------------------------------------

/// A raw HTTP/1.1 exchange: writes a request, reads until EOF or reset.
/// Returns the bytes and whether the read ended in an error (reset).
async fn raw_exchange(addr: &str, request: &[u8]) -> (Vec<u8>, Option<String>) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let mut tmp = vec![0u8; 64 * 1024];
    let deadline = tokio::time::Instant::now() + QUICK;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut tmp)).await {
            Err(_) => panic!("connection neither completed nor closed: {:?}", text(&out)),
            Ok(Ok(0)) => return (out, None),
            Ok(Ok(n)) => out.extend_from_slice(&tmp[..n]),
            Ok(Err(e)) => return (out, Some(e.to_string())),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_stream_body_cut_short_never_looks_like_a_complete_200() {
    const DECLARED: usize = 1000;
    let up = RawUpstream::start(|b| {
        let sent: usize = if model_of(b) == "gpt-4o-short100" {
            100
        } else {
            0
        };
        let body = format!(
            "{{\"id\":\"chatcmpl-short\",\"object\":\"chat.completion\",\"choices\":[{{\"index\":0,\
             \"message\":{{\"role\":\"assistant\",\"content\":\"{}\"}}}}]}}",
            "x".repeat(DECLARED)
        );
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
             content-length: {DECLARED}\r\nconnection: close\r\n\r\n"
        );
        let mut first = head.into_bytes();
        first.extend_from_slice(&body.as_bytes()[..sent]);
        vec![Step::Write(first), Step::Sleep(Duration::from_millis(100))]
    })
    .await;
    let models =
        "  short100:\n    routes:\n      - { provider: short, model: gpt-4o-short100 }\n  \
        short0:\n    routes:\n      - { provider: short, model: gpt-4o-short0 }";
    let gw = Gateway::start(&config(&[("short", up.port())], models)).await;

    for (alias, sent) in [("short100", 100usize), ("short0", 0)] {
        let body =
            json!({"model": alias, "messages": [{"role": "user", "content": "hi"}]}).to_string();
        let rid = format!("cut-{alias}");
        let req = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\n\
             content-type: application/json\r\nx-request-id: {rid}\r\n\
             content-length: {}\r\n\r\n{body}",
            body.len()
        );
        let (raw, reset) = raw_exchange(&gw.listen_addr(), req.as_bytes()).await;
        let head_end = find(&raw, b"\r\n\r\n")
            .unwrap_or_else(|| panic!("{alias}: no response header: {:?} {reset:?}", text(&raw)));
        let head = text(&raw[..head_end]).to_ascii_lowercase();
        let body = &raw[head_end + 4..];
        let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
        let content_length: Option<usize> = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map(|v| v.trim().parse().unwrap());
        let chunked = head.contains("transfer-encoding: chunked");
        // What the gateway does: the upstream's 200 header (with its
        // Content-Length) is already on its way when the body breaks, so the
        // client gets a 200 whose body stops short of its declared length
        // and the connection closes: every HTTP client reports the
        // truncation (reqwest, the SDKs' httpx: "incomplete message body").
        // A 5xx error before the header would also be fine; a 200 whose
        // framing says "complete" would not.
        if status == 200 {
            match (content_length, chunked) {
                (Some(len), false) => assert!(
                    body.len() < len,
                    "{alias}: a truncated body is framed as complete ({} of {len} bytes)",
                    body.len()
                ),
                (None, true) => assert!(
                    !raw.ends_with(b"0\r\n\r\n"),
                    "{alias}: a truncated chunked body has its last chunk"
                ),
                _ => panic!("{alias}: close-delimited 200: truncation is invisible: {head}"),
            }
            assert!(
                body.len() <= sent,
                "{alias}: {} body bytes for {sent} sent",
                body.len()
            );
        } else {
            assert!(status >= 500, "{alias}: {head}");
            let v: Value = serde_json::from_slice(body)
                .unwrap_or_else(|_| panic!("{alias}: error body not JSON: {:?}", text(body)));
            assert_eq!(v["error"]["code"], "upstream_error", "{v}");
        }
        // The same seen through reqwest: an error, never a body.
        let resp = support::client()
            .post(gw.url("/v1/chat/completions"))
            .header("authorization", format!("Bearer {KEY}"))
            .header("content-type", "application/json")
            .body(
                json!({"model": alias, "messages": [{"role": "user", "content": "hi"}]})
                    .to_string(),
            )
            .send()
            .await;
        match resp {
            Ok(r) if r.status().as_u16() == 200 => {
                let got = r.bytes().await;
                assert!(
                    got.is_err(),
                    "{alias}: reqwest read a complete 200: {got:?}"
                );
            }
            Ok(r) => assert!(r.status().as_u16() >= 500, "{alias}: {}", r.status()),
            Err(e) => panic!("{alias}: request failed before a status: {e}"),
        }
        let line = gw.access_line(&rid).await;
        assert_eq!(line["error"], "upstream_error", "{alias}: {line}");
    }
    assert_eq!(up.hits(), 4, "a broken body was retried");
}
