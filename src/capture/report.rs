//! Reading captures back, for the admin API: the aggregate report of an
//! alias over a window, the pairs that agree least, one capture in full,
//! and exports (JSONL, CSV). Blocking: run on a connection of its own, off
//! the async runtime.
//!
//! Percentiles are nearest-rank over the window's rows (the value at rank
//! ⌈p·n⌉ of the sorted values). Costs are per request, over all rows of
//! the group (an unpriced answer counts 0; `unpriced` says how many).

use super::signals::AGREE_AT;
use super::store::COLUMNS;
use crate::keystore::sql::{Conn, SqlError, Val};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// Rows an aggregate reads, at most (the newest of the window).
pub const MAX_REPORT_ROWS: i64 = 100_000;
/// Pairs one page of the review list holds, at most (default 20).
pub const MAX_PAIRS_PAGE: i64 = 100;
/// Rows one export holds, at most (default 1,000).
pub const MAX_EXPORT_ROWS: i64 = 10_000;
/// Bytes one export holds, at most: rows past it are left for the next
/// page (`before`).
pub const MAX_EXPORT_BYTES: usize = 32 * 1024 * 1024;

const AGG: &str = "SELECT p_route, p_variant, s_route, p_status, s_status, p_latency_ms, p_ttft_ms, \
s_latency_ms, s_ttft_ms, p_cost_nanos, s_cost_nanos, exact_match, similarity_ppm, length_ratio_ppm, \
tools_agree, finish_agree, score_ppm, p_json_valid, s_json_valid, p_schema_valid, s_schema_valid \
FROM captures WHERE alias = $1 AND ts_ms >= $2 ORDER BY seq DESC LIMIT $3";

fn int(v: &Val) -> Option<i64> {
    v.int()
}

fn text(v: &Val) -> Option<String> {
    v.text().map(str::to_string)
}

/// The nearest-rank percentiles p50, p95, p99 of `v` (sorted here).
fn percentiles(v: &mut [i64]) -> Value {
    if v.is_empty() {
        return Value::Null;
    }
    v.sort_unstable();
    let at = |p: f64| {
        let rank = (p * v.len() as f64).ceil() as usize;
        v[rank.clamp(1, v.len()) - 1]
    };
    json!({"p50": at(0.50), "p95": at(0.95), "p99": at(0.99)})
}

fn rate(n: u64, of: u64) -> Value {
    if of == 0 {
        Value::Null
    } else {
        json!(n as f64 / of as f64)
    }
}

fn mean(sum: i64, n: u64, scale: f64) -> Value {
    if n == 0 {
        Value::Null
    } else {
        json!(sum as f64 / n as f64 / scale)
    }
}

/// Counts of one boolean column: (true, known).
#[derive(Default)]
struct Flag(u64, u64);

impl Flag {
    fn add(&mut self, v: Option<i64>) {
        if let Some(b) = v {
            self.1 += 1;
            self.0 += u64::from(b != 0);
        }
    }
    fn rate(&self) -> Value {
        rate(self.0, self.1)
    }
}

/// One answer side's numbers.
#[derive(Default)]
struct Numbers {
    requests: u64,
    ok: u64,
    latency: Vec<i64>,
    ttft: Vec<i64>,
    cost_nanos: i64,
    unpriced: u64,
    json: Flag,
    schema: Flag,
}

impl Numbers {
    fn add(&mut self, status: Option<i64>, lat: Option<i64>, ttft: Option<i64>, cost: Option<i64>) {
        self.requests += 1;
        if status.is_some_and(|s| (200..300).contains(&s)) {
            self.ok += 1;
        }
        self.latency.extend(lat);
        self.ttft.extend(ttft);
        match cost {
            Some(c) => self.cost_nanos = self.cost_nanos.saturating_add(c),
            None => self.unpriced += 1,
        }
    }

    fn cost_per_request(&self) -> Value {
        mean(self.cost_nanos, self.requests, 1e9)
    }

    fn view(&mut self) -> Value {
        json!({
            "requests": self.requests,
            "ok": self.ok,
            "latency_ms": percentiles(&mut self.latency),
            "ttft_ms": percentiles(&mut self.ttft),
            "cost_per_request_usd": self.cost_per_request(),
            "unpriced": self.unpriced,
            "json_valid_rate": self.json.rate(),
            "schema_valid_rate": self.schema.rate(),
        })
    }
}

/// A primary route and its shadow route's pairs.
#[derive(Default)]
struct Pairs {
    pairs: u64,
    /// Captured with a shadow answer that was not a success.
    shadow_failed: u64,
    agreeing: u64,
    exact: u64,
    score: i64,
    similarity: i64,
    length_ratio: i64,
    finish: Flag,
    tools: Flag,
    primary: Numbers,
    shadow: Numbers,
}

