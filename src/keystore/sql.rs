//! One small SQL interface over the two databases (SQLite through
//! `rusqlite`, PostgreSQL through `postgres`), so the store's logic and
//! statements are written once. Statements use `$1`, `$2`… placeholders
//! (rewritten to `?1`, `?2`… for SQLite), integer columns are 64-bit and
//! digests are hex text, so the same SQL runs on both.

use std::fmt;

/// A value bound to a placeholder or read from a column.
#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    Null,
    Int(i64),
    Text(String),
}

impl Val {
    pub fn int(&self) -> Option<i64> {
        match self {
            Val::Int(i) => Some(*i),
            _ => None,
        }
    }
    pub fn text(&self) -> Option<&str> {
        match self {
            Val::Text(s) => Some(s),
            _ => None,
        }
    }
    pub fn opt_text(v: Option<&str>) -> Val {
        v.map_or(Val::Null, |s| Val::Text(s.to_string()))
    }
    pub fn opt_int(v: Option<i64>) -> Val {
        v.map_or(Val::Null, Val::Int)
    }
}

impl From<i64> for Val {
    fn from(v: i64) -> Val {
        Val::Int(v)
    }
}
impl From<&str> for Val {
    fn from(v: &str) -> Val {
        Val::Text(v.to_string())
    }
}
impl From<String> for Val {
    fn from(v: String) -> Val {
        Val::Text(v)
    }
}

/// A row: its columns in the order of the `SELECT`.
pub type Row = Vec<Val>;

/// Why a statement failed.
#[derive(Debug)]
pub enum SqlError {
    /// The database cannot be reached (or the connection broke): retry later.
    Unavailable(String),
    /// A uniqueness constraint refused the write.
    Conflict(String),
    /// Anything else (a bug, a schema mismatch, a full disk).
    Other(String),
}

impl fmt::Display for SqlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SqlError::Unavailable(m) => write!(f, "database unavailable: {m}"),
            SqlError::Conflict(m) => write!(f, "constraint: {m}"),
            SqlError::Other(m) => f.write_str(m),
        }
    }
}

/// One open connection.
pub trait Conn: Send {
    /// Runs a statement; returns the number of rows changed.
    fn exec(&mut self, sql: &str, params: &[Val]) -> Result<u64, SqlError>;
    /// Runs a query; returns every row.
    fn query(&mut self, sql: &str, params: &[Val]) -> Result<Vec<Row>, SqlError> {
        let mut out = Vec::new();
        self.query_each(sql, params, &mut |r| {
            out.push(r.to_vec());
            Ok(())
        })?;
        Ok(out)
    }
    /// Runs a query, handing each row to `f` as it is read (nothing is
    /// collected: a full load of 100,000 keys streams through).
    fn query_each(
        &mut self,
        sql: &str,
        params: &[Val],
        f: &mut dyn FnMut(&[Val]) -> Result<(), SqlError>,
    ) -> Result<(), SqlError>;
    /// Runs several statements without parameters (migrations).
    fn batch(&mut self, sql: &str) -> Result<(), SqlError>;
    /// Starts a write transaction (SQLite takes the write lock at once).
    fn begin(&mut self) -> Result<(), SqlError>;
    fn commit(&mut self) -> Result<(), SqlError>;
    fn rollback(&mut self);
    /// `sqlite` or `postgres`, to pick a dialect's migrations.
    fn dialect(&self) -> Dialect;
    /// The PostgreSQL client, to wait for notifications.
    fn as_postgres(&mut self) -> Option<&mut Pg> {
        None
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// Runs `f` inside one transaction: committed when it returns `Ok`, rolled
/// back otherwise. Nothing half-written is ever left.
pub fn in_tx<T, E: From<SqlError>>(
    c: &mut dyn Conn,
    f: impl FnOnce(&mut dyn Conn) -> Result<T, E>,
) -> Result<T, E> {
    c.begin()?;
    match f(c) {
        Ok(v) => match c.commit() {
            Ok(()) => Ok(v),
            Err(e) => {
                c.rollback();
                Err(e.into())
            }
        },
        Err(e) => {
            c.rollback();
            Err(e)
        }
    }
}

// ---------------------------------------------------------------------------
// SQLite

/// A SQLite connection (the bundled library).
pub struct Sqlite {
    conn: rusqlite::Connection,
}

impl Sqlite {
    /// Opens (creating) the file, in WAL mode with a busy timeout so a
    /// second process on the same file waits instead of failing.
    pub fn open(path: &str) -> Result<Sqlite, SqlError> {
        let conn = rusqlite::Connection::open(path).map_err(|e| sqlite_err(&e))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(|e| sqlite_err(&e))?;
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA foreign_keys = ON;")
            .map_err(|e| sqlite_err(&e))?;
        Ok(Sqlite { conn })
    }
}

/// `$1` → `?1` (our statements only; no `$` appears inside their literals).
fn sqlite_sql(sql: &str) -> String {
    sql.replace('$', "?")
}

fn sqlite_err(e: &rusqlite::Error) -> SqlError {
    use rusqlite::ErrorCode;
    match e.sqlite_error_code() {
        Some(ErrorCode::ConstraintViolation) => SqlError::Conflict(e.to_string()),
        Some(
            ErrorCode::DatabaseBusy
            | ErrorCode::DatabaseLocked
            | ErrorCode::CannotOpen
            | ErrorCode::SystemIoFailure
            | ErrorCode::DiskFull
            | ErrorCode::ReadOnly,
        ) => SqlError::Unavailable(e.to_string()),
        _ => SqlError::Other(e.to_string()),
    }
}

impl rusqlite::ToSql for Val {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(match self {
            Val::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Val::Int(i) => ToSqlOutput::Borrowed(ValueRef::Integer(*i)),
            Val::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
        })
    }
}

impl Conn for Sqlite {
    fn exec(&mut self, sql: &str, params: &[Val]) -> Result<u64, SqlError> {
        let mut st = self
            .conn
            .prepare_cached(&sqlite_sql(sql))
            .map_err(|e| sqlite_err(&e))?;
        let n = st
            .execute(rusqlite::params_from_iter(params.iter()))
            .map_err(|e| sqlite_err(&e))?;
        Ok(n as u64)
    }

