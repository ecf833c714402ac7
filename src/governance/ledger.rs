//! Usage per key, team and model alias for the admin API: requests, tokens
//! and spend in the current and the previous calendar minute, hour, day and
//! month (UTC). Kept in memory; counted whether or not a limit is set.

use super::window::Span;
use super::Level;
use crate::base::clock::unix_ms as now_ms;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// The windows the ledger keeps.
pub(crate) const WINDOWS: [(&str, Span); 4] = [
    ("minute", Span::Minute),
    ("hour", Span::Hour),
    ("day", Span::Day),
    ("month", Span::Month),
];

/// What was used in one window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Tally {
    pub(crate) requests: u64,
    pub(crate) tokens: u64,
    /// Nano-dollars, so sums are exact.
    pub(crate) nanos: i64,
}

impl Tally {
    /// Adds to every figure, saturating: tokens at `u64::MAX`, spend
    /// within 0 and [`super::COUNTER_MAX`] nano-dollars (a state file
    /// cannot make it negative either).
    fn add(&mut self, requests: u64, tokens: u64, nanos: i64) {
        self.requests = self.requests.saturating_add(requests);
        self.tokens = self.tokens.saturating_add(tokens);
        self.nanos = self
            .nanos
            .saturating_add(nanos.max(0))
            .clamp(0, super::COUNTER_MAX);
    }

    pub(crate) fn spend_usd(&self) -> f64 {
        self.nanos as f64 / super::NANOS
    }
}

#[derive(Default, Clone, Copy, Serialize, Deserialize)]
pub(crate) struct Win {
    id: i64,
    current: Tally,
    previous: Tally,
}

impl Win {
    fn roll(&mut self, id: i64) {
        if self.id == id {
            return;
        }
        self.previous = if self.id == id.saturating_sub(1) {
            self.current
        } else {
            Tally::default()
        };
        self.current = Tally::default();
        self.id = id;
    }
}

/// The windows of one key, team or model.
type Entries = HashMap<(Level, Arc<str>), [Win; 4]>;

/// The windows of one workload (`tag=value`) of one key or team.
type TagEntries = HashMap<(Level, Arc<str>, Arc<str>), [Win; 4]>;

/// One row of [`Ledger::read_tags`]: level, name, `tag=value`, current
/// and previous window.
pub(crate) type TagRow = (Level, Arc<str>, Arc<str>, Tally, Tally);

/// The process's usage ledger.
#[derive(Default)]
pub(crate) struct Ledger {
    map: Mutex<Entries>,
    /// Per key and team, per workload; bounded by the declared tags.
    tags: Mutex<TagEntries>,
}

pub(crate) fn global() -> &'static Ledger {
    static LEDGER: OnceLock<Ledger> = OnceLock::new();
    LEDGER.get_or_init(Ledger::default)
}

impl Ledger {
    /// Counts one finished request against each `(level, name)`.
    pub(crate) fn record(&self, who: &[(Level, &Arc<str>)], tokens: u64, nanos: i64) {
        let now = now_ms();
        let buckets = WINDOWS.map(|(_, span)| span.bucket(now));
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        for &(level, name) in who {
            // The name is cloned only the first time it is seen.
            let key = (level, name.clone());
            let wins = match map.get_mut(&key) {
                Some(w) => w,
                None => map.entry(key).or_default(),
            };
            for (w, &id) in wins.iter_mut().zip(&buckets) {
                w.roll(id);
                w.current.add(1, tokens, nanos);
            }
        }
    }

    /// Counts one finished request against each workload `pair`
    /// (`tag=value`) of each `(level, name)`.
    pub(crate) fn record_tags(
        &self,
        who: &[(Level, &Arc<str>)],
        pairs: &[&Arc<str>],
        tokens: u64,
        nanos: i64,
    ) {
        if pairs.is_empty() {
            return;
        }
        let now = now_ms();
        let buckets = WINDOWS.map(|(_, span)| span.bucket(now));
        let mut map = self.tags.lock().unwrap_or_else(|e| e.into_inner());
        for &(level, name) in who {
            for &pair in pairs {
                let key = (level, name.clone(), pair.clone());
                let wins = map.entry(key).or_default();
                for (w, &id) in wins.iter_mut().zip(&buckets) {
                    w.roll(id);
                    w.current.add(1, tokens, nanos);
                }
            }
        }
    }

    /// `(level, name, tag=value, current, previous)` for `window`.
    pub(crate) fn read_tags(&self, window: usize) -> Vec<TagRow> {
        let now = now_ms();
        let window = window.min(WINDOWS.len() - 1);
        let (_, span) = WINDOWS[window];
        let mut map = self.tags.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<_> = map
            .iter_mut()
            .map(|((level, name, pair), wins)| {
                let w = &mut wins[window];
                w.roll(span.bucket(now));
                (*level, name.clone(), pair.clone(), w.current, w.previous)
            })
            .collect();
        out.sort_by(|a, b| (a.0.label(), &*a.1, &*a.2).cmp(&(b.0.label(), &*b.1, &*b.2)));
        out
    }

