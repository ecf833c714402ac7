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
use tollgate::proxy::endpoint::Endpoint;

const KEY_A: &str = "tg-key-alice-0001";
const MAX_TOKENS: u64 = 40;

/// A `redis-server` on a loopback port, without persistence; killed on drop.
struct Redis {
    child: Option<Child>,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Redis {
    fn start() -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut r = Redis {
            child: None,
            port,
            _dir: tempfile::tempdir().unwrap(),
        };
        r.restart();
        r
    }

    /// Starts (again) on the same port and waits until it answers.
    fn restart(&mut self) {
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
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                use std::io::{Read, Write};
                let _ = s.write_all(b"PING\r\n");
                let mut buf = [0u8; 7];
                if s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n" {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
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

/// Reports usage equal to the reservation of [`body`].
fn exact_usage() -> Behavior {
    let (p, c) = (prompt_estimate(), MAX_TOKENS);
    Behavior::json(
        200,
        json!({
            "id": "c1", "object": "chat.completion", "created": 1, "model": "m1",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c},
        })
        .to_string(),
    )
}

async fn post(gw: &Gateway) -> (u16, String) {
    post_url(gw.url("/v1/chat/completions")).await
}

async fn post_url(url: String) -> (u16, String) {
    let resp = support::client()
        .post(url)
        .header("authorization", format!("Bearer {KEY_A}"))
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_gateways_sharing_redis_admit_exactly_ten_of_200() {
    let redis = Redis::start();
    let mock = MockUpstream::start(exact_usage()).await;
    let r = prompt_estimate() + MAX_TOKENS;
    let alice = format!(", budgets: [ {{ tokens: {}, window: day }} ]", 13 * r);
    let yaml = config(mock.port(), &redis.url(), "fail_closed", &alice);
    let [admin, _] = support::gateway::free_addrs();
    let with_admin =
        format!("{yaml}admin_listen: \"{admin}\"\nadmin_key: \"tg-admin-secret-000001\"\n");
    let gws = [
        Gateway::start(&with_admin).await,
        Gateway::start(&yaml).await,
        Gateway::start(&yaml).await,
    ];
    // One request on each instance first teaches its route the token ratio
    // (1 here), so reservations are exact from then on.
    for gw in &gws {
        assert_eq!(post(gw).await.0, 200);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
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
    // Settled everywhere: the shared budget is exactly spent.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for gw in &gws {
        assert_eq!(post(gw).await, (429, "insufficient_quota".to_string()));
    }
    // The admin API reads the shared counter.
    let limits: Value = support::client()
        .get(format!("http://{admin}/admin/limits"))
        .header("authorization", "Bearer tg-admin-secret-000001")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let row = &limits["limits"][0];
    assert_eq!(row["limit"], "budget_tokens", "{limits}");
    assert_eq!(row["used"].as_f64(), Some((13 * r) as f64), "{limits}");
    assert_eq!(row["remaining"].as_f64(), Some(0.0), "{limits}");
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
    let mock = MockUpstream::start(Behavior::sse(
        support::sse_chat_events("m1", 10),
        Duration::from_millis(100),
    ))
    .await;
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
    let tasks = [stream(&gws[0]), stream(&gws[1]), stream(&gws[0])];
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    statuses.sort();
    assert_eq!(
        statuses,
        vec![200, 200, 429],
        "two slots across both instances"
    );
    // The slots come back once the streams end (the settle is sent just
    // after the response).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let a = stream(&gws[0]);
        let b = stream(&gws[1]);
        let got = (a.await.unwrap(), b.await.unwrap());
        if got == (200, 200) {
            break;
        }
        assert!(Instant::now() < deadline, "slots never freed: {got:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
