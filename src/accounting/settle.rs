//! Settles a finished request's usage and cost.

use super::meter::{output_text, Seen};
use super::{cost::cost_usd, estimate, Usage, UsageSource};
use crate::config::Price;
use crate::proxy::endpoint::Endpoint;
use serde_json::Value;

/// The accounting outcome of one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Settled {
    pub usage: Usage,
    pub source: UsageSource,
    /// `None`: the route has no price.
    pub cost_usd: Option<f64>,
    /// A stream that ended without its end marker.
    pub partial: bool,
}

/// What the response showed.
pub enum Observed<'a> {
    /// Usage known up front (local mock, or read by a translator).
    Known(Usage),
    /// Usage a translator had to estimate (the provider reported none).
    Estimated(Usage),
    Stream(&'a Seen),
    Body(Option<Value>),
}

/// Usage as reported, or estimated when it was not. `None` when nothing was
/// served (an error before any output), which is never charged.
pub fn settle(
    ep: Endpoint,
    upstream_model: &str,
    request_body: &[u8],
    observed: Observed<'_>,
    price: Option<&Price>,
) -> Option<Settled> {
    let (usage, source, partial) = match observed {
        Observed::Known(u) => (u, UsageSource::Reported, false),
        Observed::Estimated(u) => (u, UsageSource::Estimated, false),
        Observed::Stream(seen) => {
            let partial = !seen.done && seen.usage.is_none();
            match seen.usage {
                Some(u) => (u, UsageSource::Reported, partial),
                None => {
                    // Output actually streamed; nothing streamed is never charged.
                    let completion =
                        estimate::count(upstream_model, &seen.text) + seen.text_overflow / 4;
                    let prompt = estimate::prompt_tokens(upstream_model, ep, request_body);
                    let u = Usage {
                        prompt,
                        completion,
                        ..Usage::default()
                    };
                    (u, UsageSource::Estimated, partial)
                }
            }
        }
        Observed::Body(doc) => {
            let doc = doc?;
            match Usage::find(&doc) {
                Some(u) => (u, UsageSource::Reported, false),
                None => {
                    let u = Usage {
                        prompt: estimate::prompt_tokens(upstream_model, ep, request_body),
                        completion: estimate::count(upstream_model, &output_text(&doc)),
                        ..Usage::default()
                    };
                    (u, UsageSource::Estimated, false)
                }
            }
        }
    };
    Some(Settled {
        usage,
        source,
        cost_usd: price.map(|p| cost_usd(&usage, p)),
        partial,
    })
}
