//! Per-backend passive health. A backend opens its breaker after repeated
//! failures (consecutive, or a failure ratio over recent outcomes), stays out
//! for a cooldown, then lets one probe through: success closes it, failure
//! opens it again. A 429 with `Retry-After` cools a backend for that long.
//! State lives in a process-wide registry keyed by provider name and
//! address, so it survives config reloads.

use crate::config::BreakerPolicy;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};

/// Breaker state, as exported (`tollgate_breaker_state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed = 0,
    Open = 1,
    HalfOpen = 2,
}

/// One backend's counters.
#[derive(Debug, Default)]
pub struct BackendState {
    consecutive: AtomicU32,
    /// Last outcomes, newest in bit 0; 1 = failure.
    window: AtomicU64,
    seen: AtomicU32,
    /// 0 = closed; else when the open period ends (then half-open).
    open_until: AtomicU64,
    probing: AtomicBool,
    probe_started: AtomicU64,
    /// Not before this (Retry-After).
    cool_until: AtomicU64,
    /// Whether the cooldown came from a 429 (else a 503's Retry-After).
    cool_is_rate_limit: AtomicBool,
}

impl BackendState {
    pub fn state(&self, now: u64) -> State {
        match self.open_until.load(Relaxed) {
            0 => State::Closed,
            t if now < t => State::Open,
            _ => State::HalfOpen,
        }
    }

    /// Whether a request may go here now. In half-open state this claims the
    /// single probe slot, so call it only for the backend about to be used.
    pub fn admit(&self, now: u64, p: &BreakerPolicy) -> bool {
        if now < self.cool_until.load(Relaxed) {
            return false;
        }
        match self.state(now) {
            State::Closed => true,
            State::Open => false,
            State::HalfOpen => {
                let stale = now.saturating_sub(self.probe_started.load(Relaxed))
                    > p.cooldown.get().as_millis() as u64;
                let free = !self.probing.swap(true, Relaxed);
                if free || stale {
                    self.probe_started.store(now, Relaxed);
                    true
                } else {
                    false
                }
            }
        }
    }

    /// Records an attempt's outcome.
    pub fn record(&self, ok: bool, now: u64, p: &BreakerPolicy) {
        if !p.enabled {
            return;
        }
        let window = (self.window.load(Relaxed) << 1) | u64::from(!ok);
        let mask = if p.window >= 64 {
            u64::MAX
        } else {
            (1u64 << p.window) - 1
        };
        self.window.store(window & mask, Relaxed);
        let seen = (self.seen.load(Relaxed) + 1).min(p.window);
        self.seen.store(seen, Relaxed);
        if ok {
            self.consecutive.store(0, Relaxed);
            if self.open_until.load(Relaxed) != 0 {
                // The probe succeeded: close, and start counting afresh.
                self.open_until.store(0, Relaxed);
                self.window.store(0, Relaxed);
                self.seen.store(0, Relaxed);
            }
            self.probing.store(false, Relaxed);
            return;
        }
        let consecutive = self.consecutive.fetch_add(1, Relaxed) + 1;
        let failures = (window & mask).count_ones();
        let ratio_trips = seen >= p.min_requests.max(1)
            && f64::from(failures) / f64::from(seen) >= p.failure_ratio;
        let was_probe = self.state(now) == State::HalfOpen;
        if consecutive >= p.consecutive_failures || ratio_trips || was_probe {
            self.open_until
                .store(now + p.cooldown.get().as_millis() as u64, Relaxed);
            self.probing.store(false, Relaxed);
        }
    }

    /// Keeps the backend out for `ms` (a `Retry-After`); `rate_limit` says
    /// whether a 429 asked for it, so the client is told the same.
    pub fn cool_for(&self, ms: u64, now: u64, rate_limit: bool) {
        let until = now + ms;
        if self.cool_until.fetch_max(until, Relaxed) <= until {
            self.cool_is_rate_limit.store(rate_limit, Relaxed);
        }
    }

    /// Whether it is out because a 429 asked us to wait (not a breaker, nor
    /// a 503's `Retry-After`).
    pub fn rate_limited(&self, now: u64) -> bool {
        now < self.cool_until.load(Relaxed) && self.cool_is_rate_limit.load(Relaxed)
    }

    /// Milliseconds until this backend takes traffic again, if it is out.
    pub fn out_for(&self, now: u64) -> Option<u64> {
        let cool = self.cool_until.load(Relaxed);
        let open = self.open_until.load(Relaxed);
        let until = cool.max(if open > now { open } else { 0 });
        (until > now).then(|| until - now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::duration::HumanDuration;

    fn policy() -> BreakerPolicy {
        BreakerPolicy {
            enabled: true,
            consecutive_failures: 3,
            failure_ratio: 0.5,
            window: 10,
            min_requests: 6,
            cooldown: HumanDuration::from_millis(1000),
        }
    }

    #[test]
    fn opens_after_consecutive_failures_then_probes_once() {
        let (s, p) = (BackendState::default(), policy());
        for _ in 0..2 {
            s.record(false, 10, &p);
        }
        assert!(s.admit(10, &p));
        s.record(false, 10, &p);
        assert_eq!(s.state(10), State::Open);
        assert!(!s.admit(500, &p));
        // After the cooldown one probe goes through, a second waits.
        assert!(s.admit(1011, &p));
        assert!(!s.admit(1012, &p));
        s.record(true, 1013, &p);
        assert_eq!(s.state(1013), State::Closed);
        assert!(s.admit(1014, &p));
    }

    #[test]
    fn failed_probe_reopens() {
        let (s, p) = (BackendState::default(), policy());
        for _ in 0..3 {
            s.record(false, 0, &p);
        }
        assert!(s.admit(1001, &p));
        s.record(false, 1002, &p);
        assert_eq!(s.state(1003), State::Open);
    }

    #[test]
    fn failure_ratio_opens_without_a_streak() {
        let (s, p) = (BackendState::default(), policy());
        // Never two failures in a row, so only the ratio can trip it: it
        // opens on the failure that makes 3 of 6 (the minimum sample).
        for ok in [true, false, true, false, true] {
            s.record(ok, 0, &p);
        }
        assert_eq!(s.state(1), State::Closed, "2 of 5 failed");
        s.record(false, 0, &p);
        assert_eq!(s.state(1), State::Open, "3 of 6 failed");
    }

    #[test]
    fn retry_after_cools_the_backend() {
        let (s, p) = (BackendState::default(), policy());
        s.cool_for(2000, 100, true);
        assert!(s.rate_limited(1000));
        assert!(!s.admit(1000, &p));
        assert_eq!(s.out_for(1000), Some(1100));
        assert!(s.admit(2101, &p));
        // A 503's Retry-After cools it too, but is not a rate limit.
        s.cool_for(1000, 3000, false);
        assert!(!s.admit(3500, &p));
        assert!(!s.rate_limited(3500));
    }
}
