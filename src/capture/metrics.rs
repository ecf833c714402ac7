//! Metrics of output capture. Labels are config names (alias, a route's
//! `provider/model`, a split variant) or fixed sets (reasons), so they are
//! bounded by the config.

use prometheus::{register_counter_vec, register_int_counter_vec, CounterVec, IntCounterVec};
use std::sync::OnceLock;

pub(crate) struct Metrics {
    /// `reason`: no_store, queue_full, store_down, store, pending_full, unpaired.
    pub(crate) dropped: IntCounterVec,
    /// `alias`.
    pub(crate) written: IntCounterVec,
    /// `alias`, `route`, `variant`: captured primary answers.
    pub(crate) requests: IntCounterVec,
    /// `alias`, `route`, `variant`: their cost.
    pub(crate) cost: CounterVec,
    /// `alias`, `route` (the primary's), `shadow_route`: pairs compared.
    pub(crate) pairs: IntCounterVec,
    /// Same labels: pairs that agree (score ≥ 0.8).
    pub(crate) agreements: IntCounterVec,
    /// Same labels: the sum of the pairs' scores.
    pub(crate) score: CounterVec,
    /// `reason`: age, rows.
    pub(crate) deleted: IntCounterVec,
}

fn build() -> prometheus::Result<Metrics> {
    let pair = &["alias", "route", "shadow_route"];
    let route = &["alias", "route", "variant"];
    Ok(Metrics {
        dropped: register_int_counter_vec!(
            "tollgate_capture_dropped_total",
            "Captures not written, by reason (no_store, queue_full, store_down, store, pending_full, unpaired).",
            &["reason"]
        )?,
        written: register_int_counter_vec!(
            "tollgate_capture_written_total",
            "Captures written to the store, by alias.",
            &["alias"]
        )?,
        requests: register_int_counter_vec!(
            "tollgate_capture_requests_total",
            "Captured primary answers, by alias, route and A/B variant (none without a split).",
            route
        )?,
        cost: register_counter_vec!(
            "tollgate_capture_cost_usd_total",
            "Cost of the captured primary answers, by alias, route and variant.",
            route
        )?,
        pairs: register_int_counter_vec!(
            "tollgate_capture_pairs_total",
            "Captured primary/shadow pairs compared, by alias, primary route and shadow route.",
            pair
        )?,
        agreements: register_int_counter_vec!(
            "tollgate_capture_agreements_total",
            "Compared pairs that agree (score at least 0.8).",
            pair
        )?,
        score: register_counter_vec!(
            "tollgate_capture_score_total",
            "Sum of the compared pairs' agreement scores (divide by tollgate_capture_pairs_total for the mean).",
            pair
        )?,
        deleted: register_int_counter_vec!(
            "tollgate_capture_deleted_total",
            "Captures deleted by retention, by reason (age, rows).",
            &["reason"]
        )?,
    })
}

static METRICS: OnceLock<Option<Metrics>> = OnceLock::new();

/// Capture metrics, registered on first use.
pub(crate) fn get() -> Option<&'static Metrics> {
    crate::telemetry::metrics::registered(&METRICS, "capture metrics", build)
}
