//! Strategies: each puts the eligible routes in the order they are tried.
//! The first is the primary; the others are the fallbacks, in order.
//! Whatever the strategy, a route at its `max_concurrency` goes behind the
//! ones that are not.

use super::eligible::Prompt;
use super::needs::Needs;
use super::plan::Plan;
use super::stats::Kind;
use crate::config::routing::Strategy;

/// Share of `latency` requests whose first pick is another route than the
/// fastest, so a route that recovered is noticed again.
pub(crate) const EXPLORE: f64 = 0.05;

/// Orders `routes` (eligible, in config order) for this request.
pub(crate) fn order(
    plan: &Plan,
    strategy: Strategy,
    routes: &mut Vec<usize>,
    needs: &Needs,
    prompt: &Prompt,
) {
    if routes.len() > 1 {
        match strategy {
            Strategy::Fallback => {}
            Strategy::Weighted => weighted(plan, routes, fastrand::f64()),
            Strategy::Latency => latency(plan, routes, needs, fastrand::f64(), fastrand::f64()),
            Strategy::LeastBusy => by_score(routes, |i| busy(plan, i)),
            Strategy::Cost => by_score(routes, |i| cost(plan, i, needs, prompt)),
        }
        demote_full(plan, routes);
    }
}

/// Draws the first route by weight (`draw` in `[0, 1)`); the rest keep
/// their order as fallbacks. No positive weight left: config order.
pub(crate) fn weighted(plan: &Plan, routes: &mut Vec<usize>, draw: f64) {
    let weight = |i: usize| plan.routes.get(i).map_or(0.0, |r| r.weight);
    let total: f64 = routes.iter().map(|&i| weight(i)).sum();
    if total <= 0.0 {
        return;
    }
    let mut x = draw * total;
    let mut pick = None;
    for (pos, &i) in routes.iter().enumerate() {
        let w = weight(i);
        if w > 0.0 {
            pick = Some(pos);
            if x < w {
                break;
            }
            x -= w;
        }
    }
    if let Some(pos) = pick.filter(|p| *p > 0) {
        let chosen = routes.remove(pos);
        routes.insert(0, chosen);
    }
}

/// Lowest moving average first (routes never measured go first, to be
/// measured); with probability [`EXPLORE`] another route is tried first.
pub(crate) fn latency(
    plan: &Plan,
    routes: &mut Vec<usize>,
    needs: &Needs,
    explore: f64,
    which: f64,
) {
    let kind = if needs.stream {
        Kind::Ttft
    } else {
        Kind::Latency
    };
    by_score(routes, |i| {
        plan.routes
            .get(i)
            .and_then(|r| r.stats.score_us(kind))
            .unwrap_or(-1.0)
    });
    if explore < EXPLORE {
        let others = routes.len() - 1;
        let pos = 1 + ((which * others as f64) as usize).min(others - 1);
        let chosen = routes.remove(pos);
        routes.insert(0, chosen);
    }
}

/// In flight relative to `max_concurrency`, or the bare count without one.
fn busy(plan: &Plan, i: usize) -> f64 {
    plan.routes.get(i).map_or(f64::INFINITY, |r| {
        let n = f64::from(r.stats.in_flight());
        match r.max_concurrency {
            Some(max) => n / f64::from(max),
            None => n,
        }
    })
}

/// The request's estimated price on route `i`; unpriced routes sort last.
fn cost(plan: &Plan, i: usize, needs: &Needs, prompt: &Prompt) -> f64 {
    let Some(p) = plan.routes.get(i).and_then(|r| r.price) else {
        return f64::INFINITY;
    };
    let input = prompt.rough() as f64;
    let output = needs.max_output.unwrap_or(plan.default_output) as f64;
    input * p.input + output * p.output
}

/// Stable sort by a score read once per route (statistics move while we
/// sort; the comparison must not).
fn by_score(routes: &mut [usize], score: impl Fn(usize) -> f64) {
    const MAX: usize = 32;
    if routes.len() <= MAX {
        let mut scored = [(0.0f64, 0usize); MAX];
        for (slot, &i) in scored.iter_mut().zip(routes.iter()) {
            *slot = (score(i), i);
        }
        let scored = &mut scored[..routes.len()];
        scored.sort_by(|a, b| a.0.total_cmp(&b.0));
        for (dst, (_, i)) in routes.iter_mut().zip(scored.iter()) {
            *dst = *i;
        }
    } else {
        let mut scored: Vec<(f64, usize)> = routes.iter().map(|&i| (score(i), i)).collect();
        scored.sort_by(|a, b| a.0.total_cmp(&b.0));
        for (dst, (_, i)) in routes.iter_mut().zip(scored) {
            *dst = i;
        }
    }
}

/// Moves routes at their `max_concurrency` behind the others, keeping order.
fn demote_full(plan: &Plan, routes: &mut [usize]) {
    let full = |i: &usize| {
        plan.routes.get(*i).is_some_and(|r| {
            r.max_concurrency
                .is_some_and(|max| r.stats.in_flight() >= max)
        })
    };
    if routes.iter().any(full) {
        // A stable partition: `false` (not full) sorts before `true`.
        routes.sort_by_key(full);
    }
}
