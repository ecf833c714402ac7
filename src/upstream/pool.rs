//! A provider's key pool (`api_keys`): per attempt, one key is picked by
//! weight (smooth weighted round-robin, so the shares hold exactly over
//! any run of requests) among those not cooling down, not yet tried by
//! this request, and within their own `rpm` / `tpm`. A 429 on a key cools that key (for its
//! `Retry-After`), a 401/403 takes it out for longer; the request then
//! tries another key of the same provider before falling back (the walk is
//! `engine::attempts`).
//!
//! Each key's state (cooldown, rolling-minute counters) lives in
//! `runtime::Durable`, keyed by the provider's name and the key's SHA-256,
//! so a reload that keeps a key keeps its state. Metrics and logs name a
//! key by its `name`, else its index in the list; never by the secret.

use crate::config::{PoolKey, PoolKeyLimits};
use crate::telemetry::metrics;
use http::HeaderValue;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

/// How long a key is out after a 429 without `Retry-After`.
pub(crate) const DEFAULT_COOLDOWN_MS: u64 = 10_000;
/// How long a key the provider refused (401/403) is out.
pub(crate) const REFUSED_COOLDOWN_MS: u64 = 300_000;
/// The rolling window of `rpm` and `tpm`.
const WINDOW_MS: u64 = 60_000;

/// What outlives a reload for one key (of one provider).
#[derive(Debug, Default)]
pub(crate) struct KeyState {
    /// Monotonic ms until which the key is not picked.
    cool_until: AtomicU64,
    /// Whether that cooldown came from a 429 (else the key was refused).
    cool_rate_limited: AtomicBool,
    window: Mutex<Window>,
}

/// Two fixed one-minute buckets, read as a sliding minute: the previous
/// bucket weighted by how much of it still overlaps the last 60 s.
#[derive(Debug, Default, Clone, Copy)]
struct Window {
    start: u64,
    requests: u64,
    prev_requests: u64,
    tokens: u64,
    prev_tokens: u64,
    /// Requests whose tokens were counted (for the average a pick holds).
    settled: u64,
    prev_settled: u64,
    /// Tokens held by picks not yet settled (`tpm` keys only). Not a
    /// bucket: it outlives the window's roll.
    held: u64,
}

impl Window {
    fn roll(&mut self, now: u64) {
        let elapsed = now.saturating_sub(self.start);
        if elapsed >= 2 * WINDOW_MS {
            *self = Window {
                start: now - now % WINDOW_MS,
                held: self.held,
                ..Window::default()
            };
        } else if elapsed >= WINDOW_MS {
            self.prev_requests = self.requests;
            self.prev_tokens = self.tokens;
            self.prev_settled = self.settled;
            self.requests = 0;
            self.tokens = 0;
            self.settled = 0;
            self.start = self.start.saturating_add(WINDOW_MS);
        }
    }

    /// Tokens per settled request over both buckets (0 before the first).
    fn average_tokens(&self) -> u64 {
        let n = self.settled.saturating_add(self.prev_settled);
        self.tokens
            .saturating_add(self.prev_tokens)
            .checked_div(n)
            .unwrap_or(0)
    }

    /// `current` plus the part of `prev` still inside the last minute.
    fn sliding(&self, now: u64, current: u64, prev: u64) -> u64 {
        let into = now.saturating_sub(self.start).min(WINDOW_MS);
        let overlap = (prev as u128) * u128::from(WINDOW_MS - into) / u128::from(WINDOW_MS);
        current.saturating_add(u64::try_from(overlap).unwrap_or(u64::MAX))
    }
}

impl KeyState {
    fn cooling(&self, now: u64) -> Option<u64> {
        let until = self.cool_until.load(Relaxed);
        (now < until).then(|| until - now)
    }

    /// Takes one request of the key's `rpm` if it has room, and with a
    /// `tpm`, holds the tokens a request here uses on average until the
    /// pick settles, so requests in flight count against it (without the
    /// hold, every concurrent request saw the same unspent minute).
    /// `Ok(held)`; `Err(ms)`: full, for about this long.
    fn take(&self, now: u64, limits: &PoolKeyLimits) -> Result<u64, u64> {
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        w.roll(now);
        let wait = WINDOW_MS - now.saturating_sub(w.start).min(WINDOW_MS - 1);
        if let Some(rpm) = limits.rpm {
            if w.sliding(now, w.requests, w.prev_requests) >= rpm {
                return Err(wait);
            }
        }
        let mut held = 0;
        if let Some(tpm) = limits.tpm {
            let used = w.sliding(now, w.tokens, w.prev_tokens);
            if used.saturating_add(w.held) >= tpm {
                return Err(wait);
            }
            held = w.average_tokens();
            w.held = w.held.saturating_add(held);
        }
        w.requests = w.requests.saturating_add(1);
        Ok(held)
    }

