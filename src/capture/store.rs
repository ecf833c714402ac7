//! The capture writer: a thread that takes jobs off the queue, pairs each
//! primary with its shadow's answer, turns them into rows (assembled,
//! redacted, truncated, compared) and writes them in one transaction per
//! batch. It also deletes what `capture_retention` no longer keeps. A
//! database error drops the batch (counted, `reason="store"`) and the next
//! batch reconnects; the request path never waits for any of it.

use super::assemble::{assemble, Output};
use super::redact::{redact, truncate};
use super::signals::{self, Shape, Signals, Wanted};
use super::{dropped, metrics, Job, Primary, Side};
use crate::keystore::sql::{in_tx, Conn, Dialect, SqlError, Val};
use crate::keystore::KeyStore;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a primary waits for its shadow's answer before it is written
/// without one (and a shadow's answer for its primary before it is dropped).
pub(crate) const PAIR_WAIT: Duration = Duration::from_secs(300);
/// Requests waiting for their other half, at most.
const MAX_PENDING: usize = 4096;
/// Jobs written per transaction, at most.
const BATCH: usize = 256;
/// How long the writer waits for a locked SQLite database.
const BUSY_MS: u32 = 250;

/// The Pingora background service that runs the writer thread.
pub(crate) struct Writer {
    pub(crate) store: Arc<KeyStore>,
}

#[async_trait]
impl BackgroundService for Writer {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let (tx, rx) = std::sync::mpsc::sync_channel(super::QUEUE);
        let store = self.store.clone();
        let spawned = std::thread::Builder::new()
            .name("capture writer".into())
            .spawn(move || run(&store, &rx));
        if let Err(e) = spawned {
            log::error!("capture: cannot start the writer: {e}; captures are dropped");
            return;
        }
        *super::sender().lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
        let _ = shutdown.changed().await;
        // Dropping the sender ends the thread once the queue is empty.
        *super::sender().lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// One request waiting for its other half.
struct Pending {
    primary: Option<Box<Primary>>,
    shadow: Option<Box<Side>>,
    since: Instant,
}

fn run(store: &KeyStore, rx: &Receiver<Job>) {
    let mut conn: Option<Box<dyn Conn>> = None;
    let mut pending: HashMap<String, Pending> = HashMap::new();
    let mut last_retention = Instant::now();
    let mut open = true;
    while open {
        let mut jobs = Vec::new();
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(j) => jobs.push(j),
            Err(RecvTimeoutError::Timeout) => {}
            // Stopping: what waits for its other half is written as it is.
            Err(RecvTimeoutError::Disconnected) => open = false,
        }
        while jobs.len() < BATCH {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let mut ready = Vec::new();
        for job in jobs {
            pair(job, &mut pending, &mut ready);
        }
        expire(
            &mut pending,
            &mut ready,
            if open { PAIR_WAIT } else { Duration::ZERO },
        );
        if !ready.is_empty() {
            let rows: Vec<Row> = ready
                .into_iter()
                .map(|(p, s)| row(&p, s.as_deref()))
                .collect();
            write(store, &mut conn, &rows);
        }
        let r = super::retention();
        if last_retention.elapsed() >= r.interval.get() {
            last_retention = Instant::now();
            if let Some(c) = connection(store, &mut conn) {
                if let Err(e) = retain(c, &r, crate::base::clock::unix_ms()) {
                    log::warn!("capture: retention failed: {e}");
                    conn = None;
                }
            }
        }
    }
}

/// Files a job; a request whose halves are all here moves to `ready`.
fn pair(
    job: Job,
    pending: &mut HashMap<String, Pending>,
    ready: &mut Vec<(Box<Primary>, Option<Box<Side>>)>,
) {
    let (id, primary, shadow) = match job {
        Job::Primary(p) if !p.shadow => {
            ready.push((p, None));
            return;
        }
        Job::Primary(p) => (p.request_id.clone(), Some(p), None),
        Job::Shadow { request_id, side } => (request_id, None, Some(side)),
    };
    if !pending.contains_key(&id) && pending.len() >= MAX_PENDING {
        dropped("pending_full", 1);
        return;
    }
    let e = pending.entry(id.clone()).or_insert_with(|| Pending {
        primary: None,
        shadow: None,
        since: Instant::now(),
    });
    if primary.is_some() {
        e.primary = primary;
    }
    if shadow.is_some() {
        e.shadow = shadow;
    }
    if e.primary.is_some() && e.shadow.is_some() {
        if let Some(Pending {
            primary: Some(p),
            shadow,
            ..
        }) = pending.remove(&id)
        {
            ready.push((p, shadow));
        }
    }
}

/// Primaries that waited `wait` for a shadow are written without one;
/// shadows whose primary never came are dropped.
fn expire(
    pending: &mut HashMap<String, Pending>,
    ready: &mut Vec<(Box<Primary>, Option<Box<Side>>)>,
    wait: Duration,
) {
    let old: Vec<String> = pending
        .iter()
        .filter(|(_, p)| p.since.elapsed() >= wait)
        .map(|(k, _)| k.clone())
        .collect();
    for k in old {
        match pending.remove(&k) {
            Some(Pending {
                primary: Some(p), ..
            }) => ready.push((p, None)),
            Some(_) => dropped("unpaired", 1),
            None => {}
        }
    }
}

fn connection<'c>(
    store: &KeyStore,
    conn: &'c mut Option<Box<dyn Conn>>,
) -> Option<&'c mut Box<dyn Conn>> {
    if conn.is_none() {
        match store.connect() {
            Ok(mut c) => {
                if c.dialect() == Dialect::Sqlite {
                    let _ = c.batch(&format!("PRAGMA busy_timeout = {BUSY_MS}"));
                }
                *conn = Some(c);
            }
            Err(e) => {
                log::warn!("capture: cannot reach the store: {e}");
                return None;
            }
        }
    }
    conn.as_mut()
}

