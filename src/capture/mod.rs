//! Output capture (issue 20): a sample of an alias's requests is kept with
//! its answer and, for shadow traffic, the shadow's answer, so the two can
//! be compared and reviewed.
//!
//! - The request path decides once, at admission, whether a request is
//!   captured ([`Plan::sampled`]); only then does it copy the bytes the
//!   client gets into a [`Tap`]. An alias without `capture` pays one
//!   `Option` check.
//! - At the end of the request (and of its shadow copy) a [`Job`] goes into
//!   a bounded queue ([`send`]), never waiting: a full queue or a store
//!   that is down drops the capture and counts it
//!   (`tollgate_capture_dropped_total{reason}`).
//! - The writer thread ([`store`]) pairs a primary with its shadow,
//!   assembles streams ([`assemble`]), redacts ([`redact`]), compares
//!   ([`signals`]) and writes one row per request into the key store's
//!   database; it also enforces `capture_retention`.
//! - [`report`] reads the rows back for the admin API: aggregates per
//!   alias and route, the lowest-agreement pairs, one pair, exports.

pub mod assemble;
pub(crate) mod metrics;
pub mod redact;
pub mod report;
pub mod signals;
pub(crate) mod store;

use bytes::Bytes;
use regex::Regex;
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock};

/// Jobs waiting for the writer, at most.
pub const QUEUE: usize = 1024;
/// Largest response kept per answer before assembly (raw bytes of a
/// stream are several times its text): at least 256 KiB, 16 × `max_bytes`,
/// at most 8 MiB. Beyond it the answer is marked truncated.
const RAW_FLOOR: usize = 256 * 1024;
const RAW_CEILING: usize = 8 * 1024 * 1024;

/// Whether requests of this endpoint are captured: the text-generating
/// ones (chat, completions, responses, messages).
pub fn captures(ep: crate::base::endpoint::Endpoint) -> bool {
    use crate::base::endpoint::Endpoint::*;
    matches!(ep, ChatCompletions | Completions | Responses | Messages)
}

/// An alias's compiled `capture` settings.
#[derive(Debug)]
pub struct Plan {
    pub sample: f64,
    pub max_bytes: usize,
    pub redact: Vec<Regex>,
}

impl Plan {
    /// Compiles validated settings (`config::validate` checked the
    /// patterns; one that fails here is left out).
    pub fn build(c: &crate::config::Capture) -> Plan {
        Plan {
            sample: c.sample,
            max_bytes: c.max_bytes,
            redact: c
                .redact
                .iter()
                .filter_map(|p| crate::config::compile_pattern(p).ok())
                .collect(),
        }
    }

    /// Whether this request is captured (drawn once per request).
    pub fn sampled(&self) -> bool {
        self.sample > 0.0 && (self.sample >= 1.0 || fastrand::f64() < self.sample)
    }

    /// A tap sized for this alias.
    pub fn tap(&self) -> Tap {
        Tap {
            raw: Vec::new(),
            limit: self
                .max_bytes
                .saturating_mul(16)
                .clamp(RAW_FLOOR, RAW_CEILING),
            cut: false,
        }
    }
}

/// The bytes of one answer as they went by, bounded.
#[derive(Debug, Default)]
pub struct Tap {
    raw: Vec<u8>,
    limit: usize,
    cut: bool,
}

impl Tap {
    /// Copies one chunk (up to the limit).
    pub fn push(&mut self, chunk: Option<&Bytes>) {
        let Some(c) = chunk else { return };
        let room = self.limit.saturating_sub(self.raw.len());
        if c.len() > room {
            self.cut = true;
        }
        self.raw.extend_from_slice(&c[..c.len().min(room)]);
    }

    /// The bytes and whether some were left out.
    pub fn into_parts(self) -> (Vec<u8>, bool) {
        (self.raw, self.cut)
    }
}

/// One answer and what it took.
#[derive(Debug, Default)]
pub struct Side {
    /// `provider/model`.
    pub route: String,
    /// The A/B variant that picked the route, if any.
    pub variant: Option<String>,
    /// The status the answer came with (0: no answer).
    pub status: u16,
    pub latency_ms: u64,
    pub ttft_ms: Option<u64>,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    pub cost_usd: Option<f64>,
    pub stream: bool,
    pub raw: Vec<u8>,
    pub raw_cut: bool,
}

