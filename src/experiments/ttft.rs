//! A lock-free histogram of time to first byte per route, for
//! `hedge: { after: p95 }`. Log-spaced buckets of atomics; old samples fade
//! by halving every bucket once the count passes a threshold, so the p95
//! follows the route's recent behaviour. Histograms live in a store keyed
//! by alias and route (so they survive reloads) and are looked up only when
//! the runtime is built.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// Buckets: upper bounds of 1 ms × 1.25^i, i < 64 (about 1 ms to 1.6 h).
const BUCKETS: usize = 64;
const GROWTH: f64 = 1.25;
/// Samples needed before the p95 is trusted.
pub const MIN_SAMPLES: u64 = 20;
/// Past this many samples every bucket is halved.
const DECAY_AT: u64 = 2000;

pub struct Ttft {
    counts: [AtomicU64; BUCKETS],
    total: AtomicU64,
    decaying: AtomicBool,
}

impl Default for Ttft {
    fn default() -> Self {
        Self {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            total: AtomicU64::new(0),
            decaying: AtomicBool::new(false),
        }
    }
}

fn bucket_of(d: Duration) -> usize {
    let ms = d.as_secs_f64() * 1000.0;
    if ms <= 1.0 {
        return 0;
    }
    let i = (ms.ln() / GROWTH.ln()).ceil();
    (i as usize).min(BUCKETS - 1)
}

fn upper_bound(i: usize) -> Duration {
    Duration::from_secs_f64(GROWTH.powi(i as i32) / 1000.0)
}

impl Ttft {
    /// Adds one observation.
    pub fn record(&self, d: Duration) {
        self.counts[bucket_of(d)].fetch_add(1, Ordering::Relaxed);
        let n = self.total.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= DECAY_AT && !self.decaying.swap(true, Ordering::Acquire) {
            let mut left = 0;
            for c in &self.counts {
                let old = c.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| Some(v / 2));
                left += old.map_or(0, |v| v - v / 2);
            }
            let _ = self
                .total
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                    Some(t.saturating_sub(left))
                });
            self.decaying.store(false, Ordering::Release);
        }
    }

    /// The p95 (a bucket's upper bound), once [`MIN_SAMPLES`] were seen.
    pub fn p95(&self) -> Option<Duration> {
        let counts: [u64; BUCKETS] =
            std::array::from_fn(|i| self.counts[i].load(Ordering::Relaxed));
        let total: u64 = counts.iter().sum();
        if total < MIN_SAMPLES {
            return None;
        }
        let want = (total * 95).div_ceil(100);
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= want {
                return Some(upper_bound(i));
            }
        }
        Some(upper_bound(BUCKETS - 1))
    }
}

type Store = Mutex<HashMap<(String, String, String), Arc<Ttft>>>;

/// The histogram of `alias`'s route to `provider`/`model` (created on
/// first use). Called when a runtime is built, never per request.
pub fn for_route(alias: &str, provider: &str, model: &str) -> Arc<Ttft> {
    static STORE: OnceLock<Store> = OnceLock::new();
    let store = STORE.get_or_init(Default::default);
    let mut map = match store.lock() {
        Ok(m) => m,
        Err(poisoned) => poisoned.into_inner(),
    };
    map.entry((alias.into(), provider.into(), model.into()))
        .or_default()
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p95_needs_samples_then_tracks_the_tail() {
        let h = Ttft::default();
        for _ in 0..19 {
            h.record(Duration::from_millis(10));
        }
        assert_eq!(h.p95(), None);
        for _ in 0..81 {
            h.record(Duration::from_millis(10));
        }
        let p = h.p95().unwrap_or_default();
        assert!(p >= Duration::from_millis(10) && p < Duration::from_millis(13));
        for _ in 0..10 {
            h.record(Duration::from_millis(500));
        }
        let p = h.p95().unwrap_or_default();
        assert!(p >= Duration::from_millis(500), "{p:?}");
    }

    #[test]
    fn decay_keeps_the_shape() {
        let h = Ttft::default();
        for _ in 0..5000 {
            h.record(Duration::from_millis(40));
        }
        assert!(h.total.load(Ordering::Relaxed) < DECAY_AT + 10);
        let p = h.p95().unwrap_or_default();
        assert!(p >= Duration::from_millis(40) && p < Duration::from_millis(50));
    }
}