/// `GET /admin/capture/{alias}/report`: the aggregate of `alias` since
/// `since_ms`.
pub fn report(c: &mut dyn Conn, alias: &str, since_ms: i64) -> Result<Value, SqlError> {
    let mut routes: BTreeMap<(String, Option<String>), Numbers> = BTreeMap::new();
    let mut pairs: BTreeMap<(String, String), Pairs> = BTreeMap::new();
    let mut captured = 0u64;
    c.query_each(
        AGG,
        &[
            Val::from(alias),
            Val::Int(since_ms),
            Val::Int(MAX_REPORT_ROWS),
        ],
        &mut |r| {
            captured += 1;
            let g = |i: usize| r.get(i).and_then(int);
            let route = r.first().and_then(text).unwrap_or_default();
            let variant = r.get(1).and_then(text);
            let p = routes.entry((route.clone(), variant)).or_default();
            p.add(g(3), g(5), g(6), g(9));
            p.json.add(g(17));
            p.schema.add(g(19));
            let Some(sr) = r.get(2).and_then(text) else {
                return Ok(());
            };
            let e = pairs.entry((route, sr)).or_default();
            let Some(score) = g(16) else {
                e.shadow_failed += 1;
                return Ok(());
            };
            e.pairs += 1;
            e.agreeing += u64::from(score as f64 >= AGREE_AT * 1e6);
            e.exact += u64::from(g(11) == Some(1));
            e.score = e.score.saturating_add(score);
            e.similarity = e.similarity.saturating_add(g(12).unwrap_or(0));
            e.length_ratio = e.length_ratio.saturating_add(g(13).unwrap_or(0));
            e.tools.add(g(14));
            e.finish.add(g(15));
            e.primary.add(g(3), g(5), g(6), g(9));
            e.primary.json.add(g(17));
            e.primary.schema.add(g(19));
            e.shadow.add(g(4), g(7), g(8), g(10));
            e.shadow.json.add(g(18));
            e.shadow.schema.add(g(20));
            Ok(())
        },
    )?;
    let routes: Vec<Value> = routes
        .into_iter()
        .map(|((route, variant), mut n)| {
            let mut v = n.view();
            v["route"] = json!(route);
            v["variant"] = json!(variant);
            v
        })
        .collect();
    let pairs: Vec<Value> = pairs
        .into_iter()
        .map(|((route, shadow_route), mut e)| {
            let n = e.pairs;
            let switch = match (e.primary.cost_per_request(), e.shadow.cost_per_request()) {
                (Value::Number(a), Value::Number(b)) => {
                    json!(b.as_f64().unwrap_or(0.0) - a.as_f64().unwrap_or(0.0))
                }
                _ => Value::Null,
            };
            json!({
                "route": route,
                "shadow_route": shadow_route,
                "pairs": n,
                "shadow_failed": e.shadow_failed,
                "agreeing": e.agreeing,
                "agreement_rate": rate(e.agreeing, n),
                "exact_rate": rate(e.exact, n),
                "mean_score": mean(e.score, n, 1e6),
                "mean_similarity": mean(e.similarity, n, 1e6),
                "mean_length_ratio": mean(e.length_ratio, n, 1e6),
                "finish_agree_rate": e.finish.rate(),
                "tool_agree_rate": e.tools.rate(),
                "primary": e.primary.view(),
                "shadow": e.shadow.view(),
                // What switching to the shadow route would change per
                // request (negative: it saves), and over these pairs.
                "switch_cost_per_request_usd": switch,
                "switch_cost_usd": mean(e.shadow.cost_nanos.saturating_sub(e.primary.cost_nanos), 1, 1e9),
            })
        })
        .collect();
    Ok(json!({
        "alias": alias,
        "since_ms": since_ms,
        "captured": captured,
        "agree_at": AGREE_AT,
        "routes": routes,
        "pairs": pairs,
    }))
}

/// A row as an object of the named columns.
fn object(names: &[&str], r: &[Val]) -> Value {
    let mut m = Map::new();
    for (n, v) in names.iter().zip(r) {
        m.insert(
            (*n).to_string(),
            match v {
                Val::Null => Value::Null,
                Val::Int(i) => json!(i),
                Val::Text(t) => json!(t),
            },
        );
    }
    Value::Object(m)
}

const PAIR_COLUMNS: &[&str] = &[
    "seq",
    "request_id",
    "ts_ms",
    "p_route",
    "s_route",
    "score_ppm",
    "similarity_ppm",
    "length_ratio_ppm",
    "exact_match",
    "finish_agree",
    "tools_agree",
    "request",
    "p_text",
    "s_text",
    "p_finish",
    "s_finish",
];

