//! Shared support code for Tollgate's integration tests.
//!
//! Include it from a test crate with `mod support;`:
//! - [`mock`]: a mock upstream HTTP/1.1 (or HTTPS) server with scripted behaviors,
//! - [`otlp`]: an OTLP/HTTP trace receiver decoding the official protobuf messages,
//! - [`gateway`]: runs the real `tollgate` binary with a templated config,
//! - [`tls`]: a throwaway CA issuing server certificates,
//! - [`prom`]: a Prometheus text-format parser for `/metrics` assertions,
//! - [`prometheus`]: a real Prometheus server scraping the gateway, and promtool,
//! - [`sdk`]: runs a Python SDK script against the gateway,
//! - [`assert`]: the OpenAI-error assertion, body text and polling helpers,
//! - [`postgres`]: a throwaway PostgreSQL server (key store tests),
//! - [`redis`]: a throwaway `redis-server` (also included on its own by
//!   tests that do not need the rest of this module),
//! - [`keystore`]: key store test configs and an admin API client,
//! - [`files_mock`]: OpenAI's Files and Batches APIs (one shared account),
//! - [`raw`]: raw TCP upstreams (silent, gated chunks, any loopback address)
//!   and a port whose connects hang,
//! - [`raw_client`]: a raw HTTP/1.1 client (exact bytes out, responses and
//!   the connection's end read back),
//! - [`bedrock_mock`], [`sts_mock`], [`gcp_mock`]: Bedrock (SigV4-verifying,
//!   event-stream), STS web identity, Google OAuth + Vertex, on [`mini_server`].
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code, unused_imports)]

pub mod assert;
pub mod bedrock_mock;
pub mod files_mock;
pub mod gateway;
pub mod gcp_mock;
pub mod keystore;
pub mod mini_server;
pub mod mock;
pub mod otlp;
pub mod postgres;
pub mod prom;
pub mod prometheus;
pub mod raw;
pub mod raw_client;
pub mod redis;
pub mod sdk;
pub mod sts_mock;
pub mod tls;

pub use assert::{assert_error, assert_json_error, find, header, text, wait_until};
pub use gateway::{client, fallback_chain, refused_port, Gateway, CONFIG_HEAD};
pub use mock::{sse_chat_events, Behavior, Gate, MockUpstream, Recorded, Reply, ReplyBody};
pub use prom::{assert_sample, sample, series_count};
pub use tls::TestCa;
