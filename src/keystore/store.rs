//! The store's statements: each admin write as one transaction (change
//! counter, rows, audit row), and the change feed's read of everything
//! written since a cursor. Written once over [`Conn`], for both databases.
//!
//! Ordering: every write first increments the single `change_counter` row,
//! whose row lock it holds until it commits, so writes commit in counter
//! order and a reader that has seen counter value N has seen every write
//! numbered N or less.

use super::model::{KeyRec, KeySpec, SecretRec, TeamRec, TeamSpec};
use super::snapshot::StoredKey;
use super::sql::{in_tx, Conn, Dialect, Row, SqlError, Val};
use std::sync::Arc;

/// Why a write was refused or failed.
#[derive(Debug)]
pub enum WriteError {
    Sql(SqlError),
    /// The named key or team does not exist (404).
    NotFound(String),
    /// A duplicate, or a change that the current state forbids (409).
    Conflict(String),
    /// A request field refers to something that does not exist (400).
    Invalid {
        param: String,
        message: String,
    },
}

impl From<SqlError> for WriteError {
    fn from(e: SqlError) -> Self {
        match e {
            SqlError::Conflict(m) => WriteError::Conflict(format!("conflict: {m}")),
            e => WriteError::Sql(e),
        }
    }
}

/// An audit row.
#[derive(Debug, Clone)]
pub(crate) struct Audit {
    pub(crate) id: i64,
    pub(crate) at: i64,
    pub(crate) actor: String,
    pub(crate) action: String,
    pub(crate) target: String,
    pub(crate) changes: String,
}

/// Who writes, and when (Unix ms).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Who<'a> {
    pub(crate) actor: &'a str,
    pub(crate) now: i64,
}

fn next_seq(c: &mut dyn Conn) -> Result<i64, SqlError> {
    let rows = c.query(
        "UPDATE change_counter SET seq = seq + 1 WHERE id = 1 RETURNING seq",
        &[],
    )?;
    rows.first()
        .and_then(|r| r.first())
        .and_then(Val::int)
        .ok_or_else(|| SqlError::Other("change_counter row is missing".into()))
}

/// Wakes the other instances (PostgreSQL; delivered at commit).
fn notify(c: &mut dyn Conn, seq: i64) -> Result<(), SqlError> {
    if c.dialect() == Dialect::Postgres {
        c.query(
            "SELECT pg_notify('tollgate_keys', $1)::text",
            &[Val::Text(seq.to_string())],
        )?;
    }
    Ok(())
}

fn audit(
    c: &mut dyn Conn,
    who: Who<'_>,
    action: &str,
    target: &str,
    changes: &serde_json::Value,
) -> Result<(), SqlError> {
    c.exec(
        "INSERT INTO audit_log (at, actor, action, target, changes) VALUES ($1, $2, $3, $4, $5)",
        &[
            Val::Int(who.now),
            who.actor.into(),
            action.into(),
            target.into(),
            Val::Text(changes.to_string()),
        ],
    )?;
    Ok(())
}

fn spec_text<T: serde::Serialize>(spec: &T) -> Result<String, SqlError> {
    serde_json::to_string(spec).map_err(|e| SqlError::Other(e.to_string()))
}

fn team_exists(c: &mut dyn Conn, name: &str) -> Result<bool, SqlError> {
    Ok(!c
        .query(
            "SELECT name FROM teams WHERE name = $1 AND deleted = 0",
            &[name.into()],
        )?
        .is_empty())
}

/// The stored key `name` (without its secrets), if any.
fn read_key(c: &mut dyn Conn, name: &str) -> Result<Option<KeyRec>, SqlError> {
    let rows = c.query(
        "SELECT name, team, spec, expires_at, revoked_at, created_at, updated_at, seq FROM keys WHERE name = $1",
        &[name.into()],
    )?;
    rows.first().map(|r| key_row(r).map(|(k, _)| k)).transpose()
}

/// Where a new key's team is: `Some(true)` a config team, `Some(false)`
/// one to check in the store, `None` no team.
pub(crate) struct TeamRef<'a> {
    pub(crate) name: Option<&'a str>,
    pub(crate) in_config: bool,
}

fn check_team(c: &mut dyn Conn, team: &TeamRef<'_>) -> Result<(), WriteError> {
    if let Some(t) = team.name {
        if !team.in_config && !team_exists(c, t)? {
            return Err(WriteError::Invalid {
                param: "team".into(),
                message: format!("team `{}` does not exist", super::model::short(t)),
            });
        }
    }
    Ok(())
}

