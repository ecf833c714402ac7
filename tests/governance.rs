//! Governance end to end: the real gateway binary in front of a mock
//! upstream, with rate limits, concurrency and budgets at the key, team and
//! model level (memory store). RELIABILITY rows 34 (budgets under
//! concurrency) and the Retry-After / x-ratelimit-* contract.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::prom::{sample, sum};
use support::{Behavior, Gateway, MockUpstream, Reply, ReplyBody};
use tollgate::base::endpoint::Endpoint;

const KEY_A: &str = "tg-key-alice-0001";
const KEY_B: &str = "tg-key-bob-00002";
/// `max_tokens` every test request sets.
const MAX_TOKENS: u64 = 40;

/// A config with provider `up` at `port`, alias `m` routed to `m1` (priced
/// at $1000 per million tokens in and out: 1e-3 USD per token, so every
/// cost is a whole number of nano-dollars), and two keys `alice` and `bob`.
/// `alice` and `bob` take the extra YAML given (fields of the flow map).
fn config(port: u16, alice: &str, bob: &str, extra: &str) -> String {
    format!(
        r#"
listen: "{{LISTEN}}"
metrics_listen: "{{METRICS}}"
server: {{ pid_file: "{{TMP}}/t.pid", upgrade_sock: "{{TMP}}/u.sock" }}
providers:
  up:
    kind: openai
    base_url: "http://127.0.0.1:{port}/v1"
    api_key: "sk-up"
    health_check: {{ enabled: false }}
    retry: {{ attempts: 1, on_status: [] }}
    breaker: {{ enabled: false }}
models:
  m:
    routes:
      - {{ provider: up, model: m1, price: {{ input: 1000, output: 1000 }} }}
keys:
  - {{ name: alice, key: "{KEY_A}" {alice} }}
  - {{ name: bob, key: "{KEY_B}" {bob} }}
{extra}
"#
    )
}

fn body(stream: bool) -> Value {
    json!({
        "model": "m",
        "stream": stream,
        "max_tokens": MAX_TOKENS,
        "messages": [{"role": "user", "content": "Count the sheep, please."}],
    })
}

/// Tokens the gateway reserves for [`body`]: its prompt estimate plus
/// `max_tokens`.
fn prompt_estimate() -> u64 {
    let b = body(false).to_string();
    tollgate::accounting::estimate::prompt_tokens("m1", Endpoint::ChatCompletions, b.as_bytes())
}

fn reservation() -> u64 {
    prompt_estimate() + MAX_TOKENS
}

/// A chat completion reporting `prompt`/`completion` usage, its body sent
/// in two chunks `delay` apart (so requests overlap).
fn slow_usage(prompt: u64, completion: u64, delay: Duration) -> Behavior {
    Behavior::func(move |_| {
        let doc = json!({
            "id": "c1", "object": "chat.completion", "created": 1, "model": "m1",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                      "total_tokens": prompt + completion},
        })
        .to_string();
        let (a, b) = doc.split_at(10);
        Reply {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body: ReplyBody::Chunks(
                vec![
                    bytes::Bytes::from(a.to_string()),
                    bytes::Bytes::from(b.to_string()),
                ],
                delay,
            ),
        }
    })
}

/// A stream of `n` content events, `interval` apart.
fn slow_stream(n: usize, interval: Duration) -> Behavior {
    Behavior::sse(support::sse_chat_events("m1", n), interval)
}

