//! The admin API's key, team and audit handlers. Each takes the request's
//! parsed parts and returns a status and a JSON body; `admin.rs` routes to
//! them and writes the response. Reads come from this instance's records
//! (always available); writes go to the database as one transaction each
//! and get 503 while it is unreachable.

use crate::base::clock::unix_ms as now_ms;
use crate::config::Config;
use crate::governance::ledger;
use crate::keystore::model::{self, Invalid, KeyRec, SecretRec, TeamRec};
use crate::keystore::sql::SqlError;
use crate::keystore::store::{self, TeamRef, Who, WriteError};
use crate::keystore::{global, KeyStore};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use std::sync::Arc;

/// Largest admin request body.
pub(crate) const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Most items one list request returns (`limit`); the default is 100.
pub(crate) const MAX_PAGE: usize = 1000;

/// A handler's answer.
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) body: Value,
}

impl Reply {
    pub(crate) fn ok(body: Value) -> Reply {
        Reply { status: 200, body }
    }
}

/// An error in OpenAI's shape.
pub(crate) fn err(status: u16, code: &str, message: &str, param: Option<&str>) -> Reply {
    let kind = match status {
        400 | 404 | 405 | 409 | 413 => "invalid_request_error",
        401 => "authentication_error",
        _ => "api_error",
    };
    Reply {
        status,
        body: json!({"error": {"message": message, "type": kind, "param": param, "code": code}}),
    }
}

fn invalid(i: Invalid) -> Reply {
    err(
        400,
        "invalid_request",
        &format!("{}: {}", i.param, i.message),
        Some(&i.param),
    )
}

fn write_err(e: WriteError) -> Reply {
    match e {
        WriteError::NotFound(m) => err(404, "not_found", &m, None),
        WriteError::Conflict(m) => err(409, "conflict", &m, None),
        WriteError::Invalid { param, message } => invalid(Invalid::new(param, message)),
        WriteError::Sql(SqlError::Unavailable(_)) => unavailable(),
        WriteError::Sql(e) => {
            log::error!("key store write failed: {e}");
            err(
                500,
                "key_store_error",
                "The key store failed to apply the change; nothing was written.",
                None,
            )
        }
    }
}

fn unavailable() -> Reply {
    err(
        503,
        "key_store_unavailable",
        "The key store's database is unreachable; retry shortly. Keys keep working from the last snapshot.",
        None,
    )
}

fn no_store() -> Reply {
    err(
        409,
        "key_store_not_configured",
        "This gateway has no key_store: its keys and teams come from its config file only.",
        None,
    )
}

fn read_only(what: &str, name: &str) -> Reply {
    err(
        409,
        "read_only",
        &format!(
            "{what} `{name}` is defined in the config file and is read-only here; change it there"
        ),
        None,
    )
}

/// Parses a JSON body into `T`, naming the field at fault. An empty body
/// reads as `{}` where `empty_ok`.
pub(crate) fn parse<T: DeserializeOwned>(body: &[u8], empty_ok: bool) -> Result<(T, Value), Reply> {
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        if !empty_ok {
            return Err(err(
                400,
                "invalid_request",
                "The request needs a JSON object body.",
                None,
            ));
        }
        b"{}"
    } else {
        body
    };
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        err(
            400,
            "invalid_request",
            &format!("The body is not valid JSON: {e}"),
            None,
        )
    })?;
    if !value.is_object() {
        return Err(err(
            400,
            "invalid_request",
            "The body must be a JSON object.",
            None,
        ));
    }
    let typed = serde_path_to_error::deserialize::<_, T>(&value).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        let msg = e.into_inner().to_string();
        let shown = if path.is_empty() {
            msg.clone()
        } else {
            format!("{path}: {msg}")
        };
        err(
            400,
            "invalid_request",
            &shown,
            (!path.is_empty()).then_some(path.as_str()),
        )
    })?;
    Ok((typed, value))
}

fn query<'a>(q: &'a str, name: &str) -> Option<&'a str> {
    q.split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn decoded(v: &str) -> String {
    percent_encoding::percent_decode_str(v)
        .decode_utf8_lossy()
        .into_owned()
}

fn page_limit(q: &str) -> Result<usize, Reply> {
    match query(q, "limit") {
        None | Some("") => Ok(100),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
            _ => Err(invalid(Invalid::new(
                "limit",
                format!("must be 1 to {MAX_PAGE}"),
            ))),
        },
    }
}

