#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Nothing a provider billed is charged 0 (issue 14, defect 4;
//! `../shared/RELIABILITY.md` row 40): the real gateway in front of mock
//! providers on loopback, answering in ways the meter cannot read whole.
//!
//! - A non-stream answer over the 16 MiB meter limit is charged its reported
//!   usage when the usage is at its end, else its reservation (`reserved`),
//!   against the key's token budget too.
//! - A client that leaves before the answer, or in the middle of it, is
//!   charged: a non-stream request its reservation, a stream what passed.
//! - An Anthropic stream cut before `message_delta` (on the translated chat
//!   path and on the Messages passthrough) is charged the streamed text, not
//!   the placeholder 1 output token of `message_start`.
//! - A translated (Anthropic) answer too big to translate, a hedged request
//!   whose client leaves during the race, and a shadow copy whose answer is
//!   over the limit are charged too.
//!
//! Clients that must leave at an exact point are raw TCP; the providers that
//! must cut or stall at an exact point are raw TCP too ([`RawUpstream`]).

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use support::prom::{sample, sum};
use support::{text, wait_until, Behavior, Gateway, MockUpstream, Recorded, Reply, CONFIG_HEAD};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const KEY: &str = "tg-charge-alice-key-0001";
const ADMIN_KEY: &str = "tg-charge-admin-key-0001";
/// Generous bound for anything that should be quick (2 shared cores).
const QUICK: Duration = Duration::from_secs(15);
/// The request's completion maximum: the reservation's completion part.
const MAX_TOKENS: u64 = 300;
/// What the Anthropic mock's `message_start` reports.
const ANTHROPIC_INPUT: u64 = 25;
/// The text an Anthropic stream sends before it is cut.
const PIECES: [&str; 4] = [
    "The lighthouse keeper",
    " climbed the ninety-nine steps again tonight,",
    " as he had every night for forty-one years,",
    " and wound the clockwork that turned the lamp.",
];

// ---------------------------------------------------------------------------
// Config and requests
// ---------------------------------------------------------------------------

/// Providers `up` (OpenAI kind) and `claude` (Anthropic kind); aliases
/// `chat` → `up`/gpt-4o and `claude` → `claude`/claude-sonnet-4-5, both
/// priced; key alice with a token budget; the admin API on `admin`.
/// `models_extra` is more YAML under `models:` (indented two spaces).
fn config(openai_port: u16, anthropic_port: u16, models_extra: &str) -> String {
    format!(
        r#"{CONFIG_HEAD}providers:
  up:
    kind: openai
    base_url: "http://127.0.0.1:{openai_port}/v1"
    api_key: "sk-provider-charge-1"
    health_check: {{ enabled: false }}
    retry: {{ attempts: 1 }}
  claude:
    kind: anthropic
    base_url: "http://127.0.0.1:{anthropic_port}/v1"
    api_key: "sk-ant-provider-charge-1"
    health_check: {{ enabled: false }}
    retry: {{ attempts: 1 }}
models:
  chat: {{ routes: [ {{ provider: up, model: gpt-4o, price: {{ input: 1.0, output: 2.0 }} }} ] }}
  claude: {{ routes: [ {{ provider: claude, model: claude-sonnet-4-5, price: {{ input: 3.0, output: 15.0 }} }} ] }}
{models_extra}keys:
  - {{ name: alice, key: "{KEY}", budgets: [ {{ tokens: 1000000000, window: day }} ] }}
admin_listen: "{{ADMIN}}"
admin_key: "{ADMIN_KEY}"
"#
    )
}

fn chat_body(model: &str, stream: bool, content: &str) -> String {
    json!({"model": model, "stream": stream, "max_tokens": MAX_TOKENS,
        "messages": [{"role": "user", "content": content}]})
    .to_string()
}

fn messages_body(stream: bool) -> String {
    json!({"model": "claude", "stream": stream, "max_tokens": MAX_TOKENS,
        "messages": [{"role": "user", "content": "Tell me about the lighthouse."}]})
    .to_string()
}

