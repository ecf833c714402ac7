//! `Runtime`: the config compiled for the request path, and the `ArcSwap`
//! holder that reload swaps. A request loads one snapshot and keeps it.

use crate::auth::{self, KeyIndex};
use crate::config::{Config, ConfigError, MockSettings, ProviderKind};
use crate::governance::{plan, Level, Rule};
use crate::rewrite::json_string;
use crate::upstream::{Upstream, UpstreamRef};
use arc_swap::ArcSwap;
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

/// A provider as the request path sees it.
pub enum ProviderRt {
    Http(UpstreamRef),
    Mock(MockSettings),
}

/// One route of an alias, ready to use.
pub struct RouteRt {
    pub provider_name: Arc<str>,
    pub provider: Arc<ProviderRt>,
    /// The upstream model name.
    pub model: Arc<str>,
    /// The upstream model as a JSON string, for splicing.
    pub model_json: Bytes,
    pub price: Option<crate::config::Price>,
    /// Timeouts of this route (provider defaults with route overrides).
    pub limits: crate::resilience::Limits,
    /// `provider/upstream-model`, for the route response header.
    pub route_label: http::HeaderValue,
    /// How this route talks to its provider (paths, translation, defaults).
    pub dialect: crate::providers::dialect::RouteDialect,
}

impl RouteRt {
    /// Compiles one route of `cfg` on its already built provider.
    pub fn compile(cfg: &Config, r: &crate::config::Route, p: &Arc<ProviderRt>) -> RouteRt {
        RouteRt {
            provider_name: Arc::from(r.provider.as_str()),
            provider: p.clone(),
            model: Arc::from(r.model.as_str()),
            model_json: json_string(&r.model),
            price: r.price,
            limits: match &**p {
                ProviderRt::Http(up) => up.limits(r.timeouts.as_ref()),
                ProviderRt::Mock(_) => crate::resilience::Limits {
                    connect: Duration::ZERO,
                    first_byte: Duration::ZERO,
                    idle: Duration::ZERO,
                    total: None,
                },
            },
            route_label: http::HeaderValue::from_str(&format!("{}/{}", r.provider, r.model))
                .unwrap_or_else(|_| http::HeaderValue::from_static("-")),
            dialect: match (&**p, cfg.providers.get(&r.provider)) {
                (ProviderRt::Http(up), Some(pc)) => {
                    crate::providers::dialect::RouteDialect::build(pc, r, &up.base.prefix)
                }
                _ => crate::providers::dialect::RouteDialect::openai(),
            },
        }
    }
}

/// A model alias.
pub struct ModelRt {
    pub name: Arc<str>,
    pub routes: Vec<RouteRt>,
    /// The alias's own limits (all callers together).
    pub rules: Vec<Rule>,
    /// The routes' prices, to price a reservation at the dearest.
    pub prices: Vec<crate::config::Price>,
    /// Completion tokens reserved when the body sets no maximum.
    pub reserve_output_tokens: u64,
    /// The routes' learned prompt-token ratios, in route order.
    pub ratios: crate::governance::ratio::Ratios,
    /// Strategy, eligibility data and live statistics of the routes.
    pub routing: crate::routing::Plan,
}

/// A gateway key (never the secret).
pub struct KeyRt {
    pub name: Arc<str>,
    /// Allowed aliases; `None` means all.
    pub models: Option<Vec<Arc<str>>>,
    /// Prebuilt `GET /v1/models` body for this key.
    pub models_body: Bytes,
    /// The key's team, if any.
    pub team: Option<Arc<str>>,
    /// The key's limits and budgets, then its team's.
    pub rules: Vec<Rule>,
    /// The tier and regions that decide which routes it reaches.
    pub access: crate::routing::Access,
}

