//! Prometheus metrics. Label names follow the OpenTelemetry GenAI conventions
//! where they fit (`request_model` = the alias the client asked for,
//! `response_model` = the upstream model of the route that served it,
//! `provider`, `token_type`). Label values come only from config names or
//! fixed sets, never from raw request input, so cardinality stays bounded.

use crate::telemetry::series;
use prometheus::{
    register_histogram_vec, register_int_counter, register_int_counter_vec, register_int_gauge,
    register_int_gauge_vec, CounterVec, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec,
};
use std::sync::OnceLock;

/// Label value used when a request never resolved to a configured name.
pub const NONE: &str = "-";

/// Labels that identify a route and caller.
pub const ROUTE_LABELS: &[&str] = &["request_model", "provider", "response_model", "key"];

pub struct Metrics {
    pub requests: IntCounterVec,
    pub duration: HistogramVec,
    pub ttft: HistogramVec,
    pub upstream_latency: HistogramVec,
    pub tokens: IntCounterVec,
    pub cost: CounterVec,
    pub unpriced: IntCounterVec,
    pub estimated: IntCounterVec,
    pub partial_streams: IntCounterVec,
    pub units: IntCounterVec,
    pub in_flight: IntGauge,
    pub attempts: IntCounterVec,
    pub retries: IntCounterVec,
    pub breaker_state: IntGaugeVec,
    pub errors: IntCounterVec,
    pub backend_healthy: IntGaugeVec,
    pub reloads: IntCounterVec,
    pub config_loaded: IntGauge,
    pub access_log_dropped: IntCounter,
    pub tls_cert_expiry: IntGauge,
    pub tls_handshakes: IntCounterVec,
    pub limit_rejections: IntCounterVec,
    pub budget_remaining: prometheus::GaugeVec,
    pub reservations: IntGauge,
    pub limit_store_errors: IntCounterVec,
    pub limit_fail_open: IntCounter,
    pub key_info: IntGaugeVec,
    pub route_info: IntGaugeVec,
    pub budget_limit: prometheus::GaugeVec,
    pub key_attempts: IntCounterVec,
    pub key_cooldowns: IntCounterVec,
    pub key_tokens: IntCounterVec,
    pub auth_failures: IntCounterVec,
    pub trace_spans_exported: IntCounter,
    pub trace_spans_dropped: IntCounterVec,
    pub cache_hits: IntCounterVec,
    pub cache_misses: IntCounterVec,
    pub cache_bypasses: IntCounterVec,
    pub cache_saved_tokens: IntCounterVec,
    pub cache_saved_usd: CounterVec,
    pub cache_bytes: IntGauge,
    pub cache_entries: IntGauge,
    pub cache_evictions: IntCounter,
    pub cache_store_errors: IntCounterVec,
}

/// Request duration buckets for LLM calls: 5 ms to 5 minutes.
const DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];
/// Time-to-first-token buckets: finer, 1 ms to 60 s.
const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0,
    3.0, 5.0, 10.0, 30.0, 60.0,
];

