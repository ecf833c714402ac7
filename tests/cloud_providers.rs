//! `kind: bedrock` and `kind: vertex` end to end: the real gateway against
//! mocks speaking the real protocols (tests/support/bedrock_mock.rs
//! recomputes every SigV4 signature from the test credentials and streams
//! real event-stream frames cut at random offsets; sts_mock.rs answers
//! web identity; gcp_mock.rs checks the service account's JWT signature
//! and claims and serves Vertex only to live tokens).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::{json, Value};
use std::time::Duration;
use support::bedrock_mock::{BedrockMock, Fault};
use support::gcp_mock::{GcpMock, KEY_FILE};
use support::prom::{sample, sum};
use support::sts_mock::StsMock;
use support::{assert_error, header, Behavior, Gateway, MockUpstream, Reply, CONFIG_HEAD};

const KEY: &str = "tg-cloud-key-1";
const MODEL: &str = "anthropic.claude-3-5-sonnet-20240620-v1:0";
const AKID: &str = "AKIDTESTGATEWAY";
const SECRET: &str = "test/secret+key=value";
/// Long enough for any condition on 2 busy cores.
const PATIENCE: Duration = Duration::from_secs(20);

macro_rules! fixture {
    ($name:literal) => {
        include_str!(concat!("fixtures/", $name))
    };
}

fn bedrock_provider(mock: &BedrockMock, credentials: &str) -> String {
    format!(
        r#"  aws:
    kind: bedrock
    base_url: "{url}"
    bedrock: {{ region: us-east-1, {credentials} }}
    retry: {{ attempts: 1 }}
    health_check: {{ enabled: false }}
"#,
        url = mock.url()
    )
}

fn static_creds() -> String {
    format!(
        r#"credentials: {{ source: static, access_key_id: {AKID}, secret_access_key: "{SECRET}" }}"#
    )
}

fn bedrock_config(mock: &BedrockMock) -> String {
    format!(
        r#"{CONFIG_HEAD}providers:
{p}models:
  claude:
    routes:
      - {{ provider: aws, model: "{MODEL}", price: {{ input: 2.0, cached_input: 1.0, output: 10.0 }} }}
  titan: {{ routes: [ {{ provider: aws, model: "amazon.titan-embed-text-v2:0" }} ] }}
  cohere: {{ routes: [ {{ provider: aws, model: "cohere.embed-english-v3" }} ] }}
  llama-embed: {{ routes: [ {{ provider: aws, model: "meta.llama3-8b-instruct-v1:0" }} ] }}
keys:
  - {{ name: team, key: "{KEY}" }}
"#,
        p = bedrock_provider(mock, &static_creds())
    )
}

async fn bedrock_mock() -> BedrockMock {
    let mock = BedrockMock::start(
        fixture!("bedrock/converse_text.json"),
        fixture!("bedrock/stream_text.jsonl"),
    )
    .await;
    mock.allow_key(AKID, SECRET, None);
    mock
}

async fn post(gw: &Gateway, path: &str, body: &Value) -> reqwest::Response {
    support::client()
        .post(gw.url(path))
        .header("authorization", format!("Bearer {KEY}"))
        .json(body)
        .send()
        .await
        .expect("request")
}

fn chat(alias: &str, stream: bool) -> Value {
    json!({"model": alias, "stream": stream,
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Paris?"}]})
}

/// The `data:` payloads of an SSE body.
fn events(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .map(str::to_string)
        .collect()
}

/// Concatenated `delta.content` of chat chunks.
fn content(events: &[String]) -> String {
    events
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(String::from)
        })
        .collect()
}

fn tokens(m: &str, alias: &str, provider: &str, model: &str, kind: &str) -> f64 {
    sum(
        m,
        "tollgate_tokens_total",
        &[
            ("request_model", alias),
            ("provider", provider),
            ("response_model", model),
            ("token_type", kind),
        ],
    )
}

fn cost(m: &str, alias: &str, provider: &str) -> f64 {
    sum(
        m,
        "tollgate_cost_usd_total",
        &[("request_model", alias), ("provider", provider)],
    )
}

fn near(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12
}

