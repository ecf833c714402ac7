//! One JSON line per request, written by a background thread so the request
//! path never blocks on stderr or disk. If the queue is full the line is
//! dropped and counted, rather than slowing requests.

use serde::Serialize;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::OnceLock;

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

static SINK: OnceLock<SyncSender<Vec<u8>>> = OnceLock::new();
static DROPPED: AtomicU64 = AtomicU64::new(0);
static PATH: OnceLock<Option<String>> = OnceLock::new();

/// Sets where lines go (`None`: stderr). Call once, before the first line.
pub fn init(path: Option<String>) {
    let _ = PATH.set(path);
}

/// Lines dropped because the writer fell behind.
pub fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// Waits (briefly) until queued lines are written; used before exiting.
pub fn flush() {
    for _ in 0..100 {
        if QUEUED.load(Ordering::Relaxed) == 0 {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

static QUEUED: AtomicU64 = AtomicU64::new(0);

/// Queues one line. Never blocks.
pub fn write(rec: &Record<'_>) {
    let Ok(mut line) = serde_json::to_vec(rec) else {
        return;
    };
    line.push(b'\n');
    let tx = SINK.get_or_init(spawn_writer);
    QUEUED.fetch_add(1, Ordering::Relaxed);
    match tx.try_send(line) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
            QUEUED.fetch_sub(1, Ordering::Relaxed);
            DROPPED.fetch_add(1, Ordering::Relaxed);
            if let Some(m) = super::metrics::get() {
                m.access_log_dropped.inc();
            }
        }
    }
}

// The thread starts on first use, after Pingora has daemonized (a thread made
// before the fork would be lost).
fn spawn_writer() -> SyncSender<Vec<u8>> {
    let (tx, rx) = sync_channel::<Vec<u8>>(16 * 1024);
    let path = PATH.get().cloned().flatten();
    let spawned = std::thread::Builder::new()
        .name("access-log".into())
        .spawn(move || run_writer(rx, path));
    if let Err(e) = spawned {
        log::error!("cannot start the access-log writer: {e}");
    }
    tx
}

fn run_writer(rx: Receiver<Vec<u8>>, path: Option<String>) {
    let mut out: Box<dyn Write> = match &path {
        Some(p) => match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
        {
            Ok(f) => Box::new(std::io::BufWriter::new(f)),
            Err(e) => {
                log::error!("cannot open access log {p}: {e}; writing to stderr");
                Box::new(std::io::BufWriter::new(std::io::stderr()))
            }
        },
        None => Box::new(std::io::BufWriter::new(std::io::stderr())),
    };
    while let Ok(line) = rx.recv() {
        let _ = out.write_all(&line);
        let mut n = 1;
        // Drain what is queued, then flush once.
        while let Ok(more) = rx.try_recv() {
            let _ = out.write_all(&more);
            n += 1;
        }
        let _ = out.flush();
        QUEUED.fetch_sub(n, Ordering::Relaxed);
    }
}

/// Seconds since the Unix epoch, as a float.
pub fn now_ts() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
