//! What the key store holds (keys, their secrets' digests, teams) and what
//! the admin API accepts, with the checks that make an admin request valid.
//! Limits, budgets, tiers and regions are the config's own types and are
//! checked by the config's own rules, so a runtime key means exactly what a
//! config key with the same fields means.

use crate::config::{Budget, Config, Key, Limits, Team};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use std::sync::Arc;

/// Largest `metadata` object, as JSON text.
pub(crate) const MAX_METADATA_BYTES: usize = 8 * 1024;
/// Longest rotation grace period.
pub(crate) const MAX_GRACE: std::time::Duration = std::time::Duration::from_secs(30 * 86_400);
/// Most models in one key's allow-list, budgets per key or team, regions.
pub(crate) const MAX_LIST: usize = 256;

/// The fields of a key besides its name, team and lifecycle (stored as JSON).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct KeySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) models: Option<Vec<String>>,
    #[serde(default)]
    pub(crate) limits: Limits,
    #[serde(default)]
    pub(crate) budgets: Vec<Budget>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) tier: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) regions: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) metadata: Option<Box<RawValue>>,
}

/// The fields of a team besides its name (stored as JSON).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct TeamSpec {
    #[serde(default)]
    pub(crate) limits: Limits,
    #[serde(default)]
    pub(crate) budgets: Vec<Budget>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) tier: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) regions: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) metadata: Option<Box<RawValue>>,
}

/// One secret of a key: its SHA-256 digest only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SecretRec {
    pub(crate) digest: [u8; 32],
    pub(crate) created_at: i64,
    /// Unix ms after which it no longer opens the key (rotated out).
    pub(crate) valid_until: Option<i64>,
}

/// A runtime key as stored.
#[derive(Debug, Clone)]
pub(crate) struct KeyRec {
    pub(crate) name: Arc<str>,
    pub(crate) team: Option<Arc<str>>,
    pub(crate) spec: KeySpec,
    /// Unix ms.
    pub(crate) expires_at: Option<i64>,
    pub(crate) revoked_at: Option<i64>,
    pub(crate) created_at: i64,
    pub(crate) updated_at: i64,
    pub(crate) secrets: Vec<SecretRec>,
}

impl KeyRec {
    /// The key as the config schema spells it, to compile it the same way.
    pub(crate) fn as_config_key(&self) -> Key {
        Key {
            name: self.name.to_string(),
            key: None,
            key_sha256: None,
            models: self.spec.models.clone(),
            team: self.team.as_deref().map(String::from),
            limits: self.spec.limits.clone(),
            budgets: self.spec.budgets.clone(),
            tier: self.spec.tier.clone(),
            regions: self.spec.regions.clone(),
            // Runtime keys use their team's (a config team's) provider.
            files_provider: None,
            // Runtime keys and teams carry no workload settings of their
            // own; a config team's apply to its runtime keys.
            tags: Default::default(),
            allowed_tags: Default::default(),
            workload_limits: Default::default(),
        }
    }
}

/// A runtime team as stored.
#[derive(Debug, Clone)]
pub struct TeamRec {
    pub(crate) name: Arc<str>,
    pub(crate) spec: TeamSpec,
    pub(crate) created_at: i64,
    pub(crate) updated_at: i64,
}

impl TeamRec {
    pub fn as_config_team(&self) -> Team {
        Team {
            limits: self.spec.limits.clone(),
            budgets: self.spec.budgets.clone(),
            tier: self.spec.tier.clone(),
            regions: self.spec.regions.clone(),
            // Not settable through the admin API: `files_provider` is the
            // config's (keys and config teams).
            files_provider: None,
            // Runtime keys and teams carry no workload settings of their
            // own; a config team's apply to its runtime keys.
            tags: Default::default(),
            allowed_tags: Default::default(),
            workload_limits: Default::default(),
        }
    }
}

/// A point in time: RFC 3339 text (`2027-01-31T00:00:00Z`) or Unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Timestamp(pub i64);

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Secs(i64),
            Text(String),
        }
        let bad = || {
            serde::de::Error::custom(
                "must be an RFC 3339 time such as 2027-01-31T00:00:00Z, or Unix seconds",
            )
        };
        match Raw::deserialize(d).map_err(|_| bad())? {
            Raw::Secs(s) if (0..=253_402_300_799).contains(&s) => Ok(Timestamp(s * 1000)),
            Raw::Secs(_) => Err(bad()),
            Raw::Text(t) => {
                let at =
                    time::OffsetDateTime::parse(&t, &time::format_description::well_known::Rfc3339)
                        .map_err(|_| bad())?;
                let ms = at.unix_timestamp_nanos() / 1_000_000;
                i64::try_from(ms).map(Timestamp).map_err(|_| bad())
            }
        }
    }
}