fn store_or_409() -> Result<&'static Arc<KeyStore>, Reply> {
    global().ok_or_else(no_store)
}

// ---------------------------------------------------------------------------
// Keys

/// `GET /admin/keys?team=&after=&limit=`: config keys and store keys by
/// name, a page at a time (store keys are read from the database).
pub(crate) async fn list_keys(cfg: &Config, q: &str) -> Reply {
    let limit = match page_limit(q) {
        Ok(n) => n,
        Err(r) => return r,
    };
    let after = query(q, "after").map(decoded).unwrap_or_default();
    let team = query(q, "team").map(decoded).filter(|t| !t.is_empty());
    let now = now_ms();
    let mut rows: Vec<(String, Value)> = cfg
        .keys
        .iter()
        .filter(|k| k.name > after)
        .filter(|k| team.is_none() || k.team == team)
        .map(|k| (k.name.clone(), model::config_key_json(k)))
        .collect();
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    rows.truncate(limit + 1);
    if let Some(s) = global() {
        let (a, t) = (after.clone(), team.clone());
        let n = i64::try_from(limit + 1).unwrap_or(1001);
        match s
            .run(move |c| store::list_keys(c, &a, t.as_deref(), n, now).map_err(WriteError::Sql))
            .await
        {
            Ok(keys) => rows.extend(
                keys.iter()
                    .map(|k| (k.name.to_string(), model::key_json(k, now))),
            ),
            Err(e) => return write_err(e),
        }
        rows.sort_by(|a, b| a.0.cmp(&b.0));
    }
    let more = rows.len() > limit;
    rows.truncate(limit);
    let next = more.then(|| rows.last().map(|r| r.0.clone())).flatten();
    Reply::ok(json!({"keys": rows.into_iter().map(|r| r.1).collect::<Vec<_>>(), "next": next}))
}

/// A stored key read from the database, or the error to answer.
async fn stored_key(name: &str) -> Result<Option<KeyRec>, Reply> {
    let Some(s) = global() else { return Ok(None) };
    let n = name.to_string();
    s.run(move |c| store::read_key_full(c, &n).map_err(WriteError::Sql))
        .await
        .map_err(write_err)
}

/// `GET /admin/keys/{name}`.
pub(crate) async fn get_key(cfg: &Config, name: &str) -> Reply {
    if let Some(k) = cfg.keys.iter().find(|k| k.name == name) {
        return Reply::ok(model::config_key_json(k));
    }
    match stored_key(name).await {
        Ok(Some(k)) => Reply::ok(model::key_json(&k, now_ms())),
        Ok(None) => err(
            404,
            "not_found",
            &format!("no key named `{}`", model::short(name)),
            None,
        ),
        // The database is down: what this instance serves from.
        Err(r) if r.status == 503 => global()
            .and_then(|s| s.snapshot().key_view(name, now_ms()))
            .map_or(r, Reply::ok),
        Err(r) => r,
    }
}

