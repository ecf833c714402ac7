#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Config hardening (issue 14; `RELIABILITY.md` row 44): `${VAR}` values
//! are expanded inside string values after YAML parsing, so whatever they
//! hold reaches its field verbatim; config errors name their field without
//! showing secrets; keys no client could present and an admin key equal to
//! a hashed gateway key are refused; the Redis password never shows in
//! `/admin/config` or the logs.

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::{Behavior, Gateway, MockUpstream, CONFIG_HEAD};

/// A provider key with everything that used to change the YAML around it.
const NASTY_PROVIDER_KEY: &str = r#"sk-"a,b}c #d: e[f]{g}'h"#;
/// A gateway key with YAML syntax in it (visible ASCII, as keys must be).
const NASTY_CLIENT_KEY: &str = r#"tg-"k,e}y#:[x]{y}'z"#;
/// An upstream model name with YAML syntax in it (no line break: a model
/// may not hold control characters, `config::tests` checks that refusal and
/// carries line breaks through expansion).
const NASTY_MODEL: &str = "up\"model, #x: [y] - z";

fn chat(model: &str) -> serde_json::Value {
    serde_json::json!({"model": model, "messages": [{"role": "user", "content": "hi"}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn variable_values_with_yaml_syntax_reach_the_upstream_verbatim() {
    let up = MockUpstream::start(Behavior::ChatEcho).await;
    let yaml = format!(
        r#"{CONFIG_HEAD}max_body_bytes: ${{TG_HC_MAX_BODY}}
providers:
  up:
    kind: openai
    base_url: "http://127.0.0.1:{port}/v1"
    api_key: ${{TG_HC_PROVIDER_KEY}}
    health_check: {{ enabled: "${{TG_HC_CHECKS}}" }}
models:
  m:
    routes: [ {{ provider: up, model: "${{TG_HC_MODEL}}" }} ]
keys:
  - {{ name: k, key: "${{TG_HC_CLIENT_KEY}}" }}
"#,
        port = up.port()
    );
    let gw = Gateway::start_with_env(
        &yaml,
        &[
            ("TG_HC_MAX_BODY", "100000"),
            ("TG_HC_PROVIDER_KEY", NASTY_PROVIDER_KEY),
            ("TG_HC_CHECKS", "false"),
            ("TG_HC_MODEL", NASTY_MODEL),
            ("TG_HC_CLIENT_KEY", NASTY_CLIENT_KEY),
        ],
    )
    .await;
    let post = |body: String| {
        support::client()
            .post(gw.url("/v1/chat/completions"))
            .header("authorization", format!("Bearer {NASTY_CLIENT_KEY}"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let r = post(chat("m").to_string()).await.unwrap();
    let status = r.status().as_u16();
    assert_eq!(status, 200, "{}", r.text().await.unwrap());
    let sent = up.last().expect("the upstream was called");
    assert_eq!(
        sent.header("authorization").as_deref(),
        Some(format!("Bearer {NASTY_PROVIDER_KEY}").as_str()),
        "the provider key arrived changed"
    );
    assert_eq!(
        sent.json()["model"],
        NASTY_MODEL,
        "the model arrived changed"
    );

    // `max_body_bytes: ${TG_HC_MAX_BODY}` is the number 100000.
    let big = chat(&"x".repeat(100_001)).to_string();
    let r = post(big).await.unwrap();
    assert_eq!(r.status().as_u16(), 413);
    assert_eq!(up.hits(), 1);
}

/// A minimal valid file around `extra` (top-level lines) and `key` (the
/// gateway key's YAML value), for `--test` runs.
fn file(extra: &str, key: &str) -> String {
    format!(
        r#"listen: "127.0.0.1:1"
{extra}
providers:
  up:
    kind: openai
    base_url: "http://127.0.0.1:2/v1"
    api_key: "${{TG_HC_PROVIDER_KEY}}"
models:
  m:
    routes: [ {{ provider: up, model: x }} ]
keys:
  - name: k
    key: {key}
"#
    )
}

/// Runs `tollgate --config <yaml> --test`; `(exit code, stderr)`.
fn check(dir: &Path, yaml: &str, env: &[(&str, &str)]) -> (i32, String) {
    let path = dir.join("t.yaml");
    std::fs::write(&path, yaml).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tollgate"));
    cmd.arg("--config").arg(&path).arg("--test");
    cmd.env("TG_HC_PROVIDER_KEY", NASTY_PROVIDER_KEY);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run tollgate --test");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// What a `--test` run is about, its file, its environment, and what its
/// errors must say.
type Case<'a> = (&'a str, String, &'a [(&'a str, &'a str)], Vec<&'a str>);

#[test]
fn config_errors_name_their_field_and_never_show_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let ok = file("", "\"tg-hardening-key-1\"");
    assert_eq!(
        check(dir.path(), &ok, &[]).0,
        0,
        "{}",
        check(dir.path(), &ok, &[]).1
    );

    let cases: Vec<Case> = vec![
        (
            "an unset variable names it and its field",
            file("", "\"${TG_HC_UNSET_VAR}\""),
            &[],
            vec!["keys[0].key", "`TG_HC_UNSET_VAR` is not set"],
        ),
        (
            "a secret in a number field is named, not shown",
            file("max_body_bytes: ${TG_HC_SECRET}", "\"tg-hardening-key-1\""),
            &[("TG_HC_SECRET", "tg-very-secret-value-42")],
            vec!["max_body_bytes", "${TG_HC_SECRET}"],
        ),
        (
            "a key with a space",
            file("", "\"tg hardening key\""),
            &[],
            vec!["keys[0].key", "visible ASCII"],
        ),
        (
            "a key with non-ASCII characters",
            file("", "\"tg-clé-de-test\""),
            &[],
            vec!["keys[0].key", "visible ASCII"],
        ),
        (
            "a key from a variable with a trailing space",
            file("", "\"${TG_HC_SECRET}\""),
            &[("TG_HC_SECRET", "tg-very-secret-value-42 ")],
            vec!["keys[0].key", "visible ASCII"],
        ),
        (
            "an admin key equal to a gateway key given as key_sha256",
            file(
                "admin_listen: \"127.0.0.1:3\"\nadmin_key: \"tg-shared-admin-and-gateway\"",
                "x",
            )
            .replace(
                "    key: x\n",
                &format!(
                    "    key_sha256: \"{}\"\n",
                    hex::encode(tollgate::auth::digest(b"tg-shared-admin-and-gateway"))
                ),
            ),
            &[],
            vec!["admin_key", "must differ from every gateway key"],
        ),
    ];
    for (what, yaml, env, wants) in cases {
        let (code, err) = check(dir.path(), &yaml, env);
        assert_eq!(code, 1, "{what}: accepted; stderr:\n{err}\n{yaml}");
        for want in wants {
            assert!(err.contains(want), "{what}: no {want:?} in:\n{err}");
        }
        for secret in ["tg-very-secret-value-42", NASTY_PROVIDER_KEY] {
            assert!(!err.contains(secret), "{what}: a secret is shown:\n{err}");
        }
    }
}

/// A `redis-server` with a password on a loopback port; killed on drop.
struct Redis {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Redis {
    fn start(password: &str) -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--requirepass",
                password,
            ])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server (Debian package redis-server)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Redis {
            child,
            port,
            _dir: dir,
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const ADMIN_KEY: &str = "tg-hardening-admin-key-0001";
const REDIS_PASSWORD: &str = "hunter2-redis-Pa55word";
const WRONG_PASSWORD: &str = "wrong-redis-Pa55word-77";

fn redis_config(up: u16, redis: u16, password_var: &str) -> String {
    format!(
        r#"{CONFIG_HEAD}admin_listen: "{{PLAIN}}"
admin_key: "{ADMIN_KEY}"
limits_store: {{ redis: {{ url: "redis://:${{{password_var}}}@127.0.0.1:{redis}/0" }} }}
providers:
  up:
    kind: openai
    base_url: "http://127.0.0.1:{up}/v1"
    api_key: "sk-hardening-upstream"
    health_check: {{ enabled: false }}
models:
  m:
    routes: [ {{ provider: up, model: up-m }} ]
keys:
  - {{ name: k, key: "tg-hardening-key-1", limits: {{ rpm: 100 }} }}
"#
    )
}

async fn admin_get(gw: &Gateway, path: &str) -> (u16, String) {
    let r = support::client()
        .get(format!("http://{}{path}", gw.plain_addr()))
        .header("authorization", format!("Bearer {ADMIN_KEY}"))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn chat_status(gw: &Gateway) -> u16 {
    support::client()
        .post(gw.url("/v1/chat/completions"))
        .header("authorization", "Bearer tg-hardening-key-1")
        .json(&chat("m"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_password_is_not_shown_in_admin_views_or_logs() {
    let redis = Redis::start(REDIS_PASSWORD);
    let up = MockUpstream::start(Behavior::ChatEcho).await;
    let env = [
        ("TG_HC_REDIS_PASSWORD", REDIS_PASSWORD),
        ("TG_HC_WRONG_PASSWORD", WRONG_PASSWORD),
    ];

    // The right password: requests are admitted through Redis, and the
    // admin view shows the URL without it.
    let gw = Gateway::start_with_env(
        &redis_config(up.port(), redis.port, "TG_HC_REDIS_PASSWORD"),
        &env,
    )
    .await;
    assert_eq!(chat_status(&gw).await, 200, "{}", gw.logs());
    let (status, shown) = admin_get(&gw, "/admin/config").await;
    assert_eq!(status, 200, "{shown}");
    assert!(!shown.contains(REDIS_PASSWORD), "password shown: {shown}");
    let want = format!("redis://:[redacted]@127.0.0.1:{}/0", redis.port);
    assert!(shown.contains(&want), "no {want} in {shown}");
    let (status, limits) = admin_get(&gw, "/admin/limits").await;
    assert_eq!(status, 200, "{limits}");
    assert!(!gw.logs().contains(REDIS_PASSWORD), "password logged");
    drop(gw);

    // A wrong password: refused (fail_closed), and neither password
    // appears in the errors the gateway logs or answers.
    let gw = Gateway::start_with_env(
        &redis_config(up.port(), redis.port, "TG_HC_WRONG_PASSWORD"),
        &env,
    )
    .await;
    assert_eq!(chat_status(&gw).await, 503);
    let (status, body) = admin_get(&gw, "/admin/limits").await;
    assert_eq!(status, 503, "{body}");
    let (_, shown) = admin_get(&gw, "/admin/config").await;
    assert!(
        gw.wait_log("limits store (redis)", Duration::from_secs(10))
            .await,
        "the failure is logged: {}",
        gw.logs()
    );
    for text in [gw.logs(), body, shown] {
        assert!(
            !text.contains(WRONG_PASSWORD) && !text.contains(REDIS_PASSWORD),
            "a password is shown: {text}"
        );
    }
}
