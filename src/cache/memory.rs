//! The in-memory store: a map of entries with their expiry, and their
//! order of last use; putting past the byte bound evicts the least
//! recently used entries until it holds. One lock, held for a map look-up
//! and a few tree operations (never across I/O).

use super::{Entry, Key};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

/// What an entry is counted as beyond its body: the key, the map's and the
/// order's slots, the entry's fields.
pub(crate) const ENTRY_OVERHEAD: usize = 192;

/// The bound until a runtime sets one.
const DEFAULT_MAX_BYTES: usize = crate::config::cache::DEFAULT_CACHE_MAX_BYTES as usize;

pub(crate) struct Store {
    inner: Mutex<Lru>,
}

struct Slot {
    entry: Arc<Entry>,
    /// Monotonic ms after which the entry is not served.
    expires: u64,
    /// Its place in `order`.
    tick: u64,
    size: usize,
}

struct Lru {
    map: HashMap<Key, Slot>,
    /// Last use (a counter) → key; the first is the least recently used.
    order: BTreeMap<u64, Key>,
    tick: u64,
    bytes: usize,
    max_bytes: usize,
}

impl Default for Store {
    fn default() -> Self {
        Store::new(DEFAULT_MAX_BYTES)
    }
}

impl Store {
    pub(crate) fn new(max_bytes: usize) -> Store {
        Store {
            inner: Mutex::new(Lru {
                map: HashMap::new(),
                order: BTreeMap::new(),
                tick: 0,
                bytes: 0,
                max_bytes,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lru> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets the bound (a reload's `cache.max_bytes`), evicting down to it.
    pub(crate) fn set_max_bytes(&self, max_bytes: usize) {
        let mut l = self.lock();
        l.max_bytes = max_bytes;
        l.evict();
        l.export();
    }

    /// The entry under `key`, unless it expired (then it is dropped).
    pub(crate) fn get(&self, key: &Key, now_ms: u64) -> Option<Arc<Entry>> {
        let mut l = self.lock();
        let (expires, old) = {
            let s = l.map.get(key)?;
            (s.expires, s.tick)
        };
        if expires <= now_ms {
            l.remove(key);
            l.export();
            return None;
        }
        let tick = l.next_tick();
        l.order.remove(&old);
        l.order.insert(tick, *key);
        let s = l.map.get_mut(key)?;
        s.tick = tick;
        Some(s.entry.clone())
    }

    /// Stores `entry` under `key` until `expires` (monotonic ms), replacing
    /// what was there. An entry larger than the whole bound is not kept.
    pub(crate) fn put(&self, key: Key, entry: Entry, expires: u64) {
        let size = entry.body.len().saturating_add(ENTRY_OVERHEAD);
        let mut l = self.lock();
        l.remove(&key);
        if size > l.max_bytes {
            l.export();
            return;
        }
        let tick = l.next_tick();
        l.order.insert(tick, key);
        l.map.insert(
            key,
            Slot {
                entry: Arc::new(entry),
                expires,
                tick,
                size,
            },
        );
        l.bytes = l.bytes.saturating_add(size);
        l.evict();
        l.export();
    }

    /// Bytes and entries held.
    #[cfg(test)]
    pub(crate) fn usage(&self) -> (usize, usize) {
        let l = self.lock();
        (l.bytes, l.map.len())
    }
}

impl Lru {
    fn next_tick(&mut self) -> u64 {
        self.tick = self.tick.wrapping_add(1);
        self.tick
    }

    fn remove(&mut self, key: &Key) {
        if let Some(s) = self.map.remove(key) {
            self.order.remove(&s.tick);
            self.bytes = self.bytes.saturating_sub(s.size);
        }
    }

    /// Drops the least recently used entries until the bound holds.
    fn evict(&mut self) {
        while self.bytes > self.max_bytes {
            let Some((_, key)) = self.order.pop_first() else {
                break;
            };
            if let Some(s) = self.map.remove(&key) {
                self.bytes = self.bytes.saturating_sub(s.size);
                if let Some(m) = crate::telemetry::metrics::get() {
                    m.cache_evictions.inc();
                }
            }
        }
    }

    fn export(&self) {
        if let Some(m) = crate::telemetry::metrics::get() {
            m.cache_bytes
                .set(i64::try_from(self.bytes).unwrap_or(i64::MAX));
            m.cache_entries
                .set(i64::try_from(self.map.len()).unwrap_or(i64::MAX));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use bytes::Bytes;
    use proptest::prelude::*;

    fn entry(n: usize) -> Entry {
        Entry {
            body: Bytes::from(vec![b'x'; n]),
            stream: false,
            usage: Default::default(),
            cost_usd: None,
        }
    }

    fn key(i: u64) -> Key {
        super::super::canonical::digest(&[&i.to_le_bytes()])
    }

    #[test]
    fn expired_entries_are_not_served() {
        let s = Store::new(1 << 20);
        s.put(key(1), entry(10), 100);
        assert!(s.get(&key(1), 99).is_some());
        assert!(s.get(&key(1), 100).is_none());
        assert_eq!(s.usage(), (0, 0), "dropped when found expired");
    }

    #[test]
    fn the_least_recently_used_goes_first() {
        let per = 100 + ENTRY_OVERHEAD;
        let s = Store::new(3 * per);
        for i in 0..3 {
            s.put(key(i), entry(100), u64::MAX);
        }
        assert!(s.get(&key(0), 1).is_some(), "0 is now the most recent");
        s.put(key(3), entry(100), u64::MAX);
        assert!(s.get(&key(1), 1).is_none(), "1 was the least recent");
        for i in [0, 2, 3] {
            assert!(s.get(&key(i), 1).is_some(), "{i} kept");
        }
        assert_eq!(s.usage(), (3 * per, 3));
        // Replacing an entry counts it once.
        s.put(key(3), entry(50), u64::MAX);
        assert_eq!(s.usage(), (2 * per + 50 + ENTRY_OVERHEAD, 3));
        // Larger than the bound: not kept, nothing evicted for it.
        s.put(key(9), entry(4 * per), u64::MAX);
        assert!(s.get(&key(9), 1).is_none());
        assert_eq!(s.usage().1, 3);
        s.set_max_bytes(per);
        assert_eq!(s.usage().1, 1, "a smaller bound evicts down to it");
        assert!(s.get(&key(3), 1).is_some(), "the most recent stays");
    }

    #[test]
    fn ten_thousand_distinct_requests_stay_within_the_bound() {
        let max = 64 * 1024;
        let s = Store::new(max);
        for i in 0..10_000u64 {
            s.put(key(i), entry((i as usize * 37) % 900), u64::MAX);
            let (bytes, _) = s.usage();
            assert!(bytes <= max, "{bytes} > {max} after {i}");
        }
        let (bytes, n) = s.usage();
        assert!(n > 10 && bytes > max / 2, "{n} entries, {bytes} bytes");
        assert!(s.get(&key(9_999), 1).is_some(), "the last one is kept");
        assert!(s.get(&key(0), 1).is_none(), "the first one was evicted");
    }

    proptest! {
        #[test]
        fn the_byte_count_matches_the_entries(ops in proptest::collection::vec((0u64..40, 0usize..600, any::<bool>()), 1..300)) {
            let s = Store::new(8 * 1024);
            let mut l_sizes: std::collections::HashMap<Key, usize> = Default::default();
            for (k, n, get) in ops {
                if get {
                    let _ = s.get(&key(k), 1);
                } else {
                    s.put(key(k), entry(n), u64::MAX);
                    l_sizes.insert(key(k), n + ENTRY_OVERHEAD);
                }
                let l = s.lock();
                let sum: usize = l.map.values().map(|s| s.size).sum();
                prop_assert_eq!(sum, l.bytes);
                prop_assert!(l.bytes <= l.max_bytes);
                prop_assert_eq!(l.map.len(), l.order.len());
                for (key, slot) in &l.map {
                    prop_assert_eq!(l_sizes.get(key).copied(), Some(slot.size));
                    prop_assert_eq!(l.order.get(&slot.tick), Some(key));
                }
            }
        }
    }
}
