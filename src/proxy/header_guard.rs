//! Slow-header protection on every request of every client connection.
//!
//! Pingora's HTTP/1 reader times out each read, not the whole header, so a
//! client sending one header byte a second (slowloris) is never cut off, and
//! it accepts headers up to 1 MiB. So this wrapper runs the HTTP/1
//! keep-alive loop itself instead of Pingora's `HttpServerApp` loop: before
//! each request it reads that request's header under a total deadline and a
//! size cap, puts the bytes back in front of the stream, and hands one
//! session to the proxy (`process_new_http`). When the proxy gives the
//! connection back for reuse, the next header is read the same way. So the
//! limits hold for the first request, for every later request on a
//! keep-alive connection, and after leading empty lines, on plaintext and
//! on TLS alike.
//!
//! Pingora hands back a reusable connection only when it read nothing past
//! the request's body (pipelining is off), so the next request's first byte
//! is always read here. Enabling Pingora's pipelining would bypass this
//! guard for pipelined requests.
//!
//! Pingora answers a header it cannot parse or validate (a malformed
//! request line or header line, bad framing headers) with a bare 400, and
//! CONNECT with a bare 405, before any proxy hook runs. The guard has the
//! whole header in hand, so it runs Pingora's own parser (0.9.1) over a copy
//! of it first, and answers those cases itself with the gateway's JSON
//! error (Anthropic's shape on `/v1/messages`), closing the connection as
//! Pingora does.
//!
//! HTTP/2 (TLS with ALPN `h2`): the client preface and its first SETTINGS
//! frame must arrive within `header_timeout`, else the connection is closed;
//! after that the h2 settings cap each stream's header list (set at start-up
//! in `server.rs`, measured again per request in `admit`).

use crate::base::error::GatewayError;
use crate::live::Shared;
use crate::proxy::rewound::Rewound;
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{Stream, ALPN, IO};
use pingora::server::ShutdownWatch;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Wraps the proxy with header deadlines and runs its HTTP/1 keep-alive loop.
pub(crate) struct HeaderGuard<A> {
    pub(crate) inner: Arc<A>,
    pub(crate) shared: Arc<Shared>,
}

/// What reading a header produced.
enum Header {
    /// Complete (or not HTTP/1 request text, which the proxy refuses at
    /// once), in the buffer given to `read_header`.
    Ready,
    /// Closed, idle past keep-alive, or shutting down: just close.
    Close,
    /// Refuse with this error, then close.
    Refuse(GatewayError),
}

#[async_trait]
impl<A: HttpServerApp + Send + Sync + 'static> ServerApp for HeaderGuard<A> {
    /// Serves one client connection (plain TCP, or TLS after the handshake)
    /// to its end; never hands it back to Pingora.
    async fn process_new(
        self: &Arc<Self>,
        session: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let _busy = Busy::enter();
        if session.as_any().is::<L4Stream>() {
            let l4 = session.into_any().downcast::<L4Stream>().ok()?;
            self.serve_http1(l4, shutdown).await;
            return None;
        }
        if matches!(session.selected_alpn_proto(), Some(ALPN::H2)) {
            return self.serve_h2(session, shutdown).await;
        }
        let tls = Box::new(Rewound::new(Bytes::new(), session));
        self.serve_http1(tls, shutdown).await;
        None
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await;
    }
}

