//! The admin API on its own listener (`admin_listen`), behind `admin_key`:
//! usage, limits, the running config (secrets redacted), reload, and the
//! key store's keys, teams and audit log. One route table ([`ROUTES`])
//! drives both the dispatch and the OpenAPI document.

use crate::governance::{ledger, Level, Metric};
pub(crate) mod capture;
pub(crate) mod keys;
pub(crate) mod openapi;

use crate::live::Shared;
use crate::reload::Reloader;
use async_trait::async_trait;
use http::{Method, Response};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// Serves `/admin/*`.
pub struct AdminApp {
    pub shared: Arc<Shared>,
    pub reloader: Reloader,
}

const REDACTED: &str = crate::config::url::REDACTED;

fn reply(status: u16, body: Value) -> Response<Vec<u8>> {
    let body = body.to_string().into_bytes();
    let len = body.len();
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::CONTENT_LENGTH, len)
        .body(body)
        .unwrap_or_else(|_| Response::new(Vec::new()))
}

fn error(status: u16, code: &str, message: &str) -> Response<Vec<u8>> {
    reply(
        status,
        json!({"error": {"message": message, "type": "admin_error", "param": null, "code": code}}),
    )
}

/// Whether the request carries the admin key (compared in constant time).
fn authorized(headers: &http::HeaderMap, admin_key: Option<&str>) -> bool {
    let Some(expected) = admin_key else {
        return false;
    };
    let Some(given) = crate::auth::presented_key(headers) else {
        return false;
    };
    let a = crate::auth::digest(given);
    let b = crate::auth::digest(expected.as_bytes());
    a.ct_eq(&b).into()
}

/// What an admin route does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Usage,
    Limits,
    Config,
    Reload,
    OpenApi,
    ListKeys,
    CreateKey,
    GetKey,
    UpdateKey,
    RotateKey,
    RevokeKey,
    KeyUsage,
    ListTeams,
    CreateTeam,
    GetTeam,
    UpdateTeam,
    DeleteTeam,
    Audit,
    CaptureReport,
    CapturePairs,
    CaptureExport,
    CaptureGet,
    CapturePage,
}

/// One admin route. The dispatcher and the OpenAPI document both read
/// [`ROUTES`], so the document cannot miss a route.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    pub method: &'static str,
    /// Segments in braces (`{name}`) match one percent-encoded segment.
    pub path: &'static str,
    pub op: Op,
    pub summary: &'static str,
    /// The request body's schema in the document, if it takes one.
    pub body: Option<&'static str>,
    /// The success status.
    pub ok: u16,
    /// Query parameters it reads.
    pub query: &'static [&'static str],
}

const fn route(
    method: &'static str,
    path: &'static str,
    op: Op,
    summary: &'static str,
    body: Option<&'static str>,
    ok: u16,
    query: &'static [&'static str],
) -> Route {
    Route {
        method,
        path,
        op,
        summary,
        body,
        ok,
        query,
    }
}

