//! The Redis store, for several gateway instances sharing limits. One
//! server-side script per admission (check every rule, then commit to all
//! or none) and one per settle; nothing is read, modified and written back
//! from the gateway. Counters are keyed by config names and window:
//! - sliding windows (rates, rolling budgets): a hash of bucket -> amount;
//! - calendar budgets: one integer per period, the period in the key;
//! - concurrency: a sorted set of leases (request id -> expiry), so a
//!   gateway that dies holding slots frees them when the lease runs out.

use super::plan::{Ask, Rule};
use super::window::{now_ms, Span};
use super::{Admitted, Metric, RateHeaders, RateInfo, Rejected};
use crate::config::OnError;
use crate::telemetry::metrics;
use redis::aio::ConnectionManager;
use redis::Script;
use std::sync::OnceLock;
use std::time::Duration;

/// How long a concurrency slot is held at most if its gateway never frees
/// it (a crash).
pub const LEASE_MS: i64 = 15 * 60 * 1000;
/// Calendar counters outlive their period by this much, so a request that
/// ends just after the period still settles.
const CALENDAR_GRACE_MS: i64 = 86_400_000;

const ADMIT: &str = r#"
local now = tonumber(ARGV[1])
local id = ARGV[2]
local lease = tonumber(ARGV[3])
local n = #KEYS
local used = {}
local worst, worst_wait = 0, -1
for i = 1, n do
  local b = 3 + (i - 1) * 4
  local kind, limit = ARGV[b + 1], tonumber(ARGV[b + 2])
  local amount, param = tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4])
  local k = KEYS[i]
  local u, wait = 0, -1
  if kind == 's' then
    local cur = math.floor(now / param)
    local flat = redis.call('HGETALL', k)
    local ids, amt = {}, {}
    for j = 1, #flat, 2 do
      local bucket, a = tonumber(flat[j]), tonumber(flat[j + 1])
      if bucket <= cur - 60 then
        redis.call('HDEL', k, flat[j])
      else
        u = u + a
        ids[#ids + 1] = bucket
        amt[bucket] = a
      end
    end
    if u + amount > limit then
      if amount <= limit then
        table.sort(ids)
        local left = u
        for _, bucket in ipairs(ids) do
          left = left - amt[bucket]
          if left + amount <= limit then
            wait = (bucket + 60) * param - now
            break
          end
        end
      end
      if wait < 0 then wait = (cur + 60) * param - now end
    end
  elseif kind == 'c' then
    u = tonumber(redis.call('GET', k) or '0')
    if u + amount > limit then wait = param - now end
  else
    redis.call('ZREMRANGEBYSCORE', k, '-inf', now)
    u = redis.call('ZCARD', k)
    if u + amount > limit then wait = 1000 end
  end
  used[i] = u
  if wait >= 0 and wait > worst_wait then
    worst, worst_wait = i, wait
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
  local b = 3 + (i - 1) * 4
  local kind, amount, param = ARGV[b + 1], ARGV[b + 3], tonumber(ARGV[b + 4])
  local k = KEYS[i]
  if kind == 's' then
    redis.call('HINCRBY', k, string.format('%d', math.floor(now / param)), amount)
    redis.call('PEXPIRE', k, 61 * param)
  elseif kind == 'c' then
    redis.call('INCRBY', k, amount)
    redis.call('PEXPIREAT', k, param + tonumber(ARGV[3 + n * 4 + 1]))
  else
    redis.call('ZADD', k, now + lease, id)
    redis.call('PEXPIRE', k, lease)
  end
  out[#out + 1] = used[i] + tonumber(amount)
end
return out
"#;

const SETTLE: &str = r#"
local now = tonumber(ARGV[1])
local id = ARGV[2]
local out = {}
for i = 1, #KEYS do
  local b = 2 + (i - 1) * 4
  local kind, bucket, delta = ARGV[b + 1], ARGV[b + 2], ARGV[b + 3]
  local param = tonumber(ARGV[b + 4])
  local k = KEYS[i]
  if kind == 's' then
    if redis.call('HEXISTS', k, bucket) == 1 then
      if redis.call('HINCRBY', k, bucket, delta) < 0 then redis.call('HSET', k, bucket, 0) end
    elseif tonumber(delta) > 0 then
      redis.call('HINCRBY', k, string.format('%d', math.floor(now / param)), delta)
      redis.call('PEXPIRE', k, 61 * param)
    end
    local u = 0
    local flat = redis.call('HGETALL', k)
    local cur = math.floor(now / param)
    for j = 1, #flat, 2 do
      if tonumber(flat[j]) > cur - 60 then u = u + tonumber(flat[j + 1]) end
    end
    out[i] = u
  elseif kind == 'c' then
    if redis.call('EXISTS', k) == 1 then
      if redis.call('INCRBY', k, delta) < 0 then redis.call('SET', k, 0, 'KEEPTTL') end
    elseif tonumber(delta) > 0 then
      redis.call('INCRBY', k, delta)
      redis.call('PEXPIRE', k, param)
    end
    out[i] = tonumber(redis.call('GET', k) or '0')
  else
    redis.call('ZREM', k, id)
    out[i] = 0
  end
end
return out
"#;

/// Reads counters without changing them (the admin API).
const PEEK: &str = r#"
local now = tonumber(ARGV[1])
local out = {}
for i = 1, #KEYS do
  local kind, param = ARGV[(i - 1) * 2 + 2], tonumber(ARGV[(i - 1) * 2 + 3])
  local k = KEYS[i]
  if kind == 's' then
    local cur, u = math.floor(now / param), 0
    local flat = redis.call('HGETALL', k)
    for j = 1, #flat, 2 do
      if tonumber(flat[j]) > cur - 60 then u = u + tonumber(flat[j + 1]) end
    end
    out[i] = u
  elseif kind == 'c' then
    out[i] = tonumber(redis.call('GET', k) or '0')
  else
    out[i] = redis.call('ZCOUNT', k, now, '+inf')
  end
end
return out
"#;

/// The Redis store.
pub struct RedisStore {
    client: redis::Client,
    manager: OnceLock<ConnectionManager>,
    on_error: OnError,
    admit: Script,
    settle: Script,
    peek: Script,
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
        })
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

    /// One round trip: checks every rule, then commits to all or none.
    pub async fn admit(
        &'static self,
        levels: &[&[Rule]],
        ask: Ask,
        request_id: &str,
    ) -> Result<Result<Admitted, Rejected>, Failure> {
        let now = now_ms();
        let rules: Vec<&Rule> = levels.iter().flat_map(|l| l.iter()).collect();
        let mut inv = self.admit.prepare_invoke();
        inv.arg(now).arg(request_id).arg(LEASE_MS);
        let mut keys = Vec::with_capacity(rules.len());
        for rule in &rules {
            let span = rule.id.span;
            let bucket = span.bucket(now);
            let key = key_of(rule, bucket);
            inv.key(&key);
            inv.arg(kind_of(span))
                .arg(rule.limit)
                .arg(rule.amount(&ask))
                .arg(param_of(span, bucket));
            keys.push((key, bucket));
        }
        inv.arg(CALENDAR_GRACE_MS);
        let mut conn = self.conn().map_err(|e| self.failed("admit", &e))?;
        let out: Vec<i64> = inv
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.failed("admit", &e))?;
        if out.len() != 3 + rules.len() {
            log::error!("limits store (redis): unexpected admission reply {out:?}");
            let e = redis::RedisError::from((redis::ErrorKind::Parse, "bad reply"));
            return Err(self.failed("admit", &e));
        }
        let used = &out[3..];
        let mut headers = RateHeaders::default();
        if out[0] == 0 {
            let rule = rules
                .get((out[1] as usize).saturating_sub(1))
                .copied()
                .ok_or(Failure::Closed)?;
            for (r, u) in rules.iter().zip(used) {
                offer(&mut headers, r, r.limit - u);
            }
            return Ok(Err(super::memory::rejection(rule, out[2], headers)));
        }
        let mut held = Vec::new();
        for ((rule, after), (key, bucket)) in rules.iter().zip(used).zip(keys) {
            offer(&mut headers, rule, rule.limit - after);
            if matches!(rule.id.metric, Metric::Requests) {
                continue;
            }
            if let Some(g) = &rule.gauge {
                g.set(rule.natural(rule.limit - after));
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
                reserved: rule.amount(&ask),
            });
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
            reservation: super::Reservation::Redis(RedisReservation {
                store: self,
                id: request_id.to_string(),
                held,
                counted,
                done: false,
            }),
            headers,
        }))
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

