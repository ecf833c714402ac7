#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The core request path end to end: the real gateway binary in front of
//! mock upstreams on loopback. Alias rewrite on every proxied endpoint (with
//! and without a `base_url` path prefix), key injection and header
//! stripping, bodies past Pingora's 64 KiB buffer, SSE passthrough (byte
//! identical and incremental), round-robin balancing, active health checks,
//! an HTTPS upstream behind a private CA, `/v1/models`, `/healthz`,
//! `/metrics` and `x-request-id`.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use support::prom;
use support::{
    assert_error, sse_chat_events, text, wait_until, Behavior, Gateway, MockUpstream, Recorded,
    TestCa, CONFIG_HEAD,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// Gateway key of `alice` (may use every alias unless a test says otherwise).
const KEY: &str = "tg-core-alice-key-0001";
/// Gateway key of `bob`.
const KEY_BOB: &str = "tg-core-bob-key-000002";
const PROVIDER_KEY: &str = "sk-core-provider-secret-91c2";
const PROVIDER_KEY_2: &str = "sk-core-provider-secret-2-d4e8";
/// Generous bound for conditions that should hold almost at once (2 shared cores).
const QUICK: Duration = Duration::from_secs(15);

/// A config with the given `providers:` and `models:` bodies (already
/// indented by two spaces) and the given `keys:` body.
fn config(providers: &str, models: &str, keys: &str) -> String {
    format!(
        r#"{CONFIG_HEAD}providers:
{providers}
models:
{models}
keys:
{keys}
"#
    )
}

/// Both keys, allowed every alias.
fn all_keys() -> String {
    format!("  - {{ name: alice, key: \"{KEY}\" }}\n  - {{ name: bob, key: \"{KEY_BOB}\" }}")
}

/// A plain provider `name` at `127.0.0.1:port` with `prefix` and health
/// checks off.
fn provider(name: &str, port: u16, prefix: &str, api_key: &str) -> String {
    format!(
        "  {name}:\n    kind: openai\n    base_url: \"http://127.0.0.1:{port}{prefix}\"\n    api_key: \"{api_key}\"\n    health_check: {{ enabled: false }}\n"
    )
}

/// The JSON string literal for `s`.
fn jstr(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// `v` (an object) without its top-level `model`.
fn without_model(v: &Value) -> Value {
    let mut v = v.clone();
    v.as_object_mut()
        .expect("body is a JSON object")
        .remove("model");
    v
}

/// POSTs `body` to `path` with `key` as a bearer token.
async fn post(
    gw: &Gateway,
    path: &str,
    key: &str,
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    support::client()
        .post(gw.url(path))
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {path} failed: {e}; log:\n{}", gw.logs()))
}

/// A small chat body for `model`.
fn chat(model: &str) -> String {
    json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}).to_string()
}

/// POSTs a small chat request and returns `(status, body)`.
async fn post_chat(gw: &Gateway, model: &str) -> (u16, Vec<u8>) {
    let resp = post(gw, "/v1/chat/completions", KEY, chat(model)).await;
    let status = resp.status().as_u16();
    (status, resp.bytes().await.expect("body").to_vec())
}

/// The one value of `metric{labels}` on the gateway's `/metrics`.
async fn metric(gw: &Gateway, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    prom::sample(&gw.metrics_text().await, name, labels)
}

