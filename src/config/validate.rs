//! Cross-field validation. Collects every problem, each naming its field and
//! saying how to fix it.

use super::schema::*;
use super::url::{parse_base_url, split_host_port};
use super::ConfigError;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

/// Headers a provider's `headers:` may not set: the gateway owns them.
const RESERVED_HEADERS: &[&str] = &[
    "authorization",
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "x-api-key",
    "api-key",
    "x-goog-api-key",
    "x-amz-date",
    "x-amz-security-token",
    "x-amz-content-sha256",
];

/// Checks everything serde cannot: addresses, URLs, references, files, duplicates.
pub(crate) fn validate(cfg: &Config) -> Result<(), ConfigError> {
    let mut v = Problems::default();
    check_listeners(cfg, &mut v);
    for (name, p) in &cfg.providers {
        check_provider(name, p, &mut v);
    }
    if cfg.models.is_empty() {
        v.add("models", "at least one model alias is required");
    }
    for (alias, m) in &cfg.models {
        check_name(&format!("models.{alias}"), alias, &mut v);
        if m.routes.is_empty() {
            v.add(format!("models.{alias}.routes"), "needs at least one route");
        }
        for (i, r) in m.routes.iter().enumerate() {
            let field = format!("models.{alias}.routes[{i}]");
            if !cfg.providers.contains_key(&r.provider) {
                v.add(
                    format!("{field}.provider"),
                    format!(
                        "provider `{}` is not defined; defined providers: {}",
                        r.provider,
                        list(cfg.providers.keys())
                    ),
                );
            }
            if r.model.trim().is_empty() {
                v.add(format!("{field}.model"), "must name the upstream model");
            } else if r.model.chars().any(char::is_control) {
                // It is written into JSON strings, multipart form fields and
                // URL paths: a CR or LF would end a form part's line.
                v.add(
                    format!("{field}.model"),
                    "must not contain control characters (CR, LF, tab, ...)",
                );
            }
            if let Some(t) = &r.timeouts {
                let zero = [t.connect, t.first_byte, t.idle, t.total]
                    .iter()
                    .flatten()
                    .any(|d| d.get().is_zero());
                if zero {
                    v.add(
                        format!("{field}.timeouts"),
                        "timeouts must be greater than 0",
                    );
                }
            }
            check_route_dialect(&field, r, cfg.providers.get(&r.provider), &mut v);
            if let Some(p) = &r.price {
                let prices = [Some(p.input), p.cached_input, Some(p.output)];
                if prices.iter().flatten().any(|x| !x.is_finite() || *x < 0.0) {
                    v.add(
                        format!("{field}.price"),
                        "prices are USD per million tokens and must be 0 or more",
                    );
                }
                for (name, x) in [
                    ("per_image", p.per_image),
                    ("per_million_characters", p.per_million_characters),
                    ("per_minute", p.per_minute),
                ] {
                    if x.is_some_and(|x| !x.is_finite() || x < 0.0) {
                        v.add(
                            format!("{field}.price.{name}"),
                            "must be a finite number of USD, 0 or more",
                        );
                    }
                }
            }
        }
    }
    check_keys(cfg, &mut v);
    check_governance(cfg, &mut v);
    check_key_store(cfg, &mut v);
    check_experiments(cfg, &mut v);
    for (field, msg) in super::routing::problems(cfg) {
        v.add(field, msg);
    }
    for (field, msg) in super::workloads::problems(cfg) {
        v.add(field, msg);
    }
    for (field, msg) in cfg.tracing.iter().flat_map(super::tracing::problems) {
        v.add(field, msg);
    }
    for (field, msg) in super::cache::problems(cfg) {
        v.add(field, msg);
    }
    for (field, msg) in super::files::problems(cfg) {
        v.add(field, msg);
    }
    for (field, msg) in super::capture::problems(cfg) {
        v.add(field, msg);
    }
    v.finish()
}

fn check_limits(field: &str, l: &Limits, v: &mut Problems) {
    for (name, value) in [
        ("rpm", l.rpm),
        ("tpm", l.tpm),
        ("concurrency", l.concurrency),
    ] {
        if let Some(n) = value {
            if n == 0 || n > 1_000_000_000_000 {
                v.add(
                    format!("{field}.limits.{name}"),
                    "must be between 1 and 1000000000000 (leave it out for no limit)",
                );
            }
        }
    }
}

