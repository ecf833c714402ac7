//! AWS building blocks for `kind: bedrock`: request signing (SigV4),
//! credentials (static, environment, web identity through STS), the
//! event-stream frame decoder, and the provider's config.

pub mod config;
pub mod credentials;
pub mod sigv4;
pub mod sts;
