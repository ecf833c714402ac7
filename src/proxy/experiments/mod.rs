//! Traffic experiments on an alias: shadow copies and hedged requests,
//! driven from the plans compiled into the runtime
//! (`runtime::experiments`). [`after_admit`] is the one call the proxy
//! makes, once a request is admitted and about to go upstream.

pub mod hedge;
pub mod metrics;
pub mod race;
pub mod relay;
pub mod shadow;

use crate::proxy::ctx::Ctx;
use pingora::proxy::Session;

/// What the experiments did to one request, for the access log.
#[derive(Default)]
pub struct Marks {
    /// `fired` (a hedge started, the primary won) or `won`.
    pub hedge: Option<&'static str>,
    /// `sampled` (a copy was sent) or `skipped` (sampled, over a limit).
    pub shadow: Option<&'static str>,
    /// Usage of a cancelled hedge leg, charged with the request's own.
    pub extra_tokens: u64,
    pub extra_usd: f64,
}

impl Marks {
    /// Tokens and cost to settle the request's reservation with.
    pub fn charge(&self, tokens: u64, usd: Option<f64>) -> (u64, Option<f64>) {
        let usd = match usd {
            Some(u) => Some(u + self.extra_usd),
            None if self.extra_usd > 0.0 => Some(self.extra_usd),
            None => None,
        };
        (tokens.saturating_add(self.extra_tokens), usd)
    }
}

/// Runs once an admitted request is about to go upstream: maybe sends a
/// shadow copy (never waited for), then serves the request itself when its
/// alias hedges. `Ok(true)`: the response was written here; `Ok(false)`:
/// the normal proxy path serves it.
pub async fn after_admit(session: &mut Session, ctx: &mut Ctx) -> pingora::Result<bool> {
    let Some(rt) = ctx.rt.clone() else {
        return Ok(false);
    };
    let Some(plan) = ctx.alias.as_deref().and_then(|a| rt.experiments.of(a)) else {
        return Ok(false);
    };
    if let Some(s) = &plan.shadow {
        shadow::maybe_send(session.req_header(), ctx, &rt, s);
    }
    match &plan.hedge {
        // The Messages endpoint answers in Anthropic's shape: the normal
        // path translates it back, the race relays OpenAI bytes as they are.
        Some(_) if ctx.front.is_some() => Ok(false),
        // Boxed: the race's state is large, and unboxed it would be part of
        // every request's future (copied when Pingora boxes it), hedged or not.
        Some(h) => Box::pin(hedge::serve(session, ctx, h)).await,
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
