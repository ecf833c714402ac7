//! The Bedrock building blocks against mocks speaking the real protocols:
//! requests signed with `providers::aws::sigv4` are verified by a mock that
//! recomputes SigV4 from the spec; ConverseStream answers arrive as real
//! event-stream frames cut at random offsets and are decoded and translated
//! chunk by chunk as they arrive; web-identity credentials come from a mock
//! STS, cached and refreshed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use bytes::BytesMut;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use support::bedrock_mock::{BedrockMock, Fault};
use support::sts_mock::StsMock;
use tollgate::eventstream::DEFAULT_MAX_FRAME;
use tollgate::providers::aws::credentials::{Credentials, Provider, WebIdentity};
use tollgate::providers::aws::sigv4::{self, Payload, Request, Scope, BEDROCK};
use tollgate::providers::secret::Secret;
use tollgate::providers::token_client::TokenClient;
use tollgate::translate::bedrock::{self, ChatStream, EventPipe};
use tollgate::translate::{RequestOpts, ResponseOpts};

const MODEL: &str = "anthropic.claude-3-5-sonnet-20240620-v1:0";
const REGION: &str = "us-east-1";

macro_rules! fixture {
    ($name:literal) => {
        include_str!(concat!("fixtures/bedrock/", $name))
    };
}

fn static_creds(token: Option<&str>) -> Credentials {
    Credentials {
        access_key_id: "AKIDTESTGATEWAY".into(),
        secret_access_key: Secret::new("test/secret+key=value"),
        session_token: token.map(Secret::new),
        expires: None,
    }
}

fn body() -> bytes::Bytes {
    let req: Value = serde_json::from_str(fixture!("chat_request.json")).unwrap();
    let opts = RequestOpts {
        model: MODEL,
        stream: true,
        default_max_tokens: None,
        drop_unsupported: false,
    };
    bedrock::chat_request(&req, &opts).unwrap().body
}

/// Signs and sends one Converse call; returns the response.
async fn send(
    mock: &BedrockMock,
    creds: &Credentials,
    stream: bool,
    body: &[u8],
    tamper: bool,
) -> reqwest::Response {
    let path = bedrock::converse_path(MODEL, stream);
    let url = format!("{}{}", mock.url(), path);
    let host = mock.host();
    let headers = [
        ("host", host.as_str()),
        ("content-type", "application/json"),
    ];
    let req = Request {
        method: "POST",
        url: &url,
        headers: &headers,
        payload: Payload::Bytes(body),
    };
    let scope = Scope {
        region: REGION,
        service: BEDROCK,
        time: SystemTime::now(),
    };
    let signed = sigv4::sign(&req, &scope, creds).unwrap();
    let mut b = reqwest::Client::new()
        .post(&url)
        .header("content-type", "application/json");
    for (k, v) in &signed {
        b = b.header(k.as_str(), v.to_str().unwrap());
    }
    let mut sent = body.to_vec();
    if tamper {
        sent.push(b' ');
    }
    b.body(sent).send().await.unwrap()
}

fn ropts() -> ResponseOpts<'static> {
    ResponseOpts {
        model: "claude-on-bedrock",
        request_id: "chatcmpl-req-1",
        include_usage: true,
    }
}

/// Reads a ConverseStream response chunk by chunk through the pipe.
async fn pipe_stream(resp: reqwest::Response) -> (Vec<Value>, EventPipe, bool, usize) {
    let (events, pipe, failed_at, chunks) = pipe_stream_at(resp).await;
    (events, pipe, failed_at.is_none(), chunks)
}

