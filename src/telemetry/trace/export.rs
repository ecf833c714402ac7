//! The export pipeline: a bounded queue that requests append finished
//! spans to (an uncontended lock, no thread woken but once a batch), and
//! one worker thread that sends them to the collector in batches with
//! `opentelemetry-otlp`'s OTLP/HTTP (protobuf) exporter, on a runtime of
//! its own. A full queue drops new spans; a failed export drops its batch;
//! both are counted in `tollgate_trace_spans_dropped_total`, and neither
//! ever waits a request.
//!
//! A pipeline lives as long as its last user: the global holder (replaced
//! when a reload changes `tracing:`) and the requests that started on it.
//! When the last one lets go, the worker exports what is queued and ends.

use super::client::Client;
use super::Settings;
use crate::telemetry::metrics;
use opentelemetry::KeyValue;
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use opentelemetry_sdk::Resource;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A running exporter and its queue.
pub(crate) struct Pipeline {
    pub(crate) settings: Settings,
    /// The instrumentation scope of every span (`tollgate`, its version).
    pub(crate) scope: opentelemetry::InstrumentationScope,
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
    spans: Vec<SpanData>,
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
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(settings.endpoint.clone())
            .with_timeout(settings.export_timeout)
            .with_headers(settings.headers.iter().cloned().collect())
            .build()
            .map_err(|e| format!("cannot build the OTLP exporter: {e}"))?;
        exporter.set_resource(&resource(&settings));
        let queue = Arc::new(Queue {
            state: Mutex::new(State::default()),
            tick: Condvar::new(),
            done: Condvar::new(),
            capacity: settings.queue_size,
            batch: settings.batch_size,
        });
        let worker = Worker {
            queue: queue.clone(),
            exporter,
            interval: settings.export_interval,
            timeout: settings.export_timeout,
            endpoint: settings.endpoint.clone(),
            failing: false,
        };
        Ok(Arc::new(Pipeline {
            settings,
            scope: opentelemetry::InstrumentationScope::builder("tollgate")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
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
    pub(crate) fn push(&self, spans: impl IntoIterator<Item = SpanData>) {
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
fn resource(s: &Settings) -> Resource {
    let mut attrs = vec![KeyValue::new("service.version", env!("CARGO_PKG_VERSION"))];
    attrs.extend(
        s.resource
            .iter()
            .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
    );
    Resource::builder()
        .with_attributes(attrs)
        .with_service_name(s.service_name.clone())
        .build()
}

fn count_dropped(reason: &str, n: u64) {
    if let Some(m) = metrics::get() {
        m.trace_spans_dropped.with_label_values(&[reason]).inc_by(n);
    }
}

/// The export thread.
struct Worker {
    queue: Arc<Queue>,
    exporter: opentelemetry_otlp::SpanExporter,
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
        loop {
            let (spans, stop) = {
                let q = &*self.queue;
                let mut st = lock(&q.state);
                if !st.stop && st.spans.len() < q.batch {
                    st = match q.tick.wait_timeout(st, self.interval) {
                        Ok((g, _)) => g,
                        Err(p) => p.into_inner().0,
                    };
                }
                (std::mem::take(&mut st.spans), st.stop)
            };
            let mut spans = spans.into_iter().peekable();
            while spans.peek().is_some() {
                let batch: Vec<SpanData> = spans.by_ref().take(self.queue.batch).collect();
                self.export(&rt, batch);
            }
            if stop {
                // What was queued just before the stop is in `spans`; a
                // last look catches anything pushed since.
                let rest = std::mem::take(&mut lock(&self.queue.state).spans);
                if !rest.is_empty() {
                    self.export(&rt, rest);
                }
                break;
            }
        }
        let _ = self.exporter.shutdown();
        self.end();
    }

    fn end(&self) {
        self.queue.end();
    }

    /// Sends one batch; counts it exported or dropped.
    fn export(&mut self, rt: &tokio::runtime::Runtime, batch: Vec<SpanData>) {
        let n = batch.len() as u64;
        // The exporter bounds its retries by `timeout`; this bounds the rest.
        let limit = self.timeout + Duration::from_secs(1);
        let exporter = &self.exporter;
        let result =
            rt.block_on(async { tokio::time::timeout(limit, exporter.export(batch)).await });
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
                    Ok(Err(e)) => e.to_string(),
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