impl RedisReservation {
    /// Settles to the real usage (or releases, with zeros) in one round
    /// trip, off the request path.
    pub fn finish(&mut self, tokens: i64, nanos: i64) {
        if self.done {
            return;
        }
        self.done = true;
        let held = std::mem::take(&mut self.held);
        let counted = self.counted;
        if held.is_empty() {
            return;
        }
        let store = self.store;
        let id = std::mem::take(&mut self.id);
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            log::error!("limits store (redis): no runtime to settle request {id} on");
            return;
        };
        rt.spawn(async move {
            let now = now_ms();
            let mut inv = store.settle.prepare_invoke();
            inv.arg(now).arg(&id);
            for h in &held {
                let actual = match h.rule.id.metric {
                    Metric::Usd => nanos,
                    Metric::Tokens => tokens,
                    _ => 0,
                };
                inv.key(&h.key);
                inv.arg(h.kind)
                    .arg(h.bucket)
                    .arg(actual - h.reserved)
                    .arg(h.param);
            }
            let result: Result<Vec<i64>, _> = match store.conn() {
                Ok(mut c) => inv.invoke_async(&mut c).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(used) => {
                    for (h, u) in held.iter().zip(used) {
                        if let Some(g) = &h.rule.gauge {
                            g.set(h.rule.natural(h.rule.limit - u));
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
        });
    }
}

impl Drop for RedisReservation {
    fn drop(&mut self) {
        self.finish(0, 0);
    }
}
