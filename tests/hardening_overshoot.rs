//! Issue 14, defect 2 (RELIABILITY row 41): a provider that counts more
//! prompt tokens than our tokenizer (1.5× and 2.5×, as Anthropic's,
//! Gemini's and Qwen's do against tiktoken). One team with a 4,000-token
//! daily budget, 300 requests 64 at a time, on one gateway (memory store)
//! and on three gateways sharing a real Redis. The tokens admitted (what
//! the provider billed for the requests that got through) must not exceed
//! the budget by more than one request's worth.
//!
//! Each scenario prints its figures (`overshoot: ...`); run with
//! `--nocapture` to see them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;
use support::redis as redis_server;

use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::{Gateway, MockUpstream, Reply, ReplyBody};
use tollgate::base::endpoint::Endpoint;

const KEY: &str = "tg-key-overshoot-01";
const BUDGET: u64 = 4000;
const MAX_TOKENS: u64 = 40;
const REQUESTS: usize = 300;
const AT_A_TIME: usize = 64;

fn config(port: u16, store: &str) -> String {
    format!(
        r#"
listen: "{{LISTEN}}"
metrics_listen: "{{METRICS}}"
server: {{ pid_file: "{{TMP}}/t.pid", upgrade_sock: "{{TMP}}/u.sock" }}
limits_store: {store}
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
      - {{ provider: up, model: qwen-max }}
teams:
  research:
    budgets: [ {{ tokens: {BUDGET}, window: day }} ]
keys:
  - {{ name: alice, key: "{KEY}", team: research }}
"#
    )
}

/// A realistic prompt of a few dozen tokens.
fn body(i: usize) -> String {
    json!({
        "model": "m",
        "max_tokens": MAX_TOKENS,
        "messages": [
            {"role": "system", "content": "You are a careful assistant for an online bookshop."},
            {"role": "user", "content": format!(
                "Order A-{i:05} arrived with one book missing. Where is it and when will it arrive?")},
        ],
    })
    .to_string()
}

/// What the mock billed in all, and the most one request was billed.
#[derive(Default)]
struct Billed {
    total: AtomicU64,
    most: AtomicU64,
}

/// A provider that reports `factor` times our tokenizer's prompt count
/// (and the whole `max_tokens` as completion), after 50 ms so requests
/// overlap.
fn counting_more(factor: f64, billed: Arc<Billed>) -> support::Behavior {
    support::Behavior::func(move |req| {
        let ours = tollgate::accounting::estimate::prompt_tokens(
            "qwen-max",
            Endpoint::ChatCompletions,
            &req.body,
        );
        let prompt = (ours as f64 * factor).ceil() as u64;
        let total = prompt + MAX_TOKENS;
        billed.total.fetch_add(total, Ordering::SeqCst);
        billed.most.fetch_max(total, Ordering::SeqCst);
        let doc = json!({
            "id": "c1", "object": "chat.completion", "created": 1, "model": "qwen-max",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                         "finish_reason": "length"}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": MAX_TOKENS,
                      "total_tokens": total},
        })
        .to_string();
        let (a, b) = doc.split_at(8);
        Reply {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body: ReplyBody::Chunks(
                vec![
                    bytes::Bytes::from(a.to_string()),
                    bytes::Bytes::from(b.to_string()),
                ],
                Duration::from_millis(50),
            ),
        }
    })
}

/// Sends [`REQUESTS`] requests, [`AT_A_TIME`] at once, spread over the
/// gateways; returns how many were admitted.
async fn send_all(urls: &[String]) -> usize {
    let gate = Arc::new(tokio::sync::Semaphore::new(AT_A_TIME));
    let mut tasks = Vec::new();
    for i in 0..REQUESTS {
        let permit = gate.clone().acquire_owned().await.unwrap();
        let url = urls[i % urls.len()].clone();
        tasks.push(tokio::spawn(async move {
            let resp = support::client()
                .post(url)
                .header("authorization", format!("Bearer {KEY}"))
                .header("content-type", "application/json")
                .body(body(i))
                .send()
                .await
                .expect("request");
            let status = resp.status().as_u16();
            let v: Value = resp.json().await.unwrap_or(Value::Null);
            drop(permit);
            if status != 200 {
                assert_eq!(status, 429, "{v}");
                assert_eq!(v["error"]["code"], "insufficient_quota", "{v}");
            }
            status == 200
        }));
    }
    let mut ok = 0;
    for t in tasks {
        ok += usize::from(t.await.unwrap());
    }
    ok
}

async fn overshoot(factor: f64, gateways: usize, store: &str, label: &str) {
    let billed = Arc::new(Billed::default());
    let mock = MockUpstream::start(counting_more(factor, billed.clone())).await;
    let yaml = config(mock.port(), store);
    let mut gws = Vec::new();
    for _ in 0..gateways {
        gws.push(Gateway::start(&yaml).await);
    }
    let urls: Vec<String> = gws.iter().map(|g| g.url("/v1/chat/completions")).collect();
    let ok = send_all(&urls).await;
    let total = billed.total.load(Ordering::SeqCst);
    let most = billed.most.load(Ordering::SeqCst);
    eprintln!(
        "overshoot: {label}: provider counts {factor}x: {ok} of {REQUESTS} admitted, \
         {total} tokens admitted against a budget of {BUDGET} ({:+.1}%), one request is at most {most}",
        (total as f64 / BUDGET as f64 - 1.0) * 100.0
    );
    assert_eq!(mock.hits(), ok, "refused requests never reach the upstream");
    assert!(ok > 0);
    assert!(
        total <= BUDGET + most,
        "{label} at {factor}x: {total} tokens admitted, more than {BUDGET} + one request ({most})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_budget_holds_against_a_provider_counting_1_5x() {
    overshoot(1.5, 1, "memory", "memory").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_budget_holds_against_a_provider_counting_2_5x() {
    overshoot(2.5, 1, "memory", "memory").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_gateways_on_redis_hold_the_budget_against_1_5x() {
    let redis = redis_server::Redis::start();
    let store = format!("{{ redis: {{ url: \"{}\" }} }}", redis.url());
    overshoot(1.5, 3, &store, "3 gateways, redis").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_gateways_on_redis_hold_the_budget_against_2_5x() {
    let redis = redis_server::Redis::start();
    let store = format!("{{ redis: {{ url: \"{}\" }} }}", redis.url());
    overshoot(2.5, 3, &store, "3 gateways, redis").await;
}
