//! The store's statements: each admin write as one transaction (change
//! counter, rows, audit row), and the change feed's read of everything
//! written since a cursor. Written once over [`Conn`], for both databases.
//!
//! Ordering: every write first increments the single `change_counter` row,
//! whose row lock it holds until it commits, so writes commit in counter
//! order and a reader that has seen counter value N has seen every write
//! numbered N or less.

use super::model::{KeyRec, KeySpec, Records, SecretRec, TeamRec, TeamSpec};
use super::sql::{in_tx, Conn, Dialect, Row, SqlError, Val};
use std::collections::BTreeSet;
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
    Invalid { param: String, message: String },
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
pub struct Audit {
    pub id: i64,
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub changes: String,
}

/// Who writes, and when (Unix ms).
#[derive(Debug, Clone, Copy)]
pub struct Who<'a> {
    pub actor: &'a str,
    pub now: i64,
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
pub struct TeamRef<'a> {
    pub name: Option<&'a str>,
    pub in_config: bool,
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
pub fn create_key(
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
pub fn update_key(
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
pub fn rotate_key(
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
pub fn revoke_key(c: &mut dyn Conn, who: Who<'_>, name: &str) -> Result<i64, WriteError> {
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
pub fn create_team(
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
pub fn update_team(
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
pub fn delete_team(c: &mut dyn Conn, who: Who<'_>, name: &str) -> Result<i64, WriteError> {
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
        audit(c, who, "team.delete", name, &serde_json::json!({"deleted": true}))?;
        notify(c, seq)?;
        Ok(seq)
    })
}

/// The newest audit rows, newest first: at most `limit`, below id `before`.
pub fn audit_rows(
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
pub fn head(c: &mut dyn Conn) -> Result<i64, SqlError> {
    c.query("SELECT seq FROM change_counter WHERE id = 1", &[])?
        .first()
        .and_then(|r| r.first())
        .and_then(Val::int)
        .ok_or_else(|| SqlError::Other("change_counter row is missing".into()))
}

/// What changed since a cursor: applied to [`Records`] by [`apply`].
#[derive(Debug, Default)]
pub struct Changes {
    pub head: i64,
    pub teams: Vec<(TeamRec, bool)>,
    pub keys: Vec<KeyRec>,
    /// `(key name, secret)`.
    pub secrets: Vec<(Arc<str>, SecretRec)>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.teams.is_empty() && self.keys.is_empty() && self.secrets.is_empty()
    }
}

/// Reads every row written after `since` and up to the counter's current
/// value. `None` when nothing was written.
pub fn changes_since(c: &mut dyn Conn, since: i64) -> Result<Option<Changes>, SqlError> {
    let head = head(c)?;
    if head == since {
        return Ok(None);
    }
    let range = [Val::Int(since), Val::Int(head)];
    let mut out = Changes {
        head,
        ..Changes::default()
    };
    for r in c.query(
        "SELECT name, spec, created_at, updated_at, deleted FROM teams WHERE seq > $1 AND seq <= $2",
        &range,
    )? {
        let text = |i: usize| r.get(i).and_then(Val::text);
        let int = |i: usize| r.get(i).and_then(Val::int).unwrap_or(0);
        out.teams.push((
            TeamRec {
                name: Arc::from(text(0).unwrap_or("")),
                spec: parse_spec(text(1).unwrap_or("{}"))?,
                created_at: int(2),
                updated_at: int(3),
            },
            int(4) != 0,
        ));
    }
    for r in c.query(
        "SELECT name, team, spec, expires_at, revoked_at, created_at, updated_at, seq FROM keys WHERE seq > $1 AND seq <= $2",
        &range,
    )? {
        out.keys.push(key_row(&r)?.0);
    }
    for r in c.query(
        "SELECT digest, key_name, created_at, valid_until FROM key_secrets WHERE seq > $1 AND seq <= $2",
        &range,
    )? {
        let Some(digest) = r.get(0).and_then(Val::text).and_then(crate::auth::parse_hex_digest)
        else {
            continue;
        };
        out.secrets.push((
            Arc::from(r.get(1).and_then(Val::text).unwrap_or("")),
            SecretRec {
                digest,
                created_at: r.get(2).and_then(Val::int).unwrap_or(0),
                valid_until: r.get(3).and_then(Val::int),
            },
        ));
    }
    Ok(Some(out))
}

/// Applies changes to the records; returns the names of the keys whose
/// compiled form must be rebuilt (changed keys, their secrets, and the keys
/// of changed teams).
pub fn apply(records: &mut Records, ch: Changes) -> BTreeSet<Arc<str>> {
    let mut dirty: BTreeSet<Arc<str>> = BTreeSet::new();
    let mut teams_changed: BTreeSet<Arc<str>> = BTreeSet::new();
    for (t, deleted) in ch.teams {
        teams_changed.insert(t.name.clone());
        if deleted {
            records.teams.remove(&t.name);
        } else {
            records.teams.insert(t.name.clone(), t);
        }
    }
    for mut k in ch.keys {
        if let Some(old) = records.keys.remove(&k.name) {
            k.secrets = old.secrets;
        }
        dirty.insert(k.name.clone());
        records.keys.insert(k.name.clone(), k);
    }
    for (name, s) in ch.secrets {
        if let Some(k) = records.keys.get_mut(&name) {
            match k.secrets.iter_mut().find(|x| x.digest == s.digest) {
                Some(x) => *x = s,
                None => k.secrets.push(s),
            }
            dirty.insert(name);
        }
    }
    if !teams_changed.is_empty() {
        for k in records.keys.values() {
            if k.team.as_ref().is_some_and(|t| teams_changed.contains(t)) {
                dirty.insert(k.name.clone());
            }
        }
    }
    records.seq = ch.head;
    dirty
}