fn build() -> Result<Metrics, prometheus::Error> {
    let with = |extra: &[&'static str]| -> Vec<&'static str> {
        ROUTE_LABELS
            .iter()
            .copied()
            .chain(extra.iter().copied())
            .collect()
    };
    let m = Metrics {
        requests: register_int_counter_vec!(
            "tollgate_requests_total",
            "Requests answered, by alias, provider, upstream model, key, endpoint and status class.",
            &with(&["endpoint", "status_class"])
        )?,
        duration: register_histogram_vec!(
            "tollgate_request_duration_seconds",
            "Time from request start to the end of the response.",
            &["request_model", "provider", "endpoint"],
            DURATION_BUCKETS.to_vec()
        )?,
        ttft: register_histogram_vec!(
            "tollgate_time_to_first_token_seconds",
            "Streams: time from request start to the first response byte sent to the client.",
            &["request_model", "provider"],
            TTFT_BUCKETS.to_vec()
        )?,
        upstream_latency: register_histogram_vec!(
            "tollgate_upstream_latency_seconds",
            "Time from request start to the upstream's response headers.",
            &["provider"],
            DURATION_BUCKETS.to_vec()
        )?,
        tokens: register_int_counter_vec!(
            "tollgate_tokens_total",
            "Tokens by type: input (all prompt tokens), cached_input (cache reads, part of input), cache_write (cache writes, part of input; only when non-zero), output (all completion tokens), reasoning (part of output).",
            &with(&["token_type", "usage_source"])
        )?,
        cost: prometheus::register_counter_vec!(
            "tollgate_cost_usd_total",
            "Spend in US dollars at the route's configured price.",
            ROUTE_LABELS
        )?,
        unpriced: register_int_counter_vec!(
            "tollgate_unpriced_requests_total",
            "Requests with usage on a route that has no price: their cost is unknown, not zero.",
            ROUTE_LABELS
        )?,
        estimated: register_int_counter_vec!(
            "tollgate_usage_estimated_total",
            "Requests whose usage was estimated with the tokenizer because the upstream sent none.",
            &["request_model", "provider"]
        )?,
        partial_streams: register_int_counter_vec!(
            "tollgate_partial_streams_total",
            "Streams that ended before their end marker (cut by the upstream or the client).",
            &["request_model", "provider"]
        )?,
        units: register_int_counter_vec!(
            "tollgate_units_total",
            "Units charged at unit prices: image (images generated or edited, n), character (speech input characters), second (audio transcribed, as the answer reports).",
            &["request_model", "provider", "unit"]
        )?,
        attempts: register_int_counter_vec!(
            "tollgate_upstream_attempts_total",
            "Upstream attempts by provider and outcome (success, connect_error, connect_timeout, timeout, read_error, status_429, status_5xx, auth_error, bad_response).",
            &["provider", "outcome"]
        )?,
        retries: register_int_counter_vec!(
            "tollgate_retries_total",
            "Extra attempts: retry (another backend, same provider) or fallback (next route).",
            &["request_model", "kind"]
        )?,
        breaker_state: register_int_gauge_vec!(
            "tollgate_breaker_state",
            "Passive-health breaker per backend: 0 closed, 1 open, 2 half-open.",
            &["provider", "backend"]
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
        access_log_dropped: register_int_counter!(
            "tollgate_access_log_dropped_total",
            "Access-log lines dropped because the writer fell behind."
        )?,
        tls_cert_expiry: register_int_gauge!(
            "tollgate_tls_cert_expiry_timestamp_seconds",
            "Unix time when the served TLS certificate expires (notAfter)."
        )?,
        tls_handshakes: register_int_counter_vec!(
            "tollgate_tls_handshakes_total",
            "TLS handshakes on `listen` by result (success, failed, timeout).",
            &["result"]
        )?,
        limit_rejections: register_int_counter_vec!(
            "tollgate_limit_rejections_total",
            "Requests refused by a limit, by level (key, team, model) and reason (rpm, tpm, concurrency, budget_usd, budget_tokens).",
            &["level", "reason"]
        )?,
        budget_remaining: prometheus::register_gauge_vec!(
            "tollgate_budget_remaining",
            "What is left of each budget in its current window (USD or tokens; reservations in flight count as spent).",
            &["level", "name", "unit", "window"]
        )?,
        reservations: register_int_gauge!(
            "tollgate_limit_reservations_outstanding",
            "Admitted requests holding a token or spend reservation not yet settled."
        )?,
        limit_store_errors: register_int_counter_vec!(
            "tollgate_limit_store_errors_total",
            "Errors of the limits store, by store and operation.",
            &["store", "op"]
        )?,
        limit_fail_open: register_int_counter!(
            "tollgate_limit_fail_open_admissions_total",
            "Requests admitted without checking limits because the shared store was unreachable (on_error: fail_open)."
        )?,
        key_info: register_int_gauge_vec!(
            "tollgate_key_info",
            "1 for each configured key, with its team (\"-\" for none): join per-key series to teams.",
            &["key", "team"]
        )?,
        route_info: register_int_gauge_vec!(
            "tollgate_route_info",
            "1 for each configured route of each alias, with its provider and the provider's kind: join per-provider health to aliases.",
            &["request_model", "route", "provider", "kind"]
        )?,
        budget_limit: prometheus::register_gauge_vec!(
            "tollgate_budget_limit",
            "Each configured budget's size (USD or tokens), with the labels of tollgate_budget_remaining.",
            &["level", "name", "unit", "window"]
        )?,
        key_attempts: register_int_counter_vec!(
            "tollgate_provider_key_attempts_total",
            "Attempts per key of a provider's key pool (api_keys), by outcome (the set of tollgate_upstream_attempts_total). `key` is the key's configured name, else its index.",
            &["provider", "key", "outcome"]
        )?,
        key_cooldowns: register_int_counter_vec!(
            "tollgate_provider_key_cooldowns_total",
            "Pool keys taken out: rate_limited (a 429, for its Retry-After) or refused (401/403).",
            &["provider", "key", "reason"]
        )?,
        key_tokens: register_int_counter_vec!(
            "tollgate_provider_key_tokens_total",
            "Tokens (prompt + completion) served per pool key: what its limits.tpm counts.",
            &["provider", "key"]
        )?,
        auth_failures: register_int_counter_vec!(
            "tollgate_provider_auth_failures_total",
            "Failures to get a cloud provider's credentials: sts, token_file (Bedrock web identity) or token_endpoint (Vertex OAuth). Each fails its attempt like a connect failure.",
            &["provider", "source"]
        )?,
        trace_spans_exported: register_int_counter!(
            "tollgate_trace_spans_exported_total",
            "Trace spans the OTLP collector accepted."
        )?,
        trace_spans_dropped: register_int_counter_vec!(
            "tollgate_trace_spans_dropped_total",
            "Trace spans dropped, never exported: queue_full (the export queue was full: the collector is slow or down) or export_failed (the collector refused them or could not be reached).",
            &["reason"]
        )?,
        cache_hits: register_int_counter_vec!(
            "tollgate_cache_hits_total",
            "Requests answered from the response cache, by alias.",
            &["request_model"]
        )?,
        cache_misses: register_int_counter_vec!(
            "tollgate_cache_misses_total",
            "Requests to a cached alias that found no entry (or whose entry could not be read) and went upstream, by alias.",
            &["request_model"]
        )?,
        cache_bypasses: register_int_counter_vec!(
            "tollgate_cache_bypasses_total",
            "Requests to a cached alias that skipped the cache (Cache-Control: no-cache or no-store), by alias.",
            &["request_model"]
        )?,
        cache_saved_tokens: register_int_counter_vec!(
            "tollgate_cache_saved_tokens_total",
            "Provider tokens not spent thanks to cache hits (the stored answer's usage), by alias and token type (input, output).",
            &["request_model", "token_type"]
        )?,
        cache_saved_usd: prometheus::register_counter_vec!(
            "tollgate_cache_saved_usd_total",
            "Spend not incurred thanks to cache hits (the stored answer's cost at its route's price), by alias.",
            &["request_model"]
        )?,
        cache_bytes: register_int_gauge!(
            "tollgate_cache_bytes",
            "Bytes the response cache holds (bodies plus a fixed overhead per entry)."
        )?,
        cache_entries: register_int_gauge!(
            "tollgate_cache_entries",
            "Entries the response cache holds."
        )?,
        cache_evictions: register_int_counter!(
            "tollgate_cache_evictions_total",
            "Cache entries evicted to keep the cache within cache.max_bytes."
        )?,
        cache_store_errors: register_int_counter_vec!(
            "tollgate_cache_store_errors_total",
            "Failures of the shared response-cache store (a failed look-up is served as a miss), by store and operation (get, put, decode).",
            &["store", "op"]
        )?,
    };
    // Both results exist from the start, so the first failed reload is an
    // increase from 0 that rate() and increase() can see.
    for result in ["success", "failed"] {
        m.reloads.with_label_values(&[result]);
    }
    for reason in ["queue_full", "export_failed"] {
        m.trace_spans_dropped.with_label_values(&[reason]);
    }
    Ok(m)
}

static METRICS: OnceLock<Option<Metrics>> = OnceLock::new();

/// The process-wide metrics, registered on first use. `None` only if
/// registration failed, which is logged once; the gateway keeps serving.
pub fn get() -> Option<&'static Metrics> {
    crate::telemetry::metrics::registered(&METRICS, "metrics", build)
}

/// A metric set registered on first use, kept in `cell`: `None` only if
/// registration failed, which is logged once (naming `what`); the gateway
/// keeps serving.
pub fn registered<M>(
    cell: &'static OnceLock<Option<M>>,
    what: &str,
    build: fn() -> prometheus::Result<M>,
) -> Option<&'static M> {
    cell.get_or_init(|| match build() {
        Ok(m) => Some(m),
        Err(e) => {
            log::error!("registering {what} failed: {e}");
            None
        }
    })
    .as_ref()
}