fn check_budgets(field: &str, budgets: &[Budget], v: &mut Problems) {
    let mut seen = HashSet::new();
    for (i, b) in budgets.iter().enumerate() {
        let f = format!("{field}.budgets[{i}]");
        let unit = match (b.usd, b.tokens) {
            (Some(_), Some(_)) | (None, None) => {
                v.add(&f, "set exactly one of `usd` and `tokens`");
                continue;
            }
            (Some(usd), None) => {
                // Counters hold at most 2^53 - 1 nano-dollars (exact in Redis's Lua).
                if !usd.is_finite() || usd <= 0.0 || usd > 9e6 {
                    v.add(
                        format!("{f}.usd"),
                        "must be a dollar amount above 0 (at most 9000000)",
                    );
                }
                "usd"
            }
            (None, Some(t)) => {
                if t == 0 || t > 9_000_000_000_000_000 {
                    v.add(
                        format!("{f}.tokens"),
                        "must be between 1 and 9000000000000000 (9e15)",
                    );
                }
                "tokens"
            }
        };
        if !seen.insert((unit, b.window)) {
            v.add(
                &f,
                format!(
                    "a {unit} budget over `{}` is already set; keep one per unit and window",
                    b.window
                ),
            );
        }
        if let BudgetWindow::Rolling(d) = b.window {
            if d > std::time::Duration::from_secs(400 * 86_400) {
                v.add(format!("{f}.window"), "a rolling window is at most 400d");
            }
        }
    }
}

fn check_governance(cfg: &Config, v: &mut Problems) {
    for (name, t) in &cfg.teams {
        let f = format!("teams.{name}");
        check_name(&f, name, v);
        check_limits(&f, &t.limits, v);
        check_budgets(&f, &t.budgets, v);
        for (pair, w) in &t.workload_limits {
            let f = format!("{f}.workload_limits.{pair}");
            check_limits(&f, &w.limits, v);
            check_budgets(&f, &w.budgets, v);
        }
    }
    for (i, k) in cfg.keys.iter().enumerate() {
        let f = format!("keys[{i}]");
        check_limits(&f, &k.limits, v);
        check_budgets(&f, &k.budgets, v);
        for (pair, w) in &k.workload_limits {
            let f = format!("{f}.workload_limits.{pair}");
            check_limits(&f, &w.limits, v);
            check_budgets(&f, &w.budgets, v);
        }
        if let Some(team) = &k.team {
            if !cfg.teams.contains_key(team) {
                v.add(
                    format!("{f}.team"),
                    format!(
                        "team `{team}` is not defined under `teams`; defined: {}",
                        list(cfg.teams.keys())
                    ),
                );
            }
        }
    }
    for (alias, m) in &cfg.models {
        let f = format!("models.{alias}");
        check_limits(&f, &m.limits, v);
        if m.reserve_output_tokens > 10_000_000 {
            v.add(
                format!("{f}.reserve_output_tokens"),
                "must be at most 10000000",
            );
        }
    }
    if cfg.state_interval.get() < std::time::Duration::from_millis(100) {
        v.add("state_interval", "must be at least 100ms");
    }
    if let Some(path) = &cfg.state_file {
        if path.trim().is_empty() {
            v.add("state_file", "is empty; name a file or remove the field");
        }
    }
    if let LimitsStore::Redis(r) = &cfg.limits_store {
        if let Err(e) = redis::Client::open(r.url.as_str()) {
            v.add(
                "limits_store.redis.url",
                format!("is not a Redis URL such as redis://127.0.0.1:6379 ({e})"),
            );
        }
        if cfg.state_file.is_some() {
            v.add(
                "state_file",
                "is for the memory store; Redis keeps the budgets itself. Remove it",
            );
        }
    }
}

