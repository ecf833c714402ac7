//! Gemini error bodies → the gateway's OpenAI-format errors.
//!
//! Gemini answers `{"error": {"code", "message", "status", "details"}}` (a
//! one-element array of it on some stream endpoints). The mapping follows
//! what the gateway answers for an OpenAI-kind provider, so the SDKs raise
//! the same exception class whichever provider served the alias:
//!
//! | Gemini | Tollgate |
//! |---|---|
//! | `INVALID_ARGUMENT`, `FAILED_PRECONDITION`, `OUT_OF_RANGE`, other 400 | 400 `invalid_request_error`, Gemini's message (keys redacted) |
//! | `UNAUTHENTICATED`, `PERMISSION_DENIED`, 401, 403, and a 400 whose reason is `API_KEY_INVALID` | 502 `upstream_auth_error`, Gemini's text never shown |
//! | `RESOURCE_EXHAUSTED`, 429 | 429 `rate_limit_exceeded`, `Retry-After` from `RetryInfo.retryDelay` |
//! | `UNAVAILABLE`, 503 | 503 `upstream_unavailable` |
//! | `DEADLINE_EXCEEDED`, 504 | 504 `upstream_timeout` |
//! | `INTERNAL`, `NOT_FOUND` and the rest | 502 `upstream_error` |
//!
//! Gemini's 500 becomes a 502: it is the upstream that failed, not the
//! gateway (the same as for OpenAI-kind providers).

use crate::error::GatewayError;
use serde_json::Value;

/// Longest provider message passed on, in bytes.
const MAX_MESSAGE: usize = 1000;

/// Maps a Gemini error response (`status` and body) to the error to answer.
pub fn error(status: u16, body: &[u8]) -> GatewayError {
    let doc: Option<Value> = serde_json::from_slice(body).ok();
    let doc = match doc {
        Some(Value::Array(mut a)) if !a.is_empty() => Some(a.swap_remove(0)),
        d => d,
    };
    let e = doc.as_ref().and_then(|d| d.get("error"));
    let grpc = e
        .and_then(|e| e.get("status"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    let details = e
        .and_then(|e| e.get("details"))
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    let key_refused = details.iter().any(|d| {
        d.get("reason")
            .and_then(Value::as_str)
            .is_some_and(|r| r.starts_with("API_KEY_"))
    });
    let retry_after = details.iter().find_map(retry_delay);
    if key_refused || matches!(grpc, "UNAUTHENTICATED" | "PERMISSION_DENIED") {
        return GatewayError::UpstreamAuth;
    }
    match (grpc, status) {
        (_, 401 | 403) => GatewayError::UpstreamAuth,
        ("RESOURCE_EXHAUSTED", _) | (_, 429) => GatewayError::RateLimited { retry_after },
        ("UNAVAILABLE", _) | (_, 503) => GatewayError::UpstreamUnavailable { retry_after },
        ("DEADLINE_EXCEEDED", _) | (_, 504) => GatewayError::UpstreamTimeout,
        ("INVALID_ARGUMENT" | "FAILED_PRECONDITION" | "OUT_OF_RANGE", _) | (_, 400) => {
            let message = e
                .and_then(|e| e.get("message"))
                .and_then(Value::as_str)
                .unwrap_or("The request is invalid.");
            GatewayError::InvalidRequest {
                message: format!("The provider rejected the request: {}", redact(message)),
                param: None,
            }
        }
        _ => GatewayError::UpstreamError,
    }
}

/// Seconds from a `google.rpc.RetryInfo` detail (`"retryDelay": "37s"`).
fn retry_delay(detail: &Value) -> Option<u64> {
    let kind = detail.get("@type").and_then(Value::as_str)?;
    if !kind.ends_with("RetryInfo") {
        return None;
    }
    let d = detail.get("retryDelay").and_then(Value::as_str)?;
    let secs: f64 = d.strip_suffix('s')?.parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| (secs.ceil() as u64).min(3600))
}

/// Replaces anything shaped like a Google API key (`AIza…`) and caps the
/// length.
fn redact(message: &str) -> String {
    let mut out = String::with_capacity(message.len().min(MAX_MESSAGE));
    let mut rest = message;
    while let Some(at) = rest.find("AIza") {
        out.push_str(&rest[..at]);
        out.push_str("[redacted]");
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
            .unwrap_or(tail.len());
        rest = &tail[end..];
    }
    out.push_str(rest);
    if out.len() > MAX_MESSAGE {
        let mut cut = MAX_MESSAGE;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_keys_and_caps_length() {
        assert_eq!(
            redact("bad key AIzaSyA-1_b2 here"),
            "bad key [redacted] here"
        );
        assert_eq!(redact(&"é".repeat(600)).len(), 1000);
    }

    #[test]
    fn retry_delay_reads_seconds() {
        let d = serde_json::json!({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1.5s"});
        assert_eq!(retry_delay(&d), Some(2));
    }
}
