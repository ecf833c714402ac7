#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Process lifecycle and cancellation (`../shared/RELIABILITY.md` rows
//! 27–33, except row 30, which `config_reload` covers): the real gateway
//! binary in front of mock upstreams on loopback.
//!
//! - Row 27: a client that leaves (mid-stream, during a slow non-stream
//!   request, before the response header) cancels the upstream request at
//!   once, frees its in-flight slot and is logged with what it was served.
//! - Row 28: a client that reads (almost) nothing is dropped after
//!   `downstream.write_timeout`, its upstream is cancelled, and the gateway's
//!   memory stays bounded meanwhile.
//! - Row 29: 200 requests, half streaming, across 10 SIGHUPs: none fails.
//! - Row 31: SIGTERM drains streams in flight, refuses new connections and
//!   exits 0; an idle gateway exits at once.
//! - Row 32: SIGQUIT graceful upgrade to a `-u` process refuses no request,
//!   including one on a connection the old process accepted just before it
//!   stopped accepting.
//! - Row 33: a panic in one request answers that request 500 and nothing
//!   else notices.
//!
//! Clients that must leave at an exact point (after two SSE events, before
//! the response header) are raw TCP, so what the client saw is exactly what
//! the test says.

mod support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{json, Value};
use support::prom::{sample, sum};
use support::{
    find, sse_chat_events, text, wait_until, Behavior, Gateway, MockUpstream, Reply, ReplyBody,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const KEY: &str = "tg-lifecycle-alice-key-01";
/// Generous bound for anything that should be immediate (2 shared cores).
const QUICK: Duration = Duration::from_secs(10);
/// RELIABILITY row 27 / issue 5: the upstream sees the cancel promptly. It
/// takes milliseconds; the bound leaves room for two loaded cores. (The
/// upstreams here never finish on their own, so a cancel cannot be
/// mistaken for an end.)
const CANCEL_WITHIN: Duration = Duration::from_secs(5);
const IN_FLIGHT: &str = "tollgate_requests_in_flight";
const RELOADS: &str = "tollgate_config_reloads_total";

/// Providers `a` and `b` (mocks on ports `a` and `b`, which may be the same),
/// alias `fast` routed to `target` with upstream model `{target}-fast`, key
/// alice, the access log in `{TMP}/access.log`, a 10 s grace period. `extra`
/// is more top-level YAML (e.g. a `downstream:` block).
fn config(a: u16, b: u16, target: &str, extra: &str) -> String {
    format!(
        r#"
listen: "{{LISTEN}}"
metrics_listen: "{{METRICS}}"
server: {{ pid_file: "{{TMP}}/t.pid", upgrade_sock: "{{TMP}}/u.sock", grace_period: 10s, shutdown_timeout: 1s }}
access_log: {{ path: "{{TMP}}/access.log" }}
{extra}
providers:
  a:
    kind: openai
    base_url: "http://127.0.0.1:{a}/v1"
    health_check: {{ enabled: false }}
  b:
    kind: openai
    base_url: "http://127.0.0.1:{b}/v1"
    health_check: {{ enabled: false }}
models:
  fast:
    routes: [ {{ provider: {target}, model: {target}-fast }} ]
keys:
  - {{ name: alice, key: "{KEY}" }}
"#
    )
}

/// The same mock on both providers; `fast` goes to `a`.
fn config1(port: u16, extra: &str) -> String {
    config(port, port, "a", extra)
}

fn chat_body(stream: bool) -> String {
    json!({"model": "fast", "stream": stream,
        "messages": [{"role": "user", "content": "count to fifty"}]})
    .to_string()
}

/// A raw `POST /v1/chat/completions` with `x-request-id: id`.
fn raw_chat(id: &str, stream: bool) -> Vec<u8> {
    let body = chat_body(stream);
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: tollgate.test\r\n\
         Authorization: Bearer {KEY}\r\nContent-Type: application/json\r\n\
         x-request-id: {id}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Non-overlapping occurrences of `needle` in `hay`.
fn count(hay: &[u8], needle: &[u8]) -> usize {
    let mut n = 0;
    let mut i = 0;
    while i + needle.len() <= hay.len() {
        if &hay[i..i + needle.len()] == needle {
            n += 1;
            i += needle.len();
        } else {
            i += 1;
        }
    }
    n
}

// ---------------------------------------------------------------------------
// Private helpers: raw client, a hanging upstream, gauges, the access log
// ---------------------------------------------------------------------------

/// A raw HTTP/1.1 client connection.
struct RawClient {
    s: TcpStream,
    buf: Vec<u8>,
}

impl RawClient {
    async fn connect(addr: &str) -> RawClient {
        let s = TcpStream::connect(addr).await.expect("connect to gateway");
        s.set_nodelay(true).expect("nodelay");
        RawClient { s, buf: Vec::new() }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).await.expect("write request");
        self.s.flush().await.expect("flush");
    }

    /// Reads until `done(&buf)` holds; `Err` on EOF, error or timeout.
    async fn read_until(
        &mut self,
        timeout: Duration,
        done: impl Fn(&[u8]) -> bool,
    ) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut tmp = vec![0u8; 16 * 1024];
        while !done(&self.buf) {
            match tokio::time::timeout_at(deadline, self.s.read(&mut tmp)).await {
                Err(_) => return Err(format!("timed out; got {:?}", text(&self.buf))),
                Ok(Err(e)) => return Err(format!("read error {e}; got {:?}", text(&self.buf))),
                Ok(Ok(0)) => return Err(format!("EOF; got {:?}", text(&self.buf))),
                Ok(Ok(n)) => self.buf.extend_from_slice(&tmp[..n]),
            }
        }
        Ok(())
    }
}

