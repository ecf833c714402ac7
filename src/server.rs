//! Builds the Pingora server: the proxy, the metrics listener, and the
//! reload and health background services.

use crate::cli::Cli;
use crate::config::Config;
use crate::proxy::header_guard::HeaderGuard;
use crate::proxy::Gateway;
use crate::reload::Reloader;
use crate::runtime::{Runtime, Shared};
use crate::telemetry::endpoint::MetricsApp;
use crate::upstream::health::HealthTicker;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;
use pingora::services::background::background_service;
use pingora::services::listening::Service;
use std::sync::Arc;

/// Builds and runs the server. Returns only on a start-up error.
pub fn run(cli: &Cli, cfg: Config, rt: Runtime) -> Result<(), String> {
    let opt = Opt {
        upgrade: cli.upgrade,
        daemon: cli.daemon,
        nocapture: false,
        test: false,
        conf: None,
    };
    let conf = ServerConf {
        threads: cfg.server.threads.unwrap_or_else(default_threads),
        daemon: cli.daemon,
        pid_file: cfg.server.pid_file.clone(),
        upgrade_sock: cfg.server.upgrade_sock.clone(),
        grace_period_seconds: Some(cfg.server.grace_period.get().as_secs()),
        graceful_shutdown_timeout_seconds: Some(cfg.server.shutdown_timeout.get().as_secs()),
        upstream_keepalive_pool_size: cfg.server.upstream_keepalive_pool,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    let shared = Arc::new(Shared::new(rt));
    let proxy_app = pingora::proxy::http_proxy(&server.configuration, Gateway::new(shared.clone()));
    let guarded = HeaderGuard {
        inner: Arc::new(proxy_app),
        shared: shared.clone(),
    };
    let mut proxy = Service::new("tollgate".to_string(), guarded);
    proxy.add_tcp(&cfg.listen);
    server.add_service(proxy);

    if let Some(addr) = &cfg.metrics_listen {
        let mut metrics = Service::new("tollgate metrics".to_string(), MetricsApp);
        metrics.threads = Some(1);
        metrics.add_tcp(addr);
        server.add_service(metrics);
    }
    if let Some(addr) = &cfg.admin_listen {
        let mut admin = Service::new(
            "tollgate admin".to_string(),
            crate::admin::AdminApp {
                shared: shared.clone(),
                reloader: Reloader {
                    shared: shared.clone(),
                    path: cli.config.clone(),
                },
            },
        );
        admin.threads = Some(1);
        admin.add_tcp(addr);
        server.add_service(admin);
    }
    server.add_service(background_service(
        "reload",
        Reloader {
            shared: shared.clone(),
            path: cli.config.clone(),
        },
    ));
    server.add_service(background_service("health", HealthTicker { shared }));
    let state_file = cfg.state_file.as_ref().map(std::path::PathBuf::from);
    if let Some(path) = &state_file {
        server.add_service(background_service(
            "budget snapshot",
            crate::governance::snapshot::Snapshotter {
                path: path.clone(),
                interval: cfg.state_interval.get(),
            },
        ));
    }
    server.add_service(background_service(
        "drain",
        crate::lifecycle::DrainOnTerm {
            settle: std::time::Duration::from_millis(200),
            state_file,
        },
    ));
    log::info!("tollgate listening on {}", cfg.listen);
    server.run_forever()
}

fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}
