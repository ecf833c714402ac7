#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Shadow traffic and hedged requests (issue 9), end to end: the real
//! gateway binary in front of mock upstreams on loopback, with real chunked
//! SSE. Shadow: the client never waits for the copy, the copy carries the
//! shadow's model, it is metered under `shadow="true"`, and its limits hold.
//! Hedging: a slow primary loses to the next route, is cancelled at once,
//! both legs are metered, and the share of hedges holds under load.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{json, Value};
use support::prom;
use support::{
    sse_chat_events, wait_until, Behavior, Gate, Gateway, MockUpstream, Reply, ReplyBody, TestCa,
    CONFIG_HEAD,
};

const KEY: &str = "tg-hedge-shadow-key-0001";
const PROVIDER_KEY: &str = "sk-provider-hedge-secret-91ab";
const ALIAS: &str = "chat";
const QUICK: Duration = Duration::from_secs(10);

fn provider(name: &str, port: u16) -> String {
    format!(
        "  {name}:\n    kind: openai\n    base_url: \"http://127.0.0.1:{port}/v1\"\n    api_key: \"{PROVIDER_KEY}\"\n    health_check: {{ enabled: false }}\n    retry: {{ attempts: 1 }}\n"
    )
}

/// Config with `providers`, the routes of [`ALIAS`] and extra alias lines
/// (`shadow:`/`hedge:`), plus `top` top-level lines.
fn config(top: &str, providers: &[String], routes: &[(&str, &str)], alias_extra: &str) -> String {
    let routes: String = routes
        .iter()
        .map(|(p, m)| {
            format!(
                "      - {{ provider: {p}, model: {m}, price: {{ input: 1.0, output: 2.0 }} }}\n"
            )
        })
        .collect();
    format!(
        r#"{CONFIG_HEAD}{top}
providers:
{providers}
models:
  {ALIAS}:
    routes:
{routes}{alias_extra}
keys:
  - {{ name: alice, key: "{KEY}" }}
"#,
        providers = providers.concat(),
    )
}

/// A port that refuses connections (see [`support::refused_port`]).
fn refused_port() -> u16 {
    support::refused_port()
}

fn chat(stream: bool) -> String {
    json!({"model": ALIAS, "stream": stream, "messages": [{"role": "user", "content": "hello there"}]})
        .to_string()
}

struct Resp {
    status: u16,
    body: String,
    took: Duration,
    route: Option<String>,
}

async fn post(gw: &Gateway, rid: &str, stream: bool) -> Resp {
    let start = Instant::now();
    let resp = support::client()
        .post(gw.url("/v1/chat/completions"))
        .header("authorization", format!("Bearer {KEY}"))
        .header("content-type", "application/json")
        .header("x-request-id", rid)
        .body(chat(stream))
        .send()
        .await
        .unwrap_or_else(|e| panic!("request {rid} failed: {e}; log:\n{}", gw.logs()));
    let status = resp.status().as_u16();
    let route = resp
        .headers()
        .get("x-tollgate-route")
        .map(|v| v.to_str().unwrap().to_string());
    let body = resp.text().await.unwrap_or_default();
    Resp {
        status,
        body,
        took: start.elapsed(),
        route,
    }
}

/// A non-stream completion with usage 7/4, sent after `delay` (the header
/// goes at once; the body, the first byte, after the delay).
fn delayed_json(model: &str, delay: Duration) -> Behavior {
    let body = json!({
        "id": "chatcmpl-s", "object": "chat.completion", "created": 1, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "shadow says hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 4, "total_tokens": 11},
    })
    .to_string();
    Behavior::func(move |_| Reply {
        status: 200,
        headers: vec![("content-type".into(), "application/json".into())],
        body: ReplyBody::Chunks(vec![Bytes::new(), Bytes::from(body.clone())], delay),
    })
}

/// Like [`delayed_json`], but the body waits for the test to open `gate`:
/// an upstream that is slow for as long as the test needs (or forever).
fn held_json(model: &str, gate: &Gate) -> Behavior {
    let body = json!({
        "id": "chatcmpl-s", "object": "chat.completion", "created": 1, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "shadow says hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 4, "total_tokens": 11},
    })
    .to_string();
    let gate = gate.clone();
    Behavior::func(move |_| Reply {
        status: 200,
        headers: vec![("content-type".into(), "application/json".into())],
        body: ReplyBody::Gated(vec![Bytes::new(), Bytes::from(body.clone())], gate.clone()),
    })
}

/// Tokens the gateway estimates for the prompt of [`chat`] on `model`.
fn prompt_estimate(model: &str, stream: bool) -> f64 {
    tollgate::accounting::estimate::prompt_tokens(
        model,
        tollgate::base::endpoint::Endpoint::ChatCompletions,
        chat(stream).as_bytes(),
    ) as f64
}

/// An SSE stream whose first event comes after `delay` (header at once).
fn delayed_sse(model: &str, delay: Duration) -> Behavior {
    let model = model.to_string();
    Behavior::func(move |_| {
        let mut chunks = vec![Bytes::new()];
        chunks.extend(sse_chat_events(&model, 3).into_iter().map(Bytes::from));
        Reply {
            status: 200,
            headers: vec![("content-type".into(), "text/event-stream".into())],
            body: ReplyBody::Chunks(chunks, delay),
        }
    })
}

