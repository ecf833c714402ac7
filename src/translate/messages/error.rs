//! Errors in Anthropic's shape, for every error answered on the Messages
//! endpoint: `{"type":"error","error":{"type":…,"message":…}}`, with the
//! status the gateway error carries.

use crate::base::error::GatewayError;
use bytes::{Bytes, BytesMut};
use serde_json::{json, Value};

/// Anthropic's `error.type` for a gateway error. Besides the common types,
/// Anthropic's reference names `request_too_large` (413) and
/// `timeout_error` (504), used here for the same statuses.
pub fn error_type(err: &GatewayError) -> &'static str {
    use GatewayError::*;
    match err {
        ProviderInvalid { status, .. } => type_for_status(*status),
        InvalidRequest { .. }
        | UnsupportedParam { .. }
        | Unsupported { .. }
        | MethodNotAllowed { .. }
        | RequestTimeout
        | HeaderTooLarge => "invalid_request_error",
        PayloadTooLarge { .. } => "request_too_large",
        InvalidApiKey | KeyRefused { .. } => "authentication_error",
        ModelNotAllowed { .. } | RouteNotPermitted { .. } => "permission_error",
        ModelNotFound { .. } | NotFound | ObjectNotFound { .. } => "not_found_error",
        FilesNotConfigured { .. } => "permission_error",
        RateLimited { .. } | LimitExceeded { .. } | QuotaExceeded { .. } => "rate_limit_error",
        UpstreamUnavailable { .. } => "overloaded_error",
        UpstreamTimeout => "timeout_error",
        UpstreamError | UpstreamAuth | LimitsUnavailable | Internal => "api_error",
    }
}

fn message(err: &GatewayError) -> String {
    match err {
        GatewayError::InvalidApiKey => "Invalid or missing API key. Send your Tollgate key as \
            `x-api-key: <key>` or `Authorization: Bearer <key>`."
            .to_string(),
        GatewayError::ModelNotFound { model } => format!("model: `{model}` does not exist."),
        other => other.to_string(),
    }
}

fn error_value(err: &GatewayError) -> Value {
    json!({"type": "error", "error": {"type": error_type(err), "message": message(err)}})
}

/// The JSON body of an error answered on the Messages endpoint.
pub fn error_body(err: &GatewayError) -> Bytes {
    Bytes::from(error_value(err).to_string())
}

/// The `event: error` that ends a stream which broke after it started.
pub fn error_event(err: &GatewayError) -> Bytes {
    let mut out = BytesMut::new();
    super::push_event(&mut out, "error", &error_value(err));
    out.freeze()
}

/// Anthropic's `error.type` for an upstream HTTP status.
pub fn type_for_status(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        504 => "timeout_error",
        400..=499 => "invalid_request_error",
        _ => "api_error",
    }
}

/// Anthropic's `error.type` for an OpenAI error object (a stream's error
/// event has no status): by its `code` and `type`.
fn type_for_openai(e: &Value) -> &'static str {
    let s = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("");
    match (s("type"), s("code")) {
        (_, "rate_limit_exceeded") | ("requests" | "tokens", _) => "rate_limit_error",
        (_, "context_length_exceeded") | ("invalid_request_error", _) => "invalid_request_error",
        ("authentication_error", _) | (_, "invalid_api_key") => "authentication_error",
        (_, "model_not_found") => "not_found_error",
        (_, "upstream_timeout") => "timeout_error",
        (_, "overloaded" | "upstream_unavailable") => "overloaded_error",
        _ => "api_error",
    }
}

/// Longest upstream error message passed on.
const MAX_MESSAGE: usize = 1024;

fn upstream_message(e: Option<&Value>) -> String {
    let m = e
        .and_then(|e| e.get("message"))
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
        .unwrap_or("The upstream provider returned an error.");
    let mut end = m.len().min(MAX_MESSAGE);
    while !m.is_char_boundary(end) {
        end -= 1;
    }
    m[..end].to_string()
}

/// An upstream's non-2xx OpenAI-format error body, re-shaped for Anthropic
/// clients. The status stays; a body that is not an OpenAI error still
/// gives a well-formed Anthropic error.
pub fn from_openai_body(status: u16, body: &[u8]) -> Bytes {
    let doc: Option<Value> = serde_json::from_slice(body).ok();
    let e = doc.as_ref().and_then(|d| d.get("error"));
    let v = json!({"type": "error", "error": {
        "type": type_for_status(status), "message": upstream_message(e)}});
    Bytes::from(v.to_string())
}

/// An OpenAI stream error event's data, as an Anthropic `error` event value.
pub(super) fn from_openai_event(doc: &Value) -> Value {
    let e = doc.get("error").filter(|e| e.is_object());
    let kind = e.map_or("api_error", type_for_openai);
    json!({"type": "error", "error": {"type": kind, "message": upstream_message(e)}})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_gateway_error_is_anthropic_shaped() {
        let all = [
            GatewayError::invalid("bad"),
            GatewayError::UnsupportedParam {
                message: "no".into(),
                param: "top_k".into(),
            },
            GatewayError::ProviderInvalid {
                status: 413,
                message: "big".into(),
                code: "request_too_large",
                param: None,
            },
            GatewayError::InvalidApiKey,
            GatewayError::ModelNotAllowed { model: "m".into() },
            GatewayError::ModelNotFound { model: "m".into() },
            GatewayError::NotFound,
            GatewayError::MethodNotAllowed { allowed: "POST" },
            GatewayError::RequestTimeout,
            GatewayError::HeaderTooLarge,
            GatewayError::PayloadTooLarge { limit: 1 },
            GatewayError::UpstreamError,
            GatewayError::UpstreamAuth,
            GatewayError::RateLimited { retry_after: None },
            GatewayError::UpstreamUnavailable { retry_after: None },
            GatewayError::UpstreamTimeout,
            GatewayError::LimitExceeded {
                detail: "d".into(),
                retry_after: 1,
            },
            GatewayError::QuotaExceeded {
                detail: "d".into(),
                retry_after: 1,
            },
            GatewayError::LimitsUnavailable,
            GatewayError::Internal,
        ];
        for e in all {
            let v: Value = serde_json::from_slice(&error_body(&e)).unwrap();
            assert_eq!(v["type"], "error", "{e:?}");
            assert_eq!(v["error"]["type"], error_type(&e), "{e:?}");
            assert!(!v["error"]["message"].as_str().unwrap().is_empty());
            let ev = error_event(&e);
            assert!(ev.starts_with(b"event: error\ndata: {"), "{e:?}");
            assert!(ev.ends_with(b"}\n\n"));
        }
        assert_eq!(
            error_type(&GatewayError::InvalidApiKey),
            "authentication_error"
        );
        assert_eq!(
            error_type(&GatewayError::ModelNotFound { model: "x".into() }),
            "not_found_error"
        );
        assert_eq!(
            error_type(&GatewayError::RateLimited { retry_after: None }),
            "rate_limit_error"
        );
    }

    #[test]
    fn upstream_bodies_keep_their_message() {
        let b = from_openai_body(
            429,
            br#"{"error":{"message":"slow down","type":"requests","code":"rate_limit_exceeded"}}"#,
        );
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["error"]["type"], "rate_limit_error");
        assert_eq!(v["error"]["message"], "slow down");
        let v: Value = serde_json::from_slice(&from_openai_body(500, b"<html>")).unwrap();
        assert_eq!(v["error"]["type"], "api_error");
        assert_eq!(v["type"], "error");
    }
}
