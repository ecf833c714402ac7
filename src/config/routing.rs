//! The routing parts of the schema (strategy, capabilities, A/B splits) and
//! their validation. `schema.rs` holds only the fields that name them.

use super::schema::{Config, Model, Route};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

/// How an alias orders its eligible routes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// The routes in the order written: primary, then fallbacks.
    #[default]
    Fallback,
    /// One route drawn by `weight`, then the rest in order.
    Weighted,
    /// Lowest moving average of time to first token (streams) or latency.
    Latency,
    /// Fewest requests in flight, relative to `max_concurrency`.
    LeastBusy,
    /// Cheapest for the request's estimated tokens.
    Cost,
}

impl Strategy {
    pub fn label(self) -> &'static str {
        match self {
            Strategy::Fallback => "fallback",
            Strategy::Weighted => "weighted",
            Strategy::Latency => "latency",
            Strategy::LeastBusy => "least_busy",
            Strategy::Cost => "cost",
        }
    }
}

/// What a route's model can do, as declared in config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Capability {
    /// `tools` (function calling).
    Tools,
    /// Images in the messages.
    Vision,
    /// `response_format: { type: json_schema }`.
    JsonSchema,
    /// `reasoning_effort`.
    Reasoning,
}

impl Capability {
    pub const ALL: [Capability; 4] = [
        Capability::Tools,
        Capability::Vision,
        Capability::JsonSchema,
        Capability::Reasoning,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Capability::Tools => "tools",
            Capability::Vision => "vision",
            Capability::JsonSchema => "json_schema",
            Capability::Reasoning => "reasoning",
        }
    }

    /// The bit of this capability in a capability set.
    pub fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// One arm of an A/B split: a share of the callers, sticky per caller, and
/// the routes (by name) its requests use.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SplitVariant {
    /// Shown in the access log and the metrics' `variant` label.
    pub(crate) name: String,
    /// Fraction of callers, above 0; the shares of a split add up to 1.
    pub(crate) share: f64,
    /// Names of the alias's routes this arm uses, in fallback order.
    pub(crate) routes: Vec<String>,
}

/// A route's name: its `name`, else `provider/model`.
pub(crate) fn route_name(r: &Route) -> String {
    match &r.name {
        Some(n) => n.clone(),
        None => format!("{}/{}", r.provider, r.model),
    }
}

/// Routing problems of the config, each `(field, what to fix)`.
pub(crate) fn problems(cfg: &Config) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (alias, m) in &cfg.models {
        check_model(alias, m, &mut out);
    }
    // A region no route has yet is allowed: such a key is refused (403)
    // until a route in that region exists, never sent elsewhere.
    let mut access = |field: String, tier: &Option<String>, regions: &Option<Vec<String>>| {
        out.extend(access_problems(&field, tier.as_ref(), regions.as_ref()));
    };
    for (i, k) in cfg.keys.iter().enumerate() {
        access(format!("keys[{i}]"), &k.tier, &k.regions);
    }
    for (name, t) in &cfg.teams {
        access(format!("teams.{name}"), &t.tier, &t.regions);
    }
    out
}

/// The problems of a key's or team's `tier` and `regions` (also used for
/// the key store's keys and teams).
pub(crate) fn access_problems(
    field: &str,
    tier: Option<&String>,
    regions: Option<&Vec<String>>,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some(t) = tier {
        if !is_label(t) {
            out.push((format!("{field}.tier"), LABEL_RULE.into()));
        }
    }
    if let Some(list) = regions {
        if list.is_empty() {
            out.push((
                format!("{field}.regions"),
                "is empty, so no route would be allowed; list at least one region or leave it out"
                    .into(),
            ));
        }
        for (i, r) in list.iter().enumerate() {
            if !is_label(r) {
                out.push((format!("{field}.regions[{i}]"), LABEL_RULE.into()));
            }
        }
    }
    out
}

const LABEL_RULE: &str = "use 1-64 characters from letters, digits and - _ .";

fn is_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

