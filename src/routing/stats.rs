//! Per-route statistics: moving averages of time to first token and of
//! latency, requests in flight, and a p95 estimate of time to first byte.
//!
//! Each route's numbers are atomics in one `RouteStats`, shared by every
//! request through an `Arc` resolved when the `Runtime` is built. The
//! registry that hands them out is keyed by config names (alias, route) and
//! is only locked at build time, so the numbers survive reloads and no lock
//! is taken on the request path.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Weight of a new sample in the moving averages.
const ALPHA: f64 = 0.3;
/// First-byte samples kept for the p95 estimate.
const RING: usize = 128;
/// Fewer samples than this: no p95 estimate yet.
pub const MIN_P95_SAMPLES: u64 = 20;
/// A failed attempt counts as at least this slow…
const FAILURE_FLOOR_US: f64 = 1_000_000.0;
/// …and at most this slow.
const SLOWEST_US: f64 = 60_000_000.0;

/// What a sample measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Streams: request sent to first token.
    Ttft,
    /// Non-streams: request sent to the end of the response.
    Latency,
}

/// One route's live numbers. Every field is an atomic; `Relaxed` is enough
/// because each is a statistic read on its own.
pub struct RouteStats {
    /// Moving averages in microseconds, as `f64` bits; 0 means no sample yet.
    ewma_ttft: AtomicU64,
    ewma_latency: AtomicU64,
    in_flight: AtomicU32,
    /// Recent first-byte times in microseconds (saturating).
    ring: [AtomicU32; RING],
    /// First-byte samples seen in all.
    ring_count: AtomicU64,
    /// The cached p95 of `ring`, in microseconds; 0 until known.
    p95: AtomicU32,
    /// `ring_count` when `p95` was last computed.
    p95_at: AtomicU64,
}

impl Default for RouteStats {
    fn default() -> Self {
        Self {
            ewma_ttft: AtomicU64::new(0),
            ewma_latency: AtomicU64::new(0),
            in_flight: AtomicU32::new(0),
            ring: std::array::from_fn(|_| AtomicU32::new(0)),
            ring_count: AtomicU64::new(0),
            p95: AtomicU32::new(0),
            p95_at: AtomicU64::new(0),
        }
    }
}

impl RouteStats {
    fn cell(&self, kind: Kind) -> &AtomicU64 {
        match kind {
            Kind::Ttft => &self.ewma_ttft,
            Kind::Latency => &self.ewma_latency,
        }
    }

    /// The moving average of `kind`, if any sample was seen.
    pub fn ewma(&self, kind: Kind) -> Option<Duration> {
        let us = f64::from_bits(self.cell(kind).load(Relaxed));
        (us > 0.0).then(|| Duration::from_secs_f64(us / 1e6))
    }

    /// The average used to compare routes for a request of `kind`: that
    /// kind's, else the other one's, in microseconds. `None`: never measured.
    pub fn score_us(&self, kind: Kind) -> Option<f64> {
        let other = match kind {
            Kind::Ttft => Kind::Latency,
            Kind::Latency => Kind::Ttft,
        };
        [kind, other]
            .into_iter()
            .map(|k| f64::from_bits(self.cell(k).load(Relaxed)))
            .find(|us| *us > 0.0)
    }

    /// Folds one measurement into the average of `kind`; returns the new average.
    pub fn observe(&self, kind: Kind, took: Duration) -> Duration {
        let x = (took.as_secs_f64() * 1e6).clamp(1.0, SLOWEST_US);
        self.fold(kind, |_| x)
    }

    /// Counts a failed attempt as a slow one: at least a second, twice the
    /// current average, or the time it took, whichever is most.
    pub fn observe_failure(&self, kind: Kind, took: Duration) -> Duration {
        let took = took.as_secs_f64() * 1e6;
        self.fold(kind, |old| {
            took.max(2.0 * old).clamp(FAILURE_FLOOR_US, SLOWEST_US)
        })
    }

    fn fold(&self, kind: Kind, sample: impl Fn(f64) -> f64) -> Duration {
        let cell = self.cell(kind);
        let mut new = 0.0;
        // A lost race only retries; it never blocks.
        let _ = cell.fetch_update(Relaxed, Relaxed, |bits| {
            let old = f64::from_bits(bits);
            let x = sample(old);
            new = if old > 0.0 {
                old + ALPHA * (x - old)
            } else {
                x
            };
            Some(new.to_bits())
        });
        Duration::from_secs_f64(new / 1e6)
    }

