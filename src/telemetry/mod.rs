//! Observability: Prometheus metrics and the JSON access log.

pub mod access_log;
pub(crate) mod endpoint;
pub mod metrics;
pub(crate) mod record;