/// A raw HTTP/1.1 POST of `body` to `path`, authorized as alice.
fn raw_post(path: &str, rid: &str, body: &str) -> Vec<u8> {
    let auth = if path == "/v1/messages" {
        format!("x-api-key: {KEY}\r\nanthropic-version: 2023-06-01")
    } else {
        format!("Authorization: Bearer {KEY}")
    };
    format!(
        "POST {path} HTTP/1.1\r\nHost: tollgate.test\r\n{auth}\r\n\
         Content-Type: application/json\r\nx-request-id: {rid}\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

async fn post(gw: &Gateway, rid: &str, body: String) -> reqwest::Response {
    support::client()
        .post(gw.url("/v1/chat/completions"))
        .header("authorization", format!("Bearer {KEY}"))
        .header("content-type", "application/json")
        .header("x-request-id", rid)
        .body(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("request failed: {e}; log:\n{}", gw.logs()))
}

/// A client that sends `request`, reads until `seen(&received)` holds (at
/// once when it returns true for nothing) and until `ready()`, then leaves.
async fn send_and_leave(
    gw: &Gateway,
    request: &[u8],
    seen: impl Fn(&[u8]) -> bool,
    ready: impl Fn() -> bool,
) {
    let mut s = TcpStream::connect(gw.listen_addr()).await.unwrap();
    s.set_nodelay(true).unwrap();
    s.write_all(request).await.unwrap();
    let mut got = Vec::new();
    let mut tmp = vec![0u8; 64 * 1024];
    let deadline = tokio::time::Instant::now() + QUICK;
    while !seen(&got) {
        match tokio::time::timeout_at(deadline, s.read(&mut tmp)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&tmp[..n]),
            other => panic!(
                "stopped reading ({other:?}) before the point to leave; got {:?}; log:\n{}",
                text(&got),
                gw.logs()
            ),
        }
    }
    assert!(
        wait_until(QUICK, &ready).await,
        "never ready to leave; log:\n{}",
        gw.logs()
    );
    drop(s);
}

fn cl100k(text: &str) -> u64 {
    tiktoken_rs::cl100k_base_singleton()
        .encode_ordinary(text)
        .len() as u64
}

/// The token budget's `used` on `/admin/limits`, once no reservation is
/// outstanding (every request above settled).
async fn budget_used(gw: &Gateway, admin: &str) -> f64 {
    let deadline = tokio::time::Instant::now() + QUICK;
    loop {
        let m = gw.metrics_text().await;
        if sample(&m, "tollgate_limit_reservations_outstanding", &[]) == Some(0.0) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "reservations still outstanding:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let v: Value = support::client()
        .get(format!("http://{admin}/admin/limits"))
        .header("authorization", format!("Bearer {ADMIN_KEY}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let rows = v["limits"].as_array().unwrap();
    let row = rows
        .iter()
        .find(|r| r["limit"] == "budget_tokens" && r["level"] == "key")
        .unwrap_or_else(|| panic!("no key token budget in {v}"));
    row["used"].as_f64().unwrap()
}

/// Prompt plus completion tokens of an access-log line.
fn charged(line: &Value) -> u64 {
    line["prompt_tokens"].as_u64().unwrap_or(0) + line["completion_tokens"].as_u64().unwrap_or(0)
}

/// `tollgate_tokens_total` summed over the given labels.
async fn tokens(gw: &Gateway, labels: &[(&str, &str)]) -> f64 {
    sum(&gw.metrics_text().await, "tollgate_tokens_total", labels)
}

async fn start(openai_port: u16, anthropic_port: u16, models_extra: &str) -> (Gateway, String) {
    let gw = Gateway::start(&config(openai_port, anthropic_port, models_extra)).await;
    let admin = gw.admin_addr();
    (gw, admin)
}

// ---------------------------------------------------------------------------
// Providers that cut or stall at a chosen point
// ---------------------------------------------------------------------------

/// What a [`RawUpstream`] writes for one request: raw response pieces, 10 ms
/// apart, then it closes the connection (`cut`) or keeps it open until the
/// gateway closes it.
struct Script {
    pieces: Vec<Vec<u8>>,
    cut: bool,
}

/// A raw HTTP/1.1 provider. It reads each request (header and
/// `Content-Length` body), answers with the script its closure picks from
/// the request body, and counts the requests and the connections the
/// gateway closed on it.
struct RawUpstream {
    port: u16,
    requests: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
    tasks: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

impl RawUpstream {
    async fn start(script: impl Fn(&Value) -> Script + Send + Sync + 'static) -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let tasks: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let script = Arc::new(script);
        let (rq, cl, ts) = (requests.clone(), closed.clone(), tasks.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    continue;
                };
                let (rq, cl, script) = (rq.clone(), cl.clone(), script.clone());
                let task = tokio::spawn(async move {
                    let Some(body) = read_request(&mut s).await else {
                        return;
                    };
                    rq.fetch_add(1, Ordering::SeqCst);
                    let plan = script(&body);
                    for p in &plan.pieces {
                        if s.write_all(p).await.is_err() {
                            return;
                        }
                        let _ = s.flush().await;
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    if plan.cut {
                        return; // dropped: the connection closes mid-body
                    }
                    let mut tmp = [0u8; 1024];
                    while matches!(s.read(&mut tmp).await, Ok(n) if n > 0) {}
                    cl.fetch_add(1, Ordering::SeqCst);
                });
                ts.lock().unwrap().push(task.abort_handle());
            }
        });
        tasks.lock().unwrap().push(accept.abort_handle());
        RawUpstream {
            port,
            requests,
            closed,
            tasks,
        }
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    fn closed(&self) -> usize {
        self.closed.load(Ordering::SeqCst)
    }
}

/// Reads one request; returns its body as JSON (`Null` if it is not).
async fn read_request(s: &mut TcpStream) -> Option<Value> {
    let mut buf = Vec::new();
    let mut tmp = vec![0u8; 16 * 1024];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = text(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                let body = &buf[end + 4..end + 4 + len];
                return Some(serde_json::from_slice(body).unwrap_or(Value::Null));
            }
        }
        match s.read(&mut tmp).await {
            Ok(n) if n > 0 => buf.extend_from_slice(&tmp[..n]),
            _ => return None,
        }
    }
}

/// A chunked `text/event-stream` response: its header, then one chunk per event.
fn sse_response(events: &[String]) -> Vec<Vec<u8>> {
    let mut out = vec![b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
        cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
        .to_vec()];
    out.extend(
        events
            .iter()
            .map(|e| format!("{:x}\r\n{e}\r\n", e.len()).into_bytes()),
    );
    out
}

/// An Anthropic stream up to its text: `message_start` (reporting
/// [`ANTHROPIC_INPUT`] input tokens and the placeholder 1 output token), a
/// text block and one delta per piece; no `message_delta`, no `message_stop`.
fn anthropic_events_before_message_delta() -> Vec<String> {
    let ev = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n");
    let mut out = vec![
        ev(
            "message_start",
            json!({"type": "message_start", "message": {"id": "msg_cut_1", "type": "message",
                "role": "assistant", "content": [], "model": "claude-sonnet-4-5",
                "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": ANTHROPIC_INPUT, "output_tokens": 1}}}),
        ),
        ev(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0,
                "content_block": {"type": "text", "text": ""}}),
        ),
    ];
    for p in PIECES {
        out.push(ev(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0,
                "delta": {"type": "text_delta", "text": p}}),
        ));
    }
    out
}