impl<A: HttpServerApp + Send + Sync + 'static> HeaderGuard<A> {
    /// The HTTP/1 keep-alive loop: guard a header, serve that request, and
    /// repeat while the proxy hands the connection back. The session setup
    /// mirrors Pingora's own loop (`pingora-core` `apps/mod.rs`, 0.9.1).
    async fn serve_http1<S: IO + PutBack + 'static>(
        self: &Arc<Self>,
        mut stream: Box<S>,
        shutdown: &ShutdownWatch,
    ) {
        let mut settings: Option<HttpPersistentSettings> = None;
        // One buffer for the connection's headers, reused by each request
        // (the bytes are copied back into the stream), and replaced after a
        // big header so that an idle connection does not keep it.
        let mut buf = BytesMut::with_capacity(HEADER_BUFFER);
        loop {
            let limits = self.shared.load().header_limits;
            if buf.capacity() > 4 * HEADER_BUFFER {
                buf = BytesMut::with_capacity(HEADER_BUFFER);
            }
            match read_header(&mut *stream, &mut buf, limits, shutdown).await {
                Header::Ready => stream.put_back(&buf),
                Header::Close => return,
                Header::Refuse(err) => {
                    refuse(&mut *stream, &err, is_messages(&buf)).await;
                    return;
                }
            }
            let mut session = ServerSession::new_http1(stream);
            match settings.take() {
                Some(s) => s.apply_to_session(&mut session),
                None => {
                    // Pingora's defaults for a new connection; the proxy sets
                    // our own keep-alive time per request (`admit`).
                    session.set_keepalive((!*shutdown.borrow()).then_some(60));
                    session.set_keepalive_reuses_remaining(
                        self.inner
                            .server_options()
                            .and_then(|o| o.keepalive_request_limit),
                    );
                }
            }
            let Some(reused) = self.inner.process_new_http(session, shutdown).await else {
                return;
            };
            let (next, next_settings) = reused.consume();
            let Ok(next) = next.into_any().downcast::<S>() else {
                return;
            };
            stream = next;
            settings = next_settings;
        }
    }

    /// HTTP/2: waits (up to `header_timeout`) for the client preface and
    /// first SETTINGS frame, then hands the connection to Pingora's h2 loop.
    async fn serve_h2(
        self: &Arc<Self>,
        mut tls: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let deadline = self.shared.load().header_limits.deadline;
        let buf = read_h2_preface(&mut tls, deadline, shutdown).await?;
        let stream = Rewound::new(buf.freeze(), tls);
        self.inner.process_new(Box::new(stream), shutdown).await
    }
}

/// A stream that can be given bytes back, to be read again before the rest.
pub(crate) trait PutBack {
    /// Puts a copy of `bytes` in front of whatever is still unread.
    fn put_back(&mut self, bytes: &[u8]);
}

impl PutBack for L4Stream {
    fn put_back(&mut self, bytes: &[u8]) {
        self.rewind(bytes);
    }
}

impl PutBack for Rewound {
    fn put_back(&mut self, bytes: &[u8]) {
        self.prepend(Bytes::copy_from_slice(bytes));
    }
}

/// The header buffer's first size; most request headers fit.
const HEADER_BUFFER: usize = 4096;

/// How long a connection with no request yet is kept open once shutdown
/// has begun.
const LAST_CHANCE: Duration = Duration::from_secs(1);

/// Connections being read or served, from accept to close (the drain on
/// shutdown waits for them, so one accepted just before the stop, whose
/// request has not arrived yet, is still served).
static BUSY: AtomicUsize = AtomicUsize::new(0);

/// Connections now open and waiting for, or serving, a request.
pub(crate) fn busy_connections() -> usize {
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

/// Reads into `buf` until the first bytes arrive, for at most `wait`. On
/// shutdown a connection accepted just before the listener closed may not
/// have sent its request yet: it gets a short last chance. `false` when
/// nothing came (closed, timed out, shut down).
async fn first_bytes<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut BytesMut,
    wait: Duration,
    shutdown: &ShutdownWatch,
) -> bool {
    let mut shutdown = shutdown.clone();
    let last_chance = LAST_CHANCE.min(wait);
    let read = if *shutdown.borrow() {
        tokio::time::timeout(last_chance, s.read_buf(buf)).await
    } else {
        tokio::select! {
            r = tokio::time::timeout(wait, s.read_buf(buf)) => r,
            _ = shutdown.changed() => {
                tokio::time::timeout(last_chance, s.read_buf(buf)).await
            }
        }
    };
    matches!(read, Ok(Ok(n)) if n > 0)
}

