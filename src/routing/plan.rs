//! The routing part of the compiled config: per alias, its strategy, what
//! each route offers and its live statistics; per key, its tier and regions.
//! Built with the `Runtime`, read without locks.

use super::metrics::RouteMetrics;
use super::stats::RouteStats;
use crate::base::keyed::Keyed;
use crate::config::routing::{route_name, Strategy};
use crate::config::{Key, Model, Price, Team};
use std::sync::Arc;

/// One route as routing sees it (same index as in `ModelRt::routes`).
pub struct RouteMeta {
    /// Its `name`, else `provider/model`.
    pub name: Arc<str>,
    /// Declared capabilities as bits; `None`: not declared (assumed capable).
    pub caps: Option<u8>,
    pub context_window: Option<u64>,
    pub region: Option<Arc<str>>,
    /// Tiers it is reserved for; `None`: open to every caller.
    pub tiers: Option<Vec<Arc<str>>>,
    pub weight: f64,
    pub max_concurrency: Option<u32>,
    pub price: Option<Price>,
    /// Live numbers, shared across reloads by alias and route name.
    pub stats: Arc<RouteStats>,
    pub metrics: Option<RouteMetrics>,
    /// The workloads it is reserved for (`workloads:`); `None`: all.
    pub workloads: Option<crate::workload::Allowed>,
}

/// What one workload gets of an alias (`by_workload`).
pub struct Choice {
    pub strategy: Strategy,
    /// Route indices, in fallback order; `None`: the alias's candidates.
    pub routes: Option<Vec<usize>>,
}

/// An alias's `by_workload`: the tag key and, per value index, its choice.
pub struct ByWorkload {
    pub key: usize,
    pub choices: Vec<(u8, Choice)>,
}

/// One arm of an A/B split.
pub struct Variant {
    pub name: Arc<str>,
    /// Callers hashing below this (and above the previous arm's) land here.
    pub upper: f64,
    /// Route indices, in fallback order.
    pub routes: Vec<usize>,
}

/// An alias's routing.
pub struct Plan {
    pub alias: Arc<str>,
    pub strategy: Strategy,
    pub routes: Vec<RouteMeta>,
    /// Every route index, in config order: the candidates without a split.
    pub all: Vec<usize>,
    pub variants: Vec<Variant>,
    /// Capabilities some route declares it lacks: only these need deriving.
    pub lacking: u8,
    /// Some route declares a context window.
    pub windows: bool,
    /// Completion tokens assumed when the body sets no maximum (for cost).
    pub default_output: u64,
    /// Upstream model whose tokenizer estimates prompts (the first route's).
    pub tokenizer_model: Arc<str>,
    /// The strategy and routes by workload.
    pub by_workload: Option<ByWorkload>,
}

impl Plan {
    /// Compiles `m`'s routing with no tag declared. Route indices follow
    /// `m.routes`.
    pub fn build(stats: &Keyed<(String, String), RouteStats>, alias: &str, m: &Model) -> Plan {
        Plan::build_tagged(stats, alias, m, &crate::workload::Declared::default())
    }