/// Non-stream Converse: the mock verified the SigV4 signature (recomputed
/// from the test credentials over the exact body sent), the model id went
/// percent-encoded into the path, the answer came back as a
/// `chat.completion`, and the tokens (cache reads and writes included) and
/// cost are exact on /metrics. The secret is in no log line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bedrock_converse_is_signed_translated_and_metered() {
    let mock = bedrock_mock().await;
    let gw = Gateway::start(&bedrock_config(&mock)).await;
    let resp = post(&gw, "/v1/chat/completions", &chat("claude", false)).await;
    assert_eq!(resp.status(), 200, "{:?} {}", mock.rejected(), gw.logs());
    assert_eq!(
        header(&resp, "x-tollgate-route").as_deref(),
        Some(&*format!("aws/{MODEL}"))
    );
    let v: Value = resp.json().await.unwrap();
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "Paris is cloudy at 18C; Rome is sunny at 24C."
    );
    assert_eq!(v["usage"]["prompt_tokens"], 1330);
    assert!(mock.rejected().is_empty(), "{:?}", mock.rejected());
    let r = &mock.requests()[0];
    assert_eq!(
        r.path,
        "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse"
    );
    let auth = r.header("authorization").unwrap();
    assert!(
        auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDTESTGATEWAY/"),
        "{auth}"
    );
    assert!(r.header("x-amz-date").is_some());
    let sent: Value = serde_json::from_slice(&r.body).unwrap();
    assert!(
        sent.get("model").is_none() && sent["system"][0]["text"] == "Be brief.",
        "{sent}"
    );
    let alias = "claude";
    gw.wait_metric(
        "tollgate_tokens_total",
        &[("request_model", alias), ("token_type", "output")],
        15.0,
    )
    .await;
    let m = gw.metrics_text().await;
    assert_eq!(tokens(&m, alias, "aws", MODEL, "input"), 1330.0);
    assert_eq!(tokens(&m, alias, "aws", MODEL, "cached_input"), 1024.0);
    assert_eq!(tokens(&m, alias, "aws", MODEL, "cache_write"), 276.0);
    let want = (306.0 * 2.0 + 1024.0 * 1.0 + 15.0 * 10.0) / 1e6;
    assert!(
        near(cost(&m, alias, "aws"), want),
        "{} vs {want}",
        cost(&m, alias, "aws")
    );
    assert!(!gw.logs().contains(SECRET) && !m.contains(SECRET));
}

/// ConverseStream: the mock cuts real event-stream frames at random byte
/// offsets (a new cut per seed); the client gets the same OpenAI chunks
/// each time, ending in the usage chunk it asked for and `[DONE]`, and the
/// usage is the provider's (cache reads and writes included).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bedrock_stream_split_at_random_offsets_arrives_as_openai_chunks() {
    let mock = bedrock_mock().await;
    let gw = Gateway::start(&bedrock_config(&mock)).await;
    let mut body = chat("claude", true);
    body["stream_options"] = json!({"include_usage": true});
    for seed in [1u64, 7, 42, 1234, 99_991] {
        mock.set_seed(seed);
        let resp = post(&gw, "/v1/chat/completions", &body).await;
        assert_eq!(resp.status(), 200, "{}", gw.logs());
        assert_eq!(
            header(&resp, "content-type").as_deref(),
            Some("text/event-stream")
        );
        let text = resp.text().await.unwrap();
        let ev = events(&text);
        assert_eq!(
            content(&ev),
            "Paris is cloudy — 18°C.",
            "seed {seed}: {text}"
        );
        assert_eq!(ev.last().map(String::as_str), Some("[DONE]"), "{text}");
        let usage: Value = serde_json::from_str(&ev[ev.len() - 2]).unwrap();
        assert_eq!(usage["usage"]["prompt_tokens"], 1330, "{usage}");
        assert_eq!(
            usage["usage"]["prompt_tokens_details"]["cached_tokens"],
            1024
        );
        let finish: Value = serde_json::from_str(&ev[ev.len() - 3]).unwrap();
        assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    }
    assert!(mock.rejected().is_empty(), "{:?}", mock.rejected());
    assert!(mock
        .requests()
        .iter()
        .all(|r| r.path.ends_with("/converse-stream")));
    gw.wait_metric(
        "tollgate_tokens_total",
        &[
            ("request_model", "claude"),
            ("token_type", "output"),
            ("usage_source", "reported"),
        ],
        45.0,
    )
    .await;
}

