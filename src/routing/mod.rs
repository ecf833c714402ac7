//! Routing: which of an alias's routes a request may use, and in which
//! order they are tried.
//!
//! At admission, [`decide`] reads what the request needs ([`needs`]),
//! picks its A/B variant ([`split`]), drops the routes it may not or cannot
//! use ([`eligible`]) and orders the rest by the alias's strategy
//! ([`strategy`]). The result is `Ctx::order`: route indices, primary
//! first. `proxy/attempt.rs` walks that list; [`track`] keeps each route's
//! statistics ([`stats`]) and metrics up to date as attempts start, fail
//! and finish.

pub mod eligible;
pub(crate) mod metrics;
pub mod needs;
pub(crate) mod plan;
pub(crate) mod split;
pub mod stats;
pub(crate) mod strategy;
pub(crate) mod track;

pub use eligible::Skip;
pub use plan::{Access, Plan, RouteMeta};
pub use stats::RouteStats;
pub use track::{attempt_failed, attempt_started, finished, RequestRouting};

use crate::base::endpoint::Endpoint;
use crate::base::error::GatewayError;
use crate::config::routing::Strategy;
use crate::rewrite::Parsed;
#[cfg(test)]
use std::sync::Arc;
use std::time::Duration;

/// What was decided for one request, for the access log.
#[derive(Debug, Clone)]
pub struct Decision {
    pub strategy: Strategy,
    /// Index into `Plan::variants`.
    pub variant: Option<usize>,
    /// Routes left out, and why.
    pub skipped: Vec<(usize, Skip)>,
}

/// Decides the routes a request tries, in order (indices into the alias's
/// routes). Errors (tier, region, capability, context) come before any
/// upstream call. The decision is kept in `state` either way.
#[allow(clippy::too_many_arguments)]
pub fn decide(
    state: &mut RequestRouting,
    plan: &Plan,
    access: &Access,
    caller: &str,
    ep: Endpoint,
    parsed: &Parsed,
    body: &[u8],
    tags: crate::workload::TagSet,
) -> Result<Vec<usize>, GatewayError> {
    let mut needs = if plan.reads_body() {
        let vision = plan.lacking & crate::config::routing::Capability::Vision.bit() != 0;
        needs::derive(ep, body, parsed.stream, vision)
    } else {
        needs::Needs {
            stream: parsed.stream,
            ..needs::Needs::default()
        }
    };
    needs.tags = tags;
    let who = needs.user.as_deref().unwrap_or(caller);
    let variant = split::pick(&plan.alias, who.as_bytes(), &plan.variants);
    let choice = plan.choice(&tags);
    // A workload's own routes take precedence over the split's.
    let candidates = match (
        choice.and_then(|c| c.routes.as_ref()),
        variant.and_then(|v| plan.variants.get(v)),
    ) {
        (Some(routes), _) => routes,
        (None, Some(v)) => &v.routes,
        (None, None) => &plan.all,
    };
    let strategy = choice.map_or(plan.strategy, |c| c.strategy);
    let mut prompt = eligible::Prompt::new(ep, body);
    let mut skipped = Vec::new();
    let result = select_with(
        plan,
        strategy,
        candidates,
        access,
        &needs,
        &mut prompt,
        &mut skipped,
    );
    if !skipped.is_empty() {
        count_skipped(plan, &skipped);
    }
    state.decision = Some(Decision {
        strategy,
        variant,
        skipped,
    });
    result
}

/// Eligibility, then the strategy: the candidates a request with `needs`
/// may try, in order. Routes left out go to `skipped`.
pub fn select(
    plan: &Plan,
    candidates: &[usize],
    access: &Access,
    needs: &needs::Needs,
    prompt: &mut eligible::Prompt,
    skipped: &mut Vec<(usize, Skip)>,
) -> Result<Vec<usize>, GatewayError> {
    select_with(
        plan,
        plan.strategy,
        candidates,
        access,
        needs,
        prompt,
        skipped,
    )
}

/// [`select`] with `strategy` in place of the alias's (a workload's).
pub fn select_with(
    plan: &Plan,
    strategy: Strategy,
    candidates: &[usize],
    access: &Access,
    needs: &needs::Needs,
    prompt: &mut eligible::Prompt,
    skipped: &mut Vec<(usize, Skip)>,
) -> Result<Vec<usize>, GatewayError> {
    let mut order = eligible::filter(plan, candidates, access, needs, prompt, skipped)?;
    strategy::order(plan, strategy, &mut order, needs, prompt);
    Ok(order)
}

fn count_skipped(plan: &Plan, skipped: &[(usize, Skip)]) {
    for (i, s) in skipped {
        let counter = plan
            .routes
            .get(*i)
            .and_then(|r| r.metrics.as_ref())
            .and_then(|m| m.skipped.get(usize::from(s.stage())));
        if let Some(c) = counter {
            c.inc();
        }
    }
}

/// The route at position `pos` of `order`, with its index.
pub fn candidate<'m, T>(order: &[usize], pos: usize, routes: &'m [T]) -> Option<(usize, &'m T)> {
    let index = *order.get(pos)?;
    Some((index, routes.get(index)?))
}

/// The p95 time to first byte of route `index` of `plan` over its recent
/// successful attempts (streams: first token; non-streams: response
/// headers), or `None` before 20 were seen. One atomic load.
pub fn p95_ttft(plan: &Plan, index: usize) -> Option<Duration> {
    plan.routes.get(index)?.stats.p95_ttft()
}

#[cfg(test)]
mod tests;
