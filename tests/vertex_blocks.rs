//! The Vertex building blocks against a mock Google token endpoint (which
//! verifies the JWT's RS256 signature and claims) and a mock Vertex API
//! (which accepts only live tokens it issued).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use support::gcp_mock::{GcpMock, KEY_FILE};
use tollgate::providers::gcp::config::{GcpCredentials, VertexConfig};
use tollgate::providers::gcp::oauth::TokenSource;
use tollgate::providers::gcp::vertex;
use tollgate::providers::secret::Secret;
use tollgate::providers::token_client::TokenClient;
use tollgate::translate::{anthropic, gemini, RequestOpts, ResponseOpts};

fn source(mock: &GcpMock, key: &str, refresh_before: &str) -> TokenSource {
    let yaml = format!(
        "project: tollgate-test\nlocation: us-central1\ncredentials: {{source: service_account, token_uri: \"{}\", refresh_before: {refresh_before}}}",
        mock.token_uri()
    );
    let mut c: VertexConfig = serde_yaml::from_str(&yaml).unwrap();
    if let Some(GcpCredentials::ServiceAccount { key_json, .. }) = &mut c.credentials {
        *key_json = Some(Secret::new(key));
    }
    assert!(c.validate("v").is_empty(), "{:?}", c.validate("v"));
    c.build(
        "v",
        |_| None,
        TokenClient::new(Duration::from_secs(5), None),
    )
    .unwrap()
}

async fn call(mock: &GcpMock, path: &str, token: &str, body: Vec<u8>) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}/v1{path}", mock.url()))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
}

fn ropts() -> ResponseOpts<'static> {
    ResponseOpts {
        model: "smart",
        request_id: "chatcmpl-1",
        include_usage: false,
    }
}

#[tokio::test]
async fn a_service_account_token_is_issued_cached_and_accepted_by_vertex() {
    let mock = GcpMock::start(Duration::from_secs(3600)).await;
    let src = source(&mock, KEY_FILE, "5m");
    let t = src.token().await.unwrap();
    assert_eq!(mock.token_hits(), 1, "{:?}", mock.rejected());
    assert!(!format!("{t:?} {src:?}").contains("ya29"));
    // Gemini on Vertex: the Gemini translator's body, Vertex's path.
    let req = json!({"model": "smart", "messages": [{"role": "user", "content": "hi"}]});
    let opts = RequestOpts {
        model: "gemini-2.5-flash",
        stream: false,
        default_max_tokens: None,
        drop_unsupported: false,
    };
    let body = gemini::chat_request(&req, &opts).unwrap().body;
    let path = vertex::chat_path("tollgate-test", "us-central1", "gemini-2.5-flash", false);
    let resp = call(&mock, &path, t.token.expose(), body.to_vec()).await;
    assert_eq!(resp.status(), 200);
    let raw = resp.bytes().await.unwrap();
    let (out, _) = gemini::chat_response(&raw, &ropts()).unwrap();
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "Hello from Gemini on Vertex."
    );
    // Cached for the next request.
    let t2 = src.token().await.unwrap();
    assert_eq!(t2.token.expose(), t.token.expose());
    assert_eq!(mock.token_hits(), 1);
    // Claude on Vertex: the Messages body without model, with the version.
    let opts = RequestOpts {
        model: "claude-sonnet-4@20250514",
        stream: false,
        default_max_tokens: Some(64),
        drop_unsupported: false,
    };
    let body = vertex::anthropic_request(&req, &opts).unwrap().body;
    let path = vertex::chat_path(
        "tollgate-test",
        "us-east5",
        "claude-sonnet-4@20250514",
        false,
    );
    let resp = call(&mock, &path, t.token.expose(), body.to_vec()).await;
    assert_eq!(resp.status(), 200);
    let (out, usage) = anthropic::chat_response(&resp.bytes().await.unwrap(), &ropts()).unwrap();
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "Hello from Claude on Vertex."
    );
    assert_eq!(usage.completion, 7);
    let sent = mock.calls().last().unwrap().clone();
    assert!(
        sent.path
            .ends_with("/publishers/anthropic/models/claude-sonnet-4@20250514:rawPredict"),
        "{}",
        sent.path
    );
    let sent: Value = serde_json::from_slice(&sent.body).unwrap();
    assert_eq!(sent["anthropic_version"], "vertex-2023-10-16");
    assert!(sent.get("model").is_none());
}

#[tokio::test]
async fn a_token_near_expiry_is_refreshed_once_for_concurrent_callers() {
    let mock = GcpMock::start(Duration::from_secs(3600)).await;
    let src = Arc::new(source(&mock, KEY_FILE, "5m"));
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let s = src.clone();
            tokio::spawn(async move { s.token().await.unwrap().token.expose().to_string() })
        })
        .collect();
    let mut got = Vec::new();
    for t in tasks {
        got.push(t.await.unwrap());
    }
    assert_eq!(mock.token_hits(), 1);
    assert!(got.iter().all(|t| *t == got[0]));
    // Tokens living less than the refresh margin: every call refreshes.
    mock.set_expires_in(Duration::from_secs(60));
    let short = source(&mock, KEY_FILE, "5m");
    let a = short.token().await.unwrap();
    let b = short.token().await.unwrap();
    assert_ne!(a.token.expose(), b.token.expose());
    assert_eq!(mock.token_hits(), 3);
    // The old token still works until it expires; an unknown one does not.
    let path = vertex::chat_path("tollgate-test", "us-central1", "gemini-2.5-flash", false);
    assert_eq!(
        call(&mock, &path, a.token.expose(), b"{}".to_vec())
            .await
            .status(),
        200
    );
    assert_eq!(
        call(&mock, &path, "ya29.forged", b"{}".to_vec())
            .await
            .status(),
        401
    );
}

#[tokio::test]
async fn an_expired_token_is_refused_by_vertex_and_replaced() {
    let mock = GcpMock::start(Duration::from_secs(1)).await;
    // refresh_before 0: the token is used until it expires.
    let src = source(&mock, KEY_FILE, "0s");
    let a = src.token().await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let path = vertex::chat_path("tollgate-test", "us-central1", "gemini-2.5-flash", false);
    assert_eq!(
        call(&mock, &path, a.token.expose(), b"{}".to_vec())
            .await
            .status(),
        401
    );
    let b = src.token().await.unwrap();
    assert_ne!(a.token.expose(), b.token.expose());
    assert_eq!(
        call(&mock, &path, b.token.expose(), b"{}".to_vec())
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn a_jwt_signed_by_another_key_and_endpoint_failures_are_generic_502s() {
    let mock = GcpMock::start(Duration::from_secs(3600)).await;
    // Same account, a different RSA key: the mock's signature check refuses it.
    let other = {
        let mut v: Value = serde_json::from_str(KEY_FILE).unwrap();
        v["private_key"] = json!(include_str!("fixtures/gcp/other-key.pem"));
        v.to_string()
    };
    let e = source(&mock, &other, "5m").token().await.unwrap_err();
    assert_eq!(mock.rejected(), ["bad signature"]);
    assert!(e.to_string().contains("invalid_grant"), "{e}");
    let g: tollgate::base::error::GatewayError = e.into();
    assert_eq!(g.status(), 502);
    assert_eq!(g.code(), "upstream_error");
    // The endpoint failing, or unreachable.
    mock.set_fail(true);
    assert!(source(&mock, KEY_FILE, "5m").token().await.is_err());
    let dead = TokenClient::new(Duration::from_secs(2), None);
    let r = dead.post_form("http://127.0.0.1:1/token", "a=b").await;
    assert!(r.is_err());
}
