//! What one finished request was, for everything that counts or logs it.

use crate::accounting::{Usage, UsageSource};
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

/// The record of one finished request, built once at its end and read by
/// both the metrics (`metrics::observe`) and the access log. Holds names
/// from config, never secrets.
#[derive(Debug)]
pub struct Record<'a> {
    /// Wall-clock time the line was written.
    pub(crate) ts: SystemTime,
    pub(crate) request_id: &'a str,
    pub(crate) method: &'a str,
    pub(crate) endpoint: &'a str,
    pub(crate) key: &'a str,
    pub(crate) model: &'a str,
    pub(crate) provider: &'a str,
    pub(crate) upstream_model: &'a str,
    pub(crate) backend: Option<SocketAddr>,
    /// The pool key that served (its name or index), for a provider with
    /// `api_keys`; never the secret.
    pub(crate) provider_key: Option<&'a str>,
    pub(crate) stream: bool,
    pub(crate) status: u16,
    pub(crate) duration: Duration,
    pub(crate) upstream: Option<Duration>,
    pub(crate) attempts: u32,
    /// Each attempt (`provider@backend:outcome`) when there was more than one.
    pub(crate) attempt_log: Option<Vec<String>>,
    pub(crate) error: Option<&'a str>,
    pub(crate) ttft: Option<Duration>,
    pub(crate) usage: Option<Usage>,
    pub(crate) usage_source: Option<UsageSource>,
    pub(crate) cost_usd: Option<f64>,
    /// Usage known but the route has no price: the cost is unknown, not 0.
    pub(crate) unpriced: bool,
    pub(crate) partial: bool,
    /// Images and speech characters charged at unit prices.
    pub(crate) units: crate::accounting::units::Units,
    /// The response cache: `hit`, `miss` or `bypass` (`None`: the alias has
    /// no cache).
    pub(crate) cache: Option<&'static str>,
    /// A hit: what the stored answer cost (`cost_usd` is then `None`).
    pub(crate) saved_usd: Option<f64>,
    /// `fired` (a hedge started; the primary won) or `won` (the hedge won).
    pub(crate) hedge: Option<&'static str>,
    /// `sampled` (a shadow copy was sent) or `skipped` (over a shadow limit).
    pub(crate) shadow: Option<&'static str>,
    /// Routing: the alias's strategy, its A/B variant, the route that served
    /// (or was tried last), the routes in the order they were to be tried,
    /// and the routes left out as `name:reason`.
    pub(crate) strategy: Option<&'a str>,
    pub(crate) variant: Option<&'a str>,
    pub(crate) route: Option<&'a str>,
    pub(crate) candidates: Option<Vec<&'a str>>,
    pub(crate) skipped: Option<Vec<String>>,
    /// The request's tags with the declarations they index; `None` when
    /// no tag is declared (or the request never got that far).
    pub(crate) workload: Option<(&'a crate::workload::Declared, crate::workload::TagSet)>,
    /// The request was picked for output capture (`models.<alias>.capture`).
    pub(crate) captured: bool,
}
