//! A mock upstream (OpenAI-like provider) speaking real HTTP/1.1.
//!
//! [`MockUpstream`] listens on `127.0.0.1:0` (plain or TLS), records every
//! request it answers and replies according to a [`Behavior`] that can be
//! swapped at runtime. `GET /health` always answers `200 ok` and is counted
//! separately (see [`MockUpstream::health_hits`]).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinHandle};

use super::tls::TestCa;

/// One request received by the mock (health checks excluded).
#[derive(Clone, Debug)]
pub struct Recorded {
    /// HTTP method, e.g. `"POST"`.
    pub method: String,
    /// Path plus query string, e.g. `"/v1/chat/completions?x=1"`.
    pub path: String,
    /// Request headers in arrival order; names are lowercase.
    pub headers: Vec<(String, String)>,
    /// The complete request body.
    pub body: Bytes,
}

impl Recorded {
    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<String> {
        header(self, name)
    }

    /// The body as (lossy) UTF-8 text.
    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON (`Value::Null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// First value of header `name` (case-insensitive) in a recorded request.
pub fn header(r: &Recorded, name: &str) -> Option<String> {
    let name = name.to_ascii_lowercase();
    r.headers
        .iter()
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.clone())
}

/// Body of a [`Reply`] produced by [`Behavior::Func`].
#[derive(Clone, Debug)]
pub enum ReplyBody {
    /// A fixed body sent with `Content-Length`.
    Full(Bytes),
    /// Chunks sent one by one (chunked transfer encoding) with a pause between them.
    Chunks(Vec<Bytes>, Duration),
    /// Chunks sent one by one (chunked): the first at once, each later one
    /// only when the test lets it through the [`Gate`]. No timing involved.
    Gated(Vec<Bytes>, Gate),
}

/// Lets a [`ReplyBody::Gated`] reply send its chunks one at a time, when the
/// test says so (say, once the client has seen the previous one).
#[derive(Clone, Debug)]
pub struct Gate(Arc<tokio::sync::Semaphore>);

impl Gate {
    /// A closed gate: only the first chunk goes.
    pub fn new() -> Gate {
        Gate(Arc::new(tokio::sync::Semaphore::new(0)))
    }

    /// Lets `n` more chunks through.
    pub fn open(&self, n: usize) {
        self.0.add_permits(n);
    }

    async fn pass(&self) {
        if let Ok(p) = self.0.acquire().await {
            p.forget();
        }
    }
}

impl Default for Gate {
    fn default() -> Self {
        Gate::new()
    }
}

/// A response computed by a [`Behavior::Func`] closure.
#[derive(Clone, Debug)]
pub struct Reply {
    /// HTTP status code.
    pub status: u16,
    /// Extra response headers.
    pub headers: Vec<(String, String)>,
    /// Response body.
    pub body: ReplyBody,
}

impl Reply {
    /// OpenAI's 404 for a path it does not serve.
    pub fn no_such_path() -> Reply {
        Reply::json(
            404,
            r#"{"error":{"message":"no such path","type":"invalid_request_error","param":null,"code":null}}"#,
        )
    }

    /// A JSON reply (`content-type: application/json`).
    pub fn json(status: u16, body: impl Into<String>) -> Reply {
        Reply {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: ReplyBody::Full(Bytes::from(body.into())),
        }
    }

    /// A plain-text reply.
    pub fn text(status: u16, body: impl Into<String>) -> Reply {
        Reply {
            status,
            headers: vec![("content-type".into(), "text/plain".into())],
            body: ReplyBody::Full(Bytes::from(body.into())),
        }
    }

    /// A chunked `text/event-stream` reply of `bytes` cut every `n` bytes
    /// (mid-event and mid-UTF-8), 1 ms apart.
    pub fn sse_split(bytes: &str, n: usize) -> Reply {
        let chunks = bytes
            .as_bytes()
            .chunks(n)
            .map(Bytes::copy_from_slice)
            .collect();
        Reply {
            status: 200,
            headers: vec![("content-type".into(), "text/event-stream".into())],
            body: ReplyBody::Chunks(chunks, Duration::from_millis(1)),
        }
    }

    /// A chunked `text/event-stream` reply, one chunk per event.
    pub fn sse(events: Vec<String>, interval: Duration) -> Reply {
        Reply {
            status: 200,
            headers: vec![("content-type".into(), "text/event-stream".into())],
            body: ReplyBody::Chunks(events.into_iter().map(Bytes::from).collect(), interval),
        }
    }
}

/// Signature of a [`Behavior::Func`] handler.
pub type ReplyFn = dyn Fn(&Recorded) -> Reply + Send + Sync;

/// How the mock answers non-health requests.
#[derive(Clone)]
pub enum Behavior {
    /// A JSON body with `Content-Length` and the given status and extra headers.
    Json {
        status: u16,
        body: String,
        headers: Vec<(String, String)>,
    },
    /// An OpenAI `chat.completion` echoing the request's `model`
    /// (content `"echo"`, usage 5/3/8); streams SSE when `"stream": true`.
    ChatEcho,
    /// A chunked response: each event is written verbatim as its own chunk,
    /// with `interval` between chunks.
    Sse {
        events: Vec<String>,
        interval: Duration,
        content_type: String,
    },
    /// Read the request and never answer.
    Hang,
    /// Compute the reply from the recorded request.
    Func(Arc<ReplyFn>),
}

impl Behavior {
    /// `Json` with no extra headers.
    pub fn json(status: u16, body: impl Into<String>) -> Behavior {
        Behavior::Json {
            status,
            body: body.into(),
            headers: Vec::new(),
        }
    }

    /// `Sse` with `content-type: text/event-stream`.
    pub fn sse(events: Vec<String>, interval: Duration) -> Behavior {
        Behavior::Sse {
            events,
            interval,
            content_type: "text/event-stream".into(),
        }
    }

    /// `Func` from a closure.
    pub fn func(f: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) -> Behavior {
        Behavior::Func(Arc::new(f))
    }
}

impl std::fmt::Debug for Behavior {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Behavior::Json { status, .. } => write!(f, "Json({status})"),
            Behavior::ChatEcho => f.write_str("ChatEcho"),
            Behavior::Sse { events, .. } => write!(f, "Sse({} events)", events.len()),
            Behavior::Hang => f.write_str("Hang"),
            Behavior::Func(_) => f.write_str("Func"),
        }
    }
}

impl Behavior {
    /// A stream of [`sse_chat_events`] for `model` whose header goes at
    /// once and whose events wait for `gate` (forever, if the test never
    /// opens it): an upstream slow for as long as the test needs.
    pub fn held_sse(model: &str, gate: &Gate) -> Behavior {
        let model = model.to_string();
        let gate = gate.clone();
        Behavior::func(move |_| {
            let mut chunks = vec![Bytes::new()];
            chunks.extend(sse_chat_events(&model, 3).into_iter().map(Bytes::from));
            Reply {
                status: 200,
                headers: vec![("content-type".into(), "text/event-stream".into())],
                body: ReplyBody::Gated(chunks, gate.clone()),
            }
        })
    }
}

impl Behavior {
    /// A chat upstream whose answer text is `answer(prompt, model)`, where
    /// `prompt` is the last message's content and `model` the body's: a
    /// JSON completion, or (for `stream: true`) an SSE stream of the text
    /// in two chunks, a `stop` chunk, a usage chunk and `[DONE]`. Usage is
    /// always 10 prompt and 5 completion tokens.
    pub fn chat_answers(answer: impl Fn(&str, &str) -> String + Send + Sync + 'static) -> Behavior {
        Behavior::func(move |r| {
            let body = r.json();
            let model = body["model"].as_str().unwrap_or_default().to_string();
            let prompt = body["messages"]
                .as_array()
                .and_then(|m| m.last())
                .and_then(|m| m["content"].as_str())
                .unwrap_or_default()
                .to_string();
            let text = answer(&prompt, &model);
            let usage = serde_json::json!({"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15});
            if body["stream"].as_bool() != Some(true) {
                let v = serde_json::json!({
                    "id": "chatcmpl-answer", "object": "chat.completion", "created": 1_700_000_000u64,
                    "model": model,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                    "usage": usage,
                });
                return Reply::json(200, v.to_string());
            }
            let chunk = |delta: serde_json::Value, finish: Option<&str>| {
                let v = serde_json::json!({
                    "id": "chatcmpl-answer", "object": "chat.completion.chunk", "created": 1_700_000_000u64,
                    "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                });
                format!("data: {v}\n\n")
            };
            let cut = text
                .char_indices()
                .nth(text.chars().count() / 2)
                .map_or(0, |(i, _)| i);
            let usage_chunk = serde_json::json!({
                "id": "chatcmpl-answer", "object": "chat.completion.chunk", "created": 1_700_000_000u64,
                "model": model, "choices": [], "usage": usage,
            });
            Reply::sse(
                vec![
                    chunk(
                        serde_json::json!({"role": "assistant", "content": &text[..cut]}),
                        None,
                    ),
                    chunk(serde_json::json!({"content": &text[cut..]}), None),
                    chunk(serde_json::json!({}), Some("stop")),
                    format!("data: {usage_chunk}\n\n"),
                    "data: [DONE]\n\n".to_string(),
                ],
                Duration::from_millis(1),
            )
        })
    }
}

/// Realistic OpenAI `chat.completion.chunk` SSE events: a role chunk, `n`
/// content chunks (`"tok0"`, `"tok1"`, ...), a `finish_reason: "stop"`
/// chunk, then `data: [DONE]`. Each string is a full `data: ...\n\n` event.
pub fn sse_chat_events(model: &str, n: usize) -> Vec<String> {
    let chunk = |delta: serde_json::Value, finish: Option<&str>| {
        let obj = serde_json::json!({
            "id": "chatcmpl-mock",
            "object": "chat.completion.chunk",
            "created": 1_700_000_000u64,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        });
        format!("data: {obj}\n\n")
    };
    let mut out = vec![chunk(
        serde_json::json!({"role": "assistant", "content": ""}),
        None,
    )];
    for i in 0..n {
        out.push(chunk(
            serde_json::json!({"content": format!("tok{i}")}),
            None,
        ));
    }
    out.push(chunk(serde_json::json!({}), Some("stop")));
    out.push("data: [DONE]\n\n".to_string());
    out
}

/// Shared state between the handle and the server tasks.
struct State {
    behavior: Mutex<Behavior>,
    requests: Mutex<Vec<Recorded>>,
    health_hits: AtomicUsize,
    cancelled: AtomicUsize,
    stopped: AtomicBool,
    conns: Mutex<Vec<AbortHandle>>,
}

type Body = BoxBody<Bytes, Infallible>;

/// A running mock upstream; stopped on drop.
pub struct MockUpstream {
    addr: SocketAddr,
    state: Arc<State>,
    accept: Option<JoinHandle<()>>,
}

impl MockUpstream {
    /// Starts a plain-HTTP mock on `127.0.0.1:0`.
    pub async fn start(behavior: Behavior) -> MockUpstream {
        Self::start_inner(behavior, None, "127.0.0.1:0").await
    }

    /// Starts a plain-HTTP mock on `127.0.0.2:0`, a loopback address no
    /// test's config names: a server that must never be contacted cannot
    /// then be reached by another test's gateway that points at a port it
    /// freed (a "dead" backend) which the OS hands out again.
    pub async fn start_apart(behavior: Behavior) -> MockUpstream {
        Self::start_inner(behavior, None, "127.0.0.2:0").await
    }

    /// Starts an HTTPS mock whose leaf (for `localhost` and `127.0.0.1`)
    /// is signed by `ca`.
    pub async fn start_tls(behavior: Behavior, ca: &TestCa) -> MockUpstream {
        let cfg = ca.server_config(&["localhost", "127.0.0.1"]);
        Self::start_inner(
            behavior,
            Some(tokio_rustls::TlsAcceptor::from(cfg)),
            "127.0.0.1:0",
        )
        .await
    }

    async fn start_inner(
        behavior: Behavior,
        tls: Option<tokio_rustls::TlsAcceptor>,
        bind: &str,
    ) -> MockUpstream {
        let listener = TcpListener::bind(bind).await.expect("bind mock");
        let addr = listener.local_addr().expect("mock addr");
        let state = Arc::new(State {
            behavior: Mutex::new(behavior),
            requests: Mutex::new(Vec::new()),
            health_hits: AtomicUsize::new(0),
            cancelled: AtomicUsize::new(0),
            stopped: AtomicBool::new(false),
            conns: Mutex::new(Vec::new()),
        });
        let st = state.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let st2 = st.clone();
                let tls = tls.clone();
                let task = tokio::spawn(async move {
                    match tls {
                        Some(acc) => {
                            if let Ok(s) = acc.accept(tcp).await {
                                serve_conn(s, st2).await;
                            }
                        }
                        None => serve_conn(tcp, st2).await,
                    }
                });
                let mut conns = st.conns.lock().expect("conns lock");
                conns.retain(|h| !h.is_finished());
                conns.push(task.abort_handle());
            }
        });
        MockUpstream {
            addr,
            state,
            accept: Some(accept),
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

    /// `http://127.0.0.1:PORT` (use `https://localhost:PORT` for TLS mocks).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Number of non-health requests received.
    pub fn hits(&self) -> usize {
        self.state.requests.lock().expect("requests lock").len()
    }

    /// Number of `GET /health` requests received.
    pub fn health_hits(&self) -> usize {
        self.state.health_hits.load(Ordering::SeqCst)
    }

    /// All non-health requests received, oldest first.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().expect("requests lock").clone()
    }