/// A captured request and its answer.
#[derive(Debug)]
pub struct Primary {
    pub request_id: String,
    pub alias: String,
    pub endpoint: &'static str,
    /// The request's declared tags, `key=value,…` in declared-key order
    /// (`Declared::tag_string`); empty when it has none.
    pub tags: String,
    pub ts_ms: i64,
    /// The request body as sent upstream (Chat Completions shape).
    pub body: Bytes,
    pub plan: Arc<Plan>,
    pub side: Side,
    /// A shadow copy was sent: the writer waits for its answer.
    pub shadow: bool,
}

/// What the writer is handed.
#[derive(Debug)]
pub enum Job {
    Primary(Box<Primary>),
    /// A shadow copy's answer, for the primary of `request_id`.
    Shadow {
        request_id: String,
        side: Box<Side>,
    },
}

static SENDER: OnceLock<Mutex<Option<SyncSender<Job>>>> = OnceLock::new();

fn sender() -> &'static Mutex<Option<SyncSender<Job>>> {
    SENDER.get_or_init(|| Mutex::new(None))
}

/// Hands a job to the writer, never waiting. Dropped (and counted) when
/// there is no writer, when its queue is full, or when it has stopped.
pub fn send(job: Job) {
    let guard = sender().lock().unwrap_or_else(|p| p.into_inner());
    let reason = match guard.as_ref() {
        None => "no_store",
        Some(tx) => match tx.try_send(job) {
            Ok(()) => return,
            Err(TrySendError::Full(_)) => "queue_full",
            Err(TrySendError::Disconnected(_)) => "store_down",
        },
    };
    drop(guard);
    dropped(reason, 1);
}

/// Counts captures that were not written.
pub(crate) fn dropped(reason: &str, n: u64) {
    if let Some(m) = metrics::get() {
        m.dropped.with_label_values(&[reason]).inc_by(n);
    }
}

/// The retention in force (set at start and on every reload).
static RETENTION: Mutex<Option<crate::config::CaptureRetention>> = Mutex::new(None);

/// Applies a config's `capture_retention` (start-up and reloads).
pub fn configure(cfg: &crate::config::Config) {
    *RETENTION.lock().unwrap_or_else(|p| p.into_inner()) = Some(cfg.capture_retention.clone());
    // Every capture-enabled alias shows in the metrics from the start.
    if let Some(m) = metrics::get() {
        for (alias, _) in cfg.models.iter().filter(|(_, m)| m.capture.is_some()) {
            m.written.with_label_values(&[alias]);
        }
    }
}

fn retention() -> crate::config::CaptureRetention {
    RETENTION
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tap_keeps_bytes_up_to_its_limit_and_says_it_cut() {
        let plan = Plan {
            sample: 1.0,
            max_bytes: 64,
            redact: vec![],
        };
        let mut t = plan.tap();
        assert_eq!(t.limit, RAW_FLOOR);
        t.push(Some(&Bytes::from(vec![b'a'; RAW_FLOOR - 1])));
        t.push(None);
        t.push(Some(&Bytes::from_static(b"xyz")));
        let (raw, cut) = t.into_parts();
        assert_eq!((raw.len(), cut, raw.last()), (RAW_FLOOR, true, Some(&b'x')));
    }

    fn job(id: &str) -> Job {
        Job::Shadow {
            request_id: id.into(),
            side: Box::default(),
        }
    }

    /// The one test that touches the global queue (tests run in parallel).
    #[test]
    fn send_never_waits_and_counts_what_it_drops() {
        let m = metrics::get().unwrap();
        let n = |r: &str| m.dropped.with_label_values(&[r]).get();
        let (none, full, down) = (n("no_store"), n("queue_full"), n("store_down"));
        send(job("a"));
        assert_eq!(n("no_store"), none + 1);
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        *sender().lock().unwrap() = Some(tx);
        send(job("b"));
        send(job("c"));
        assert_eq!(n("queue_full"), full + 1);
        assert!(matches!(rx.try_recv(), Ok(Job::Shadow { request_id, .. }) if request_id == "b"));
        drop(rx);
        send(job("d"));
        assert_eq!(n("store_down"), down + 1);
        *sender().lock().unwrap() = None;
    }

    #[test]
    fn sample_zero_never_captures_and_one_always_does() {
        let mut p = Plan {
            sample: 0.0,
            max_bytes: 64,
            redact: vec![],
        };
        assert!((0..1000).all(|_| !p.sampled()));
        p.sample = 1.0;
        assert!((0..1000).all(|_| p.sampled()));
    }
}