fn write(store: &KeyStore, conn: &mut Option<Box<dyn Conn>>, rows: &[Row]) {
    let n = rows.len() as u64;
    let Some(c) = connection(store, conn) else {
        dropped("store", n);
        return;
    };
    let result = in_tx(&mut **c, |c| {
        for r in rows {
            c.exec(INSERT, &r.vals)?;
        }
        Ok::<(), SqlError>(())
    });
    match result {
        Ok(()) => {
            for r in rows {
                r.count();
            }
        }
        Err(e) => {
            log::warn!("capture: writing {n} captures failed: {e}; dropped");
            dropped("store", n);
            *conn = None;
        }
    }
}

/// Deletes rows older than `max_age` and all but the newest `max_rows`.
pub(crate) fn retain(
    c: &mut Box<dyn Conn>,
    r: &crate::config::CaptureRetention,
    now_ms: i64,
) -> Result<(), SqlError> {
    let age_ms = i64::try_from(r.max_age.get().as_millis()).unwrap_or(i64::MAX);
    let by_age = c.exec(
        "DELETE FROM captures WHERE ts_ms < $1",
        &[Val::Int(now_ms.saturating_sub(age_ms))],
    )?;
    let keep = i64::try_from(r.max_rows).unwrap_or(i64::MAX);
    let cut = c
        .query(
            "SELECT seq FROM captures ORDER BY seq DESC LIMIT 1 OFFSET $1",
            &[Val::Int(keep)],
        )?
        .first()
        .and_then(|row| row.first())
        .and_then(Val::int);
    let by_rows = match cut {
        Some(cut) => c.exec("DELETE FROM captures WHERE seq <= $1", &[Val::Int(cut)])?,
        None => 0,
    };
    if let Some(m) = metrics::get() {
        m.deleted.with_label_values(&["age"]).inc_by(by_age);
        m.deleted.with_label_values(&["rows"]).inc_by(by_rows);
    }
    Ok(())
}

