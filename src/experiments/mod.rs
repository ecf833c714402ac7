//! Traffic experiments on an alias: shadow copies and hedged requests.
//! Compiled into the runtime with the rest of the config ([`build`]);
//! [`after_admit`] is the one call the proxy makes, once a request is
//! admitted and about to go upstream.

pub mod cap;
pub mod hedge;
pub mod metrics;
pub mod race;
pub mod relay;
pub mod shadow;

use crate::config::{Config, HedgeAfter, HEDGE_BURST};
use crate::governance::{plan, Level, Rule};
use crate::proxy::ctx::Ctx;
use crate::runtime::{ProviderRt, RouteRt};
use pingora::proxy::Session;
use std::collections::HashMap;
use std::sync::Arc;

/// The experiments of every alias, and the shadow-wide limits.
#[derive(Default)]
pub struct Plans {
    by_alias: HashMap<String, AliasPlan>,
    /// Shadow requests in flight at once, all aliases together.
    pub shadow_max_concurrency: usize,
    /// Rules of the team named by `shadow.budget`.
    pub shadow_rules: Vec<Rule>,
}

#[derive(Default)]
pub struct AliasPlan {
    pub shadow: Option<ShadowPlan>,
    pub hedge: Option<HedgePlan>,
}

pub struct ShadowPlan {
    pub route: RouteRt,
    pub sample: f64,
}

pub struct HedgePlan {
    pub after: HedgeAfter,
    pub max_share: f64,
    pub cap: Arc<cap::HedgeCap>,
}

impl Plans {
    pub fn of(&self, alias: &str) -> Option<&AliasPlan> {
        self.by_alias.get(alias)
    }
}

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

/// Compiles the `shadow` and `hedge` settings of every alias. Problems
/// name their field.
pub fn build(
    cfg: &Config,
    providers: &HashMap<String, Arc<ProviderRt>>,
    problems: &mut Vec<String>,
) -> Plans {
    let mut plans = Plans {
        shadow_max_concurrency: cfg.shadow.max_concurrency,
        ..Plans::default()
    };
    if let Some(team) = &cfg.shadow.budget {
        match cfg.teams.get(team) {
            Some(t) => {
                plans.shadow_rules = plan::compile(Level::Team, team, &t.limits, &t.budgets);
            }
            None => problems.push(format!("shadow.budget: `{team}` is not a team under teams")),
        }
    }
    for (alias, m) in &cfg.models {
        let mut p = AliasPlan::default();
        if let Some(s) = &m.shadow {
            let field = format!("models.{alias}.shadow");
            if !(0.0..=1.0).contains(&s.sample) {
                problems.push(format!("{field}.sample: must be between 0 and 1"));
            }
            match providers.get(&s.route.provider) {
                Some(prov)
                    if matches!(**prov, ProviderRt::Http(_))
                        && cfg.providers.get(&s.route.provider).map(|p| p.kind)
                            == Some(crate::config::ProviderKind::Openai) =>
                {
                    p.shadow = Some(ShadowPlan {
                        route: RouteRt::compile(cfg, &s.route, prov),
                        sample: s.sample,
                    });
                }
                Some(_) => problems.push(format!(
                    "{field}.route.provider: `{}` must be an OpenAI-kind provider (not a mock, and not a translated kind such as anthropic, gemini or azure)",
                    s.route.provider
                )),
                None => problems.push(format!(
                    "{field}.route.provider: `{}` is not available",
                    s.route.provider
                )),
            }
        }
        if let Some(h) = &m.hedge {
            let field = format!("models.{alias}.hedge");
            for (i, r) in m.routes.iter().enumerate() {
                let kind = cfg.providers.get(&r.provider).map(|p| p.kind);
                if kind.is_some_and(|k| k != crate::config::ProviderKind::Openai) {
                    problems.push(format!(
                        "{field}: routes[{i}] uses provider `{}`, which is not OpenAI-kind; hedging races OpenAI-kind routes only: remove `hedge` or the route",
                        r.provider
                    ));
                }
            }
            if !(0.0..=1.0).contains(&h.max_share) {
                problems.push(format!("{field}.max_share: must be between 0 and 1"));
            }
            if m.routes.len() < 2 {
                problems.push(format!(
                    "{field}: needs at least two routes (the hedge goes to the next one)"
                ));
            }
            p.hedge = Some(HedgePlan {
                after: h.after,
                max_share: h.max_share,
                cap: cap::for_alias(alias, HEDGE_BURST),
            });
        }
        if p.shadow.is_some() || p.hedge.is_some() {
            plans.by_alias.insert(alias.clone(), p);
        }
    }
    if !plans.by_alias.is_empty() {
        crate::upstream::client::warm_up();
    }
    plans
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