/// `POST /admin/keys`: creates a key; the answer holds its secret, shown
/// this once.
pub(crate) async fn create_key(cfg: &Config, actor: &str, body: &[u8]) -> Reply {
    let s = match store_or_409() {
        Ok(s) => s,
        Err(r) => return r,
    };
    let (req, changes): (model::CreateKey, Value) = match parse(body, false) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let now = now_ms();
    let checks = model::check_name("name", &req.name)
        .and_then(|()| {
            req.team
                .as_deref()
                .map_or(Ok(()), |t| model::check_name("team", t))
        })
        .and_then(|()| model::check_models(req.models.as_ref(), cfg))
        .and_then(|()| {
            model::check_governance(
                &req.limits,
                &req.budgets,
                req.tier.as_ref(),
                req.regions.as_ref(),
                req.metadata.as_deref(),
            )
        })
        .and_then(|()| match req.expires_at {
            Some(t) if t.0 <= now => Err(Invalid::new("expires_at", "must be in the future")),
            _ => Ok(()),
        });
    if let Err(i) = checks {
        return invalid(i);
    }
    if cfg.keys.iter().any(|k| k.name == req.name) {
        return err(
            409,
            "conflict",
            &format!(
                "a key named `{}` already exists (in the config file)",
                req.name
            ),
            None,
        );
    }
    let secret = match crate::keystore::new_secret() {
        Ok(s) => s,
        Err(e) => {
            log::error!("key store: {e}");
            return err(500, "key_store_error", "No secret could be made.", None);
        }
    };
    let team_in_config = req.team.as_ref().is_some_and(|t| cfg.teams.contains_key(t));
    let rec = KeyRec {
        name: Arc::from(req.name.as_str()),
        team: req.team.as_deref().map(Arc::from),
        spec: model::KeySpec {
            models: req.models,
            limits: req.limits,
            budgets: req.budgets,
            tier: req.tier,
            regions: req.regions,
            metadata: req.metadata,
        },
        expires_at: req.expires_at.map(|t| t.0),
        revoked_at: None,
        created_at: now,
        updated_at: now,
        secrets: vec![SecretRec {
            digest: crate::auth::digest(secret.as_bytes()),
            created_at: now,
            valid_until: None,
        }],
    };
    let actor = actor.to_string();
    let written = s
        .run(move |c| {
            let team = TeamRef {
                name: rec.team.as_deref(),
                in_config: team_in_config,
            };
            store::create_key(c, Who { actor: &actor, now }, &rec, team, &changes)?;
            Ok(rec)
        })
        .await;
    match written {
        Ok(rec) => {
            let mut v = model::key_json(&rec, now);
            v["key"] = Value::from(secret);
            Reply {
                status: 201,
                body: v,
            }
        }
        Err(e) => write_err(e),
    }
}

/// `PATCH /admin/keys/{name}`.
pub(crate) async fn update_key(cfg: &Config, actor: &str, name: &str, body: &[u8]) -> Reply {
    if cfg.keys.iter().any(|k| k.name == name) {
        return read_only("key", name);
    }
    let s = match store_or_409() {
        Ok(s) => s,
        Err(r) => return r,
    };
    let (req, changes): (model::UpdateKey, Value) = match parse(body, false) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let checks = (|| {
        if let Some(Some(t)) = &req.team {
            model::check_name("team", t)?;
        }
        if let Some(m) = &req.models {
            model::check_models(m.as_ref(), cfg)?;
        }
        let empty = crate::config::Limits::default();
        model::check_governance(
            req.limits.as_ref().unwrap_or(&empty),
            req.budgets.as_deref().unwrap_or(&[]),
            req.tier.as_ref().and_then(Option::as_ref),
            req.regions.as_ref().and_then(Option::as_ref),
            req.metadata.as_ref().and_then(Option::as_deref),
        )
    })();
    if let Err(i) = checks {
        return invalid(i);
    }
    let config_teams: std::collections::HashSet<String> = cfg.teams.keys().cloned().collect();
    let (actor, key) = (actor.to_string(), name.to_string());
    let now = now_ms();
    let written = s
        .run(move |c| {
            let apply = |k: &mut KeyRec| -> Result<(), WriteError> {
                let r = &req;
                if let Some(t) = &r.team {
                    k.team = t.as_deref().map(Arc::from);
                }
                if let Some(m) = &r.models {
                    k.spec.models = m.clone();
                }
                if let Some(l) = &r.limits {
                    k.spec.limits = l.clone();
                }
                if let Some(b) = &r.budgets {
                    k.spec.budgets = b.clone();
                }
                if let Some(t) = &r.tier {
                    k.spec.tier = t.clone();
                }
                if let Some(g) = &r.regions {
                    k.spec.regions = g.clone();
                }
                if let Some(m) = &r.metadata {
                    k.spec.metadata = m.clone();
                }
                if let Some(e) = &r.expires_at {
                    k.expires_at = e.map(|t| t.0);
                }
                Ok(())
            };
            let in_config = |t: &str| config_teams.contains(t);
            store::update_key(
                c,
                Who { actor: &actor, now },
                &key,
                &in_config,
                &apply,
                &changes,
            )
        })
        .await;
    match written {
        Ok(_) => get_key(cfg, name).await,
        Err(e) => write_err(e),
    }
}

