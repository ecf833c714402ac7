//! Assertions and small helpers shared by the integration tests: the
//! OpenAI-format error body, lossy body text, response headers and polling.

use std::time::{Duration, Instant};

use serde_json::Value;

/// `b` as text, invalid UTF-8 replaced (for messages and comparisons).
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The first position of `needle` in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Header `name` of `resp` as a string (panics if it is not visible ASCII).
pub fn header(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().expect("ascii header").to_string())
}

/// Polls `cond` every 10 ms until it holds; returns whether it did within
/// `timeout`.
pub async fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Asserts an OpenAI-format error: exactly `{"error":{message,type,param,code}}`
/// with a non-empty message and a null or string `param`, and the given
/// status, `type` and `code` (`want` is `(status, type, code)`). Returns the
/// parsed body.
#[track_caller]
pub fn assert_error(status: u16, body: &[u8], want: (u16, &str, &str)) -> Value {
    let (want_status, want_type, want_code) = want;
    let v: Value = serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("error body is not JSON ({e}): {:?}", text(body)));
    assert_eq!(
        (
            status,
            v["error"]["type"].as_str(),
            v["error"]["code"].as_str()
        ),
        (want_status, Some(want_type), Some(want_code)),
        "body: {v}"
    );
    let top = v.as_object().expect("object");
    assert_eq!(top.len(), 1, "only `error` at the top level: {v}");
    let e = v["error"].as_object().expect("`error` is an object");
    let mut keys: Vec<&str> = e.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["code", "message", "param", "type"], "{v}");
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "message: {v}"
    );
    assert!(e["param"].is_null() || e["param"].is_string(), "param: {v}");
    v
}

/// [`assert_error`], and the response's `Content-Type` (`content_type`) is
/// `application/json`, as on every error the gateway writes itself.
#[track_caller]
pub fn assert_json_error(
    status: u16,
    content_type: Option<&str>,
    body: &[u8],
    want: (u16, &str, &str),
) -> Value {
    let v = assert_error(status, body, want);
    assert_eq!(
        content_type,
        Some("application/json"),
        "content-type; body: {v}"
    );
    v
}
