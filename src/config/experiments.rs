//! Config of the traffic experiments owned by an alias: shadow traffic and
//! hedged requests, plus the global shadow section.

use super::duration::{parse_duration, HumanDuration};
use super::schema::Route;
use serde::{Deserialize, Serialize};

/// `models.<alias>.shadow`: a sampled copy of admitted requests goes to
/// `route` in the background; its answer is read and discarded.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Shadow {
    /// Where the copy goes (`provider`, `model`, optional `price`, `timeouts`).
    pub(crate) route: Route,
    /// Share of admitted requests copied, 0 to 1.
    pub(crate) sample: f64,
}

/// `models.<alias>.hedge`: when the primary has produced no first byte
/// after `after`, the same request starts on the next route; the first
/// to produce a byte wins.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Hedge {
    /// `p95` (the primary route's measured time to first byte) or a duration.
    pub(crate) after: HedgeAfter,
    /// Most hedges as a share of the alias's requests (plus a burst of
    /// [`HEDGE_BURST`]). Default 0.1.
    #[serde(default = "default_max_share")]
    pub(crate) max_share: f64,
}

/// Hedges allowed at once above `max_share` (the bucket's depth).
pub const HEDGE_BURST: f64 = 3.0;

fn default_max_share() -> f64 {
    0.1
}

/// When a hedge fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HedgeAfter {
    /// The primary route's p95 time to first byte, measured by the gateway.
    P95,
    Fixed(HumanDuration),
}

impl Serialize for HedgeAfter {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            HedgeAfter::P95 => s.serialize_str("p95"),
            HedgeAfter::Fixed(d) => d.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for HedgeAfter {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.trim() == "p95" {
            return Ok(HedgeAfter::P95);
        }
        parse_duration(&s)
            .map(|d| HedgeAfter::Fixed(HumanDuration(d)))
            .map_err(|e| serde::de::Error::custom(format!("{e}, or `p95`")))
    }
}

/// Top-level `shadow:` section: limits on all shadow traffic together.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShadowSection {
    /// Shadow requests in flight at once, all aliases together; a sampled
    /// request over it is skipped (and counted). Default 16.
    pub(crate) max_concurrency: usize,
    /// A team under `teams` whose limits and budgets all shadow traffic is
    /// admitted against and charged to. Absent: no budget.
    pub(crate) budget: Option<String>,
}

impl Default for ShadowSection {
    fn default() -> Self {
        Self {
            max_concurrency: 16,
            budget: None,
        }
    }
}