    fn query_each(
        &mut self,
        sql: &str,
        params: &[Val],
        f: &mut dyn FnMut(&[Val]) -> Result<(), SqlError>,
    ) -> Result<(), SqlError> {
        use rusqlite::types::ValueRef;
        let mut st = self
            .conn
            .prepare_cached(&sqlite_sql(sql))
            .map_err(|e| sqlite_err(&e))?;
        let cols = st.column_count();
        let mut rows = st
            .query(rusqlite::params_from_iter(params.iter()))
            .map_err(|e| sqlite_err(&e))?;
        let mut row = Vec::with_capacity(cols);
        while let Some(r) = rows.next().map_err(|e| sqlite_err(&e))? {
            row.clear();
            for i in 0..cols {
                row.push(match r.get_ref(i).map_err(|e| sqlite_err(&e))? {
                    ValueRef::Null => Val::Null,
                    ValueRef::Integer(v) => Val::Int(v),
                    ValueRef::Text(t) => Val::Text(String::from_utf8_lossy(t).into_owned()),
                    ValueRef::Real(f) => Val::Int(f as i64),
                    ValueRef::Blob(b) => Val::Text(hex::encode(b)),
                });
            }
            f(&row)?;
        }
        Ok(())
    }

    fn batch(&mut self, sql: &str) -> Result<(), SqlError> {
        self.conn.execute_batch(sql).map_err(|e| sqlite_err(&e))
    }

    fn begin(&mut self) -> Result<(), SqlError> {
        self.batch("BEGIN IMMEDIATE")
    }

    fn commit(&mut self) -> Result<(), SqlError> {
        self.batch("COMMIT")
    }

    fn rollback(&mut self) {
        let _ = self.conn.execute_batch("ROLLBACK");
    }

    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }
}

// ---------------------------------------------------------------------------
// PostgreSQL

/// A PostgreSQL connection (the synchronous `postgres` client, used from a
/// blocking thread).
pub struct Pg {
    pub client: postgres::Client,
}

impl Pg {
    /// Connects with the given config (timeouts already set).
    pub fn connect(cfg: &postgres::Config) -> Result<Pg, SqlError> {
        let client = cfg.connect(postgres::NoTls).map_err(|e| pg_err(&e))?;
        Ok(Pg { client })
    }
}

