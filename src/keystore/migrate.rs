//! Versioned schema migrations, committed in `migrations/sqlite/` and
//! `migrations/postgres/` and compiled into the binary. On start every
//! migration above the database's `schema_version` is applied, all in one
//! transaction; a database newer than this binary is refused.

use super::sql::{in_tx, Conn, Dialect, SqlError, Val};

/// `(version, SQL)` for SQLite, in order.
const SQLITE: &[(i64, &str)] = &[
    (
        1,
        include_str!("../../migrations/sqlite/0001_keys_teams_audit.sql"),
    ),
    (
        2,
        include_str!("../../migrations/sqlite/0002_object_owners.sql"),
    ),
    (3, include_str!("../../migrations/sqlite/0003_captures.sql")),
];

/// `(version, SQL)` for PostgreSQL, in order.
const POSTGRES: &[(i64, &str)] = &[
    (
        1,
        include_str!("../../migrations/postgres/0001_keys_teams_audit.sql"),
    ),
    (
        2,
        include_str!("../../migrations/postgres/0002_object_owners.sql"),
    ),
    (
        3,
        include_str!("../../migrations/postgres/0003_captures.sql"),
    ),
];

/// The schema version this binary writes.
pub fn latest() -> i64 {
    SQLITE.last().map_or(0, |m| m.0)
}

/// Why the schema cannot be used.
#[derive(Debug)]
pub enum MigrateError {
    Sql(SqlError),
    /// The database was migrated by a newer Tollgate.
    TooNew {
        found: i64,
        known: i64,
    },
}

impl From<SqlError> for MigrateError {
    fn from(e: SqlError) -> Self {
        MigrateError::Sql(e)
    }
}

impl std::fmt::Display for MigrateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MigrateError::Sql(e) => write!(f, "{e}"),
            MigrateError::TooNew { found, known } => write!(
                f,
                "the key store's schema is version {found}, newer than this binary's {known}: upgrade Tollgate"
            ),
        }
    }
}

/// Brings the schema up to date; returns the versions applied.
pub fn run(c: &mut dyn Conn) -> Result<Vec<i64>, MigrateError> {
    let steps = match c.dialect() {
        Dialect::Sqlite => SQLITE,
        Dialect::Postgres => POSTGRES,
    };
    let known = steps.last().map_or(0, |m| m.0);
    in_tx(c, |c| {
        if c.dialect() == Dialect::Postgres {
            // Instances starting together migrate one after the other.
            c.query("SELECT pg_advisory_xact_lock(7316002016)::text", &[])?;
        }
        c.batch("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")?;
        let found = c
            .query("SELECT COALESCE(MAX(version), 0) FROM schema_version", &[])?
            .first()
            .and_then(|r| r.first())
            .and_then(Val::int)
            .unwrap_or(0);
        if found > known {
            return Err(MigrateError::TooNew { found, known });
        }
        let mut applied = Vec::new();
        for (version, sql) in steps.iter().filter(|(v, _)| *v > found) {
            c.batch(sql)?;
            c.exec("DELETE FROM schema_version", &[])?;
            c.exec(
                "INSERT INTO schema_version (version) VALUES ($1)",
                &[Val::Int(*version)],
            )?;
            applied.push(*version);
        }
        Ok(applied)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keystore::sql::Sqlite;

    #[test]
    fn applies_once_and_refuses_a_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.db");
        let mut c = Sqlite::open(path.to_str().unwrap()).unwrap();
        assert_eq!(run(&mut c).unwrap(), vec![1, 2, 3]);
        assert_eq!(run(&mut c).unwrap(), Vec::<i64>::new());
        c.exec("UPDATE schema_version SET version = 99", &[])
            .unwrap();
        let err = run(&mut c).unwrap_err().to_string();
        assert!(err.contains("version 99"), "{err}");
    }
}
