//! OpenTelemetry traces: one server span per request with the GenAI
//! semantic conventions' attributes, a client span per upstream attempt
//! (retries, fallbacks, hedge legs, the shadow copy), exported over
//! OTLP/HTTP off the request path (`export.rs`).
//!
//! The proxy hands this module plain values (never `Ctx`):
//! - at the request's start, its headers: [`begin`] continues the client's
//!   W3C trace (`context.rs`) or starts one, and decides sampling once;
//! - for each attempt, its number: [`RequestTrace::propagate`] is the
//!   `traceparent` sent upstream, naming that attempt's span;
//! - at the end, the request's record and what only a trace shows
//!   ([`Finished`]): [`RequestTrace::finish`] builds the spans (`span.rs`)
//!   and queues them.
//!
//! Span ids are fixed before the spans are built (the upstream is told its
//! parent before the attempt ends), so spans are written at the end
//! straight into OTLP protobuf messages from the request's own values and
//! queued encoded; the SDK's `Tracer` and `SpanData` (and their
//! conversion to protobuf on export) are not used. An unsampled request builds
//! nothing: without a client `traceparent` it costs one atomic load (or
//! nothing at all with tracing off); with one, that header is forwarded as
//! it came. Prompt and completion text is never exported.

mod client;
mod context;
mod export;
mod span;

use crate::accounting::facts::ResponseFacts;
use crate::base::endpoint::Endpoint;
use crate::config::TracingSection;
use crate::rewrite::RequestParams;
use crate::telemetry::record::Record;
use arc_swap::ArcSwapOption;
use export::Pipeline;
use opentelemetry::trace::{SpanId, TraceId, TraceState};
use opentelemetry_sdk::trace::{Sampler, SamplingDecision, ShouldSample};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// How long the exit hook waits for the last spans to be exported.
const EXIT_FLUSH: Duration = Duration::from_secs(2);

/// `tracing:` compiled: what the exporter and the sampler use. Two
/// configs with equal settings share their pipeline across a reload.
#[derive(Clone, PartialEq)]
pub(crate) struct Settings {
    /// The full URL spans are posted to (`…/v1/traces`).
    pub(crate) endpoint: String,
    pub(crate) sample_ratio: f64,
    pub(crate) parent_based: bool,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) service_name: String,
    pub(crate) resource: Vec<(String, String)>,
    pub(crate) ca_file: Option<String>,
    pub(crate) queue_size: usize,
    pub(crate) batch_size: usize,
    pub(crate) export_interval: Duration,
    pub(crate) export_timeout: Duration,
}

impl Settings {
    /// Compiles a validated `tracing:` section (pure).
    pub(crate) fn compile(t: &TracingSection) -> Settings {
        let base = t.endpoint.trim_end_matches('/');
        let endpoint = if base.ends_with("/v1/traces") {
            base.to_string()
        } else {
            format!("{base}/v1/traces")
        };
        Settings {
            endpoint,
            sample_ratio: t.sample_ratio,
            parent_based: t.parent_based,
            headers: t.headers.clone().into_iter().collect(),
            service_name: t.service_name.trim().to_string(),
            resource: t.resource.clone().into_iter().collect(),
            ca_file: t.ca_file.clone(),
            queue_size: t.queue_size,
            batch_size: t.batch_size,
            export_interval: t.export_interval.get(),
            export_timeout: t.export_timeout.get(),
        }
    }
}

/// Whether a pipeline is installed (the cheap check made per request).
static ON: AtomicBool = AtomicBool::new(false);
/// The pipeline new requests use.
static CURRENT: ArcSwapOption<Pipeline> = ArcSwapOption::const_empty();

/// The export step for `tracing:` (at start, after Pingora has
/// daemonized, and on every successful reload): keeps the running
/// exporter when the settings are the same, else builds a new one (its
/// thread included) and swaps it in. The old one exports what it holds
/// and ends once the requests that started on it are done. `None`: off.
pub(crate) fn configure(section: Option<&TracingSection>) -> Result<(), String> {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let wanted = section.map(Settings::compile);
    let running = CURRENT.load_full();
    if running.as_ref().map(|p| &p.settings) == wanted.as_ref() {
        return Ok(());
    }
    let Some(settings) = wanted else {
        ON.store(false, Ordering::Release);
        CURRENT.store(None);
        log::info!("tracing: off");
        return Ok(());
    };
    let (endpoint, ratio) = (settings.endpoint.clone(), settings.sample_ratio);
    let pipeline = Pipeline::start(settings)?;
    CURRENT.store(Some(pipeline));
    ON.store(true, Ordering::Release);
    log::info!(
        "tracing: {} spans to {endpoint} (sample_ratio {ratio})",
        if running.is_some() {
            "exporter rebuilt;"
        } else {
            "exporting"
        }
    );
    Ok(())
}

