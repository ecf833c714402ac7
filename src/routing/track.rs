//! Keeps route statistics and metrics current as a request's attempts
//! start, fail and finish. Told what happened in plain values; it knows
//! nothing of the proxy's request state.

use super::metrics::RouteMetrics;
use super::plan::Plan;
use super::stats::{Kind, RouteStats};
use super::Decision;
use std::sync::Arc;
use std::time::Instant;

/// Per-request routing state, in `Ctx`.
#[derive(Default)]
pub struct RequestRouting {
    pub(crate) decision: Option<Decision>,
    attempt: Option<Attempt>,
}

/// The attempt in progress: counted in flight on its route until dropped,
/// however the request ends.
struct Attempt {
    route: usize,
    started: Instant,
    stats: Arc<RouteStats>,
    gauge: Option<prometheus::IntGauge>,
}

impl Drop for Attempt {
    fn drop(&mut self) {
        self.stats.leave();
        if let Some(g) = &self.gauge {
            g.dec();
        }
    }
}

impl RequestRouting {
    /// When the current attempt started, and on which route.
    pub fn attempt(&self) -> Option<(usize, Instant)> {
        self.attempt.as_ref().map(|a| (a.route, a.started))
    }
}

/// An attempt starts on route `index` (the previous one, if any, ends).
pub fn attempt_started(state: &mut RequestRouting, plan: &Plan, index: usize) {
    attempt_started_at(state, plan, index, Instant::now());
}

/// [`attempt_started`] for an attempt that began at `started` (a hedge leg
/// adopted once it won the race).
pub(crate) fn attempt_started_at(
    state: &mut RequestRouting,
    plan: &Plan,
    index: usize,
    started: Instant,
) {
    state.attempt = None;
    let Some(r) = plan.routes.get(index) else {
        return;
    };
    r.stats.enter();
    let gauge = r.metrics.as_ref().map(|m| m.in_flight.clone());
    if let Some(g) = &gauge {
        g.inc();
    }
    state.attempt = Some(Attempt {
        route: index,
        started,
        stats: r.stats.clone(),
        gauge,
    });
}

fn kind(stream: bool) -> Kind {
    if stream {
        Kind::Ttft
    } else {
        Kind::Latency
    }
}

fn route_metrics(plan: Option<&Plan>, index: usize) -> Option<&RouteMetrics> {
    plan?.routes.get(index)?.metrics.as_ref()
}

fn set_ewma(m: Option<&RouteMetrics>, kind: Kind, secs: f64) {
    if let Some(m) = m {
        match kind {
            Kind::Ttft => m.ewma_ttft.set(secs),
            Kind::Latency => m.ewma_latency.set(secs),
        }
    }
}

/// The current attempt failed: it counts as a slow sample and an error.
/// `plan` is the alias's, `stream` whether the request streams.
pub fn attempt_failed(state: &mut RequestRouting, plan: Option<&Plan>, stream: bool) {
    let Some(a) = state.attempt.take() else {
        return;
    };
    let kind = kind(stream);
    let ewma = a.stats.observe_failure(kind, a.started.elapsed());
    let m = route_metrics(plan, a.route);
    set_ewma(m, kind, ewma.as_secs_f64());
    if let Some(m) = m {
        m.errors.inc();
    }
}

/// How a request ended, as routing statistics need it.
pub struct Ending<'a> {
    pub(crate) alias: &'a str,
    pub(crate) stream: bool,
    /// Something was answered (by the gateway or an upstream).
    pub(crate) served: bool,
    /// A stream was cut after it started.
    pub(crate) cut: bool,
    pub(crate) status: u16,
    /// The route that served (or was tried last).
    pub(crate) route: Option<usize>,
    pub(crate) first_byte_at: Option<Instant>,
    pub(crate) upstream_headers_at: Option<Instant>,
}

