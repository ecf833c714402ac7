//! Gemini error bodies → the gateway's OpenAI-format errors.
//!
//! Gemini answers `{"error": {"code", "message", "status", "details"}}` (a
//! one-element array of it on some stream endpoints). What Gemini says more
//! precisely than its HTTP status is read here; the rest goes to the mapping
//! shared by every kind ([`provider_error`]), so the SDKs raise the same
//! exception class whichever provider served the alias:
//!
//! | Gemini | Tollgate |
//! |---|---|
//! | `UNAUTHENTICATED`, `PERMISSION_DENIED`, 401, 403, and a 400 whose reason is `API_KEY_INVALID` (Gemini's answer to a bad key) | 502 `upstream_auth_error`, Gemini's text never shown |
//! | `RESOURCE_EXHAUSTED`, 429 | 429 `rate_limit_exceeded`, `Retry-After` from `RetryInfo.retryDelay` |
//! | `UNAVAILABLE`, 503 (Gemini's "model is overloaded") | 503 `upstream_unavailable`, like Anthropic's 529 |
//! | `INVALID_ARGUMENT`, `FAILED_PRECONDITION`, other 4xx | 400 `invalid_request`, Gemini's message (credentials redacted) |
//! | `DEADLINE_EXCEEDED`, 504 | 504 `upstream_timeout` |
//! | `INTERNAL`, 500, `NOT_FOUND` and the rest | 502 `upstream_error` |
//!
//! Gemini's 500 becomes a 502: it is the upstream that failed, not the
//! gateway (the same as for the other kinds).

use crate::error::GatewayError;
use crate::translate::errors::provider_error;
use serde_json::Value;

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
    match (grpc, status) {
        _ if key_refused => GatewayError::UpstreamAuth,
        ("UNAUTHENTICATED" | "PERMISSION_DENIED", _) | (_, 401 | 403) => GatewayError::UpstreamAuth,
        ("RESOURCE_EXHAUSTED", _) | (_, 429) => GatewayError::RateLimited { retry_after },
        ("UNAVAILABLE", _) | (_, 503) => GatewayError::UpstreamUnavailable { retry_after },
        ("DEADLINE_EXCEEDED", _) => GatewayError::UpstreamTimeout,
        ("INVALID_ARGUMENT" | "FAILED_PRECONDITION" | "OUT_OF_RANGE", s)
            if !(400..=499).contains(&s) =>
        {
            // A 4xx status travelling in a 2xx/5xx response (a stream event).
            provider_error(400, &without_google_keys(e))
        }
        _ => provider_error(status, &without_google_keys(e)),
    }
}

/// The error re-encoded with anything shaped like a Google API key
/// (`AIza…`) blanked out, for the shared mapping to read its message from.
fn without_google_keys(e: Option<&Value>) -> Vec<u8> {
    let message = e
        .and_then(|e| e.get("message"))
        .and_then(Value::as_str)
        .map(redact_google_keys);
    match message {
        Some(m) => serde_json::json!({ "error": { "message": m } })
            .to_string()
            .into_bytes(),
        None => b"{}".to_vec(),
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

/// Replaces anything shaped like a Google API key (`AIza…`).
fn redact_google_keys(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
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
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_google_keys() {
        assert_eq!(
            redact_google_keys("bad key AIzaSyA-1_b2 here"),
            "bad key [redacted] here"
        );
        let e = error(
            400,
            br#"{"error":{"code":400,"status":"INVALID_ARGUMENT","message":"key AIzaSyA is odd"}}"#,
        );
        assert_eq!(e.status(), 400);
        assert!(!e.to_string().contains("AIza"), "{e}");
    }

    #[test]
    fn retry_delay_reads_seconds() {
        let d = serde_json::json!({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1.5s"});
        assert_eq!(retry_delay(&d), Some(2));
    }
}
