//! Observability: Prometheus metrics, the JSON access log and
//! OpenTelemetry traces.

pub mod access_log;
pub(crate) mod endpoint;
pub mod metrics;
pub(crate) mod record;
pub(crate) mod series;
pub(crate) mod trace;
pub(crate) mod workload;