/// Publishes what dashboards and alerts join other series with: `cfg`'s
/// keys (`tollgate_key_info`) and routes (`tollgate_route_info`), each at 1,
/// and the size of each key and team budget (`tollgate_budget_limit`),
/// dropping those of the previous config. Called at start and after every
/// successful reload.
pub fn export_config(cfg: &crate::config::Config) {
    let Some(m) = get() else {
        return;
    };
    m.key_info.reset();
    for k in &cfg.keys {
        let team = k.team.as_deref().unwrap_or(NONE);
        m.key_info
            .with_label_values(&[k.name.as_str(), team])
            .set(1);
    }
    m.route_info.reset();
    for (alias, model) in &cfg.models {
        for r in &model.routes {
            let kind = cfg
                .providers
                .get(&r.provider)
                .map_or(NONE, |p| kind_label(p.kind));
            let name = crate::config::routing::route_name(r);
            m.route_info
                .with_label_values(&[alias.as_str(), name.as_str(), r.provider.as_str(), kind])
                .set(1);
        }
    }
    m.budget_limit.reset();
    let keys = cfg.keys.iter().map(|k| ("key", &k.name, &k.budgets));
    let teams = cfg.teams.iter().map(|(n, t)| ("team", n, &t.budgets));
    for (level, name, budgets) in keys.chain(teams) {
        for b in budgets {
            let (unit, size) = match (b.usd, b.tokens) {
                (Some(usd), _) => ("usd", usd),
                (None, Some(tokens)) => ("tokens", tokens as f64),
                (None, None) => continue,
            };
            let window = b.window.to_string();
            m.budget_limit
                .with_label_values(&[level, name.as_str(), unit, window.as_str()])
                .set(size);
        }
    }
}

