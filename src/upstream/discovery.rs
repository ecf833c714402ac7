//! Backend discovery for one provider: fixed addresses, or host names that are
//! re-resolved in the background. Never called on the request path.

use async_trait::async_trait;
use pingora::lb::discovery::ServiceDiscovery;
use pingora::lb::Backend;
use pingora::protocols::l4::socket::SocketAddr as PingoraAddr;
use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

/// One configured target: an IP literal, or a name to resolve.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) host: String,
    pub(crate) port: u16,
}

/// Resolves targets with the async resolver. If a name fails to resolve, the
/// addresses it had last time are kept, so a DNS outage does not empty the pool.
pub(crate) struct DnsDiscovery {
    targets: Vec<Target>,
    last: Mutex<HashMap<String, BTreeSet<Backend>>>,
}

impl DnsDiscovery {
    pub(crate) fn new(targets: Vec<Target>) -> Self {
        Self {
            targets,
            last: Mutex::new(HashMap::new()),
        }
    }

    async fn resolve(t: &Target) -> std::io::Result<BTreeSet<Backend>> {
        if let Ok(ip) = t.host.parse::<std::net::IpAddr>() {
            return Ok(BTreeSet::from([backend(std::net::SocketAddr::new(
                ip, t.port,
            ))]));
        }
        let addrs = tokio::net::lookup_host((t.host.as_str(), t.port)).await?;
        Ok(addrs.map(backend).collect())
    }
}

fn backend(addr: std::net::SocketAddr) -> Backend {
    Backend {
        addr: PingoraAddr::Inet(addr),
        weight: 1,
        ext: Default::default(),
    }
}

#[async_trait]
impl ServiceDiscovery for DnsDiscovery {
    async fn discover(&self) -> pingora::Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        let mut all = BTreeSet::new();
        for t in &self.targets {
            let key = format!("{}:{}", t.host, t.port);
            match Self::resolve(t).await {
                Ok(found) if !found.is_empty() => {
                    all.extend(found.iter().cloned());
                    if let Ok(mut last) = self.last.lock() {
                        last.insert(key, found);
                    }
                }
                other => {
                    let why = other.err().map(|e| e.to_string()).unwrap_or_default();
                    log::warn!(
                        "resolving upstream {key} failed ({why}); keeping its last addresses"
                    );
                    if let Ok(last) = self.last.lock() {
                        if let Some(prev) = last.get(&key) {
                            all.extend(prev.iter().cloned());
                        }
                    }
                }
            }
        }
        Ok((all, HashMap::new()))
    }
}