/// The request is over: a served attempt feeds its route's averages, and
/// the request is counted by route and variant.
pub fn finished(state: &mut RequestRouting, plan: Option<&Plan>, end: &Ending<'_>) {
    let attempt = state.attempt.take();
    if let (Some(a), true) = (&attempt, end.served) {
        let kind = kind(end.stream);
        let m = route_metrics(plan, a.route);
        if end.cut {
            let ewma = a.stats.observe_failure(kind, a.started.elapsed());
            set_ewma(m, kind, ewma.as_secs_f64());
            if let Some(m) = m {
                m.errors.inc();
            }
        } else if (200..400).contains(&end.status) {
            let since = |t: Option<Instant>| t.and_then(|t| t.checked_duration_since(a.started));
            let took = match kind {
                Kind::Ttft => since(end.first_byte_at),
                Kind::Latency => Some(a.started.elapsed()),
            };
            if let Some(took) = took {
                let ewma = a.stats.observe(kind, took);
                set_ewma(m, kind, ewma.as_secs_f64());
                if let Some(m) = m {
                    match kind {
                        Kind::Ttft => m.ttft.observe(took.as_secs_f64()),
                        Kind::Latency => m.latency.observe(took.as_secs_f64()),
                    }
                }
            }
            let first_byte = match kind {
                Kind::Ttft => took,
                Kind::Latency => since(end.upstream_headers_at).or(took),
            };
            if let Some(fb) = first_byte {
                a.stats.observe_first_byte(fb);
            }
        }
    }
    if let Some(plan) = plan {
        count_request(state, plan, end);
    }
    drop(attempt);
}

fn count_request(state: &RequestRouting, plan: &Plan, end: &Ending<'_>) {
    let (Some(index), Some(m)) = (end.route, super::metrics::get()) else {
        return;
    };
    let Some(route) = plan.routes.get(index) else {
        return;
    };
    let alias = end.alias;
    let variant = state
        .decision
        .as_ref()
        .and_then(|d| d.variant)
        .and_then(|v| plan.variants.get(v));
    let requests = |variant: &str, class: &str| {
        m.requests
            .with_label_values(&[alias, &*route.name, variant, class])
    };
    match (variant, route.metrics.as_ref()) {
        // The common case: no A/B split; the counter is bound once per class.
        (None, Some(rm)) => {
            let i = super::metrics::class_index(end.status);
            rm.requests[i]
                .get_or_init(|| {
                    requests(crate::telemetry::metrics::NONE, super::metrics::CLASSES[i])
                })
                .inc();
        }
        (v, _) => requests(
            v.map_or(crate::telemetry::metrics::NONE, |v| &*v.name),
            crate::telemetry::metrics::status_class(end.status),
        )
        .inc(),
    }
}

/// The route names and decision of a request, for its access-log line.
pub(crate) struct LogFields<'a> {
    pub(crate) strategy: Option<&'static str>,
    pub(crate) variant: Option<&'a str>,
    /// The route that served (or was tried last).
    pub(crate) route: Option<&'a str>,
    pub(crate) candidates: Option<Vec<&'a str>>,
    /// `name:reason` for each route left out.
    pub(crate) skipped: Option<Vec<String>>,
}

/// The access-log fields of a request that tried the routes of `order`
/// and was served by (or last tried) `route`, with names from `plan`.
pub(crate) fn log_fields<'a>(
    state: &RequestRouting,
    plan: Option<&'a Plan>,
    order: &[usize],
    route: Option<usize>,
) -> LogFields<'a> {
    let (Some(plan), Some(d)) = (plan, state.decision.as_ref()) else {
        return LogFields {
            strategy: None,
            variant: None,
            route: None,
            candidates: None,
            skipped: None,
        };
    };
    let name = |i: usize| plan.routes.get(i).map(|r| &*r.name);
    LogFields {
        strategy: Some(d.strategy.label()),
        variant: d
            .variant
            .and_then(|v| plan.variants.get(v))
            .map(|v| &*v.name),
        route: route.and_then(name),
        candidates: Some(order.iter().filter_map(|&i| name(i)).collect()),
        skipped: (!d.skipped.is_empty()).then(|| {
            d.skipped
                .iter()
                .filter_map(|(i, s)| name(*i).map(|n| format!("{n}:{}", s.label())))
                .collect()
        }),
    }
}
