//! Graceful stop. On SIGTERM (or after a graceful upgrade's hand-over) Pingora stops accepting, then waits the whole
//! grace period even with nothing in flight. This service ends the process as
//! soon as the requests in flight have drained (or the grace period passes,
//! whichever is first), so an idle stop is quick and a busy one loses nothing.

use crate::telemetry::metrics;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::time::Duration;

/// Watches for SIGTERM and exits once drained.
pub struct DrainOnTerm {
    /// Let the accept loops close before counting in-flight requests.
    pub settle: Duration,
    /// Budgets are saved here once drained, before the exit.
    pub state_file: Option<std::path::PathBuf>,
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
                if let Some(path) = &self.state_file {
                    crate::governance::snapshot::save_now(path);
                }
                crate::telemetry::access_log::flush();
                std::process::exit(0);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
