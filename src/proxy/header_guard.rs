//! Slow-header protection. Pingora's HTTP/1 reader times out each read, so a
//! client sending one header byte a second (slowloris) is never cut off, and
//! it accepts headers up to 1 MiB. This wrapper reads each request's header
//! itself, under a total deadline and a size cap, then puts the bytes back
//! (`rewind`) and hands the connection to the proxy unchanged. HTTP/1.1
//! over TLS is guarded the same way (the bytes are put back by `Rewound`);
//! HTTP/2 has its own limits (h2 settings, checked again in `admit`).

use crate::error::GatewayError;
use crate::proxy::rewound::Rewound;
use crate::runtime::Shared;
use async_trait::async_trait;
use bytes::BytesMut;
use pingora::apps::ServerApp;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{Stream, ALPN};
use pingora::server::ShutdownWatch;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Wraps a server app (the proxy) with header deadlines.
pub struct HeaderGuard<A> {
    pub inner: Arc<A>,
    pub shared: Arc<Shared>,
}

/// What reading a header produced.
enum Header {
    /// Complete (or the client sent something we let the proxy judge).
    Ready(BytesMut),
    /// Closed, idle past keep-alive, or shutting down: just close.
    Close,
    /// Refuse with this error, then close.
    Refuse(GatewayError),
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for HeaderGuard<A> {
    async fn process_new(
        self: &Arc<Self>,
        session: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let _busy = Busy::enter();
        let rt = self.shared.load();
        let limits = rt.header_limits;
        if !session.as_any().is::<L4Stream>() {
            if matches!(session.selected_alpn_proto(), Some(ALPN::H2)) {
                return self.inner.process_new(session, shutdown).await;
            }
            // HTTP/1 over TLS.
            let mut tls = session;
            return match read_header(&mut tls, limits, shutdown).await {
                Header::Ready(buf) => {
                    let stream = Rewound::new(buf.freeze(), tls);
                    self.inner.process_new(Box::new(stream), shutdown).await
                }
                Header::Close => None,
                Header::Refuse(err) => {
                    let _ = tls.write_all(&raw_error(&err)).await;
                    let _ = tls.flush().await;
                    None
                }
            };
        }
        let mut l4 = session.into_any().downcast::<L4Stream>().ok()?;
        match read_header(&mut l4, limits, shutdown).await {
            Header::Ready(buf) => {
                l4.rewind(&buf);
                self.inner.process_new(l4, shutdown).await
            }
            Header::Close => None,
            Header::Refuse(err) => {
                let _ = l4.write_all(&raw_error(&err)).await;
                let _ = l4.flush().await;
                None
            }
        }
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await;
    }
}

/// Header limits toward clients.
#[derive(Debug, Clone, Copy)]
pub struct HeaderLimits {
    /// Longest wait for the first byte of a request (keep-alive idle).
    pub idle: Duration,
    /// From the first byte to the end of the header.
    pub deadline: Duration,
    pub max_bytes: usize,
}

/// How long a connection with no request yet is kept open once shutdown
/// has begun.
const LAST_CHANCE: Duration = Duration::from_secs(1);

/// Connections being read or served, from accept to close (the drain on
/// shutdown waits for them, so one accepted just before the stop, whose
/// request has not arrived yet, is still served).
static BUSY: AtomicUsize = AtomicUsize::new(0);

/// Connections now open and waiting for, or serving, a request.
pub fn busy_connections() -> usize {
    BUSY.load(Ordering::Relaxed)
}

struct Busy;

impl Busy {
    fn enter() -> Self {
        BUSY.fetch_add(1, Ordering::Relaxed);
        Busy
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        BUSY.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn read_header<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
    l: HeaderLimits,
    shutdown: &ShutdownWatch,
) -> Header {
    let mut buf = BytesMut::with_capacity(4096);
    let mut shutdown = shutdown.clone();
    // Wait for the first byte: keep-alive idle time. On shutdown, a
    // connection accepted just before the listener closed may not have sent
    // its request yet: it gets a short last chance, then closes.
    let last_chance = LAST_CHANCE.min(l.idle);
    let first = if *shutdown.borrow() {
        tokio::time::timeout(last_chance, s.read_buf(&mut buf)).await
    } else {
        tokio::select! {
            r = tokio::time::timeout(l.idle, s.read_buf(&mut buf)) => r,
            _ = shutdown.changed() => {
                tokio::time::timeout(last_chance, s.read_buf(&mut buf)).await
            }
        }
    };
    match first {
        Ok(Ok(n)) if n > 0 => {}
        _ => return Header::Close,
    }
    let deadline = tokio::time::Instant::now() + l.deadline;
    let mut scanned = 0;
    loop {
        if let Some(i) = memchr::memmem::find(&buf[scanned..], b"\r\n\r\n") {
            let end = scanned + i + 4;
            if end > l.max_bytes || header_lines(&buf[..end]) > MAX_HEADER_LINES {
                return Header::Refuse(GatewayError::HeaderTooLarge);
            }
            return Header::Ready(buf);
        }
        // Anything that is not HTTP/1 request text is Pingora's to refuse.
        if buf.len() >= 4 && !buf[..4].iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
            return Header::Ready(buf);
        }
        if buf.len() > l.max_bytes {
            return Header::Refuse(GatewayError::HeaderTooLarge);
        }
        scanned = buf.len().saturating_sub(3);
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(buf.len().min(l.max_bytes));
        }
        match tokio::time::timeout_at(deadline, s.read_buf(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            Ok(_) => return Header::Close,
            Err(_) => return Header::Refuse(GatewayError::RequestTimeout),
        }
    }
}

/// Pingora's HTTP/1 reader parses at most this many header lines
/// (`MAX_HEADERS` in pingora-core 0.9) and answers more with a bare 400, so
/// the guard refuses them first with the 431 every oversized header gets.
const MAX_HEADER_LINES: usize = 256;

/// Header lines (fields) in a complete request header, `head` ending with
/// the blank line: its line breaks less the request line's and the blank
/// line's.
fn header_lines(head: &[u8]) -> usize {
    memchr::memchr_iter(b'\n', head).count().saturating_sub(2)
}

fn raw_error(err: &GatewayError) -> Vec<u8> {
    let body = err.body();
    let reason = match err.status() {
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        _ => "Bad Request",
    };
    let mut out = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        err.status(),
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    out
}

#[cfg(test)]
mod tests {
    use super::header_lines;

    #[test]
    fn header_lines_counts_fields_only() {
        assert_eq!(header_lines(b"GET / HTTP/1.1\r\n\r\n"), 0);
        assert_eq!(header_lines(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"), 1);
        let many: String = (0..257).map(|i| format!("X-{i}: v\r\n")).collect();
        assert_eq!(
            header_lines(format!("POST / HTTP/1.1\r\n{many}\r\n").as_bytes()),
            257
        );
    }
}
