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
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[derive(Serialize, Deserialize)]
struct File {
    version: u32,
    /// When the writing process started (Unix ms), to tell an older
    /// instance (one being replaced by a graceful upgrade) from this one.
    #[serde(default)]
    writer_started_ms: i64,
    #[serde(default)]
    writer_pid: u32,
    counters: Vec<Entry>,
    /// The admin API's usage ledger (kept from the writer's own start).
    #[serde(default)]
    usage: Vec<(Level, String, [super::ledger::Win; 4])>,
    /// The ledger's usage per workload (`tag=value`) of keys and teams.
    #[serde(default)]
    workload_usage: Vec<(Level, String, String, [super::ledger::Win; 4])>,
}

/// When this process started, for [`File::writer_started_ms`].
fn started_ms() -> i64 {
    static T: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *T.get_or_init(crate::base::clock::unix_ms)
}

/// Amounts by counter and bucket.
type Amounts = HashMap<(CounterId, i64), i64>;

/// What the state file held when this process last took it in: during a
/// graceful upgrade the old process keeps writing until it exits, and only
/// what it added since is merged.
static BASE: std::sync::Mutex<Option<Amounts>> = std::sync::Mutex::new(None);

fn amounts(file: &File) -> Amounts {
    let mut out = HashMap::new();
    for e in &file.counters {
        let id = CounterId {
            level: e.level,
            name: Arc::from(e.name.as_str()),
            metric: e.metric,
            span: e.span,
        };
        for &(bucket, amount) in &e.buckets {
            out.insert((id.clone(), bucket), amount);
        }
    }
    out
}

fn read(path: &Path) -> Result<Option<File>, String> {
    let body = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("state_file {}: {e}", path.display())),
    };
    serde_json::from_slice(&body).map(Some).map_err(|e| {
        format!(
            "state_file {}: not a Tollgate state file: {e}",
            path.display()
        )
    })
}

/// Takes in what an older instance (the one a graceful upgrade replaces)
/// wrote since this process last read the file. A newer writer's file is
/// never merged (it already holds what this process had).
fn merge_older_writer(store: &super::memory::MemoryStore, path: &Path) {
    let Ok(Some(file)) = read(path) else {
        return;
    };
    if file.writer_pid == std::process::id() || file.writer_started_ms >= started_ms() {
        return;
    }
    let now = amounts(&file);
    let mut base = BASE.lock().unwrap_or_else(|e| e.into_inner());
    let old = base.take().unwrap_or_default();
    let mut added: HashMap<CounterId, Counter> = HashMap::new();
    for ((id, bucket), amount) in &now {
        let delta = amount - old.get(&(id.clone(), *bucket)).copied().unwrap_or(0);
        if delta > 0 {
            added.entry(id.clone()).or_default().add(*bucket, delta);
        }
    }
    *base = Some(now);
    drop(base);
    if !added.is_empty() {
        store.restore(added.into_iter().collect());
    }
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
    merge_older_writer(store, path);
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
        writer_started_ms: started_ms(),
        writer_pid: std::process::id(),
        counters,
        usage: super::ledger::global().dump(),
        workload_usage: super::ledger::global().dump_tags(),
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
    started_ms();
    let Some(file) = read(path)? else {
        return Ok(0);
    };
    *BASE.lock().unwrap_or_else(|e| e.into_inner()) = Some(amounts(&file));
    super::ledger::global().restore(file.usage);
    super::ledger::global().restore_tags(file.workload_usage);
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
