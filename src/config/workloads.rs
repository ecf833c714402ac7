//! The workload parts of the schema: the declared request tags
//! (`workloads:`), a key's or team's defaults, subsets and per-workload
//! limits, a route's restriction and an alias's `by_workload`, and their
//! validation. `schema.rs` holds only the fields that name them.

use super::schema::{Budget, Config, Limits};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Most tag keys `workloads.tags` may declare.
pub const MAX_TAG_KEYS: usize = 8;
/// Most values one tag key may declare.
pub const MAX_TAG_VALUES: usize = 32;
/// Longest tag key or value, in bytes.
pub const MAX_TAG_LEN: usize = 64;

/// `workloads:`: the tags clients may set, and what is done with them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadsSection {
    /// Each tag key with the values it may take.
    #[serde(default)]
    pub tags: BTreeMap<String, Vec<String>>,
    /// A value a key does not declare: `reject` (400) or `other` (counted
    /// as the value `other`). An undeclared key is always refused.
    #[serde(default)]
    pub unknown: Unknown,
    /// The tag keys each workload metric family is split by. Absent: none
    /// (the families stay empty).
    #[serde(default)]
    pub metrics: WorkloadMetrics,
}

/// What an undeclared tag value becomes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Unknown {
    /// 400 naming the value.
    #[default]
    Reject,
    /// The value `other`.
    Other,
}

/// Per metric family, the tag keys it is labelled with (each key a series
/// set of its own: `tag`, `value`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadMetrics {
    #[serde(default)]
    pub requests: Vec<String>,
    #[serde(default)]
    pub tokens: Vec<String>,
    #[serde(default)]
    pub cost: Vec<String>,
    #[serde(default)]
    pub duration: Vec<String>,
    #[serde(default)]
    pub ttft: Vec<String>,
}

impl WorkloadMetrics {
    /// `(family, keys)` in a fixed order.
    pub fn families(&self) -> [(&'static str, &[String]); 5] {
        [
            ("requests", &self.requests),
            ("tokens", &self.tokens),
            ("cost", &self.cost),
            ("duration", &self.duration),
            ("ttft", &self.ttft),
        ]
    }
}

/// Limits and budgets of one workload (`tag=value`) of a key or team.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadLimits {
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub budgets: Vec<Budget>,
    /// This workload may spend at most this fraction (above 0, at most 1)
    /// of each of the key's (or team's) own budgets, window by window.
    #[serde(default)]
    pub share: Option<f64>,
}

/// An alias's strategy and routes by the value of one tag.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ByWorkload {
    /// The tag key whose value decides.
    pub tag: String,
    /// By value: the strategy and (optionally) the routes, by name, in
    /// fallback order. A value not listed uses the alias's own.
    pub values: BTreeMap<String, WorkloadChoice>,
}

/// What one workload gets of an alias.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadChoice {
    /// Absent: the alias's `strategy`.
    #[serde(default)]
    pub strategy: Option<super::routing::Strategy>,
    /// Route names; absent: the alias's routes (or its split's).
    #[serde(default)]
    pub routes: Option<Vec<String>>,
}

/// Whether a route sends the request's tags to its provider.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ForwardTags {
    /// Never (the `x-tollgate-tags` header is not forwarded either).
    #[default]
    None,
    /// As string members of the body's `metadata` object (created when
    /// absent; the client's other members kept, a member named like a tag
    /// replaced).
    Metadata,
    /// As the body's `user` (`use_case=batch,priority=interactive`), when
    /// the client sent no `user`.
    User,
}

/// Whether `s` is a valid tag key or value: 1-64 bytes of letters, digits
/// and `- _ .`.
pub fn is_tag_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_TAG_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

const NAME_RULE: &str = "use 1-64 characters from letters, digits and - _ .";

