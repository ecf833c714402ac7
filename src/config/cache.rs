//! Config of the response cache: `models.<alias>.cache` (opt-in per alias)
//! and the top-level `cache:` section (the bound on all entries together).

use super::duration::HumanDuration;
use serde::{Deserialize, Serialize};

/// Default `cache.max_bytes`: 256 MiB.
pub(crate) const DEFAULT_CACHE_MAX_BYTES: u64 = 256 * 1024 * 1024;
/// Default `models.<alias>.cache.max_entry_bytes`: 1 MiB.
pub(crate) const DEFAULT_MAX_ENTRY_BYTES: u64 = 1024 * 1024;

/// `models.<alias>.cache`: identical requests to this alias are answered
/// from the cache for `ttl`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AliasCache {
    /// How long an answer is served from the cache.
    pub ttl: HumanDuration,
    /// Largest answer stored (the body the client got), in bytes.
    #[serde(default = "default_max_entry_bytes")]
    pub max_entry_bytes: u64,
    /// Who shares answers: `key` (default), `team` or `global`.
    #[serde(default)]
    pub scope: CacheScope,
    /// Whether a hit is admitted against the key's, team's and alias's
    /// request rates and concurrency like any request (default true).
    #[serde(default = "yes")]
    pub rate_limits: bool,
    /// Whether a hit's cached tokens and cost are charged to token limits
    /// and budgets (default false: a hit costs nothing).
    #[serde(default)]
    pub budgets: bool,
}

/// Who may be answered with a cached response.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheScope {
    /// Only the key that stored it.
    #[default]
    Key,
    /// Every key of the storing key's team (a key without a team: itself).
    Team,
    /// Every caller of the alias. Must be set explicitly.
    Global,
}

/// The top-level `cache:` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheSection {
    /// Bytes all cached answers take together, at most (least recently
    /// used ones are evicted first). Default 256 MiB. The memory store's.
    pub max_bytes: u64,
    /// Keep the answers in Redis, shared by every instance that names the
    /// same server, instead of in memory. Absent: in memory.
    pub redis: Option<CacheRedis>,
}

/// `cache.redis`: the shared store.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CacheRedis {
    /// `redis://[:password@]host:port[/db]` (the limits store's server or
    /// another).
    pub url: String,
}

impl Default for CacheSection {
    fn default() -> Self {
        Self {
            max_bytes: DEFAULT_CACHE_MAX_BYTES,
            redis: None,
        }
    }
}

fn default_max_entry_bytes() -> u64 {
    DEFAULT_MAX_ENTRY_BYTES
}

fn yes() -> bool {
    true
}

