//! The Redis store, for several gateway instances sharing limits. One
//! server-side script per admission (check every rule, then commit to all
//! or none) and one per settle; nothing is read, modified and written back
//! from the gateway. Counters are keyed by config names and window:
//! - sliding windows (rates, rolling budgets): a hash of bucket -> amount;
//! - calendar budgets: one integer per period, the period in the key;
//! - concurrency: a sorted set of leases (request id -> expiry), so a
//!   gateway that dies holding slots frees them when the lease runs out.

use super::plan::{Ask, Rule, COUNTER_MAX};
use super::window::Span;
use super::{Admitted, Metric, RateHeaders, RateInfo, Rejected};
use crate::base::clock::unix_ms as now_ms;
use crate::config::OnError;
use crate::telemetry::metrics;
use redis::aio::ConnectionManager;
use redis::Script;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// How long a concurrency slot is held at most if its gateway stops
/// renewing it (a crash). A live request renews its leases every third of
/// this ([`RedisStore::lease_ms`]).
pub const LEASE_MS: i64 = 15 * 60 * 1000;
/// Calendar counters outlive their period by this much, so a request that
/// ends just after the period still settles.
const CALENDAR_GRACE_MS: i64 = 86_400_000;
/// Leases renewed per script call.
const RENEW_BATCH: usize = 256;

/// The lease length: [`LEASE_MS`]; debug builds take
/// `TOLLGATE_TEST_LEASE_MS` (≥ 100) from the environment, for tests.
fn lease_ms() -> i64 {
    #[cfg(debug_assertions)]
    if let Some(ms) = std::env::var("TOLLGATE_TEST_LEASE_MS")
        .ok()
        .and_then(|v| v.parse::<i64>().ok())
        .filter(|ms| (100..=LEASE_MS).contains(ms))
    {
        return ms;
    }
    LEASE_MS
}

/// Every value the scripts take or keep is an integer within 0 and MAX
/// (2^53 − 1, exact in a Lua number); they refuse arguments outside it
/// (an error reply, before writing anything) and clamp what they store, so
/// no counter wraps, goes negative or makes `HINCRBY` overflow.
const ADMIT: &str = r#"
local MAX = 9007199254740991
local now = tonumber(ARGV[1])
local id = ARGV[2]
local lease = tonumber(ARGV[3])
local n = #KEYS
local grace = tonumber(ARGV[4 + n * 6])
if not (now and lease and grace) then
  return redis.error_reply('tollgate: bad arguments')
end
for i = 1, n do
  local b = 3 + (i - 1) * 6
  local limit, lo, hi = tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4])
  local param = tonumber(ARGV[b + 5])
  if not (limit and lo and hi and param) or limit < 0 or limit > MAX or lo < 0
      or hi < lo or hi > MAX or param < 0 or (ARGV[b + 1] == 's' and param < 1) then
    return redis.error_reply('tollgate: argument out of range')
  end