    /// Compiles `m`'s routing, its workload settings against `declared`.
    pub fn build_tagged(
        stats: &Keyed<(String, String), RouteStats>,
        alias: &str,
        m: &Model,
        declared: &crate::workload::Declared,
    ) -> Plan {
        let routes: Vec<RouteMeta> = m
            .routes
            .iter()
            .map(|r| {
                let name = route_name(r);
                RouteMeta {
                    caps: r
                        .capabilities
                        .as_ref()
                        .map(|c| c.iter().fold(0, |bits, c| bits | c.bit())),
                    context_window: r.context_window,
                    region: r.region.as_deref().map(Arc::from),
                    tiers: r
                        .tiers
                        .as_ref()
                        .map(|t| t.iter().map(|s| Arc::from(s.as_str())).collect()),
                    weight: r.weight.unwrap_or(1.0).max(0.0),
                    max_concurrency: r.max_concurrency,
                    price: r.price,
                    stats: stats.get_or_default((alias.to_string(), name.clone())),
                    metrics: RouteMetrics::bind(alias, &name),
                    workloads: r.workloads.as_ref().map(|w| declared.reserved(w)),
                    name: Arc::from(name.as_str()),
                }
            })
            .collect();
        let mut upper = 0.0;
        let variants = m
            .split
            .iter()
            .map(|v| {
                upper += v.share;
                Variant {
                    name: Arc::from(v.name.as_str()),
                    upper,
                    routes: v
                        .routes
                        .iter()
                        .filter_map(|n| routes.iter().position(|r| &*r.name == n.as_str()))
                        .collect(),
                }
            })
            .collect();
        let lacking = routes
            .iter()
            .filter_map(|r| r.caps)
            .fold(0u8, |acc, caps| acc | (!caps & super::needs::ALL_CAPS));
        let by_workload = m.by_workload.as_ref().and_then(|b| {
            let key = declared.key(&b.tag)?;
            let choices = b
                .values
                .iter()
                .filter_map(|(v, c)| {
                    let index = match v.as_str() {
                        "none" => crate::workload::NONE,
                        "other" => crate::workload::OTHER,
                        v => declared.value(key, v)?,
                    };
                    let routes = c.routes.as_ref().map(|names| {
                        names
                            .iter()
                            .filter_map(|n| routes.iter().position(|r| &*r.name == n.as_str()))
                            .collect()
                    });
                    Some((
                        index,
                        Choice {
                            strategy: c.strategy.unwrap_or(m.strategy),
                            routes,
                        },
                    ))
                })
                .collect();
            Some(ByWorkload { key, choices })
        });
        Plan {
            alias: Arc::from(alias),
            strategy: m.strategy,
            by_workload,
            all: (0..routes.len()).collect(),
            variants,
            lacking,
            windows: routes.iter().any(|r| r.context_window.is_some()),
            default_output: m.reserve_output_tokens,
            tokenizer_model: Arc::from(m.routes.first().map_or("", |r| r.model.as_str())),
            routes,
        }
    }

    /// Whether deciding needs anything from the body beyond `model`/`stream`.
    pub fn reads_body(&self) -> bool {
        self.lacking != 0
            || self.windows
            || self.strategy == Strategy::Cost
            || !self.variants.is_empty()
            || self
                .by_workload
                .as_ref()
                .is_some_and(|b| b.choices.iter().any(|(_, c)| c.strategy == Strategy::Cost))
    }

    /// The choice `by_workload` makes for a request with `tags`.
    pub fn choice(&self, tags: &crate::workload::TagSet) -> Option<&Choice> {
        let b = self.by_workload.as_ref()?;
        let v = tags.get(b.key);
        b.choices.iter().find(|(x, _)| *x == v).map(|(_, c)| c)
    }
}

/// Which routes a caller may reach, from its key and team.
#[derive(Debug, Clone, Default)]
pub struct Access {
    pub tier: Option<Arc<str>>,
    /// `None`: any region (and routes without one).
    pub regions: Option<Vec<Arc<str>>>,
}

impl Access {
    /// The key's tier, else its team's. Regions: the key's and the team's
    /// together narrow each other (only regions both allow).
    pub fn of(key: &Key, team: Option<&Team>) -> Access {
        let tier = key
            .tier
            .as_deref()
            .or_else(|| team.and_then(|t| t.tier.as_deref()))
            .map(Arc::from);
        let regions = match (&key.regions, team.and_then(|t| t.regions.as_ref())) {
            (Some(k), Some(t)) => Some(k.iter().filter(|r| t.contains(r)).collect::<Vec<_>>()),
            (Some(k), None) => Some(k.iter().collect()),
            (None, Some(t)) => Some(t.iter().collect()),
            (None, None) => None,
        }
        .map(|v| v.into_iter().map(|s| Arc::from(s.as_str())).collect());
        Access { tier, regions }
    }
}