    /// Gives back a request taken by a pick that was not used, and what
    /// it held.
    fn give_back(&self, held: u64) {
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        w.requests = w.requests.saturating_sub(1);
        w.held = w.held.saturating_sub(held);
    }

    /// Lets go of tokens a pick held (it ended without a count).
    fn release(&self, held: u64) {
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        w.held = w.held.saturating_sub(held);
    }

    /// Counts tokens a request on this key used, in place of what its
    /// pick held.
    fn spend(&self, now: u64, tokens: u64, held: u64) {
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        w.roll(now);
        w.held = w.held.saturating_sub(held);
        w.tokens = w.tokens.saturating_add(tokens);
        w.settled = w.settled.saturating_add(1);
    }

    fn cool(&self, ms: u64, now: u64, rate_limited: bool) {
        let until = now.saturating_add(ms);
        if self.cool_until.fetch_max(until, Relaxed) <= until {
            self.cool_rate_limited.store(rate_limited, Relaxed);
        }
    }
}

/// One key, compiled.
struct Key {
    /// The header value (`Bearer …`, or the bare key), marked sensitive.
    header: HeaderValue,
    weight: f64,
    limits: PoolKeyLimits,
    /// `name`, else the index.
    label: Arc<str>,
    state: Arc<KeyState>,
}

/// A provider's keys.
pub(crate) struct KeyPool {
    provider: String,
    keys: Vec<Key>,
    /// Smooth weighted round-robin (nginx's): each key's running credit.
    /// Picks follow the weights exactly over any run of requests, not only
    /// on average.
    credit: Mutex<Vec<f64>>,
}

/// The key an attempt uses (its header and name are the pool's).
#[derive(Clone)]
pub(crate) struct KeyPick {
    pub(crate) index: usize,
    /// The key's state, with what this pick holds of it.
    held: Arc<Held>,
}

/// The tokens a pick holds in its key's `tpm`, shared by the pick's
/// clones: settled once (`spent`, `unused`), else let go when the last
/// clone is dropped (a failed, cancelled or abandoned attempt), so no path
/// keeps them.
struct Held {
    state: Arc<KeyState>,
    tokens: AtomicU64,
}

impl Held {
    fn take(&self) -> u64 {
        self.tokens.swap(0, Relaxed)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let t = self.take();
        if t > 0 {
            self.state.release(t);
        }
    }
}

/// Why no key could be picked: every usable key was tried, or the others
/// are out for at least `ms` (`rate_limited`: one waits out a 429).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KeysOut {
    pub(crate) ms: u64,
    pub(crate) rate_limited: bool,
}