    /// The most recent non-health request.
    pub fn last(&self) -> Option<Recorded> {
        self.state
            .requests
            .lock()
            .expect("requests lock")
            .last()
            .cloned()
    }

    /// First value of header `name` in `r` (same as [`Recorded::header`]).
    pub fn header(r: &Recorded, name: &str) -> Option<String> {
        header(r, name)
    }

    /// Forgets recorded requests and resets all counters.
    pub fn reset(&self) {
        self.state.requests.lock().expect("requests lock").clear();
        self.state.health_hits.store(0, Ordering::SeqCst);
        self.state.cancelled.store(0, Ordering::SeqCst);
    }

    /// Number of streamed responses whose client went away before the
    /// stream finished.
    pub fn cancelled(&self) -> usize {
        self.state.cancelled.load(Ordering::SeqCst)
    }

    /// Replaces the behavior for subsequent requests.
    pub fn set_behavior(&self, behavior: Behavior) {
        *self.state.behavior.lock().expect("behavior lock") = behavior;
    }

    /// Closes the listener and aborts every open connection, so new
    /// connections are refused and in-flight ones are cut.
    pub fn stop(&mut self) {
        self.state.stopped.store(true, Ordering::SeqCst);
        if let Some(a) = self.accept.take() {
            a.abort();
        }
        for h in self.state.conns.lock().expect("conns lock").drain(..) {
            h.abort();
        }
    }

