//! A fast mock OpenAI upstream for the load benchmark (`benches/load.sh`).
//!
//! `bench_upstream --listen 127.0.0.1:PORT [--threads N]`
//!
//! * `POST /v1/chat/completions` reads the whole request body, then answers a
//!   fixed `chat.completion` JSON of about 300 bytes (with `usage`, so a
//!   gateway has no reason to estimate tokens).
//! * When the body contains `"stream":true` (a byte search, no JSON parse) it
//!   answers an SSE stream of [`CHUNKS`] chunks, [`CHUNK_GAP`] apart, then
//!   `data: [DONE]`. If the body also asks for `"include_usage":true`, a usage
//!   chunk comes before `[DONE]`, as OpenAI sends it.
//! * Every stream chunk carries the mock's `CLOCK_MONOTONIC` send time in
//!   nanoseconds as `"system_fingerprint":"t<ns>"`. The stream client
//!   (`benches/stream_client.py`) runs on the same machine and reads the same
//!   clock, so it can tell how long each chunk spent in transit through a proxy.
//! * A streaming body that also holds `"bench_hold_ms":N` (the concurrency
//!   phase of `benches/load.sh`, `benches/concurrency.py`) gets a *held*
//!   stream instead: the first content chunk at once, then nothing until N ms
//!   have passed or `POST /bench/release` is received (whichever comes first),
//!   then a second content chunk, the final chunk and `data: [DONE]`. This
//!   keeps thousands of streams open at once without a flood of chunks.
//!   Without that field nothing changes.
//! * `POST /bench/release` ends the hold of every stream held at that moment
//!   and answers `200 {"ok":true}`.
//! * Any other request (e.g. `GET /health`) gets `200 {"ok":true}`.
//!
//! The listener's backlog is 4096 (capped by `net.core.somaxconn`), so a proxy
//! that opens thousands of upstream connections at once is not slowed by SYN
//! retransmits.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::LazyLock;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpSocket;
use tokio::sync::{mpsc, watch};

/// Content chunks in a streamed answer.
const CHUNKS: usize = 20;
/// Pause between two content chunks.
const CHUNK_GAP: Duration = Duration::from_millis(5);
/// Longest hold a request may ask for (`"bench_hold_ms"`).
const MAX_HOLD: Duration = Duration::from_secs(600);
/// Listen backlog (the kernel caps it at `net.core.somaxconn`).
const BACKLOG: u32 = 4096;

/// Bumped by `POST /bench/release`; held streams wait for a change.
static RELEASE: LazyLock<watch::Sender<u64>> = LazyLock::new(|| watch::channel(0).0);

const COMPLETION: &str = concat!(
    r#"{"id":"chatcmpl-bench0001","object":"chat.completion","created":1700000000,"#,
    r#""model":"bench-model-1","choices":[{"index":0,"message":{"role":"assistant","#,
    r#""content":"Hello! A short fixed answer from the benchmark upstream."},"#,
    r#""finish_reason":"stop"}],"usage":{"prompt_tokens":57,"#,
    r#""completion_tokens":14,"total_tokens":71}}"#
);

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
    }
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

fn contains_any(hay: &[u8], needles: &[&[u8]]) -> bool {
    needles
        .iter()
        .any(|n| memchr::memmem::find(hay, n).is_some())
}

/// The number after `"bench_hold_ms":` (a byte search, like `"stream":true`).
fn hold_ms(body: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\"bench_hold_ms\":";
    let at = memchr::memmem::find(body, KEY)? + KEY.len();
    let rest = &body[at..];
    let rest = &rest[rest.iter().take_while(|b| **b == b' ').count()..];
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
}

/// A response body fed by a channel, one frame per chunk.
struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx
            .poll_recv(cx)
            .map(|chunk| chunk.map(|b| Ok(Frame::data(b))))
    }
}

type BoxBody = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