/// Like [`pipe_stream`], saying where decoding failed: `"feed"` (while the
/// body was arriving) or `"finish"` (when it ended).
async fn pipe_stream_at(
    resp: reqwest::Response,
) -> (Vec<Value>, EventPipe, Option<&'static str>, usize) {
    let mut pipe = EventPipe::new(ChatStream::new(&ropts()), DEFAULT_MAX_FRAME);
    let mut out = BytesMut::new();
    let mut failed_at = None;
    let mut chunks = 0;
    let mut resp = resp;
    while let Some(c) = resp.chunk().await.unwrap() {
        chunks += 1;
        if pipe.feed(&c, &mut out).is_err() {
            failed_at = Some("feed");
            break;
        }
    }
    if failed_at.is_none() && pipe.finish(&mut out).is_err() {
        failed_at = Some("finish");
    }
    let events = std::str::from_utf8(&out)
        .unwrap()
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .map(|d| {
            if d == "[DONE]" {
                json!("[DONE]")
            } else {
                let mut v: Value = serde_json::from_str(d).unwrap();
                if v.get("created").is_some() {
                    v["created"] = json!(0);
                }
                v
            }
        })
        .collect();
    (events, pipe, failed_at, chunks)
}

#[tokio::test]
async fn signed_converse_is_verified_by_the_mock_and_translated() {
    let mock = BedrockMock::start(
        fixture!("converse_text.json"),
        fixture!("stream_text.jsonl"),
    )
    .await;
    let creds = static_creds(None);
    mock.allow_key(&creds.access_key_id, creds.secret_access_key.expose(), None);
    let resp = send(&mock, &creds, false, &body(), false).await;
    assert_eq!(resp.status(), 200, "{:?}", mock.rejected());
    let raw = resp.bytes().await.unwrap();
    let (out, usage) = bedrock::chat_response(&raw, &ropts()).unwrap();
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "Paris is cloudy at 18C; Rome is sunny at 24C."
    );
    assert_eq!(
        (usage.prompt, usage.cached, usage.cache_write),
        (1330, 1024, 276)
    );
    // What reached the mock: the model id encoded in the path, no model in the body.
    let r = &mock.requests()[0];
    assert_eq!(
        r.path,
        "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse"
    );
    let sent: Value = serde_json::from_slice(&r.body).unwrap();
    assert!(sent.get("model").is_none());
}

#[tokio::test]
async fn a_body_changed_after_signing_or_a_wrong_secret_is_refused() {
    let mock = BedrockMock::start(fixture!("converse_text.json"), "").await;
    let creds = static_creds(None);
    mock.allow_key(&creds.access_key_id, "another-secret", None);
    let resp = send(&mock, &creds, false, &body(), false).await;
    assert_eq!(resp.status(), 403);
    assert_eq!(mock.rejected(), ["signature does not match"]);
    mock.allow_key(&creds.access_key_id, creds.secret_access_key.expose(), None);
    let resp = send(&mock, &creds, false, &body(), true).await;
    assert_eq!(resp.status(), 403);
    // Mapped for the client: a generic 502, the provider's text not shown.
    let kind = resp
        .headers()
        .get("x-amzn-errortype")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let text = resp.bytes().await.unwrap();
    let e = bedrock::error(403, Some(&kind), &text);
    assert_eq!(e.status(), 502);
    assert_eq!(e.code(), "upstream_auth_error");
}

#[tokio::test]
async fn session_tokens_are_signed_and_required() {
    let mock = BedrockMock::start(fixture!("converse_text.json"), "").await;
    let creds = static_creds(Some("FwoGZXIvYXdzEXAMPLETOKEN"));
    mock.allow_key(
        &creds.access_key_id,
        creds.secret_access_key.expose(),
        Some("FwoGZXIvYXdzEXAMPLETOKEN"),
    );
    assert_eq!(
        send(&mock, &creds, false, &body(), false).await.status(),
        200
    );
    let without = static_creds(None);
    assert_eq!(
        send(&mock, &without, false, &body(), false).await.status(),
        403
    );
    assert!(
        mock.rejected()[0].contains("x-amz-security-token"),
        "{:?}",
        mock.rejected()
    );
}