/// Every admin route (one line each: a table, kept as one).
#[rustfmt::skip]
pub const ROUTES: &[Route] = &[
    route("GET", "/admin/usage", Op::Usage, "Usage per key, team and model in a window (this instance's ledger).", None, 200, &["team", "key", "window"]),
    route("GET", "/admin/limits", Op::Limits, "Every configured limit with its current value.", None, 200, &[]),
    route("GET", "/admin/config", Op::Config, "The running config, secrets redacted.", None, 200, &[]),
    route("POST", "/admin/reload", Op::Reload, "Reload the config file.", None, 200, &[]),
    route("GET", "/admin/openapi.json", Op::OpenApi, "This document.", None, 200, &[]),
    route("GET", "/admin/keys", Op::ListKeys, "List keys (config and store), by name, a page at a time.", None, 200, &["team", "after", "limit"]),
    route("POST", "/admin/keys", Op::CreateKey, "Create a key; the answer holds its secret, shown once.", Some("CreateKey"), 201, &[]),
    route("GET", "/admin/keys/{name}", Op::GetKey, "A key (never its secret).", None, 200, &[]),
    route("PATCH", "/admin/keys/{name}", Op::UpdateKey, "Change a store key's fields (null clears an optional one).", Some("UpdateKey"), 200, &[]),
    route("POST", "/admin/keys/{name}/rotate", Op::RotateKey, "Give a store key a new secret; the old one works for `grace`.", Some("RotateKey"), 200, &[]),
    route("POST", "/admin/keys/{name}/revoke", Op::RevokeKey, "Revoke a store key, effective at once.", None, 200, &[]),
    route("GET", "/admin/keys/{name}/usage", Op::KeyUsage, "A key's usage and its limits' current values.", None, 200, &["window"]),
    route("GET", "/admin/teams", Op::ListTeams, "List teams (config and store).", None, 200, &["after", "limit"]),
    route("POST", "/admin/teams", Op::CreateTeam, "Create a team.", Some("CreateTeam"), 201, &[]),
    route("GET", "/admin/teams/{name}", Op::GetTeam, "A team.", None, 200, &[]),
    route("PATCH", "/admin/teams/{name}", Op::UpdateTeam, "Change a store team's limits, budgets, tier, regions or metadata.", Some("UpdateTeam"), 200, &[]),
    route("DELETE", "/admin/teams/{name}", Op::DeleteTeam, "Delete a store team (409 while a key that is not revoked uses it).", None, 200, &[]),
    route("GET", "/admin/audit", Op::Audit, "Admin writes, newest first.", None, 200, &["before", "limit"]),
    route("GET", "/admin/capture/{name}/report", Op::CaptureReport, "Captured answers of an alias compared: per route and variant, per primary/shadow route pair, and per workload tag value (`by_tag`); `tag=key=value` reads one tag value's rows.", None, 200, &["window", "tag"]),
    route("GET", "/admin/capture/{name}/pairs", Op::CapturePairs, "Compared pairs of an alias scoring below `below`, lowest first.", None, 200, &["below", "limit", "offset", "window", "tag"]),
    route("GET", "/admin/capture/{name}/export", Op::CaptureExport, "An alias's captures, newest first, as JSONL or CSV.", None, 200, &["format", "window", "before", "limit"]),
    route("GET", "/admin/captures/{name}", Op::CaptureGet, "One capture, by request id, in full.", None, 200, &[]),
    route("GET", "/admin/capture.html", Op::CapturePage, "The capture report page (static; it reads the admin key from the URL fragment).", None, 200, &[]),
];

/// How a path matched the table.
pub enum Matched {
    Found(&'static Route, Option<String>),
    /// The path exists for these methods only.
    WrongMethod(Vec<&'static str>),
    Unknown,
}

/// Finds the route of `method` and `path`; the `{name}` segment comes back
/// percent-decoded.
pub fn find(method: &str, path: &str) -> Matched {
    let mut allowed = Vec::new();
    for r in ROUTES {
        if let Some(param) = path_matches(r.path, path) {
            if r.method == method {
                return Matched::Found(r, param);
            }
            allowed.push(r.method);
        }
    }
    if allowed.is_empty() {
        Matched::Unknown
    } else {
        Matched::WrongMethod(allowed)
    }
}

/// `Some(param)` when `path` fits `pattern`.
fn path_matches(pattern: &str, path: &str) -> Option<Option<String>> {
    let mut want = pattern.split('/');
    let mut got = path.split('/');
    let mut param = None;
    loop {
        match (want.next(), got.next()) {
            (None, None) => return Some(param),
            (Some(w), Some(g)) if w.starts_with('{') => {
                if g.is_empty() {
                    return None;
                }
                param = Some(
                    percent_encoding::percent_decode_str(g)
                        .decode_utf8()
                        .ok()?
                        .into_owned(),
                );
            }
            (Some(w), Some(g)) if w == g => {}
            _ => return None,
        }
    }
}

/// Reads the request body, up to [`keys::MAX_BODY_BYTES`] (413 past it).
async fn read_body(session: &mut ServerSession) -> Result<Vec<u8>, keys::Reply> {
    let too_large = || {
        keys::err(
            413,
            "request_too_large",
            &format!(
                "The body is larger than the limit of {} bytes.",
                keys::MAX_BODY_BYTES
            ),
            None,
        )
    };
    let declared = session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > keys::MAX_BODY_BYTES as u64) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > keys::MAX_BODY_BYTES {
                    return Err(too_large());
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(_) => {
                return Err(keys::err(
                    400,
                    "invalid_request",
                    "The request body could not be read.",
                    None,
                ))
            }
        }
    }
}

