//! Gemini error bodies → the gateway's OpenAI-format errors.
//!
//! Gemini answers `{"error": {"code", "message", "status", "details"}}` (a
//! one-element array of it on some stream endpoints). The HTTP status alone
//! decides the answer's status, as for every kind (the proxy sends the
//! header before the body arrives); the body refines the message, the code
//! and `Retry-After`. The rest is the mapping shared by every kind
//! ([`provider_error`]), so the SDKs raise the same exception class whichever
//! provider served the alias:
//!
//! | Gemini | Tollgate |
//! |---|---|
//! | 401 `UNAUTHENTICATED`, 403 `PERMISSION_DENIED` | 502 `upstream_auth_error`, Gemini's text never shown |
//! | 400 whose reason is `API_KEY_INVALID` (Gemini's answer to a bad key) | 400 `upstream_auth_error` with our own message, never Gemini's (logged as an error) |
//! | 400 `INVALID_ARGUMENT` / `FAILED_PRECONDITION`, other 4xx | 400 `invalid_request`, Gemini's message with credentials redacted |
//! | 404 `NOT_FOUND` (the route's model) | 502 `upstream_error` |
//! | 429 `RESOURCE_EXHAUSTED` | 429 `rate_limit_exceeded`, `Retry-After` from `RetryInfo.retryDelay` |
//! | 503 `UNAVAILABLE` ("the model is overloaded") | 503 `upstream_unavailable`, like Anthropic's 529 |
//! | 504 `DEADLINE_EXCEEDED` | 504 `upstream_timeout` |
//! | 500 `INTERNAL` and the rest | 502 `upstream_error`: the upstream failed, not the gateway |
//!
//! In the proxy, statuses listed in the provider's `retry.on_status` (429
//! and 5xx by default) are judged before their body is read, like for any
//! kind, so they can be retried elsewhere.

use crate::base::error::GatewayError;
use crate::translate::errors::provider_error;
use serde_json::Value;

/// Maps a Gemini error response (`status` and body) to the error to answer.
/// For a given `status`, the result's status never depends on the body.
pub fn error(status: u16, body: &[u8]) -> GatewayError {
    let doc: Option<Value> = serde_json::from_slice(body).ok();
    let doc = match doc {
        Some(Value::Array(mut a)) if !a.is_empty() => Some(a.swap_remove(0)),
        d => d,
    };
    let e = doc.as_ref().and_then(|d| d.get("error"));
    let details = e
        .and_then(|e| e.get("details"))
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    let retry_after = details.iter().find_map(retry_delay);
    match status {
        401 | 403 => GatewayError::UpstreamAuth,
        429 => GatewayError::RateLimited { retry_after },
        503 => GatewayError::UpstreamUnavailable { retry_after },
        400..=499 if details.iter().any(key_refused) => {
            log::error!("Gemini refused the gateway's API key (HTTP {status}, API_KEY_INVALID); check the provider's api_key");
            GatewayError::ProviderInvalid {
                status,
                message: "The upstream provider rejected the gateway's credentials. The operator has been alerted.".into(),
                code: "upstream_auth_error",
                param: None,
            }
        }
        _ => provider_error(status, &without_google_keys(e)),
    }
}

/// The HTTP status of an error given only by its gRPC status name (an error
/// inside a stream may carry no `code`).
pub(super) fn http_status(error: &Value) -> u16 {
    if let Some(code) = error
        .get("code")
        .and_then(Value::as_u64)
        .and_then(|c| u16::try_from(c).ok())
        .filter(|c| (400..=599).contains(c))
    {
        return code;
    }
    match error
        .get("status")
        .and_then(Value::as_str)
        .unwrap_or_default()
    {
        "INVALID_ARGUMENT" | "FAILED_PRECONDITION" | "OUT_OF_RANGE" => 400,
        "UNAUTHENTICATED" => 401,
        "PERMISSION_DENIED" => 403,
        "NOT_FOUND" => 404,
        "RESOURCE_EXHAUSTED" => 429,
        "UNAVAILABLE" => 503,
        "DEADLINE_EXCEEDED" => 504,
        _ => 500,
    }
}

fn key_refused(detail: &Value) -> bool {
    detail
        .get("reason")
        .and_then(Value::as_str)
        .is_some_and(|r| r.starts_with("API_KEY_"))
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
