//! Governance: rate limits, concurrency, and token and spend budgets at the
//! key, team and model level.
//!
//! - Admission runs in two steps. **Before the body is read**, the key's and
//!   team's `rpm` and `concurrency` are counted, and their token and spend
//!   limits are checked for one unit (a spent budget refuses at once), so a
//!   key over its limits gets its 429 before the gateway reads, parses or
//!   tokenizes anything. **After the body**, the rest (the key's and team's
//!   token and spend limits, and every limit of the alias named in the body)
//!   is checked and committed.
//! - The invariant: a request refused by a limit holds nothing anywhere.
//!   Each step checks all its rules and then commits to all or none (under
//!   one lock in memory, in one script in Redis), and a refusal in the
//!   second step gives back what the first took (the slot and the `rpm`
//!   count).
//! - A concurrency slot is held by the request's [`Reservation`] and freed
//!   when it is dropped, so every end (success, error, disconnect, panic)
//!   frees it.
//! - `tpm`, token budgets and spend budgets reserve the worst case (prompt
//!   estimate times the route's learned token ratio, see [`ratio`], plus
//!   `max_tokens` or the model's default, priced at the dearest route),
//!   then settle to the real usage.
//! - Every amount is within 0 and [`plan::COUNTER_MAX`]; all arithmetic on
//!   counters, reservations and costs saturates there.

pub(crate) mod ledger;
pub mod memory;
pub mod plan;
pub(crate) mod ratio;
pub mod redis;
pub mod snapshot;
pub(crate) mod window;

pub use memory::{Admitted, Rejected};
pub use plan::{Ask, Rule, WorkloadRule, COUNTER_MAX};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

/// What an admitted request holds until it is settled or dropped.
pub struct Reservation {
    hold: Hold,
    /// What the settle teaches the token ratio (`None`: nothing).
    learn: Option<Learn>,
    /// The concurrency lease id (Redis), shared by both admission steps.
    lease: String,
}

enum Hold {
    Memory(memory::MemoryReservation),
    Redis(redis::RedisReservation),
    /// Admitted without the store (Redis down, `fail_open`).
    None,
}

struct Learn {
    ratios: ratio::Ratios,
    /// The prompt estimate, tokenized whole.
    prompt: u64,
}

/// A settle still to send to the limits store (see
/// [`Reservation::settle_later`]).
#[must_use = "a pending settle holds its slots until sent"]
pub struct Pending(redis::Settle);

impl Pending {
    /// Sends it (bounded by the store's response timeout).
    pub async fn send(self) {
        self.0.send().await;
    }
}

impl Reservation {
    pub(crate) fn memory(r: memory::MemoryReservation) -> Reservation {
        Reservation {
            hold: Hold::Memory(r),
            learn: None,
            lease: String::new(),
        }
    }

    pub(crate) fn redis(r: redis::RedisReservation, lease: &str) -> Reservation {
        Reservation {
            hold: Hold::Redis(r),
            learn: None,
            lease: lease.to_string(),
        }
    }

    /// Admitted without the store (`fail_open`).
    pub fn none() -> Reservation {
        Reservation {
            hold: Hold::None,
            learn: None,
            lease: String::new(),
        }
    }

    /// Charges the real usage in place of the reservation (more than
    /// reserved included) and frees the concurrency slots. `tokens` and the
    /// cost are clamped to [`COUNTER_MAX`]; a cost that is not a number is
    /// charged at the ceiling, never at 0.
    pub fn settle(self, tokens: u64, usd: Option<f64>) {
        self.finish(plan::amount_of(tokens), usd.map_or(0, usd_to_nanos), false);
    }

    /// [`Reservation::settle`], with a Redis store's call handed back to be
    /// awaited at the end of the request (the memory store settles here):
    /// the connection reads its next request only once the slots are free,
    /// so a client sending one request after another, with a concurrency
    /// limit of 1, is never refused its own finished request's slot.
    pub fn settle_later(mut self, tokens: u64, usd: Option<f64>) -> Option<Pending> {
        let (tokens, nanos) = (plan::amount_of(tokens), usd.map_or(0, usd_to_nanos));
        if let Hold::Redis(r) = &mut self.hold {
            return r.take(tokens, nanos, false).map(Pending);
        }
        self.finish(tokens, nanos, false);
        None
    }

    /// Gives back everything, the `rpm` count included: a later limit
    /// refused the request. Waits for the store, so the refusal is
    /// answered once the slot is back.
    async fn revoke(mut self) {
        match &mut self.hold {
            Hold::Memory(r) => r.finish(0, 0, true),
            Hold::Redis(r) => r.finish_now(0, 0, true).await,
            Hold::None => {}
        }
    }

