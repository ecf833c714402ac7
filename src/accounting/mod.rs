//! Usage and spend: what the upstream reported (or, failing that, an
//! estimate), priced at the route's price.

pub mod cost;
pub mod estimate;
pub mod meter;
pub mod settle;
pub mod usage;

pub use usage::{Usage, UsageSource};
