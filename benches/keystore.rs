//! Key lookup through `Runtime::lookup_key` (the request path's one key
//! lookup): a config key, a runtime key from the key store's snapshot
//! (100,000 of them), and an unknown key, with the store enabled.
//!
//!   cargo bench --bench keystore
#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use std::path::Path;
use std::time::Duration;
use tollgate::keystore::sql::{Conn, Sqlite};
use tollgate::runtime::Runtime;

const RUNTIME_KEYS: usize = 100_000;
const CONFIG_KEYS: usize = 1_000;

fn secret(i: usize) -> String {
    format!("tg-bench-runtime-{i:08}")
}

/// A SQLite store with `n` runtime keys (allow-list, an rpm limit).
fn fill(path: &Path, n: usize) {
    let mut c = Sqlite::open(path.to_str().unwrap()).unwrap();
    tollgate::keystore::migrate::run(&mut c).unwrap();
    c.batch("BEGIN").unwrap();
    for i in 0..n {
        let name = format!("rk-{i:06}");
        c.exec(
            "INSERT INTO keys (name, team, spec, expires_at, revoked_at, created_at, updated_at, seq) VALUES ($1, NULL, $2, NULL, NULL, 0, 0, 1)",
            &[name.clone().into(), r#"{"models":["fast"],"limits":{"rpm":600}}"#.into()],
        )
        .unwrap();
        c.exec(
            "INSERT INTO key_secrets (digest, key_name, created_at, valid_until, seq) VALUES ($1, $2, 0, NULL, 1)",
            &[hex::encode(tollgate::auth::digest(secret(i).as_bytes())).into(), name.into()],
        )
        .unwrap();
    }
    c.exec("UPDATE change_counter SET seq = 1", &[]).unwrap();
    c.batch("COMMIT").unwrap();
}

fn lookup(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("keys.db");
    fill(&db, RUNTIME_KEYS);
    let keys: String = (0..CONFIG_KEYS)
        .map(|i| format!("  - {{ name: ck-{i}, key: sk-bench-config-{i:08}, limits: {{ rpm: 600 }}, models: [fast] }}\n"))
        .collect();
    let yaml = format!(
        "listen: \"127.0.0.1:18080\"\nkey_store: {{ sqlite: \"{}\" }}\nproviders: {{ m: {{ kind: mock }} }}\nmodels: {{ fast: {{ routes: [ {{ provider: m, model: x }} ] }} }}\nkeys:\n{keys}",
        db.display()
    );
    let cfg = tollgate::config::parse_str(&yaml, |_| None, Path::new(".")).unwrap();
    let ks = cfg.key_store.clone().unwrap();
    tollgate::keystore::open(&ks, std::sync::Arc::new(cfg.clone())).unwrap();
    let rt = Runtime::build(cfg, &Default::default()).unwrap();
    let config_key = format!("sk-bench-config-{:08}", CONFIG_KEYS / 2).into_bytes();
    let runtime_key = secret(RUNTIME_KEYS / 2).into_bytes();
    assert!(rt.lookup_key(&config_key).is_ok() && rt.lookup_key(&runtime_key).is_ok());
    let mut g = c.benchmark_group("lookup_key");
    g.measurement_time(Duration::from_secs(3));
    for (name, key) in [
        ("config_key", config_key),
        ("runtime_key", runtime_key),
        ("unknown_key", b"tg-not-a-key-00000000".to_vec()),
    ] {
        g.bench_with_input(BenchmarkId::new(name, RUNTIME_KEYS), &key, |b, k| {
            b.iter(|| rt.lookup_key(black_box(k)).is_ok())
        });
    }
    g.finish();
}

criterion_group!(benches, lookup);
criterion_main!(benches);