end
local used, take = {}, {}
local worst, worst_wait = 0, -1
for i = 1, n do
  local b = 3 + (i - 1) * 6
  local kind, limit = ARGV[b + 1], tonumber(ARGV[b + 2])
  local lo, hi, param = tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4]), tonumber(ARGV[b + 5])
  local k = KEYS[i]
  local u, wait = 0, -1
  if kind == 's' then
    local cur = math.floor(now / param)
    local flat = redis.call('HGETALL', k)
    local ids, amt = {}, {}
    for j = 1, #flat, 2 do
      local bucket, a = tonumber(flat[j]), math.max(tonumber(flat[j + 1]) or 0, 0)
      if bucket <= cur - 60 then
        redis.call('HDEL', k, flat[j])
      else
        u = u + a
        ids[#ids + 1] = bucket
        amt[bucket] = a
      end
    end
    if u + lo > limit then
      if lo <= limit then
        table.sort(ids)
        local left = u
        for _, bucket in ipairs(ids) do
          left = left - amt[bucket]
          if left + lo <= limit then
            wait = (bucket + 60) * param - now
            break
          end
        end
      end
      if wait < 0 then wait = (cur + 60) * param - now end
    end
  elseif kind == 'c' then
    u = math.max(tonumber(redis.call('GET', k) or '0') or 0, 0)
    if u + lo > limit then wait = param - now end
  else
    redis.call('ZREMRANGEBYSCORE', k, '-inf', now)
    u = redis.call('ZCARD', k)
    if u + lo > limit then wait = 1000 end
  end
  u = math.min(u, MAX)
  used[i] = u
  take[i] = math.min(hi, math.max(lo, limit - u))
  if wait >= 0 and wait > worst_wait then
    worst, worst_wait = i, math.max(wait, 0)
  end
end
local out
if worst > 0 then
  out = {0, worst, worst_wait}
  for i = 1, n do out[#out + 1] = used[i] end
  return out
end
out = {1, 0, 0}
for i = 1, n do
  local b = 3 + (i - 1) * 6
  local kind, param, commit = ARGV[b + 1], tonumber(ARGV[b + 5]), ARGV[b + 6]
  local k = KEYS[i]
  local amount = string.format('%d', take[i])
  if commit ~= '1' then
    out[#out + 1] = used[i]
  else
    if kind == 's' then
      redis.call('HINCRBY', k, string.format('%d', math.floor(now / param)), amount)
      redis.call('PEXPIRE', k, 61 * param)
    elseif kind == 'c' then
      redis.call('INCRBY', k, amount)
      redis.call('PEXPIREAT', k, param + grace)
    else
      redis.call('ZADD', k, now + lease, id)
      redis.call('PEXPIRE', k, lease)
    end
    out[#out + 1] = math.min(used[i] + take[i], MAX)
  end
end
for i = 1, n do out[#out + 1] = take[i] end
return out
"#;

const SETTLE: &str = r#"
local MAX = 9007199254740991
local now = tonumber(ARGV[1])
local id = ARGV[2]
if not now then return redis.error_reply('tollgate: bad arguments') end
for i = 1, #KEYS do
  local b = 2 + (i - 1) * 4
  local delta, param = tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4])
  if not (delta and param) or delta < -MAX or delta > MAX or param < 0
      or (ARGV[b + 1] == 's' and param < 1) then
    return redis.error_reply('tollgate: argument out of range')
  end
end
local function clamp_hash(k, field, v)
  if v < 0 then redis.call('HSET', k, field, 0)
  elseif v > MAX then redis.call('HSET', k, field, MAX) end
end
local out = {}
for i = 1, #KEYS do
  local b = 2 + (i - 1) * 4
  local kind, bucket, delta = ARGV[b + 1], ARGV[b + 2], ARGV[b + 3]
  local param = tonumber(ARGV[b + 4])
  local k = KEYS[i]
  if kind == 's' then
    local cur = math.floor(now / param)
    if redis.call('HEXISTS', k, bucket) == 1 then
      clamp_hash(k, bucket, redis.call('HINCRBY', k, bucket, delta))
    elseif tonumber(delta) > 0 then
      local field = string.format('%d', cur)
      clamp_hash(k, field, redis.call('HINCRBY', k, field, delta))
      redis.call('PEXPIRE', k, 61 * param)
    end
    local u = 0
    local flat = redis.call('HGETALL', k)
    for j = 1, #flat, 2 do
      if tonumber(flat[j]) > cur - 60 then u = u + math.max(tonumber(flat[j + 1]) or 0, 0) end
    end
    out[i] = math.min(u, MAX)
  elseif kind == 'c' then
    if redis.call('EXISTS', k) == 1 then
      local v = redis.call('INCRBY', k, delta)
      if v < 0 then redis.call('SET', k, 0, 'KEEPTTL')
      elseif v > MAX then redis.call('SET', k, MAX, 'KEEPTTL') end
    elseif tonumber(delta) > 0 then
      redis.call('INCRBY', k, delta)
      redis.call('PEXPIRE', k, param)
    end
    out[i] = math.min(math.max(tonumber(redis.call('GET', k) or '0') or 0, 0), MAX)
  else
    redis.call('ZREM', k, id)
    out[i] = 0
  end
end
return out
"#;

/// Reads counters without changing them (the admin API).
const PEEK: &str = r#"
local MAX = 9007199254740991
local now = tonumber(ARGV[1])
local out = {}
for i = 1, #KEYS do
  local kind, param = ARGV[(i - 1) * 2 + 2], tonumber(ARGV[(i - 1) * 2 + 3])
  local k = KEYS[i]
  if kind == 's' then
    local cur, u = math.floor(now / math.max(param, 1)), 0
    local flat = redis.call('HGETALL', k)
    for j = 1, #flat, 2 do
      if tonumber(flat[j]) > cur - 60 then u = u + math.max(tonumber(flat[j + 1]) or 0, 0) end
    end
    out[i] = math.min(u, MAX)
  elseif kind == 'c' then
    out[i] = math.min(math.max(tonumber(redis.call('GET', k) or '0') or 0, 0), MAX)
  else
    out[i] = redis.call('ZCOUNT', k, now, '+inf')
  end
end
return out
"#;

/// Moves the expiry of live leases (`KEYS[i]`, member `ARGV[2 + i]`) to
/// `ARGV[1]`; a lease already removed (settled) is not brought back.
const RENEW: &str = r#"
for i = 1, #KEYS do
  redis.call('ZADD', KEYS[i], 'XX', ARGV[1], ARGV[2 + i])
  redis.call('PEXPIRE', KEYS[i], ARGV[2])
end
return #KEYS
"#;

/// The Redis store.
pub struct RedisStore {
    client: redis::Client,
    manager: OnceLock<ConnectionManager>,
    on_error: OnError,
    admit: Script,
    settle: Script,
    peek: Script,
    renew: Script,
    /// How long a concurrency lease lasts unless renewed.
    lease_ms: i64,
    /// Live concurrency leases of this process: lease id -> its keys.
    live: Mutex<HashMap<String, Vec<String>>>,
    /// The renewal task was started.
    renewing: AtomicBool,
}

/// An admitted request's hold in Redis.
pub struct RedisReservation {
    store: &'static RedisStore,
    id: String,
    held: Vec<Held>,
    counted: bool,
    done: bool,
}

struct Held {
    rule: Rule,
    key: String,
    kind: &'static str,
    bucket: i64,
    reserved: i64,
    param: i64,
}

/// Why the store could not answer.
pub enum Failure {
    /// Refuse the request (fail_closed).
    Closed,
    /// Admit it without limits (fail_open).
    Open,
}

fn kind_of(span: Span) -> &'static str {
    match span {
        Span::Rate | Span::Rolling { .. } => "s",
        Span::Now => "n",
        _ => "c",
    }
}

/// The Redis key of a counter; the calendar period is part of the key.
/// `{tollgate}` keeps every key in one cluster slot.
fn key_of(rule: &Rule, bucket: i64) -> String {
    let id = &rule.id;
    let metric = match id.metric {
        Metric::Requests => "req",
        Metric::Tokens => "tok",
        Metric::Usd => "usd",
        Metric::Concurrency => "inflight",
    };
    let span = match id.span {
        Span::Rate => "rate".to_string(),
        Span::Rolling { width_ms } => format!("roll{width_ms}"),
        Span::Minute => format!("minute:{bucket}"),
        Span::Hour => format!("hour:{bucket}"),
        Span::Day => format!("day:{bucket}"),
        Span::Month => format!("month:{bucket}"),
        Span::Now => "now".to_string(),
    };
    // The name's length first: names may contain ':'.
    format!(
        "{{tollgate}}:{}:{}:{}:{metric}:{span}",
        id.level.label(),
        id.name.len(),
        id.name
    )
}

/// The script's per-counter parameter: the bucket width (sliding), or the
/// period's end (calendar).
fn param_of(span: Span, bucket: i64) -> i64 {
    match span {
        Span::Rate => 1000,
        Span::Rolling { width_ms } => width_ms,
        Span::Now => 0,
        _ => span.expires_ms(bucket),
    }
}

impl RedisStore {
    pub fn new(cfg: &crate::config::RedisStore) -> Result<RedisStore, String> {
        let client = redis::Client::open(cfg.url.as_str())
            .map_err(|e| format!("limits_store.redis.url: {e}"))?;
        Ok(RedisStore {
            client,
            manager: OnceLock::new(),
            on_error: cfg.on_error,
            admit: Script::new(ADMIT),
            settle: Script::new(SETTLE),
            peek: Script::new(PEEK),
            renew: Script::new(RENEW),
            lease_ms: lease_ms(),
            live: Mutex::new(HashMap::new()),
            renewing: AtomicBool::new(false),
        })
    }

    /// How long a concurrency lease lasts unless renewed; live ones are
    /// renewed every third of it.
    pub fn lease_ms(&self) -> i64 {
        self.lease_ms
    }

    /// The multiplexed connection, made on first use (inside the proxy's
    /// runtime). It reconnects by itself after an I/O error.
    fn conn(&self) -> Result<ConnectionManager, redis::RedisError> {
        if let Some(m) = self.manager.get() {
            return Ok(m.clone());
        }
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(500)))
            .set_response_timeout(Some(Duration::from_millis(500)))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(100));
        let m = ConnectionManager::new_lazy_with_config(self.client.clone(), config)?;
        Ok(self.manager.get_or_init(|| m).clone())
    }

    fn failed(&self, op: &'static str, e: &redis::RedisError) -> Failure {
        if let Some(m) = metrics::get() {
            m.limit_store_errors.with_label_values(&["redis", op]).inc();
        }
        match self.on_error {
            OnError::FailClosed => {
                log::warn!(
                    "limits store (redis) unreachable, refusing the request (fail_closed): {e}"
                );
                Failure::Closed
            }
            OnError::FailOpen => {
                if let Some(m) = metrics::get() {
                    m.limit_fail_open.inc();
                }
                log::warn!(
                    "limits store (redis) unreachable, admitting the request without limits (fail_open): {e}"
                );
                Failure::Open
            }
        }
    }

    /// The current value of each rule's counter, in one round trip.
    pub async fn used(&'static self, rules: &[&Rule]) -> Result<Vec<i64>, String> {
        let now = now_ms();
        let mut inv = self.peek.prepare_invoke();
        inv.arg(now);
        for rule in rules {
            let span = rule.id.span;
            let bucket = span.bucket(now);
            inv.key(key_of(rule, bucket));
            inv.arg(kind_of(span)).arg(param_of(span, bucket));
        }
        let mut conn = self.conn().map_err(|e| e.to_string())?;
        inv.invoke_async(&mut conn).await.map_err(|e| e.to_string())
    }

    /// One round trip: checks every rule of `rules` and `check` (the
    /// latter for one unit), then commits to all of `rules` or none.
    pub async fn admit(
        &'static self,
        rules: &[&Rule],
        check: &[&Rule],
        ask: Ask,
        request_id: &str,
    ) -> Result<Result<Admitted, Rejected>, Failure> {
        let now = now_ms();
        let all: Vec<(&Rule, (i64, i64), bool)> = rules
            .iter()
            .map(|r| (*r, r.amount(&ask), true))
            .chain(check.iter().map(|r| (*r, (1, 1), false)))
            .collect();
        let mut inv = self.admit.prepare_invoke();
        inv.arg(now).arg(request_id).arg(self.lease_ms);
        let mut keys = Vec::with_capacity(all.len());
        for (rule, (lo, hi), commit) in &all {
            let span = rule.id.span;
            let bucket = span.bucket(now);
            let key = key_of(rule, bucket);
            inv.key(&key);
            inv.arg(kind_of(span))
                .arg(rule.limit.clamp(0, COUNTER_MAX))
                .arg(*lo)
                .arg(*hi)
                .arg(param_of(span, bucket))
                .arg(if *commit { "1" } else { "0" });
            keys.push((key, bucket));
        }
        inv.arg(CALENDAR_GRACE_MS);
        let mut conn = self.conn().map_err(|e| self.failed("admit", &e))?;
        let out: Vec<i64> = inv
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.failed("admit", &e))?;
        let n = all.len();
        let refused = out.first() == Some(&0);
        if out.len() != if refused { 3 + n } else { 3 + 2 * n } {
            log::error!("limits store (redis): unexpected admission reply {out:?}");
            let e = redis::RedisError::from((redis::ErrorKind::Parse, "bad reply"));
            return Err(self.failed("admit", &e));
        }
        let used = &out[3..3 + n];
        let mut headers = RateHeaders::default();
        if refused {
            let index = usize::try_from(out[1]).unwrap_or(0).saturating_sub(1);
            let (rule, amount, _) = all.get(index).copied().ok_or(Failure::Closed)?;
            for ((r, _, _), u) in all.iter().zip(used) {
                offer(&mut headers, r, r.limit.saturating_sub(*u));
            }
            let alone = amount.0 > rule.limit;
            return Ok(Err(super::memory::rejection(rule, out[2], headers, alone)));
        }
        let taken = &out[3 + n..];
        let mut held = Vec::new();
        let mut leases = Vec::new();
        for ((((rule, _, commit), after), (key, bucket)), take) in
            all.iter().zip(used).zip(keys).zip(taken)
        {
            offer(&mut headers, rule, rule.limit.saturating_sub(*after));
            if !commit {
                continue;
            }
            rule.show_remaining(*after);
            if rule.id.metric == Metric::Concurrency {
                leases.push(key.clone());
            }
            held.push(Held {
                rule: (*rule).clone(),
                kind: kind_of(rule.id.span),
                param: match rule.id.span {
                    Span::Rate => 1000,
                    Span::Rolling { width_ms } => width_ms,
                    _ => CALENDAR_GRACE_MS,
                },
                key,
                bucket,
                reserved: (*take).clamp(0, COUNTER_MAX),
            });
        }
        if !leases.is_empty() {
            self.watch(request_id, leases);
        }
        let counted = held
            .iter()
            .any(|h| matches!(h.rule.id.metric, Metric::Tokens | Metric::Usd));
        if counted {
            if let Some(m) = metrics::get() {
                m.reservations.inc();
            }
        }
        Ok(Ok(Admitted {
            reservation: super::Reservation::redis(
                RedisReservation {
                    store: self,
                    id: request_id.to_string(),
                    held,
                    counted,
                    done: false,
                },
                request_id,
            ),
            headers,
        }))
    }

    /// Keeps lease `id` on `keys` alive until [`RedisStore::unwatch`]; the
    /// first call starts the renewal task.
    fn watch(&'static self, id: &str, keys: Vec<String>) {
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id.to_string())
            .or_default()
            .extend(keys);
        if self.renewing.swap(true, Ordering::AcqRel) {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(self.renew_forever());
            }
            Err(_) => self.renewing.store(false, Ordering::Release),
        }
    }

    fn unwatch(&self, id: &str) {
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    /// Every third of a lease, moves the expiry of every live lease one
    /// lease length ahead (one script call per [`RENEW_BATCH`] leases). A
    /// gateway that dies stops renewing, and its slots expire.
    async fn renew_forever(&'static self) {
        let every = Duration::from_millis(u64::try_from(self.lease_ms / 3).unwrap_or(1000).max(10));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let pairs: Vec<(String, String)> = {
                let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
                live.iter()
                    .flat_map(|(id, keys)| keys.iter().map(move |k| (k.clone(), id.clone())))
                    .collect()
            };
            if pairs.is_empty() {
                continue;
            }
            if let Err(e) = self.renew_now(&pairs).await {
                if let Some(m) = metrics::get() {
                    m.limit_store_errors
                        .with_label_values(&["redis", "renew"])
                        .inc();
                }
                log::warn!(
                    "limits store (redis): renewing {} concurrency leases failed: {e}",
                    pairs.len()
                );
            }
        }
    }

    /// Renews the leases `(key, id)` now.
    async fn renew_now(&self, pairs: &[(String, String)]) -> Result<(), redis::RedisError> {
        let mut conn = self.conn()?;
        for batch in pairs.chunks(RENEW_BATCH) {
            let mut inv = self.renew.prepare_invoke();
            inv.arg(now_ms().saturating_add(self.lease_ms))
                .arg(self.lease_ms);
            for (key, id) in batch {
                inv.key(key).arg(id);
            }
            let _: i64 = inv.invoke_async(&mut conn).await?;
        }
        Ok(())
    }
}