/// A chat completion of `content_bytes` bytes of text, with the usage
/// object at its end when `usage` is given.
fn big_completion(content_bytes: usize, usage: Option<(u64, u64)>) -> String {
    let mut doc = json!({"id": "chatcmpl-big", "object": "chat.completion", "created": 1718000000,
        "model": "gpt-4o", "choices": [{"index": 0, "finish_reason": "stop",
        "message": {"role": "assistant", "content": "x".repeat(content_bytes)}}]});
    if let Some((p, c)) = usage {
        doc["usage"] = json!({"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c});
    }
    doc.to_string()
}

const MIB: usize = 1024 * 1024;

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

/// 17 MiB non-stream answers: one with its usage at the end (charged as
/// reported), one without (charged its reservation). Both count against the
/// key's token budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_17_mib_answer_is_charged_its_reported_usage_or_its_reservation() {
    let up = MockUpstream::start(Behavior::func(|r: &Recorded| {
        let asks_usage = r.body_str().contains("with usage");
        let usage = asks_usage.then_some((21, 1_234_567));
        Reply::json(200, big_completion(17 * MIB, usage))
    }))
    .await;
    let (gw, admin) = start(up.port(), 1, "").await;

    for (rid, content) in [
        ("big-usage", "A long answer, with usage."),
        ("big-none", "A long answer, no counts."),
    ] {
        let resp = post(&gw, rid, chat_body("chat", false, content)).await;
        assert_eq!(resp.status(), 200, "{rid}; log:\n{}", gw.logs());
        let body = resp.bytes().await.unwrap();
        assert!(body.len() > 17 * MIB, "{rid}: the whole answer passed");
    }

    let reported = gw.access_line("big-usage").await;
    assert_eq!(reported["usage_source"], "reported", "{reported}");
    assert_eq!(reported["prompt_tokens"], 21, "{reported}");
    assert_eq!(reported["completion_tokens"], 1_234_567, "{reported}");

    let reserved = gw.access_line("big-none").await;
    assert_eq!(reserved["usage_source"], "reserved", "{reserved}");
    assert_eq!(reserved["completion_tokens"], MAX_TOKENS, "{reserved}");
    let prompt = reserved["prompt_tokens"].as_u64().unwrap();
    assert!(
        (5..40).contains(&prompt),
        "the prompt's estimate: {reserved}"
    );
    assert!(reserved["cost_usd"].as_f64().unwrap() > 0.0, "{reserved}");

    let route = [("request_model", "chat"), ("key", "alice")];
    let out = |source| {
        [
            route[0],
            route[1],
            ("token_type", "output"),
            ("usage_source", source),
        ]
    };
    assert_eq!(tokens(&gw, &out("reported")).await, 1_234_567.0);
    assert_eq!(tokens(&gw, &out("reserved")).await, MAX_TOKENS as f64);
    let used = budget_used(&gw, &admin).await;
    assert_eq!(
        used,
        (charged(&reported) + charged(&reserved)) as f64,
        "the budget holds what the log charged"
    );
}

/// A client that leaves after the request reached the provider and before
/// it answered: the non-stream request is charged its reservation (the
/// provider may finish and bill the answer), the stream its prompt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_before_the_answer_is_charged() {
    let up = RawUpstream::start(|_| Script {
        pieces: Vec::new(),
        cut: false,
    })
    .await;
    let (gw, admin) = start(up.port, 1, "").await;

    for (i, (rid, stream)) in [("gone-json", false), ("gone-stream", true)]
        .into_iter()
        .enumerate()
    {
        let req = raw_post(
            "/v1/chat/completions",
            rid,
            &chat_body("chat", stream, "Count to fifty."),
        );
        send_and_leave(&gw, &req, |_| true, || up.requests() > i).await;
        assert!(
            wait_until(QUICK, || up.closed() > i).await,
            "{rid}: the provider request was not cancelled; log:\n{}",
            gw.logs()
        );
    }

    let json = gw.access_line("gone-json").await;
    assert_eq!(json["status"], 499, "{json}");
    assert_eq!(json["usage_source"], "reserved", "{json}");
    assert_eq!(json["completion_tokens"], MAX_TOKENS, "{json}");
    assert!(json["prompt_tokens"].as_u64().unwrap() > 0, "{json}");

    let stream = gw.access_line("gone-stream").await;
    assert_eq!(stream["status"], 499, "{stream}");
    assert_eq!(stream["usage_source"], "estimated", "{stream}");
    assert_eq!(stream["partial"], true, "{stream}");
    assert_eq!(
        stream["completion_tokens"], 0,
        "nothing was generated: {stream}"
    );
    assert_eq!(
        stream["prompt_tokens"], json["prompt_tokens"],
        "the same prompt: {stream}"
    );

    let used = budget_used(&gw, &admin).await;
    assert_eq!(used, (charged(&json) + charged(&stream)) as f64);
    assert_eq!(up.requests(), 2, "not retried");
}

