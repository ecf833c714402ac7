#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Fallback chains, same-provider retries, `Retry-After` cooldowns, upstream
//! error mapping, timeouts and circuit breakers (`../shared/RELIABILITY.md`
//! rows 16–20), end to end: the real gateway binary in front of mock
//! upstreams on loopback.
//!
//! Each test checks what the client got (status, OpenAI error body, the
//! route header), how many times each mock was hit (fallback order, no extra
//! attempts), the access-log line of the request (`attempts`,
//! `attempt_log`), and the counters on `/metrics`.
//!
//! Timing-sensitive assertions only use bounds that hold however slow the
//! machine is: a cooldown or open breaker starts no earlier than the moment
//! the request that caused it was sent, so a response received before that
//! moment plus the cooldown was decided while the backend was still out.

mod support;

use std::time::{Duration, Instant};

use reqwest::header::HeaderMap;
use serde_json::{json, Value};
use support::prom;
use support::{Behavior, Gateway, MockUpstream, CONFIG_HEAD};

const KEY: &str = "tg-fallback-key-0001";
const PROVIDER_KEY: &str = "sk-provider-fallback-secret-7c1e";
/// The alias every test routes.
const ALIAS: &str = "fb";
/// Generous bound for anything that should be immediate (2 shared cores).
const QUICK: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// Config
// ---------------------------------------------------------------------------

/// One `openai` provider named `name` whose backends are the loopback
/// `ports` (the first also gives `base_url`). Active health checks are off,
/// so a refusing port is still tried, but their ticker runs every 100 ms,
/// which also exports `tollgate_breaker_state`. `extra` holds more fields,
/// one per line, without indentation.
fn provider(name: &str, ports: &[u16], extra: &str) -> String {
    let mut s = format!(
        "  {name}:\n    kind: openai\n    base_url: \"http://127.0.0.1:{}/v1\"\n    api_key: \"{PROVIDER_KEY}\"\n    health_check: {{ enabled: false, interval: 100ms }}\n",
        ports[0]
    );
    if ports.len() > 1 {
        let list: Vec<String> = ports.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
        s.push_str(&format!("    backends: [{}]\n", list.join(", ")));
    }
    for line in extra.lines().filter(|l| !l.trim().is_empty()) {
        s.push_str(&format!("    {}\n", line.trim()));
    }
    s
}

/// One route of the alias; `extra` is appended inside the flow map (e.g.
/// `", timeouts: { first_byte: 200ms }"`).
fn route(provider: &str, model: &str, extra: &str) -> String {
    format!("      - {{ provider: {provider}, model: {model}{extra} }}\n")
}

/// The whole config: `top` holds extra top-level lines (e.g.
/// `max_attempts: 2`), then the providers and the routes of [`ALIAS`].
fn config(top: &str, providers: &[String], routes: &[String]) -> String {
    format!(
        r#"{CONFIG_HEAD}{top}
providers:
{providers}
models:
  {ALIAS}:
    routes:
{routes}
keys:
  - {{ name: alice, key: "{KEY}" }}
"#,
        providers = providers.concat(),
        routes = routes.concat(),
    )
}

/// A port that refuses connections (see [`support::refused_port`]).
fn refused_port() -> u16 {
    support::refused_port()
}

// ---------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------

/// A small valid chat body for [`ALIAS`].
fn chat() -> String {
    json!({"model": ALIAS, "messages": [{"role": "user", "content": "hi"}]}).to_string()
}

/// A streaming chat body for [`ALIAS`].
fn chat_stream() -> String {
    json!({"model": ALIAS, "stream": true, "messages": [{"role": "user", "content": "hi"}]})
        .to_string()
}

struct Resp {
    status: u16,
    headers: HeaderMap,
    body: Vec<u8>,
    /// When the whole response had arrived.
    done: Instant,
    /// From sending to the end of the body.
    took: Duration,
}

impl Resp {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.text()))
    }

    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("ascii header").to_string())
    }

    /// The route that served it, from `x-tollgate-route`.
    fn route(&self) -> Option<String> {
        self.header("x-tollgate-route")
    }
}

/// POST /v1/chat/completions as alice with request id `rid`.
async fn post(gw: &Gateway, rid: &str, body: impl Into<reqwest::Body>) -> Resp {
    let start = Instant::now();
    let resp = support::client()
        .post(gw.url("/v1/chat/completions"))
        .header("authorization", format!("Bearer {KEY}"))
        .header("content-type", "application/json")
        .header("x-request-id", rid)
        .body(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("request {rid} failed: {e}; log:\n{}", gw.logs()));
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp
        .bytes()
        .await
        .unwrap_or_else(|e| panic!("body of {rid}: {e}; log:\n{}", gw.logs()))
        .to_vec();
    Resp {
        status,
        headers,
        body,
        done: Instant::now(),
        took: start.elapsed(),
    }
}

/// Asserts a 200 chat completion served by route `provider/model`: the
/// upstream echoes the model it received, so the body names it too.
#[track_caller]
fn assert_served_by(r: &Resp, provider: &str, model: &str) {
    assert_eq!(r.status, 200, "body: {}", r.text());
    assert_eq!(
        r.route().as_deref(),
        Some(format!("{provider}/{model}").as_str()),
        "route header"
    );
    assert_eq!(r.json()["model"], model, "body: {}", r.text());
}

/// Asserts an error the gateway wrote itself: [`support::assert_json_error`]
/// (the exact OpenAI error shape, JSON content type), and no route header.
#[track_caller]
fn assert_gateway_error(r: &Resp, want: (u16, &str, &str)) -> Value {
    let v =
        support::assert_json_error(r.status, r.header("content-type").as_deref(), &r.body, want);
    assert!(
        r.route().is_none(),
        "a gateway error names no route: {:?}",
        r.route()
    );
    v
}

