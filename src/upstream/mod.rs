//! Upstreams: per provider, a health-checked balancer over its backends, and
//! everything needed to build a peer and its headers, prepared at config load.

pub(crate) mod client;
pub(crate) mod cloud;
pub(crate) mod discovery;
pub(crate) mod health;
pub(crate) mod pool;

use crate::base::endpoint::Endpoint;
use crate::config::url::{parse_base_url, split_host_port, BaseUrl};
use crate::config::{BreakerPolicy, HealthCheck as HealthConf, Provider, RetryPolicy, Timeouts};
use crate::providers::dialect;
use crate::resilience::breaker::{self, BackendState};
use crate::resilience::Limits;
use arc_swap::ArcSwap;
use discovery::{DnsDiscovery, Target};
use http::{HeaderName, HeaderValue, Uri};
use pingora::lb::health_check::{HttpHealthCheck, TcpHealthCheck};
use pingora::lb::selection::RoundRobin;
use pingora::lb::{Backends, LoadBalancer};
use pingora::upstreams::peer::HttpPeer;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// One HTTP provider, compiled from config.
pub struct Upstream {
    pub(crate) name: String,
    pub(crate) balancer: LoadBalancer<RoundRobin>,
    pub(crate) base: BaseUrl,
    /// `Host` header value.
    pub(crate) host: HeaderValue,
    /// The provider key's header value (`Bearer …`, or the bare key for
    /// `x-api-key` / `api-key`), marked sensitive.
    pub(crate) auth: Option<HeaderValue>,
    /// The header `auth` goes in (`Authorization`, `x-api-key`, `api-key`).
    pub(crate) auth_name: HeaderName,
    /// The key pool (`api_keys`): each attempt's key, in `auth_name`, in
    /// place of `auth`.
    pub(crate) pool: Option<pool::KeyPool>,
    /// SigV4 credentials or an OAuth token (`kind: bedrock`, `vertex`).
    pub(crate) cloud: Option<Arc<cloud::CloudAuth>>,
    pub(crate) kind: crate::config::ProviderKind,
    pub(crate) extra_headers: Vec<(HeaderName, HeaderValue)>,
    /// Upstream URI per endpoint, with the base URL's prefix.
    paths: [Uri; Endpoint::PROXIED.len()],
    pub(crate) timeouts: Timeouts,
    pub(crate) retry: RetryPolicy,
    pub(crate) breaker: BreakerPolicy,
    /// Passive-health state of each current backend (shared across reloads).
    states: ArcSwap<HashMap<SocketAddr, Arc<BackendState>>>,
    /// Where the states live across reloads (`runtime::Durable`).
    breakers: Arc<crate::base::keyed::Keyed<(String, SocketAddr), BackendState>>,
    pub(crate) ca: Option<crate::ca_file::CaList>,
    /// Pool key of the trust settings: connections verified against one CA
    /// are never reused by a provider that trusts another (Pingora's pool
    /// key covers the address and SNI, not the CA).
    trust_key: u64,
    pub(crate) health: HealthConf,
    pub(crate) dns_refresh: Duration,
    /// Ask streams for usage on the client's behalf.
    pub(crate) stream_usage: bool,
}