impl KeyRt {
    /// Compiles one key (from the config or the key store) with its team:
    /// the key's rules then its team's, its `GET /v1/models` body (only
    /// the aliases `models` defines) and its routing access.
    pub fn compile(
        k: &crate::config::Key,
        team: Option<(&str, &crate::config::Team)>,
        models: &BTreeMap<String, crate::config::Model>,
        all_models: &Bytes,
    ) -> KeyRt {
        let allowed: Option<Vec<Arc<str>>> = k
            .models
            .as_ref()
            .map(|v| v.iter().map(|s| Arc::from(s.as_str())).collect());
        let models_body = match &k.models {
            Some(v) => {
                let names: Vec<&str> = v
                    .iter()
                    .map(String::as_str)
                    .filter(|m| models.contains_key(*m))
                    .collect();
                models_list_body(&names)
            }
            None => all_models.clone(),
        };
        let mut rules = plan::compile(Level::Key, &k.name, &k.limits, &k.budgets);
        if let Some((name, t)) = team {
            rules.extend(plan::compile(Level::Team, name, &t.limits, &t.budgets));
        }
        KeyRt {
            name: Arc::from(k.name.as_str()),
            models: allowed,
            models_body,
            team: k.team.as_deref().map(Arc::from),
            rules,
            access: crate::routing::Access::of(k, team.map(|t| t.1)),
        }
    }

    /// The `GET /v1/models` body of a key that may use every alias.
    pub fn all_models_body(models: &BTreeMap<String, crate::config::Model>) -> Bytes {
        let names: Vec<&str> = models.keys().map(String::as_str).collect();
        models_list_body(&names)
    }

    pub fn allows(&self, alias: &str) -> bool {
        self.models
            .as_ref()
            .is_none_or(|m| m.iter().any(|a| &**a == alias))
    }
}

/// Everything the request path reads.
pub struct Runtime {
    pub config: Arc<Config>,
    pub keys: KeyIndex,
    pub key_info: Vec<Arc<KeyRt>>,
    pub models: HashMap<String, ModelRt>,
    pub upstreams: BTreeMap<String, UpstreamRef>,
    pub max_body_bytes: u64,
    pub body_idle_timeout: Duration,
    pub keepalive_secs: u64,
    pub write_timeout: Duration,
    pub header_limits: crate::proxy::header_guard::HeaderLimits,
    pub max_attempts: u32,
    pub request_deadline: Duration,
    /// Name of the route response header, if enabled.
    pub route_header: Option<http::HeaderName>,
    /// The certificate served on `listen` when `tls` is set.
    pub tls_cert: Option<Arc<crate::tls::ServerCert>>,
    /// Shadow traffic and hedging, per alias.
    pub experiments: crate::experiments::Plans,
}