/// The columns written, in the order of [`Row::vals`].
pub(crate) const COLUMNS: &[&str] = &[
    "request_id",
    "ts_ms",
    "alias",
    "endpoint",
    "request",
    "json_requested",
    "p_route",
    "p_variant",
    "p_status",
    "p_text",
    "p_tools",
    "p_finish",
    "p_latency_ms",
    "p_ttft_ms",
    "p_prompt_tokens",
    "p_completion_tokens",
    "p_cost_nanos",
    "p_truncated",
    "p_json_valid",
    "p_schema_valid",
    "s_route",
    "s_status",
    "s_text",
    "s_tools",
    "s_finish",
    "s_latency_ms",
    "s_ttft_ms",
    "s_prompt_tokens",
    "s_completion_tokens",
    "s_cost_nanos",
    "s_truncated",
    "s_json_valid",
    "s_schema_valid",
    "exact_match",
    "similarity_ppm",
    "length_ratio_ppm",
    "tools_agree",
    "finish_agree",
    "score_ppm",
    "tags",
];

static INSERT: &str = "INSERT INTO captures (request_id, ts_ms, alias, endpoint, request, json_requested, \
p_route, p_variant, p_status, p_text, p_tools, p_finish, p_latency_ms, p_ttft_ms, p_prompt_tokens, \
p_completion_tokens, p_cost_nanos, p_truncated, p_json_valid, p_schema_valid, s_route, s_status, s_text, \
s_tools, s_finish, s_latency_ms, s_ttft_ms, s_prompt_tokens, s_completion_tokens, s_cost_nanos, \
s_truncated, s_json_valid, s_schema_valid, exact_match, similarity_ppm, length_ratio_ppm, tools_agree, \
finish_agree, score_ppm, tags) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, \
$16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29, $30, $31, $32, $33, $34, $35, \
$36, $37, $38, $39, $40) ON CONFLICT (request_id) DO NOTHING";

/// One row to write, and what its metrics need.
pub(crate) struct Row {
    pub(crate) vals: Vec<Val>,
    alias: String,
    route: String,
    variant: String,
    cost: Option<f64>,
    shadow_route: Option<String>,
    signals: Option<Signals>,
}

impl Row {
    fn count(&self) {
        let Some(m) = metrics::get() else { return };
        m.written.with_label_values(&[&self.alias]).inc();
        let labels = [
            self.alias.as_str(),
            self.route.as_str(),
            self.variant.as_str(),
        ];
        m.requests.with_label_values(&labels).inc();
        if let Some(c) = self.cost {
            m.cost.with_label_values(&labels).inc_by(c);
        }
        if let (Some(s), Some(sr)) = (&self.signals, &self.shadow_route) {
            let labels = [self.alias.as_str(), self.route.as_str(), sr.as_str()];
            m.pairs.with_label_values(&labels).inc();
            if s.agrees() {
                m.agreements.with_label_values(&labels).inc();
            }
            m.score.with_label_values(&labels).inc_by(s.score);
        }
    }
}

/// What the request asked, as text: its `messages` (or `prompt`, `input`)
/// as JSON.
fn request_text(body: &Value) -> String {
    ["messages", "prompt", "input"]
        .iter()
        .find_map(|k| body.get(*k))
        .map(|v| serde_json::to_string(v).unwrap_or_default())
        .unwrap_or_default()
}

/// An answer, assembled and redacted (text and tool arguments).
fn answer(side: &Side, plan: &super::Plan) -> Output {
    let mut o = assemble(&side.raw, side.stream);
    if let std::borrow::Cow::Owned(t) = redact(&o.text, &plan.redact) {
        o.text = t;
    }
    for t in &mut o.tools {
        if let std::borrow::Cow::Owned(a) = redact(&t.arguments, &plan.redact) {
            t.arguments = a;
        }
    }
    o
}

fn ok(side: &Side) -> bool {
    (200..300).contains(&side.status)
}

fn bool_val(b: Option<bool>) -> Val {
    Val::opt_int(b.map(i64::from))
}

fn ppm(x: f64) -> i64 {
    (x * 1_000_000.0).round() as i64
}

fn int(n: Option<u64>) -> Val {
    Val::opt_int(n.map(|n| i64::try_from(n).unwrap_or(i64::MAX)))
}

fn nanos(usd: Option<f64>) -> Val {
    Val::opt_int(usd.map(|u| (u * 1e9).round() as i64))
}

