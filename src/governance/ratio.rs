//! How many prompt tokens each route's provider bills per token of our
//! estimate, learned as requests settle, so reservations hold under a
//! provider whose tokenizer counts more than tiktoken (Anthropic's,
//! Gemini's and Qwen's do).
//!
//! - Each route (alias, route name) has one [`PromptRatio`], kept in a
//!   registry keyed by config names like the routing statistics, so it
//!   survives reloads. It is per gateway process (not shared in Redis).
//! - A sample is `reported prompt / estimated prompt`, clamped to
//!   [[`MIN_RATIO`], [`MAX_RATIO`]]. Only reported, complete usage
//!   teaches, of prompts that were tokenized whole.
//! - The first sample sets the ratio; later ones move it by [`RISE`] of
//!   the way up, or [`FALL`] of the way down (it rises faster than it
//!   falls), scaled down for prompts under [`FULL_WEIGHT_TOKENS`] (whose
//!   ratio is mostly framing noise).
//! - A reservation multiplies the prompt estimate by `1 + (ratio − 1) ×
//!   (1 + MARGIN)` (the excess over the tokenizer, plus a quarter; at most
//!   [`MAX_RATIO`]), using the largest ratio learned among the routes the
//!   request may try. A provider that counts exactly like the tokenizer is
//!   reserved exactly.
//! - While the first route the request will try has no sample yet (a cold
//!   start: a new process, a new route), the reservation is elastic: at
//!   least that, and up to [`MAX_RATIO`] times the estimate where a limit
//!   has room. A request is then never refused for the cold start alone,
//!   and reservations in flight stay honest for any ratio up to
//!   [`MAX_RATIO`]: when a limit is nearly used up, the request takes what
//!   is left and the next one waits for it to settle.

use crate::base::keyed::Keyed;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// The smallest ratio used: a provider that counts fewer tokens than the
/// estimate is reserved at the estimate.
pub(crate) const MIN_RATIO: f64 = 1.0;
/// The largest ratio learned or reserved.
pub(crate) const MAX_RATIO: f64 = 8.0;
/// Safety margin on the learned excess over the tokenizer's count.
pub(crate) const MARGIN: f64 = 0.25;
/// Share of the way a higher sample moves the ratio.
pub(crate) const RISE: f64 = 0.5;
/// Share of the way a lower sample moves the ratio.
pub(crate) const FALL: f64 = 0.1;
/// A sample of a prompt estimated at fewer tokens than this moves the
/// ratio proportionally less.
pub(crate) const FULL_WEIGHT_TOKENS: u64 = 256;

/// One route's learned ratio. Atomics, so settling never takes a lock.
#[derive(Default)]
pub struct PromptRatio {
    /// The ratio as `f64` bits; meaningful once `samples > 0`.
    bits: AtomicU64,
    samples: AtomicU64,
}

impl PromptRatio {
    /// Folds one settled request in: `estimated` by our tokenizer,
    /// `reported` by the provider.
    pub fn observe(&self, estimated: u64, reported: u64) {
        if estimated == 0 {
            return;
        }
        let sample = (reported as f64 / estimated as f64).clamp(MIN_RATIO, MAX_RATIO);
        let weight = (estimated as f64 / FULL_WEIGHT_TOKENS as f64).min(1.0);
        let first = self.samples.load(Relaxed) == 0;
        // A lost race only retries; it never blocks.
        let _ = self.bits.fetch_update(Relaxed, Relaxed, |bits| {
            let old = f64::from_bits(bits);
            let new = if first || !(MIN_RATIO..=MAX_RATIO).contains(&old) {
                sample
            } else if sample > old {
                old + weight * RISE * (sample - old)
            } else {
                old + weight * FALL * (sample - old)
            };
            Some(new.clamp(MIN_RATIO, MAX_RATIO).to_bits())
        });
        self.samples.fetch_add(1, Relaxed);
    }

    /// The learned ratio, once a sample was seen.
    pub fn learned(&self) -> Option<f64> {
        if self.samples.load(Relaxed) == 0 {
            return None;
        }
        let r = f64::from_bits(self.bits.load(Relaxed));
        r.is_finite().then(|| r.clamp(MIN_RATIO, MAX_RATIO))
    }
}

/// What a reservation multiplies the prompt estimate by: at least `lo`, up
/// to `hi` where a limit has room.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Factor {
    pub(crate) lo: f64,
    pub(crate) hi: f64,
}

impl Factor {
    /// The estimate as it is (no ratio).
    pub const ONE: Factor = Factor { lo: 1.0, hi: 1.0 };
    /// Nothing learned yet.
    pub const COLD: Factor = Factor {
        lo: MIN_RATIO,
        hi: MAX_RATIO,
    };

    /// The factor reserved for a learned `ratio`.
    pub fn for_ratio(ratio: f64) -> f64 {
        (1.0 + (ratio - 1.0).max(0.0) * (1.0 + MARGIN)).min(MAX_RATIO)
    }