/// `GET /admin/capture/{alias}/pairs`: compared pairs scoring below
/// `below_ppm`, lowest first (oldest first among equals), one page.
pub fn low_pairs(
    c: &mut dyn Conn,
    alias: &str,
    since_ms: i64,
    below_ppm: i64,
    limit: i64,
    offset: i64,
) -> Result<Value, SqlError> {
    let filter = "FROM captures WHERE alias = $1 AND ts_ms >= $2 AND score_ppm IS NOT NULL AND score_ppm < $3";
    let params = [Val::from(alias), Val::Int(since_ms), Val::Int(below_ppm)];
    let total = c
        .query(&format!("SELECT COUNT(*) {filter}"), &params)?
        .first()
        .and_then(|r| r.first())
        .and_then(Val::int)
        .unwrap_or(0);
    let sql = format!(
        "SELECT {} {filter} ORDER BY score_ppm ASC, seq ASC LIMIT $4 OFFSET $5",
        PAIR_COLUMNS.join(", ")
    );
    let mut all = params.to_vec();
    all.extend([Val::Int(limit), Val::Int(offset)]);
    let rows: Vec<Value> = c
        .query(&sql, &all)?
        .iter()
        .map(|r| object(PAIR_COLUMNS, r))
        .collect();
    Ok(json!({"alias": alias, "total": total, "offset": offset, "pairs": rows}))
}

fn all_columns() -> Vec<&'static str> {
    let mut v = vec!["seq"];
    v.extend_from_slice(COLUMNS);
    v
}

/// `GET /admin/captures/{request_id}`: one capture, every column.
pub fn one(c: &mut dyn Conn, request_id: &str) -> Result<Option<Value>, SqlError> {
    let cols = all_columns();
    let sql = format!(
        "SELECT {} FROM captures WHERE request_id = $1",
        cols.join(", ")
    );
    Ok(c.query(&sql, &[Val::from(request_id)])?
        .first()
        .map(|r| object(&cols, r)))
}

/// Export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Jsonl,
    Csv,
}

fn csv_field(out: &mut Vec<u8>, v: &Val) {
    match v {
        Val::Null => {}
        Val::Int(i) => out.extend_from_slice(i.to_string().as_bytes()),
        Val::Text(t) => {
            out.push(b'"');
            out.extend_from_slice(t.replace('"', "\"\"").as_bytes());
            out.push(b'"');
        }
    }
}

/// `GET /admin/capture/{alias}/export`: rows of `alias` since `since_ms`
/// (below `before`, a `seq`), newest first, every column. Returns the
/// body and the `seq` to pass as `before` for the next page, if any.
pub fn export(
    c: &mut dyn Conn,
    alias: &str,
    since_ms: i64,
    before: i64,
    limit: i64,
    format: Format,
) -> Result<(Vec<u8>, Option<i64>), SqlError> {
    let cols = all_columns();
    let sql = format!(
        "SELECT {} FROM captures WHERE alias = $1 AND ts_ms >= $2 AND seq < $3 ORDER BY seq DESC LIMIT $4",
        cols.join(", ")
    );
    let mut out = Vec::new();
    if format == Format::Csv {
        out.extend_from_slice(cols.join(",").as_bytes());
        out.push(b'\n');
    }
    let mut last = None;
    let mut full = false;
    let mut rows = 0i64;
    c.query_each(
        &sql,
        &[
            Val::from(alias),
            Val::Int(since_ms),
            Val::Int(before),
            Val::Int(limit),
        ],
        &mut |r| {
            rows += 1;
            if full {
                return Ok(());
            }
            match format {
                Format::Jsonl => {
                    out.extend_from_slice(object(&cols, r).to_string().as_bytes());
                }
                Format::Csv => {
                    for (i, v) in r.iter().enumerate() {
                        if i > 0 {
                            out.push(b',');
                        }
                        csv_field(&mut out, v);
                    }
                }
            }
            out.push(b'\n');
            last = r.first().and_then(Val::int);
            full = out.len() >= MAX_EXPORT_BYTES;
            Ok(())
        },
    )?;
    let more = (full || rows == limit).then_some(last).flatten();
    Ok((out, more))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut v: Vec<i64> = (1..=100).rev().collect();
        assert_eq!(
            percentiles(&mut v),
            json!({"p50": 50, "p95": 95, "p99": 99})
        );
        assert_eq!(percentiles(&mut [7]), json!({"p50": 7, "p95": 7, "p99": 7}));
        assert_eq!(percentiles(&mut []), Value::Null);
    }
}
