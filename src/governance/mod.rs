//! Governance: rate limits, concurrency, and token and spend budgets at the
//! key, team and model level.
//!
//! - `rpm` and `concurrency` are counted at admission. A concurrency slot is
//!   held by the request's [`Reservation`] and freed when it is dropped, so
//!   every end (success, error, disconnect, panic) frees it.
//! - `tpm`, token budgets and spend budgets reserve the worst case at
//!   admission (prompt estimate + `max_tokens` or the model's default,
//!   priced at the dearest route), then settle to the real usage.
//! - Every rule of every level is checked and committed under one lock, so
//!   a rejection at one level never leaves a reservation at another.

pub mod ledger;
pub mod memory;
pub mod plan;
pub mod redis;
pub mod snapshot;
pub mod window;

pub use memory::{Admitted, Rejected};
pub use plan::{Ask, Rule};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// What an admitted request holds until it is settled or dropped.
pub enum Reservation {
    Memory(memory::MemoryReservation),
    Redis(redis::RedisReservation),
    /// Admitted without the store (Redis down, `fail_open`).
    None,
}

impl Reservation {
    /// Charges the real usage in place of the reservation (more than
    /// reserved included) and frees the concurrency slots.
    pub fn settle(self, tokens: u64, usd: Option<f64>) {
        let tokens = i64::try_from(tokens).unwrap_or(i64::MAX);
        let nanos = usd.map_or(0, usd_to_nanos);
        match self {
            Reservation::Memory(mut r) => r.finish(tokens, nanos),
            Reservation::Redis(mut r) => r.finish(tokens, nanos),
            Reservation::None => {}
        }
    }
}

/// Why a request was not admitted.
pub enum Refused {
    Limit(Rejected),
    /// The shared store is unreachable and `on_error` is `fail_closed`.
    Unavailable,
}

static REDIS: OnceLock<redis::RedisStore> = OnceLock::new();

/// Picks the store named by `limits_store` (once, at start).
pub fn configure(store: &crate::config::LimitsStore) -> Result<(), String> {
    if let crate::config::LimitsStore::Redis(cfg) = store {
        let r = redis::RedisStore::new(cfg)?;
        let _ = REDIS.set(r);
    }
    Ok(())
}

/// Whether counters live in Redis.
pub fn is_shared() -> bool {
    REDIS.get().is_some()
}

/// The current value of each rule's counter (reservations in flight
/// included).
pub async fn used(rules: &[&Rule]) -> Result<Vec<i64>, String> {
    match REDIS.get() {
        None => Ok(rules.iter().map(|r| memory::global().used(&r.id)).collect()),
        Some(r) => r.used(rules).await,
    }
}

/// Admits a request of `key` to `model` against the key's, its team's and
/// the alias's rules: estimates the worst case when a token or spend rule
/// needs it, then checks and commits. `Ok(None)`: no rule applies. A
/// refusal comes with the rate headers to send.
pub async fn admit_request(
    key: &crate::runtime::KeyRt,
    model: &crate::runtime::ModelRt,
    ep: crate::proxy::endpoint::Endpoint,
    body: &[u8],
) -> Result<Option<Admitted>, (crate::error::GatewayError, RateHeaders)> {
    use crate::error::GatewayError;
    if key.rules.is_empty() && model.rules.is_empty() {
        return Ok(None);
    }
    let ask = match model.routes.first() {
        Some(first) if plan::needs_estimate(&key.rules) || plan::needs_estimate(&model.rules) => {
            Ask::worst_case(
                &first.model,
                &model.prices,
                model.reserve_output_tokens,
                ep,
                body,
            )
        }
        _ => Ask::default(),
    };
    match admit(&[&key.rules, &model.rules], ask).await {
        Ok(a) => Ok(Some(a)),
        Err(Refused::Unavailable) => Err((GatewayError::LimitsUnavailable, RateHeaders::default())),
        Err(Refused::Limit(r)) => {
            let err = if r.quota {
                GatewayError::QuotaExceeded {
                    detail: r.detail,
                    retry_after: r.retry_after_s,
                }
            } else {
                GatewayError::LimitExceeded {
                    detail: r.detail,
                    retry_after: r.retry_after_s,
                }
            };
            Err((err, r.headers))
        }
    }
}

