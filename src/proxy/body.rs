//! Reading the whole request body before routing, in a way that keeps Pingora
//! calling `request_body_filter` at the start of every upstream attempt,
//! whatever the body's framing. Pinned to Pingora 0.9.1: these are its
//! internals, guarded by the 64 KiB + 1, 1 MiB and 8 MiB, chunked, HTTP/2
//! and fallback tests (`tests/uploads.rs`, `tests/core_proxy.rs`).
//!
//! At the start of each attempt Pingora 0.9 sends a body into the upstream
//! pipe (and so calls `request_body_filter`) only when its 64 KiB retry
//! buffer holds a non-empty, untruncated copy of the body, or when the body
//! is empty; otherwise the upstream gets headers alone and waits. We read
//! the body ourselves and arrange one of the two, then `request_body_filter`
//! emits the attempt's whole rewritten body in place of whatever Pingora
//! hands it (`attempt::body_chunk`), with `Content-Length` set to its length:
//!
//! - **`Content-Length` (HTTP/1 and HTTP/2):** retry buffering is turned on
//!   only once the bytes still to come fit in the buffer, so it ends up
//!   holding a non-empty, untruncated tail.
//! - **HTTP/2 without `Content-Length`:** the buffer is on from the start;
//!   the first non-empty DATA frame goes into it (a frame is at most 16 KiB,
//!   the `SETTINGS_MAX_FRAME_SIZE` set in `server.rs`), every later frame is
//!   read past it (`poll_read_body_bytes`, which does not copy into it).
//! - **HTTP/1 chunked:** the buffer is on from the start. A body of at most
//!   64 KiB fits and nothing more is needed. A longer one truncates it, so
//!   the session is told the body was empty: Pingora re-reads a copy of the
//!   request header that says `content-length: 0` (a pipelined prefix; no
//!   socket read), its body reader settles at zero, and the original header
//!   object comes back without `Transfer-Encoding` and `Expect`. That
//!   re-read forgets any bytes the client sent past the body's last chunk
//!   (a pipelined request, which a client must not send after a POST), so
//!   such a connection is closed after its response (`Connection: close`)
//!   rather than reused with those bytes lost.

use crate::base::error::GatewayError;
use bytes::{Bytes, BytesMut};
use http::header;
use pingora::protocols::http::ServerSession;
use pingora::proxy::Session;
use std::time::Duration;

/// Pingora's retry buffer size (`BODY_BUF_LIMIT` in pingora-core 0.9.1).
pub(crate) const RETRY_BUFFER_LIMIT: u64 = 64 * 1024;

/// How the client framed its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    Length(u64),
    Chunked,
}

/// Checks framing headers before anything is read. Conflicting or malformed
/// framing is refused outright (request smuggling).
pub(crate) fn framing(headers: &http::HeaderMap) -> Result<Framing, GatewayError> {
    let te: Vec<_> = headers.get_all(header::TRANSFER_ENCODING).iter().collect();
    let cl: Vec<_> = headers.get_all(header::CONTENT_LENGTH).iter().collect();
    if !te.is_empty() {
        if !cl.is_empty() {
            return Err(GatewayError::invalid(
                "Both Content-Length and Transfer-Encoding were sent.",
            ));
        }
        let chunked_once = te.len() == 1 && te[0].as_bytes().eq_ignore_ascii_case(b"chunked");
        if !chunked_once {
            return Err(GatewayError::invalid("Unsupported Transfer-Encoding."));
        }
        return Ok(Framing::Chunked);
    }
    match cl.as_slice() {
        [] => Ok(Framing::Length(0)),
        [one] => std::str::from_utf8(one.as_bytes())
            .ok()
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse::<u64>().ok())
            .map(Framing::Length)
            .ok_or_else(|| GatewayError::invalid("Malformed Content-Length.")),
        _ => Err(GatewayError::invalid("More than one Content-Length.")),
    }
}