/// A corrupted CRC, a frame cut short and a frame announcing 32 MiB each
/// end the client's stream with one SSE error event (no `[DONE]`), after
/// the events that passed; the gateway lives on, and the stream is charged
/// what passed (counted as partial).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_event_stream_frames_end_the_stream_with_an_error_event_and_are_charged() {
    let mock = bedrock_mock().await;
    let gw = Gateway::start(&bedrock_config(&mock)).await;
    let mut n = 0.0;
    for fault in [Fault::BadCrc, Fault::Truncated, Fault::Oversized] {
        mock.set_fault(fault);
        let resp = post(&gw, "/v1/chat/completions", &chat("claude", true)).await;
        assert_eq!(resp.status(), 200);
        let text = resp.text().await.unwrap();
        let ev = events(&text);
        assert!(!ev.iter().any(|e| e == "[DONE]"), "{fault:?}: {text}");
        let last: Value = serde_json::from_str(ev.last().unwrap()).unwrap();
        assert_eq!(last["error"]["code"], "upstream_error", "{fault:?}: {text}");
        assert!(
            content(&ev).starts_with("Paris is "),
            "{fault:?}: the events before the fault arrived: {text}"
        );
        n += 1.0;
        gw.wait_metric(
            "tollgate_partial_streams_total",
            &[("request_model", "claude")],
            n,
        )
        .await;
    }
    let m = gw.metrics_text().await;
    assert!(
        sum(
            &m,
            "tollgate_tokens_total",
            &[("request_model", "claude"), ("token_type", "output")]
        ) > 0.0,
        "what passed is counted:\n{m}"
    );
    assert_eq!(
        sum(
            &m,
            "tollgate_requests_total",
            &[("request_model", "claude")]
        ),
        3.0
    );
    // Still serving.
    mock.set_fault(Fault::None);
    let resp = post(&gw, "/v1/chat/completions", &chat("claude", false)).await;
    assert_eq!(resp.status(), 200);
}

/// Bedrock's errors: a ValidationException is a 400 with Bedrock's message;
/// AccessDenied is a generic 502 (the ARN it quotes never reaches the
/// client); a refused signature likewise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bedrock_errors_map_to_openai_errors() {
    let mock = bedrock_mock().await;
    let gw = Gateway::start(&bedrock_config(&mock)).await;
    mock.set_fault(Fault::Validation);
    let resp = post(&gw, "/v1/chat/completions", &chat("claude", false)).await;
    let status = resp.status().as_u16();
    let body = resp.bytes().await.unwrap();
    let v = assert_error(
        status,
        &body,
        (400, "invalid_request_error", "invalid_request"),
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Conversation blocks must not be blank"),
        "{v}"
    );
    mock.set_fault(Fault::AccessDenied);
    let resp = post(&gw, "/v1/chat/completions", &chat("claude", false)).await;
    let status = resp.status().as_u16();
    let body = resp.bytes().await.unwrap();
    assert_error(status, &body, (502, "api_error", "upstream_auth_error"));
    assert!(
        !support::text(&body).contains("arn:aws"),
        "{}",
        support::text(&body)
    );
    // A key the mock does not know: its signature is refused (403).
    mock.set_fault(Fault::None);
    mock.allow_key(AKID, "not-the-secret", None);
    let resp = post(&gw, "/v1/chat/completions", &chat("claude", false)).await;
    assert_eq!(resp.status(), 502);
    assert_eq!(
        mock.rejected().last().map(String::as_str),
        Some("signature does not match")
    );
}

