//! Google Cloud building blocks for `kind: vertex`: service-account OAuth
//! (a signed JWT exchanged for an access token, cached and refreshed),
//! Vertex AI paths and body shaping, and the provider's config.

pub mod config;
pub mod oauth;
pub mod vertex;