fn to_response(r: keys::Reply) -> Response<Vec<u8>> {
    let retry = r.status == 503;
    let mut resp = reply(r.status, r.body);
    if retry {
        resp.headers_mut().insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_static("1"),
        );
    }
    resp
}

/// Who made an admin call, for the audit log: the one admin credential.
const ACTOR: &str = "admin_key";

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let resp = self.handle(session).await;
        if !session.is_body_done() {
            // Unread body bytes must not be read as the next request.
            session.set_keepalive(None);
        }
        resp
    }
}

impl AdminApp {
    async fn handle(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let rt = self.shared.load();
        let req = session.req_header();
        if req.uri.path() == "/admin/capture.html" && req.method == Method::GET {
            // Static, without data: it calls the other endpoints with the
            // admin key it reads from the URL fragment (never sent here).
            return page();
        }
        if !authorized(&req.headers, rt.config.admin_key.as_deref()) {
            return error(
                401,
                "invalid_admin_key",
                "Send the admin key as `Authorization: Bearer <admin_key>`.",
            );
        }
        let path = req.uri.path().to_string();
        let query = req.uri.query().unwrap_or("").to_string();
        let method = req.method.clone();
        let (route, param) = match find(method.as_str(), &path) {
            Matched::Found(r, p) => (r, p.unwrap_or_default()),
            Matched::WrongMethod(allowed) => {
                return error(
                    405,
                    "method_not_allowed",
                    &format!("Use {}.", allowed.join(" or ")),
                )
            }
            Matched::Unknown => {
                return error(
                    404,
                    "unknown_url",
                    "Unknown admin endpoint; GET /admin/openapi.json lists them.",
                )
            }
        };
        let body = if route.body.is_some() || method == Method::POST || method == Method::PATCH {
            match read_body(session).await {
                Ok(b) => b,
                Err(r) => return to_response(r),
            }
        } else {
            Vec::new()
        };
        let cfg = &rt.config;
        let name = param.as_str();
        let r = match route.op {
            Op::Usage => return usage(&rt, &query),
            Op::Limits => return limits(&rt).await,
            Op::Config => return reply(200, redacted_config(cfg)),
            Op::Reload => {
                return match self.reloader.reload_and_record().await {
                    Ok(()) => reply(200, json!({"reloaded": true})),
                    Err(e) => reply(422, json!({"reloaded": false, "error": e})),
                }
            }
            Op::OpenApi => keys::Reply::ok(openapi::document()),
            Op::ListKeys => keys::list_keys(cfg, &query).await,
            Op::CreateKey => keys::create_key(cfg, ACTOR, &body).await,
            Op::GetKey => keys::get_key(cfg, name).await,
            Op::UpdateKey => keys::update_key(cfg, ACTOR, name, &body).await,
            Op::RotateKey => keys::rotate_key(cfg, ACTOR, name, &body).await,
            Op::RevokeKey => keys::revoke_key(cfg, ACTOR, name).await,
            Op::KeyUsage => keys::key_usage(&rt, name, &query).await,
            Op::ListTeams => keys::list_teams(cfg, &query),
            Op::CreateTeam => keys::create_team(cfg, ACTOR, &body).await,
            Op::GetTeam => keys::get_team(cfg, name),
            Op::UpdateTeam => keys::update_team(cfg, ACTOR, name, &body).await,
            Op::DeleteTeam => keys::delete_team(cfg, ACTOR, name).await,
            Op::Audit => keys::audit(&query).await,
            Op::CaptureReport => capture::report(&rt, name, &query).await,
            Op::CapturePairs => capture::pairs(&rt, name, &query).await,
            Op::CaptureGet => capture::one(name).await,
            Op::CaptureExport => {
                return match capture::export(&rt, name, &query).await {
                    Ok(e) => export(e),
                    Err(r) => to_response(r),
                }
            }
            Op::CapturePage => return page(),
        };
        to_response(r)
    }
}

/// The report page.
fn page() -> Response<Vec<u8>> {
    let body = capture::PAGE.as_bytes().to_vec();
    Response::builder()
        .status(200)
        .header(http::header::CONTENT_TYPE, "text/html; charset=utf-8")
        .header(http::header::CONTENT_LENGTH, body.len())
        .header(http::header::CACHE_CONTROL, "no-store")
        .header("referrer-policy", "no-referrer")
        .header(
            "content-security-policy",
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:",
        )
        .body(body)
        .unwrap_or_else(|_| Response::new(Vec::new()))
}

