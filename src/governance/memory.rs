//! The in-process store: every counter behind one lock, so an admission
//! checks all levels and then commits to all of them atomically.

use super::plan::{Ask, CounterId, Rule};
use super::window::{now_ms, Counter, Span};
use super::{Level, Metric, RateHeaders, RateInfo};
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

    /// Checks every rule of every level, then commits to all of them, or
    /// to none.
    pub fn admit(&'static self, levels: &[&[Rule]], ask: Ask) -> Result<Admitted, Rejected> {
        let now = now_ms();
        let mut map = self.lock();
        let mut worst: Option<(i64, &Rule)> = None;
        let mut headers = RateHeaders::default();
        for rule in levels.iter().flat_map(|l| l.iter()) {
            let span = rule.id.span;
            let current = span.bucket(now);
            let c = counter(&mut map, &rule.id);
            c.expire(span, current);
            let used = c.sum();
            let amount = rule.amount(&ask);
            if used + amount > rule.limit {
                let wait = match span {
                    Span::Now => 1000,
                    _ => c
                        .wait_ms(span, rule.limit, amount, now)
                        .unwrap_or_else(|| span.expires_ms(current) - now),
                };
                if worst.is_none_or(|(w, _)| wait > w) {
                    worst = Some((wait, rule));
                }
            }
            offer_headers(&mut headers, rule, c, rule.limit - used, now);
        }
        if let Some((wait_ms, rule)) = worst {
            return Err(rejection(rule, wait_ms, headers));
        }
        let mut held = Vec::new();
        let mut slots = Vec::new();
        let mut headers = RateHeaders::default();
        for rule in levels.iter().flat_map(|l| l.iter()) {
            let span = rule.id.span;
            let current = span.bucket(now);
            let amount = rule.amount(&ask);
            let c = counter(&mut map, &rule.id);
            c.add(current, amount);
            let used = c.sum();
            offer_headers(&mut headers, rule, c, rule.limit - used, now);
            match rule.id.metric {
                Metric::Requests => {}
                Metric::Concurrency => slots.push(rule.id.clone()),
                Metric::Tokens | Metric::Usd => {
                    if let Some(g) = &rule.gauge {
                        g.set(rule.natural(rule.limit - used));
                    }
                    held.push(Held {
                        rule: rule.clone(),
                        bucket: current,
                        reserved: amount,
                    });
                }
            }
        }
        drop(map);
        let counted = !held.is_empty();
        if counted {
            if let Some(m) = metrics::get() {
                m.reservations.inc();
            }
        }
        Ok(Admitted {
            reservation: super::Reservation::Memory(MemoryReservation {
                store: self,
                held,
                slots,
                counted,
                done: false,
            }),
            headers,
        })
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

/// A refusal by `rule`, counted in the rejections metric.
pub fn rejection(rule: &Rule, wait_ms: i64, headers: RateHeaders) -> Rejected {
    if let Some(m) = metrics::get() {
        m.limit_rejections
            .with_label_values(&[rule.id.level.label(), rule.reason()])
            .inc();
    }
    Rejected {
        level: rule.id.level,
        reason: rule.reason(),
        quota: rule.is_budget(),
        retry_after_s: ((wait_ms.max(1) + 999) / 1000) as u64,
        detail: describe(rule),
        headers,
    }
}

fn describe(rule: &Rule) -> String {
    let level = rule.id.level.label();
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
    /// reserved included), and frees the concurrency slots.
    pub fn finish(&mut self, tokens: i64, nanos: i64) {
        if self.done {
            return;
        }
        self.done = true;
        let now = now_ms();
        let mut map = self.store.lock();
        for h in &self.held {
            let actual = match h.rule.id.metric {
                Metric::Usd => nanos,
                _ => tokens,
            };
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
            if let Some(g) = &h.rule.gauge {
                c.expire(span, span.bucket(now));
                g.set(h.rule.natural(h.rule.limit - c.sum()));
            }
        }
        for id in &self.slots {
            counter(&mut map, id).add(0, -1);
        }
        drop(map);
        if self.counted {
            if let Some(m) = metrics::get() {
                m.reservations.dec();
            }
        }
    }
}

impl Drop for MemoryReservation {
    /// Releases whatever was not settled: the request failed, the client
    /// left, or a hook panicked.
    fn drop(&mut self) {
        self.finish(0, 0);
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
    };

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
        let first = s.admit(&[&key, &team], ASK).ok().unwrap();
        let refused = s.admit(&[&key, &team], ASK).err().unwrap();
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
        let a = s.admit(&[&key], ASK).ok().unwrap();
        a.reservation.settle(40, None);
        assert_eq!(s.used(&key[0].id), 40);
        let a = s.admit(&[&key], ASK).ok().unwrap();
        a.reservation.settle(700, None);
        assert_eq!(s.used(&key[0].id), 740);
        // 260 left: a 100-token reservation fits, a 300-token one does not.
        let big = Ask {
            tokens: 300,
            nanos: 0,
        };
        let r = s.admit(&[&key], big).err().unwrap();
        assert!(r.quota && r.reason == "budget_tokens");
        assert!(r.retry_after_s >= 1 && r.retry_after_s <= 86_400);
        assert!(s.admit(&[&key], ASK).is_ok());
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
                        if let Ok(a) = s.admit(&[&key], ASK) {
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
}
