//! Key pools (`api_keys`) end to end: the real gateway against a mock
//! upstream that answers by the key it is sent. A 429 on one key moves the
//! request to another key of the same provider with no client-visible
//! error; weights hold over 1,000 requests; per-key limits, refusals and
//! reloads; metrics name keys by name or index, never by the secret.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use support::prom::sum;
use support::{Behavior, Gateway, MockUpstream, Recorded, Reply, CONFIG_HEAD};

const KEY: &str = "tg-pool-key-1";

const OK: &str = r#"{"id":"c1","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}"#;

/// Answers by the provider key: `status` per key (200 when not listed),
/// counting the requests each key received.
struct ByKey {
    status: Mutex<HashMap<String, (u16, Option<&'static str>)>>,
    hits: Mutex<HashMap<String, usize>>,
}

impl ByKey {
    fn new() -> Arc<Self> {
        Arc::new(ByKey {
            status: Mutex::new(HashMap::new()),
            hits: Mutex::new(HashMap::new()),
        })
    }

    fn set(&self, key: &str, status: u16, retry_after: Option<&'static str>) {
        self.status
            .lock()
            .unwrap()
            .insert(format!("Bearer {key}"), (status, retry_after));
    }

    fn hits(&self, key: &str) -> usize {
        *self
            .hits
            .lock()
            .unwrap()
            .get(&format!("Bearer {key}"))
            .unwrap_or(&0)
    }