impl Upstream {
    /// Builds the balancer and prepared values. No network I/O happens here:
    /// call [`Upstream::refresh`] to resolve and check before first use.
    pub(crate) fn build(
        name: &str,
        p: &Provider,
        breakers: Arc<crate::base::keyed::Keyed<(String, SocketAddr), BackendState>>,
        key_states: &crate::base::keyed::Keyed<(String, [u8; 32]), pool::KeyState>,
    ) -> Result<Self, String> {
        let url = match &p.base_url {
            Some(u) => u.clone(),
            None => dialect::default_base_url(p).ok_or("base_url is required")?,
        };
        let base = parse_base_url(&url)?;
        let targets: Vec<Target> = match &p.backends {
            Some(list) => list
                .iter()
                .map(|b| match split_host_port(b) {
                    Some((host, Some(port))) => Ok(Target { host, port }),
                    _ => Err(format!("backend `{b}` is not host:port")),
                })
                .collect::<Result<_, _>>()?,
            None => vec![Target {
                host: base.host.clone(),
                port: base.port,
            }],
        };
        let backends = Backends::new(Box::new(DnsDiscovery::new(targets)));
        let mut balancer = LoadBalancer::<RoundRobin>::from_backends(backends);
        let (ca, trust_key) = match &p.ca_file {
            Some(f) => {
                let (ca, key) = crate::ca_file::load_ca_file(f)?;
                (Some(ca), key)
            }
            None => (None, 0),
        };
        let host = HeaderValue::from_str(&base.host_header()).map_err(|e| e.to_string())?;
        let (mut auth_name, mut auth) = match &p.api_key {
            Some(k) => {
                let (name, v) = dialect::auth_header(p.kind, k)?;
                (name, Some(v))
            }
            None => (dialect::auth_header_name(p.kind), None),
        };
        let pool = match &p.api_keys {
            Some(keys) => Some(pool::KeyPool::build(
                name,
                keys,
                |k| dialect::auth_header(p.kind, k).map(|(_, v)| v),
                key_states,
            )?),
            None => None,
        };
        let cloud = match cloud_auth(name, p)? {
            CloudBuilt::None => None,
            CloudBuilt::Header(v) => {
                (auth_name, auth) = (http::header::AUTHORIZATION, Some(v));
                None
            }
            CloudBuilt::Auth(c) => Some(Arc::new(c)),
        };
        if p.health_check.enabled {
            // The key and the kind's fixed headers (anthropic-version):
            // free endpoints such as GET /v1/models still want them.
            let mut sent = dialect::fixed_headers(p)?;
            sent.extend(auth.clone().map(|v| (auth_name.clone(), v)));
            let check = health_check(&base, &p.health_check, ca.clone(), sent);
            balancer.set_health_check(check);
        }
        let mut extra_headers: Vec<(HeaderName, HeaderValue)> = p
            .headers
            .iter()
            .map(|(k, v)| {
                Ok((
                    HeaderName::from_bytes(k.as_bytes()).map_err(|e| e.to_string())?,
                    HeaderValue::from_str(v).map_err(|e| e.to_string())?,
                ))
            })
            .collect::<Result<_, String>>()?;
        extra_headers.extend(dialect::fixed_headers(p)?);
        let mut retry = p.retry.clone();
        if matches!(
            p.kind,
            crate::config::ProviderKind::Anthropic | crate::config::ProviderKind::Vertex
        ) && !retry.on_status.contains(&dialect::ANTHROPIC_OVERLOADED)
        {
            retry.on_status.push(dialect::ANTHROPIC_OVERLOADED);
        }
        let paths = Endpoint::PROXIED.map(|ep| {
            let path = format!("{}{}", base.prefix, ep.upstream_suffix());
            path.parse::<Uri>()
                .unwrap_or_else(|_| Uri::from_static("/"))
        });
        Ok(Self {
            name: name.to_string(),
            balancer,
            host,
            auth,
            auth_name,
            pool,
            cloud,
            kind: p.kind,
            extra_headers,
            paths,
            timeouts: p.timeouts.clone(),
            retry,
            breaker: p.breaker.clone(),
            states: ArcSwap::from_pointee(HashMap::new()),
            breakers,
            ca,
            trust_key,
            health: p.health_check.clone(),
            dns_refresh: p.dns_refresh.get(),
            stream_usage: p.stream_usage,
            base,
        })
    }

    /// Resolves the backends (DNS) and updates the balancer.
    pub async fn resolve(&self) {
        if let Err(e) = self.balancer.update().await {
            log::warn!("provider {}: backend discovery failed: {e}", self.name);
        }
        let current = self.balancer.backends().get_backend();
        let states = self.states.load();
        let unchanged = current.len() == states.len()
            && current
                .iter()
                .all(|b| b.addr.as_inet().is_some_and(|a| states.contains_key(a)));
        if !unchanged {
            let map = current
                .iter()
                .filter_map(|b| b.addr.as_inet().copied())
                .map(|a| (a, self.breakers.get_or_default((self.name.clone(), a))))
                .collect();
            self.states.store(Arc::new(map));
        }
    }

