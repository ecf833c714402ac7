//! The live runtime: the `ArcSwap` holder that reload swaps and every
//! request loads once ([`Shared`]), and the views of it that lower layers
//! are handed (they never name it).

use crate::runtime::Runtime;
use arc_swap::ArcSwap;
use std::sync::Arc;

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

impl crate::upstream::health::UpstreamSource for Shared {
    fn upstreams(&self) -> Vec<Arc<crate::upstream::Upstream>> {
        self.load().upstreams.values().cloned().collect()
    }
}

impl crate::tls::TlsSource for Shared {
    fn certificate(&self) -> Option<Arc<rustls::sign::CertifiedKey>> {
        self.current.load().tls_cert.as_ref().map(|c| c.key.clone())
    }

    fn handshake_deadline(&self) -> std::time::Duration {
        self.current.load().header_limits.deadline
    }
}