    fn behavior(self: &Arc<Self>) -> Behavior {
        let me = self.clone();
        Behavior::func(move |r: &Recorded| {
            let auth = r.header("authorization").unwrap_or_default();
            *me.hits.lock().unwrap().entry(auth.clone()).or_default() += 1;
            match me.status.lock().unwrap().get(&auth).copied() {
                None | Some((200, _)) => Reply::json(200, OK),
                Some((status, retry_after)) => {
                    let mut reply = Reply::json(
                        status,
                        r#"{"error":{"message":"Rate limit reached for sk-pool-a","type":"requests"}}"#,
                    );
                    if let Some(ra) = retry_after {
                        reply.headers.push(("retry-after".into(), ra.into()));
                    }
                    reply
                }
            }
        })
    }
}

fn config(port: u16, keys: &str, extra_model: &str) -> String {
    format!(
        r#"{CONFIG_HEAD}providers:
  up:
    kind: openai
    base_url: "http://127.0.0.1:{port}/v1"
    api_keys: {keys}
    health_check: {{ enabled: false }}
  backup:
    kind: openai
    base_url: "http://127.0.0.1:{port}/v1"
    api_key: "sk-backup"
    health_check: {{ enabled: false }}
models:
  chat:
    routes:
      - {{ provider: up, model: m }}
      - {{ provider: backup, model: m }}
{extra_model}keys:
  - {{ name: team, key: "{KEY}" }}
"#
    )
}

async fn chat(gw: &Gateway) -> reqwest::Response {
    support::client()
        .post(gw.url("/v1/chat/completions"))
        .header("authorization", format!("Bearer {KEY}"))
        .json(&json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .expect("request")
}

/// Key `a` answers 429 (Retry-After 60): the request moves to key `b` of
/// the same provider (not to the backup route) and the client sees a 200;
/// while `a` cools, requests go to `b` directly. The metrics name the keys
/// and never show a secret; the access log shows the retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_on_one_key_moves_to_the_next_key_without_a_client_error() {
    let keys = ByKey::new();
    keys.set("sk-pool-a", 429, Some("60"));
    let mock = MockUpstream::start(keys.behavior()).await;
    let gw = Gateway::start(&config(
        mock.port(),
        r#"[ { key: "sk-pool-a", name: a, weight: 1 }, { key: "sk-pool-b", weight: 0 } ]"#,
        "",
    ))
    .await;
    for i in 0..3 {
        let resp = chat(&gw).await;
        assert_eq!(resp.status(), 200, "{}", gw.logs());
        assert_eq!(
            support::header(&resp, "x-tollgate-route").as_deref(),
            Some("up/m")
        );
        let rid = support::header(&resp, "x-request-id").unwrap();
        let line = gw.access_line(&rid).await;
        assert_eq!(line["provider_key"], "1", "{line}");
        if i == 0 {
            let log = line["attempt_log"].as_array().expect("two attempts");
            assert!(log[0].as_str().unwrap().starts_with("up[a]@"), "{line}");
            assert!(log[0].as_str().unwrap().ends_with(":status_429"), "{line}");
        }
    }
    assert_eq!(keys.hits("sk-pool-a"), 1, "a cools for its Retry-After");
    assert_eq!(keys.hits("sk-pool-b"), 3);
    assert_eq!(keys.hits("sk-backup"), 0, "no fallback to the next route");
    gw.wait_metric("tollgate_requests_total", &[("request_model", "chat")], 3.0)
        .await;
    let m = gw.metrics_text().await;
    let attempts = |key: &str, outcome: &str| {
        sum(
            &m,
            "tollgate_provider_key_attempts_total",
            &[("provider", "up"), ("key", key), ("outcome", outcome)],
        )
    };
    assert_eq!(attempts("a", "status_429"), 1.0);
    assert_eq!(attempts("1", "success"), 3.0, "an unnamed key is its index");
    assert_eq!(
        sum(
            &m,
            "tollgate_provider_key_cooldowns_total",
            &[("provider", "up"), ("key", "a"), ("reason", "rate_limited")]
        ),
        1.0
    );
    assert_eq!(
        sum(&m, "tollgate_provider_key_tokens_total", &[("key", "1")]),
        15.0
    );
    assert_eq!(
        sum(
            &m,
            "tollgate_retries_total",
            &[("request_model", "chat"), ("kind", "retry")]
        ),
        1.0
    );
    let logs = gw.logs();
    for secret in ["sk-pool-a", "sk-pool-b"] {
        assert!(!m.contains(secret) && !logs.contains(secret), "{secret}");
    }
}

/// Every key of the pool rate-limited: the request falls back to the next
/// route; with no route left, the client gets the 429 with Retry-After.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_with_every_key_rate_limited_falls_back_to_the_next_route() {
    let keys = ByKey::new();
    keys.set("sk-pool-a", 429, Some("30"));
    keys.set("sk-pool-b", 429, Some("30"));
    let mock = MockUpstream::start(keys.behavior()).await;
    let gw = Gateway::start(&config(
        mock.port(),
        r#"[ { key: "sk-pool-a" }, { key: "sk-pool-b" } ]"#,
        "  solo: { routes: [ { provider: up, model: m } ] }\n",
    ))
    .await;
    let resp = chat(&gw).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        support::header(&resp, "x-tollgate-route").as_deref(),
        Some("backup/m")
    );
    assert_eq!((keys.hits("sk-pool-a"), keys.hits("sk-pool-b")), (1, 1));
    let resp = support::client()
        .post(gw.url("/v1/chat/completions"))
        .header("authorization", format!("Bearer {KEY}"))
        .json(&json!({"model": "solo", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    let ra: u64 = support::header(&resp, "retry-after")
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=30).contains(&ra), "{ra}");
    assert_eq!((keys.hits("sk-pool-a"), keys.hits("sk-pool-b")), (1, 1));
}

/// Weights 3:1 hold over 1,000 requests within 3 points (the picks are a
/// smooth weighted round-robin, so they hold exactly).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_hold_over_1000_requests_within_3_points() {
    let keys = ByKey::new();
    let mock = MockUpstream::start(keys.behavior()).await;
    let gw = Gateway::start(&config(
        mock.port(),
        r#"[ { key: "sk-pool-a", weight: 3 }, { key: "sk-pool-b", weight: 1 } ]"#,
        "",
    ))
    .await;
    let gw = Arc::new(gw);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let gw = gw.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..125 {
                assert_eq!(chat(&gw).await.status(), 200);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let (a, b) = (keys.hits("sk-pool-a"), keys.hits("sk-pool-b"));
    assert_eq!(a + b, 1000);
    let share = a as f64 / 1000.0;
    assert!((share - 0.75).abs() <= 0.03, "a got {a} of 1000");
}

