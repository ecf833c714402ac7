//! Eligibility: the filters that run before any strategy. A route is left
//! out when the caller's tier may not use it, when it lies outside the
//! caller's regions, when it lacks a capability the request uses, or when
//! the prompt plus the completion asked for does not fit its context
//! window. When nothing is left, the error says why (tier or region: 403;
//! capability or context: 400), before any upstream is called.

use super::needs::Needs;
use super::plan::{Access, Plan, RouteMeta};
use crate::base::endpoint::Endpoint;
use crate::base::error::GatewayError;
use crate::config::routing::Capability;

/// Why a route was left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    Tier,
    Region,
    /// Reserved for other workloads (the route's `workloads`).
    Workload,
    Capability(Capability),
    ContextWindow,
}

impl Skip {
    /// For the access log: `tier`, `region`, `capability:vision`, `context_window`.
    pub fn label(self) -> &'static str {
        match self {
            Skip::Tier => "tier",
            Skip::Region => "region",
            Skip::Workload => "workload",
            Skip::Capability(c) => match c {
                Capability::Tools => "capability:tools",
                Capability::Vision => "capability:vision",
                Capability::JsonSchema => "capability:json_schema",
                Capability::Reasoning => "capability:reasoning",
            },
            Skip::ContextWindow => "context_window",
        }
    }

    /// For metrics (a fixed set).
    pub fn reason(self) -> &'static str {
        match self {
            Skip::Tier => "tier",
            Skip::Region => "region",
            Skip::Workload => "workload",
            Skip::Capability(_) => "capability",
            Skip::ContextWindow => "context_window",
        }
    }

    /// The filter that left the route out, for its metric: 0 tier, 1
    /// region, 2 capability, 3 context, 4 workload.
    pub fn stage(self) -> u8 {
        match self {
            Skip::Tier => 0,
            Skip::Region => 1,
            Skip::Capability(_) => 2,
            Skip::ContextWindow => 3,
            Skip::Workload => 4,
        }
    }

    /// How far the route got through the filters (they run in this
    /// order): 0 tier, 1 region, 2 workload, 3 capability, 4 context.
    fn rank(self) -> u8 {
        match self {
            Skip::Tier => 0,
            Skip::Region => 1,
            Skip::Workload => 2,
            Skip::Capability(_) => 3,
            Skip::ContextWindow => 4,
        }
    }
}

/// The prompt's size in tokens, estimated only when a check needs it.
pub struct Prompt<'b> {
    body: &'b [u8],
    ep: Endpoint,
    exact: Option<u64>,
}

impl<'b> Prompt<'b> {
    pub fn new(ep: Endpoint, body: &'b [u8]) -> Self {
        Self {
            body,
            ep,
            exact: None,
        }
    }

    /// Tokens cannot outnumber the body's bytes (every token is at least a
    /// byte of text; message framing is a few tokens per message, each at
    /// least a few bytes of JSON): a bound that needs no tokenizer.
    fn bound(&self) -> u64 {
        (self.body.len() as u64).saturating_mul(2).saturating_add(8)
    }

    /// The tokenizer's estimate (computed once).
    pub fn exact(&mut self, model: &str) -> u64 {
        *self.exact.get_or_insert_with(|| {
            crate::accounting::estimate::prompt_tokens(model, self.ep, self.body)
        })
    }

    /// The estimate if it was computed, else a cheap one (bytes / 4).
    pub fn rough(&self) -> u64 {
        self.exact.unwrap_or(self.body.len() as u64 / 4)
    }

    /// Whether `prompt + output` fits in `window`.
    fn fits(&mut self, window: u64, output: u64, model: &str) -> bool {
        if self.bound().saturating_add(output) <= window {
            return true;
        }
        self.exact(model).saturating_add(output) <= window
    }
}

fn check(
    plan: &Plan,
    r: &RouteMeta,
    access: &Access,
    needs: &Needs,
    prompt: &mut Prompt,
) -> Option<Skip> {
    if let Some(tiers) = &r.tiers {
        if !access.tier.as_ref().is_some_and(|t| tiers.contains(t)) {
            return Some(Skip::Tier);
        }
    }
    if let Some(allowed) = &access.regions {
        if !r.region.as_ref().is_some_and(|reg| allowed.contains(reg)) {
            return Some(Skip::Region);
        }
    }
    if let Some(w) = &r.workloads {
        if w.first_outside(&needs.tags).is_some() {
            return Some(Skip::Workload);
        }
    }
    if let Some(caps) = r.caps {
        if let Some(c) = Needs::names(needs.caps & !caps).next() {
            return Some(Skip::Capability(c));
        }
    }
    if let Some(w) = r.context_window {
        if !prompt.fits(w, needs.max_output.unwrap_or(0), &plan.tokenizer_model) {
            return Some(Skip::ContextWindow);
        }
    }
    None
}

