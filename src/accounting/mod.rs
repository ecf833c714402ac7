//! Usage and spend: what the upstream reported (or, failing that, an
//! estimate), priced at the route's price.

pub(crate) mod cost;
pub mod estimate;
pub mod facts;
pub mod meter;
pub(crate) mod settle;
pub mod units;
pub(crate) mod usage;

pub use usage::{Usage, UsageSource};
