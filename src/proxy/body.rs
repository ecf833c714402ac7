//! Reading the whole request body before routing, in a way that keeps Pingora
//! calling `request_body_filter` on every upstream attempt.
//!
//! Pingora 0.9 only replays a body it holds in its 64 KiB retry buffer. We read
//! the body ourselves, and turn retry buffering on only once the bytes still to
//! come fit in that buffer. The buffer then ends up holding a non-empty,
//! untruncated tail, so at the start of each attempt Pingora calls
//! `request_body_filter` once with that tail and end-of-stream, and we emit the
//! full rewritten body there instead. Guarded by the 64 KiB + 1 and 8 MiB tests.

use crate::base::error::GatewayError;
use bytes::{Bytes, BytesMut};
use http::header;
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

/// Reads the whole body, up to `limit` bytes, pausing at most `idle` between
/// reads. On success the retry buffer holds the body's tail (see module docs).
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
    loop {
        let read = if h2 {
            tokio::time::timeout(idle, session.read_request_body()).await
        } else {
            Ok(session.read_request_body().await)
        };
        let chunk = match read {
            Err(_) => return Err(GatewayError::RequestTimeout),
            Ok(Ok(Some(c))) => c,
            Ok(Ok(None)) => break,
            Ok(Err(e)) => {
                return Err(match e.etype() {
                    pingora::ErrorType::ReadTimedout => GatewayError::RequestTimeout,
                    _ => GatewayError::invalid("The request body could not be read."),
                })
            }
        };
        if buf.len() as u64 + chunk.len() as u64 > limit {
            return Err(GatewayError::PayloadTooLarge { limit });
        }
        buf.extend_from_slice(&chunk);
        if expected.is_some() {
            maybe_enable(session, buf.len() as u64);
        }
    }
    if expected.is_some_and(|n| n != buf.len() as u64) {
        return Err(GatewayError::invalid("The request body ended early."));
    }
    if session.get_retry_buffer().is_none() && !buf.is_empty() {
        return Err(match framing {
            Framing::Chunked => GatewayError::LengthRequired,
            Framing::Length(_) => {
                log::error!("retry buffer is empty after reading the body; refusing to forward");
                GatewayError::Internal
            }
        });
    }
    Ok(buf.freeze())
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
