#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Routing strategies, eligibility filters and A/B splits, end to end: the
//! real gateway binary in front of mock upstreams on loopback (or the `mock`
//! provider kind, which answers inside the gateway, where a test needs many
//! requests fast).
//!
//! Each test checks which route served (the route header, or the model the
//! body names), how often each mock was hit (a refused request hits none),
//! the access-log line (`strategy`, `candidates`, `skipped`, `route`,
//! `variant`) and the per-route metrics.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{json, Value};
use support::prom;
use support::{wait_until, Behavior, Gateway, MockUpstream, Reply, ReplyBody, CONFIG_HEAD};

const KEY: &str = "tg-routing-key-0001";
const EU_KEY: &str = "tg-routing-key-eu-01";
const PREMIUM_KEY: &str = "tg-routing-key-prem1";
const QUICK: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// Config and requests
// ---------------------------------------------------------------------------

/// An `openai` provider on a loopback port; health checks off so a failing
/// port is still tried.
fn provider(name: &str, port: u16) -> String {
    format!(
        "  {name}:\n    kind: openai\n    base_url: \"http://127.0.0.1:{port}/v1\"\n    api_key: \"sk-routing-test\"\n    health_check: {{ enabled: false }}\n    retry: {{ attempts: 1 }}\n"
    )
}

/// A `mock` provider (answers in the gateway, `model` = the route's model).
fn local(name: &str) -> String {
    format!("  {name}: {{ kind: mock }}\n")
}

/// The whole config: providers, then `models` as written, then the keys.
fn config(providers: &[String], models: &str) -> String {
    format!(
        r#"{CONFIG_HEAD}access_log: {{ path: "{{TMP}}/access.log" }}
providers:
{providers}
models:
{models}
keys:
  - {{ name: alice, key: "{KEY}" }}
  - {{ name: app-eu, key: "{EU_KEY}", regions: [eu] }}
  - {{ name: gold, key: "{PREMIUM_KEY}", tier: premium }}
"#,
        providers = providers.concat(),
    )
}