fn offer(h: &mut RateHeaders, rule: &Rule, remaining: i64) {
    if rule.id.span != Span::Rate {
        return;
    }
    let info = RateInfo {
        limit: rule.limit,
        remaining,
        // The window slides by the second: it is back to full within a minute.
        reset_ms: 60_000,
    };
    match rule.id.metric {
        Metric::Requests => RateHeaders::offer(&mut h.requests, info),
        Metric::Tokens => RateHeaders::offer(&mut h.tokens, info),
        _ => {}
    }
}

/// One settle script call, ready to send.
pub(crate) struct Settle {
    store: &'static RedisStore,
    id: String,
    inv: redis::ScriptInvocation<'static>,
    gauges: Vec<Option<Rule>>,
    counted: bool,
}

impl Settle {
    /// Sends it; updates the gauges, or logs and counts a failure.
    pub(crate) async fn send(self) {
        let Settle {
            store,
            id,
            inv,
            gauges,
            counted,
        } = self;
        let result: Result<Vec<i64>, _> = match store.conn() {
            Ok(mut c) => inv.invoke_async(&mut c).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(used) => {
                for (rule, u) in gauges.iter().zip(used) {
                    if let Some(rule) = rule {
                        rule.show_remaining(u);
                    }
                }
            }
            Err(e) => {
                if let Some(m) = metrics::get() {
                    m.limit_store_errors
                        .with_label_values(&["redis", "settle"])
                        .inc();
                }
                log::warn!(
                    "limits store (redis): settling request {id} failed, its reservation stays (slots expire with their lease): {e}"
                );
            }
        }
        if counted {
            if let Some(m) = metrics::get() {
                m.reservations.dec();
            }
        }
    }
}

