//! Keeps route statistics and metrics current as a request's attempts
//! start, fail and finish. Called from a line each in `proxy/attempt.rs`
//! and `proxy/finish.rs`.

use super::metrics::RouteMetrics;
use super::plan::Plan;
use super::stats::{Kind, RouteStats};
use super::Decision;
use crate::proxy::ctx::Ctx;
use std::sync::Arc;
use std::time::Instant;

/// Per-request routing state, in `Ctx`.
#[derive(Default)]
pub struct RequestRouting {
    pub decision: Option<Decision>,
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
pub fn attempt_started_at(state: &mut RequestRouting, plan: &Plan, index: usize, started: Instant) {
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

fn kind(ctx: &Ctx) -> Kind {
    if ctx.parsed.as_ref().is_some_and(|p| p.stream) {
        Kind::Ttft
    } else {
        Kind::Latency
    }
}

fn route_metrics(ctx: &Ctx, index: usize) -> Option<&RouteMetrics> {
    let rt = ctx.rt.as_ref()?;
    let model = rt.models.get(ctx.alias.as_deref()?)?;
    model.routing.routes.get(index)?.metrics.as_ref()
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
pub fn attempt_failed(ctx: &mut Ctx) {
    let Some(a) = ctx.routing.attempt.take() else {
        return;
    };
    let kind = kind(ctx);
    let ewma = a.stats.observe_failure(kind, a.started.elapsed());
    let m = route_metrics(ctx, a.route);
    set_ewma(m, kind, ewma.as_secs_f64());
    if let Some(m) = m {
        m.errors.inc();
    }
}

/// The request is over: a served attempt feeds its route's averages, and
/// the request is counted by route and variant.
pub fn finished(ctx: &mut Ctx) {
    let attempt = ctx.routing.attempt.take();
    let served = ctx.served_locally || ctx.response_started;
    if let (Some(a), true) = (&attempt, served) {
        let kind = kind(ctx);
        let m = route_metrics(ctx, a.route);
        if ctx.mid_stream_error.is_some() {
            let ewma = a.stats.observe_failure(kind, a.started.elapsed());
            set_ewma(m, kind, ewma.as_secs_f64());
            if let Some(m) = m {
                m.errors.inc();
            }
        } else if (200..400).contains(&ctx.status) {
            let since = |t: Option<Instant>| t.and_then(|t| t.checked_duration_since(a.started));
            let took = match kind {
                Kind::Ttft => since(ctx.first_byte_at),
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
                Kind::Latency => since(ctx.upstream_headers_at).or(took),
            };
            if let Some(fb) = first_byte {
                a.stats.observe_first_byte(fb);
            }
        }
    }
    count_request(ctx);
    drop(attempt);
}

fn count_request(ctx: &Ctx) {
    let (Some(rt), Some(alias), Some(index)) =
        (ctx.rt.as_ref(), ctx.alias.as_deref(), ctx.attempt_route)
    else {
        return;
    };
    let (Some(model), Some(m)) = (rt.models.get(alias), super::metrics::get()) else {
        return;
    };
    let plan = &model.routing;
    let Some(route) = plan.routes.get(index) else {
        return;
    };
    let variant = ctx
        .routing
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
            let i = super::metrics::class_index(ctx.status);
            rm.requests[i]
                .get_or_init(|| {
                    requests(crate::telemetry::metrics::NONE, super::metrics::CLASSES[i])
                })
                .inc();
        }
        (v, _) => requests(
            v.map_or(crate::telemetry::metrics::NONE, |v| &*v.name),
            crate::telemetry::metrics::status_class(ctx.status),
        )
        .inc(),
    }
}

/// The route names and decision of a request, for its access-log line.
pub struct LogFields<'a> {
    pub strategy: Option<&'static str>,
    pub variant: Option<&'a str>,
    /// The route that served (or was tried last).
    pub route: Option<&'a str>,
    pub candidates: Option<Vec<&'a str>>,
    /// `name:reason` for each route left out.
    pub skipped: Option<Vec<String>>,
}

/// The access-log fields of `ctx`, with names from `plan`.
pub fn log_fields<'a>(ctx: &Ctx, plan: Option<&'a Plan>) -> LogFields<'a> {
    let (Some(plan), Some(d)) = (plan, ctx.routing.decision.as_ref()) else {
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
        route: ctx.attempt_route.and_then(name),
        candidates: Some(ctx.order.iter().filter_map(|&i| name(i)).collect()),
        skipped: (!d.skipped.is_empty()).then(|| {
            d.skipped
                .iter()
                .filter_map(|(i, s)| name(*i).map(|n| format!("{n}:{}", s.label())))
                .collect()
        }),
    }
}