/// The `kind` label of a provider: its config spelling.
fn kind_label(kind: crate::config::ProviderKind) -> &'static str {
    kind.name()
}

/// Counts one finished request from its record (the one the access log
/// writes): requests, durations, errors, tokens, spend and the estimate
/// and partial-stream counters.
pub fn observe(rec: &crate::telemetry::record::Record<'_>) {
    let Some(m) = get() else {
        return;
    };
    let (model, provider) = (rec.model, rec.provider);
    if let Some(code) = rec.error {
        m.errors.with_label_values(&[code]).inc();
    }
    match rec.cache {
        Some("miss") => m.cache_misses.with_label_values(&[model]).inc(),
        Some("bypass") => m.cache_bypasses.with_label_values(&[model]).inc(),
        _ => {}
    }
    let usage = match (rec.usage, rec.usage_source) {
        (Some(u), Some(s)) => Some((u, s)),
        _ => None,
    };
    let labels = series::Labels {
        model,
        provider,
        upstream_model: rec.upstream_model,
        key: rec.key,
        endpoint: rec.endpoint,
        status_class: status_class(rec.status),
        source: usage.map_or("", |(_, s)| s.label()),
    };
    series::with(&labels, |s| {
        s.requests(m).inc();
        s.duration(m).observe(rec.duration.as_secs_f64());
        if let Some(u) = rec.upstream {
            s.upstream(m).observe(u.as_secs_f64());
        }
        if let Some(t) = rec.ttft {
            s.ttft(m).observe(t.as_secs_f64());
        }
        let Some((usage, source)) = usage else {
            return;
        };
        if source == crate::accounting::UsageSource::Cache {
            return;
        }
        for (kind, n) in usage.by_kind() {
            if let Some(c) = s.tokens(m, kind) {
                c.inc_by(n);
            }
        }
        match rec.cost_usd {
            Some(c) => s.cost(m).inc_by(c),
            None => s.unpriced(m).inc(),
        }
        for (unit, n) in [
            ("image", rec.units.images),
            ("character", rec.units.characters),
            ("second", rec.units.seconds),
        ] {
            if n > 0 {
                m.units
                    .with_label_values(&[model, provider, unit])
                    .inc_by(n);
            }
        }
        if source != crate::accounting::UsageSource::Reported {
            s.estimated(m).inc();
        }
        if rec.partial {
            s.partial(m).inc();
        }
    });
    crate::telemetry::workload::observe(rec);
    let Some((usage, crate::accounting::UsageSource::Cache)) = usage else {
        return;
    };
    // A hit: no provider tokens, no spend; what it saved instead.
    m.cache_hits.with_label_values(&[model]).inc();
    for (kind, n) in [("input", usage.prompt), ("output", usage.completion)] {
        m.cache_saved_tokens
            .with_label_values(&[model, kind])
            .inc_by(n);
    }
    if let Some(c) = rec.saved_usd {
        m.cache_saved_usd.with_label_values(&[model]).inc_by(c);
    }
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use prometheus::core::Collector;

    fn config(extra_key: &str) -> crate::config::Config {
        let yaml = format!(
            r#"
listen: "127.0.0.1:1"
providers:
  m: {{ kind: mock }}
  up: {{ kind: openai, base_url: "http://127.0.0.1:9/v1", api_key: "sk-test-export" }}
models:
  chat:
    routes:
      - {{ provider: m, model: mock-1 }}
      - {{ provider: up, model: gpt-x, name: hosted }}
teams:
  research: {{ budgets: [ {{ usd: 12.5, window: day }}, {{ tokens: 1000, window: 30d }} ] }}
keys:
  - {{ name: alice, key: "tg-export-alice-1", team: research, budgets: [ {{ usd: 2, window: month }} ] }}
{extra_key}"#
        );
        crate::config::parse_str(&yaml, |_| None, std::path::Path::new(".")).unwrap()
    }

    fn series(c: &impl Collector) -> Vec<(Vec<(String, String)>, f64)> {
        let mut out = Vec::new();
        for family in c.collect() {
            for m in family.get_metric() {
                let labels: Vec<(String, String)> = m
                    .get_label()
                    .iter()
                    .map(|l| (l.name().to_string(), l.value().to_string()))
                    .collect();
                out.push((labels, m.get_gauge().get_value()));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn export_config_publishes_keys_routes_and_budget_sizes_and_drops_stale_ones() {
        let m = get().unwrap();
        export_config(&config(r#"  - { name: bob, key: "tg-export-bob-22" }"#));
        assert_eq!(
            series(&m.key_info),
            [
                (labels(&[("key", "alice"), ("team", "research")]), 1.0),
                (labels(&[("key", "bob"), ("team", "-")]), 1.0),
            ]
        );
        assert_eq!(
            series(&m.route_info),
            [
                (
                    labels(&[
                        ("kind", "mock"),
                        ("provider", "m"),
                        ("request_model", "chat"),
                        ("route", "m/mock-1")
                    ]),
                    1.0
                ),
                (
                    labels(&[
                        ("kind", "openai"),
                        ("provider", "up"),
                        ("request_model", "chat"),
                        ("route", "hosted")
                    ]),
                    1.0
                ),
            ]
        );
        let budgets = series(&m.budget_limit);
        let size = |level: &str, name: &str, unit: &str, window: &str| {
            let want = labels(&[
                ("level", level),
                ("name", name),
                ("unit", unit),
                ("window", window),
            ]);
            budgets.iter().find(|(l, _)| *l == want).map(|(_, v)| *v)
        };
        assert_eq!(size("key", "alice", "usd", "month"), Some(2.0));
        assert_eq!(size("team", "research", "usd", "day"), Some(12.5));
        assert_eq!(size("team", "research", "tokens", "30d"), Some(1000.0));
        assert_eq!(budgets.len(), 3);

        // A reload without bob: his series goes.
        export_config(&config(""));
        assert_eq!(
            series(&m.key_info),
            [(labels(&[("key", "alice"), ("team", "research")]), 1.0)]
        );
    }
}
