//! Usage and spend accounting end to end: the real gateway binary in front of
//! a mock upstream. Checks what reaches the client byte for byte, the token
//! and cost series on `/metrics`, and the access-log line of each request.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};
use support::prom::{self, assert_sample, sample, series_count, sum};
use support::{header, Behavior, Gateway, MockUpstream, Recorded, Reply, CONFIG_HEAD};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const KEY: &str = "tg-alice-key-0001";
const PRICE: &str = "price: { input: 0.15, cached_input: 0.075, output: 0.60 }";

/// A gateway config with one OpenAI-kind provider `up` at `port`, the given
/// `models:` entries (already indented) and the key `alice` = [`KEY`].
fn config(port: u16, api_key: &str, models: &str) -> String {
    format!(
        r#"{CONFIG_HEAD}providers:
  up:
    kind: openai
    base_url: "http://127.0.0.1:{port}/v1"
    api_key: "{api_key}"
    health_check: {{ enabled: false }}
models:
{models}
keys:
  - {{ name: alice, key: "{KEY}" }}
"#
    )
}

/// USD cost by the documented formula.
fn cost(prompt: u64, cached: u64, completion: u64) -> f64 {
    ((prompt - cached) as f64 * 0.15 + cached as f64 * 0.075 + completion as f64 * 0.60) / 1e6
}

/// Route labels of a request by `alice` on provider `up`.
fn route<'a>(alias: &'a str, upstream_model: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("request_model", alias),
        ("provider", "up"),
        ("response_model", upstream_model),
        ("key", "alice"),
    ]
}

fn with<'a>(base: &[(&'a str, &'a str)], more: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut v = base.to_vec();
    v.extend_from_slice(more);
    v
}

/// Asserts the four `tollgate_tokens_total` series of a route.
fn assert_tokens(
    text: &str,
    route: &[(&str, &str)],
    source: &str,
    [input, output, cached, reasoning]: [u64; 4],
) {
    for (kind, n) in [
        ("input", input),
        ("output", output),
        ("cached_input", cached),
        ("reasoning", reasoning),
    ] {
        let labels = with(route, &[("token_type", kind), ("usage_source", source)]);
        assert_sample(text, "tollgate_tokens_total", &labels, n as f64);
    }
}

/// Asserts the cost counter of a route equals `expected` USD (to 1e-12
/// relative: the exposition prints the f64 exactly, only the order of the
/// additions may differ).
fn assert_cost(text: &str, route: &[(&str, &str)], expected: f64) {
    let got = sample(text, "tollgate_cost_usd_total", route)
        .unwrap_or_else(|| panic!("no tollgate_cost_usd_total{route:?} in\n{text}"));
    assert!(
        (got - expected).abs() <= expected.abs() * 1e-12,
        "tollgate_cost_usd_total{route:?}: got {got}, expected {expected}"
    );
}

async fn post(gw: &Gateway, key: &str, rid: Option<&str>, body: &Value) -> reqwest::Response {
    let mut req = support::client()
        .post(gw.url("/v1/chat/completions"))
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(rid) = rid {
        req = req.header("x-request-id", rid);
    }
    req.send()
        .await
        .unwrap_or_else(|e| panic!("request failed: {e}; log:\n{}", gw.logs()))
}

