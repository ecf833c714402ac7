//! The official `anthropic` Python SDK against `/v1/messages`, served by an
//! OpenAI-kind mock upstream that streams text and a tool call over real
//! chunked SSE: the SDK's stream helpers (`messages.stream`,
//! `get_final_message`) assemble the text and the tool call's parsed input,
//! and its typed errors come out right. The same client also goes through
//! a `kind: anthropic` route, passed through. The interpreter comes from
//! `TOLLGATE_PYTHON` (set by tests/run.sh, which installs the SDK).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use bytes::Bytes;
use support::{Behavior, Gateway, MockUpstream, Recorded, Reply, ReplyBody, CONFIG_HEAD};

fn fixture(name: &str) -> String {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/messages")
        .join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// OpenAI Chat Completions: the recorded tool-call stream (one chunk per
/// event) or the recorded tool-call JSON.
fn openai_like(r: &Recorded) -> Reply {
    if r.json()["stream"] == true {
        let events = fixture("stream_tools.openai.sse")
            .split_inclusive("\n\n")
            .map(|e| Bytes::from(e.to_string()))
            .collect();
        return Reply {
            status: 200,
            headers: vec![("content-type".into(), "text/event-stream".into())],
            body: ReplyBody::Chunks(events, Duration::from_millis(3)),
        };
    }
    Reply::json(200, fixture("response_tools.openai.json"))
}

/// Anthropic's Messages API, replaying the same answer in Anthropic's own
/// wire format (the translated fixtures are exactly that).
fn anthropic_like(r: &Recorded) -> Reply {
    if r.json()["stream"] == true {
        let events = fixture("stream_tools.anthropic.sse")
            .split_inclusive("\n\n")
            .map(|e| Bytes::from(e.to_string()))
            .collect();
        return Reply {
            status: 200,
            headers: vec![("content-type".into(), "text/event-stream".into())],
            body: ReplyBody::Chunks(events, Duration::from_millis(3)),
        };
    }
    Reply::json(200, fixture("response_tools.anthropic.json"))
}

/// Runs tests/sdk/anthropic_client.py against a gateway serving
/// `claude-sonnet-4-5` from `upstream` (a provider of `kind`).
async fn run_sdk(kind: &str, upstream: &MockUpstream, upstream_model: &str) {
    let config = format!(
        r#"{CONFIG_HEAD}providers:
  up:
    kind: {kind}
    base_url: "http://127.0.0.1:{port}/v1"
    api_key: "sk-provider-sdk-test"
    health_check: {{ enabled: false }}
models:
  claude-sonnet-4-5: {{ routes: [ {{ provider: up, model: {upstream_model} }} ] }}
keys:
  - {{ name: sdk, key: "tg-sdk-key-123" }}
"#,
        port = upstream.port()
    );
    let gw = Gateway::start(&config).await;
    let stdout = support::sdk::run_script(
        "tests/sdk/anthropic_client.py",
        gw.base_url(),
        "tg-sdk-key-123",
        &gw,
    )
    .await;
    println!("{stdout}");
    assert!(stdout.contains("4 passed, 0 failed"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_python_sdk_streams_text_and_tool_use_through_an_openai_upstream() {
    let upstream = MockUpstream::start(Behavior::func(openai_like)).await;
    run_sdk("openai", &upstream, "gpt-4o-mini").await;
    // Both requests went upstream as chat completions with the route's model.
    let reqs = upstream.requests();
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    for r in reqs {
        assert_eq!(r.path, "/v1/chat/completions");
        assert_eq!(r.json()["model"], "gpt-4o-mini");
    }
}

/// The same client through a `kind: anthropic` route: passed through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_python_sdk_works_through_an_anthropic_route_passed_through() {
    let upstream = MockUpstream::start(Behavior::func(anthropic_like)).await;
    run_sdk("anthropic", &upstream, "claude-sonnet-4-5-20250929").await;
    let reqs = upstream.requests();
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    for r in reqs {
        assert_eq!(r.path, "/v1/messages");
        assert_eq!(r.json()["model"], "claude-sonnet-4-5-20250929");
        assert!(r.json()["tools"][0]["input_schema"].is_object());
        assert_eq!(
            r.header("x-api-key").as_deref(),
            Some("sk-provider-sdk-test")
        );
    }
}
