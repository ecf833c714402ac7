//! The hedge cap: a token bucket of atomics per alias. Every request adds
//! `max_share` of a token (up to a small burst); a hedge spends a whole
//! one. Over any stretch of N requests at most `max_share × N + burst`
//! hedges fire, however many run at once. Buckets live in a store keyed by
//! alias (they survive reloads), looked up when the runtime is built.

use crate::base::keyed::Keyed;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Fixed-point unit of one hedge.
const ONE: u64 = 1_000_000;

pub struct HedgeCap {
    /// Credit in millionths of a hedge.
    credit: AtomicU64,
}

impl HedgeCap {
    fn new(burst: f64) -> Self {
        Self {
            credit: AtomicU64::new(units(burst)),
        }
    }

    /// Adds the credit of one request.
    pub fn on_request(&self, share: f64, burst: f64) {
        let add = units(share);
        let max = units(burst).max(ONE);
        let _ = self
            .credit
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
                Some(c.saturating_add(add).min(max))
            });
    }

    /// Takes one hedge's worth of credit, if there is one.
    pub fn try_take(&self) -> bool {
        self.credit
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |c| c.checked_sub(ONE))
            .is_ok()
    }
}

fn units(x: f64) -> u64 {
    (x.clamp(0.0, 1e6) * ONE as f64) as u64
}

/// The bucket of `alias` in `store` (created full on first use).
pub(crate) fn for_alias(store: &Keyed<String, HedgeCap>, alias: &str, burst: f64) -> Arc<HedgeCap> {
    store.get_or_insert_with(alias.to_string(), || HedgeCap::new(burst))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hedges_stay_within_share_plus_burst() {
        let cap = HedgeCap::new(3.0);
        let mut fired = 0;
        for _ in 0..1000 {
            cap.on_request(0.1, 3.0);
            if cap.try_take() {
                fired += 1;
            }
        }
        assert!((100..=103).contains(&fired), "{fired}");
    }

    #[test]
    fn zero_share_allows_only_the_burst() {
        let cap = HedgeCap::new(2.0);
        let fired = (0..50)
            .filter(|_| {
                cap.on_request(0.0, 2.0);
                cap.try_take()
            })
            .count();
        assert_eq!(fired, 2);
    }
}
