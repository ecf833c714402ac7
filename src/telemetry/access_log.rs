//! One JSON line per request. Lines are serialized into a shared buffer and
//! written by a background thread every few milliseconds, so the request path
//! never blocks on stderr or disk and never wakes a thread. If the writer
//! falls far behind, lines are dropped and counted rather than slowing
//! requests.

use serde::Serialize;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// One access-log record. Holds names from config, never secrets.
#[derive(Debug, Serialize)]
pub struct Record<'a> {
    pub ts: f64,
    pub request_id: &'a str,
    pub method: &'a str,
    pub endpoint: &'a str,
    pub key: &'a str,
    pub model: &'a str,
    pub provider: &'a str,
    pub upstream_model: &'a str,
    pub backend: Option<String>,
    pub stream: bool,
    pub status: u16,
    pub duration_ms: f64,
    pub upstream_ms: Option<f64>,
    pub attempts: u32,
    /// Each attempt (`provider@backend:outcome`) when there was more than one.
    pub attempt_log: Option<Vec<String>>,
    pub error: Option<&'a str>,
    pub ttft_ms: Option<f64>,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    pub cached_tokens: Option<u64>,
    pub reasoning_tokens: Option<u64>,
    pub usage_source: Option<&'static str>,
    pub cost_usd: Option<f64>,
    /// Usage known but the route has no price: the cost is unknown, not 0.
    pub unpriced: bool,
    pub partial: bool,
}

/// Lines wait here until the writer's next tick. Appending takes an
/// uncontended lock and never wakes a thread: a wake-up per request costs
/// more than the rest of the log line.
static BUF: Mutex<Vec<u8>> = Mutex::new(Vec::new());
/// Past this many pending bytes, lines are dropped (and counted), never
/// blocking requests.
const MAX_PENDING: usize = 8 * 1024 * 1024;
/// How often the writer wakes to write what has accumulated.
const TICK: Duration = Duration::from_millis(20);
static DROPPED: AtomicU64 = AtomicU64::new(0);
static PATH: OnceLock<Option<String>> = OnceLock::new();
static WRITER: OnceLock<()> = OnceLock::new();
static OUT: Mutex<Option<Box<dyn Write + Send>>> = Mutex::new(None);

/// Sets where lines go (`None`: stderr). Call once, before the first line.
pub fn init(path: Option<String>) {
    let _ = PATH.set(path);
}

/// Lines dropped because the writer fell behind.
pub fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// Writes out whatever is pending, now (used before exiting).
pub fn flush() {
    let pending = std::mem::take(&mut *lock(&BUF));
    write_out(&pending);
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Queues one line. Never blocks on I/O.
pub fn write(rec: &Record<'_>) {
    WRITER.get_or_init(spawn_writer);
    let mut buf = lock(&BUF);
    if buf.len() > MAX_PENDING {
        drop(buf);
        DROPPED.fetch_add(1, Ordering::Relaxed);
        if let Some(m) = super::metrics::get() {
            m.access_log_dropped.inc();
        }
        return;
    }
    let before = buf.len();
    if serde_json::to_writer(&mut *buf, rec).is_ok() {
        buf.push(b'\n');
    } else {
        buf.truncate(before);
    }
}

// The thread starts on first use, after Pingora has daemonized (a thread made
// before the fork would be lost).
fn spawn_writer() {
    let path = PATH.get().cloned().flatten();
    let out: Box<dyn Write + Send> = match &path {
        Some(p) => match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
        {
            Ok(f) => Box::new(f),
            Err(e) => {
                log::error!("cannot open access log {p}: {e}; writing to stderr");
                Box::new(std::io::stderr())
            }
        },
        None => Box::new(std::io::stderr()),
    };
    *lock(&OUT) = Some(out);
    let spawned = std::thread::Builder::new()
        .name("access-log".into())
        .spawn(|| loop {
            std::thread::sleep(TICK);
            flush();
        });
    if let Err(e) = spawned {
        log::error!("cannot start the access-log writer: {e}");
    }
}

fn write_out(data: &[u8]) {
    if data.is_empty() {
        return;
    }
    if let Some(out) = lock(&OUT).as_mut() {
        let _ = out.write_all(data);
        let _ = out.flush();
    }
}

/// Seconds since the Unix epoch, as a float.
pub fn now_ts() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