/// A client that leaves in the middle of the answer: a non-stream body half
/// sent is charged its reservation; a translated Anthropic stream the text
/// that passed, with the prompt Anthropic reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_mid_answer_is_charged() {
    let doc = big_completion(4096, Some((9, 99)));
    let half = doc.as_bytes()[..doc.len() / 2].to_vec();
    let head = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        doc.len()
    );
    let openai = RawUpstream::start(move |_| Script {
        pieces: vec![head.clone().into_bytes(), half.clone()],
        cut: false,
    })
    .await;
    let anthropic = RawUpstream::start(|_| Script {
        pieces: sse_response(&anthropic_events_before_message_delta()),
        cut: false,
    })
    .await;
    let (gw, admin) = start(openai.port, anthropic.port, "").await;

    // Non-stream: the provider sent its header and half its body, then
    // stalls; Pingora holds a Content-Length body until it is complete, so
    // the client has seen nothing when it leaves.
    let req = raw_post(
        "/v1/chat/completions",
        "mid-json",
        &chat_body("chat", false, "Hi"),
    );
    send_and_leave(&gw, &req, |_| true, || openai.requests() == 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(wait_until(QUICK, || openai.closed() == 1).await);

    // Stream: the client leaves once the last piece reached it.
    let last = PIECES[PIECES.len() - 1].as_bytes().to_vec();
    let req = raw_post(
        "/v1/chat/completions",
        "mid-stream",
        &chat_body("claude", true, "Tell me about the lighthouse."),
    );
    send_and_leave(
        &gw,
        &req,
        |got| support::find(got, &last).is_some(),
        || true,
    )
    .await;
    assert!(wait_until(QUICK, || anthropic.closed() == 1).await);

    let json = gw.access_line("mid-json").await;
    assert_eq!(json["status"], 499, "{json}");
    assert_eq!(json["usage_source"], "reserved", "{json}");
    assert_eq!(json["completion_tokens"], MAX_TOKENS, "{json}");

    let stream = gw.access_line("mid-stream").await;
    assert_eq!(stream["usage_source"], "estimated", "{stream}");
    assert_eq!(stream["partial"], true, "{stream}");
    assert_eq!(
        stream["prompt_tokens"], ANTHROPIC_INPUT,
        "as reported: {stream}"
    );
    assert_eq!(
        stream["completion_tokens"],
        cl100k(&PIECES.concat()),
        "the streamed text, not 1: {stream}"
    );

    let used = budget_used(&gw, &admin).await;
    assert_eq!(used, (charged(&json) + charged(&stream)) as f64);
}

