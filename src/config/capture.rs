//! Config of output capture: `models.<alias>.capture` (opt-in per alias)
//! and the top-level `capture_retention:` section (how long captures are
//! kept in the key store's database). `capture` needs `key_store`.

use super::duration::HumanDuration;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Default `models.<alias>.capture.max_bytes`: 64 KiB.
pub(crate) const DEFAULT_CAPTURE_MAX_BYTES: usize = 64 * 1024;
/// Largest `max_bytes` accepted: 1 MiB per text.
pub(crate) const MAX_CAPTURE_MAX_BYTES: usize = 1024 * 1024;
/// Most `redact` patterns per alias.
pub(crate) const MAX_REDACT_PATTERNS: usize = 32;
/// Longest `redact` pattern, in bytes.
pub(crate) const MAX_REDACT_PATTERN_BYTES: usize = 1024;

/// `models.<alias>.capture`: a sample of the alias's requests is kept with
/// its answer (and its shadow's), redacted, for comparison and review.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Capture {
    /// Share of admitted requests captured, 0 to 1.
    pub sample: f64,
    /// Longest text kept per request and per answer, in bytes; longer ones
    /// are cut and end with a marker. Default 64 KiB, at most 1 MiB.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: usize,
    /// Regular expressions (Rust `regex` syntax) whose matches are replaced
    /// by `[REDACTED]` before anything is written, on top of the built-in
    /// patterns (API keys, bearer tokens, AWS key ids, e-mail addresses,
    /// card numbers).
    #[serde(default)]
    pub redact: Vec<String>,
}

fn default_max_bytes() -> usize {
    DEFAULT_CAPTURE_MAX_BYTES
}

/// Top-level `capture_retention:`: captures older than `max_age`, and all
/// but the newest `max_rows`, are deleted every `interval`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CaptureRetention {
    /// Default 7 days.
    pub max_age: HumanDuration,
    /// Default 100,000.
    pub max_rows: u64,
    /// How often retention runs. Default 1 minute, between 1s and 1h.
    pub interval: HumanDuration,
}

impl Default for CaptureRetention {
    fn default() -> Self {
        Self {
            max_age: HumanDuration(Duration::from_secs(7 * 24 * 3600)),
            max_rows: 100_000,
            interval: HumanDuration(Duration::from_secs(60)),
        }
    }
}

/// Every problem of the capture settings, `(field, message)`.
pub(crate) fn problems(cfg: &super::Config) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (alias, m) in &cfg.models {
        let Some(c) = &m.capture else { continue };
        let field = format!("models.{alias}.capture");
        if cfg.key_store.is_none() {
            out.push((
                field.clone(),
                "needs `key_store` (captures are written to its database)".into(),
            ));
        }
        if !(0.0..=1.0).contains(&c.sample) {
            out.push((format!("{field}.sample"), "must be between 0 and 1".into()));
        }
        if !(64..=MAX_CAPTURE_MAX_BYTES).contains(&c.max_bytes) {
            out.push((
                format!("{field}.max_bytes"),
                format!("must be between 64 and {MAX_CAPTURE_MAX_BYTES}"),
            ));
        }
        if c.redact.len() > MAX_REDACT_PATTERNS {
            out.push((
                format!("{field}.redact"),
                format!("at most {MAX_REDACT_PATTERNS} patterns"),
            ));
        }
        for (i, p) in c.redact.iter().enumerate() {
            if let Err(e) = compile_pattern(p) {
                out.push((format!("{field}.redact[{i}]"), e));
            }
        }
    }
    let r = &cfg.capture_retention;
    if r.max_age.get() < Duration::from_secs(1) {
        out.push((
            "capture_retention.max_age".into(),
            "must be at least 1s".into(),
        ));
    }
    if r.max_rows == 0 || r.max_rows > i64::MAX as u64 {
        out.push((
            "capture_retention.max_rows".into(),
            "must be at least 1".into(),
        ));
    }
    let iv = r.interval.get();
    if iv < Duration::from_secs(1) || iv > Duration::from_secs(3600) {
        out.push((
            "capture_retention.interval".into(),
            "must be between 1s and 1h".into(),
        ));
    }
    out
}

/// Compiles one `redact` pattern with a bounded program size.
pub fn compile_pattern(p: &str) -> Result<regex::Regex, String> {
    if p.len() > MAX_REDACT_PATTERN_BYTES {
        return Err(format!("longer than {MAX_REDACT_PATTERN_BYTES} bytes"));
    }
    if p.is_empty() {
        return Err("is empty".into());
    }
    regex::RegexBuilder::new(p)
        .size_limit(1 << 20)
        .dfa_size_limit(1 << 20)
        .build()
        .map_err(|e| {
            let msg = e.to_string();
            // The regex crate's message spans lines; keep its last one.
            let last = msg.lines().rev().find(|l| !l.trim().is_empty());
            format!(
                "not a valid regular expression: {}",
                last.unwrap_or("invalid").trim()
            )
        })
}
