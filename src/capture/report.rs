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
tools_agree, finish_agree, score_ppm, p_json_valid, s_json_valid, p_schema_valid, s_schema_valid, tags \
FROM captures WHERE alias = $1 AND ts_ms >= $2";

/// A tag filter (`?tag=use_case=batch`): one declared `key=value`,
/// checked by the caller ([`crate::workload::Declared::pair`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagFilter(String);

impl TagFilter {
    /// `pair` if it names a declared tag key and one of its values.
    pub fn parse(declared: &crate::workload::Declared, pair: &str) -> Option<TagFilter> {
        declared.pair(pair).map(|_| TagFilter(pair.to_string()))
    }

    /// The SQL condition on `tags` (with placeholder `$n`) and its
    /// parameter: the comma-delimited column holds the pair as a whole
    /// item. Tag names and values are letters, digits and `- _ .`; `_` is
    /// escaped so it matches itself only.
    fn sql(&self, n: usize) -> (String, Val) {
        let pattern = format!("%,{},%", self.0.replace('_', "\\_"));
        (
            format!(" AND (',' || tags || ',') LIKE ${n} ESCAPE '\\'"),
            Val::Text(pattern),
        )
    }
}

/// `filter`'s condition and parameter (placeholder `$n`), if any.
fn tag_condition(filter: Option<&TagFilter>, n: usize) -> (String, Option<Val>) {
    match filter {
        Some(f) => {
            let (sql, v) = f.sql(n);
            (sql, Some(v))
        }
        None => (String::new(), None),
    }
}

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

/// One declared tag value's rows in a report (`by_tag`).
#[derive(Default)]
struct TagCell {
    requests: u64,
    pairs: u64,
    agreeing: u64,
    primary_nanos: i64,
    shadow_nanos: i64,
}

impl TagCell {
    fn view(&self) -> Value {
        json!({
            "requests": self.requests,
            "pairs": self.pairs,
            "agreeing": self.agreeing,
            "agreement_rate": rate(self.agreeing, self.pairs),
            "primary_cost_per_request_usd": mean(self.primary_nanos, self.pairs, 1e9),
            "shadow_cost_per_request_usd": mean(self.shadow_nanos, self.pairs, 1e9),
        })
    }
}

/// The `by_tag` cells a row's `tags` column counts in: per declared key
/// and value, `(key index, value index - 1)`. Undeclared keys and values
/// (`other`, or a tag since removed from the config) count nowhere.
fn tag_cells(declared: &crate::workload::Declared, tags: &str) -> Vec<(usize, usize)> {
    tags.split(',')
        .filter_map(|pair| declared.pair(pair))
        .map(|(k, v)| (k, usize::from(v).saturating_sub(1)))
        .collect()
}

/// `GET /admin/capture/{alias}/report`: the aggregate of `alias` since
/// `since_ms`, only rows with the tag `filter` when given, with a `by_tag`
/// breakdown over the `declared` tags' values.
pub fn report(
    c: &mut dyn Conn,
    alias: &str,
    since_ms: i64,
    filter: Option<&TagFilter>,
    declared: &crate::workload::Declared,
) -> Result<Value, SqlError> {
    let mut routes: BTreeMap<(String, Option<String>), Numbers> = BTreeMap::new();
    let mut pairs: BTreeMap<(String, String), Pairs> = BTreeMap::new();
    let mut by_tag: Vec<Vec<TagCell>> = declared
        .keys
        .iter()
        .map(|k| k.values.iter().map(|_| TagCell::default()).collect())
        .collect();
    let mut captured = 0u64;
    let (cond, tag_param) = tag_condition(filter, 4);
    let sql = format!("{AGG}{cond} ORDER BY seq DESC LIMIT $3");
    let mut params = vec![
        Val::from(alias),
        Val::Int(since_ms),
        Val::Int(MAX_REPORT_ROWS),
    ];
    params.extend(tag_param);
    c.query_each(&sql, &params, &mut |r| {
        captured += 1;
        let g = |i: usize| r.get(i).and_then(int);
        let cells = tag_cells(declared, r.get(21).and_then(Val::text).unwrap_or(""));
        let mut cell = |f: &dyn Fn(&mut TagCell)| {
            for (k, v) in &cells {
                if let Some(c) = by_tag.get_mut(*k).and_then(|vs| vs.get_mut(*v)) {
                    f(c);
                }
            }
        };
        cell(&|c| c.requests += 1);
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
        let agrees = score as f64 >= AGREE_AT * 1e6;
        let (pc, sc) = (g(9).unwrap_or(0), g(10).unwrap_or(0));
        cell(&|c| {
            c.pairs += 1;
            c.agreeing += u64::from(agrees);
            c.primary_nanos = c.primary_nanos.saturating_add(pc);
            c.shadow_nanos = c.shadow_nanos.saturating_add(sc);
        });
        e.pairs += 1;
        e.agreeing += u64::from(agrees);
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
    })?;
    let by_tag: Map<String, Value> = declared
        .keys
        .iter()
        .zip(&by_tag)
        .map(|(key, cells)| {
            let values: Map<String, Value> = key
                .values
                .iter()
                .zip(cells)
                .map(|(v, c)| (v.to_string(), c.view()))
                .collect();
            (key.name.to_string(), Value::Object(values))
        })
        .collect();
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
        "tag": filter.map(|f| f.0.as_str()),
        "captured": captured,
        "agree_at": AGREE_AT,
        "routes": routes,
        "pairs": pairs,
        "by_tag": by_tag,
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
    "tags",
];