/// An Anthropic stream the provider cuts (connection closed) after some
/// text, before `message_delta`: on the translated chat path and on the
/// Messages passthrough, the output charged is the tokenizer's count of the
/// text that passed (the same count the test makes), not `message_start`'s
/// placeholder 1, and the stream is marked partial.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anthropic_stream_cut_before_message_delta_is_charged_its_text() {
    let anthropic = RawUpstream::start(|_| Script {
        pieces: sse_response(&anthropic_events_before_message_delta()),
        cut: true,
    })
    .await;
    let (gw, _admin) = start(1, anthropic.port, "").await;
    let want = cl100k(&PIECES.concat());
    assert!(want > 20, "{want}");

    let resp = post(
        &gw,
        "cut-chat",
        chat_body("claude", true, "Tell me about the lighthouse."),
    )
    .await;
    assert_eq!(resp.status(), 200, "log:\n{}", gw.logs());
    let got = resp.bytes().await.map(|b| text(&b)).unwrap_or_default();
    assert!(!got.contains("[DONE]"), "{got}");

    let resp = support::client()
        .post(gw.url("/v1/messages"))
        .header("x-api-key", KEY)
        .header("anthropic-version", "2023-06-01")
        .header("content-type", "application/json")
        .header("x-request-id", "cut-messages")
        .body(messages_body(true))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "log:\n{}", gw.logs());
    let _ = resp.bytes().await;

    for rid in ["cut-chat", "cut-messages"] {
        let line = gw.access_line(rid).await;
        assert_eq!(line["usage_source"], "estimated", "{rid}: {line}");
        assert_eq!(line["partial"], true, "{rid}: {line}");
        assert_eq!(line["prompt_tokens"], ANTHROPIC_INPUT, "{rid}: {line}");
        assert_eq!(line["completion_tokens"], want, "{rid}: {line}");
    }
    let out = [
        ("request_model", "claude"),
        ("token_type", "output"),
        ("usage_source", "estimated"),
    ];
    assert_eq!(tokens(&gw, &out).await, (2 * want) as f64);
    let partial = [("request_model", "claude"), ("provider", "claude")];
    assert_eq!(
        sample(
            &gw.metrics_text().await,
            "tollgate_partial_streams_total",
            &partial
        ),
        Some(2.0)
    );
}