/// `use_case=batch` split into its key and value, both declared.
pub fn split_pair<'a>(
    tags: &BTreeMap<String, Vec<String>>,
    pair: &'a str,
) -> Result<(&'a str, &'a str), String> {
    let Some((k, v)) = pair.split_once('=') else {
        return Err("must be `tag=value`, e.g. `use_case=batch`".into());
    };
    match tags.get(k) {
        None => Err(format!("`{k}` is not a tag declared under workloads.tags")),
        Some(values) if !values.iter().any(|x| x == v) => Err(format!(
            "`{v}` is not a value of the tag `{k}` (workloads.tags.{k})"
        )),
        Some(_) => Ok((k, v)),
    }
}

/// Workload problems of the config, each `(field, what to fix)`.
pub(crate) fn problems(cfg: &Config) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let w = &cfg.workloads;
    if w.tags.len() > MAX_TAG_KEYS {
        out.push((
            "workloads.tags".into(),
            format!("declares {} keys; at most {MAX_TAG_KEYS}", w.tags.len()),
        ));
    }
    for (k, values) in &w.tags {
        let f = format!("workloads.tags.{k}");
        if !is_tag_name(k) {
            out.push((f.clone(), format!("the key: {NAME_RULE}")));
        }
        if values.is_empty() {
            out.push((f.clone(), "declares no value; list at least one".into()));
        }
        if values.len() > MAX_TAG_VALUES {
            out.push((
                f.clone(),
                format!("declares {} values; at most {MAX_TAG_VALUES}", values.len()),
            ));
        }
        for (i, v) in values.iter().enumerate() {
            if !is_tag_name(v) {
                out.push((format!("{f}[{i}]"), NAME_RULE.into()));
            } else if v == "other" || v == "none" {
                out.push((
                    format!("{f}[{i}]"),
                    format!("`{v}` is reserved (it names a request without the tag, or an unknown value)"),
                ));
            } else if values[..i].contains(v) {
                out.push((format!("{f}[{i}]"), format!("`{v}` is listed twice")));
            }
        }
    }
    for (family, keys) in w.metrics.families() {
        for (i, k) in keys.iter().enumerate() {
            if !w.tags.contains_key(k) {
                out.push((
                    format!("workloads.metrics.{family}[{i}]"),
                    format!("`{k}` is not a tag declared under workloads.tags"),
                ));
            } else if keys[..i].contains(k) {
                out.push((
                    format!("workloads.metrics.{family}[{i}]"),
                    format!("`{k}` is listed twice"),
                ));
            }
        }
    }
    for (i, k) in cfg.keys.iter().enumerate() {
        caller(
            &format!("keys[{i}]"),
            w,
            &k.tags,
            &k.allowed_tags,
            &k.workload_limits,
            !k.budgets.is_empty(),
            &mut out,
        );
    }
    for (name, t) in &cfg.teams {
        caller(
            &format!("teams.{name}"),
            w,
            &t.tags,
            &t.allowed_tags,
            &t.workload_limits,
            !t.budgets.is_empty(),
            &mut out,
        );
    }
    for (alias, m) in &cfg.models {
        for (i, r) in m.routes.iter().enumerate() {
            let passthrough = cfg.providers.get(&r.provider).is_none_or(|p| {
                matches!(
                    p.kind,
                    super::ProviderKind::Openai | super::ProviderKind::Azure
                )
            });
            if r.forward_tags != ForwardTags::None && !passthrough {
                out.push((
                    format!("models.{alias}.routes[{i}].forward_tags"),
                    "only applies to routes whose body is passed through (kind openai or azure)"
                        .into(),
                ));
            }
            if let Some(allowed) = &r.workloads {
                subset(
                    &format!("models.{alias}.routes[{i}].workloads"),
                    w,
                    allowed,
                    &mut out,
                );
            }
        }
        if let Some(b) = &m.by_workload {
            let f = format!("models.{alias}.by_workload");
            match w.tags.get(&b.tag) {
                None => out.push((
                    format!("{f}.tag"),
                    format!("`{}` is not a tag declared under workloads.tags", b.tag),
                )),
                Some(values) => {
                    for (v, choice) in &b.values {
                        if !values.contains(v) && v != "none" && v != "other" {
                            out.push((
                                format!("{f}.values.{v}"),
                                format!("`{v}` is not a value of the tag `{}`", b.tag),
                            ));
                        }
                        for (j, n) in choice.routes.iter().flatten().enumerate() {
                            let known =
                                m.routes.iter().any(|r| super::routing::route_name(r) == *n);
                            if !known {
                                out.push((
                                    format!("{f}.values.{v}.routes[{j}]"),
                                    format!("`{n}` names no route of `{alias}`"),
                                ));
                            }
                        }
                        if choice.routes.as_ref().is_some_and(Vec::is_empty) {
                            out.push((
                                format!("{f}.values.{v}.routes"),
                                "is empty; list at least one route or leave it out".into(),
                            ));
                        }
                    }
                }
            }
        }
    }
    out
}