/// Reads one HTTP/1 request header: waits up to `idle` for its first byte,
/// then up to `deadline` for its end, and at most `max_bytes` of it
/// (leading empty lines included).
async fn read_header<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut BytesMut,
    l: crate::runtime::HeaderLimits,
    shutdown: &ShutdownWatch,
) -> Header {
    buf.clear();
    if !first_bytes(s, buf, l.idle, shutdown).await {
        return Header::Close;
    }
    let deadline = tokio::time::Instant::now() + l.deadline;
    let mut scan = HeadScan::default();
    loop {
        match scan.feed(buf) {
            Scanned::End(end)
                if end > l.max_bytes || header_lines(&buf[..end]) > MAX_HEADER_LINES =>
            {
                return Header::Refuse(GatewayError::HeaderTooLarge)
            }
            // The whole header, or text that is not an HTTP/1 request:
            // what Pingora would refuse bare is refused here with JSON.
            Scanned::End(end) => return judged(&buf[..end]).await,
            Scanned::NotHttp => return judged(buf).await,
            Scanned::More => {}
        }
        if buf.len() > l.max_bytes {
            return Header::Refuse(GatewayError::HeaderTooLarge);
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(buf.len().min(l.max_bytes));
        }
        match tokio::time::timeout_at(deadline, s.read_buf(buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            Ok(_) => return Header::Close,
            Err(_) => return Header::Refuse(GatewayError::RequestTimeout),
        }
    }
}

/// `Ready`, or the refusal Pingora would have answered bare.
async fn judged(head: &[u8]) -> Header {
    match pingora_refusal(head).await {
        Some(err) => Header::Refuse(err),
        None => Header::Ready,
    }
}

/// What Pingora's HTTP/1 reader would answer by itself, before any hook,
/// with an empty body, for a request whose header is `head`: 400 for a
/// header it cannot parse or validate, 405 for CONNECT
/// (`HttpProxy::handle_new_request`, pingora-proxy 0.9.1). Found by running
/// its own parser over a copy, so the two cannot disagree.
async fn pingora_refusal(head: &[u8]) -> Option<GatewayError> {
    if ordinary(head) {
        return None;
    }
    let nothing: Stream = Box::new(std::io::Cursor::new(Vec::<u8>::new()));
    let mut trial = ServerSession::new_http1(nothing);
    trial.set_pipelined_prefix(BytesMut::from(head));
    match trial.read_request().await {
        Ok(true) if trial.req_header().method == http::Method::CONNECT => {
            Some(GatewayError::MethodNotAllowed {
                allowed: "GET, POST",
            })
        }
        Ok(_) => None,
        Err(e) if e.etype() == &pingora::ErrorType::InvalidHTTPHeader => Some(
            GatewayError::invalid("The request line or a header line is malformed."),
        ),
        Err(_) => None,
    }
}

/// Headers Pingora accepts for certain, found without building its session:
/// an HTTP/1.1 request line with an origin-form target of plain URI
/// characters, not CONNECT, header lines httparse reads, at most one
/// `Host` without userinfo, at most one `Content-Length` of digits, and no
/// `Transfer-Encoding` but a single `chunked`. Anything else goes to the
/// trial parse in `pingora_refusal`, which decides. A property test checks
/// that Pingora accepts whatever this accepts. Costs about what one
/// httparse pass does, where the trial costs a whole session.
fn ordinary(head: &[u8]) -> bool {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    if !matches!(req.parse(head), Ok(httparse::Status::Complete(_))) {
        return false;
    }
    let (Some(method), Some(path), Some(1)) = (req.method, req.path, req.version) else {
        return false;
    };
    let plain_target = path.starts_with('/')
        && path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&b));
    if method == "CONNECT" || !plain_target {
        return false;
    }
    let (mut hosts, mut lengths, mut encodings) = (0, 0, 0);
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("host") {
            hosts += 1;
            if h.value.contains(&b'@') || !h.value.iter().all(|b| b.is_ascii_graphic()) {
                return false;
            }
        } else if h.name.eq_ignore_ascii_case("content-length") {
            lengths += 1;
            let digits = !h.value.is_empty()
                && h.value.len() <= 18
                && h.value.iter().all(u8::is_ascii_digit);
            if !digits {
                return false;
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            encodings += 1;
            if !h.value.eq_ignore_ascii_case(b"chunked") {
                return false;
            }
        }
    }
    hosts <= 1 && lengths <= 1 && encodings <= 1
}

