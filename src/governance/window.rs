//! Windows and their buckets. A counter is a short list of `(bucket, amount)`
//! pairs; which buckets are live depends on the window:
//! - rates (`rpm`, `tpm`): a sliding minute of 60 one-second buckets;
//! - rolling budgets (`30d`): a sliding window of 60 buckets of `d / 60`;
//! - calendar budgets (`minute` … `month`, UTC): one bucket, the current period.

use super::plan::COUNTER_MAX;
use serde::{Deserialize, Serialize};

/// Buckets in a sliding window.
pub(crate) const SLIDING_BUCKETS: i64 = 60;

/// How a counter's window moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Span {
    /// A rate: the last 60 s in one-second buckets.
    Rate,
    /// A rolling budget: 60 buckets of `width_ms`.
    Rolling {
        width_ms: i64,
    },
    Minute,
    Hour,
    Day,
    Month,
    /// No window: a gauge of requests in flight.
    Now,
}

impl Span {
    pub fn from_window(w: crate::config::BudgetWindow) -> Span {
        use crate::config::BudgetWindow as W;
        match w {
            W::Minute => Span::Minute,
            W::Hour => Span::Hour,
            W::Day => Span::Day,
            W::Month => Span::Month,
            W::Rolling(d) => Span::Rolling {
                width_ms: (i64::try_from(d.as_millis()).unwrap_or(i64::MAX) / SLIDING_BUCKETS)
                    .max(1),
            },
        }
    }

    fn width_ms(self) -> Option<i64> {
        match self {
            Span::Rate => Some(1000),
            Span::Rolling { width_ms } => Some(width_ms),
            _ => None,
        }
    }

    /// The bucket `now_ms` falls in.
    pub fn bucket(self, now_ms: i64) -> i64 {
        match self {
            Span::Rate | Span::Rolling { .. } => now_ms.div_euclid(self.width_ms().unwrap_or(1000)),
            Span::Minute => now_ms.div_euclid(60_000),
            Span::Hour => now_ms.div_euclid(3_600_000),
            Span::Day => now_ms.div_euclid(86_400_000),
            Span::Month => {
                let (y, m, _) = civil_from_days(now_ms.div_euclid(86_400_000));
                y * 12 + (m as i64 - 1)
            }
            Span::Now => 0,
        }
    }

    /// Whether bucket `id` still counts when the current bucket is `current`.
    pub fn live(self, id: i64, current: i64) -> bool {
        match self {
            Span::Rate | Span::Rolling { .. } => id > current.saturating_sub(SLIDING_BUCKETS),
            Span::Now => true,
            _ => id == current,
        }
    }

    /// When bucket `id` stops counting, in Unix milliseconds.
    pub fn expires_ms(self, id: i64) -> i64 {
        match self {
            Span::Rate | Span::Rolling { .. } => id
                .saturating_add(SLIDING_BUCKETS)
                .saturating_mul(self.width_ms().unwrap_or(1000)),
            Span::Minute => id.saturating_add(1).saturating_mul(60_000),
            Span::Hour => id.saturating_add(1).saturating_mul(3_600_000),
            Span::Day => id.saturating_add(1).saturating_mul(86_400_000),
            Span::Month => {
                let next = id + 1;
                days_from_civil(next.div_euclid(12), next.rem_euclid(12) as u32 + 1, 1) * 86_400_000
            }
            Span::Now => i64::MAX,
        }
    }

    /// Whether a counter of this span is a budget that survives restarts.
    pub fn durable(self) -> bool {
        !matches!(self, Span::Rate | Span::Now)
    }
}

/// One counter: its live buckets, oldest first.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Counter {
    pub(crate) buckets: Vec<(i64, i64)>,
}

impl Counter {
    /// Drops buckets that no longer count.
    pub fn expire(&mut self, span: Span, current: i64) {
        if self
            .buckets
            .first()
            .is_some_and(|b| !span.live(b.0, current))
        {
            self.buckets.retain(|b| span.live(b.0, current));
        }
    }

