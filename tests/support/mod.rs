//! Shared support code for Tollgate's integration tests.
//!
//! Include it from a test crate with `mod support;`:
//! - [`mock`]: a mock upstream HTTP/1.1 (or HTTPS) server with scripted behaviors,
//! - [`gateway`]: runs the real `tollgate` binary with a templated config,
//! - [`tls`]: a throwaway CA issuing server certificates,
//! - [`prom`]: a Prometheus text-format parser for `/metrics` assertions,
//! - [`sdk`]: runs a Python SDK script against the gateway,
//! - [`assert`]: the OpenAI-error assertion, body text and polling helpers.
//! - [`postgres`]: a throwaway PostgreSQL server (key store tests),
//! - [`keystore`]: key store test configs and an admin API client,
//! - [`raw`]: raw TCP upstreams (silent, gated chunks, any loopback address)
//!   and a port whose connects hang.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code, unused_imports)]

pub mod assert;
pub mod gateway;
pub mod keystore;
pub mod mock;
pub mod postgres;
pub mod prom;
pub mod raw;
pub mod redis;
pub mod sdk;
pub mod tls;

pub use assert::{assert_error, assert_json_error, find, header, text, wait_until};
pub use gateway::{client, Gateway, CONFIG_HEAD};
pub use mock::{sse_chat_events, Behavior, MockUpstream, Recorded, Reply, ReplyBody};
pub use prom::{assert_sample, sample, series_count};
pub use tls::TestCa;