/// `key_store`: exactly one database, its URL's syntax (no connection is
/// made, so `--test` works offline), sane intervals. Messages never echo
/// the URL, which holds the password.
/// `shadow` and `hedge`: what they point at exists and can take them.
fn check_experiments(cfg: &Config, v: &mut Problems) {
    use super::ProviderKind;
    if let Some(team) = &cfg.shadow.budget {
        if !cfg.teams.contains_key(team) {
            v.add(
                "shadow.budget",
                format!("`{team}` is not a team under teams"),
            );
        }
    }
    let kind = |name: &str| cfg.providers.get(name).map(|p| p.kind);
    for (alias, m) in &cfg.models {
        if let Some(s) = &m.shadow {
            let field = format!("models.{alias}.shadow");
            if !(0.0..=1.0).contains(&s.sample) {
                v.add(format!("{field}.sample"), "must be between 0 and 1");
            }
            match kind(&s.route.provider) {
                Some(ProviderKind::Openai) => {}
                Some(_) => v.add(
                    format!("{field}.route.provider"),
                    format!(
                        "`{}` must be an OpenAI-kind provider (not a mock, and not a translated kind such as anthropic, gemini or azure)",
                        s.route.provider
                    ),
                ),
                None => v.add(
                    format!("{field}.route.provider"),
                    format!("`{}` is not available", s.route.provider),
                ),
            }
        }
        if let Some(h) = &m.hedge {
            let field = format!("models.{alias}.hedge");
            for (i, r) in m.routes.iter().enumerate() {
                if kind(&r.provider).is_some_and(|k| k != ProviderKind::Openai) {
                    v.add(
                        &field,
                        format!(
                            "routes[{i}] uses provider `{}`, which is not OpenAI-kind; hedging races OpenAI-kind routes only: remove `hedge` or the route",
                            r.provider
                        ),
                    );
                }
            }
            if !(0.0..=1.0).contains(&h.max_share) {
                v.add(format!("{field}.max_share"), "must be between 0 and 1");
            }
            if m.routes.len() < 2 {
                v.add(
                    &field,
                    "needs at least two routes (the hedge goes to the next one)",
                );
            }
        }
    }
}

fn check_key_store(cfg: &Config, v: &mut Problems) {
    let Some(ks) = &cfg.key_store else { return };
    match (&ks.sqlite, &ks.postgres) {
        (Some(_), Some(_)) | (None, None) => v.add(
            "key_store",
            "set exactly one of `sqlite` (a file) and `postgres` (a URL)",
        ),
        (Some(path), None) => {
            if path.trim().is_empty() {
                v.add("key_store.sqlite", "is empty; name the database file");
            }
        }
        (None, Some(url)) => {
            if let Err(m) = super::url::check_postgres_url(url) {
                v.add("key_store.postgres", m);
            }
        }
    }
    let poll = ks.poll_interval.get();
    if poll < std::time::Duration::from_millis(50) || poll > std::time::Duration::from_secs(60) {
        v.add("key_store.poll_interval", "must be between 50ms and 60s");
    }
    let t = ks.timeout.get();
    if t < std::time::Duration::from_millis(100) || t > std::time::Duration::from_secs(60) {
        v.add("key_store.timeout", "must be between 100ms and 60s");
    }
}

#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn add(&mut self, field: impl AsRef<str>, msg: impl AsRef<str>) {
        self.0.push(format!("{}: {}", field.as_ref(), msg.as_ref()));
    }
    fn finish(self) -> Result<(), ConfigError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { problems: self.0 })
        }
    }
}

fn list<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let v: Vec<&str> = names.map(String::as_str).collect();
    if v.is_empty() {
        "(none)".into()
    } else {
        v.join(", ")
    }
}

fn check_name(field: &str, name: &str, v: &mut Problems) {
    if let Some(m) = name_problem(name) {
        v.add(field, m);
    }
}

/// What is wrong with a key, team or alias name, if anything.
pub(crate) fn name_problem(name: &str) -> Option<&'static str> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:/@".contains(c));
    (!ok).then_some("names use 1-128 characters from letters, digits and - _ . : / @")
}

/// The config's checks of one key's or team's limits, budgets, tier and
/// regions, each `(field under `field`, what to fix)`: the key store's
/// admin API holds its keys and teams to the same rules.
pub(crate) fn governance_problems(
    field: &str,
    limits: &Limits,
    budgets: &[Budget],
    tier: Option<&String>,
    regions: Option<&Vec<String>>,
) -> Vec<(String, String)> {
    let mut v = Problems::default();
    check_limits(field, limits, &mut v);
    check_budgets(field, budgets, &mut v);
    let mut out: Vec<(String, String)> =
        v.0.iter()
            .map(|p| match p.split_once(": ") {
                Some((f, m)) => (f.to_string(), m.to_string()),
                None => (field.to_string(), p.clone()),
            })
            .collect();
    out.extend(super::routing::access_problems(field, tier, regions));
    out
}

