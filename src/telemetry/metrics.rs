//! Prometheus metrics. Label values come only from config names or fixed
//! sets, never from raw request input, so cardinality stays bounded.

use prometheus::{
    register_histogram_vec, register_int_counter_vec, register_int_gauge,
    register_int_gauge_vec, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec,
};
use std::sync::OnceLock;

/// Label value used when a request never resolved to a configured name.
pub const NONE: &str = "-";

pub struct Metrics {
    pub requests: IntCounterVec,
    pub duration: HistogramVec,
    pub upstream_latency: HistogramVec,
    pub in_flight: IntGauge,
    pub errors: IntCounterVec,
    pub backend_healthy: IntGaugeVec,
    pub reloads: IntCounterVec,
    pub config_loaded: IntGauge,
}

/// Latency buckets for LLM calls: 5 ms to 5 minutes.
const DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

fn build() -> Result<Metrics, prometheus::Error> {
    Ok(Metrics {
        requests: register_int_counter_vec!(
            "tollgate_requests_total",
            "Requests answered, by model alias, provider, upstream model, key name, endpoint and status class.",
            &["model", "provider", "upstream_model", "key", "endpoint", "status_class"]
        )?,
        duration: register_histogram_vec!(
            "tollgate_request_duration_seconds",
            "Time from request start to the end of the response.",
            &["model", "provider", "endpoint"],
            DURATION_BUCKETS.to_vec()
        )?,
        upstream_latency: register_histogram_vec!(
            "tollgate_upstream_latency_seconds",
            "Time from request start to the upstream's response headers.",
            &["provider"],
            DURATION_BUCKETS.to_vec()
        )?,
        in_flight: register_int_gauge!(
            "tollgate_requests_in_flight",
            "Requests being handled now."
        )?,
        errors: register_int_counter_vec!(
            "tollgate_errors_total",
            "Errors answered by the gateway, by error code.",
            &["code"]
        )?,
        backend_healthy: register_int_gauge_vec!(
            "tollgate_upstream_backend_healthy",
            "1 when the backend passes health checks, else 0.",
            &["provider", "backend"]
        )?,
        reloads: register_int_counter_vec!(
            "tollgate_config_reloads_total",
            "Config reloads by result (success, failed).",
            &["result"]
        )?,
        config_loaded: register_int_gauge!(
            "tollgate_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful config load."
        )?,
    })
}

static METRICS: OnceLock<Option<Metrics>> = OnceLock::new();

/// The process-wide metrics, registered on first use. `None` only if
/// registration failed, which is logged once; the gateway keeps serving.
pub fn get() -> Option<&'static Metrics> {
    METRICS
        .get_or_init(|| match build() {
            Ok(m) => Some(m),
            Err(e) => {
                log::error!("registering metrics failed: {e}");
                None
            }
        })
        .as_ref()
}

/// `2xx`, `4xx`…; a fixed set.
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "none",
    }
}