async fn metric(gw: &Gateway, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = gw.metrics_text().await;
    prom::samples(&text, name, labels)
        .iter()
        .map(|s| s.value)
        .sum()
}

/// Polls a metric until it reaches `want` (or `QUICK` passes); returns the last value.
async fn wait_metric(gw: &Gateway, name: &str, labels: &[(&str, &str)], want: f64) -> f64 {
    let deadline = Instant::now() + QUICK;
    loop {
        let v = metric(gw, name, labels).await;
        if v >= want || Instant::now() >= deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------
// Shadow
// ---------------------------------------------------------------------------

fn shadow_block(provider: &str, sample: f64) -> String {
    format!(
        "    shadow: {{ route: {{ provider: {provider}, model: shadow-model, price: {{ input: 1.0, output: 2.0 }} }}, sample: {sample} }}\n"
    )
}

#[tokio::test]
async fn slow_shadow_adds_no_latency_and_is_metered() {
    let primary = MockUpstream::start(Behavior::ChatEcho).await;
    // The shadow answers only when the test lets it, after the client has
    // its answer: no timing involved.
    let gate = Gate::new();
    let shadow = MockUpstream::start(held_json("shadow-model", &gate)).await;
    let gw = Gateway::start(&config(
        "",
        &[
            provider("main", primary.port()),
            provider("shade", shadow.port()),
        ],
        &[("main", "primary-model")],
        &shadow_block("shade", 1.0),
    ))
    .await;
    let r = post(&gw, "shadow-1", false).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.route.as_deref(), Some("main/primary-model"));
    assert!(shadow.wait_hits(1, QUICK).await, "the shadow got no copy");
    // The client was answered while the shadow still holds its reply.
    assert_eq!(
        metric(&gw, "tollgate_shadow_requests_total", &[("shadow", "true")]).await,
        0.0,
        "the shadow finished before the client was answered"
    );
    gate.open(1);
    let copy = shadow.last().unwrap();
    assert_eq!(copy.json()["model"], "shadow-model");
    assert_eq!(copy.json()["messages"][0]["content"], "hello there");
    assert_eq!(
        copy.header("authorization").as_deref(),
        Some(format!("Bearer {PROVIDER_KEY}").as_str())
    );
    assert!(copy.header("x-tollgate-key").is_none());
    assert!(!copy.body_str().contains(KEY));
    assert_eq!(primary.last().unwrap().json()["model"], "primary-model");
    let shadow_labels = [
        ("shadow", "true"),
        ("request_model", ALIAS),
        ("provider", "shade"),
    ];
    let ok = [shadow_labels.as_slice(), &[("result", "success")]].concat();
    assert_eq!(
        wait_metric(&gw, "tollgate_shadow_requests_total", &ok, 1.0).await,
        1.0
    );
    let input = [shadow_labels.as_slice(), &[("token_type", "input")]].concat();
    assert_eq!(
        metric(&gw, "tollgate_shadow_tokens_total", &input).await,
        7.0
    );
    let output = [shadow_labels.as_slice(), &[("token_type", "output")]].concat();
    assert_eq!(
        metric(&gw, "tollgate_shadow_tokens_total", &output).await,
        4.0
    );
    let cost = metric(&gw, "tollgate_shadow_cost_usd_total", &shadow_labels).await;
    assert!((cost - 15e-6).abs() < 1e-9, "cost {cost}");
    // The client's own counters never include the shadow.
    let text = gw.metrics_text().await;
    assert!(prom::samples(&text, "tollgate_requests_total", &[("provider", "shade")]).is_empty());
    let line = gw.access_line("shadow-1").await;
    assert_eq!(line["shadow"], "sampled");
    assert_eq!(line["hedge"], "none");
}

#[tokio::test]
async fn streamed_request_gets_a_streamed_shadow_metered_from_sse() {
    let primary = MockUpstream::start(Behavior::ChatEcho).await;
    let shadow = MockUpstream::start(Behavior::ChatEcho).await;
    let gw = Gateway::start(&config(
        "",
        &[
            provider("main", primary.port()),
            provider("shade", shadow.port()),
        ],
        &[("main", "primary-model")],
        &shadow_block("shade", 1.0),
    ))
    .await;
    let r = post(&gw, "shadow-sse", true).await;
    assert_eq!(r.status, 200);
    assert!(r.body.contains("data: [DONE]"), "{}", r.body);
    assert!(shadow.wait_hits(1, QUICK).await);
    let copy = shadow.last().unwrap().json();
    assert_eq!(copy["model"], "shadow-model");
    assert_eq!(copy["stream"], true);
    let labels = [("shadow", "true"), ("result", "success")];
    assert_eq!(
        wait_metric(&gw, "tollgate_shadow_requests_total", &labels, 1.0).await,
        1.0
    );
    // The echo streams "tok0tok1tok2" and no usage: estimated from the text.
    let out = [
        ("shadow", "true"),
        ("token_type", "output"),
        ("usage_source", "estimated"),
    ];
    let want = tollgate::accounting::estimate::count("shadow-model", "tok0tok1tok2") as f64;
    assert!(want > 0.0);
    assert_eq!(
        metric(&gw, "tollgate_shadow_tokens_total", &out).await,
        want
    );
}

#[tokio::test]
async fn shadow_down_means_no_client_errors() {
    let primary = MockUpstream::start(Behavior::ChatEcho).await;
    let gw = Gateway::start(&config(
        "",
        &[
            provider("main", primary.port()),
            provider("shade", refused_port()),
        ],
        &[("main", "primary-model")],
        &shadow_block("shade", 1.0),
    ))
    .await;
    for i in 0..5 {
        let r = post(&gw, &format!("down-{i}"), i % 2 == 0).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(!r.body.contains("error"), "{}", r.body);
    }
    let labels = [("shadow", "true"), ("result", "error")];
    assert_eq!(
        wait_metric(&gw, "tollgate_shadow_requests_total", &labels, 5.0).await,
        5.0
    );
    assert_eq!(primary.hits(), 5);
}

#[tokio::test]
async fn sample_zero_sends_no_shadow() {
    let primary = MockUpstream::start(Behavior::ChatEcho).await;
    let shadow = MockUpstream::start(Behavior::ChatEcho).await;
    let gw = Gateway::start(&config(
        "",
        &[
            provider("main", primary.port()),
            provider("shade", shadow.port()),
        ],
        &[("main", "primary-model")],
        &shadow_block("shade", 0.0),
    ))
    .await;
    for i in 0..20 {
        assert_eq!(post(&gw, &format!("zero-{i}"), false).await.status, 200);
    }
    // The shadow decision is made, and a copy sent, before the request's
    // access-log line is written, which records it (`sampled` or
    // `skipped`): once every line is there and says none, no copy can come.
    for i in 0..20 {
        let line = gw.access_line(&format!("zero-{i}")).await;
        assert_eq!(line["shadow"], Value::Null, "zero-{i}: {line}");
    }
    assert_eq!(shadow.hits(), 0);
}

#[tokio::test]
async fn shadow_concurrency_cap_holds() {
    let primary = MockUpstream::start(Behavior::ChatEcho).await;
    let shadow = MockUpstream::start(Behavior::Hang).await;
    let gw = Gateway::start(&config(
        "shadow: { max_concurrency: 2 }",
        &[
            provider("main", primary.port()),
            provider("shade", shadow.port()),
        ],
        &[("main", "primary-model")],
        &shadow_block("shade", 1.0),
    ))
    .await;
    // The shadow never answers: a client that waited for it would wait
    // until its own timeout.
    for i in 0..10 {
        let r = post(&gw, &format!("cap-{i}"), false).await;
        assert_eq!(r.status, 200);
        assert!(r.took < QUICK, "{:?}", r.took);
    }
    // All ten decided (two sent, eight skipped), and the two sent arrived.
    let skipped = [("shadow", "true"), ("reason", "concurrency")];
    assert_eq!(
        wait_metric(&gw, "tollgate_shadow_skipped_total", &skipped, 8.0).await,
        8.0
    );
    assert!(
        shadow.wait_hits(2, QUICK).await,
        "the two copies never arrived"
    );
    assert_eq!(shadow.hits(), 2, "only two copies may be in flight");
    assert_eq!(metric(&gw, "tollgate_shadow_in_flight", &[]).await, 2.0);
    assert_eq!(gw.access_line("cap-9").await["shadow"], "skipped");
}

#[tokio::test]
async fn shadow_budget_team_limits_the_copies() {
    let primary = MockUpstream::start(Behavior::ChatEcho).await;
    let shadow = MockUpstream::start(Behavior::ChatEcho).await;
    let gw = Gateway::start(&config(
        "shadow: { budget: shadow-team }\nteams:\n  shadow-team: { limits: { rpm: 3 } }",
        &[
            provider("main", primary.port()),
            provider("shade", shadow.port()),
        ],
        &[("main", "primary-model")],
        &shadow_block("shade", 1.0),
    ))
    .await;
    for i in 0..6 {
        assert_eq!(post(&gw, &format!("budget-{i}"), false).await.status, 200);
    }
    let skipped = [("shadow", "true"), ("reason", "budget")];
    assert_eq!(
        wait_metric(&gw, "tollgate_shadow_skipped_total", &skipped, 3.0).await,
        3.0
    );
    assert_eq!(shadow.hits(), 3);
}

#[tokio::test]
async fn shadow_budget_must_name_a_team() {
    let cfg = config(
        "shadow: { budget: nobody }",
        &[provider("main", 1), provider("shade", 2)],
        &[("main", "m")],
        &shadow_block("shade", 1.5),
    );
    let mut gw = Gateway::spawn_with_env(&cfg, &[]);
    let status = gw
        .wait_exit(QUICK)
        .await
        .expect("gateway should refuse the config");
    assert!(!status.success());
    let logs = gw.logs();
    assert!(logs.contains("shadow.budget"), "{logs}");
    assert!(logs.contains("models.chat.shadow.sample"), "{logs}");
}

// ---------------------------------------------------------------------------
// Hedging
// ---------------------------------------------------------------------------

fn hedge_block(after: &str, max_share: f64) -> String {
    format!("    hedge: {{ after: {after}, max_share: {max_share} }}\n")
}

async fn hedge_gateway(primary: &MockUpstream, hedge: &MockUpstream, block: &str) -> Gateway {
    Gateway::start(&config(
        "",
        &[
            provider("slow", primary.port()),
            provider("fast", hedge.port()),
        ],
        &[("slow", "primary-model"), ("fast", "hedge-model")],
        block,
    ))
    .await
}

#[tokio::test]
async fn slow_primary_loses_to_the_hedge_and_is_cancelled() {
    // The primary never sends a byte: only the hedge can answer.
    let primary = MockUpstream::start(Behavior::held_sse("primary-model", &Gate::new())).await;
    let hedge = MockUpstream::start(Behavior::ChatEcho).await;
    let gw = hedge_gateway(&primary, &hedge, &hedge_block("100ms", 0.1)).await;
    let r = post(&gw, "hedge-1", true).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.route.as_deref(), Some("fast/hedge-model"));
    assert!(r.body.contains("\"model\":\"hedge-model\""), "{}", r.body);
    assert!(r.body.trim_end().ends_with("data: [DONE]"), "{}", r.body);
    assert!(!r.body.contains("primary-model"), "{}", r.body);
    assert!(
        primary.wait_cancelled(1, QUICK).await,
        "the primary was not cancelled"
    );
    assert_eq!(primary.hits(), 1);
    assert_eq!(hedge.last().unwrap().json()["model"], "hedge-model");
    let fired = [("request_model", ALIAS), ("event", "fired")];
    assert_eq!(metric(&gw, "tollgate_hedges_total", &fired).await, 1.0);
    let won = [("request_model", ALIAS), ("event", "won")];
    assert_eq!(metric(&gw, "tollgate_hedges_total", &won).await, 1.0);
    // Both legs are metered: the cancelled one's prompt (estimated), the
    // winner's output (estimated from its text: the echo sends no usage).
    let slow_in = [
        ("provider", "slow"),
        ("token_type", "input"),
        ("usage_source", "estimated"),
    ];
    let want_in = prompt_estimate("primary-model", true);
    assert_eq!(
        wait_metric(&gw, "tollgate_tokens_total", &slow_in, want_in).await,
        want_in
    );
    let fast_out = [("provider", "fast"), ("token_type", "output")];
    let want_out = tollgate::accounting::estimate::count("hedge-model", "tok0tok1tok2") as f64;
    assert_eq!(
        wait_metric(&gw, "tollgate_tokens_total", &fast_out, want_out).await,
        want_out
    );
    let cancelled = [("provider", "slow"), ("outcome", "hedge_cancelled")];
    assert_eq!(
        metric(&gw, "tollgate_upstream_attempts_total", &cancelled).await,
        1.0
    );
    let line = gw.access_line("hedge-1").await;
    assert_eq!(line["hedge"], "won");
    assert_eq!(line["provider"], "fast");
    assert_eq!(line["attempts"], 2);
    let log = line["attempt_log"].to_string();
    assert!(
        log.contains("slow@") && log.contains("hedge_cancelled"),
        "{log}"
    );
}