fn check_listeners(cfg: &Config, v: &mut Problems) {
    let listen = cfg.listen.parse::<SocketAddr>();
    if listen.is_err() {
        v.add(
            "listen",
            format!("`{}` is not an IP:port such as 127.0.0.1:8080", cfg.listen),
        );
    }
    if let Some(m) = &cfg.metrics_listen {
        match m.parse::<SocketAddr>() {
            Err(_) => v.add(
                "metrics_listen",
                format!("`{m}` is not an IP:port such as 127.0.0.1:9091"),
            ),
            Ok(a) if listen.as_ref().is_ok_and(|l| *l == a) => {
                v.add("metrics_listen", "must differ from `listen`")
            }
            Ok(_) => {}
        }
    }
    if let Some(p) = &cfg.plain_listen {
        match p.parse::<SocketAddr>() {
            Err(_) => v.add(
                "plain_listen",
                format!("`{p}` is not an IP:port such as 127.0.0.1:8080"),
            ),
            Ok(a) => {
                if listen.as_ref().is_ok_and(|l| *l == a) {
                    v.add("plain_listen", "must differ from `listen`");
                }
                if cfg
                    .metrics_listen
                    .as_ref()
                    .and_then(|m| m.parse::<SocketAddr>().ok())
                    == Some(a)
                {
                    v.add("plain_listen", "must differ from `metrics_listen`");
                }
            }
        }
    }
    if let Some(t) = &cfg.tls {
        for (field, path) in [("tls.cert", &t.cert), ("tls.key", &t.key)] {
            if path.trim().is_empty() {
                v.add(field, "must name a PEM file");
            }
        }
        if t.max_concurrent_streams == 0 || t.max_concurrent_streams > 10_000 {
            v.add("tls.max_concurrent_streams", "must be between 1 and 10000");
        }
    }
    match (&cfg.admin_listen, &cfg.admin_key) {
        (Some(a), key) => {
            match a.parse::<SocketAddr>() {
                Err(_) => v.add(
                    "admin_listen",
                    format!("`{a}` is not an IP:port such as 127.0.0.1:9092"),
                ),
                Ok(addr) => {
                    let same = |o: Option<&String>| {
                        o.and_then(|s| s.parse::<SocketAddr>().ok()) == Some(addr)
                    };
                    if same(Some(&cfg.listen)) || same(cfg.metrics_listen.as_ref()) {
                        v.add(
                            "admin_listen",
                            "must differ from `listen` and `metrics_listen`",
                        );
                    }
                }
            }
            match key {
                None => v.add(
                    "admin_key",
                    "is required with admin_listen, e.g. \"${TOLLGATE_ADMIN_KEY}\"",
                ),
                Some(k) if k.len() < 16 => v.add("admin_key", "must be at least 16 characters"),
                Some(k) => {
                    if let Some(why) = crate::auth::unpresentable(k) {
                        v.add("admin_key", why);
                    }
                    if let Some(i) = gateway_key_equal_to(cfg, k) {
                        v.add(
                            "admin_key",
                            format!("must differ from every gateway key (it equals keys[{i}])"),
                        );
                    }
                }
            }
        }
        (None, Some(_)) => v.add("admin_key", "is only used with admin_listen; set both"),
        (None, None) => {}
    }
    if cfg.max_body_bytes == 0 || cfg.max_body_bytes > 1 << 30 {
        v.add("max_body_bytes", "must be between 1 and 1073741824 (1 GiB)");
    }
    if !cfg.route_header.is_empty()
        && http::HeaderName::from_bytes(cfg.route_header.as_bytes()).is_err()
    {
        v.add(
            "route_header",
            "is not a valid header name (or use \"\" to turn it off)",
        );
    }
    if cfg.max_attempts == 0 || cfg.max_attempts > 16 {
        v.add("max_attempts", "must be between 1 and 16");
    }
    if cfg.request_deadline.get().is_zero() {
        v.add("request_deadline", "must be greater than 0");
    }
    if cfg.server.threads == Some(0) {
        v.add("server.threads", "must be at least 1 (or left out)");
    }
    let d = &cfg.downstream;
    for (name, t) in [
        ("body_idle_timeout", d.body_idle_timeout),
        ("keepalive", d.keepalive),
        ("write_timeout", d.write_timeout),
        ("header_timeout", d.header_timeout),
    ] {
        if t.get().is_zero() {
            v.add(format!("downstream.{name}"), "must be greater than 0");
        }
    }
    if !(1024..=1024 * 1024).contains(&d.max_header_bytes) {
        v.add(
            "downstream.max_header_bytes",
            "must be between 1024 and 1048576",
        );
    }
    if d.read_buffer_bytes > 1024 * 1024 {
        v.add(
            "downstream.read_buffer_bytes",
            "must be between 0 (unbuffered) and 1048576",
        );
    }
}