/// Embeddings through InvokeModel: Titan (one text; its token count) and
/// Cohere (a batch; the token-count header); a model neither family has,
/// and token arrays, are a 400 naming the field, with no upstream call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bedrock_embeddings_through_titan_and_cohere_or_a_400_naming_the_field() {
    let mock = bedrock_mock().await;
    let gw = Gateway::start(&bedrock_config(&mock)).await;
    let resp = post(
        &gw,
        "/v1/embeddings",
        &json!({"model": "titan", "input": "hello"}),
    )
    .await;
    assert_eq!(resp.status(), 200, "{}", gw.logs());
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["data"][0]["embedding"], json!([0.125, -0.5, 0.25]));
    assert_eq!(v["usage"]["prompt_tokens"], 7);
    let r = mock.requests().pop().unwrap();
    assert_eq!(r.path, "/model/amazon.titan-embed-text-v2%3A0/invoke");
    assert_eq!(
        serde_json::from_slice::<Value>(&r.body).unwrap(),
        json!({"inputText": "hello"})
    );
    let resp = post(
        &gw,
        "/v1/embeddings",
        &json!({"model": "cohere", "input": ["a", "b"]}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["data"][1]["embedding"], json!([0.3, 0.4]));
    assert_eq!(v["usage"]["prompt_tokens"], 7);
    let before = mock.requests().len();
    for (body, param) in [
        (json!({"model": "llama-embed", "input": "x"}), "model"),
        (json!({"model": "titan", "input": [[1, 2, 3]]}), "input[0]"),
        (json!({"model": "titan", "input": ["a", "b"]}), "input"),
        (
            json!({"model": "titan", "input": "x", "dimensions": 300}),
            "dimensions",
        ),
    ] {
        let resp = post(&gw, "/v1/embeddings", &body).await;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.unwrap();
        let v = assert_error(
            status,
            &bytes,
            (400, "invalid_request_error", "unsupported_parameter"),
        );
        assert_eq!(v["error"]["param"], param, "{v}");
    }
    assert_eq!(
        mock.requests().len(),
        before,
        "refused before any upstream call"
    );
    gw.wait_metric(
        "tollgate_tokens_total",
        &[("request_model", "cohere"), ("token_type", "input")],
        7.0,
    )
    .await;
}

/// A Bedrock API key (`api_key` on a bedrock provider) goes as
/// `Authorization: Bearer`, with no signature.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bedrock_api_keys_are_sent_as_bearer_tokens() {
    let mock = bedrock_mock().await;
    mock.allow_api_key("ABSK-test-bedrock-key");
    let config = format!(
        r#"{CONFIG_HEAD}providers:
  aws:
    kind: bedrock
    base_url: "{url}"
    api_key: "ABSK-test-bedrock-key"
    bedrock: {{ region: eu-west-1 }}
    health_check: {{ enabled: false }}
models:
  claude: {{ routes: [ {{ provider: aws, model: "{MODEL}" }} ] }}
keys:
  - {{ name: team, key: "{KEY}" }}
"#,
        url = mock.url()
    );
    let gw = Gateway::start(&config).await;
    let resp = post(&gw, "/v1/chat/completions", &chat("claude", false)).await;
    assert_eq!(resp.status(), 200, "{:?}", mock.rejected());
    let r = mock.requests().pop().unwrap();
    assert_eq!(
        r.header("authorization"),
        Some("Bearer ABSK-test-bedrock-key")
    );
    assert!(r.header("x-amz-date").is_none());
    assert!(!gw.logs().contains("ABSK-test-bedrock-key"));
}

