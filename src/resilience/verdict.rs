//! What an upstream response means for the request: pass it on, or count it
//! as a failure (and maybe try elsewhere).

use crate::base::error::GatewayError;
use pingora::http::ResponseHeader;

/// The decision on one response header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Forward it to the client.
    Accept,
    /// A failure: try elsewhere if possible, else answer `error`.
    Fail {
        error: GatewayError,
        /// The provider's key was refused: other backends of it will refuse too.
        skip_provider: bool,
        /// From `Retry-After`, in seconds.
        retry_after: Option<u64>,
    },
}

/// Judges a response header. `on_status` lists the statuses that count as
/// failures; a stream request answered 2xx without SSE is one too.
pub(crate) fn judge(resp: &ResponseHeader, on_status: &[u16], expects_stream: bool) -> Verdict {
    let status = resp.status.as_u16();
    let retry_after = retry_after_secs(resp);
    if status == 401 || status == 403 {
        return Verdict::Fail {
            error: GatewayError::UpstreamAuth,
            skip_provider: true,
            retry_after: None,
        };
    }
    if on_status.contains(&status) {
        let error = match status {
            429 => GatewayError::RateLimited { retry_after },
            // Anthropic's "overloaded": the service, not the request, failed.
            529 => GatewayError::UpstreamUnavailable { retry_after },
            _ => GatewayError::UpstreamError,
        };
        return Verdict::Fail {
            error,
            skip_provider: false,
            retry_after,
        };
    }
    if resp.status.is_success() && expects_stream {
        let sse = crate::sse::is_event_stream(resp);
        if !sse {
            return Verdict::Fail {
                error: GatewayError::UpstreamError,
                skip_provider: false,
                retry_after: None,
            };
        }
    }
    Verdict::Accept
}

/// Judges a Bedrock response header: as [`judge`], but its binary event
/// stream is a stream, and the error type (`x-amzn-ErrorType`) decides
/// first: every throttling type (`ThrottlingException`,
/// `ServiceQuotaExceededException`, `ModelNotReadyException`, whatever
/// its status) is a retryable 429.
pub(crate) fn judge_bedrock(
    resp: &ResponseHeader,
    on_status: &[u16],
    expects_stream: bool,
) -> Verdict {
    use crate::translate::bedrock;
    let throttled = !resp.status.is_success()
        && resp
            .headers
            .get(bedrock::ERROR_TYPE_HEADER)
            .and_then(|v| v.to_str().ok())
            .is_some_and(bedrock::throttled);
    if throttled {
        let retry_after = retry_after_secs(resp);
        return Verdict::Fail {
            error: GatewayError::RateLimited { retry_after },
            skip_provider: false,
            retry_after,
        };
    }
    let events = resp
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with(bedrock::EVENT_STREAM_TYPE));
    judge(resp, on_status, expects_stream && !events)
}

/// `Retry-After` in seconds (the delta form; HTTP dates are ignored), capped
/// at an hour.
pub(crate) fn retry_after_secs(resp: &ResponseHeader) -> Option<u64> {
    let v = resp.headers.get(http::header::RETRY_AFTER)?.to_str().ok()?;
    let secs: f64 = v.trim().parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| (secs.ceil() as u64).min(3600))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(status: u16, headers: &[(&str, &str)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(status, None).unwrap();
        for (k, v) in headers {
            r.insert_header(k.to_string(), *v).unwrap();
        }
        r
    }

    const ON: &[u16] = &[429, 500, 502, 503, 504];

    #[test]
    fn classifies_statuses() {
        assert_eq!(
            judge(
                &resp(200, &[("content-type", "application/json")]),
                ON,
                false
            ),
            Verdict::Accept
        );
        assert_eq!(judge(&resp(400, &[]), ON, false), Verdict::Accept);
        match judge(&resp(429, &[("retry-after", "7")]), ON, false) {
            Verdict::Fail {
                error, retry_after, ..
            } => {
                assert_eq!(
                    error,
                    GatewayError::RateLimited {
                        retry_after: Some(7)
                    }
                );
                assert_eq!(retry_after, Some(7));
            }
            v => panic!("{v:?}"),
        }
        assert!(matches!(
            judge(&resp(401, &[]), ON, false),
            Verdict::Fail {
                skip_provider: true,
                ..
            }
        ));
        assert!(matches!(
            judge(&resp(503, &[]), ON, false),
            Verdict::Fail { .. }
        ));
    }

    #[test]
    fn html_where_a_stream_was_expected_is_a_failure() {
        let html = resp(200, &[("content-type", "text/html")]);
        assert!(matches!(judge(&html, ON, true), Verdict::Fail { .. }));
        let sse = resp(200, &[("content-type", "text/event-stream; charset=utf-8")]);
        assert_eq!(judge(&sse, ON, true), Verdict::Accept);
    }
}
