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