/// A key's or team's `tags`, `allowed_tags` and `workload_limits`.
fn caller(
    f: &str,
    w: &WorkloadsSection,
    tags: &BTreeMap<String, String>,
    allowed: &BTreeMap<String, Vec<String>>,
    limits: &BTreeMap<String, WorkloadLimits>,
    has_budgets: bool,
    out: &mut Vec<(String, String)>,
) {
    for (k, v) in tags {
        match w.tags.get(k) {
            None => out.push((
                format!("{f}.tags.{k}"),
                format!("`{k}` is not a tag declared under workloads.tags"),
            )),
            Some(values) if !values.contains(v) => out.push((
                format!("{f}.tags.{k}"),
                format!("`{v}` is not a value of the tag `{k}`"),
            )),
            Some(_) => {
                if allowed.get(k).is_some_and(|a| !a.contains(v)) {
                    out.push((
                        format!("{f}.tags.{k}"),
                        format!("`{v}` is outside {f}.allowed_tags.{k}"),
                    ));
                }
            }
        }
    }
    subset(&format!("{f}.allowed_tags"), w, allowed, out);
    for (pair, l) in limits {
        let at = format!("{f}.workload_limits.{pair}");
        if let Err(e) = split_pair(&w.tags, pair) {
            out.push((at.clone(), e));
        }
        match l.share {
            Some(s) if !(s > 0.0 && s <= 1.0) => out.push((
                format!("{at}.share"),
                "must be above 0 and at most 1".into(),
            )),
            Some(_) if !has_budgets => out.push((
                format!("{at}.share"),
                format!("is a share of {f}.budgets, which sets none"),
            )),
            _ => {}
        }
        if l.limits.is_empty() && l.budgets.is_empty() && l.share.is_none() {
            out.push((at, "sets no limit, budget or share".into()));
        }
    }
}

