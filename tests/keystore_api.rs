//! The key store's admin API end to end on SQLite, against the real binary:
//! keys and teams created, changed, rotated, revoked and expired at
//! runtime; bad input; config keys read-only; the audit log; the OpenAPI
//! document walked against the real routes; the CLI; restarts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::keystore::{chat, config, Admin, ADMIN_KEY, CONFIG_KEY};
use support::Gateway;

fn sqlite() -> &'static str {
    r#"{ sqlite: "{TMP}/keys.db" }"#
}

async fn start() -> Gateway {
    Gateway::start(&config(sqlite(), "")).await
}

fn message(v: &Value) -> String {
    v["error"]["message"].as_str().unwrap_or("").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_and_teams_are_managed_at_runtime_on_sqlite() {
    let gw = start().await;
    let admin = Admin::of(&gw);
    let http = support::client();

    // A team, then a key in it allowed one alias.
    let (s, t) = admin
        .post(
            "/admin/teams",
            json!({"name": "ml", "limits": {"rpm": 1000}, "metadata": {"owner": "ada"}}),
        )
        .await;
    assert_eq!(s, 201, "{t}");
    assert_eq!(t["source"], "store");
    let secret = admin
        .create_key(
            json!({"name": "svc-a", "team": "ml", "models": ["fast"], "metadata": {"env": "prod"}}),
        )
        .await;
    assert!(secret.starts_with("tg-") && secret.len() > 40, "{secret}");
    assert_eq!(chat(&http, &gw, &secret, "fast").await.0, 200);
    let (s, v) = chat(&http, &gw, &secret, "slow").await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (403, Some("model_not_allowed"))
    );
    let models = http
        .get(gw.url("/v1/models"))
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(models["data"].as_array().unwrap().len(), 1, "{models}");

    // Reads never show the secret (nor its digest).
    let (s, k) = admin.get("/admin/keys/svc-a").await;
    assert_eq!(s, 200);
    let shown = k.to_string();
    let digest = hex(&secret);
    assert!(
        !shown.contains(&secret) && !shown.contains(&digest),
        "{shown}"
    );
    assert_eq!(
        (k["team"].as_str(), k["status"].as_str()),
        (Some("ml"), Some("active"))
    );
    let (_, list) = admin.get("/admin/keys").await;
    let names: Vec<&str> = list["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["cfg-key", "svc-a"], "{list}");
    assert!(!list.to_string().contains(&secret));

    // Update: the allow-list widens at once on this instance.
    let (s, v) = admin
        .call(
            "PATCH",
            "/admin/keys/svc-a",
            Some(json!({"models": null, "limits": {"rpm": 500}})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(chat(&http, &gw, &secret, "slow").await.0, 200);

    // Rotate with a grace period: both work, then only the new one, and the
    // old one is told it was rotated.
    let (s, r) = admin
        .post("/admin/keys/svc-a/rotate", json!({"grace": "2s"}))
        .await;
    assert_eq!(s, 200, "{r}");
    let new_secret = r["key"].as_str().unwrap().to_string();
    assert_ne!(new_secret, secret);
    assert_eq!(chat(&http, &gw, &secret, "fast").await.0, 200);
    assert_eq!(chat(&http, &gw, &new_secret, "fast").await.0, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut refused = None;
    while Instant::now() < deadline {
        let (s, v) = chat(&http, &gw, &secret, "fast").await;
        if s == 401 {
            refused = Some(v);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let v = refused.expect("the old secret stops after its grace period");
    assert_eq!(v["error"]["code"], "invalid_api_key");
    assert!(message(&v).contains("rotated"), "{v}");
    assert_eq!(chat(&http, &gw, &new_secret, "fast").await.0, 200);

    // Revoke: refused from the next request, with a message that says so.
    let (s, _) = admin.post("/admin/keys/svc-a/revoke", json!({})).await;
    assert_eq!(s, 200);
    let (s, v) = chat(&http, &gw, &new_secret, "fast").await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (401, Some("invalid_api_key"))
    );
    assert!(message(&v).contains("revoked"), "{v}");
    let (s, v) = admin
        .call("PATCH", "/admin/keys/svc-a", Some(json!({"tier": "gold"})))
        .await;
    assert_eq!(s, 409, "a revoked key cannot change: {v}");
    // An unknown key gets the generic 401: no hint about other keys.
    let (s, v) = chat(&http, &gw, "tg-not-a-key-at-all-000", "fast").await;
    assert_eq!(s, 401);
    assert!(
        !message(&v).contains("revoked") && !message(&v).contains("expired"),
        "{v}"
    );

    // Expiry is checked at lookup time.
    let soon = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 2) as i64;
    let short = admin
        .create_key(json!({"name": "short-lived", "expires_at": soon}))
        .await;
    assert_eq!(chat(&http, &gw, &short, "fast").await.0, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut expired = None;
    while Instant::now() < deadline {
        let (s, v) = chat(&http, &gw, &short, "fast").await;
        if s == 401 {
            expired = Some(v);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(message(&expired.expect("expires")).contains("expired"));

    // Teams: in use → 409; once its keys are revoked it can go.
    let live = admin
        .create_key(json!({"name": "svc-b", "team": "ml"}))
        .await;
    let (s, v) = admin.call("DELETE", "/admin/teams/ml", None).await;
    assert_eq!(s, 409, "{v}");
    assert!(message(&v).contains("svc-b"), "{v}");
    admin.post("/admin/keys/svc-b/revoke", json!({})).await;
    assert_eq!(chat(&http, &gw, &live, "fast").await.0, 401);
    let (s, _) = admin.call("DELETE", "/admin/teams/ml", None).await;
    assert_eq!(s, 200);
    assert_eq!(admin.get("/admin/teams/ml").await.0, 404);

    // The audit log: every write, its actor and fields, never a secret.
    let (s, a) = admin.get("/admin/audit?limit=100").await;
    assert_eq!(s, 200);
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
            "key.create",
            "key.create",
            "key.revoke",
            "key.rotate",
            "key.update",
            "key.create",
            "team.create"
        ],
        "{a}"
    );
    let text = a.to_string();
    for s in [&secret, &new_secret, &short, &live] {
        assert!(
            !text.contains(s.as_str()),
            "a secret in the audit log: {text}"
        );
    }
    let update = &a["entries"][6];
    assert_eq!(update["actor"], "admin_key");
    assert_eq!(update["target"], "svc-a");
    assert_eq!(
        update["changes"],
        json!({"models": null, "limits": {"rpm": 500}})
    );
}

fn hex(secret: &str) -> String {
    use std::fmt::Write;
    let d = tollgate::auth::digest(secret.as_bytes());
    d.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_admin_input_gets_the_right_status_naming_the_field() {
    let gw = start().await;
    let admin = Admin::of(&gw);
    let http = support::client();
    let cases: Vec<(&str, &str, Value, u16, Option<&str>)> = vec![
        (
            "POST",
            "/admin/keys",
            json!({"name": "a", "secret": "x"}),
            400,
            None,
        ),
        ("POST", "/admin/keys", json!({"name": 7}), 400, Some("name")),
        (
            "POST",
            "/admin/keys",
            json!({"name": "a b"}),
            400,
            Some("name"),
        ),
        (
            "POST",
            "/admin/keys",
            json!({"name": "a", "limits": {"rpm": -1}}),
            400,
            Some("limits.rpm"),
        ),
        (
            "POST",
            "/admin/keys",
            json!({"name": "a", "limits": {"rpm": 0}}),
            400,
            Some("limits.rpm"),
        ),
        (
            "POST",
            "/admin/keys",
            json!({"name": "a", "limits": {"rpm": 18446744073709551616u128.to_string()}}),
            400,
            Some("limits.rpm"),
        ),
        (
            "POST",
            "/admin/keys",
            json!({"name": "a", "budgets": [{"usd": 5, "tokens": 5, "window": "day"}]}),
            400,
            Some("budgets[0]"),
        ),
        (
            "POST",
            "/admin/keys",
            json!({"name": "a", "budgets": [{"usd": 5, "window": "fortnight"}]}),
            400,
            Some("budgets[0].window"),
        ),
        (
            "POST",
            "/admin/keys",
            json!({"name": "a", "models": ["nope"]}),
            400,
            Some("models[0]"),
        ),
        (
            "POST",
            "/admin/keys",
            json!({"name": "a", "team": "nope"}),
            400,
            Some("team"),
        ),
        (
            "POST",
            "/admin/keys",
            json!({"name": "a", "expires_at": "yesterday"}),
            400,
            Some("expires_at"),
        ),
        (
            "POST",
            "/admin/keys",
            json!({"name": "a", "expires_at": 1000}),
            400,
            Some("expires_at"),
        ),
        (
            "POST",
            "/admin/keys",
            json!({"name": "a", "regions": []}),
            400,
            Some("regions"),
        ),
        (
            "POST",
            "/admin/keys",
            json!({"name": "a", "metadata": [1]}),
            400,
            Some("metadata"),
        ),
        (
            "POST",
            "/admin/keys",
            json!({"name": "a", "metadata": {"x": "y".repeat(9000)}}),
            400,
            Some("metadata"),
        ),
        ("POST", "/admin/keys", json!([1, 2]), 400, None),
        ("POST", "/admin/keys", json!({"name": "cfg-key"}), 409, None),
        (
            "POST",
            "/admin/teams",
            json!({"name": "cfg-team"}),
            409,
            None,
        ),
        (
            "POST",
            "/admin/teams",
            json!({"name": "t", "budgets": [{"usd": 1e12, "window": "day"}]}),
            400,
            Some("budgets[0].usd"),
        ),
        (
            "PATCH",
            "/admin/keys/cfg-key",
            json!({"tier": "gold"}),
            409,
            None,
        ),
        ("POST", "/admin/keys/cfg-key/revoke", json!({}), 409, None),
        ("POST", "/admin/keys/cfg-key/rotate", json!({}), 409, None),
        ("PATCH", "/admin/teams/cfg-team", json!({}), 409, None),
        ("DELETE", "/admin/teams/cfg-team", json!({}), 409, None),
        ("PATCH", "/admin/keys/ghost", json!({}), 404, None),
        ("POST", "/admin/keys/ghost/rotate", json!({}), 404, None),
        ("POST", "/admin/keys/ghost/revoke", json!({}), 404, None),
        ("GET", "/admin/keys/ghost", json!(null), 404, None),
        ("GET", "/admin/keys/ghost/usage", json!(null), 404, None),
        ("PATCH", "/admin/teams/ghost", json!({}), 404, None),
        ("DELETE", "/admin/teams/ghost", json!(null), 404, None),
        (
            "GET",
            "/admin/keys?limit=100000",
            json!(null),
            400,
            Some("limit"),
        ),
        (
            "GET",
            "/admin/audit?before=-3",
            json!(null),
            400,
            Some("before"),
        ),
        ("PUT", "/admin/keys", json!({}), 405, None),
        ("GET", "/admin/nothing", json!(null), 404, None),
    ];
    for (method, path, body, status, param) in cases {
        let body = (!body.is_null()).then_some(body);
        let (s, v) = admin.call(method, path, body.clone()).await;
        assert_eq!(s, status, "{method} {path} {body:?}: {v}");
        for f in ["message", "type", "param", "code"] {
            assert!(
                v["error"].get(f).is_some(),
                "{method} {path}: OpenAI-shaped: {v}"
            );
        }
        if let Some(p) = param {
            assert_eq!(v["error"]["param"], p, "{method} {path} {body:?}: {v}");
            assert!(message(&v).contains(p), "{v}");
        }
    }
    // Duplicates.
    admin.create_key(json!({"name": "dup"})).await;
    assert_eq!(
        admin.post("/admin/keys", json!({"name": "dup"})).await.0,
        409
    );
    assert_eq!(
        admin.post("/admin/teams", json!({"name": "t1"})).await.0,
        201
    );
    assert_eq!(
        admin.post("/admin/teams", json!({"name": "t1"})).await.0,
        409
    );
    // A body over 1 MiB: 413 (declared, and sent chunked without a length).
    let big = json!({"name": "big", "metadata": {"x": "y".repeat(1024 * 1024)}});
    assert_eq!(admin.post("/admin/keys", big.clone()).await.0, 413);
    let stream = futures_util::stream::iter(vec![Ok::<_, std::io::Error>(bytes::Bytes::from(
        big.to_string(),
    ))]);
    let r = http
        .post(format!("{}/admin/keys", admin.base))
        .bearer_auth(ADMIN_KEY)
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 413);
    // Nothing half-written: the refused writes left no key and no audit row.
    let (_, list) = admin.get("/admin/keys").await;
    let names: Vec<&str> = list["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["cfg-key", "dup"]);
    let (_, a) = admin.get("/admin/audit").await;
    assert_eq!(a["entries"].as_array().unwrap().len(), 2, "{a}");
    // Without the admin key: 401.
    let r = http
        .get(format!("{}/admin/keys", admin.base))
        .bearer_auth(CONFIG_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_lists_exactly_the_real_routes() {
    let gw = start().await;
    let admin = Admin::of(&gw);
    let (s, doc) = admin.get("/admin/openapi.json").await;
    assert_eq!(s, 200);
    assert_eq!(doc["openapi"], "3.0.3");
    // Every documented operation exists on the binary: neither 404
    // `unknown_url` nor 405 (the name is one that exists, or a fresh one).
    let mut documented = Vec::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            documented.push((method.to_uppercase(), path.clone()));
            assert!(op["responses"].is_object() && op["summary"].is_string());
            let real = path.replace("{name}", "cfg-key");
            let body = op.get("requestBody").map(|_| json!({}));
            let (s, v) = admin.call(&method.to_uppercase(), &real, body).await;
            assert!(
                s != 405 && v["error"]["code"] != "unknown_url",
                "{method} {real}: {s} {v}"
            );
            let declared: Vec<u16> = op["responses"]
                .as_object()
                .unwrap()
                .keys()
                .map(|k| k.parse().unwrap())
                .collect();
            if path != "/admin/reload" {
                assert!(
                    declared.contains(&s),
                    "{method} {real} answered {s}, not in {declared:?}: {v}"
                );
            }
        }
    }
    // And the binary's route table is exactly the document.
    let mut table: Vec<(String, String)> = tollgate::admin::ROUTES
        .iter()
        .map(|r| (r.method.to_string(), r.path.to_string()))
        .collect();
    table.sort();
    documented.sort();
    assert_eq!(table, documented);
    // A path outside the document is unknown.
    let (s, v) = admin.get("/admin/keys/a/b/c").await;
    assert_eq!((s, v["error"]["code"].as_str()), (404, Some("unknown_url")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_key_limits_hold_like_config_key_limits() {
    let gw = start().await;
    let admin = Admin::of(&gw);
    let http = support::client();
    let key = admin
        .create_key(json!({"name": "limited", "limits": {"rpm": 2}}))
        .await;
    assert_eq!(chat(&http, &gw, &key, "fast").await.0, 200);
    assert_eq!(chat(&http, &gw, &key, "fast").await.0, 200);
    let (s, v) = chat(&http, &gw, &key, "fast").await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (429, Some("rate_limit_exceeded"))
    );
    // A team limit applies to its runtime keys together.
    admin
        .post(
            "/admin/teams",
            json!({"name": "pair", "limits": {"rpm": 3}}),
        )
        .await;
    let a = admin
        .create_key(json!({"name": "p1", "team": "pair"}))
        .await;
    let b = admin
        .create_key(json!({"name": "p2", "team": "pair"}))
        .await;
    let codes = [
        chat(&http, &gw, &a, "fast").await.0,
        chat(&http, &gw, &b, "fast").await.0,
        chat(&http, &gw, &a, "fast").await.0,
        chat(&http, &gw, &b, "fast").await.0,
    ];
    assert_eq!(codes, [200, 200, 200, 429]);
    // Raising the team's limit applies to its keys at once.
    let (st, v) = admin
        .call(
            "PATCH",
            "/admin/teams/pair",
            Some(json!({"limits": {"rpm": 100}})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(chat(&http, &gw, &b, "fast").await.0, 200);
    // A runtime key may join a config team (the config team's limit counts it).
    let c = admin
        .create_key(json!({"name": "in-cfg-team", "team": "cfg-team"}))
        .await;
    assert_eq!(chat(&http, &gw, &c, "fast").await.0, 200);
    // The per-key usage view reads the ledger and the limits store.
    let (s, u) = admin.get("/admin/keys/limited/usage?window=minute").await;
    assert_eq!(s, 200, "{u}");
    assert_eq!(u["usage"]["current"]["requests"], 2, "{u}");
    assert_eq!(u["limits"][0]["limit"], "rpm");
    assert_eq!(u["limits"][0]["used"], 2.0, "{u}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_keys_teams_and_budget_usage_survive_a_restart() {
    let files = tempfile::tempdir().unwrap();
    let dir = files.path().display().to_string();
    let store = format!("{{ sqlite: \"{dir}/keys.db\" }}");
    let extra = format!("state_file: \"{dir}/state.json\"\nstate_interval: 100ms\n");
    let template = config(&store, &extra);
    let mut gw = Gateway::start(&template).await;
    let admin = Admin::of(&gw);
    let http = support::client();
    admin
        .post(
            "/admin/teams",
            json!({"name": "keepers", "budgets": [{"tokens": 1000, "window": "month"}]}),
        )
        .await;
    let key = admin
        .create_key(json!({"name": "durable", "team": "keepers", "budgets": [{"tokens": 100000, "window": "month"}]}))
        .await;
    for _ in 0..3 {
        assert_eq!(chat(&http, &gw, &key, "fast").await.0, 200);
    }
    // 3 × (10 prompt + 5 completion), once settled (after the answers).
    wait_used(&admin, "durable", 45.0).await;
    // Stop gracefully (the state file is written), start again on the same
    // files.
    gw.sigterm();
    assert!(gw.wait_exit(Duration::from_secs(20)).await.is_some());
    let again = Gateway::start(&template).await;
    let admin = Admin::of(&again);
    assert_eq!(chat(&http, &again, &key, "fast").await.0, 200);
    let (s, t) = admin.get("/admin/teams/keepers").await;
    assert_eq!(s, 200, "{t}");
    wait_used(&admin, "durable", 60.0).await;
}

/// Polls a key's usage view until its key and team limits both show `want`.
async fn wait_used(admin: &Admin, key: &str, want: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, u) = admin.get(&format!("/admin/keys/{key}/usage")).await;
        let used: Vec<f64> = u["limits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["used"].as_f64().unwrap())
            .collect();
        if used == [want, want] {
            return;
        }
        assert!(Instant::now() < deadline, "want {want} used: {u}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_creates_lists_and_revokes_keys() {
    let gw = start().await;
    let http = support::client();
    let admin_url = format!("http://{}", gw.plain_addr());
    let key_file = gw.tmp_dir().join("admin.key");
    std::fs::write(&key_file, format!("{ADMIN_KEY}\n")).unwrap();
    let run = |args: &[&str], env_key: bool| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"));
        c.args(args)
            .arg("--admin")
            .arg(&admin_url)
            .env_remove("TOLLGATE_ADMIN_KEY");
        if env_key {
            c.env("TOLLGATE_ADMIN_KEY", ADMIN_KEY);
        } else {
            c.arg("--admin-key-file").arg(&key_file);
        }
        c.output().unwrap()
    };
    let out = run(
        &[
            "keys",
            "create",
            "--name",
            "cli-key",
            "--models",
            "fast,slow",
            "--rpm",
            "50",
        ],
        true,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let created: Value = serde_json::from_slice(&out.stdout).unwrap();
    let secret = created["key"].as_str().unwrap().to_string();
    assert_eq!(created["limits"]["rpm"], 50);
    assert_eq!(chat(&http, &gw, &secret, "slow").await.0, 200);
    // The issue's example: no name (one is made up), a team, an allow-list.
    let out = run(
        &["keys", "create", "--team", "cfg-team", "--models", "fast"],
        false,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let unnamed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        unnamed["name"].as_str().unwrap().starts_with("key-"),
        "{unnamed}"
    );
    assert_eq!(unnamed["team"], "cfg-team");
    let unnamed_secret = unnamed["key"].as_str().unwrap();
    assert_eq!(chat(&http, &gw, unnamed_secret, "fast").await.0, 200);
    assert_eq!(chat(&http, &gw, unnamed_secret, "slow").await.0, 403);
    // A misspelt option is refused before anything is sent.
    let out = run(
        &["keys", "create", "--name", "typo", "--modles", "fast"],
        true,
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--modles"));
    assert_eq!(Admin::of(&gw).get("/admin/keys/typo").await.0, 404);
    let out = run(&["keys", "list"], false);
    assert!(out.status.success());
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        listed.contains("cli-key") && !listed.contains(&secret),
        "{listed}"
    );
    let out = run(&["keys", "revoke", "cli-key"], false);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(chat(&http, &gw, &secret, "slow").await.0, 401);
    // An error answer exits non-zero and shows the API's message.
    let out = run(&["keys", "revoke", "cfg-key"], true);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("read-only"));
    // No admin key at all: a clear error, nothing sent.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["keys", "list", "--admin", &admin_url])
        .env_remove("TOLLGATE_ADMIN_KEY")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("TOLLGATE_ADMIN_KEY"));
}

#[test]
fn config_test_checks_the_store_url_without_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let check = |store: &str, env: &[(&str, &str)]| {
        let text =
            support::gateway::render(&config(store, ""), "127.0.0.1:1", "127.0.0.1:2", dir.path())
                .replace("{PLAIN}", "127.0.0.1:3");
        let path = dir.path().join("t.yaml");
        std::fs::write(&path, text).unwrap();
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"));
        c.arg("--config").arg(&path).arg("--test");
        for (k, v) in env {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    // Nothing listens on port 9: a syntax check only.
    let (ok, out) = check(
        r#"{ postgres: "postgres://tg:${PGPW}@127.0.0.1:9/keys" }"#,
        &[("PGPW", "s3cret-pw")],
    );
    assert!(ok, "{out}");
    let (ok, out) = check(
        r#"{ postgres: "postgres://tg:${PGPW}@127.0.0.1:notaport/keys" }"#,
        &[("PGPW", "s3cret-pw")],
    );
    assert!(!ok && out.contains("key_store.postgres"), "{out}");
    assert!(
        !out.contains("s3cret-pw"),
        "the password is never shown: {out}"
    );
    let (ok, out) = check(r#"{ sqlite: "/x.db", postgres: "postgres://h/db" }"#, &[]);
    assert!(!ok && out.contains("key_store"), "{out}");
    let (ok, out) = check(r#"{ sqlite: "/x.db", poll_interval: 1ms }"#, &[]);
    assert!(!ok && out.contains("key_store.poll_interval"), "{out}");
    let (ok, out) = check(r#"{ sqlite: "/x.db", bogus: 1 }"#, &[]);
    assert!(!ok && out.contains("bogus"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_on_one_sqlite_file_converge_by_polling() {
    let files = tempfile::tempdir().unwrap();
    let store = format!(
        "{{ sqlite: \"{}/shared.db\", poll_interval: 100ms }}",
        files.path().display()
    );
    let a = Gateway::start(&config(&store, "")).await;
    let b = Gateway::start(&config(&store, "")).await;
    let http = support::client();
    let key = Admin::of(&a).create_key(json!({"name": "polled"})).await;
    let created = Instant::now();
    while chat(&http, &b, &key, "fast").await.0 != 200 {
        assert!(
            created.elapsed() < Duration::from_secs(5),
            "B polls the file"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "SQLite: created on A, admitted on B after {:?}",
        created.elapsed()
    );
    assert_eq!(
        Admin::of(&b)
            .post("/admin/keys/polled/revoke", json!({}))
            .await
            .0,
        200
    );
    let revoked = Instant::now();
    while chat(&http, &a, &key, "fast").await.0 != 401 {
        assert!(
            revoked.elapsed() < Duration::from_secs(5),
            "A polls the file"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_may_not_give_the_config_a_name_the_store_has() {
    let template = config(sqlite(), "");
    let gw = Gateway::start(&template).await;
    let admin = Admin::of(&gw);
    let http = support::client();
    let key = admin.create_key(json!({"name": "store-only"})).await;
    let clash = template.replace(
        "keys:\n",
        "keys:\n  - { name: store-only, key: \"tg-yaml-key-000001\" }\n",
    );
    gw.write_config(&clash);
    let (s, v) = admin.post("/admin/reload", json!({})).await;
    assert_eq!(s, 422, "{v}");
    assert!(v["error"].as_str().unwrap().contains("store-only"), "{v}");
    // The running config and the store key are unchanged.
    assert_eq!(chat(&http, &gw, &key, "fast").await.0, 200);
    assert_eq!(chat(&http, &gw, "tg-yaml-key-000001", "fast").await.0, 401);
    // A reload that removes an alias: store keys are compiled again against
    // it (their model list shrinks), without a restart.
    gw.write_config(&template.replace(
        "  slow: { routes: [ { provider: mock, model: m2 } ] }\n",
        "",
    ));
    let (s, v) = admin.post("/admin/reload", json!({})).await;
    assert_eq!(s, 200, "{v}");
    let models = http
        .get(gw.url("/v1/models"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(models["data"].as_array().unwrap().len(), 1, "{models}");
}