/// `POST /admin/keys/{name}/rotate`: a new secret (shown once); the old
/// ones keep working for `grace`.
pub(crate) async fn rotate_key(cfg: &Config, actor: &str, name: &str, body: &[u8]) -> Reply {
    if cfg.keys.iter().any(|k| k.name == name) {
        return read_only("key", name);
    }
    let s = match store_or_409() {
        Ok(s) => s,
        Err(r) => return r,
    };
    let (req, _): (model::RotateKey, Value) = match parse(body, true) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let grace = req.grace.map_or(std::time::Duration::ZERO, |g| g.get());
    if grace > model::MAX_GRACE {
        return invalid(Invalid::new("grace", "must be at most 30d"));
    }
    let secret = match crate::keystore::new_secret() {
        Ok(s) => s,
        Err(e) => {
            log::error!("key store: {e}");
            return err(500, "key_store_error", "No secret could be made.", None);
        }
    };
    let digest = crate::auth::digest(secret.as_bytes());
    let grace_ms = i64::try_from(grace.as_millis()).unwrap_or(i64::MAX);
    let (actor, key) = (actor.to_string(), name.to_string());
    let now = now_ms();
    let written = s
        .run(move |c| store::rotate_key(c, Who { actor: &actor, now }, &key, &digest, grace_ms))
        .await;
    match written {
        Ok(_) => {
            let mut v = get_key(cfg, name).await.body;
            v["key"] = Value::from(secret);
            Reply::ok(v)
        }
        Err(e) => write_err(e),
    }
}

/// `POST /admin/keys/{name}/revoke`: refused from the next request on.
pub(crate) async fn revoke_key(cfg: &Config, actor: &str, name: &str) -> Reply {
    if cfg.keys.iter().any(|k| k.name == name) {
        return read_only("key", name);
    }
    let s = match store_or_409() {
        Ok(s) => s,
        Err(r) => return r,
    };
    let (actor, key) = (actor.to_string(), name.to_string());
    let now = now_ms();
    match s
        .run(move |c| store::revoke_key(c, Who { actor: &actor, now }, &key))
        .await
    {
        Ok(_) => get_key(cfg, name).await,
        Err(e) => write_err(e),
    }
}

/// `GET /admin/keys/{name}/usage?window=`: the key's usage (the ledger:
/// this instance's count) and its limits with their current values (the
/// limits store: every instance's count).
pub(crate) async fn key_usage(rt: &crate::runtime::Runtime, name: &str, q: &str) -> Reply {
    let cfg = &rt.config;
    let window = query(q, "window").unwrap_or("day");
    let Some(index) = ledger::WINDOWS.iter().position(|(n, _)| *n == window) else {
        return invalid(Invalid::new("window", "must be minute, hour, day or month"));
    };
    let compiled: Option<Arc<crate::keys::KeyRt>> =
        match rt.key_info.iter().find(|k| &*k.name == name) {
            Some(k) => Some(k.clone()),
            None => match stored_key(name).await {
                Err(r) => return r,
                Ok(None) => None,
                Ok(Some(k)) => {
                    let snap = global().map(|s| s.snapshot());
                    let store_team = k
                        .team
                        .as_ref()
                        .and_then(|t| snap.as_ref()?.teams().get(t).map(TeamRec::as_config_team));
                    let team = match (&k.team, &store_team) {
                        (Some(n), Some(t)) => Some((&**n, t)),
                        (Some(n), None) => {
                            cfg.teams.get_key_value(&**n).map(|(a, b)| (a.as_str(), b))
                        }
                        _ => None,
                    };
                    Some(Arc::new(crate::keys::KeyRt::compile(
                        &k.as_config_key(),
                        team,
                        &cfg.models,
                        &bytes::Bytes::new(),
                        &crate::workload::Declared::compile(&cfg.workloads),
                    )))
                }
            },
        };
    let Some(key) = compiled else {
        return err(
            404,
            "not_found",
            &format!("no key named `{}`", model::short(name)),
            None,
        );
    };
    let tally = |t: &ledger::Tally| json!({"requests": t.requests, "tokens": t.tokens, "spend_usd": t.spend_usd()});
    let usage = ledger::global()
        .read(index)
        .into_iter()
        .find(|(level, n, _, _)| *level == crate::governance::Level::Key && &**n == name)
        .map_or(
            json!({"current": tally(&Default::default()), "previous": tally(&Default::default())}),
            |(_, _, cur, prev)| json!({"current": tally(&cur), "previous": tally(&prev)}),
        );
    let mut usage = usage;
    // Its usage per workload (`tags: { tag: { value: { current, previous } } }`).
    for (level, n, pair, cur, prev) in ledger::global().read_tags(index) {
        if level != crate::governance::Level::Key || &*n != name {
            continue;
        }
        if let Some((tag, value)) = pair.split_once('=') {
            usage["tags"][tag][value] = json!({"current": tally(&cur), "previous": tally(&prev)});
        }
    }
    let rules: Vec<&crate::governance::Rule> = key
        .rules
        .iter()
        .chain(key.workload_rules.iter().map(|w| &w.rule))
        .collect();
    let used = match crate::governance::used(&rules).await {
        Ok(u) => u,
        Err(e) => {
            log::warn!("admin: reading the limits store failed: {e}");
            return err(
                503,
                "limits_unavailable",
                "The limits store cannot be read.",
                None,
            );
        }
    };
    let limits: Vec<Value> = rules
        .iter()
        .zip(used)
        .map(|(r, used)| {
            json!({
                "level": r.id.level.label(), "name": &*r.id.name, "limit": r.reason(),
                "window": &*r.window, "max": r.natural(r.limit), "used": r.natural(used),
                "remaining": r.natural(r.limit.saturating_sub(used).max(0)),
            })
        })
        .collect();
    Reply::ok(json!({"name": name, "window": window, "usage": usage, "limits": limits}))
}