/// Whether the request line in `buf` (as far as it has arrived) names the
/// Messages endpoint, whose errors take Anthropic's shape.
fn is_messages(buf: &[u8]) -> bool {
    let start = buf
        .iter()
        .position(|b| *b != b'\r' && *b != b'\n')
        .unwrap_or(buf.len());
    let line = &buf[start..];
    let line = &line[..memchr::memchr(b'\n', line).unwrap_or(line.len())];
    let mut parts = line.split(|b| *b == b' ');
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return false;
    };
    let path = &target[..memchr::memchr(b'?', target).unwrap_or(target.len())];
    let (Ok(method), Ok(path)) = (http::Method::from_bytes(method), std::str::from_utf8(path))
    else {
        return false;
    };
    let ep = match crate::base::endpoint::route(&method, path) {
        crate::base::endpoint::Route::Ok(ep) | crate::base::endpoint::Route::WrongMethod(ep, _) => {
            ep
        }
        crate::base::endpoint::Route::Unknown => return false,
    };
    ep == crate::base::endpoint::Endpoint::Messages
}

/// What scanning the bytes read so far found.
#[derive(Debug, PartialEq, Eq)]
enum Scanned {
    /// The header ends just before this offset (after its empty line).
    End(usize),
    /// The first byte of the request line cannot start a method: not HTTP/1
    /// request text (the proxy answers 400 without reading more).
    NotHttp,
    /// Not complete yet.
    More,
}

/// Finds the end of a request header incrementally, the way HTTP/1 parsers
/// (httparse) read it: empty lines (`\r\n` or `\n`) before the request line
/// are skipped, lines end with `\n` or `\r\n`, and the header ends at the
/// first empty line after the request line.
#[derive(Debug, Default)]
struct HeadScan {
    /// Where to look next.
    pos: usize,
    /// Whether the request line has begun.
    started: bool,
}

impl HeadScan {
    /// Scans what `buf` (everything read so far) adds since the last call.
    fn feed(&mut self, buf: &[u8]) -> Scanned {
        if !self.started {
            match buf[self.pos..]
                .iter()
                .position(|b| *b != b'\r' && *b != b'\n')
            {
                None => {
                    self.pos = buf.len();
                    return Scanned::More;
                }
                Some(i) => {
                    self.pos += i;
                    self.started = true;
                    if !is_tchar(buf[self.pos]) {
                        return Scanned::NotHttp;
                    }
                }
            }
        }
        while let Some(i) = memchr::memchr(b'\n', &buf[self.pos..]) {
            let nl = self.pos + i;
            match (buf.get(nl + 1), buf.get(nl + 2)) {
                (Some(b'\n'), _) => return Scanned::End(nl + 2),
                (Some(b'\r'), Some(b'\n')) => return Scanned::End(nl + 3),
                // Undecided until more arrives: look at this `\n` again.
                (None, _) | (Some(b'\r'), None) => {
                    self.pos = nl;
                    return Scanned::More;
                }
                _ => self.pos = nl + 1,
            }
        }
        self.pos = buf.len();
        Scanned::More
    }
}

/// RFC 9110 `tchar`: what a method name is made of.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The HTTP/2 client connection preface (RFC 9113 section 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Largest first SETTINGS frame waited for (the default maximum frame size;
/// h2 refuses a larger one itself).
const MAX_SETTINGS_FRAME: usize = 16_384;