/// An export's answer: its body, and `x-next-before` when more rows are left.
fn export(e: capture::Export) -> Response<Vec<u8>> {
    let mut b = Response::builder()
        .status(200)
        .header(http::header::CONTENT_TYPE, e.content_type)
        .header(http::header::CONTENT_LENGTH, e.body.len());
    if let Some(n) = e.next_before {
        b = b.header("x-next-before", n);
    }
    b.body(e.body).unwrap_or_else(|_| Response::new(Vec::new()))
}

fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn tally(t: &ledger::Tally) -> Value {
    json!({"requests": t.requests, "tokens": t.tokens, "spend_usd": t.spend_usd()})
}

/// `GET /admin/usage?team=&key=&window=`.
fn usage(rt: &crate::runtime::Runtime, query: &str) -> Response<Vec<u8>> {
    let window = query_param(query, "window").unwrap_or("day");
    let Some(index) = ledger::WINDOWS.iter().position(|(n, _)| *n == window) else {
        return error(
            400,
            "invalid_request",
            "window must be minute, hour, day or month.",
        );
    };
    let team = query_param(query, "team").filter(|t| !t.is_empty());
    let key = query_param(query, "key").filter(|k| !k.is_empty());
    let mut team_keys: HashSet<String> = rt
        .key_info
        .iter()
        .filter(|k| team.is_some() && k.team.as_deref() == team)
        .map(|k| k.name.to_string())
        .collect();
    if let (Some(t), Some(s)) = (team, crate::keystore::global()) {
        team_keys.extend(
            s.snapshot()
                .keys()
                .into_iter()
                .filter(|(_, (team, _))| team.as_deref() == Some(t))
                .map(|(name, _)| name.to_string()),
        );
    }
    // Per key and team, `tags: { tag: { value: { current, previous } } }`.
    let mut by_tag: std::collections::HashMap<(Level, std::sync::Arc<str>), Value> =
        Default::default();
    for (level, name, pair, cur, prev) in ledger::global().read_tags(index) {
        let Some((tag, value)) = pair.split_once('=') else {
            continue;
        };
        let entry = by_tag.entry((level, name)).or_insert_with(|| json!({}));
        entry[tag][value] = json!({"current": tally(&cur), "previous": tally(&prev)});
    }
    let rows: Vec<Value> = ledger::global()
        .read(index)
        .into_iter()
        .filter(|(level, name, _, _)| {
            let by_team = team.is_none_or(|t| {
                (*level == Level::Team && &**name == t)
                    || (*level == Level::Key && team_keys.contains(&**name))
            });
            let by_key = key.is_none_or(|k| *level == Level::Key && &**name == k);
            by_team && by_key
        })
        .map(|(level, name, cur, prev)| {
            let mut row = json!({"level": level.label(), "name": &*name,
                   "current": tally(&cur), "previous": tally(&prev)});
            if let Some(t) = by_tag.remove(&(level, name)) {
                row["tags"] = t;
            }
            row
        })
        .collect();
    reply(200, json!({"window": window, "usage": rows}))
}

/// `GET /admin/limits`: every configured limit with its current value.
async fn limits(rt: &crate::runtime::Runtime) -> Response<Vec<u8>> {
    let mut seen = HashSet::new();
    let rules: Vec<_> = rt
        .client_rules()
        .filter(|r| seen.insert(r.id.clone()))
        .collect();
    let used = match crate::governance::used(&rules).await {
        Ok(u) => u,
        Err(e) => {
            log::warn!("admin: reading the limits store failed: {e}");
            return error(
                503,
                "limits_unavailable",
                "The limits store cannot be read.",
            );
        }
    };
    let mut rows = Vec::new();
    for (rule, used) in rules.into_iter().zip(used) {
        let unit = match rule.id.metric {
            Metric::Usd => "usd",
            Metric::Tokens => "tokens",
            Metric::Requests => "requests",
            Metric::Concurrency => "requests_in_flight",
        };
        rows.push(json!({
            "level": rule.id.level.label(),
            "name": &*rule.id.name,
            "limit": rule.reason(),
            "unit": unit,
            "window": &*rule.window,
            "max": rule.natural(rule.limit),
            "used": rule.natural(used),
            "remaining": rule.natural((rule.limit - used).max(0)),
        }));
    }
    reply(200, json!({"limits": rows}))
}

