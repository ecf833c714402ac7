//! The in-process store: every counter behind one lock, so an admission
//! checks all levels and then commits to all of them atomically.

use super::plan::{Ask, CounterId, Rule, COUNTER_MAX};
use super::window::{Counter, Span};
use super::{Level, Metric, RateHeaders, RateInfo};
use crate::base::clock::unix_ms as now_ms;
use crate::telemetry::metrics;
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, OnceLock};

/// Counters by config name, kept across reloads.
#[derive(Default)]
pub struct MemoryStore {
    counters: Mutex<HashMap<CounterId, Counter>>,
}

/// The process's store.
pub fn global() -> &'static MemoryStore {
    static STORE: OnceLock<MemoryStore> = OnceLock::new();
    STORE.get_or_init(MemoryStore::default)
}

/// An admitted request: what it holds, and the rate headers to send.
pub struct Admitted {
    pub reservation: super::Reservation,
    pub headers: RateHeaders,
}

/// Why a request was refused.
#[derive(Debug, Clone)]
pub struct Rejected {
    pub level: Level,
    /// `rpm`, `tpm`, `concurrency`, `budget_usd` or `budget_tokens`.
    pub reason: &'static str,
    /// A budget (insufficient_quota) rather than a rate.
    pub quota: bool,
    pub retry_after_s: u64,
    /// What was exceeded, for the client.
    pub detail: String,
    pub headers: RateHeaders,
}

/// What one admitted request holds; released on drop unless settled.
pub struct MemoryReservation {
    store: &'static MemoryStore,
    held: Vec<Held>,
    slots: Vec<CounterId>,
    /// The `rpm` buckets this request counted in, given back only if a
    /// later limit refuses it ([`MemoryReservation::revoke`]).
    requests: Vec<(CounterId, i64)>,
    counted: bool,
    done: bool,
}

struct Held {
    rule: Rule,
    bucket: i64,
    reserved: i64,
}

impl MemoryStore {
    fn lock(&self) -> MutexGuard<'_, HashMap<CounterId, Counter>> {
        self.counters.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Checks every rule, then commits to all of them, or to none. Rules
    /// in `check_only` are checked (with an ask of 1) but not committed.
    pub fn admit(&'static self, rules: &[&Rule], ask: Ask) -> Result<Admitted, Rejected> {
        self.admit_with(rules, &[], ask)
    }

    /// [`MemoryStore::admit`], also checking `check_only` with an ask of
    /// one unit without committing to them (a budget already spent
    /// refuses before the body is read).
    pub fn admit_with(
        &'static self,
        rules: &[&Rule],
        check_only: &[&Rule],
        ask: Ask,
    ) -> Result<Admitted, Rejected> {
        let now = now_ms();
        let mut map = self.lock();
        let mut worst: Option<(i64, &Rule)> = None;
        let mut headers = RateHeaders::default();
        let one = (1, 1);
        let checks = rules
            .iter()
            .map(|r| (*r, r.amount(&ask)))
            .chain(check_only.iter().map(|r| (*r, one)));
        for (rule, (lo, _)) in checks {
            let span = rule.id.span;
            let current = span.bucket(now);
            let c = counter(&mut map, &rule.id);
            c.expire(span, current);
            let used = c.sum();
            if used.saturating_add(lo) > rule.limit {
                let wait = match span {
                    Span::Now => 1000,
                    _ => c
                        .wait_ms(span, rule.limit, lo, now)
                        .unwrap_or_else(|| span.expires_ms(current).saturating_sub(now)),
                };
                if worst.is_none_or(|(w, _)| wait > w) {
                    worst = Some((wait, rule));
                }
            }
            offer_headers(&mut headers, rule, c, rule.limit.saturating_sub(used), now);
        }
        if let Some((wait_ms, rule)) = worst {
            let alone = rule.amount(&ask).0 > rule.limit;
            return Err(rejection(rule, wait_ms, headers, alone));
        }
        let mut held = Vec::new();
        let mut slots = Vec::new();
        let mut requests = Vec::new();
        // The headers after this request: committed rules with it counted,
        // checked ones as they are.
        let mut headers_after = RateHeaders::default();
        for rule in check_only {
            let c = counter(&mut map, &rule.id);
            let used = c.sum();
            offer_headers(
                &mut headers_after,
                rule,
                c,
                rule.limit.saturating_sub(used),
                now,
            );
        }
        for rule in rules {
            let span = rule.id.span;
            let current = span.bucket(now);
            let c = counter(&mut map, &rule.id);
            let amount = rule.take(c.sum(), rule.amount(&ask));
            c.add(current, amount);
            let used = c.sum();
            offer_headers(
                &mut headers_after,
                rule,
                c,
                rule.limit.saturating_sub(used),
                now,
            );
            match rule.id.metric {
                Metric::Requests => requests.push((rule.id.clone(), current)),
                Metric::Concurrency => slots.push(rule.id.clone()),
                Metric::Tokens | Metric::Usd => {
                    rule.show_remaining(used);
                    held.push(Held {
                        rule: (*rule).clone(),
                        bucket: current,
                        reserved: amount,
                    });
                }
            }
        }
        drop(map);
        let headers = headers_after;
        let counted = !held.is_empty();
        if counted {
            if let Some(m) = metrics::get() {
                m.reservations.inc();
            }
        }
        Ok(Admitted {
            reservation: super::Reservation::memory(MemoryReservation {
                store: self,
                held,
                slots,
                requests,
                counted,
                done: false,
            }),
            headers,
        })
    }