/// A key's own rpm: past it the key is left out (here for the standby key)
/// until its minute has room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_over_its_rpm_is_not_picked() {
    let keys = ByKey::new();
    let mock = MockUpstream::start(keys.behavior()).await;
    let gw = Gateway::start(&config(
        mock.port(),
        r#"[ { key: "sk-pool-a", limits: { rpm: 2 } }, { key: "sk-pool-b", weight: 0 } ]"#,
        "",
    ))
    .await;
    for _ in 0..5 {
        assert_eq!(chat(&gw).await.status(), 200);
    }
    assert_eq!((keys.hits("sk-pool-a"), keys.hits("sk-pool-b")), (2, 3));
}

/// A key the provider refuses (401) is left out and logged by name; the
/// request is served by another key, without an error for the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_key_is_left_out_and_another_key_serves() {
    let keys = ByKey::new();
    keys.set("sk-pool-a", 401, None);
    let mock = MockUpstream::start(keys.behavior()).await;
    let gw = Gateway::start(&config(
        mock.port(),
        r#"[ { key: "sk-pool-a", name: primary }, { key: "sk-pool-b", weight: 0, name: spare } ]"#,
        "",
    ))
    .await;
    for _ in 0..2 {
        assert_eq!(chat(&gw).await.status(), 200);
    }
    assert_eq!((keys.hits("sk-pool-a"), keys.hits("sk-pool-b")), (1, 2));
    assert!(
        gw.wait_log(
            "refused key `primary`",
            support::gateway::ACCESS_LINE_TIMEOUT
        )
        .await
    );
    assert!(!gw.logs().contains("sk-pool-a"));
}

/// A key's cooldown survives a reload that keeps the key (and a key whose
/// secret changed starts afresh); the admin view never shows a key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_key_state_survives_a_reload_when_the_key_is_unchanged() {
    let keys = ByKey::new();
    keys.set("sk-pool-a", 429, Some("120"));
    let mock = MockUpstream::start(keys.behavior()).await;
    let pool = r#"[ { key: "sk-pool-a", name: a }, { key: "sk-pool-b", weight: 0 } ]"#;
    let gw = Gateway::start(&config(mock.port(), pool, "")).await;
    assert_eq!(chat(&gw).await.status(), 200);
    assert_eq!(keys.hits("sk-pool-a"), 1);
    // Reload with one more alias; the pool is unchanged.
    gw.write_config(&config(
        mock.port(),
        pool,
        "  other: { routes: [ { provider: backup, model: m } ] }\n",
    ));
    gw.sighup();
    gw.wait_metric(
        "tollgate_config_reloads_total",
        &[("result", "success")],
        1.0,
    )
    .await;
    for _ in 0..3 {
        assert_eq!(chat(&gw).await.status(), 200);
    }
    assert_eq!(keys.hits("sk-pool-a"), 1, "still cooling after the reload");
    assert_eq!(keys.hits("sk-pool-b"), 4);
    // A renamed key keeps its state too: the state follows the secret.
    gw.write_config(&config(
        mock.port(),
        r#"[ { key: "sk-pool-a", name: renamed }, { key: "sk-pool-b", weight: 0 } ]"#,
        "",
    ));
    gw.sighup();
    gw.wait_metric(
        "tollgate_config_reloads_total",
        &[("result", "success")],
        2.0,
    )
    .await;
    assert_eq!(chat(&gw).await.status(), 200);
    assert_eq!(keys.hits("sk-pool-a"), 1);
}