/// Reads a body to its end, keeping what arrived before an error.
async fn read_all(resp: reqwest::Response) -> Vec<u8> {
    let mut out = Vec::new();
    let mut s = resp.bytes_stream();
    while let Some(item) = s.next().await {
        match item {
            Ok(b) => out.extend_from_slice(&b),
            Err(_) => break,
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Streams with reported usage
// ---------------------------------------------------------------------------

const STREAM_USAGE: [u64; 4] = [1500, 240, 1280, 64]; // input, output, cached, reasoning

/// An OpenAI chat stream as the provider sends it: with `include_usage`
/// every chunk carries `"usage":null` and a usage-only chunk precedes [DONE].
fn openai_stream(model: &str, include_usage: bool) -> Vec<String> {
    let chunk = |delta: Value, finish: Value| {
        let mut v = json!({
            "id": "chatcmpl-acct-1", "object": "chat.completion.chunk", "created": 1718000000,
            "model": model, "system_fingerprint": "fp_44709d6fcb",
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        });
        if include_usage {
            v["usage"] = Value::Null;
        }
        format!("data: {v}\n\n")
    };
    let mut out = vec![chunk(
        json!({"role": "assistant", "content": "", "refusal": null}),
        Value::Null,
    )];
    for piece in ["Bonjour", " le", " monde", " — héllo", " 世界", "!"] {
        out.push(chunk(json!({ "content": piece }), Value::Null));
    }
    out.push(chunk(json!({}), json!("stop")));
    if include_usage {
        let [input, output, cached, reasoning] = STREAM_USAGE;
        let v = json!({
            "id": "chatcmpl-acct-1", "object": "chat.completion.chunk", "created": 1718000000,
            "model": model, "system_fingerprint": "fp_44709d6fcb", "choices": [],
            "usage": {"prompt_tokens": input, "completion_tokens": output, "total_tokens": input + output,
                "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": reasoning, "audio_tokens": 0,
                    "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}},
        });
        out.push(format!("data: {v}\n\n"));
    }
    out.push("data: [DONE]\n\n".to_string());
    out
}

/// Answers like OpenAI: the usage chunk only when the request asked for it.
fn usage_when_asked(r: &Recorded) -> Reply {
    let body = r.json();
    let model = body["model"].as_str().unwrap_or("?").to_string();
    let asked = body["stream_options"]["include_usage"] == json!(true);
    Reply::sse(openai_stream(&model, asked), Duration::from_millis(2))
}

fn stream_models() -> String {
    format!(
        "  chat-strip: {{ routes: [ {{ provider: up, model: gpt-4o-mini, {PRICE} }} ] }}\n  \
         chat-asked: {{ routes: [ {{ provider: up, model: gpt-4o-mini, {PRICE} }} ] }}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_usage_chunk_is_metered_and_cut_from_the_client_stream() {
    let up = MockUpstream::start(Behavior::func(usage_when_asked)).await;
    let gw = Gateway::start(&config(up.port(), "sk-provider-acct-1", &stream_models())).await;

    let body = json!({"model": "chat-strip", "stream": true,
        "messages": [{"role": "user", "content": "Say hello in two languages."}]});
    let resp = post(&gw, KEY, Some("strip-1"), &body).await;
    assert_eq!(resp.status(), 200, "log:\n{}", gw.logs());
    assert_eq!(
        header(&resp, "content-type").as_deref(),
        Some("text/event-stream")
    );
    assert_eq!(
        header(&resp, "x-tollgate-route").as_deref(),
        Some("up/gpt-4o-mini")
    );
    let got = read_all(resp).await;

    // Tollgate asked the upstream for usage on the client's behalf.
    let seen = up.last().expect("the mock saw the request");
    let sent = seen.json();
    assert_eq!(
        sent["stream_options"]["include_usage"],
        json!(true),
        "upstream body: {}",
        seen.body_str()
    );
    assert_eq!(sent["model"], "gpt-4o-mini");
    assert_eq!(sent["messages"], body["messages"]);
    assert_eq!(
        seen.body_str().matches("\"stream_options\"").count(),
        1,
        "{}",
        seen.body_str()
    );

    // The client got every byte the mock sent except the usage event.
    let mock_events = openai_stream("gpt-4o-mini", true);
    let usage_event = mock_events.len() - 2;
    assert!(mock_events[usage_event].contains("\"choices\":[]"));
    let expected: String = mock_events
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != usage_event)
        .map(|(_, e)| e.as_str())
        .collect();
    let got = String::from_utf8(got).expect("utf-8 stream");
    assert!(
        !got.contains("\"choices\":[]"),
        "usage chunk leaked:\n{got}"
    );
    assert!(!got.contains("prompt_tokens"), "usage leaked:\n{got}");
    assert_eq!(
        got, expected,
        "client stream != mock stream minus the usage event"
    );

    let line = gw.access_line("strip-1").await;
    let m = gw.metrics_text().await;
    let r = route("chat-strip", "gpt-4o-mini");
    assert_tokens(&m, &r, "reported", STREAM_USAGE);
    let [input, output, cached, _] = STREAM_USAGE;
    assert_cost(&m, &r, cost(input, cached, output));
    assert_sample(
        &m,
        "tollgate_requests_total",
        &with(
            &r,
            &[("endpoint", "chat_completions"), ("status_class", "2xx")],
        ),
        1.0,
    );
    assert_sample(
        &m,
        "tollgate_time_to_first_token_seconds_count",
        &[("request_model", "chat-strip"), ("provider", "up")],
        1.0,
    );
    assert_eq!(
        sum(
            &m,
            "tollgate_tokens_total",
            &[("usage_source", "estimated")]
        ),
        0.0
    );
    assert_eq!(line["usage_source"], "reported", "{line}");
    assert_eq!(line["prompt_tokens"], input, "{line}");
    assert_eq!(line["completion_tokens"], output, "{line}");
    assert_eq!(line["cached_tokens"], cached, "{line}");
    assert_eq!(line["partial"], false, "{line}");
    assert_eq!(line["stream"], true, "{line}");
}

/// Line ending and chunk size the mock uses, chosen by the request's `user`
/// field (`"crlf/37"`: CRLF lines, the byte stream cut every 37 bytes, so
/// events, line endings and UTF-8 characters straddle chunks).
fn framing(user: &str) -> (&'static str, usize) {
    let (eol, size) = user.split_once('/').unwrap_or(("lf", "0"));
    let eol = match eol {
        "crlf" => "\r\n",
        "cr" => "\r",
        _ => "\n",
    };
    (eol, size.parse().unwrap_or(0))
}

/// `events` with `eol` line endings, as one byte string.
fn reframe(events: &[String], eol: &str) -> Vec<u8> {
    events.concat().replace('\n', eol).into_bytes()
}

fn framed_usage_when_asked(r: &Recorded) -> Reply {
    let body = r.json();
    let model = body["model"].as_str().unwrap_or("?").to_string();
    let asked = body["stream_options"]["include_usage"] == json!(true);
    let (eol, size) = framing(body["user"].as_str().unwrap_or(""));
    let bytes = reframe(&openai_stream(&model, asked), eol);
    let chunks: Vec<bytes::Bytes> = bytes
        .chunks(if size == 0 { bytes.len() } else { size })
        .map(bytes::Bytes::copy_from_slice)
        .collect();
    let interval = if size >= 37 {
        Duration::from_millis(1)
    } else {
        Duration::ZERO
    };
    Reply {
        status: 200,
        headers: vec![(
            "content-type".into(),
            "text/event-stream; charset=utf-8".into(),
        )],
        body: support::ReplyBody::Chunks(chunks, interval),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_usage_is_cut_whatever_the_framing_and_client_options() {
    let up = MockUpstream::start(Behavior::func(framed_usage_when_asked)).await;
    let gw = Gateway::start(&config(up.port(), "sk-provider-acct-1b", &stream_models())).await;
    let mock_events = openai_stream("gpt-4o-mini", true);
    let usage_event = mock_events.len() - 2;
    let without_usage: Vec<String> = mock_events
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != usage_event)
        .map(|(_, e)| e.clone())
        .collect();
    // (request id, `user` = framing, the client's stream_options)
    let cases = [
        ("frame-lf-37", "lf/37", None),
        ("frame-crlf-37", "crlf/37", None),
        ("frame-cr-37", "cr/37", None),
        ("frame-crlf-5", "crlf/5", None),
        ("frame-false", "lf/0", Some(json!({"include_usage": false}))),
        ("frame-null", "crlf/37", Some(Value::Null)),
    ];
    for (rid, user, opts) in &cases {
        let mut body = json!({"model": "chat-strip", "stream": true, "user": user,
            "messages": [{"role": "user", "content": "Say hello in two languages."}]});
        if let Some(o) = opts {
            body["stream_options"] = o.clone();
        }
        let resp = post(&gw, KEY, Some(rid), &body).await;
        assert_eq!(resp.status(), 200, "{rid}; log:\n{}", gw.logs());
        let got = read_all(resp).await;
        let seen = up.last().expect("request");
        assert_eq!(
            seen.json()["stream_options"]["include_usage"],
            json!(true),
            "{rid}: upstream body {}",
            seen.body_str()
        );
        let (eol, _) = framing(user);
        let expected = reframe(&without_usage, eol);
        assert!(
            got == expected,
            "{rid}: client stream != mock stream minus the usage event\n got: {:?}\nwant: {:?}",
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(&expected)
        );
        gw.access_line(rid).await;
    }
    let m = gw.metrics_text().await;
    let r = route("chat-strip", "gpt-4o-mini");
    let n = cases.len() as u64;
    assert_tokens(&m, &r, "reported", STREAM_USAGE.map(|t| t * n));
    let [input, output, cached, _] = STREAM_USAGE;
    assert_cost(&m, &r, n as f64 * cost(input, cached, output));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_chunk_the_client_asked_for_arrives_unchanged() {
    let up = MockUpstream::start(Behavior::func(usage_when_asked)).await;
    let gw = Gateway::start(&config(up.port(), "sk-provider-acct-2", &stream_models())).await;

    let body = json!({"model": "chat-asked", "stream": true,
        "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "Say hello in two languages."}]});
    let resp = post(&gw, KEY, Some("asked-1"), &body).await;
    assert_eq!(resp.status(), 200, "log:\n{}", gw.logs());
    let got = String::from_utf8(read_all(resp).await).expect("utf-8 stream");
    let expected: String = openai_stream("gpt-4o-mini", true).concat();
    assert_eq!(got, expected, "client stream != mock stream");

    let sent = up.last().expect("request").json();
    assert_eq!(sent["stream_options"], json!({"include_usage": true}));

    gw.access_line("asked-1").await;
    let m = gw.metrics_text().await;
    let r = route("chat-asked", "gpt-4o-mini");
    assert_tokens(&m, &r, "reported", STREAM_USAGE);
    let [input, output, cached, _] = STREAM_USAGE;
    assert_cost(&m, &r, cost(input, cached, output));
}

// ---------------------------------------------------------------------------
// Non-stream
// ---------------------------------------------------------------------------

fn completion_body(model: &str) -> String {
    json!({
        "id": "chatcmpl-acct-ns", "object": "chat.completion", "created": 1718000000, "model": model,
        "system_fingerprint": "fp_44709d6fcb",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris, naturellement.",
            "refusal": null}, "logprobs": null, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 2000, "completion_tokens": 300, "total_tokens": 2300,
            "prompt_tokens_details": {"cached_tokens": 1536, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 128, "audio_tokens": 0,
                "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}},
        "service_tier": "default",
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_stream_usage_with_cached_and_reasoning_tokens_is_priced_exactly() {
    let up = MockUpstream::start(Behavior::func(|r| {
        let model = r.json()["model"].as_str().unwrap_or("?").to_string();
        Reply::json(200, completion_body(&model))
    }))
    .await;
    let models =
        format!("  chat: {{ routes: [ {{ provider: up, model: gpt-4o-mini, {PRICE} }} ] }}");
    let gw = Gateway::start(&config(up.port(), "sk-provider-acct-3", &models)).await;

    let body =
        json!({"model": "chat", "messages": [{"role": "user", "content": "Capital of France?"}]});
    let resp = post(&gw, KEY, Some("client-req-42"), &body).await;
    assert_eq!(resp.status(), 200, "log:\n{}", gw.logs());
    assert_eq!(
        header(&resp, "x-tollgate-route").as_deref(),
        Some("up/gpt-4o-mini")
    );
    assert_eq!(
        header(&resp, "x-request-id").as_deref(),
        Some("client-req-42")
    );
    let text = resp.text().await.unwrap();
    assert_eq!(text, completion_body("gpt-4o-mini"), "body changed");
    assert_eq!(
        up.last().and_then(|r| r.header("x-request-id")).as_deref(),
        Some("client-req-42"),
        "request id not passed upstream"
    );

    // Without a client id the gateway makes one.
    let resp = post(&gw, KEY, None, &body).await;
    assert_eq!(resp.status(), 200);
    let generated = header(&resp, "x-request-id").expect("x-request-id generated");
    assert!(!generated.is_empty() && generated != "client-req-42");
    let _ = resp.text().await;

    let line = gw.access_line("client-req-42").await;
    gw.access_line(&generated).await;
    let m = gw.metrics_text().await;
    let r = route("chat", "gpt-4o-mini");
    assert_tokens(&m, &r, "reported", [4000, 600, 3072, 256]);
    // Cached tokens at the cached price: 464 × 0.15 + 1536 × 0.075 + 300 × 0.60.
    let one = cost(2000, 1536, 300);
    assert!((one - 0.0003648).abs() < 1e-12, "{one}");
    assert_cost(&m, &r, 2.0 * one);
    assert_sample(
        &m,
        "tollgate_requests_total",
        &with(
            &r,
            &[("endpoint", "chat_completions"), ("status_class", "2xx")],
        ),
        2.0,
    );
    assert_eq!(sum(&m, "tollgate_unpriced_requests_total", &[]), 0.0);
    assert_eq!(sum(&m, "tollgate_usage_estimated_total", &[]), 0.0);

    assert_eq!(line["prompt_tokens"], 2000, "{line}");
    assert_eq!(line["completion_tokens"], 300, "{line}");
    assert_eq!(line["cached_tokens"], 1536, "{line}");
    assert_eq!(line["reasoning_tokens"], 128, "{line}");
    assert_eq!(line["usage_source"], "reported", "{line}");
    assert_eq!(line["unpriced"], false, "{line}");
    assert_eq!(line["partial"], false, "{line}");
    let logged = line["cost_usd"].as_f64().expect("cost_usd");
    assert!((logged - one).abs() <= one * 1e-12, "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_without_price_counts_unpriced_not_zero_cost() {
    let up = MockUpstream::start(Behavior::ChatEcho).await;
    let models = format!(
        "  free: {{ routes: [ {{ provider: up, model: llama-3.1-8b }} ] }}\n  \
         paid: {{ routes: [ {{ provider: up, model: gpt-4o-mini, {PRICE} }} ] }}"
    );
    let gw = Gateway::start(&config(up.port(), "sk-provider-acct-4", &models)).await;

    // A priced request first, so there is a cost series to compare against.
    let paid = json!({"model": "paid", "messages": [{"role": "user", "content": "hi"}]});
    let resp = post(&gw, KEY, Some("paid-1"), &paid).await;
    assert_eq!(resp.status(), 200, "log:\n{}", gw.logs());
    let _ = resp.text().await;
    gw.access_line("paid-1").await;
    let before = gw.metrics_text().await;
    let cost_before = sum(&before, "tollgate_cost_usd_total", &[]);
    assert!(cost_before > 0.0, "priced request cost nothing:\n{before}");
    let fr = route("free", "llama-3.1-8b");
    assert_eq!(sum(&before, "tollgate_unpriced_requests_total", &fr), 0.0);

    let free = json!({"model": "free", "messages": [{"role": "user", "content": "hi"}]});
    let resp = post(&gw, KEY, Some("free-1"), &free).await;
    assert_eq!(resp.status(), 200, "log:\n{}", gw.logs());
    assert_eq!(
        header(&resp, "x-tollgate-route").as_deref(),
        Some("up/llama-3.1-8b")
    );
    let _ = resp.text().await;
    let line = gw.access_line("free-1").await;
    let after = gw.metrics_text().await;

    assert_sample(&after, "tollgate_unpriced_requests_total", &fr, 1.0);
    assert_eq!(
        sum(&after, "tollgate_unpriced_requests_total", &[]),
        1.0,
        "only the unpriced route counts"
    );
    assert_eq!(
        sum(&after, "tollgate_cost_usd_total", &[]),
        cost_before,
        "an unpriced request changed the cost"
    );
    assert!(
        matches!(
            sample(&after, "tollgate_cost_usd_total", &fr),
            None | Some(0.0)
        ),
        "cost series for the unpriced route"
    );
    // Its usage is still counted (ChatEcho reports 5 in, 3 out).
    assert_tokens(&after, &fr, "reported", [5, 3, 0, 0]);
    assert_eq!(line["unpriced"], true, "{line}");
    assert!(line["cost_usd"].is_null(), "{line}");
    assert_eq!(line["prompt_tokens"], 5, "{line}");
}

// ---------------------------------------------------------------------------
// Estimation
// ---------------------------------------------------------------------------

const PROSE: &str = "The old lighthouse stood at the edge of the harbor, its white paint \
peeling after decades of salt and wind. Every evening the keeper climbed the narrow spiral \
stairs, counting each of the one hundred and twelve steps, and lit the great lamp that warned \
ships away from the rocks below. Fishermen in the village said he had never missed a single \
night, not during the storm that flooded the market square, nor during the winter when ice \
sealed the bay for three months. Children sometimes followed him to the door, asking whether \
he was ever lonely up there, with only the gulls and the sound of the waves for company. He \
would smile and tell them that the sea was a generous neighbor, full of stories for anyone \
patient enough to listen. When the town council finally voted to replace the lamp with an \
automatic beacon, nobody quite knew how to tell him. In the end, he made the decision easy: \
he asked if he could keep climbing the stairs each evening anyway, just to watch the light \
come on by itself, and to make sure it remembered the way. The council agreed without a \
single objection, and the mayor herself walked with him on the first night, a little out of \
breath, and carrying a thermos of hot tea for the two of them.";

const PROMPT: &str = "Write a short story of about two hundred words about a lighthouse \
keeper who refuses to retire, told in a warm and gentle tone for a general audience.";

fn o200k(text: &str) -> u64 {
    tiktoken_rs::o200k_base_singleton()
        .encode_ordinary(text)
        .len() as u64
}

/// The prose in chunks of three words, as a model would stream it.
fn prose_pieces() -> Vec<String> {
    let words: Vec<&str> = PROSE.split_inclusive(' ').collect();
    words.chunks(3).map(|c| c.concat()).collect()
}

/// Never reports usage, whatever it is asked.
fn no_usage(r: &Recorded) -> Reply {
    let body = r.json();
    let model = body["model"].as_str().unwrap_or("?").to_string();
    let head = json!({"id": "chatcmpl-est", "object": "chat.completion.chunk",
        "created": 1718000000, "model": model});
    if body["stream"] == json!(true) {
        let mut events = Vec::new();
        let mut first = head.clone();
        first["choices"] = json!([{"index": 0, "delta": {"role": "assistant", "content": ""},
            "finish_reason": null}]);
        events.push(format!("data: {first}\n\n"));
        for p in prose_pieces() {
            let mut c = head.clone();
            c["choices"] = json!([{"index": 0, "delta": {"content": p}, "finish_reason": null}]);
            events.push(format!("data: {c}\n\n"));
        }
        let mut last = head.clone();
        last["choices"] = json!([{"index": 0, "delta": {}, "finish_reason": "stop"}]);
        events.push(format!("data: {last}\n\n"));
        events.push("data: [DONE]\n\n".to_string());
        return Reply::sse(events, Duration::ZERO);
    }
    Reply::json(
        200,
        json!({"id": "chatcmpl-est", "object": "chat.completion", "created": 1718000000,
            "model": model, "choices": [{"index": 0, "finish_reason": "stop",
            "message": {"role": "assistant", "content": PROSE}}]})
        .to_string(),
    )
}

fn within_10pct(got: f64, want: u64, what: &str) {
    let want = want as f64;
    assert!(
        (got - want).abs() <= want * 0.10,
        "{what}: estimated {got}, tokenizer says {want}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_usage_is_estimated_with_the_tokenizer() {
    let up = MockUpstream::start(Behavior::func(no_usage)).await;
    let models = format!(
        "  est-s: {{ routes: [ {{ provider: up, model: gpt-4o, {PRICE} }} ] }}\n  \
         est-n: {{ routes: [ {{ provider: up, model: gpt-4o, {PRICE} }} ] }}"
    );
    let gw = Gateway::start(&config(up.port(), "sk-provider-acct-5", &models)).await;
    let words = PROSE.split_whitespace().count();
    assert!((180..=230).contains(&words), "{words} words");
    let want_out = o200k(PROSE);
    let want_in = o200k(PROMPT);

    // Stream (Tollgate injects include_usage; this upstream ignores it).
    let body = json!({"model": "est-s", "stream": true,
        "messages": [{"role": "user", "content": PROMPT}]});
    let resp = post(&gw, KEY, Some("est-stream"), &body).await;
    assert_eq!(resp.status(), 200, "log:\n{}", gw.logs());
    let got = String::from_utf8(read_all(resp).await).unwrap();
    assert!(got.ends_with("data: [DONE]\n\n"), "{got}");
    let streamed: String = prose_pieces().concat();
    assert_eq!(streamed, PROSE);

    // Non-stream.
    let body = json!({"model": "est-n", "messages": [{"role": "user", "content": PROMPT}]});
    let resp = post(&gw, KEY, Some("est-json"), &body).await;
    assert_eq!(resp.status(), 200, "log:\n{}", gw.logs());
    let _ = resp.text().await;

    let ls = gw.access_line("est-stream").await;
    let ln = gw.access_line("est-json").await;
    let m = gw.metrics_text().await;
    for (alias, line) in [("est-s", &ls), ("est-n", &ln)] {
        let r = route(alias, "gpt-4o");
        let est = |kind| {
            sample(
                &m,
                "tollgate_tokens_total",
                &with(&r, &[("token_type", kind), ("usage_source", "estimated")]),
            )
            .unwrap_or_else(|| panic!("{alias}: no estimated {kind} tokens in\n{m}"))
        };
        within_10pct(est("output"), want_out, &format!("{alias} output"));
        let input = est("input");
        assert!(
            input >= want_in as f64 && input <= want_in as f64 * 1.10 + 10.0,
            "{alias}: estimated input {input}, prompt text alone is {want_in} tokens"
        );
        assert_eq!(
            sum(
                &m,
                "tollgate_tokens_total",
                &with(&r, &[("usage_source", "reported")])
            ),
            0.0,
            "{alias}: nothing was reported"
        );
        assert_sample(
            &m,
            "tollgate_usage_estimated_total",
            &[("request_model", alias), ("provider", "up")],
            1.0,
        );
        assert_eq!(line["usage_source"], "estimated", "{line}");
        assert_eq!(
            line["completion_tokens"].as_f64(),
            Some(est("output")),
            "{line}"
        );
        assert_eq!(line["prompt_tokens"].as_f64(), Some(input), "{line}");
        // Estimated usage is still priced.
        let c = line["cost_usd"].as_f64().expect("cost_usd");
        let expected = cost(input as u64, 0, est("output") as u64);
        assert!((c - expected).abs() <= expected * 1e-12, "{line}");
    }
}

// ---------------------------------------------------------------------------
// Aborted streams
// ---------------------------------------------------------------------------

/// A raw HTTP/1.1 upstream that answers a chunked SSE response, writes the
/// chunks chosen by the (rewritten) model name, then closes the connection
/// without the terminating zero-size chunk.
struct DroppingUpstream {
    addr: SocketAddr,
    bodies: Arc<Mutex<Vec<Value>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for DroppingUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn sse_event(model: &str, delta: Value) -> String {
    let v = json!({"id": "chatcmpl-drop", "object": "chat.completion.chunk", "created": 1718000000,
        "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": null}]});
    format!("data: {v}\n\n")
}

const DROP_PIECES: [&str; 3] = ["The quick", " brown fox", " jumps over"];

fn drop_plan(model: &str) -> Vec<String> {
    let role = sse_event(model, json!({"role": "assistant", "content": ""}));
    match model {
        "gpt-4o-drop3" => {
            let mut v = vec![role];
            v.extend(
                DROP_PIECES
                    .iter()
                    .map(|p| sse_event(model, json!({ "content": p }))),
            );
            v
        }
        "gpt-4o-drop-role" => vec![role],
        _ => Vec::new(), // headers only
    }
}

impl DroppingUpstream {
    async fn start() -> DroppingUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let b2 = bodies.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    continue;
                };
                let bodies = b2.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut tmp = [0u8; 8192];
                    let head_end = loop {
                        let Ok(n) = s.read(&mut tmp).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&tmp[..n]);
                        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break p + 4;
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    while buf.len() < head_end + len {
                        let Ok(n) = s.read(&mut tmp).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&tmp[..n]);
                    }
                    let body: Value = serde_json::from_slice(&buf[head_end..head_end + len])
                        .unwrap_or(Value::Null);
                    let model = body["model"].as_str().unwrap_or("").to_string();
                    bodies.lock().unwrap().push(body);
                    let _ = s
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                              cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n",
                        )
                        .await;
                    for ev in drop_plan(&model) {
                        let chunk = format!("{:x}\r\n{ev}\r\n", ev.len());
                        let _ = s.write_all(chunk.as_bytes()).await;
                        let _ = s.flush().await;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    // Dropped here: the connection closes mid-body.
                });
            }
        });
        DroppingUpstream { addr, bodies, task }
    }
}

/// The last `data:` payload in an SSE text.
fn last_data(text: &str) -> Option<&str> {
    text.split("\n\n")
        .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
        .last()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_cut_by_the_upstream_ends_with_an_error_and_is_partial() {
    let up = DroppingUpstream::start().await;
    let models = format!(
        "  drop3: {{ routes: [ {{ provider: up, model: gpt-4o-drop3, {PRICE} }} ] }}\n  \
         drop-role: {{ routes: [ {{ provider: up, model: gpt-4o-drop-role, {PRICE} }} ] }}\n  \
         drop-head: {{ routes: [ {{ provider: up, model: gpt-4o-drop-head, {PRICE} }} ] }}"
    );
    let gw = Gateway::start(&config(up.addr.port(), "sk-provider-acct-6", &models)).await;

    for (alias, upstream_model, rid) in [
        ("drop3", "gpt-4o-drop3", "drop-3"),
        ("drop-role", "gpt-4o-drop-role", "drop-role"),
        ("drop-head", "gpt-4o-drop-head", "drop-head"),
    ] {
        let body = json!({"model": alias, "stream": true,
            "messages": [{"role": "user", "content": "Tell me about foxes."}]});
        let resp = post(&gw, KEY, Some(rid), &body).await;
        assert_eq!(resp.status(), 200, "{alias}; log:\n{}", gw.logs());
        let text = String::from_utf8_lossy(&read_all(resp).await).into_owned();

        // Everything the upstream sent arrived, then one error event, no [DONE].
        let sent: String = drop_plan(upstream_model).concat();
        assert!(text.starts_with(&sent), "{alias}: client stream:\n{text}");
        assert!(!text.contains("[DONE]"), "{alias}: fake [DONE]:\n{text}");
        let last = last_data(&text).unwrap_or_else(|| panic!("{alias}: no event:\n{text}"));
        let err: Value = serde_json::from_str(last)
            .unwrap_or_else(|_| panic!("{alias}: last event not JSON:\n{text}"));
        assert!(err["error"].is_object(), "{alias}: last event {last}");
        assert!(
            text.ends_with("\n\n"),
            "{alias}: error event not terminated:\n{text:?}"
        );

        let line = gw.access_line(rid).await;
        let m = gw.metrics_text().await;
        assert_sample(
            &m,
            "tollgate_partial_streams_total",
            &[("request_model", alias), ("provider", "up")],
            1.0,
        );
        assert_eq!(line["partial"], true, "{alias}: {line}");
        let r = route(alias, upstream_model);
        let output = sum(
            &m,
            "tollgate_tokens_total",
            &with(&r, &[("token_type", "output")]),
        );
        if alias == "drop3" {
            // Only what was streamed is charged.
            let streamed = o200k(&DROP_PIECES.concat());
            assert_eq!(line["completion_tokens"], streamed, "{alias}: {line}");
            assert_eq!(output, streamed as f64, "{alias}");
        } else {
            // Nothing streamed: no output charged.
            assert_eq!(line["completion_tokens"], 0, "{alias}: {line}");
            assert_eq!(
                output, 0.0,
                "{alias}: output tokens charged for an empty stream"
            );
        }
    }
    assert_eq!(
        up.bodies.lock().unwrap().len(),
        3,
        "a cut stream was retried"
    );
}

// ---------------------------------------------------------------------------
// Cardinality
// ---------------------------------------------------------------------------

/// xorshift64*: enough randomness for names, no extra dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn name(&mut self, prefix: &str) -> String {
        let alphabet: Vec<char> = "abcdefghijklmnopqrstuvwxyz0123456789-_.:/é世"
            .chars()
            .collect();
        let len = 6 + (self.next() % 20) as usize;
        let s: String = (0..len)
            .map(|_| alphabet[(self.next() % alphabet.len() as u64) as usize])
            .collect();
        format!("{prefix}{s}")
    }
}

#[derive(Clone)]
enum Kind {
    RandomKey,
    RandomModel,
    Valid { stream: bool },
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_models_keys_and_users_add_no_series() {
    let up = MockUpstream::start(Behavior::ChatEcho).await;
    let models =
        format!("  chat: {{ routes: [ {{ provider: up, model: gpt-4o-mini, {PRICE} }} ] }}");
    let gw = Gateway::start(&config(up.port(), "sk-provider-acct-7", &models)).await;
    let gw = Arc::new(gw);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    let mut rng = Rng(seed);

    let send = |gw: Arc<Gateway>, kind: Kind, key: String, model: String, user: String| async move {
        let stream = matches!(kind, Kind::Valid { stream: true });
        let body = json!({"model": model, "user": user, "stream": stream,
            "messages": [{"role": "user", "content": "hi"}]});
        let resp = post(&gw, &key, None, &body).await;
        let status = resp.status().as_u16();
        let _ = read_all(resp).await;
        let want = match kind {
            Kind::RandomKey => 401,
            Kind::RandomModel => 404,
            Kind::Valid { .. } => 200,
        };
        assert_eq!(status, want, "key {key:?} model {model:?}");
    };

    // Warm-up: one request of every kind creates the series legitimate
    // traffic needs.
    let warm = [
        (
            Kind::RandomKey,
            "tg-nope-warmup-1".to_string(),
            "chat".to_string(),
        ),
        (
            Kind::RandomModel,
            KEY.to_string(),
            "no-such-model".to_string(),
        ),
        (
            Kind::Valid { stream: false },
            KEY.to_string(),
            "chat".to_string(),
        ),
        (
            Kind::Valid { stream: true },
            KEY.to_string(),
            "chat".to_string(),
        ),
    ];
    for (kind, key, model) in warm.iter().cloned() {
        send(gw.clone(), kind, key, model, "warm-user".into()).await;
    }
    // `/healthz` (the harness's readiness probe) is counted too: leave it out.
    let total = |m: &str| {
        sum(
            m,
            "tollgate_requests_total",
            &[("endpoint", "chat_completions")],
        )
    };
    let wait_total = |n: f64| {
        let gw = gw.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                let m = gw.metrics_text().await;
                let probed = sample(&m, "tollgate_requests_total", &[("endpoint", "healthz")]);
                // The backend gauges are exported by a ticker (every 100 ms),
                // not by requests: wait for them too, so they are in the
                // baseline.
                let backend = [
                    "tollgate_breaker_state",
                    "tollgate_upstream_backend_healthy",
                ]
                .iter()
                .all(|g| sample(&m, g, &[("provider", "up")]).is_some());
                if (total(&m) >= n && probed.is_some() && backend) || Instant::now() >= deadline {
                    return m;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let before = wait_total(4.0).await;
    assert_eq!(total(&before), 4.0);
    let n_before = series_count(&before, "tollgate_");

    let mut jobs = Vec::new();
    let mut names = BTreeSet::new();
    for i in 0..1000u64 {
        let user = rng.name("user-");
        let (kind, key, model) = match rng.next() % 3 {
            0 => (Kind::RandomKey, rng.name("tg-"), rng.name("gpt-")),
            1 => (Kind::RandomModel, KEY.to_string(), rng.name("model-")),
            _ => (
                Kind::Valid { stream: i % 2 == 0 },
                KEY.to_string(),
                "chat".to_string(),
            ),
        };
        if !matches!(kind, Kind::Valid { .. }) {
            names.insert(model.clone());
        }
        if matches!(kind, Kind::RandomKey) {
            names.insert(key.clone());
        }
        names.insert(user.clone());
        jobs.push(send(gw.clone(), kind, key, model, user));
    }
    futures_util::stream::iter(jobs)
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;
    let after = wait_total(1004.0).await;
    assert_eq!(
        total(&after),
        1004.0,
        "every request is counted once:\n{}",
        after
            .lines()
            .filter(|l| l.starts_with("tollgate_requests_total")
                || l.starts_with("tollgate_errors_total"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let n_after = series_count(&after, "tollgate_");
    if n_after != n_before {
        let old: BTreeSet<String> = prom::parse(&before)
            .iter()
            .map(|s| format!("{}{:?}", s.name, s.labels))
            .collect();
        let new: Vec<String> = prom::parse(&after)
            .iter()
            .map(|s| format!("{}{:?}", s.name, s.labels))
            .filter(|s| !old.contains(s))
            .take(20)
            .collect();
        panic!(
            "series grew from {n_before} to {n_after} (seed {seed}); new:\n{}",
            new.join("\n")
        );
    }
    let leaked: Vec<&String> = names
        .iter()
        .filter(|n| after.contains(n.as_str()))
        .take(5)
        .collect();
    assert!(leaked.is_empty(), "request input in /metrics: {leaked:?}");
}

// ---------------------------------------------------------------------------
// Secrets
// ---------------------------------------------------------------------------

const PROVIDER_CANARY: &str = "sk-canary-PROVIDER-7f3a";
const CLIENT_CANARY: &str = "tg-canary-CLIENT-91bd";
const WRONG_CANARY: &str = "tg-canary-WRONG-55aa";

/// (name, path, auth header and value, body)
type Case<'a> = (&'a str, &'a str, Option<(&'a str, String)>, String);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_logs_metrics_clients_or_upstream() {
    // The upstream refuses model `gpt-4o-refused` with a 401 whose body
    // echoes the key it got, as some providers do.
    let up = MockUpstream::start(Behavior::func(|r| {
        let body = r.json();
        let model = body["model"].as_str().unwrap_or("?").to_string();
        if model == "gpt-4o-refused" {
            let auth = r.header("authorization").unwrap_or_default();
            return Reply::json(
                401,
                json!({"error": {"message": format!("Incorrect API key provided: {auth}"),
                    "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}})
                .to_string(),
            );
        }
        if body["stream"] == json!(true) {
            return Reply::sse(openai_stream(&model, true), Duration::from_millis(1));
        }
        Reply::json(200, completion_body(&model))
    }))
    .await;
    let config = format!(
        r#"{CONFIG_HEAD}providers:
  up:
    kind: openai
    base_url: "http://127.0.0.1:{port}/v1"
    api_key: "{PROVIDER_CANARY}"
    health_check: {{ enabled: false }}
models:
  chat: {{ routes: [ {{ provider: up, model: gpt-4o-mini, {PRICE} }} ] }}
  refused: {{ routes: [ {{ provider: up, model: gpt-4o-refused, {PRICE} }} ] }}
keys:
  - {{ name: team-a, key: "{CLIENT_CANARY}" }}
"#,
        port = up.port()
    );
    let gw = Gateway::start(&config).await;
    // One pooled client for every case, as an SDK would use: a connection the
    // gateway closes must say so (`Connection: close`), or the next request
    // on it fails.
    let client = support::client();
    let mut transcript = Vec::new();
    let mut bodies = Vec::new();
    let mut statuses = Vec::new();
    let mut rids = Vec::new();

    let chat = |model: &str, stream: bool| {
        json!({"model": model, "stream": stream,
            "messages": [{"role": "user", "content": "ping"}]})
        .to_string()
    };
    let cases: Vec<Case> = vec![
        // (name, path, auth header, body)
        (
            "ok",
            "/v1/chat/completions",
            Some(("authorization", format!("Bearer {CLIENT_CANARY}"))),
            chat("chat", false),
        ),
        (
            "stream",
            "/v1/chat/completions",
            Some(("authorization", format!("Bearer {CLIENT_CANARY}"))),
            chat("chat", true),
        ),
        (
            "x-api-key",
            "/v1/chat/completions",
            Some(("x-api-key", CLIENT_CANARY.to_string())),
            chat("chat", false),
        ),
        (
            "wrong",
            "/v1/chat/completions",
            Some(("authorization", format!("Bearer {WRONG_CANARY}"))),
            chat("chat", false),
        ),
        (
            "wrong-x",
            "/v1/chat/completions",
            Some(("x-api-key", WRONG_CANARY.to_string())),
            chat("chat", false),
        ),
        (
            "no-model",
            "/v1/chat/completions",
            Some(("authorization", format!("Bearer {CLIENT_CANARY}"))),
            chat("gpt-nope", false),
        ),
        (
            "no-path",
            "/v1/nope",
            Some(("authorization", format!("Bearer {CLIENT_CANARY}"))),
            chat("chat", false),
        ),
        (
            "refused",
            "/v1/chat/completions",
            Some(("authorization", format!("Bearer {CLIENT_CANARY}"))),
            chat("refused", false),
        ),
        (
            "models",
            "/v1/models",
            Some(("authorization", format!("Bearer {CLIENT_CANARY}"))),
            String::new(),
        ),
    ];
    for (name, path, auth, body) in &cases {
        let rid = format!("canary-{name}");
        let mut req = if *path == "/v1/models" {
            client.get(gw.url(path))
        } else {
            client
                .post(gw.url(path))
                .header("content-type", "application/json")
                .body(body.clone())
        };
        req = req.header("x-request-id", &rid);
        if let Some((h, v)) = auth {
            req = req.header(*h, v);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let mut seen = format!("{name} {status}\n");
        for (k, v) in resp.headers() {
            seen.push_str(&format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())));
        }
        let body = read_all(resp).await;
        seen.push_str(&String::from_utf8_lossy(&body));
        transcript.push(seen);
        bodies.push((*name, body));
        statuses.push((*name, status));
        rids.push(rid);
    }
    let want: Vec<(&str, u16)> = vec![
        ("ok", 200),
        ("stream", 200),
        ("x-api-key", 200),
        ("wrong", 401),
        ("wrong-x", 401),
        ("no-model", 404),
        ("no-path", 404),
        ("refused", 502),
        ("models", 200),
    ];
    for (name, status) in &want {
        let got = statuses.iter().find(|(n, _)| n == name).unwrap().1;
        assert_eq!(got, *status, "{name}: {}", transcript.join("\n----\n"));
    }
    // The provider refusing our key is a generic 502 (RELIABILITY row 18),
    // with `Connection: close` (docs/config.md: the connection is not reused
    // after a failed proxy attempt, and a pooled client must know it).
    let refused_head = transcript
        .iter()
        .find(|t| t.starts_with("refused "))
        .unwrap();
    assert!(
        refused_head.contains("\nconnection: close\n"),
        "the 502 does not say the connection closes:\n{refused_head}"
    );
    let refused = &bodies.iter().find(|(n, _)| *n == "refused").unwrap().1;
    support::assert_error(502, refused, (502, "api_error", "upstream_auth_error"));
    // Every request that was logged is in the log file before we read it.
    for rid in &rids {
        if !rid.ends_with("models") {
            gw.access_line(rid).await;
        }
    }
    let metrics = gw.metrics_text().await;
    let logs = gw.logs();
    assert!(logs.contains("canary-refused"), "log incomplete:\n{logs}");

    for canary in [PROVIDER_CANARY, CLIENT_CANARY, WRONG_CANARY] {
        assert!(
            !logs.contains(canary),
            "{canary} in the gateway log:\n{logs}"
        );
        assert!(!metrics.contains(canary), "{canary} in /metrics");
        for t in &transcript {
            assert!(!t.contains(canary), "{canary} sent to the client:\n{t}");
        }
    }
    // The upstream got the provider key, and never a client key.
    // ok, stream, x-api-key and refused; the others were refused here.
    let reqs = up.requests();
    assert_eq!(reqs.len(), 4, "{} upstream requests", reqs.len());
    for r in &reqs {
        assert_eq!(
            r.header("authorization").as_deref(),
            Some(format!("Bearer {PROVIDER_CANARY}").as_str())
        );
        for (k, v) in &r.headers {
            for canary in [CLIENT_CANARY, WRONG_CANARY] {
                assert!(!v.contains(canary), "upstream saw {canary} in header {k}");
            }
        }
        for canary in [CLIENT_CANARY, WRONG_CANARY] {
            assert!(
                !r.body_str().contains(canary),
                "upstream saw {canary} in the body"
            );
        }
    }
}
