//! The admin API's capture endpoints: the aggregate report of an alias,
//! the lowest-agreement pairs, one capture in full, exports, and the
//! report page. Captures are read on a connection of their own to the key
//! store's database, off the async runtime; nothing of them is reachable
//! through the client API.

use super::keys::{err, Reply};
use crate::capture::report::{self, Format};
use crate::keystore::sql::SqlError;
use std::time::Duration;

/// The report page: plain HTML and a small script, no build step.
pub(crate) const PAGE: &str = include_str!("capture.html");

/// Default `window`: one day. At most 400 days.
const DEFAULT_WINDOW: Duration = Duration::from_secs(24 * 3600);
const MAX_WINDOW: Duration = Duration::from_secs(400 * 24 * 3600);

fn query<'a>(q: &'a str, name: &str) -> Option<&'a str> {
    q.split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty())
}

fn bad(param: &str, message: &str) -> Reply {
    err(
        400,
        "invalid_request",
        &format!("{param}: {message}"),
        Some(param),
    )
}

/// `window=` as the earliest `ts_ms` it includes.
fn since(q: &str) -> Result<i64, Reply> {
    let w = match query(q, "window") {
        None => DEFAULT_WINDOW,
        Some(v) => match crate::config::duration::parse_duration(v) {
            Ok(d) if d > Duration::ZERO && d <= MAX_WINDOW => d,
            _ => {
                return Err(bad(
                    "window",
                    "must be a duration such as 1h or 7d, at most 400d",
                ))
            }
        },
    };
    let ms = i64::try_from(w.as_millis()).unwrap_or(i64::MAX);
    Ok(crate::base::clock::unix_ms().saturating_sub(ms))
}

/// `tag=key=value` (`=` may be sent as `%3D`): a declared tag key and one
/// of its values, else 400 naming `tag`.
fn tag(rt: &crate::runtime::Runtime, q: &str) -> Result<Option<report::TagFilter>, Reply> {
    let Some(v) = query(q, "tag") else {
        return Ok(None);
    };
    let v = v.replace("%3D", "=").replace("%3d", "=");
    match report::TagFilter::parse(&rt.workloads, &v) {
        Some(f) => Ok(Some(f)),
        None => Err(bad(
            "tag",
            "must be a declared tag and one of its values, such as use_case=batch",
        )),
    }
}

/// An integer parameter between `lo` and `hi`, `default` when absent.
fn int(q: &str, name: &str, default: i64, lo: i64, hi: i64) -> Result<i64, Reply> {
    match query(q, name) {
        None => Ok(default),
        Some(v) => match v.parse::<i64>() {
            Ok(n) if (lo..=hi).contains(&n) => Ok(n),
            _ => Err(bad(name, &format!("must be an integer from {lo} to {hi}"))),
        },
    }
}

/// Runs a read on a fresh connection, off the async runtime. 409 without
/// a key store, 503 while its database cannot be reached.
async fn read<T: Send + 'static>(
    f: impl FnOnce(&mut dyn crate::keystore::sql::Conn) -> Result<T, SqlError> + Send + 'static,
) -> Result<T, Reply> {
    let Some(store) = crate::keystore::global().cloned() else {
        return Err(err(
            409,
            "no_key_store",
            "Captures are kept in the key store; configure `key_store`.",
            None,
        ));
    };
    let joined = tokio::task::spawn_blocking(move || {
        let mut c = store.connect()?;
        f(&mut *c)
    })
    .await;
    match joined {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => {
            log::warn!("admin: reading captures failed: {e}");
            Err(err(
                503,
                "store_unavailable",
                "The capture store cannot be read.",
                None,
            ))
        }
        Err(_) => Err(err(500, "internal_error", "A capture read failed.", None)),
    }
}

fn known_alias(rt: &crate::runtime::Runtime, alias: &str) -> Result<(), Reply> {
    if rt.config.models.contains_key(alias) {
        Ok(())
    } else {
        Err(err(
            404,
            "not_found",
            &format!("`{alias}` is not a model alias"),
            None,
        ))
    }
}

/// `GET /admin/capture/{alias}/report?window=&tag=`.
pub(crate) async fn report(rt: &crate::runtime::Runtime, alias: &str, q: &str) -> Reply {
    let r = async {
        known_alias(rt, alias)?;
        let since = since(q)?;
        let tag = tag(rt, q)?;
        let a = alias.to_string();
        let declared = rt.workloads.clone();
        read(move |c| report::report(c, &a, since, tag.as_ref(), &declared)).await
    };
    r.await.map_or_else(|e| e, Reply::ok)
}

/// `GET /admin/capture/{alias}/pairs?below=&limit=&offset=&window=&tag=`:
/// `below` is a score from 0 to 1 (default: the agreement threshold).
pub(crate) async fn pairs(rt: &crate::runtime::Runtime, alias: &str, q: &str) -> Reply {
    let r = async {
        known_alias(rt, alias)?;
        let since = since(q)?;
        let below = match query(q, "below") {
            None => crate::capture::signals::AGREE_AT,
            Some(v) => match v.parse::<f64>() {
                Ok(x) if (0.0..=1.0).contains(&x) => x,
                _ => return Err(bad("below", "must be a score from 0 to 1")),
            },
        };
        // Scores are kept in parts per million: `below=1` lists every pair
        // short of a perfect score.
        let below_ppm = (below * 1e6).round() as i64;
        let limit = int(q, "limit", 20, 1, report::MAX_PAIRS_PAGE)?;
        let offset = int(q, "offset", 0, 0, report::MAX_REPORT_ROWS)?;
        let tag = tag(rt, q)?;
        let a = alias.to_string();
        read(move |c| report::low_pairs(c, &a, since, below_ppm, tag.as_ref(), (limit, offset)))
            .await
    };
    r.await.map_or_else(|e| e, Reply::ok)
}

/// `GET /admin/captures/{request_id}`.
pub(crate) async fn one(id: &str) -> Reply {
    let a = id.to_string();
    match read(move |c| report::one(c, &a)).await {
        Ok(Some(v)) => Reply::ok(v),
        Ok(None) => err(404, "not_found", "No capture has this request id.", None),
        Err(e) => e,
    }
}

/// An export's body, its content type and the next page's `before`.
pub(crate) struct Export {
    pub(crate) body: Vec<u8>,
    pub(crate) content_type: &'static str,
    pub(crate) next_before: Option<i64>,
}

/// `GET /admin/capture/{alias}/export?format=jsonl|csv&window=&before=&limit=`.
pub(crate) async fn export(
    rt: &crate::runtime::Runtime,
    alias: &str,
    q: &str,
) -> Result<Export, Reply> {
    known_alias(rt, alias)?;
    let since = since(q)?;
    let (format, content_type) = match query(q, "format") {
        None | Some("jsonl") => (Format::Jsonl, "application/x-ndjson"),
        Some("csv") => (Format::Csv, "text/csv; charset=utf-8"),
        Some(_) => return Err(bad("format", "must be jsonl or csv")),
    };
    let limit = int(q, "limit", 1000, 1, report::MAX_EXPORT_ROWS)?;
    let before = int(q, "before", i64::MAX, 1, i64::MAX)?;
    let a = alias.to_string();
    let (body, next_before) =
        read(move |c| report::export(c, &a, since, before, limit, format)).await?;
    Ok(Export {
        body,
        content_type,
        next_before,
    })
}
