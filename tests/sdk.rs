//! The official `openai` Python SDK against the real gateway and a mock
//! upstream: chat, streaming, embeddings, and typed errors. The interpreter
//! comes from `TOLLGATE_PYTHON` (set by tests/run.sh, which installs the SDK).

mod support;

use std::time::Duration;
use support::{sse_chat_events, Gateway, MockUpstream, Reply, CONFIG_HEAD};

/// Answers like OpenAI: chat (JSON or SSE, with usage when asked) and embeddings.
fn openai_like(r: &support::Recorded) -> Reply {
    let body = r.json();
    let model = body["model"].as_str().unwrap_or("?").to_string();
    if r.path.ends_with("/embeddings") {
        let n = body["input"].as_array().map_or(1, |a| a.len());
        let data: Vec<_> = (0..n)
            .map(|i| serde_json::json!({"object": "embedding", "index": i, "embedding": [0.1, -0.2, 0.3]}))
            .collect();
        let out = serde_json::json!({"object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": 2, "total_tokens": 2}});
        return Reply::json(200, out.to_string());
    }
    if body["stream"] == true {
        return Reply::sse(sse_chat_events(&model, 4), Duration::from_millis(5));
    }
    let out = serde_json::json!({"id": "c1", "object": "chat.completion", "created": 1, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello from upstream"},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}});
    Reply::json(200, out.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_python_sdk_works_unchanged_against_the_gateway() {
    let upstream = MockUpstream::start(support::Behavior::func(openai_like)).await;
    let config = format!(
        r#"{CONFIG_HEAD}providers:
  up:
    kind: openai
    base_url: "http://127.0.0.1:{port}/v1"
    api_key: "sk-provider-sdk-test"
models:
  fast: {{ routes: [ {{ provider: up, model: upstream-chat }} ] }}
  embed: {{ routes: [ {{ provider: up, model: upstream-embed }} ] }}
keys:
  - {{ name: sdk, key: "tg-sdk-key-123" }}
"#,
        port = upstream.port()
    );
    let gw = Gateway::start(&config).await;
    let stdout = support::sdk::run_script(
        "tests/sdk/openai_client.py",
        format!("{}/v1", gw.base_url()),
        "tg-sdk-key-123",
        &gw,
    )
    .await;
    assert!(stdout.contains("6 passed, 0 failed"), "{stdout}");
    // The SDK's requests really went through the upstream, with its model names.
    let models: Vec<String> = upstream
        .requests()
        .iter()
        .map(|r| r.json()["model"].as_str().unwrap_or("").to_string())
        .collect();
    // chat, stream (through the SDK and raw), embeddings; the refused ones
    // never reached it.
    let count = |m: &str| models.iter().filter(|x| *x == m).count();
    assert_eq!(
        (
            count("upstream-chat"),
            count("upstream-embed"),
            models.len()
        ),
        (3, 1, 4),
        "{models:?}"
    );
}

/// The same SDK over HTTPS, trusting only a test CA (chat and stream): TLS
/// termination by the gateway is transparent to the official client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_python_sdk_over_https_trusting_the_test_ca() {
    let ca = support::TestCa::new();
    let (cert, key) = ca.issue_files("server", &["localhost", "127.0.0.1"]);
    let upstream = MockUpstream::start(support::Behavior::func(openai_like)).await;
    let config = format!(
        r#"
listen: "{{LISTEN}}"
plain_listen: "{{PLAIN}}"
metrics_listen: "{{METRICS}}"
server: {{ pid_file: "{{TMP}}/t.pid", upgrade_sock: "{{TMP}}/u.sock" }}
tls: {{ cert: "{cert}", key: "{key}", min_version: "1.2", http2: true }}
providers:
  up:
    kind: openai
    base_url: "http://127.0.0.1:{port}/v1"
    api_key: "sk-provider-sdk-test"
models:
  fast: {{ routes: [ {{ provider: up, model: upstream-chat }} ] }}
  embed: {{ routes: [ {{ provider: up, model: upstream-embed }} ] }}
keys:
  - {{ name: sdk, key: "tg-sdk-key-123" }}
"#,
        cert = cert.display(),
        key = key.display(),
        port = upstream.port()
    );
    let gw = Gateway::start(&config).await;
    let port = gw
        .listen_addr()
        .rsplit(':')
        .next()
        .unwrap_or("0")
        .to_string();
    let run = |ca_file: &std::path::Path| {
        tokio::process::Command::new(support::sdk::python())
            .arg("tests/sdk/openai_client.py")
            .env("TOLLGATE_BASE_URL", format!("https://localhost:{port}/v1"))
            .env("TOLLGATE_KEY", "tg-sdk-key-123")
            .env("TOLLGATE_CA_FILE", ca_file)
            .env("TOLLGATE_CHECKS", "chat,stream")
            .output()
    };
    // The TLS listener starts alongside the plaintext one: wait for it.
    let https = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(
            reqwest::Certificate::from_pem(ca.ca_pem().as_bytes()).expect("CA PEM"),
        )
        .no_proxy()
        .build()
        .expect("client");
    let healthz = format!("https://localhost:{port}/healthz");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !https
        .get(&healthz)
        .send()
        .await
        .is_ok_and(|r| r.status() == 200)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "TLS listener not ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = run(&ca.ca_file()).await.expect("run the SDK script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "SDK checks over HTTPS failed:\n{stdout}\n{stderr}\ngateway log:\n{}",
        gw.logs()
    );
    assert!(stdout.contains("2 passed, 0 failed"), "{stdout}");
    let models: Vec<String> = upstream
        .requests()
        .iter()
        .map(|r| r.json()["model"].as_str().unwrap_or("").to_string())
        .collect();
    // chat, and stream through the SDK and raw.
    assert_eq!(
        models.iter().filter(|m| *m == "upstream-chat").count(),
        3,
        "{models:?}"
    );

    // A CA the client does not know is refused: the SDK does verify.
    let other = support::TestCa::new();
    let out = run(&other.ca_file()).await.expect("run the SDK script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(stdout.contains("APIConnectionError"), "{stdout}");
}

/// The SDK against an alias served by `kind: anthropic` (the Anthropic mock
/// serving the tool-call fixtures): its stream helpers assemble the streamed
/// tool-call arguments into valid JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_python_sdk_streams_tool_calls_from_an_anthropic_route() {
    let upstream = MockUpstream::start(support::Behavior::func(|r: &support::Recorded| {
        if r.json()["stream"] == true {
            Reply::sse_split(include_str!("fixtures/anthropic/stream_tools.sse"), 29)
        } else {
            Reply::json(200, include_str!("fixtures/anthropic/message_tools.json"))
        }
    }))
    .await;
    let config = format!(
        r#"{CONFIG_HEAD}providers:
  anthropic:
    kind: anthropic
    base_url: "http://127.0.0.1:{port}/v1"
    api_key: "sk-ant-sdk-test"
models:
  claude: {{ routes: [ {{ provider: anthropic, model: claude-sonnet-4-5 }} ] }}
keys:
  - {{ name: sdk, key: "tg-sdk-key-123" }}
"#,
        port = upstream.port()
    );
    let gw = Gateway::start(&config).await;
    let want = support::sdk::anthropic_fixture_tools();
    support::sdk::run_tools_script(&gw, "tg-sdk-key-123", "claude", &want).await;
    assert_eq!(upstream.hits(), 3);
    assert!(upstream.requests().iter().all(|r| r.path == "/v1/messages"));
}

/// The SDK against aliases served by `kind: gemini` (the Gemini mock serving
/// tests/fixtures/gemini): stream helpers assemble three parallel tool calls,
/// embeddings decode from the SDK's default base64, errors are typed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_python_sdk_works_against_a_gemini_route() {
    let upstream = MockUpstream::start(support::Behavior::func(|r: &support::Recorded| {
        let method = r.path.rsplit(':').next().unwrap_or_default();
        if method.starts_with("streamGenerateContent") {
            Reply::sse_split(include_str!("fixtures/gemini/stream_tools.sse"), 23)
        } else if method.starts_with("batchEmbedContents") {
            Reply::json(200, include_str!("fixtures/gemini/embed_batch.json"))
        } else if method.starts_with("embedContent") {
            Reply::json(200, include_str!("fixtures/gemini/embed_single.json"))
        } else {
            Reply::json(200, include_str!("fixtures/gemini/generate_tools.json"))
        }
    }))
    .await;
    let config = format!(
        r#"{CONFIG_HEAD}providers:
  google:
    kind: gemini
    base_url: "http://127.0.0.1:{port}/v1beta"
    api_key: "AIza-sdk-test"
    health_check: {{ enabled: false }}
models:
  gem: {{ routes: [ {{ provider: google, model: gemini-2.5-flash }} ] }}
  gem-embed: {{ routes: [ {{ provider: google, model: gemini-embedding-001 }} ] }}
keys:
  - {{ name: sdk, key: "tg-sdk-key-123" }}
"#,
        port = upstream.port()
    );
    let gw = Gateway::start(&config).await;
    let stdout = support::sdk::run_script(
        "tests/sdk/openai_gemini.py",
        format!("{}/v1", gw.base_url()),
        "tg-sdk-key-123",
        &gw,
    )
    .await;
    assert!(stdout.contains("4 passed, 0 failed"), "{stdout}");
    assert_eq!(
        upstream.hits(),
        4,
        "the refused request never reached Gemini"
    );
    assert!(upstream
        .requests()
        .iter()
        .all(|r| r.path.starts_with("/v1beta/models/") && !r.path.contains("key=")));
}