/// Unix ms as RFC 3339 text (UTC, milliseconds).
pub(crate) fn rfc3339(ms: i64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

/// Reads a field that may be absent (keep), `null` (clear) or a value (set).
fn double<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// `POST /admin/keys`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateKey {
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) team: Option<String>,
    #[serde(default)]
    pub(crate) models: Option<Vec<String>>,
    #[serde(default)]
    pub(crate) limits: Limits,
    #[serde(default)]
    pub(crate) budgets: Vec<Budget>,
    #[serde(default)]
    pub(crate) tier: Option<String>,
    #[serde(default)]
    pub(crate) regions: Option<Vec<String>>,
    #[serde(default)]
    pub(crate) metadata: Option<Box<RawValue>>,
    #[serde(default)]
    pub(crate) expires_at: Option<Timestamp>,
}

/// `PATCH /admin/keys/{name}`: each field given replaces the stored one;
/// `null` clears an optional one.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpdateKey {
    #[serde(default, deserialize_with = "double")]
    pub(crate) team: Option<Option<String>>,
    #[serde(default, deserialize_with = "double")]
    pub(crate) models: Option<Option<Vec<String>>>,
    #[serde(default)]
    pub(crate) limits: Option<Limits>,
    #[serde(default)]
    pub(crate) budgets: Option<Vec<Budget>>,
    #[serde(default, deserialize_with = "double")]
    pub(crate) tier: Option<Option<String>>,
    #[serde(default, deserialize_with = "double")]
    pub(crate) regions: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "double")]
    pub(crate) metadata: Option<Option<Box<RawValue>>>,
    #[serde(default, deserialize_with = "double")]
    pub(crate) expires_at: Option<Option<Timestamp>>,
}

/// `POST /admin/keys/{name}/rotate`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RotateKey {
    /// How long the old secret keeps working (`0s` to `30d`; default `0s`).
    #[serde(default)]
    pub(crate) grace: Option<crate::config::duration::HumanDuration>,
}

/// `POST /admin/teams`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateTeam {
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) limits: Limits,
    #[serde(default)]
    pub(crate) budgets: Vec<Budget>,
    #[serde(default)]
    pub(crate) tier: Option<String>,
    #[serde(default)]
    pub(crate) regions: Option<Vec<String>>,
    #[serde(default)]
    pub(crate) metadata: Option<Box<RawValue>>,
}

/// `PATCH /admin/teams/{name}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpdateTeam {
    #[serde(default)]
    pub(crate) limits: Option<Limits>,
    #[serde(default)]
    pub(crate) budgets: Option<Vec<Budget>>,
    #[serde(default, deserialize_with = "double")]
    pub(crate) tier: Option<Option<String>>,
    #[serde(default, deserialize_with = "double")]
    pub(crate) regions: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "double")]
    pub(crate) metadata: Option<Option<Box<RawValue>>>,
}

/// A 400: the field at fault and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Invalid {
    pub(crate) param: String,
    pub(crate) message: String,
}

impl Invalid {
    pub(crate) fn new(param: impl Into<String>, message: impl Into<String>) -> Invalid {
        Invalid {
            param: param.into(),
            message: message.into(),
        }
    }
}

/// The config's rules for a name (1-128 of letters, digits, `- _ . : /
/// @`), for a key or team name given to the API.
pub(crate) fn check_name(field: &str, name: &str) -> Result<(), Invalid> {
    match crate::config::validate::name_problem(name) {
        None => Ok(()),
        Some(m) => Err(Invalid::new(field, m)),
    }
}

/// The checks the config applies to a key's or team's limits, budgets,
/// tier and regions, plus the API's own bounds on lists and metadata.
pub(crate) fn check_governance(
    limits: &Limits,
    budgets: &[Budget],
    tier: Option<&String>,
    regions: Option<&Vec<String>>,
    metadata: Option<&RawValue>,
) -> Result<(), Invalid> {
    if budgets.len() > MAX_LIST {
        return Err(Invalid::new(
            "budgets",
            format!("at most {MAX_LIST} budgets"),
        ));
    }
    if regions.is_some_and(|r| r.len() > MAX_LIST) {
        return Err(Invalid::new(
            "regions",
            format!("at most {MAX_LIST} regions"),
        ));
    }
    let problems = crate::config::validate::governance_problems("", limits, budgets, tier, regions);
    if let Some((field, msg)) = problems.into_iter().next() {
        return Err(Invalid::new(field.trim_start_matches('.'), msg));
    }
    if let Some(m) = metadata {
        if m.get().len() > MAX_METADATA_BYTES {
            return Err(Invalid::new(
                "metadata",
                format!("is over {MAX_METADATA_BYTES} bytes of JSON"),
            ));
        }
        if !m.get().trim_start().starts_with('{') {
            return Err(Invalid::new("metadata", "must be a JSON object"));
        }
    }
    Ok(())
}

