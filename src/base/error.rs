//! `GatewayError`: every error Tollgate itself answers with. Each variant knows
//! its HTTP status, its OpenAI `type` and `code`, and its metric label; it is
//! rendered in one place as an OpenAI-format body.

use bytes::Bytes;
use std::fmt;

/// An error answered to the client in OpenAI's shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayError {
    /// The body is not valid JSON, not an object, or lacks a string `model`.
    InvalidRequest {
        message: String,
        param: Option<&'static str>,
    },
    /// No key, or a key we do not know.
    InvalidApiKey,
    /// A runtime key that was revoked, has expired or was rotated out.
    KeyRefused { why: KeyRefusal },
    /// The key may not use this model.
    ModelNotAllowed { model: String },
    /// No such model alias.
    ModelNotFound { model: String },
    /// No such endpoint.
    NotFound,
    /// The endpoint exists, but not for this method.
    MethodNotAllowed { allowed: &'static str },
    /// The body was not complete within the body-idle timeout.
    RequestTimeout,
    /// The request header is over `downstream.max_header_bytes`.
    HeaderTooLarge,
    /// The body is over `max_body_bytes`.
    PayloadTooLarge { limit: u64 },
    /// A request field the route's provider cannot honour (`param` names it).
    UnsupportedParam { message: String, param: String },
    /// The provider refused the request as invalid. `message` is the
    /// provider's text, already made safe (see `translate::errors`).
    ProviderInvalid {
        status: u16,
        message: String,
        code: &'static str,
        param: Option<&'static str>,
    },
    /// The upstream could not be reached or answered badly.
    UpstreamError,
    /// The upstream refused the gateway's provider key (its text is not shown).
    UpstreamAuth,
    /// The upstream rate-limited us and no other route was left.
    RateLimited { retry_after: Option<u64> },
    /// Every backend is cooling down or has an open breaker.
    UpstreamUnavailable { retry_after: Option<u64> },
    /// The upstream did not answer in time.
    UpstreamTimeout,
    /// A key, team or model rate or concurrency limit was reached.
    LimitExceeded { detail: String, retry_after: u64 },
    /// A key or team budget (spend or tokens) is used up for its window.
    QuotaExceeded { detail: String, retry_after: u64 },
    /// The shared limits store cannot be reached (`on_error: fail_closed`).
    LimitsUnavailable,
    /// No route of the alias is open to this caller (its tier or regions).
    RouteNotPermitted { message: String, code: &'static str },
    /// No route of the alias can serve what the request uses (a capability,
    /// or a prompt too long for every context window).
    Unsupported {
        message: String,
        param: Option<&'static str>,
        code: &'static str,
    },
    /// A file or batch id the caller does not own (or that does not
    /// exist): `param` names the id's field.
    ObjectNotFound {
        message: String,
        param: &'static str,
    },
    /// The key (and its team) has no `files_provider`.
    FilesNotConfigured { message: String },
    /// A fault inside the gateway.
    Internal,
}

/// Why a known key is refused (the 401's message says which; it says
/// nothing about any other key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRefusal {
    Revoked,
    Expired,
    /// An old secret whose rotation grace period has ended.
    RotatedOut,
}