    /// The live total, at most [`COUNTER_MAX`].
    pub fn sum(&self) -> i64 {
        self.buckets
            .iter()
            .fold(0i64, |acc, b| acc.saturating_add(b.1))
            .clamp(0, COUNTER_MAX)
    }

    /// Adds `amount` (negative to take back) to bucket `id` (kept in
    /// order). A bucket stays within 0 and [`COUNTER_MAX`]: it never goes
    /// negative and never wraps.
    pub fn add(&mut self, id: i64, amount: i64) {
        match self.buckets.iter().rposition(|b| b.0 <= id) {
            Some(i) if self.buckets[i].0 == id => {
                self.buckets[i].1 = self.buckets[i]
                    .1
                    .saturating_add(amount)
                    .clamp(0, COUNTER_MAX);
            }
            Some(i) => self
                .buckets
                .insert(i + 1, (id, amount.clamp(0, COUNTER_MAX))),
            None => self.buckets.insert(0, (id, amount.clamp(0, COUNTER_MAX))),
        }
    }

    /// Whether bucket `id` is still held.
    pub fn has(&self, id: i64) -> bool {
        self.buckets.iter().any(|b| b.0 == id)
    }

    /// Milliseconds from `now_ms` until `ask` more fits under `limit`, given
    /// the counter is over. `None` when it never will (the ask alone is
    /// over the limit, or nothing in the window expires).
    pub fn wait_ms(&self, span: Span, limit: i64, ask: i64, now_ms: i64) -> Option<i64> {
        if ask > limit {
            return None;
        }
        let mut left = self.sum();
        for &(id, amount) in &self.buckets {
            left = left.saturating_sub(amount);
            if left.saturating_add(ask) <= limit {
                return Some(span.expires_ms(id).saturating_sub(now_ms).max(0));
            }
        }
        None
    }

    /// Milliseconds until every bucket held now has expired.
    pub fn reset_ms(&self, span: Span, now_ms: i64) -> i64 {
        self.buckets
            .iter()
            .rev()
            .find(|b| b.1 > 0)
            .map_or(0, |b| span.expires_ms(b.0).saturating_sub(now_ms).max(0))
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// (year, month, day) to days since 1970-01-01.
pub(crate) fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = m as i64;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar_round_trips() {
        for days in [-800_000, -1, 0, 59, 365 * 30 + 7, 20_000, 2_000_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        // 2024-02-29 is day 19782.
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
    }

    #[test]
    fn month_window_ends_at_the_next_first() {
        // 2024-02-10T12:00:00Z
        let now = (19_762 * 86_400 + 43_200) * 1000;
        let id = Span::Month.bucket(now);
        assert_eq!(id, 2024 * 12 + 1);
        assert_eq!(
            Span::Month.expires_ms(id),
            days_from_civil(2024, 3, 1) * 86_400_000
        );
        let dec = 2024 * 12 + 11;
        assert_eq!(
            Span::Month.expires_ms(dec),
            days_from_civil(2025, 1, 1) * 86_400_000
        );
    }

    #[test]
    fn sliding_wait_frees_the_oldest_buckets_first() {
        let mut c = Counter::default();
        let t0 = 1_000_000_000_000i64;
        let b0 = Span::Rate.bucket(t0);
        c.add(b0, 2);
        c.add(b0 + 10, 1);
        // limit 3, full: one more fits once the first bucket (2) leaves.
        let wait = c.wait_ms(Span::Rate, 3, 1, t0 + 10_500).unwrap();
        assert_eq!(wait, Span::Rate.expires_ms(b0) - (t0 + 10_500));
        assert!(c.wait_ms(Span::Rate, 3, 4, t0).is_none());
        c.expire(Span::Rate, b0 + 60);
        assert_eq!(c.sum(), 1);
        c.add(b0 + 5, 3);
        assert_eq!(c.buckets, vec![(b0 + 5, 3), (b0 + 10, 1)]);
        c.add(b0 + 10, -5);
        assert_eq!(c.sum(), 3);
    }
}