/// An upstream that reads each request and never answers. It counts the
/// requests it received and the connections the gateway closed after
/// sending one (the upstream's view of a cancellation).
struct HangUpstream {
    port: u16,
    requests: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
    accept: tokio::task::JoinHandle<()>,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl HangUpstream {
    async fn start() -> HangUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let requests = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (rq, cl, cs) = (requests.clone(), closed.clone(), conns.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    continue;
                };
                let (rq, cl) = (rq.clone(), cl.clone());
                let task = tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut tmp = vec![0u8; 16 * 1024];
                    let mut got_request = false;
                    loop {
                        let n = s.read(&mut tmp).await.unwrap_or(0);
                        if n == 0 {
                            if got_request {
                                cl.fetch_add(1, Ordering::SeqCst);
                            }
                            return;
                        }
                        buf.extend_from_slice(&tmp[..n]);
                        if !got_request && request_complete(&buf) {
                            got_request = true;
                            rq.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                });
                cs.lock().unwrap().push(task.abort_handle());
            }
        });
        HangUpstream {
            port,
            requests,
            closed,
            accept,
            conns,
        }
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    fn closed(&self) -> usize {
        self.closed.load(Ordering::SeqCst)
    }
}

impl Drop for HangUpstream {
    fn drop(&mut self) {
        self.accept.abort();
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }
}

/// A complete request header plus its `Content-Length` body.
fn request_complete(buf: &[u8]) -> bool {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = text(&buf[..end]).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    buf.len() >= end + 4 + len
}

/// Starts a gateway and waits until no request is in flight (a readiness
/// probe abandoned by a slow start may still be finishing).
async fn start(yaml: &str) -> Gateway {
    let gw = Gateway::start(yaml).await;
    assert_in_flight_drains(&gw).await;
    gw
}

async fn in_flight(gw: &Gateway) -> f64 {
    sample(&gw.metrics_text().await, IN_FLIGHT, &[]).expect("in-flight gauge exported")
}

/// Waits (up to 30 s: once it took over 10 s beside a 256 MiB stream on
/// an overloaded machine) until the in-flight gauge is back to 0.
async fn assert_in_flight_drains(gw: &Gateway) {
    let deadline = Instant::now() + 3 * QUICK;
    loop {
        let v = in_flight(gw).await;
        if v == 0.0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{IN_FLIGHT} stuck at {v}; log:\n{}",
            gw.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Resident memory of `pid` in bytes.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS");
    kb * 1024
}

/// An upstream that echoes the request's model: a JSON completion, or
/// `sse_chat_events(model, n)` with `interval` between events when asked to
/// stream.
fn echo(n: usize, interval: Duration) -> Behavior {
    Behavior::func(move |r| {
        let v = r.json();
        let model = v["model"].as_str().unwrap_or("?").to_string();
        if v["stream"] == true {
            Reply::sse(sse_chat_events(&model, n), interval)
        } else {
            Reply::json(200, completion(&model).to_string())
        }
    })
}

fn completion(model: &str) -> Value {
    json!({
        "id": "chatcmpl-lifecycle",
        "object": "chat.completion",
        "created": 1_700_000_000u64,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "echo"},
            "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
    })
}

/// `(status, body)` of a request, or its transport error.
type Outcome = Result<(u16, String), String>;

/// POST a chat request through `client`: `(status, body)` or the transport error.
async fn post(
    client: &reqwest::Client,
    gw_url: &str,
    stream: bool,
    extra: &[(&str, &str)],
) -> Outcome {
    let mut req = client
        .post(format!("{gw_url}/v1/chat/completions"))
        .header("authorization", format!("Bearer {KEY}"))
        .header("content-type", "application/json")
        .body(chat_body(stream));
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.map_err(|e| format!("send: {e:?}"))?;
    let status = resp.status().as_u16();
    let body = resp.text().await.map_err(|e| format!("body: {e:?}"))?;
    Ok((status, body))
}