    /// Waits until [`hits`](Self::hits) reaches `n` or `timeout` passes;
    /// returns whether it did.
    pub async fn wait_hits(&self, n: usize, timeout: Duration) -> bool {
        wait_until(timeout, || self.hits() >= n).await
    }

    /// Waits until [`cancelled`](Self::cancelled) reaches `n` or `timeout`
    /// passes; returns whether it did.
    pub async fn wait_cancelled(&self, n: usize, timeout: Duration) -> bool {
        wait_until(timeout, || self.cancelled() >= n).await
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn serve_conn<S>(io: S, state: Arc<State>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| handle(req, state.clone()));
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), svc)
        .await;
}

async fn handle(req: Request<Incoming>, state: Arc<State>) -> Result<Response<Body>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(c) => c.to_bytes(),
        Err(_) => Bytes::new(),
    };
    if parts.method == hyper::Method::GET && parts.uri.path() == "/health" {
        state.health_hits.fetch_add(1, Ordering::SeqCst);
        return Ok(full(
            200,
            &[("content-type", "text/plain")],
            Bytes::from("ok"),
        ));
    }
    let rec = Recorded {
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| parts.uri.path().to_string()),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body,
    };
    state
        .requests
        .lock()
        .expect("requests lock")
        .push(rec.clone());
    let behavior = state.behavior.lock().expect("behavior lock").clone();
    let resp = match behavior {
        Behavior::Json {
            status,
            body,
            headers,
        } => {
            let mut h: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            if !h
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
            {
                h.push(("content-type", "application/json"));
            }
            full(status, &h, Bytes::from(body))
        }
        Behavior::ChatEcho => chat_echo(&rec, &state),
        Behavior::Sse {
            events,
            interval,
            content_type,
        } => streamed(
            200,
            &[("content-type", content_type.as_str())],
            events.into_iter().map(Bytes::from).collect(),
            Pace::Every(interval),
            &state,
        ),
        Behavior::Hang => std::future::pending().await,
        Behavior::Func(f) => {
            let reply = f(&rec);
            let h: Vec<(&str, &str)> = reply
                .headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            match reply.body {
                ReplyBody::Full(b) => full(reply.status, &h, b),
                ReplyBody::Chunks(chunks, interval) => {
                    streamed(reply.status, &h, chunks, Pace::Every(interval), &state)
                }
                ReplyBody::Gated(chunks, gate) => {
                    streamed(reply.status, &h, chunks, Pace::Gate(gate), &state)
                }
            }
        }
    };
    Ok(resp)
}