impl Runtime {
    /// Compiles a validated config. Does no network I/O.
    pub fn build(cfg: Config) -> Result<Self, ConfigError> {
        let mut problems = Vec::new();
        let mut providers: HashMap<String, Arc<ProviderRt>> = HashMap::new();
        let mut upstreams = BTreeMap::new();
        for (name, p) in &cfg.providers {
            let rt = match p.kind {
                ProviderKind::Mock => ProviderRt::Mock(p.mock.clone().unwrap_or_default()),
                ProviderKind::Openai
                | ProviderKind::Anthropic
                | ProviderKind::Azure
                | ProviderKind::Gemini => match Upstream::build(name, p) {
                    Ok(u) => {
                        let u = Arc::new(u);
                        upstreams.insert(name.clone(), u.clone());
                        ProviderRt::Http(u)
                    }
                    Err(e) => {
                        problems.push(format!("providers.{name}: {e}"));
                        continue;
                    }
                },
            };
            providers.insert(name.clone(), Arc::new(rt));
        }
        let mut models = HashMap::new();
        for (alias, m) in &cfg.models {
            let mut routes = Vec::new();
            for (i, r) in m.routes.iter().enumerate() {
                match providers.get(&r.provider) {
                    Some(p) => routes.push(RouteRt::compile(&cfg, r, p)),
                    None => problems.push(format!(
                        "models.{alias}.routes[{i}].provider: `{}` is not available",
                        r.provider
                    )),
                }
            }
            models.insert(
                alias.clone(),
                ModelRt {
                    name: Arc::from(alias.as_str()),
                    routes,
                    rules: plan::compile(Level::Model, alias, &m.limits, &[]),
                    prices: m.routes.iter().filter_map(|r| r.price).collect(),
                    reserve_output_tokens: m.reserve_output_tokens,
                    ratios: crate::governance::ratio::Ratios::build(
                        alias,
                        m.routes
                            .iter()
                            .map(crate::config::routing::route_name)
                            .collect::<Vec<_>>()
                            .iter()
                            .map(String::as_str),
                    ),
                    routing: crate::routing::Plan::build(alias, m),
                },
            );
        }
        let mut digests = Vec::new();
        let mut key_info = Vec::new();
        let all_models = KeyRt::all_models_body(&cfg.models);
        for (i, k) in cfg.keys.iter().enumerate() {
            let d = match (&k.key, &k.key_sha256) {
                (Some(s), _) => auth::digest(s.as_bytes()),
                (None, Some(h)) => match auth::parse_hex_digest(h) {
                    Some(d) => d,
                    None => {
                        problems.push(format!("keys[{i}].key_sha256: not 64 hex characters"));
                        continue;
                    }
                },
                (None, None) => {
                    problems.push(format!("keys[{i}]: no key"));
                    continue;
                }
            };
            digests.push(d);
            let team = k.team.as_ref().and_then(|t| cfg.teams.get_key_value(t));
            let team = team.map(|(n, t)| (n.as_str(), t));
            key_info.push(Arc::new(KeyRt::compile(k, team, &cfg.models, &all_models)));
        }
        let tls_cert = match &cfg.tls {
            Some(t) => match crate::tls::ServerCert::load(t, crate::reload::now_secs()) {
                Ok(c) => Some(Arc::new(c)),
                Err(p) => {
                    problems.extend(p);
                    None
                }
            },
            None => None,
        };
        let experiments = crate::experiments::build(&cfg, &providers, &mut problems);
        if !problems.is_empty() {
            return Err(ConfigError { problems });
        }
        Ok(Self {
            tls_cert,
            experiments,
            max_body_bytes: cfg.max_body_bytes,
            body_idle_timeout: cfg.downstream.body_idle_timeout.get(),
            keepalive_secs: cfg.downstream.keepalive.get().as_secs(),
            write_timeout: cfg.downstream.write_timeout.get(),
            header_limits: crate::proxy::header_guard::HeaderLimits {
                idle: cfg.downstream.keepalive.get(),
                deadline: cfg.downstream.header_timeout.get(),
                max_bytes: cfg.downstream.max_header_bytes,
            },
            max_attempts: cfg.max_attempts,
            request_deadline: cfg.request_deadline.get(),
            route_header: http::HeaderName::from_bytes(cfg.route_header.as_bytes()).ok(),
            config: Arc::new(cfg),
            keys: KeyIndex::new(digests),
            key_info,
            models,
            upstreams,
        })
    }

    /// The key a client presented: a config key, else a runtime key from
    /// the key store's snapshot (never waiting for its database). The one
    /// place where a request's key is looked up.
    pub fn lookup_key(&self, presented: &[u8]) -> Result<Arc<KeyRt>, crate::error::GatewayError> {
        use crate::error::GatewayError;
        let digest = auth::digest(presented);
        if let Some(slot) = self.keys.lookup_digest(&digest) {
            return self
                .key_info
                .get(slot)
                .cloned()
                .ok_or(GatewayError::Internal);
        }
        match crate::keystore::lookup(&digest) {
            crate::keystore::Lookup::Found(k) => Ok(k),
            crate::keystore::Lookup::Refused(why) => Err(GatewayError::KeyRefused { why }),
            crate::keystore::Lookup::Unknown => Err(GatewayError::InvalidApiKey),
        }
    }

    /// Resolves and health-checks every upstream once, concurrently.
    pub async fn warm_up(&self) {
        let tasks: Vec<_> = self
            .upstreams
            .values()
            .map(|u| {
                let u = u.clone();
                tokio::spawn(async move { u.refresh().await })
            })
            .collect();
        for t in tasks {
            let _ = t.await;
        }
    }
}

fn models_list_body(names: &[&str]) -> Bytes {
    let data: Vec<serde_json::Value> = names
        .iter()
        .map(|n| {
            serde_json::json!({"id": n, "object": "model", "created": 0, "owned_by": "tollgate"})
        })
        .collect();
    Bytes::from(serde_json::json!({"object": "list", "data": data}).to_string())
}

/// The swappable current runtime.
pub struct Shared {
    current: ArcSwap<Runtime>,
}

impl Shared {
    pub fn new(rt: Runtime) -> Self {
        Self {
            current: ArcSwap::from_pointee(rt),
        }
    }

    /// The snapshot a request keeps from start to end.
    pub fn load(&self) -> Arc<Runtime> {
        self.current.load_full()
    }

    pub fn swap(&self, rt: Runtime) {
        self.current.store(Arc::new(rt));
    }
}
