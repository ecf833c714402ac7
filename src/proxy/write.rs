//! Writing the responses the gateway makes itself: errors, local JSON,
//! local SSE. (An upstream's response goes through `response.rs`.)

use crate::base::error::GatewayError;
use crate::proxy::headers::REQUEST_ID;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use std::time::Duration;

/// Headers every locally written response carries besides its own: the
/// request id and the `x-ratelimit-*` values.
pub(crate) struct Tags<'a> {
    pub(crate) request_id: &'a str,
    pub(crate) rate: &'a crate::governance::RateHeaders,
    /// Errors go out in Anthropic's shape (the Messages endpoint).
    pub(crate) anthropic: bool,
    /// `x-tollgate-cache`, for an alias with a cache.
    pub(crate) cache: Option<&'static str>,
}

fn header(
    status: u16,
    content_type: &'static str,
    len: Option<usize>,
    tags: &Tags<'_>,
) -> pingora::Result<ResponseHeader> {
    let request_id = tags.request_id;
    let mut resp = ResponseHeader::build(status, Some(4))?;
    for (name, value) in tags.rate.pairs() {
        resp.insert_header(name, value)?;
    }
    resp.insert_header(http::header::CONTENT_TYPE, content_type)?;
    match len {
        Some(n) => resp.insert_header(http::header::CONTENT_LENGTH, n)?,
        None => resp.insert_header(http::header::TRANSFER_ENCODING, "chunked")?,
    }
    if !request_id.is_empty() {
        resp.insert_header(REQUEST_ID, request_id)?;
    }
    if let Some(mark) = tags.cache {
        resp.insert_header(crate::proxy::cached::HEADER, mark)?;
    }
    Ok(resp)
}

/// Writes a complete JSON response.
pub(crate) async fn json(
    session: &mut Session,
    status: u16,
    body: Bytes,
    tags: &Tags<'_>,
) -> pingora::Result<()> {
    bytes(session, status, "application/json", body, tags).await
}

/// Writes a complete response of `content_type`.
pub(crate) async fn bytes(
    session: &mut Session,
    status: u16,
    content_type: &'static str,
    body: Bytes,
    tags: &Tags<'_>,
) -> pingora::Result<()> {
    let resp = header(status, content_type, Some(body.len()), tags)?;
    session.write_response_header(Box::new(resp), false).await?;
    let head = session.req_header().method == http::Method::HEAD;
    session
        .write_response_body(Some(if head { Bytes::new() } else { body }), true)
        .await
}

/// Writes an error: OpenAI's format, or Anthropic's on the Messages endpoint.
pub(crate) async fn error(
    session: &mut Session,
    err: &GatewayError,
    tags: &Tags<'_>,
) -> pingora::Result<()> {
    let mut resp = header(err.status(), "application/json", None, tags)?;
    let body = if tags.anthropic {
        crate::proxy::messages::error_body(err)
    } else {
        err.body()
    };
    resp.remove_header(&http::header::TRANSFER_ENCODING);
    resp.insert_header(http::header::CONTENT_LENGTH, body.len())?;
    if let GatewayError::MethodNotAllowed { allowed } = err {
        resp.insert_header(http::header::ALLOW, *allowed)?;
    }
    if let Some(secs) = err.retry_after() {
        resp.insert_header(http::header::RETRY_AFTER, secs)?;
    }
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await
}

/// Streams SSE events, one write (and one chunk) each, `interval` apart.
pub(crate) async fn sse(
    session: &mut Session,
    events: Vec<Bytes>,
    interval: Duration,
    tags: &Tags<'_>,
) -> pingora::Result<()> {
    let mut resp = header(200, "text/event-stream", None, tags)?;
    resp.insert_header(http::header::CACHE_CONTROL, "no-cache")?;
    session.write_response_header(Box::new(resp), false).await?;
    let n = events.len();
    for (i, ev) in events.into_iter().enumerate() {
        if i > 0 && !interval.is_zero() {
            tokio::time::sleep(interval).await;
        }
        session.write_response_body(Some(ev), i + 1 == n).await?;
    }
    Ok(())
}