    /// Requests now in flight on this route.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Relaxed)
    }

    pub(crate) fn enter(&self) {
        self.in_flight.fetch_add(1, Relaxed);
    }

    pub(crate) fn leave(&self) {
        let _ = self
            .in_flight
            .fetch_update(Relaxed, Relaxed, |n| Some(n.saturating_sub(1)));
    }

    /// Records a time to first byte for the p95 estimate (computed when
    /// it is read: only hedging reads it, so other routes never sort).
    pub fn observe_first_byte(&self, took: Duration) {
        let us = u32::try_from(took.as_micros()).unwrap_or(u32::MAX).max(1);
        let n = self.ring_count.fetch_add(1, Relaxed);
        if let Some(slot) = self.ring.get((n % RING as u64) as usize) {
            slot.store(us, Relaxed);
        }
    }

    fn percentile(&self, q: f64) -> u32 {
        let n = self.ring_count.load(Relaxed).min(RING as u64) as usize;
        let mut v = [0u32; RING];
        for (dst, src) in v.iter_mut().zip(&self.ring).take(n) {
            *dst = src.load(Relaxed);
        }
        let v = &mut v[..n];
        if v.is_empty() {
            return 0;
        }
        let idx = ((q * n as f64).ceil() as usize).clamp(1, n) - 1;
        let (_, nth, _) = v.select_nth_unstable(idx);
        *nth
    }

    /// The 95th percentile of this route's recent times to first byte (the
    /// last 128 successful attempts), or `None` before 20 were seen.
    pub fn p95_ttft(&self) -> Option<Duration> {
        let seen = self.ring_count.load(Relaxed);
        if seen < MIN_P95_SAMPLES {
            return None;
        }
        // Recomputed on every new sample while there are few, then after
        // every 8th: a read between is one atomic load.
        let at = self.p95_at.load(Relaxed);
        if seen != at && (seen < 2 * RING as u64 || seen.saturating_sub(at) >= 8) {
            self.p95.store(self.percentile(0.95), Relaxed);
            self.p95_at.store(seen, Relaxed);
        }
        let us = self.p95.load(Relaxed);
        (us > 0).then(|| Duration::from_micros(u64::from(us)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ewma_moves_toward_new_samples_and_failures_count_as_slow() {
        let s = RouteStats::default();
        assert_eq!(s.ewma(Kind::Latency), None);
        assert_eq!(s.score_us(Kind::Ttft), None);
        s.observe(Kind::Latency, Duration::from_millis(10));
        assert_eq!(s.ewma(Kind::Latency), Some(Duration::from_millis(10)));
        // The other kind stands in until its own is measured.
        assert_eq!(s.score_us(Kind::Ttft), Some(10_000.0));
        for _ in 0..20 {
            s.observe(Kind::Latency, Duration::from_millis(100));
        }
        let e = s.ewma(Kind::Latency).unwrap_or_default();
        assert!(e > Duration::from_millis(99), "{e:?}");
        let after = s.observe_failure(Kind::Latency, Duration::from_millis(1));
        assert!(after > Duration::from_millis(200), "{after:?}");
    }

    #[test]
    fn p95_needs_enough_samples_then_tracks_the_tail() {
        let s = RouteStats::default();
        for i in 0..19 {
            s.observe_first_byte(Duration::from_millis(i));
        }
        assert_eq!(s.p95_ttft(), None);
        for i in 0..200u64 {
            // 1..=100 ms, twice.
            s.observe_first_byte(Duration::from_millis(i % 100 + 1));
        }
        let p = s.p95_ttft().unwrap_or_default();
        assert!(
            p >= Duration::from_millis(90) && p <= Duration::from_millis(100),
            "{p:?}"
        );
    }

    #[test]
    fn in_flight_never_underflows_and_registry_survives() {
        let store: crate::base::keyed::Keyed<(String, String), RouteStats> = Default::default();
        let key = || ("alias-x".to_string(), "route-y".to_string());
        let a = store.get_or_default(key());
        a.enter();
        a.leave();
        a.leave();
        assert_eq!(a.in_flight(), 0);
        a.enter();
        let b = store.get_or_default(key());
        assert_eq!(b.in_flight(), 1, "same names, same numbers");
        b.leave();
    }
}