/// Problems of the cache settings, each with its field.
pub(crate) fn problems(cfg: &super::Config) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if cfg.cache.max_bytes == 0 {
        out.push(("cache.max_bytes".into(), "must be greater than 0".into()));
    }
    if let Some(r) = &cfg.cache.redis {
        // The URL holds the password: never echoed.
        if redis::Client::open(r.url.as_str()).is_err() {
            out.push((
                "cache.redis.url".into(),
                "is not a Redis URL such as redis://127.0.0.1:6379".into(),
            ));
        }
    }
    for (alias, m) in &cfg.models {
        let Some(c) = &m.cache else { continue };
        let field = format!("models.{alias}.cache");
        if c.ttl.get().is_zero() {
            out.push((format!("{field}.ttl"), "must be greater than 0".into()));
        }
        if c.max_entry_bytes == 0 {
            out.push((
                format!("{field}.max_entry_bytes"),
                "must be greater than 0".into(),
            ));
        } else if c.max_entry_bytes > cfg.cache.max_bytes {
            out.push((
                format!("{field}.max_entry_bytes"),
                format!(
                    "{} is more than cache.max_bytes ({}): no entry that large could be kept",
                    c.max_entry_bytes, cfg.cache.max_bytes
                ),
            ));
        }
        if c.budgets && !c.rate_limits {
            out.push((
                format!("{field}.budgets"),
                "`budgets: true` needs `rate_limits: true`: a hit is charged through its admission"
                    .into(),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn parse(model: &str, top: &str) -> Result<crate::config::Config, crate::config::ConfigError> {
        let text = format!(
            "listen: \"127.0.0.1:8080\"\nproviders:\n  m: {{ kind: mock }}\nmodels:\n  a: {{ routes: [ {{ provider: m, model: x }} ] {model} }}\n{top}"
        );
        crate::config::parse_str(&text, |_| None, std::path::Path::new("/etc/tollgate"))
    }

    #[test]
    fn defaults_and_the_smallest_section() {
        let cfg = parse(", cache: { ttl: 10m }", "").unwrap();
        let c = cfg.models["a"].cache.clone().unwrap();
        assert_eq!(c.ttl.get(), std::time::Duration::from_secs(600));
        assert_eq!(c.max_entry_bytes, DEFAULT_MAX_ENTRY_BYTES);
        assert_eq!(c.scope, CacheScope::Key, "never shared by default");
        assert!(c.rate_limits && !c.budgets);
        assert_eq!(cfg.cache.max_bytes, DEFAULT_CACHE_MAX_BYTES);
        let cfg = parse("", "").unwrap();
        assert!(cfg.models["a"].cache.is_none(), "off when absent");
        let cfg = parse(
            ", cache: { ttl: 1s, scope: global, max_entry_bytes: 1000 }",
            "cache: { max_bytes: 4096 }",
        )
        .unwrap();
        assert_eq!(
            cfg.models["a"].cache.as_ref().unwrap().scope,
            CacheScope::Global
        );
        assert_eq!(cfg.cache.max_bytes, 4096);
    }

    #[test]
    fn every_problem_names_its_field() {
        let err = parse(", cache: { ttl: 1s, sope: team }", "")
            .unwrap_err()
            .to_string();
        assert!(err.contains("sope") && err.contains("models.a"), "{err}");
        let err = parse(", cache: { ttl: 1s, scope: everyone }", "")
            .unwrap_err()
            .to_string();
        assert!(err.contains("everyone") && err.contains("scope"), "{err}");
        let err = parse(", cache: { scope: key }", "")
            .unwrap_err()
            .to_string();
        assert!(err.contains("ttl"), "{err}");
        let err = parse("", "cache: { max_bytes: 10, ttl: 1s }")
            .unwrap_err()
            .to_string();
        assert!(err.contains("ttl") && err.contains("cache"), "{err}");
        let err = parse("", "cache: { redis: { url: \"http://u:hunter2@x:1\" } }").unwrap_err();
        let p = err.problems.join("\n");
        assert!(p.contains("cache.redis.url: is not a Redis URL"), "{p}");
        assert!(!p.contains("hunter2"), "the password is never echoed: {p}");
        let err = parse("", "cache: { redis: { url: \"redis://x:1\", db: 2 } }").unwrap_err();
        assert!(err.to_string().contains("db"), "{err}");
        let cfg = parse(
            "",
            "cache: { redis: { url: \"redis://127.0.0.1:6379/2\" } }",
        )
        .unwrap();
        assert_eq!(cfg.cache.redis.unwrap().url, "redis://127.0.0.1:6379/2");
        let err = parse(
            ", cache: { ttl: 0s, max_entry_bytes: 5000, rate_limits: false, budgets: true }",
            "cache: { max_bytes: 4096 }",
        )
        .unwrap_err();
        let p = err.problems.join("\n");
        assert!(
            p.contains("models.a.cache.ttl: must be greater than 0"),
            "{p}"
        );
        assert!(
            p.contains("models.a.cache.max_entry_bytes: 5000 is more than cache.max_bytes (4096)"),
            "{p}"
        );
        assert!(
            p.contains("models.a.cache.budgets: `budgets: true` needs `rate_limits: true`"),
            "{p}"
        );
        let err = parse(
            ", cache: { ttl: 1s, max_entry_bytes: 0 }",
            "cache: { max_bytes: 0 }",
        )
        .unwrap_err();
        let p = err.problems.join("\n");
        assert!(p.contains("cache.max_bytes: must be greater than 0"), "{p}");
        assert!(
            p.contains("models.a.cache.max_entry_bytes: must be greater than 0"),
            "{p}"
        );
    }
}
