//! The runtime key store (issue 16): gateway keys, teams, their limits and
//! budgets, created, rotated and revoked through the admin API while the
//! gateway runs, kept in SQLite (one instance) or PostgreSQL (several).
//!
//! - [`sql`]: one small SQL interface over both databases.
//! - [`migrate`]: versioned migrations (`migrations/`), applied on start.
//! - [`store`]: each admin write as one transaction, and the change feed's
//!   read of everything written since a cursor.
//! - [`model`]: records, admin request bodies, their checks, JSON views.
//! - [`snapshot`]: digest → compiled key, what the request path reads.
//! - [`feed`]: the background loop that keeps the snapshot current
//!   (`LISTEN/NOTIFY` and polling of the change counter).
//!
//! The request path never waits for the database: it reads the snapshot in
//! an `ArcSwap`. A write applies to the writing instance before its answer,
//! and reaches the others on their next notification or poll.

pub(crate) mod feed;
pub(crate) mod metrics;
pub mod migrate;
pub(crate) mod model;
pub(crate) mod snapshot;
pub mod sql;
pub(crate) mod store;

pub use snapshot::{Lookup, Snapshot};

use crate::config::{Config, KeyStoreSection};
use arc_swap::ArcSwap;
use sql::{Conn, SqlError};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use store::WriteError;

/// How to reach the database.
#[derive(Clone)]
enum Backend {
    Sqlite(String),
    Postgres(Box<postgres::Config>),
}

/// The store: its database, its records and the snapshot built from them.
pub struct KeyStore {
    backend: Backend,
    poll: Duration,
    /// The connection admin requests use (the feed has its own).
    admin_conn: Mutex<Option<Box<dyn Conn>>>,
    /// Held while a snapshot is built from the database (feed and admin
    /// writes take turns), so changes are applied in order.
    refresh: Mutex<()>,
    snapshot: ArcSwap<Snapshot>,
    up: AtomicBool,
    /// Set by a local write so the feed looks at once (SQLite).
    wake: (Mutex<bool>, std::sync::Condvar),
}

static STORE: OnceLock<Arc<KeyStore>> = OnceLock::new();

/// The store, when `key_store` is configured.
pub fn global() -> Option<&'static Arc<KeyStore>> {
    STORE.get()
}

/// The runtime key with digest `d`: a snapshot read, no I/O, no lock.
pub fn lookup(d: &[u8; 32]) -> Lookup {
    match STORE.get() {
        None => Lookup::Unknown,
        Some(s) => s.snapshot.load().lookup_at(d, crate::base::clock::unix_ms),
    }
}

fn backend(ks: &KeyStoreSection) -> Result<Backend, String> {
    match (&ks.sqlite, &ks.postgres) {
        (Some(path), None) => Ok(Backend::Sqlite(path.clone())),
        (None, Some(url)) => {
            crate::config::url::check_postgres_url(url)?;
            let mut c: postgres::Config = url
                .parse()
                .map_err(|_| "key_store.postgres: not a URL".to_string())?;
            let t = ks.timeout.get();
            c.connect_timeout(t);
            c.keepalives(true);
            c.keepalives_idle(Duration::from_secs(10));
            c.tcp_user_timeout(t);
            c.application_name("tollgate");
            c.options(&format!("-c statement_timeout={}", t.as_millis()));
            Ok(Backend::Postgres(Box::new(c)))
        }
        _ => Err("key_store: set exactly one of sqlite and postgres".into()),
    }
}

impl Backend {
    fn connect(&self) -> Result<Box<dyn Conn>, SqlError> {
        match self {
            Backend::Sqlite(path) => Ok(Box::new(sql::Sqlite::open(path)?)),
            Backend::Postgres(cfg) => Ok(Box::new(sql::Pg::connect(cfg)?)),
        }
    }

    fn label(&self) -> &'static str {
        match self {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }
}