/// Creates a key with one secret (its digest).
pub(crate) fn create_key(
    c: &mut dyn Conn,
    who: Who<'_>,
    rec: &KeyRec,
    team: TeamRef<'_>,
    changes: &serde_json::Value,
) -> Result<i64, WriteError> {
    in_tx(c, |c| {
        let seq = next_seq(c)?;
        if read_key(c, &rec.name)?.is_some() {
            return Err(WriteError::Conflict(format!(
                "a key named `{}` already exists",
                rec.name
            )));
        }
        check_team(c, &team)?;
        c.exec(
            "INSERT INTO keys (name, team, spec, expires_at, revoked_at, created_at, updated_at, seq) VALUES ($1, $2, $3, $4, NULL, $5, $5, $6)",
            &[
                (&*rec.name).into(),
                Val::opt_text(rec.team.as_deref()),
                Val::Text(spec_text(&rec.spec)?),
                Val::opt_int(rec.expires_at),
                Val::Int(who.now),
                Val::Int(seq),
            ],
        )?;
        for s in &rec.secrets {
            c.exec(
                "INSERT INTO key_secrets (digest, key_name, created_at, valid_until, seq) VALUES ($1, $2, $3, NULL, $4)",
                &[
                    Val::Text(hex::encode(s.digest)),
                    (&*rec.name).into(),
                    Val::Int(who.now),
                    Val::Int(seq),
                ],
            )?;
        }
        audit(c, who, "key.create", &rec.name, changes)?;
        notify(c, seq)?;
        Ok(seq)
    })
}

/// Replaces a key's fields: `apply` edits the stored key (and may refuse).
pub(crate) fn update_key(
    c: &mut dyn Conn,
    who: Who<'_>,
    name: &str,
    team_in_config: &dyn Fn(&str) -> bool,
    apply: &dyn Fn(&mut KeyRec) -> Result<(), WriteError>,
    changes: &serde_json::Value,
) -> Result<i64, WriteError> {
    in_tx(c, |c| {
        let seq = next_seq(c)?;
        let mut rec = read_key(c, name)?
            .ok_or_else(|| WriteError::NotFound(format!("no key named `{name}`")))?;
        if rec.revoked_at.is_some() {
            return Err(WriteError::Conflict(format!(
                "key `{name}` is revoked; a revoked key cannot change"
            )));
        }
        let old_team = rec.team.clone();
        apply(&mut rec)?;
        if rec.team != old_team {
            let t = rec.team.clone();
            let in_config = t.as_deref().is_some_and(team_in_config);
            check_team(
                c,
                &TeamRef {
                    name: t.as_deref(),
                    in_config,
                },
            )?;
        }
        c.exec(
            "UPDATE keys SET team = $2, spec = $3, expires_at = $4, updated_at = $5, seq = $6 WHERE name = $1",
            &[
                name.into(),
                Val::opt_text(rec.team.as_deref()),
                Val::Text(spec_text(&rec.spec)?),
                Val::opt_int(rec.expires_at),
                Val::Int(who.now),
                Val::Int(seq),
            ],
        )?;
        audit(c, who, "key.update", name, changes)?;
        notify(c, seq)?;
        Ok(seq)
    })
}

/// Adds a new secret to a key; its current secrets stop `grace_ms` from now
/// (at once for 0), or earlier if they were already due to.
pub(crate) fn rotate_key(
    c: &mut dyn Conn,
    who: Who<'_>,
    name: &str,
    digest: &[u8; 32],
    grace_ms: i64,
) -> Result<i64, WriteError> {
    in_tx(c, |c| {
        let seq = next_seq(c)?;
        let rec = read_key(c, name)?
            .ok_or_else(|| WriteError::NotFound(format!("no key named `{name}`")))?;
        if rec.revoked_at.is_some() {
            return Err(WriteError::Conflict(format!(
                "key `{name}` is revoked; create a new key instead"
            )));
        }
        let until = who.now.saturating_add(grace_ms);
        c.exec(
            "UPDATE key_secrets SET valid_until = $2, seq = $3 WHERE key_name = $1 AND (valid_until IS NULL OR valid_until > $2)",
            &[name.into(), Val::Int(until), Val::Int(seq)],
        )?;
        c.exec(
            "INSERT INTO key_secrets (digest, key_name, created_at, valid_until, seq) VALUES ($1, $2, $3, NULL, $4)",
            &[
                Val::Text(hex::encode(digest)),
                name.into(),
                Val::Int(who.now),
                Val::Int(seq),
            ],
        )?;
        c.exec(
            "UPDATE keys SET updated_at = $2, seq = $3 WHERE name = $1",
            &[name.into(), Val::Int(who.now), Val::Int(seq)],
        )?;
        let changes = serde_json::json!({
            "secret": "rotated",
            "previous_valid_until": super::model::rfc3339(until),
        });
        audit(c, who, "key.rotate", name, &changes)?;
        notify(c, seq)?;
        Ok(seq)
    })
}

