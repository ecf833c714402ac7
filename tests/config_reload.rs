//! `tollgate --config FILE --test` and hot reload on SIGHUP
//! (`../shared/RELIABILITY.md` row 30, and the reload part of row 29), against
//! the real binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};
use support::prom::sample;
use support::{sse_chat_events, Behavior, Gateway, MockUpstream, TestCa, CONFIG_HEAD};

// ---------------------------------------------------------------------------
// --test
// ---------------------------------------------------------------------------

/// Set for every `--test` run; referenced by [`VALID`].
const PROVIDER_VAR: &str = "TG_CFGTEST_PROVIDER_KEY";
/// Never set.
const UNSET_VAR: &str = "TG_CFGTEST_SURELY_UNSET_VAR";

/// A valid file: `--test` opens no listener, so the addresses are never used.
const VALID: &str = r#"
listen: "127.0.0.1:18080"
metrics_listen: "127.0.0.1:19091"
providers:
  up:
    kind: openai
    base_url: "http://127.0.0.1:9/v1"
    api_key: "${TG_CFGTEST_PROVIDER_KEY}"
    timeouts: { connect: 1s }
  local:
    kind: mock
models:
  fast:
    routes:
      - { provider: up, model: up-fast }
  demo:
    routes:
      - { provider: local, model: mock-1 }
keys:
  - { name: alice, key: "tg-cfgtest-alice-0001", models: [fast] }
  - { name: bob, key: "tg-cfgtest-bob-00002" }
"#;

struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Writes `yaml` to `dir/name` and runs `tollgate --config FILE --test`.
fn check_in(dir: &Path, name: &str, yaml: &str) -> Outcome {
    let path = dir.join(name);
    std::fs::write(&path, yaml).expect("write config");
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .arg("--config")
        .arg(&path)
        .arg("--test")
        .env(PROVIDER_VAR, "sk-cfgtest-provider-secret")
        .env_remove(UNSET_VAR)
        .env("RUST_LOG", "error")
        .output()
        .expect("run tollgate --test");
    Outcome {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn check(yaml: &str) -> Outcome {
    let dir = tempfile::tempdir().expect("tempdir");
    check_in(dir.path(), "tollgate.yaml", yaml)
}

/// `VALID` with `from` replaced by `to` (which must change it).
fn edit(from: &str, to: &str) -> String {
    assert!(VALID.contains(from), "{from:?} not in VALID");
    VALID.replacen(from, to, 1)
}

#[test]
fn test_flag_accepts_a_valid_file() {
    let dir = tempfile::tempdir().unwrap();
    let o = check_in(dir.path(), "good.yaml", VALID);
    assert_eq!(o.code, Some(0), "stdout {}\nstderr {}", o.stdout, o.stderr);
    assert!(
        o.stdout.contains("is valid") && o.stdout.contains("good.yaml"),
        "stdout: {}",
        o.stdout
    );
    assert!(
        !o.stdout.contains("sk-cfgtest-provider-secret")
            && !o.stderr.contains("sk-cfgtest-provider-secret"),
        "the provider key was printed"
    );

    // An https provider with a real CA file, given relative to the config.
    let ca = TestCa::new();
    std::fs::write(dir.path().join("ca.pem"), ca.ca_pem()).unwrap();
    let https = edit(
        r#"base_url: "http://127.0.0.1:9/v1""#,
        "base_url: \"https://localhost:9443/v1\"\n    ca_file: ca.pem",
    );
    let o = check_in(dir.path(), "https.yaml", &https);
    assert_eq!(o.code, Some(0), "stdout {}\nstderr {}", o.stdout, o.stderr);
}

#[test]
fn test_flag_rejects_bad_files_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("not-a-cert.pem"), "hello, not PEM\n").unwrap();
    let https = |ca: &str| {
        edit(
            r#"base_url: "http://127.0.0.1:9/v1""#,
            &format!("base_url: \"https://localhost:9443/v1\"\n    ca_file: {ca}"),
        )
    };
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "bad YAML",
            VALID.replacen("models:\n", "models: [\n", 1),
            vec!["line"],
        ),
        (
            "bad YAML (tab indentation)",
            VALID.replacen("  up:\n", "\tup:\n", 1),
            vec!["line"],
        ),
        (
            "unknown top-level field",
            format!("{VALID}\nlisten_adress: \"127.0.0.1:1\"\n"),
            vec!["listen_adress"],
        ),
        (
            "unknown nested field",
            edit(
                "timeouts: { connect: 1s }",
                "timeouts: { connect: 1s, frist_byte: 2s }",
            ),
            vec!["providers.up.timeouts", "frist_byte"],
        ),
        (
            "route to a missing provider",
            edit(
                "{ provider: up, model: up-fast }",
                "{ provider: opneai, model: up-fast }",
            ),
            vec!["models.fast.routes[0].provider", "opneai"],
        ),
        (
            "key listing a missing model",
            edit("models: [fast]", "models: [fast, slow]"),
            vec!["keys[0].models[1]", "slow"],
        ),
        (
            "unset ${VAR}",
            edit(
                "${TG_CFGTEST_PROVIDER_KEY}",
                "${TG_CFGTEST_SURELY_UNSET_VAR}",
            ),
            vec![UNSET_VAR],
        ),
        (
            "duplicate key names",
            edit(
                r#"name: bob, key: "tg-cfgtest-bob-00002""#,
                r#"name: alice, key: "tg-cfgtest-bob-00002""#,
            ),
            vec!["keys[1].name", "alice"],
        ),
        (
            "duplicate key secrets",
            edit("tg-cfgtest-bob-00002", "tg-cfgtest-alice-0001"),
            vec!["keys[1]", "alice"],
        ),
        (
            "duplicate model alias (YAML mapping key)",
            edit("  demo:\n", "  fast:\n"),
            vec!["duplicate", "fast"],
        ),
        (
            "duplicate provider name (YAML mapping key)",
            edit("  local:\n", "  up:\n").replace("provider: local", "provider: up"),
            vec!["duplicate", "up"],
        ),
        (
            "ca_file that does not exist",
            https("no-such-ca.pem"),
            vec!["providers.up.ca_file", "no-such-ca.pem"],
        ),
        (
            "ca_file that is not PEM",
            https("not-a-cert.pem"),
            vec!["providers.up.ca_file", "not-a-cert.pem"],
        ),
    ];
    let mut failures = Vec::new();
    for (i, (what, yaml, needles)) in cases.iter().enumerate() {
        assert_ne!(yaml.as_str(), VALID, "{what}: the edit changed nothing");
        let o = check_in(dir.path(), &format!("case{i}.yaml"), yaml);
        let mut wrong = Vec::new();
        if o.code != Some(1) {
            wrong.push(format!("exit code {:?} (want 1)", o.code));
        }
        if o.stdout.contains("is valid") {
            wrong.push("stdout says valid".into());
        }
        if !o.stderr.contains("invalid configuration") {
            wrong.push("no `invalid configuration` header".into());
        }
        for n in needles {
            if !o.stderr.contains(n) {
                wrong.push(format!("message does not name {n:?}"));
            }
        }
        if o.stderr.contains("sk-cfgtest-provider-secret") {
            wrong.push("the provider key was printed".into());
        }
        if !wrong.is_empty() {
            failures.push(format!(
                "{what}: {}\n  stderr: {}",
                wrong.join("; "),
                o.stderr.trim()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn test_flag_bad_arguments_and_missing_file() {
    let o = check(VALID);
    assert_eq!(o.code, Some(0));
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["--config", "/nonexistent/tollgate.yaml", "--test"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/tollgate.yaml"));
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["--test", "--bogus"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "bad arguments exit 2");
}

// ---------------------------------------------------------------------------
// Reload
// ---------------------------------------------------------------------------

const KEY: &str = "tg-reload-alice-key-01";
const RELOAD_VAR: &str = "TG_RELOAD_PROVIDER_KEY";
const PROVIDER_KEY: &str = "sk-reload-provider-secret";
const RELOADS: &str = "tollgate_config_reloads_total";

/// Providers `a` and `b` (two mocks), the given `models:` entries (indented
/// two spaces) and key alice. `a`'s key comes from `${TG_RELOAD_PROVIDER_KEY}`.
fn config(a: u16, b: u16, models: &str) -> String {
    format!(
        r#"{CONFIG_HEAD}providers:
  a:
    kind: openai
    base_url: "http://127.0.0.1:{a}/v1"
    api_key: "${{TG_RELOAD_PROVIDER_KEY}}"
    health_check: {{ enabled: false }}
  b:
    kind: openai
    base_url: "http://127.0.0.1:{b}/v1"
    health_check: {{ enabled: false }}
models:
{models}
keys:
  - {{ name: alice, key: "{KEY}" }}
"#
    )
}

async fn start(yaml: &str) -> Gateway {
    Gateway::start_with_env(yaml, &[(RELOAD_VAR, PROVIDER_KEY)]).await
}

async fn chat(gw: &Gateway, model: &str) -> (u16, Value) {
    let resp = support::client()
        .post(gw.url("/v1/chat/completions"))
        .header("authorization", format!("Bearer {KEY}"))
        .json(&json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap_or_else(|e| panic!("request failed: {e}; log:\n{}", gw.logs()));
    let status = resp.status().as_u16();
    let body = resp.bytes().await.expect("body");
    let v = serde_json::from_slice(&body).unwrap_or(Value::Null);
    (status, v)
}

async fn model_ids(gw: &Gateway) -> Vec<String> {
    let v: Value = support::client()
        .get(gw.url("/v1/models"))
        .header("authorization", format!("Bearer {KEY}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut ids: Vec<String> = v["data"]
        .as_array()
        .expect("models list")
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

async fn reloads(gw: &Gateway, result: &str) -> f64 {
    sample(&gw.metrics_text().await, RELOADS, &[("result", result)]).unwrap_or(0.0)
}

/// Sends SIGHUP and waits until `tollgate_config_reloads_total{result}`
/// reaches `want`; returns the log written since the signal.
async fn sighup_and_wait(gw: &Gateway, result: &str, want: f64) -> String {
    let offset = gw.logs().len();
    gw.sighup();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if reloads(gw, result).await >= want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{RELOADS}{{result={result:?}}} never reached {want}; log:\n{}",
            gw.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The log line follows the metric update.
    let marker = if result == "success" {
        "config reloaded"
    } else {
        "config reload failed"
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let logs = gw.logs();
        let tail = logs.get(offset..).unwrap_or("").to_string();
        if tail.contains(marker) {
            return tail;
        }
        assert!(
            Instant::now() < deadline,
            "no {marker:?} in the log after SIGHUP:\n{logs}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_with_a_valid_file_swaps_aliases() {
    let a = MockUpstream::start(Behavior::ChatEcho).await;
    let b = MockUpstream::start(Behavior::ChatEcho).await;
    let gw = start(&config(
        a.port(),
        b.port(),
        "  fast: { routes: [ { provider: a, model: a-fast } ] }",
    ))
    .await;

    let (status, v) = chat(&gw, "fast").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(a.last().unwrap().json()["model"], "a-fast");
    assert_eq!(
        a.last().unwrap().header("authorization").as_deref(),
        Some(format!("Bearer {PROVIDER_KEY}").as_str())
    );
    assert_eq!(model_ids(&gw).await, ["fast"]);
    let ok0 = reloads(&gw, "success").await;
    let stamp0 = sample(
        &gw.metrics_text().await,
        "tollgate_config_last_reload_success_timestamp_seconds",
        &[],
    )
    .expect("load timestamp gauge");
    // The gauge has whole seconds: let the clock pass stamp0's second, so a
    // reload that does not move the stamp shows.
    let unix_now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    };
    while unix_now() < stamp0 + 1.0 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reload_sent = unix_now().floor();

    gw.write_config(&config(
        a.port(),
        b.port(),
        "  fresh: { routes: [ { provider: b, model: b-fresh } ] }\n  \
         also: { routes: [ { provider: a, model: a-also } ] }",
    ));
    let log = sighup_and_wait(&gw, "success", ok0 + 1.0).await;
    assert!(!log.contains("reload failed"), "{log}");

    // New aliases work, the old one is gone.
    let (status, v) = chat(&gw, "fresh").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(b.hits(), 1);
    assert_eq!(b.last().unwrap().json()["model"], "b-fresh");
    assert_eq!(
        b.last().unwrap().header("authorization"),
        None,
        "b has no key"
    );
    let (status, v) = chat(&gw, "also").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(a.last().unwrap().json()["model"], "a-also");
    assert_eq!(
        a.last().unwrap().header("authorization").as_deref(),
        Some(format!("Bearer {PROVIDER_KEY}").as_str()),
        "${{VAR}} is expanded on reload too"
    );
    let (status, v) = chat(&gw, "fast").await;
    assert_eq!(status, 404, "{v}");
    assert_eq!(v["error"]["code"], "model_not_found");
    assert_eq!(model_ids(&gw).await, ["also", "fresh"]);

    let text = gw.metrics_text().await;
    assert_eq!(
        sample(&text, RELOADS, &[("result", "success")]),
        Some(ok0 + 1.0)
    );
    assert_eq!(
        sample(&text, RELOADS, &[("result", "failed")]).unwrap_or(0.0),
        0.0
    );
    let stamp1 = sample(
        &text,
        "tollgate_config_last_reload_success_timestamp_seconds",
        &[],
    )
    .unwrap();
    assert!(
        stamp1 > stamp0 && stamp1 >= reload_sent && stamp1 <= unix_now(),
        "the reload did not move the timestamp: {stamp0} -> {stamp1} (reload at {reload_sent})"
    );
    assert!(!gw.logs().contains(PROVIDER_KEY), "provider key in the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_with_a_bad_file_keeps_the_running_config() {
    let a = MockUpstream::start(Behavior::ChatEcho).await;
    let b = MockUpstream::start(Behavior::ChatEcho).await;
    let good = config(
        a.port(),
        b.port(),
        "  fast: { routes: [ { provider: a, model: a-fast } ] }",
    );
    let gw = start(&good).await;
    let with_new = |models: &str| {
        config(
            a.port(),
            b.port(),
            &format!("  fast: {{ routes: [ {{ provider: b, model: b-fast }} ] }}\n{models}"),
        )
    };
    let bad: Vec<(&str, String, &str)> = vec![
        (
            "bad YAML",
            with_new("  newalias: { routes: [ { provider: b, model: x }\n"),
            "line",
        ),
        (
            "route to a missing provider",
            with_new("  newalias: { routes: [ { provider: opneai, model: x } ] }"),
            "opneai",
        ),
        (
            "unset ${VAR}",
            with_new("  newalias: { routes: [ { provider: b, model: x } ] }")
                .replace("${TG_RELOAD_PROVIDER_KEY}", "${TG_RELOAD_SURELY_UNSET_VAR}"),
            "TG_RELOAD_SURELY_UNSET_VAR",
        ),
        (
            "a field fixed at start-up",
            with_new("  newalias: { routes: [ { provider: b, model: x } ] }")
                .replace("server: {", "server: { grace_period: 7s,"),
            "server",
        ),
    ];
    let ok0 = reloads(&gw, "success").await;
    for (i, (what, yaml, reason)) in bad.iter().enumerate() {
        gw.write_config(yaml);
        let log = sighup_and_wait(&gw, "failed", (i + 1) as f64).await;
        assert!(
            log.contains(reason),
            "{what}: the logged reason does not mention {reason:?}:\n{log}"
        );
        // The running config is untouched: `fast` still goes to `a`, and
        // the alias from the bad file does not exist.
        let before = a.hits();
        let (status, v) = chat(&gw, "fast").await;
        assert_eq!(status, 200, "{what}: {v}");
        assert_eq!(a.hits(), before + 1, "{what}: fast moved off provider a");
        assert_eq!(a.last().unwrap().json()["model"], "a-fast", "{what}");
        assert_eq!(
            a.last().unwrap().header("authorization").as_deref(),
            Some(format!("Bearer {PROVIDER_KEY}").as_str()),
            "{what}"
        );
        let (status, v) = chat(&gw, "newalias").await;
        assert_eq!(status, 404, "{what}: {v}");
        assert_eq!(model_ids(&gw).await, ["fast"], "{what}");
        assert_eq!(b.hits(), 0, "{what}");
        let text = gw.metrics_text().await;
        assert_eq!(
            sample(&text, RELOADS, &[("result", "failed")]),
            Some((i + 1) as f64),
            "{what}"
        );
        assert_eq!(
            sample(&text, RELOADS, &[("result", "success")]).unwrap_or(0.0),
            ok0,
            "{what}"
        );
    }

    // After the failures, a good file still reloads.
    gw.write_config(&with_new(
        "  newalias: { routes: [ { provider: b, model: b-new } ] }",
    ));
    sighup_and_wait(&gw, "success", ok0 + 1.0).await;
    let (status, v) = chat(&gw, "newalias").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(b.last().unwrap().json()["model"], "b-new");
    let (status, _) = chat(&gw, "fast").await;
    assert_eq!(status, 200);
    assert_eq!(b.last().unwrap().json()["model"], "b-fast");
    assert!(!gw.logs().contains(PROVIDER_KEY), "provider key in the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_in_flight_across_a_reload_completes_byte_identical() {
    // 20 events, 100 ms apart: about 2 s of stream.
    let events = sse_chat_events("a-fast", 17);
    assert_eq!(events.len(), 20);
    let a = MockUpstream::start(Behavior::sse(events.clone(), Duration::from_millis(100))).await;
    let b = MockUpstream::start(Behavior::ChatEcho).await;
    let gw = start(&config(
        a.port(),
        b.port(),
        "  fast: { routes: [ { provider: a, model: a-fast } ] }",
    ))
    .await;
    let ok0 = reloads(&gw, "success").await;

    let resp = support::client()
        .post(gw.url("/v1/chat/completions"))
        .header("authorization", format!("Bearer {KEY}"))
        .json(&json!({"model": "fast", "stream": true,
            "messages": [{"role": "user", "content": "count"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        resp.headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .as_deref(),
        Some("text/event-stream")
    );
    let mut stream = resp.bytes_stream();
    let mut got: Vec<u8> = Vec::new();
    // Wait for the first event, then reload mid-stream.
    let first = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("first event in time")
        .expect("stream not empty")
        .expect("read");
    got.extend_from_slice(&first);

    let reader = tokio::spawn(async move {
        let mut rest = Vec::new();
        let mut err = None;
        while let Some(item) = stream.next().await {
            match item {
                Ok(b) => rest.extend_from_slice(&b),
                Err(e) => {
                    err = Some(e.to_string());
                    break;
                }
            }
        }
        (rest, err)
    });

    // Move `fast` to provider b.
    gw.write_config(&config(
        a.port(),
        b.port(),
        "  fast: { routes: [ { provider: b, model: b-fast } ] }",
    ));
    let t_reload = Instant::now();
    sighup_and_wait(&gw, "success", ok0 + 1.0).await;
    assert!(
        !reader.is_finished(),
        "the stream ended before the reload completed (reload took {:?})",
        t_reload.elapsed()
    );
    // New requests use the new config while the old stream runs on.
    let (status, v) = chat(&gw, "fast").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(b.hits(), 1);
    assert_eq!(b.last().unwrap().json()["model"], "b-fast");

    let (rest, err) = tokio::time::timeout(Duration::from_secs(30), reader)
        .await
        .expect("stream finished")
        .expect("reader task");
    got.extend_from_slice(&rest);
    assert_eq!(err, None, "stream broke");
    let want: String = events.concat();
    assert_eq!(
        String::from_utf8_lossy(&got),
        want,
        "the stream across the reload is not byte-identical"
    );
    assert_eq!(a.hits(), 1, "the stream was not retried");
}
