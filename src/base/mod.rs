//! The leaf layer: the types and helpers every other layer shares, the
//! endpoint a request is for, the error Tollgate answers with, clocks, and
//! `Secret`, a string that never prints.
//! It imports nothing of the crate (`tests/layers.rs` checks), so anything
//! may depend on it.

pub mod clock;
pub mod endpoint;
pub mod error;
pub(crate) mod keyed;
pub mod secret;