/// Builds the row of a request and its shadow's answer (if any).
pub(crate) fn row(p: &Primary, s: Option<&Side>) -> Row {
    let plan = &p.plan;
    let max = plan.max_bytes;
    let body: Value = serde_json::from_slice(&p.body).unwrap_or(Value::Null);
    let wanted = Wanted::of(&body);
    let req = redact(&request_text(&body), &plan.redact).into_owned();
    let (req, _) = truncate(req, max);
    let po = answer(&p.side, plan);
    let so = s.map(|s| answer(s, plan));
    let pshape = signals::shape(&po.text, &wanted);
    let sshape = so
        .as_ref()
        .map_or(Shape::default(), |o| signals::shape(&o.text, &wanted));
    let sig = match (s, &so) {
        (Some(side), Some(o)) if ok(side) && ok(&p.side) => {
            Some(signals::compare(&po, o, pshape, sshape))
        }
        _ => None,
    };
    let tools = |o: &Output| serde_json::to_string(&o.tools).unwrap_or_else(|_| "[]".into());
    let (ptext, pcut) = truncate(po.text.clone(), max);
    let mut vals = vec![
        Val::Text(p.request_id.clone()),
        Val::Int(p.ts_ms),
        Val::Text(p.alias.clone()),
        Val::Text(p.endpoint.to_string()),
        Val::Text(req),
        Val::Int(i64::from(wanted.json())),
        Val::Text(p.side.route.clone()),
        Val::opt_text(p.side.variant.as_deref()),
        Val::Int(i64::from(p.side.status)),
        Val::Text(ptext),
        Val::Text(truncate(tools(&po), max).0),
        Val::opt_text(po.finish.as_deref()),
        int(Some(p.side.latency_ms)),
        int(p.side.ttft_ms),
        int(p.side.prompt_tokens),
        int(p.side.completion_tokens),
        nanos(p.side.cost_usd),
        Val::Int(i64::from(pcut || p.side.raw_cut)),
        bool_val(pshape.json_valid),
        bool_val(pshape.schema_valid),
    ];
    match (s, &so) {
        (Some(side), Some(o)) => {
            let (stext, scut) = truncate(o.text.clone(), max);
            vals.extend([
                Val::Text(side.route.clone()),
                Val::Int(i64::from(side.status)),
                Val::Text(stext),
                Val::Text(truncate(tools(o), max).0),
                Val::opt_text(o.finish.as_deref()),
                int(Some(side.latency_ms)),
                int(side.ttft_ms),
                int(side.prompt_tokens),
                int(side.completion_tokens),
                nanos(side.cost_usd),
                Val::Int(i64::from(scut || side.raw_cut)),
                bool_val(sshape.json_valid),
                bool_val(sshape.schema_valid),
            ]);
        }
        _ => vals.extend(std::iter::repeat_n(Val::Null, 13)),
    }
    match &sig {
        Some(g) => vals.extend([
            Val::Int(i64::from(g.exact)),
            Val::Int(ppm(g.similarity)),
            Val::Int(ppm(g.length_ratio)),
            bool_val(g.tools_agree),
            Val::Int(i64::from(g.finish_agree)),
            Val::Int(ppm(g.score)),
        ]),
        None => vals.extend(std::iter::repeat_n(Val::Null, 6)),
    }
    vals.push(Val::Text(p.tags.clone()));
    Row {
        vals,
        alias: p.alias.clone(),
        route: p.side.route.clone(),
        variant: p.side.variant.clone().unwrap_or_else(|| "none".into()),
        cost: p.side.cost_usd,
        shadow_route: s.map(|s| s.route.clone()),
        signals: sig,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::Plan;
    use bytes::Bytes;

    fn primary(id: &str, shadow: bool, text: &str) -> Box<Primary> {
        Box::new(Primary {
            request_id: id.into(),
            alias: "chat".into(),
            endpoint: "chat",
            tags: "use_case=batch".into(),
            ts_ms: 1000,
            body: Bytes::from_static(
                br#"{"model":"chat","messages":[{"role":"user","content":"mail me at bob@example.com, key sk-abcdefghijklmnopqrst"}]}"#,
            ),
            plan: Arc::new(Plan {
                sample: 1.0,
                max_bytes: 80,
                redact: vec![regex::Regex::new("SECRET[0-9]+").unwrap()],
            }),
            side: side(text),
            shadow,
        })
    }

    fn side(text: &str) -> Side {
        Side {
            route: "a/m".into(),
            status: 200,
            latency_ms: 12,
            raw: serde_json::to_vec(&serde_json::json!({"choices":[{"message":{"content": text},"finish_reason":"stop"}]})).unwrap(),
            ..Side::default()
        }
    }

    #[test]
    fn a_row_is_redacted_truncated_and_compared() {
        let p = primary("r1", true, "the answer is SECRET42 and 42");
        let s = side("the answer is 42");
        let r = row(&p, Some(&s));
        assert_eq!(r.vals.len(), COLUMNS.len());
        let col = |name: &str| &r.vals[COLUMNS.iter().position(|c| *c == name).unwrap()];
        assert_eq!(
            col("request"),
            &Val::Text(
                r#"[{"content":"mail me at [REDACTED], key [REDACTED]","role":"user"}]"#.into()
            )
        );
        assert_eq!(
            col("p_text"),
            &Val::Text("the answer is [REDACTED] and 42".into())
        );
        // {the, answer, is, redacted, and, 42} against {the, answer, is, 42}.
        assert_eq!(col("similarity_ppm"), &Val::Int(666_667));
        assert_eq!(col("score_ppm"), &Val::Int(666_667));
        assert_eq!(col("exact_match"), &Val::Int(0));
        assert_eq!(col("p_finish"), &Val::Text("stop".into()));
        assert_eq!(col("tags"), &Val::Text("use_case=batch".into()));
        let long = row(&primary("r2", false, &"x".repeat(100)), None);
        let text = long.vals[COLUMNS.iter().position(|c| *c == "p_text").unwrap()]
            .text()
            .unwrap()
            .to_string();
        assert_eq!(text, format!("{}…[truncated 20 bytes]", "x".repeat(80)));
        assert_eq!(long.vals[17], Val::Int(1), "p_truncated");
        assert_eq!(long.vals[33], Val::Null, "no signals without a shadow");
    }

    #[test]
    fn halves_pair_in_either_order_and_expire() {
        let mut pending = HashMap::new();
        let mut ready = Vec::new();
        pair(
            Job::Shadow {
                request_id: "a".into(),
                side: Box::new(side("x")),
            },
            &mut pending,
            &mut ready,
        );
        assert!(ready.is_empty());
        pair(
            Job::Primary(primary("a", true, "x")),
            &mut pending,
            &mut ready,
        );
        assert_eq!(ready.len(), 1);
        assert!(ready[0].1.is_some());
        pair(
            Job::Primary(primary("b", false, "x")),
            &mut pending,
            &mut ready,
        );
        assert_eq!(ready.len(), 2);
        pair(
            Job::Primary(primary("c", true, "x")),
            &mut pending,
            &mut ready,
        );
        pair(
            Job::Shadow {
                request_id: "d".into(),
                side: Box::new(side("x")),
            },
            &mut pending,
            &mut ready,
        );
        assert_eq!((ready.len(), pending.len()), (2, 2));
        expire(&mut pending, &mut ready, Duration::ZERO);
        assert_eq!((ready.len(), pending.len()), (3, 0));
        assert!(ready[2].1.is_none());
    }

    #[test]
    fn retention_deletes_by_age_then_keeps_the_newest_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        let mut c: Box<dyn Conn> =
            Box::new(crate::keystore::sql::Sqlite::open(path.to_str().unwrap()).unwrap());
        crate::keystore::migrate::run(&mut *c).unwrap();
        for (i, ts) in [100, 5_000, 6_000, 7_000, 8_000].iter().enumerate() {
            let mut p = primary(&format!("r{i}"), false, "t");
            p.ts_ms = *ts;
            c.exec(INSERT, &row(&p, None).vals).unwrap();
        }
        let r = crate::config::CaptureRetention {
            max_age: crate::config::duration::HumanDuration::from_secs(5),
            max_rows: 2,
            interval: crate::config::duration::HumanDuration::from_secs(1),
        };
        retain(&mut c, &r, 10_000).unwrap();
        let left: Vec<String> = c
            .query("SELECT request_id FROM captures ORDER BY seq", &[])
            .unwrap()
            .iter()
            .map(|r| r[0].text().unwrap().to_string())
            .collect();
        assert_eq!(left, ["r3", "r4"]);
    }
}