    /// Whether the store would refuse a request now: `cheap` rules for one
    /// request, `costly` ones for one unit (a spent budget). Commits
    /// nothing; the refusal is counted like any other.
    pub fn check(&self, cheap: &[&Rule], costly: &[&Rule]) -> Option<Rejected> {
        let now = now_ms();
        let mut map = self.lock();
        let mut worst: Option<(i64, &Rule)> = None;
        let mut headers = RateHeaders::default();
        for rule in cheap.iter().chain(costly) {
            let span = rule.id.span;
            let current = span.bucket(now);
            let c = counter(&mut map, &rule.id);
            c.expire(span, current);
            let used = c.sum();
            if used.saturating_add(1) > rule.limit {
                let wait = match span {
                    Span::Now => 1000,
                    _ => c
                        .wait_ms(span, rule.limit, 1, now)
                        .unwrap_or_else(|| span.expires_ms(current).saturating_sub(now)),
                };
                if worst.is_none_or(|(w, _)| wait > w) {
                    worst = Some((wait, rule));
                }
            }
            offer_headers(&mut headers, rule, c, rule.limit.saturating_sub(used), now);
        }
        let (wait_ms, rule) = worst?;
        drop(map);
        Some(rejection(rule, wait_ms, headers, false))
    }

    /// Every counter, for snapshots and the admin API.
    pub fn dump(&self) -> Vec<(CounterId, Counter)> {
        let now = now_ms();
        let mut map = self.lock();
        map.iter_mut()
            .map(|(id, c)| {
                c.expire(id.span, id.span.bucket(now));
                (id.clone(), c.clone())
            })
            .collect()
    }

    /// The live total of one counter.
    pub fn used(&self, id: &CounterId) -> i64 {
        let now = now_ms();
        let mut map = self.lock();
        map.get_mut(id).map_or(0, |c| {
            c.expire(id.span, id.span.bucket(now));
            c.sum()
        })
    }

    /// Adds restored counters (a snapshot read at start) to the live ones.
    pub fn restore(&self, entries: Vec<(CounterId, Counter)>) {
        let now = now_ms();
        let mut map = self.lock();
        for (id, saved) in entries {
            let c = counter(&mut map, &id);
            for (bucket, amount) in saved.buckets {
                c.add(bucket, amount);
            }
            c.expire(id.span, id.span.bucket(now));
        }
    }
}

fn counter<'a>(map: &'a mut HashMap<CounterId, Counter>, id: &CounterId) -> &'a mut Counter {
    map.entry(id.clone()).or_default()
}

/// Feeds a rate rule's state into the response headers.
fn offer_headers(h: &mut RateHeaders, rule: &Rule, c: &Counter, remaining: i64, now: i64) {
    if rule.id.span != Span::Rate {
        return;
    }
    let info = RateInfo {
        limit: rule.limit,
        remaining,
        reset_ms: c.reset_ms(Span::Rate, now),
    };
    match rule.id.metric {
        Metric::Requests => RateHeaders::offer(&mut h.requests, info),
        Metric::Tokens => RateHeaders::offer(&mut h.tokens, info),
        _ => {}
    }
}

/// A refusal by `rule`, counted in the rejections metric. `alone`: the
/// request's own worst case is over the limit, so no wait helps.
pub fn rejection(rule: &Rule, wait_ms: i64, headers: RateHeaders, alone: bool) -> Rejected {
    if let Some(m) = metrics::get() {
        m.limit_rejections
            .with_label_values(&[rule.id.level.label(), rule.reason()])
            .inc();
    }
    let detail = if alone {
        format!(
            "{}: this request alone may use more than that (lower max_tokens, or send less)",
            describe(rule)
        )
    } else {
        describe(rule)
    };
    Rejected {
        level: rule.id.level,
        reason: rule.reason(),
        quota: rule.is_budget(),
        retry_after_s: u64::try_from((wait_ms.clamp(1, COUNTER_MAX) + 999) / 1000).unwrap_or(1),
        detail,
        headers,
    }
}