    /// Runs one health check over every backend.
    pub async fn check_health(&self) {
        if self.health.enabled {
            self.balancer.backends().run_health_check(true).await;
        }
    }

    /// Resolve, then check: what a new upstream needs before it takes
    /// traffic (a cloud provider also gets its credentials, so the first
    /// request does not wait for them).
    pub async fn refresh(&self) {
        self.resolve().await;
        self.check_health().await;
        if let Some(c) = self.cloud.as_ref().filter(|c| c.refresh_due()) {
            c.refresh().await;
        }
    }

    /// The upstream URI for an endpoint.
    pub fn uri(&self, ep: Endpoint) -> &Uri {
        &self.paths[ep.index()]
    }

    /// Picks a backend not in `skip` whose breaker admits it: a healthy one,
    /// or with `any_health`, any (used when no route has a healthy backend).
    /// `Err(Some(out))`: backends exist but are cooling down or open.
    pub fn select(
        &self,
        key: &[u8],
        skip: &[SocketAddr],
        any_health: bool,
    ) -> Result<(SocketAddr, Option<Arc<BackendState>>), Option<Out>> {
        let states = self.states.load();
        let now = crate::base::clock::monotonic_ms();
        let out_for = std::cell::Cell::new(None::<u64>);
        let limited = std::cell::Cell::new(false);
        // The state of the backend last accepted: the one picked.
        let accepted = std::cell::Cell::new(None::<Arc<BackendState>>);
        let picked = self.balancer.select_with(key, 256, |b, healthy| {
            let Some(addr) = b.addr.as_inet() else {
                return false;
            };
            if !(healthy || any_health) || skip.contains(addr) {
                return false;
            }
            match states.get(addr) {
                Some(s) if !s.admit(now, &self.breaker) => {
                    let ms = s.out_for(now).unwrap_or(1000);
                    limited.set(limited.get() || s.rate_limited(now));
                    out_for.set(Some(out_for.get().map_or(ms, |m: u64| m.min(ms))));
                    false
                }
                s => {
                    accepted.set(s.cloned());
                    true
                }
            }
        });
        match picked.and_then(|b| b.addr.as_inet().copied()) {
            Some(addr) => Ok((addr, accepted.take())),
            None => Err(out_for.get().map(|ms| Out {
                ms,
                rate_limited: limited.get(),
            })),
        }
    }

    /// The effective limits of a route on this provider.
    pub fn limits(&self, o: Option<&crate::config::TimeoutOverrides>) -> Limits {
        let t = &self.timeouts;
        let idle = o.and_then(|o| o.idle).unwrap_or(t.idle).get();
        Limits {
            connect: o.and_then(|o| o.connect).unwrap_or(t.connect).get(),
            first_byte: o
                .and_then(|o| o.first_byte)
                .or(t.first_byte)
                .map_or(idle, |d| d.get()),
            idle,
            total: o.and_then(|o| o.total).or(t.total).map(|d| d.get()),
        }
    }

    /// The peer for one backend, with TLS, SNI and the route's timeouts.
    pub fn peer(&self, addr: SocketAddr, limits: &Limits) -> HttpPeer {
        let sni = if self.base.tls {
            self.base.host.clone()
        } else {
            String::new()
        };
        let mut peer = HttpPeer::new(addr, self.base.tls, sni);
        peer.options.connection_timeout = Some(limits.connect);
        peer.options.total_connection_timeout = Some(limits.connect * 2);
        peer.options.read_timeout = Some(limits.read_timeout());
        peer.options.idle_timeout = Some(Duration::from_secs(60));
        if let Some(ca) = &self.ca {
            peer.options.ca = Some(ca.clone());
        }
        peer.group_key = self.trust_key;
        peer
    }

    /// Each current backend with its active health and breaker state.
    pub fn backend_health(&self) -> Vec<(String, bool, breaker::State)> {
        let backends = self.balancer.backends();
        let states = self.states.load();
        let now = crate::base::clock::monotonic_ms();
        backends
            .get_backend()
            .iter()
            .map(|b| {
                let state = b
                    .addr
                    .as_inet()
                    .and_then(|a| states.get(a))
                    .map_or(breaker::State::Closed, |s| s.state(now));
                (b.addr.to_string(), backends.ready(b), state)
            })
            .collect()
    }
}

