//! Spend and token budgets saved to `state_file`, so a restart keeps them.
//! Written atomically (a temp file, then a rename) every `state_interval`
//! and at graceful stop; read once at start.

use super::plan::CounterId;
use super::window::{Counter, Span};
use super::{Level, Metric};
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[derive(Serialize, Deserialize)]
struct File {
    version: u32,
    counters: Vec<Entry>,
}

#[derive(Serialize, Deserialize)]
struct Entry {
    level: Level,
    name: String,
    metric: Metric,
    span: Span,
    buckets: Vec<(i64, i64)>,
}

/// Writes the durable counters of `store` to `path` (temp file + rename).
pub fn save(store: &super::memory::MemoryStore, path: &Path) -> std::io::Result<()> {
    let counters = store
        .dump()
        .into_iter()
        .filter(|(id, c)| id.span.durable() && !c.buckets.is_empty())
        .map(|(id, c)| Entry {
            level: id.level,
            name: id.name.to_string(),
            metric: id.metric,
            span: id.span,
            buckets: c.buckets,
        })
        .collect();
    let body = serde_json::to_vec(&File {
        version: 1,
        counters,
    })
    .map_err(std::io::Error::other)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&body)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// Reads `path` into `store`. A missing file is a first start.
pub fn load(store: &super::memory::MemoryStore, path: &Path) -> Result<usize, String> {
    let body = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(format!("state_file {}: {e}", path.display())),
    };
    let file: File = serde_json::from_slice(&body).map_err(|e| {
        format!(
            "state_file {}: not a Tollgate state file: {e}",
            path.display()
        )
    })?;
    let n = file.counters.len();
    store.restore(
        file.counters
            .into_iter()
            .map(|e| {
                (
                    CounterId {
                        level: e.level,
                        name: Arc::from(e.name.as_str()),
                        metric: e.metric,
                        span: e.span,
                    },
                    Counter { buckets: e.buckets },
                )
            })
            .collect(),
    );
    Ok(n)
}

/// Saves the state file on an interval; the graceful stop saves it last.
pub struct Snapshotter {
    pub path: PathBuf,
    pub interval: Duration,
}

#[async_trait]
impl BackgroundService for Snapshotter {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {}
            }
            save_now(&self.path);
        }
    }
}

/// Saves, logging a failure (the next tick retries).
pub fn save_now(path: &Path) {
    if let Err(e) = save(super::memory::global(), path) {
        log::error!("saving budgets to state_file {}: {e}", path.display());
    }
}
