//! Upstreams: per provider, a health-checked balancer over its backends, and
//! everything needed to build a peer and its headers, prepared at config load.

pub mod discovery;
pub mod health;
pub mod tls;

use crate::config::url::{parse_base_url, split_host_port, BaseUrl};
use crate::config::{HealthCheck as HealthConf, Provider};
use crate::proxy::endpoint::Endpoint;
use discovery::{DnsDiscovery, Target};
use http::{HeaderName, HeaderValue, Uri};
use pingora::lb::health_check::{HttpHealthCheck, TcpHealthCheck};
use pingora::lb::selection::RoundRobin;
use pingora::lb::{Backend, Backends, LoadBalancer};
use pingora::upstreams::peer::HttpPeer;
use std::sync::Arc;
use std::time::Duration;

/// One HTTP provider, compiled from config.
pub struct Upstream {
    pub name: String,
    pub balancer: LoadBalancer<RoundRobin>,
    pub base: BaseUrl,
    /// `Host` header value.
    pub host: HeaderValue,
    /// `Authorization: Bearer …`, marked sensitive.
    pub auth: Option<HeaderValue>,
    pub extra_headers: Vec<(HeaderName, HeaderValue)>,
    /// Upstream URI per endpoint, with the base URL's prefix.
    paths: [Uri; Endpoint::PROXIED.len()],
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub ca: Option<tls::CaList>,
    pub health: HealthConf,
    pub dns_refresh: Duration,
    /// Configured targets, for logs and the health metric.
    pub targets: Vec<String>,
    /// Ask streams for usage on the client's behalf.
    pub stream_usage: bool,
}

impl Upstream {
    /// Builds the balancer and prepared values. No network I/O happens here:
    /// call [`Upstream::refresh`] to resolve and check before first use.
    pub fn build(name: &str, p: &Provider) -> Result<Self, String> {
        let url = p.base_url.as_deref().ok_or("base_url is required")?;
        let base = parse_base_url(url)?;
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
        let target_names = targets.iter().map(|t| format!("{}:{}", t.host, t.port)).collect();
        let backends = Backends::new(Box::new(DnsDiscovery::new(targets)));
        let mut balancer = LoadBalancer::<RoundRobin>::from_backends(backends);
        let ca = match &p.ca_file {
            Some(f) => Some(tls::load_ca_file(f)?),
            None => None,
        };
        let host = HeaderValue::from_str(&base.host_header()).map_err(|e| e.to_string())?;
        let auth = match &p.api_key {
            Some(k) => {
                let mut v = HeaderValue::from_str(&format!("Bearer {k}"))
                    .map_err(|_| "api_key has characters not allowed in a header".to_string())?;
                v.set_sensitive(true);
                Some(v)
            }
            None => None,
        };
        if p.health_check.enabled {
            let check = health_check(&base, &p.health_check, ca.clone(), auth.clone());
            balancer.set_health_check(check);
        }
        let extra_headers = p
            .headers
            .iter()
            .map(|(k, v)| {
                Ok((
                    HeaderName::from_bytes(k.as_bytes()).map_err(|e| e.to_string())?,
                    HeaderValue::from_str(v).map_err(|e| e.to_string())?,
                ))
            })
            .collect::<Result<_, String>>()?;
        let paths = Endpoint::PROXIED.map(|ep| {
            let path = format!("{}{}", base.prefix, ep.upstream_suffix());
            path.parse::<Uri>().unwrap_or_else(|_| Uri::from_static("/"))
        });
        Ok(Self {
            name: name.to_string(),
            balancer,
            host,
            auth,
            extra_headers,
            paths,
            connect_timeout: p.timeouts.connect.get(),
            read_timeout: p.timeouts.read.get(),
            ca,
            health: p.health_check.clone(),
            dns_refresh: p.dns_refresh.get(),
            targets: target_names,
            stream_usage: p.stream_usage,
            base,
        })
    }

    /// Resolves the backends (DNS) and updates the balancer.
    pub async fn resolve(&self) {
        if let Err(e) = self.balancer.update().await {
            log::warn!("provider {}: backend discovery failed: {e}", self.name);
        }
    }

    /// Runs one health check over every backend.
    pub async fn check_health(&self) {
        if self.health.enabled {
            self.balancer.backends().run_health_check(true).await;
        }
    }

    /// Resolve, then check: what a new upstream needs before it takes traffic.
    pub async fn refresh(&self) {
        self.resolve().await;
        self.check_health().await;
    }

    /// The upstream URI for an endpoint.
    pub fn uri(&self, ep: Endpoint) -> &Uri {
        &self.paths[ep.index()]
    }

    /// Picks a backend not in `skip`: a healthy one, or with `any_health`,
    /// any (used when no route has a healthy backend left).
    pub fn select(&self, key: &[u8], skip: &[std::net::SocketAddr], any_health: bool) -> Option<Backend> {
        self.balancer.select_with(key, 256, |b, healthy| {
            (healthy || any_health) && b.addr.as_inet().is_some_and(|a| !skip.contains(a))
        })
    }

    /// The peer for one backend, with TLS, SNI and timeouts from config.
    pub fn peer(&self, addr: std::net::SocketAddr) -> HttpPeer {
        let sni = if self.base.tls {
            self.base.host.clone()
        } else {
            String::new()
        };
        let mut peer = HttpPeer::new(addr, self.base.tls, sni);
        peer.options.connection_timeout = Some(self.connect_timeout);
        peer.options.total_connection_timeout = Some(self.connect_timeout * 2);
        peer.options.read_timeout = Some(self.read_timeout);
        peer.options.idle_timeout = Some(Duration::from_secs(60));
        if let Some(ca) = &self.ca {
            peer.options.ca = Some(ca.clone());
        }
        peer
    }

    /// Each current backend with its health, for the metric and logs.
    pub fn backend_health(&self) -> Vec<(String, bool)> {
        let backends = self.balancer.backends();
        backends
            .get_backend()
            .iter()
            .map(|b| (b.addr.to_string(), backends.ready(b)))
            .collect()
    }
}

fn health_check(
    base: &BaseUrl,
    hc: &HealthConf,
    ca: Option<tls::CaList>,
    auth: Option<HeaderValue>,
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
            if let Some(auth) = auth {
                // Free endpoints such as GET /v1/models still want the key.
                let _ = check.req.insert_header(http::header::AUTHORIZATION, auth);
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

/// Shared handle.
pub type UpstreamRef = Arc<Upstream>;