/// The config as JSON, with every secret replaced: keys and headers (the
/// providers' and the trace collector's) wholly, and the credentials
/// inside any URL (`limits_store.redis.url`).
pub fn redacted_config(cfg: &crate::config::Config) -> Value {
    let mut v = serde_json::to_value(cfg).unwrap_or(Value::Null);
    redact_urls(&mut v);
    let hide = |x: &mut Value| {
        if !x.is_null() {
            *x = Value::from(REDACTED);
        }
    };
    if let Some(k) = v.get_mut("admin_key") {
        hide(k);
    }
    if let Some(Value::Object(providers)) = v.get_mut("providers") {
        for p in providers.values_mut() {
            if let Some(k) = p.get_mut("api_key") {
                hide(k);
            }
            if let Some(Value::Array(pool)) = p.get_mut("api_keys") {
                for k in pool.iter_mut().filter_map(|k| k.get_mut("key")) {
                    hide(k);
                }
            }
            // Secret fields print as [redacted] already; the key id says
            // which identity is used.
            if let Some(id) = p.pointer_mut("/bedrock/credentials/access_key_id") {
                hide(id);
            }
            if let Some(Value::Object(headers)) = p.get_mut("headers") {
                headers.values_mut().for_each(hide);
            }
        }
    }
    if let Some(Value::Object(headers)) = v.get_mut("tracing").and_then(|t| t.get_mut("headers")) {
        headers.values_mut().for_each(hide);
    }
    if let Some(Value::Array(keys)) = v.get_mut("keys") {
        for k in keys {
            for f in ["key", "key_sha256"] {
                if let Some(x) = k.get_mut(f) {
                    hide(x);
                }
            }
        }
    }
    v
}

/// Blanks the credentials of every URL-looking string in `v`.
fn redact_urls(v: &mut Value) {
    match v {
        Value::String(s) if s.contains("://") => {
            if let std::borrow::Cow::Owned(r) = crate::config::url::redact(s) {
                *s = r;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact_urls),
        Value::Object(m) => m.values_mut().for_each(redact_urls),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_redis_password_is_not_shown() {
        let yaml = r#"
listen: "127.0.0.1:8080"
admin_listen: "127.0.0.1:9092"
admin_key: "admin-key-0123456789"
limits_store: { redis: { url: "redis://:hunter2-redis@127.0.0.1:6379/0" } }
providers:
  up: { kind: openai, base_url: "http://127.0.0.1:1/v1", api_key: "sk-up-secret" }
  pooled: { kind: openai, base_url: "http://127.0.0.1:1/v1", api_keys: [ { key: "sk-pool-one", name: one }, { key: "sk-pool-two" } ] }
  aws:
    kind: bedrock
    bedrock: { region: us-east-1, credentials: { source: static, access_key_id: AKIDADMINTEST, secret_access_key: "aws-secret-admin", session_token: "aws-session-admin" } }
  gcp:
    kind: vertex
    vertex: { project: p, location: us-central1, credentials: { source: access_token, access_token: "ya29.admin-token" } }
models:
  m: { routes: [ { provider: up, model: x } ] }
keys:
  - { name: a, key: "tg-admin-test-key" }
tracing: { endpoint: "http://127.0.0.1:4318", headers: { x-otlp-key: "otlp-secret-123" } }
"#;
        let cfg = crate::config::parse_str(yaml, |_| None, std::path::Path::new(".")).unwrap();
        let shown = redacted_config(&cfg).to_string();
        for secret in [
            "hunter2-redis",
            "sk-up-secret",
            "tg-admin-test-key",
            "admin-key-0123456789",
            "sk-pool-one",
            "sk-pool-two",
            "AKIDADMINTEST",
            "aws-secret-admin",
            "aws-session-admin",
            "ya29.admin-token",
            "otlp-secret-123",
        ] {
            assert!(!shown.contains(secret), "{secret} shown: {shown}");
        }
        assert!(
            shown.contains("redis://:[redacted]@127.0.0.1:6379/0"),
            "{shown}"
        );
    }
}