// ---------------------------------------------------------------------------
// Teams

/// `GET /admin/teams?after=&limit=`.
pub(crate) fn list_teams(cfg: &Config, q: &str) -> Reply {
    let limit = match page_limit(q) {
        Ok(n) => n,
        Err(r) => return r,
    };
    let after = query(q, "after").map(decoded).unwrap_or_default();
    let mut rows: Vec<(String, Value)> = cfg
        .teams
        .iter()
        .filter(|(n, _)| **n > after)
        .take(limit + 1)
        .map(|(n, t)| (n.clone(), model::config_team_json(n, t)))
        .collect();
    if let Some(s) = global() {
        let snap = s.snapshot();
        rows.extend(
            snap.teams()
                .range::<str, _>((
                    std::ops::Bound::Excluded(after.as_str()),
                    std::ops::Bound::Unbounded,
                ))
                .take(limit + 1)
                .map(|(n, t)| (n.to_string(), model::team_json(t))),
        );
    }
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    let more = rows.len() > limit;
    rows.truncate(limit);
    let next = more.then(|| rows.last().map(|r| r.0.clone())).flatten();
    Reply::ok(json!({"teams": rows.into_iter().map(|r| r.1).collect::<Vec<_>>(), "next": next}))
}

/// `GET /admin/teams/{name}`.
pub(crate) fn get_team(cfg: &Config, name: &str) -> Reply {
    if let Some(t) = cfg.teams.get(name) {
        return Reply::ok(model::config_team_json(name, t));
    }
    match global().and_then(|s| s.snapshot().teams().get(name).map(model::team_json)) {
        Some(v) => Reply::ok(v),
        None => err(
            404,
            "not_found",
            &format!("no team named `{}`", model::short(name)),
            None,
        ),
    }
}

/// `POST /admin/teams`.
pub(crate) async fn create_team(cfg: &Config, actor: &str, body: &[u8]) -> Reply {
    let s = match store_or_409() {
        Ok(s) => s,
        Err(r) => return r,
    };
    let (req, changes): (model::CreateTeam, Value) = match parse(body, false) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let checks = model::check_name("name", &req.name).and_then(|()| {
        model::check_governance(
            &req.limits,
            &req.budgets,
            req.tier.as_ref(),
            req.regions.as_ref(),
            req.metadata.as_deref(),
        )
    });
    if let Err(i) = checks {
        return invalid(i);
    }
    if cfg.teams.contains_key(&req.name) {
        return err(
            409,
            "conflict",
            &format!(
                "a team named `{}` already exists (in the config file)",
                req.name
            ),
            None,
        );
    }
    let now = now_ms();
    let rec = TeamRec {
        name: Arc::from(req.name.as_str()),
        spec: model::TeamSpec {
            limits: req.limits,
            budgets: req.budgets,
            tier: req.tier,
            regions: req.regions,
            metadata: req.metadata,
        },
        created_at: now,
        updated_at: now,
    };
    let actor = actor.to_string();
    match s
        .run(move |c| {
            store::create_team(c, Who { actor: &actor, now }, &rec, &changes)?;
            Ok(rec)
        })
        .await
    {
        Ok(rec) => Reply {
            status: 201,
            body: model::team_json(&rec),
        },
        Err(e) => write_err(e),
    }
}

