//! `kind: anthropic` and `kind: azure` end to end: the real gateway against
//! mock providers serving the fixtures in tests/fixtures/anthropic over real
//! HTTP (SSE in chunked transfer encoding, split mid-event).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::{json, Value};
use std::time::Duration;
use support::prom::{assert_sample, sample};
use support::{assert_error, Behavior, Gateway, MockUpstream, Recorded, Reply, CONFIG_HEAD};

const KEY: &str = "tg-translate-key-1";
const PROVIDER_KEY: &str = "sk-ant-provider-secret-0001";

macro_rules! fixture {
    ($name:literal) => {
        include_str!(concat!("fixtures/anthropic/", $name))
    };
}

/// An Anthropic mock: `json` for plain requests, `sse` for streams.
fn anthropic(json: &'static str, sse: &'static str) -> Behavior {
    Behavior::func(move |r: &Recorded| {
        if r.json()["stream"] == true {
            Reply::sse_split(sse, 37)
        } else {
            Reply::json(200, json)
        }
    })
}

fn config(
    anthropic_port: u16,
    route_extra: &str,
    extra_routes: &str,
    extra_providers: &str,
) -> String {
    format!(
        r#"{CONFIG_HEAD}providers:
  claude:
    kind: anthropic
    base_url: "http://127.0.0.1:{anthropic_port}/v1"
    api_key: "{PROVIDER_KEY}"
    anthropic_beta: [prompt-caching-2024-07-31]
    retry: {{ attempts: 1 }}
{extra_providers}models:
  smart:
    routes:
      - {{ provider: claude, model: claude-sonnet-4-5, price: {{ input: 3.0, cached_input: 0.3, output: 15.0 }} {route_extra} }}
{extra_routes}keys:
  - {{ name: team, key: "{KEY}" }}
"#
    )
}

async fn post(gw: &Gateway, path: &str, body: &Value, extra: &[(&str, &str)]) -> reqwest::Response {
    let mut req = support::client()
        .post(gw.url(path))
        .header("authorization", format!("Bearer {KEY}"))
        .json(body);
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    req.send().await.expect("request")
}