/// The `ChatEcho` reply for `rec`.
fn chat_echo(rec: &Recorded, state: &Arc<State>) -> Response<Body> {
    let req = rec.json();
    let model = req
        .get("model")
        .and_then(|m| m.as_str())
        .unwrap_or("unknown")
        .to_string();
    if req.get("stream").and_then(|s| s.as_bool()) == Some(true) {
        let events = sse_chat_events(&model, 3);
        return streamed(
            200,
            &[("content-type", "text/event-stream")],
            events.into_iter().map(Bytes::from).collect(),
            Pace::Every(Duration::from_millis(5)),
            state,
        );
    }
    let body = serde_json::json!({
        "id": "chatcmpl-mock",
        "object": "chat.completion",
        "created": 1_700_000_000u64,
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": "echo"},
            "finish_reason": "stop",
        }],
        "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
    });
    full(
        200,
        &[("content-type", "application/json")],
        Bytes::from(body.to_string()),
    )
}

fn builder(status: u16, headers: &[(&str, &str)]) -> hyper::http::response::Builder {
    let mut b = Response::builder().status(status);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b
}

/// A fixed-length response with an explicit `content-length`.
fn full(status: u16, headers: &[(&str, &str)], body: Bytes) -> Response<Body> {
    let len = body.len().to_string();
    builder(status, headers)
        .header("content-length", len)
        .body(Full::new(body).boxed())
        .expect("build response")
}

