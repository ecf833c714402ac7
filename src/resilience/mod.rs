//! Resilience: passive health (breakers and cooldowns), attempt timeouts, and
//! the verdict on each upstream response.

pub mod breaker;
pub mod hedge_cap;
pub mod verdict;
pub mod watchdog;

/// Effective timeouts of one route (provider settings with route overrides).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub connect: std::time::Duration,
    pub first_byte: std::time::Duration,
    pub idle: std::time::Duration,
    pub total: Option<std::time::Duration>,
}

impl Limits {
    /// Pingora applies one read timeout to every upstream read. It covers the
    /// longer of the two phases; the watchdog enforces the shorter one.
    pub fn read_timeout(&self) -> std::time::Duration {
        self.first_byte.max(self.idle)
    }

    /// Whether Pingora's single read timeout cannot express these limits.
    pub fn needs_watchdog(&self) -> bool {
        self.first_byte != self.idle || self.total.is_some()
    }
}
