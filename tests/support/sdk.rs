//! Runs a Python SDK script (tests/sdk/*.py) against a running gateway with
//! the interpreter `tests/run.sh` prepares (`TOLLGATE_PYTHON`).

use super::Gateway;

/// The interpreter of the SDK venv.
pub fn python() -> String {
    std::env::var("TOLLGATE_PYTHON").unwrap_or_else(|_| {
        panic!("TOLLGATE_PYTHON is not set: run the suite with `bash tests/run.sh`, which installs the openai and anthropic SDKs")
    })
}

/// Runs `script` with `TOLLGATE_BASE_URL=base_url` and `TOLLGATE_KEY=key`,
/// fails the test (with the gateway's log) unless it exits 0, and returns
/// its stdout.
pub async fn run_script(script: &str, base_url: String, key: &str, gw: &Gateway) -> String {
    run_script_with_env(script, base_url, key, &[], gw).await
}

/// [`run_script`] with more environment variables for the script.
pub async fn run_script_with_env(
    script: &str,
    base_url: String,
    key: &str,
    env: &[(&str, &str)],
    gw: &Gateway,
) -> String {
    let out = tokio::process::Command::new(python())
        .arg(script)
        .env("TOLLGATE_BASE_URL", base_url)
        .env("TOLLGATE_KEY", key)
        .envs(env.iter().copied())
        .output()
        .await
        .expect("run the SDK script");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "SDK checks failed:\n{stdout}\n{stderr}\ngateway log:\n{}",
        gw.logs()
    );
    stdout
}

/// Runs tests/sdk/openai_tools.py (the SDK streaming tool calls, then the
/// same non-stream) against `alias`, whose provider answers with the tool
/// calls `want` describes (see the script), and asserts its three checks
/// passed.
pub async fn run_tools_script(gw: &Gateway, key: &str, alias: &str, want: &serde_json::Value) {
    let want = want.to_string();
    let stdout = run_script_with_env(
        "tests/sdk/openai_tools.py",
        format!("{}/v1", gw.base_url()),
        key,
        &[("TOLLGATE_MODEL", alias), ("TOLLGATE_WANT", &want)],
        gw,
    )
    .await;
    assert!(stdout.contains("3 passed, 0 failed"), "{stdout}");
}

/// What tests/fixtures/anthropic/stream_tools.sse and message_tools.json
/// hold, in the shape [`run_tools_script`] takes.
pub fn anthropic_fixture_tools() -> serde_json::Value {
    use serde_json::json;
    let whole: serde_json::Value =
        serde_json::from_str(include_str!("../fixtures/anthropic/message_tools.json")).unwrap();
    let calls: Vec<serde_json::Value> = whole["content"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["type"] == "tool_use")
        .map(|b| json!([b["id"], b["name"], b["input"]]))
        .collect();
    json!({
        "stream": {"content": "Checking both cities.", "calls": [
            ["toolu_01T1x1fJ34qAmk2tNTrN7Up6", "get_weather", {"location": "San Francisco, CA", "unit": "celsius"}],
            ["toolu_01B7xk2m3n4p5q6r7s8t9u0v", "get_time", {"tz": "Europe/Paris"}]],
            "usage": [472, 89]},
        "whole": {"calls": calls},
    })
}
