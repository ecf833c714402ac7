//! Workload metrics: requests, tokens, spend, duration and time to first
//! token split by the declared tags the operator names per family
//! (`workloads.metrics`). Each named tag key is a series set of its own,
//! labelled `tag` (the key) and `value` (a declared value, `none` for a
//! request without it, `other` for an unknown one under `unknown: other`),
//! so a family holds at most aliases × Σ (values + 2) label sets (times the
//! status classes or token types) whatever clients send. Label names are
//! fixed at registration, so a reload may change which keys and values
//! appear, never the families' shape. Registered on first use: a gateway
//! without `workloads` has none of these series.

use crate::telemetry::record::Record;
use prometheus::{
    register_counter_vec, register_histogram_vec, register_int_counter_vec, CounterVec,
    HistogramVec, IntCounterVec,
};
use std::sync::OnceLock;

pub(crate) struct Families {
    requests: IntCounterVec,
    tokens: IntCounterVec,
    cost: CounterVec,
    duration: HistogramVec,
    ttft: HistogramVec,
}

const DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];
const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0,
    3.0, 5.0, 10.0, 30.0, 60.0,
];

fn build() -> Result<Families, prometheus::Error> {
    Ok(Families {
        requests: register_int_counter_vec!(
            "tollgate_workload_requests_total",
            "Requests by alias, tag (one of workloads.metrics.requests), its value and status class.",
            &["request_model", "tag", "value", "status_class"]
        )?,
        tokens: register_int_counter_vec!(
            "tollgate_workload_tokens_total",
            "Tokens by alias, tag (workloads.metrics.tokens), value and token type (as tollgate_tokens_total).",
            &["request_model", "tag", "value", "token_type"]
        )?,
        cost: register_counter_vec!(
            "tollgate_workload_cost_usd_total",
            "Spend in US dollars by alias, tag (workloads.metrics.cost) and value.",
            &["request_model", "tag", "value"]
        )?,
        duration: register_histogram_vec!(
            "tollgate_workload_request_duration_seconds",
            "Time from request start to the end of the response, by alias, tag (workloads.metrics.duration) and value.",
            &["request_model", "tag", "value"],
            DURATION_BUCKETS.to_vec()
        )?,
        ttft: register_histogram_vec!(
            "tollgate_workload_time_to_first_token_seconds",
            "Streams: time to the first byte sent to the client, by alias, tag (workloads.metrics.ttft) and value.",
            &["request_model", "tag", "value"],
            TTFT_BUCKETS.to_vec()
        )?,
    })
}

static FAMILIES: OnceLock<Option<Families>> = OnceLock::new();

fn get() -> Option<&'static Families> {
    crate::telemetry::metrics::registered(&FAMILIES, "workload metrics", build)
}

/// Counts one finished request in the workload families its config names
/// (nothing without `workloads.metrics`).
pub(crate) fn observe(rec: &Record<'_>) {
    let Some((declared, tags)) = rec.workload else {
        return;
    };
    if declared.metrics.iter().all(Vec::is_empty) {
        return;
    }
    let Some(f) = get() else {
        return;
    };
    let model = rec.model;
    let label = |k: usize| {
        let name = declared.keys.get(k).map_or("", |key| &*key.name);
        (name, declared.label(k, tags.get(k)))
    };
    let [requests, tokens, cost, duration, ttft] = &declared.metrics;
    let class = crate::telemetry::metrics::status_class(rec.status);
    for &k in requests {
        let (tag, value) = label(k);
        f.requests
            .with_label_values(&[model, tag, value, class])
            .inc();
    }
    for &k in duration {
        let (tag, value) = label(k);
        f.duration
            .with_label_values(&[model, tag, value])
            .observe(rec.duration.as_secs_f64());
    }
    if let Some(t) = rec.ttft {
        for &k in ttft {
            let (tag, value) = label(k);
            f.ttft
                .with_label_values(&[model, tag, value])
                .observe(t.as_secs_f64());
        }
    }
    let (Some(usage), Some(source)) = (rec.usage, rec.usage_source) else {
        return;
    };
    if source == crate::accounting::UsageSource::Cache {
        return;
    }
    for &k in tokens {
        let (tag, value) = label(k);
        for (kind, n) in usage.by_kind() {
            if crate::telemetry::series::TOKEN_KINDS.contains(&kind) {
                f.tokens
                    .with_label_values(&[model, tag, value, kind])
                    .inc_by(n);
            }
        }
    }
    if let Some(c) = rec.cost_usd {
        for &k in cost {
            let (tag, value) = label(k);
            f.cost.with_label_values(&[model, tag, value]).inc_by(c);
        }
    }
}
