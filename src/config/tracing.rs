//! `tracing:`: OpenTelemetry spans exported over OTLP/HTTP (protobuf).
//! Absent: no spans, no `traceparent` read or sent.

use super::duration::HumanDuration;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Where spans go and how many.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TracingSection {
    /// The collector's OTLP/HTTP URL, e.g. `http://otel-collector:4318`:
    /// spans are posted to `{endpoint}/v1/traces` (a URL that already ends
    /// in `/v1/traces` is used as it is).
    pub endpoint: String,
    /// Share of requests traced, 0 to 1, decided by the trace id (the
    /// OpenTelemetry `TraceIdRatioBased` rule). Default 1.
    #[serde(default = "default_ratio")]
    pub sample_ratio: f64,
    /// A client's `traceparent` decides for its request (its sampled flag),
    /// as OpenTelemetry's `parentbased_traceidratio` sampler does. `false`:
    /// `sample_ratio` decides for every request. Default true.
    #[serde(default = "yes")]
    pub parent_based: bool,
    /// Headers sent to the collector (e.g. an API key, usually
    /// `${ENV_VAR}`). Never logged or shown by `/admin/config`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The `service.name` resource attribute. Default `tollgate`.
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// More resource attributes, e.g. `deployment.environment.name: prod`.
    #[serde(default)]
    pub resource: BTreeMap<String, String>,
    /// PEM file of extra CA certificates trusted for an https:// endpoint.
    #[serde(default)]
    pub ca_file: Option<String>,
    /// Spans waiting for export, at most; past it new spans are dropped
    /// (and counted in `tollgate_trace_spans_dropped_total`). Default 2048.
    #[serde(default = "default_queue_size")]
    pub queue_size: usize,
    /// Spans per export request, at most. Default 512.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// How often queued spans are exported. Default 1s.
    #[serde(default = "default_export_interval")]
    pub export_interval: HumanDuration,
    /// Longest one export may take, retries included. Default 10s.
    #[serde(default = "default_export_timeout")]
    pub export_timeout: HumanDuration,
}

fn yes() -> bool {
    true
}

fn default_ratio() -> f64 {
    1.0
}

fn default_service_name() -> String {
    "tollgate".into()
}

fn default_queue_size() -> usize {
    2048
}

fn default_batch_size() -> usize {
    512
}

fn default_export_interval() -> HumanDuration {
    HumanDuration::from_secs(1)
}

fn default_export_timeout() -> HumanDuration {
    HumanDuration::from_secs(10)
}

/// Headers the exporter sets itself.
const RESERVED_HEADERS: &[&str] = &[
    "content-type",
    "content-length",
    "content-encoding",
    "host",
    "transfer-encoding",
    "connection",
];