/// Web identity: the token file is exchanged through the STS mock; the
/// credentials sign requests, and the ticker refreshes them before they
/// expire (the mock issues 3-second credentials), so requests keep passing
/// with ever newer keys. When STS fails and the credentials expire, a
/// request gets a generic 502 and the failure is counted; when STS is back,
/// requests pass again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bedrock_web_identity_credentials_come_from_sts_and_are_refreshed_before_expiry() {
    let mock = bedrock_mock().await;
    let role = "arn:aws:iam::123456789012:role/gateway";
    let sts = StsMock::start(
        role,
        "oidc-token-value",
        mock.clone(),
        Duration::from_secs(3),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "oidc-token-value\n").unwrap();
    let creds = format!(
        r#"credentials: {{ source: web_identity, token_file: "{}", role_arn: "{role}", sts_endpoint: "{}", session_duration: 15m, refresh_before: 14m }}"#,
        token_file.display(),
        sts.url()
    );
    let config = format!(
        r#"{CONFIG_HEAD}providers:
{p}models:
  claude: {{ routes: [ {{ provider: aws, model: "{MODEL}" }} ] }}
keys:
  - {{ name: team, key: "{KEY}" }}
"#,
        // Credential failures count for the breaker: a short cooldown lets
        // the provider back soon after STS is.
        p = bedrock_provider(&mock, &creds) + "    breaker: { cooldown: 1s }\n"
    );
    let gw = Gateway::start(&config).await;
    let resp = post(&gw, "/v1/chat/completions", &chat("claude", false)).await;
    assert_eq!(resp.status(), 200, "{:?} {}", mock.rejected(), gw.logs());
    // Refreshed in the background, again and again.
    assert!(
        support::wait_until(PATIENCE, || sts.hits() >= 3).await,
        "{}",
        sts.hits()
    );
    let resp = post(&gw, "/v1/chat/completions", &chat("claude", false)).await;
    assert_eq!(resp.status(), 200, "{:?}", mock.rejected());
    let r = mock.requests().pop().unwrap();
    let auth = r.header("authorization").unwrap().to_string();
    let id: u32 = auth["AWS4-HMAC-SHA256 Credential=ASIAMOCK".len()..][..8]
        .parse()
        .unwrap();
    assert!(id >= 2, "signed with refreshed credentials: {auth}");
    assert!(r
        .header("x-amz-security-token")
        .unwrap()
        .starts_with("mock-session-token-"));
    // STS down: once the cached credentials expire, a generic 502.
    sts.set_fail(true);
    let mut status = 200;
    for _ in 0..200 {
        status = post(&gw, "/v1/chat/completions", &chat("claude", false))
            .await
            .status()
            .as_u16();
        if status != 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 502);
    let m = gw.metrics_text().await;
    assert!(
        sample(
            &m,
            "tollgate_provider_auth_failures_total",
            &[("provider", "aws"), ("source", "sts")]
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{m}"
    );
    assert!(
        sum(
            &m,
            "tollgate_upstream_attempts_total",
            &[("provider", "aws"), ("outcome", "credentials_error")]
        ) >= 1.0
    );
    sts.set_fail(false);
    let mut ok = false;
    for _ in 0..200 {
        if post(&gw, "/v1/chat/completions", &chat("claude", false))
            .await
            .status()
            == 200
        {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "requests pass again once STS is back");
    assert!(!gw.logs().contains("oidc-token-value") && !gw.logs().contains("mock-secret-"));
}

fn vertex_provider(gcp: &GcpMock, dir: &std::path::Path, extra: &str) -> String {
    let key = dir.join("sa.json");
    std::fs::write(&key, KEY_FILE).unwrap();
    format!(
        r#"  gcp:
    kind: vertex
    base_url: "{url}/v1"
    vertex: {{ project: tollgate-test, location: us-east5, credentials: {{ source: service_account, key_file: "{key}", token_uri: "{token}"{extra} }} }}
    retry: {{ attempts: 1 }}
    health_check: {{ enabled: false }}
"#,
        url = gcp.url(),
        key = key.display(),
        token = gcp.token_uri(),
    )
}

/// Vertex Gemini: the service account's JWT is exchanged for a token
/// (signature and claims checked by the mock), which is cached, refreshed
/// before it expires (the mock issues 4-second tokens) and never logged;
/// the Gemini answer is translated and its tokens counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vertex_tokens_are_cached_refreshed_before_expiry_and_never_logged() {
    let gcp = GcpMock::start(Duration::from_secs(4)).await;
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        r#"{CONFIG_HEAD}providers:
{p}models:
  gem: {{ routes: [ {{ provider: gcp, model: gemini-2.5-flash, price: {{ input: 1.0, output: 4.0 }} }} ] }}
keys:
  - {{ name: team, key: "{KEY}" }}
"#,
        p = vertex_provider(&gcp, dir.path(), ", refresh_before: 2s")
    );
    let gw = Gateway::start(&config).await;
    let resp = post(&gw, "/v1/chat/completions", &chat("gem", false)).await;
    assert_eq!(resp.status(), 200, "{:?} {}", gcp.rejected(), gw.logs());
    let v: Value = resp.json().await.unwrap();
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "Hello from Gemini on Vertex."
    );
    let call = gcp.calls().pop().unwrap();
    assert_eq!(
        call.path,
        "/v1/projects/tollgate-test/locations/us-east5/publishers/google/models/gemini-2.5-flash:generateContent"
    );
    assert!(gcp.rejected().is_empty(), "{:?}", gcp.rejected());
    assert!(support::wait_until(PATIENCE, || gcp.token_hits() >= 3).await);
    let resp = post(&gw, "/v1/chat/completions", &chat("gem", false)).await;
    assert_eq!(resp.status(), 200, "{}", gw.logs());
    let bearer = gcp
        .calls()
        .pop()
        .unwrap()
        .header("authorization")
        .unwrap()
        .to_string();
    let n: usize = bearer["Bearer ya29.mock-".len()..].parse().unwrap();
    assert!(n >= 3, "a refreshed token: {bearer}");
    gw.wait_metric(
        "tollgate_tokens_total",
        &[("request_model", "gem"), ("token_type", "output")],
        12.0,
    )
    .await;
    let m = gw.metrics_text().await;
    assert!(near(cost(&m, "gem", "gcp"), 2.0 * (5.0 + 6.0 * 4.0) / 1e6));
    let logs = gw.logs();
    assert!(
        !logs.contains("ya29.mock") && !logs.contains("PRIVATE KEY"),
        "{logs}"
    );
}