    fn finish(mut self, tokens: i64, nanos: i64, revoke: bool) {
        match &mut self.hold {
            Hold::Memory(r) => r.finish(tokens, nanos, revoke),
            Hold::Redis(r) => r.finish(tokens, nanos, revoke),
            Hold::None => {}
        }
    }

    /// Takes over what `other` holds, so one settle covers both steps.
    fn absorb(&mut self, other: Reservation) {
        let Reservation { hold, learn, .. } = other;
        if learn.is_some() {
            self.learn = learn;
        }
        self.hold = match (std::mem::replace(&mut self.hold, Hold::None), hold) {
            (Hold::Memory(mut a), Hold::Memory(b)) => {
                a.absorb(b);
                Hold::Memory(a)
            }
            (Hold::Redis(mut a), Hold::Redis(b)) => {
                a.absorb(b);
                Hold::Redis(a)
            }
            (Hold::None, b) => b,
            (a, Hold::None) => a,
            // One store per process: never happens. Keep both released.
            (a, b) => {
                drop(b);
                a
            }
        };
    }

    /// Teaches route `route` (index into the alias's routes) the ratio of
    /// its reported prompt to our estimate, from a request that settled
    /// with reported, complete usage.
    pub fn learn(
        &self,
        route: Option<usize>,
        settled: Option<&crate::accounting::settle::Settled>,
    ) {
        let (Some(l), Some(route), Some(s)) = (&self.learn, route, settled) else {
            return;
        };
        if s.source == crate::accounting::UsageSource::Reported && !s.partial {
            l.ratios.observe(route, l.prompt, s.usage.prompt);
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

/// Sets `tollgate_budget_remaining` of every budget among `rules` from
/// the active store (memory or Redis): the export step after a runtime is
/// built, at start and after each reload (compiling rules reads no store).
/// A store that cannot be read leaves the gauges as they were.
pub async fn export_remaining(rules: &[&Rule]) {
    let budgets: Vec<&Rule> = rules
        .iter()
        .copied()
        .filter(|r| r.gauge.is_some())
        .collect();
    if budgets.is_empty() {
        return;
    }
    match used(&budgets).await {
        Ok(used) => {
            for (r, u) in budgets.iter().zip(used) {
                r.show_remaining(u);
            }
        }
        Err(e) => log::warn!("reading the limits store for tollgate_budget_remaining failed: {e}"),
    }
}

/// [`export_remaining`] for callers on a plain thread (the key store's
/// snapshot builder), from the memory store. With Redis it does nothing:
/// those keys' gauges are set by their first settlement.
pub fn export_remaining_local(rules: &[Rule]) {
    if is_shared() {
        return;
    }
    for r in rules.iter().filter(|r| r.gauge.is_some()) {
        r.show_remaining(memory::global().used(&r.id));
    }
}

/// The current value of each rule's counter (reservations in flight
/// included).
pub async fn used(rules: &[&Rule]) -> Result<Vec<i64>, String> {
    match REDIS.get() {
        None => Ok(rules.iter().map(|r| memory::global().used(&r.id)).collect()),
        Some(r) => r.used(rules).await,
    }
}

/// A refusal: the error to answer and the rate headers it carries.
pub type Refusal = (crate::base::error::GatewayError, RateHeaders);

/// The first admission step, before the body is read: counts the key's
/// and team's `rpm` and `concurrency`, and checks their token and spend
/// limits for one unit (with Redis, only along with rates or slots, so it
/// costs no round trip of its own). `Ok(None)`: nothing was taken.
pub async fn admit_early(key_rules: &[Rule]) -> Result<Option<Admitted>, Refusal> {
    if key_rules.is_empty() {
        return Ok(None);
    }
    let early: Vec<&Rule> = key_rules.iter().filter(|r| r.is_early()).collect();
    let check: Vec<&Rule> = key_rules.iter().filter(|r| !r.is_early()).collect();
    if early.is_empty() {
        if !is_shared() {
            if let Some(r) = memory::global().check(&[], &check) {
                return Err(refusal(Refused::Limit(r)));
            }
        }
        return Ok(None);
    }
    let lease = lease_id();
    admit_rules(&early, &check, Ask::default(), &lease)
        .await
        .map(Some)
        .map_err(refusal)
}

/// Gives back what the first step took (its `rpm` count included): the
/// request is answered without its second step (a cache hit that does not
/// count against rate limits).
pub async fn give_back(early: Option<Admitted>) {
    if let Some(a) = early {
        a.reservation.revoke().await;
    }
}

/// Bodies larger than this are estimated on a blocking thread, off the
/// event loop (parsing and tokenizing them can take milliseconds).
pub const INLINE_ESTIMATE_BYTES: usize = 16 * 1024;

/// What the second admission step needs to know of an alias.
pub struct AliasLimits<'a> {
    /// The alias's own limits (all callers together).
    pub rules: &'a [Rule],
    /// The model whose tokenizer estimates the prompt (the first route's).
    pub tokenizer: Option<&'a Arc<str>>,
    /// The routes' prices: a reservation is priced at the dearest.
    pub prices: &'a [crate::config::Price],
    /// Completion tokens reserved when the body sets no maximum.
    pub reserve_output_tokens: u64,
    /// The routes' learned prompt-token ratios.
    pub ratios: &'a ratio::Ratios,
}

/// The second admission step: admits a request of a key (`key_rules`, and
/// the rules of the request's workloads, `workload_rules`, all counted
/// here since the tags may come from the body) to an alias (`model`), that
/// will try the routes of `order`, against the key's and team's token and
/// spend limits and every limit of the alias: estimates the worst case
/// when a token or spend rule needs it, then checks and commits. `early`
/// is what the first step took; it is merged into the result, or given
/// back on a refusal. `Ok(None)`: no rule applies. A refusal comes with
/// the rate headers to send.
pub async fn admit_request(
    key_rules: &[Rule],
    workload_rules: &[&Rule],
    model: AliasLimits<'_>,
    order: &[usize],
    ep: crate::base::endpoint::Endpoint,
    body: &bytes::Bytes,
    early: Option<Admitted>,
) -> Result<Option<Admitted>, Refusal> {
    use crate::base::error::GatewayError;
    let rules: Vec<&Rule> = key_rules
        .iter()
        .filter(|r| !r.is_early())
        .chain(workload_rules.iter().copied())
        .chain(model.rules.iter())
        .collect();
    if rules.is_empty() {
        return Ok(early);
    }
    let needs = rules
        .iter()
        .any(|r| matches!(r.id.metric, Metric::Tokens | Metric::Usd));
    if needs && !is_shared() {
        // In memory a look costs nothing: a request the alias's rates or
        // slots (or a spent budget) refuse is refused before tokenizing.
        let cheap: Vec<&Rule> = rules
            .iter()
            .copied()
            .filter(|r| matches!(r.id.metric, Metric::Requests | Metric::Concurrency))
            .collect();
        let costly: Vec<&Rule> = rules
            .iter()
            .copied()
            .filter(|r| !matches!(r.id.metric, Metric::Requests | Metric::Concurrency))
            .collect();
        if let Some(r) = memory::global().check(&cheap, &costly) {
            return Err(refused(early, refusal(Refused::Limit(r))).await);
        }
    }
    let mut learn = None;
    let ask = match model.tokenizer {
        Some(tokenizer) if needs => {
            let factor = model.ratios.factor(order);
            let tokenizer = tokenizer.clone();
            let prices = model.prices.to_vec();
            let output = model.reserve_output_tokens;
            let worst =
                move |body: &[u8]| plan::worst_case(&tokenizer, &prices, output, ep, body, factor);
            let estimated = if body.len() > INLINE_ESTIMATE_BYTES {
                let body = body.clone();
                tokio::task::spawn_blocking(move || worst(&body))
                    .await
                    .map_err(|_| GatewayError::Internal)
            } else {
                Ok(worst(body))
            };
            let w = match estimated {
                Ok(Ok(w)) => w,
                Ok(Err(e)) => {
                    let err = GatewayError::InvalidRequest {
                        message: e.message,
                        param: e.param,
                    };
                    // A body error, like any other 400: the rpm count stays.
                    let headers = early.as_ref().map(|a| a.headers).unwrap_or_default();
                    return Err((err, headers));
                }
                Err(err) => return Err((err, RateHeaders::default())),
            };
            if w.exact {
                learn = Some(Learn {
                    ratios: model.ratios.clone(),
                    prompt: w.prompt,
                });
            }
            w.ask
        }
        _ => Ask::default(),
    };
    let lease = early
        .as_ref()
        .map(|a| a.reservation.lease.clone())
        .filter(|l| !l.is_empty())
        .unwrap_or_else(lease_id);
    match admit_rules(&rules, &[], ask, &lease).await {
        Ok(mut a) => {
            a.reservation.learn = learn;
            Ok(Some(match early {
                None => a,
                Some(mut e) => {
                    e.reservation.absorb(a.reservation);
                    Admitted {
                        reservation: e.reservation,
                        headers: RateHeaders::merge(e.headers, a.headers),
                    }
                }
            }))
        }
        Err(r) => Err(refused(early, refusal(r)).await),
    }
}

/// A refusal in the second step: gives back what the first took, and
/// merges its rate headers (without this request, which no longer counts).
async fn refused(early: Option<Admitted>, (err, headers): Refusal) -> Refusal {
    let Some(e) = early else {
        return (err, headers);
    };
    let mut mine = e.headers;
    if let Some(r) = &mut mine.requests {
        r.remaining = r.remaining.saturating_add(1).min(r.limit);
    }
    e.reservation.revoke().await;
    (err, RateHeaders::merge(headers, mine))
}

/// The error and headers of a refusal.
fn refusal(r: Refused) -> Refusal {
    use crate::base::error::GatewayError;
    match r {
        Refused::Unavailable => (GatewayError::LimitsUnavailable, RateHeaders::default()),
        Refused::Limit(r) => {
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
            (err, r.headers)
        }
    }
}

/// Admits a request against every rule of `levels`, or refuses it.
pub async fn admit(levels: &[&[Rule]], ask: Ask) -> Result<Admitted, Refused> {
    let rules: Vec<&Rule> = levels.iter().flat_map(|l| l.iter()).collect();
    admit_rules(&rules, &[], ask, &lease_id()).await
}

/// Admits against `rules` (committed) and `check` (checked for one unit),
/// with `lease` as the concurrency lease id.
async fn admit_rules(
    rules: &[&Rule],
    check: &[&Rule],
    ask: Ask,
    lease: &str,
) -> Result<Admitted, Refused> {
    match REDIS.get() {
        None => memory::global()
            .admit_with(rules, check, ask)
            .map_err(Refused::Limit),
        Some(r) => match r.admit(rules, check, ask, lease).await {
            Ok(Ok(a)) => Ok(a),
            Ok(Err(rejected)) => Err(Refused::Limit(rejected)),
            Err(redis::Failure::Closed) => Err(Refused::Unavailable),
            Err(redis::Failure::Open) => Ok(Admitted {
                reservation: Reservation::none(),
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
        h.write_i64(crate::base::clock::unix_ms());
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
    /// One workload (`tag=value`) of a key: named `key#tag=value`.
    KeyWorkload,
    /// One workload of a team: named `team#tag=value`.
    TeamWorkload,
}

impl Level {
    pub fn label(self) -> &'static str {
        match self {
            Level::Key => "key",
            Level::Team => "team",
            Level::Model => "model",
            Level::KeyWorkload => "key_workload",
            Level::TeamWorkload => "team_workload",
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
/// Within 0 and [`COUNTER_MAX`]; not a number counts as the ceiling.
pub fn usd_to_nanos_ceil(usd: f64) -> i64 {
    nanos_of((usd * NANOS).ceil())
}

/// USD to nano-dollars, rounded to the nearest. Within 0 and
/// [`COUNTER_MAX`]; not a number counts as the ceiling, so a cost that
/// cannot be computed is never charged as 0.
pub fn usd_to_nanos(usd: f64) -> i64 {
    nanos_of((usd * NANOS).round())
}

fn nanos_of(n: f64) -> i64 {
    if n.is_nan() || n >= COUNTER_MAX as f64 {
        COUNTER_MAX
    } else if n <= 0.0 {
        0
    } else {
        n as i64
    }
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
    /// The tighter of `a` and `b` for each kind.
    pub fn merge(a: RateHeaders, b: RateHeaders) -> RateHeaders {
        let mut out = a;
        for (slot, info) in [(&mut out.requests, b.requests), (&mut out.tokens, b.tokens)] {
            if let Some(i) = info {
                RateHeaders::offer(slot, i);
            }
        }
        out
    }

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
    let secs = ms.saturating_add(999) / 1000;
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
        assert_eq!(reset_text(i64::MAX), "153722867280912m55s");
        assert_eq!(reset_text(i64::MIN), "0ms");
    }

    #[test]
    fn usd_to_nanos_never_wraps_or_goes_negative() {
        for (usd, want) in [
            (f64::NAN, COUNTER_MAX),
            (f64::INFINITY, COUNTER_MAX),
            (1e300, COUNTER_MAX),
            (f64::NEG_INFINITY, 0),
            (-5.0, 0),
            (1.5, 1_500_000_000),
        ] {
            assert_eq!(usd_to_nanos(usd), want, "{usd}");
            assert_eq!(usd_to_nanos_ceil(usd), want, "{usd}");
        }
        assert_eq!(usd_to_nanos_ceil(1e-10), 1);
    }
}