/// Exports the spans still queued, waiting at most a moment (the process
/// is exiting).
pub(crate) fn flush_at_exit() {
    ON.store(false, Ordering::Release);
    if let Some(p) = CURRENT.swap(None) {
        p.flush(EXIT_FLUSH);
    }
}

/// Random ids, never zero.
fn new_trace_id() -> TraceId {
    TraceId::from(fastrand::u128(1..))
}

fn new_span_id() -> SpanId {
    SpanId::from(fastrand::u64(1..))
}

/// The id of child `n` of span `parent` (an attempt, or the shadow copy):
/// derived, so nothing needs remembering between the attempt's header and
/// the span built at the end. Distinct for distinct `n`, never zero.
fn child_id(parent: SpanId, n: u32) -> SpanId {
    let mut z = u64::from_be_bytes(parent.to_bytes())
        .wrapping_add(u64::from(n).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    SpanId::from(z.max(1))
}

/// The shadow copy's child number (attempts count from 1).
const SHADOW: u32 = 0;

/// One request's trace, decided at its start.
pub(crate) struct RequestTrace {
    pipeline: Arc<Pipeline>,
    trace_id: TraceId,
    /// The server span's id; unsampled, the client's span (forwarded).
    span_id: SpanId,
    /// The client's span, the server span's (remote) parent.
    parent: Option<SpanId>,
    state: TraceState,
    sampled: bool,
}

/// Continues the client's trace (`traceparent`, `tracestate`) or starts
/// one, and decides whether it is sampled: by the client's flag when
/// `parent_based`, else by `sample_ratio` over the trace id. `None`:
/// tracing is off, or the request is unsampled and has no context to pass
/// on.
pub(crate) fn begin(headers: &http::HeaderMap) -> Option<Box<RequestTrace>> {
    if !ON.load(Ordering::Acquire) {
        return None;
    }
    let pipeline = CURRENT.load_full()?;
    let incoming = context::incoming(headers);
    let trace_id = incoming.as_ref().map_or_else(new_trace_id, |c| c.trace_id);
    let sampled = match &incoming {
        Some(c) if pipeline.settings.parent_based => c.sampled,
        _ => ratio_samples(pipeline.settings.sample_ratio, trace_id),
    };
    let (span_id, parent, state) = match (sampled, incoming) {
        (true, c) => (
            new_span_id(),
            c.as_ref().map(|c| c.span_id),
            c.map_or(TraceState::NONE, |c| c.state),
        ),
        (false, Some(c)) => (c.span_id, None, c.state),
        (false, None) => return None,
    };
    Some(Box::new(RequestTrace {
        pipeline,
        trace_id,
        span_id,
        parent,
        state,
        sampled,
    }))
}

/// OpenTelemetry's `TraceIdRatioBased` decision.
fn ratio_samples(ratio: f64, trace_id: TraceId) -> bool {
    let kind = opentelemetry::trace::SpanKind::Server;
    let r = Sampler::TraceIdRatioBased(ratio).should_sample(None, trace_id, "", &kind, &[], &[]);
    r.decision == SamplingDecision::RecordAndSample
}

/// The trace context sent upstream with one attempt.
pub(crate) struct Propagation {
    pub(crate) traceparent: http::HeaderValue,
    pub(crate) tracestate: Option<http::HeaderValue>,
}

fn propagation(trace_id: TraceId, span: SpanId, sampled: bool, state: &TraceState) -> Propagation {
    let header = state.header();
    Propagation {
        traceparent: context::traceparent(trace_id, span, sampled),
        tracestate: (!header.is_empty())
            .then(|| http::HeaderValue::from_str(&header).ok())
            .flatten(),
    }
}

impl RequestTrace {
    /// Whether spans are recorded for this request.
    pub(crate) fn sampled(&self) -> bool {
        self.sampled
    }

    /// The `traceparent` (and `tracestate`) for attempt `seq`: its own
    /// span as the parent; unsampled, the client's as it came.
    pub(crate) fn propagate(&self, seq: u32) -> Propagation {
        let span = if self.sampled {
            child_id(self.span_id, seq)
        } else {
            self.span_id
        };
        propagation(self.trace_id, span, self.sampled, &self.state)
    }

    /// What the shadow copy's task needs for its span (sampled only).
    pub(crate) fn shadow(&self) -> Option<ShadowTrace> {
        self.sampled.then(|| ShadowTrace {
            pipeline: self.pipeline.clone(),
            trace_id: self.trace_id,
            parent: self.span_id,
            state: self.state.clone(),
        })
    }

    /// Builds the request's spans and queues them (sampled only).
    pub(crate) fn finish(self: Box<Self>, f: &Finished<'_>) {
        if !self.sampled {
            return;
        }
        let spans = span::request(&self, f);
        self.pipeline.push(spans);
    }
}

/// A sampled request's trace, as its shadow copy (a background task that
/// may outlive the request) carries it.
pub(crate) struct ShadowTrace {
    pipeline: Arc<Pipeline>,
    trace_id: TraceId,
    /// The request's server span.
    parent: SpanId,
    state: TraceState,
}

impl ShadowTrace {
    /// The `traceparent` (and `tracestate`) sent with the copy.
    pub(crate) fn propagate(&self) -> Propagation {
        let span = child_id(self.parent, SHADOW);
        propagation(self.trace_id, span, true, &self.state)
    }

    /// Queues the copy's span.
    pub(crate) fn finish(self, end: &ShadowEnd<'_>) {
        let data = span::shadow(&self, end);
        self.pipeline.push([data]);
    }
}

/// How a shadow copy went.
pub(crate) struct ShadowEnd<'a> {
    pub(crate) endpoint: Endpoint,
    pub(crate) provider: &'a str,
    /// `gen_ai.provider.name` of its provider.
    pub(crate) system: &'static str,
    pub(crate) model: &'a str,
    pub(crate) backend: SocketAddr,
    /// Its `tollgate_shadow_requests_total` result.
    pub(crate) result: &'static str,
    pub(crate) status: Option<u16>,
    pub(crate) duration: Duration,
    /// When it ended.
    pub(crate) ended: SystemTime,
}