fn describe(rule: &Rule) -> String {
    let pair = rule.id.name.split_once('#').map_or("", |(_, p)| p);
    let level = match rule.id.level {
        super::Level::KeyWorkload => format!("key workload `{pair}`"),
        super::Level::TeamWorkload => format!("team workload `{pair}`"),
        l => l.label().to_string(),
    };
    match rule.reason() {
        "rpm" => format!("the {level}'s limit of {} requests per minute", rule.limit),
        "tpm" => format!("the {level}'s limit of {} tokens per minute", rule.limit),
        "concurrency" => format!("the {level}'s limit of {} concurrent requests", rule.limit),
        "budget_usd" => format!(
            "the {level}'s budget of ${} per {}",
            rule.natural(rule.limit),
            rule.window
        ),
        _ => format!(
            "the {level}'s budget of {} tokens per {}",
            rule.limit, rule.window
        ),
    }
}

impl MemoryReservation {
    /// Charges `tokens` and `nanos` in place of the reservation (more than
    /// reserved included), and frees the concurrency slots. With `revoke`,
    /// also gives back the `rpm` count (a later limit refused the request).
    pub fn finish(&mut self, tokens: i64, nanos: i64, revoke: bool) {
        if self.done {
            return;
        }
        self.done = true;
        let now = now_ms();
        let (tokens, nanos) = (tokens.clamp(0, COUNTER_MAX), nanos.clamp(0, COUNTER_MAX));
        let mut map = self.store.lock();
        for h in &self.held {
            let actual = match h.rule.id.metric {
                Metric::Usd => nanos,
                _ => tokens,
            };
            // Both within 0 and COUNTER_MAX: no overflow.
            let delta = actual - h.reserved;
            let span = h.rule.id.span;
            let c = counter(&mut map, &h.rule.id);
            if c.has(h.bucket) {
                c.add(h.bucket, delta);
            } else if delta > 0 {
                // The reservation's bucket has left the window: charge the
                // excess now.
                c.add(span.bucket(now), delta);
            }
            if h.rule.gauge.is_some() {
                c.expire(span, span.bucket(now));
                h.rule.show_remaining(c.sum());
            }
        }
        for id in &self.slots {
            counter(&mut map, id).add(0, -1);
        }
        if revoke {
            for (id, bucket) in &self.requests {
                let c = counter(&mut map, id);
                if c.has(*bucket) {
                    c.add(*bucket, -1);
                }
            }
        }
        drop(map);
        if self.counted {
            if let Some(m) = metrics::get() {
                m.reservations.dec();
            }
        }
    }

    /// Takes over what `other` holds, so one settle covers both.
    pub fn absorb(&mut self, mut other: MemoryReservation) {
        self.held.append(&mut other.held);
        self.slots.append(&mut other.slots);
        self.requests.append(&mut other.requests);
        if other.counted {
            if self.counted {
                if let Some(m) = metrics::get() {
                    m.reservations.dec();
                }
            }
            self.counted = true;
        }
        other.done = true;
    }
}

impl Drop for MemoryReservation {
    /// Releases whatever was not settled: the request failed, the client
    /// left, or a hook panicked.
    fn drop(&mut self) {
        self.finish(0, 0, false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Budget, BudgetWindow, Limits};
    use crate::governance::plan::compile;

    fn store() -> &'static MemoryStore {
        Box::leak(Box::default())
    }

    fn tokens(n: u64) -> Vec<Budget> {
        vec![Budget {
            usd: None,
            tokens: Some(n),
            window: BudgetWindow::Day,
        }]
    }

    const ASK: Ask = Ask {
        tokens: 100,
        nanos: 0,
        tokens_max: 100,
        nanos_max: 0,
    };