/// A Gemini stream cut (connection closed) before its last chunk: Gemini's
/// earlier chunks report the prompt only, so the output is the tokenizer's
/// count of the text that passed, not 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gemini_stream_cut_before_its_last_chunk_is_charged_its_text() {
    let pieces = [
        "Zürich is ",
        "cool today, twelve degrees ",
        "with light rain",
    ];
    let events: Vec<String> = pieces
        .iter()
        .map(|p| {
            let v = json!({"candidates": [{"content": {"parts": [{"text": p}], "role": "model"},
                "index": 0}], "usageMetadata": {"promptTokenCount": 2051, "totalTokenCount": 2051},
                "modelVersion": "gemini-2.5-flash"});
            format!("data: {v}\r\n\r\n")
        })
        .collect();
    let gemini = RawUpstream::start(move |_| Script {
        pieces: sse_response(&events),
        cut: true,
    })
    .await;
    let models_extra = "  gem: { routes: [ { provider: gem, model: gemini-2.5-flash } ] }\n";
    let yaml = config(1, 1, models_extra).replace(
        "  claude:\n    kind: anthropic",
        &format!(
            "  gem:\n    kind: gemini\n    base_url: \"http://127.0.0.1:{}/v1beta\"\n    \
             api_key: \"AIzaSyChargeTestGeminiKey000000000000000\"\n    \
             health_check: {{ enabled: false }}\n    retry: {{ attempts: 1 }}\n  \
             claude:\n    kind: anthropic",
            gemini.port
        ),
    );
    let gw = Gateway::start(&yaml).await;
    let resp = post(
        &gw,
        "cut-gemini",
        chat_body("gem", true, "Weather in Zürich?"),
    )
    .await;
    assert_eq!(resp.status(), 200, "log:\n{}", gw.logs());
    let got = resp.bytes().await.map(|b| text(&b)).unwrap_or_default();
    assert!(
        got.contains("light rain") && !got.contains("[DONE]"),
        "{got}"
    );

    let line = gw.access_line("cut-gemini").await;
    assert_eq!(line["usage_source"], "estimated", "{line}");
    assert_eq!(line["partial"], true, "{line}");
    assert_eq!(line["prompt_tokens"], 2051, "as reported: {line}");
    assert_eq!(
        line["completion_tokens"],
        cl100k(&pieces.concat()),
        "the streamed text, not 0: {line}"
    );
}

/// A non-stream Anthropic answer over the 16 MiB translation limit (the
/// client gets an error) and a non-stream body the provider cuts short:
/// both charged their reservation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_translated_answer_too_big_or_cut_is_charged_its_reservation() {
    let message = json!({"id": "msg_big", "type": "message", "role": "assistant",
        "model": "claude-sonnet-4-5", "stop_reason": "end_turn", "stop_sequence": null,
        "content": [{"type": "text", "text": "y".repeat(17 * MIB)}],
        "usage": {"input_tokens": 10, "output_tokens": 20}})
    .to_string();
    let anthropic = MockUpstream::start(Behavior::json(200, message)).await;
    let doc = big_completion(4096, None);
    let head = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        doc.len()
    );
    let half = doc.as_bytes()[..doc.len() / 2].to_vec();
    let openai = RawUpstream::start(move |_| Script {
        pieces: vec![head.clone().into_bytes(), half.clone()],
        cut: true,
    })
    .await;
    let (gw, admin) = start(openai.port, anthropic.port(), "").await;

    let resp = post(&gw, "too-big", chat_body("claude", false, "Hi")).await;
    let _ = resp.bytes().await;
    let resp = post(&gw, "cut-body", chat_body("chat", false, "Hi")).await;
    let _ = resp.bytes().await;

    let mut total = 0;
    for rid in ["too-big", "cut-body"] {
        let line = gw.access_line(rid).await;
        assert_eq!(line["usage_source"], "reserved", "{rid}: {line}");
        assert_eq!(line["completion_tokens"], MAX_TOKENS, "{rid}: {line}");
        assert!(line["prompt_tokens"].as_u64().unwrap() > 0, "{rid}: {line}");
        total += charged(&line);
    }
    assert_eq!(budget_used(&gw, &admin).await, total as f64);
}

