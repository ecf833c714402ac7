//! Issue 14, defect 1: absurd `max_tokens` (2^64−1, i64::MAX, 2^63, −1,
//! 1.5, "100"…) on a key with a token budget, a spend budget and a `tpm`
//! limit, against the real gateway, on the memory store and on a real
//! Redis. No counter may wrap, go to 0 or go negative; the huge ones are
//! 429 `insufficient_quota` (their worst case alone is over the budget),
//! the malformed ones 400 naming the field; none reaches the upstream; and
//! a spent budget still refuses a normal request (RELIABILITY row 36).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;
use support::redis as redis_server;

use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::{Behavior, Gateway, MockUpstream};

const KEY: &str = "tg-key-hardening-01";
const ADMIN_KEY: &str = "tg-admin-secret-000001";
const MAX_TOKENS: u64 = 40;
/// Usage the mock reports for every request.
const PROMPT: u64 = 30;
const COMPLETION: u64 = 20;

fn config(port: u16, store: &str) -> String {
    format!(
        r#"
listen: "{{LISTEN}}"
metrics_listen: "{{METRICS}}"
server: {{ pid_file: "{{TMP}}/t.pid", upgrade_sock: "{{TMP}}/u.sock" }}
admin_listen: "{{ADMIN}}"
admin_key: "{ADMIN_KEY}"
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
      - {{ provider: up, model: m1, price: {{ input: 1000, output: 1000 }} }}
keys:
  - name: alice
    key: "{KEY}"
    limits: {{ tpm: 1000000 }}
    budgets: [ {{ tokens: 1000, window: day }}, {{ usd: 1.0, window: day }} ]
"#
    )
}

/// `tokens` at $1000 per million tokens, as the admin API shows it (exact
/// nano-dollars over 1e9).
fn usd(tokens: f64) -> f64 {
    (tokens as u64 * 1_000_000) as f64 / 1e9
}

fn usage_reply() -> Behavior {
    Behavior::json(
        200,
        json!({
            "id": "c1", "object": "chat.completion", "created": 1, "model": "m1",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": PROMPT, "completion_tokens": COMPLETION,
                      "total_tokens": PROMPT + COMPLETION},
        })
        .to_string(),
    )
}

/// A chat body with `field` set to the raw JSON `value`.
fn body_with(field: &str, value: &str) -> String {
    format!(
        r#"{{"model":"m","{field}":{value},"messages":[{{"role":"user","content":"Count the sheep, please."}}]}}"#
    )
}

async fn post(gw: &Gateway, body: String) -> (u16, Value) {
    let resp = support::client()
        .post(gw.url("/v1/chat/completions"))
        .header("authorization", format!("Bearer {KEY}"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("request");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// `used` of each limit, by its `limit` name (`tpm`, `budget_tokens`,
/// `budget_usd`), once no reservation is in flight.
async fn used(admin: &str) -> Vec<(String, f64)> {
    let v: Value = support::client()
        .get(format!("http://{admin}/admin/limits"))
        .header("authorization", format!("Bearer {ADMIN_KEY}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut out: Vec<(String, f64)> = v["limits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["limit"].as_str().unwrap().to_string(),
                r["used"].as_f64().unwrap(),
            )
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Polls until the counters stop moving (settles run just after the
/// response; with Redis, in a task of their own).
async fn settled(admin: &str, want: &[(String, f64)]) -> Vec<(String, f64)> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = used(admin).await;
        if now == want || Instant::now() > deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn absurd_values_never_wrap_a_counter(store: &str) {
    let mock = MockUpstream::start(usage_reply()).await;
    let gw = Gateway::start(&config(mock.port(), store)).await;
    let admin = gw.admin_addr();
    let normal = || body_with("max_tokens", &MAX_TOKENS.to_string());
    assert_eq!(post(&gw, normal()).await.0, 200);
    let real = (PROMPT + COMPLETION) as f64;
    let after_one = vec![
        ("budget_tokens".to_string(), real),
        ("budget_usd".to_string(), usd(real)),
        ("tpm".to_string(), real),
    ];
    assert_eq!(settled(&admin, &after_one).await, after_one);

    let huge = [
        ("max_tokens", "18446744073709551615"),
        ("max_tokens", "9223372036854775807"),
        ("max_tokens", "9223372036854775808"),
        ("max_tokens", "1e300"),
        ("max_completion_tokens", "18446744073709551615"),
        ("max_output_tokens", "9007199254740993"),
        ("n", "18446744073709551615"),
    ];
    for (field, value) in huge {
        let mut b: Value = serde_json::from_str(&body_with(field, value)).unwrap();
        if field == "n" {
            b["max_tokens"] = json!(u64::MAX / 2);
        }
        let (status, err) = post(&gw, b.to_string()).await;
        assert_eq!(status, 429, "{field}: {value}: {err}");
        assert_eq!(err["error"]["code"], "insufficient_quota", "{err}");
        assert_eq!(err["error"]["type"], "insufficient_quota", "{err}");
        assert!(
            err["error"]["message"]
                .as_str()
                .unwrap()
                .contains("this request alone"),
            "{err}"
        );
        assert_eq!(
            used(&admin).await,
            after_one,
            "{field}: {value}: no counter moved, wrapped or went to 0"
        );
    }
    for (field, value) in [
        ("max_tokens", "-1"),
        ("max_tokens", "-9223372036854775808"),
        ("max_tokens", "1.5"),
        ("max_tokens", r#""100""#),
        ("max_tokens", "true"),
        ("max_completion_tokens", "[]"),
        ("n", "0"),
        ("n", "-2"),
    ] {
        let (status, err) = post(&gw, body_with(field, value)).await;
        assert_eq!(status, 400, "{field}: {value}: {err}");
        assert_eq!(err["error"]["code"], "invalid_request", "{err}");
        assert_eq!(err["error"]["param"], field, "{err}");
        assert_eq!(used(&admin).await, after_one, "{field}: {value}");
    }
    assert_eq!(mock.hits(), 1, "no refused request reached the upstream");

    // Spend the token budget (1000) with normal requests: each reserves its
    // prompt estimate plus 40 and really uses 50.
    let mut admitted = 1u64;
    loop {
        let (status, err) = post(&gw, normal()).await;
        if status == 429 {
            assert_eq!(err["error"]["code"], "insufficient_quota", "{err}");
            break;
        }
        assert_eq!(status, 200, "{err}");
        admitted += 1;
        assert!(admitted < 100, "the budget never ran out");
    }
    let spent = admitted as f64 * real;
    let want = vec![
        ("budget_tokens".to_string(), spent),
        ("budget_usd".to_string(), usd(spent)),
        ("tpm".to_string(), spent),
    ];
    let got = settled(&admin, &want).await;
    assert_eq!(got, want);
    assert!((850.0..=1000.0).contains(&spent), "{spent}");
    // Spent: a normal request and an absurd one are both refused, and
    // nothing moved.
    for b in [normal(), body_with("max_tokens", "18446744073709551615")] {
        let (status, err) = post(&gw, b).await;
        assert_eq!(status, 429, "{err}");
        assert_eq!(err["error"]["code"], "insufficient_quota", "{err}");
    }
    assert_eq!(used(&admin).await, want);
    assert_eq!(mock.hits() as u64, admitted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_max_tokens_never_wrap_a_memory_counter() {
    absurd_values_never_wrap_a_counter("memory").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_max_tokens_never_wrap_a_redis_counter() {
    let redis = redis_server::Redis::start();
    let store = format!("{{ redis: {{ url: \"{}\" }} }}", redis.url());
    absurd_values_never_wrap_a_counter(&store).await;
}
