//! `Runtime`: the config compiled for the request path. Building one is
//! pure: it reads the config and returns values (the holder that reload
//! swaps is `live::Shared`, above this layer).

pub mod durable;
pub(crate) mod experiments;
pub mod files;

use crate::auth::{self, KeyIndex};
use crate::config::{Config, ConfigError, MockSettings, ProviderKind};
use crate::governance::{plan, Level, Rule};
use crate::keys::KeyRt;
use crate::rewrite::json_string;
use crate::upstream::{Upstream, UpstreamRef};
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
    /// Whether (and how) the request's tags go to the provider.
    pub forward_tags: crate::config::ForwardTags,
}

impl RouteRt {
    /// The route's provider as the OpenTelemetry GenAI conventions name it
    /// (`gen_ai.provider.name`): by its kind, the well-known value; the
    /// built-in mock is `tollgate.mock`.
    pub fn system(&self) -> &'static str {
        use crate::config::ProviderKind;
        match (&*self.provider, self.dialect.kind) {
            (ProviderRt::Mock(_), _) => "tollgate.mock",
            (_, ProviderKind::Anthropic) => "anthropic",
            (_, ProviderKind::Azure) => "azure.ai.openai",
            (_, ProviderKind::Gemini) => "gcp.gemini",
            (_, ProviderKind::Bedrock) => "aws.bedrock",
            (_, ProviderKind::Vertex) => "gcp.vertex_ai",
            (_, ProviderKind::Openai | ProviderKind::Mock) => "openai",
        }
    }

    /// Compiles one route of `cfg` on its already built provider.
    pub fn compile(cfg: &Config, r: &crate::config::Route, p: &Arc<ProviderRt>) -> RouteRt {
        RouteRt {
            provider_name: Arc::from(r.provider.as_str()),
            provider: p.clone(),
            model: Arc::from(r.model.as_str()),
            model_json: json_string(&r.model),
            price: r.price,
            forward_tags: r.forward_tags,
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
                _ => crate::providers::dialect::RouteDialect::openai().with_rerank(r.rerank),
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
    /// The response cache, when the alias has `cache:`.
    pub(crate) cache: Option<crate::cache::AliasCache>,
    /// Output capture, when the alias has `capture:`.
    pub capture: Option<Arc<crate::capture::Plan>>,
}

impl ModelRt {
    /// What governance's second admission step needs of this alias.
    pub fn limits(&self) -> crate::governance::AliasLimits<'_> {
        crate::governance::AliasLimits {
            rules: &self.rules,
            tokenizer: self.routes.first().map(|r| &r.model),
            prices: &self.prices,
            reserve_output_tokens: self.reserve_output_tokens,
            ratios: &self.ratios,
        }
    }
}

/// Everything the request path reads.
pub struct Runtime {
    pub config: Arc<Config>,
    /// The state that outlives reloads; the next runtime is built with it.
    pub durable: Arc<durable::Durable>,
    pub keys: KeyIndex,
    pub key_info: Vec<Arc<KeyRt>>,
    /// The aliases, each shared with the requests that resolved it.
    pub models: HashMap<String, Arc<ModelRt>>,
    pub upstreams: BTreeMap<String, UpstreamRef>,
    pub max_body_bytes: u64,
    pub body_idle_timeout: Duration,
    pub keepalive_secs: u64,
    pub write_timeout: Duration,
    pub header_limits: HeaderLimits,
    pub max_attempts: u32,
    pub request_deadline: Duration,
    /// Name of the route response header, if enabled.
    pub route_header: Option<http::HeaderName>,
    /// The certificate served on `listen` when `tls` is set.
    pub tls_cert: Option<Arc<crate::tls::ServerCert>>,
    /// Shadow traffic and hedging, per alias.
    pub experiments: experiments::Plans,
    /// The providers of `/v1/files` and `/v1/batches`, by name.
    pub files: HashMap<String, Arc<files::FilesRt>>,
    /// The declared request tags (`workloads:`); empty when none are.
    pub workloads: Arc<crate::workload::Declared>,
}

impl Runtime {
    /// The rules client requests are held to: keys' and teams' (a team's
    /// rules appear once per key of the team), and aliases'.
    pub fn client_rules(&self) -> impl Iterator<Item = &Rule> {
        self.key_info
            .iter()
            .flat_map(|k| {
                k.rules
                    .iter()
                    .chain(k.workload_rules.iter().map(|w| &w.rule))
            })
            .chain(self.models.values().flat_map(|m| m.rules.iter()))
    }

    /// Every rule of the config: the clients' and the shadow budget's.
    pub fn rules(&self) -> Vec<&Rule> {
        self.client_rules()
            .chain(self.experiments.shadow_rules.iter())
            .collect()
    }

    /// Whether a rule counts tokens or spend: every prompt is then
    /// estimated at admission (and the tokenizers are loaded at start).
    pub fn estimates(&self) -> bool {
        self.rules()
            .into_iter()
            .any(crate::governance::plan::needs_estimate)
    }

    /// Hands this runtime's bounds to the state that outlives it (the
    /// cache store's `cache.max_bytes`). Called once the runtime is the
    /// one that serves (at start-up, and by a reload just before the swap),
    /// never for a build that a later step of the reload rejects.
    pub fn take_over(&self) {
        self.durable
            .cache
            .set_max_bytes(usize::try_from(self.config.cache.max_bytes).unwrap_or(usize::MAX));
        let f = &self.config.files;
        crate::objects::global().set_bounds(f.max_objects, f.max_objects_per_owner);
    }

