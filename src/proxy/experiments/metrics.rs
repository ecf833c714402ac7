//! Metrics of shadow traffic and hedged requests. Label values are config
//! names or fixed sets. Shadow series carry the constant label
//! `shadow="true"`, so they never mix with client traffic.

use prometheus::{
    register_counter_vec, register_histogram_vec, register_int_counter_vec, register_int_gauge,
    CounterVec, HistogramVec, IntCounterVec, IntGauge, Opts,
};
use std::sync::OnceLock;

pub(crate) struct Metrics {
    /// `request_model`, `provider`, `response_model`, `result`.
    pub(crate) shadow_requests: IntCounterVec,
    /// `request_model`, `reason` (concurrency, budget, no_backend).
    pub(crate) shadow_skipped: IntCounterVec,
    /// `request_model`, `provider`, `response_model`, `token_type`, `usage_source`.
    pub(crate) shadow_tokens: IntCounterVec,
    /// `request_model`, `provider`, `response_model`.
    pub(crate) shadow_cost: CounterVec,
    /// `request_model`, `provider`.
    pub(crate) shadow_duration: HistogramVec,
    pub(crate) shadow_in_flight: IntGauge,
    /// `request_model`, `event` (fired, won, capped).
    pub(crate) hedges: IntCounterVec,
}

const DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

fn shadow_opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help).const_label("shadow", "true")
}

fn build() -> Result<Metrics, prometheus::Error> {
    let route = &["request_model", "provider", "response_model"];
    Ok(Metrics {
        shadow_requests: register_int_counter_vec!(
            shadow_opts(
                "tollgate_shadow_requests_total",
                "Shadow requests sent, by result (success, error, timeout, status_4xx, status_5xx)."
            ),
            &["request_model", "provider", "response_model", "result"]
        )?,
        shadow_skipped: register_int_counter_vec!(
            shadow_opts(
                "tollgate_shadow_skipped_total",
                "Sampled shadow requests not sent, by reason (concurrency, budget, no_backend)."
            ),
            &["request_model", "reason"]
        )?,
        shadow_tokens: register_int_counter_vec!(
            shadow_opts(
                "tollgate_shadow_tokens_total",
                "Tokens of shadow responses, by type (input, output, cached_input, reasoning)."
            ),
            &[
                "request_model",
                "provider",
                "response_model",
                "token_type",
                "usage_source"
            ]
        )?,
        shadow_cost: register_counter_vec!(
            shadow_opts(
                "tollgate_shadow_cost_usd_total",
                "Spend of shadow requests at the shadow route's price."
            ),
            route
        )?,
        shadow_duration: register_histogram_vec!(
            prometheus::HistogramOpts::new(
                "tollgate_shadow_duration_seconds",
                "Shadow requests: time from sending to the end of the response."
            )
            .const_label("shadow", "true")
            .buckets(DURATION_BUCKETS.to_vec()),
            &["request_model", "provider"]
        )?,
        shadow_in_flight: register_int_gauge!(shadow_opts(
            "tollgate_shadow_in_flight",
            "Shadow requests in flight."
        ))?,
        hedges: register_int_counter_vec!(
            "tollgate_hedges_total",
            "Hedged requests by event: fired (a second route started), won (the hedge served the client), capped (due but refused by max_share).",
            &["request_model", "event"]
        )?,
    })
}

static METRICS: OnceLock<Option<Metrics>> = OnceLock::new();

/// The experiments' metrics, registered on first use.
pub(crate) fn get() -> Option<&'static Metrics> {
    crate::telemetry::metrics::registered(&METRICS, "experiment metrics", build)
}

/// Counts one hedge event of `alias`.
pub(crate) fn hedge(alias: &str, event: &str) {
    if let Some(m) = get() {
        m.hedges.with_label_values(&[alias, event]).inc();
    }
}
