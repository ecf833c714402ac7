//! The key store's metrics: whether its database answers, how many secrets
//! the snapshot holds, the change it reflects, and failed database calls.

use prometheus::{register_int_counter, register_int_gauge, IntCounter, IntGauge};
use std::sync::OnceLock;

pub(crate) struct Metrics {
    /// 1 while the last database call succeeded, 0 while it is unreachable.
    pub(crate) up: IntGauge,
    /// Secrets (digests) in the snapshot the request path reads.
    pub(crate) keys: IntGauge,
    /// The change counter value the snapshot reflects.
    pub(crate) seq: IntGauge,
    /// Database calls that failed because the database was unreachable.
    pub(crate) errors: IntCounter,
}

fn build() -> prometheus::Result<Metrics> {
    Ok(Metrics {
        up: register_int_gauge!(
            "tollgate_key_store_up",
            "1 while the key store's database answers, 0 while it is unreachable (keys are then served from the last snapshot and admin writes get 503)."
        )?,
        keys: register_int_gauge!(
            "tollgate_key_store_secrets",
            "Key secrets (SHA-256 digests) in the key store snapshot the request path reads."
        )?,
        seq: register_int_gauge!(
            "tollgate_key_store_change",
            "The key store change counter value this instance has caught up to."
        )?,
        errors: register_int_counter!(
            "tollgate_key_store_errors_total",
            "Key store database calls that failed because the database was unreachable."
        )?,
    })
}

static METRICS: OnceLock<Option<Metrics>> = OnceLock::new();

/// The key store's metrics, registered on first use.
pub(crate) fn get() -> Option<&'static Metrics> {
    crate::telemetry::metrics::registered(&METRICS, "key store metrics", build)
}
