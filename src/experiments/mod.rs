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
pub mod ttft;

use crate::config::{Config, HedgeAfter, Route, HEDGE_BURST};
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
    /// Time to first byte of each of the alias's routes, by route index.
    pub ttft: Vec<Arc<ttft::Ttft>>,
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
        (tokens + self.extra_tokens, usd)
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
                Some(prov) if matches!(**prov, ProviderRt::Http(_)) => {
                    p.shadow = Some(ShadowPlan {
                        route: route_rt(&s.route, prov),
                        sample: s.sample,
                    });
                }
                Some(_) => problems.push(format!(
                    "{field}.route.provider: `{}` must be an HTTP provider, not a mock",
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
                ttft: m
                    .routes
                    .iter()
                    .map(|r| ttft::for_route(alias, &r.provider, &r.model))
                    .collect(),
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

/// A route outside an alias's list (the shadow's), compiled like theirs.
fn route_rt(r: &Route, provider: &Arc<ProviderRt>) -> RouteRt {
    let limits = match &**provider {
        ProviderRt::Http(up) => up.limits(r.timeouts.as_ref()),
        ProviderRt::Mock(_) => crate::resilience::Limits {
            connect: std::time::Duration::ZERO,
            first_byte: std::time::Duration::ZERO,
            idle: std::time::Duration::ZERO,
            total: None,
        },
    };
    RouteRt {
        provider_name: Arc::from(r.provider.as_str()),
        provider: provider.clone(),
        model: Arc::from(r.model.as_str()),
        model_json: crate::rewrite::json_string(&r.model),
        price: r.price,
        limits,
        route_label: http::HeaderValue::from_str(&format!("{}/{}", r.provider, r.model))
            .unwrap_or_else(|_| http::HeaderValue::from_static("-")),
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
        Some(h) => hedge::serve(session, ctx, h).await,
        None => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::Marks;

    #[test]
    fn a_cancelled_leg_is_charged_with_the_request() {
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
