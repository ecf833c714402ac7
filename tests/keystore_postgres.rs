//! The key store on a real PostgreSQL server (started by the test on a
//! loopback port in a temporary directory): the admin API, two gateways
//! converging within 1 s under load, the database stopped and restarted
//! under load, and restarts with budgets in Redis.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::keystore::{chat, config, Admin};
use support::postgres::{Postgres, PASSWORD};
use support::Gateway;

fn store(pg: &Postgres) -> String {
    format!("{{ postgres: \"{}\" }}", pg.url_template())
}

async fn gateway(pg: &Postgres, extra: &str) -> Gateway {
    Gateway::start_with_env(&config(&store(pg), extra), &pg.env()).await
}

/// When each request of a load was sent, and its status (0: no answer).
/// Each request of the load: when it was sent, its status (0: no answer),
/// when its answer was read.
type Seen = Arc<Mutex<Vec<(Instant, u16, Instant)>>>;

/// Sends requests with `key` from 4 tasks until `stop`; records when each
/// was sent and its status.
fn load(
    gw: &Gateway,
    key: &str,
    stop: Arc<AtomicBool>,
) -> (Seen, Vec<tokio::task::JoinHandle<()>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let url = gw.url("/v1/chat/completions");
    let tasks = (0..4)
        .map(|_| {
            let (seen, stop, url, key) = (seen.clone(), stop.clone(), url.clone(), key.to_string());
            tokio::spawn(async move {
                let http = support::client();
                while !stop.load(Ordering::Relaxed) {
                    let sent = Instant::now();
                    let r = http
                        .post(&url)
                        .bearer_auth(&key)
                        .timeout(Duration::from_secs(10))
                        .json(&json!({"model": "fast", "messages": [{"role": "user", "content": "hi"}]}))
                        .send()
                        .await;
                    let status = match r {
                        Ok(r) => {
                            let s = r.status().as_u16();
                            let _ = r.bytes().await;
                            s
                        }
                        Err(_) => 0,
                    };
                    seen.lock().unwrap().push((sent, status, Instant::now()));
                }
            })
        })
        .collect();
    (seen, tasks)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_api_on_postgres_never_shows_the_password() {
    let pg = Postgres::start();
    let gw = gateway(&pg, "").await;
    let admin = Admin::of(&gw);
    let http = support::client();
    let (s, _) = admin
        .post(
            "/admin/teams",
            json!({"name": "pg-team", "limits": {"rpm": 100}}),
        )
        .await;
    assert_eq!(s, 201);
    let key = admin
        .create_key(json!({"name": "pg-key", "team": "pg-team", "models": ["fast"]}))
        .await;
    assert_eq!(chat(&http, &gw, &key, "fast").await.0, 200);
    assert_eq!(
        admin.post("/admin/keys", json!({"name": "pg-key"})).await.0,
        409
    );
    let (s, r) = admin
        .post("/admin/keys/pg-key/rotate", json!({"grace": "0s"}))
        .await;
    assert_eq!(s, 200, "{r}");
    let new = r["key"].as_str().unwrap().to_string();
    let (s, v) = chat(&http, &gw, &key, "fast").await;
    assert_eq!(
        s, 401,
        "rotated with no grace: the old secret stops at once: {v}"
    );
    assert_eq!(chat(&http, &gw, &new, "fast").await.0, 200);
    assert_eq!(
        admin.call("DELETE", "/admin/teams/pg-team", None).await.0,
        409
    );
    assert_eq!(
        admin.post("/admin/keys/pg-key/revoke", json!({})).await.0,
        200
    );
    assert_eq!(chat(&http, &gw, &new, "fast").await.0, 401);
    assert_eq!(
        admin.call("DELETE", "/admin/teams/pg-team", None).await.0,
        200
    );
    let (_, a) = admin.get("/admin/audit").await;
    let actions: Vec<&str> = a["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "team.delete",
            "key.revoke",
            "key.rotate",
            "key.create",
            "team.create"
        ],
        "{a}"
    );
    // The password: not in /admin/config, not in the log, not in errors.
    let (_, cfg) = admin.get("/admin/config").await;
    let shown = cfg.to_string();
    assert!(!shown.contains(PASSWORD), "{shown}");
    assert!(shown.contains("[redacted]"), "{shown}");
    assert!(!gw.logs().contains(PASSWORD));
    assert!(!a.to_string().contains(&key) && !a.to_string().contains(&new));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_gateways_on_one_postgres_converge_within_a_second_under_load() {
    let pg = Postgres::start();
    let a = gateway(&pg, "").await;
    let b = gateway(&pg, "").await;
    let (admin_a, http) = (Admin::of(&a), support::client());

    // Created on A: works on B within 1 s.
    let key = admin_a.create_key(json!({"name": "shared"})).await;
    let created = Instant::now();
    let mut seen_at = None;
    while created.elapsed() < Duration::from_secs(5) {
        if chat(&http, &b, &key, "fast").await.0 == 200 {
            seen_at = Some(created.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = seen_at.expect("the key reaches the other instance");
    println!("created on A, admitted on B after {took:?}");
    assert!(took < Duration::from_secs(1), "{took:?}");

    // Revoked on A while B is under load with it: no request B receives
    // more than 1 s after the revocation was answered is admitted.
    let stop = Arc::new(AtomicBool::new(false));
    let (seen, tasks) = load(&b, &key, stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let asked = Instant::now();
    let (s, _) = admin_a.post("/admin/keys/shared/revoke", json!({})).await;
    assert_eq!(s, 200);
    let revoked = Instant::now();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let seen = seen.lock().unwrap();
    let deadline = revoked + Duration::from_secs(1);
    let before = seen.iter().filter(|(_, _, done)| *done < asked).count();
    let late: Vec<_> = seen.iter().filter(|(t, _, _)| *t >= deadline).collect();
    assert!(
        before > 10 && late.len() > 10,
        "load ran: {before} before, {} after",
        late.len()
    );
    // Answered before the revocation was asked for: admitted. (One sent
    // just before it may be read by B after it, and refused.)
    let refused_before: Vec<u16> = seen
        .iter()
        .filter(|(_, s, done)| *done < asked && *s != 200)
        .map(|(_, s, _)| *s)
        .collect();
    assert!(
        refused_before.is_empty(),
        "answered before the revocation, yet not admitted: {refused_before:?}"
    );
    let admitted_late = late.iter().filter(|(_, s, _)| *s != 401).count();
    assert_eq!(admitted_late, 0, "requests not refused after the deadline");
    let last_ok = seen
        .iter()
        .filter(|(_, s, _)| *s == 200)
        .map(|(t, _, _)| t.saturating_duration_since(revoked))
        .max()
        .unwrap_or_default();
    println!("revoked on A; the last request B admitted was sent {last_ok:?} after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_stopped_and_restarted_under_load() {
    let mut pg = Postgres::start();
    let a = gateway(&pg, "").await;
    let b = gateway(&pg, "").await;
    let (admin_a, admin_b, http) = (Admin::of(&a), Admin::of(&b), support::client());
    let key = admin_a.create_key(json!({"name": "steady"})).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while chat(&http, &b, &key, "fast").await.0 != 200 {
        assert!(Instant::now() < deadline, "the key reaches B");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let (seen_a, tasks_a) = load(&a, &key, stop.clone());
    let (seen_b, tasks_b) = load(&b, &key, stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;

    pg.stop();
    // Admin writes get 503 (on both instances), reads still answer.
    let (s, v) = admin_a
        .post("/admin/keys", json!({"name": "during-outage"}))
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (503, Some("key_store_unavailable")),
        "{v}"
    );
    let (s, v) = admin_b
        .post("/admin/teams", json!({"name": "t-outage"}))
        .await;
    assert_eq!(s, 503, "{v}");
    let (s, v) = admin_b.get("/admin/keys/steady").await;
    assert_eq!((s, &v["from_snapshot"]), (200, &json!(true)), "{v}");
    // The metric and a log line say so.
    for gw in [&a, &b] {
        gw.wait_metric("tollgate_key_store_up", &[], 0.0).await;
        assert!(
            gw.wait_log("key store (postgres) unreachable", Duration::from_secs(10))
                .await
        );
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;

    pg.restart();
    // Both catch up without a restart: a write on A works once the database
    // is back, and reaches B.
    let back = Instant::now();
    let fresh = loop {
        let (s, v) = admin_a
            .post("/admin/keys", json!({"name": "after-outage"}))
            .await;
        if s == 201 {
            break v["key"].as_str().unwrap().to_string();
        }
        assert_eq!(s, 503, "{v}");
        assert!(
            back.elapsed() < Duration::from_secs(30),
            "the store came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while chat(&http, &b, &fresh, "fast").await.0 != 200 {
        assert!(Instant::now() < deadline, "B caught up after the outage");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for gw in [&a, &b] {
        gw.wait_metric("tollgate_key_store_up", &[], 1.0).await;
        assert!(
            gw.wait_log("reachable again", Duration::from_secs(10))
                .await
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks_a.into_iter().chain(tasks_b) {
        t.await.unwrap();
    }
    for (name, seen) in [("A", seen_a), ("B", seen_b)] {
        let seen = seen.lock().unwrap();
        let failed = seen.iter().filter(|(_, s, _)| *s != 200).count();
        assert!(seen.len() > 50, "{name}: load ran ({})", seen.len());
        assert_eq!(
            failed,
            0,
            "{name}: {failed} of {} requests failed",
            seen.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn runtime_keys_and_redis_budgets_survive_a_gateway_restart() {
    let pg = Postgres::start();
    let redis = support::redis::Redis::start();
    let extra = format!(
        "limits_store: {{ redis: {{ url: \"{}\" }} }}\n",
        redis.url()
    );
    let gw = gateway(&pg, &extra).await;
    let admin = Admin::of(&gw);
    let http = support::client();
    admin
        .post(
            "/admin/teams",
            json!({"name": "r-team", "budgets": [{"tokens": 10000, "window": "month"}]}),
        )
        .await;
    let key = admin
        .create_key(json!({"name": "r-key", "team": "r-team", "budgets": [{"tokens": 10000, "window": "day"}]}))
        .await;
    for _ in 0..2 {
        assert_eq!(chat(&http, &gw, &key, "fast").await.0, 200);
    }
    // Both settled before the process is killed (a gateway killed before
    // its settle leaves the reservation charged, as it should).
    wait_used(&admin, 30.0).await;
    drop(gw);
    let gw = gateway(&pg, &extra).await;
    let admin = Admin::of(&gw);
    assert_eq!(chat(&http, &gw, &key, "fast").await.0, 200);
    // Settled after the answer is sent: poll until the reservation has
    // become the real usage (3 × 15 tokens).
    wait_used(&admin, 45.0).await;
}

/// Polls r-key's usage view until the key's and the team's `used` are both
/// `want` (settles run after the answer is sent).
async fn wait_used(admin: &Admin, want: f64) {
    let want = vec![("key".to_string(), want), ("team".to_string(), want)];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (s, u) = admin.get("/admin/keys/r-key/usage").await;
        assert_eq!(s, 200, "{u}");
        let used: Vec<(String, f64)> = u["limits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                (
                    l["level"].as_str().unwrap().to_string(),
                    l["used"].as_f64().unwrap(),
                )
            })
            .collect();
        if used == want {
            break;
        }
        assert!(Instant::now() < deadline, "usage: {u}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