/// A subset of the declared values per key (`allowed_tags`, a route's
/// `workloads`).
fn subset(
    f: &str,
    w: &WorkloadsSection,
    allowed: &BTreeMap<String, Vec<String>>,
    out: &mut Vec<(String, String)>,
) {
    for (k, list) in allowed {
        let Some(values) = w.tags.get(k) else {
            out.push((
                format!("{f}.{k}"),
                format!("`{k}` is not a tag declared under workloads.tags"),
            ));
            continue;
        };
        if list.is_empty() {
            out.push((
                format!("{f}.{k}"),
                "is empty, so nothing would be allowed; list at least one value".into(),
            ));
        }
        for (i, v) in list.iter().enumerate() {
            if !values.contains(v) {
                out.push((
                    format!("{f}.{k}[{i}]"),
                    format!("`{v}` is not a value of the tag `{k}`"),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    fn problems(yaml: &str) -> Vec<String> {
        match crate::config::parse_str(yaml, |_| None, std::path::Path::new(".")) {
            Ok(_) => Vec::new(),
            Err(e) => e.problems,
        }
    }

    const HEAD: &str = r#"
listen: "127.0.0.1:1"
providers:
  m: { kind: mock }
  a: { kind: anthropic, api_key: "sk-ant" }
"#;

    #[test]
    fn every_bound_and_reference_is_checked_and_named() {
        let keys: Vec<String> = (0..9).map(|i| format!("k{i}: [x]")).collect();
        let values: Vec<String> = (0..33).map(|i| format!("v{i}")).collect();
        let yaml = format!(
            r#"{HEAD}
workloads:
  tags: {{ {} }}
models:
  chat:
    routes:
      - {{ provider: m, model: x, workloads: {{ k0: [nope] }} }}
      - {{ provider: a, model: claude, forward_tags: metadata }}
    by_workload: {{ tag: k1, values: {{ x: {{ routes: [ghost] }}, y: {{}} }} }}
"#,
            keys.join(", ")
        );
        let p = problems(&yaml);
        let has = |s: &str| p.iter().any(|x| x.contains(s));
        assert!(has("workloads.tags: declares 9 keys; at most 8"), "{p:#?}");
        assert!(
            has("models.chat.routes[0].workloads.k0[0]: `nope` is not a value"),
            "{p:#?}"
        );
        assert!(
            has("models.chat.routes[1].forward_tags: only applies"),
            "{p:#?}"
        );
        assert!(
            has("models.chat.by_workload.values.x.routes[0]: `ghost` names no route"),
            "{p:#?}"
        );
        assert!(
            has("models.chat.by_workload.values.y: `y` is not a value"),
            "{p:#?}"
        );

        let yaml = format!(
            r#"{HEAD}
workloads:
  tags: {{ use_case: [{}], priority: [none, a, a, "b c"] }}
  metrics: {{ tokens: [use_case, use_case] }}
models:
  chat: {{ routes: [ {{ provider: m, model: x }} ] }}
teams:
  t:
    tags: {{ use_case: v1 }}
    allowed_tags: {{ use_case: [v2] }}
    workload_limits:
      "use_case=v1": {{ share: 0.5 }}
      "use_case": {{ limits: {{ rpm: 1 }} }}
      "priority=a": {{ share: 1.5, budgets: [ {{ usd: 0, window: day }} ] }}
      "use_case=v2": {{}}
"#,
            values.join(", ")
        );
        let p = problems(&yaml);
        let has = |s: &str| p.iter().any(|x| x.contains(s));
        assert!(
            has("workloads.tags.use_case: declares 33 values; at most 32"),
            "{p:#?}"
        );
        assert!(
            has("workloads.tags.priority[0]: `none` is reserved"),
            "{p:#?}"
        );
        assert!(
            has("workloads.tags.priority[2]: `a` is listed twice"),
            "{p:#?}"
        );
        assert!(
            has("workloads.tags.priority[3]: use 1-64 characters"),
            "{p:#?}"
        );
        assert!(
            has("workloads.metrics.tokens[1]: `use_case` is listed twice"),
            "{p:#?}"
        );
        assert!(
            has("teams.t.tags.use_case: `v1` is outside teams.t.allowed_tags.use_case"),
            "{p:#?}"
        );
        assert!(has("teams.t.workload_limits.use_case=v1.share: is a share of teams.t.budgets, which sets none"), "{p:#?}");
        assert!(
            has("teams.t.workload_limits.use_case: must be `tag=value`"),
            "{p:#?}"
        );
        assert!(
            has("teams.t.workload_limits.priority=a.share: must be above 0 and at most 1"),
            "{p:#?}"
        );
        assert!(
            has("teams.t.workload_limits.priority=a.budgets[0].usd"),
            "{p:#?}"
        );
        assert!(
            has("teams.t.workload_limits.use_case=v2: sets no limit, budget or share"),
            "{p:#?}"
        );
    }
}
