//! A test OTLP/HTTP receiver on `127.0.0.1:0`: `POST /v1/traces` bodies are
//! decoded with the official protobuf definitions (`opentelemetry-proto`)
//! into [`Span`]s the tests can read. [`OtlpReceiver::stop`] closes the
//! listener and every open connection (the exporter's pooled one too), so
//! exports then fail; [`OtlpReceiver::hang`] makes it read requests and
//! never answer (a slow collector).

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use prost::Message;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::task::AbortHandle;

/// An attribute value as the receiver decoded it.
#[derive(Clone, Debug, PartialEq)]
pub enum Attr {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Strings(Vec<String>),
    Other,
}

/// One received span, with its resource's attributes.
#[derive(Clone, Debug)]
pub struct Span {
    /// Lowercase hex, as in `traceparent`.
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub name: String,
    /// `opentelemetry.proto.trace.v1.Span.SpanKind`: 2 server, 3 client.
    pub kind: i32,
    pub start_ns: u64,
    pub end_ns: u64,
    pub attributes: BTreeMap<String, Attr>,
    /// Event names and times.
    pub events: Vec<(String, u64)>,
    /// 0 unset, 1 ok, 2 error.
    pub status_code: i32,
    pub resource: BTreeMap<String, Attr>,
    pub scope: String,
}

pub const SERVER: i32 = 2;
pub const CLIENT: i32 = 3;

impl Span {
    pub fn str(&self, key: &str) -> Option<&str> {
        match self.attributes.get(key) {
            Some(Attr::Str(s)) => Some(s),
            _ => None,
        }
    }
    pub fn int(&self, key: &str) -> Option<i64> {
        match self.attributes.get(key) {
            Some(Attr::Int(n)) => Some(*n),
            _ => None,
        }
    }
    pub fn float(&self, key: &str) -> Option<f64> {
        match self.attributes.get(key) {
            Some(Attr::Float(n)) => Some(*n),
            _ => None,
        }
    }
    pub fn bool(&self, key: &str) -> Option<bool> {
        match self.attributes.get(key) {
            Some(Attr::Bool(b)) => Some(*b),
            _ => None,
        }
    }
    pub fn strings(&self, key: &str) -> Option<Vec<String>> {
        match self.attributes.get(key) {
            Some(Attr::Strings(v)) => Some(v.clone()),
            _ => None,
        }
    }
}

#[derive(Default)]
struct State {
    spans: Mutex<Vec<Span>>,
    /// Each export request's headers (lowercase names).
    requests: Mutex<Vec<Vec<(String, String)>>>,
    hang: AtomicBool,
}

/// A running receiver; stopped on drop.
pub struct OtlpReceiver {
    pub addr: SocketAddr,
    state: Arc<State>,
    accept: AbortHandle,
    conns: Arc<Mutex<Vec<AbortHandle>>>,
}

impl OtlpReceiver {
    pub async fn start() -> OtlpReceiver {
        Self::start_on("127.0.0.1:0").await
    }

    /// Starts on `addr` (e.g. a stopped receiver's address again).
    pub async fn start_on(addr: &str) -> OtlpReceiver {
        let listener = TcpListener::bind(addr)
            .await
            .expect("bind the OTLP receiver");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(State::default());
        let conns: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let (st, cs) = (state.clone(), conns.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let st = st.clone();
                let conn = tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(req, st.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
                cs.lock().unwrap().push(conn.abort_handle());
            }
        })
        .abort_handle();
        OtlpReceiver {
            addr,
            state,
            accept,
            conns,
        }
    }

    /// `http://127.0.0.1:PORT`, the value for `tracing.endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Span> {
        self.state.spans.lock().unwrap().clone()
    }

    /// The headers of every export request so far.
    pub fn requests(&self) -> Vec<Vec<(String, String)>> {
        self.state.requests.lock().unwrap().clone()
    }

    /// The spans of trace `trace_id`.
    pub fn trace(&self, trace_id: &str) -> Vec<Span> {
        self.spans()
            .into_iter()
            .filter(|s| s.trace_id == trace_id)
            .collect()
    }

    /// Polls until `done` holds for the spans received (every 20 ms, up
    /// to `timeout`); returns them either way.
    pub async fn wait(&self, timeout: Duration, done: impl Fn(&[Span]) -> bool) -> Vec<Span> {
        let deadline = Instant::now() + timeout;
        loop {
            let spans = self.spans();
            if done(&spans) || Instant::now() >= deadline {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Reads requests and never answers them (`false`: answers again).
    pub fn hang(&self, on: bool) {
        self.state.hang.store(on, Ordering::SeqCst);
    }

    /// Closes the listener and every open connection.
    pub fn stop(&self) {
        self.accept.abort();
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn handle(
    req: Request<hyper::body::Incoming>,
    state: Arc<State>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    if state.hang.load(Ordering::SeqCst) {
        std::future::pending::<()>().await;
    }
    let reply = |status: u16, body: Vec<u8>| {
        Ok(Response::builder()
            .status(status)
            .header("content-type", "application/x-protobuf")
            .body(Full::new(Bytes::from(body)))
            .unwrap())
    };
    if parts.method != hyper::Method::POST || parts.uri.path() != "/v1/traces" {
        return reply(404, Vec::new());
    }
    let headers = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    state.requests.lock().unwrap().push(headers);
    let Ok(export) = ExportTraceServiceRequest::decode(body) else {
        return reply(400, Vec::new());
    };
    let mut got = Vec::new();
    for rs in export.resource_spans {
        let resource = rs
            .resource
            .map(|r| attrs(&r.attributes))
            .unwrap_or_default();
        for ss in rs.scope_spans {
            let scope = ss.scope.map(|s| s.name).unwrap_or_default();
            for s in ss.spans {
                got.push(Span {
                    trace_id: hex(&s.trace_id),
                    span_id: hex(&s.span_id),
                    parent_span_id: hex(&s.parent_span_id),
                    name: s.name,
                    kind: s.kind,
                    start_ns: s.start_time_unix_nano,
                    end_ns: s.end_time_unix_nano,
                    attributes: attrs(&s.attributes),
                    events: s
                        .events
                        .iter()
                        .map(|e| (e.name.clone(), e.time_unix_nano))
                        .collect(),
                    status_code: s.status.map_or(0, |st| st.code),
                    resource: resource.clone(),
                    scope: scope.clone(),
                });
            }
        }
    }
    state.spans.lock().unwrap().extend(got);
    reply(200, ExportTraceServiceResponse::default().encode_to_vec())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn attrs(kvs: &[KeyValue]) -> BTreeMap<String, Attr> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), value(kv.value.as_ref())))
        .collect()
}

fn value(v: Option<&AnyValue>) -> Attr {
    match v.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => Attr::Str(s.clone()),
        Some(any_value::Value::IntValue(n)) => Attr::Int(*n),
        Some(any_value::Value::DoubleValue(n)) => Attr::Float(*n),
        Some(any_value::Value::BoolValue(b)) => Attr::Bool(*b),
        Some(any_value::Value::ArrayValue(a)) => Attr::Strings(
            a.values
                .iter()
                .filter_map(|v| match v.value.as_ref() {
                    Some(any_value::Value::StringValue(s)) => Some(s.clone()),
                    _ => None,
                })
                .collect(),
        ),
        _ => Attr::Other,
    }
}