    /// Compiles a validated config, with the state that outlives reloads
    /// from `durable`. Does no network I/O.
    pub fn build(cfg: Config, durable: &Arc<durable::Durable>) -> Result<Self, ConfigError> {
        let mut problems = Vec::new();
        let mut providers: HashMap<String, Arc<ProviderRt>> = HashMap::new();
        let mut upstreams = BTreeMap::new();
        for (name, p) in &cfg.providers {
            let rt = match p.kind {
                ProviderKind::Mock => ProviderRt::Mock(p.mock.clone().unwrap_or_default()),
                ProviderKind::Openai
                | ProviderKind::Anthropic
                | ProviderKind::Azure
                | ProviderKind::Gemini
                | ProviderKind::Bedrock
                | ProviderKind::Vertex => {
                    match Upstream::build(name, p, durable.breakers.clone(), &durable.pool_keys) {
                        Ok(u) => {
                            let u = Arc::new(u);
                            upstreams.insert(name.clone(), u.clone());
                            ProviderRt::Http(u)
                        }
                        // The cloud kinds' credential errors name their
                        // whole field already.
                        Err(e) if e.starts_with(&format!("providers.{name}.")) => {
                            problems.push(e);
                            continue;
                        }
                        Err(e) => {
                            problems.push(format!("providers.{name}: {e}"));
                            continue;
                        }
                    }
                }
            };
            providers.insert(name.clone(), Arc::new(rt));
        }
        let shared_cache = match &cfg.cache.redis {
            Some(r) => match crate::cache::RedisCache::open(&r.url) {
                Ok(s) => Some(durable.cache_shared.get_or_insert_with(r.url.clone(), || s)),
                Err(e) => {
                    problems.push(e);
                    None
                }
            },
            None => None,
        };
        let workloads = Arc::new(crate::workload::Declared::compile(&cfg.workloads));
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
                Arc::new(ModelRt {
                    name: Arc::from(alias.as_str()),
                    routes,
                    rules: plan::compile(Level::Model, alias, &m.limits, &[]),
                    prices: m.routes.iter().filter_map(|r| r.price).collect(),
                    reserve_output_tokens: m.reserve_output_tokens,
                    ratios: crate::governance::ratio::Ratios::build(
                        &durable.ratios,
                        alias,
                        m.routes
                            .iter()
                            .map(crate::config::routing::route_name)
                            .collect::<Vec<_>>()
                            .iter()
                            .map(String::as_str),
                    ),
                    routing: crate::routing::Plan::build_tagged(
                        &durable.routes,
                        alias,
                        m,
                        &workloads,
                    ),
                    cache: m.cache.as_ref().map(|c| {
                        crate::cache::AliasCache::build(
                            c,
                            durable.cache.clone(),
                            shared_cache.clone(),
                        )
                    }),
                    capture: m
                        .capture
                        .as_ref()
                        .map(|c| Arc::new(crate::capture::Plan::build(c))),
                }),
            );
        }
        let mut digests = Vec::new();
        let mut key_info = Vec::new();
        let all_models = KeyRt::all_models_body(&cfg.models);
        for k in &cfg.keys {
            // Validated (`config::validate`): every key has its digest.
            let Some(d) = k.digest() else {
                continue;
            };
            digests.push(d);
            let team = k.team.as_ref().and_then(|t| cfg.teams.get_key_value(t));
            let team = team.map(|(n, t)| (n.as_str(), t));
            key_info.push(Arc::new(KeyRt::compile(
                k,
                team,
                &cfg.models,
                &all_models,
                &workloads,
            )));
        }
        let tls_cert = match &cfg.tls {
            Some(t) => match crate::tls::ServerCert::load(t, crate::base::clock::unix_secs()) {
                Ok(c) => Some(Arc::new(c)),
                Err(p) => {
                    problems.extend(p);
                    None
                }
            },
            None => None,
        };
        let experiments = experiments::build(&cfg, &providers, durable);
        let files = files::build(&cfg, &providers, durable, &mut problems);
        if !problems.is_empty() {
            return Err(ConfigError { problems });
        }
        Ok(Self {
            durable: durable.clone(),
            tls_cert,
            experiments,
            files,
            max_body_bytes: cfg.max_body_bytes,
            body_idle_timeout: cfg.downstream.body_idle_timeout.get(),
            keepalive_secs: cfg.downstream.keepalive.get().as_secs(),
            write_timeout: cfg.downstream.write_timeout.get(),
            header_limits: HeaderLimits {
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
            workloads,
        })
    }

    /// The key a client presented: a config key, else a runtime key from
    /// the key store's snapshot (never waiting for its database). The one
    /// place where a request's key is looked up.
    pub fn lookup_key(
        &self,
        presented: &[u8],
    ) -> Result<Arc<KeyRt>, crate::base::error::GatewayError> {
        use crate::base::error::GatewayError;
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

/// Header limits toward clients.
#[derive(Debug, Clone, Copy)]
pub struct HeaderLimits {
    /// Longest wait for the first byte of a request (keep-alive idle).
    pub idle: std::time::Duration,
    /// From the first byte to the end of the header; also the wait for an
    /// HTTP/2 client's preface.
    pub deadline: std::time::Duration,
    pub max_bytes: usize,
}
