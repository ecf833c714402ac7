//! `kind: gemini` end to end: the real gateway against a mock Gemini serving
//! the fixtures in tests/fixtures/gemini over real HTTP (SSE in chunked
//! transfer encoding, split mid-event and mid-UTF-8).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::{json, Value};
use std::time::Duration;
use support::prom::sample;
use support::CONFIG_HEAD;
use support::{assert_error, Behavior, Gateway, MockUpstream, Recorded, Reply};

const KEY: &str = "tg-gemini-key-1";
const PROVIDER_KEY: &str = "AIzaSyTestGeminiProviderKey0123456789abc";
const MODEL: &str = "gemini-2.5-flash";

macro_rules! fixture {
    ($name:literal) => {
        include_str!(concat!("fixtures/gemini/", $name))
    };
}

/// A Gemini mock: answers by method (the part of the path after `:`).
fn gemini(json: &'static str, sse: &'static str) -> Behavior {
    Behavior::func(move |r: &Recorded| {
        let method = r.path.rsplit(':').next().unwrap_or_default();
        if method.starts_with("streamGenerateContent") {
            Reply::sse_split(sse, 29)
        } else if method.starts_with("generateContent") {
            Reply::json(200, json)
        } else if method.starts_with("embedContent") {
            Reply::json(200, fixture!("embed_single.json"))
        } else if method.starts_with("batchEmbedContents") {
            Reply::json(200, fixture!("embed_batch.json"))
        } else {
            Reply::json(
                404,
                r#"{"error":{"code":404,"message":"no","status":"NOT_FOUND"}}"#,
            )
        }
    })
}

fn config(port: u16, route_extra: &str) -> String {
    format!(
        r#"{CONFIG_HEAD}providers:
  gem:
    kind: gemini
    base_url: "http://127.0.0.1:{port}/v1beta"
    api_key: "{PROVIDER_KEY}"
    retry: {{ attempts: 1 }}
    health_check: {{ enabled: false }}
models:
  smart:
    routes:
      - {{ provider: gem, model: {MODEL}, price: {{ input: 0.30, cached_input: 0.075, output: 2.50 }} {route_extra} }}
  emb:
    routes:
      - {{ provider: gem, model: gemini-embedding-001 }}
keys:
  - {{ name: team, key: "{KEY}" }}
"#
    )
}

async fn post(gw: &Gateway, path: &str, body: &Value, rid: &str) -> reqwest::Response {
    support::client()
        .post(gw.url(path))
        .header("authorization", format!("Bearer {KEY}"))
        .header("x-request-id", rid)
        // A client's own Google key never reaches the provider.
        .header("x-goog-api-key", "client-google-key")
        .json(body)
        .send()
        .await
        .expect("request")
}