/// Revokes a key at once (a revoked key stays revoked; revoking it again
/// changes nothing and is not an error).
pub(crate) fn revoke_key(c: &mut dyn Conn, who: Who<'_>, name: &str) -> Result<i64, WriteError> {
    in_tx(c, |c| {
        let seq = next_seq(c)?;
        let rec = read_key(c, name)?
            .ok_or_else(|| WriteError::NotFound(format!("no key named `{name}`")))?;
        if rec.revoked_at.is_some() {
            return Ok(seq);
        }
        c.exec(
            "UPDATE keys SET revoked_at = $2, updated_at = $2, seq = $3 WHERE name = $1",
            &[name.into(), Val::Int(who.now), Val::Int(seq)],
        )?;
        let changes = serde_json::json!({"revoked_at": super::model::rfc3339(who.now)});
        audit(c, who, "key.revoke", name, &changes)?;
        notify(c, seq)?;
        Ok(seq)
    })
}

/// Creates a team (a deleted team's name may be used again).
pub(crate) fn create_team(
    c: &mut dyn Conn,
    who: Who<'_>,
    rec: &TeamRec,
    changes: &serde_json::Value,
) -> Result<i64, WriteError> {
    in_tx(c, |c| {
        let seq = next_seq(c)?;
        if team_exists(c, &rec.name)? {
            return Err(WriteError::Conflict(format!(
                "a team named `{}` already exists",
                rec.name
            )));
        }
        c.exec(
            "INSERT INTO teams (name, spec, created_at, updated_at, deleted, seq) VALUES ($1, $2, $3, $3, 0, $4) \
             ON CONFLICT (name) DO UPDATE SET spec = $2, created_at = $3, updated_at = $3, deleted = 0, seq = $4",
            &[
                (&*rec.name).into(),
                Val::Text(spec_text(&rec.spec)?),
                Val::Int(who.now),
                Val::Int(seq),
            ],
        )?;
        audit(c, who, "team.create", &rec.name, changes)?;
        notify(c, seq)?;
        Ok(seq)
    })
}

/// Replaces a team's fields.
pub(crate) fn update_team(
    c: &mut dyn Conn,
    who: Who<'_>,
    name: &str,
    apply: &dyn Fn(&mut TeamSpec),
    changes: &serde_json::Value,
) -> Result<i64, WriteError> {
    in_tx(c, |c| {
        let seq = next_seq(c)?;
        let rows = c.query(
            "SELECT spec FROM teams WHERE name = $1 AND deleted = 0",
            &[name.into()],
        )?;
        let text = rows
            .first()
            .and_then(|r| r.first())
            .and_then(Val::text)
            .ok_or_else(|| WriteError::NotFound(format!("no team named `{name}`")))?;
        let mut spec: TeamSpec = parse_spec(text)?;
        apply(&mut spec);
        c.exec(
            "UPDATE teams SET spec = $2, updated_at = $3, seq = $4 WHERE name = $1",
            &[
                name.into(),
                Val::Text(spec_text(&spec)?),
                Val::Int(who.now),
                Val::Int(seq),
            ],
        )?;
        audit(c, who, "team.update", name, changes)?;
        notify(c, seq)?;
        Ok(seq)
    })
}

/// Deletes a team, unless a key that is not revoked still names it.
pub(crate) fn delete_team(c: &mut dyn Conn, who: Who<'_>, name: &str) -> Result<i64, WriteError> {
    in_tx(c, |c| {
        let seq = next_seq(c)?;
        if !team_exists(c, name)? {
            return Err(WriteError::NotFound(format!("no team named `{name}`")));
        }
        let users = c.query(
            "SELECT name FROM keys WHERE team = $1 AND revoked_at IS NULL ORDER BY name LIMIT 5",
            &[name.into()],
        )?;
        if !users.is_empty() {
            let names: Vec<&str> = users.iter().filter_map(|r| r.first()?.text()).collect();
            return Err(WriteError::Conflict(format!(
                "team `{name}` is used by keys that are not revoked ({}); move or revoke them first",
                names.join(", ")
            )));
        }
        c.exec(
            "UPDATE teams SET deleted = 1, updated_at = $2, seq = $3 WHERE name = $1",
            &[name.into(), Val::Int(who.now), Val::Int(seq)],
        )?;
        audit(
            c,
            who,
            "team.delete",
            name,
            &serde_json::json!({"deleted": true}),
        )?;
        notify(c, seq)?;
        Ok(seq)
    })
}