impl KeyPool {
    /// Compiles `keys`, each header made by `header` (the kind's auth
    /// header value), its state found in `states` by provider and digest.
    pub(crate) fn build(
        provider: &str,
        keys: &[PoolKey],
        header: impl Fn(&str) -> Result<HeaderValue, String>,
        states: &crate::base::keyed::Keyed<(String, [u8; 32]), KeyState>,
    ) -> Result<Self, String> {
        let keys = keys
            .iter()
            .enumerate()
            .map(|(i, k)| {
                let header = header(&k.key).map_err(|e| format!("api_keys[{i}]: {e}"))?;
                let digest = crate::auth::digest(k.key.as_bytes());
                Ok(Key {
                    header,
                    weight: k.weight,
                    limits: k.limits,
                    label: Arc::from(k.name.clone().unwrap_or_else(|| i.to_string())),
                    state: states.get_or_default((provider.to_string(), digest)),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Self {
            provider: provider.to_string(),
            credit: Mutex::new(vec![0.0; keys.len()]),
            keys,
        })
    }

    /// The next key among `usable` by smooth weighted round-robin over the
    /// weighted ones, else uniformly among the standby ones.
    fn next(&self, usable: &[usize]) -> Option<usize> {
        let weighted = || {
            usable
                .iter()
                .copied()
                .filter(|&i| self.keys[i].weight > 0.0)
        };
        let total: f64 = weighted().map(|i| self.keys[i].weight).sum();
        if total <= 0.0 {
            return (!usable.is_empty()).then(|| usable[fastrand::usize(..usable.len())]);
        }
        let mut credit = self.credit.lock().unwrap_or_else(|p| p.into_inner());
        let mut best: Option<usize> = None;
        for i in weighted() {
            credit[i] += self.keys[i].weight;
            if best.is_none_or(|b| credit[i] > credit[b]) {
                best = Some(i);
            }
        }
        if let Some(b) = best {
            credit[b] -= total;
        }
        best
    }

    /// Picks a key not in `tried`: by weight among the usable weighted
    /// keys, else uniformly among the usable standby (weight 0) ones. The
    /// pick takes one request of the key's `rpm`.
    pub(crate) fn pick(&self, tried: &[usize], now: u64) -> Result<KeyPick, Option<KeysOut>> {
        let mut out: Option<KeysOut> = None;
        let mut note = |ms: u64, rate_limited: bool| {
            let o = out.get_or_insert(KeysOut {
                ms,
                rate_limited: false,
            });
            o.ms = o.ms.min(ms);
            o.rate_limited |= rate_limited;
        };
        let mut usable: Vec<usize> = Vec::with_capacity(self.keys.len());
        for (i, k) in self.keys.iter().enumerate() {
            if tried.contains(&i) {
                continue;
            }
            match k.state.cooling(now) {
                Some(ms) => note(ms, k.state.cool_rate_limited.load(Relaxed)),
                None => usable.push(i),
            }
        }
        // Until a key has room in its window (a full one is left out).
        loop {
            let Some(i) = self.next(&usable) else {
                return Err(out);
            };
            usable.retain(|&u| u != i);
            let k = &self.keys[i];
            match k.state.take(now, &k.limits) {
                Ok(held) => {
                    return Ok(KeyPick {
                        index: i,
                        held: Arc::new(Held {
                            state: k.state.clone(),
                            tokens: AtomicU64::new(held),
                        }),
                    })
                }
                // Over its own quota: as if the provider had said 429.
                Err(ms) => note(ms, true),
            }
        }
    }
}

impl KeyPool {
    /// The header value of key `index`.
    pub(crate) fn header(&self, index: usize) -> Option<&HeaderValue> {
        self.keys.get(index).map(|k| &k.header)
    }

    /// The name of key `index` in metrics and logs.
    pub(crate) fn label(&self, index: usize) -> &str {
        self.keys.get(index).map_or("-", |k| &k.label)
    }
}

impl KeyPick {
    /// The pick was not used (no backend could be had).
    pub(crate) fn unused(&self) {
        self.held.state.give_back(self.held.take());
    }

    /// The provider rate-limited this key: out for `retry_after` seconds
    /// (or [`DEFAULT_COOLDOWN_MS`]).
    pub(crate) fn rate_limited(&self, pool: &KeyPool, retry_after: Option<u64>, now: u64) {
        let ms = retry_after.map_or(DEFAULT_COOLDOWN_MS, |s| s.saturating_mul(1000));
        self.held.state.cool(ms, now, true);
        if let Some(m) = metrics::get() {
            m.key_cooldowns
                .with_label_values(&[&pool.provider, pool.label(self.index), "rate_limited"])
                .inc();
        }
    }

    /// The provider refused this key (401/403): out for
    /// [`REFUSED_COOLDOWN_MS`].
    pub(crate) fn refused(&self, pool: &KeyPool, status: u16, now: u64) {
        let (provider, label) = (&pool.provider, pool.label(self.index));
        log::error!(
            "provider {provider} refused key `{label}` (HTTP {status}); it is left out for {} s: check providers.{provider}.api_keys",
            REFUSED_COOLDOWN_MS / 1000
        );
        self.held.state.cool(REFUSED_COOLDOWN_MS, now, false);
        if let Some(m) = metrics::get() {
            m.key_cooldowns
                .with_label_values(&[provider, label, "refused"])
                .inc();
        }
    }

    /// Counts the tokens a request used on this key (its `tpm`).
    pub(crate) fn spent(&self, pool: &KeyPool, tokens: u64, now: u64) {
        self.held.state.spend(now, tokens, self.held.take());
        if let Some(m) = metrics::get() {
            m.key_tokens
                .with_label_values(&[&pool.provider, pool.label(self.index)])
                .inc_by(tokens);
        }
    }

    /// Counts one attempt's outcome on this key.
    pub(crate) fn outcome(&self, pool: &KeyPool, outcome: &str) {
        if let Some(m) = metrics::get() {
            m.key_attempts
                .with_label_values(&[&pool.provider, pool.label(self.index), outcome])
                .inc();
        }
    }
}

impl std::fmt::Debug for KeyPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let labels: Vec<&str> = self.keys.iter().map(|k| &*k.label).collect();
        f.debug_struct("KeyPool")
            .field("provider", &self.provider)
            .field("keys", &labels)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::base::keyed::Keyed;

    fn pool(
        keys: &[(&str, f64, Option<u64>)],
        states: &Keyed<(String, [u8; 32]), KeyState>,
    ) -> KeyPool {
        pool_tpm(keys, None, states)
    }

    fn pool_tpm(
        keys: &[(&str, f64, Option<u64>)],
        tpm: Option<u64>,
        states: &Keyed<(String, [u8; 32]), KeyState>,
    ) -> KeyPool {
        let keys: Vec<PoolKey> = keys
            .iter()
            .map(|(k, w, rpm)| PoolKey {
                key: k.to_string(),
                weight: *w,
                limits: PoolKeyLimits { rpm: *rpm, tpm },
                name: None,
            })
            .collect();
        KeyPool::build(
            "p",
            &keys,
            |k| HeaderValue::from_str(k).map_err(|e| e.to_string()),
            states,
        )
        .unwrap()
    }

    #[test]
    fn picks_follow_the_weights_and_skip_cooling_and_tried_keys() {
        let states = Keyed::default();
        let p = pool(
            &[("a", 3.0, None), ("b", 1.0, None), ("c", 0.0, None)],
            &states,
        );
        let mut n = [0usize; 3];
        for _ in 0..4000 {
            n[p.pick(&[], 0).unwrap().index] += 1;
        }
        assert_eq!(
            n[2], 0,
            "a standby key is not picked while others are usable"
        );
        assert_eq!(n, [3000, 1000, 0], "the weights hold exactly");
        let a = p.pick(&[1], 0).unwrap();
        assert_eq!(a.index, 0);
        a.rate_limited(&p, Some(2), 0);
        assert_eq!(p.pick(&[1], 0).unwrap().index, 2, "the standby key serves");
        assert_eq!(
            p.pick(&[1, 2], 100).err().unwrap(),
            Some(KeysOut {
                ms: 1900,
                rate_limited: true
            })
        );
        assert_eq!(
            p.pick(&[1, 2], 2000).unwrap().index,
            0,
            "back after Retry-After"
        );
        // The state is found again by a pool built from the same key.
        let again = pool(&[("z", 1.0, None), ("a", 1.0, None)], &states);
        a.rate_limited(&p, Some(5), 3000);
        assert_eq!(again.pick(&[], 4000).unwrap().index, 0);
    }

    fn held(p: &KeyPool) -> u64 {
        let w = p.keys[0].state.window.lock().unwrap();
        w.held
    }

    #[test]
    fn requests_in_flight_hold_their_average_tokens_against_tpm() {
        let states = Keyed::default();
        let p = pool_tpm(&[("a", 1.0, None)], Some(100), &states);
        // The first request holds nothing (no average yet) and used 40.
        let first = p.pick(&[], 1_000).unwrap();
        assert_eq!(held(&p), 0);
        first.spent(&p, 40, 1_000);
        // 40 spent; each request in flight now holds 40 more: 40 + 40 is
        // under 100, 40 + 80 is not.
        let a = p.pick(&[], 2_000).unwrap();
        let b = p.pick(&[], 2_000).unwrap();
        assert_eq!(held(&p), 80);
        let out = p.pick(&[], 2_000).err().unwrap().unwrap();
        assert!(out.rate_limited, "a full key answers as a 429 would");
        // A clone settles the pick once; the drop of the rest adds nothing.
        let a2 = a.clone();
        a2.spent(&p, 10, 2_000);
        drop(a);
        drop(a2);
        assert_eq!(held(&p), 40, "only b holds now");
        // An attempt that fails and is dropped lets go of what it held.
        drop(b);
        assert_eq!(held(&p), 0);
        // An unused pick gives back its request and its hold.
        let c = p.pick(&[], 3_000).unwrap();
        assert_eq!(held(&p), 25, "the average is now (40 + 10) / 2");
        c.unused();
        assert_eq!(held(&p), 0);
        // The hold outlives the window's roll.
        let d = p.pick(&[], 500_000).unwrap();
        assert_eq!(held(&p), 0, "no average left after two idle minutes");
        d.spent(&p, 30, 500_000);
        let e = p.pick(&[], 500_000).unwrap();
        assert_eq!(held(&p), 30);
        assert!(p.pick(&[], 700_000).is_ok(), "rolled: 0 spent, 30 held");
        drop(e);
    }

    #[test]
    fn rpm_is_a_rolling_minute() {
        let states = Keyed::default();
        let p = pool(&[("a", 1.0, Some(2))], &states);
        assert!(p.pick(&[], 1_000).is_ok());
        let second = p.pick(&[], 2_000).unwrap();
        let out = p.pick(&[], 3_000).err().unwrap().unwrap();
        assert!(out.rate_limited && out.ms > 0);
        second.unused();
        assert!(
            p.pick(&[], 3_000).is_ok(),
            "a given-back request frees room"
        );
        // Half a minute into the next bucket, half of the last one counts.
        assert!(p.pick(&[], 90_000).is_ok());
        assert!(p.pick(&[], 90_000).is_err());
        assert!(p.pick(&[], 200_000).is_ok());
    }
}
