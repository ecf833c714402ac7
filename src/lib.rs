//! Tollgate: an OpenAI-compatible LLM API gateway on Pingora.

pub mod accounting;
pub mod admin;
pub mod auth;
pub mod cli;
pub mod config;
pub mod error;
pub mod experiments;
pub mod governance;
pub mod json_scan;
pub mod keystore;
pub mod lifecycle;
pub mod providers;
pub mod proxy;
pub mod reload;
pub mod resilience;
pub mod rewrite;
pub mod routing;
pub mod runtime;
pub mod server;
pub mod sse;
pub mod telemetry;
pub mod tls;
pub mod translate;
pub mod upstream;
