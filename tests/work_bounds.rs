//! The general work bounds of docs/config.md ("Work bounds"), each at its
//! limit and one past, end to end: body bytes (`max_body_bytes`) and JSON
//! nesting (128 levels, 127 on routes that translate the body), request
//! header bytes (`downstream.max_header_bytes`, 431). The
//! translation bounds are in `hardening_translate.rs`, the SSE event bound
//! in `hardening_sse.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::{assert_error, Behavior, Gateway, MockUpstream, Recorded, Reply, CONFIG_HEAD};

const KEY: &str = "tg-work-bounds-key-01";
const LIMIT: usize = 4096;

async fn setup() -> (MockUpstream, MockUpstream, Gateway) {
    let oai = MockUpstream::start(Behavior::ChatEcho).await;
    let gem = MockUpstream::start(Behavior::func(|_: &Recorded| {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/gemini/generate_text.json");
        Reply::json(200, std::fs::read_to_string(p).unwrap())
    }))
    .await;
    let gw = Gateway::start(&format!(
        r#"{CONFIG_HEAD}max_body_bytes: {LIMIT}
providers:
  oai:
    kind: openai
    base_url: "http://127.0.0.1:{}/v1"
    api_key: "sk-work-bounds"
    health_check: {{ enabled: false }}
  gem:
    kind: gemini
    base_url: "http://127.0.0.1:{}/v1beta"
    api_key: "AIzaSyWorkBoundsKey0123456789abcdefghij"
    health_check: {{ enabled: false }}
models:
  plain: {{ routes: [ {{ provider: oai, model: gpt-4o-mini }} ] }}
  gemini: {{ routes: [ {{ provider: gem, model: gemini-2.5-flash }} ] }}
keys:
  - {{ name: t, key: "{KEY}" }}
"#,
        oai.port(),
        gem.port()
    ))
    .await;
    (oai, gem, gw)
}

async fn post(gw: &Gateway, body: Vec<u8>) -> (u16, Vec<u8>) {
    let r = support::client()
        .post(gw.url("/v1/chat/completions"))
        .header("authorization", format!("Bearer {KEY}"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.bytes().await.unwrap().to_vec())
}

/// A chat body for `alias` of exactly `len` bytes (padded in a string).
fn sized(alias: &str, len: usize) -> Vec<u8> {
    let head =
        format!(r#"{{"model":"{alias}","messages":[{{"role":"user","content":"hi"}}],"pad":""#);
    let mut b = head.into_bytes();
    b.resize(len - 2, b'x');
    b.extend_from_slice(b"\"}");
    b
}

/// A chat body for `alias` nested `depth` levels deep (the body object is
/// level 1; the rest are arrays in `x`).
fn nested(alias: &str, depth: usize) -> Vec<u8> {
    format!(
        r#"{{"model":"{alias}","messages":[{{"role":"user","content":"hi"}}],"x":{}{}}}"#,
        "[".repeat(depth - 1),
        "]".repeat(depth - 1)
    )
    .into_bytes()
}

/// A chat body for a translated route nested `depth` levels deep, the
/// nesting in a field the translator takes: a response schema of nested
/// `items` (body, `response_format`, `json_schema`, then the schemas).
fn nested_schema(alias: &str, depth: usize) -> Vec<u8> {
    let k = depth - 3;
    format!(
        r#"{{"model":"{alias}","messages":[{{"role":"user","content":"hi"}}],"response_format":{{"type":"json_schema","json_schema":{{"name":"n","schema":{}{{}}{}}}}}}}"#,
        "{\"items\":".repeat(k - 1),
        "}".repeat(k - 1)
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_bytes_at_max_body_bytes_pass_and_one_more_is_413() {
    let (oai, _gem, gw) = setup().await;
    let (status, body) = post(&gw, sized("plain", LIMIT)).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(oai.hits(), 1);
    // All of it, with the route's model spliced in.
    assert_eq!(
        oai.last().unwrap().body.len(),
        LIMIT - "plain".len() + "gpt-4o-mini".len()
    );
    let (status, body) = post(&gw, sized("plain", LIMIT + 1)).await;
    assert_error(
        status,
        &body,
        (413, "invalid_request_error", "request_too_large"),
    );
    assert_eq!(oai.hits(), 1, "a refused body reached the upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_nesting_at_128_levels_passes_and_129_is_400() {
    let (oai, gem, gw) = setup().await;
    let (status, body) = post(&gw, nested("plain", 128)).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(oai.hits(), 1);
    let (status, body) = post(&gw, nested("plain", 129)).await;
    let v = assert_error(
        status,
        &body,
        (400, "invalid_request_error", "invalid_request"),
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("nested deeper than 128"),
        "{v}"
    );
    assert_eq!(oai.hits(), 1);

    // A translated body is read by serde_json, which nests 127 levels.
    let (status, body) = post(&gw, nested_schema("gemini", 127)).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(gem.hits(), 1);
    let (status, body) = post(&gw, nested_schema("gemini", 128)).await;
    let v = assert_error(
        status,
        &body,
        (400, "invalid_request_error", "invalid_request"),
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("recursion limit"),
        "{v}"
    );
    assert_eq!(gem.hits(), 1);
}

/// A request whose header, from its first byte to the end of its empty line,
/// is exactly `len` bytes (padded in `X-Pad`), with a small chat body.
fn header_of(len: usize) -> Vec<u8> {
    let body = r#"{"model":"plain","messages":[{"role":"user","content":"hi"}]}"#;
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nX-Pad: ",
        body.len()
    );
    let pad = len - head.len() - "\r\n\r\n".len();
    let mut req = head.into_bytes();
    req.resize(req.len() + pad, b'p');
    req.extend_from_slice(b"\r\n\r\n");
    assert_eq!(req.len(), len);
    req.extend_from_slice(body.as_bytes());
    req
}

/// Sends `req` on a new connection; the status of the answer.
async fn raw_status(gw: &Gateway, req: &[u8]) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(gw.listen_addr())
        .await
        .unwrap();
    s.write_all(req).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf).await.unwrap();
        assert!(
            n > 0,
            "closed without an answer: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&got).into_owned();
    line.split(' ').nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn request_header_bytes_at_the_limit_and_one_past() {
    let up = MockUpstream::start(Behavior::ChatEcho).await;
    let gw = Gateway::start(&format!(
        r#"{CONFIG_HEAD}downstream: {{ max_header_bytes: {LIMIT} }}
providers:
  oai: {{ kind: openai, base_url: "http://127.0.0.1:{}/v1", api_key: "sk-work-bounds", health_check: {{ enabled: false }} }}
models:
  plain: {{ routes: [ {{ provider: oai, model: gpt-4o-mini }} ] }}
keys:
  - {{ name: t, key: "{KEY}" }}
"#,
        up.port()
    ))
    .await;
    assert_eq!(raw_status(&gw, &header_of(LIMIT)).await, 200);
    assert_eq!(up.hits(), 1);
    assert_eq!(raw_status(&gw, &header_of(LIMIT + 1)).await, 431);
    assert_eq!(up.hits(), 1, "a refused header reached the upstream");
}
