//! Per-request state shared by the hooks.

use crate::base::endpoint::Endpoint;
use crate::base::error::GatewayError;
use crate::engine::attempts::{Attempt, Attempts, Caps};
use crate::rewrite::Parsed;
use crate::runtime::Runtime;
use bytes::Bytes;
use std::sync::Arc;
use std::time::Instant;

/// Everything one request carries from hook to hook.
pub struct Ctx {
    /// The config snapshot this request uses from start to end.
    pub rt: Option<Arc<Runtime>>,
    pub start: Instant,
    pub request_id: String,
    pub endpoint: Option<Endpoint>,
    /// The admitted key (a config key or a key-store key).
    pub key: Option<Arc<crate::keys::KeyRt>>,
    /// The model alias, once resolved.
    pub alias: Option<Arc<str>>,
    pub parsed: Option<Parsed>,
    /// The client's body, as received.
    pub body: Bytes,
    /// The routing decision and the attempt counted on its route.
    pub routing: crate::routing::RequestRouting,
    /// The walk over routes and backends, and the attempt log.
    pub attempts: Attempts,
    /// The current (or last) attempt: its backend, body and state.
    pub attempt: Option<Attempt>,
    /// Whether this attempt's body was already emitted.
    pub body_sent: bool,
    /// Answered locally by a mock provider.
    pub served_locally: bool,
    pub status: u16,
    pub upstream_headers_at: Option<Instant>,
    pub error: Option<GatewayError>,
    /// Counts this request in `tollgate_requests_in_flight` until dropped,
    /// however the request ends (a panic included).
    pub in_flight: Option<InFlight>,
    /// A response was accepted for the client: no more retries.
    pub response_started: bool,
    /// Retry decision made by the response verdict, applied in `error_while_proxy`.
    pub verdict_retry: Option<bool>,
    /// The stream broke after it started.
    pub mid_stream_error: Option<GatewayError>,
    /// Complete events not yet forwarded when the stream was aborted: they
    /// go out just before the error event.
    pub unsent: Option<bytes::Bytes>,
    /// Enforces first-byte/idle/total limits for this attempt.
    pub watchdog: Option<crate::resilience::watchdog::Watchdog>,
    /// Watches the response body for usage.
    pub meter: Meter,
    /// First response body byte sent to the client.
    pub first_byte_at: Option<Instant>,
    /// Usage known without reading a response (the mock provider).
    pub local_usage: Option<crate::accounting::Usage>,
    /// `local_usage` is an estimate (a translated response without counts).
    pub local_usage_estimated: bool,
    /// Limits held by this request: concurrency slots and token and spend
    /// reservations. Settled in `logging`; dropping it releases them, so
    /// any end (error, disconnect, panic) frees them.
    pub reservation: Option<crate::governance::Reservation>,
    /// `x-ratelimit-*` values for the response.
    pub rate_headers: crate::governance::RateHeaders,
    /// Provider translation (non-OpenAI kinds): body cache and response mode.
    pub tr: crate::proxy::translated::Tr,
    /// A Messages (Anthropic) request: its translation state.
    pub front: Option<Box<crate::proxy::messages::Front>>,
    /// What shadow traffic and hedging did to this request.
    pub exp: crate::proxy::experiments::Marks,
}

/// Holds one unit of the in-flight gauge.
pub struct InFlight(());

impl InFlight {
    pub fn enter() -> Self {
        if let Some(m) = crate::telemetry::metrics::get() {
            m.in_flight.inc();
        }
        InFlight(())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(m) = crate::telemetry::metrics::get() {
            m.in_flight.dec();
        }
    }
}

/// How the response body is watched.
#[derive(Default)]
pub enum Meter {
    #[default]
    None,
    Stream(Box<crate::accounting::meter::StreamMeter>),
    Body(crate::accounting::meter::BodyMeter),
}

impl Ctx {
    pub fn new() -> Self {
        Self {
            rt: None,
            start: Instant::now(),
            request_id: String::new(),
            endpoint: None,
            key: None,
            alias: None,
            parsed: None,
            body: Bytes::new(),
            routing: crate::routing::RequestRouting::default(),
            attempts: Attempts::default(),
            attempt: None,
            body_sent: false,
            served_locally: false,
            status: 0,
            upstream_headers_at: None,
            error: None,
            in_flight: None,
            response_started: false,
            verdict_retry: None,
            mid_stream_error: None,
            unsent: None,
            watchdog: None,
            meter: Meter::None,
            first_byte_at: None,
            local_usage: None,
            local_usage_estimated: false,
            reservation: None,
            rate_headers: crate::governance::RateHeaders::default(),
            tr: Default::default(),
            front: None,
            exp: crate::proxy::experiments::Marks::default(),
        }
    }

    pub fn runtime(&self) -> Result<&Arc<Runtime>, GatewayError> {
        self.rt.as_ref().ok_or(GatewayError::Internal)
    }

    /// Whether the response streams (never for embeddings; see
    /// `admit::request_filter`).
    pub fn streams(&self) -> bool {
        self.parsed.as_ref().is_some_and(|p| p.stream)
    }

    /// The caps on this request's attempts.
    pub fn caps(&self, rt: &Runtime) -> Caps {
        Caps {
            max_attempts: rt.max_attempts,
            start: self.start,
            deadline: rt.request_deadline,
        }
    }

    /// The route index of the attempt that answered or was tried last: the
    /// current attempt's (a hedge race's winner once it is adopted), else
    /// the walker's last one (a locally served request).
    pub fn attempt_route(&self) -> Option<usize> {
        self.attempt
            .as_ref()
            .map(|a| a.route)
            .or_else(|| self.attempts.last_route())
    }

    /// The route of the current (or last) attempt.
    pub fn current_route(&self) -> Option<&crate::runtime::RouteRt> {
        let rt = self.rt.as_ref()?;
        let alias = self.alias.as_deref()?;
        let index = self.attempt_route().or_else(|| self.attempts.route())?;
        rt.models.get(alias)?.routes.get(index)
    }
}

impl Default for Ctx {
    fn default() -> Self {
        Self::new()
    }
}

/// The compiled alias `alias` in `rt`, when both are known.
pub fn alias_model<'a>(
    rt: Option<&'a Arc<Runtime>>,
    alias: Option<&str>,
) -> Option<&'a crate::runtime::ModelRt> {
    rt.zip(alias).and_then(|(rt, a)| rt.models.get(a))
}

#[cfg(test)]
mod tests {
    /// Every request's future holds a `Ctx`: its size is a per-request
    /// cost (docs/benchmarks.md gives it before and after each change).
    #[test]
    fn ctx_stays_small() {
        let size = std::mem::size_of::<super::Ctx>();
        println!("size_of::<Ctx>() = {size} bytes");
        // 1,344 bytes before the attempt walker (engine::attempts), 1,384 after.
        assert!(size <= 1408, "Ctx grew to {size} bytes");
    }
}