fn chat(stream: bool) -> Value {
    json!({"model": "smart", "stream": stream, "max_tokens": 100,
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"}]})
}

fn route_labels() -> Vec<(&'static str, &'static str)> {
    vec![
        ("request_model", "smart"),
        ("provider", "claude"),
        ("response_model", "claude-sonnet-4-5"),
        ("key", "team"),
    ]
}

fn tokens(m: &str, kind: &str) -> f64 {
    let mut l = route_labels();
    l.push(("token_type", kind));
    l.push(("usage_source", "reported"));
    sample(m, "tollgate_tokens_total", &l).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_stream_chat_is_translated_with_provider_headers_and_exact_usage() {
    let up = MockUpstream::start(anthropic(
        fixture!("message_text.json"),
        fixture!("stream_text.sse"),
    ))
    .await;
    let gw = Gateway::start(&config(up.port(), "", "", "")).await;
    let resp = post(
        &gw,
        "/v1/chat/completions",
        &chat(false),
        &[
            ("x-api-key", "client-secret"),
            ("api-key", "client-secret"),
            ("x-request-id", "ns-1"),
        ],
    )
    .await;
    assert_eq!(resp.status(), 200);
    // The provider's Content-Length no longer holds: the answer is re-framed.
    let len = support::header(&resp, "content-length");
    let body = resp.bytes().await.unwrap();
    if let Some(len) = len {
        assert_eq!(len.parse::<usize>().unwrap(), body.len());
    }
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "Hello! The capital of France is Paris."
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["prompt_tokens"], 1233);
    assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 1024);

    let r = up.last().expect("upstream hit");
    assert_eq!(r.path, "/v1/messages");
    assert_eq!(r.header("x-api-key").as_deref(), Some(PROVIDER_KEY));
    assert_eq!(r.header("anthropic-version").as_deref(), Some("2023-06-01"));
    assert_eq!(
        r.header("anthropic-beta").as_deref(),
        Some("prompt-caching-2024-07-31")
    );
    assert_eq!(
        r.header("authorization"),
        None,
        "the client's auth never goes upstream"
    );
    assert_eq!(r.header("api-key"), None);
    let sent = r.json();
    assert_eq!(sent["model"], "claude-sonnet-4-5");
    assert_eq!(sent["system"], "Be brief.");
    assert_eq!(sent["max_tokens"], 100);
    assert_eq!(
        sent["messages"],
        json!([{"role": "user", "content": "Capital of France?"}])
    );

    gw.access_line("ns-1").await;
    let m = gw.metrics_text().await;
    assert_eq!(tokens(&m, "input"), 1233.0, "{m}");
    assert_eq!(tokens(&m, "cached_input"), 1024.0);
    assert_eq!(tokens(&m, "cache_write"), 188.0);
    assert_eq!(tokens(&m, "output"), 12.0);
    let cost = sample(&m, "tollgate_cost_usd_total", &route_labels()).expect("cost");
    let want = ((21.0 + 188.0) * 3.0 + 1024.0 * 0.3 + 12.0 * 15.0) / 1e6;
    assert!((cost - want).abs() < 1e-12, "cost {cost} want {want}");
}

/// SSE events of a response body: each `data:` payload.
fn data_events(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_tool_calls_arrive_incrementally_with_indices_and_usage() {
    let up = MockUpstream::start(anthropic(
        fixture!("message_tools.json"),
        fixture!("stream_tools.sse"),
    ))
    .await;
    let gw = Gateway::start(&config(up.port(), "", "", "")).await;
    let mut body = chat(true);
    body["stream_options"] = json!({"include_usage": true});
    body["tools"] = json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]);
    let resp = post(
        &gw,
        "/v1/chat/completions",
        &body,
        &[("x-request-id", "st-1")],
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert!(support::header(&resp, "content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    let text = resp.text().await.unwrap();
    let events = data_events(&text);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{text}");
    let mut args = [String::new(), String::new()];
    let mut names = vec![];
    let mut usage = None;
    for e in &events[..events.len() - 1] {
        let v: Value = serde_json::from_str(e).unwrap();
        if !v["usage"].is_null() {
            usage = Some(v["usage"].clone());
        }
        for c in v["choices"][0]["delta"]["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let i = c["index"].as_u64().unwrap() as usize;
            if let Some(n) = c["function"]["name"].as_str() {
                names.push((i, n.to_string(), c["id"].as_str().unwrap().to_string()));
            }
            args[i].push_str(c["function"]["arguments"].as_str().unwrap_or(""));
        }
    }
    assert_eq!(
        names[0],
        (
            0,
            "get_weather".into(),
            "toolu_01T1x1fJ34qAmk2tNTrN7Up6".into()
        )
    );
    assert_eq!(names[1].0, 1);
    assert_eq!(
        serde_json::from_str::<Value>(&args[0]).unwrap()["location"],
        "San Francisco, CA"
    );
    assert_eq!(
        serde_json::from_str::<Value>(&args[1]).unwrap()["tz"],
        "Europe/Paris"
    );
    let usage = usage.expect("usage chunk when include_usage");
    assert_eq!(usage["prompt_tokens"], 472);
    assert_eq!(usage["completion_tokens"], 89);
    let sent = up.last().unwrap().json();
    assert_eq!(sent["stream"], true);
    assert!(sent.get("stream_options").is_none(), "{sent}");
    assert_eq!(sent["tools"][0]["name"], "get_weather");
    gw.access_line("st-1").await;
    let m = gw.metrics_text().await;
    assert_eq!(tokens(&m, "input"), 472.0, "{m}");
    assert_eq!(tokens(&m, "output"), 89.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_usage_is_counted_with_cache_even_when_the_client_did_not_ask() {
    let up = MockUpstream::start(anthropic(
        fixture!("message_text.json"),
        fixture!("stream_text.sse"),
    ))
    .await;
    let gw = Gateway::start(&config(up.port(), "", "", "")).await;
    let resp = post(
        &gw,
        "/v1/chat/completions",
        &chat(true),
        &[("x-request-id", "st-2")],
    )
    .await;
    let text = resp.text().await.unwrap();
    assert!(!text.contains("\"usage\""), "{text}");
    assert!(
        text.contains(r#""delta":{"role":"assistant","content":""}"#),
        "{text}"
    );
    assert!(text.contains("héllo"));
    assert!(text.ends_with("data: [DONE]\n\n"));
    gw.access_line("st-2").await;
    let m = gw.metrics_text().await;
    assert_eq!(tokens(&m, "input"), 2173.0, "{m}");
    assert_eq!(tokens(&m, "cached_input"), 2048.0);
    assert_eq!(tokens(&m, "cache_write"), 100.0);
    assert_eq!(tokens(&m, "output"), 15.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_error_event_reaches_the_client_as_an_openai_error_without_done() {
    let up = MockUpstream::start(anthropic(
        fixture!("message_text.json"),
        fixture!("stream_error.sse"),
    ))
    .await;
    let gw = Gateway::start(&config(up.port(), "", "", "")).await;
    let text = post(&gw, "/v1/chat/completions", &chat(true), &[])
        .await
        .text()
        .await
        .unwrap();
    let events = data_events(&text);
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "upstream_unavailable", "{text}");
    assert!(!text.contains("[DONE]"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_requests_never_reach_anthropic() {
    let up = MockUpstream::start(anthropic(
        fixture!("message_text.json"),
        fixture!("stream_text.sse"),
    ))
    .await;
    let gw = Gateway::start(&config(up.port(), "", "", "")).await;
    // No max_tokens and no route default.
    let mut b = chat(false);
    b.as_object_mut().unwrap().remove("max_tokens");
    let r = post(&gw, "/v1/chat/completions", &b, &[]).await;
    let status = r.status().as_u16();
    let v = assert_error(
        status,
        &r.bytes().await.unwrap(),
        (400, "invalid_request_error", "unsupported_parameter"),
    );
    assert_eq!(v["error"]["param"], "max_tokens");
    // A field Anthropic cannot honour.
    let mut b = chat(false);
    b["logit_bias"] = json!({"50256": -100});
    let r = post(&gw, "/v1/chat/completions", &b, &[]).await;
    let status = r.status().as_u16();
    let v = assert_error(
        status,
        &r.bytes().await.unwrap(),
        (400, "invalid_request_error", "unsupported_parameter"),
    );
    assert_eq!(v["error"]["param"], "logit_bias");
    // An endpoint Anthropic does not serve.
    let r = post(
        &gw,
        "/v1/embeddings",
        &json!({"model": "smart", "input": "x"}),
        &[],
    )
    .await;
    let status = r.status().as_u16();
    let v = assert_error(
        status,
        &r.bytes().await.unwrap(),
        (400, "invalid_request_error", "invalid_request"),
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("embeddings"),
        "{v}"
    );
    assert_eq!(up.hits(), 0, "no refused request reached the provider");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_defaults_fill_max_tokens_and_drop_unsupported_params() {
    let up = MockUpstream::start(anthropic(
        fixture!("message_text.json"),
        fixture!("stream_text.sse"),
    ))
    .await;
    let gw = Gateway::start(&config(
        up.port(),
        ", max_tokens: 321, drop_unsupported_params: true",
        "",
        "",
    ))
    .await;
    let mut b = chat(false);
    b.as_object_mut().unwrap().remove("max_tokens");
    b["logit_bias"] = json!({"50256": -100});
    b["seed"] = json!(7);
    let r = post(&gw, "/v1/chat/completions", &b, &[]).await;
    assert_eq!(r.status(), 200);
    let sent = up.last().unwrap().json();
    assert_eq!(sent["max_tokens"], 321);
    assert!(
        sent.get("logit_bias").is_none() && sent.get("seed").is_none(),
        "{sent}"
    );
    assert!(
        gw.wait_log("drop_unsupported_params", Duration::from_secs(5))
            .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overloaded_anthropic_falls_back_to_an_openai_route() {
    let claude = MockUpstream::start(Behavior::json(529, fixture!("error_529.json"))).await;
    let openai = MockUpstream::start(Behavior::ChatEcho).await;
    let fallback_route = "      - { provider: gpt, model: gpt-4o-mini }\n";
    let gpt = format!(
        "  gpt:\n    kind: openai\n    base_url: \"http://127.0.0.1:{}/v1\"\n    api_key: \"sk-openai-1\"\n",
        openai.port()
    );
    let gw = Gateway::start(&config(claude.port(), "", fallback_route, &gpt)).await;
    for stream in [false, true] {
        let r = post(&gw, "/v1/chat/completions", &chat(stream), &[]).await;
        assert_eq!(r.status(), 200);
        let text = r.text().await.unwrap();
        if stream {
            assert!(
                text.contains("tok0") && text.trim_end().ends_with("data: [DONE]"),
                "{text}"
            );
            assert!(!text.contains("error"), "{text}");
        } else {
            let v: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(v["choices"][0]["message"]["content"], "echo");
        }
    }
    assert_eq!(claude.hits(), 2);
    assert_eq!(openai.hits(), 2);
    // The OpenAI route got its own splice: the OpenAI body, its model.
    let sent = openai.last().unwrap().json();
    assert_eq!(sent["model"], "gpt-4o-mini");
    assert_eq!(sent["messages"][0]["role"], "system");
    let m = gw.metrics_text().await;
    assert_sample(
        &m,
        "tollgate_upstream_attempts_total",
        &[("provider", "claude"), ("outcome", "status_5xx")],
        2.0,
    );
    assert_sample(
        &m,
        "tollgate_upstream_attempts_total",
        &[("provider", "gpt"), ("outcome", "success")],
        2.0,
    );
    assert_sample(
        &m,
        "tollgate_retries_total",
        &[("request_model", "smart"), ("kind", "fallback")],
        2.0,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_errors_map_to_openai_errors_without_provider_secrets() {
    let up = MockUpstream::start(Behavior::json(400, fixture!("error_400.json"))).await;
    let gw = Gateway::start(&config(up.port(), "", "", "")).await;
    let r = post(&gw, "/v1/chat/completions", &chat(false), &[]).await;
    let status = r.status().as_u16();
    let v = assert_error(
        status,
        &r.bytes().await.unwrap(),
        (400, "invalid_request_error", "invalid_request"),
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("tool_use_id"),
        "{v}"
    );

    up.set_behavior(Behavior::json(401, fixture!("error_401.json")));
    let r = post(&gw, "/v1/chat/completions", &chat(false), &[]).await;
    let status = r.status().as_u16();
    let body = r.bytes().await.unwrap();
    assert_error(status, &body, (502, "api_error", "upstream_auth_error"));
    assert!(
        !support::text(&body).contains("sk-ant"),
        "{}",
        support::text(&body)
    );

    up.set_behavior(Behavior::Json {
        status: 429,
        body: fixture!("error_429.json").into(),
        headers: vec![("retry-after".into(), "7".into())],
    });
    let r = post(&gw, "/v1/chat/completions", &chat(false), &[]).await;
    let status = r.status().as_u16();
    assert_eq!(support::header(&r, "retry-after").as_deref(), Some("7"));
    assert_error(
        status,
        &r.bytes().await.unwrap(),
        (429, "requests", "rate_limit_exceeded"),
    );
    assert!(
        !gw.logs().contains(PROVIDER_KEY),
        "the provider key never reaches the logs"
    );
}

fn azure_config(port: u16, api_version: &str, route_extra: &str) -> String {
    format!(
        r#"{CONFIG_HEAD}providers:
  az:
    kind: azure
    base_url: "http://127.0.0.1:{port}"
    api_key: "azure-secret-key-1"
    {api_version}
    retry: {{ attempts: 1 }}
models:
  fast:
    routes:
      - {{ provider: az, model: gpt-4o {route_extra} }}
keys:
  - {{ name: team, key: "{KEY}" }}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_deployment_path_api_key_and_content_filter() {
    let up = MockUpstream::start(Behavior::ChatEcho).await;
    let gw = Gateway::start(&azure_config(
        up.port(),
        "api_version: \"2024-10-21\"",
        ", deployment: prod-gpt4o",
    ))
    .await;
    let mut b = chat(false);
    b["model"] = json!("fast");
    let r = post(&gw, "/v1/chat/completions", &b, &[]).await;
    assert_eq!(r.status(), 200);
    let rec = up.last().unwrap();
    assert_eq!(
        rec.path,
        "/openai/deployments/prod-gpt4o/chat/completions?api-version=2024-10-21"
    );
    assert_eq!(rec.header("api-key").as_deref(), Some("azure-secret-key-1"));
    assert_eq!(rec.header("authorization"), None);
    // Everything but `model` is the client's bytes (zero-copy splice).
    assert_eq!(rec.json()["messages"], b["messages"]);

    let filtered = r#"{"error":{"message":"The response was filtered due to the prompt triggering Azure OpenAI's content management policy.","type":null,"param":"prompt","code":"content_filter","status":400,"innererror":{"code":"ResponsibleAIPolicyViolation","content_filter_result":{"violence":{"filtered":true,"severity":"high"}}}}}"#;
    up.set_behavior(Behavior::json(400, filtered));
    let r = post(&gw, "/v1/chat/completions", &b, &[]).await;
    let status = r.status().as_u16();
    assert_error(
        status,
        &r.bytes().await.unwrap(),
        (400, "invalid_request_error", "content_filter"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_v1_path_without_api_version() {
    let up = MockUpstream::start(Behavior::ChatEcho).await;
    let gw = Gateway::start(&azure_config(up.port(), "", "")).await;
    let mut b = chat(true);
    b["model"] = json!("fast");
    let r = post(&gw, "/v1/chat/completions", &b, &[]).await;
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("[DONE]"));
    let rec = up.last().unwrap();
    assert_eq!(rec.path, "/openai/v1/chat/completions");
    assert_eq!(rec.json()["model"], "gpt-4o");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cut_before_message_stop_ends_with_an_error_event_and_is_still_counted() {
    let full = fixture!("stream_text.sse");
    let cut: &'static str = &full[..full.find("event: message_delta").unwrap()];
    let up = MockUpstream::start(Behavior::func(move |_r: &Recorded| {
        Reply::sse_split(cut, 50)
    }))
    .await;
    let gw = Gateway::start(&config(up.port(), "", "", "")).await;
    let text = post(
        &gw,
        "/v1/chat/completions",
        &chat(true),
        &[("x-request-id", "cut-1")],
    )
    .await
    .text()
    .await
    .unwrap();
    assert!(text.contains("héllo"), "{text}");
    assert!(!text.contains("[DONE]"), "{text}");
    let events = data_events(&text);
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert!(last["error"]["message"].is_string(), "{text}");
    let line = gw.access_line("cut-1").await;
    // The prompt as `message_start` reported it; the output estimated from
    // the streamed text (hardening_charge.rs tests that rule).
    assert_eq!(line["prompt_tokens"], 2173, "{line}");
    assert_eq!(line["usage_source"], "estimated", "{line}");
    assert_eq!(line["partial"], true, "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_openai_route_failing_falls_back_to_anthropic_with_a_translated_stream() {
    let openai = MockUpstream::start(Behavior::json(503, r#"{"error":{"message":"down"}}"#)).await;
    let claude = MockUpstream::start(anthropic(
        fixture!("message_text.json"),
        fixture!("stream_text.sse"),
    ))
    .await;
    let config = format!(
        r#"{CONFIG_HEAD}providers:
  gpt:
    kind: openai
    base_url: "http://127.0.0.1:{}/v1"
    retry: {{ attempts: 1 }}
  claude:
    kind: anthropic
    base_url: "http://127.0.0.1:{}/v1"
    api_key: "{PROVIDER_KEY}"
models:
  smart:
    routes:
      - {{ provider: gpt, model: gpt-4o-mini }}
      - {{ provider: claude, model: claude-sonnet-4-5, max_tokens: 64 }}
keys:
  - {{ name: team, key: "{KEY}" }}
"#,
        openai.port(),
        claude.port()
    );
    let gw = Gateway::start(&config).await;
    let mut body = chat(true);
    body.as_object_mut().unwrap().remove("max_tokens");
    let text = post(&gw, "/v1/chat/completions", &body, &[])
        .await
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("héllo") && text.ends_with("data: [DONE]\n\n"),
        "{text}"
    );
    assert!(!text.contains("\"usage\""), "{text}");
    assert_eq!(openai.hits(), 1);
    // The OpenAI attempt asked for usage on the client's behalf; the
    // Anthropic body is translated from the client's original body.
    assert_eq!(
        openai.last().unwrap().json()["stream_options"]["include_usage"],
        true
    );
    let sent = claude.last().unwrap().json();
    assert_eq!(sent["max_tokens"], 64);
    assert!(sent.get("stream_options").is_none(), "{sent}");
}