    fn refs(levels: &[&[Rule]]) -> Vec<&'static Rule> {
        levels
            .iter()
            .flat_map(|l| l.iter())
            .map(|r| &*Box::leak(Box::new(r.clone())))
            .collect()
    }

    #[test]
    fn a_refusal_at_one_level_holds_nothing_at_another() {
        let s = store();
        let key = compile(Level::Key, "k", &Limits::default(), &tokens(1000));
        let team = compile(
            Level::Team,
            "t",
            &Limits {
                concurrency: Some(1),
                ..Limits::default()
            },
            &[],
        );
        let first = s.admit(&refs(&[&key, &team]), ASK).ok().unwrap();
        let refused = s.admit(&refs(&[&key, &team]), ASK).err().unwrap();
        assert_eq!(
            (refused.level, refused.reason),
            (Level::Team, "concurrency")
        );
        assert!(!refused.quota);
        assert_eq!(s.used(&key[0].id), 100, "only the admitted request holds");
        drop(first.reservation);
        assert_eq!(s.used(&key[0].id), 0, "dropping releases");
        assert_eq!(s.used(&team[0].id), 0, "and frees the slot");
    }

    #[test]
    fn settle_charges_the_real_usage_even_above_the_reservation() {
        let s = store();
        let key = compile(Level::Key, "k", &Limits::default(), &tokens(1000));
        let a = s.admit(&refs(&[&key]), ASK).ok().unwrap();
        a.reservation.settle(40, None);
        assert_eq!(s.used(&key[0].id), 40);
        let a = s.admit(&refs(&[&key]), ASK).ok().unwrap();
        a.reservation.settle(700, None);
        assert_eq!(s.used(&key[0].id), 740);
        // 260 left: a 100-token reservation fits, a 300-token one does not.
        let big = Ask::new(300, 0);
        let r = s.admit(&refs(&[&key]), big).err().unwrap();
        assert!(r.quota && r.reason == "budget_tokens");
        assert!(r.retry_after_s >= 1 && r.retry_after_s <= 86_400);
        assert!(s.admit(&refs(&[&key]), ASK).is_ok());
    }

    #[test]
    fn threads_racing_never_overshoot() {
        let s = store();
        let key = compile(Level::Key, "k", &Limits::default(), &tokens(1000));
        let admitted = std::sync::atomic::AtomicUsize::new(0);
        let held = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| {
                    for _ in 0..50 {
                        if let Ok(a) = s.admit(&refs(&[&key]), ASK) {
                            admitted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            held.lock().unwrap().push(a.reservation);
                        }
                    }
                });
            }
        });
        assert_eq!(admitted.into_inner(), 10);
        assert_eq!(s.used(&key[0].id), 1000);
    }

    #[test]
    fn a_worst_case_at_the_ceiling_is_refused_and_wraps_nothing() {
        let s = store();
        let key = compile(Level::Key, "k", &Limits::default(), &tokens(1000));
        let rules = refs(&[&key]);
        s.admit(&rules, ASK)
            .ok()
            .unwrap()
            .reservation
            .settle(100, None);
        let huge = Ask::new(u64::MAX, u64::MAX);
        assert_eq!(huge.tokens, COUNTER_MAX);
        let r = s.admit(&rules, huge).err().unwrap();
        assert!(
            r.quota && r.detail.contains("this request alone"),
            "{}",
            r.detail
        );
        assert_eq!(s.used(&key[0].id), 100, "nothing wrapped to 0");
        // Settling more than the ceiling (a provider billing absurd usage)
        // saturates instead of wrapping.
        let a = s.admit(&rules, ASK).ok().unwrap();
        a.reservation.settle(u64::MAX, Some(f64::NAN));
        assert_eq!(s.used(&key[0].id), COUNTER_MAX);
        let again = s.admit(&rules, ASK).err().unwrap();
        assert!(again.quota);
        assert_eq!(s.used(&key[0].id), COUNTER_MAX);
    }

    #[test]
    fn an_elastic_ask_takes_what_is_left_down_to_its_floor() {
        let s = store();
        let key = compile(Level::Key, "k", &Limits::default(), &tokens(1000));
        let rules = refs(&[&key]);
        let elastic = Ask {
            tokens: 100,
            nanos: 0,
            tokens_max: 700,
            nanos_max: 0,
        };
        let a = s.admit(&rules, elastic).ok().unwrap();
        assert_eq!(s.used(&key[0].id), 700);
        let b = s.admit(&rules, elastic).ok().unwrap();
        assert_eq!(s.used(&key[0].id), 1000, "the rest, above the floor");
        assert!(s.admit(&rules, elastic).is_err());
        drop(b);
        a.reservation.settle(250, None);
        assert_eq!(s.used(&key[0].id), 250);
    }

    #[test]
    fn counters_never_wrap_at_the_ceiling() {
        let mut c = Counter::default();
        c.add(1, COUNTER_MAX);
        c.add(1, COUNTER_MAX);
        c.add(2, i64::MAX);
        assert_eq!(c.sum(), COUNTER_MAX);
        c.add(1, i64::MIN);
        assert_eq!(c.buckets[0], (1, 0));
        assert!(c.wait_ms(Span::Rate, COUNTER_MAX, COUNTER_MAX, 0).is_some());
    }
}
