//! The handles of the series every request updates, resolved once per label
//! set and thread instead of on every request.
//!
//! `MetricVec::with_label_values` hashes every label value with SipHash,
//! takes the family's read lock and clones the series' `Arc`, for each of
//! the eight or so updates a request makes. Here one foldhash of the label
//! set finds the handles in a per-thread table; a label set seen for the
//! first time resolves each handle on first use (so a series appears in
//! `/metrics` exactly when it would without the table). Label values come
//! from config names and fixed sets, so the table stays small; it is
//! cleared past `MAX_SETS` label sets all the same (a reload that renamed
//! keys leaves old sets behind). Nothing removes these families' series
//! from the registry, so a cached handle never goes stale.

use crate::telemetry::metrics::Metrics;
use prometheus::{Counter, Histogram, IntCounter};
use std::cell::RefCell;
use std::hash::BuildHasher;

/// Label sets kept per thread before the table starts over.
const MAX_SETS: usize = 4096;

/// The labels that decide the series of one request: alias, provider,
/// upstream model, key, endpoint, status class and usage source (`""`
/// without usage).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Labels<'a> {
    pub(crate) model: &'a str,
    pub(crate) provider: &'a str,
    pub(crate) upstream_model: &'a str,
    pub(crate) key: &'a str,
    pub(crate) endpoint: &'a str,
    pub(crate) status_class: &'a str,
    pub(crate) source: &'a str,
}

/// The token types of `tollgate_tokens_total`, in `Usage::by_kind` order.
pub(crate) const TOKEN_KINDS: [&str; 5] = [
    "input",
    "output",
    "cached_input",
    "reasoning",
    "cache_write",
];

/// One label set's handles, each resolved when first needed.
pub(crate) struct Series {
    owned: [Box<str>; 7],
    requests: Option<IntCounter>,
    duration: Option<Histogram>,
    upstream: Option<Histogram>,
    ttft: Option<Histogram>,
    tokens: [Option<IntCounter>; TOKEN_KINDS.len()],
    cost: Option<Counter>,
    unpriced: Option<IntCounter>,
    estimated: Option<IntCounter>,
    partial: Option<IntCounter>,
}

impl Labels<'_> {
    fn parts(&self) -> [&str; 7] {
        [
            self.model,
            self.provider,
            self.upstream_model,
            self.key,
            self.endpoint,
            self.status_class,
            self.source,
        ]
    }
}

impl Series {
    fn new(l: &Labels<'_>) -> Self {
        Self {
            owned: l.parts().map(Box::from),
            requests: None,
            duration: None,
            upstream: None,
            ttft: None,
            tokens: Default::default(),
            cost: None,
            unpriced: None,
            estimated: None,
            partial: None,
        }
    }

    fn labels(&self) -> Labels<'_> {
        let [model, provider, upstream_model, key, endpoint, status_class, source] =
            self.owned.each_ref().map(|s| &**s);
        Labels {
            model,
            provider,
            upstream_model,
            key,
            endpoint,
            status_class,
            source,
        }
    }

    pub(crate) fn requests(&mut self, m: &Metrics) -> &IntCounter {
        let [model, provider, upstream_model, key, endpoint, status_class, _] = &self.owned;
        self.requests.get_or_insert_with(|| {
            m.requests.with_label_values(&[
                &**model,
                provider,
                upstream_model,
                key,
                endpoint,
                status_class,
            ])
        })
    }

    pub(crate) fn duration(&mut self, m: &Metrics) -> &Histogram {
        let [model, provider, _, _, endpoint, _, _] = &self.owned;
        self.duration.get_or_insert_with(|| {
            m.duration
                .with_label_values(&[&**model, provider, endpoint])
        })
    }

    pub(crate) fn upstream(&mut self, m: &Metrics) -> &Histogram {
        let provider = &self.owned[1];
        self.upstream
            .get_or_insert_with(|| m.upstream_latency.with_label_values(&[&**provider]))
    }

    pub(crate) fn ttft(&mut self, m: &Metrics) -> &Histogram {
        let [model, provider, ..] = &self.owned;
        self.ttft
            .get_or_insert_with(|| m.ttft.with_label_values(&[&**model, provider]))
    }

    /// `None` for a token type `tollgate_tokens_total` does not know.
    pub(crate) fn tokens(&mut self, m: &Metrics, kind: &str) -> Option<&IntCounter> {
        let i = TOKEN_KINDS.iter().position(|k| *k == kind)?;
        let kind = TOKEN_KINDS[i];
        let [model, provider, upstream_model, key, _, _, source] = &self.owned;
        let slot = self.tokens.get_mut(i)?;
        Some(slot.get_or_insert_with(|| {
            m.tokens
                .with_label_values(&[&**model, provider, upstream_model, key, kind, source])
        }))
    }

    pub(crate) fn cost(&mut self, m: &Metrics) -> &Counter {
        let [model, provider, upstream_model, key, ..] = &self.owned;
        self.cost.get_or_insert_with(|| {
            m.cost
                .with_label_values(&[&**model, provider, upstream_model, key])
        })
    }

    pub(crate) fn unpriced(&mut self, m: &Metrics) -> &IntCounter {
        let [model, provider, upstream_model, key, ..] = &self.owned;
        self.unpriced.get_or_insert_with(|| {
            m.unpriced
                .with_label_values(&[&**model, provider, upstream_model, key])
        })
    }

    pub(crate) fn estimated(&mut self, m: &Metrics) -> &IntCounter {
        let [model, provider, ..] = &self.owned;
        self.estimated
            .get_or_insert_with(|| m.estimated.with_label_values(&[&**model, provider]))
    }

    pub(crate) fn partial(&mut self, m: &Metrics) -> &IntCounter {
        let [model, provider, ..] = &self.owned;
        self.partial
            .get_or_insert_with(|| m.partial_streams.with_label_values(&[&**model, provider]))
    }
}