/// What a finished request's spans show beyond its [`Record`]: plain
/// values from the proxy.
pub(crate) struct Finished<'a> {
    pub(crate) record: &'a Record<'a>,
    pub(crate) endpoint: Option<Endpoint>,
    pub(crate) team: Option<&'a str>,
    /// `gen_ai.provider.name` of the route that served (or was tried last).
    pub(crate) system: Option<&'static str>,
    pub(crate) params: RequestParams,
    pub(crate) response: Option<ResponseFacts>,
    /// The attempts that reached for an upstream, in the order they ended.
    pub(crate) attempts: Vec<AttemptSpan<'a>>,
}

/// One upstream attempt.
pub(crate) struct AttemptSpan<'a> {
    /// Its number (1 for the first), as [`RequestTrace::propagate`] had it.
    pub(crate) seq: u32,
    pub(crate) provider: &'a str,
    pub(crate) system: &'static str,
    /// The upstream model.
    pub(crate) model: &'a str,
    pub(crate) backend: SocketAddr,
    /// Its `tollgate_upstream_attempts_total` outcome.
    pub(crate) outcome: &'static str,
    pub(crate) status: Option<u16>,
    pub(crate) hedge: bool,
    /// Since the request started: when it started, and when it ended
    /// (`None`: its answer went to the client; it ends with the request).
    pub(crate) started: Duration,
    pub(crate) ended: Option<Duration>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_ids_differ_from_each_other_and_their_parent() {
        let parent = SpanId::from(0x1234_5678_9abc_def0);
        let ids: std::collections::HashSet<SpanId> =
            (0..1000).map(|n| child_id(parent, n)).collect();
        assert_eq!(ids.len(), 1000);
        assert!(!ids.contains(&parent) && !ids.contains(&SpanId::INVALID));
    }

    #[test]
    fn the_endpoint_gets_the_traces_path_once() {
        let t = |e: &str| TracingSection {
            endpoint: e.into(),
            ..serde_yaml::from_str("endpoint: x").unwrap()
        };
        for (given, want) in [
            ("http://c:4318", "http://c:4318/v1/traces"),
            ("http://c:4318/", "http://c:4318/v1/traces"),
            ("https://c/otlp", "https://c/otlp/v1/traces"),
            ("http://c:4318/v1/traces", "http://c:4318/v1/traces"),
        ] {
            assert_eq!(Settings::compile(&t(given)).endpoint, want);
        }
    }

    #[test]
    fn ratio_sampling_is_all_or_none_at_the_ends() {
        let ids: Vec<TraceId> = (0..200).map(|_| new_trace_id()).collect();
        assert!(ids.iter().all(|t| ratio_samples(1.0, *t)));
        assert!(ids.iter().all(|t| !ratio_samples(0.0, *t)));
        let half = ids.iter().filter(|t| ratio_samples(0.5, **t)).count();
        assert!((40..160).contains(&half), "{half} of 200 at 0.5");
    }
}
