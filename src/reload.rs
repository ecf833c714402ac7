//! Hot reload on SIGHUP: load, validate and build the new runtime off the
//! request path, resolve and health-check its upstreams once, then swap. A
//! bad file leaves the running config in place.

use crate::config::{self, Config};
use crate::live::Shared;
use crate::runtime::Runtime;
use crate::telemetry::metrics;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::path::PathBuf;
use std::sync::Arc;

/// The SIGHUP background service.
pub struct Reloader {
    pub(crate) shared: Arc<Shared>,
    pub(crate) path: PathBuf,
}

impl Reloader {
    /// Reloads once, counts the outcome and logs it (SIGHUP and
    /// `POST /admin/reload`). Reloads never overlap.
    pub async fn reload_and_record(&self) -> Result<(), String> {
        static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
        let _one = ONE_AT_A_TIME.lock().await;
        let result = self.reload().await;
        let label = if result.is_ok() { "success" } else { "failed" };
        if let Some(m) = metrics::get() {
            m.reloads.with_label_values(&[label]).inc();
            if result.is_ok() {
                m.config_loaded.set(crate::base::clock::unix_secs());
            }
        }
        match &result {
            Ok(()) => log::info!("config reloaded from {}", self.path.display()),
            Err(e) => {
                log::error!("config reload failed; keeping the running config. Reason:\n{e}")
            }
        }
        result
    }

    /// Loads the file and swaps it in, or explains why not.
    pub async fn reload(&self) -> Result<(), String> {
        let cfg = config::load_file(&self.path).map_err(|e| e.to_string())?;
        check_fixed_fields(&self.shared.load().config, &cfg)?;
        let durable = self.shared.load().durable.clone();
        let rt = Runtime::build(cfg, &durable).map_err(|e| e.to_string())?;
        crate::keystore::on_reload(&rt.config)?;
        crate::capture::configure(&rt.config);
        rt.warm_up().await;
        crate::governance::export_remaining(&rt.rules()).await;
        if let Some(m) = metrics::get() {
            m.backend_healthy.reset();
        }
        for up in rt.upstreams.values() {
            crate::upstream::health::export(up);
        }
        // The exporter is rebuilt when `tracing:` changed (kept as it is
        // otherwise); a failure fails the reload.
        crate::telemetry::trace::configure(rt.config.tracing.as_ref())?;
        crate::tls::export(rt.tls_cert.as_deref());
        metrics::export_config(&rt.config);
        if let Some(c) = &rt.tls_cert {
            log::info!(
                "TLS certificate from {} (serial {}) serves new connections",
                c.cert_path,
                c.serial
            );
        }
        rt.take_over();
        self.shared.swap(rt);
        Ok(())
    }
}

/// Settings bound at start-up cannot change on reload.
fn check_fixed_fields(old: &Config, new: &Config) -> Result<(), String> {
    let mut changed = Vec::new();
    if old.listen != new.listen {
        changed.push("listen");
    }
    if old.metrics_listen != new.metrics_listen {
        changed.push("metrics_listen");
    }
    if old.plain_listen != new.plain_listen {
        changed.push("plain_listen");
    }
    match (&old.tls, &new.tls) {
        (None, None) => {}
        (Some(a), Some(b)) => {
            // The certificate and key (and their paths) may change; the
            // listener's shape may not.
            if a.min_version != b.min_version {
                changed.push("tls.min_version");
            }
            if a.http2 != b.http2 {
                changed.push("tls.http2");
            }
            if a.max_concurrent_streams != b.max_concurrent_streams {
                changed.push("tls.max_concurrent_streams");
            }
        }
        _ => changed.push("tls (turning TLS on or off)"),
    }
    if old.admin_listen != new.admin_listen {
        changed.push("admin_listen");
    }
    if old.downstream.read_buffer_bytes != new.downstream.read_buffer_bytes {
        changed.push("downstream.read_buffer_bytes");
    }
    if format!("{:?}", old.server) != format!("{:?}", new.server) {
        changed.push("server");
    }
    if format!("{:?}", old.access_log) != format!("{:?}", new.access_log) {
        changed.push("access_log");
    }
    if old.limits_store != new.limits_store {
        changed.push("limits_store");
    }
    if old.key_store != new.key_store {
        changed.push("key_store");
    }
    if old.state_file != new.state_file || old.state_interval != new.state_interval {
        changed.push("state_file/state_interval");
    }
    if changed.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} cannot change on reload; restart the service (or use the graceful upgrade) to apply it",
            changed.join(", ")
        ))
    }
}

#[async_trait]
impl BackgroundService for Reloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use tokio::signal::unix::{signal, SignalKind};
        // The start's export step (a reload runs its own).
        crate::governance::export_remaining(&self.shared.load().rules()).await;
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                log::error!("cannot listen for SIGHUP, reload is disabled: {e}");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                got = hup.recv() => if got.is_none() { return },
            }
            let _ = self.reload_and_record().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(tls: &str) -> Config {
        let yaml = format!(
            "listen: \"127.0.0.1:8443\"\n{tls}\nproviders:\n  m: {{ kind: mock }}\nmodels:\n  a: {{ routes: [ {{ provider: m, model: x }} ] }}\n"
        );
        crate::config::parse_str(&yaml, |_| None, std::path::Path::new("/etc/tollgate"))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn certificate_files_may_change_on_reload_but_not_the_listener_shape() {
        let base = cfg("tls: { cert: a.pem, key: a.key }");
        assert!(check_fixed_fields(&base, &cfg("tls: { cert: b.pem, key: b.key }")).is_ok());
        for (tls, field) in [
            (
                "tls: { cert: a.pem, key: a.key, http2: false }",
                "tls.http2",
            ),
            (
                "tls: { cert: a.pem, key: a.key, min_version: \"1.3\" }",
                "tls.min_version",
            ),
            (
                "tls: { cert: a.pem, key: a.key, max_concurrent_streams: 8 }",
                "tls.max_concurrent_streams",
            ),
            ("", "tls (turning TLS on or off)"),
            (
                "tls: { cert: a.pem, key: a.key }\nplain_listen: \"127.0.0.1:8080\"",
                "plain_listen",
            ),
            (
                "tls: { cert: a.pem, key: a.key }\ndownstream: { read_buffer_bytes: 4096 }",
                "downstream.read_buffer_bytes",
            ),
        ] {
            let err = check_fixed_fields(&base, &cfg(tls)).expect_err(tls);
            assert!(err.contains(field), "{tls}: {err}");
        }
    }
}
