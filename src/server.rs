//! Builds the Pingora server: the proxy, the metrics listener, and the
//! reload and health background services.

use crate::cli::Cli;
use crate::config::Config;
use crate::live::Shared;
use crate::proxy::header_guard::HeaderGuard;
use crate::proxy::Gateway;
use crate::reload::Reloader;
use crate::runtime::Runtime;
use crate::telemetry::endpoint::MetricsApp;
use crate::upstream::health::HealthTicker;
use pingora::listeners::ListenerConfig;
use pingora::protocols::l4::stream::L4BufferSettings;
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
        // A daemon would otherwise move to `/`, and relative paths (the
        // config file re-read on reload, `pid_file`, `access_log.path`,
        // `state_file`) would no longer mean what they meant at start.
        working_directory: std::env::current_dir().ok(),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    let shared = Arc::new(Shared::new(rt));
    crate::tls::export(shared.load().tls_cert.as_deref());
    crate::telemetry::metrics::export_config(&cfg);
    // Before the listeners take traffic, so the first requests are traced
    // too (the export thread starts with the first span, after the fork
    // of `-d`).
    crate::telemetry::trace::configure(cfg.tracing.as_ref())?;
    let server_conf = server.configuration.clone();
    let proxy_app = |shared: &Arc<Shared>| {
        let mut app = pingora::proxy::http_proxy(&server_conf, Gateway::new(shared.clone()));
        app.h2_options = Some(h2_options(&cfg));
        // An HTTP/2 connection with no stream open is closed after the same
        // idle time as an HTTP/1 keep-alive connection.
        let mut opts = pingora::apps::HttpServerOptions::default();
        opts.h2_idle_timeout = Some(cfg.downstream.keepalive.get());
        app.server_options = Some(opts);
        HeaderGuard {
            inner: Arc::new(app),
            shared: shared.clone(),
        }
    };
    match &cfg.tls {
        Some(t) => {
            let resolver = Arc::new(crate::tls::SnapshotResolver::new(shared.clone()));
            let tls_config = crate::tls::server_config(t, resolver)?;
            let edge = crate::tls::TlsEdge {
                inner: Arc::new(proxy_app(&shared)),
                acceptor: pingora::listeners::tls::Acceptor::from_server_config(Arc::new(
                    tls_config,
                )),
                source: shared.clone(),
            };
            let mut tls = Service::new("tollgate tls".to_string(), edge);
            tls.add_tcp(&cfg.listen);
            server.add_service(tls);
            if let Some(addr) = &cfg.plain_listen {
                let mut plain = Service::new("tollgate plain".to_string(), proxy_app(&shared));
                add_plain_listener(&mut plain, addr, &cfg);
                server.add_service(plain);
            }
        }
        None => {
            let mut proxy = Service::new("tollgate".to_string(), proxy_app(&shared));
            add_plain_listener(&mut proxy, &cfg.listen, &cfg);
            if let Some(addr) = &cfg.plain_listen {
                add_plain_listener(&mut proxy, addr, &cfg);
            }
            server.add_service(proxy);
        }
    }
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
    server.add_service(background_service(
        "health",
        HealthTicker { source: shared },
    ));
    if let Some(store) = crate::keystore::global() {
        server.add_service(background_service(
            "key store feed",
            crate::keystore::feed::Feed {
                store: store.clone(),
            },
        ));
        crate::capture::configure(&cfg);
        server.add_service(background_service(
            "capture writer",
            crate::capture::store::Writer {
                store: store.clone(),
            },
        ));
    }
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
        },
    ));
    crate::lifecycle::save_on_exit(state_file);
    match (&cfg.tls, &cfg.plain_listen) {
        (Some(t), _) => log::info!(
            "tollgate listening on {} (TLS {}+{})",
            cfg.listen,
            match t.min_version {
                crate::config::TlsVersion::V1_2 => "1.2",
                crate::config::TlsVersion::V1_3 => "1.3",
            },
            if t.http2 { ", HTTP/2" } else { "" }
        ),
        (None, _) => log::info!("tollgate listening on {}", cfg.listen),
    }
    if let Some(p) = &cfg.plain_listen {
        log::info!("tollgate plaintext listener on {p}");
    }
    server.run_forever()
}

/// Adds a plaintext client listener with the configured read buffer:
/// Pingora's default (64 KiB, zeroed per connection) is most of the memory
/// of an idle keep-alive connection. TLS listeners keep Pingora's default,
/// which suits 16 KiB TLS records.
fn add_plain_listener<A>(service: &mut Service<A>, addr: &str, cfg: &Config) {
    let buffers = L4BufferSettings::default().read(cfg.downstream.read_buffer_bytes);
    service.add_listener(ListenerConfig::tcp(addr.to_string()).l4_buffer(buffers));
}

/// HTTP/2 limits toward clients: concurrent streams per connection, the
/// decoded header-list size (the same cap as HTTP/1's `max_header_bytes`)
/// and the largest DATA frame.
fn h2_options(cfg: &Config) -> pingora::protocols::http::v2::server::H2Options {
    let mut o = pingora::protocols::http::v2::server::default_h2_options();
    let streams = cfg.tls.as_ref().map_or(128, |t| t.max_concurrent_streams);
    o.max_concurrent_streams(streams);
    o.max_header_list_size(u32::try_from(cfg.downstream.max_header_bytes).unwrap_or(u32::MAX));
    // A body without Content-Length puts its first DATA frame in Pingora's
    // retry buffer (`proxy::body`): frames stay at h2's default 16 KiB.
    o.max_frame_size(crate::proxy::body::H2_MAX_FRAME);
    o
}

fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}