/// The eligible routes among `candidates`, in their order; left-out routes
/// go to `skipped`. Err when none is left.
pub fn filter(
    plan: &Plan,
    candidates: &[usize],
    access: &Access,
    needs: &Needs,
    prompt: &mut Prompt,
    skipped: &mut Vec<(usize, Skip)>,
) -> Result<Vec<usize>, GatewayError> {
    let mut out = Vec::with_capacity(candidates.len());
    for &i in candidates {
        let Some(r) = plan.routes.get(i) else {
            continue;
        };
        match check(plan, r, access, needs, prompt) {
            None => out.push(i),
            Some(s) => skipped.push((i, s)),
        }
    }
    if !out.is_empty() {
        return Ok(out);
    }
    Err(none_left(plan, needs, prompt, skipped))
}

/// The error for a request no route can take: the furthest filter any
/// route reached names the problem.
fn none_left(
    plan: &Plan,
    needs: &Needs,
    prompt: &mut Prompt,
    skipped: &[(usize, Skip)],
) -> GatewayError {
    let alias = &plan.alias;
    let furthest = skipped.iter().map(|(_, s)| s.rank()).max().unwrap_or(0);
    match furthest {
        0 => GatewayError::RouteNotPermitted {
            message: format!(
                "No route of the model `{alias}` is available to this key's tier. Ask the gateway operator for access."
            ),
            code: "tier_not_allowed",
        },
        1 => GatewayError::RouteNotPermitted {
            message: format!(
                "No route of the model `{alias}` is in a region this key may use; the request was not sent elsewhere."
            ),
            code: "region_not_allowed",
        },
        2 => GatewayError::RouteNotPermitted {
            message: format!(
                "No route of the model `{alias}` is open to this request's workload (its tags); the request was not sent elsewhere."
            ),
            code: "workload_not_allowed",
        },
        3 => {
            // Capabilities offered by some route that passed the access filters.
            let offered = skipped
                .iter()
                .filter(|(_, s)| s.rank() >= 3)
                .filter_map(|(i, _)| plan.routes.get(*i))
                .fold(0u8, |acc, r| acc | r.caps.unwrap_or(super::needs::ALL_CAPS));
            let missing = needs.caps & !offered;
            let list = |bits: u8| {
                Needs::names(bits)
                    .map(Capability::label)
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let message = if missing != 0 {
                format!(
                    "No route of the model `{alias}` supports {} ({}), which this request uses.",
                    list(missing),
                    what_uses(missing)
                )
            } else {
                format!(
                    "No single route of the model `{alias}` supports all of {} together, which this request uses.",
                    list(needs.caps)
                )
            };
            GatewayError::Unsupported {
                message,
                param: param_of(if missing != 0 { missing } else { needs.caps }),
                code: "unsupported_capability",
            }
        }
        _ => {
            let largest = skipped
                .iter()
                .filter_map(|(i, _)| plan.routes.get(*i).and_then(|r| r.context_window))
                .max()
                .unwrap_or(0);
            let tokens = prompt.exact(&plan.tokenizer_model);
            let out = needs.max_output.unwrap_or(0);
            GatewayError::Unsupported {
                message: format!(
                    "This request needs about {} tokens ({tokens} in the prompt plus {out} for the completion), more than the largest context window of the model `{alias}` ({largest}). Shorten the messages or lower max_tokens.",
                    tokens.saturating_add(out)
                ),
                param: Some("messages"),
                code: "context_length_exceeded",
            }
        }
    }
}

fn what_uses(bits: u8) -> String {
    Needs::names(bits)
        .map(|c| match c {
            Capability::Tools => "`tools`",
            Capability::Vision => "images in the messages",
            Capability::JsonSchema => "`response_format` of type `json_schema`",
            Capability::Reasoning => "`reasoning_effort`",
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn param_of(bits: u8) -> Option<&'static str> {
    Needs::names(bits).next().map(|c| match c {
        Capability::Tools => "tools",
        Capability::Vision => "messages",
        Capability::JsonSchema => "response_format",
        Capability::Reasoning => "reasoning_effort",
    })
}
