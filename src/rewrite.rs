//! Parse the request body once, then splice a new `model` value into the
//! original bytes. Every other byte is kept as the client sent it.

use bytes::{BufMut, Bytes, BytesMut};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::ops::Range;

/// Deepest JSON nesting accepted. Deeper bodies get a 400.
pub const MAX_DEPTH: usize = 128;

/// What the gateway needs from a body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    /// The client's model name, unescaped.
    pub model: String,
    /// Byte range of the model's JSON string (quotes included) in the body.
    pub model_span: Range<usize>,
    pub stream: bool,
    /// `stream_options.include_usage` as the client sent it.
    pub include_usage: bool,
}

#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow)]
    model: Option<&'a RawValue>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
}

#[derive(Deserialize)]
struct StreamOptions {
    include_usage: Option<bool>,
}

/// Why a body was rejected; the text is safe to show the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyError {
    pub message: String,
    pub param: Option<&'static str>,
}

fn err(message: impl Into<String>, param: Option<&'static str>) -> BodyError {
    BodyError {
        message: message.into(),
        param,
    }
}

/// Validates the whole document and finds `model` and `stream`.
/// Duplicate `model` (or `stream`) keys are an error, so the gateway never
/// routes on one value while the provider reads another.
pub fn parse(body: &[u8]) -> Result<Parsed, BodyError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(err("The request body is empty; send a JSON object.", None));
    }
    if depth_exceeds(body, MAX_DEPTH) {
        return Err(err(
            format!("The request body is nested deeper than {MAX_DEPTH} levels."),
            None,
        ));
    }
    let head: Head = serde_json::from_slice(body).map_err(|e| {
        let msg = if e.classify() == serde_json::error::Category::Data {
            format!("Invalid request body: {e}")
        } else {
            format!("The request body is not valid JSON: {e}")
        };
        err(msg, None)
    })?;
    let raw = head
        .model
        .ok_or_else(|| err("The request body has no `model`.", Some("model")))?;
    let text = raw.get();
    let model: String = serde_json::from_str(text)
        .map_err(|_| err("`model` must be a string.", Some("model")))?;
    if model.is_empty() {
        return Err(err("`model` must not be empty.", Some("model")));
    }
    let start = (text.as_ptr() as usize).wrapping_sub(body.as_ptr() as usize);
    if start.checked_add(text.len()).is_none_or(|end| end > body.len()) {
        return Err(err("Invalid request body.", None));
    }
    Ok(Parsed {
        model,
        model_span: start..start + text.len(),
        stream: head.stream.unwrap_or(false),
        include_usage: head
            .stream_options
            .and_then(|o| o.include_usage)
            .unwrap_or(false),
    })
}

/// Encodes a model name as a JSON string, once, at config load.
pub fn json_string(s: &str) -> Bytes {
    Bytes::from(serde_json::Value::from(s).to_string())
}

/// The body with the model's JSON string replaced by `new_model_json`.
/// Returns the original `Bytes` (no copy) when nothing changes.
pub fn splice(body: &Bytes, span: &Range<usize>, new_model_json: &[u8]) -> Bytes {
    if body.get(span.clone()) == Some(new_model_json) {
        return body.clone();
    }
    let mut out = BytesMut::with_capacity(body.len() - span.len() + new_model_json.len());
    out.put_slice(&body[..span.start]);
    out.put_slice(new_model_json);
    out.put_slice(&body[span.end..]);
    out.freeze()
}

/// True when arrays/objects nest deeper than `limit`. Strings are skipped
/// with `memchr`, so the scan costs little next to the parse.
pub fn depth_exceeds(body: &[u8], limit: usize) -> bool {
    let mut depth = 0usize;
    let mut i = 0;
    while i < body.len() {
        match body[i] {
            b'"' => {
                // Find the closing quote, stepping over escapes.
                let mut j = i + 1;
                loop {
                    match memchr::memchr2(b'"', b'\\', &body[j..]) {
                        None => return false, // unterminated: the parser reports it
                        Some(k) if body[j + k] == b'\\' => j += k + 2,
                        Some(k) => {
                            j += k;
                            break;
                        }
                    }
                    if j >= body.len() {
                        return false;
                    }
                }
                i = j;
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_model_and_stream() {
        let b = br#"{"messages":[{"role":"user","content":"hi \"model\""}],"model":"fast","stream":true}"#;
        let p = parse(b).unwrap();
        assert_eq!(p.model, "fast");
        assert!(p.stream);
        assert_eq!(&b[p.model_span.clone()], br#""fast""#);
    }

    #[test]
    fn splice_changes_only_model() {
        let b = Bytes::from_static(br#"{"model" : "fast","x":{"model":"keep"},"n":1.50}"#);
        let p = parse(&b).unwrap();
        let out = splice(&b, &p.model_span, &json_string("qwen2.5-7b"));
        assert_eq!(
            &out[..],
            br#"{"model" : "qwen2.5-7b","x":{"model":"keep"},"n":1.50}"#
        );
        let same = splice(&b, &p.model_span, &json_string("fast"));
        assert_eq!(same.as_ptr(), b.as_ptr(), "unchanged model must not copy");
    }

    #[test]
    fn escaped_model_is_unescaped_and_replaced_whole() {
        let b = Bytes::from_static(br#"{"model":"f\u0061st"}"#);
        let p = parse(&b).unwrap();
        assert_eq!(p.model, "fast");
        assert_eq!(&splice(&b, &p.model_span, br#""m""#)[..], br#"{"model":"m"}"#);
    }

    #[test]
    fn rejects_bad_bodies() {
        for (body, want) in [
            (&b""[..], "empty"),
            (b"   ", "empty"),
            (b"{", "not valid JSON"),
            (b"[1,2]", "Invalid request body"),
            (b"\"s\"", "Invalid request body"),
            (b"{}", "no `model`"),
            (br#"{"model":5}"#, "must be a string"),
            (br#"{"model":""}"#, "must not be empty"),
            (br#"{"model":"a","model":"b"}"#, "duplicate field"),
            (br#"{"model":"a","stream":"yes"}"#, "Invalid request body"),
        ] {
            let e = parse(body).unwrap_err();
            assert!(e.message.contains(want), "{body:?}: {}", e.message);
        }
    }

    #[test]
    fn deep_nesting_is_rejected_without_overflow() {
        let mut b = br#"{"model":"m","messages":"#.to_vec();
        b.extend(std::iter::repeat_n(b'[', 100_000));
        b.extend(std::iter::repeat_n(b']', 100_000));
        b.push(b'}');
        assert!(parse(&b).unwrap_err().message.contains("nested deeper"));
        // Brackets inside strings do not count.
        let s = format!(r#"{{"model":"m","x":"{}"}}"#, "[".repeat(1000));
        assert!(parse(s.as_bytes()).is_ok());
    }
}
