//! One background ticker that walks the *current* runtime's upstreams, so
//! health checks, DNS refreshes and the cloud kinds' credential refreshes
//! follow reloads. Each provider runs on its
//! own interval; a slow check never delays another provider's.

use crate::telemetry::metrics;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TICK: Duration = Duration::from_millis(100);

/// Where the ticker finds the upstreams of the current config.
pub(crate) trait UpstreamSource: Send + Sync + 'static {
    /// The current upstreams.
    fn upstreams(&self) -> Vec<Arc<crate::upstream::Upstream>>;
}

/// The health and DNS background service.
pub(crate) struct HealthTicker {
    pub(crate) source: Arc<dyn UpstreamSource>,
}

struct Due {
    health: Instant,
    dns: Instant,
    busy: Arc<AtomicBool>,
    /// A cloud provider's credentials are being refreshed.
    auth_busy: Arc<AtomicBool>,
}

#[async_trait]
impl BackgroundService for HealthTicker {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut due: HashMap<usize, Due> = HashMap::new();
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(TICK) => {}
            }
            let upstreams = self.source.upstreams();
            let now = Instant::now();
            let mut live = Vec::with_capacity(upstreams.len());
            for up in &upstreams {
                let id = Arc::as_ptr(up) as usize;
                live.push(id);
                let d = due.entry(id).or_insert_with(|| Due {
                    health: now + up.health.interval.get(),
                    dns: now + up.dns_refresh,
                    busy: Arc::new(AtomicBool::new(false)),
                    auth_busy: Arc::new(AtomicBool::new(false)),
                });
                // Credentials are refreshed before they expire, so that
                // requests find them cached.
                if let Some(cloud) = up.cloud.clone() {
                    if cloud.refresh_due() && !d.auth_busy.swap(true, Ordering::AcqRel) {
                        let busy = d.auth_busy.clone();
                        tokio::spawn(async move {
                            cloud.refresh().await;
                            busy.store(false, Ordering::Release);
                        });
                    }
                }
                let run_dns = now >= d.dns;
                let run_health = now >= d.health;
                if !(run_dns || run_health) || d.busy.swap(true, Ordering::AcqRel) {
                    continue;
                }
                if run_dns {
                    d.dns = now + up.dns_refresh;
                }
                if run_health {
                    d.health = now + up.health.interval.get();
                }
                let up = up.clone();
                let busy = d.busy.clone();
                tokio::spawn(async move {
                    if run_dns {
                        up.resolve().await;
                    }
                    if run_health {
                        up.check_health().await;
                    }
                    export(&up);
                    busy.store(false, Ordering::Release);
                });
            }
            due.retain(|id, _| live.contains(id));
        }
    }
}

/// Publishes each backend's health (0/1) and breaker state.
pub(crate) fn export(up: &crate::upstream::Upstream) {
    if let Some(m) = metrics::get() {
        for (addr, healthy, breaker) in up.backend_health() {
            let labels = [up.name.as_str(), addr.as_str()];
            m.backend_healthy
                .with_label_values(&labels)
                .set(i64::from(healthy));
            m.breaker_state
                .with_label_values(&labels)
                .set(breaker as i64);
        }
    }
}
