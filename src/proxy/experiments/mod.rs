//! Traffic experiments on an alias: shadow copies and hedged requests,
//! driven from the plans compiled into the runtime
//! (`runtime::experiments`). [`after_admit`] is the one call the proxy
//! makes, once a request is admitted and about to go upstream.

pub(crate) mod hedge;
pub(crate) mod metrics;
pub(crate) mod race;
pub(crate) mod relay;
pub(crate) mod shadow;

use crate::proxy::ctx::Ctx;
use pingora::proxy::Session;

/// What the experiments did to one request, for the access log.
#[derive(Default)]
pub(crate) struct Marks {
    /// `fired` (a hedge started, the primary won) or `won`.
    pub(crate) hedge: Option<&'static str>,
    /// `sampled` (a copy was sent) or `skipped` (sampled, over a limit).
    pub(crate) shadow: Option<&'static str>,
    /// Usage of a cancelled hedge leg, charged with the request's own.
    pub(crate) extra_tokens: u64,
    pub(crate) extra_usd: f64,
}

impl Marks {
    /// Tokens and cost to settle the request's reservation with.
    pub(crate) fn charge(&self, tokens: u64, usd: Option<f64>) -> (u64, Option<f64>) {
        let usd = match usd {
            Some(u) => Some(u + self.extra_usd),
            None if self.extra_usd > 0.0 => Some(self.extra_usd),
            None => None,
        };
        (tokens.saturating_add(self.extra_tokens), usd)
    }
}

/// Runs once an admitted request is about to go upstream: draws whether
/// it is captured (its alias's `capture`), maybe sends a shadow copy (never
/// waited for), then serves the request itself when its alias hedges.
/// `Ok(true)`: the response was written here; `Ok(false)`: the normal
/// proxy path serves it.
pub(crate) async fn after_admit(session: &mut Session, ctx: &mut Ctx) -> pingora::Result<bool> {
    let rt = ctx.head.rt.clone();
    let Some(req) = ctx.req().cloned() else {
        return Ok(false);
    };
    let plan = rt.experiments.of(req.alias());
    if let Some(c) = &req.model.capture {
        // A request the hedge race serves is not captured (the race writes
        // the response itself).
        let raced = plan.is_some_and(|p| p.hedge.is_some()) && req.messages.is_none();
        if !raced && crate::capture::captures(req.endpoint) && c.sampled() {
            ctx.capture = Some(Box::new(c.tap()));
        }
    }
    let Some(plan) = plan else {
        return Ok(false);
    };
    if let Some(s) = &plan.shadow {
        shadow::maybe_send(session.req_header(), ctx, &req, &rt, s);
    }
    match &plan.hedge {
        // The Messages endpoint answers in Anthropic's shape: the normal
        // path translates it back, the race relays OpenAI bytes as they are.
        Some(_) if req.messages.is_some() => Ok(false),
        // Boxed: the race's state is large, and unboxed it would be part of
        // every request's future (copied when Pingora boxes it), hedged or not.
        Some(h) => Box::pin(hedge::serve(session, ctx, &req, h)).await,
        None => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::Marks;

    /// The arithmetic only; `tests/hedge_shadow.rs`
    /// (`a_cancelled_hedge_leg_is_charged_to_the_key_budget`) checks that a
    /// cancelled leg really is charged.
    #[test]
    fn charge_adds_the_cancelled_legs_tokens_and_cost() {
        let m = Marks {
            extra_tokens: 12,
            extra_usd: 0.5,
            ..Marks::default()
        };
        assert_eq!(m.charge(100, Some(1.0)), (112, Some(1.5)));
        assert_eq!(m.charge(100, None), (112, Some(0.5)));
        assert_eq!(Marks::default().charge(7, None), (7, None));
    }
}
