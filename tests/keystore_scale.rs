//! 100,000 runtime keys: how long the gateway takes to load them at start
//! and how much memory they use (issue 16: under 2 s and 50 MiB).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;
use support::keystore::{chat, config};
use support::Gateway;
use tollgate::keystore::sql::Conn;
use tollgate::keystore::{migrate, sql};

const KEYS: usize = 100_000;

/// Fills a SQLite key store with `n` keys in 100 teams (each key with an
/// allow-list and an rpm limit, one in ten with a monthly token budget),
/// one secret each; returns a secret of the last key.
fn fill(path: &std::path::Path, n: usize) -> String {
    let mut c = sql::Sqlite::open(path.to_str().unwrap()).unwrap();
    migrate::run(&mut c).unwrap();
    c.batch("BEGIN").unwrap();
    for t in 0..100 {
        c.exec(
            "INSERT INTO teams (name, spec, created_at, updated_at, deleted, seq) VALUES ($1, $2, 0, 0, 0, 1)",
            &[format!("team-{t}").into(), r#"{"limits":{"rpm":100000}}"#.into()],
        )
        .unwrap();
    }
    let mut last = String::new();
    for i in 0..n {
        let name = format!("key-{i:06}");
        let spec = if i % 10 == 0 {
            r#"{"models":["fast"],"limits":{"rpm":600},"budgets":[{"tokens":1000000,"window":"month"}]}"#
        } else {
            r#"{"models":["fast"],"limits":{"rpm":600}}"#
        };
        c.exec(
            "INSERT INTO keys (name, team, spec, expires_at, revoked_at, created_at, updated_at, seq) VALUES ($1, $2, $3, NULL, NULL, 0, 0, 1)",
            &[name.clone().into(), format!("team-{}", i % 100).into(), spec.into()],
        )
        .unwrap();
        let secret = format!("tg-scale-secret-{i:08}");
        let digest: String = tollgate::auth::digest(secret.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        c.exec(
            "INSERT INTO key_secrets (digest, key_name, created_at, valid_until, seq) VALUES ($1, $2, 0, NULL, 1)",
            &[digest.into(), name.into()],
        )
        .unwrap();
        last = secret;
    }
    c.exec("UPDATE change_counter SET seq = 1", &[]).unwrap();
    c.batch("COMMIT").unwrap();
    last
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

fn load_ms(logs: &str) -> u64 {
    let line = logs
        .lines()
        .find(|l| l.contains("loaded in"))
        .expect("the load line");
    let after = line.split("loaded in ").nth(1).unwrap();
    after.split_whitespace().next().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_runtime_keys_load_fast_and_small() {
    let files = tempfile::tempdir().unwrap();
    let (empty, full) = (files.path().join("empty.db"), files.path().join("full.db"));
    fill(&empty, 0);
    let secret = fill(&full, KEYS);
    let start = |db: &std::path::Path| config(&format!("{{ sqlite: \"{}\" }}", db.display()), "");
    let base = Gateway::start(&start(&empty)).await;
    let gw = Gateway::start(&start(&full)).await;
    let http = support::client();
    assert_eq!(chat(&http, &gw, &secret, "fast").await.0, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (rss_base, rss_full) = (rss_kib(base.pid()), rss_kib(gw.pid()));
    let ms = load_ms(&gw.logs());
    let mib = (rss_full.saturating_sub(rss_base)) as f64 / 1024.0;
    println!(
        "{KEYS} runtime keys: loaded in {ms} ms; RSS {rss_full} KiB vs {rss_base} KiB empty: +{mib:.1} MiB"
    );
    assert!(mib < 50.0, "{mib:.1} MiB");
    // Debug builds are several times slower than release: the 2 s target
    // is for release (docs/keys.md has the release figure); a debug build
    // is held to 10 s.
    let limit = if cfg!(debug_assertions) {
        10_000
    } else {
        2_000
    };
    assert!(ms < limit, "{ms} ms");
}