/// `GET /admin/capture/{alias}/pairs`: compared pairs scoring below
/// `below_ppm`, lowest first (oldest first among equals), one page; only
/// rows with the tag `tag` when given.
pub fn low_pairs(
    c: &mut dyn Conn,
    alias: &str,
    since_ms: i64,
    below_ppm: i64,
    tag: Option<&TagFilter>,
    (limit, offset): (i64, i64),
) -> Result<Value, SqlError> {
    let (cond, tag_param) = tag_condition(tag, 4);
    let filter = format!("FROM captures WHERE alias = $1 AND ts_ms >= $2 AND score_ppm IS NOT NULL AND score_ppm < $3{cond}");
    let mut params = vec![Val::from(alias), Val::Int(since_ms), Val::Int(below_ppm)];
    params.extend(tag_param);
    let (lim, off) = (params.len() + 1, params.len() + 2);
    let total = c
        .query(&format!("SELECT COUNT(*) {filter}"), &params)?
        .first()
        .and_then(|r| r.first())
        .and_then(Val::int)
        .unwrap_or(0);
    let sql = format!(
        "SELECT {} {filter} ORDER BY score_ppm ASC, seq ASC LIMIT ${lim} OFFSET ${off}",
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

    fn declared() -> crate::workload::Declared {
        let w: crate::config::workloads::WorkloadsSection = serde_yaml::from_str(
            "tags: { use_case: [batch, eval], usecase: [batch], priority: [interactive] }",
        )
        .unwrap();
        crate::workload::Declared::compile(&w)
    }

    #[test]
    fn a_tag_filter_matches_whole_items_of_the_tags_column_only() {
        let d = declared();
        assert!(TagFilter::parse(&d, "use_case=nope").is_none());
        assert!(TagFilter::parse(&d, "team=x").is_none());
        assert!(TagFilter::parse(&d, "use_case").is_none());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        let mut c: Box<dyn Conn> =
            Box::new(crate::keystore::sql::Sqlite::open(path.to_str().unwrap()).unwrap());
        crate::keystore::migrate::run(&mut *c).unwrap();
        // `_` is escaped: `use_case=batch` does not match `useXcase=batch`.
        for (id, tags) in [
            ("a", "use_case=batch"),
            ("b", "priority=interactive,use_case=batch"),
            ("c", "use_case=batchy"),
            ("d", "useXcase=batch"),
            ("e", ""),
            ("f", "priority=interactive,use_case=eval"),
        ] {
            c.exec(
                "INSERT INTO captures (request_id, ts_ms, alias, endpoint, request, json_requested, \
                 p_route, p_status, p_text, p_tools, p_latency_ms, p_truncated, tags) \
                 VALUES ($1, 1, 'm', 'chat', '', 0, 'r', 200, '', '[]', 5, 0, $2)",
                &[Val::from(id), Val::from(tags)],
            )
            .unwrap();
        }
        let f = TagFilter::parse(&d, "use_case=batch").unwrap();
        let r = report(&mut *c, "m", 0, Some(&f), &d).unwrap();
        assert_eq!(r["captured"], 2);
        assert_eq!(r["by_tag"]["use_case"]["batch"]["requests"], 2);
        assert_eq!(r["by_tag"]["priority"]["interactive"]["requests"], 1);
        assert_eq!(r["by_tag"]["usecase"]["batch"]["requests"], 0);
        let r = report(&mut *c, "m", 0, None, &d).unwrap();
        assert_eq!(r["captured"], 6);
        assert_eq!(r["by_tag"]["use_case"]["eval"]["requests"], 1);
        assert_eq!(r["by_tag"]["priority"]["interactive"]["requests"], 2);
        assert_eq!(
            tag_cells(&d, "use_case=other,nope,=,use_case=eval"),
            [(1, 1)]
        );
    }

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
