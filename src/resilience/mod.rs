//! Resilience: passive health (breakers and cooldowns), attempt timeouts, and
//! the verdict on each upstream response.

pub(crate) mod breaker;
pub(crate) mod hedge_cap;
pub(crate) mod verdict;
pub(crate) mod watchdog;

/// Effective timeouts of one route (provider settings with route overrides).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub(crate) connect: std::time::Duration,
    pub(crate) first_byte: std::time::Duration,
    pub(crate) idle: std::time::Duration,
    pub(crate) total: Option<std::time::Duration>,
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