/// The token endpoint failing: a generic 502, the failure counted, and the
/// breaker treats it like a connect failure (after two, the provider is
/// out and the next request does not even call the token endpoint).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vertex_token_endpoint_failures_are_generic_502s_counted_and_fed_to_the_breaker() {
    let gcp = GcpMock::start(Duration::from_secs(3600)).await;
    gcp.set_fail(true);
    let dir = tempfile::tempdir().unwrap();
    let p = vertex_provider(&gcp, dir.path(), "")
        + "    breaker: { consecutive_failures: 2, cooldown: 60s }\n";
    let config = format!(
        r#"{CONFIG_HEAD}providers:
{p}models:
  gem: {{ routes: [ {{ provider: gcp, model: gemini-2.5-flash }} ] }}
keys:
  - {{ name: team, key: "{KEY}" }}
"#
    );
    let gw = Gateway::start(&config).await;
    let mut statuses = Vec::new();
    for _ in 0..2 {
        // Past the fail-fast second, so each one asks the endpoint.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let resp = post(&gw, "/v1/chat/completions", &chat("gem", false)).await;
        let status = resp.status().as_u16();
        let body = resp.bytes().await.unwrap();
        assert_error(status, &body, (502, "api_error", "upstream_error"));
        statuses.push(status);
    }
    let m = gw.metrics_text().await;
    assert!(
        sum(
            &m,
            "tollgate_provider_auth_failures_total",
            &[("provider", "gcp"), ("source", "token_endpoint")]
        ) >= 2.0,
        "{m}"
    );
    assert_eq!(
        sum(
            &m,
            "tollgate_upstream_attempts_total",
            &[("provider", "gcp"), ("outcome", "credentials_error")]
        ),
        2.0
    );
    let resp = post(&gw, "/v1/chat/completions", &chat("gem", false)).await;
    assert_eq!(resp.status(), 503, "the breaker is open: {}", gw.logs());
    assert!(gcp.calls().is_empty(), "Vertex itself was never called");
    // The open breaker kept this request from the token endpoint (the
    // ticker still tries, off the request path).
    gw.wait_metric("tollgate_requests_total", &[("request_model", "gem")], 3.0)
        .await;
    let m = gw.metrics_text().await;
    assert_eq!(
        sum(
            &m,
            "tollgate_upstream_attempts_total",
            &[("provider", "gcp"), ("outcome", "credentials_error")]
        ),
        2.0
    );
    let _ = statuses;
}

