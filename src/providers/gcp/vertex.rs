//! Vertex AI paths and bodies for Gemini and Anthropic models. The bodies
//! come from the existing translators (`translate::gemini`,
//! `translate::anthropic`); only what Vertex does differently is here.
//!
//! - Gemini: `…/publishers/google/models/{m}:generateContent` and
//!   `:streamGenerateContent?alt=sse`; the body is the Gemini API's.
//! - Anthropic: `…/publishers/anthropic/models/{m}:rawPredict` and
//!   `:streamRawPredict`; the body is the Messages API's without `model`
//!   and with `anthropic_version: vertex-2023-10-16`. Responses and SSE
//!   streams are the Messages API's, so `anthropic::chat_response` and
//!   `anthropic::ChatStream` read them.

use crate::translate::{anthropic, RequestOpts, Translated, Unsupported};
use bytes::Bytes;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::value::RawValue;
use serde_json::Value;
use std::collections::BTreeMap;

/// The `anthropic_version` Vertex wants in the body.
pub const ANTHROPIC_VERSION: &str = "vertex-2023-10-16";

/// Characters left as they are in a path segment (RFC 3986 unreserved, plus
/// `@` which Vertex model versions use: `claude-sonnet-4@20250514`).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'@');

fn seg(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

pub use crate::config::cloud::{vertex_base_url as base_url, Publisher};

/// The path, below the base URL, of a chat call.
pub fn chat_path(project: &str, location: &str, model: &str, stream: bool) -> String {
    let (publisher, method) = match (Publisher::of(model), stream) {
        (Publisher::Google, false) => ("google", "generateContent"),
        (Publisher::Google, true) => ("google", "streamGenerateContent?alt=sse"),
        (Publisher::Anthropic, false) => ("anthropic", "rawPredict"),
        (Publisher::Anthropic, true) => ("anthropic", "streamRawPredict"),
    };
    format!(
        "/projects/{}/locations/{}/publishers/{publisher}/models/{}:{method}",
        seg(project),
        seg(location),
        seg(model)
    )
}

/// A Chat Completions body for an Anthropic model on Vertex: the Messages
/// body of `anthropic::chat_request`, without `model` and with
/// `anthropic_version`. The translated body is re-read shallowly (top-level
/// keys only; nested values are copied as they are).
pub fn anthropic_request(req: &Value, opts: &RequestOpts) -> Result<Translated, Unsupported> {
    let t = anthropic::chat_request(req, opts)?;
    let body = shape_anthropic(&t.body).map_err(|_| Unsupported {
        param: String::new(),
        message: "The request could not be encoded for Vertex.".into(),
    })?;
    Ok(Translated {
        body,
        dropped: t.dropped,
    })
}

/// Removes `model` from a Messages body and adds `anthropic_version`.
pub fn shape_anthropic(body: &[u8]) -> Result<Bytes, serde_json::Error> {
    let mut top: BTreeMap<&str, &RawValue> = serde_json::from_slice(body)?;
    top.remove("model");
    let version = serde_json::value::to_raw_value(ANTHROPIC_VERSION)?;
    top.insert("anthropic_version", &version);
    Ok(Bytes::from(serde_json::to_vec(&top)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths_per_publisher() {
        assert_eq!(
            chat_path("my-proj", "us-central1", "gemini-2.5-flash", false),
            "/projects/my-proj/locations/us-central1/publishers/google/models/gemini-2.5-flash:generateContent"
        );
        assert_eq!(
            chat_path("my-proj", "us-central1", "gemini-2.5-flash", true),
            "/projects/my-proj/locations/us-central1/publishers/google/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
        );
        assert_eq!(
            chat_path("p", "us-east5", "claude-sonnet-4@20250514", false),
            "/projects/p/locations/us-east5/publishers/anthropic/models/claude-sonnet-4@20250514:rawPredict"
        );
        assert_eq!(
            chat_path("p", "us-east5", "claude-sonnet-4@20250514", true),
            "/projects/p/locations/us-east5/publishers/anthropic/models/claude-sonnet-4@20250514:streamRawPredict"
        );
        // Nothing in a name can change the path's structure.
        assert_eq!(
            chat_path("p/../x", "l?y", "m#z", false),
            "/projects/p%2F..%2Fx/locations/l%3Fy/publishers/google/models/m%23z:generateContent"
        );
        assert_eq!(base_url("global"), "https://aiplatform.googleapis.com/v1");
        assert_eq!(
            base_url("europe-west4"),
            "https://europe-west4-aiplatform.googleapis.com/v1"
        );
    }

    #[test]
    fn anthropic_bodies_lose_model_and_gain_the_vertex_version() {
        let req = json!({"model": "alias", "max_tokens": 10, "stream": true,
            "messages": [{"role": "user", "content": "say \"model\""}],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {"model": {"type": "string"}}}}}]});
        let opts = RequestOpts {
            model: "claude-sonnet-4@20250514",
            stream: true,
            default_max_tokens: None,
            drop_unsupported: false,
        };
        let t = anthropic_request(&req, &opts).unwrap();
        let v: Value = serde_json::from_slice(&t.body).unwrap();
        assert!(v.get("model").is_none());
        assert_eq!(v["anthropic_version"], ANTHROPIC_VERSION);
        assert_eq!(v["stream"], true);
        assert_eq!(v["max_tokens"], 10);
        assert_eq!(v["messages"][0]["content"], "say \"model\"");
        assert!(v["tools"][0]["input_schema"]["properties"]["model"].is_object());
    }
}