impl GatewayError {
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::InvalidRequest {
            message: message.into(),
            param: None,
        }
    }

    pub fn status(&self) -> u16 {
        match self {
            Self::ProviderInvalid { status, .. } => *status,
            Self::UnsupportedParam { .. } => 400,
            Self::InvalidRequest { .. } | Self::Unsupported { .. } => 400,
            Self::InvalidApiKey | Self::KeyRefused { .. } => 401,
            Self::ModelNotAllowed { .. } | Self::RouteNotPermitted { .. } => 403,
            Self::ModelNotFound { .. } | Self::NotFound | Self::ObjectNotFound { .. } => 404,
            Self::FilesNotConfigured { .. } => 403,
            Self::MethodNotAllowed { .. } => 405,
            Self::RequestTimeout => 408,
            Self::HeaderTooLarge => 431,
            Self::PayloadTooLarge { .. } => 413,
            Self::UpstreamError | Self::UpstreamAuth => 502,
            Self::RateLimited { .. } | Self::LimitExceeded { .. } | Self::QuotaExceeded { .. } => {
                429
            }
            Self::UpstreamUnavailable { .. } | Self::LimitsUnavailable => 503,
            Self::UpstreamTimeout => 504,
            Self::Internal => 500,
        }
    }

    /// OpenAI's `error.type`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::InvalidRequest { .. }
            | Self::ProviderInvalid { .. }
            | Self::UnsupportedParam { .. }
            | Self::Unsupported { .. }
            | Self::ModelNotFound { .. }
            | Self::NotFound
            | Self::ObjectNotFound { .. }
            | Self::MethodNotAllowed { .. }
            | Self::RequestTimeout
            | Self::HeaderTooLarge
            | Self::PayloadTooLarge { .. } => "invalid_request_error",
            Self::InvalidApiKey | Self::KeyRefused { .. } => "authentication_error",
            Self::ModelNotAllowed { .. }
            | Self::RouteNotPermitted { .. }
            | Self::FilesNotConfigured { .. } => "permission_error",
            Self::UpstreamError
            | Self::UpstreamAuth
            | Self::UpstreamUnavailable { .. }
            | Self::UpstreamTimeout
            | Self::LimitsUnavailable
            | Self::Internal => "api_error",
            Self::RateLimited { .. } | Self::LimitExceeded { .. } => "requests",
            Self::QuotaExceeded { .. } => "insufficient_quota",
        }
    }

    /// OpenAI's `error.code`; also the low-cardinality metric label.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidRequest { .. } => "invalid_request",
            Self::ProviderInvalid { code, .. } => code,
            Self::UnsupportedParam { .. } => "unsupported_parameter",
            Self::InvalidApiKey | Self::KeyRefused { .. } => "invalid_api_key",
            Self::ModelNotAllowed { .. } => "model_not_allowed",
            Self::ModelNotFound { .. } => "model_not_found",
            Self::NotFound => "unknown_url",
            Self::ObjectNotFound { .. } => "not_found",
            Self::FilesNotConfigured { .. } => "files_not_configured",
            Self::MethodNotAllowed { .. } => "method_not_allowed",
            Self::RequestTimeout => "request_timeout",
            Self::HeaderTooLarge => "request_header_too_large",
            Self::PayloadTooLarge { .. } => "request_too_large",
            Self::UpstreamError => "upstream_error",
            Self::UpstreamAuth => "upstream_auth_error",
            Self::RateLimited { .. } | Self::LimitExceeded { .. } => "rate_limit_exceeded",
            Self::QuotaExceeded { .. } => "insufficient_quota",
            Self::UpstreamUnavailable { .. } => "upstream_unavailable",
            Self::LimitsUnavailable => "limits_unavailable",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::RouteNotPermitted { code, .. } | Self::Unsupported { code, .. } => code,
            Self::Internal => "gateway_error",
        }
    }

    fn param(&self) -> Option<&str> {
        match self {
            Self::UnsupportedParam { param, .. } => Some(param.as_str()),
            Self::InvalidRequest { param, .. }
            | Self::ProviderInvalid { param, .. }
            | Self::Unsupported { param, .. } => *param,
            Self::ObjectNotFound { param, .. } => Some(param),
            Self::ModelNotAllowed { .. }
            | Self::ModelNotFound { .. }
            | Self::RouteNotPermitted { .. } => Some("model"),
            _ => None,
        }
    }

    /// Seconds for a `Retry-After` header, where one is known.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            Self::RateLimited { retry_after } | Self::UpstreamUnavailable { retry_after } => {
                *retry_after
            }
            Self::LimitExceeded { retry_after, .. } | Self::QuotaExceeded { retry_after, .. } => {
                Some(*retry_after)
            }
            Self::LimitsUnavailable => Some(1),
            _ => None,
        }
    }

    /// The OpenAI-format JSON body.
    pub fn body(&self) -> Bytes {
        let v = serde_json::json!({
            "error": {
                "message": self.to_string(),
                "type": self.kind(),
                "param": self.param(),
                "code": self.code(),
            }
        });
        Bytes::from(v.to_string())
    }
}

impl fmt::Display for GatewayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidRequest { message, .. }
            | Self::ProviderInvalid { message, .. }
            | Self::UnsupportedParam { message, .. }
            | Self::RouteNotPermitted { message, .. }
            | Self::Unsupported { message, .. }
            | Self::ObjectNotFound { message, .. }
            | Self::FilesNotConfigured { message } => f.write_str(message),
            Self::InvalidApiKey => f.write_str(
                "Invalid or missing API key. Send your Tollgate key as `Authorization: Bearer <key>`.",
            ),
            Self::KeyRefused { why } => f.write_str(match why {
                KeyRefusal::Revoked => "This API key has been revoked.",
                KeyRefusal::Expired => "This API key has expired.",
                KeyRefusal::RotatedOut => {
                    "This API key was rotated and this secret is no longer valid; use the new secret."
                }
            }),
            Self::ModelNotAllowed { model } => {
                write!(f, "This key is not allowed to use the model `{model}`.")
            }
            Self::ModelNotFound { model } => write!(
                f,
                "The model `{model}` does not exist. GET /v1/models lists the models this key may use."
            ),
            Self::NotFound => f.write_str("Unknown endpoint."),
            Self::MethodNotAllowed { allowed } => {
                write!(f, "Method not allowed for this endpoint; use {allowed}.")
            }
            Self::RequestTimeout => f.write_str("The request body was not received in time."),
            Self::HeaderTooLarge => f.write_str("The request header is too large."),
            Self::PayloadTooLarge { limit } => {
                write!(f, "The request body is larger than the limit of {limit} bytes.")
            }
            Self::UpstreamError => {
                f.write_str("The upstream provider could not be reached or failed.")
            }
            Self::UpstreamTimeout => f.write_str("The upstream provider did not answer in time."),
            Self::UpstreamAuth => f.write_str(
                "The upstream provider rejected the gateway's credentials. The operator has been alerted.",
            ),
            Self::RateLimited { .. } => {
                f.write_str("The upstream provider is rate limiting requests; retry later.")
            }
            Self::UpstreamUnavailable { .. } => f.write_str(
                "Every upstream for this model is temporarily unavailable; retry later.",
            ),
            Self::LimitExceeded {
                detail,
                retry_after,
            } => write!(
                f,
                "Rate limit reached: {detail}. Retry after {retry_after} s."
            ),
            Self::QuotaExceeded {
                detail,
                retry_after,
            } => write!(
                f,
                "Quota exceeded: {detail} is used up. It renews in {retry_after} s."
            ),
            Self::LimitsUnavailable => f.write_str(
                "The gateway cannot check this request's limits right now; retry shortly.",
            ),
            Self::Internal => f.write_str("Internal gateway error."),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_openai_shaped() {
        let e = GatewayError::ModelNotFound { model: "x".into() };
        let v: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
        assert_eq!(v["error"]["code"], "model_not_found");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["param"], "model");
        assert!(v["error"]["message"].as_str().unwrap().contains('x'));
        assert_eq!(e.status(), 404);
    }
}
