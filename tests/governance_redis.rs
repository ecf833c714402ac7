//! Governance with the Redis store: several gateway instances sharing one
//! real `redis-server` (started by the test on a free loopback port), and
//! what happens while Redis is down (RELIABILITY rows 34 and 35).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::prom::sample;
use support::{Behavior, Gateway, MockUpstream};
use tollgate::base::endpoint::Endpoint;

const KEY_A: &str = "tg-key-alice-0001";
const MAX_TOKENS: u64 = 40;
/// Generous bound for anything that should be quick (2 shared cores).
const QUICK: Duration = Duration::from_secs(20);

/// A `redis-server` on a loopback port, without persistence; killed on drop.
struct Redis {
    child: Option<Child>,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Redis {
    /// Starts on a free port. The port is found by binding port 0 and
    /// releasing it, so it may be taken before redis-server binds it: then
    /// redis-server exits and this starts again on a fresh port.
    fn start() -> Redis {
        let mut r = Redis {
            child: None,
            port: 0,
            _dir: tempfile::tempdir().unwrap(),
        };
        for _ in 0..5 {
            r.port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            if r.try_start(Duration::from_secs(10)) {
                return r;
            }
        }
        panic!("redis-server did not start on 5 fresh ports");
    }

    /// Starts again on the same port (the gateways' config names it) and
    /// waits until it answers; while the port is still held (say, by the
    /// killed server's last connections), tries again for up to 10 s.
    fn restart(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.try_start(deadline.saturating_duration_since(Instant::now())) {
            assert!(
                Instant::now() < deadline,
                "redis-server did not start again on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Spawns redis-server on `self.port`; true once it answers PING within
    /// `within`, false (the child reaped) if it exits first or never answers.
    fn try_start(&mut self, within: Duration) -> bool {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                &self._dir.path().to_string_lossy(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server (Debian package redis-server)");
        self.child = Some(child);
        let deadline = Instant::now() + within;
        loop {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                // Exited: the port was taken.
                self.child = None;
                return false;
            }
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                // Ours answers, not another test's server on a reused port.
                use std::io::{Read, Write};
                let pid = self.child.as_ref().map_or(0, |c| c.id());
                let want = format!("process_id:{pid}\r\n");
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = s.write_all(b"INFO server\r\n");
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = s.read(&mut buf) {
                    got.extend_from_slice(&buf[..n]);
                    if String::from_utf8_lossy(&got).contains(&want) {
                        return true;
                    }
                }
            }
            if Instant::now() >= deadline {
                self.kill();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

fn body() -> Value {
    json!({
        "model": "m",
        "max_tokens": MAX_TOKENS,
        "messages": [{"role": "user", "content": "Count the sheep, please."}],
    })
}

fn prompt_estimate() -> u64 {
    let b = body().to_string();
    tollgate::accounting::estimate::prompt_tokens("m1", Endpoint::ChatCompletions, b.as_bytes())
}

fn config(port: u16, redis: &str, on_error: &str, alice: &str) -> String {
    format!(
        r#"
listen: "{{LISTEN}}"
metrics_listen: "{{METRICS}}"
server: {{ pid_file: "{{TMP}}/t.pid", upgrade_sock: "{{TMP}}/u.sock" }}
limits_store: {{ redis: {{ url: "{redis}", on_error: {on_error} }} }}
providers:
  up:
    kind: openai
    base_url: "http://127.0.0.1:{port}/v1"
    api_key: "sk-up"
    health_check: {{ enabled: false }}
models:
  m:
    routes:
      - {{ provider: up, model: m1, price: {{ input: 1000, output: 1000 }} }}
keys:
  - {{ name: alice, key: "{KEY_A}" {alice} }}
"#
    )
}

/// Reports `completion` completion tokens and the prompt estimate of
/// [`body`] as prompt tokens.
fn usage_of(completion: u64) -> Behavior {
    let p = prompt_estimate();
    Behavior::json(
        200,
        json!({
            "id": "c1", "object": "chat.completion", "created": 1, "model": "m1",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": p, "completion_tokens": completion,
                      "total_tokens": p + completion},
        })
        .to_string(),
    )
}

/// Reports usage equal to the reservation of [`body`].
fn exact_usage() -> Behavior {
    usage_of(MAX_TOKENS)
}

async fn post(gw: &Gateway) -> (u16, String) {
    post_url(gw.url("/v1/chat/completions")).await
}

async fn post_url(url: String) -> (u16, String) {
    post_as(url, KEY_A).await
}

async fn post_as(url: String, key: &str) -> (u16, String) {
    post_with(&support::client(), url, key).await
}

/// [`post_as`] through `client` (e.g. a gateway's pooled one).
async fn post_with(client: &reqwest::Client, url: String, key: &str) -> (u16, String) {
    let resp = client
        .post(url)
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .body(body().to_string())
        .send()
        .await
        .expect("request");
    let status = resp.status().as_u16();
    let v: Value = resp.json().await.unwrap_or(Value::Null);
    (
        status,
        v["error"]["code"].as_str().unwrap_or_default().to_string(),
    )
}

const ADMIN_KEY: &str = "tg-admin-secret-000001";
const KEY_B: &str = "tg-key-bob-00002";

/// The `/admin/limits` row of `limit` for key `name`.
async fn limit_row(gw: &Gateway, name: &str, limit: &str) -> Value {
    let limits: Value = support::client()
        .get(format!("http://{}/admin/limits", gw.admin_addr()))
        .header("authorization", format!("Bearer {ADMIN_KEY}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    limits["limits"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["level"] == "key" && r["name"] == name && r["limit"] == limit)
        .unwrap_or_else(|| panic!("no {limit} row for {name}: {limits}"))
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_gateways_sharing_redis_admit_exactly_ten_of_200() {
    let redis = Redis::start();
    // Usage equal to the reservation makes the admitted count exact, however
    // the 200 requests interleave with the settlements.
    let mock = MockUpstream::start(exact_usage()).await;
    let r = prompt_estimate() + MAX_TOKENS;
    let alice = format!(", budgets: [ {{ tokens: {}, window: day }} ]", 13 * r);
    // bob's budget is far from spent: his requests show the settlement.
    let bob = format!(
        "  - {{ name: bob, key: \"{KEY_B}\", budgets: [ {{ tokens: {}, window: day }} ] }}\n",
        100 * r
    );
    let yaml = config(mock.port(), &redis.url(), "fail_closed", &alice) + &bob;
    let yaml = format!("{yaml}admin_listen: \"{{ADMIN}}\"\nadmin_key: \"{ADMIN_KEY}\"\n");
    let gws = [
        Gateway::start(&yaml).await,
        Gateway::start(&yaml).await,
        Gateway::start(&yaml).await,
    ];
    // One request on each instance first teaches its route the token ratio
    // (1 here), so reservations are exact from then on.
    for gw in &gws {
        assert_eq!(post(gw).await.0, 200);
    }
    // Their settlements are asynchronous: wait until all three are counted.
    let deadline = Instant::now() + Duration::from_secs(10);
    while limit_row(&gws[0], "alice", "budget_tokens").await["used"].as_f64()
        != Some((3 * r) as f64)
    {
        assert!(Instant::now() < deadline, "the warm-up never settled");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let tasks: Vec<_> = (0..200)
        .map(|i| tokio::spawn(post_url(gws[i % 3].url("/v1/chat/completions"))))
        .collect();
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    let ok = results.iter().filter(|(s, _)| *s == 200).count();
    let quota = results
        .iter()
        .filter(|(s, c)| *s == 429 && c == "insufficient_quota")
        .count();
    assert_eq!((ok, quota), (10, 190), "{results:?}");
    assert_eq!(mock.hits(), 13);
    // The shared budget is exactly spent, on every instance.
    for gw in &gws {
        assert_eq!(post(gw).await, (429, "insufficient_quota".to_string()));
    }
    // The admin API of each instance reads the shared counter.
    for gw in &gws {
        let row = limit_row(gw, "alice", "budget_tokens").await;
        assert_eq!(row["used"].as_f64(), Some((13 * r) as f64), "{row}");
        assert_eq!(row["remaining"].as_f64(), Some(0.0), "{row}");
    }

    // Settled everywhere: now the provider reports fewer tokens than each
    // request reserved. One request of bob's through each instance; the
    // shared counter must end at three times the usage, not the reservation
    // (which is what it would hold if an instance never settled).
    let completion = 7;
    mock.set_behavior(usage_of(completion));
    let used = prompt_estimate() + completion;
    assert_ne!(used, r);
    for gw in &gws {
        assert_eq!(post_as(gw.url("/v1/chat/completions"), KEY_B).await.0, 200);
    }
    assert_eq!(mock.hits(), 16);
    let deadline = Instant::now() + Duration::from_secs(10);
    let row = loop {
        let row = limit_row(&gws[2], "bob", "budget_tokens").await;
        if row["used"].as_f64() == Some((3 * used) as f64) || Instant::now() > deadline {
            break row;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        row["used"].as_f64(),
        Some((3 * used) as f64),
        "3 requests of {used} tokens each (reserved {r}): {row}"
    );
    assert_eq!(
        row["remaining"].as_f64(),
        Some((100 * r - 3 * used) as f64),
        "{row}"
    );
}

/// Posts until `want` comes back (Redis reconnects on its own).
async fn until(gw: &Gateway, want: u16, within: Duration) -> (u16, String) {
    let deadline = Instant::now() + within;
    loop {
        let got = post(gw).await;
        if got.0 == want || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_fail_closed_is_503_and_limits_return_with_redis() {
    let mut redis = Redis::start();
    let mock = MockUpstream::start(Behavior::ChatEcho).await;
    let yaml = config(
        mock.port(),
        &redis.url(),
        "fail_closed",
        ", limits: { rpm: 2 }",
    );
    let gw = Gateway::start(&yaml).await;
    assert_eq!(post(&gw).await.0, 200);
    redis.kill();
    let got = post(&gw).await;
    assert_eq!(got, (503, "limits_unavailable".to_string()));
    assert_eq!(post(&gw).await.0, 503);
    let hits = mock.hits();
    assert_eq!(hits, 1, "nothing reaches the upstream while Redis is down");
    redis.restart();
    // Back without restarting the gateway; the new Redis is empty, so two
    // requests fit in the minute and the third is refused.
    assert_eq!(until(&gw, 200, Duration::from_secs(15)).await.0, 200);
    assert_eq!(post(&gw).await.0, 200);
    assert_eq!(post(&gw).await, (429, "rate_limit_exceeded".to_string()));
    let m = gw.metrics_text().await;
    assert!(
        sample(
            &m,
            "tollgate_limit_store_errors_total",
            &[("store", "redis"), ("op", "admit")]
        )
        .unwrap()
            >= 2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_fail_open_admits_counts_and_logs() {
    let mut redis = Redis::start();
    let mock = MockUpstream::start(Behavior::ChatEcho).await;
    let yaml = config(
        mock.port(),
        &redis.url(),
        "fail_open",
        ", limits: { rpm: 2 }",
    );
    let gw = Gateway::start(&yaml).await;
    assert_eq!(post(&gw).await.0, 200);
    assert_eq!(post(&gw).await.0, 200);
    assert_eq!(post(&gw).await.0, 429);
    redis.kill();
    for _ in 0..3 {
        assert_eq!(post(&gw).await.0, 200, "admitted without Redis");
    }
    let m = gw.metrics_text().await;
    assert_eq!(
        sample(&m, "tollgate_limit_fail_open_admissions_total", &[]),
        Some(3.0)
    );
    assert!(gw
        .logs()
        .contains("admitting the request without limits (fail_open)"));
    redis.restart();
    // Enforced again once Redis is back. It restarted empty: the first
    // request counted in Redis is one of the two that fit in the minute.
    let fail_open = |m: &str| sample(m, "tollgate_limit_fail_open_admissions_total", &[]);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let before = fail_open(&gw.metrics_text().await);
        assert_eq!(post(&gw).await.0, 200);
        if fail_open(&gw.metrics_text().await) == before {
            break;
        }
        assert!(Instant::now() < deadline, "Redis never used again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(post(&gw).await.0, 200);
    assert_eq!(post(&gw).await, (429, "rate_limit_exceeded".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrency_is_shared_across_instances_and_freed_at_the_end() {
    let redis = Redis::start();
    // Each stream's events wait for the gate: the streams admitted stay in
    // flight until the test opens it, however slow the machine.
    let gate = support::Gate::new();
    let held = |gate: &support::Gate| {
        let gate = gate.clone();
        let events: Vec<bytes::Bytes> = support::sse_chat_events("m1", 10)
            .into_iter()
            .map(bytes::Bytes::from)
            .collect();
        Behavior::func(move |_| support::Reply {
            status: 200,
            headers: vec![("content-type".into(), "text/event-stream".into())],
            body: support::ReplyBody::Gated(events.clone(), gate.clone()),
        })
    };
    let mock = MockUpstream::start(held(&gate)).await;
    let yaml = config(
        mock.port(),
        &redis.url(),
        "fail_closed",
        ", limits: { concurrency: 2 }",
    );
    let gws = [Gateway::start(&yaml).await, Gateway::start(&yaml).await];
    let stream = |gw: &Gateway| {
        let url = gw.url("/v1/chat/completions");
        let mut b = body();
        b["stream"] = json!(true);
        tokio::spawn(async move {
            let resp = support::client()
                .post(url)
                .header("authorization", format!("Bearer {KEY_A}"))
                .header("content-type", "application/json")
                .body(b.to_string())
                .send()
                .await
                .expect("stream");
            let status = resp.status().as_u16();
            let _ = resp.bytes().await;
            status
        })
    };
    let mut tasks = vec![stream(&gws[0]), stream(&gws[1]), stream(&gws[0])];
    // Two are admitted and held upstream; the third is refused meanwhile.
    assert!(mock.wait_hits(2, QUICK).await, "two streams never started");
    let deadline = Instant::now() + QUICK;
    let refused = loop {
        if let Some(i) = tasks.iter().position(|t| t.is_finished()) {
            break tasks.remove(i);
        }
        assert!(Instant::now() < deadline, "no stream was refused");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        refused.await.unwrap(),
        429,
        "two slots across both instances"
    );
    assert_eq!(mock.hits(), 2);
    gate.open(1000);
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    // The slots come back once the streams end (the settle is sent just
    // after the response): two new streams, held, are both admitted. A try
    // that still finds a slot taken lets its streams end and tries again.
    let deadline = Instant::now() + QUICK;
    loop {
        // A fresh (closed) gate per try, so both streams are in flight at
        // once whenever both were admitted.
        let gate = support::Gate::new();
        mock.set_behavior(held(&gate));
        let hits = mock.hits();
        let (a, b) = (stream(&gws[0]), stream(&gws[1]));
        let both = mock.wait_hits(hits + 2, Duration::from_secs(2)).await;
        gate.open(1000);
        let got = (a.await.unwrap(), b.await.unwrap());
        if both {
            assert_eq!(got, (200, 200));
            break;
        }
        assert!(Instant::now() < deadline, "slots never freed: {got:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The export step reads the active store: a gateway that starts on a
/// Redis whose budget another instance has spent shows the spent budget in
/// `tollgate_budget_remaining` at once, before serving anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budget_gauge_of_a_new_instance_reads_redis() {
    let redis = Redis::start();
    let mock = MockUpstream::start(exact_usage()).await;
    let r = prompt_estimate() + MAX_TOKENS;
    let alice = format!(", budgets: [ {{ tokens: {}, window: day }} ]", 100 * r);
    let yaml = config(mock.port(), &redis.url(), "fail_closed", &alice);
    let first = Gateway::start(&yaml).await;
    assert_eq!(post(&first).await.0, 200);
    let labels = [
        ("level", "key"),
        ("name", "alice"),
        ("unit", "tokens"),
        ("window", "day"),
    ];
    let left = (99 * r) as f64;
    assert_eq!(
        first
            .wait_sample(
                "tollgate_budget_remaining",
                &labels,
                left,
                Duration::from_secs(10)
            )
            .await,
        Some(left)
    );
    let second = Gateway::start(&yaml).await;
    assert_eq!(
        second
            .wait_sample(
                "tollgate_budget_remaining",
                &labels,
                left,
                Duration::from_secs(10)
            )
            .await,
        Some(left),
        "{}",
        second.metrics_text().await
    );
    assert_eq!(mock.hits(), 1, "the second instance served nothing");
}

/// A client sending requests one after another on one connection, with a
/// concurrency limit of 1 on Redis, is never refused its own finished
/// request's slot: the slot's release is sent, and answered, before the
/// connection reads the next request (it used to be sent by a task spawned
/// after the answer, which the next request could overtake).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_requests_on_one_connection_never_meet_their_own_slot() {
    let redis = Redis::start();
    let mock = MockUpstream::start(exact_usage()).await;
    let yaml = config(
        mock.port(),
        &redis.url(),
        "fail_closed",
        ", limits: { concurrency: 1 }",
    );
    let gw = Gateway::start(&yaml).await;
    let client = gw.http();
    for i in 0..60 {
        let (status, code) = post_with(&client, gw.url("/v1/chat/completions"), KEY_A).await;
        assert_eq!(status, 200, "request {i}: {code}");
    }
    assert_eq!(mock.hits(), 60);
}