/// The fallback chain Bedrock (throttled) → Vertex → OpenAI-kind: the first
/// request is served by Vertex, the second (Vertex answering 503) by the
/// OpenAI-kind provider; each route's tokens and cost are exact on
/// /metrics, and Bedrock's throttling is counted as a 429 attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallback_from_bedrock_throttling_to_vertex_to_openai_with_exact_tokens_and_cost() {
    let mock = bedrock_mock().await;
    mock.set_fault(Fault::Throttle);
    let gcp = GcpMock::start(Duration::from_secs(3600)).await;
    let openai = MockUpstream::start(Behavior::func(|_r| {
        Reply::json(200, r#"{"id":"c1","object":"chat.completion","created":1,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"from openai"},"finish_reason":"stop"}],"usage":{"prompt_tokens":21,"completion_tokens":4,"total_tokens":25}}"#)
    }))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        r#"{CONFIG_HEAD}providers:
{b}{v}  oa:
    kind: openai
    base_url: "http://127.0.0.1:{port}/v1"
    api_key: "sk-openai-test"
    health_check: {{ enabled: false }}
models:
  chain:
    routes:
      - {{ provider: aws, model: "{MODEL}", price: {{ input: 3.0, output: 15.0 }} }}
      - {{ provider: gcp, model: gemini-2.5-flash, price: {{ input: 0.3, output: 2.5 }} }}
      - {{ provider: oa, model: gpt-4o-mini, price: {{ input: 0.15, output: 0.6 }} }}
keys:
  - {{ name: team, key: "{KEY}" }}
"#,
        b = bedrock_provider(&mock, &static_creds()),
        v = vertex_provider(&gcp, dir.path(), ""),
        port = openai.port()
    );
    let gw = Gateway::start(&config).await;
    let resp = post(&gw, "/v1/chat/completions", &chat("chain", false)).await;
    assert_eq!(resp.status(), 200, "{}", gw.logs());
    assert_eq!(
        header(&resp, "x-tollgate-route").as_deref(),
        Some("gcp/gemini-2.5-flash")
    );
    gcp.set_fault(Some(503));
    let resp = post(&gw, "/v1/chat/completions", &chat("chain", false)).await;
    assert_eq!(resp.status(), 200, "{}", gw.logs());
    assert_eq!(
        header(&resp, "x-tollgate-route").as_deref(),
        Some("oa/gpt-4o-mini")
    );
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "from openai");
    gw.wait_metric(
        "tollgate_requests_total",
        &[("request_model", "chain")],
        2.0,
    )
    .await;
    let m = gw.metrics_text().await;
    assert_eq!(tokens(&m, "chain", "gcp", "gemini-2.5-flash", "input"), 5.0);
    assert_eq!(
        tokens(&m, "chain", "gcp", "gemini-2.5-flash", "output"),
        6.0
    );
    assert_eq!(tokens(&m, "chain", "oa", "gpt-4o-mini", "input"), 21.0);
    assert_eq!(tokens(&m, "chain", "oa", "gpt-4o-mini", "output"), 4.0);
    assert_eq!(tokens(&m, "chain", "aws", MODEL, "input"), 0.0);
    assert!(near(
        cost(&m, "chain", "gcp"),
        (5.0 * 0.3 + 6.0 * 2.5) / 1e6
    ));
    assert!(near(
        cost(&m, "chain", "oa"),
        (21.0 * 0.15 + 4.0 * 0.6) / 1e6
    ));
    assert_eq!(
        sum(
            &m,
            "tollgate_upstream_attempts_total",
            &[("provider", "aws"), ("outcome", "status_429")]
        ),
        2.0
    );
    assert_eq!(
        sum(
            &m,
            "tollgate_retries_total",
            &[("request_model", "chain"), ("kind", "fallback")]
        ),
        3.0
    );
    assert!(mock.rejected().is_empty() && gcp.rejected().is_empty());
}

fn want_bedrock_tools() -> Value {
    json!({
        "stream": {"content": "Checking.", "calls": [["tooluse_abc", "get_weather", {"city": "Paris"}]], "usage": [402, 58]},
        "whole": {"calls": [["tooluse_kZJMlvQmRJ6eAyJE5GIl7Q", "get_weather", {"city": "Paris"}]]},
    })
}

/// The official `openai` SDK streaming tool calls from a Bedrock route
/// (ConverseStream frames cut at random offsets), then the same non-stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_sdk_streams_tool_calls_from_a_bedrock_route() {
    let mock = BedrockMock::start(
        fixture!("bedrock/converse_tools.json"),
        fixture!("bedrock/stream_tools.jsonl"),
    )
    .await;
    mock.allow_key(AKID, SECRET, None);
    let gw = Gateway::start(&bedrock_config(&mock)).await;
    support::sdk::run_tools_script(&gw, KEY, "claude", &want_bedrock_tools()).await;
    assert!(mock.rejected().is_empty(), "{:?}", mock.rejected());
    let sent: Value = serde_json::from_slice(&mock.requests()[0].body).unwrap();
    assert_eq!(
        sent["toolConfig"]["tools"][0]["toolSpec"]["name"],
        "get_weather"
    );
}

