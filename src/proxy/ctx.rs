//! Per-request state shared by the hooks.

use crate::base::endpoint::Endpoint;
use crate::base::error::GatewayError;
use crate::rewrite::Parsed;
use crate::runtime::Runtime;
use bytes::Bytes;
use std::net::SocketAddr;
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
    /// The routes this request may try, in order (indices into the alias's
    /// routes), decided at admission by `routing::decide`.
    pub order: Vec<usize>,
    /// Position in `order` of the route being tried.
    pub route: usize,
    /// The routing decision and the attempt counted on its route.
    pub routing: crate::routing::RequestRouting,
    /// Index of the route of the last attempt started (it stays when the
    /// search for a next candidate moves past the last route).
    pub attempt_route: Option<usize>,
    /// Backends tried on the current route.
    pub tried: Vec<SocketAddr>,
    /// The backend of the current attempt.
    pub backend: Option<SocketAddr>,
    /// This attempt's body, with the route's model spliced in.
    pub attempt_body: Bytes,
    /// Whether this attempt's body was already emitted.
    pub body_sent: bool,
    pub attempts: u32,
    /// Answered locally by a mock provider.
    pub served_locally: bool,
    pub status: u16,
    pub upstream_headers_at: Option<Instant>,
    pub error: Option<GatewayError>,
    /// Why the last attempt failed, answered if nothing is left to try.
    pub last_failure: Option<GatewayError>,
    /// Counts this request in `tollgate_requests_in_flight` until dropped,
    /// however the request ends (a panic included).
    pub in_flight: Option<InFlight>,
    /// No healthy backend was left anywhere: unhealthy ones may be tried.
    pub any_health: bool,
    /// Passive-health state of the current backend.
    pub backend_state: Option<std::sync::Arc<crate::resilience::breaker::BackendState>>,
    /// Attempts made on the current route.
    pub route_attempts: usize,
    /// Move to the next route without trying more of this provider's backends.
    pub skip_provider: bool,
    /// The shortest wait until a skipped (cooling or open) backend is back.
    pub out_for_ms: Option<u64>,
    /// One of the skipped backends is waiting out a 429.
    pub out_rate_limited: bool,
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
    /// Each attempt and how it ended, for the access log.
    pub attempt_log: Vec<AttemptLog>,
    /// This attempt asked the upstream for stream usage on the client's behalf.
    pub usage_injected: bool,
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

/// One upstream attempt, as logged.
#[derive(Clone)]
pub struct AttemptLog {
    pub provider: Option<crate::upstream::UpstreamRef>,
    pub backend: Option<SocketAddr>,
    pub outcome: &'static str,
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
            order: Vec::new(),
            route: 0,
            routing: crate::routing::RequestRouting::default(),
            attempt_route: None,
            tried: Vec::new(),
            backend: None,
            attempt_body: Bytes::new(),
            body_sent: false,
            attempts: 0,
            served_locally: false,
            status: 0,
            upstream_headers_at: None,
            error: None,
            last_failure: None,
            in_flight: None,
            any_health: false,
            backend_state: None,
            route_attempts: 0,
            skip_provider: false,
            out_for_ms: None,
            out_rate_limited: false,
            response_started: false,
            verdict_retry: None,
            mid_stream_error: None,
            unsent: None,
            watchdog: None,
            attempt_log: Vec::new(),
            usage_injected: false,
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

    /// A route's backends are all out (cooling or breaker open): keeps the
    /// shortest wait, for the error answered if nothing else is left.
    pub fn note_out(&mut self, out: &crate::upstream::Out) {
        self.out_for_ms = Some(self.out_for_ms.map_or(out.ms, |m| m.min(out.ms)));
        self.out_rate_limited |= out.rate_limited;
    }

    /// The route of the current (or last) attempt.
    pub fn current_route(&self) -> Option<&crate::runtime::RouteRt> {
        let rt = self.rt.as_ref()?;
        let alias = self.alias.as_deref()?;
        let index = self
            .attempt_route
            .or_else(|| self.order.get(self.route).copied())?;
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