/// The newest audit rows, newest first: at most `limit`, below id `before`.
pub(crate) fn audit_rows(
    c: &mut dyn Conn,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<Audit>, SqlError> {
    let rows = c.query(
        "SELECT id, at, actor, action, target, changes FROM audit_log WHERE id < $1 ORDER BY id DESC LIMIT $2",
        &[Val::Int(before.unwrap_or(i64::MAX)), Val::Int(limit)],
    )?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let t = |i: usize| r.get(i).and_then(Val::text).unwrap_or("").to_string();
            let n = |i: usize| r.get(i).and_then(Val::int).unwrap_or(0);
            Audit {
                id: n(0),
                at: n(1),
                actor: t(2),
                action: t(3),
                target: t(4),
                changes: t(5),
            }
        })
        .collect())
}

fn parse_spec<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, SqlError> {
    serde_json::from_str(text).map_err(|e| SqlError::Other(format!("a stored spec: {e}")))
}

fn key_row(r: &Row) -> Result<(KeyRec, i64), SqlError> {
    let text = |i: usize| r.get(i).and_then(Val::text);
    let int = |i: usize| r.get(i).and_then(Val::int);
    let name: Arc<str> = Arc::from(text(0).unwrap_or(""));
    let spec: KeySpec = parse_spec(text(2).unwrap_or("{}"))?;
    Ok((
        KeyRec {
            name,
            team: text(1).map(Arc::from),
            spec,
            expires_at: int(3),
            revoked_at: int(4),
            created_at: int(5).unwrap_or(0),
            updated_at: int(6).unwrap_or(0),
            secrets: Vec::new(),
        },
        int(7).unwrap_or(0),
    ))
}

/// The current value of the change counter.
pub(crate) fn head(c: &mut dyn Conn) -> Result<i64, SqlError> {
    c.query("SELECT seq FROM change_counter WHERE id = 1", &[])?
        .first()
        .and_then(|r| r.first())
        .and_then(Val::int)
        .ok_or_else(|| SqlError::Other("change_counter row is missing".into()))
}

/// The teams written in a range of changes, each with whether it was
/// deleted.
pub(crate) type ChangedTeams = Vec<(TeamRec, bool)>;

/// The change counter's head and the teams written after `since` (up to
/// the head); `None` when nothing was written.
pub(crate) fn changed_teams(
    c: &mut dyn Conn,
    since: i64,
) -> Result<Option<(i64, ChangedTeams)>, SqlError> {
    let head = head(c)?;
    if head == since {
        return Ok(None);
    }
    let mut teams = Vec::new();
    c.query_each(
        "SELECT name, spec, created_at, updated_at, deleted FROM teams WHERE seq > $1 AND seq <= $2",
        &[Val::Int(since), Val::Int(head)],
        &mut |r| {
            let text = |i: usize| r.get(i).and_then(Val::text);
            let int = |i: usize| r.get(i).and_then(Val::int).unwrap_or(0);
            teams.push((
                TeamRec {
                    name: Arc::from(text(0).unwrap_or("")),
                    spec: parse_spec(text(1).unwrap_or("{}"))?,
                    created_at: int(2),
                    updated_at: int(3),
                },
                int(4) != 0,
            ));
            Ok(())
        },
    )?;
    Ok(Some((head, teams)))
}

