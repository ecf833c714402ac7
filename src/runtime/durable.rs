//! The state that outlives reloads, in one owner: created once at start
//! (`Durable::default()` in `main`), handed to every `Runtime::build`, and
//! found again by config names, so a reload keeps a backend's breaker, a
//! route's statistics and learned token ratio, an alias's hedge budget
//! a pool key's cooldown and counters, and the response cache. (The limit counters, the usage ledger and the Redis handle are
//! still governance's own process-wide stores.)

use crate::base::keyed::Keyed;
use crate::governance::ratio::PromptRatio;
use crate::resilience::breaker::BackendState;
use crate::resilience::hedge_cap::HedgeCap;
use crate::routing::stats::RouteStats;
use std::net::SocketAddr;
use std::sync::Arc;

#[derive(Default)]
pub struct Durable {
    /// Passive-health state per provider and backend address. Shared with
    /// each upstream, which looks states up when its backends change.
    pub breakers: Arc<Keyed<(String, SocketAddr), BackendState>>,
    /// Latency and time-to-first-token statistics per alias and route.
    pub routes: Keyed<(String, String), RouteStats>,
    /// Learned prompt-token ratios per alias and route.
    pub ratios: Keyed<(String, String), PromptRatio>,
    /// The hedge token bucket per alias.
    pub hedge_caps: Keyed<String, HedgeCap>,
    /// Each pool key's cooldown and rolling-minute counters, per provider
    /// and key digest: a reload that keeps a key keeps its state.
    pub(crate) pool_keys: Keyed<(String, [u8; 32]), crate::upstream::pool::KeyState>,
    /// The response cache, all aliases together: a reload keeps its
    /// entries (an alias whose cache settings changed gets other keys).
    pub(crate) cache: Arc<crate::cache::Store>,
    /// The shared (Redis) cache stores, by URL: a reload keeps the
    /// connection.
    pub(crate) cache_shared: Keyed<String, crate::cache::RedisCache>,
}