struct Resp {
    status: u16,
    route: Option<String>,
    body: Vec<u8>,
    content_type: Option<String>,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// The model named by the body (the route's upstream model).
    fn model(&self) -> String {
        self.json()["model"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

async fn post_as(
    client: &reqwest::Client,
    gw: &Gateway,
    key: &str,
    rid: &str,
    body: &Value,
) -> Resp {
    let resp = client
        .post(gw.url("/v1/chat/completions"))
        .header("authorization", format!("Bearer {key}"))
        .header("x-request-id", rid)
        .json(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("request {rid}: {e}; log:\n{}", gw.logs()));
    let status = resp.status().as_u16();
    let header = |n: &str| {
        resp.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(String::from)
    };
    let route = header("x-tollgate-route");
    let content_type = header("content-type");
    let body = resp.bytes().await.expect("body").to_vec();
    Resp {
        status,
        route,
        body,
        content_type,
    }
}

async fn post(gw: &Gateway, rid: &str, body: &Value) -> Resp {
    post_as(&support::client(), gw, KEY, rid, body).await
}

fn chat(alias: &str) -> Value {
    json!({"model": alias, "messages": [{"role": "user", "content": "hi"}]})
}

/// A non-stream chat completion whose body ends `delay` after its header.
/// Like [`slow_json`], but the second half waits for the test to open
/// `gate` (one half per opening), so a request stays in flight as long as
/// the test needs, whatever the machine's speed.
fn held_json(gate: &support::Gate) -> Behavior {
    let gate = gate.clone();
    Behavior::func(move |rec| {
        let model = rec.json()["model"].as_str().unwrap_or("m").to_string();
        let body = json!({
            "id": "chatcmpl-slow", "object": "chat.completion", "created": 1,
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
        })
        .to_string();
        let (a, b) = body.split_at(body.len() / 2);
        Reply {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body: ReplyBody::Gated(
                vec![Bytes::from(a.to_string()), Bytes::from(b.to_string())],
                gate.clone(),
            ),
        }
    })
}

fn slow_json(delay: Duration) -> Behavior {
    Behavior::func(move |rec| {
        let model = rec.json()["model"].as_str().unwrap_or("m").to_string();
        let body = json!({
            "id": "chatcmpl-slow", "object": "chat.completion", "created": 1,
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
        })
        .to_string();
        let (a, b) = body.split_at(body.len() / 2);
        Reply {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body: ReplyBody::Chunks(
                vec![Bytes::from(a.to_string()), Bytes::from(b.to_string())],
                delay,
            ),
        }
    })
}

/// A port that refuses connections (see [`support::refused_port`]).
fn refused_port() -> u16 {
    support::refused_port()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

#[track_caller]
fn assert_gateway_error(r: &Resp, want: (u16, &str, &str)) -> Value {
    let v = support::assert_json_error(r.status, r.content_type.as_deref(), &r.body, want);
    assert!(r.route.is_none(), "a gateway error names no route");
    v
}

async fn wait_metric(gw: &Gateway, name: &str, labels: &[(&str, &str)], want: f64) {
    let deadline = Instant::now() + QUICK;
    loop {
        let text = gw.metrics_text().await;
        let got = prom::sum(&text, name, labels);
        if got == want {
            return;
        }
        if Instant::now() >= deadline {
            let lines: Vec<&str> = text.lines().filter(|l| l.starts_with(name)).collect();
            panic!(
                "{name}{labels:?}: expected {want}, got {got}\n{}",
                lines.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

// ---------------------------------------------------------------------------
// Weighted
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn weighted_95_5_holds_within_1_5_points_over_10000_requests() {
    let gw = Gateway::start(&config(
        &[local("big"), local("canary")],
        r#"  chat:
    strategy: weighted
    routes:
      - { provider: big, model: gpt-big, weight: 95 }
      - { provider: canary, model: canary-small, weight: 5 }
"#,
    ))
    .await;
    let client = support::client();
    let body = Arc::new(chat("chat"));
    let start = Instant::now();
    let n = 10_000;
    let workers = 32;
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (client, body, url) = (client.clone(), body.clone(), gw.url("/v1/chat/completions"));
        tasks.push(tokio::spawn(async move {
            let mut seen: HashMap<String, u32> = HashMap::new();
            for _ in (w..n).step_by(workers) {
                let r = client
                    .post(&url)
                    .header("authorization", format!("Bearer {KEY}"))
                    .json(&*body)
                    .send()
                    .await
                    .expect("send");
                assert_eq!(r.status().as_u16(), 200);
                let v: Value = r.json().await.expect("json");
                *seen
                    .entry(v["model"].as_str().unwrap_or("?").to_string())
                    .or_default() += 1;
            }
            seen
        }));
    }
    let mut seen: HashMap<String, u32> = HashMap::new();
    for t in tasks {
        for (k, v) in t.await.expect("worker") {
            *seen.entry(k).or_default() += v;
        }
    }
    let took = start.elapsed();
    let big = f64::from(seen.get("gpt-big").copied().unwrap_or(0));
    let canary = f64::from(seen.get("canary-small").copied().unwrap_or(0));
    assert_eq!(big + canary, n as f64, "{seen:?}");
    let share = canary / n as f64;
    assert!(
        (share - 0.05).abs() <= 0.015,
        "canary share {share} ({seen:?})"
    );
    eprintln!("10000 weighted requests in {took:?}: {seen:?}");
    // The per-route counters agree with what the clients saw.
    wait_metric(
        &gw,
        "tollgate_route_requests_total",
        &[("request_model", "chat"), ("route", "canary/canary-small")],
        canary,
    )
    .await;
}

#[tokio::test]
async fn weighted_falls_back_in_order_when_the_drawn_route_fails() {
    let bad = refused_port();
    let good = MockUpstream::start(Behavior::ChatEcho).await;
    let gw = Gateway::start(&config(
        &[provider("bad", bad), provider("good", good.port())],
        r#"  chat:
    strategy: weighted
    routes:
      - { provider: bad, model: m1, weight: 1 }
      - { provider: good, model: m2, weight: 0 }
"#,
    ))
    .await;
    let r = post(&gw, "w-fb", &chat("chat")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.route.as_deref(), Some("good/m2"));
    let line = gw.access_line("w-fb").await;
    assert_eq!(line["strategy"], "weighted");
    assert_eq!(strings(&line["candidates"]), ["bad/m1", "good/m2"]);
    assert_eq!(line["route"], "good/m2");
}

// ---------------------------------------------------------------------------
// Latency
// ---------------------------------------------------------------------------

#[tokio::test]
async fn latency_sends_most_traffic_to_the_fast_route_and_moves_when_it_slows() {
    let a = MockUpstream::start(slow_json(Duration::from_millis(5))).await;
    // 5 ms against 100 ms, then 600 ms against 100 ms: margins a loaded
    // machine's hiccups do not cross.
    let b = MockUpstream::start(slow_json(Duration::from_millis(100))).await;
    let gw = Gateway::start(&config(
        &[provider("a", a.port()), provider("b", b.port())],
        r#"  chat:
    strategy: latency
    routes:
      - { provider: b, model: slow }
      - { provider: a, model: fast }
"#,
    ))
    .await;
    let client = support::client();
    let count = |routes: &[Option<String>], want: &str| {
        routes.iter().filter(|r| r.as_deref() == Some(want)).count()
    };
    run(&client, &gw, 10, "warm").await;
    let steady = run(&client, &gw, 300, "steady").await;
    let fast = count(&steady, "a/fast");
    assert!(fast >= 270, "fast route got {fast} of 300");
    // Slow the fast one down to 600 ms: traffic moves within a few requests.
    a.set_behavior(slow_json(Duration::from_millis(600)));
    let after = run(&client, &gw, 40, "after").await;
    let moved_at = after
        .windows(3)
        .position(|w| w.iter().all(|r| r.as_deref() == Some("b/slow")))
        .unwrap_or(usize::MAX);
    assert!(moved_at <= 10, "moved after {moved_at} requests: {after:?}");
    // 5% of requests explore (docs/config.md): about one of 20 goes to a.
    // At least 15 of 20 to b fails by chance once in about 4000 runs
    // (binomial, p = 0.05, six or more explorations).
    let tail = count(&after[20..], "b/slow");
    assert!(tail >= 15, "b served {tail} of the last 20: {after:?}");
    let text = gw.metrics_text().await;
    let ewma = prom::sample(
        &text,
        "tollgate_route_ewma_seconds",
        &[("route", "a/fast"), ("kind", "latency")],
    )
    .unwrap_or(0.0);
    assert!(
        ewma > 0.1,
        "a's moving average reflects the slowdown: {ewma}"
    );
    let line = gw.access_line("lat-after-39").await;
    assert_eq!(line["strategy"], "latency");
}

/// `n` sequential requests; the route that served each.
async fn run(client: &reqwest::Client, gw: &Gateway, n: usize, tag: &str) -> Vec<Option<String>> {
    let mut routes = Vec::new();
    for i in 0..n {
        let r = post_as(client, gw, KEY, &format!("lat-{tag}-{i}"), &chat("chat")).await;
        assert_eq!(r.status, 200);
        routes.push(r.route);
    }
    routes
}

// ---------------------------------------------------------------------------
// Least busy
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn least_busy_spreads_by_in_flight_relative_to_max_concurrency() {
    // Every request stays in flight until the gate opens at the end.
    let gate = support::Gate::new();
    let a = MockUpstream::start(held_json(&gate)).await;
    let b = MockUpstream::start(held_json(&gate)).await;
    let gw = Gateway::start(&config(
        &[provider("a", a.port()), provider("b", b.port())],
        r#"  chat:
    strategy: least_busy
    routes:
      - { provider: a, model: small, max_concurrency: 2 }
      - { provider: b, model: big, max_concurrency: 6 }
"#,
    ))
    .await;
    let gw = Arc::new(gw);
    let mut tasks = Vec::new();
    for i in 0..8 {
        let gw = gw.clone();
        tasks.push(tokio::spawn(async move {
            post(&gw, &format!("busy-{i}"), &chat("chat")).await.status
        }));
        // Each request is at its upstream (in flight) before the next is
        // routed.
        assert!(
            wait_until(QUICK, || a.hits() + b.hits() == i + 1).await,
            "request {i} never reached an upstream"
        );
    }
    // Loads 0/2 → a, then b, b, b (up to 3/6), a (2/2), then b to 6/6.
    assert_eq!((a.hits(), b.hits()), (2, 6));
    gate.open(8);
    for t in tasks {
        assert_eq!(t.await.expect("task"), 200);
    }
}

// ---------------------------------------------------------------------------
// Cost
// ---------------------------------------------------------------------------

#[tokio::test]
async fn cost_picks_the_cheapest_route_for_the_request_and_never_an_unpriced_one_first() {
    let free = MockUpstream::start(Behavior::ChatEcho).await;
    let a = MockUpstream::start(Behavior::ChatEcho).await;
    let b = MockUpstream::start(Behavior::ChatEcho).await;
    let gw = Gateway::start(&config(
        &[
            provider("free", free.port()),
            provider("a", a.port()),
            provider("b", b.port()),
        ],
        r#"  chat:
    strategy: cost
    routes:
      - { provider: free, model: unpriced }
      - { provider: a, model: cheap-in, price: { input: 0.1, output: 10.0 } }
      - { provider: b, model: cheap-out, price: { input: 5.0, output: 0.5 } }
"#,
    ))
    .await;
    let mut short = chat("chat");
    short["max_tokens"] = json!(2000);
    let r = post(&gw, "cost-short", &short).await;
    assert_eq!(r.route.as_deref(), Some("b/cheap-out"));
    let long = json!({"model": "chat", "max_tokens": 1,
        "messages": [{"role": "user", "content": "lorem ipsum ".repeat(4000)}]});
    let r = post(&gw, "cost-long", &long).await;
    assert_eq!(r.route.as_deref(), Some("a/cheap-in"));
    assert_eq!(
        free.hits(),
        0,
        "an unpriced route is never cheapest by accident"
    );
    let line = gw.access_line("cost-long").await;
    assert_eq!(line["strategy"], "cost");
    assert_eq!(
        strings(&line["candidates"]),
        ["a/cheap-in", "b/cheap-out", "free/unpriced"]
    );
}

// ---------------------------------------------------------------------------
// Capabilities and context windows
// ---------------------------------------------------------------------------

#[tokio::test]
async fn capability_and_context_filters_skip_routes_or_refuse_before_any_upstream() {
    let small = MockUpstream::start(Behavior::ChatEcho).await;
    let vision = MockUpstream::start(Behavior::ChatEcho).await;
    let gw = Gateway::start(&config(
        &[
            provider("small", small.port()),
            provider("vision", vision.port()),
        ],
        r#"  chat:
    routes:
      - { provider: small, model: text-8k, capabilities: [tools], context_window: 200 }
      - { provider: vision, model: omni, capabilities: [tools, vision], context_window: 128000 }
"#,
    ))
    .await;
    // Plain text: the primary.
    let r = post(&gw, "cap-plain", &chat("chat")).await;
    assert_eq!(r.route.as_deref(), Some("small/text-8k"));
    // An image skips the route without vision.
    let image = json!({"model": "chat", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]});
    let r = post(&gw, "cap-image", &image).await;
    assert_eq!(r.route.as_deref(), Some("vision/omni"));
    let line = gw.access_line("cap-image").await;
    assert_eq!(
        strings(&line["skipped"]),
        ["small/text-8k:capability:vision"]
    );
    assert_eq!(strings(&line["candidates"]), ["vision/omni"]);
    // A prompt too long for the small window skips it.
    let long = json!({"model": "chat", "messages": [{"role": "user", "content": "tell me more ".repeat(300)}]});
    let r = post(&gw, "cap-long", &long).await;
    assert_eq!(r.route.as_deref(), Some("vision/omni"));
    let line = gw.access_line("cap-long").await;
    assert_eq!(strings(&line["skipped"]), ["small/text-8k:context_window"]);
    // max_tokens counts too.
    let mut big_out = chat("chat");
    big_out["max_tokens"] = json!(500);
    let r = post(&gw, "cap-maxtok", &big_out).await;
    assert_eq!(r.route.as_deref(), Some("vision/omni"));
    let before = (small.hits(), vision.hits());
    // No route does json_schema: 400 naming it, and no upstream is called.
    let schema = json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}});
    let r = post(&gw, "cap-none", &schema).await;
    let v = assert_gateway_error(&r, (400, "invalid_request_error", "unsupported_capability"));
    let msg = v["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("json_schema"), "{msg}");
    assert_eq!(v["error"]["param"], "response_format");
    // Too long for every window: 400 context_length_exceeded.
    let huge = json!({"model": "chat", "max_tokens": 200000, "messages": [{"role": "user", "content": "hi"}]});
    let r = post(&gw, "cap-huge", &huge).await;
    assert_gateway_error(
        &r,
        (400, "invalid_request_error", "context_length_exceeded"),
    );
    assert_eq!(
        (small.hits(), vision.hits()),
        before,
        "refused requests reach no upstream"
    );
    let line = gw.access_line("cap-none").await;
    assert_eq!(line["status"], 400);
    assert_eq!(line["route"], Value::Null);
    let text = gw.metrics_text().await;
    let skipped = prom::sum(
        &text,
        "tollgate_route_skipped_total",
        &[("route", "small/text-8k"), ("reason", "capability")],
    );
    assert!(skipped >= 2.0, "{skipped}");
}

// ---------------------------------------------------------------------------
// Tier and region
// ---------------------------------------------------------------------------

#[tokio::test]
async fn an_eu_key_never_reaches_a_us_route_even_when_every_eu_route_fails() {
    let eu_down =
        MockUpstream::start(Behavior::json(503, r#"{"error":{"message":"overloaded"}}"#)).await;
    let eu_refused = refused_port();
    let us = MockUpstream::start(Behavior::ChatEcho).await;
    let gw = Gateway::start(&config(
        &[
            provider("eu1", eu_down.port()),
            provider("eu2", eu_refused),
            provider("us", us.port()),
        ],
        r#"  chat:
    routes:
      - { provider: us, model: m-us, region: us }
      - { provider: eu1, model: m-eu, region: eu }
      - { provider: eu2, model: m-eu2, region: eu }
  us-only:
    routes:
      - { provider: us, model: m-us, region: us }
  premium-only:
    routes:
      - { provider: us, model: m-premium, tiers: [premium] }
"#,
    ))
    .await;
    let client = support::client();
    for i in 0..5 {
        let rid = format!("eu-{i}");
        let r = post_as(&client, &gw, EU_KEY, &rid, &chat("chat")).await;
        // Every EU route failed (a 503, a refused port): 502, never the US.
        assert_gateway_error(&r, (502, "api_error", "upstream_error"));
        assert!(r.route.is_none());
    }
    assert_eq!(us.hits(), 0, "never the US route");
    assert!(eu_down.hits() >= 1);
    let line = gw.access_line("eu-0").await;
    assert_eq!(strings(&line["candidates"]), ["eu1/m-eu", "eu2/m-eu2"]);
    assert_eq!(strings(&line["skipped"]), ["us/m-us:region"]);
    // No route in the key's regions at all: 403 before any upstream.
    let r = post_as(&client, &gw, EU_KEY, "eu-none", &chat("us-only")).await;
    let v = assert_gateway_error(&r, (403, "permission_error", "region_not_allowed"));
    assert_eq!(v["error"]["param"], "model");
    assert_eq!(us.hits(), 0);
    // The same alias serves a key without regions from the US.
    let r = post(&gw, "us-ok", &chat("chat")).await;
    assert_eq!(r.route.as_deref(), Some("us/m-us"));
    // Tiers: a premium route refuses other tiers with 403, serves premium.
    let r = post(&gw, "tier-no", &chat("premium-only")).await;
    assert_gateway_error(&r, (403, "permission_error", "tier_not_allowed"));
    let r = post_as(&client, &gw, PREMIUM_KEY, "tier-yes", &chat("premium-only")).await;
    assert_eq!(r.route.as_deref(), Some("us/m-premium"));
}

// ---------------------------------------------------------------------------
// A/B split
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ab_split_is_sticky_and_its_variant_is_logged_and_counted() {
    let gw = Gateway::start(&config(
        &[local("control"), local("candidate")],
        r#"  chat:
    routes:
      - { provider: control, model: model-a, name: control }
      - { provider: candidate, model: model-b, name: candidate }
    split:
      - { name: a, share: 0.3, routes: [control] }
      - { name: b, share: 0.7, routes: [candidate, control] }
"#,
    ))
    .await;
    let client = support::client();
    // The same key always gets the same variant.
    let mut variants = Vec::new();
    for i in 0..5 {
        let rid = format!("ab-key-{i}");
        let r = post_as(&client, &gw, KEY, &rid, &chat("chat")).await;
        assert_eq!(r.status, 200);
        let line = gw.access_line(&rid).await;
        let want = if line["variant"] == "a" {
            "model-a"
        } else {
            "model-b"
        };
        assert_eq!(r.model(), want);
        variants.push(line["variant"].as_str().unwrap_or_default().to_string());
    }
    assert!(variants.windows(2).all(|w| w[0] == w[1]), "{variants:?}");
    // `user` decides when present; shares hold over many users.
    let mut b = 0;
    let users = 600;
    for u in 0..users {
        let mut body = chat("chat");
        body["user"] = json!(format!("user-{u}"));
        let first = post_as(&client, &gw, KEY, &format!("ab-u{u}"), &body)
            .await
            .model();
        let again = post_as(&client, &gw, KEY, &format!("ab-u{u}-again"), &body)
            .await
            .model();
        assert_eq!(first, again, "user-{u} changed variant");
        b += usize::from(first == "model-b");
    }
    let share = b as f64 / f64::from(users);
    assert!((share - 0.7).abs() < 0.07, "variant b share {share}");
    let text = gw.metrics_text().await;
    let counted = prom::sum(
        &text,
        "tollgate_route_requests_total",
        &[
            ("request_model", "chat"),
            ("variant", "b"),
            ("route", "candidate"),
        ],
    );
    assert!(counted >= (2 * b) as f64, "{counted} < {}", 2 * b);
    let line = gw.access_line("ab-u0").await;
    assert!(line["variant"] == "a" || line["variant"] == "b", "{line}");
    assert_eq!(line["strategy"], "fallback");
}

// ---------------------------------------------------------------------------
// Statistics across reloads
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn route_statistics_survive_a_reload() {
    let gate = support::Gate::new();
    let a = MockUpstream::start(held_json(&gate)).await;
    let b = MockUpstream::start(Behavior::ChatEcho).await;
    let models = r#"  chat:
    strategy: least_busy
    routes:
      - { provider: a, model: slow }
      - { provider: b, model: quick }
"#;
    let providers = [provider("a", a.port()), provider("b", b.port())];
    let gw = Arc::new(Gateway::start(&config(&providers, models)).await);
    // One request holds route a.
    let held = {
        let gw = gw.clone();
        tokio::spawn(async move { post(&gw, "held", &chat("chat")).await })
    };
    assert!(a.wait_hits(1, QUICK).await, "route a got the first request");
    // Reload with a change elsewhere: the in-flight count on `a` is kept by
    // name, so the next request still sees it busy.
    let reloads = |t: &str| prom::sum(t, "tollgate_config_reloads_total", &[("result", "success")]);
    let before = reloads(&gw.metrics_text().await);
    gw.write_config(&config(&providers, models).replace(
        "keys:\n",
        "keys:\n  - { name: extra, key: \"tg-routing-extra-key\" }\n",
    ));
    gw.sighup();
    wait_metric(
        &gw,
        "tollgate_config_reloads_total",
        &[("result", "success")],
        before + 1.0,
    )
    .await;
    let r = post(&gw, "after-reload", &chat("chat")).await;
    assert_eq!(
        r.route.as_deref(),
        Some("b/quick"),
        "a is still busy after the reload"
    );
    gate.open(1);
    assert_eq!(held.await.expect("held").status, 200);
    // Counted out as the request ends, just after its answer.
    assert_eq!(
        gw.wait_sample(
            "tollgate_route_in_flight",
            &[("route", "a/slow")],
            0.0,
            QUICK
        )
        .await,
        Some(0.0),
        "the held request left route a when it ended"
    );
}

#[tokio::test]
async fn streams_feed_the_time_to_first_token_average_of_their_route() {
    let up = MockUpstream::start(Behavior::ChatEcho).await;
    let gw = Gateway::start(&config(
        &[provider("up", up.port())],
        r#"  chat:
    strategy: latency
    routes:
      - { provider: up, model: streamer }
"#,
    ))
    .await;
    let client = support::client();
    for i in 0..5 {
        let mut body = chat("chat");
        body["stream"] = json!(true);
        let r = post_as(&client, &gw, KEY, &format!("ttft-{i}"), &body).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.route.as_deref(), Some("up/streamer"));
    }
    wait_metric(
        &gw,
        "tollgate_route_ttft_seconds_count",
        &[("request_model", "chat"), ("route", "up/streamer")],
        5.0,
    )
    .await;
    let text = gw.metrics_text().await;
    let ewma = prom::sample(
        &text,
        "tollgate_route_ewma_seconds",
        &[("route", "up/streamer"), ("kind", "ttft")],
    )
    .unwrap_or(0.0);
    assert!(ewma > 0.0 && ewma < 1.0, "{ewma}");
    assert_eq!(
        prom::sample(
            &text,
            "tollgate_route_in_flight",
            &[("route", "up/streamer")]
        ),
        Some(0.0)
    );
}