/// Maps a client error. Its text never holds the password: the client's
/// errors name the server's message or the I/O failure only.
pub fn pg_err(e: &postgres::Error) -> SqlError {
    if let Some(db) = e.as_db_error() {
        let code = db.code().code();
        return match code {
            "23505" => SqlError::Conflict(db.message().to_string()),
            // Connection exceptions, shutdown, too many connections,
            // cannot connect now, read-only (a standby).
            c if c.starts_with("08") || c.starts_with("57P") || c == "53300" || c == "25006" => {
                SqlError::Unavailable(db.message().to_string())
            }
            _ => SqlError::Other(format!("{} ({code})", db.message())),
        };
    }
    // No server error: the connection failed or closed.
    SqlError::Unavailable(e.to_string())
}

impl postgres::types::ToSql for Val {
    fn to_sql(
        &self,
        ty: &postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> Result<postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Val::Null => Ok(postgres::types::IsNull::Yes),
            Val::Int(i) => i.to_sql(ty, out),
            Val::Text(s) => s.as_str().to_sql(ty, out),
        }
    }

    fn accepts(ty: &postgres::types::Type) -> bool {
        <i64 as postgres::types::ToSql>::accepts(ty)
            || <&str as postgres::types::ToSql>::accepts(ty)
    }

    postgres::types::to_sql_checked!();
}

fn pg_params(params: &[Val]) -> Vec<&(dyn postgres::types::ToSql + Sync)> {
    // (query_raw takes the values themselves; execute takes these.)
    params
        .iter()
        .map(|p| p as &(dyn postgres::types::ToSql + Sync))
        .collect()
}

impl Conn for Pg {
    fn exec(&mut self, sql: &str, params: &[Val]) -> Result<u64, SqlError> {
        self.client
            .execute(sql, &pg_params(params))
            .map_err(|e| pg_err(&e))
    }

    fn query_each(
        &mut self,
        sql: &str,
        params: &[Val],
        f: &mut dyn FnMut(&[Val]) -> Result<(), SqlError>,
    ) -> Result<(), SqlError> {
        use postgres::fallible_iterator::FallibleIterator;
        use postgres::types::Type;
        let mut rows = self
            .client
            .query_raw(sql, params.iter())
            .map_err(|e| pg_err(&e))?;
        let mut row = Vec::new();
        while let Some(r) = rows.next().map_err(|e| pg_err(&e))? {
            row.clear();
            for (i, col) in r.columns().iter().enumerate() {
                let t = col.type_();
                let v = if *t == Type::INT8 {
                    r.try_get::<_, Option<i64>>(i).map(Val::opt_int)
                } else if *t == Type::INT4 {
                    r.try_get::<_, Option<i32>>(i)
                        .map(|v| Val::opt_int(v.map(i64::from)))
                } else {
                    r.try_get::<_, Option<String>>(i)
                        .map(|v| v.map_or(Val::Null, Val::Text))
                };
                row.push(v.map_err(|e| SqlError::Other(e.to_string()))?);
            }
            f(&row)?;
        }
        Ok(())
    }

    fn batch(&mut self, sql: &str) -> Result<(), SqlError> {
        self.client.batch_execute(sql).map_err(|e| pg_err(&e))
    }

    fn begin(&mut self) -> Result<(), SqlError> {
        self.batch("BEGIN")
    }

    fn commit(&mut self) -> Result<(), SqlError> {
        self.batch("COMMIT")
    }

    fn rollback(&mut self) {
        let _ = self.client.batch_execute("ROLLBACK");
    }

    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    fn as_postgres(&mut self) -> Option<&mut Pg> {
        Some(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_round_trip_and_rollback() {
        let mut c = Sqlite::open(":memory:").unwrap();
        c.batch("CREATE TABLE t (a TEXT PRIMARY KEY, b INTEGER)")
            .unwrap();
        in_tx(&mut c, |c| {
            c.exec("INSERT INTO t VALUES ($1, $2)", &["x".into(), Val::Int(7)])
        })
        .unwrap();
        let r: Result<(), SqlError> = in_tx(&mut c, |c| {
            c.exec("INSERT INTO t VALUES ($1, $2)", &["y".into(), Val::Null])?;
            Err(SqlError::Other("abort".into()))
        });
        assert!(r.is_err());
        let rows = c.query("SELECT a, b FROM t ORDER BY a", &[]).unwrap();
        assert_eq!(rows, vec![vec![Val::Text("x".into()), Val::Int(7)]]);
        let dup = c.exec("INSERT INTO t VALUES ($1, $2)", &["x".into(), Val::Int(1)]);
        assert!(matches!(dup, Err(SqlError::Conflict(_))));
    }
}
