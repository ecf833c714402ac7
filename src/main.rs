//! `tollgate --config FILE [--test]`: validate the config, or run the
//! gateway. `tollgate keys|teams ...`: call a running gateway's admin API.

use std::process::ExitCode;
use tollgate::cli::{self, Action};
use tollgate::{config, runtime::Runtime, server, telemetry};

/// jemalloc instead of glibc's malloc: docs/benchmarks.md, "Allocator".
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read when it starts. `oversize_threshold:0`: no
/// arena of its own for blocks of 8 MiB and more, whose pages jemalloc
/// otherwise returns to the kernel at once, so that every request with a
/// body that size faulted its buffers in afresh (3x the CPU of glibc).
/// Freed pages of every size are kept for reuse and returned after the
/// default decay (10 s).
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static _rjem_malloc_conf: &[u8] = b"oversize_threshold:0\0";

fn main() -> ExitCode {
    init_logging();
    let cli = match cli::parse(std::env::args().skip(1)) {
        Ok(Action::Run(c)) => c,
        Ok(Action::Admin(call)) => {
            return match tollgate::cli::client::run(&call) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Ok(Action::Help) => {
            println!("{}", cli::USAGE);
            return ExitCode::SUCCESS;
        }
        Ok(Action::Version) => {
            println!("tollgate {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("error: {e}\n\n{}", cli::USAGE);
            return ExitCode::from(2);
        }
    };
    let cfg = match config::load_file(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("invalid configuration:\n{e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = tollgate::governance::configure(&cfg.limits_store) {
        eprintln!("invalid configuration:\n{e}");
        return ExitCode::FAILURE;
    }
    if !cli.test {
        if let Some(path) = &cfg.state_file {
            match tollgate::governance::snapshot::load(
                tollgate::governance::memory::global(),
                std::path::Path::new(path),
            ) {
                Ok(n) => log::info!("restored {n} budget counters from {path}"),
                Err(e) => {
                    eprintln!("start-up failed: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
    }
    if let (Some(ks), false) = (&cfg.key_store, cli.test) {
        if let Err(e) = tollgate::keystore::open(ks, std::sync::Arc::new(cfg.clone())) {
            eprintln!("start-up failed: {e}");
            return ExitCode::FAILURE;
        }
    }
    if !cli.test {
        // Who owns which file and batch id: read back from the key store.
        if let Err(e) = tollgate::objects::open(&cfg) {
            eprintln!("start-up failed: {e}");
            return ExitCode::FAILURE;
        }
    }
    // The state that outlives reloads: one owner for the process.
    let durable = std::sync::Arc::new(tollgate::runtime::durable::Durable::default());
    let rt = match Runtime::build(cfg.clone(), &durable) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("invalid configuration:\n{e}");
            return ExitCode::FAILURE;
        }
    };
    if cli.test {
        if let Some(w) = rt
            .tls_cert
            .as_ref()
            .and_then(|c| c.expiry_warning(tollgate::base::clock::unix_secs()))
        {
            eprintln!("warning: {w}");
        }
        println!("configuration {} is valid", cli.config.display());
        return ExitCode::SUCCESS;
    }
    // SIGHUP's default action kills the process. Ignore it until the reload
    // service installs its handler, so an early reload cannot stop us.
    // SAFETY: setting a signal disposition to SIG_IGN has no preconditions.
    unsafe {
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
    }
    // Runtime keys may gain token or spend limits at any time.
    let estimates = rt.estimates() || cfg.key_store.is_some();
    if estimates {
        // Token and spend limits estimate every prompt: load the tokenizers
        // before taking traffic.
        tollgate::accounting::estimate::warm();
    }
    if let Err(e) = warm_up(&rt) {
        eprintln!("start-up failed: {e}");
        return ExitCode::FAILURE;
    }
    rt.take_over();
    telemetry::access_log::init(cfg.access_log.path.clone());
    if let Some(m) = telemetry::metrics::get() {
        m.config_loaded.set(tollgate::base::clock::unix_secs());
    }
    match server::run(&cli, cfg, rt) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `RUST_LOG` sets the level (default `info`). Pingora's own modules (and the
/// HTTP libraries under them) are capped at `info` whatever it says: at debug
/// and trace they print request and response headers and bodies, which carry
/// keys.
fn init_logging() {
    use log::LevelFilter;
    let mut b = env_logger::Builder::new();
    b.filter_level(LevelFilter::Info);
    if let Ok(spec) = std::env::var("RUST_LOG") {
        b.parse_filters(&spec);
    }
    for module in [
        "pingora",
        "pingora_core",
        "pingora_proxy",
        "pingora_load_balancing",
        "pingora_pool",
        "h2",
        "hyper",
    ] {
        b.filter_module(module, LevelFilter::Info);
    }
    b.init();
}

/// Resolves and health-checks every upstream once before taking traffic.
fn warm_up(rt: &Runtime) -> Result<(), String> {
    let tokio_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    tokio_rt.block_on(async {
        let limit = std::time::Duration::from_secs(10);
        if tokio::time::timeout(limit, rt.warm_up()).await.is_err() {
            log::warn!("upstream warm-up took over {limit:?}; continuing");
        }
    });
    Ok(())
}