#[tokio::test]
async fn slow_primary_non_stream_loses_to_the_hedge() {
    let primary = MockUpstream::start(held_json("primary-model", &Gate::new())).await;
    let hedge = MockUpstream::start(Behavior::ChatEcho).await;
    let gw = hedge_gateway(&primary, &hedge, &hedge_block("100ms", 0.1)).await;
    let r = post(&gw, "hedge-json", false).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["model"], "hedge-model");
    assert!(
        primary.wait_cancelled(1, QUICK).await,
        "the primary was not cancelled"
    );
    let line = gw.access_line("hedge-json").await;
    assert_eq!(line["hedge"], "won");
    assert_eq!(line["prompt_tokens"], 5);
}

/// The cancelled leg is charged to the caller's budget with the winner's
/// usage, not only metered: a non-stream leg its worst case.
#[tokio::test]
async fn a_cancelled_hedge_leg_is_charged_to_the_key_budget() {
    let primary = MockUpstream::start(held_json("primary-model", &Gate::new())).await;
    let hedge = MockUpstream::start(Behavior::ChatEcho).await;
    let budget = 100_000.0;
    let yaml = config(
        "",
        &[
            provider("slow", primary.port()),
            provider("fast", hedge.port()),
        ],
        &[("slow", "primary-model"), ("fast", "hedge-model")],
        &hedge_block("100ms", 1.0),
    )
    .replace(
        &format!("{{ name: alice, key: \"{KEY}\" }}"),
        &format!(
            "{{ name: alice, key: \"{KEY}\", budgets: [ {{ tokens: {budget}, window: day }} ] }}"
        ),
    );
    assert!(yaml.contains("budgets"), "{yaml}");
    let gw = Gateway::start(&yaml).await;
    let r = post(&gw, "charged-1", false).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.route.as_deref(), Some("fast/hedge-model"));
    assert!(
        primary.wait_cancelled(1, QUICK).await,
        "the primary was not cancelled"
    );
    assert_eq!(gw.access_line("charged-1").await["hedge"], "won");
    // The winner reported 8 tokens (the echo's 5 + 3). The loser is a
    // non-stream answer cut short, charged its worst case (docs/config.md,
    // "What is charged"): the provider generates a non-stream answer whole,
    // so it may bill all of it. The body sets no max_tokens: the estimated
    // prompt plus reserve_output_tokens' default, 1024.
    let loser = prompt_estimate("primary-model", false) + 1024.0;
    let labels = [("level", "key"), ("name", "alice"), ("unit", "tokens")];
    assert_eq!(
        gw.wait_sample(
            "tollgate_budget_remaining",
            &labels,
            budget - 8.0 - loser,
            QUICK
        )
        .await,
        Some(budget - 8.0 - loser),
        "charged the winner's 8 tokens and the cancelled leg's {loser}"
    );
}

