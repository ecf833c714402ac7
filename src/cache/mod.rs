//! The response cache: exact-match answers per alias, in memory, bounded
//! by bytes (least recently used evicted first) and by each alias's `ttl`.
//!
//! - [`key`]: the hash of the canonical request (alias, endpoint, the
//!   alias's cache settings, the scope's identity, the JSON body with key
//!   order and whitespace removed).
//! - [`Store`]: one per process (`runtime::durable::Durable`), so a reload
//!   keeps it; an alias whose cache settings change gets other keys (they
//!   are part of the hash), its old entries age out.
//! - [`AliasCache`]: an alias's compiled settings, with the store.
//!
//! It knows nothing of the proxy: the request path hands it bytes.

pub(crate) mod canonical;
pub(crate) mod memory;
pub(crate) mod shared;

use crate::accounting::Usage;
use crate::config::CacheScope;
use bytes::Bytes;
use std::sync::Arc;

pub(crate) use memory::Store;
pub(crate) use shared::RedisCache;

/// A cache key: SHA-256 of the canonical request.
pub(crate) type Key = [u8; 32];

/// One stored answer: the body exactly as the client got it.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) body: Bytes,
    /// An SSE stream (`text/event-stream`), else a JSON body.
    pub(crate) stream: bool,
    /// The usage the provider reported for it.
    pub(crate) usage: Usage,
    /// What it cost at the route's price (`None`: unpriced).
    pub(crate) cost_usd: Option<f64>,
}

/// An alias's cache, compiled once per runtime.
pub(crate) struct AliasCache {
    pub(crate) ttl_ms: u64,
    pub(crate) max_entry_bytes: usize,
    pub(crate) scope: CacheScope,
    pub(crate) rate_limits: bool,
    pub(crate) budgets: bool,
    /// The hash of the settings: changed settings, other keys.
    fingerprint: [u8; 32],
    pub(crate) store: Arc<Store>,
    /// `cache.redis`: the shared store, used instead of `store`.
    pub(crate) shared: Option<Arc<RedisCache>>,
}

impl AliasCache {
    pub(crate) fn build(
        c: &crate::config::AliasCache,
        store: Arc<Store>,
        shared: Option<Arc<RedisCache>>,
    ) -> AliasCache {
        let settings = format!(
            "{}|{}|{:?}|{}|{}",
            c.ttl.get().as_millis(),
            c.max_entry_bytes,
            c.scope,
            c.rate_limits,
            c.budgets
        );
        AliasCache {
            ttl_ms: u64::try_from(c.ttl.get().as_millis()).unwrap_or(u64::MAX),
            max_entry_bytes: usize::try_from(c.max_entry_bytes).unwrap_or(usize::MAX),
            scope: c.scope,
            rate_limits: c.rate_limits,
            budgets: c.budgets,
            fingerprint: canonical::digest(&[settings.as_bytes()]),
            store,
            shared,
        }
    }

    /// The key of a request of `caller` (its key name and team) to `alias`
    /// on `endpoint` with `body`. `None`: the body is not JSON (never
    /// cached).
    pub(crate) fn key(
        &self,
        alias: &str,
        endpoint: &str,
        caller: (&str, Option<&str>),
        body: &[u8],
    ) -> Option<Key> {
        let (key_name, team) = caller;
        let scope: (&[u8], &[u8]) = match (self.scope, team) {
            (CacheScope::Global, _) => (b"global", b""),
            (CacheScope::Team, Some(team)) => (b"team", team.as_bytes()),
            (CacheScope::Team, None) | (CacheScope::Key, _) => (b"key", key_name.as_bytes()),
        };
        canonical::request_key(
            &[
                alias.as_bytes(),
                endpoint.as_bytes(),
                &self.fingerprint,
                scope.0,
                scope.1,
            ],
            body,
        )
    }

    /// The live entry under `key` (a failing shared store: `None`).
    pub(crate) async fn get(&self, key: &Key) -> Option<Arc<Entry>> {
        match &self.shared {
            Some(s) => s.get(key).await.map(Arc::new),
            None => self.store.get(key, crate::base::clock::monotonic_ms()),
        }
    }

    /// Stores `entry` under `key` for the alias's `ttl` (in the shared
    /// store: in the background).
    pub(crate) fn put(&self, key: Key, entry: Entry) {
        if let Some(s) = &self.shared {
            s.put(key, &entry, self.ttl_ms);
            return;
        }
        let now = crate::base::clock::monotonic_ms();
        self.store.put(key, entry, now.saturating_add(self.ttl_ms));
    }
}