#[tokio::test]
async fn api_keys_are_sent_as_bearer() {
    let mock = BedrockMock::start(fixture!("converse_text.json"), "").await;
    mock.allow_api_key("ABSKbedrockapikey123");
    let auth = sigv4::bearer(&Secret::new("ABSKbedrockapikey123")).unwrap();
    let url = format!("{}{}", mock.url(), bedrock::converse_path(MODEL, false));
    let resp = reqwest::Client::new()
        .post(&url)
        .header("authorization", auth.to_str().unwrap())
        .body(body().to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn converse_stream_split_at_random_offsets_translates_the_same() {
    let mock = BedrockMock::start("", fixture!("stream_text.jsonl")).await;
    let creds = static_creds(None);
    mock.allow_key(&creds.access_key_id, creds.secret_access_key.expose(), None);
    let want: Vec<Value> = fixture!("stream_text.expected.jsonl")
        .lines()
        .map(|l| {
            if l == "[DONE]" {
                json!("[DONE]")
            } else {
                serde_json::from_str(l).unwrap()
            }
        })
        .collect();
    for seed in [1u64, 7, 42, 1234, 99991] {
        mock.set_seed(seed);
        let resp = send(&mock, &creds, true, &body(), false).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.headers()["content-type"],
            "application/vnd.amazon.eventstream"
        );
        let (events, pipe, ok, chunks) = pipe_stream(resp).await;
        assert!(ok);
        assert!(chunks > 5, "the body arrived in {chunks} chunks");
        assert_eq!(events, want, "seed {seed}");
        assert_eq!(pipe.usage().unwrap().prompt, 1330);
    }
}

#[tokio::test]
async fn a_tool_stream_is_translated_as_it_arrives() {
    let mock = BedrockMock::start("", fixture!("stream_tools.jsonl")).await;
    let creds = static_creds(None);
    mock.allow_key(&creds.access_key_id, creds.secret_access_key.expose(), None);
    let (events, _, ok, _) = pipe_stream(send(&mock, &creds, true, &body(), false).await).await;
    assert!(ok);
    let args: String = events
        .iter()
        .filter_map(|e| e.pointer("/choices/0/delta/tool_calls/0/function/arguments"))
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    assert_eq!(args, r#"{"city": "Paris"}"#);
}

fn assert_error_end(events: &[Value]) {
    let last = events.last().unwrap();
    assert_eq!(last["error"]["code"], "upstream_error", "{events:?}");
    assert!(!events.contains(&json!("[DONE]")));
}

#[tokio::test]
async fn bad_crc_truncated_and_oversized_frames_end_in_an_error_event() {
    let mock = BedrockMock::start("", fixture!("stream_text.jsonl")).await;
    let creds = static_creds(None);
    mock.allow_key(&creds.access_key_id, creds.secret_access_key.expose(), None);
    // Bad CRC and oversized (the prelude announces 32 MiB) fail while the
    // body arrives; a truncated frame when it ends.
    for (fault, at) in [
        (Fault::BadCrc, "feed"),
        (Fault::Truncated, "finish"),
        (Fault::Oversized, "feed"),
    ] {
        mock.set_fault(fault);
        let (events, _, failed_at, _) =
            pipe_stream_at(send(&mock, &creds, true, &body(), false).await).await;
        assert_eq!(failed_at, Some(at), "{fault:?}");
        assert_error_end(&events);
        // What passed before the fault reached the client.
        assert!(
            events
                .iter()
                .any(|e| e.pointer("/choices/0/delta/content") == Some(&json!("Paris is "))),
            "{fault:?}: {events:?}"
        );
    }
}

#[tokio::test]
async fn throttling_maps_to_a_retryable_429() {
    let mock = BedrockMock::start("", "").await;
    let creds = static_creds(None);
    mock.allow_key(&creds.access_key_id, creds.secret_access_key.expose(), None);
    mock.set_fault(Fault::Throttle);
    let resp = send(&mock, &creds, false, &body(), false).await;
    assert_eq!(resp.status(), 429);
    let kind = resp.headers()["x-amzn-errortype"]
        .to_str()
        .unwrap()
        .to_string();
    let e = bedrock::error(429, Some(&kind), &resp.bytes().await.unwrap());
    assert_eq!(e.status(), 429);
    assert!(bedrock::retryable(&e));
}

fn web_identity(sts: &StsMock, token_file: &std::path::Path, refresh_before: Duration) -> Provider {
    Provider::web_identity(
        WebIdentity {
            token_file: token_file.to_str().unwrap().into(),
            role_arn: "arn:aws:iam::123456789012:role/tollgate".into(),
            session_name: "tollgate-test".into(),
            sts_endpoint: sts.url(),
            duration: Duration::from_secs(3600),
            refresh_before,
        },
        TokenClient::new(Duration::from_secs(5), None),
    )
}

#[tokio::test]
async fn web_identity_credentials_come_from_sts_and_sign_requests() {
    let mock = BedrockMock::start(fixture!("converse_text.json"), "").await;
    let sts = StsMock::start(
        "arn:aws:iam::123456789012:role/tollgate",
        "eyJ.oidc.token",
        mock.clone(),
        Duration::from_secs(3600),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "eyJ.oidc.token\n").unwrap();
    let p = web_identity(&sts, &file, Duration::from_secs(300));
    let c = p.credentials().await.unwrap();
    assert!(c.access_key_id.starts_with("ASIAMOCK"));
    assert!(!format!("{c:?} {p:?}").contains("mock-secret"));
    assert_eq!(
        send(&mock, &c, false, &body(), false).await.status(),
        200,
        "{:?}",
        mock.rejected()
    );
    // Cached: no second STS call while fresh.
    let again = p.credentials().await.unwrap();
    assert_eq!(again.access_key_id, c.access_key_id);
    assert_eq!(sts.hits(), 1);
}

#[tokio::test]
async fn web_identity_refreshes_before_expiry_one_caller_at_a_time() {
    let mock = BedrockMock::start(fixture!("converse_text.json"), "").await;
    let sts = StsMock::start(
        "arn:aws:iam::123456789012:role/tollgate",
        "tok",
        mock.clone(),
        Duration::from_secs(3600),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "tok").unwrap();
    let p = Arc::new(web_identity(&sts, &file, Duration::from_secs(300)));
    // 32 concurrent first callers: one STS call.
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let p = p.clone();
            tokio::spawn(async move { p.credentials().await.unwrap().access_key_id.clone() })
        })
        .collect();
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap());
    }
    assert_eq!(sts.hits(), 1);
    assert!(ids.iter().all(|i| *i == ids[0]));
    // Credentials that expire within the refresh margin are refreshed.
    let short = Arc::new(web_identity(&sts, &file, Duration::from_secs(300)));
    sts.set_lifetime(Duration::from_secs(120));
    let a = short.credentials().await.unwrap();
    let b = short.credentials().await.unwrap();
    assert_ne!(a.access_key_id, b.access_key_id);
    assert_eq!(sts.hits(), 3);
    // A failed refresh keeps credentials that have not expired yet...
    sts.set_fail(true);
    let c = short.credentials().await.unwrap();
    assert_eq!(c.access_key_id, b.access_key_id);
    // ...and with nothing cached, fails as a generic 502.
    let fresh = web_identity(&sts, &file, Duration::from_secs(300));
    let e = fresh.credentials().await.unwrap_err();
    let g: tollgate::base::error::GatewayError = e.into();
    assert_eq!(g.status(), 502);
    // A wrong token is refused by STS (its message never surfaces).
    sts.set_fail(false);
    std::fs::write(&file, "wrong-token").unwrap();
    let e = web_identity(&sts, &file, Duration::from_secs(300))
        .credentials()
        .await
        .unwrap_err();
    assert!(e.to_string().contains("InvalidIdentityToken"), "{e}");
    assert!(!e.to_string().contains("wrong-token"), "{e}");
}