/// Whether the client sent both `Content-Length` and `Transfer-Encoding`.
/// Pingora 0.9 deletes the `Content-Length` before we see the request and
/// turns keep-alive off (RFC 9112 section 6.1), so the conflict shows only as
/// a chunked HTTP/1 request whose keep-alive is off for no reason the client
/// gave (`Connection: close`, HTTP/1.0) nor a shutdown.
pub(crate) fn had_both_lengths(session: &Session) -> bool {
    let req = session.req_header();
    if !req.headers.contains_key(header::TRANSFER_ENCODING)
        || session.get_keepalive().is_some()
        || session.is_process_shutting_down()
    {
        return false;
    }
    let token = |t: &str| {
        req.headers.get(header::CONNECTION).is_some_and(|v| {
            v.as_bytes()
                .split(|b| *b == b',')
                .any(|p| p.trim_ascii().eq_ignore_ascii_case(t.as_bytes()))
        })
    };
    let client_closes = if token("keep-alive") {
        false
    } else if token("close") {
        true
    } else {
        req.version != http::Version::HTTP_11
    };
    !client_closes && matches!(req.version, http::Version::HTTP_11 | http::Version::HTTP_10)
}

/// Whether the client waits for `100 Continue` before it sends its body.
/// HTTP/2 clients do not wait for a 100 (and Pingora's h2 session would
/// take it as the final response header).
pub(crate) fn expects_continue(session: &Session) -> bool {
    !session.is_http2()
        && session
            .get_header(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// The largest HTTP/2 DATA frame a client may send us
/// (`SETTINGS_MAX_FRAME_SIZE`, set in `server.rs`): the first frame of a body
/// without `Content-Length` must fit in the retry buffer.
pub(crate) const H2_MAX_FRAME: u32 = 16 * 1024;

const _: () = assert!(H2_MAX_FRAME as u64 <= RETRY_BUFFER_LIMIT);

/// Reads the whole body, up to `limit` bytes, pausing at most `idle` between
/// reads. On success Pingora will hand `request_body_filter` a chunk at the
/// start of every attempt (see module docs).
pub(crate) async fn read_all(
    session: &mut Session,
    framing: Framing,
    limit: u64,
    idle: Duration,
) -> Result<Bytes, GatewayError> {
    if let Framing::Length(n) = framing {
        if n > limit {
            return Err(GatewayError::PayloadTooLarge { limit });
        }
        if n == 0 {
            return Ok(Bytes::new());
        }
    }
    if expects_continue(session) {
        session
            .write_continue_response()
            .await
            .map_err(|_| GatewayError::invalid("Could not answer Expect: 100-continue."))?;
    }
    // Pingora times out HTTP/1 reads itself; its HTTP/2 body reader has no
    // timeout, so there every read is also bounded here.
    session.set_read_timeout(Some(idle));
    let h2 = session.is_http2();
    let expected = match framing {
        Framing::Length(n) => Some(n),
        Framing::Chunked => None,
    };
    let mut buf = BytesMut::with_capacity(expected.unwrap_or(16 * 1024).min(limit) as usize);
    let maybe_enable = |session: &mut Session, read: u64| {
        let left = expected.map_or(0, |n| n.saturating_sub(read));
        if expected.is_none() || (1..=RETRY_BUFFER_LIMIT).contains(&left) {
            session.enable_retry_buffering();
        }
    };
    maybe_enable(session, 0);
    // HTTP/2 without a length: whether the retry buffer already holds a
    // frame, after which frames are read past it.
    let mut h2_past_buffer = false;
    loop {
        let read = if h2 {
            tokio::time::timeout(idle, read_h2(session, h2_past_buffer)).await
        } else {
            Ok(session.read_request_body().await)
        };
        let chunk = match read {
            Ok(Ok(Some(c))) => c,
            Ok(Ok(None)) => break,
            // The body's framing is lost (Pingora marks a broken body as
            // done): what follows on the connection is not a request.
            Err(_) => {
                session.set_keepalive(None);
                return Err(GatewayError::RequestTimeout);
            }
            Ok(Err(e)) => {
                session.set_keepalive(None);
                return Err(match e.etype() {
                    pingora::ErrorType::ReadTimedout => GatewayError::RequestTimeout,
                    _ => GatewayError::invalid("The request body could not be read."),
                });
            }
        };
        if buf.len() as u64 + chunk.len() as u64 > limit {
            return Err(GatewayError::PayloadTooLarge { limit });
        }
        buf.extend_from_slice(&chunk);
        match expected {
            Some(_) => maybe_enable(session, buf.len() as u64),
            None if h2 && !h2_past_buffer && !chunk.is_empty() => h2_past_buffer = true,
            None => {}
        }
    }
    if expected.is_some_and(|n| n != buf.len() as u64) {
        return Err(GatewayError::invalid("The request body ended early."));
    }
    if !buf.is_empty() && session.get_retry_buffer().is_none() {
        if framing == Framing::Chunked && !h2 {
            settle_empty(session).await?;
        } else {
            log::error!("retry buffer is empty after reading the body; refusing to forward");
            return Err(GatewayError::Internal);
        }
    }
    Ok(buf.freeze())
}

/// One HTTP/2 body read: through the retry buffer until it holds a frame,
/// then past it.
async fn read_h2(session: &mut Session, past_buffer: bool) -> pingora::Result<Option<Bytes>> {
    if !past_buffer {
        return session.read_request_body().await;
    }
    let ServerSession::H2(h2) = &mut *session.downstream_session else {
        return session.read_request_body().await;
    };
    match std::future::poll_fn(|cx| h2.poll_read_body_bytes(cx)).await {
        None => Ok(None),
        Some(Ok(b)) => Ok(Some(b)),
        Some(Err(e)) => pingora::Error::e_because(
            pingora::ErrorType::ReadError,
            "while reading downstream request body",
            e,
        ),
    }
}

/// HTTP/1, the whole body read: makes the session take it for an empty body
/// (module docs), so that Pingora calls `request_body_filter` with no data
/// at the start of every attempt. The connection closes after the response.
async fn settle_empty(session: &mut Session) -> Result<(), GatewayError> {
    let internal = |what: &str| {
        log::error!("settling a chunked body: {what}; refusing to forward");
        GatewayError::Internal
    };
    let ServerSession::H1(h1) = &mut *session.downstream_session else {
        return Err(internal("not an HTTP/1 session"));
    };
    let mut original = h1.req_header().clone();
    original.remove_header(&header::TRANSFER_ENCODING);
    original.remove_header(&header::EXPECT);
    let mut copy = original.clone();
    copy.insert_header(header::CONTENT_LENGTH, "0")
        .map_err(|_| internal("content-length"))?;
    let wire = pingora::protocols::http::v1::client::http_req_header_to_wire(&copy)
        .ok_or_else(|| internal("the header copy"))?;
    h1.set_pipelined_prefix(wire);
    match h1.read_request().await {
        Ok(Some(_)) => {}
        _ => return Err(internal("re-reading the header copy")),
    }
    if !h1.is_body_empty() {
        return Err(internal("the body did not settle at zero"));
    }
    *h1.req_header_mut() = original;
    session.set_keepalive(None);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderValue};

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        m
    }

    #[test]
    fn framing_rules() {
        assert_eq!(
            framing(&h(&[("content-length", "12")])),
            Ok(Framing::Length(12))
        );
        assert_eq!(
            framing(&h(&[("transfer-encoding", "chunked")])),
            Ok(Framing::Chunked)
        );
        assert_eq!(framing(&h(&[])), Ok(Framing::Length(0)));
        for bad in [
            vec![("content-length", "1"), ("transfer-encoding", "chunked")],
            vec![("transfer-encoding", "chunked, chunked")],
            vec![("transfer-encoding", "gzip")],
            vec![("content-length", "-1")],
            vec![("content-length", "1x")],
            vec![("content-length", "1"), ("content-length", "1")],
        ] {
            assert_eq!(
                framing(&h(&bad)).map_err(|e| e.status()),
                Err(400),
                "{bad:?}"
            );
        }
    }
}
