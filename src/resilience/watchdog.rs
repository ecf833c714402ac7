//! Per-attempt timeouts Pingora's single read timeout cannot express: a
//! first-byte limit shorter (or longer) than the idle limit, and a total
//! limit. The watchdog holds a duplicate of the upstream socket and shuts it
//! down when a limit passes; Pingora's pending read then fails and the usual
//! failover or mid-stream error handling runs.
//!
//! Safe against socket reuse: Pingora returns a connection to its pool only
//! after the response (and so our end-of-stream disarm) is complete, and the
//! duplicate keeps the descriptor number ours until the watchdog is dropped.

use super::Limits;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Which limit fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fired {
    FirstByte = 1,
    Idle = 2,
    Total = 3,
}

struct Watched {
    fd: OwnedFd,
    start: Instant,
    /// Microseconds after `start` of the last upstream activity.
    last: AtomicU64,
    headers: AtomicBool,
    /// Wakes the watchdog when the headers arrive: it sleeps towards the
    /// first-byte deadline until then, which may be far past the idle one.
    headers_arrived: tokio::sync::Notify,
    fired: AtomicU8,
}

/// Arms on connect; disarms when dropped.
pub(crate) struct Watchdog {
    shared: Arc<Watched>,
    task: tokio::task::JoinHandle<()>,
}

impl Watchdog {
    /// Starts watching the upstream socket `fd` with `limits`.
    pub(crate) fn arm(fd: RawFd, limits: Limits) -> std::io::Result<Self> {
        // SAFETY: `fd` is Pingora's open upstream socket for this attempt; it
        // outlives this call, which only duplicates it.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) }.try_clone_to_owned()?;
        let shared = Arc::new(Watched {
            fd,
            start: Instant::now(),
            last: AtomicU64::new(0),
            headers: AtomicBool::new(false),
            headers_arrived: tokio::sync::Notify::new(),
            fired: AtomicU8::new(0),
        });
        let watched = shared.clone();
        let task = tokio::spawn(async move { watch(watched, limits).await });
        Ok(Self { shared, task })
    }

    /// The response headers arrived.
    pub(crate) fn headers(&self) {
        self.activity();
        self.shared.headers.store(true, Relaxed);
        self.shared.headers_arrived.notify_one();
    }

    /// A body chunk arrived.
    pub(crate) fn activity(&self) {
        let us = self.shared.start.elapsed().as_micros() as u64;
        self.shared.last.store(us, Relaxed);
    }

    pub(crate) fn fired(&self) -> Option<Fired> {
        match self.shared.fired.load(Relaxed) {
            1 => Some(Fired::FirstByte),
            2 => Some(Fired::Idle),
            3 => Some(Fired::Total),
            _ => None,
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn watch(s: Arc<Watched>, limits: Limits) {
    loop {
        let elapsed = s.start.elapsed();
        let headers = s.headers.load(Relaxed);
        let (phase_deadline, phase) = if headers {
            let last = Duration::from_micros(s.last.load(Relaxed));
            (last + limits.idle, Fired::Idle)
        } else {
            (limits.first_byte, Fired::FirstByte)
        };
        let (deadline, kind) = match limits.total {
            Some(t) if t < phase_deadline => (t, Fired::Total),
            _ => (phase_deadline, phase),
        };
        if elapsed >= deadline {
            s.fired.store(kind as u8, Relaxed);
            // SAFETY: shutting down our own duplicate of a socket descriptor.
            unsafe {
                libc::shutdown(s.fd.as_raw_fd(), libc::SHUT_RDWR);
            }
            return;
        }
        let sleep = tokio::time::sleep(deadline - elapsed);
        if headers {
            sleep.await;
        } else {
            tokio::select! {
                _ = sleep => {}
                _ = s.headers_arrived.notified() => {}
            }
        }
    }
}