/// `PATCH /admin/teams/{name}`.
pub(crate) async fn update_team(cfg: &Config, actor: &str, name: &str, body: &[u8]) -> Reply {
    if cfg.teams.contains_key(name) {
        return read_only("team", name);
    }
    let s = match store_or_409() {
        Ok(s) => s,
        Err(r) => return r,
    };
    let (req, changes): (model::UpdateTeam, Value) = match parse(body, false) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let empty = crate::config::Limits::default();
    if let Err(i) = model::check_governance(
        req.limits.as_ref().unwrap_or(&empty),
        req.budgets.as_deref().unwrap_or(&[]),
        req.tier.as_ref().and_then(Option::as_ref),
        req.regions.as_ref().and_then(Option::as_ref),
        req.metadata.as_ref().and_then(Option::as_deref),
    ) {
        return invalid(i);
    }
    let (actor, team) = (actor.to_string(), name.to_string());
    let now = now_ms();
    let written = s
        .run(move |c| {
            let apply = |t: &mut model::TeamSpec| {
                if let Some(l) = &req.limits {
                    t.limits = l.clone();
                }
                if let Some(b) = &req.budgets {
                    t.budgets = b.clone();
                }
                if let Some(x) = &req.tier {
                    t.tier = x.clone();
                }
                if let Some(g) = &req.regions {
                    t.regions = g.clone();
                }
                if let Some(m) = &req.metadata {
                    t.metadata = m.clone();
                }
            };
            store::update_team(c, Who { actor: &actor, now }, &team, &apply, &changes)
        })
        .await;
    match written {
        Ok(_) => get_team(cfg, name),
        Err(e) => write_err(e),
    }
}

/// `DELETE /admin/teams/{name}`: refused (409) while a key that is not
/// revoked names it.
pub(crate) async fn delete_team(cfg: &Config, actor: &str, name: &str) -> Reply {
    if cfg.teams.contains_key(name) {
        return read_only("team", name);
    }
    let s = match store_or_409() {
        Ok(s) => s,
        Err(r) => return r,
    };
    let (actor, team) = (actor.to_string(), name.to_string());
    let now = now_ms();
    match s
        .run(move |c| store::delete_team(c, Who { actor: &actor, now }, &team))
        .await
    {
        Ok(_) => Reply::ok(json!({"name": name, "deleted": true})),
        Err(e) => write_err(e),
    }
}

// ---------------------------------------------------------------------------
// Audit

/// `GET /admin/audit?before=&limit=`: admin writes, newest first.
pub(crate) async fn audit(q: &str) -> Reply {
    let s = match store_or_409() {
        Ok(s) => s,
        Err(r) => return r,
    };
    let limit = match page_limit(q) {
        Ok(n) => n,
        Err(r) => return r,
    };
    let before = match query(q, "before") {
        None | Some("") => None,
        Some(v) => match v.parse::<i64>() {
            Ok(n) if n > 0 => Some(n),
            _ => {
                return invalid(Invalid::new(
                    "before",
                    "must be an audit id (a positive integer)",
                ))
            }
        },
    };
    let limit = i64::try_from(limit).unwrap_or(100);
    match s
        .run(move |c| store::audit_rows(c, before, limit).map_err(WriteError::Sql))
        .await
    {
        Ok(rows) => {
            let next = (rows.len() as i64 == limit)
                .then(|| rows.last().map(|r| r.id))
                .flatten();
            let entries: Vec<Value> = rows
                .into_iter()
                .map(|r| {
                    json!({
                        "id": r.id, "at": model::rfc3339(r.at), "actor": r.actor,
                        "action": r.action, "target": r.target,
                        "changes": serde_json::from_str::<Value>(&r.changes).unwrap_or(Value::Null),
                    })
                })
                .collect();
            Reply::ok(json!({"entries": entries, "next_before": next}))
        }
        Err(e) => write_err(e),
    }
}