    /// `prompt` times `lo` and times `hi`, rounded up, saturating.
    pub fn apply(self, prompt: u64) -> (u64, u64) {
        let times = |f: f64| {
            let v = (prompt as f64 * f).ceil();
            if v >= u64::MAX as f64 {
                u64::MAX
            } else {
                (v as u64).max(prompt)
            }
        };
        let lo = times(self.lo);
        (lo, times(self.hi).max(lo))
    }
}

/// The ratios of one alias's routes, in route order.
#[derive(Clone, Default)]
pub struct Ratios(Arc<[Arc<PromptRatio>]>);

impl Ratios {
    /// The ratios of alias `alias`'s routes named `routes`, from `store`
    /// (created on first use). Called when a `Runtime` is built, never per
    /// request.
    pub fn build<'a>(
        store: &Keyed<(String, String), PromptRatio>,
        alias: &str,
        routes: impl IntoIterator<Item = &'a str>,
    ) -> Ratios {
        Ratios(
            routes
                .into_iter()
                .map(|r| store.get_or_default((alias.to_string(), r.to_string())))
                .collect(),
        )
    }

    /// The factor for a request that will try the routes of `order`
    /// (indices), first one first.
    pub fn factor(&self, order: &[usize]) -> Factor {
        let learned = |i: &usize| self.0.get(*i).and_then(|r| r.learned());
        let Some(first) = order.first() else {
            return Factor::COLD;
        };
        let most = order.iter().filter_map(learned).fold(MIN_RATIO, f64::max);
        let lo = Factor::for_ratio(most);
        match learned(first) {
            Some(_) => Factor { lo, hi: lo },
            None => Factor { lo, hi: MAX_RATIO },
        }
    }

    /// Route `route` served a request whose prompt we estimated at
    /// `estimated` and its provider reported as `reported`.
    pub fn observe(&self, route: usize, estimated: u64, reported: u64) {
        if let Some(r) = self.0.get(route) {
            r.observe(estimated, reported);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_sample_sets_it_then_it_rises_fast_and_falls_slowly() {
        let r = PromptRatio::default();
        assert_eq!(r.learned(), None);
        r.observe(0, 100); // nothing estimated: nothing to learn
        assert_eq!(r.learned(), None);
        r.observe(256, 640);
        assert_eq!(r.learned(), Some(2.5));
        r.observe(512, 512);
        let after_fall = r.learned().unwrap_or_default();
        assert!((after_fall - 2.35).abs() < 1e-9, "{after_fall}");
        r.observe(1000, 100_000); // clamped to 8
        let after_rise = r.learned().unwrap_or_default();
        assert!((after_rise - (2.35 + 0.5 * (8.0 - 2.35))).abs() < 1e-9);
        // A tiny prompt moves it a little only.
        let before = after_rise;
        r.observe(16, 16);
        let after_tiny = r.learned().unwrap_or_default();
        let moved = before - after_tiny;
        assert!(
            (moved - 16.0 / 256.0 * 0.1 * (before - 1.0)).abs() < 1e-9,
            "{moved}"
        );
        r.observe(u64::MAX, 0); // clamped to 1, never below
        assert!(r.learned().unwrap_or_default() >= MIN_RATIO);
    }

    #[test]
    fn cold_routes_reserve_elastically_and_learned_ones_with_the_margin() {
        let store = Keyed::default();
        let ratios = Ratios::build(&store, "ratio-test", ["a", "b"]);
        assert_eq!(ratios.factor(&[0, 1]), Factor::COLD);
        ratios.observe(1, 100, 300);
        // The first route is still cold: elastic, its floor from route b
        // (3, with a quarter more of the excess: 3.5).
        let f = ratios.factor(&[0, 1]);
        assert!((f.lo - 3.5).abs() < 1e-9 && f.hi == MAX_RATIO, "{f:?}");
        let f = ratios.factor(&[1, 0]);
        assert!((f.lo - 3.5).abs() < 1e-9 && f.hi == f.lo, "{f:?}");
        // Exactly the tokenizer's count: reserved exactly.
        let exact = Ratios::build(&store, "ratio-test-exact", ["a"]);
        exact.observe(0, 100, 100);
        assert_eq!(exact.factor(&[0]), Factor::ONE);
        assert_eq!(Factor::for_ratio(100.0), MAX_RATIO);
        // Same names after a "reload": same numbers.
        let again = Ratios::build(&store, "ratio-test", ["b"]);
        assert_eq!(again.factor(&[0]), f);
        assert_eq!(
            Factor { lo: 8.0, hi: 8.0 }.apply(u64::MAX),
            (u64::MAX, u64::MAX)
        );
        assert_eq!(Factor::COLD.apply(100), (100, 800));
    }
}