fn check_model(alias: &str, m: &Model, out: &mut Vec<(String, String)>) {
    let f = format!("models.{alias}");
    let mut names = HashSet::new();
    let mut any_weight = false;
    for (i, r) in m.routes.iter().enumerate() {
        let rf = format!("{f}.routes[{i}]");
        let name = route_name(r);
        if let Some(n) = &r.name {
            if n.trim().is_empty() || n.len() > 128 {
                out.push((
                    format!("{rf}.name"),
                    "must be 1-128 characters (it is shown in logs and metrics)".into(),
                ));
            }
        }
        if !names.insert(name.clone()) {
            out.push((
                format!("{rf}.name"),
                format!(
                    "another route of `{alias}` is also named `{name}`; give one of them a distinct `name`"
                ),
            ));
        }
        if let Some(w) = r.weight {
            any_weight = true;
            if !w.is_finite() || w < 0.0 {
                out.push((
                    format!("{rf}.weight"),
                    "must be a number ≥ 0 (0: used only as a fallback)".into(),
                ));
            }
        }
        if r.context_window == Some(0) {
            out.push((
                format!("{rf}.context_window"),
                "must be at least 1 token (leave it out when unknown)".into(),
            ));
        }
        if r.max_concurrency == Some(0) {
            out.push((
                format!("{rf}.max_concurrency"),
                "must be at least 1 (leave it out for no cap)".into(),
            ));
        }
        if let Some(reg) = &r.region {
            if !is_label(reg) {
                out.push((format!("{rf}.region"), LABEL_RULE.into()));
            }
        }
        if let Some(tiers) = &r.tiers {
            if tiers.is_empty() {
                out.push((
                    format!("{rf}.tiers"),
                    "is empty, so no caller could use this route; list tiers or leave it out (open to every tier)".into(),
                ));
            }
            for (j, t) in tiers.iter().enumerate() {
                if !is_label(t) {
                    out.push((format!("{rf}.tiers[{j}]"), LABEL_RULE.into()));
                }
            }
        }
        if let Some(caps) = &r.capabilities {
            let mut seen = HashSet::new();
            for (j, c) in caps.iter().enumerate() {
                if !seen.insert(*c) {
                    out.push((
                        format!("{rf}.capabilities[{j}]"),
                        format!("`{}` is listed twice", c.label()),
                    ));
                }
            }
        }
    }
    if any_weight && m.strategy != Strategy::Weighted {
        out.push((
            format!("{f}.strategy"),
            format!(
                "routes set `weight` but the strategy is `{}`; set `strategy: weighted` or remove the weights",
                m.strategy.label()
            ),
        ));
    }
    if m.strategy == Strategy::Weighted
        && !m.routes.is_empty()
        && m.routes.iter().all(|r| r.weight.unwrap_or(1.0) <= 0.0)
    {
        out.push((
            format!("{f}.routes"),
            "with `strategy: weighted` at least one route needs a weight above 0".into(),
        ));
    }
    check_split(&f, alias, m, &names, out);
}