/// Opens the store at start-up: connects, migrates, loads every record and
/// builds the first snapshot. Fails when the database cannot be reached
/// (there is no snapshot to serve yet) or when a name is both in the
/// config and in the store. Blocking; run before the server starts.
pub fn open(ks: &KeyStoreSection, cfg: Arc<Config>) -> Result<Arc<KeyStore>, String> {
    let backend = backend(ks)?;
    let started = std::time::Instant::now();
    let mut conn = backend
        .connect()
        .map_err(|e| format!("key store ({}): {e}", backend.label()))?;
    let applied = migrate::run(&mut *conn).map_err(|e| format!("key store migrations: {e}"))?;
    if !applied.is_empty() {
        log::info!("key store: applied migrations {applied:?}");
    }
    let mut snapshot = Snapshot::empty(cfg.clone());
    if let Some((head, teams)) = store::changed_teams(&mut *conn, 0)
        .map_err(|e| format!("key store: loading the teams: {e}"))?
    {
        snapshot = snapshot.begin(head, teams);
        store::changed_keys(&mut *conn, 0, head, &mut |k| snapshot.insert(k))
            .map_err(|e| format!("key store: loading the keys: {e}"))?;
    }
    conflicts(&snapshot, &cfg).map_err(|e| format!("key store: {e}"))?;
    log::info!(
        "key store ({}): {} keys, {} teams, {} secrets loaded in {} ms",
        backend.label(),
        snapshot.keys().len(),
        snapshot.teams().len(),
        snapshot.len(),
        started.elapsed().as_millis()
    );
    let s = Arc::new(KeyStore {
        backend,
        poll: ks.poll_interval.get(),
        // Not kept: the process may fork into a daemon after this.
        admin_conn: Mutex::new(None),
        refresh: Mutex::new(()),
        snapshot: ArcSwap::from_pointee(snapshot),
        up: AtomicBool::new(true),
        wake: (Mutex::new(false), std::sync::Condvar::new()),
    });
    drop(conn);
    release_freed_memory();
    if let Some(m) = metrics::get() {
        m.up.set(1);
        m.keys.set(s.snapshot.load().len() as i64);
    }
    let _ = STORE.set(s.clone());
    Ok(s)
}

