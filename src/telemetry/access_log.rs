//! One JSON line per request. Lines are serialized into a shared buffer and
//! written by a background thread every few milliseconds, so the request path
//! never blocks on stderr or disk and never wakes a thread. If the writer
//! falls far behind, lines are dropped and counted rather than slowing
//! requests.

pub use crate::telemetry::record::Record;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, UNIX_EPOCH};

impl Record<'_> {
    /// Appends the record as one JSON object (no newline). Written by hand:
    /// it runs once per request, and a generic serializer with float
    /// formatting and owned strings cost several times as much.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut w = Line { out, first: true };
        let since_epoch = self.ts.duration_since(UNIX_EPOCH).unwrap_or_default();
        w.fixed("ts", micros(since_epoch), 6);
        w.str("request_id", Some(self.request_id));
        w.str("method", Some(self.method));
        w.str("endpoint", Some(self.endpoint));
        w.str("key", Some(self.key));
        w.str("model", Some(self.model));
        w.str("provider", Some(self.provider));
        w.str("upstream_model", Some(self.upstream_model));
        w.key("backend");
        match self.backend {
            Some(b) => {
                w.out.push(b'"');
                addr(w.out, b);
                w.out.push(b'"');
            }
            None => w.out.extend_from_slice(b"null"),
        }
        if let Some(k) = self.provider_key {
            w.str("provider_key", Some(k));
        }
        w.raw("stream", if self.stream { "true" } else { "false" });
        w.int("status", Some(u64::from(self.status)));
        w.ms("duration_ms", Some(self.duration));
        w.ms("upstream_ms", self.upstream);
        w.int("attempts", Some(u64::from(self.attempts)));
        w.list("attempt_log", self.attempt_log.as_deref());
        w.str("error", self.error);
        w.ms("ttft_ms", self.ttft);
        let u = self.usage.as_ref();
        w.int("prompt_tokens", u.map(|u| u.prompt));
        w.int("completion_tokens", u.map(|u| u.completion));
        w.int("cached_tokens", u.map(|u| u.cached));
        w.int("reasoning_tokens", u.map(|u| u.reasoning));
        w.str("usage_source", self.usage_source.map(|s| s.label()));
        w.key("cost_usd");
        match self.cost_usd.and_then(serde_json::Number::from_f64) {
            // The shortest form that reads back as the same f64.
            Some(c) => {
                let _ = write!(w.out, "{c}");
            }
            None => w.out.extend_from_slice(b"null"),
        }
        w.raw("unpriced", if self.unpriced { "true" } else { "false" });
        w.raw("partial", if self.partial { "true" } else { "false" });
        if self.units.images > 0 {
            w.int("images", Some(self.units.images));
        }
        if self.units.characters > 0 {
            w.int("characters", Some(self.units.characters));
        }
        if self.units.seconds > 0 {
            w.int("audio_seconds", Some(self.units.seconds));
        }
        w.str("cache", self.cache);
        if let Some(c) = self.saved_usd.and_then(serde_json::Number::from_f64) {
            w.key("saved_usd");
            let _ = write!(w.out, "{c}");
        }
        w.str("hedge", Some(self.hedge.unwrap_or("none")));
        w.str("shadow", self.shadow);
        w.str("strategy", self.strategy);
        w.str("variant", self.variant);
        w.str("route", self.route);
        w.list("candidates", self.candidates.as_deref());
        w.list("skipped", self.skipped.as_deref());
        if let Some((declared, tags)) = self.workload {
            // Only the tags the request has; `{}` for none.
            w.key("tags");
            w.out.push(b'{');
            for (i, (k, v)) in declared.set_pairs(&tags).enumerate() {
                if i > 0 {
                    w.out.push(b',');
                }
                json_str(w.out, k);
                w.out.push(b':');
                json_str(w.out, v);
            }
            w.out.push(b'}');
        }
        if self.captured {
            // Written only when true: absent means not captured.
            w.raw("captured", "true");
        }
        w.out.push(b'}');
    }
}

/// Writes the members of one JSON object.
struct Line<'o> {
    out: &'o mut Vec<u8>,
    first: bool,
}

impl Line<'_> {
    fn key(&mut self, k: &str) {
        self.out.push(if self.first { b'{' } else { b',' });
        self.first = false;
        self.out.push(b'"');
        self.out.extend_from_slice(k.as_bytes());
        self.out.extend_from_slice(b"\":");
    }
    fn raw(&mut self, k: &str, v: &str) {
        self.key(k);
        self.out.extend_from_slice(v.as_bytes());
    }
    fn str(&mut self, k: &str, v: Option<&str>) {
        self.key(k);
        match v {
            Some(v) => json_str(self.out, v),
            None => self.out.extend_from_slice(b"null"),
        }
    }
    fn list<S: AsRef<str>>(&mut self, k: &str, v: Option<&[S]>) {
        self.key(k);
        match v {
            Some(list) => {
                self.out.push(b'[');
                for (i, a) in list.iter().enumerate() {
                    if i > 0 {
                        self.out.push(b',');
                    }
                    json_str(self.out, a.as_ref());
                }
                self.out.push(b']');
            }
            None => self.out.extend_from_slice(b"null"),
        }
    }
    fn int(&mut self, k: &str, v: Option<u64>) {
        self.key(k);
        match v {
            Some(n) => self
                .out
                .extend_from_slice(itoa::Buffer::new().format(n).as_bytes()),
            None => self.out.extend_from_slice(b"null"),
        }
    }
    /// A duration in milliseconds with microsecond precision.
    fn ms(&mut self, k: &str, v: Option<Duration>) {
        match v {
            Some(d) => self.fixed(k, micros(d), 3),
            None => self.raw(k, "null"),
        }
    }
    /// `n / 10^decimals` written with exactly `decimals` digits after the point.
    fn fixed(&mut self, k: &str, n: u64, decimals: u32) {
        self.key(k);
        let scale = 10u64.pow(decimals);
        let mut buf = itoa::Buffer::new();
        self.out.extend_from_slice(buf.format(n / scale).as_bytes());
        self.out.push(b'.');
        let frac = buf.format(n % scale + scale);
        // `frac` is "1" followed by exactly `decimals` digits.
        self.out.extend_from_slice(&frac.as_bytes()[1..]);
    }
}