thread_local! {
    static TABLE: RefCell<hashbrown::HashTable<Series>> =
        const { RefCell::new(hashbrown::HashTable::new()) };
}

fn hash(l: &Labels<'_>) -> u64 {
    foldhash::fast::FixedState::with_seed(0x746f_6c6c_6761_7465).hash_one(l)
}

/// Runs `f` with the handles of `labels`' series on this thread.
pub(crate) fn with<R>(labels: &Labels<'_>, f: impl FnOnce(&mut Series) -> R) -> R {
    let h = hash(labels);
    TABLE.with(|t| match t.try_borrow_mut() {
        Ok(mut table) => {
            if table.len() >= MAX_SETS && table.find(h, |s| s.labels() == *labels).is_none() {
                table.clear();
            }
            let entry = table
                .entry(h, |s| s.labels() == *labels, |s| hash(&s.labels()))
                .or_insert_with(|| Series::new(labels));
            f(entry.into_mut())
        }
        // Not reentrant in practice; resolved afresh if it ever is.
        Err(_) => f(&mut Series::new(labels)),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn labels<'a>(key: &'a str, source: &'a str) -> Labels<'a> {
        Labels {
            model: "series-test-alias",
            provider: "p",
            upstream_model: "m",
            key,
            endpoint: "chat_completions",
            status_class: "2xx",
            source,
        }
    }

    #[test]
    fn each_label_set_updates_its_own_series() {
        let m = crate::telemetry::metrics::get().unwrap();
        for _ in 0..3 {
            with(&labels("k1", "reported"), |s| s.requests(m).inc());
        }
        with(&labels("k2", "reported"), |s| s.requests(m).inc());
        let read = |key: &str| {
            m.requests
                .with_label_values(&[
                    "series-test-alias",
                    "p",
                    "m",
                    key,
                    "chat_completions",
                    "2xx",
                ])
                .get()
        };
        assert_eq!(read("k1"), 3);
        assert_eq!(read("k2"), 1);
        with(&labels("k1", "reported"), |s| {
            s.tokens(m, "input").unwrap().inc_by(5);
            assert!(s.tokens(m, "unknown").is_none());
        });
        let tokens = m
            .tokens
            .with_label_values(&["series-test-alias", "p", "m", "k1", "input", "reported"])
            .get();
        assert_eq!(tokens, 5);
    }

    #[test]
    fn the_table_starts_over_past_its_bound() {
        let m = crate::telemetry::metrics::get().unwrap();
        let names: Vec<String> = (0..MAX_SETS + 10).map(|i| format!("bound-{i}")).collect();
        for n in &names {
            with(&labels(n, ""), |s| s.requests(m).inc());
        }
        TABLE.with(|t| assert!(t.borrow().len() <= MAX_SETS));
        // Counts survive the table starting over: they live in the registry.
        with(&labels(&names[0], ""), |s| s.requests(m).inc());
        let v = m
            .requests
            .with_label_values(&[
                "series-test-alias",
                "p",
                "m",
                &names[0],
                "chat_completions",
                "2xx",
            ])
            .get();
        assert_eq!(v, 2);
    }
}
