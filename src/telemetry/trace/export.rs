//! The export pipeline: a bounded queue that requests append finished
//! spans to (an uncontended lock, no thread woken but once a batch), and
//! one worker thread that POSTs them to the collector in batches over
//! OTLP/HTTP (protobuf), on a runtime of its own. Spans arrive encoded
//! (`span.rs`); a batch's body is the `ExportTraceServiceRequest` around
//! them, encoded by prost into a buffer reused from batch to batch.
//! Failures are retried as OTLP/HTTP asks (no answer, 429, 502, 503, 504),
//! with backoff, within `export_timeout`. A full queue drops new spans; a
//! failed export drops its batch;
//! both are counted in `tollgate_trace_spans_dropped_total`, and neither
//! ever waits a request.
//!
//! A pipeline lives as long as its last user: the global holder (replaced
//! when a reload changes `tracing:`) and the requests that started on it.
//! When the last one lets go, the worker exports what is queued and ends.

use super::client::{Client, SendError};
use super::Settings;
use crate::telemetry::metrics;
use opentelemetry::KeyValue;
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
use prost::Message;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A running exporter and its queue.
pub(crate) struct Pipeline {
    pub(crate) settings: Settings,
    queue: Arc<Queue>,
    /// The export thread's work, until it starts ([`Pipeline::spawn_worker`]).
    worker: Mutex<Option<Worker>>,
    spawned: AtomicBool,
}

struct Queue {
    state: Mutex<State>,
    /// The worker waits here for its next tick (or a full batch, or stop).
    tick: Condvar,
    /// Set once the worker has exported what was left and ended.
    done: Condvar,
    capacity: usize,
    batch: usize,
}

#[derive(Default)]
struct State {
    /// Encoded `Span` messages.
    spans: Vec<Vec<u8>>,
    /// No more spans come: export what is left and end.
    stop: bool,
    /// The worker has ended.
    ended: bool,
}