fn chunk(i: usize) -> Bytes {
    let role = if i == 0 { r#""role":"assistant","# } else { "" };
    Bytes::from(format!(
        concat!(
            r#"data: {{"id":"chatcmpl-bench0001","object":"chat.completion.chunk","#,
            r#""created":1700000000,"model":"bench-model-1","system_fingerprint":"t{}","#,
            r#""choices":[{{"index":0,"delta":{{{}"content":"tok{} "}},"#,
            r#""logprobs":null,"finish_reason":null}}]}}"#,
            "\n\n"
        ),
        monotonic_ns(),
        role,
        i
    ))
}

const FINAL: &str = concat!(
    r#"data: {"id":"chatcmpl-bench0001","object":"chat.completion.chunk","#,
    r#""created":1700000000,"model":"bench-model-1","choices":[{"index":0,"delta":{},"#,
    r#""logprobs":null,"finish_reason":"stop"}]}"#,
    "\n\n"
);

const USAGE: &str = concat!(
    r#"data: {"id":"chatcmpl-bench0001","object":"chat.completion.chunk","#,
    r#""created":1700000000,"model":"bench-model-1","choices":[],"#,
    r#""usage":{"prompt_tokens":57,"completion_tokens":20,"total_tokens":77}}"#,
    "\n\n"
);

fn tail(usage: bool) -> Bytes {
    let mut tail = String::from(FINAL);
    if usage {
        tail.push_str(USAGE);
    }
    tail.push_str("data: [DONE]\n\n");
    Bytes::from(tail)
}

async fn stream(tx: mpsc::Sender<Bytes>, usage: bool) {
    for i in 0..CHUNKS {
        if i > 0 {
            tokio::time::sleep(CHUNK_GAP).await;
        }
        if tx.send(chunk(i)).await.is_err() {
            return;
        }
    }
    let _ = tx.send(tail(usage)).await;
}

/// A held stream: one chunk, a pause until `hold` has passed or a release,
/// then one more chunk and the end.
async fn held_stream(
    tx: mpsc::Sender<Bytes>,
    usage: bool,
    hold: Duration,
    mut release: watch::Receiver<u64>,
) {
    if tx.send(chunk(0)).await.is_err() {
        return;
    }
    tokio::select! {
        _ = tokio::time::sleep(hold) => {}
        _ = release.changed() => {}
        _ = tx.closed() => return,
    }
    if tx.send(chunk(1)).await.is_err() {
        return;
    }
    let _ = tx.send(tail(usage)).await;
}

async fn handle(req: Request<Incoming>) -> Result<Response<BoxBody>, Infallible> {
    let is_post = req.method() == Method::POST;
    let is_chat = is_post && req.uri().path().ends_with("/chat/completions");
    if is_post && req.uri().path() == "/bench/release" {
        RELEASE.send_modify(|g| *g += 1);
    }
    // Read the whole body first, as a real provider does.
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let mut resp = if !is_chat {
        let mut r = Response::new(Full::new(Bytes::from_static(b"{\"ok\":true}")).boxed_unsync());
        r.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        r
    } else if contains_any(&body, &[b"\"stream\":true", b"\"stream\": true"]) {
        let usage = contains_any(
            &body,
            &[b"\"include_usage\":true", b"\"include_usage\": true"],
        );
        let (tx, rx) = mpsc::channel(4);
        match hold_ms(&body) {
            Some(ms) => {
                let hold = Duration::from_millis(ms).min(MAX_HOLD);
                // Subscribed before the first chunk goes out: a release sent
                // after the client saw that chunk always reaches this stream.
                tokio::spawn(held_stream(tx, usage, hold, RELEASE.subscribe()));
            }
            None => {
                tokio::spawn(stream(tx, usage));
            }
        }
        let mut r = Response::new(ChannelBody { rx }.boxed_unsync());
        let h = r.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        r
    } else {
        let mut r =
            Response::new(Full::new(Bytes::from_static(COMPLETION.as_bytes())).boxed_unsync());
        r.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        r
    };
    resp.headers_mut()
        .insert("x-request-id", HeaderValue::from_static("bench-upstream"));
    Ok(resp)
}

struct Args {
    listen: String,
    threads: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        listen: "127.0.0.1:18000".into(),
        threads: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--listen" => args.listen = it.next().ok_or("--listen needs ADDR")?,
            "--threads" => {
                args.threads = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|n| *n > 0)
                    .ok_or("--threads needs a positive number")?
            }
            "-h" | "--help" => {
                println!("usage: bench_upstream --listen ADDR [--threads N]");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(args)
}

async fn serve(listen: String) -> std::io::Result<()> {
    let addr: std::net::SocketAddr = listen.parse().map_err(|e| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{listen}: {e}"))
    })?;
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    let listener = socket.listen(BACKLOG)?;
    eprintln!("bench_upstream listening on {listen}");
    loop {
        let (sock, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = sock.set_nodelay(true);
        tokio::spawn(async move {
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(sock), service_fn(handle))
                .await;
        });
    }
}

fn main() -> std::process::ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bench_upstream: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench_upstream: runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(serve(args.listen)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench_upstream: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