/// Admits a request against every rule of `levels`, or refuses it.
pub async fn admit(levels: &[&[Rule]], ask: Ask) -> Result<Admitted, Refused> {
    match REDIS.get() {
        None => memory::global().admit(levels, ask).map_err(Refused::Limit),
        Some(r) => match r.admit(levels, ask, &lease_id()).await {
            Ok(Ok(a)) => Ok(a),
            Ok(Err(rejected)) => Err(Refused::Limit(rejected)),
            Err(redis::Failure::Closed) => Err(Refused::Unavailable),
            Err(redis::Failure::Open) => Ok(Admitted {
                reservation: Reservation::None,
                headers: RateHeaders::default(),
            }),
        },
    }
}

/// A process-unique id for a request's concurrency lease (client request
/// ids may repeat).
fn lease_id() -> String {
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.write_i64(window::now_ms());
        h.finish()
    });
    format!("{prefix:016x}-{:x}", NEXT.fetch_add(1, Ordering::Relaxed))
}

use serde::{Deserialize, Serialize};

/// Where a rule is configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    Key,
    Team,
    Model,
}

impl Level {
    pub fn label(self) -> &'static str {
        match self {
            Level::Key => "key",
            Level::Team => "team",
            Level::Model => "model",
        }
    }
}

/// What a counter counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    Requests,
    Tokens,
    /// Nano-dollars (1e-9 USD), so sums stay exact.
    Usd,
    Concurrency,
}

/// Nano-dollars per dollar.
pub const NANOS: f64 = 1e9;

/// USD to nano-dollars, rounded up (a reservation never rounds down).
pub fn usd_to_nanos_ceil(usd: f64) -> i64 {
    (usd * NANOS).ceil() as i64
}

/// USD to nano-dollars, rounded to the nearest.
pub fn usd_to_nanos(usd: f64) -> i64 {
    (usd * NANOS).round() as i64
}

/// The values of OpenAI's `x-ratelimit-*` headers for one kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateInfo {
    pub limit: i64,
    pub remaining: i64,
    /// Until the limit is back to its initial state.
    pub reset_ms: i64,
}

/// The tightest request and token rates that applied to a request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateHeaders {
    pub requests: Option<RateInfo>,
    pub tokens: Option<RateInfo>,
}

impl RateHeaders {
    /// Keeps the tighter of the current and `info` (the smaller remainder).
    pub fn offer(slot: &mut Option<RateInfo>, info: RateInfo) {
        match slot {
            Some(cur) if (cur.remaining, cur.limit) <= (info.remaining, info.limit) => {}
            _ => *slot = Some(info),
        }
    }

    /// The header pairs, in OpenAI's names and formats.
    pub fn pairs(&self) -> Vec<(http::HeaderName, http::HeaderValue)> {
        let mut out = Vec::new();
        for (info, names) in [
            (
                self.requests,
                [
                    "x-ratelimit-limit-requests",
                    "x-ratelimit-remaining-requests",
                    "x-ratelimit-reset-requests",
                ],
            ),
            (
                self.tokens,
                [
                    "x-ratelimit-limit-tokens",
                    "x-ratelimit-remaining-tokens",
                    "x-ratelimit-reset-tokens",
                ],
            ),
        ] {
            let Some(i) = info else { continue };
            let values = [
                i.limit.to_string(),
                i.remaining.max(0).to_string(),
                reset_text(i.reset_ms),
            ];
            for (n, v) in names.iter().zip(values) {
                if let Ok(v) = http::HeaderValue::from_str(&v) {
                    out.push((http::HeaderName::from_static(n), v));
                }
            }
        }
        out
    }
}

/// OpenAI's reset format: `120ms`, `17s`, `6m0s`.
pub fn reset_text(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let secs = (ms + 999) / 1000;
    if secs < 60 {
        format!("{secs}s")
    } else {
        format!("{}m{}s", secs / 60, secs % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_is_written_like_openai() {
        assert_eq!(reset_text(120), "120ms");
        assert_eq!(reset_text(16_200), "17s");
        assert_eq!(reset_text(360_000), "6m0s");
    }
}