/// What a streamed reply waits for between two chunks.
enum Pace {
    /// A fixed pause.
    Every(Duration),
    /// The test opening the gate.
    Gate(Gate),
}

/// A chunked response fed by a task that sends each chunk separately and
/// counts a cancellation when the body is dropped before the last chunk.
fn streamed(
    status: u16,
    headers: &[(&str, &str)],
    chunks: Vec<Bytes>,
    pace: Pace,
    state: &Arc<State>,
) -> Response<Body> {
    let (tx, mut rx) = mpsc::channel::<Bytes>(1);
    let st = state.clone();
    tokio::spawn(async move {
        for (i, chunk) in chunks.into_iter().enumerate() {
            if i > 0 {
                match &pace {
                    Pace::Every(interval) if interval.is_zero() => {}
                    Pace::Every(interval) => tokio::select! {
                        _ = tokio::time::sleep(*interval) => {}
                        _ = tx.closed() => {}
                    },
                    Pace::Gate(gate) => tokio::select! {
                        _ = gate.pass() => {}
                        _ = tx.closed() => {}
                    },
                }
            }
            if tx.send(chunk).await.is_err() {
                if !st.stopped.load(Ordering::SeqCst) {
                    st.cancelled.fetch_add(1, Ordering::SeqCst);
                }
                return;
            }
        }
    });
    let stream = futures_util::stream::poll_fn(move |cx| {
        rx.poll_recv(cx)
            .map(|o| o.map(|b| Ok::<_, Infallible>(Frame::data(b))))
    });
    builder(status, headers)
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .expect("build response")
}