const UPSTREAM_ERROR: (u16, &str, &str) = (502, "api_error", "upstream_error");
const UPSTREAM_AUTH: (u16, &str, &str) = (502, "api_error", "upstream_auth_error");
const UPSTREAM_TIMEOUT: (u16, &str, &str) = (504, "api_error", "upstream_timeout");
const RATE_LIMITED: (u16, &str, &str) = (429, "requests", "rate_limit_exceeded");

// ---------------------------------------------------------------------------
// Access log and metrics
// ---------------------------------------------------------------------------

/// `attempt_log` of an access-log line as strings (empty when absent).
fn attempt_log(line: &Value) -> Vec<String> {
    match &line["attempt_log"] {
        Value::Null => Vec::new(),
        v => v
            .as_array()
            .unwrap_or_else(|| panic!("attempt_log is not a list: {line}"))
            .iter()
            .map(|s| s.as_str().expect("attempt_log entry").to_string())
            .collect(),
    }
}

/// `provider@127.0.0.1:port:outcome`, as the access log writes an attempt.
fn attempt(provider: &str, port: u16, outcome: &str) -> String {
    format!("{provider}@127.0.0.1:{port}:{outcome}")
}

/// Sum of the samples of `metric` whose labels include `labels` (0 if none).
async fn metric(gw: &Gateway, name: &str, labels: &[(&str, &str)]) -> f64 {
    prom::sum(&gw.metrics_text().await, name, labels)
}

/// Waits until `metric` (summed over `labels`) equals `want`; panics with
/// the metric's lines otherwise. Request counters are updated when the
/// request is logged, which may be just after the client has its answer.
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