/// Streams every key to rebuild after a change between `since` and
/// `head`: keys written, keys whose secrets were written, and the keys of
/// teams written; each with all its secrets. From 0: every key.
pub(crate) fn changed_keys(
    c: &mut dyn Conn,
    since: i64,
    head: i64,
    f: &mut dyn FnMut(StoredKey),
) -> Result<(), SqlError> {
    let mut cur: Option<StoredKey> = None;
    c.query_each(
        "SELECT k.name, k.team, k.spec, k.expires_at, k.revoked_at, s.digest, s.valid_until \
         FROM keys k JOIN key_secrets s ON s.key_name = k.name \
         WHERE (k.seq > $1 AND k.seq <= $2) \
            OR k.name IN (SELECT key_name FROM key_secrets WHERE seq > $1 AND seq <= $2) \
            OR k.team IN (SELECT name FROM teams WHERE seq > $1 AND seq <= $2) \
         ORDER BY k.name",
        &[Val::Int(since), Val::Int(head)],
        &mut |r| {
            let text = |i: usize| r.get(i).and_then(Val::text);
            let name = text(0).unwrap_or("");
            if cur.as_ref().is_some_and(|k| k.name != name) {
                if let Some(k) = cur.take() {
                    f(k);
                }
            }
            let k = cur.get_or_insert_with(|| StoredKey {
                name: name.to_string(),
                team: text(1).map(String::from),
                spec: text(2).unwrap_or("{}").to_string(),
                expires_at: r.get(3).and_then(Val::int),
                revoked: r.get(4).and_then(Val::int).is_some(),
                secrets: Vec::new(),
            });
            if let Some(d) = text(5).and_then(crate::auth::parse_hex_digest) {
                k.secrets.push((d, r.get(6).and_then(Val::int)));
            }
            Ok(())
        },
    )?;
    if let Some(k) = cur.take() {
        f(k);
    }
    Ok(())
}

/// A stored key with its secrets, for the admin API.
pub(crate) fn read_key_full(c: &mut dyn Conn, name: &str) -> Result<Option<KeyRec>, SqlError> {
    let Some(mut k) = read_key(c, name)? else {
        return Ok(None);
    };
    k.secrets = secrets_of(c, name)?;
    Ok(Some(k))
}

fn secrets_of(c: &mut dyn Conn, name: &str) -> Result<Vec<SecretRec>, SqlError> {
    let mut out = Vec::new();
    c.query_each(
        "SELECT digest, created_at, valid_until FROM key_secrets WHERE key_name = $1",
        &[name.into()],
        &mut |r| {
            if let Some(digest) = r
                .first()
                .and_then(Val::text)
                .and_then(crate::auth::parse_hex_digest)
            {
                out.push(SecretRec {
                    digest,
                    created_at: r.get(1).and_then(Val::int).unwrap_or(0),
                    valid_until: r.get(2).and_then(Val::int),
                });
            }
            Ok(())
        },
    )?;
    Ok(out)
}

/// A page of stored keys by name (after `after`, optionally of one team),
/// each with the secrets still in a rotation grace period at `now`.
pub(crate) fn list_keys(
    c: &mut dyn Conn,
    after: &str,
    team: Option<&str>,
    limit: i64,
    now: i64,
) -> Result<Vec<KeyRec>, SqlError> {
    let cols = "name, team, spec, expires_at, revoked_at, created_at, updated_at, seq";
    let rows = match team {
        None => c.query(
            &format!("SELECT {cols} FROM keys WHERE name > $1 ORDER BY name LIMIT $2"),
            &[after.into(), Val::Int(limit)],
        )?,
        Some(t) => c.query(
            &format!(
                "SELECT {cols} FROM keys WHERE name > $1 AND team = $3 ORDER BY name LIMIT $2"
            ),
            &[after.into(), Val::Int(limit), t.into()],
        )?,
    };
    let mut keys = Vec::with_capacity(rows.len());
    for r in &rows {
        keys.push(key_row(r)?.0);
    }
    if let (Some(first), Some(last)) = (keys.first(), keys.last()) {
        let (lo, hi) = (first.name.to_string(), last.name.to_string());
        let mut graced: std::collections::HashMap<String, Vec<SecretRec>> = Default::default();
        c.query_each(
            "SELECT key_name, digest, created_at, valid_until FROM key_secrets \
             WHERE key_name >= $1 AND key_name <= $2 AND valid_until IS NOT NULL AND valid_until > $3",
            &[lo.into(), hi.into(), Val::Int(now)],
            &mut |r| {
                let name = r.first().and_then(Val::text).unwrap_or("").to_string();
                if let Some(digest) = r.get(1).and_then(Val::text).and_then(crate::auth::parse_hex_digest) {
                    graced.entry(name).or_default().push(SecretRec {
                        digest,
                        created_at: r.get(2).and_then(Val::int).unwrap_or(0),
                        valid_until: r.get(3).and_then(Val::int),
                    });
                }
                Ok(())
            },
        )?;
        for k in &mut keys {
            if let Some(s) = graced.remove(&*k.name) {
                k.secrets = s;
            }
        }
    }
    Ok(keys)
}