/// Reads an HTTP/2 client's preface and its first frame (SETTINGS) within
/// `deadline`. `None` (close) when they do not arrive in time. Bytes that
/// are not a preface and SETTINGS are handed on as soon as that is clear:
/// h2 then refuses them without waiting.
async fn read_h2_preface<S: AsyncRead + Unpin>(
    s: &mut S,
    deadline: Duration,
    shutdown: &ShutdownWatch,
) -> Option<BytesMut> {
    let mut buf = BytesMut::with_capacity(128);
    let until = tokio::time::Instant::now() + deadline;
    if !first_bytes(s, &mut buf, deadline, shutdown).await {
        return None;
    }
    loop {
        if h2_preface_done(&buf) {
            return Some(buf);
        }
        match tokio::time::timeout_at(until, s.read_buf(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return None,
        }
    }
}

/// Whether `buf` holds the preface and a whole first frame, or bytes that
/// cannot become them.
fn h2_preface_done(buf: &[u8]) -> bool {
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] != H2_PREFACE[..n] {
        return true;
    }
    let Some(frame) = buf.get(H2_PREFACE.len()..H2_PREFACE.len() + 9) else {
        return false;
    };
    let len = usize::from(frame[0]) << 16 | usize::from(frame[1]) << 8 | usize::from(frame[2]);
    let settings = frame[3] == 0x4;
    !settings || len > MAX_SETTINGS_FRAME || buf.len() >= H2_PREFACE.len() + 9 + len
}

/// Writes `err` as a raw HTTP/1.1 response that closes the connection, in
/// Anthropic's shape when `anthropic`.
async fn refuse<S: AsyncWrite + Unpin>(s: &mut S, err: &GatewayError, anthropic: bool) {
    let _ = s.write_all(&raw_error(err, anthropic)).await;
    let _ = s.flush().await;
}

/// Pingora's HTTP/1 reader parses at most this many header lines
/// (`MAX_HEADERS` in pingora-core 0.9) and answers more with a bare 400, so
/// the guard refuses them first with the 431 every oversized header gets.
const MAX_HEADER_LINES: usize = 256;

/// Header lines (fields) in a complete request header, `head` ending with
/// the blank line: its line breaks less the request line's and the blank
/// line's. Empty lines before the request line are not fields.
fn header_lines(head: &[u8]) -> usize {
    let start = head
        .iter()
        .position(|b| *b != b'\r' && *b != b'\n')
        .unwrap_or(head.len());
    memchr::memchr_iter(b'\n', &head[start..])
        .count()
        .saturating_sub(2)
}