fn check_provider(name: &str, p: &Provider, v: &mut Problems) {
    let f = format!("providers.{name}");
    check_name(&f, name, v);
    check_dialect(&f, p, v);
    match p.kind {
        ProviderKind::Mock => {
            for (set, field) in [
                (p.base_url.is_some(), "base_url"),
                (p.backends.is_some(), "backends"),
                (p.api_key.is_some(), "api_key"),
                (p.api_keys.is_some(), "api_keys"),
                (p.ca_file.is_some(), "ca_file"),
            ] {
                if set {
                    v.add(
                        format!("{f}.{field}"),
                        "is not used by `kind: mock`; remove it",
                    );
                }
            }
        }
        ProviderKind::Openai
        | ProviderKind::Anthropic
        | ProviderKind::Azure
        | ProviderKind::Gemini
        | ProviderKind::Bedrock
        | ProviderKind::Vertex => {
            check_key_pool(&f, p, v);
            if p.mock.is_some() {
                v.add(
                    format!("{f}.mock"),
                    "only applies to `kind: mock`; remove it",
                );
            }
            let url = match &p.base_url {
                None if matches!(
                    p.kind,
                    ProviderKind::Anthropic
                        | ProviderKind::Gemini
                        | ProviderKind::Bedrock
                        | ProviderKind::Vertex
                ) =>
                {
                    None
                }
                None if p.kind == ProviderKind::Azure => {
                    v.add(
                        format!("{f}.base_url"),
                        "is required: your resource endpoint, e.g. https://myresource.openai.azure.com",
                    );
                    None
                }
                None => {
                    v.add(
                        format!("{f}.base_url"),
                        "is required, e.g. https://api.openai.com/v1",
                    );
                    None
                }
                Some(u) => match parse_base_url(u) {
                    Ok(u) => Some(u),
                    Err(e) => {
                        v.add(format!("{f}.base_url"), e);
                        None
                    }
                },
            };
            if let Some(backends) = &p.backends {
                if backends.is_empty() {
                    v.add(
                        format!("{f}.backends"),
                        "is empty; list host:port addresses or remove it",
                    );
                }
                let mut seen = HashSet::new();
                for (i, b) in backends.iter().enumerate() {
                    match split_host_port(b) {
                        Some((_, Some(_))) => {}
                        _ => v.add(
                            format!("{f}.backends[{i}]"),
                            format!("`{b}` is not host:port such as 10.0.0.5:8000"),
                        ),
                    }
                    if !seen.insert(b) {
                        v.add(
                            format!("{f}.backends[{i}]"),
                            format!("`{b}` is listed twice"),
                        );
                    }
                }
            }
            if let Some(ca) = &p.ca_file {
                if url.as_ref().is_some_and(|u| !u.tls) {
                    v.add(
                        format!("{f}.ca_file"),
                        "is only used with an https:// base_url",
                    );
                }
                if let Err(e) = crate::ca_file::load_ca_file(ca).map(|_| ()) {
                    v.add(format!("{f}.ca_file"), e);
                }
            }
            if let Some(k) = &p.api_key {
                if k.is_empty() || http::HeaderValue::from_str(&format!("Bearer {k}")).is_err() {
                    v.add(
                        format!("{f}.api_key"),
                        "is empty or has characters not allowed in a header",
                    );
                }
            }
        }
    }
    for (h, val) in &p.headers {
        let lower = h.to_ascii_lowercase();
        if http::HeaderName::from_bytes(h.as_bytes()).is_err()
            || http::HeaderValue::from_str(val).is_err()
        {
            v.add(
                format!("{f}.headers.{h}"),
                "is not a valid header name and value",
            );
        } else if RESERVED_HEADERS.contains(&lower.as_str()) {
            v.add(
                format!("{f}.headers.{h}"),
                "is set by the gateway itself; remove it (use api_key for credentials)",
            );
        }
    }
    let hc = &p.health_check;
    if hc.interval.get().is_zero() || hc.timeout.get().is_zero() {
        v.add(
            format!("{f}.health_check"),
            "interval and timeout must be greater than 0",
        );
    }
    if hc.unhealthy_after == 0 || hc.healthy_after == 0 {
        v.add(
            format!("{f}.health_check"),
            "unhealthy_after and healthy_after must be at least 1",
        );
    }
    if hc.path.is_some() && matches!(p.kind, ProviderKind::Bedrock | ProviderKind::Vertex) {
        v.add(
            format!("{f}.health_check.path"),
            format!(
                "is not supported for `kind: {}` (its requests are signed per request); leave it out for a TCP/TLS connect check",
                p.kind.name()
            ),
        );
    }
    if let Some(path) = &hc.path {
        if !path.starts_with('/') || path.contains(char::is_whitespace) {
            v.add(
                format!("{f}.health_check.path"),
                "must be an absolute path such as /health",
            );
        }
    }
    let t = &p.timeouts;
    let zero = [Some(t.connect), t.first_byte, Some(t.idle), t.total]
        .iter()
        .flatten()
        .any(|d| d.get().is_zero());
    if zero {
        v.add(format!("{f}.timeouts"), "timeouts must be greater than 0");
    }
    if p.retry.attempts == 0 {
        v.add(format!("{f}.retry.attempts"), "must be at least 1");
    }
    if let Some(s) = p.retry.on_status.iter().find(|s| !(400..=599).contains(*s)) {
        v.add(
            format!("{f}.retry.on_status"),
            format!("{s} is not an error status (400-599)"),
        );
    }
    let b = &p.breaker;
    if b.consecutive_failures == 0
        || !(0.0..=1.0).contains(&b.failure_ratio)
        || b.window == 0
        || b.window > 64
        || b.min_requests > b.window
        || b.cooldown.get().is_zero()
    {
        v.add(
            format!("{f}.breaker"),
            "needs consecutive_failures >= 1, failure_ratio in 0..1, window 1..64, min_requests <= window, cooldown > 0",
        );
    }
    if p.dns_refresh.get().is_zero() {
        v.add(format!("{f}.dns_refresh"), "must be greater than 0");
    }
}