/// A hedged non-stream request whose client leaves while both legs are
/// running: both legs reached a provider and are charged (their worst case
/// each), on their own routes and against the key's budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hedged_request_the_client_leaves_charges_both_legs() {
    let slow = RawUpstream::start(|_| Script {
        pieces: Vec::new(),
        cut: false,
    })
    .await;
    let hedge = r#"  hedged:
    routes:
      - { provider: up, model: gpt-4o, price: { input: 1.0, output: 2.0 } }
      - { provider: up2, model: gpt-4o-mini, price: { input: 1.0, output: 2.0 } }
    hedge: { after: 100ms, max_share: 1.0 }
"#;
    let yaml = config(slow.port, 1, hedge).replace(
        "  claude:\n    kind: anthropic",
        &format!(
            "  up2:\n    kind: openai\n    base_url: \"http://127.0.0.1:{}/v1\"\n    \
             api_key: \"sk-provider-charge-2\"\n    health_check: {{ enabled: false }}\n  \
             claude:\n    kind: anthropic",
            slow.port
        ),
    );
    let gw = Gateway::start(&yaml).await;
    let admin = gw.admin_addr();

    let req = raw_post(
        "/v1/chat/completions",
        "hedge-gone",
        &chat_body("hedged", false, "Count to fifty."),
    );
    send_and_leave(&gw, &req, |_| true, || slow.requests() == 2).await;
    assert!(
        wait_until(QUICK, || slow.closed() == 2).await,
        "both legs cancelled; log:\n{}",
        gw.logs()
    );

    let line = gw.access_line("hedge-gone").await;
    assert_eq!(line["status"], 499, "{line}");
    let log = line["attempt_log"].to_string();
    assert_eq!(log.matches("hedge_cancelled").count(), 2, "{line}");
    for model in ["gpt-4o", "gpt-4o-mini"] {
        let out = [
            ("request_model", "hedged"),
            ("response_model", model),
            ("token_type", "output"),
            ("usage_source", "reserved"),
        ];
        assert_eq!(tokens(&gw, &out).await, MAX_TOKENS as f64, "{model}");
    }
    let input = [("request_model", "hedged"), ("token_type", "input")];
    let prompts = tokens(&gw, &input).await;
    assert!(prompts >= 2.0, "{prompts}");
    assert_eq!(
        budget_used(&gw, &admin).await,
        prompts + 2.0 * MAX_TOKENS as f64
    );
}

/// A shadow copy whose answer is over the meter limit, without usage: its
/// reservation is counted in the shadow metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_copy_too_big_to_read_is_counted() {
    let primary = MockUpstream::start(Behavior::ChatEcho).await;
    let shadow = MockUpstream::start(Behavior::func(|_| {
        Reply::json(200, big_completion(17 * MIB, None))
    }))
    .await;
    let models_extra = "  shadowed:\n    routes: [ { provider: up, model: gpt-4o } ]\n    \
        shadow: { route: { provider: sh, model: gpt-4o-mini }, sample: 1 }\n";
    let yaml = config(primary.port(), 1, models_extra).replace(
        "  claude:\n    kind: anthropic",
        &format!(
            "  sh:\n    kind: openai\n    base_url: \"http://127.0.0.1:{}/v1\"\n    \
             api_key: \"sk-provider-charge-3\"\n    health_check: {{ enabled: false }}\n  \
             claude:\n    kind: anthropic",
            shadow.port()
        ),
    );
    let gw = Gateway::start(&yaml).await;
    let resp = post(&gw, "shadowed", chat_body("shadowed", false, "Hi")).await;
    assert_eq!(resp.status(), 200, "log:\n{}", gw.logs());
    let _ = resp.bytes().await;

    let out = [
        ("request_model", "shadowed"),
        ("token_type", "output"),
        ("usage_source", "reserved"),
    ];
    let deadline = tokio::time::Instant::now() + QUICK;
    loop {
        let m = gw.metrics_text().await;
        if sum(&m, "tollgate_shadow_tokens_total", &out) == MAX_TOKENS as f64 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no reserved shadow tokens:\n{m}\nlog:\n{}",
            gw.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
