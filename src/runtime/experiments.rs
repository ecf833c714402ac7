//! The compiled `shadow` and `hedge` settings of every alias, built with
//! the rest of the runtime ([`build`]). The drivers that act on them are in
//! `proxy::experiments`.

use super::{ProviderRt, RouteRt};
use crate::config::{Config, HedgeAfter, HEDGE_BURST};
use crate::governance::{plan, Level, Rule};
use crate::resilience::hedge_cap::{self, HedgeCap};
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
    pub cap: Arc<HedgeCap>,
}

impl Plans {
    pub fn of(&self, alias: &str) -> Option<&AliasPlan> {
        self.by_alias.get(alias)
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
                cap: hedge_cap::for_alias(alias, HEDGE_BURST),
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