/// Fields that belong to one provider kind only, and their values.
fn check_dialect(f: &str, p: &Provider, v: &mut Problems) {
    let anthropic = p.kind == ProviderKind::Anthropic;
    let azure = p.kind == ProviderKind::Azure;
    for (set, field, kind) in [
        (
            p.anthropic_version.is_some(),
            "anthropic_version",
            "anthropic",
        ),
        (!p.anthropic_beta.is_empty(), "anthropic_beta", "anthropic"),
        (p.api_version.is_some(), "api_version", "azure"),
    ] {
        let ok = if kind == "anthropic" {
            anthropic
        } else {
            azure
        };
        if set && !ok {
            v.add(
                format!("{f}.{field}"),
                format!("only applies to `kind: {kind}`; remove it"),
            );
        }
    }
    check_cloud(f, p, v);
    let header_safe = |s: &str| !s.is_empty() && http::HeaderValue::from_str(s).is_ok();
    if let Some(ver) = &p.anthropic_version {
        if !header_safe(ver) {
            v.add(
                format!("{f}.anthropic_version"),
                "must be a version date such as 2023-06-01",
            );
        }
    }
    for (i, b) in p.anthropic_beta.iter().enumerate() {
        if !header_safe(b) || b.contains(',') {
            v.add(
                format!("{f}.anthropic_beta[{i}]"),
                "must be one beta name such as prompt-caching-2024-07-31",
            );
        }
    }
    if let Some(ver) = &p.api_version {
        if ver.is_empty()
            || !ver
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        {
            v.add(
                format!("{f}.api_version"),
                "must be an Azure API version such as 2024-10-21",
            );
        }
    }
    if azure {
        if let Some(prefix) = p
            .base_url
            .as_deref()
            .and_then(|u| parse_base_url(u).ok())
            .map(|u| u.prefix)
            .filter(|pre| pre.contains("/openai"))
        {
            v.add(
                format!("{f}.base_url"),
                format!("give the resource endpoint only (without `{prefix}`), e.g. https://myresource.openai.azure.com; Tollgate adds /openai/…"),
            );
        }
    }
}

