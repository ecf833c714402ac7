//! Upstreams below HTTP, for faults and timings [`MockUpstream`] cannot
//! script: [`RawUpstream`] speaks (or refuses to speak) HTTP/1.1 straight
//! on a TCP socket, on any loopback address, and counts what it saw;
//! [`Unconnectable`] is a port whose connects hang.
//!
//! [`MockUpstream`]: super::MockUpstream

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;

/// How a [`RawUpstream`] answers.
#[derive(Clone, Debug)]
pub enum RawMode {
    /// Reads whatever arrives and never writes a byte (a TCP-only health
    /// check passes; a TLS handshake or an HTTP request waits forever).
    Silent,
    /// Answers every request with `status` and this JSON body
    /// (`Content-Length`, keep-alive).
    Json(u16, String),
    /// Answers every request with a chunked response of `content_type`:
    /// the `first` chunks at once, the `rest` once [`Gate::open`] is called.
    Gated {
        content_type: String,
        first: Vec<Bytes>,
        rest: Vec<Bytes>,
    },
}

/// What a [`RawUpstream`] saw.
#[derive(Default)]
struct Seen {
    /// TCP connections accepted.
    connections: AtomicUsize,
    /// Bytes received over all connections.
    bytes: AtomicUsize,
    /// Complete requests (header plus `Content-Length` body).
    requests: AtomicUsize,
    /// Connections the peer closed while a request was unanswered or its
    /// response unfinished (the upstream's view of a cancel).
    cancelled: AtomicUsize,
    /// Each complete request: header text and body.
    log: Mutex<Vec<(String, Bytes)>>,
}

/// Releases the held-back chunks of [`RawMode::Gated`] responses.
#[derive(Clone)]
pub struct Gate(Arc<watch::Sender<bool>>);

impl Gate {
    /// Lets every waiting and future response send the rest of its chunks.
    pub fn open(&self) {
        let _ = self.0.send(true);
    }
}

/// A raw TCP upstream; stopped (listener and connections) on drop.
pub struct RawUpstream {
    addr: SocketAddr,
    seen: Arc<Seen>,
    gate: Gate,
    tasks: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl RawUpstream {
    /// Listens on `127.0.0.1:0`.
    pub async fn start(mode: RawMode) -> RawUpstream {
        Self::start_on("127.0.0.1:0".parse().expect("addr"), mode).await
    }

    /// Listens on `addr` (any loopback address; port 0 picks one).
    pub async fn start_on(addr: SocketAddr, mode: RawMode) -> RawUpstream {
        let listener = TcpListener::bind(addr).await.expect("bind raw upstream");
        let addr = listener.local_addr().expect("raw upstream addr");
        let seen = Arc::new(Seen::default());
        let (tx, rx) = watch::channel(false);
        let tasks: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (s, t) = (seen.clone(), tasks.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                };
                let _ = conn.set_nodelay(true);
                s.connections.fetch_add(1, Ordering::SeqCst);
                let task = tokio::spawn(serve(conn, mode.clone(), s.clone(), rx.clone()));
                t.lock().expect("tasks lock").push(task.abort_handle());
            }
        });
        tasks
            .lock()
            .expect("tasks lock")
            .push(accept.abort_handle());
        RawUpstream {
            addr,
            seen,
            gate: Gate(Arc::new(tx)),
            tasks,
        }
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The listening port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The gate of [`RawMode::Gated`] responses.
    pub fn gate(&self) -> Gate {
        self.gate.clone()
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.seen.connections.load(Ordering::SeqCst)
    }

    /// Bytes received so far, over all connections.
    pub fn bytes(&self) -> usize {
        self.seen.bytes.load(Ordering::SeqCst)
    }

    /// Complete requests received so far.
    pub fn requests(&self) -> usize {
        self.seen.requests.load(Ordering::SeqCst)
    }

    /// Connections closed by the peer with a request unanswered or a
    /// response unfinished.
    pub fn cancelled(&self) -> usize {
        self.seen.cancelled.load(Ordering::SeqCst)
    }

    /// The body of every complete request, oldest first.
    pub fn bodies(&self) -> Vec<Bytes> {
        let log = self.seen.log.lock().expect("log lock");
        log.iter().map(|(_, b)| b.clone()).collect()
    }

    /// The header text (request line included) of every complete request.
    pub fn heads(&self) -> Vec<String> {
        let log = self.seen.log.lock().expect("log lock");
        log.iter().map(|(h, _)| h.clone()).collect()
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        for t in self.tasks.lock().expect("tasks lock").drain(..) {
            t.abort();
        }
    }
}

/// The length of a complete request at the start of `buf` (header plus its
/// `Content-Length` body), if it is all there.
pub fn complete_request(buf: &[u8]) -> Option<(usize, usize)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    (buf.len() >= end + len).then_some((end, len))
}