/// What a cloud kind's credentials compile to.
enum CloudBuilt {
    None,
    /// A fixed `Authorization` value (a Bedrock API key in
    /// `bedrock.credentials`).
    Header(HeaderValue),
    Auth(cloud::CloudAuth),
}

/// The credentials of a `kind: bedrock` or `kind: vertex` provider. With
/// `api_key` / `api_keys` instead, those keys are the credentials.
fn cloud_auth(name: &str, p: &Provider) -> Result<CloudBuilt, String> {
    use crate::providers::aws::config::{Auth, DEFAULT_STS_TIMEOUT};
    use crate::providers::gcp::config::DEFAULT_TOKEN_TIMEOUT;
    use crate::providers::token_client::TokenClient;
    let keyed = p.api_key.is_some() || p.api_keys.is_some();
    let var = |k: &str| std::env::var(k).ok();
    if let Some(b) = p.bedrock.as_ref().filter(|_| !keyed) {
        let at = format!("providers.{name}.bedrock");
        return Ok(
            match b.build(&at, var, TokenClient::new(DEFAULT_STS_TIMEOUT, None))? {
                Auth::Bearer(v) => CloudBuilt::Header(v),
                Auth::SigV4(creds) => CloudBuilt::Auth(cloud::CloudAuth::new(
                    name,
                    cloud::Source::Aws {
                        region: b.region.clone(),
                        creds,
                    },
                )),
            },
        );
    }
    if let Some(v) = p.vertex.as_ref().filter(|_| !keyed) {
        let at = format!("providers.{name}.vertex");
        let tokens = v.build(&at, var, TokenClient::new(DEFAULT_TOKEN_TIMEOUT, None))?;
        return Ok(CloudBuilt::Auth(cloud::CloudAuth::new(
            name,
            cloud::Source::Google(tokens),
        )));
    }
    Ok(CloudBuilt::None)
}

fn health_check(
    base: &BaseUrl,
    hc: &HealthConf,
    ca: Option<crate::ca_file::CaList>,
    headers: Vec<(HeaderName, HeaderValue)>,
) -> Box<dyn pingora::lb::health_check::HealthCheck + Send + Sync> {
    match &hc.path {
        None => {
            // A TCP connect proves the port is open without spending anything.
            let mut check = TcpHealthCheck::new();
            check.peer_template.options.connection_timeout = Some(hc.timeout.get());
            check.consecutive_failure = hc.unhealthy_after;
            check.consecutive_success = hc.healthy_after;
            check
        }
        Some(path) => {
            let mut check = HttpHealthCheck::new(&base.host_header(), base.tls);
            if base.tls {
                check.peer_template.sni = base.host.clone();
            }
            check.peer_template.options.ca = ca;
            check.peer_template.options.connection_timeout = Some(hc.timeout.get());
            check.peer_template.options.read_timeout = Some(hc.timeout.get());
            check.consecutive_failure = hc.unhealthy_after;
            check.consecutive_success = hc.healthy_after;
            if let Ok(uri) = path.parse::<Uri>() {
                check.req.set_uri(uri);
            }
            for (name, value) in headers {
                let _ = check.req.insert_header(name, value);
            }
            check.validator = Some(Box::new(|resp| {
                if resp.status.is_success() {
                    Ok(())
                } else {
                    pingora::Error::e_explain(
                        pingora::ErrorType::CustomCode("health check status", resp.status.as_u16()),
                        "non-2xx health check",
                    )
                }
            }));
            Box::new(check)
        }
    }
}

/// Why a provider had no backend to offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Out {
    /// Until the first one is back.
    pub(crate) ms: u64,
    /// At least one is waiting out a 429's `Retry-After`.
    pub(crate) rate_limited: bool,
}

/// Shared handle.
pub(crate) type UpstreamRef = Arc<Upstream>;