/// The `bedrock:` and `vertex:` blocks: each required by its kind, refused
/// on the others, and validated by its own type (every message names its
/// field; none quotes a secret).
fn check_cloud(f: &str, p: &Provider, v: &mut Problems) {
    for (set, field, kind) in [
        (p.bedrock.is_some(), "bedrock", ProviderKind::Bedrock),
        (p.vertex.is_some(), "vertex", ProviderKind::Vertex),
    ] {
        if set && p.kind != kind {
            v.add(
                format!("{f}.{field}"),
                format!("only applies to `kind: {}`; remove it", kind.name()),
            );
        }
        if !set && p.kind == kind {
            v.add(
                format!("{f}.{field}"),
                match kind {
                    ProviderKind::Bedrock => "is required for `kind: bedrock`: { region: us-east-1, credentials: … }",
                    _ => "is required for `kind: vertex`: { project: my-project, location: us-central1, credentials: … }",
                },
            );
        }
    }
    if let Some(b) = &p.bedrock {
        v.0.extend(b.validate(&format!("{f}.bedrock")));
        if b.credentials.is_some() && (p.api_key.is_some() || p.api_keys.is_some()) {
            v.add(
                format!("{f}.bedrock.credentials"),
                "give either bedrock.credentials or api_key/api_keys (Bedrock API keys), not both",
            );
        }
    }
    if let Some(x) = &p.vertex {
        v.0.extend(x.validate(&format!("{f}.vertex")));
        if x.credentials.is_some() && (p.api_key.is_some() || p.api_keys.is_some()) {
            v.add(
                format!("{f}.vertex.credentials"),
                "give either vertex.credentials or api_key/api_keys (Google Cloud API keys), not both",
            );
        }
    }
}

/// Most keys in one provider's pool.
pub(crate) const MAX_POOL_KEYS: usize = 256;

/// `api_keys`: not with `api_key`; each key usable in a header and
/// distinct; names valid and unique; weights and limits in range. No
/// message quotes a key.
fn check_key_pool(f: &str, p: &Provider, v: &mut Problems) {
    let Some(keys) = &p.api_keys else {
        return;
    };
    if p.api_key.is_some() {
        v.add(
            format!("{f}.api_keys"),
            "give either api_key (one key) or api_keys (a pool), not both",
        );
    }
    if keys.is_empty() || keys.len() > MAX_POOL_KEYS {
        v.add(
            format!("{f}.api_keys"),
            format!("must list 1 to {MAX_POOL_KEYS} keys"),
        );
    }
    let mut names = HashSet::new();
    let mut secrets = HashMap::new();
    for (i, k) in keys.iter().enumerate() {
        let at = format!("{f}.api_keys[{i}]");
        if k.key.is_empty() || http::HeaderValue::from_str(&format!("Bearer {}", k.key)).is_err() {
            v.add(
                format!("{at}.key"),
                "is empty or has characters not allowed in a header",
            );
        }
        if let Some(first) = secrets.insert(crate::auth::digest(k.key.as_bytes()), i) {
            v.add(
                format!("{at}.key"),
                format!("is the same key as api_keys[{first}]; list each key once"),
            );
        }
        if !k.weight.is_finite() || !(0.0..=1_000_000.0).contains(&k.weight) {
            v.add(
                format!("{at}.weight"),
                "must be between 0 (standby) and 1000000",
            );
        }
        for (name, value) in [("rpm", k.limits.rpm), ("tpm", k.limits.tpm)] {
            if value.is_some_and(|n| n == 0 || n > 1_000_000_000_000) {
                v.add(
                    format!("{at}.limits.{name}"),
                    "must be between 1 and 1000000000000 (leave it out for no limit)",
                );
            }
        }
        if let Some(name) = &k.name {
            check_name(&format!("{at}.name"), name, v);
            if name.bytes().all(|b| b.is_ascii_digit()) {
                v.add(
                    format!("{at}.name"),
                    "must not be a number (numbers name unnamed keys by index)",
                );
            }
            if !names.insert(name.as_str()) {
                v.add(
                    format!("{at}.name"),
                    format!("`{name}` names another key of this pool; names must be unique"),
                );
            }
        }
    }
}