/// Checks a key's allow-list against the running config's aliases.
pub(crate) fn check_models(models: Option<&Vec<String>>, cfg: &Config) -> Result<(), Invalid> {
    let Some(list) = models else { return Ok(()) };
    if list.len() > MAX_LIST {
        return Err(Invalid::new("models", format!("at most {MAX_LIST} models")));
    }
    for (i, m) in list.iter().enumerate() {
        if !cfg.models.contains_key(m) {
            return Err(Invalid::new(
                format!("models[{i}]"),
                format!("model `{}` is not defined in the config", short(m)),
            ));
        }
    }
    Ok(())
}

/// Client text echoed in a message is cut to a sane length.
pub(crate) fn short(s: &str) -> String {
    if s.len() <= 64 {
        return s.to_string();
    }
    let mut end = 64;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// The JSON of a spec's metadata, or `null`.
pub(crate) fn metadata_json(m: &Option<Box<RawValue>>) -> serde_json::Value {
    m.as_ref()
        .and_then(|r| serde_json::from_str(r.get()).ok())
        .unwrap_or(serde_json::Value::Null)
}

/// A config key as the API shows it (never its secret).
pub(crate) fn config_key_json(k: &Key) -> serde_json::Value {
    serde_json::json!({
        "name": k.name, "source": "config", "team": k.team, "models": k.models,
        "limits": k.limits, "budgets": k.budgets, "tier": k.tier, "regions": k.regions,
        "status": "active", "expires_at": null, "metadata": null,
    })
}

/// A stored key as the API shows it (never a secret, nor its digest).
pub(crate) fn key_json(k: &KeyRec, now_ms: i64) -> serde_json::Value {
    let status = if k.revoked_at.is_some() {
        "revoked"
    } else if k.expires_at.is_some_and(|e| e <= now_ms) {
        "expired"
    } else {
        "active"
    };
    let previous: Vec<String> = k
        .secrets
        .iter()
        .filter_map(|s| s.valid_until)
        .filter(|u| *u > now_ms)
        .map(rfc3339)
        .collect();
    serde_json::json!({
        "name": &*k.name, "source": "store", "team": k.team.as_deref(),
        "models": k.spec.models, "limits": k.spec.limits, "budgets": k.spec.budgets,
        "tier": k.spec.tier, "regions": k.spec.regions,
        "metadata": metadata_json(&k.spec.metadata),
        "status": status,
        "expires_at": k.expires_at.map(rfc3339),
        "revoked_at": k.revoked_at.map(rfc3339),
        "created_at": rfc3339(k.created_at),
        "updated_at": rfc3339(k.updated_at),
        "previous_secret_valid_until": previous,
    })
}

/// A config team as the API shows it.
pub(crate) fn config_team_json(name: &str, t: &Team) -> serde_json::Value {
    serde_json::json!({
        "name": name, "source": "config", "limits": t.limits, "budgets": t.budgets,
        "tier": t.tier, "regions": t.regions, "metadata": null,
    })
}

/// A stored team as the API shows it.
pub(crate) fn team_json(t: &TeamRec) -> serde_json::Value {
    serde_json::json!({
        "name": &*t.name, "source": "store", "limits": t.spec.limits,
        "budgets": t.spec.budgets, "tier": t.spec.tier, "regions": t.spec.regions,
        "metadata": metadata_json(&t.spec.metadata),
        "created_at": rfc3339(t.created_at), "updated_at": rfc3339(t.updated_at),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_read_rfc3339_and_seconds() {
        let t: Timestamp = serde_json::from_str("\"2027-01-31T00:00:00Z\"").unwrap();
        assert_eq!(t.0, 1_801_353_600_000);
        let s: Timestamp = serde_json::from_str("1801353600").unwrap();
        assert_eq!(s, t);
        assert_eq!(rfc3339(t.0), "2027-01-31T00:00:00Z");
        for bad in ["\"tomorrow\"", "-1", "1e30", "true", "18446744073709551615"] {
            assert!(serde_json::from_str::<Timestamp>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn patches_tell_absent_from_null() {
        let u: UpdateKey = serde_json::from_str(r#"{"team": null, "tier": "gold"}"#).unwrap();
        assert_eq!(u.team, Some(None));
        assert_eq!(u.tier, Some(Some("gold".into())));
        assert!(u.models.is_none());
        assert!(serde_json::from_str::<UpdateKey>(r#"{"secret": "x"}"#).is_err());
    }
}