/// What is wrong with `tracing:`, each `(field, what to fix)`. Messages
/// never echo a header's value (it may be a secret).
pub(crate) fn problems(t: &TracingSection) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut add = |f: &str, m: String| out.push((format!("tracing.{f}"), m));
    match super::url::parse_base_url(&t.endpoint) {
        Ok(u) => {
            if t.ca_file.is_some() && !u.tls {
                add("ca_file", "is only used with an https:// endpoint".into());
            }
        }
        Err(e) => add(
            "endpoint",
            format!("{e}; use the collector's OTLP/HTTP URL, e.g. http://127.0.0.1:4318"),
        ),
    }
    if !(0.0..=1.0).contains(&t.sample_ratio) {
        add("sample_ratio", "must be between 0 and 1".into());
    }
    for (name, value) in &t.headers {
        let field = format!("headers.{name}");
        if http::HeaderName::from_bytes(name.as_bytes()).is_err()
            || http::HeaderValue::from_str(value).is_err()
        {
            add(&field, "is not a valid header name and value".into());
        } else if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
            add(&field, "is set by the exporter itself; remove it".into());
        }
    }
    let name = t.service_name.trim();
    if name.is_empty() || name.len() > 255 {
        add("service_name", "must be 1 to 255 characters".into());
    }
    for (k, v) in &t.resource {
        if k.trim().is_empty() || k.len() > 255 || v.len() > 4096 {
            add(
                &format!("resource.{k}"),
                "needs a name of 1 to 255 characters and a value of at most 4096".into(),
            );
        } else if k == "service.name" {
            add(
                &format!("resource.{k}"),
                "is set by `service_name`; remove it here".into(),
            );
        }
    }
    if let Some(ca) = &t.ca_file {
        if let Err(e) = crate::ca_file::load_ca_file(ca) {
            add("ca_file", e);
        }
    }
    if !(1..=1_000_000).contains(&t.queue_size) {
        add("queue_size", "must be between 1 and 1000000".into());
    }
    if t.batch_size == 0 || t.batch_size > t.queue_size.max(1) {
        add(
            "batch_size",
            "must be at least 1 and at most queue_size".into(),
        );
    }
    let interval = t.export_interval.get();
    if interval < std::time::Duration::from_millis(10)
        || interval > std::time::Duration::from_secs(60)
    {
        add("export_interval", "must be between 10ms and 60s".into());
    }
    let timeout = t.export_timeout.get();
    if timeout < std::time::Duration::from_millis(100)
        || timeout > std::time::Duration::from_secs(60)
    {
        add("export_timeout", "must be between 100ms and 60s".into());
    }
    out
}

#[cfg(test)]
mod tests {

    fn parse(yaml: &str) -> Result<crate::config::Config, crate::config::ConfigError> {
        let text = format!(
            "listen: \"127.0.0.1:8080\"\nproviders:\n  m: {{ kind: mock }}\nmodels:\n  a: {{ routes: [ {{ provider: m, model: x }} ] }}\n{yaml}"
        );
        crate::config::parse_str(
            &text,
            |k| (k == "OTLP_KEY").then(|| "secret-otlp-key-value".to_string()),
            std::path::Path::new("/etc/tollgate"),
        )
    }

    #[test]
    fn defaults_and_the_smallest_section() {
        let cfg = parse("tracing: { endpoint: \"http://127.0.0.1:4318\" }").unwrap();
        let t = cfg.tracing.unwrap();
        assert_eq!(t.sample_ratio, 1.0);
        assert!(t.parent_based);
        assert_eq!(t.service_name, "tollgate");
        assert_eq!((t.queue_size, t.batch_size), (2048, 512));
        assert!(parse("").unwrap().tracing.is_none(), "off when absent");
    }

    #[test]
    fn every_problem_names_its_field_and_no_secret() {
        let err = parse(
            r#"tracing:
  endpoint: "ftp://collector"
  sample_ratio: 1.5
  headers: { "bad header": "x", content-type: "x", authorization: "${OTLP_KEY}\n" }
  service_name: ""
  queue_size: 0
  batch_size: 10
  export_interval: 1ms
  export_timeout: 2m
  resource: { service.name: x }
"#,
        )
        .unwrap_err()
        .to_string();
        for field in [
            "tracing.endpoint",
            "tracing.sample_ratio",
            "tracing.headers.bad header",
            "tracing.headers.content-type",
            "tracing.service_name",
            "tracing.queue_size",
            "tracing.batch_size",
            "tracing.export_interval",
            "tracing.export_timeout",
            "tracing.resource.service.name",
        ] {
            assert!(err.contains(field), "{field} missing from:\n{err}");
        }
        assert!(!err.contains("secret-otlp-key-value"), "{err}");
        let unknown = parse("tracing: { endpoint: \"http://c:4318\", sampling: 1 }")
            .unwrap_err()
            .to_string();
        assert!(
            unknown.contains("tracing") && unknown.contains("sampling"),
            "{unknown}"
        );
        let creds = parse("tracing: { endpoint: \"http://u:pw@c:4318\" }")
            .unwrap_err()
            .to_string();
        assert!(
            creds.contains("tracing.endpoint") && !creds.contains("pw@"),
            "{creds}"
        );
    }
}
