//! The change feed: a background thread that keeps this instance's
//! snapshot current with writes made by any instance. On PostgreSQL it
//! `LISTEN`s on `tollgate_keys` (every write sends `pg_notify` at commit)
//! and also polls the change counter every `poll_interval` as the fallback;
//! on SQLite it polls (a local write wakes it at once). While the database
//! is unreachable it keeps retrying at the poll interval and the snapshot
//! stays as it was; when the database is back it catches up from its
//! cursor, without a restart.

use super::sql::{Conn, SqlError};
use super::KeyStore;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The Pingora background service that runs the feed thread.
pub(crate) struct Feed {
    pub(crate) store: Arc<KeyStore>,
}

#[async_trait]
impl BackgroundService for Feed {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let stop = Arc::new(AtomicBool::new(false));
        let (store, flag) = (self.store.clone(), stop.clone());
        let spawned = std::thread::Builder::new()
            .name("key store feed".into())
            .spawn(move || run(&store, &flag));
        if let Err(e) = spawned {
            log::error!("key store: cannot start the change feed: {e}");
            return;
        }
        let _ = shutdown.changed().await;
        stop.store(true, Ordering::Relaxed);
        self.store.wake_feed();
    }
}

/// The feed loop: connect (and `LISTEN`), catch up, wait; until `stop`.
fn run(store: &KeyStore, stop: &AtomicBool) {
    let mut conn: Option<Box<dyn Conn>> = None;
    while !stop.load(Ordering::Relaxed) {
        if conn.is_none() {
            match connect(store) {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    store.mark(&Err(e));
                    wait(store, None);
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        let result = store.refresh_with(&mut **c);
        store.mark(&result);
        if matches!(result, Err(SqlError::Unavailable(_))) {
            conn = None;
            wait(store, None);
            continue;
        }
        if !wait(store, conn.as_mut()) {
            // The notification stream broke: reconnect next time round.
            conn = None;
        }
    }
}

fn connect(store: &KeyStore) -> Result<Box<dyn Conn>, SqlError> {
    let mut c = store.backend.connect()?;
    if c.dialect() == super::sql::Dialect::Postgres {
        c.batch("LISTEN tollgate_keys")?;
    }
    Ok(c)
}

/// Waits up to the poll interval: for a notification (PostgreSQL), or for
/// a local write or a stop. `false` when the connection broke.
fn wait(store: &KeyStore, conn: Option<&mut Box<dyn Conn>>) -> bool {
    if let Some(c) = conn {
        if let Some(pg) = c.as_postgres() {
            return wait_notified(pg, store.poll);
        }
    }
    let (lock, cv) = &store.wake;
    let mut woken = lock.lock().unwrap_or_else(|p| p.into_inner());
    if !*woken {
        woken = cv
            .wait_timeout(woken, store.poll)
            .map(|(g, _)| g)
            .unwrap_or_else(|p| p.into_inner().0);
    }
    *woken = false;
    true
}

/// Blocks until a notification arrives or `poll` passes; drains the rest.
fn wait_notified(pg: &mut super::sql::Pg, poll: Duration) -> bool {
    use postgres::fallible_iterator::FallibleIterator;
    let mut n = pg.client.notifications();
    if n.timeout_iter(poll).next().is_err() {
        return false;
    }
    let mut drain = n.iter();
    loop {
        match drain.next() {
            Ok(Some(_)) => continue,
            Ok(None) => return true,
            Err(_) => return false,
        }
    }
}