// ---------------------------------------------------------------------------
// Row 27: cancellation
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row27_client_gone_mid_stream_cancels_upstream_and_logs_partial_usage() {
    // 50 events; after the first (the role), each waits for the gate. The
    // test lets two content events through, so exactly "tok0" and "tok1"
    // are delivered before the client leaves.
    let events = sse_chat_events("a-fast", 47);
    assert_eq!(events.len(), 50);
    let gate = support::Gate::new();
    let g = gate.clone();
    let up = MockUpstream::start(Behavior::func(move |_| Reply {
        status: 200,
        headers: vec![("content-type".into(), "text/event-stream".into())],
        body: ReplyBody::Gated(events.iter().cloned().map(Bytes::from).collect(), g.clone()),
    }))
    .await;
    let gw = start(&config1(up.port(), "")).await;

    let id = "lifecycle-mid-stream";
    let mut c = RawClient::connect(&gw.listen_addr()).await;
    c.send(&raw_chat(id, true)).await;
    gate.open(2);
    c.read_until(QUICK, |b| count(b, b"data: ") >= 3)
        .await
        .unwrap_or_else(|e| panic!("three events: {e}; log:\n{}", gw.logs()));
    assert!(find(&c.buf, b"tok1").is_some(), "{}", text(&c.buf));
    assert!(c.buf.starts_with(b"HTTP/1.1 200"), "{}", text(&c.buf));
    assert_eq!(in_flight(&gw).await, 1.0, "the stream is in flight");
    assert_eq!(up.cancelled(), 0);

    let t = Instant::now();
    drop(c);
    assert!(
        up.wait_cancelled(1, QUICK).await,
        "the upstream stream was never cancelled; log:\n{}",
        gw.logs()
    );
    let took = t.elapsed();
    assert!(
        took <= CANCEL_WITHIN,
        "upstream cancelled {took:?} after the client left"
    );
    assert_in_flight_drains(&gw).await;

    let line = gw.access_line(id).await;
    assert_eq!(line["stream"], true, "{line}");
    assert_eq!(line["status"], 499, "logged as client-closed: {line}");
    assert_eq!(line["partial"], true, "no [DONE], no usage: {line}");
    assert_eq!(line["attempts"], 1, "{line}");
    assert_eq!(line["usage_source"], "estimated", "{line}");
    // Delivered tokens are counted, and only those: "tok0" and "tok1" of
    // the 47, estimated from their text.
    let want = tollgate::accounting::estimate::count("a-fast", "tok0tok1");
    assert_eq!(
        line["completion_tokens"].as_u64(),
        Some(want),
        "completion_tokens: {line}"
    );
    let text = gw.metrics_text().await;
    assert_eq!(
        sum(
            &text,
            "tollgate_partial_streams_total",
            &[("provider", "a")]
        ),
        1.0
    );
    assert_eq!(up.hits(), 1, "not retried after the client left");
}