/// The same SDK against an Anthropic model on Vertex (`streamRawPredict`
/// and `rawPredict`, the body without `model` and with
/// `anthropic_version: vertex-2023-10-16`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_sdk_streams_tool_calls_from_a_vertex_anthropic_route() {
    let gcp = GcpMock::start(Duration::from_secs(3600)).await;
    gcp.answer("streamRawPredict", fixture!("anthropic/stream_tools.sse"));
    gcp.answer("rawPredict", fixture!("anthropic/message_tools.json"));
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        r#"{CONFIG_HEAD}providers:
{p}models:
  claude: {{ routes: [ {{ provider: gcp, model: "claude-sonnet-4@20250514" }} ] }}
keys:
  - {{ name: team, key: "{KEY}" }}
"#,
        p = vertex_provider(&gcp, dir.path(), "")
    );
    let gw = Gateway::start(&config).await;
    let want = support::sdk::anthropic_fixture_tools();
    support::sdk::run_tools_script(&gw, KEY, "claude", &want).await;
    let calls = gcp.calls();
    assert!(
        calls[0]
            .path
            .ends_with("/publishers/anthropic/models/claude-sonnet-4@20250514:streamRawPredict"),
        "{}",
        calls[0].path
    );
    assert!(calls[2].path.ends_with(":rawPredict"), "{}", calls[2].path);
    let sent: Value = serde_json::from_slice(&calls[0].body).unwrap();
    assert_eq!(sent["anthropic_version"], "vertex-2023-10-16");
    assert!(
        sent.get("model").is_none() && sent["stream"] == true,
        "{sent}"
    );
    assert!(gcp.rejected().is_empty());
}

/// Config errors name the field and never quote a secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_config_errors_name_the_field_without_quoting_secrets() {
    let bad = format!(
        r#"{CONFIG_HEAD}providers:
  aws:
    kind: bedrock
    bedrock: {{ region: "US_EAST", credentials: {{ source: static, access_key_id: "AK-ID", secret_access_key: "very-secret-value" }} }}
  gcp:
    kind: vertex
    vertex: {{ project: "Bad_Project", location: us-central1 }}
    health_check: {{ path: /health }}
  oa:
    kind: openai
    base_url: "http://127.0.0.1:1/v1"
    api_keys: [ {{ key: "sk-dup-secret" }}, {{ key: "sk-dup-secret", weight: -1 }} ]
    bedrock: {{ region: us-east-1 }}
models:
  m: {{ routes: [ {{ provider: oa, model: x }} ] }}
"#
    );
    let mut gw = Gateway::spawn_with_env(&bad, &[]);
    assert!(gw.wait_exit(PATIENCE).await.is_some());
    let logs = gw.logs();
    for want in [
        "providers.aws.bedrock.region",
        "providers.aws.bedrock.credentials.access_key_id",
        "providers.gcp.vertex.project",
        "providers.gcp.health_check.path",
        "providers.oa.api_keys[1].key: is the same key as api_keys[0]",
        "providers.oa.api_keys[1].weight",
        "providers.oa.bedrock: only applies to `kind: bedrock`",
    ] {
        assert!(logs.contains(want), "{want} missing:\n{logs}");
    }
    assert!(
        !logs.contains("very-secret-value") && !logs.contains("sk-dup-secret"),
        "{logs}"
    );
}

/// A Claude-style client (`POST /v1/messages`) on a Bedrock alias: its
/// request goes through Chat Completions to Converse and back, stream and
/// not, in the Messages shape.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_messages_endpoint_reaches_bedrock_routes() {
    let mock = bedrock_mock().await;
    let gw = Gateway::start(&bedrock_config(&mock)).await;
    let body = json!({"model": "claude", "max_tokens": 100,
        "messages": [{"role": "user", "content": "Weather in Paris?"}]});
    let resp = support::client()
        .post(gw.url("/v1/messages"))
        .header("x-api-key", KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", gw.logs());
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["type"], "message", "{v}");
    assert_eq!(
        v["content"][0]["text"],
        "Paris is cloudy at 18C; Rome is sunny at 24C."
    );
    assert_eq!(v["stop_reason"], "end_turn");
    let mut stream = body.clone();
    stream["stream"] = json!(true);
    let resp = support::client()
        .post(gw.url("/v1/messages"))
        .header("x-api-key", KEY)
        .json(&stream)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert!(text.contains("event: message_stop"), "{text}");
    assert!(text.contains("cloudy"), "{text}");
    assert!(mock.rejected().is_empty(), "{:?}", mock.rejected());
}
