//! Tollgate: an OpenAI-compatible LLM API gateway on Pingora.
#![warn(unreachable_pub)]

pub mod accounting;
pub mod admin;
pub mod auth;
pub mod base;
pub(crate) mod ca_file;
pub(crate) mod cache;
pub mod capture;
pub mod cli;
pub mod config;
pub(crate) mod engine;
pub mod eventstream;
pub mod form;
pub mod governance;
pub mod json_scan;
pub(crate) mod keys;
pub mod keystore;
pub(crate) mod lifecycle;
pub(crate) mod live;
pub mod objects;
pub mod providers;
pub(crate) mod proxy;
pub(crate) mod reload;
pub(crate) mod resilience;
pub mod rewrite;
pub mod routing;
pub mod runtime;
pub mod server;
pub mod sse;
pub mod telemetry;
pub(crate) mod tls;
pub mod translate;
pub(crate) mod upstream;
pub mod workload;