/// Names that would mean two things: a key or team both in the config and
/// in the store, or a store key whose team exists nowhere.
fn conflicts(snapshot: &Snapshot, cfg: &Config) -> Result<(), String> {
    let mut problems = Vec::new();
    let keys = snapshot.keys();
    for (i, k) in cfg.keys.iter().enumerate() {
        if keys.contains_key(k.name.as_str()) {
            problems.push(format!(
                "keys[{i}].name: `{}` is also a key in the key store; a name may not be in both",
                k.name
            ));
        }
    }
    for name in cfg.teams.keys() {
        if snapshot.teams().contains_key(name.as_str()) {
            problems.push(format!(
                "teams.{name}: `{name}` is also a team in the key store; a name may not be in both"
            ));
        }
    }
    for (name, (team, revoked)) in &keys {
        if let (Some(t), false) = (team, revoked) {
            if !snapshot.teams().contains_key(t) && !cfg.teams.contains_key(&**t) {
                problems.push(format!(
                    "teams: key store key `{name}` uses team `{t}`, which is neither in the config nor in the store"
                ));
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

/// Called by a reload before it swaps the new config in: refuses a config
/// that conflicts with the store, else compiles the snapshot against it.
pub fn on_reload(cfg: &Arc<Config>) -> Result<(), String> {
    let Some(s) = STORE.get() else {
        if cfg.key_store.is_some() {
            return Err("key_store cannot be added on reload; restart the service".into());
        }
        return Ok(());
    };
    let _turn = s.refresh.lock().unwrap_or_else(|p| p.into_inner());
    let cur = s.snapshot.load_full();
    conflicts(&cur, cfg)?;
    s.snapshot.store(Arc::new(cur.with_config(cfg.clone())));
    Ok(())
}

impl KeyStore {
    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Whether the last database call succeeded.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// A new connection of its own to the store's database (for the file
    /// and batch owners' record, `objects`; the capture writer and its
    /// readers). Blocking.
    pub fn connect(&self) -> Result<Box<dyn Conn>, SqlError> {
        self.backend.connect()
    }

    /// `sqlite` or `postgres`.
    pub fn kind(&self) -> &'static str {
        self.backend.label()
    }

    /// Records the outcome of a database call: a log line and the metric
    /// on every change between up and down.
    fn mark(&self, result: &Result<(), SqlError>) {
        let ok = !matches!(result, Err(SqlError::Unavailable(_)));
        let was = self.up.swap(ok, Ordering::Relaxed);
        if let Some(m) = metrics::get() {
            m.up.set(i64::from(ok));
            if !ok {
                m.errors.inc();
            }
        }
        match (was, ok, result) {
            (true, false, Err(e)) => log::error!(
                "key store ({}) unreachable: {e}; serving keys from the last snapshot (change {}), admin writes get 503",
                self.kind(),
                self.snapshot.load().seq
            ),
            (false, true, _) => log::info!(
                "key store ({}) reachable again; caught up to change {}",
                self.kind(),
                self.snapshot.load().seq
            ),
            (_, _, Err(SqlError::Other(e))) => log::error!("key store: {e}"),
            _ => {}
        }
    }

    /// Reads what changed since the snapshot's change through `c` and
    /// swaps in a snapshot with it.
    fn refresh_with(&self, c: &mut dyn Conn) -> Result<(), SqlError> {
        let _turn = self.refresh.lock().unwrap_or_else(|p| p.into_inner());
        let cur = self.snapshot.load_full();
        let Some((head, teams)) = store::changed_teams(c, cur.seq)? else {
            return Ok(());
        };
        let mut next = cur.begin(head, teams);
        store::changed_keys(c, cur.seq, head, &mut |k| next.insert(k))?;
        let n = next.len();
        self.snapshot.store(Arc::new(next));
        if let Some(m) = metrics::get() {
            m.keys.set(n as i64);
            m.seq.set(head);
        }
        Ok(())
    }

    /// Runs `f` on the admin connection (connecting if needed), then brings
    /// this instance's snapshot up to date, so the caller sees its own
    /// write at once. Blocking.
    fn with_admin<T>(
        &self,
        f: impl FnOnce(&mut dyn Conn) -> Result<T, WriteError>,
    ) -> Result<T, WriteError> {
        let mut slot = self.admin_conn.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            match self.backend.connect() {
                Ok(c) => *slot = Some(c),
                Err(e) => {
                    let r = Err(e);
                    self.mark(&r);
                    return Err(WriteError::Sql(
                        r.err()
                            .unwrap_or(SqlError::Unavailable("no connection".into())),
                    ));
                }
            }
        }
        let Some(conn) = slot.as_mut() else {
            return Err(WriteError::Sql(SqlError::Unavailable(
                "no connection".into(),
            )));
        };
        let out = f(&mut **conn);
        let refreshed = match &out {
            Err(WriteError::Sql(SqlError::Unavailable(m))) => Err(SqlError::Unavailable(m.clone())),
            _ => self.refresh_with(&mut **conn),
        };
        if matches!(refreshed, Err(SqlError::Unavailable(_))) {
            *slot = None;
        }
        self.mark(&refreshed);
        if out.is_ok() {
            self.wake_feed();
        }
        out
    }

    /// Runs a write (or a read of the database) off the async runtime.
    pub async fn run<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut dyn Conn) -> Result<T, WriteError> + Send + 'static,
    ) -> Result<T, WriteError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.with_admin(f))
            .await
            .unwrap_or_else(|_| {
                Err(WriteError::Sql(SqlError::Other(
                    "a key store task panicked".into(),
                )))
            })
    }

    fn wake_feed(&self) {
        let (lock, cv) = &self.wake;
        *lock.lock().unwrap_or_else(|p| p.into_inner()) = true;
        cv.notify_all();
    }
}

/// Hands glibc's heap freed after the initial load (SQLite's own
/// allocations for the rows as read) back to the system. The gateway's
/// own allocations go to jemalloc (`main.rs`), which returns freed pages
/// after its decay time by itself.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the system.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// A new secret: `tg-` and 43 characters of base64url (32 random bytes
/// from the operating system).
pub fn new_secret() -> Result<String, String> {
    use base64::Engine;
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes).map_err(|e| format!("no randomness: {e}"))?;
    Ok(format!(
        "tg-{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

/// A fresh key name, `key-` and 12 random hex digits (for `tollgate keys
/// create` without `--name`).
pub fn new_key_name() -> Result<String, String> {
    let mut bytes = [0u8; 6];
    getrandom::getrandom(&mut bytes).map_err(|e| format!("no randomness: {e}"))?;
    Ok(format!("key-{}", hex::encode(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_random_and_presentable() {
        let a = new_secret().unwrap();
        let b = new_secret().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 46);
        assert!(crate::auth::unpresentable(&a).is_none());
    }
}
