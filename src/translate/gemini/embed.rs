//! Embeddings ↔ `embedContent` (one string) and `batchEmbedContents` (an
//! array of strings).
//!
//! Gemini's embedding responses usually carry no token counts. Then the
//! caller's estimate of the input's tokens fills the body's `usage` (so
//! clients that read it get a number) and is accounted as estimated. When a
//! response has `usageMetadata.promptTokenCount`, it is used as reported.

use super::request::unsupported;
use crate::accounting::{Usage, UsageSource};
use crate::base::error::GatewayError;
use crate::translate::bounds::{self, MAX_EMBED_INPUTS};
use crate::translate::{RequestOpts, ResponseOpts, Translated, Unsupported};
use bytes::Bytes;
use serde_json::{json, Map, Value};

/// Which Gemini method a translated embeddings request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmbedKind {
    /// `:embedContent`, for a single string.
    Single,
    /// `:batchEmbedContents`, for an array of strings.
    Batch,
}

impl EmbedKind {
    /// The path below the base URL.
    pub fn path(self, model: &str) -> String {
        match self {
            EmbedKind::Single => format!("/{}:embedContent", super::resource(model)),
            EmbedKind::Batch => format!("/{}:batchEmbedContents", super::resource(model)),
        }
    }
}

/// How the client wants the vectors (`encoding_format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmbedOutput {
    Float,
    /// Little-endian `f32`s, base64-encoded (the OpenAI SDKs' default).
    Base64,
}

impl EmbedOutput {
    pub fn of(req: &Value) -> EmbedOutput {
        match req.get("encoding_format").and_then(Value::as_str) {
            Some("base64") => EmbedOutput::Base64,
            _ => EmbedOutput::Float,
        }
    }
}

/// Translates an Embeddings body for `opts.model`.
pub fn embed_request(
    req: &Value,
    opts: &RequestOpts,
) -> Result<(EmbedKind, Translated), Unsupported> {
    let obj = req
        .as_object()
        .ok_or_else(|| unsupported("", "The request body must be a JSON object."))?;
    let mut dims = None;
    let mut dropped = Vec::new();
    for (key, value) in obj {
        match key.as_str() {
            "model" | "input" | "user" => {}
            _ if value.is_null() => {}
            "encoding_format" if matches!(value.as_str(), Some("float" | "base64")) => {}
            "dimensions" if value.as_u64().is_some() => dims = Some(value.clone()),
            other if opts.drop_unsupported => bounds::note_dropped(&mut dropped, other),
            other => {
                return Err(unsupported(
                    other,
                    format!("`{other}` is not supported by this model."),
                ))
            }
        }
    }
    let model = super::resource(opts.model);
    let one = |text: &str| {
        let mut r = Map::new();
        r.insert("model".into(), model.clone().into());
        r.insert("content".into(), json!({ "parts": [{ "text": text }] }));
        if let Some(d) = &dims {
            r.insert("outputDimensionality".into(), d.clone());
        }
        Value::Object(r)
    };
    let (kind, body) = match obj.get("input") {
        Some(Value::String(s)) => (EmbedKind::Single, one(s)),
        Some(Value::Array(items)) if items.len() > MAX_EMBED_INPUTS => {
            return Err(unsupported(
                "input",
                format!(
                    "`input` holds {} strings; at most {MAX_EMBED_INPUTS} can be embedded in one request.",
                    items.len()
                ),
            ))
        }
        Some(Value::Array(items)) if !items.is_empty() => {
            let mut requests = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let text = item.as_str().ok_or_else(|| {
                    unsupported(
                        format!("input[{i}]"),
                        "Only strings can be embedded by this model (not token arrays).",
                    )
                })?;
                requests.push(one(text));
            }
            (EmbedKind::Batch, json!({ "requests": requests }))
        }
        _ => {
            return Err(unsupported(
                "input",
                "`input` must be a string or a non-empty array of strings.",
            ))
        }
    };
    Ok((
        kind,
        Translated {
            body: Bytes::from(body.to_string()),
            dropped,
        },
    ))
}

/// Translates an `embedContent` or `batchEmbedContents` response.
/// `estimate` counts the input's tokens; it runs only when Gemini reported
/// none.
pub fn embed_response(
    body: &[u8],
    opts: &ResponseOpts,
    output: EmbedOutput,
    estimate: impl FnOnce() -> u64,
) -> Result<(Bytes, Usage, UsageSource), GatewayError> {
    let doc: Value = serde_json::from_slice(body).map_err(|_| GatewayError::UpstreamError)?;
    let vectors: Vec<&Value> = match (doc.get("embedding"), doc.get("embeddings")) {
        (Some(e), _) => vec![e],
        (None, Some(Value::Array(list))) => list.iter().collect(),
        _ => return Err(GatewayError::UpstreamError),
    };
    let mut data = Vec::with_capacity(vectors.len());
    for (i, v) in vectors.into_iter().enumerate() {
        let values = v
            .get("values")
            .and_then(Value::as_array)
            .ok_or(GatewayError::UpstreamError)?;
        let embedding = match output {
            EmbedOutput::Float => Value::Array(values.clone()),
            EmbedOutput::Base64 => Value::String(base64_f32(values)),
        };
        data.push(json!({ "object": "embedding", "index": i, "embedding": embedding }));
    }
    let reported = doc
        .get("usageMetadata")
        .and_then(|m| m.get("promptTokenCount"))
        .and_then(Value::as_u64);
    let (prompt, source) = match reported {
        Some(n) => (n, UsageSource::Reported),
        None => (estimate(), UsageSource::Estimated),
    };
    let out = json!({
        "object": "list",
        "data": data,
        "model": opts.model,
        "usage": { "prompt_tokens": prompt, "total_tokens": prompt },
    });
    let usage = Usage {
        prompt,
        ..Default::default()
    };
    Ok((Bytes::from(out.to_string()), usage, source))
}

/// The values as little-endian `f32`s, in standard base64 with padding.
fn base64_f32(values: &[Value]) -> String {
    let mut bytes = Vec::with_capacity(values.len() * 4);
    for v in values {
        let f = v.as_f64().unwrap_or(0.0) as f32;
        bytes.extend_from_slice(&f.to_le_bytes());
    }
    base64(&bytes)
}

fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for group in bytes.chunks(3) {
        let b = [
            group[0],
            group.get(1).copied().unwrap_or(0),
            group.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (k, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if k <= group.len() {
                out.push(char::from(ABC[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, enc) in cases {
            assert_eq!(base64(plain.as_bytes()), enc);
        }
    }
}
