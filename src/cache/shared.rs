//! The Redis store: entries as Redis strings under `tollgate:cache:<hex
//! key>`, expiring with the alias's `ttl` (`SET … PX`); Redis's own
//! `maxmemory` policy bounds them. Shared by every instance that names the
//! same server. A look-up that fails (Redis down, slow, or a value that
//! does not decode) is a miss, counted in
//! `tollgate_cache_store_errors_total`, never an error; a store that fails
//! is dropped the same way.

use super::{Entry, Key};
use crate::accounting::Usage;
use bytes::Bytes;
use redis::aio::ConnectionManager;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// What a look-up waits for Redis at most before it is a miss.
const TIMEOUT: Duration = Duration::from_millis(250);
/// The value's format version (its first byte).
const VERSION: u8 = 1;
/// Header bytes before the body: version, stream, 5 counts, cost flag, cost.
const HEADER: usize = 1 + 1 + 5 * 8 + 1 + 8;

pub(crate) struct RedisCache {
    client: redis::Client,
    manager: OnceLock<ConnectionManager>,
}

impl RedisCache {
    /// The store at `url` (checked by the config's validation). No
    /// connection is made until the first request.
    pub(crate) fn open(url: &str) -> Result<RedisCache, String> {
        let client = redis::Client::open(url)
            .map_err(|_| "cache.redis.url: is not a Redis URL".to_string())?;
        Ok(RedisCache {
            client,
            manager: OnceLock::new(),
        })
    }

    /// The multiplexed connection, made on first use; it reconnects by
    /// itself after an I/O error.
    fn conn(&self) -> Result<ConnectionManager, redis::RedisError> {
        if let Some(m) = self.manager.get() {
            return Ok(m.clone());
        }
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT))
            .set_number_of_retries(0)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(100));
        let m = ConnectionManager::new_lazy_with_config(self.client.clone(), config)?;
        Ok(self.manager.get_or_init(|| m).clone())
    }

    /// The live entry under `key`; `None` on a miss or a failure.
    pub(crate) async fn get(&self, key: &Key) -> Option<Entry> {
        let name = redis_key(key);
        let got = async {
            let mut c = self.conn()?;
            redis::cmd("GET")
                .arg(&name)
                .query_async::<Option<Vec<u8>>>(&mut c)
                .await
        };
        match tokio::time::timeout(TIMEOUT, got).await {
            Ok(Ok(Some(v))) => {
                let e = decode(Bytes::from(v));
                if e.is_none() {
                    failed("decode");
                }
                e
            }
            Ok(Ok(None)) => None,
            Ok(Err(e)) => {
                log::warn!("response cache (redis): look-up failed, served as a miss: {e}");
                failed("get");
                None
            }
            Err(_) => {
                log::warn!("response cache (redis): look-up timed out, served as a miss");
                failed("get");
                None
            }
        }
    }

    /// Stores `entry` under `key` for `ttl_ms`, in the background.
    pub(crate) fn put(self: &Arc<Self>, key: Key, entry: &Entry, ttl_ms: u64) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let value = encode(entry);
        let me = self.clone();
        rt.spawn(async move {
            let set = async {
                let mut c = me.conn()?;
                redis::cmd("SET")
                    .arg(redis_key(&key))
                    .arg(value)
                    .arg("PX")
                    .arg(ttl_ms.max(1))
                    .query_async::<()>(&mut c)
                    .await
            };
            match tokio::time::timeout(TIMEOUT.saturating_mul(4), set).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    log::warn!("response cache (redis): store failed: {e}");
                    failed("put");
                }
                Err(_) => {
                    log::warn!("response cache (redis): store timed out");
                    failed("put");
                }
            }
        });
    }
}

fn failed(op: &'static str) {
    if let Some(m) = crate::telemetry::metrics::get() {
        m.cache_store_errors.with_label_values(&["redis", op]).inc();
    }
}

fn redis_key(key: &Key) -> String {
    format!("tollgate:cache:{}", hex::encode(key))
}

fn encode(e: &Entry) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEADER.saturating_add(e.body.len()));
    v.push(VERSION);
    v.push(u8::from(e.stream));
    let u = &e.usage;
    for n in [u.prompt, u.completion, u.cached, u.reasoning, u.cache_write] {
        v.extend_from_slice(&n.to_le_bytes());
    }
    v.push(u8::from(e.cost_usd.is_some()));
    v.extend_from_slice(&e.cost_usd.unwrap_or(0.0).to_bits().to_le_bytes());
    v.extend_from_slice(&e.body);
    v
}

fn decode(v: Bytes) -> Option<Entry> {
    let head = v.get(..HEADER)?;
    if head[0] != VERSION || head[1] > 1 || head[42] > 1 {
        return None;
    }
    let n = |i: usize| -> Option<u64> {
        let b: [u8; 8] = head.get(2 + i * 8..10 + i * 8)?.try_into().ok()?;
        Some(u64::from_le_bytes(b))
    };
    let cost: [u8; 8] = head.get(43..51)?.try_into().ok()?;
    let cost = f64::from_bits(u64::from_le_bytes(cost));
    Some(Entry {
        stream: head[1] == 1,
        usage: Usage {
            prompt: n(0)?,
            completion: n(1)?,
            cached: n(2)?,
            reasoning: n(3)?,
            cache_write: n(4)?,
        },
        cost_usd: (head[42] == 1).then_some(cost),
        body: v.slice(HEADER..),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn entries_read_back_as_written() {
        let e = Entry {
            body: Bytes::from_static(b"data: {}\n\ndata: [DONE]\n\n"),
            stream: true,
            usage: Usage {
                prompt: 7,
                completion: 5,
                cached: 2,
                reasoning: 1,
                cache_write: u64::MAX,
            },
            cost_usd: Some(0.012),
        };
        let back = decode(Bytes::from(encode(&e))).unwrap();
        assert_eq!(
            (back.body, back.stream, back.usage, back.cost_usd),
            (e.body.clone(), true, e.usage, Some(0.012))
        );
        let unpriced = Entry {
            cost_usd: None,
            stream: false,
            ..e
        };
        let back = decode(Bytes::from(encode(&unpriced))).unwrap();
        assert_eq!((back.cost_usd, back.stream), (None, false));
        assert!(decode(Bytes::from_static(b"short")).is_none());
        let mut bad = encode(&unpriced);
        bad[0] = 9;
        assert!(decode(Bytes::from(bad)).is_none(), "another version");
    }
}