impl RedisReservation {
    /// Settles to the real usage (or releases, with zeros) in one round
    /// trip, off the request path. With `revoke`, also gives back the
    /// `rpm` count (a later limit refused the request).
    pub fn finish(&mut self, tokens: i64, nanos: i64, revoke: bool) {
        let Some(settle) = self.take(tokens, nanos, revoke) else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(settle.send());
            }
            Err(_) => log::error!(
                "limits store (redis): no runtime to settle request {} on",
                settle.id
            ),
        }
    }

    /// [`RedisReservation::finish`], waiting for the store's answer (a
    /// refused request is answered once its slot is back).
    pub async fn finish_now(&mut self, tokens: i64, nanos: i64, revoke: bool) {
        if let Some(settle) = self.take(tokens, nanos, revoke) {
            settle.send().await;
        }
    }

    /// Marks the reservation done and builds its settle call; `None` when
    /// nothing is left to send.
    pub(super) fn take(&mut self, tokens: i64, nanos: i64, revoke: bool) -> Option<Settle> {
        if self.done {
            return None;
        }
        self.done = true;
        let (tokens, nanos) = (tokens.clamp(0, COUNTER_MAX), nanos.clamp(0, COUNTER_MAX));
        let held = std::mem::take(&mut self.held);
        let counted = self.counted;
        let store = self.store;
        let id = std::mem::take(&mut self.id);
        store.unwatch(&id);
        // What to send: each counter's change (both sides within 0 and
        // COUNTER_MAX, so no overflow), leaving out those that do not move.
        let sends: Vec<(&Held, i64)> = held
            .iter()
            .filter_map(|h| {
                let delta = match h.rule.id.metric {
                    Metric::Requests if revoke => -1,
                    Metric::Requests => 0,
                    Metric::Concurrency => return Some((h, 0)),
                    Metric::Usd => nanos - h.reserved,
                    Metric::Tokens => tokens - h.reserved,
                };
                (delta != 0).then_some((h, delta))
            })
            .collect();
        if sends.is_empty() {
            if counted {
                if let Some(m) = metrics::get() {
                    m.reservations.dec();
                }
            }
            return None;
        }
        let mut inv = store.settle.prepare_invoke();
        inv.arg(now_ms()).arg(&id);
        let mut gauges = Vec::new();
        for (h, delta) in sends {
            inv.key(&h.key);
            inv.arg(h.kind).arg(h.bucket).arg(delta).arg(h.param);
            gauges.push(h.rule.gauge.is_some().then(|| h.rule.clone()));
        }
        Some(Settle {
            store,
            id,
            inv,
            gauges,
            counted,
        })
    }

    /// Takes over what `other` (the same request's other admission step,
    /// with the same lease id) holds, so one settle covers both.
    pub fn absorb(&mut self, mut other: RedisReservation) {
        self.held.append(&mut other.held);
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

impl Drop for RedisReservation {
    fn drop(&mut self) {
        self.finish(0, 0, false);
    }
}
