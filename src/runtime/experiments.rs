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
    pub(crate) shadow_max_concurrency: usize,
    /// Rules of the team named by `shadow.budget`.
    pub(crate) shadow_rules: Vec<Rule>,
}

#[derive(Default)]
pub struct AliasPlan {
    pub(crate) shadow: Option<ShadowPlan>,
    pub(crate) hedge: Option<HedgePlan>,
}

pub(crate) struct ShadowPlan {
    pub(crate) route: RouteRt,
    pub(crate) sample: f64,
}

pub(crate) struct HedgePlan {
    pub(crate) after: HedgeAfter,
    pub(crate) max_share: f64,
    pub(crate) cap: Arc<HedgeCap>,
}

impl Plans {
    pub fn of(&self, alias: &str) -> Option<&AliasPlan> {
        self.by_alias.get(alias)
    }
}

/// Compiles the `shadow` and `hedge` settings of every alias, validated
/// by `config::validate` (a shadow route whose provider is missing is
/// left out).
pub(crate) fn build(
    cfg: &Config,
    providers: &HashMap<String, Arc<ProviderRt>>,
    durable: &super::durable::Durable,
) -> Plans {
    let mut plans = Plans {
        shadow_max_concurrency: cfg.shadow.max_concurrency,
        ..Plans::default()
    };
    if let Some((team, t)) = cfg
        .shadow
        .budget
        .as_ref()
        .and_then(|team| cfg.teams.get_key_value(team))
    {
        plans.shadow_rules = plan::compile(Level::Team, team, &t.limits, &t.budgets);
    }
    for (alias, m) in &cfg.models {
        let mut p = AliasPlan::default();
        if let Some(s) = &m.shadow {
            if let Some(prov) = providers.get(&s.route.provider) {
                p.shadow = Some(ShadowPlan {
                    route: RouteRt::compile(cfg, &s.route, prov),
                    sample: s.sample,
                });
            }
        }
        if let Some(h) = &m.hedge {
            p.hedge = Some(HedgePlan {
                after: h.after,
                max_share: h.max_share,
                cap: hedge_cap::for_alias(&durable.hedge_caps, alias, HEDGE_BURST),
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
