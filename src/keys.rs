//! A gateway key compiled for the request path ([`KeyRt`]): what it may
//! use, its limits and its team's, and its routing access. Built from the
//! config (by `runtime`) and from the key store's rows (by `keystore`);
//! never holds the secret.

use crate::governance::{plan, Level, Rule, WorkloadRule};
use bytes::Bytes;
use std::collections::BTreeMap;
use std::sync::Arc;

/// A gateway key (never the secret).
pub struct KeyRt {
    pub name: Arc<str>,
    /// Allowed aliases; `None` means all.
    pub models: Option<Vec<Arc<str>>>,
    /// Prebuilt `GET /v1/models` body for this key.
    pub models_body: Bytes,
    /// The key's team, if any.
    pub team: Option<Arc<str>>,
    /// The key's limits and budgets, then its team's.
    pub rules: Vec<Rule>,
    /// The tier and regions that decide which routes it reaches.
    pub access: crate::routing::Access,
    /// The provider of its `/v1/files` and `/v1/batches`: the key's own
    /// `files_provider`, else its team's.
    pub files_provider: Option<Arc<str>>,
    /// Its (and its team's) default tags and allowed tag values.
    pub workload: crate::workload::Caller,
    /// The key's `workload_limits`, then its team's: each applies only to
    /// requests of its workload.
    pub workload_rules: Vec<WorkloadRule>,
}

impl KeyRt {
    /// Compiles one key (from the config or the key store) with its team:
    /// the key's rules then its team's, its `GET /v1/models` body (only
    /// the aliases `models` defines) and its routing access.
    pub fn compile(
        k: &crate::config::Key,
        team: Option<(&str, &crate::config::Team)>,
        models: &BTreeMap<String, crate::config::Model>,
        all_models: &Bytes,
        declared: &crate::workload::Declared,
    ) -> KeyRt {
        let allowed: Option<Vec<Arc<str>>> = k
            .models
            .as_ref()
            .map(|v| v.iter().map(|s| Arc::from(s.as_str())).collect());
        let models_body = match &k.models {
            Some(v) => {
                let names: Vec<&str> = v
                    .iter()
                    .map(String::as_str)
                    .filter(|m| models.contains_key(*m))
                    .collect();
                models_list_body(&names)
            }
            None => all_models.clone(),
        };
        let mut rules = plan::compile(Level::Key, &k.name, &k.limits, &k.budgets);
        let mut workload_rules = plan::compile_workloads(
            Level::KeyWorkload,
            &k.name,
            &k.workload_limits,
            &k.budgets,
            declared,
        );
        if let Some((name, t)) = team {
            rules.extend(plan::compile(Level::Team, name, &t.limits, &t.budgets));
            workload_rules.extend(plan::compile_workloads(
                Level::TeamWorkload,
                name,
                &t.workload_limits,
                &t.budgets,
                declared,
            ));
        }
        let workload = declared.caller(
            (&k.tags, &k.allowed_tags),
            team.map(|(_, t)| (&t.tags, &t.allowed_tags)),
        );
        KeyRt {
            name: Arc::from(k.name.as_str()),
            models: allowed,
            models_body,
            team: k.team.as_deref().map(Arc::from),
            rules,
            access: crate::routing::Access::of(k, team.map(|t| t.1)),
            files_provider: k
                .files_provider
                .as_deref()
                .or(team.and_then(|t| t.1.files_provider.as_deref()))
                .map(Arc::from),
            workload,
            workload_rules,
        }
    }

    /// The workload rules that apply to a request with `tags` (no
    /// allocation when the key has none).
    pub fn workload_rules(&self, tags: &crate::workload::TagSet) -> Vec<&Rule> {
        if self.workload_rules.is_empty() {
            return Vec::new();
        }
        self.workload_rules
            .iter()
            .filter(|w| tags.get(w.key) == w.value)
            .map(|w| &w.rule)
            .collect()
    }

    /// The `GET /v1/models` body of a key that may use every alias.
    pub fn all_models_body(models: &BTreeMap<String, crate::config::Model>) -> Bytes {
        let names: Vec<&str> = models.keys().map(String::as_str).collect();
        models_list_body(&names)
    }

    pub fn allows(&self, alias: &str) -> bool {
        self.models
            .as_ref()
            .is_none_or(|m| m.iter().any(|a| &**a == alias))
    }
}

fn models_list_body(names: &[&str]) -> Bytes {
    let data: Vec<serde_json::Value> = names
        .iter()
        .map(|n| {
            serde_json::json!({"id": n, "object": "model", "created": 0, "owned_by": "tollgate"})
        })
        .collect();
    Bytes::from(serde_json::json!({"object": "list", "data": data}).to_string())
}