    /// Every entry, for the state file.
    pub(crate) fn dump(&self) -> Vec<(Level, String, [Win; 4])> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.iter()
            .map(|((level, name), wins)| (*level, name.to_string(), *wins))
            .collect()
    }

    /// Every workload entry, for the state file.
    pub(crate) fn dump_tags(&self) -> Vec<(Level, String, String, [Win; 4])> {
        let map = self.tags.lock().unwrap_or_else(|e| e.into_inner());
        map.iter()
            .map(|((level, name, pair), wins)| (*level, name.to_string(), pair.to_string(), *wins))
            .collect()
    }

    /// Adds workload entries read from the state file to the live ones.
    pub(crate) fn restore_tags(&self, entries: Vec<(Level, String, String, [Win; 4])>) {
        let mut map = self.tags.lock().unwrap_or_else(|e| e.into_inner());
        for (level, name, pair, saved) in entries {
            let key = (level, Arc::from(name.as_str()), Arc::from(pair.as_str()));
            merge(map.entry(key).or_default(), saved);
        }
    }

    /// Adds entries read from the state file to the live ones.
    pub(crate) fn restore(&self, entries: Vec<(Level, String, [Win; 4])>) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        for (level, name, saved) in entries {
            merge(
                map.entry((level, Arc::from(name.as_str()))).or_default(),
                saved,
            );
        }
    }

    /// `(level, name, current, previous)` for `window`, optionally only
    /// the names in `filter`.
    pub(crate) fn read(&self, window: usize) -> Vec<(Level, Arc<str>, Tally, Tally)> {
        let now = now_ms();
        let window = window.min(WINDOWS.len() - 1);
        let (_, span) = WINDOWS[window];
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<_> = map
            .iter_mut()
            .map(|((level, name), wins)| {
                let w = &mut wins[window];
                w.roll(span.bucket(now));
                (*level, name.clone(), w.current, w.previous)
            })
            .collect();
        out.sort_by(|a, b| (a.0.label(), &*a.1).cmp(&(b.0.label(), &*b.1)));
        out
    }
}

/// Adds saved windows to live ones (a window of another period is left).
fn merge(wins: &mut [Win; 4], saved: [Win; 4]) {
    for (w, s) in wins.iter_mut().zip(saved) {
        if w.id == 0 || w.id == s.id {
            w.id = s.id;
            for (mine, theirs) in [(&mut w.current, s.current), (&mut w.previous, s.previous)] {
                mine.add(theirs.requests, theirs.tokens, theirs.nanos);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tallies_saturate_instead_of_wrapping() {
        let ledger = Ledger::default();
        let name: Arc<str> = Arc::from("k");
        ledger.record(&[(Level::Key, &name)], u64::MAX, i64::MAX);
        ledger.record(&[(Level::Key, &name)], u64::MAX, i64::MAX);
        ledger.record(&[(Level::Key, &name)], 5, -7);
        let rows = ledger.read(2);
        let (_, _, cur, _) = &rows[0];
        assert_eq!(cur.requests, 3);
        assert_eq!(cur.tokens, u64::MAX);
        assert_eq!(cur.nanos, super::super::COUNTER_MAX);
        // A state file with absurd figures adds without wrapping either.
        ledger.restore(ledger.dump());
        let (_, _, cur, _) = &ledger.read(2)[0];
        assert_eq!((cur.requests, cur.tokens), (6, u64::MAX));
        assert!(cur.nanos >= 0);
    }

    #[test]
    fn workload_tallies_are_kept_per_owner_and_pair_and_round_trip() {
        let ledger = Ledger::default();
        let (alice, team): (Arc<str>, Arc<str>) = (Arc::from("alice"), Arc::from("t"));
        let (batch, none): (Arc<str>, Arc<str>) =
            (Arc::from("use_case=batch"), Arc::from("priority=none"));
        let who = [(Level::Key, &alice), (Level::Team, &team)];
        ledger.record_tags(&who, &[&batch, &none], 8, 8_000);
        ledger.record_tags(&who[..1], &[&batch], 2, 2_000);
        ledger.record_tags(&who, &[], 100, 100);
        let rows = ledger.read_tags(2);
        let find = |l: Level, n: &str, p: &str| {
            rows.iter()
                .find(|r| r.0 == l && &*r.1 == n && &*r.2 == p)
                .map(|r| (r.3.requests, r.3.tokens, r.3.nanos))
        };
        assert_eq!(rows.len(), 4);
        assert_eq!(
            find(Level::Key, "alice", "use_case=batch"),
            Some((2, 10, 10_000))
        );
        assert_eq!(
            find(Level::Team, "t", "use_case=batch"),
            Some((1, 8, 8_000))
        );
        assert_eq!(find(Level::Team, "t", "priority=none"), Some((1, 8, 8_000)));
        let again = Ledger::default();
        again.restore_tags(ledger.dump_tags());
        assert_eq!(again.read_tags(2).len(), 4);
        assert_eq!(again.read_tags(2)[0].3, rows[0].3);
    }
}