#[tokio::test]
async fn fast_primary_fires_no_hedge() {
    let primary = MockUpstream::start(Behavior::ChatEcho).await;
    let hedge = MockUpstream::start(Behavior::ChatEcho).await;
    let gw = hedge_gateway(&primary, &hedge, &hedge_block("2s", 0.5)).await;
    for i in 0..10 {
        let r = post(&gw, &format!("fast-{i}"), i % 2 == 0).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.route.as_deref(), Some("slow/primary-model"));
    }
    assert_eq!(primary.hits(), 10);
    assert_eq!(hedge.hits(), 0);
    assert_eq!(
        metric(&gw, "tollgate_hedges_total", &[("event", "fired")]).await,
        0.0
    );
    let line = gw.access_line("fast-5").await;
    assert_eq!(line["hedge"], "none");
    assert_eq!(line["attempts"], 1);
    assert_eq!(line["prompt_tokens"], 5);
}

#[tokio::test]
async fn p95_after_waits_one_second_until_measured() {
    let primary = MockUpstream::start(Behavior::ChatEcho).await;
    let hedge = MockUpstream::start(Behavior::ChatEcho).await;
    let gw = hedge_gateway(&primary, &hedge, &hedge_block("p95", 0.1)).await;
    // Fewer than 20 samples: `p95` means 1 s, far above this primary.
    for i in 0..15 {
        assert_eq!(post(&gw, &format!("p95-{i}"), true).await.status, 200);
    }
    assert_eq!(hedge.hits(), 0);
}

