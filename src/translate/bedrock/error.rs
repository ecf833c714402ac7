//! Bedrock error responses and stream exceptions → our OpenAI-format
//! errors.
//!
//! Bedrock names the error in the `x-amzn-ErrorType` header (also `__type`
//! in some bodies), e.g. `ValidationException:http://internal.amazon.com/…`,
//! and puts the text in `message` (or `Message`). The type decides first,
//! the status second:
//!
//! | Bedrock | Ours |
//! |---|---|
//! | `ThrottlingException`, `ServiceQuotaExceededException`, `ModelNotReadyException` | 429 `rate_limit_exceeded` (retry / fall back) |
//! | `ValidationException` | 400 with the provider's message, made safe |
//! | `AccessDeniedException`, `UnrecognizedClientException`, `InvalidSignatureException`, `ExpiredTokenException`, `IncompleteSignatureException` | 502 generic (`upstream_auth_error`; the text is not shown) |
//! | `ResourceNotFoundException` | 502 generic (the route names a model the account cannot use; logged) |
//! | `ModelTimeoutException` | 504 |
//! | `ServiceUnavailableException` | 503 |
//! | `InternalServerException`, `ModelErrorException`, `ModelStreamErrorException`, anything else | 502 generic |

use crate::base::error::GatewayError;
use crate::translate::errors::{provider_error, redact};
use serde_json::Value;

/// The header that names the error.
pub const ERROR_TYPE_HEADER: &str = "x-amzn-errortype";

/// What class of error a Bedrock error type is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Throttled,
    Invalid,
    Auth,
    NotFound,
    Timeout,
    Unavailable,
    Failed,
    Unknown,
}

fn class(error_type: &str) -> Class {
    // `ValidationException:http://…` → `validationexception`.
    let name = error_type.split(':').next().unwrap_or("").trim();
    match name.to_ascii_lowercase().as_str() {
        "throttlingexception"
        | "servicequotaexceededexception"
        | "modelnotreadyexception"
        | "toomanyrequestsexception" => Class::Throttled,
        "validationexception" => Class::Invalid,
        "accessdeniedexception"
        | "unrecognizedclientexception"
        | "invalidsignatureexception"
        | "incompletesignatureexception"
        | "expiredtokenexception"
        | "missingauthenticationtokenexception" => Class::Auth,
        "resourcenotfoundexception" => Class::NotFound,
        "modeltimeoutexception" => Class::Timeout,
        "serviceunavailableexception" => Class::Unavailable,
        "internalserverexception" | "modelerrorexception" | "modelstreamerrorexception" => {
            Class::Failed
        }
        _ => Class::Unknown,
    }
}

/// Bedrock's message (`message` or `Message`), made safe to show.
fn message(body: &[u8]) -> Option<String> {
    let doc: Value = serde_json::from_slice(body).ok()?;
    let m = doc
        .get("message")
        .or_else(|| doc.get("Message"))
        .and_then(Value::as_str)?;
    Some(redact(m))
}

/// Whether an error type (`x-amzn-ErrorType`, or a stream exception's
/// `:exception-type`) is a throttling one: retried and fallen back from as
/// a 429.
pub fn throttled(error_type: &str) -> bool {
    class(error_type) == Class::Throttled
}

/// Maps a Bedrock error response. `error_type` is the `x-amzn-ErrorType`
/// header, if any (the body's `__type` is used when it is missing).
pub fn error(status: u16, error_type: Option<&str>, body: &[u8]) -> GatewayError {
    let from_body;
    let kind = match error_type {
        Some(t) => t,
        None => {
            from_body = serde_json::from_slice::<Value>(body)
                .ok()
                .and_then(|d| d.get("__type").and_then(Value::as_str).map(str::to_string))
                .unwrap_or_default();
            // `__type` may be `com.amazon…#ValidationException`.
            from_body.rsplit('#').next().unwrap_or("")
        }
    };
    by_class(class(kind), status, body)
}

/// Maps an exception frame of a ConverseStream (`:exception-type` such as
/// `throttlingException`, payload `{"message": …}`).
pub fn exception(kind: &str, payload: &[u8]) -> GatewayError {
    by_class(class(kind), 0, payload)
}

fn by_class(c: Class, status: u16, body: &[u8]) -> GatewayError {
    match c {
        Class::Throttled => GatewayError::RateLimited { retry_after: None },
        Class::Invalid => GatewayError::ProviderInvalid {
            status: 400,
            message: match message(body) {
                Some(m) => format!("The provider rejected the request: {m}"),
                None => "The provider rejected the request.".into(),
            },
            code: "invalid_request",
            param: None,
        },
        Class::Auth => {
            log::error!("Bedrock refused the gateway's credentials (status {status})");
            GatewayError::UpstreamAuth
        }
        Class::NotFound => {
            log::warn!(
                "Bedrock answered ResourceNotFound: {}",
                message(body).unwrap_or_default()
            );
            GatewayError::UpstreamError
        }
        Class::Timeout => GatewayError::UpstreamTimeout,
        Class::Unavailable => GatewayError::UpstreamUnavailable { retry_after: None },
        Class::Failed => GatewayError::UpstreamError,
        // No type we know: decide by status, as for other providers. A
        // stream exception of an unknown type has no status.
        Class::Unknown if status == 0 => GatewayError::UpstreamError,
        Class::Unknown => match status {
            // The generic mapping shows `error.message`; Bedrock's text is
            // in `message`, so refusals keep theirs.
            400 | 422 => by_class(Class::Invalid, status, body),
            _ => provider_error(status, body),
        },
    }
}

/// Whether the proxy should retry or fall back after this error (the same
/// rule as other providers: throttling, unavailability, timeouts, 5xx).
pub fn retryable(e: &GatewayError) -> bool {
    matches!(
        e,
        GatewayError::RateLimited { .. }
            | GatewayError::UpstreamUnavailable { .. }
            | GatewayError::UpstreamTimeout
            | GatewayError::UpstreamError
    )
}
