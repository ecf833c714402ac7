//! Issue 14, defect 6: Redis concurrency leases are renewed while their
//! request lives, so a stream longer than a lease keeps its slot; a
//! gateway that dies stops renewing, and its slots still expire. The lease
//! is shortened to 1.5 s with `TOLLGATE_TEST_LEASE_MS` (debug builds only),
//! so "longer than a lease" takes seconds, not 15 minutes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;
use support::redis as redis_server;

use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::{Behavior, Gateway, MockUpstream};

const KEY: &str = "tg-key-lease-00001";
const LEASE_MS: u64 = 1500;
/// The stream: 24 events 250 ms apart, four lease lengths in all.
const EVENTS: usize = 24;
const INTERVAL: Duration = Duration::from_millis(250);

fn config(port: u16, redis: &str) -> String {
    format!(
        r#"
listen: "{{LISTEN}}"
metrics_listen: "{{METRICS}}"
server: {{ pid_file: "{{TMP}}/t.pid", upgrade_sock: "{{TMP}}/u.sock" }}
limits_store: {{ redis: {{ url: "{redis}" }} }}
providers:
  up:
    kind: openai
    base_url: "http://127.0.0.1:{port}/v1"
    api_key: "sk-up"
    health_check: {{ enabled: false }}
models:
  m:
    routes:
      - {{ provider: up, model: m1 }}
keys:
  - {{ name: alice, key: "{KEY}", limits: {{ concurrency: 1 }} }}
"#
    )
}

async fn gateway(port: u16, redis: &str) -> Gateway {
    let lease = LEASE_MS.to_string();
    Gateway::start_with_env(
        &config(port, redis),
        &[("TOLLGATE_TEST_LEASE_MS", lease.as_str())],
    )
    .await
}

fn body(stream: bool) -> String {
    json!({"model": "m", "stream": stream, "max_tokens": 5,
           "messages": [{"role": "user", "content": "Count the sheep, please."}]})
    .to_string()
}

async fn send(gw: &Gateway, stream: bool) -> reqwest::Response {
    support::client()
        .post(gw.url("/v1/chat/completions"))
        .header("authorization", format!("Bearer {KEY}"))
        .header("content-type", "application/json")
        .body(body(stream))
        .send()
        .await
        .expect("request")
}

/// A short request's status and error code.
async fn short(gw: &Gateway) -> (u16, String) {
    let resp = send(gw, false).await;
    let status = resp.status().as_u16();
    let v: Value = resp.json().await.unwrap_or(Value::Null);
    (
        status,
        v["error"]["code"].as_str().unwrap_or_default().to_string(),
    )
}

/// Posts until `want` comes back or `within` passes.
async fn until(gw: &Gateway, want: u16, within: Duration) -> (u16, String) {
    let deadline = Instant::now() + within;
    loop {
        let got = short(gw).await;
        if got.0 == want || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_longer_than_its_lease_keeps_its_slot() {
    let redis = redis_server::Redis::start();
    let mock = MockUpstream::start(Behavior::sse(
        support::sse_chat_events("m1", EVENTS),
        INTERVAL,
    ))
    .await;
    let a = gateway(mock.port(), &redis.url()).await;
    let b = gateway(mock.port(), &redis.url()).await;
    let mut stream = send(&a, true).await;
    assert_eq!(stream.status(), 200);
    stream.chunk().await.unwrap();
    let started = Instant::now();
    // More than two lease lengths later the stream is still running, and
    // its slot is still held: the other gateway is refused.
    tokio::time::sleep(Duration::from_millis(2 * LEASE_MS + 500)).await;
    assert_eq!(
        short(&b).await,
        (429, "rate_limit_exceeded".to_string()),
        "the slot expired under a live stream"
    );
    let mut events = 1;
    while stream.chunk().await.unwrap().is_some() {
        events += 1;
    }
    assert!(
        started.elapsed() > Duration::from_millis(2 * LEASE_MS + 500),
        "the stream ended before the check"
    );
    assert!(events > 1);
    drop(stream);
    // Once it ends, the slot is back (renewal never brings a settled
    // lease back).
    assert_eq!(until(&b, 200, Duration::from_secs(10)).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_gateways_slot_still_expires() {
    let redis = redis_server::Redis::start();
    let mock = MockUpstream::start(Behavior::sse(
        support::sse_chat_events("m1", EVENTS),
        INTERVAL,
    ))
    .await;
    let a = gateway(mock.port(), &redis.url()).await;
    let b = gateway(mock.port(), &redis.url()).await;
    let mut stream = send(&a, true).await;
    assert_eq!(stream.status(), 200);
    stream.chunk().await.unwrap();
    // The slot is held across instances…
    assert_eq!(short(&b).await, (429, "rate_limit_exceeded".to_string()));
    // …until its gateway dies without settling: then the lease runs out.
    a.signal("-KILL");
    drop(stream);
    assert_eq!(
        until(&b, 200, Duration::from_secs(20)).await.0,
        200,
        "the dead gateway's slot never expired"
    );
}