#[tokio::test]
async fn failing_primary_falls_back_before_the_hedge() {
    let primary = MockUpstream::start(Behavior::json(503, r#"{"error":{"message":"busy"}}"#)).await;
    let hedge = MockUpstream::start(Behavior::ChatEcho).await;
    let gw = hedge_gateway(&primary, &hedge, &hedge_block("20s", 0.1)).await;
    let r = post(&gw, "fallback-1", false).await;
    assert_eq!(r.status, 200, "{}", r.body);
    // The fallback did not wait for the hedge's 20 s.
    assert!(r.took < QUICK, "{:?}", r.took);
    assert_eq!(r.route.as_deref(), Some("fast/hedge-model"));
    assert_eq!(
        metric(&gw, "tollgate_hedges_total", &[("event", "fired")]).await,
        0.0
    );
    let line = gw.access_line("fallback-1").await;
    assert_eq!(line["hedge"], "none");
    assert_eq!(line["attempts"], 2);
}

#[tokio::test]
async fn every_route_failing_answers_an_openai_error() {
    let primary = MockUpstream::start(Behavior::json(503, "{}")).await;
    let hedge = MockUpstream::start(Behavior::json(500, "{}")).await;
    let gw = hedge_gateway(&primary, &hedge, &hedge_block("1s", 0.1)).await;
    let r = post(&gw, "all-fail", true).await;
    assert_eq!(r.status, 502, "{}", r.body);
    let v: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["error"]["code"], "upstream_error");
    assert_eq!(v["error"]["type"], "api_error");
    assert!(v["error"].get("param").is_some());
    assert_eq!(gw.access_line("all-fail").await["status"], 502);
}

#[tokio::test]
async fn hedge_cap_holds_under_load() {
    let primary = MockUpstream::start(Behavior::ChatEcho).await;
    let hedge = MockUpstream::start(Behavior::ChatEcho).await;
    let gw = hedge_gateway(&primary, &hedge, &hedge_block("20ms", 0.1)).await;
    let gw = std::sync::Arc::new(gw);
    let mut ok = 0;
    for batch in 0..10 {
        // The primaries answer only once every request of the batch is past
        // its hedge timer (fired or capped), however slow the machine is.
        let gate = Gate::new();
        primary.set_behavior(held_json("primary-model", &gate));
        let tasks: Vec<_> = (0..10)
            .map(|i| {
                let gw = gw.clone();
                tokio::spawn(async move { post(&gw, &format!("load-{batch}-{i}"), false).await })
            })
            .collect();
        let due = 10.0 * (batch + 1) as f64;
        let deadline = Instant::now() + QUICK;
        loop {
            let fired = metric(&gw, "tollgate_hedges_total", &[("event", "fired")]).await;
            let capped = metric(&gw, "tollgate_hedges_total", &[("event", "capped")]).await;
            if fired + capped >= due {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "batch {batch}: fired {fired} capped {capped}, {due} due"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        gate.open(100);
        for t in tasks {
            let r = t.await.unwrap();
            assert_eq!(r.status, 200, "{}", r.body);
            ok += 1;
        }
    }
    assert_eq!(ok, 100);
    let fired = metric(&gw, "tollgate_hedges_total", &[("event", "fired")]).await;
    let capped = metric(&gw, "tollgate_hedges_total", &[("event", "capped")]).await;
    // 10% of 100 requests plus the burst of 3.
    assert!((1.0..=13.0).contains(&fired), "fired {fired}");
    // Every request was due a hedge: each one either fired it or was capped.
    assert_eq!(fired + capped, 100.0, "fired {fired} capped {capped}");
    // A hedge cut off by its primary before it was sent never arrives.
    assert!(hedge.hits() as f64 <= fired, "{} hits", hedge.hits());
}

// ---------------------------------------------------------------------------
// TLS: the client reuses the provider's TLS settings
// ---------------------------------------------------------------------------

fn provider_tls(name: &str, port: u16, ca: &std::path::Path) -> String {
    format!(
        "  {name}:\n    kind: openai\n    base_url: \"https://localhost:{port}/v1\"\n    backends: [\"127.0.0.1:{port}\"]\n    ca_file: \"{}\"\n    api_key: \"{PROVIDER_KEY}\"\n    health_check: {{ enabled: false }}\n    retry: {{ attempts: 1 }}\n",
        ca.display()
    )
}

#[tokio::test]
async fn hedge_and_shadow_reach_https_providers_with_their_ca_and_host() {
    let ca = TestCa::new();
    let primary = MockUpstream::start(delayed_sse("primary-model", Duration::from_secs(3))).await;
    let hedge = MockUpstream::start_tls(Behavior::ChatEcho, &ca).await;
    let shadow = MockUpstream::start_tls(Behavior::ChatEcho, &ca).await;
    let gw = Gateway::start(&config(
        "",
        &[
            provider("slow", primary.port()),
            provider_tls("fast", hedge.port(), &ca.ca_file()),
            provider_tls("shade", shadow.port(), &ca.ca_file()),
        ],
        &[("slow", "primary-model"), ("fast", "hedge-model")],
        &format!(
            "{}{}",
            hedge_block("100ms", 0.5),
            shadow_block("shade", 1.0)
        ),
    ))
    .await;
    let r = post(&gw, "tls-1", true).await;
    assert_eq!(r.status, 200, "{}; log:\n{}", r.body, gw.logs());
    assert_eq!(r.route.as_deref(), Some("fast/hedge-model"));
    let got = hedge.last().unwrap();
    assert_eq!(
        got.header("host"),
        Some(format!("localhost:{}", hedge.port()))
    );
    assert_eq!(
        got.header("authorization"),
        Some(format!("Bearer {PROVIDER_KEY}"))
    );
    assert!(shadow.wait_hits(1, QUICK).await, "no shadow copy over TLS");
    let copy = shadow.last().unwrap();
    assert_eq!(
        copy.header("host"),
        Some(format!("localhost:{}", shadow.port()))
    );
    assert_eq!(copy.json()["model"], "shadow-model");
    let line = gw.access_line("tls-1").await;
    assert_eq!(line["hedge"], "won");
    assert_eq!(line["shadow"], "sampled");
}

#[tokio::test]
async fn one_client_connection_serves_hedged_requests_in_a_row() {
    let primary = MockUpstream::start(Behavior::ChatEcho).await;
    let hedge = MockUpstream::start(Behavior::ChatEcho).await;
    let gw = hedge_gateway(&primary, &hedge, &hedge_block("1s", 0.1)).await;
    let client = support::client();
    for i in 0..4 {
        let resp = client
            .post(gw.url("/v1/chat/completions"))
            .header("authorization", format!("Bearer {KEY}"))
            .header("content-type", "application/json")
            .body(chat(i % 2 == 1))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        let body = resp.text().await.unwrap();
        assert!(body.contains("primary-model"), "{body}");
    }
    assert_eq!(primary.hits(), 4);
}

#[tokio::test]
async fn winner_breaking_mid_stream_ends_with_an_error_event() {
    let mut primary = MockUpstream::start(Behavior::sse(
        sse_chat_events("primary-model", 8),
        Duration::from_millis(150),
    ))
    .await;
    let hedge = MockUpstream::start(Behavior::ChatEcho).await;
    let gw = hedge_gateway(&primary, &hedge, &hedge_block("2s", 0.1)).await;
    let resp = support::client()
        .post(gw.url("/v1/chat/completions"))
        .header("authorization", format!("Bearer {KEY}"))
        .header("content-type", "application/json")
        .header("x-request-id", "broken-1")
        .body(chat(true))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    // Cut the primary once the client has a first token (not after a
    // guessed delay).
    let mut body = String::new();
    let mut stream = resp.bytes_stream();
    use futures_util::StreamExt;
    while !body.contains("tok0") {
        let chunk = stream
            .next()
            .await
            .expect("stream ended before tok0")
            .unwrap();
        body.push_str(&String::from_utf8_lossy(&chunk));
    }
    primary.stop();
    while let Some(Ok(chunk)) = stream.next().await {
        body.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(!body.contains("[DONE]"), "{body}");
    let last = body
        .trim_end()
        .rsplit("\n\n")
        .next()
        .unwrap_or_default()
        .to_string();
    assert!(last.starts_with("data: {\"error\""), "{body}");
    // The upstream reset its connection mid-stream: `upstream_error`.
    let event: Value = serde_json::from_str(last.trim_start_matches("data: ")).unwrap();
    assert_eq!(event["error"]["code"], "upstream_error", "{body}");
    assert_eq!(hedge.hits(), 0);
    let line = gw.access_line("broken-1").await;
    assert_eq!(line["hedge"], "none");
    assert_eq!(line["error"], "upstream_error", "{line}");
}

#[tokio::test]
async fn client_leaving_during_the_race_cancels_the_legs() {
    // Neither leg ever sends an event: any cancellation is the client's.
    let gate = Gate::new();
    let primary = MockUpstream::start(Behavior::held_sse("primary-model", &gate)).await;
    let hedge = MockUpstream::start(Behavior::held_sse("hedge-model", &gate)).await;
    let gw = hedge_gateway(&primary, &hedge, &hedge_block("100ms", 0.5)).await;
    let url = gw.url("/v1/chat/completions");
    let client = tokio::spawn(async move {
        support::client()
            .post(url)
            .header("authorization", format!("Bearer {KEY}"))
            .header("content-type", "application/json")
            .header("x-request-id", "gone-1")
            .body(chat(true))
            .send()
            .await
    });
    // The client leaves once both legs are racing.
    assert!(primary.wait_hits(1, QUICK).await, "no primary leg");
    assert!(hedge.wait_hits(1, QUICK).await, "no hedge leg");
    client.abort();
    assert!(
        primary.wait_cancelled(1, QUICK).await,
        "primary not cancelled"
    );
    assert!(hedge.wait_cancelled(1, QUICK).await, "hedge not cancelled");
    assert_eq!(gw.access_line("gone-1").await["status"], 499);
}

// Two worker threads: the mocks and the client must not share one loaded
// thread with the timing this test measures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p95_after_follows_the_measured_primary() {
    let primary =
        MockUpstream::start(delayed_json("primary-model", Duration::from_millis(20))).await;
    let hedge = MockUpstream::start(Behavior::ChatEcho).await;
    let gw = hedge_gateway(&primary, &hedge, &hedge_block("p95", 1.0)).await;
    // 20 samples of about 20 ms: from then on the hedge waits the p95.
    for i in 0..20 {
        assert_eq!(post(&gw, &format!("warm-{i}"), false).await.status, 200);
    }
    assert_eq!(hedge.hits(), 0, "no hedge before the first second");
    primary.set_behavior(held_json("primary-model", &Gate::new()));
    let r = post(&gw, "p95-slow", false).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.route.as_deref(), Some("fast/hedge-model"));
    // The 1 s default would have made it wait a second at least; the p95
    // of about 20 ms leaves the rest of that second as margin.
    assert!(
        r.took < Duration::from_millis(900),
        "client waited {:?}",
        r.took
    );
    assert_eq!(gw.access_line("p95-slow").await["hedge"], "won");
}

#[tokio::test]
async fn hedged_stream_over_http2_downstream() {
    let ca = TestCa::new();
    let (cert, key) = ca.issue_files("server", &["localhost", "127.0.0.1"]);
    let primary = MockUpstream::start(Behavior::held_sse("primary-model", &Gate::new())).await;
    let hedge = MockUpstream::start(Behavior::ChatEcho).await;
    let top = format!(
        "plain_listen: \"{{PLAIN}}\"\ntls:\n  cert: \"{}\"\n  key: \"{}\"\n",
        cert.display(),
        key.display()
    );
    let gw = Gateway::start(&config(
        &top,
        &[
            provider("slow", primary.port()),
            provider("fast", hedge.port()),
        ],
        &[("slow", "primary-model"), ("fast", "hedge-model")],
        &hedge_block("100ms", 0.5),
    ))
    .await;
    let client = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.ca_pem().as_bytes()).unwrap())
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let port = gw.listen_addr().rsplit(':').next().unwrap().to_string();
    let start = Instant::now();
    let resp = client
        .post(format!("https://localhost:{port}/v1/chat/completions"))
        .header("authorization", format!("Bearer {KEY}"))
        .header("content-type", "application/json")
        .header("x-request-id", "h2-1")
        .body(chat(true))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status().as_u16(), 200);
    let body = resp.text().await.unwrap();
    // The primary never answers: only the hedge could.
    assert!(start.elapsed() < QUICK, "{:?}", start.elapsed());
    assert!(
        body.contains("hedge-model") && body.trim_end().ends_with("data: [DONE]"),
        "{body}"
    );
    assert!(primary.wait_cancelled(1, QUICK).await);
    assert_eq!(gw.access_line("h2-1").await["hedge"], "won");
}