fn check_split(
    f: &str,
    alias: &str,
    m: &Model,
    names: &HashSet<String>,
    out: &mut Vec<(String, String)>,
) {
    if m.split.is_empty() {
        return;
    }
    let mut variant_names = HashSet::new();
    let mut sum = 0.0;
    for (i, v) in m.split.iter().enumerate() {
        let vf = format!("{f}.split[{i}]");
        if !is_label(&v.name) {
            out.push((format!("{vf}.name"), LABEL_RULE.into()));
        }
        if !variant_names.insert(v.name.as_str()) {
            out.push((
                format!("{vf}.name"),
                format!(
                    "`{}` names another variant too; names must be unique",
                    v.name
                ),
            ));
        }
        if !v.share.is_finite() || v.share <= 0.0 || v.share > 1.0 {
            out.push((
                format!("{vf}.share"),
                "must be above 0 and at most 1 (a fraction of callers)".into(),
            ));
        } else {
            sum += v.share;
        }
        if v.routes.is_empty() {
            out.push((
                format!("{vf}.routes"),
                "needs at least one route name".into(),
            ));
        }
        let mut seen = HashSet::new();
        for (j, r) in v.routes.iter().enumerate() {
            if !names.contains(r) {
                let mut known: Vec<&str> = names.iter().map(String::as_str).collect();
                known.sort_unstable();
                out.push((
                    format!("{vf}.routes[{j}]"),
                    format!(
                        "no route of `{alias}` is named `{r}`; route names (a route's `name`, else `provider/model`): {}",
                        known.join(", ")
                    ),
                ));
            } else if !seen.insert(r.as_str()) {
                out.push((
                    format!("{vf}.routes[{j}]"),
                    format!("`{r}` is listed twice"),
                ));
            }
        }
    }
    if (sum - 1.0).abs() > 1e-6 {
        out.push((
            format!("{f}.split"),
            format!("the shares add up to {sum}; they must add up to 1"),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse_str;
    use std::path::Path;

    const BASE: &str = r#"
listen: "127.0.0.1:8080"
providers:
  a: { kind: mock }
  b: { kind: mock }
models:
  chat:
    strategy: weighted
    routes:
      - { provider: a, model: x, weight: 95, capabilities: [tools, vision], context_window: 128000, region: us, tiers: [premium], max_concurrency: 8 }
      - { provider: b, model: y, weight: 5, region: eu, name: cheap }
    split:
      - { name: control, share: 0.5, routes: [a/x] }
      - { name: treatment, share: 0.5, routes: [cheap, a/x] }
keys:
  - { name: app-eu, key: "tg-test-key-0001", tier: premium, regions: [eu] }
teams:
  t: { tier: standard, regions: [us, eu] }
"#;

    fn problems(edit: (&str, &str)) -> String {
        let text = BASE.replacen(edit.0, edit.1, 1);
        assert_ne!(text, BASE, "edit {edit:?} matched nothing");
        match parse_str(&text, |_| None, Path::new(".")) {
            Ok(_) => panic!("accepted: {edit:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn accepts_every_routing_field() {
        let cfg = match parse_str(BASE, |_| None, Path::new(".")) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(cfg.models["chat"].split.len(), 2);
        assert_eq!(
            cfg.keys[0].regions.as_deref(),
            Some(&["eu".to_string()][..])
        );
    }

    #[test]
    fn every_routing_error_names_its_field_and_the_fix() {
        for (edit, want) in [
            (
                ("strategy: weighted", "strategy: fastest"),
                "models.chat.strategy: unknown variant `fastest`, expected one of `fallback`, `weighted`, `latency`, `least_busy`, `cost`",
            ),
            (("weight: 95", "weight: -1"), "models.chat.routes[0].weight: must be a number ≥ 0"),
            (
                ("strategy: weighted", "strategy: latency"),
                "models.chat.strategy: routes set `weight` but the strategy is `latency`; set `strategy: weighted`",
            ),
            (("share: 0.5, routes: [a/x]", "share: 0.6, routes: [a/x]"), "models.chat.split: the shares add up to 1.1; they must add up to 1"),
            (("routes: [cheap, a/x]", "routes: [cheep]"), "models.chat.split[1].routes[0]: no route of `chat` is named `cheep`; route names"),
            (("capabilities: [tools, vision]", "capabilities: [tools, telepathy]"), "models.chat.routes[0].capabilities[1]: unknown variant `telepathy`"),
            (("context_window: 128000", "context_window: 0"), "models.chat.routes[0].context_window: must be at least 1"),
            (("max_concurrency: 8", "max_concurrency: 0"), "models.chat.routes[0].max_concurrency: must be at least 1"),
            (("regions: [eu] }", "regions: [\"e u\"] }"), "keys[0].regions[0]: use 1-64 characters"),
            (("regions: [us, eu]", "regions: []"), "teams.t.regions: is empty"),
            (("tiers: [premium]", "tiers: []"), "models.chat.routes[0].tiers: is empty"),
            (("name: cheap", "name: a/x"), "models.chat.routes[1].name: another route of `chat` is also named `a/x`"),
            (("name: control", "name: treatment"), "models.chat.split[1].name: `treatment` names another variant too"),
            (("region: us", "reigon: us"), "unknown field `reigon`"),
        ] {
            let got = problems(edit);
            assert!(got.contains(want), "{edit:?}: {got}");
        }
    }
}
