//! Clocks, in the units the gateway stores and exports.

use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Unix time in milliseconds (0 if the system clock is before 1970).
pub fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Unix time in seconds (0 if the system clock is before 1970).
pub fn unix_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Milliseconds on a monotonic clock that starts at 1 on first use, for
/// deadlines and breaker timers that must not jump with the wall clock.
pub fn monotonic_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    u64::try_from(EPOCH.get_or_init(Instant::now).elapsed().as_millis())
        .unwrap_or(u64::MAX)
        .saturating_add(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clocks_agree_and_move_forward() {
        let (ms, s) = (unix_ms(), unix_secs());
        assert!(s > 1_700_000_000 && (ms / 1000 - s).abs() <= 1);
        let a = monotonic_ms();
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(a >= 1 && monotonic_ms() > a);
    }
}