impl Queue {
    /// The worker has ended: spans pushed from now on are dropped.
    fn end(&self) {
        lock(&self.state).ended = true;
        self.done.notify_all();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Pipeline {
    /// Builds the exporter; its worker thread starts with the first span.
    pub(crate) fn start(settings: Settings) -> Result<Arc<Pipeline>, String> {
        let client = Client::new(&settings)?;
        // Validated with the config (`config::tracing`: names and values,
        // none of those set here).
        let mut headers = vec![("content-type".to_string(), PROTOBUF.to_string())];
        headers.extend(settings.headers.iter().cloned());
        let resource = ResourceAttributesWithSchema::from(&resource(&settings));
        let scope = InstrumentationScope {
            name: "tollgate".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        };
        let queue = Arc::new(Queue {
            state: Mutex::new(State::default()),
            tick: Condvar::new(),
            done: Condvar::new(),
            capacity: settings.queue_size,
            batch: settings.batch_size,
        });
        let worker = Worker {
            queue: queue.clone(),
            client,
            headers,
            body: Vec::new(),
            envelope: Envelope {
                resource_spans: vec![ResourceSpans {
                    resource: Some(Resource {
                        attributes: resource.attributes.0,
                        ..Default::default()
                    }),
                    scope_spans: vec![ScopeSpans {
                        scope: Some(scope),
                        spans: Vec::new(),
                        schema_url: String::new(),
                    }],
                    schema_url: resource.schema_url.unwrap_or_default(),
                }],
            },
            interval: settings.export_interval,
            timeout: settings.export_timeout,
            endpoint: settings.endpoint.clone(),
            failing: false,
        };
        Ok(Arc::new(Pipeline {
            settings,
            queue,
            worker: Mutex::new(Some(worker)),
            spawned: AtomicBool::new(false),
        }))
    }

    /// Starts the worker thread, once: on the first span, so a pipeline
    /// built before Pingora daemonizes gets its thread in the daemon (a
    /// thread made before the fork would be lost).
    fn spawn_worker(&self) {
        if self.spawned.load(Ordering::Acquire) {
            return;
        }
        let Some(worker) = lock(&self.worker).take() else {
            return;
        };
        self.spawned.store(true, Ordering::Release);
        let watched = self.queue.clone();
        let spawned = std::thread::Builder::new()
            .name("tollgate-otlp".into())
            .spawn(move || {
                let run = std::panic::AssertUnwindSafe(move || worker.run());
                if std::panic::catch_unwind(run).is_err() {
                    // A bug: spans are dropped (and counted) from here on.
                    log::error!("tracing: the span export thread panicked; no more spans are exported until the exporter is rebuilt");
                    watched.end();
                }
            });
        if let Err(e) = spawned {
            log::error!("tracing: cannot start the span export thread: {e}; spans are dropped");
            self.queue.end();
        }
    }

    /// Queues finished spans; those over the queue's capacity are dropped
    /// and counted. Never blocks on the export.
    pub(crate) fn push(&self, spans: impl IntoIterator<Item = Vec<u8>>) {
        self.spawn_worker();
        let q = &*self.queue;
        let mut dropped = 0u64;
        let mut full_batch = false;
        {
            let mut st = lock(&q.state);
            for span in spans {
                if st.spans.len() >= q.capacity || st.ended {
                    dropped += 1;
                } else {
                    st.spans.push(span);
                    full_batch |= st.spans.len() == q.batch;
                }
            }
        }
        if full_batch {
            q.tick.notify_one();
        }
        if dropped > 0 {
            count_dropped("queue_full", dropped);
        }
    }

    /// Stops taking spans, exports what is queued and waits for that, at
    /// most `limit` (the process is exiting).
    pub(crate) fn flush(&self, limit: Duration) {
        if !self.spawned.load(Ordering::Acquire) {
            // No span was ever queued.
            return;
        }
        let q = &*self.queue;
        let deadline = Instant::now() + limit;
        let mut st = lock(&q.state);
        st.stop = true;
        q.tick.notify_one();
        while !st.ended {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            st = match q.done.wait_timeout(st, left) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }
}

impl Drop for Pipeline {
    /// The last user let go: the worker exports what is left and ends.
    fn drop(&mut self) {
        lock(&self.queue.state).stop = true;
        self.queue.tick.notify_one();
    }
}

/// The resource every span is reported under: `service.name`,
/// `service.version`, the configured attributes, and what the SDK's
/// detectors add (`telemetry.sdk.*`, `OTEL_RESOURCE_ATTRIBUTES`).
fn resource(s: &Settings) -> opentelemetry_sdk::Resource {
    let mut attrs = vec![KeyValue::new("service.version", env!("CARGO_PKG_VERSION"))];
    attrs.extend(
        s.resource
            .iter()
            .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
    );
    opentelemetry_sdk::Resource::builder()
        .with_attributes(attrs)
        .with_service_name(s.service_name.clone())
        .build()
}

fn count_dropped(reason: &str, n: u64) {
    if let Some(m) = metrics::get() {
        m.trace_spans_dropped.with_label_values(&[reason]).inc_by(n);
    }
}

/// `Content-Type` of an OTLP/HTTP protobuf body.
const PROTOBUF: &str = "application/x-protobuf";

/// Retries after a failed export (as `opentelemetry-otlp` does by default:
/// 3, from 100 ms doubling to 1.6 s, plus up to 100 ms of jitter), all
/// within `export_timeout`.
const RETRIES: u32 = 3;
const FIRST_DELAY: Duration = Duration::from_millis(100);
const MAX_DELAY: Duration = Duration::from_millis(1600);

/// `ExportTraceServiceRequest`, `ResourceSpans` and `ScopeSpans` of
/// `opentelemetry/proto/collector/trace/v1/trace_service.proto` and
/// `trace/v1/trace.proto`, same fields and numbers, with the spans held
/// encoded: an embedded message and a `bytes` field are the same on the
/// wire (type 2, length-delimited), so prost frames each span's bytes as
/// the `Span` it is, and a batch is encoded without going over its spans
/// again. The test receiver decodes these bodies with `opentelemetry-proto`'s
/// own `ExportTraceServiceRequest`.
#[derive(Clone, PartialEq, prost::Message)]
struct Envelope {
    #[prost(message, repeated, tag = "1")]
    resource_spans: Vec<ResourceSpans>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ResourceSpans {
    #[prost(message, optional, tag = "1")]
    resource: Option<Resource>,
    #[prost(message, repeated, tag = "2")]
    scope_spans: Vec<ScopeSpans>,
    #[prost(string, tag = "3")]
    schema_url: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ScopeSpans {
    #[prost(message, optional, tag = "1")]
    scope: Option<InstrumentationScope>,
    /// Encoded `Span` messages.
    #[prost(bytes = "vec", repeated, tag = "2")]
    spans: Vec<Vec<u8>>,
    #[prost(string, tag = "3")]
    schema_url: String,
}

impl Envelope {
    /// The spans of the (one) scope.
    fn spans(&mut self) -> Option<&mut Vec<Vec<u8>>> {
        let rs = self.resource_spans.first_mut()?;
        Some(&mut rs.scope_spans.first_mut()?.spans)
    }
}

/// The export thread.
struct Worker {
    queue: Arc<Queue>,
    client: Client,
    /// Sent with every batch: `content-type`, then `tracing.headers`.
    headers: Vec<(String, String)>,
    /// The request body, reused from batch to batch.
    body: Vec<u8>,
    /// The resource and scope, around each batch's spans.
    envelope: Envelope,
    interval: Duration,
    timeout: Duration,
    endpoint: String,
    /// The last export failed (it was logged; the next success is too).
    failing: bool,
}

impl Worker {
    fn run(mut self) {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                log::error!("tracing: cannot start the export runtime: {e}; no spans are exported");
                self.end();
                return;
            }
        };
        // The queue's spans are swapped with this (empty) list: neither
        // is reallocated once both have grown to a tick's worth.
        let mut taken: Vec<Vec<u8>> = Vec::new();
        loop {
            let stop = {
                let q = &*self.queue;
                let mut st = lock(&q.state);
                if !st.stop && st.spans.len() < q.batch {
                    st = match q.tick.wait_timeout(st, self.interval) {
                        Ok((g, _)) => g,
                        Err(p) => p.into_inner().0,
                    };
                }
                std::mem::swap(&mut st.spans, &mut taken);
                st.stop
            };
            while !taken.is_empty() {
                let n = taken.len().min(self.queue.batch.max(1));
                self.export(&rt, taken.drain(..n));
            }
            if stop {
                // What was queued just before the stop is exported; a last
                // look catches anything pushed since.
                std::mem::swap(&mut lock(&self.queue.state).spans, &mut taken);
                if !taken.is_empty() {
                    let n = taken.len();
                    self.export(&rt, taken.drain(..n));
                }
                break;
            }
        }
        self.end();
    }

    fn end(&self) {
        self.queue.end();
    }

    /// Sends one batch; counts it exported or dropped.
    fn export(&mut self, rt: &tokio::runtime::Runtime, batch: std::vec::Drain<'_, Vec<u8>>) {
        let n = batch.len() as u64;
        self.body.clear();
        let encoded = match self.envelope.spans() {
            Some(spans) => {
                spans.extend(batch);
                let r = self.envelope.encode(&mut self.body);
                if let Some(spans) = self.envelope.spans() {
                    spans.clear();
                }
                r.map_err(|e| format!("cannot encode the batch: {e}"))
            }
            None => Err("no scope to put the spans in".to_string()),
        };
        // Each try is bounded by the client's `timeout`, the retries by
        // `timeout` too; this bounds the rest.
        let limit = self.timeout + Duration::from_secs(1);
        let result = match encoded {
            Ok(()) => {
                let send = self.send();
                rt.block_on(async { tokio::time::timeout(limit, send).await })
            }
            Err(e) => Ok(Err(e)),
        };
        match result {
            Ok(Ok(())) => {
                if let Some(m) = metrics::get() {
                    m.trace_spans_exported.inc_by(n);
                }
                if std::mem::take(&mut self.failing) {
                    log::info!("tracing: exporting to {} works again", self.endpoint);
                }
            }
            failed => {
                count_dropped("export_failed", n);
                let why = match failed {
                    Ok(Err(e)) => e,
                    _ => format!("no answer within {limit:?}"),
                };
                if !std::mem::replace(&mut self.failing, true) {
                    log::warn!(
                        "tracing: exporting spans to {} failed ({why}); spans are dropped and counted in tollgate_trace_spans_dropped_total until it works again",
                        self.endpoint
                    );
                }
            }
        }
    }
}

impl Worker {
    /// POSTs the body, retrying what OTLP/HTTP says may be retried.
    fn send(&self) -> impl std::future::Future<Output = Result<(), String>> + '_ {
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let (url, body, timeout) = (self.endpoint.as_str(), &self.body, self.timeout);
        let client = &self.client;
        async move {
            let started = Instant::now();
            let mut delay = FIRST_DELAY;
            let mut tries = 0;
            loop {
                let (why, wait) = match client.post(url, &headers, body).await {
                    Ok(a) if (200..300).contains(&a.status) => return Ok(()),
                    Ok(a) => {
                        let why = format!("HTTP status {}", a.status);
                        match a.status {
                            429 | 503 => (why, retry_after(a.retry_after.as_deref())),
                            502 | 504 => (why, None),
                            _ => return Err(why),
                        }
                    }
                    Err(e) => (SendError(e).to_string(), None),
                };
                let wait = wait.unwrap_or(delay + jitter()).max(delay);
                tries += 1;
                if tries > RETRIES || started.elapsed() + wait >= timeout {
                    return Err(why);
                }
                tokio::time::sleep(wait).await;
                delay = (delay * 2).min(MAX_DELAY);
            }
        }
    }
}

/// A `Retry-After` in seconds (the date form is not waited for).
fn retry_after(v: Option<&str>) -> Option<Duration> {
    let secs: u64 = v?.trim().parse().ok()?;
    Some(Duration::from_secs(secs.min(60)))
}

fn jitter() -> Duration {
    Duration::from_millis(fastrand::u64(0..=100))
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::trace::v1::Span;

    #[test]
    fn the_envelope_decodes_as_the_official_request_with_its_spans() {
        let spans: Vec<Span> = (1..=3u8)
            .map(|i| Span {
                span_id: vec![i; 8],
                name: format!("span {i}"),
                ..Default::default()
            })
            .collect();
        let mut envelope = Envelope {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![Default::default()],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "tollgate".into(),
                        ..Default::default()
                    }),
                    spans: spans.iter().map(Message::encode_to_vec).collect(),
                    schema_url: String::new(),
                }],
                schema_url: "s".into(),
            }],
        };
        let got = ExportTraceServiceRequest::decode(&*envelope.encode_to_vec()).unwrap();
        let rs = &got.resource_spans[0];
        assert_eq!(rs.schema_url, "s");
        assert_eq!(rs.resource.as_ref().unwrap().attributes.len(), 1);
        assert_eq!(rs.scope_spans[0].scope.as_ref().unwrap().name, "tollgate");
        assert_eq!(rs.scope_spans[0].spans, spans);
        assert_eq!(envelope.spans().unwrap().len(), 3);
    }
}
