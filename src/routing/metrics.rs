//! Per-route Prometheus metrics. Labels are config names only (alias, route
//! name, variant) or fixed sets, so cardinality is bounded by the config.
//! Handles that do not depend on the request are bound once per route when
//! the `Runtime` is built.

use prometheus::{
    register_gauge_vec, register_histogram_vec, register_int_counter_vec, register_int_gauge_vec,
    Gauge, GaugeVec, Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
};
use std::sync::OnceLock;

pub(crate) struct Families {
    pub(crate) requests: IntCounterVec,
    pub(crate) latency: HistogramVec,
    pub(crate) ttft: HistogramVec,
    pub(crate) errors: IntCounterVec,
    pub(crate) ewma: GaugeVec,
    pub(crate) in_flight: IntGaugeVec,
    pub(crate) skipped: IntCounterVec,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];
const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0,
    3.0, 5.0, 10.0, 30.0, 60.0,
];

fn build() -> Result<Families, prometheus::Error> {
    let route = &["request_model", "route"];
    Ok(Families {
        requests: register_int_counter_vec!(
            "tollgate_route_requests_total",
            "Requests by the route that served them (or was tried last), A/B variant (\"-\" without a split) and status class.",
            &["request_model", "route", "variant", "status_class"]
        )?,
        latency: register_histogram_vec!(
            "tollgate_route_latency_seconds",
            "Non-streams: time from sending the request upstream to the end of the response, per route.",
            route,
            LATENCY_BUCKETS.to_vec()
        )?,
        ttft: register_histogram_vec!(
            "tollgate_route_ttft_seconds",
            "Streams: time from sending the request upstream to the first byte sent to the client, per route.",
            route,
            TTFT_BUCKETS.to_vec()
        )?,
        errors: register_int_counter_vec!(
            "tollgate_route_errors_total",
            "Failed attempts per route (each also counts as a slow sample for the latency strategy).",
            route
        )?,
        ewma: register_gauge_vec!(
            "tollgate_route_ewma_seconds",
            "Moving average the latency strategy compares, per route and kind (ttft, latency).",
            &["request_model", "route", "kind"]
        )?,
        in_flight: register_int_gauge_vec!(
            "tollgate_route_in_flight",
            "Attempts in flight per route (what least_busy compares).",
            route
        )?,
        skipped: register_int_counter_vec!(
            "tollgate_route_skipped_total",
            "Routes left out of a request's candidates, by reason (tier, region, capability, context_window, workload).",
            &["request_model", "route", "reason"]
        )?,
    })
}

static FAMILIES: OnceLock<Option<Families>> = OnceLock::new();

/// The metric families, registered on first use (`None` if that failed,
/// which is logged once).
pub(crate) fn get() -> Option<&'static Families> {
    crate::telemetry::metrics::registered(&FAMILIES, "routing metrics", build)
}

/// One route's handles, bound to its labels.
#[derive(Clone)]
pub struct RouteMetrics {
    pub(crate) latency: Histogram,
    pub(crate) ttft: Histogram,
    pub(crate) errors: IntCounter,
    pub(crate) ewma_ttft: Gauge,
    pub(crate) ewma_latency: Gauge,
    pub(crate) in_flight: IntGauge,
    /// Indexed by [`super::Skip::stage`]: tier, region, capability,
    /// context_window, workload.
    pub(crate) skipped: [IntCounter; 5],
    /// `tollgate_route_requests_total` of requests outside any A/B variant,
    /// by status class (see [`class_index`]), bound on first use so only
    /// classes that occur appear.
    pub(crate) requests: [std::sync::OnceLock<IntCounter>; 6],
}

/// The status classes of [`crate::telemetry::metrics::status_class`], in
/// the order of [`RouteMetrics::requests`].
pub(crate) const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "none"];

/// Position of `status`'s class in [`CLASSES`].
pub(crate) fn class_index(status: u16) -> usize {
    match status {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        500..=599 => 4,
        _ => 5,
    }
}

impl RouteMetrics {
    pub fn bind(alias: &str, route: &str) -> Option<Self> {
        let f = get()?;
        let l = [alias, route];
        Some(Self {
            latency: f.latency.with_label_values(&l),
            ttft: f.ttft.with_label_values(&l),
            errors: f.errors.with_label_values(&l),
            ewma_ttft: f.ewma.with_label_values(&[alias, route, "ttft"]),
            ewma_latency: f.ewma.with_label_values(&[alias, route, "latency"]),
            in_flight: f.in_flight.with_label_values(&l),
            skipped: ["tier", "region", "capability", "context_window", "workload"]
                .map(|reason| f.skipped.with_label_values(&[alias, route, reason])),
            requests: Default::default(),
        })
    }
}