/// Route fields that depend on the provider's kind.
fn check_route_dialect(field: &str, r: &Route, p: Option<&Provider>, v: &mut Problems) {
    if r.max_tokens == Some(0) {
        v.add(format!("{field}.max_tokens"), "must be at least 1");
    }
    let Some(p) = p else {
        return;
    };
    if r.rerank
        && matches!(
            p.kind,
            ProviderKind::Anthropic
                | ProviderKind::Gemini
                | ProviderKind::Bedrock
                | ProviderKind::Vertex
        )
    {
        v.add(
            format!("{field}.rerank"),
            format!(
                "a `kind: {}` provider has no rerank endpoint; remove it",
                p.kind.name()
            ),
        );
    }
    if r.deployment.is_some() && !(p.kind == ProviderKind::Azure && p.api_version.is_some()) {
        v.add(
            format!("{field}.deployment"),
            "only applies to a `kind: azure` provider with `api_version`; remove it",
        );
    }
    if p.kind == ProviderKind::Gemini && !super::url::gemini_model_ok(&r.model) {
        v.add(
            format!("{field}.model"),
            "must be a Gemini model name such as gemini-2.5-flash (letters, digits, `.`, `-`, `_`, and `/` for tunedModels/…)",
        );
    }
    if p.kind == ProviderKind::Vertex
        && (p.api_key.is_some() || p.api_keys.is_some())
        && super::cloud::Publisher::of(&r.model) == super::cloud::Publisher::Anthropic
    {
        v.add(
            format!("{field}.model"),
            "is an Anthropic model, which Vertex serves only with OAuth: give the provider vertex.credentials instead of api_key/api_keys",
        );
    }
    if r.deployment.as_deref().is_some_and(|d| d.trim().is_empty()) {
        v.add(
            format!("{field}.deployment"),
            "must name the Azure deployment",
        );
    }
}

/// The index of the gateway key whose secret is `admin_key`, given as
/// `key` or as `key_sha256`.
fn gateway_key_equal_to(cfg: &Config, admin_key: &str) -> Option<usize> {
    let digest = crate::auth::digest(admin_key.as_bytes());
    cfg.keys.iter().position(|g| g.digest() == Some(digest))
}

fn check_keys(cfg: &Config, v: &mut Problems) {
    let mut names = HashSet::new();
    let mut digests: HashMap<[u8; 32], &str> = HashMap::new();
    for (i, k) in cfg.keys.iter().enumerate() {
        let f = format!("keys[{i}]");
        check_name(&format!("{f}.name"), &k.name, v);
        if !names.insert(k.name.as_str()) {
            v.add(
                format!("{f}.name"),
                format!("`{}` is used by another key; names must be unique", k.name),
            );
        }
        let digest = match (&k.key, &k.key_sha256) {
            (Some(_), Some(_)) => {
                v.add(&f, "set either `key` or `key_sha256`, not both");
                None
            }
            (None, None) => {
                v.add(
                    &f,
                    "needs `key` (the secret) or `key_sha256` (its hex SHA-256)",
                );
                None
            }
            (Some(secret), None) => {
                if secret.len() < 8 {
                    v.add(format!("{f}.key"), "must be at least 8 characters");
                }
                if let Some(why) = crate::auth::unpresentable(secret) {
                    v.add(format!("{f}.key"), why);
                }
                Some(crate::auth::digest(secret.as_bytes()))
            }
            (None, Some(hexed)) => match crate::auth::parse_hex_digest(hexed) {
                Some(d) => Some(d),
                None => {
                    v.add(
                        format!("{f}.key_sha256"),
                        "must be 64 hex characters (sha256sum of the key)",
                    );
                    None
                }
            },
        };
        if let Some(d) = digest {
            if let Some(other) = digests.insert(d, &k.name) {
                v.add(
                    &f,
                    format!("has the same secret as key `{other}`; every key must be distinct"),
                );
            }
        }
        if let Some(models) = &k.models {
            for (j, m) in models.iter().enumerate() {
                if !cfg.models.contains_key(m) {
                    v.add(
                        format!("{f}.models[{j}]"),
                        format!(
                            "model `{m}` is not defined under `models`; defined: {}",
                            list(cfg.models.keys())
                        ),
                    );
                }
            }
        }
    }
}
