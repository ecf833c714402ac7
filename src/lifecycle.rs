//! Graceful stop. On SIGTERM (or after a graceful upgrade's hand-over) Pingora stops accepting, then waits the whole
//! grace period even with nothing in flight. This service ends the process as
//! soon as the requests in flight have drained (or the grace period passes,
//! whichever is first), so an idle stop is quick and a busy one loses nothing.

use crate::telemetry::metrics;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

/// The `state_file` saved when the process exits.
static ON_EXIT: OnceLock<Option<PathBuf>> = OnceLock::new();

/// Saves the budgets to `state_file`, flushes the access log and exports
/// the queued trace spans (waiting 2 s at most) whenever
/// the process exits through `exit` (the drain below, Pingora's fast stop
/// on SIGINT, a start-up error after the server was built), so no exit
/// loses the spend since the last `state_interval` tick or the lines and
/// spans still queued. Registered once, at start.
pub(crate) fn save_on_exit(state_file: Option<PathBuf>) {
    if ON_EXIT.set(state_file).is_ok() {
        // SAFETY: `atexit` only records a function pointer; `at_exit` is
        // `extern "C"` and never unwinds.
        unsafe {
            libc::atexit(at_exit);
        }
    }
}

extern "C" fn at_exit() {
    let _ = std::panic::catch_unwind(|| {
        if let Some(Some(path)) = ON_EXIT.get() {
            crate::governance::snapshot::save_now(path);
        }
        crate::telemetry::access_log::flush();
        crate::telemetry::trace::flush_at_exit();
    });
}

/// Watches for SIGTERM and exits once drained.
pub(crate) struct DrainOnTerm {
    /// Let the accept loops close before counting in-flight requests.
    pub(crate) settle: Duration,
}

#[async_trait]
impl BackgroundService for DrainOnTerm {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        // Pingora flips the watch on SIGTERM, and on SIGQUIT once the
        // listeners have been handed to the new process.
        loop {
            if *shutdown.borrow() {
                break;
            }
            if shutdown.changed().await.is_err() {
                return;
            }
        }
        log::info!("shutting down: no longer accepting; waiting for requests in flight");
        std::thread::sleep(self.settle);
        loop {
            let in_flight = metrics::get().map_or(0, |m| m.in_flight.get());
            if in_flight <= 0 && crate::proxy::header_guard::busy_connections() == 0 {
                log::info!("drained; exiting");
                // The budgets and the access log are saved on the way out
                // (`save_on_exit`).
                std::process::exit(0);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
