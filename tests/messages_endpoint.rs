//! The Anthropic Messages endpoint (`POST /v1/messages`) end to end: the
//! real gateway in front of an OpenAI-kind mock upstream on loopback that
//! answers with real chunked SSE. Checks the translated request the upstream
//! gets (and the headers it must not get), the Anthropic response and event
//! stream the client gets, auth by `x-api-key`, Anthropic-shaped errors with
//! no upstream hit for rejected requests, and exact tokens on `/metrics`
//! and in the access log under the `messages` endpoint label.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};
use support::prom::{assert_sample, sum};
use support::{Behavior, Gateway, MockUpstream, Recorded, Reply, ReplyBody, CONFIG_HEAD};

const KEY: &str = "tg-messages-key-0001";
const PROVIDER_KEY: &str = "sk-provider-messages-secret";
/// The alias Anthropic clients ask for; the golden outputs report it.
const ALIAS: &str = "claude-sonnet-4-5";

fn fixture(name: &str) -> String {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/messages")
        .join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The fixture stream as the mock sends it: one chunk per event, and the
/// tool-call events cut in two mid-line, so events straddle chunks.
fn stream_chunks(name: &str) -> Vec<Bytes> {
    let whole = fixture(name);
    let mut out = Vec::new();
    for ev in whole.split_inclusive("\n\n") {
        if ev.contains("tool_calls") && ev.len() > 40 {
            let (a, b) = ev.split_at(ev.len() / 2);
            out.push(Bytes::from(a.to_string()));
            out.push(Bytes::from(b.to_string()));
        } else {
            out.push(Bytes::from(ev.to_string()));
        }
    }
    out
}

/// Answers like OpenAI's Chat Completions, by what the request asks
/// (`user` picks the fixture): JSON, or chunked SSE.
fn openai_mock(r: &Recorded) -> Reply {
    let body = r.json();
    let user = body["user"].as_str().unwrap_or("");
    if body["stream"] == true {
        let name = if user == "truncated" {
            "stream_truncated.openai.sse"
        } else {
            "stream_tools.openai.sse"
        };
        return Reply {
            status: 200,
            headers: vec![("content-type".into(), "text/event-stream".into())],
            body: ReplyBody::Chunks(stream_chunks(name), Duration::from_millis(2)),
        };
    }
    match user {
        "bad-request" => Reply::json(400, fixture("error_400.openai.json")),
        "text" => Reply::json(200, fixture("response_text.openai.json")),
        _ => Reply::json(200, fixture("response_tools.openai.json")),
    }
}

fn config(port: u16) -> String {
    format!(
        r#"{CONFIG_HEAD}providers:
  up:
    kind: openai
    base_url: "http://127.0.0.1:{port}/v1"
    api_key: "{PROVIDER_KEY}"
    health_check: {{ enabled: false }}
models:
  {ALIAS}: {{ routes: [ {{ provider: up, model: gpt-4o-mini }} ] }}
keys:
  - {{ name: anth, key: "{KEY}" }}
"#
    )
}

async fn start() -> (MockUpstream, Gateway) {
    let upstream = MockUpstream::start(Behavior::func(openai_mock)).await;
    let gw = Gateway::start(&config(upstream.port())).await;
    (upstream, gw)
}

fn body(stream: bool, user: &str) -> Value {
    json!({
        "model": ALIAS,
        "max_tokens": 512,
        "system": "Be brief.",
        "stream": stream,
        "metadata": {"user_id": user},
        "tools": [{"name": "get_weather", "description": "Weather",
                   "input_schema": {"type": "object", "properties": {"location": {"type": "string"}}}}],
        "messages": [{"role": "user", "content": "Weather and time in Paris?"}]
    })
}

/// Sends `body` to `/v1/messages` the way the Anthropic SDK does.
async fn post(gw: &Gateway, rid: &str, body: &[u8], key: Option<&str>) -> (u16, String, String) {
    let mut req = support::client()
        .post(gw.url("/v1/messages"))
        .header("content-type", "application/json")
        .header("anthropic-version", "2023-06-01")
        .header("anthropic-beta", "tools-2024-04-04")
        .header("x-request-id", rid)
        .body(body.to_vec());
    if let Some(k) = key {
        req = req.header("x-api-key", k);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let ct = support::header(&resp, "content-type").unwrap_or_default();
    (status, ct, resp.text().await.unwrap())
}

/// Asserts an Anthropic error body: `{"type":"error","error":{type,message}}`.
#[track_caller]
fn assert_anthropic_error(status: u16, body: &str, want_status: u16, want_type: &str) -> Value {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    assert_eq!(status, want_status, "{body}");
    assert_eq!(v["type"], "error", "{body}");
    assert_eq!(v["error"]["type"], want_type, "{body}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    v
}

fn route_labels() -> Vec<(&'static str, &'static str)> {
    vec![
        ("request_model", ALIAS),
        ("provider", "up"),
        ("response_model", "gpt-4o-mini"),
        ("key", "anth"),
    ]
}

fn assert_tokens(m: &str, [input, output, cached]: [u64; 3]) {
    for (kind, n) in [
        ("input", input),
        ("output", output),
        ("cached_input", cached),
    ] {
        let mut l = route_labels();
        l.extend([("token_type", kind), ("usage_source", "reported")]);
        assert_sample(m, "tollgate_tokens_total", &l, n as f64);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_stream_message_is_translated_both_ways_and_metered_exactly() {
    let (upstream, gw) = start().await;
    let req = serde_json::to_vec(&body(false, "tools")).unwrap();
    let (status, ct, text) = post(&gw, "msg-json-1", &req, Some(KEY)).await;
    assert_eq!(status, 200, "{text}\n{}", gw.logs());
    assert!(ct.starts_with("application/json"), "{ct}");
    let got: Value = serde_json::from_str(&text).unwrap();
    let want: Value = serde_json::from_str(&fixture("response_tools.anthropic.json")).unwrap();
    assert_eq!(got, want);

    // What the upstream got: an OpenAI chat request to /chat/completions with
    // the route's model and the provider's key, none of the client's
    // Anthropic headers and never the client's key.
    let r = upstream.last().unwrap();
    assert_eq!(r.path, "/v1/chat/completions");
    let sent = r.json();
    assert_eq!(sent["model"], "gpt-4o-mini");
    assert_eq!(
        sent["messages"][0],
        json!({"role": "system", "content": "Be brief."})
    );
    assert_eq!(sent["tools"][0]["function"]["name"], "get_weather");
    assert_eq!(sent["max_tokens"], 512);
    assert_eq!(
        r.header("authorization").as_deref(),
        Some(format!("Bearer {PROVIDER_KEY}").as_str())
    );
    for h in ["x-api-key", "anthropic-version", "anthropic-beta"] {
        assert_eq!(r.header(h), None, "{h} reached the upstream");
    }
    assert!(!r.headers.iter().any(|(_, v)| v.contains(KEY)));

    // Usage as OpenAI counted it: prompt 2082 (1920 of them cached), output 46.
    let line = gw.access_line("msg-json-1").await;
    assert_eq!(line["endpoint"], "messages", "{line}");
    assert_eq!(line["prompt_tokens"], 2082, "{line}");
    assert_eq!(line["cached_tokens"], 1920, "{line}");
    assert_eq!(line["completion_tokens"], 46, "{line}");
    assert_eq!(line["usage_source"], "reported", "{line}");
    let m = gw.metrics_text().await;
    assert_tokens(&m, [2082, 46, 1920]);
    let mut l = route_labels();
    l.extend([("endpoint", "messages"), ("status_class", "2xx")]);
    assert_sample(&m, "tollgate_requests_total", &l, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_with_text_and_tool_calls_becomes_anthropic_events() {
    let (upstream, gw) = start().await;
    // Bearer auth works here too.
    let resp = support::client()
        .post(gw.url("/v1/messages"))
        .header("authorization", format!("Bearer {KEY}"))
        .header("anthropic-version", "2023-06-01")
        .header("x-request-id", "msg-sse-1")
        .json(&body(true, "tools"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(support::header(&resp, "content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    let got = resp.text().await.unwrap();
    assert_eq!(got, fixture("stream_tools.anthropic.sse"));

    let sent = upstream.last().unwrap().json();
    assert_eq!(sent["stream"], true);
    assert_eq!(sent["stream_options"], json!({"include_usage": true}));

    let line = gw.access_line("msg-sse-1").await;
    assert_eq!(line["endpoint"], "messages", "{line}");
    assert_eq!(line["stream"], true, "{line}");
    assert_eq!(line["prompt_tokens"], 2082, "{line}");
    let m = gw.metrics_text().await;
    assert_tokens(&m, [2082, 46, 1920]);
    assert_eq!(
        sum(
            &m,
            "tollgate_tokens_total",
            &[("usage_source", "estimated")]
        ),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cut_short_ends_with_an_anthropic_error_event() {
    let (_upstream, gw) = start().await;
    let req = serde_json::to_vec(&body(true, "truncated")).unwrap();
    let (status, _, text) = post(&gw, "msg-cut-1", &req, Some(KEY)).await;
    assert_eq!(status, 200);
    assert!(text.starts_with("event: message_start\n"), "{text}");
    let last = text.trim_end().rsplit("\n\n").next().unwrap();
    assert!(last.starts_with("event: error\ndata: "), "{text}");
    let v: Value = serde_json::from_str(last.split_once("data: ").unwrap().1).unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "api_error");
    assert!(!text.contains("message_stop"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_requests_get_anthropic_errors_and_never_reach_the_upstream() {
    let (upstream, gw) = start().await;
    let ok = serde_json::to_vec(&body(false, "text")).unwrap();

    // No key, a wrong key.
    let (s, _, t) = post(&gw, "msg-rej-1", &ok, None).await;
    let v = assert_anthropic_error(s, &t, 401, "authentication_error");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("x-api-key"));
    let (s, _, t) = post(&gw, "msg-rej-2", &ok, Some("tg-not-a-key")).await;
    assert_anthropic_error(s, &t, 401, "authentication_error");
    assert!(!t.contains("tg-not-a-key"), "{t}");

    // Unknown model.
    let mut b = body(false, "text");
    b["model"] = json!("claude-nope");
    let (s, _, t) = post(
        &gw,
        "msg-rej-3",
        &serde_json::to_vec(&b).unwrap(),
        Some(KEY),
    )
    .await;
    assert_anthropic_error(s, &t, 404, "not_found_error");

    // Malformed JSON; a field OpenAI cannot honour (named).
    let (s, _, t) = post(&gw, "msg-rej-4", b"{\"model\": \"x\",", Some(KEY)).await;
    assert_anthropic_error(s, &t, 400, "invalid_request_error");
    let mut b = body(false, "text");
    b["top_k"] = json!(5);
    let (s, _, t) = post(
        &gw,
        "msg-rej-5",
        &serde_json::to_vec(&b).unwrap(),
        Some(KEY),
    )
    .await;
    let v = assert_anthropic_error(s, &t, 400, "invalid_request_error");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("top_k"),
        "{v}"
    );
    let mut b = body(false, "text");
    b["messages"] = json!([]);
    let (s, _, t) = post(
        &gw,
        "msg-rej-6",
        &serde_json::to_vec(&b).unwrap(),
        Some(KEY),
    )
    .await;
    assert_anthropic_error(s, &t, 400, "invalid_request_error");

    // The wrong method: 405 in Anthropic's shape, with `Allow`.
    let resp = support::client()
        .get(gw.url("/v1/messages"))
        .header("x-api-key", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(support::header(&resp, "allow").as_deref(), Some("POST"));
    let s = resp.status().as_u16();
    let t = resp.text().await.unwrap();
    assert_anthropic_error(s, &t, 405, "invalid_request_error");

    assert_eq!(
        upstream.hits(),
        0,
        "a rejected request reached the upstream"
    );
    let line = gw.access_line("msg-rej-3").await;
    assert_eq!(line["endpoint"], "messages", "{line}");
    assert_eq!(line["status"], 404, "{line}");

    // The same endpoint still serves a good request.
    let (s, _, t) = post(&gw, "msg-ok-1", &ok, Some(KEY)).await;
    assert_eq!(s, 200, "{t}");
    let v: Value = serde_json::from_str(&t).unwrap();
    assert_eq!(
        v["content"][0]["text"],
        "Hello! How can I assist you today?"
    );
    assert_eq!(v["stop_reason"], "end_turn");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_error_is_passed_on_in_anthropic_shape() {
    let (upstream, gw) = start().await;
    let req = serde_json::to_vec(&body(false, "bad-request")).unwrap();
    let (s, ct, t) = post(&gw, "msg-up-400", &req, Some(KEY)).await;
    assert!(ct.starts_with("application/json"), "{ct}");
    let v = assert_anthropic_error(s, &t, 400, "invalid_request_error");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("maximum context length"));
    assert_eq!(upstream.hits(), 1);

    // An upstream that cannot be reached: 502 in Anthropic's shape.
    let mut upstream = upstream;
    upstream.stop();
    let req = serde_json::to_vec(&body(false, "text")).unwrap();
    let (s, _, t) = post(&gw, "msg-up-down", &req, Some(KEY)).await;
    assert_anthropic_error(s, &t, 502, "api_error");
}

/// Answers like Anthropic's Messages API: the recorded stream or message,
/// or a 529 `overloaded_error` when the mock's `overloaded` flag says so.
fn anthropic_mock(overloaded: bool) -> impl Fn(&Recorded) -> Reply + Send + Sync + 'static {
    move |r: &Recorded| {
        if overloaded {
            return Reply::json(529, fixture("error_529.anthropic.json"));
        }
        if r.json()["stream"] == true {
            let events = fixture("passthrough_stream.anthropic.sse")
                .split_inclusive("\n\n")
                .map(|e| Bytes::from(e.to_string()))
                .collect();
            return Reply {
                status: 200,
                headers: vec![("content-type".into(), "text/event-stream".into())],
                body: ReplyBody::Chunks(events, Duration::from_millis(2)),
            };
        }
        Reply::json(200, fixture("passthrough_message.anthropic.json"))
    }
}

const ANTHROPIC_KEY: &str = "sk-ant-provider-secret";

/// `claude` on a `kind: anthropic` provider; `mixed` falls back from it to
/// the OpenAI-kind provider.
fn mixed_config(anthropic_port: u16, openai_port: u16) -> String {
    format!(
        r#"{CONFIG_HEAD}providers:
  ant:
    kind: anthropic
    base_url: "http://127.0.0.1:{anthropic_port}/v1"
    api_key: "{ANTHROPIC_KEY}"
    health_check: {{ enabled: false }}
  up:
    kind: openai
    base_url: "http://127.0.0.1:{openai_port}/v1"
    api_key: "{PROVIDER_KEY}"
    health_check: {{ enabled: false }}
models:
  claude: {{ routes: [ {{ provider: ant, model: claude-sonnet-4-5-20250929 }} ] }}
  mixed:
    routes:
      - {{ provider: ant, model: claude-sonnet-4-5-20250929 }}
      - {{ provider: up, model: gpt-4o-mini }}
keys:
  - {{ name: anth, key: "{KEY}" }}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anthropic_route_gets_the_request_as_sent_and_its_answer_passes_through() {
    let ant = MockUpstream::start(Behavior::func(anthropic_mock(false))).await;
    let oai = MockUpstream::start(Behavior::func(openai_mock)).await;
    let gw = Gateway::start(&mixed_config(ant.port(), oai.port())).await;

    // Non-stream: the client's bytes with only the model changed.
    let mut b = body(false, "text");
    b["model"] = json!("claude");
    b["top_k"] = json!(5); // Anthropic honours it: passed on, not refused.
    let sent = serde_json::to_vec(&b).unwrap();
    let (s, _, t) = post(&gw, "msg-pass-1", &sent, Some(KEY)).await;
    assert_eq!(s, 200, "{t}\n{}", gw.logs());
    assert_eq!(t, fixture("passthrough_message.anthropic.json"));
    let r = ant.last().unwrap();
    assert_eq!(r.path, "/v1/messages");
    let want = String::from_utf8(sent.clone()).unwrap().replace(
        r#""model":"claude""#,
        r#""model":"claude-sonnet-4-5-20250929""#,
    );
    assert_eq!(r.body_str(), want);
    assert_eq!(r.header("x-api-key").as_deref(), Some(ANTHROPIC_KEY));
    assert_eq!(r.header("anthropic-version").as_deref(), Some("2023-06-01"));
    // The client's betas go on (the provider sets none); never its key.
    assert_eq!(
        r.header("anthropic-beta").as_deref(),
        Some("tools-2024-04-04")
    );
    assert_eq!(r.header("authorization"), None);
    assert!(!r.headers.iter().any(|(_, v)| v.contains(KEY)));

    // Stream: byte for byte, usage read the Anthropic way.
    let mut b = body(true, "text");
    b["model"] = json!("claude");
    let (s, ct, t) = post(
        &gw,
        "msg-pass-2",
        &serde_json::to_vec(&b).unwrap(),
        Some(KEY),
    )
    .await;
    assert_eq!(s, 200, "{t}");
    assert!(ct.starts_with("text/event-stream"), "{ct}");
    assert_eq!(t, fixture("passthrough_stream.anthropic.sse"));
    assert_eq!(oai.hits(), 0);

    let line = gw.access_line("msg-pass-2").await;
    assert_eq!(line["endpoint"], "messages", "{line}");
    // 50 uncached + 1000 read + 200 written, as OpenAI counts a prompt.
    assert_eq!(line["prompt_tokens"], 1250, "{line}");
    assert_eq!(line["cached_tokens"], 1000, "{line}");
    assert_eq!(line["completion_tokens"], 30, "{line}");
    let line = gw.access_line("msg-pass-1").await;
    assert_eq!(line["prompt_tokens"], 20, "{line}");
    assert_eq!(line["completion_tokens"], 7, "{line}");
    let m = gw.metrics_text().await;
    let labels = |kind| {
        vec![
            ("request_model", "claude"),
            ("provider", "ant"),
            ("response_model", "claude-sonnet-4-5-20250929"),
            ("key", "anth"),
            ("token_type", kind),
            ("usage_source", "reported"),
        ]
    };
    assert_sample(&m, "tollgate_tokens_total", &labels("input"), 1270.0);
    assert_sample(&m, "tollgate_tokens_total", &labels("cached_input"), 1000.0);
    assert_sample(&m, "tollgate_tokens_total", &labels("output"), 37.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overloaded_anthropic_route_falls_back_to_an_openai_route_translated() {
    let ant = MockUpstream::start(Behavior::func(anthropic_mock(true))).await;
    let oai = MockUpstream::start(Behavior::func(openai_mock)).await;
    let gw = Gateway::start(&mixed_config(ant.port(), oai.port())).await;
    let mut b = body(true, "tools");
    b["model"] = json!("mixed");
    let (s, _, t) = post(&gw, "msg-fb-1", &serde_json::to_vec(&b).unwrap(), Some(KEY)).await;
    assert_eq!(s, 200, "{t}\n{}", gw.logs());
    // One clean Anthropic stream, from the OpenAI route, translated.
    assert_eq!(
        t,
        fixture("stream_tools.anthropic.sse").replace("claude-sonnet-4-5", "mixed")
    );
    assert_eq!((ant.hits(), oai.hits()), (1, 1));
    assert_eq!(ant.last().unwrap().path, "/v1/messages");
    assert_eq!(oai.last().unwrap().path, "/v1/chat/completions");
    let line = gw.access_line("msg-fb-1").await;
    assert_eq!(line["attempts"], 2, "{line}");
    assert_eq!(line["provider"], "up", "{line}");

    // A field only Anthropic honours: the Anthropic route may take it, the
    // OpenAI route refuses it by name, and never sees it.
    let mut b = body(false, "text");
    b["model"] = json!("mixed");
    b["top_k"] = json!(5);
    let (s, _, t) = post(&gw, "msg-fb-3", &serde_json::to_vec(&b).unwrap(), Some(KEY)).await;
    let v = assert_anthropic_error(s, &t, 400, "invalid_request_error");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("top_k"),
        "{v}"
    );
    assert_eq!((ant.hits(), oai.hits()), (2, 1));

    // With nothing to fall back to, the 529 is answered in Anthropic's shape.
    let mut b = body(false, "text");
    b["model"] = json!("claude");
    let (s, _, t) = post(&gw, "msg-fb-2", &serde_json::to_vec(&b).unwrap(), Some(KEY)).await;
    let v: Value = serde_json::from_str(&t).unwrap();
    assert_eq!(v["type"], "error", "{t}");
    assert!(s >= 500, "{s} {t}");
}

/// An upstream that starts a stream (two complete events and half of a
/// third) and then drops the connection.
async fn breaking_upstream() -> (u16, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut req = Vec::new();
            let mut buf = [0u8; 8192];
            // The header, then as many body bytes as it announces.
            loop {
                let n = s.read(&mut buf).await.unwrap_or(0);
                if n == 0 {
                    break;
                }
                req.extend_from_slice(&buf[..n]);
                let Some(end) = support::find(&req, b"\r\n\r\n") else {
                    continue;
                };
                let head = String::from_utf8_lossy(&req[..end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if req.len() >= end + 4 + len {
                    break;
                }
            }
            let events: String = fixture("stream_text.openai.sse")
                .split_inclusive("\n\n")
                .take(2)
                .collect();
            let data = format!("{events}data: {{\"id\":\"chatcmpl-x\",\"cho");
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{data}\r\n",
                data.len()
            );
            let _ = s.write_all(resp.as_bytes()).await;
            let _ = s.flush().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            drop(s);
        }
    });
    (port, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_broken_mid_way_ends_with_one_anthropic_error_event() {
    let (port, task) = breaking_upstream().await;
    let gw = Gateway::start(&config(port)).await;
    let req = serde_json::to_vec(&body(true, "text")).unwrap();
    let (status, _, text) = post(&gw, "msg-break-1", &req, Some(KEY)).await;
    task.abort();
    assert_eq!(status, 200);
    let events: Vec<&str> = text.split_terminator("\n\n").collect();
    assert!(events[0].starts_with("event: message_start\n"), "{text}");
    assert!(
        events.iter().any(|e| e.contains("\"text\":\"Hello\"")),
        "{text}"
    );
    let last = events.last().unwrap();
    assert!(last.starts_with("event: error\ndata: "), "{text}");
    let v: Value = serde_json::from_str(last.split_once("data: ").unwrap().1).unwrap();
    assert_eq!(v["error"]["type"], "api_error", "{v}");
    // Exactly one error event, no half event, no message_stop.
    assert_eq!(text.matches("event: error").count(), 1, "{text}");
    assert!(
        !text.contains("message_stop") && !text.contains("\"cho"),
        "{text}"
    );
    let line = gw.access_line("msg-break-1").await;
    assert_eq!(line["endpoint"], "messages", "{line}");
    assert!(
        gw.wait_log("stream broken after it started", Duration::from_secs(5))
            .await,
        "{}",
        gw.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mock_provider_answers_messages_in_anthropic_shape() {
    let gw = Gateway::start(&format!(
        r#"{CONFIG_HEAD}providers:
  local:
    kind: mock
    mock: {{ content: "one two three", stream_chunks: 3, prompt_tokens: 11, completion_tokens: 4 }}
models:
  {ALIAS}: {{ routes: [ {{ provider: local, model: mock-1 }} ] }}
keys:
  - {{ name: anth, key: "{KEY}" }}
"#
    ))
    .await;
    let req = serde_json::to_vec(&body(false, "x")).unwrap();
    let (s, _, t) = post(&gw, "msg-mock-1", &req, Some(KEY)).await;
    assert_eq!(s, 200, "{t}");
    let v: Value = serde_json::from_str(&t).unwrap();
    assert_eq!(v["type"], "message");
    assert_eq!(v["content"][0]["text"], "one two three");
    assert_eq!(v["usage"]["input_tokens"], 11);
    assert_eq!(v["usage"]["output_tokens"], 4);
    let req = serde_json::to_vec(&body(true, "x")).unwrap();
    let (s, ct, t) = post(&gw, "msg-mock-2", &req, Some(KEY)).await;
    assert_eq!(s, 200, "{t}");
    assert!(ct.starts_with("text/event-stream"), "{ct}");
    let text: String = t
        .split_terminator("\n\n")
        .filter_map(|e| e.split_once("data: "))
        .filter_map(|(_, d)| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| v["delta"]["text"].as_str().map(str::to_string))
        .collect();
    assert_eq!(text, "one two three", "{t}");
    assert!(
        t.ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"),
        "{t}"
    );
    let line = gw.access_line("msg-mock-2").await;
    assert_eq!(line["endpoint"], "messages", "{line}");
    assert_eq!(line["prompt_tokens"], 11, "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_azure_route_is_translated_and_its_errors_come_back_in_anthropic_shape() {
    let upstream = MockUpstream::start(Behavior::func(openai_mock)).await;
    let gw = Gateway::start(&format!(
        r#"{CONFIG_HEAD}providers:
  az:
    kind: azure
    base_url: "http://127.0.0.1:{port}"
    api_key: "az-provider-secret"
    health_check: {{ enabled: false }}
models:
  {ALIAS}: {{ routes: [ {{ provider: az, model: gpt-4o-mini }} ] }}
keys:
  - {{ name: anth, key: "{KEY}" }}
"#,
        port = upstream.port()
    ))
    .await;
    let req = serde_json::to_vec(&body(false, "text")).unwrap();
    let (s, _, t) = post(&gw, "msg-az-1", &req, Some(KEY)).await;
    assert_eq!(s, 200, "{t}\n{}", gw.logs());
    let v: Value = serde_json::from_str(&t).unwrap();
    assert_eq!(
        v["content"][0]["text"],
        "Hello! How can I assist you today?"
    );
    let r = upstream.last().unwrap();
    assert_eq!(r.path, "/openai/v1/chat/completions");
    assert_eq!(r.header("api-key").as_deref(), Some("az-provider-secret"));
    assert_eq!(r.header("x-api-key"), None);

    let req = serde_json::to_vec(&body(false, "bad-request")).unwrap();
    let (s, _, t) = post(&gw, "msg-az-2", &req, Some(KEY)).await;
    let v = assert_anthropic_error(s, &t, 400, "invalid_request_error");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("maximum context length"),
        "{v}"
    );
}