fn raw_error(err: &GatewayError, anthropic: bool) -> Vec<u8> {
    let body = if anthropic {
        crate::translate::messages::error::error_body(err)
    } else {
        err.body()
    };
    let allow = match err {
        GatewayError::MethodNotAllowed { allowed } => format!("Allow: {allowed}\r\n"),
        _ => String::new(),
    };
    let reason = match err.status() {
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        _ => "Bad Request",
    };
    let mut out = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n",
        err.status(),
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_all(input: &[u8]) -> Scanned {
        HeadScan::default().feed(input)
    }

    /// Feeds `input` one byte at a time, as a dribbling client would.
    fn scan_bytewise(input: &[u8]) -> Scanned {
        let mut s = HeadScan::default();
        for n in 1..=input.len() {
            match s.feed(&input[..n]) {
                Scanned::More => {}
                done => return done,
            }
        }
        Scanned::More
    }

    #[test]
    fn finds_the_end_of_the_header_however_it_arrives() {
        let cases: &[(&[u8], Scanned)] = &[
            (b"GET / HTTP/1.1\r\nhost: a\r\n\r\nBODY", Scanned::End(27)),
            (b"GET / HTTP/1.1\n\n", Scanned::End(16)),
            (b"GET / HTTP/1.1\nhost: a\n\r\n", Scanned::End(25)),
            (b"\r\n\r\nGET / HTTP/1.1\r\n\r\n", Scanned::End(22)),
            (b"\n\n\nGET / HTTP/1.1\r\nx: y\r\n\r\n", Scanned::End(27)),
            (b"\r\n\r\n", Scanned::More),
            (b"GET / HTTP/1.1\r\nhost: a\r\n", Scanned::More),
            (b"GET / HTTP/1.1\r\nhost: a\r\n\r", Scanned::More),
            (b"\x16\x03\x01\x02\x00", Scanned::NotHttp),
            (b"\r\n\x00GET", Scanned::NotHttp),
        ];
        for (input, want) in cases {
            let shown = String::from_utf8_lossy(input);
            assert_eq!(&scan_all(input), want, "whole: {shown:?}");
            assert_eq!(&scan_bytewise(input), want, "bytewise: {shown:?}");
        }
    }

    #[test]
    fn leading_empty_lines_do_not_end_the_header() {
        // The old guard took `\r\n\r\n` at the start for a whole header and
        // let the rest through unguarded.
        let big = format!("\r\n\r\nGET / HTTP/1.1\r\nx: {}\r\n", "a".repeat(1000));
        assert_eq!(scan_all(big.as_bytes()), Scanned::More);
    }

    #[test]
    fn an_h2_preface_is_complete_with_its_settings_frame() {
        let mut b = H2_PREFACE.to_vec();
        assert!(!h2_preface_done(&b[..10]));
        assert!(!h2_preface_done(&b));
        b.extend_from_slice(&[0, 0, 6, 4, 0, 0, 0, 0, 0]);
        assert!(!h2_preface_done(&b), "payload still missing");
        b.extend_from_slice(&[0, 3, 0, 0, 0, 100]);
        assert!(h2_preface_done(&b));
        assert!(h2_preface_done(b"GET / HTTP/1.1\r\n"), "not a preface");
        let mut ping = H2_PREFACE.to_vec();
        ping.extend_from_slice(&[0, 0, 8, 6, 0, 0, 0, 0, 0]);
        assert!(h2_preface_done(&ping), "first frame not SETTINGS");
    }

    #[test]
    fn header_lines_counts_fields_only() {
        assert_eq!(header_lines(b"GET / HTTP/1.1\r\n\r\n"), 0);
        assert_eq!(header_lines(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"), 1);
        assert_eq!(
            header_lines(b"\r\n\r\nGET / HTTP/1.1\r\nHost: t\r\n\r\n"),
            1
        );
        let many: String = (0..257).map(|i| format!("X-{i}: v\r\n")).collect();
        assert_eq!(
            header_lines(format!("POST / HTTP/1.1\r\n{many}\r\n").as_bytes()),
            257
        );
    }

    #[tokio::test]
    async fn what_pingora_would_refuse_bare_is_refused_here() {
        let ok: &[&[u8]] = &[
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\ncontent-length: 2\r\n\r\n",
            b"GET /healthz HTTP/1.1\r\n\r\n",
            b"\r\nPOST /v1/messages HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n",
        ];
        for head in ok {
            assert_eq!(pingora_refusal(head).await, None, "{}", head.escape_ascii());
        }
        let bad: &[(&[u8], u16)] = &[
            (
                b"POST /v1/chat/completions HTTP/1.1\r\nno colon here\r\n\r\n",
                400,
            ),
            (
                b"POST /v1/chat/completions HTTP/1.1\r\ncontent-length: 1x\r\n\r\n",
                400,
            ),
            (
                b"POST / HTTP/1.0\r\ntransfer-encoding: chunked\r\n\r\n",
                400,
            ),
            (b"POST / HTTP/1.1\r\ntransfer-encoding: gzip\r\n\r\n", 400),
            (b"\x16\x03\x01\x02\x00", 400),
            (b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", 405),
        ];
        for (head, status) in bad {
            let err = pingora_refusal(head).await;
            assert_eq!(
                err.map(|e| e.status()),
                Some(*status),
                "{}",
                head.escape_ascii()
            );
        }
    }

    #[test]
    fn ordinary_headers_are_recognized_without_the_trial() {
        assert!(ordinary(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: a:8080\r\nContent-Type: application/json\r\ncontent-length: 2\r\n\r\n"
        ));
        assert!(ordinary(
            b"POST /v1/messages?beta=true HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n"
        ));
        for head in [
            &b"POST /v1/chat/completions HTTP/1.1\r\nno colon here\r\n\r\n"[..],
            b"POST / HTTP/1.0\r\ncontent-length: 1\r\n\r\n",
            b"POST http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
            b"POST /{x} HTTP/1.1\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: u@a\r\n\r\n",
            b"POST / HTTP/1.1\r\ncontent-length: 1\r\ncontent-length: 1\r\n\r\n",
            b"POST / HTTP/1.1\r\ncontent-length: +1\r\n\r\n",
            b"POST / HTTP/1.1\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
            b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
            b"POST / HTTP/1.1\r\n",
        ] {
            assert!(!ordinary(head), "{}", head.escape_ascii());
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1000))]
        /// Whatever `ordinary` lets past, Pingora's own parser accepts: the
        /// shortcut never lets a header through that the trial would refuse.
        /// Mostly good parts, so that most cases reach the header checks.
        #[test]
        fn pingora_accepts_whatever_ordinary_accepts(
            method in proptest::prop_oneof![
                6 => proptest::strategy::Just("POST"),
                1 => proptest::sample::select(vec!["GET", "CONNECT", "P\u{1}ST"]),
            ],
            target in proptest::prop_oneof![
                6 => proptest::sample::select(vec!["/v1/chat/completions", "/a?b=c&d=%20"]),
                1 => proptest::sample::select(vec!["http://h/x", "/{x}", "*", "/a b", "/é"]),
            ],
            version in proptest::prop_oneof![
                6 => proptest::strategy::Just("HTTP/1.1"),
                1 => proptest::sample::select(vec!["HTTP/1.0", "HTTP/2"]),
            ],
            lines in proptest::collection::vec(proptest::sample::select(vec![
                "Host: a", "Host: a:1", "Host: u@a", "content-length: 5", "content-length: 05",
                "content-length: 1,1", "content-length: -1", "content-length: 99999999999999999999",
                "transfer-encoding: chunked", "transfer-encoding: gzip", "Transfer-Encoding: CHUNKED",
                "x-a: b", "x-a:", "bad line", "x a: b", "x-a: \u{7f}", "expect: 100-continue",
            ]), 0..4),
        ) {
            let mut head = format!("{method} {target} {version}\r\n");
            for l in &lines {
                head.push_str(l);
                head.push_str("\r\n");
            }
            head.push_str("\r\n");
            if ordinary(head.as_bytes()) {
                let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
                let nothing: Stream = Box::new(std::io::Cursor::new(Vec::<u8>::new()));
                let mut trial = ServerSession::new_http1(nothing);
                trial.set_pipelined_prefix(BytesMut::from(head.as_bytes()));
                let read = rt.block_on(trial.read_request());
                proptest::prop_assert!(
                    matches!(read, Ok(true)),
                    "{head:?}: ordinary, but Pingora says {read:?}"
                );
                proptest::prop_assert!(trial.req_header().method != http::Method::CONNECT);
            }
        }
    }

    #[test]
    fn the_messages_endpoint_is_found_in_a_request_line() {
        assert!(is_messages(b"POST /v1/messages HTTP/1.1\r\nbad\r\n"));
        assert!(is_messages(b"\r\nPOST /v1/messages?beta=true HTTP/1.1"));
        assert!(!is_messages(b"POST /v1/chat/completions HTTP/1.1\r\n"));
        assert!(!is_messages(b"\x16\x03\x01"));
        assert!(!is_messages(b""));
    }

    #[test]
    fn refusals_are_json_and_close() {
        let out = String::from_utf8(raw_error(&GatewayError::HeaderTooLarge, false)).unwrap();
        assert!(out.starts_with("HTTP/1.1 431 "), "{out}");
        assert!(out.contains("Connection: close\r\n"), "{out}");
        let body = out.split("\r\n\r\n").nth(1).unwrap();
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], "request_header_too_large");
    }
}