/// The client sends a request whose upstream never answers, waits until the
/// upstream has it, then leaves before any response byte.
async fn client_gone_before_response_headers(stream: bool) {
    let up = HangUpstream::start().await;
    let gw = start(&config1(up.port, "")).await;
    let id = if stream {
        "lifecycle-gone-before-headers-stream"
    } else {
        "lifecycle-gone-before-headers-json"
    };
    let mut c = RawClient::connect(&gw.listen_addr()).await;
    c.send(&raw_chat(id, stream)).await;
    assert!(
        wait_until(QUICK, || up.requests() >= 1).await,
        "request never reached the upstream; log:\n{}",
        gw.logs()
    );
    assert_eq!(in_flight(&gw).await, 1.0);
    // Nothing was answered yet.
    let mut tmp = [0u8; 64];
    assert!(
        tokio::time::timeout(Duration::from_millis(200), c.s.read(&mut tmp))
            .await
            .is_err(),
        "the gateway answered or closed early"
    );
    assert_eq!(up.closed(), 0);

    let t = Instant::now();
    drop(c);
    assert!(
        wait_until(QUICK, || up.closed() >= 1).await,
        "the upstream request was never cancelled; log:\n{}",
        gw.logs()
    );
    let took = t.elapsed();
    assert!(
        took <= CANCEL_WITHIN,
        "upstream cancelled {took:?} after the client left"
    );
    assert_in_flight_drains(&gw).await;
    let line = gw.access_line(id).await;
    assert_eq!(line["stream"], stream, "{line}");
    assert_eq!(line["status"], 499, "logged as client-closed: {line}");
    assert_eq!(line["attempts"], 1, "{line}");
    // Nothing was served, but the provider had the request: charged (a
    // stream its prompt, a non-stream request its reservation; the rule is
    // tested in hardening_charge.rs).
    let source = if stream { "estimated" } else { "reserved" };
    assert_eq!(line["usage_source"], source, "{line}");
    assert_eq!(up.requests(), 1, "not retried after the client left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row27_client_gone_before_stream_headers_cancels_upstream() {
    client_gone_before_response_headers(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row27_client_gone_during_slow_non_stream_request_cancels_upstream() {
    client_gone_before_response_headers(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row27_client_gone_during_slow_non_stream_body_cancels_upstream() {
    // A JSON completion in 20 pieces.
    let doc = completion("a-fast").to_string();
    let pieces: Vec<Bytes> = doc
        .as_bytes()
        .chunks(doc.len().div_ceil(20))
        .map(Bytes::copy_from_slice)
        .collect();
    let len = doc.len().to_string();
    // After the first piece, each waits for the gate: the body never ends
    // unless the test lets it.
    let gate = support::Gate::new();
    let g = gate.clone();
    let up = MockUpstream::start(Behavior::func(move |_| Reply {
        status: 200,
        headers: vec![
            ("content-type".into(), "application/json".into()),
            ("content-length".into(), len.clone()),
        ],
        body: ReplyBody::Gated(pieces.clone(), g.clone()),
    }))
    .await;
    let gw = start(&config1(up.port(), "")).await;

    let id = "lifecycle-gone-mid-body";
    let mut c = RawClient::connect(&gw.listen_addr()).await;
    c.send(&raw_chat(id, false)).await;
    assert!(
        up.wait_hits(1, QUICK).await,
        "request never reached the upstream; log:\n{}",
        gw.logs()
    );
    // Let the upstream send its header and a few pieces. (Pingora 0.9 does
    // not flush a Content-Length response until its body is complete, so the
    // client may see nothing yet: that is not what this test is about.)
    gate.open(3);
    assert_eq!(in_flight(&gw).await, 1.0);
    assert_eq!(up.cancelled(), 0);

    let t = Instant::now();
    drop(c);
    assert!(
        up.wait_cancelled(1, QUICK).await,
        "the upstream body was never cancelled; log:\n{}",
        gw.logs()
    );
    let took = t.elapsed();
    assert!(
        took <= CANCEL_WITHIN,
        "upstream cancelled {took:?} after the client left"
    );
    assert_in_flight_drains(&gw).await;
    let line = gw.access_line(id).await;
    assert_eq!(line["stream"], false, "{line}");
    assert_eq!(line["status"], 499, "logged as client-closed: {line}");
    assert_eq!(up.hits(), 1, "not retried after the client left");
}

// ---------------------------------------------------------------------------
// Row 28: slow reader
// ---------------------------------------------------------------------------

/// Sends a streaming request from a client with a 4 KiB receive buffer that,
/// once the response starts, reads one byte every `every` (or nothing at all
/// when `None`). Returns the reading task (it yields the bytes it read).
async fn stalled_client(
    gw: &Gateway,
    id: &str,
    every: Option<Duration>,
) -> tokio::task::JoinHandle<usize> {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let s = sock
        .connect(gw.listen_addr().parse().unwrap())
        .await
        .expect("connect");
    let mut c = RawClient { s, buf: Vec::new() };
    c.send(&raw_chat(id, true)).await;
    c.read_until(QUICK, |b| b.starts_with(b"HTTP/1.1 "))
        .await
        .unwrap_or_else(|e| panic!("response start: {e}; log:\n{}", gw.logs()));
    assert!(c.buf.starts_with(b"HTTP/1.1 200"), "{}", text(&c.buf));
    tokio::spawn(async move {
        let Some(every) = every else {
            // Holds the connection open, reading nothing.
            std::future::pending::<()>().await;
            return 0;
        };
        let mut one = [0u8; 1];
        let mut got = 0usize;
        loop {
            tokio::time::sleep(every).await;
            match c.s.read(&mut one).await {
                Ok(1) => got += 1,
                _ => return got,
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row28_slow_readers_are_dropped_after_write_timeout_with_bounded_memory() {
    // A stream request gets 16384 events of ~16 KiB: 256 MiB, sent as fast
    // as it drains. Anything else gets a small JSON completion.
    let event = Bytes::from(format!(
        "data: {}\n\n",
        json!({"object": "chat.completion.chunk", "model": "a-fast",
            "choices": [{"index": 0,
                "delta": {"content": "lorem ipsum dolor sit amet, ".repeat(16 * 1024 / 28)},
                "finish_reason": null}]})
    ));
    let chunks: Vec<Bytes> = vec![event; 16 * 1024];
    let up = MockUpstream::start(Behavior::func(move |r| {
        if r.json()["stream"] != true {
            return Reply::json(200, completion("a-fast").to_string());
        }
        Reply {
            status: 200,
            headers: vec![("content-type".into(), "text/event-stream".into())],
            body: ReplyBody::Chunks(chunks.clone(), Duration::ZERO),
        }
    }))
    .await;
    let gw = start(&config1(up.port(), "downstream: { write_timeout: 1s }")).await;
    let base_rss = rss_bytes(gw.pid());

    let t0 = Instant::now();
    let trickle = stalled_client(
        &gw,
        "lifecycle-slow-reader",
        Some(Duration::from_millis(500)),
    )
    .await;
    let stalled = stalled_client(&gw, "lifecycle-stalled-reader", None).await;

    let mut max_rss = base_rss;
    let deadline = Instant::now() + Duration::from_secs(15);
    while up.cancelled() < 2 && Instant::now() < deadline {
        max_rss = max_rss.max(rss_bytes(gw.pid()));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = t0.elapsed();
    max_rss = max_rss.max(rss_bytes(gw.pid()));
    assert_eq!(
        up.cancelled(),
        2,
        "the upstream streams of stalled clients were not cancelled \
         (write_timeout 1s; waited {took:?}); log:\n{}",
        gw.logs()
    );
    assert!(
        took >= Duration::from_secs(1),
        "cancelled after {took:?}, before the 1 s write timeout could pass"
    );
    let growth = max_rss.saturating_sub(base_rss);
    assert!(
        growth < 64 << 20,
        "gateway RSS grew by {} MiB while two clients stalled ({} -> {} MiB)",
        growth >> 20,
        base_rss >> 20,
        max_rss >> 20
    );
    assert_in_flight_drains(&gw).await;
    assert_eq!(up.hits(), 2);
    trickle.abort();
    stalled.abort();

    // The gateway still serves.
    let (status, body) = post(&support::client(), &gw.base_url(), false, &[])
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");

    // Logged as partial streams the gateway cut on the client's side: the
    // upstream did nothing wrong.
    for id in ["lifecycle-slow-reader", "lifecycle-stalled-reader"] {
        let line = gw.access_line(id).await;
        assert_eq!(line["partial"], true, "{line}");
        assert!(
            line["status"] == 499 && line["error"] != "upstream_error",
            "a client dropped by the write timeout must be logged as client-side \
             (status 499), not blamed on the upstream: {line}"
        );
    }
    let text = gw.metrics_text().await;
    assert_eq!(
        sample(
            &text,
            "tollgate_errors_total",
            &[("code", "upstream_error")]
        )
        .unwrap_or(0.0),
        0.0,
        "slow clients counted as upstream errors"
    );
}

// ---------------------------------------------------------------------------
// Row 29: SIGHUP under load
// ---------------------------------------------------------------------------

async fn reloads(gw: &Gateway, result: &str) -> f64 {
    sample(&gw.metrics_text().await, RELOADS, &[("result", result)]).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row29_ten_sighups_under_load_fail_no_request_and_break_no_stream() {
    // Streams of 12 events 20 ms apart (~0.25 s); each mock echoes the model.
    let a = MockUpstream::start(echo(9, Duration::from_millis(20))).await;
    let b = MockUpstream::start(echo(9, Duration::from_millis(20))).await;
    let cfg = |target: &str| config(a.port(), b.port(), target, "");
    let gw = Gateway::start(&cfg("a")).await;
    let base = gw.base_url();
    let ok0 = reloads(&gw, "success").await;
    let client = support::client();

    let results: Arc<Mutex<Vec<(usize, Outcome)>>> = Arc::default();
    let mut tasks = Vec::new();
    let t0 = Instant::now();
    for round in 0..10usize {
        // 20 requests (10 streaming) spread over 200 ms...
        for j in 0..20usize {
            let i = round * 20 + j;
            let (client, base, results) = (client.clone(), base.clone(), results.clone());
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(j as u64 * 10)).await;
                let r = post(&client, &base, i % 2 == 0, &[]).await;
                results.lock().unwrap().push((i, r));
            }));
        }
        // ...and a reload to the other provider while they run.
        tokio::time::sleep(Duration::from_millis(100)).await;
        gw.write_config(&cfg(if round % 2 == 0 { "b" } else { "a" }));
        gw.sighup();
        let deadline = Instant::now() + QUICK;
        while reloads(&gw, "success").await < ok0 + round as f64 + 1.0 {
            assert!(
                Instant::now() < deadline,
                "reload {} never succeeded; log:\n{}",
                round + 1,
                gw.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let reloads_done = t0.elapsed();
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(30), t)
            .await
            .expect("request finished")
            .expect("request task");
    }

    let results = std::mem::take(&mut *results.lock().unwrap());
    assert_eq!(results.len(), 200);
    let want_a: String = sse_chat_events("a-fast", 9).concat();
    let want_b: String = sse_chat_events("b-fast", 9).concat();
    let mut failures = Vec::new();
    for (i, r) in &results {
        let stream = i % 2 == 0;
        match r {
            Err(e) => failures.push(format!("#{i}: {e}")),
            Ok((status, body)) if *status != 200 => {
                failures.push(format!("#{i}: status {status}: {body}"))
            }
            Ok((_, body)) if stream => {
                if *body != want_a && *body != want_b {
                    failures.push(format!("#{i}: broken stream: {body:?}"));
                }
            }
            Ok((_, body)) => {
                let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
                if v["model"] != "a-fast" && v["model"] != "b-fast" {
                    failures.push(format!("#{i}: bad completion: {body}"));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of 200 requests failed across 10 reloads:\n{}\nlog:\n{}",
        failures.len(),
        failures.join("\n"),
        gw.logs()
    );
    assert!(
        results.iter().filter(|(i, _)| i % 2 == 0).all(|(_, r)| r
            .as_ref()
            .is_ok_and(|(_, b)| b.ends_with("data: [DONE]\n\n"))),
        "every stream ends with [DONE]"
    );
    // Both configs served traffic, and nothing was retried.
    assert!(
        a.hits() > 0 && b.hits() > 0,
        "a {} b {}",
        a.hits(),
        b.hits()
    );
    assert_eq!(a.hits() + b.hits(), 200);
    let text = gw.metrics_text().await;
    assert_eq!(
        sample(&text, RELOADS, &[("result", "success")]),
        Some(ok0 + 10.0),
        "10 SIGHUPs, 10 successful reloads (in {reloads_done:?})"
    );
    assert_eq!(
        sample(&text, RELOADS, &[("result", "failed")]).unwrap_or(0.0),
        0.0
    );
    assert_in_flight_drains(&gw).await;
}

// ---------------------------------------------------------------------------
// Row 31: SIGTERM
// ---------------------------------------------------------------------------

/// What a new connection got.
#[derive(Debug, PartialEq)]
enum Probe {
    Refused,
    /// Accepted, then closed (or reset) without an answer.
    Closed,
    Served(String),
    /// Accepted and left hanging.
    Hung,
}

async fn probe(addr: &str) -> Probe {
    let s = match tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr)).await {
        Err(_) => return Probe::Hung,
        Ok(Err(_)) => return Probe::Refused,
        Ok(Ok(s)) => s,
    };
    let mut s = s;
    if s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .is_err()
    {
        return Probe::Closed;
    }
    let mut buf = vec![0u8; 1024];
    match tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await {
        Err(_) => Probe::Hung,
        Ok(Err(_)) | Ok(Ok(0)) => Probe::Closed,
        Ok(Ok(n)) => Probe::Served(text(&buf[..n]).lines().next().unwrap_or("").into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row31_sigterm_drains_stream_refuses_new_connections_and_exits_0() {
    // 25 events, 100 ms apart: about 2.4 s of stream.
    let events = sse_chat_events("a-fast", 22);
    let up = MockUpstream::start(Behavior::sse(events.clone(), Duration::from_millis(100))).await;
    let mut gw = Gateway::start(&config1(up.port(), "")).await;
    let addr = gw.listen_addr();

    let resp = support::client()
        .post(gw.url("/v1/chat/completions"))
        .header("authorization", format!("Bearer {KEY}"))
        .header("content-type", "application/json")
        .body(chat_body(true))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let mut stream = resp.bytes_stream();
    let first = tokio::time::timeout(QUICK, stream.next())
        .await
        .expect("first event in time")
        .expect("stream not empty")
        .expect("read");
    let done = Arc::new(AtomicBool::new(false));
    let done2 = done.clone();
    let reader = tokio::spawn(async move {
        let mut got = first.to_vec();
        let mut err = None;
        while let Some(item) = stream.next().await {
            match item {
                Ok(b) => got.extend_from_slice(&b),
                Err(e) => {
                    err = Some(format!("{e:?}"));
                    break;
                }
            }
        }
        done2.store(true, Ordering::SeqCst);
        (got, err, Instant::now())
    });

    let t_sig = Instant::now();
    gw.sigterm();
    // New connections: refused or closed unanswered, never left hanging,
    // from shortly after the signal on (while the stream still runs).
    let mut outcomes = Vec::new();
    let refused_at = loop {
        let p = probe(&addr).await;
        assert_ne!(p, Probe::Hung, "a new connection hung after SIGTERM");
        let stop = matches!(p, Probe::Refused | Probe::Closed);
        outcomes.push((t_sig.elapsed(), p));
        if stop {
            break t_sig.elapsed();
        }
        assert!(
            t_sig.elapsed() < Duration::from_secs(3),
            "new connections still served 3 s after SIGTERM: {outcomes:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        !done.load(Ordering::SeqCst),
        "the stream ended before new connections were refused ({refused_at:?}: {outcomes:?})"
    );
    for _ in 0..3 {
        let p = probe(&addr).await;
        assert!(
            matches!(p, Probe::Refused | Probe::Closed),
            "a new connection after the refusal got {p:?}"
        );
    }
    assert!(gw.is_running(), "exited with the stream still in flight");

    let (got, err, ended) = tokio::time::timeout(QUICK, reader)
        .await
        .expect("stream finished")
        .expect("reader task");
    assert_eq!(err, None, "stream broke during the drain");
    assert_eq!(
        text(&got),
        events.concat(),
        "the stream in flight did not complete byte-identical"
    );
    assert!(text(&got).ends_with("data: [DONE]\n\n"));

    let status = gw
        .wait_exit(QUICK)
        .await
        .unwrap_or_else(|| panic!("still running after the drain; log:\n{}", gw.logs()));
    let exited = Instant::now();
    assert_eq!(status.code(), Some(0), "exit status; log:\n{}", gw.logs());
    // Pingora alone would sleep the whole 10 s grace period.
    assert!(
        exited.duration_since(t_sig) < Duration::from_secs(8),
        "exited {:?} after SIGTERM ({:?} after the stream ended): it waited \
         for the grace period instead of the drain",
        exited.duration_since(t_sig),
        exited.duration_since(ended)
    );
    assert!(gw.logs().contains("drained; exiting"), "{}", gw.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row31_idle_gateway_exits_promptly_on_sigterm() {
    let up = MockUpstream::start(Behavior::ChatEcho).await;
    let mut gw = Gateway::start(&config1(up.port(), "")).await;
    // One request served, so the keep-alive pool holds an idle connection.
    let client = support::client();
    let (status, body) = post(&client, &gw.base_url(), false, &[]).await.unwrap();
    assert_eq!(status, 200, "{body}");

    let t = Instant::now();
    gw.sigterm();
    let status = gw
        .wait_exit(QUICK)
        .await
        .unwrap_or_else(|| panic!("idle gateway still running; log:\n{}", gw.logs()));
    let took = t.elapsed();
    assert_eq!(status.code(), Some(0), "log:\n{}", gw.logs());
    // The grace period is 10 s: an idle stop must not wait for it (5 s
    // leaves a loaded machine room and still tells the two apart).
    assert!(
        took < Duration::from_secs(5),
        "idle gateway took {took:?} to exit after SIGTERM"
    );
}

// ---------------------------------------------------------------------------
// Row 32: SIGQUIT graceful upgrade
// ---------------------------------------------------------------------------

/// A second gateway process (killed on drop).
struct Proc {
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Proc {
    fn logs(&self) -> String {
        std::fs::read(&self.log)
            .map(|b| text(&b))
            .unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One raw request on a new connection whose request bytes follow the
/// connect after `delay`; `Err` unless it is answered 200.
async fn slow_start_request(addr: &str, delay: Duration) -> Result<(), String> {
    let mut s = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    tokio::time::sleep(delay).await;
    s.write_all(&raw_chat("lifecycle-slow-start", false))
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut c = RawClient { s, buf: Vec::new() };
    c.read_until(QUICK, |b| b.windows(4).any(|w| w == b"\r\n\r\n"))
        .await?;
    if c.buf.starts_with(b"HTTP/1.1 200") {
        Ok(())
    } else {
        Err(format!("answered {:?}", text(&c.buf)))
    }
}

/// Gateway A under load; B started with `-u` on the same config; SIGQUIT to
/// A. Clients: two loops of requests on new connections (`slow_start`
/// `None`), or a new connection every 20 ms that sends its request only
/// `slow_start` after connecting. Every request must be answered 200, A
/// must exit 0 and B must serve.
async fn upgrade_under_load(slow_start: Option<Duration>) {
    let up = MockUpstream::start(Behavior::ChatEcho).await;
    let mut old = Gateway::start(&config1(up.port(), "")).await;
    let base = old.base_url();
    let addr = old.listen_addr();
    let t0 = Instant::now();

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failures: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut loops = Vec::new();
    if let Some(delay) = slow_start {
        let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
        loops.push(tokio::spawn(async move {
            let mut clients = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let (ok, failures, addr) = (ok.clone(), failures.clone(), addr.clone());
                clients.push(tokio::spawn(async move {
                    let started = t0.elapsed();
                    match slow_start_request(&addr, delay).await {
                        Ok(()) => {
                            ok.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) => failures.lock().unwrap().push(format!(
                            "connected at {started:?}, failed at {:?}: {e}",
                            t0.elapsed()
                        )),
                    }
                }));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            for c in clients {
                c.await.unwrap();
            }
        }));
    }
    // Two client loops, each opening a new connection per request.
    for _ in 0..2 {
        if slow_start.is_some() {
            break;
        }
        let (stop, ok, failures, base) = (stop.clone(), ok.clone(), failures.clone(), base.clone());
        loops.push(tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .no_proxy()
                .pool_max_idle_per_host(0)
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap();
            while !stop.load(Ordering::SeqCst) {
                let sent = t0.elapsed();
                match post(&client, &base, false, &[]).await {
                    Ok((200, _)) => {
                        ok.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok((s, b)) => failures
                        .lock()
                        .unwrap()
                        .push(format!("sent at {sent:?}: status {s}: {b}")),
                    Err(e) => failures.lock().unwrap().push(format!(
                        "sent at {sent:?}, failed at {:?}: {e}",
                        t0.elapsed()
                    )),
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }));
    }
    assert!(
        wait_until(QUICK, || ok.load(Ordering::SeqCst) >= 10).await,
        "load loop not serving: {:?}",
        failures.lock().unwrap()
    );

    // The new process takes the listeners over `server.upgrade_sock`.
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("new.log");
    let f = std::fs::File::create(&log).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .arg("--config")
        .arg(old.config_path())
        .arg("-u")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::from(f.try_clone().unwrap()))
        .stderr(Stdio::from(f))
        .spawn()
        .expect("spawn the new tollgate");
    let mut new = Proc {
        child,
        log,
        _dir: dir,
    };
    let sock = old.tmp_dir().join("u.sock");
    assert!(
        wait_until(QUICK, || sock.exists()).await,
        "the new process never opened {}; its log:\n{}",
        sock.display(),
        new.logs()
    );
    let served_before = ok.load(Ordering::SeqCst);
    let t_quit = t0.elapsed();
    old.signal("-QUIT");
    assert!(
        wait_until(QUICK, || new.logs().contains("tollgate listening on")).await,
        "the new process did not take over; its log:\n{}\nold log:\n{}",
        new.logs(),
        old.logs()
    );
    let status = old
        .wait_exit(Duration::from_secs(15))
        .await
        .unwrap_or_else(|| {
            panic!(
                "the old process did not exit after SIGQUIT; log:\n{}",
                old.logs()
            )
        });
    let t_old_exit = t0.elapsed();
    assert_eq!(status.code(), Some(0), "old log:\n{}", old.logs());
    let after_exit = ok.load(Ordering::SeqCst);
    assert!(
        wait_until(QUICK, || ok.load(Ordering::SeqCst) >= after_exit + 20).await,
        "nothing served after the old process exited: {:?}\nnew log:\n{}",
        failures.lock().unwrap(),
        new.logs()
    );
    stop.store(true, Ordering::SeqCst);
    for l in loops {
        l.await.unwrap();
    }
    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} requests failed during the upgrade ({} ok; SIGQUIT at {t_quit:?}, \
         the old process seen exited at {t_old_exit:?}):\n{}\nold log:\n{}\nnew log:\n{}",
        failures.len(),
        ok.load(Ordering::SeqCst),
        failures.join("\n"),
        old.logs(),
        new.logs()
    );
    assert!(ok.load(Ordering::SeqCst) > served_before);
    assert!(
        matches!(new.child.try_wait(), Ok(None)),
        "the new process died; log:\n{}",
        new.logs()
    );
    // The old process is gone, so the metrics listener is the new one's:
    // it counted requests itself.
    let text = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(old.metrics_url())
        .send()
        .await
        .expect("metrics of the new process")
        .text()
        .await
        .unwrap();
    assert!(
        sum(&text, "tollgate_requests_total", &[]) >= 20.0,
        "the new process served nothing itself:\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row32_sigquit_graceful_upgrade_refuses_no_request() {
    upgrade_under_load(None).await;
}

/// A connection the old process accepted shortly before it stopped
/// accepting is still answered, even when its request bytes arrive after
/// that (a client 300 ms slow to send, or a connection pre-opened by a pool).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row32_sigquit_upgrade_serves_connections_accepted_before_the_handover() {
    upgrade_under_load(Some(Duration::from_millis(300))).await;
}

// ---------------------------------------------------------------------------
// Row 33: a panic in one request
// ---------------------------------------------------------------------------

const PANIC: (&str, &str) = ("x-tollgate-panic", "1");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row33_panic_in_one_request_is_a_500_and_nothing_else_notices() {
    // Streams: 20 events 50 ms apart (~1 s).
    let up = MockUpstream::start(echo(17, Duration::from_millis(50))).await;
    let mut gw = Gateway::start_with_env(
        &config1(up.port(), ""),
        &[("TOLLGATE_FAULT_INJECTION", "1")],
    )
    .await;
    let base = gw.base_url();
    let client = support::client();

    // A stream in flight across the panics.
    let streaming = {
        let (client, base) = (client.clone(), base.clone());
        tokio::spawn(async move { post(&client, &base, true, &[]).await })
    };
    assert!(up.wait_hits(1, QUICK).await, "stream never started");

    // Panicking and normal requests at the same time.
    let mut tasks = Vec::new();
    for i in 0..20usize {
        let (client, base) = (client.clone(), base.clone());
        tasks.push(tokio::spawn(async move {
            let panic = i % 2 == 0;
            let extra: &[(&str, &str)] = if panic { &[PANIC] } else { &[] };
            (panic, post(&client, &base, false, extra).await)
        }));
    }
    for t in tasks {
        let (panic, r) = t.await.unwrap();
        let (status, body) = r.unwrap_or_else(|e| panic!("transport error: {e}"));
        if panic {
            assert_eq!(status, 500, "{body}");
            let v: Value = serde_json::from_str(&body)
                .unwrap_or_else(|e| panic!("500 body is not JSON ({e}): {body}"));
            assert_eq!(v["error"]["type"], "api_error", "{v}");
            assert_eq!(v["error"]["code"], "gateway_error", "{v}");
            assert!(v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()));
            assert!(v["error"]["param"].is_null(), "{v}");
            assert_eq!(v.as_object().unwrap().len(), 1, "{v}");
        } else {
            assert_eq!(status, 200, "a normal request beside a panic: {body}");
            let v: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(v["model"], "a-fast");
        }
    }
    let (status, body) = tokio::time::timeout(QUICK, streaming)
        .await
        .expect("stream finished")
        .unwrap()
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        body,
        sse_chat_events("a-fast", 17).concat(),
        "the stream beside the panics broke"
    );

    assert!(gw.is_running(), "the process died; log:\n{}", gw.logs());
    assert!(
        gw.logs().contains("fault injection"),
        "the panic really happened"
    );
    // The next normal request succeeds; panicking ones never went upstream.
    let (status, body) = post(&client, &base, false, &[]).await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(up.hits(), 1 + 10 + 1);
    assert_in_flight_drains(&gw).await;
    let text = gw.metrics_text().await;
    assert_eq!(
        sample(&text, "tollgate_errors_total", &[("code", "gateway_error")]),
        Some(10.0)
    );
    assert!(gw.wait_exit(Duration::from_millis(100)).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row33_panic_header_does_nothing_without_fault_injection() {
    let up = MockUpstream::start(echo(3, Duration::from_millis(5))).await;
    let gw = Gateway::start(&config1(up.port(), "")).await;
    let client = support::client();
    let (status, body) = post(&client, &gw.base_url(), false, &[PANIC])
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["model"], "a-fast");
    assert_eq!(up.hits(), 1);
    assert!(!gw.logs().contains("fault injection"), "{}", gw.logs());
}
