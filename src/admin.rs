//! The admin API on its own listener (`admin_listen`), behind `admin_key`:
//! usage, limits, the running config (secrets redacted) and reload.

use crate::governance::{ledger, Level, Metric};
use crate::reload::Reloader;
use crate::runtime::Shared;
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

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let rt = self.shared.load();
        let req = session.req_header();
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
        match (path.as_str(), method) {
            ("/admin/usage", Method::GET) => usage(&rt, &query),
            ("/admin/limits", Method::GET) => limits(&rt).await,
            ("/admin/config", Method::GET) => reply(200, redacted_config(&rt.config)),
            ("/admin/reload", Method::POST) => match self.reloader.reload_and_record().await {
                Ok(()) => reply(200, json!({"reloaded": true})),
                Err(e) => reply(422, json!({"reloaded": false, "error": e})),
            },
            ("/admin/usage" | "/admin/limits" | "/admin/config", _) => {
                error(405, "method_not_allowed", "Use GET.")
            }
            ("/admin/reload", _) => error(405, "method_not_allowed", "Use POST."),
            _ => error(
                404,
                "unknown_url",
                "Unknown admin endpoint: /admin/usage, /admin/limits, /admin/config, /admin/reload.",
            ),
        }
    }
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
    let team_keys: HashSet<&str> = rt
        .key_info
        .iter()
        .filter(|k| team.is_some() && k.team.as_deref() == team)
        .map(|k| &*k.name)
        .collect();
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
            json!({"level": level.label(), "name": &*name,
                   "current": tally(&cur), "previous": tally(&prev)})
        })
        .collect();
    reply(200, json!({"window": window, "usage": rows}))
}

/// `GET /admin/limits`: every configured limit with its current value.
async fn limits(rt: &crate::runtime::Runtime) -> Response<Vec<u8>> {
    let mut seen = HashSet::new();
    let rules: Vec<_> = rt
        .key_info
        .iter()
        .flat_map(|k| k.rules.iter())
        .chain(rt.models.values().flat_map(|m| m.rules.iter()))
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

/// The config as JSON, with every secret replaced: keys and headers
/// wholly, and the credentials inside any URL (`limits_store.redis.url`).
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
            if let Some(Value::Object(headers)) = p.get_mut("headers") {
                headers.values_mut().for_each(hide);
            }
        }
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
models:
  m: { routes: [ { provider: up, model: x } ] }
keys:
  - { name: a, key: "tg-admin-test-key" }
"#;
        let cfg = crate::config::parse_str(yaml, |_| None, std::path::Path::new(".")).unwrap();
        let shown = redacted_config(&cfg).to_string();
        for secret in [
            "hunter2-redis",
            "sk-up-secret",
            "tg-admin-test-key",
            "admin-key-0123456789",
        ] {
            assert!(!shown.contains(secret), "{secret} shown: {shown}");
        }
        assert!(
            shown.contains("redis://:[redacted]@127.0.0.1:6379/0"),
            "{shown}"
        );
    }
}