/// Polls `/metrics` until `metric{labels}` equals `want`; returns whether it did.
async fn wait_metric(
    gw: &Gateway,
    name: &str,
    labels: &[(&str, &str)],
    want: f64,
    timeout: Duration,
) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if metric(gw, name, labels).await == Some(want) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `/metrics` once `n` requests for `alias` have been recorded (requests
/// are counted when they finish, just after the client has its answer, and
/// after their attempts were counted).
async fn settled_metrics(gw: &Gateway, alias: &str, n: usize) -> String {
    let deadline = Instant::now() + QUICK;
    loop {
        let t = gw.metrics_text().await;
        let got = prom::sum(&t, "tollgate_requests_total", &[("request_model", alias)]);
        if got == n as f64 {
            return t;
        }
        assert!(
            got < n as f64 && Instant::now() < deadline,
            "tollgate_requests_total{{request_model={alias}}} is {got}, expected {n}:\n{t}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Reads a response body to its end as separate chunks.
async fn chunks(resp: reqwest::Response) -> Vec<bytes::Bytes> {
    let mut out = Vec::new();
    let mut s = resp.bytes_stream();
    while let Some(item) = s.next().await {
        out.push(item.expect("response body chunk"));
    }
    out
}

/// A deterministic pseudo-random filler of `n` bytes drawn from ASCII
/// letters and digits (so reordered or repeated blocks change the hash).
fn filler(n: usize, seed: u64) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ALPHABET[(x % ALPHABET.len() as u64) as usize] as char
        })
        .collect()
}

// ---------------------------------------------------------------------------
// 1. Alias rewrite
// ---------------------------------------------------------------------------

/// Request bodies per endpoint, with `@M@` where the top-level `model` value
/// goes and `@ALIAS@` where the alias appears as plain data (which must be
/// left alone). Odd spacing, escapes and number spellings that any
/// re-serialization would change are deliberate.
const BODIES: [(&str, &str); 4] = [
    (
        "chat/completions",
        "{\"messages\":[{\"role\":\"system\",\"content\":\"say \\\"model\\\": @ALIAS@ \\u00e9 \u{2713}\"},\n  {\"role\":\"user\",\"content\":\"hi\"}],  \"model\" :\t@M@ ,\"temperature\":0.70,\"top_p\":1.0e0,\"seed\":12345678901234567890,\"metadata\":{\"model\":\"@ALIAS@\"},\"stream\":false}",
    ),
    (
        "completions",
        "{ \"model\": @M@,\n  \"prompt\": [\"a\\nb\", \"@ALIAS@\"],\n  \"max_tokens\": 5, \"echo\": false, \"logit_bias\": {\"50256\": -100} }",
    ),
    (
        "embeddings",
        "{\"input\":[\"x\",\"model\",\"@ALIAS@\"],\"encoding_format\":\"float\",\"model\":@M@,\"dimensions\":8}\n",
    ),
    (
        "responses",
        "{\"model\":@M@,\"input\":[{\"role\":\"user\",\"content\":[{\"type\":\"input_text\",\"text\":\"hi \\/ there\"}]}],\"instructions\":\"\",\"store\":false,\"tools\":[]}",
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alias_rewrite_replaces_only_model_on_every_endpoint_and_keeps_the_path_prefix() {
    const UP_BODY: &str = r#"{"id":"resp-1","object":"whatever","model":"from-upstream","n":1.50}"#;
    let up = MockUpstream::start(Behavior::json(200, UP_BODY)).await;
    let pre = MockUpstream::start(Behavior::json(200, UP_BODY)).await;
    let providers = format!(
        "{}{}",
        provider("up", up.port(), "/v1", PROVIDER_KEY),
        provider("pre", pre.port(), "/openai/v1", PROVIDER_KEY_2)
    );
    // One route model longer than its alias, one shorter: the length changes
    // both ways.
    let models = "  fast:\n    routes: [ { provider: up, model: qwen2.5-7b-instruct-awq } ]\n  a-rather-long-client-alias:\n    routes: [ { provider: pre, model: m1 } ]";
    let gw = Gateway::start(&config(&providers, models, &all_keys())).await;

    // (alias, route model, mock, its path prefix, provider name)
    let cases = [
        ("fast", "qwen2.5-7b-instruct-awq", &up, "/v1", "up"),
        (
            "a-rather-long-client-alias",
            "m1",
            &pre,
            "/openai/v1",
            "pre",
        ),
    ];
    for (alias, route_model, mock, prefix, pname) in cases {
        for (suffix, template) in BODIES {
            let what = format!("{alias} -> POST /v1/{suffix}");
            let template = template.replace("@ALIAS@", alias);
            assert_eq!(template.matches("@M@").count(), 1);
            let sent = template.replace("@M@", &jstr(alias));
            let expected = template.replace("@M@", &jstr(route_model));
            let sent_json: Value = serde_json::from_str(&sent).expect("test body is JSON");
            assert_eq!(sent_json["model"], alias, "{what}: test body");

            let (up_hits, pre_hits) = (up.hits(), pre.hits());
            let resp = post(&gw, &format!("/v1/{suffix}"), KEY, sent.clone()).await;
            let status = resp.status().as_u16();
            let route_header = resp
                .headers()
                .get("x-tollgate-route")
                .map(|v| v.to_str().unwrap().to_string());
            let body = resp.bytes().await.expect("body");
            assert_eq!(status, 200, "{what}: {}", text(&body));
            assert_eq!(
                text(&body),
                UP_BODY,
                "{what}: non-stream body passes through"
            );
            assert_eq!(
                route_header.as_deref(),
                Some(format!("{pname}/{route_model}").as_str()),
                "{what}: route header"
            );
            // Exactly one request reached the right mock, none the other.
            let (d_up, d_pre) = (up.hits() - up_hits, pre.hits() - pre_hits);
            if pname == "up" {
                assert_eq!((d_up, d_pre), (1, 0), "{what}: upstream hits");
            } else {
                assert_eq!((d_up, d_pre), (0, 1), "{what}: upstream hits");
            }

            let got: Recorded = mock.last().expect("recorded request");
            assert_eq!(got.method, "POST", "{what}");
            assert_eq!(got.path, format!("{prefix}/{suffix}"), "{what}: path");
            assert_eq!(
                got.body_str(),
                expected,
                "{what}: body must be the client's bytes with only the model value replaced"
            );
            assert_eq!(
                got.header("content-length"),
                Some(expected.len().to_string()),
                "{what}: content-length fixed up (client sent {})",
                sent.len()
            );
            assert_ne!(expected.len(), sent.len(), "{what}: length really changed");
            assert_eq!(got.header("transfer-encoding"), None, "{what}");
            let up_json = got.json();
            assert_eq!(up_json["model"], route_model, "{what}: model replaced");
            assert_eq!(
                without_model(&up_json),
                without_model(&sent_json),
                "{what}: every other field keeps its value"
            );
        }
    }
    assert_eq!(up.hits(), 4);
    assert_eq!(pre.hits(), 4);
}

// ---------------------------------------------------------------------------
// 2. Key injection and header stripping (RELIABILITY row 13)
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_key_is_injected_and_only_allow_listed_client_headers_go_upstream() {
    let up = MockUpstream::start(Behavior::ChatEcho).await;
    let port = up.port();
    let providers = format!(
        r#"  up:
    kind: openai
    base_url: "http://127.0.0.1:{port}/v1"
    api_key: "{PROVIDER_KEY}"
    health_check: {{ enabled: false }}
    headers: {{ OpenAI-Organization: org-from-provider, X-Provider-Extra: "yes" }}
"#
    );
    let models = "  fast:\n    routes: [ { provider: up, model: up-fast } ]";
    let gw = Gateway::start(&config(&providers, models, &all_keys())).await;

    const SECRETS: [&str; 6] = [
        "client-xapikey-secret-1111",
        "client-apikey-secret-2222",
        "client-goog-secret-3333",
        "client-cookie-secret-4444",
        "client-proxyauth-secret-5555",
        "client-custom-secret-6666",
    ];
    let client_headers: Vec<(&str, String)> = vec![
        ("authorization", format!("Bearer {KEY}")),
        ("x-api-key", SECRETS[0].to_string()),
        ("api-key", SECRETS[1].to_string()),
        ("x-goog-api-key", SECRETS[2].to_string()),
        ("cookie", format!("session={}; theme=dark", SECRETS[3])),
        ("proxy-authorization", format!("Basic {}", SECRETS[4])),
        ("x-custom-foo", SECRETS[5].to_string()),
        ("openai-organization", "org-from-client".to_string()),
        ("openai-beta", "assistants=v2".to_string()),
        ("accept-encoding", "gzip, br".to_string()),
        ("x-forwarded-for", "10.9.8.7".to_string()),
        ("user-agent", "core-proxy-test/1.0".to_string()),
        ("accept", "application/json".to_string()),
        ("content-type", "application/json".to_string()),
    ];
    let mut req = support::client()
        .post(gw.url("/v1/chat/completions"))
        .body(chat("fast"));
    for (k, v) in &client_headers {
        req = req.header(*k, v.as_str());
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let rid = resp
        .headers()
        .get("x-request-id")
        .map(|v| v.to_str().unwrap().to_string())
        .expect("x-request-id on the response");
    let body = resp.bytes().await.expect("body");
    assert_eq!(status, 200, "{}", text(&body));
    assert_eq!(up.hits(), 1);
    let got = up.last().unwrap();

    // The exact header set: allow-listed client headers, the provider's
    // extras, Host, the provider key, the new length and the request id.
    let names: BTreeMap<&str, usize> = got.headers.iter().fold(BTreeMap::new(), |mut m, (k, _)| {
        *m.entry(k.as_str()).or_default() += 1;
        m
    });
    let want: BTreeMap<&str, usize> = [
        "accept",
        "authorization",
        "content-length",
        "content-type",
        "host",
        "openai-organization",
        "user-agent",
        "x-provider-extra",
        "x-request-id",
    ]
    .into_iter()
    .map(|n| (n, 1))
    .collect();
    assert_eq!(names, want, "upstream header names: {:?}", got.headers);
    assert_eq!(
        got.header("authorization"),
        Some(format!("Bearer {PROVIDER_KEY}"))
    );
    assert_eq!(got.header("host"), Some(format!("127.0.0.1:{port}")));
    assert_eq!(
        got.header("user-agent").as_deref(),
        Some("core-proxy-test/1.0")
    );
    assert_eq!(got.header("accept").as_deref(), Some("application/json"));
    assert_eq!(
        got.header("content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(
        got.header("openai-organization").as_deref(),
        Some("org-from-provider"),
        "the client's OpenAI-* headers are dropped; the provider's own are set"
    );
    assert_eq!(got.header("x-provider-extra").as_deref(), Some("yes"));
    assert_eq!(got.header("x-request-id"), Some(rid.clone()));
    assert_eq!(
        got.header("content-length"),
        Some(got.body.len().to_string())
    );
    for (k, v) in &got.headers {
        for s in SECRETS.iter().chain([&KEY]) {
            assert!(
                !v.contains(s) && !k.contains(s),
                "client secret {s:?} reached the upstream in {k}: {v}"
            );
        }
    }

    // A client that authenticates with x-api-key only: that header is its
    // gateway key and must not go upstream either.
    let resp = support::client()
        .post(gw.url("/v1/chat/completions"))
        .header("x-api-key", KEY_BOB)
        .header("content-type", "application/json")
        .body(chat("fast"))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 200);
    let rid_bob = resp
        .headers()
        .get("x-request-id")
        .map(|v| v.to_str().unwrap().to_string())
        .expect("x-request-id on the response");
    assert_eq!(up.hits(), 2);
    let got = up.last().unwrap();
    assert_eq!(
        got.header("authorization"),
        Some(format!("Bearer {PROVIDER_KEY}"))
    );
    assert_eq!(got.header("x-api-key"), None);
    assert!(
        got.headers.iter().all(|(_, v)| !v.contains(KEY_BOB)),
        "bob's key reached the upstream: {:?}",
        got.headers
    );

    // Neither the client keys nor the provider key are logged.
    for id in [&rid, &rid_bob] {
        assert!(
            gw.wait_log(id, QUICK).await,
            "no access-log line for {id}; log:\n{}",
            gw.logs()
        );
    }
    let logs = gw.logs();
    for s in [KEY, KEY_BOB, PROVIDER_KEY] {
        assert!(!logs.contains(s), "secret {s:?} in the log:\n{logs}");
    }
}

// ---------------------------------------------------------------------------
// 3. Bodies past Pingora's 64 KiB buffer
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_of_64k_plus_1_and_8_mib_reach_the_upstream_intact_and_rewritten() {
    let up = MockUpstream::start(Behavior::ChatEcho).await;
    let providers = provider("up", up.port(), "/v1", PROVIDER_KEY);
    let models = "  fast:\n    routes: [ { provider: up, model: upstream-model-name } ]";
    let gw = Gateway::start(&config(&providers, models, &all_keys())).await;

    let mut n: usize = 0;
    for size in [64 * 1024 + 1, 8 * 1024 * 1024] {
        // `model` before the padding, and after it (so it is only found
        // past the first 64 KiB).
        for model_last in [false, true] {
            n += 1;
            let what = format!("{size} bytes, model_last={model_last}");
            let (head, tail) = if model_last {
                (
                    "{\"messages\":[{\"role\":\"user\",\"content\":\"".to_string(),
                    "\"}],\"model\":@M@}".to_string(),
                )
            } else {
                (
                    "{\"model\":@M@,\"messages\":[{\"role\":\"user\",\"content\":\"".to_string(),
                    "\"}],\"temperature\":0.5}".to_string(),
                )
            };
            let fixed = head.len() + tail.len() - "@M@".len() + jstr("fast").len();
            let template = format!("{head}{}{tail}", filler(size - fixed, n as u64));
            let sent = template.replace("@M@", &jstr("fast"));
            let expected = template.replace("@M@", &jstr("upstream-model-name"));
            assert_eq!(sent.len(), size, "{what}: test body size");

            let resp = post(&gw, "/v1/chat/completions", KEY, sent.clone()).await;
            let status = resp.status().as_u16();
            let body = resp.bytes().await.expect("body");
            assert_eq!(status, 200, "{what}: {}", text(&body));
            let v: Value = serde_json::from_slice(&body).expect("chat completion");
            assert_eq!(v["model"], "upstream-model-name", "{what}");
            assert_eq!(up.hits(), n, "{what}: one upstream request each");

            let got = up.last().unwrap();
            assert_eq!(
                got.body.len(),
                expected.len(),
                "{what}: upstream body length"
            );
            assert_eq!(
                got.header("content-length"),
                Some(expected.len().to_string()),
                "{what}"
            );
            assert_eq!(
                sha256_hex(&got.body),
                sha256_hex(expected.as_bytes()),
                "{what}: upstream body hash"
            );
            assert!(
                got.body == expected.as_bytes(),
                "{what}: upstream bytes differ"
            );
            let up_json = got.json();
            assert_eq!(up_json["model"], "upstream-model-name", "{what}");
            let sent_json: Value = serde_json::from_str(&sent).unwrap();
            assert!(
                without_model(&up_json) == without_model(&sent_json),
                "{what}: other fields changed"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// 4. Streaming
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_stream_arrives_byte_identical() {
    // 20 events in 23 chunks a few ms apart: an SSE comment, CRLF line
    // ends, and one event split across three chunks.
    let mut events = sse_chat_events("up-model", 16);
    events.insert(1, ": keep-alive comment\n\n".to_string());
    events.insert(
        3,
        "event: message\r\nid: 7\r\ndata: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"crlf\"},\"finish_reason\":null}]}\r\n\r\n"
            .to_string(),
    );
    let split = events.remove(6);
    let (a, rest) = split.split_at(9);
    let (b, c) = rest.split_at(rest.len() / 2);
    for (i, part) in [a, b, c].into_iter().enumerate() {
        events.insert(6 + i, part.to_string());
    }
    assert_eq!(events.len(), 23);
    let all: String = events.concat();

    let up = MockUpstream::start(Behavior::sse(events, Duration::from_millis(5))).await;
    let providers = provider("up", up.port(), "/v1", PROVIDER_KEY);
    let models = "  fast:\n    routes: [ { provider: up, model: up-model } ]";
    let gw = Gateway::start(&config(&providers, models, &all_keys())).await;

    let body =
        json!({"model": "fast", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let resp = post(&gw, "/v1/chat/completions", KEY, body.to_string()).await;
    assert_eq!(resp.status().as_u16(), 200);
    let ctype = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string());
    assert_eq!(ctype.as_deref(), Some("text/event-stream"));
    let got = chunks(resp).await.concat();
    assert_eq!(
        text(&got),
        all,
        "stream bytes differ from what the upstream sent"
    );
    assert_eq!(up.hits(), 1);
    let r = up.last().unwrap();
    assert_eq!(r.json()["model"], "up-model");
    assert_eq!(r.json()["stream"], true);
}

/// What the gated SSE server saw.
struct Gated {
    /// Whether the client's "got the first half" signal arrived while the
    /// server was still holding back the second half.
    released: bool,
    /// The request line and headers it received.
    head: String,
}

/// A one-shot HTTP/1.1 upstream on loopback that streams `first` as chunked
/// SSE (one chunk per event, 5 ms apart), then holds back `second` until
/// `release` fires (10 s at most), then sends `second` and ends.
async fn gated_sse_server(
    first: Vec<String>,
    second: Vec<String>,
) -> (
    SocketAddr,
    oneshot::Sender<()>,
    tokio::task::JoinHandle<Gated>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        loop {
            let (mut sock, _) = listener.accept().await.unwrap();
            sock.set_nodelay(true).unwrap();
            // Read the header (skip connections that send nothing).
            let mut buf = Vec::new();
            let mut tmp = [0u8; 8192];
            let head_end = loop {
                if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break Some(p + 4);
                }
                match sock.read(&mut tmp).await {
                    Ok(0) | Err(_) => break None,
                    Ok(n) => buf.extend_from_slice(&tmp[..n]),
                }
            };
            let Some(head_end) = head_end else { continue };
            let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.trim()
                        .eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            while buf.len() < head_end + len {
                match sock.read(&mut tmp).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&tmp[..n]),
                }
            }
            sock.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n",
            )
            .await
            .unwrap();
            let write_event = |e: &String| format!("{:x}\r\n{e}\r\n", e.len()).into_bytes();
            for e in &first {
                sock.write_all(&write_event(e)).await.unwrap();
                sock.flush().await.unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let released = tokio::time::timeout(Duration::from_secs(10), rx)
                .await
                .is_ok_and(|r| r.is_ok());
            for e in &second {
                sock.write_all(&write_event(e)).await.unwrap();
                sock.flush().await.unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            sock.write_all(b"0\r\n\r\n").await.unwrap();
            sock.flush().await.unwrap();
            // Give the gateway time to read the end before closing.
            let _ = tokio::time::timeout(Duration::from_secs(2), sock.read(&mut tmp)).await;
            return Gated { released, head };
        }
    });
    (addr, tx, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_stream_is_forwarded_incrementally_not_buffered() {
    let events = sse_chat_events("up-model", 18);
    assert_eq!(events.len(), 21);
    let (first, second) = events.split_at(10);
    let first_bytes = first.concat();
    let all = events.concat();
    let (addr, release, server) = gated_sse_server(first.to_vec(), second.to_vec()).await;

    let providers = provider("up", addr.port(), "/v1", PROVIDER_KEY);
    let models = "  fast:\n    routes: [ { provider: up, model: up-model } ]";
    let gw = Gateway::start(&config(&providers, models, &all_keys())).await;

    let body =
        json!({"model": "fast", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let started = Instant::now();
    let resp = post(&gw, "/v1/chat/completions", KEY, body.to_string()).await;
    assert_eq!(resp.status().as_u16(), 200);
    let mut stream = resp.bytes_stream();
    let mut got = Vec::new();
    let mut release = Some(release);
    let mut first_chunk_at = None;
    let mut first_half_at = None;
    while let Some(item) = tokio::time::timeout(Duration::from_secs(30), stream.next())
        .await
        .expect("stream stalled")
    {
        let b = item.expect("stream chunk");
        if !b.is_empty() && first_chunk_at.is_none() {
            first_chunk_at = Some(started.elapsed());
        }
        got.extend_from_slice(&b);
        if got.len() >= first_bytes.len() {
            if let Some(tx) = release.take() {
                // Everything the upstream has sent so far is here, and
                // nothing more (the rest is still held back).
                assert_eq!(text(&got), first_bytes, "bytes before the upstream's pause");
                first_half_at = Some(started.elapsed());
                let _ = tx.send(());
            }
        }
    }
    let outcome = tokio::time::timeout(QUICK, server)
        .await
        .expect("server finished")
        .expect("server task");
    assert!(
        outcome.released,
        "the first half of the stream did not reach the client while the upstream held back \
         the rest (buffered?); received {} of {} bytes",
        got.len(),
        all.len()
    );
    assert!(first_chunk_at.is_some() && first_half_at.is_some());
    assert_eq!(
        text(&got),
        all,
        "stream bytes differ from what the upstream sent"
    );
    assert!(
        outcome
            .head
            .starts_with("POST /v1/chat/completions HTTP/1.1\r\n"),
        "{}",
        outcome.head
    );
}

// ---------------------------------------------------------------------------
// 5. Balancing
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_balanced_over_both_backends() {
    let a = MockUpstream::start(Behavior::ChatEcho).await;
    let b = MockUpstream::start(Behavior::ChatEcho).await;
    let (pa, pb) = (a.port(), b.port());
    let providers = format!(
        r#"  pool:
    kind: openai
    base_url: "http://127.0.0.1:{pa}/v1"
    backends: ["127.0.0.1:{pa}", "127.0.0.1:{pb}"]
    api_key: "{PROVIDER_KEY}"
    health_check: {{ enabled: false }}
"#
    );
    let models = "  fast:\n    routes: [ { provider: pool, model: pooled } ]";
    let gw = Gateway::start(&config(&providers, models, &all_keys())).await;
    // Round-robin (README): one request at a time alternates the backends.
    let mut order = Vec::new();
    for i in 0..20 {
        let (status, body) = post_chat(&gw, "fast").await;
        assert_eq!(status, 200, "request {i}: {}", text(&body));
        order.push(if a.hits() > order.iter().filter(|&&x| x == 'a').count() {
            'a'
        } else {
            'b'
        });
    }
    let (ha, hb) = (a.hits(), b.hits());
    assert_eq!(ha + hb, 20, "one upstream request per client request");
    assert_eq!((ha, hb), (10, 10), "round-robin over two backends");
    assert!(
        order.windows(2).all(|w| w[0] != w[1]),
        "not alternating: {order:?}"
    );
    // Host (and path) come from base_url whichever backend serves.
    for r in a.requests().iter().chain(b.requests().iter()) {
        assert_eq!(r.header("host"), Some(format!("127.0.0.1:{pa}")));
        assert_eq!(r.path, "/v1/chat/completions");
        assert_eq!(r.json()["model"], "pooled");
    }
}

// ---------------------------------------------------------------------------
// 6. Health checks
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_backend_is_taken_out_by_http_health_checks() {
    let a = MockUpstream::start(Behavior::ChatEcho).await;
    let mut b = MockUpstream::start(Behavior::ChatEcho).await;
    let (pa, pb) = (a.port(), b.port());
    let providers = format!(
        r#"  pool:
    kind: openai
    base_url: "http://127.0.0.1:{pa}/v1"
    backends: ["127.0.0.1:{pa}", "127.0.0.1:{pb}"]
    api_key: "{PROVIDER_KEY}"
    health_check: {{ interval: 200ms, timeout: 500ms, path: /health }}
"#
    );
    let models = "  fast:\n    routes: [ { provider: pool, model: pooled } ]";
    let gw = Gateway::start(&config(&providers, models, &all_keys())).await;
    let la = format!("127.0.0.1:{pa}");
    let lb = format!("127.0.0.1:{pb}");
    let healthy = "tollgate_upstream_backend_healthy";

    // The HTTP path is really requested on both backends, repeatedly.
    assert!(
        wait_until(QUICK, || a.health_hits() >= 2 && b.health_hits() >= 2).await,
        "health path not polled: a={} b={}",
        a.health_hits(),
        b.health_hits()
    );
    for l in [&la, &lb] {
        assert!(
            wait_metric(
                &gw,
                healthy,
                &[("provider", "pool"), ("backend", l)],
                1.0,
                QUICK
            )
            .await,
            "{l} not reported healthy:\n{}",
            gw.metrics_text().await
        );
    }
    // Both serve while healthy.
    for _ in 0..10 {
        let (status, body) = post_chat(&gw, "fast").await;
        assert_eq!(status, 200, "{}", text(&body));
    }
    assert!(
        a.hits() > 0 && b.hits() > 0,
        "a={} b={}",
        a.hits(),
        b.hits()
    );

    b.stop();
    // While the checker notices, clients see no failure (a connect error
    // on the dead backend is retried on the other).
    let stopped_at = Instant::now();
    let mut during = 0;
    loop {
        let (status, body) = post_chat(&gw, "fast").await;
        assert_eq!(
            status,
            200,
            "request {during} after the stop: {}",
            text(&body)
        );
        during += 1;
        if metric(&gw, healthy, &[("provider", "pool"), ("backend", &lb)]).await == Some(0.0) {
            break;
        }
        assert!(
            stopped_at.elapsed() < QUICK,
            "stopped backend still healthy after {QUICK:?}:\n{}",
            gw.metrics_text().await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        metric(&gw, healthy, &[("provider", "pool"), ("backend", &la)]).await,
        Some(1.0),
        "the survivor stays healthy"
    );

    // Now every request goes to the survivor, on the first attempt.
    let text_before = settled_metrics(&gw, "fast", 10 + during).await;
    let attempts = |t: &str, outcome: &str| {
        prom::sum(
            t,
            "tollgate_upstream_attempts_total",
            &[("provider", "pool"), ("outcome", outcome)],
        )
    };
    let (a_before, b_before) = (a.hits(), b.hits());
    for i in 0..20 {
        let (status, body) = post_chat(&gw, "fast").await;
        assert_eq!(status, 200, "request {i} after detection: {}", text(&body));
    }
    assert_eq!(a.hits() - a_before, 20, "all 20 on the survivor");
    assert_eq!(b.hits(), b_before);
    let text_after = settled_metrics(&gw, "fast", 30 + during).await;
    assert_eq!(
        attempts(&text_after, "success") - attempts(&text_before, "success"),
        20.0
    );
    for outcome in ["connect_error", "connect_timeout", "read_error", "timeout"] {
        assert_eq!(
            attempts(&text_after, outcome),
            attempts(&text_before, outcome),
            "no {outcome} attempts once the backend is out"
        );
    }
    prom::assert_sample(
        &text_after,
        healthy,
        &[("provider", "pool"), ("backend", &lb)],
        0.0,
    );
}

// ---------------------------------------------------------------------------
// 7. HTTPS upstream with a private CA
// ---------------------------------------------------------------------------

/// The same TLS mock behind two providers: `secure` trusts the test CA
/// (`ca_file`), `unverified` has the system roots only. Aliases `sec` and
/// `insec` route to them.
fn tls_config(port: u16, ca_file: &std::path::Path) -> String {
    let providers = format!(
        r#"  secure:
    kind: openai
    base_url: "https://localhost:{port}/v1"
    api_key: "{PROVIDER_KEY}"
    ca_file: "{ca}"
    health_check: {{ enabled: false }}
  unverified:
    kind: openai
    base_url: "https://localhost:{port}/v1"
    api_key: "{PROVIDER_KEY}"
    health_check: {{ enabled: false }}
"#,
        ca = ca_file.display()
    );
    let models = "  sec:\n    routes: [ { provider: secure, model: tls-model } ]\n  insec:\n    routes: [ { provider: unverified, model: tls-model } ]";
    config(&providers, models, &all_keys())
}

/// Asserts the 502 a failed certificate verification gives.
#[track_caller]
fn assert_unverified(status: u16, body: &[u8]) {
    assert_error(status, body, (502, "api_error", "upstream_error"));
    let t = text(body);
    assert!(!t.contains(PROVIDER_KEY), "{t}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstream_is_verified_against_the_configured_ca() {
    let ca = TestCa::new();
    let up = MockUpstream::start_tls(Behavior::ChatEcho, &ca).await;
    let port = up.port();
    let gw = Gateway::start(&tls_config(port, &ca.ca_file())).await;

    // System roots only: the certificate does not verify, so no HTTP
    // request is ever written to the server.
    let (status, body) = post_chat(&gw, "insec").await;
    assert_unverified(status, &body);
    assert_eq!(
        up.hits(),
        0,
        "no HTTP request over an unverified connection"
    );

    // With the test CA: verified, SNI and Host from base_url.
    let (status, body) = post_chat(&gw, "sec").await;
    assert_eq!(status, 200, "{}; log:\n{}", text(&body), gw.logs());
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["model"], "tls-model");
    assert_eq!(up.hits(), 1);
    let got = up.last().unwrap();
    assert_eq!(got.header("host"), Some(format!("localhost:{port}")));
    assert_eq!(got.path, "/v1/chat/completions");
    assert_eq!(
        got.header("authorization"),
        Some(format!("Bearer {PROVIDER_KEY}"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_connection_verified_with_one_providers_ca_is_not_reused_by_another() {
    let ca = TestCa::new();
    let up = MockUpstream::start_tls(Behavior::ChatEcho, &ca).await;
    let gw = Gateway::start(&tls_config(up.port(), &ca.ca_file())).await;

    // `secure` opens (and pools) a connection verified against the test CA.
    let (status, body) = post_chat(&gw, "sec").await;
    assert_eq!(status, 200, "{}; log:\n{}", text(&body), gw.logs());
    assert_eq!(up.hits(), 1);

    // `unverified` trusts only the system roots: it must not ride on that
    // pooled connection (same address and SNI, different trust anchors).
    let (status, body) = post_chat(&gw, "insec").await;
    assert_eq!(
        up.hits(),
        1,
        "provider `unverified` (no ca_file) reached the server over a connection \
         verified with provider `secure`'s private CA (pooled connection reused); \
         status {status}, body {}",
        text(&body)
    );
    assert_unverified(status, &body);
}

// ---------------------------------------------------------------------------
// 8. /v1/models, /healthz, /metrics
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_list_healthz_and_metrics() {
    let up = MockUpstream::start(Behavior::ChatEcho).await;
    let providers = provider("up", up.port(), "/v1", PROVIDER_KEY);
    let models = "  fast:\n    routes: [ { provider: up, model: up-fast } ]\n  slow:\n    routes: [ { provider: up, model: up-slow } ]\n  embed:\n    routes: [ { provider: up, model: up-embed } ]";
    let keys = format!(
        "  - {{ name: alice, key: \"{KEY}\", models: [slow] }}\n  - {{ name: bob, key: \"{KEY_BOB}\" }}"
    );
    let gw = Gateway::start(&config(&providers, models, &keys)).await;
    let client = support::client();

    let list = |key: &'static str| {
        let client = client.clone();
        let url = gw.url("/v1/models");
        async move {
            let resp = client
                .get(url)
                .header("authorization", format!("Bearer {key}"))
                .send()
                .await
                .expect("GET /v1/models");
            let status = resp.status().as_u16();
            let body = resp.bytes().await.unwrap();
            assert_eq!(status, 200, "{}", text(&body));
            let v: Value = serde_json::from_slice(&body).expect("models JSON");
            assert_eq!(v["object"], "list", "{v}");
            let data = v["data"].as_array().expect("data array");
            let mut ids = Vec::new();
            for m in data {
                assert_eq!(m["object"], "model", "{m}");
                assert!(m["created"].is_u64(), "{m}");
                assert!(m["owned_by"].is_string(), "{m}");
                ids.push(m["id"].as_str().expect("id").to_string());
            }
            ids
        }
    };
    assert_eq!(list(KEY).await, ["slow"], "alice may use `slow` only");
    let mut bob = list(KEY_BOB).await;
    bob.sort();
    assert_eq!(bob, ["embed", "fast", "slow"], "bob may use every alias");

    // No key: 401, and /v1/models lists nothing.
    let resp = client.get(gw.url("/v1/models")).send().await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.bytes().await.unwrap();
    assert_error(
        status,
        &body,
        (401, "authentication_error", "invalid_api_key"),
    );

    // /healthz needs no key.
    let resp = client.get(gw.url("/healthz")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["status"], "ok");

    // One proxied request, then /metrics shows it in Prometheus text.
    let resp = post(&gw, "/v1/chat/completions", KEY_BOB, chat("fast")).await;
    assert_eq!(resp.status().as_u16(), 200);
    let _ = resp.bytes().await;
    let route = [
        ("request_model", "fast"),
        ("provider", "up"),
        ("response_model", "up-fast"),
        ("key", "bob"),
    ];
    // Metrics are recorded when the request finishes, just after the
    // client has its answer: poll.
    let deadline = Instant::now() + QUICK;
    let (ctype, body) = loop {
        let resp = client.get(gw.metrics_url()).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        let ctype = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let body = resp.text().await.unwrap();
        if prom::sum(&body, "tollgate_requests_total", &route) >= 1.0 || Instant::now() >= deadline
        {
            break (ctype, body);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert_eq!(
        prom::sum(&body, "tollgate_requests_total", &route),
        1.0,
        "{body}"
    );
    assert!(ctype.starts_with("text/plain"), "content-type {ctype:?}");
    assert!(
        body.lines()
            .any(|l| l.starts_with("# TYPE tollgate_requests_total counter")),
        "{body}"
    );
    assert!(
        body.lines().any(|l| l.starts_with("# HELP ")),
        "no HELP lines:\n{body}"
    );
    // Every non-comment line is a sample.
    for l in body
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
    {
        assert!(prom::parse_line(l).is_some(), "not a sample line: {l:?}");
    }
    // The metrics listener serves only /metrics.
    let resp = client
        .get(format!("http://{}/other", gw.metrics_addr()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);
}

// ---------------------------------------------------------------------------
// 9. x-request-id
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_id_is_echoed_or_created_and_sent_upstream() {
    let up = MockUpstream::start(Behavior::ChatEcho).await;
    let providers = provider("up", up.port(), "/v1", PROVIDER_KEY);
    let models = "  fast:\n    routes: [ { provider: up, model: up-fast } ]";
    let gw = Gateway::start(&config(&providers, models, &all_keys())).await;

    // Sends a chat for `model` with an optional x-request-id; returns
    // (status, response id, upstream id when the upstream was reached).
    let send = |model: &'static str, rid: Option<String>| {
        let gw = &gw;
        let up = &up;
        async move {
            let hits = up.hits();
            let mut req = support::client()
                .post(gw.url("/v1/chat/completions"))
                .header("authorization", format!("Bearer {KEY}"))
                .header("content-type", "application/json")
                .body(chat(model));
            if let Some(r) = &rid {
                req = req.header("x-request-id", r.as_str());
            }
            let resp = req.send().await.expect("request");
            let status = resp.status().as_u16();
            let ids: Vec<String> = resp
                .headers()
                .get_all("x-request-id")
                .iter()
                .map(|v| v.to_str().unwrap().to_string())
                .collect();
            let _ = resp.bytes().await;
            assert_eq!(ids.len(), 1, "exactly one x-request-id: {ids:?}");
            let upstream = (up.hits() > hits).then(|| up.last().unwrap().header("x-request-id"));
            (status, ids[0].clone(), upstream.flatten())
        }
    };

    // A valid client id is echoed and forwarded.
    let mine = "client-req-0123456789_abc:/.XYZ".to_string();
    let (status, id, upstream) = send("fast", Some(mine.clone())).await;
    assert_eq!(status, 200);
    assert_eq!(id, mine);
    assert_eq!(upstream.as_deref(), Some(mine.as_str()));

    // 128 characters is still valid.
    let long = "r".repeat(128);
    let (_, id, upstream) = send("fast", Some(long.clone())).await;
    assert_eq!(id, long);
    assert_eq!(upstream, Some(long));

    // No id: the gateway makes one, unique per request, and sends it upstream.
    let (_, id1, up1) = send("fast", None).await;
    let (_, id2, up2) = send("fast", None).await;
    assert!(!id1.is_empty() && !id2.is_empty());
    assert_ne!(id1, id2, "generated ids are unique");
    assert_eq!(up1.as_deref(), Some(id1.as_str()));
    assert_eq!(up2.as_deref(), Some(id2.as_str()));

    // Invalid ids (too long, a space, a quote) are replaced by a new one.
    for bad in [
        "x".repeat(129),
        "has space".to_string(),
        "q\"uote".to_string(),
    ] {
        let (status, id, upstream) = send("fast", Some(bad.clone())).await;
        assert_eq!(status, 200);
        assert_ne!(id, bad, "invalid id {bad:?} echoed");
        assert!(!id.is_empty());
        assert_eq!(upstream.as_deref(), Some(id.as_str()), "for {bad:?}");
    }

    // The gateway's own errors carry the id too.
    let (status, id, upstream) = send("no-such-model", Some("err-id-42".to_string())).await;
    assert_eq!(status, 404);
    assert_eq!(id, "err-id-42");
    assert_eq!(
        upstream, None,
        "a rejected request never reaches the upstream"
    );
}

/// Embeddings never stream, whatever the body says (decided once, at
/// admission): an embeddings request with `"stream": true` is answered,
/// logged and counted as a plain JSON request, with no time to first token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_with_stream_true_is_not_a_stream() {
    const UP_BODY: &str = r#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.5]}],"model":"e","usage":{"prompt_tokens":3,"total_tokens":3}}"#;
    let up = MockUpstream::start(Behavior::json(200, UP_BODY)).await;
    let gw = Gateway::start(&config(
        &provider("up", up.port(), "/v1", PROVIDER_KEY),
        "  emb:\n    routes: [ { provider: up, model: e } ]",
        &all_keys(),
    ))
    .await;
    let resp = support::client()
        .post(gw.url("/v1/embeddings"))
        .bearer_auth(KEY)
        .header("x-request-id", "emb-stream-1")
        .header("content-type", "application/json")
        .body(r#"{"model":"emb","input":"hi","stream":true}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), UP_BODY);
    let line = gw.access_line("emb-stream-1").await;
    assert_eq!(line["stream"], Value::Bool(false), "{line}");
    assert_eq!(line["ttft_ms"], Value::Null, "{line}");
    assert_eq!(line["prompt_tokens"], 3, "{line}");
}