fn chat(stream: bool) -> Value {
    json!({"model": "smart", "stream": stream,
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"}]})
}

fn route_labels(alias: &'static str, model: &'static str) -> Vec<(&'static str, &'static str)> {
    vec![
        ("request_model", alias),
        ("provider", "gem"),
        ("response_model", model),
        ("key", "team"),
    ]
}

fn tokens(m: &str, alias: &'static str, model: &'static str, kind: &str, source: &str) -> f64 {
    let mut l = route_labels(alias, model);
    l.push(("token_type", kind));
    l.push(("usage_source", source));
    sample(m, "tollgate_tokens_total", &l).unwrap_or(0.0)
}

/// The provider key reaches Gemini only in `x-goog-api-key`: never in the
/// path or query, the client's auth never goes upstream, and the key is in
/// no log line.
fn assert_key_only_in_header(gw: &Gateway, r: &Recorded) {
    assert_eq!(r.header("x-goog-api-key").as_deref(), Some(PROVIDER_KEY));
    let keys = r
        .headers
        .iter()
        .filter(|(k, _)| k == "x-goog-api-key")
        .count();
    assert_eq!(keys, 1, "{:?}", r.headers);
    assert_eq!(r.header("authorization"), None);
    assert!(!r.path.contains("key="), "{}", r.path);
    assert!(!r.path.contains(PROVIDER_KEY), "{}", r.path);
    let logs = gw.logs();
    assert!(
        !logs.contains(PROVIDER_KEY),
        "the key leaked into the log:\n{logs}"
    );
    assert!(!logs.contains("AIza"), "{logs}");
}

/// SSE events of a response body: each `data:` payload.
fn data_events(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_stream_chat_is_translated_with_the_key_in_a_header_and_exact_usage() {
    let up = MockUpstream::start(gemini(
        fixture!("generate_text.json"),
        fixture!("stream_text.sse"),
    ))
    .await;
    let gw = Gateway::start(&config(up.port(), "")).await;
    let resp = post(&gw, "/v1/chat/completions", &chat(false), "gns-1").await;
    assert_eq!(resp.status(), 200);
    let len = support::header(&resp, "content-length");
    let body = resp.bytes().await.unwrap();
    if let Some(len) = len {
        assert_eq!(len.parse::<usize>().unwrap(), body.len());
    }
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], MODEL);
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "Paris is the capital of France. It sits on the Seine."
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["prompt_tokens"], 2051);
    assert_eq!(v["usage"]["completion_tokens"], 110);
    assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 2048);
    assert_eq!(
        v["usage"]["completion_tokens_details"]["reasoning_tokens"],
        96
    );

    let r = up.last().expect("upstream hit");
    assert_eq!(r.path, format!("/v1beta/models/{MODEL}:generateContent"));
    let sent = r.json();
    assert_eq!(
        sent["systemInstruction"],
        json!({"parts": [{"text": "Be brief."}]})
    );
    assert_eq!(
        sent["contents"],
        json!([{"role": "user", "parts": [{"text": "Capital of France?"}]}])
    );
    assert!(sent.get("model").is_none() && sent.get("stream").is_none());

    let line = gw.access_line("gns-1").await;
    assert!(!line.to_string().contains(PROVIDER_KEY), "{line}");
    assert_key_only_in_header(&gw, &r);
    let m = gw.metrics_text().await;
    let t = |kind| tokens(&m, "smart", MODEL, kind, "reported");
    assert_eq!(t("input"), 2051.0, "{m}");
    assert_eq!(t("cached_input"), 2048.0);
    assert_eq!(t("output"), 110.0);
    assert_eq!(t("reasoning"), 96.0);
    let cost = sample(&m, "tollgate_cost_usd_total", &route_labels("smart", MODEL)).expect("cost");
    let want = (3.0 * 0.30 + 2048.0 * 0.075 + 110.0 * 2.50) / 1e6;
    assert!((cost - want).abs() < 1e-12, "cost {cost} want {want}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_parallel_tool_calls_arrive_with_indices_ids_and_usage() {
    let up = MockUpstream::start(gemini(
        fixture!("generate_tools.json"),
        fixture!("stream_tools.sse"),
    ))
    .await;
    let gw = Gateway::start(&config(up.port(), "")).await;
    let mut body = chat(true);
    body["stream_options"] = json!({"include_usage": true});
    body["tools"] = json!([
        {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object",
            "properties": {"city": {"type": "string"}}, "additionalProperties": false}}},
        {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}
    ]);
    body["tool_choice"] = json!("auto");
    let resp = post(&gw, "/v1/chat/completions", &body, "gst-1").await;
    assert_eq!(resp.status(), 200);
    assert!(support::header(&resp, "content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    let text = resp.text().await.unwrap();
    let events = data_events(&text);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{text}");
    let first: Value = serde_json::from_str(&events[0]).unwrap();
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
    let mut calls: Vec<(u64, String, String, String)> = Vec::new();
    let mut usage = None;
    let mut finish = None;
    for e in &events[..events.len() - 1] {
        let v: Value = serde_json::from_str(e).unwrap();
        assert_eq!(v["object"], "chat.completion.chunk");
        if !v["usage"].is_null() {
            usage = Some(v["usage"].clone());
            assert_eq!(v["choices"], json!([]));
        }
        if let Some(f) = v["choices"][0]["finish_reason"].as_str() {
            finish = Some(f.to_string());
        }
        for c in v["choices"][0]["delta"]["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
        {
            calls.push((
                c["index"].as_u64().unwrap(),
                c["id"].as_str().unwrap().to_string(),
                c["function"]["name"].as_str().unwrap().to_string(),
                c["function"]["arguments"].as_str().unwrap().to_string(),
            ));
        }
    }
    let indices: Vec<u64> = calls.iter().map(|c| c.0).collect();
    assert_eq!(indices, [0, 1, 2], "{text}");
    assert_eq!(calls[0].1, "call_gst-1_0");
    assert_eq!(calls[2].1, "call_gst-1_2");
    assert_eq!(calls[1].2, "get_weather");
    assert_eq!(
        serde_json::from_str::<Value>(&calls[1].3).unwrap()["city"],
        "Zürich"
    );
    assert_eq!(calls[2].2, "get_time");
    assert_eq!(finish.as_deref(), Some("tool_calls"));
    let usage = usage.expect("usage chunk when include_usage");
    assert_eq!(usage["prompt_tokens"], 130);
    assert_eq!(usage["completion_tokens"], 73);
    assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], 64);

    let r = up.last().unwrap();
    assert_eq!(
        r.path,
        format!("/v1beta/models/{MODEL}:streamGenerateContent?alt=sse")
    );
    let sent = r.json();
    assert_eq!(
        sent["tools"][0]["functionDeclarations"][0],
        json!({"name": "get_weather", "parameters": {"type": "object",
            "properties": {"city": {"type": "string"}}}})
    );
    assert_eq!(
        sent["toolConfig"],
        json!({"functionCallingConfig": {"mode": "AUTO"}})
    );
    gw.access_line("gst-1").await;
    assert_key_only_in_header(&gw, &r);
    let m = gw.metrics_text().await;
    let t = |kind| tokens(&m, "smart", MODEL, kind, "reported");
    assert_eq!(t("input"), 130.0, "{m}");
    assert_eq!(t("cached_input"), 64.0);
    assert_eq!(t("output"), 73.0);
    assert_eq!(t("reasoning"), 32.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_usage_is_counted_when_the_client_did_not_ask_for_it() {
    let up = MockUpstream::start(gemini(
        fixture!("generate_text.json"),
        fixture!("stream_text.sse"),
    ))
    .await;
    let gw = Gateway::start(&config(up.port(), "")).await;
    let text = post(&gw, "/v1/chat/completions", &chat(true), "gst-2")
        .await
        .text()
        .await
        .unwrap();
    assert!(!text.contains("\"usage\""), "{text}");
    let content: String = data_events(&text)
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(String::from)
        })
        .collect();
    assert_eq!(content, "Zürich is cool today — 12 °C with light rain. 🌧");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    gw.access_line("gst-2").await;
    let m = gw.metrics_text().await;
    let t = |kind| tokens(&m, "smart", MODEL, kind, "reported");
    assert_eq!(t("input"), 2051.0, "{m}");
    assert_eq!(t("cached_input"), 2048.0);
    assert_eq!(t("output"), 113.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_use_embed_content_or_batch_embed_contents() {
    let up = MockUpstream::start(gemini(
        fixture!("generate_text.json"),
        fixture!("stream_text.sse"),
    ))
    .await;
    let gw = Gateway::start(&config(up.port(), "")).await;

    let r = post(
        &gw,
        "/v1/embeddings",
        &json!({"model": "emb", "input": "hello world", "encoding_format": "float"}),
        "gemb-1",
    )
    .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["embedding"][0], 0.013168523);
    assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() > 0, "{v}");
    let rec = up.last().unwrap();
    assert_eq!(rec.path, "/v1beta/models/gemini-embedding-001:embedContent");
    assert_eq!(
        rec.json(),
        json!({"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "hello world"}]}})
    );
    assert_key_only_in_header(&gw, &rec);

    // The OpenAI SDKs ask for base64 by default.
    let r = post(
        &gw,
        "/v1/embeddings",
        &json!({"model": "emb", "input": ["a", "b"], "encoding_format": "base64", "dimensions": 3}),
        "gemb-2",
    )
    .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["data"][0]["embedding"], "AAAAPwAAgL4AAAA+");
    assert_eq!(v["data"][1]["index"], 1);
    let rec = up.last().unwrap();
    assert_eq!(
        rec.path,
        "/v1beta/models/gemini-embedding-001:batchEmbedContents"
    );
    assert_eq!(rec.json()["requests"][1]["outputDimensionality"], 3);
    assert_eq!(
        rec.json()["requests"][1]["model"],
        "models/gemini-embedding-001"
    );

    gw.access_line("gemb-2").await;
    let m = gw.metrics_text().await;
    let est = tokens(&m, "emb", "gemini-embedding-001", "input", "estimated");
    assert!(est > 0.0, "embeddings usage is estimated: {m}");
}

/// Sends a chat request to a Gemini mock answering `status` with `body`.
async fn mapped(status: u16, body: &'static str, stream: bool) -> (u16, Vec<u8>, Gateway) {
    let up = MockUpstream::start(Behavior::json(status, body)).await;
    let gw = Gateway::start(&config(up.port(), "")).await;
    let r = post(&gw, "/v1/chat/completions", &chat(stream), "gerr").await;
    let status = r.status().as_u16();
    let bytes = r.bytes().await.unwrap().to_vec();
    drop(up);
    (status, bytes, gw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_errors_become_openai_errors_with_the_right_status() {
    let (s, b, _) = mapped(400, fixture!("error_400.json"), false).await;
    let v = assert_error(s, &b, (400, "invalid_request_error", "invalid_request"));
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("contents is not specified"),
        "{v}"
    );

    // Gemini answers a bad key with a 400: our message, never Gemini's.
    let (s, b, gw) = mapped(400, fixture!("error_400_key.json"), true).await;
    let v = assert_error(s, &b, (400, "invalid_request_error", "upstream_auth_error"));
    assert!(!v.to_string().contains("API key not valid"), "{v}");
    assert!(gw.wait_log("API_KEY_INVALID", Duration::from_secs(5)).await);

    for (status, body) in [
        (403, fixture!("error_403.json")),
        (401, fixture!("error_401.json")),
    ] {
        let (s, b, gw) = mapped(status, body, false).await;
        let v = assert_error(s, &b, (502, "api_error", "upstream_auth_error"));
        assert!(!v.to_string().contains("AIza"), "{v}");
        assert!(!gw.logs().contains("leaked_key"), "{}", gw.logs());
    }

    let (s, b, _) = mapped(429, fixture!("error_429.json"), false).await;
    assert_error(s, &b, (429, "requests", "rate_limit_exceeded"));

    // 5xx are judged by status (retry and fallback) before their body.
    for (status, body) in [
        (503, fixture!("error_503.json")),
        (500, fixture!("error_500.json")),
    ] {
        let (s, b, _) = mapped(status, body, true).await;
        assert_error(s, &b, (502, "api_error", "upstream_error"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_fields_are_refused_or_dropped_per_route() {
    let up = MockUpstream::start(gemini(
        fixture!("generate_text.json"),
        fixture!("stream_text.sse"),
    ))
    .await;
    let gw = Gateway::start(&config(up.port(), "")).await;
    let mut b = chat(false);
    b["logit_bias"] = json!({"50256": -100});
    let r = post(&gw, "/v1/chat/completions", &b, "gun-1").await;
    let status = r.status().as_u16();
    let v = assert_error(
        status,
        &r.bytes().await.unwrap(),
        (400, "invalid_request_error", "unsupported_parameter"),
    );
    assert_eq!(v["error"]["param"], "logit_bias");
    let r = post(
        &gw,
        "/v1/completions",
        &json!({"model": "smart", "prompt": "x"}),
        "gun-2",
    )
    .await;
    assert_eq!(r.status(), 400);
    assert_eq!(up.hits(), 0, "no refused request reached Gemini");

    let gw = Gateway::start(&config(
        up.port(),
        ", max_tokens: 321, drop_unsupported_params: true",
    ))
    .await;
    let r = post(&gw, "/v1/chat/completions", &b, "gun-3").await;
    assert_eq!(r.status(), 200);
    let sent = up.last().unwrap().json();
    assert_eq!(sent["generationConfig"], json!({"maxOutputTokens": 321}));
    assert!(
        gw.wait_log("drop_unsupported_params", Duration::from_secs(5))
            .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overloaded_gemini_falls_back_to_an_openai_route() {
    let gem = MockUpstream::start(Behavior::json(503, fixture!("error_503.json"))).await;
    let openai = MockUpstream::start(Behavior::ChatEcho).await;
    let cfg = format!(
        r#"{CONFIG_HEAD}providers:
  gem:
    kind: gemini
    base_url: "http://127.0.0.1:{}/v1beta"
    api_key: "{PROVIDER_KEY}"
    retry: {{ attempts: 1 }}
    health_check: {{ enabled: false }}
  gpt:
    kind: openai
    base_url: "http://127.0.0.1:{}/v1"
    api_key: "sk-openai-1"
    health_check: {{ enabled: false }}
models:
  smart:
    routes:
      - {{ provider: gem, model: {MODEL} }}
      - {{ provider: gpt, model: gpt-4o-mini }}
keys:
  - {{ name: team, key: "{KEY}" }}
"#,
        gem.port(),
        openai.port()
    );
    let gw = Gateway::start(&cfg).await;
    for (stream, rid) in [(false, "gfb-1"), (true, "gfb-2")] {
        let r = post(&gw, "/v1/chat/completions", &chat(stream), rid).await;
        assert_eq!(r.status(), 200);
        let text = r.text().await.unwrap();
        if stream {
            assert!(text.contains("tok0"), "{text}");
            assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
            assert!(!text.contains("error"), "{text}");
        } else {
            let v: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(v["choices"][0]["message"]["content"], "echo");
        }
        gw.access_line(rid).await;
    }
    assert_eq!(gem.hits(), 2);
    assert_eq!(openai.hits(), 2);
    // The OpenAI route got the client's body with only `model` changed.
    let sent = openai.last().unwrap().json();
    assert_eq!(sent["model"], "gpt-4o-mini");
    assert_eq!(sent["messages"][0]["role"], "system");
    let m = gw.metrics_text().await;
    assert_eq!(
        sample(
            &m,
            "tollgate_retries_total",
            &[("request_model", "smart"), ("kind", "fallback")]
        ),
        Some(2.0),
        "{m}"
    );
}

/// `POST /v1/messages` (Anthropic's format in front) to a Gemini route:
/// Anthropic → OpenAI → Gemini, and back, streamed and not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_messages_endpoint_reaches_a_gemini_route() {
    let up = MockUpstream::start(gemini(
        fixture!("generate_text.json"),
        fixture!("stream_tools.sse"),
    ))
    .await;
    let gw = Gateway::start(&config(up.port(), "")).await;
    let body = |stream: bool| {
        json!({"model": "smart", "max_tokens": 256, "stream": stream,
            "system": "Be brief.",
            "tools": [{"name": "get_weather", "input_schema": {"type": "object",
                "properties": {"city": {"type": "string"}}}}],
            "messages": [{"role": "user", "content": "Weather in Paris and Zürich?"}]})
    };
    let send = |stream: bool, rid: &'static str| {
        support::client()
            .post(gw.url("/v1/messages"))
            .header("x-api-key", KEY)
            .header("anthropic-version", "2023-06-01")
            .header("x-request-id", rid)
            .json(&body(stream))
            .send()
    };

    let r = send(false, "gmsg-1").await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["type"], "message", "{v}");
    assert_eq!(
        v["content"][0]["text"],
        "Paris is the capital of France. It sits on the Seine."
    );
    assert_eq!(v["stop_reason"], "end_turn");
    let sent = up.last().unwrap();
    assert_eq!(sent.path, format!("/v1beta/models/{MODEL}:generateContent"));
    assert_eq!(
        sent.json()["systemInstruction"],
        json!({"parts": [{"text": "Be brief."}]})
    );
    assert_eq!(sent.json()["generationConfig"]["maxOutputTokens"], 256);
    assert_key_only_in_header(&gw, &sent);

    let r = send(true, "gmsg-2").await.unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(text.contains("event: message_start"), "{text}");
    assert!(text.contains("\"type\":\"tool_use\""), "{text}");
    assert!(text.contains("get_time"), "{text}");
    assert!(text.contains("\"stop_reason\":\"tool_use\""), "{text}");
    assert!(
        text.trim_end()
            .ends_with("data: {\"type\":\"message_stop\"}"),
        "{text}"
    );
    assert_eq!(
        up.last().unwrap().path,
        format!("/v1beta/models/{MODEL}:streamGenerateContent?alt=sse")
    );
    gw.access_line("gmsg-2").await;
    let m = gw.metrics_text().await;
    let t = |kind| tokens(&m, "smart", MODEL, kind, "reported");
    // Both requests, counted exactly: 2051 + 130 in, 110 + 73 out.
    assert_eq!(t("input"), 2181.0, "{m}");
    assert_eq!(t("cached_input"), 2112.0);
    assert_eq!(t("output"), 183.0);
}