/// Polls `tollgate_breaker_state` of one backend until it equals `want`,
/// giving up at `deadline`. Returns whether it did.
async fn breaker_state_becomes(
    gw: &Gateway,
    provider: &str,
    port: u16,
    want: f64,
    deadline: Instant,
) -> bool {
    let backend = format!("127.0.0.1:{port}");
    loop {
        let text = gw.metrics_text().await;
        let got = prom::sample(
            &text,
            "tollgate_breaker_state",
            &[("provider", provider), ("backend", &backend)],
        );
        if got == Some(want) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------
// 1. Fallback to the next route
// ---------------------------------------------------------------------------

/// Row 19: a 503 from the first route moves the request to the second,
/// whose upstream gets the second route's model; the client gets that 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_503_falls_back_to_the_next_route_with_its_model() {
    let m1 = MockUpstream::start(Behavior::json(
        503,
        r#"{"error":{"message":"overloaded","type":"server_error"}}"#,
    ))
    .await;
    let m2 = MockUpstream::start(Behavior::ChatEcho).await;
    let gw = Gateway::start(&config(
        "",
        &[
            provider("p1", &[m1.port()], ""),
            provider("p2", &[m2.port()], ""),
        ],
        &[route("p1", "model-one", ""), route("p2", "model-two", "")],
    ))
    .await;

    let body = chat();
    let r = post(&gw, "fb-503-1", body.clone()).await;
    assert_served_by(&r, "p2", "model-two");
    assert_eq!(r.header("x-request-id").as_deref(), Some("fb-503-1"));
    assert!(
        !r.text().contains("overloaded"),
        "nothing of the failed attempt reaches the client: {}",
        r.text()
    );

    // Each upstream saw the request once, with its own route's model and
    // otherwise the client's bytes.
    assert_eq!((m1.hits(), m2.hits()), (1, 1));
    let got1 = m1.last().unwrap();
    let got2 = m2.last().unwrap();
    assert_eq!(got1.path, "/v1/chat/completions");
    assert_eq!(got2.path, "/v1/chat/completions");
    assert_eq!(
        got1.body_str(),
        body.replacen(r#""model":"fb""#, r#""model":"model-one""#, 1)
    );
    assert_eq!(
        got2.body_str(),
        body.replacen(r#""model":"fb""#, r#""model":"model-two""#, 1)
    );
    for rec in [&got1, &got2] {
        assert_eq!(
            rec.header("authorization"),
            Some(format!("Bearer {PROVIDER_KEY}"))
        );
        assert_eq!(rec.header("x-request-id").as_deref(), Some("fb-503-1"));
    }

    // The access log lists both attempts and names the route that served.
    let line = gw.access_line("fb-503-1").await;
    assert_eq!(line["status"], 200, "{line}");
    assert_eq!(line["attempts"], 2, "{line}");
    assert_eq!(
        attempt_log(&line),
        [
            attempt("p1", m1.port(), "status_5xx"),
            attempt("p2", m2.port(), "success")
        ],
        "{line}"
    );
    assert_eq!(line["provider"], "p2", "{line}");
    assert_eq!(line["upstream_model"], "model-two", "{line}");
    assert_eq!(
        line["backend"],
        format!("127.0.0.1:{}", m2.port()),
        "{line}"
    );
    assert!(line["error"].is_null(), "{line}");

    // Metrics: one fallback, no same-provider retry, each attempt's outcome.
    wait_metric(
        &gw,
        "tollgate_retries_total",
        &[("request_model", ALIAS), ("kind", "fallback")],
        1.0,
    )
    .await;
    let text = gw.metrics_text().await;
    let retries = prom::sum(
        &text,
        "tollgate_retries_total",
        &[("request_model", ALIAS), ("kind", "retry")],
    );
    assert_eq!(retries, 0.0, "no same-provider retry was possible");
    prom::assert_sample(
        &text,
        "tollgate_upstream_attempts_total",
        &[("provider", "p1"), ("outcome", "status_5xx")],
        1.0,
    );
    prom::assert_sample(
        &text,
        "tollgate_upstream_attempts_total",
        &[("provider", "p2"), ("outcome", "success")],
        1.0,
    );
    wait_metric(
        &gw,
        "tollgate_requests_total",
        &[
            ("request_model", ALIAS),
            ("provider", "p2"),
            ("response_model", "model-two"),
            ("status_class", "2xx"),
        ],
        1.0,
    )
    .await;

    // A second request does the same: fallback is per request.
    let r = post(&gw, "fb-503-2", chat()).await;
    assert_served_by(&r, "p2", "model-two");
    assert_eq!((m1.hits(), m2.hits()), (2, 2));
    wait_metric(
        &gw,
        "tollgate_retries_total",
        &[("request_model", ALIAS), ("kind", "fallback")],
        2.0,
    )
    .await;
}

/// A stream request falls back before its first byte: the client sees only
/// the second route's SSE, never the first route's error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_request_falls_back_before_the_first_byte() {
    let m1 = MockUpstream::start(Behavior::json(500, r#"{"error":"boom-500"}"#)).await;
    let m2 = MockUpstream::start(Behavior::ChatEcho).await;
    let gw = Gateway::start(&config(
        "",
        &[
            provider("p1", &[m1.port()], ""),
            provider("p2", &[m2.port()], ""),
        ],
        &[route("p1", "model-one", ""), route("p2", "model-two", "")],
    ))
    .await;
    let r = post(&gw, "fb-stream", chat_stream()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.route().as_deref(), Some("p2/model-two"));
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("text/event-stream")),
        "{:?}",
        r.headers
    );
    let text = r.text();
    assert!(!text.contains("boom-500"), "{text}");
    assert!(text.contains(r#""model":"model-two""#), "{text}");
    assert!(text.contains("tok0") && text.contains("tok2"), "{text}");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    assert_eq!((m1.hits(), m2.hits()), (1, 1));
    assert_eq!(m2.last().unwrap().json()["model"], "model-two");
    let line = gw.access_line("fb-stream").await;
    assert_eq!(line["stream"], true, "{line}");
    assert_eq!(
        attempt_log(&line),
        [
            attempt("p1", m1.port(), "status_5xx"),
            attempt("p2", m2.port(), "success")
        ],
        "{line}"
    );
}

/// Row 20: a 200 `text/html` answer to a stream request is a failure: the
/// next route serves; with no route left the client gets 502 and no HTML.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn html_where_sse_was_expected_fails_over_or_is_502() {
    let html = Behavior::Json {
        status: 200,
        body: "<html><body>captive portal page</body></html>".into(),
        headers: vec![("content-type".into(), "text/html".into())],
    };
    let m1 = MockUpstream::start(html).await;
    let m2 = MockUpstream::start(Behavior::ChatEcho).await;
    let gw = Gateway::start(&config(
        "",
        &[
            provider("p1", &[m1.port()], ""),
            provider("p2", &[m2.port()], ""),
        ],
        &[route("p1", "model-one", ""), route("p2", "model-two", "")],
    ))
    .await;
    let r = post(&gw, "fb-html-1", chat_stream()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.route().as_deref(), Some("p2/model-two"));
    assert!(!r.text().contains("captive"), "{}", r.text());
    assert_eq!((m1.hits(), m2.hits()), (1, 1));
    let line = gw.access_line("fb-html-1").await;
    assert_eq!(
        attempt_log(&line),
        [
            attempt("p1", m1.port(), "bad_response"),
            attempt("p2", m2.port(), "success")
        ],
        "{line}"
    );
    drop(gw);

    // Only the HTML route: 502, nothing of the page streamed.
    let gw = Gateway::start(&config(
        "",
        &[provider("p1", &[m1.port()], "")],
        &[route("p1", "model-one", "")],
    ))
    .await;
    let r = post(&gw, "fb-html-2", chat_stream()).await;
    assert_gateway_error(&r, UPSTREAM_ERROR);
    assert!(!r.text().contains("captive"), "{}", r.text());
    assert_eq!(m1.hits(), 2);
    wait_metric(
        &gw,
        "tollgate_upstream_attempts_total",
        &[("provider", "p1"), ("outcome", "bad_response")],
        1.0,
    )
    .await;
}

// ---------------------------------------------------------------------------
// 2. Same-provider retry
// ---------------------------------------------------------------------------

/// A provider `pool` with backends `bad` then `good`, and a second route
/// `spare`. Sends requests until one has been tried on `bad` (round-robin
/// reaches it within two requests) and checks that every request succeeded
/// on `pool`'s other backend, never on `spare`. Returns the access-log line
/// of the request that met `bad`.
async fn retry_on_the_other_backend(bad_port: u16, bad_hits: impl Fn() -> usize, outcome: &str) {
    let good = MockUpstream::start(Behavior::ChatEcho).await;
    let spare = MockUpstream::start(Behavior::ChatEcho).await;
    let gw = Gateway::start(&config(
        "",
        &[
            provider("pool", &[bad_port, good.port()], "retry: { attempts: 2 }"),
            provider("spare", &[spare.port()], ""),
        ],
        &[
            route("pool", "pool-model", ""),
            route("spare", "spare-model", ""),
        ],
    ))
    .await;

    let mut met_bad = None;
    for i in 0..4 {
        let rid = format!("fb-retry-{i}");
        let before = (bad_hits(), good.hits());
        let r = post(&gw, &rid, chat()).await;
        assert_served_by(&r, "pool", "pool-model");
        assert_eq!(good.hits(), before.1 + 1, "{rid}: served by `good`");
        assert_eq!(spare.hits(), 0, "{rid}: never fell back to `spare`");
        let line = gw.access_line(&rid).await;
        if bad_port_attempted(&line, bad_port) {
            if outcome == "status_5xx" {
                assert_eq!(bad_hits(), before.0 + 1, "{rid}: `bad` answered once");
            }
            met_bad.get_or_insert((rid, line));
        } else {
            assert_eq!(line["attempts"], 1, "{line}");
        }
    }
    let (rid, line) = met_bad.expect("round-robin reached the failing backend within 4 requests");
    assert_eq!(line["attempts"], 2, "{rid}: {line}");
    assert_eq!(
        attempt_log(&line),
        [
            attempt("pool", bad_port, outcome),
            attempt("pool", good.port(), "success")
        ],
        "{rid}: {line}"
    );
    assert_eq!(line["provider"], "pool", "{line}");
    assert_eq!(line["upstream_model"], "pool-model", "{line}");
    let text = gw.metrics_text().await;
    assert!(
        prom::sum(
            &text,
            "tollgate_retries_total",
            &[("request_model", ALIAS), ("kind", "retry")]
        ) >= 1.0,
        "a same-provider retry is counted:\n{text}"
    );
    assert_eq!(
        prom::sum(
            &text,
            "tollgate_retries_total",
            &[("request_model", ALIAS), ("kind", "fallback")]
        ),
        0.0,
        "no fallback happened"
    );
    assert!(
        prom::sum(
            &text,
            "tollgate_upstream_attempts_total",
            &[("provider", "pool"), ("outcome", outcome)]
        ) >= 1.0
    );
}

fn bad_port_attempted(line: &Value, bad_port: u16) -> bool {
    let needle = format!("@127.0.0.1:{bad_port}:");
    attempt_log(line).iter().any(|a| a.contains(&needle))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_500_is_retried_on_another_backend_of_the_same_provider() {
    let bad = MockUpstream::start(Behavior::json(500, r#"{"error":"internal"}"#)).await;
    retry_on_the_other_backend(bad.port(), || bad.hits(), "status_5xx").await;
    assert!(bad.hits() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_backend_is_retried_on_another_backend_of_the_same_provider() {
    retry_on_the_other_backend(refused_port(), || 0, "connect_error").await;
}

/// `retry.attempts` caps the attempts on one provider: with three failing
/// backends and `attempts: 2`, two of them are tried, then the next route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_attempts_limit_the_tries_per_provider_before_fallback() {
    let mut bad = Vec::new();
    for _ in 0..3 {
        bad.push(MockUpstream::start(Behavior::json(503, r#"{"error":"busy"}"#)).await);
    }
    let spare = MockUpstream::start(Behavior::ChatEcho).await;
    let ports: Vec<u16> = bad.iter().map(MockUpstream::port).collect();
    let gw = Gateway::start(&config(
        "",
        &[
            provider("pool", &ports, "retry: { attempts: 2 }"),
            provider("spare", &[spare.port()], ""),
        ],
        &[
            route("pool", "pool-model", ""),
            route("spare", "spare-model", ""),
        ],
    ))
    .await;
    let r = post(&gw, "fb-limit", chat()).await;
    assert_served_by(&r, "spare", "spare-model");
    let hits: Vec<usize> = bad.iter().map(MockUpstream::hits).collect();
    assert_eq!(
        hits.iter().sum::<usize>(),
        2,
        "two of pool's backends: {hits:?}"
    );
    assert!(
        hits.iter().all(|h| *h <= 1),
        "each on a different backend: {hits:?}"
    );
    assert_eq!(spare.hits(), 1);
    let line = gw.access_line("fb-limit").await;
    assert_eq!(line["attempts"], 3, "{line}");
    let log = attempt_log(&line);
    assert_eq!(log.len(), 3, "{line}");
    assert!(
        log[..2]
            .iter()
            .all(|a| a.starts_with("pool@") && a.ends_with(":status_5xx")),
        "{line}"
    );
    assert_eq!(log[2], attempt("spare", spare.port(), "success"), "{line}");
    wait_metric(
        &gw,
        "tollgate_retries_total",
        &[("request_model", ALIAS), ("kind", "retry")],
        1.0,
    )
    .await;
    wait_metric(
        &gw,
        "tollgate_retries_total",
        &[("request_model", ALIAS), ("kind", "fallback")],
        1.0,
    )
    .await;
}

// ---------------------------------------------------------------------------
// 3. 429 and Retry-After
// ---------------------------------------------------------------------------

/// Row 19: a 429 with `Retry-After: 2` on route 1 falls back to route 2 and
/// cools route 1's backend for 2 s; after that it is tried again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_429_with_retry_after_falls_back_and_cools_the_backend() {
    let limited = Behavior::Json {
        status: 429,
        body: r#"{"error":{"message":"slow down","type":"requests"}}"#.into(),
        headers: vec![("retry-after".into(), "2".into())],
    };
    let m1 = MockUpstream::start(limited).await;
    let m2 = MockUpstream::start(Behavior::ChatEcho).await;
    let gw = Gateway::start(&config(
        "",
        &[
            provider("p1", &[m1.port()], ""),
            provider("p2", &[m2.port()], ""),
        ],
        &[route("p1", "model-one", ""), route("p2", "model-two", "")],
    ))
    .await;

    // The cooldown starts when the gateway sees the 429: after `t0`.
    let t0 = Instant::now();
    let r = post(&gw, "fb-429-0", chat()).await;
    assert_served_by(&r, "p2", "model-two");
    assert!(r.header("retry-after").is_none(), "served: {:?}", r.headers);
    assert_eq!((m1.hits(), m2.hits()), (1, 1));
    let line = gw.access_line("fb-429-0").await;
    assert_eq!(
        attempt_log(&line),
        [
            attempt("p1", m1.port(), "status_429"),
            attempt("p2", m2.port(), "success")
        ],
        "{line}"
    );

    // While cooling, p1 is skipped without being contacted.
    let cooling_until = t0 + Duration::from_secs(2);
    let mut checked = 0;
    let mut i = 0;
    while Instant::now() < t0 + Duration::from_millis(1500) {
        i += 1;
        let rid = format!("fb-429-cool-{i}");
        let r = post(&gw, &rid, chat()).await;
        if r.done < cooling_until {
            assert_served_by(&r, "p2", "model-two");
            assert_eq!(m1.hits(), 1, "{rid}: p1 contacted while cooling down");
            checked += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(checked >= 1, "no request was answered within the cooldown");
    let line = gw.access_line("fb-429-cool-1").await;
    assert_eq!(
        line["attempts"], 1,
        "the cooling backend is no attempt: {line}"
    );
    assert_eq!(line["provider"], "p2", "{line}");

    // After the cooldown p1 is tried again (and now serves).
    m1.set_behavior(Behavior::ChatEcho);
    let deadline = Instant::now() + QUICK;
    let mut n = 0;
    let back = loop {
        n += 1;
        let rid = format!("fb-429-back-{n}");
        let r = post(&gw, &rid, chat()).await;
        assert_eq!(r.status, 200, "{rid}: {}", r.text());
        if m1.hits() > 1 {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "p1 never tried again after its Retry-After"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_served_by(&back, "p1", "model-one");
    assert!(
        back.done >= cooling_until,
        "p1 was contacted {:?} after the 429 request was sent: before Retry-After: 2 ran out",
        back.done - t0
    );
    wait_metric(
        &gw,
        "tollgate_upstream_attempts_total",
        &[("provider", "p1"), ("outcome", "status_429")],
        1.0,
    )
    .await;
}

/// Row 19 with no route left: the client gets 429 `rate_limit_exceeded`
/// with the upstream's `Retry-After`; while the backend cools, the next
/// request is answered the same way without contacting it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_429_on_the_only_route_is_passed_on_with_retry_after() {
    let limited = Behavior::Json {
        status: 429,
        body: r#"{"error":{"message":"Rate limit reached for sk-secret-429","type":"requests"}}"#
            .into(),
        // Long enough that the next request is always inside the cooldown,
        // however slow the machine.
        headers: vec![("retry-after".into(), "60".into())],
    };
    let m1 = MockUpstream::start(limited).await;
    let gw = Gateway::start(&config(
        "",
        &[provider("p1", &[m1.port()], "")],
        &[route("p1", "model-one", "")],
    ))
    .await;

    let r = post(&gw, "fb-429-only", chat()).await;
    assert_gateway_error(&r, RATE_LIMITED);
    assert_eq!(r.header("retry-after").as_deref(), Some("60"));
    assert!(!r.text().contains("sk-secret-429"), "{}", r.text());
    assert_eq!(m1.hits(), 1);
    let line = gw.access_line("fb-429-only").await;
    assert_eq!(line["status"], 429, "{line}");
    assert_eq!(line["error"], "rate_limit_exceeded", "{line}");
    assert_eq!(line["attempts"], 1, "{line}");

    // Cooling: answered without an attempt, with the time left.
    let r = post(&gw, "fb-429-cooling", chat()).await;
    assert_gateway_error(&r, RATE_LIMITED);
    let secs: u64 = r
        .header("retry-after")
        .expect("Retry-After while cooling")
        .parse()
        .expect("Retry-After in seconds");
    assert!((1..=60).contains(&secs), "Retry-After: {secs}");
    assert_eq!(m1.hits(), 1, "the cooling backend was contacted");
    let line = gw.access_line("fb-429-cooling").await;
    assert_eq!(line["attempts"], 0, "{line}");
    wait_metric(
        &gw,
        "tollgate_errors_total",
        &[("code", "rate_limit_exceeded")],
        2.0,
    )
    .await;
}

// ---------------------------------------------------------------------------
// 4. The provider refuses our key
// ---------------------------------------------------------------------------

/// Row 18: 401 from the provider is 502 `upstream_auth_error` with a generic
/// message. The upstream's text (which echoes a key) reaches neither the
/// client nor the log, and the provider's other backend is not tried with
/// the same refused key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_401_is_a_generic_502_without_the_upstream_text() {
    let refused = || {
        Behavior::json(
            401,
            r#"{"error":{"message":"Incorrect API key provided: invalid key sk-secret-123","type":"invalid_request_error","code":"invalid_api_key"}}"#,
        )
    };
    let a = MockUpstream::start(refused()).await;
    let b = MockUpstream::start(refused()).await;
    let gw = Gateway::start(&config(
        "",
        &[provider(
            "authp",
            &[a.port(), b.port()],
            "retry: { attempts: 2 }",
        )],
        &[route("authp", "model-one", "")],
    ))
    .await;

    let r = post(&gw, "fb-401", chat()).await;
    let v = assert_gateway_error(&r, UPSTREAM_AUTH);
    let text = r.text();
    for leaked in [
        "sk-secret-123",
        "invalid key",
        "Incorrect API key",
        PROVIDER_KEY,
    ] {
        assert!(
            !text.contains(leaked),
            "client body leaks {leaked:?}: {text}"
        );
    }
    assert!(v["error"]["param"].is_null(), "{v}");
    assert_eq!(
        a.hits() + b.hits(),
        1,
        "a refused key skips the provider's other backends"
    );

    let line = gw.access_line("fb-401").await;
    assert_eq!(line["status"], 502, "{line}");
    assert_eq!(line["error"], "upstream_auth_error", "{line}");
    assert_eq!(line["attempts"], 1, "{line}");
    // Logged loudly, naming the setting to fix, and without the secret.
    assert!(
        gw.wait_log("providers.authp.api_key", QUICK).await,
        "no error naming the provider key setting; log:\n{}",
        gw.logs()
    );
    let logs = gw.logs();
    assert!(
        !logs.contains("sk-secret-123"),
        "log leaks the upstream text:\n{logs}"
    );
    assert!(
        !logs.contains(PROVIDER_KEY),
        "log leaks the provider key:\n{logs}"
    );
    wait_metric(
        &gw,
        "tollgate_upstream_attempts_total",
        &[("provider", "authp"), ("outcome", "auth_error")],
        1.0,
    )
    .await;
    wait_metric(
        &gw,
        "tollgate_errors_total",
        &[("code", "upstream_auth_error")],
        1.0,
    )
    .await;
}

// ---------------------------------------------------------------------------
// 5. Connection refused everywhere
// ---------------------------------------------------------------------------

/// Row 16: every route refuses connections: 502 `upstream_error`, and the
/// access log lists each attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_refused_on_every_route_is_502_listing_each_attempt() {
    let (pa, pb, pc) = (refused_port(), refused_port(), refused_port());
    let gw = Gateway::start(&config(
        "",
        &[
            provider("pa", &[pa], ""),
            provider("pb", &[pb], ""),
            provider("pc", &[pc], ""),
        ],
        &[
            route("pa", "model-a", ""),
            route("pb", "model-b", ""),
            route("pc", "model-c", ""),
        ],
    ))
    .await;
    let r = post(&gw, "fb-refused", chat()).await;
    assert_gateway_error(&r, UPSTREAM_ERROR);
    assert!(r.took < QUICK, "took {:?}", r.took);
    let line = gw.access_line("fb-refused").await;
    assert_eq!(line["status"], 502, "{line}");
    assert_eq!(line["error"], "upstream_error", "{line}");
    assert_eq!(line["attempts"], 3, "{line}");
    assert_eq!(
        attempt_log(&line),
        [
            attempt("pa", pa, "connect_error"),
            attempt("pb", pb, "connect_error"),
            attempt("pc", pc, "connect_error")
        ],
        "{line}"
    );
    for p in ["pa", "pb", "pc"] {
        wait_metric(
            &gw,
            "tollgate_upstream_attempts_total",
            &[("provider", p), ("outcome", "connect_error")],
            1.0,
        )
        .await;
    }
    wait_metric(
        &gw,
        "tollgate_retries_total",
        &[("request_model", ALIAS), ("kind", "fallback")],
        2.0,
    )
    .await;
    wait_metric(
        &gw,
        "tollgate_errors_total",
        &[("code", "upstream_error")],
        1.0,
    )
    .await;
}

// ---------------------------------------------------------------------------
// 6–7. No response header in time
// ---------------------------------------------------------------------------

/// Row 17: an upstream that accepts and never answers fails over after
/// `first_byte` (300 ms).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hang_before_headers_fails_over_after_first_byte_timeout() {
    let m1 = MockUpstream::start(Behavior::Hang).await;
    let m2 = MockUpstream::start(Behavior::ChatEcho).await;
    let gw = Gateway::start(&config(
        "",
        &[
            provider("p1", &[m1.port()], "timeouts: { first_byte: 300ms }"),
            provider("p2", &[m2.port()], ""),
        ],
        &[route("p1", "model-one", ""), route("p2", "model-two", "")],
    ))
    .await;
    let r = post(&gw, "fb-hang-1", chat()).await;
    assert_served_by(&r, "p2", "model-two");
    assert!(
        r.took >= Duration::from_millis(250),
        "answered in {:?}: before p1's first_byte ran out",
        r.took
    );
    assert!(r.took < Duration::from_secs(3), "took {:?}", r.took);
    assert_eq!((m1.hits(), m2.hits()), (1, 1));
    let line = gw.access_line("fb-hang-1").await;
    assert_eq!(
        attempt_log(&line),
        [
            attempt("p1", m1.port(), "timeout"),
            attempt("p2", m2.port(), "success")
        ],
        "{line}"
    );
    wait_metric(
        &gw,
        "tollgate_upstream_attempts_total",
        &[("provider", "p1"), ("outcome", "timeout")],
        1.0,
    )
    .await;
}

/// Row 17 with no route left: 504 `upstream_timeout` about `first_byte`
/// after the request, whichever mechanism enforces the limit: the watchdog
/// (`first_byte` ≠ `idle`), Pingora's read timeout (`idle` only), or the
/// watchdog on the last attempt `max_attempts` allows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hang_before_headers_with_no_route_left_is_504() {
    let m1 = MockUpstream::start(Behavior::Hang).await;
    let cases = [
        ("watchdog", "", "timeouts: { first_byte: 300ms }"),
        ("read-timeout", "", "timeouts: { idle: 300ms }"),
        (
            "last-allowed-attempt",
            "max_attempts: 1",
            "timeouts: { first_byte: 300ms }",
        ),
    ];
    for (i, (what, top, timeouts)) in cases.into_iter().enumerate() {
        let gw = Gateway::start(&config(
            top,
            &[provider("p1", &[m1.port()], timeouts)],
            &[route("p1", "model-one", "")],
        ))
        .await;
        let rid = format!("fb-hang-504-{i}");
        let r = post(&gw, &rid, chat()).await;
        assert_eq!(m1.hits(), i + 1, "{what}");
        assert!(
            r.took >= Duration::from_millis(250) && r.took < Duration::from_secs(3),
            "{what}: answered after {:?}",
            r.took
        );
        let line = gw.access_line(&rid).await;
        assert_eq!(line["attempts"], 1, "{what}: {line}");
        assert_gateway_error(&r, UPSTREAM_TIMEOUT);
        assert_eq!(line["error"], "upstream_timeout", "{what}: {line}");
        assert_eq!(line["status"], 504, "{what}: {line}");
    }
}

/// A route's `timeouts.first_byte` overrides its provider's: provider 10 s,
/// route 200 ms, so a silent upstream fails over in well under 10 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_first_byte_override_beats_the_provider_timeout() {
    let m1 = MockUpstream::start(Behavior::Hang).await;
    let m2 = MockUpstream::start(Behavior::ChatEcho).await;
    let gw = Gateway::start(&config(
        "",
        &[
            provider("p1", &[m1.port()], "timeouts: { first_byte: 10s }"),
            provider("p2", &[m2.port()], ""),
        ],
        &[
            route("p1", "model-one", ", timeouts: { first_byte: 200ms }"),
            route("p2", "model-two", ""),
        ],
    ))
    .await;
    let r = post(&gw, "fb-override", chat()).await;
    assert_served_by(&r, "p2", "model-two");
    assert!(
        r.took >= Duration::from_millis(150),
        "answered in {:?}",
        r.took
    );
    assert!(
        r.took < Duration::from_secs(3),
        "took {:?}: the provider's 10 s applied, not the route's 200 ms",
        r.took
    );
    assert_eq!((m1.hits(), m2.hits()), (1, 1));
    let line = gw.access_line("fb-override").await;
    assert_eq!(
        attempt_log(&line),
        [
            attempt("p1", m1.port(), "timeout"),
            attempt("p2", m2.port(), "success")
        ],
        "{line}"
    );
}

// ---------------------------------------------------------------------------
// 8. Circuit breaker
// ---------------------------------------------------------------------------

/// Passive health: two consecutive failures open p1's breaker. While open,
/// requests skip p1 without contacting it; after the cooldown one probe
/// reaches it. A failed probe reopens the breaker; a successful one closes
/// it. `tollgate_breaker_state` follows (0 closed, 1 open, 2 half-open).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_opens_skips_the_backend_then_probes_and_closes() {
    // Long enough that the few requests each phase sends always fit inside
    // it, however slow the machine (each takes milliseconds).
    const COOLDOWN: Duration = Duration::from_secs(4);
    let m1 = MockUpstream::start(Behavior::json(503, r#"{"error":"down"}"#)).await;
    let m2 = MockUpstream::start(Behavior::ChatEcho).await;
    let gw = Gateway::start(&config(
        "",
        &[
            provider(
                "p1",
                &[m1.port()],
                "breaker: { consecutive_failures: 2, cooldown: 4s }",
            ),
            provider("p2", &[m2.port()], ""),
        ],
        &[route("p1", "model-one", ""), route("p2", "model-two", "")],
    ))
    .await;
    let p1 = m1.port();
    assert!(
        breaker_state_becomes(&gw, "p1", p1, 0.0, Instant::now() + QUICK).await,
        "breaker starts closed"
    );

    // Failure 1: still closed.
    let r = post(&gw, "fb-brk-1", chat()).await;
    assert_served_by(&r, "p2", "model-two");
    assert_eq!(m1.hits(), 1);
    // Failure 2 opens it, at some moment after `opened_after`.
    let opened_after = Instant::now();
    let r = post(&gw, "fb-brk-2", chat()).await;
    assert_served_by(&r, "p2", "model-two");
    assert_eq!(m1.hits(), 2);

    // Open: p1 is skipped without being contacted.
    for i in 0..3 {
        let rid = format!("fb-brk-open-{i}");
        let r = post(&gw, &rid, chat()).await;
        assert_served_by(&r, "p2", "model-two");
        assert!(
            r.done < opened_after + COOLDOWN,
            "{rid} took past the {COOLDOWN:?} cooldown: the machine is too slow for this test"
        );
        assert_eq!(m1.hits(), 2, "{rid}: an open breaker let a request through");
    }
    let line = gw.access_line("fb-brk-open-0").await;
    assert_eq!(line["attempts"], 1, "{line}");
    assert_eq!(line["provider"], "p2", "{line}");
    assert!(
        breaker_state_becomes(&gw, "p1", p1, 1.0, opened_after + COOLDOWN).await,
        "tollgate_breaker_state never showed p1 open"
    );

    // After the cooldown: half-open. The probe fails: open again.
    assert!(
        breaker_state_becomes(&gw, "p1", p1, 2.0, Instant::now() + QUICK).await,
        "tollgate_breaker_state never showed p1 half-open"
    );
    let reopened_after = Instant::now();
    let r = post(&gw, "fb-brk-probe-1", chat()).await;
    assert_served_by(&r, "p2", "model-two");
    assert_eq!(m1.hits(), 3, "the probe reached p1");
    let line = gw.access_line("fb-brk-probe-1").await;
    assert_eq!(
        attempt_log(&line),
        [
            attempt("p1", p1, "status_5xx"),
            attempt("p2", m2.port(), "success")
        ],
        "{line}"
    );
    let r = post(&gw, "fb-brk-reopened", chat()).await;
    assert_served_by(&r, "p2", "model-two");
    assert!(
        r.done < reopened_after + COOLDOWN,
        "fb-brk-reopened took past the {COOLDOWN:?} cooldown: the machine is too slow for this test"
    );
    assert_eq!(m1.hits(), 3, "a failed probe did not reopen the breaker");

    // The metric shows it open again (it is exported every 100 ms, so it
    // may still read half-open for a moment).
    assert!(
        breaker_state_becomes(&gw, "p1", p1, 1.0, reopened_after + COOLDOWN).await,
        "tollgate_breaker_state never showed p1 open again after a failed probe"
    );

    // p1 recovers. After the next cooldown the probe succeeds and closes it.
    m1.set_behavior(Behavior::ChatEcho);
    assert!(
        breaker_state_becomes(&gw, "p1", p1, 2.0, Instant::now() + QUICK).await,
        "tollgate_breaker_state never showed p1 half-open again"
    );
    let (h1, h2) = (m1.hits(), m2.hits());
    let r = post(&gw, "fb-brk-probe-2", chat()).await;
    assert_served_by(&r, "p1", "model-one");
    assert_eq!(
        (m1.hits(), m2.hits()),
        (h1 + 1, h2),
        "the probe was served by p1"
    );
    assert!(
        breaker_state_becomes(&gw, "p1", p1, 0.0, Instant::now() + QUICK).await,
        "tollgate_breaker_state never showed p1 closed after a good probe"
    );
    // Closed: every request goes to p1 again.
    for i in 0..3 {
        let r = post(&gw, &format!("fb-brk-closed-{i}"), chat()).await;
        assert_served_by(&r, "p1", "model-one");
    }
    assert_eq!(
        (m1.hits(), m2.hits()),
        (h1 + 4, h2),
        "closed: p1 serves alone"
    );
}

// ---------------------------------------------------------------------------
// 9. Large bodies
// ---------------------------------------------------------------------------

/// A chat body of exactly `len` bytes whose content is a varied pattern.
fn body_of_len(len: usize) -> String {
    let head = format!(r#"{{"model":"{ALIAS}","messages":[{{"role":"user","content":""#);
    let tail = r#""}]}"#;
    let n = len - head.len() - tail.len();
    let alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ .,;";
    let mut s = String::with_capacity(len);
    s.push_str(&head);
    s.extend((0..n).map(|i| alphabet[(i * 7 + i / 977) % alphabet.len()] as char));
    s.push_str(tail);
    assert_eq!(s.len(), len);
    s
}

/// Fallback is not limited to Pingora's 64 KiB retry buffer: for bodies of
/// 64 KiB + 1 and 8 MiB, route 2 receives the whole body, intact, with its
/// own model.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallback_resends_large_bodies_intact() {
    let m1 = MockUpstream::start(Behavior::json(503, r#"{"error":"busy"}"#)).await;
    let m2 = MockUpstream::start(Behavior::ChatEcho).await;
    let gw = Gateway::start(&config(
        "",
        &[
            provider("p1", &[m1.port()], ""),
            provider("p2", &[m2.port()], ""),
        ],
        &[route("p1", "model-one", ""), route("p2", "model-two", "")],
    ))
    .await;
    for (i, len) in [64 * 1024 + 1, 8 * 1024 * 1024].into_iter().enumerate() {
        let body = body_of_len(len);
        let rid = format!("fb-big-{len}");
        let r = post(&gw, &rid, body.clone()).await;
        assert_served_by(&r, "p2", "model-two");
        assert_eq!((m1.hits(), m2.hits()), (i + 1, i + 1), "{len} bytes");
        for (m, model) in [(&m1, "model-one"), (&m2, "model-two")] {
            let got = m.last().unwrap();
            let want = body.replacen(r#""model":"fb""#, &format!(r#""model":"{model}""#), 1);
            assert_eq!(
                got.body.len(),
                want.len(),
                "{len}-byte body as {model} received: wrong length"
            );
            assert!(
                got.body == want.as_bytes(),
                "{len}-byte body as {model} received: bytes differ (first at {:?})",
                got.body
                    .iter()
                    .zip(want.as_bytes())
                    .position(|(a, b)| a != b)
            );
            assert_eq!(
                got.header("content-length"),
                Some(want.len().to_string()),
                "{model}"
            );
        }
        let line = gw.access_line(&rid).await;
        assert_eq!(line["attempts"], 2, "{line}");
    }
}

// ---------------------------------------------------------------------------
// 10. max_attempts
// ---------------------------------------------------------------------------

/// `max_attempts: 2` caps a chain of four failing routes at two upstream
/// requests, then the last attempt's mapped error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_attempts_caps_the_chain() {
    let mut mocks = Vec::new();
    for _ in 0..4 {
        mocks.push(MockUpstream::start(Behavior::json(503, r#"{"error":"busy"}"#)).await);
    }
    let names = ["p1", "p2", "p3", "p4"];
    let providers: Vec<String> = names
        .iter()
        .zip(&mocks)
        .map(|(n, m)| provider(n, &[m.port()], ""))
        .collect();
    let routes: Vec<String> = names
        .iter()
        .map(|n| route(n, &format!("model-{n}"), ""))
        .collect();
    let gw = Gateway::start(&config("max_attempts: 2", &providers, &routes)).await;
    let r = post(&gw, "fb-cap", chat()).await;
    assert_gateway_error(&r, UPSTREAM_ERROR);
    let hits: Vec<usize> = mocks.iter().map(MockUpstream::hits).collect();
    assert_eq!(hits, [1, 1, 0, 0], "the first two routes, once each");
    let line = gw.access_line("fb-cap").await;
    assert_eq!(line["attempts"], 2, "{line}");
    assert_eq!(
        attempt_log(&line),
        [
            attempt("p1", mocks[0].port(), "status_5xx"),
            attempt("p2", mocks[1].port(), "status_5xx")
        ],
        "{line}"
    );
    assert_eq!(line["status"], 502, "{line}");
    wait_metric(
        &gw,
        "tollgate_retries_total",
        &[("request_model", ALIAS), ("kind", "fallback")],
        1.0,
    )
    .await;
    assert_eq!(
        metric(
            &gw,
            "tollgate_upstream_attempts_total",
            &[("provider", "p3")]
        )
        .await,
        0.0
    );
}

/// A backend's breaker is state that outlives a reload (`runtime::Durable`):
/// opened before a SIGHUP, it is still open after it, and the backend is
/// still skipped without being contacted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_breaker_stays_open_across_a_reload() {
    let m1 = MockUpstream::start(Behavior::json(503, r#"{"error":"down"}"#)).await;
    let m2 = MockUpstream::start(Behavior::ChatEcho).await;
    let gw = Gateway::start(&config(
        "",
        &[
            provider(
                "p1",
                &[m1.port()],
                "breaker: { consecutive_failures: 2, cooldown: 60s }",
            ),
            provider("p2", &[m2.port()], ""),
        ],
        &[route("p1", "model-one", ""), route("p2", "model-two", "")],
    ))
    .await;
    for rid in ["fb-rl-1", "fb-rl-2"] {
        assert_served_by(&post(&gw, rid, chat()).await, "p2", "model-two");
    }
    assert_eq!(m1.hits(), 2);
    let p1 = m1.port();
    assert!(
        breaker_state_becomes(&gw, "p1", p1, 1.0, Instant::now() + QUICK).await,
        "p1 never showed open"
    );
    let reloaded = |t: &str| {
        prom::sample(t, "tollgate_config_reloads_total", &[("result", "success")]).unwrap_or(0.0)
    };
    gw.sighup();
    let deadline = Instant::now() + QUICK;
    while reloaded(&gw.metrics_text().await) < 1.0 {
        assert!(Instant::now() < deadline, "the reload never finished");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let r = post(&gw, "fb-rl-after", chat()).await;
    assert_served_by(&r, "p2", "model-two");
    assert_eq!(m1.hits(), 2, "the reload forgot p1's open breaker");
    assert!(
        breaker_state_becomes(&gw, "p1", p1, 1.0, Instant::now() + QUICK).await,
        "p1 is not shown open after the reload"
    );
}