/// A finished response (the body read in full, so the request completes).
struct Resp {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Resp {
    fn status(&self) -> reqwest::StatusCode {
        reqwest::StatusCode::from_u16(self.status).unwrap()
    }
    fn headers(&self) -> &reqwest::header::HeaderMap {
        &self.headers
    }
}

async fn post(gw: &Gateway, key: &str, body: &Value) -> Resp {
    let resp = send(gw, key, body).await;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.expect("response body");
    Resp {
        status,
        headers,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
    }
}

/// Sends without reading the body (streams).
async fn send(gw: &Gateway, key: &str, body: &Value) -> reqwest::Response {
    gw.http()
        .post(gw.url("/v1/chat/completions"))
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap_or_else(|e| panic!("request failed: {e}; log:\n{}", gw.logs()))
}

async fn error_code(resp: Resp) -> String {
    resp.body["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn header(resp: &Resp, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
}

/// Fires `n` requests at once; returns the status and error code of each.
async fn burst(gw: &Gateway, key: &str, n: usize, stream: bool) -> Vec<(u16, String)> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let url = gw.url("/v1/chat/completions");
            let key = key.to_string();
            tokio::spawn(async move {
                let resp = support::client()
                    .post(url)
                    .header("authorization", format!("Bearer {key}"))
                    .header("content-type", "application/json")
                    .body(body(stream).to_string())
                    .send()
                    .await
                    .expect("burst request");
                let status = resp.status().as_u16();
                let text = resp.text().await.unwrap_or_default();
                let code = serde_json::from_str::<Value>(&text)
                    .ok()
                    .and_then(|v| v["error"]["code"].as_str().map(String::from))
                    .unwrap_or_default();
                (status, code)
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// One request of alice's, settled, before a burst: the route learns its
/// prompt-token ratio (a cold route reserves elastically, see
/// `governance::ratio`).
async fn warm_up(gw: &Gateway) {
    assert_eq!(post(gw, KEY_A, &body(false)).await.status, 200);
    assert_eq!(outstanding_after_settling(gw).await, 0.0);
}

/// `tollgate_limit_reservations_outstanding`, once the last requests'
/// logging phase (which settles) has run.
async fn outstanding_after_settling(gw: &Gateway) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let m = gw.metrics_text().await;
        let v = sample(&m, "tollgate_limit_reservations_outstanding", &[]).unwrap();
        if v == 0.0 || Instant::now() > deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn count(results: &[(u16, String)], status: u16, code: &str) -> usize {
    results
        .iter()
        .filter(|(s, c)| *s == status && c == code)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn token_budget_for_ten_admits_exactly_ten_of_200_concurrent() {
    let r = reservation();
    let mock = MockUpstream::start(slow_usage(
        prompt_estimate(),
        MAX_TOKENS,
        Duration::from_millis(50),
    ))
    .await;
    let alice = format!(", budgets: [ {{ tokens: {}, window: day }} ]", 11 * r);
    let gw = Gateway::start(&config(mock.port(), &alice, "", "")).await;
    // One request first teaches the route its token ratio (1: the mock
    // counts like the tokenizer), so reservations are exact from then on.
    warm_up(&gw).await;
    let results = burst(&gw, KEY_A, 200, false).await;
    assert_eq!(count(&results, 200, ""), 10, "{results:?}");
    assert_eq!(
        count(&results, 429, "insufficient_quota"),
        190,
        "{results:?}"
    );
    assert_eq!(
        mock.hits(),
        11,
        "rejected requests never reach the upstream"
    );
    let m = gw.metrics_text().await;
    assert_eq!(
        sample(
            &m,
            "tollgate_limit_rejections_total",
            &[("level", "key"), ("reason", "budget_tokens")]
        ),
        Some(190.0)
    );
    assert_eq!(
        sample(
            &m,
            "tollgate_budget_remaining",
            &[
                ("level", "key"),
                ("name", "alice"),
                ("unit", "tokens"),
                ("window", "day")
            ]
        ),
        Some(0.0)
    );
    assert_eq!(outstanding_after_settling(&gw).await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn spend_below_the_reservation_releases_the_rest_for_more_requests() {
    // Each request reserves R tokens (R * 1e-3 USD) and really uses R / 2.
    let r = reservation();
    let half = r / 2;
    assert!(
        half > prompt_estimate(),
        "the test needs MAX_TOKENS > prompt"
    );
    let used = if r.is_multiple_of(2) { half } else { half + 1 };
    let mock = MockUpstream::start(slow_usage(
        prompt_estimate(),
        used - prompt_estimate(),
        Duration::from_millis(1500),
    ))
    .await;
    let budget_usd = (10 * r + used) as f64 * 1e-3;
    let alice = format!(", budgets: [ {{ usd: {budget_usd}, window: month }} ]");
    let gw = Gateway::start(&config(mock.port(), &alice, "", "")).await;
    warm_up(&gw).await;
    // All 200 arrive while the first 10 are still running: 10 fit.
    let results = burst(&gw, KEY_A, 200, false).await;
    assert_eq!(count(&results, 200, ""), 10, "{results:?}");
    assert_eq!(count(&results, 429, "insufficient_quota"), 190);
    mock.set_behavior(slow_usage(
        prompt_estimate(),
        used - prompt_estimate(),
        Duration::from_millis(1),
    ));
    // Now 10 * used is spent; one at a time, each fits while a whole
    // reservation does.
    let mut more = 0;
    let mut spent = 11 * used;
    loop {
        // Settled (in the logging phase, just after the response) first.
        assert_eq!(outstanding_after_settling(&gw).await, 0.0);
        let resp = post(&gw, KEY_A, &body(false)).await;
        if resp.status().as_u16() == 429 {
            assert_eq!(error_code(resp).await, "insufficient_quota");
            break;
        }
        assert_eq!(resp.status().as_u16(), 200);
        more += 1;
        spent += used;
        assert!(more < 100);
    }
    let mut expect_more = 0;
    let mut s = 11 * used;
    while s + r <= 10 * r + used {
        expect_more += 1;
        s += used;
    }
    assert_eq!(more, expect_more, "released remainders admit more requests");
    assert_eq!(outstanding_after_settling(&gw).await, 0.0);
    let m = gw.metrics_text().await;
    let remaining = sample(
        &m,
        "tollgate_budget_remaining",
        &[("level", "key"), ("name", "alice"), ("unit", "usd")],
    )
    .unwrap();
    let want = budget_usd - spent as f64 * 1e-3;
    assert!((remaining - want).abs() < 1e-9, "{remaining} vs {want}");
    let cost = sum(&m, "tollgate_cost_usd_total", &[("key", "alice")]);
    assert!(
        (cost - spent as f64 * 1e-3).abs() < 1e-9,
        "spend charged equals the real usage: {cost}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpm_admits_the_limit_then_429_with_retry_after_and_headers() {
    let mock = MockUpstream::start(Behavior::ChatEcho).await;
    let gw = Gateway::start(&config(
        mock.port(),
        ", limits: { rpm: 3, tpm: 100000 }",
        "",
        "",
    ))
    .await;
    let start = Instant::now();
    for left in [2, 1, 0] {
        let resp = post(&gw, KEY_A, &body(false)).await;
        assert_eq!(resp.status().as_u16(), 200);
        assert_eq!(
            header(&resp, "x-ratelimit-limit-requests").as_deref(),
            Some("3")
        );
        assert_eq!(
            header(&resp, "x-ratelimit-remaining-requests"),
            Some(left.to_string())
        );
        let reset = header(&resp, "x-ratelimit-reset-requests").unwrap();
        assert!(reset.ends_with('s'), "{reset}");
        assert_eq!(
            header(&resp, "x-ratelimit-limit-tokens").as_deref(),
            Some("100000")
        );
        let tokens_left: i64 = header(&resp, "x-ratelimit-remaining-tokens")
            .unwrap()
            .parse()
            .unwrap();
        assert!(tokens_left < 100000 && tokens_left > 99000, "{tokens_left}");
    }
    let resp = post(&gw, KEY_A, &body(false)).await;
    assert_eq!(resp.status().as_u16(), 429);
    let retry: u64 = header(&resp, "retry-after").unwrap().parse().unwrap();
    let elapsed = start.elapsed().as_secs();
    assert!(
        retry <= 60 && retry + elapsed + 2 >= 60,
        "retry-after {retry} s after {elapsed} s"
    );
    assert_eq!(
        header(&resp, "x-ratelimit-remaining-requests").as_deref(),
        Some("0")
    );
    assert_eq!(error_code(resp).await, "rate_limit_exceeded");
    assert_eq!(mock.hits(), 3);
    // Another key is not affected.
    assert_eq!(post(&gw, KEY_B, &body(false)).await.status().as_u16(), 200);
    let m = gw.metrics_text().await;
    assert_eq!(
        sample(
            &m,
            "tollgate_limit_rejections_total",
            &[("level", "key"), ("reason", "rpm")]
        ),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrency_three_gives_one_429_to_four_slow_streams() {
    let mock = MockUpstream::start(slow_stream(10, Duration::from_millis(150))).await;
    let gw = Gateway::start(&with_admin(
        &config(mock.port(), ", limits: { concurrency: 3 }", "", ""),
        "{ADMIN}",
    ))
    .await;
    let addr = gw.admin_addr();
    let results = burst(&gw, KEY_A, 4, true).await;
    assert_eq!(count(&results, 200, ""), 3, "{results:?}");
    assert_eq!(
        count(&results, 429, "rate_limit_exceeded"),
        1,
        "{results:?}"
    );
    // All slots are back (a slot is released as the request is logged,
    // which can be just after the client read the last byte): three more fit.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, l) = admin(&addr, "GET", "/admin/limits", Some(ADMIN_KEY)).await;
        let used = l["limits"]
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["limit"] == "concurrency"))
            .and_then(|r| r["used"].as_f64());
        if used == Some(0.0) {
            break;
        }
        assert!(Instant::now() < deadline, "slots still held: {l}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let results = burst(&gw, KEY_A, 3, true).await;
    assert_eq!(count(&results, 200, ""), 3, "{results:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_slot_is_freed_when_the_client_disconnects() {
    let mock = MockUpstream::start(slow_stream(600, Duration::from_millis(50))).await;
    let gw = Gateway::start(&config(mock.port(), ", limits: { concurrency: 1 }", "", "")).await;
    let mut first = send(&gw, KEY_A, &body(true)).await;
    assert_eq!(first.status().as_u16(), 200);
    first.chunk().await.unwrap().expect("a first event");
    let busy = post(&gw, KEY_A, &body(true)).await;
    assert_eq!(busy.status().as_u16(), 429);
    assert_eq!(header(&busy, "retry-after").as_deref(), Some("1"));
    drop(first);
    assert!(mock.wait_cancelled(1, Duration::from_secs(10)).await);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let resp = post(&gw, KEY_A, &body(false)).await;
        if resp.status().as_u16() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the slot was never freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn team_rejection_leaves_the_key_budget_untouched() {
    // alice and bob share team `t` (one request at a time). alice's own
    // budget covers exactly one request.
    let r = reservation();
    let mock = MockUpstream::start(slow_stream(20, Duration::from_millis(100))).await;
    let alice = format!(", team: t, budgets: [ {{ tokens: {r}, window: hour }} ]");
    let gw = Gateway::start(&config(
        mock.port(),
        &alice,
        ", team: t",
        "teams:\n  t:\n    limits: { concurrency: 1 }\n",
    ))
    .await;
    let mut bobs = send(&gw, KEY_B, &body(true)).await;
    assert_eq!(bobs.status().as_u16(), 200);
    bobs.chunk().await.unwrap();
    let resp = post(&gw, KEY_A, &body(false)).await;
    assert_eq!(resp.status().as_u16(), 429);
    assert_eq!(error_code(resp).await, "rate_limit_exceeded");
    let m = gw.metrics_text().await;
    assert_eq!(
        sample(
            &m,
            "tollgate_budget_remaining",
            &[("level", "key"), ("name", "alice"), ("unit", "tokens")]
        ),
        Some(r as f64),
        "the team's refusal reserved nothing at the key"
    );
    assert_eq!(
        sample(
            &m,
            "tollgate_limit_rejections_total",
            &[("level", "team"), ("reason", "concurrency")]
        ),
        Some(1.0)
    );
    while bobs.chunk().await.unwrap().is_some() {}
    drop(bobs);
    // The team slot is back, and alice's budget still covers her request.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let resp = post(&gw, KEY_A, &body(false)).await;
        if resp.status().as_u16() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "alice never admitted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let resp = post(&gw, KEY_A, &body(false)).await;
    assert_eq!(resp.status().as_u16(), 429);
    assert_eq!(error_code(resp).await, "insufficient_quota");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_tpm_caps_every_caller_together() {
    let r = reservation();
    let mock = MockUpstream::start(Behavior::ChatEcho).await;
    let yaml = config(mock.port(), "", "", "").replace(
        "models:\n  m:\n",
        &format!("models:\n  m:\n    limits: {{ tpm: {} }}\n", 2 * r),
    );
    let gw = Gateway::start(&yaml).await;
    // ChatEcho reports 8 tokens: after both settle, the minute holds 16
    // (or, before they settle, their reservations: more).
    assert_eq!(post(&gw, KEY_A, &body(false)).await.status().as_u16(), 200);
    assert_eq!(post(&gw, KEY_B, &body(false)).await.status().as_u16(), 200);
    // A request that fits the model's tpm alone (its reservation is 8 under
    // it), but not on top of the two callers' 16 tokens.
    let mut big = body(false);
    big["max_tokens"] = json!(2 * r - 8 - prompt_estimate());
    // The control: on a fresh gateway with the same limits, it is admitted.
    let fresh = Gateway::start(&yaml).await;
    assert_eq!(
        post(&fresh, KEY_B, &big).await.status().as_u16(),
        200,
        "the big request does not fit the model's tpm alone"
    );
    let resp = post(&gw, KEY_B, &big).await;
    assert_eq!(resp.status().as_u16(), 429);
    let retry: u64 = header(&resp, "retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(error_code(resp).await, "rate_limit_exceeded");
    let m = gw.metrics_text().await;
    assert_eq!(
        sample(
            &m,
            "tollgate_limit_rejections_total",
            &[("level", "model"), ("reason", "tpm")]
        ),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spend_survives_a_graceful_restart_and_still_rejects() {
    let r = reservation();
    let state = tempfile::tempdir().unwrap();
    let state_file = state.path().join("budgets.json");
    let (_mock, yaml) = two_request_budget(&state_file, "10s").await;
    let yaml = with_admin(&yaml, "{ADMIN}");
    let mut gw = Gateway::start(&yaml).await;
    for _ in 0..2 {
        assert_eq!(post(&gw, KEY_A, &body(false)).await.status().as_u16(), 200);
    }
    gw.sigterm();
    let status = gw
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("stopped");
    assert!(status.success(), "{status:?}");
    assert!(state_file.exists(), "saved at graceful stop");
    drop(gw);
    let gw = Gateway::start(&yaml).await;
    let resp = post(&gw, KEY_A, &body(false)).await;
    assert_eq!(resp.status().as_u16(), 429, "the spend was restored");
    let retry: u64 = header(&resp, "retry-after").unwrap().parse().unwrap();
    assert!((1..=31 * 86_400).contains(&retry), "{retry}");
    assert_eq!(error_code(resp).await, "insufficient_quota");
    let m = gw.metrics_text().await;
    assert_eq!(
        sample(
            &m,
            "tollgate_budget_remaining",
            &[("level", "key"), ("name", "alice"), ("unit", "usd")]
        ),
        Some(0.0)
    );
    // bob has no budget and is not affected.
    assert_eq!(post(&gw, KEY_B, &body(false)).await.status().as_u16(), 200);
    // The admin API's usage came back with the budgets.
    let (status, u) = admin(
        &gw.admin_addr(),
        "GET",
        "/admin/usage?key=alice&window=month",
        Some(ADMIN_KEY),
    )
    .await;
    assert_eq!(status, 200);
    let row = &u["usage"][0];
    assert_eq!(row["current"]["requests"], 2, "{u}");
    assert_eq!(row["current"]["tokens"], 2 * r, "{u}");
}

/// An upstream reporting exactly the reservation, and a config whose key
/// alice has a monthly spend budget of two requests, saved to `state_file`
/// every `interval`.
async fn two_request_budget(
    state_file: &std::path::Path,
    interval: &str,
) -> (MockUpstream, String) {
    let mock = MockUpstream::start(slow_usage(
        prompt_estimate(),
        MAX_TOKENS,
        Duration::from_millis(1),
    ))
    .await;
    let alice = format!(
        ", budgets: [ {{ usd: {}, window: month }} ]",
        2.0 * reservation() as f64 * 1e-3
    );
    let extra = format!(
        "state_file: \"{}\"\nstate_interval: {interval}\n",
        state_file.display()
    );
    let yaml = config(mock.port(), &alice, "", &extra);
    (mock, yaml)
}

/// SIGINT stops at once (streams in flight are cut), but the spend since
/// the last `state_interval` tick is still saved on the way out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spend_survives_a_fast_stop_on_sigint() {
    let state = tempfile::tempdir().unwrap();
    let state_file = state.path().join("budgets.json");
    // The interval's first save is at start, the next in an hour: only
    // the exit can save the two requests.
    let (_mock, yaml) = two_request_budget(&state_file, "1h").await;
    let mut gw = Gateway::start(&yaml).await;
    for _ in 0..2 {
        assert_eq!(post(&gw, KEY_A, &body(false)).await.status().as_u16(), 200);
    }
    assert_eq!(outstanding_after_settling(&gw).await, 0.0);
    gw.sigint();
    let status = gw
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("stopped");
    assert!(status.success(), "{status:?}");
    drop(gw);
    let gw = Gateway::start(&yaml).await;
    let resp = post(&gw, KEY_A, &body(false)).await;
    assert_eq!(resp.status().as_u16(), 429, "the spend was lost at SIGINT");
    assert_eq!(error_code(resp).await, "insufficient_quota");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_survive_a_reload_for_keys_that_still_exist() {
    let mock = MockUpstream::start(Behavior::ChatEcho).await;
    let yaml = config(mock.port(), ", limits: { rpm: 2 }", "", "");
    let gw = Gateway::start(&yaml).await;
    for _ in 0..2 {
        assert_eq!(post(&gw, KEY_A, &body(false)).await.status().as_u16(), 200);
    }
    // A new reload: bob gains a limit, alice's stays.
    gw.write_config(&config(
        mock.port(),
        ", limits: { rpm: 2 }",
        ", limits: { rpm: 5 }",
        "",
    ));
    gw.sighup();
    assert!(
        gw.wait_log("config reloaded", Duration::from_secs(10))
            .await,
        "{}",
        gw.logs()
    );
    let resp = post(&gw, KEY_A, &body(false)).await;
    assert_eq!(resp.status().as_u16(), 429, "alice's minute was kept");
    assert_eq!(error_code(resp).await, "rate_limit_exceeded");
    let resp = post(&gw, KEY_B, &body(false)).await;
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        header(&resp, "x-ratelimit-remaining-requests").as_deref(),
        Some("4")
    );
}

const ADMIN_KEY: &str = "tg-admin-secret-000001";

async fn admin(addr: &str, method: &str, path: &str, key: Option<&str>) -> (u16, Value) {
    let url = format!("http://{addr}{path}");
    let mut req = match method {
        "POST" => support::client().post(url),
        _ => support::client().get(url),
    };
    if let Some(k) = key {
        req = req.header("authorization", format!("Bearer {k}"));
    }
    let resp = req.send().await.expect("admin request");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn with_admin(yaml: &str, addr: &str) -> String {
    format!("{yaml}admin_listen: \"{addr}\"\nadmin_key: \"{ADMIN_KEY}\"\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_needs_the_admin_key_and_redacts_secrets() {
    let mock = MockUpstream::start(Behavior::ChatEcho).await;
    let yaml = with_admin(
        &config(
            mock.port(),
            ", team: t, limits: { rpm: 50 }",
            "",
            "teams:\n  t:\n    budgets: [ { usd: 5, window: day } ]\n",
        ),
        "{ADMIN}",
    );
    let gw = Gateway::start(&yaml).await;
    let addr = gw.admin_addr();
    // docs/config.md: without the admin key every endpoint answers 401
    // `invalid_admin_key`, and no gateway key opens it.
    let refused = (401, "admin_error", "invalid_admin_key");
    for (method, path) in [
        ("GET", "/admin/usage"),
        ("GET", "/admin/limits"),
        ("GET", "/admin/config"),
        ("POST", "/admin/reload"),
    ] {
        for key in [None, Some(KEY_A), Some(KEY_B)] {
            let (status, v) = admin(&addr, method, path, key).await;
            support::assert_error(status, v.to_string().as_bytes(), refused);
        }
    }
    let (status, cfg) = admin(&addr, "GET", "/admin/config", Some(ADMIN_KEY)).await;
    assert_eq!(status, 200);
    let text = cfg.to_string();
    for secret in ["sk-up", KEY_A, KEY_B, ADMIN_KEY] {
        assert!(!text.contains(secret), "{secret} leaked: {text}");
    }
    assert_eq!(cfg["providers"]["up"]["api_key"], "[redacted]");
    assert_eq!(cfg["keys"][0]["key"], "[redacted]");
    assert_eq!(cfg["keys"][0]["limits"]["rpm"], 50);
    assert_eq!(cfg["teams"]["t"]["budgets"][0]["window"], "day");

    // Three requests of 8 tokens (ChatEcho) at 1e-3 USD a token.
    for _ in 0..3 {
        assert_eq!(post(&gw, KEY_A, &body(false)).await.status, 200);
    }
    assert_eq!(post(&gw, KEY_B, &body(false)).await.status, 200);
    assert_eq!(outstanding_after_settling(&gw).await, 0.0);
    let (status, u) = admin(
        &addr,
        "GET",
        "/admin/usage?team=t&window=day",
        Some(ADMIN_KEY),
    )
    .await;
    assert_eq!(status, 200, "{u}");
    let rows = u["usage"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "alice and her team only: {u}");
    for row in rows {
        assert_eq!(row["current"]["requests"], 3, "{row}");
        assert_eq!(row["current"]["tokens"], 24, "{row}");
        let spend = row["current"]["spend_usd"].as_f64().unwrap();
        assert!((spend - 0.024).abs() < 1e-12, "{spend}");
        assert_eq!(row["previous"]["requests"], 0);
    }
    let (_, u) = admin(&addr, "GET", "/admin/usage?window=month", Some(ADMIN_KEY)).await;
    let model = u["usage"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["level"] == "model")
        .unwrap()
        .clone();
    assert_eq!(model["current"]["requests"], 4);
    assert_eq!(
        admin(&addr, "GET", "/admin/usage?window=year", Some(ADMIN_KEY))
            .await
            .0,
        400
    );
    let (_, l) = admin(&addr, "GET", "/admin/limits", Some(ADMIN_KEY)).await;
    let rows = l["limits"].as_array().unwrap();
    let rpm = rows.iter().find(|r| r["limit"] == "rpm").unwrap();
    assert_eq!(
        (rpm["max"].as_f64(), rpm["used"].as_f64()),
        (Some(50.0), Some(3.0))
    );
    let usd = rows.iter().find(|r| r["limit"] == "budget_usd").unwrap();
    assert_eq!(usd["level"], "team");
    assert!(
        (usd["remaining"].as_f64().unwrap() - (5.0 - 0.024)).abs() < 1e-9,
        "{usd}"
    );

    // Reload: the same as SIGHUP, with its outcome.
    let (status, r) = admin(&addr, "POST", "/admin/reload", Some(ADMIN_KEY)).await;
    assert_eq!((status, &r["reloaded"]), (200, &json!(true)), "{r}");
    gw.write_config(&yaml.replace("provider: up", "provider: nope"));
    let (status, r) = admin(&addr, "POST", "/admin/reload", Some(ADMIN_KEY)).await;
    assert_eq!(status, 422);
    assert_eq!(r["reloaded"], false);
    assert!(r["error"].as_str().unwrap().contains("nope"), "{r}");
    assert_eq!(
        post(&gw, KEY_B, &body(false)).await.status,
        200,
        "old config kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_above_the_reservation_is_charged_in_full() {
    // No max_tokens: the alias reserves 10 completion tokens, the upstream
    // really sends 500.
    let p = prompt_estimate();
    let mock = MockUpstream::start(slow_usage(p, 500, Duration::from_millis(1))).await;
    let yaml = config(
        mock.port(),
        ", budgets: [ { tokens: 100000, window: day } ]",
        "",
        "",
    )
    .replace(
        "models:\n  m:\n",
        "models:\n  m:\n    reserve_output_tokens: 10\n",
    );
    let gw = Gateway::start(&yaml).await;
    let mut b = body(false);
    b.as_object_mut().unwrap().remove("max_tokens");
    assert_eq!(post(&gw, KEY_A, &b).await.status, 200);
    assert_eq!(outstanding_after_settling(&gw).await, 0.0);
    let m = gw.metrics_text().await;
    assert_eq!(
        sample(
            &m,
            "tollgate_budget_remaining",
            &[("level", "key"), ("name", "alice"), ("unit", "tokens")]
        ),
        Some((100_000 - p - 500) as f64)
    );
}

/// Waits (up to 10 s) until `state_file` was last written by process `pid`
/// and holds `tokens` tokens for key alice.
async fn wait_state(state_file: &std::path::Path, pid: u32, tokens: u64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v: Value = std::fs::read(state_file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null);
        let held: i64 = v["counters"]
            .as_array()
            .map(|cs| {
                cs.iter()
                    .filter(|c| {
                        c["level"] == "key" && c["name"] == "alice" && c["metric"] == "tokens"
                    })
                    .flat_map(|c| c["buckets"].as_array().cloned().unwrap_or_default())
                    .map(|b| b[1].as_i64().unwrap_or(0))
                    .sum()
            })
            .unwrap_or(0);
        if v["writer_pid"] == pid && held == tokens as i64 {
            return true;
        }
        if Instant::now() > deadline {
            eprintln!("state file: {v}");
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Kills the child on drop.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spend_of_the_old_process_survives_a_graceful_upgrade() {
    let r = reservation();
    let state = tempfile::tempdir().unwrap();
    let state_file = state.path().join("budgets.json");
    let mock = MockUpstream::start(slow_usage(
        prompt_estimate(),
        MAX_TOKENS,
        Duration::from_millis(1),
    ))
    .await;
    let alice = format!(", budgets: [ {{ tokens: {}, window: month }} ]", 3 * r);
    let extra = format!(
        "state_file: \"{}\"\nstate_interval: 200ms\n",
        state_file.display()
    );
    let mut old = Gateway::start(&config(mock.port(), &alice, "", &extra)).await;
    assert_eq!(post(&old, KEY_A, &body(false)).await.status, 200);
    // Wait until the state file holds that request (written every 200 ms).
    assert!(
        wait_state(&state_file, old.pid(), r).await,
        "the old process never saved its first request"
    );
    // The new process reads the state file now, with one request in it.
    let log = std::fs::File::create(old.tmp_dir().join("new.log")).unwrap();
    let _new = Child(
        std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .arg("--config")
            .arg(old.config_path())
            .arg("-u")
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let sock = old.tmp_dir().join("u.sock");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        assert!(Instant::now() < deadline, "the new process never listened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The old process still serves until the hand-over: a second request.
    assert_eq!(post(&old, KEY_A, &body(false)).await.status, 200);
    old.signal("-QUIT");
    assert!(old.wait_exit(Duration::from_secs(15)).await.is_some());
    // The new process takes in what the old one saved last, at its next
    // write of the state file.
    assert!(
        wait_state(&state_file, _new.0.id(), 2 * r).await,
        "the new process never took in the old one's second request"
    );
    assert_eq!(
        post(&old, KEY_A, &body(false)).await.status,
        200,
        "the third fits"
    );
    let resp = post(&old, KEY_A, &body(false)).await;
    assert_eq!(
        resp.status, 429,
        "the old process's second request was kept"
    );
    assert_eq!(error_code(resp).await, "insufficient_quota");
}