/// A duration in whole microseconds, in 64 bits (u128 arithmetic is slow;
/// 2^64 µs is 584,000 years).
fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Appends `ip:port` (`[ip]:port` for IPv6). No character needs escaping.
fn addr(out: &mut Vec<u8>, a: SocketAddr) {
    let mut buf = itoa::Buffer::new();
    match a {
        SocketAddr::V4(v4) => {
            for (i, octet) in v4.ip().octets().iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                out.extend_from_slice(buf.format(*octet).as_bytes());
            }
        }
        SocketAddr::V6(v6) => {
            let _ = write!(out, "[{}]", v6.ip());
        }
    }
    out.push(b':');
    out.extend_from_slice(buf.format(a.port()).as_bytes());
}

/// Appends `s` as a JSON string.
fn json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    if !s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
        return;
    }
    let mut start = 0;
    for (i, &b) in s.as_bytes().iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&s.as_bytes()[start..i]);
        if esc.is_empty() {
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.extend_from_slice(esc);
        }
        start = i + 1;
    }
    out.extend_from_slice(&s.as_bytes()[start..]);
    out.push(b'"');
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
    rec.encode(&mut buf);
    buf.push(b'\n');
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounting::Usage;
    use serde_json::Value;

    fn record(attempt_log: Option<Vec<String>>, backend: Option<SocketAddr>) -> Record<'static> {
        Record {
            ts: UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456),
            request_id: "id-1",
            method: "POST",
            endpoint: "chat",
            key: "team \"a\"\\\n\u{1}é",
            model: "fast",
            provider: "p",
            upstream_model: "m",
            backend,
            provider_key: None,
            stream: true,
            status: 200,
            duration: Duration::from_micros(12_345),
            upstream: Some(Duration::from_micros(7)),
            attempts: 2,
            attempt_log,
            error: None,
            ttft: None,
            usage: Some(Usage {
                prompt: 10,
                completion: 5,
                cached: 2,
                reasoning: 1,
                cache_write: 0,
            }),
            usage_source: Some(crate::accounting::UsageSource::Reported),
            cost_usd: Some(1.25e-6),
            unpriced: false,
            partial: true,
            units: crate::accounting::units::Units {
                images: 2,
                characters: 0,
                seconds: 0,
            },
            cache: None,
            saved_usd: None,
            hedge: None,
            shadow: None,
            strategy: Some("weighted"),
            variant: None,
            route: Some("p/m"),
            candidates: Some(vec!["p/m", "q/n"]),
            skipped: Some(vec!["r/o:region".into()]),
            workload: None,
            captured: false,
        }
    }

    fn parse(rec: &Record<'_>) -> Value {
        let mut out = Vec::new();
        rec.encode(&mut out);
        serde_json::from_slice(&out).expect("valid JSON")
    }

    #[test]
    fn encodes_every_field_as_json() {
        let v4: SocketAddr = "10.0.0.5:8000".parse().expect("addr");
        let v = parse(&record(
            Some(vec!["p@x:ok".into(), "q:\"e\"".into()]),
            Some(v4),
        ));
        assert_eq!(v["ts"].as_f64(), Some(1_700_000_000.123456));
        assert_eq!(v["key"], "team \"a\"\\\n\u{1}é");
        assert_eq!(v["backend"], "10.0.0.5:8000");
        assert_eq!(v["stream"], true);
        assert_eq!(v["status"], 200);
        assert_eq!(v["duration_ms"].as_f64(), Some(12.345));
        assert_eq!(v["upstream_ms"].as_f64(), Some(0.007));
        assert_eq!(v["attempt_log"][1], "q:\"e\"");
        assert_eq!(v["error"], Value::Null);
        assert_eq!(v["ttft_ms"], Value::Null);
        assert_eq!(v["prompt_tokens"], 10);
        assert_eq!(v["reasoning_tokens"], 1);
        assert_eq!(v["usage_source"], "reported");
        assert_eq!(v["cost_usd"].as_f64(), Some(1.25e-6));
        assert_eq!(v["partial"], true);
        assert_eq!(v["images"], 2);
        assert_eq!(v.get("characters"), None);
        assert_eq!(v["strategy"], "weighted");
        assert_eq!(v["variant"], Value::Null);
        assert_eq!(v["candidates"][1], "q/n");
        assert_eq!(v["skipped"][0], "r/o:region");
        assert_eq!(v["cache"], Value::Null, "no cache on the alias");
        assert!(v.get("saved_usd").is_none(), "only on a hit");
        // 33 fields always, `images` here (it is written only when non-zero).
        assert_eq!(v.as_object().map(|o| o.len()), Some(34));
    }

    #[test]
    fn absent_values_are_null_and_ipv6_is_bracketed() {
        let v6: SocketAddr = "[::1]:443".parse().expect("addr");
        let mut rec = record(None, Some(v6));
        rec.usage = None;
        rec.cost_usd = None;
        let v = parse(&rec);
        assert_eq!(v["backend"], "[::1]:443");
        assert_eq!(v["attempt_log"], Value::Null);
        assert_eq!(v["prompt_tokens"], Value::Null);
        assert_eq!(v["cost_usd"], Value::Null);
        assert_eq!(parse(&record(None, None))["backend"], Value::Null);
    }
}
