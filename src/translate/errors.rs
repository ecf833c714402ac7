//! Provider error responses → our OpenAI-format errors, shared by every
//! translated kind (Anthropic, Azure, and the rest). The status decides the
//! error class, so the SDKs raise the right exception; the provider's message
//! is passed on only for requests it refused as invalid, cut short and with
//! anything that looks like a credential blanked out. Auth failures never
//! carry provider text.

use crate::base::error::GatewayError;
use serde_json::Value;

/// Longest provider message passed on.
const MAX_MESSAGE: usize = 400;

/// Maps a provider's error response. The resulting status depends only on
/// `status` (so it can be decided from the header, before the body).
pub(crate) fn provider_error(status: u16, body: &[u8]) -> GatewayError {
    match status {
        401 | 403 => GatewayError::UpstreamAuth,
        408 | 504 => GatewayError::UpstreamTimeout,
        429 => GatewayError::RateLimited { retry_after: None },
        529 => GatewayError::UpstreamUnavailable { retry_after: None },
        404 => {
            // The route names a model (or deployment) the provider does not
            // have: the operator's to fix, not the client's.
            log::warn!(
                "provider answered 404: {}",
                safe_message(body).unwrap_or_default()
            );
            GatewayError::UpstreamError
        }
        400..=499 => {
            let doc: Option<Value> = serde_json::from_slice(body).ok();
            if doc.as_ref().is_some_and(is_content_filter) {
                return GatewayError::ProviderInvalid {
                    status: 400,
                    message: "The request was blocked by the provider's content filter; change the prompt and retry.".into(),
                    code: "content_filter",
                    param: Some("prompt"),
                };
            }
            let message = match safe_message(body) {
                Some(m) => format!("The provider rejected the request: {m}"),
                None => "The provider rejected the request.".into(),
            };
            let code = if status == 413 {
                "request_too_large"
            } else {
                "invalid_request"
            };
            GatewayError::ProviderInvalid {
                status: if status == 422 { 400 } else { status },
                message,
                code,
                param: None,
            }
        }
        _ => GatewayError::UpstreamError,
    }
}

/// Maps an Anthropic in-stream `error` event by its error `type`.
pub(crate) fn anthropic_error_type(kind: &str, message: &str) -> GatewayError {
    let status = match kind {
        "invalid_request_error" => 400,
        "authentication_error" => 401,
        "permission_error" => 403,
        "not_found_error" => 404,
        "request_too_large" => 413,
        "rate_limit_error" => 429,
        "overloaded_error" => 529,
        "timeout_error" => 504,
        _ => 500,
    };
    let body = serde_json::json!({"error": {"message": message}}).to_string();
    provider_error(status, body.as_bytes())
}

/// Azure's content filter: `code: content_filter`, or an `innererror` naming
/// the responsible-AI policy.
fn is_content_filter(doc: &Value) -> bool {
    let e = doc.get("error").unwrap_or(doc);
    let code = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_ascii_lowercase);
    code(e.get("code")).as_deref() == Some("content_filter")
        || code(e.pointer("/innererror/code")).as_deref() == Some("responsibleaipolicyviolation")
        || e.pointer("/innererror/content_filter_result").is_some()
}

/// The provider's message (Anthropic's or OpenAI's shape), made safe to show.
pub(crate) fn safe_message(body: &[u8]) -> Option<String> {
    let doc: Value = serde_json::from_slice(body).ok()?;
    let m = doc
        .pointer("/error/message")
        .or_else(|| doc.get("message"))
        .and_then(Value::as_str)?;
    Some(redact(m))
}

/// Blanks out words that look like credentials and cuts the text short.
pub(crate) fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_MESSAGE + 8));
    for (i, word) in text.split(' ').enumerate() {
        if i > 0 {
            out.push(' ');
        }
        if looks_secret(word) {
            out.push_str("[redacted]");
        } else {
            out.push_str(word);
        }
        if out.len() > MAX_MESSAGE {
            let mut end = MAX_MESSAGE;
            while !out.is_char_boundary(end) {
                end -= 1;
            }
            out.truncate(end);
            out.push('…');
            break;
        }
    }
    out
}

fn looks_secret(word: &str) -> bool {
    let core = word.trim_matches(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'));
    let lower = core.to_ascii_lowercase();
    if ["sk-", "sk_", "key-", "bearer"]
        .iter()
        .any(|p| lower.starts_with(p))
        && core.len() > 6
    {
        return true;
    }
    let long_token = core.len() >= 20
        && core
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && core.chars().any(|c| c.is_ascii_digit())
        && core.chars().any(|c| c.is_ascii_alphabetic());
    long_token
}

#[cfg(test)]
mod tests {
    use super::*;

    fn anthropic(kind: &str, msg: &str) -> Vec<u8> {
        serde_json::json!({"type": "error", "error": {"type": kind, "message": msg}})
            .to_string()
            .into_bytes()
    }

    #[test]
    fn statuses_map_to_the_sdk_exception_classes() {
        let e = provider_error(400, &anthropic("invalid_request_error", "messages: empty"));
        assert_eq!(e.status(), 400);
        assert_eq!(e.kind(), "invalid_request_error");
        assert!(e.to_string().contains("messages: empty"), "{e}");
        for (status, want) in [
            (401, 502),
            (403, 502),
            (429, 429),
            (529, 503),
            (500, 502),
            (503, 502),
            (504, 504),
            (404, 502),
            (413, 413),
        ] {
            assert_eq!(provider_error(status, b"{}").status(), want, "{status}");
        }
        assert_eq!(
            provider_error(
                401,
                &anthropic(
                    "authentication_error",
                    "invalid x-api-key sk-ant-api03-abcdef"
                )
            ),
            GatewayError::UpstreamAuth
        );
    }

    #[test]
    fn keys_in_provider_text_are_blanked() {
        let e = provider_error(
            400,
            &anthropic(
                "invalid_request_error",
                "bad key sk-ant-api03-AbC123xyz and token abcdefghij0123456789XYZ",
            ),
        );
        let s = e.to_string();
        assert!(!s.contains("sk-ant"), "{s}");
        assert!(!s.contains("abcdefghij0123456789XYZ"), "{s}");
        assert!(s.contains("[redacted]"), "{s}");
        let long = "word ".repeat(500);
        assert!(redact(&long).len() < MAX_MESSAGE + 10);
    }

    #[test]
    fn azure_content_filter_is_a_400_with_its_code() {
        let body = br#"{"error":{"message":"The response was filtered due to the prompt triggering Azure OpenAI's content management policy.","type":null,"param":"prompt","code":"content_filter","status":400,"innererror":{"code":"ResponsibleAIPolicyViolation","content_filter_result":{"hate":{"filtered":true,"severity":"high"}}}}}"#;
        let e = provider_error(400, body);
        assert_eq!(e.status(), 400);
        assert_eq!(e.code(), "content_filter");
        let v: Value = serde_json::from_slice(&e.body()).expect("json");
        assert_eq!(v["error"]["code"], "content_filter");
        assert_eq!(v["error"]["type"], "invalid_request_error");
    }

    #[test]
    fn stream_error_types_map_like_statuses() {
        assert_eq!(
            anthropic_error_type("overloaded_error", "Overloaded").status(),
            503
        );
        assert_eq!(anthropic_error_type("rate_limit_error", "x").status(), 429);
        assert_eq!(anthropic_error_type("api_error", "x").status(), 502);
    }
}
