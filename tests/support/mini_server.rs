//! A tiny HTTP/1.1 server on `127.0.0.1:0` for the cloud mocks
//! (`bedrock_mock`, `sts_mock`, `gcp_mock`): each request is read whole and
//! handed to a closure, whose [`MiniReply`] is sent with `Content-Length`
//! or as chunks (chunked transfer encoding), each chunk flushed on its own.
//! The server stops when the handle is dropped.

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// One request as the mock sees it.
#[derive(Clone, Debug)]
pub struct MiniRequest {
    pub method: String,
    /// Path and query, exactly as received (still percent-encoded).
    pub path: String,
    /// Lowercase names, values as sent, in order.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl MiniRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as `application/x-www-form-urlencoded` pairs.
    pub fn form(&self) -> Vec<(String, String)> {
        url_decode_form(&self.body)
    }
}

/// Decodes a form body (`+` is a space, `%XX` a byte).
pub fn url_decode_form(body: &[u8]) -> Vec<(String, String)> {
    fn dec(s: &str) -> String {
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < b.len() => {
                    let h = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                    out.push(u8::from_str_radix(h, 16).unwrap_or(b'?'));
                    i += 2;
                }
                c => out.push(c),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    std::str::from_utf8(body)
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (dec(k), dec(v))
        })
        .collect()
}

/// What the mock answers.
pub struct MiniReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: MiniBody,
}

pub enum MiniBody {
    Full(Bytes),
    /// Sent as separate chunks, `pause` apart.
    Chunks(Vec<Bytes>, Duration),
}

impl MiniReply {
    pub fn json(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: MiniBody::Full(Bytes::from(body.into())),
        }
    }

    pub fn with_header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.into(), v.into()));
        self
    }
}

type Handler = dyn Fn(MiniRequest) -> MiniReply + Send + Sync;

/// A running server; dropping it stops it.
pub struct MiniServer {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for MiniServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MiniServer {
    pub async fn start(handler: impl Fn(MiniRequest) -> MiniReply + Send + Sync + 'static) -> Self {
        let handler: Arc<Handler> = Arc::new(handler);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let h = handler.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(req, h.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        Self { addr, task }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

type Body = BoxBody<Bytes, Infallible>;

async fn handle(
    req: Request<hyper::body::Incoming>,
    h: Arc<Handler>,
) -> Result<Response<Body>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let r = MiniRequest {
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_default(),
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
    let reply = h(r);
    let mut resp = Response::builder().status(reply.status);
    for (k, v) in &reply.headers {
        resp = resp.header(k, v);
    }
    let body: Body = match reply.body {
        MiniBody::Full(b) => Full::new(b).boxed(),
        MiniBody::Chunks(chunks, pause) => {
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
            tokio::spawn(async move {
                for c in chunks {
                    if tx.send(Ok(Frame::data(c))).await.is_err() {
                        return;
                    }
                    if !pause.is_zero() {
                        tokio::time::sleep(pause).await;
                    }
                }
            });
            let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|f| (f, rx))
            });
            StreamBody::new(stream).boxed()
        }
    };
    Ok(resp.body(body).expect("response"))
}