#[tokio::test]
async fn legs_honour_first_byte_timeouts_and_answer_504() {
    let primary = MockUpstream::start(Behavior::Hang).await;
    let hedge = MockUpstream::start(Behavior::Hang).await;
    let slow = provider("slow", primary.port()) + "    timeouts: { first_byte: 300ms }\n";
    let fast = provider("fast", hedge.port()) + "    timeouts: { first_byte: 300ms }\n";
    let gw = Gateway::start(&config(
        "",
        &[slow, fast],
        &[("slow", "primary-model"), ("fast", "hedge-model")],
        &hedge_block("100ms", 1.0),
    ))
    .await;
    let r = post(&gw, "timeout-1", false).await;
    assert_eq!(r.status, 504, "{}", r.body);
    assert!(r.took < Duration::from_secs(3), "{:?}", r.took);
    let v: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["error"]["code"], "upstream_timeout");
    assert_eq!(primary.hits(), 1);
    assert_eq!(hedge.hits(), 1);
    let line = gw.access_line("timeout-1").await;
    assert_eq!(line["hedge"], "fired");
    assert_eq!(line["status"], 504);
}

/// The race walks routes like the proxy does: a provider that refuses the
/// gateway's key (401) is not tried on its other backend, however many
/// `retry.attempts` it allows; the next route answers.
#[tokio::test]
async fn a_provider_refusing_the_key_is_skipped_by_the_race_too() {
    let a = MockUpstream::start(Behavior::json(401, r#"{"error":{"message":"bad key"}}"#)).await;
    let b = MockUpstream::start(Behavior::json(401, r#"{"error":{"message":"bad key"}}"#)).await;
    let good = MockUpstream::start(Behavior::ChatEcho).await;
    let refusing = format!(
        "  refusing:\n    kind: openai\n    base_url: \"http://127.0.0.1:{}/v1\"\n    backends: [\"127.0.0.1:{}\", \"127.0.0.1:{}\"]\n    api_key: \"{PROVIDER_KEY}\"\n    health_check: {{ enabled: false }}\n    retry: {{ attempts: 2 }}\n",
        a.port(),
        a.port(),
        b.port()
    );
    let gw = Gateway::start(&config(
        "",
        &[refusing, provider("fast", good.port())],
        &[("refusing", "primary-model"), ("fast", "hedge-model")],
        &hedge_block("20s", 0.1),
    ))
    .await;
    let r = post(&gw, "auth-skip-1", false).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.route.as_deref(), Some("fast/hedge-model"));
    assert_eq!(
        a.hits() + b.hits(),
        1,
        "the refusing provider's second backend was tried"
    );
    let line = gw.access_line("auth-skip-1").await;
    assert_eq!(line["attempts"], 2, "{line}");
}

/// The hedge fires, then the primary answers first: the primary is the
/// request's attempt (its route header, access-log route and provider, its
/// tokens), not the hedge leg that started last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_winning_after_the_hedge_fired_is_the_requests_route() {
    let primary_gate = Gate::new();
    let primary = MockUpstream::start(held_json("primary-model", &primary_gate)).await;
    let hedge = MockUpstream::start(held_json("hedge-model", &Gate::new())).await;
    let gw = hedge_gateway(&primary, &hedge, &hedge_block("100ms", 1.0)).await;
    let url = gw.url("/v1/chat/completions");
    let sent = tokio::spawn(async move {
        support::client()
            .post(url)
            .header("authorization", format!("Bearer {KEY}"))
            .header("content-type", "application/json")
            .header("x-request-id", "primary-wins-1")
            .body(chat(false))
            .send()
            .await
    });
    assert!(
        wait_until(QUICK, || hedge.hits() == 1).await,
        "the hedge never fired"
    );
    primary_gate.open(1);
    let resp = sent.await.unwrap().unwrap();
    assert_eq!(resp.status(), 200);
    let route = resp
        .headers()
        .get("x-tollgate-route")
        .map(|v| v.to_str().unwrap().to_string());
    assert_eq!(route.as_deref(), Some("slow/primary-model"));
    assert!(resp.text().await.unwrap().contains("primary-model"));
    let line = gw.access_line("primary-wins-1").await;
    assert_eq!(line["hedge"], "fired", "{line}");
    assert_eq!(line["provider"], "slow", "{line}");
    assert_eq!(line["upstream_model"], "primary-model", "{line}");
    assert_eq!(line["route"], "slow/primary-model", "{line}");
    let reported = [
        ("provider", "slow"),
        ("token_type", "output"),
        ("usage_source", "reported"),
    ];
    assert_eq!(
        wait_metric(&gw, "tollgate_tokens_total", &reported, 4.0).await,
        4.0
    );
}