/// The length of a complete response at the start of `buf`: its header
/// and its body (`Content-Length`, or chunked up to the last chunk), if it
/// is all there.
pub fn complete_response(buf: &[u8]) -> Option<(usize, usize)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    if head
        .lines()
        .any(|l| l.starts_with("transfer-encoding:") && l.contains("chunked"))
    {
        let body = buf[end..].windows(5).position(|w| w == b"0\r\n\r\n")? + 5;
        return Some((end, body));
    }
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    (buf.len() >= end + len).then_some((end, len))
}

async fn serve(mut conn: TcpStream, mode: RawMode, seen: Arc<Seen>, gate: watch::Receiver<bool>) {
    let mut buf = Vec::new();
    let mut tmp = vec![0u8; 64 * 1024];
    loop {
        // Read one request (or, when silent, everything until EOF).
        let (head_len, body_len) = loop {
            if let Some(r) = complete_request(&buf) {
                if !matches!(mode, RawMode::Silent) {
                    break r;
                }
            }
            let n = conn.read(&mut tmp).await.unwrap_or(0);
            if n == 0 {
                if complete_request(&buf).is_some() {
                    seen.cancelled.fetch_add(1, Ordering::SeqCst);
                }
                return;
            }
            seen.bytes.fetch_add(n, Ordering::SeqCst);
            let was_complete = complete_request(&buf).is_some();
            buf.extend_from_slice(&tmp[..n]);
            if !was_complete {
                if let Some((h, l)) = complete_request(&buf) {
                    if matches!(mode, RawMode::Silent) {
                        record(&seen, &buf, h, l);
                    }
                }
            }
        };
        record(&seen, &buf, head_len, body_len);
        buf.drain(..head_len + body_len);
        let ok = match &mode {
            RawMode::Silent => unreachable!("silent mode never answers"),
            RawMode::Json(status, body) => {
                let resp = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                conn.write_all(resp.as_bytes()).await.is_ok()
            }
            RawMode::Gated {
                content_type,
                first,
                rest,
            } => gated(&mut conn, content_type, first, rest, gate.clone()).await,
        };
        if !ok {
            seen.cancelled.fetch_add(1, Ordering::SeqCst);
            return;
        }
    }
}

fn record(seen: &Seen, buf: &[u8], head_len: usize, body_len: usize) {
    seen.requests.fetch_add(1, Ordering::SeqCst);
    let head = String::from_utf8_lossy(&buf[..head_len]).into_owned();
    let body = Bytes::copy_from_slice(&buf[head_len..head_len + body_len]);
    seen.log.lock().expect("log lock").push((head, body));
}

/// Writes one chunked response, holding `rest` back until the gate opens.
/// `false` when the peer went away first.
async fn gated(
    conn: &mut TcpStream,
    content_type: &str,
    first: &[Bytes],
    rest: &[Bytes],
    mut gate: watch::Receiver<bool>,
) -> bool {
    let head = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    if conn.write_all(head.as_bytes()).await.is_err() {
        return false;
    }
    for c in first {
        if write_chunk(conn, c).await.is_err() {
            return false;
        }
    }
    // Wait for the gate, or notice the peer leaving meanwhile.
    let mut probe = [0u8; 1];
    loop {
        tokio::select! {
            r = gate.wait_for(|open| *open) => {
                if r.is_err() {
                    return false;
                }
                break;
            }
            r = conn.read(&mut probe) => {
                if matches!(r, Ok(0) | Err(_)) {
                    return false;
                }
            }
        }
    }
    for c in rest {
        if write_chunk(conn, c).await.is_err() {
            return false;
        }
    }
    conn.write_all(b"0\r\n\r\n").await.is_ok()
}

async fn write_chunk(conn: &mut TcpStream, c: &[u8]) -> std::io::Result<()> {
    let mut out = format!("{:x}\r\n", c.len()).into_bytes();
    out.extend_from_slice(c);
    out.extend_from_slice(b"\r\n");
    conn.write_all(&out).await?;
    conn.flush().await
}

/// A loopback port whose TCP connects hang: a listener with a backlog of
/// one that never accepts, its queue filled. A SYN to it goes unanswered,
/// so a connect waits until the connecting side's own timeout.
pub struct Unconnectable {
    port: u16,
    _listener: TcpListener,
    _fill: Vec<TcpStream>,
}

impl Unconnectable {
    pub async fn start() -> Unconnectable {
        let socket = TcpSocket::new_v4().expect("socket");
        socket
            .bind("127.0.0.1:0".parse().expect("addr"))
            .expect("bind");
        let listener = socket.listen(0).expect("listen");
        let addr = listener.local_addr().expect("addr");
        // Connect until one connect hangs: the accept queue is then full.
        let mut fill = Vec::new();
        for _ in 0..64 {
            match tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(addr)).await {
                Ok(Ok(s)) => fill.push(s),
                Ok(Err(e)) => panic!("connect to the backlog listener failed: {e}"),
                Err(_) => {
                    return Unconnectable {
                        port: addr.port(),
                        _listener: listener,
                        _fill: fill,
                    }
                }
            }
        }
        panic!("64 connects to a listener with backlog 0 all succeeded");
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}
