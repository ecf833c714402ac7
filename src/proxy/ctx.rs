//! Per-request state, in parts that each have one owner and one writer:
//!
//! - [`Head`]: what is known before the body: the config snapshot, the
//!   request id, the endpoint and the key. Written by `request_filter` and
//!   admission (`admit.rs`) only.
//! - [`Admitted`]: the resolved request (alias, parsed body facts, body),
//!   built once by admission and immutable after: it sits behind an `Arc`,
//!   shared as it is with the hedge race and the shadow copy. Every "is
//!   this a stream?" question reads it.
//! - `attempts` and `current`: the walk over upstreams (the one walker,
//!   `engine::attempts`) and the proxy's current attempt (`attempt.rs`).
//! - `routing`: the routing decision and its statistics (`routing::track`).
//! - `bodies`: the translated request bodies per route (`translated.rs`).
//! - `resp`: the response pipeline, chosen once per accepted response
//!   (`pipeline.rs`).
//! - [`Outcome`]: how the request ended, written through its methods and
//!   read once at the end into the request's record (`finish.rs`).
//! - `exp`: what shadow traffic and hedging did (`experiments`).
//! - `trace`: the request's trace context, decided once at admission
//!   (`telemetry::trace::begin`); boxed, and `None` when tracing is off or
//!   the request is unsampled with no context to pass on.
//! - `cache`: what the response cache did (`cached.rs`); boxed, and `None`
//!   for an alias without `cache`.
//! - `capture`: the answer's bytes for output capture (`crate::capture`);
//!   boxed, and `None` unless the request was picked for capture.

use crate::base::endpoint::Endpoint;
use crate::base::error::GatewayError;
use crate::engine::attempts::{Attempts, Caps};
use crate::governance::{RateHeaders, Reservation};
use crate::keys::KeyRt;
use crate::proxy::attempt::Current;
use crate::proxy::pipeline::Pipeline;
use crate::rewrite::Parsed;
use crate::runtime::{ModelRt, RouteRt, Runtime};
use bytes::Bytes;
use std::sync::Arc;
use std::time::Instant;

/// Everything one request carries from hook to hook.
pub(crate) struct Ctx {
    pub(crate) head: Head,
    /// Set once, by [`Ctx::admit`].
    req: Option<Arc<Admitted>>,
    pub(crate) attempts: Attempts,
    pub(crate) current: Current,
    pub(crate) routing: crate::routing::RequestRouting,
    pub(crate) bodies: crate::proxy::translated::Bodies,
    pub(crate) resp: Pipeline,
    pub(crate) out: Outcome,
    pub(crate) exp: crate::proxy::experiments::Marks,
    pub(crate) trace: Option<Box<crate::telemetry::trace::RequestTrace>>,
    /// The response cache's state; `None` for an alias without `cache`.
    pub(crate) cache: Option<Box<crate::proxy::cached::State>>,
    /// The bytes of the answer, for a request picked for output capture;
    /// `None` (nothing copied) for every other request.
    pub(crate) capture: Option<Box<crate::capture::Tap>>,
}

/// What is known of a request before its body is read.
pub(crate) struct Head {
    /// The config snapshot this request uses from start to end.
    pub(crate) rt: Arc<Runtime>,
    pub(crate) start: Instant,
    pub(crate) request_id: String,
    pub(crate) endpoint: Option<Endpoint>,
    /// The admitted key (a config key or a key-store key).
    pub(crate) key: Option<Arc<KeyRt>>,
    /// Counts this request in `tollgate_requests_in_flight` until dropped,
    /// however the request ends (a panic included).
    pub(crate) in_flight: Option<InFlight>,
}

/// A request past parsing and alias resolution, built once by admission.
/// Limits may still refuse it; nothing changes it.
pub(crate) struct Admitted {
    pub(crate) endpoint: Endpoint,
    /// The alias the request resolved to, from the request's snapshot.
    pub(crate) model: Arc<ModelRt>,
    /// What the body says (model, stream, `stream_options`).
    pub(crate) parsed: Parsed,
    /// The body routed, limited and spliced (a Messages request's, already
    /// translated to Chat Completions).
    pub(crate) body: Bytes,
    /// A Messages (Anthropic) request: its original body and what the
    /// response translation needs.
    pub(crate) messages: Option<Box<crate::proxy::messages::Request>>,
    /// A Files or Batches call: its upstream method, path and owner.
    pub(crate) files: Option<Box<crate::proxy::files::Call>>,
    /// The request's tags (empty when no tag is declared).
    pub(crate) tags: crate::workload::TagSet,
}

impl Admitted {
    /// The alias.
    pub(crate) fn alias(&self) -> &Arc<str> {
        &self.model.name
    }

    /// Whether the response streams: the body's `stream`, never for
    /// embeddings (decided in `rewrite`'s caller at admission, once).
    pub(crate) fn stream(&self) -> bool {
        self.parsed.stream
    }

    /// The route at `index` among the alias's routes.
    pub(crate) fn route(&self, index: usize) -> Option<&RouteRt> {
        self.model.routes.get(index)
    }
}

/// How the request was served.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum Served {
    /// Not (yet): no response was accepted for the client.
    #[default]
    No,
    /// A local (mock) provider answered.
    Locally,
    /// An upstream's response was accepted: no more retries.
    Upstream,
    /// Answered from the response cache.
    Cache,
}

/// How the request ended. Each field has one meaning and is written only
/// through these methods; `finish.rs` reads it once, at the end.
#[derive(Default)]
pub(crate) struct Outcome {
    /// The status the client got (0 until known; 499 when it left).
    status: u16,
    /// The request's error: answered, or to answer when proxying ends.
    error: Option<GatewayError>,
    /// The stream broke after it started.
    broken: Option<GatewayError>,
    served: Served,
    upstream_headers_at: Option<Instant>,
    first_byte_at: Option<Instant>,
    /// Limits held by this request: concurrency slots and token and spend
    /// reservations. Settled at the end; dropping it releases them, so any
    /// end (error, disconnect, panic) frees them.
    reservation: Option<Reservation>,
    /// `x-ratelimit-*` values for the response.
    rate: RateHeaders,
}

impl Outcome {
    /// A response header with `status` went (or is going) to the client.
    pub(crate) fn sent(&mut self, status: u16) {
        self.status = status;
    }

    /// The client left: nothing more can be written.
    pub(crate) fn gone(&mut self) {
        self.status = 499;
    }

    /// `err` is the request's error, answered when proxying ends (or
    /// already answered in a response that is under way).
    pub(crate) fn fail(&mut self, err: GatewayError) {
        self.error = Some(err);
    }

    /// `err` was answered: its status and body went to the client.
    pub(crate) fn answered(&mut self, err: GatewayError) {
        self.status = err.status();
        self.error = Some(err);
    }

    /// The stream broke after it started (the first reason is kept).
    pub(crate) fn broke(&mut self, err: GatewayError) {
        self.broken.get_or_insert(err);
    }

    /// A response was accepted for the client.
    pub(crate) fn serve(&mut self, how: Served) {
        self.served = how;
    }

    /// The upstream's response header arrived.
    pub(crate) fn upstream_answered(&mut self) {
        self.upstream_headers_at = Some(Instant::now());
    }

    /// A body chunk goes to the client.
    pub(crate) fn body_sent(&mut self, chunk: Option<&Bytes>) {
        if self.first_byte_at.is_none() && chunk.is_some_and(|b| !b.is_empty()) {
            self.first_byte_at = Some(Instant::now());
        }
    }

    /// Limits admitted the request (or refused it): what it holds and the
    /// rate headers it answers with.
    pub(crate) fn limits(&mut self, reservation: Option<Reservation>, rate: RateHeaders) {
        self.reservation = reservation;
        self.rate = rate;
    }

    /// The reservation, taken to be settled (or widened at admission).
    pub(crate) fn take_reservation(&mut self) -> Option<Reservation> {
        self.reservation.take()
    }

    pub(crate) fn reservation(&self) -> Option<&Reservation> {
        self.reservation.as_ref()
    }

    /// At the end: the status when no hook set one, from what Pingora
    /// wrote (`written`) or, when nothing was, whether it failed.
    pub(crate) fn close(&mut self, written: Option<u16>, failed: bool) {
        if self.status == 0 {
            self.status = written.unwrap_or(if failed { 499 } else { 0 });
        }
    }

    pub(crate) fn status(&self) -> u16 {
        self.status
    }

    pub(crate) fn error(&self) -> Option<&GatewayError> {
        self.error.as_ref()
    }

    pub(crate) fn broken(&self) -> Option<&GatewayError> {
        self.broken.as_ref()
    }

    pub(crate) fn served(&self) -> Served {
        self.served
    }

    pub(crate) fn upstream_headers_at(&self) -> Option<Instant> {
        self.upstream_headers_at
    }

    pub(crate) fn first_byte_at(&self) -> Option<Instant> {
        self.first_byte_at
    }

    pub(crate) fn rate(&self) -> &RateHeaders {
        &self.rate
    }
}

/// Holds one unit of the in-flight gauge.
pub(crate) struct InFlight(());

impl InFlight {
    pub(crate) fn enter() -> Self {
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

impl Ctx {
    /// A request on the snapshot `rt`.
    pub(crate) fn new(rt: Arc<Runtime>) -> Self {
        Self {
            head: Head {
                rt,
                start: Instant::now(),
                request_id: String::new(),
                endpoint: None,
                key: None,
                in_flight: None,
            },
            req: None,
            attempts: Attempts::default(),
            current: Current::default(),
            routing: crate::routing::RequestRouting::default(),
            bodies: Default::default(),
            resp: Pipeline::default(),
            out: Outcome::default(),
            exp: Default::default(),
            trace: None,
            cache: None,
            capture: None,
        }
    }

    /// Admission's result, set once.
    pub(crate) fn admit(&mut self, req: Admitted) -> Arc<Admitted> {
        let req = Arc::new(req);
        debug_assert!(self.req.is_none(), "a request is admitted once");
        self.req = Some(req.clone());
        req
    }

    /// The admitted request, once there is one.
    pub(crate) fn req(&self) -> Option<&Arc<Admitted>> {
        self.req.as_ref()
    }

    /// The admitted request, where the hook runs only after admission.
    pub(crate) fn admitted(&self) -> Result<&Arc<Admitted>, GatewayError> {
        self.req.as_ref().ok_or(GatewayError::Internal)
    }

    /// Whether the response streams (never for embeddings).
    pub(crate) fn streams(&self) -> bool {
        self.req.as_ref().is_some_and(|r| r.stream())
    }

    /// The caps on this request's attempts.
    pub(crate) fn caps(&self) -> Caps {
        Caps {
            max_attempts: self.head.rt.max_attempts,
            start: self.head.start,
            deadline: self.head.rt.request_deadline,
        }
    }

    /// The route index of the attempt that answered or was tried last: the
    /// current attempt's (a hedge race's winner once it is the current
    /// one), else the walker's last one (a locally served request).
    pub(crate) fn attempt_route(&self) -> Option<usize> {
        self.current.route().or_else(|| self.attempts.last_route())
    }

    /// The route of the current (or last) attempt.
    pub(crate) fn current_route(&self) -> Option<&RouteRt> {
        let req = self.req.as_ref()?;
        let index = self.attempt_route().or_else(|| self.attempts.route())?;
        req.route(index)
    }

    /// Whether this request's spans are recorded.
    pub(crate) fn sampled(&self) -> bool {
        self.trace.as_ref().is_some_and(|t| t.sampled())
    }

    /// The trace context sent upstream with attempt `seq`.
    pub(crate) fn propagation(&self, seq: u32) -> Option<crate::telemetry::trace::Propagation> {
        self.trace.as_ref().map(|t| t.propagate(seq))
    }

    /// The headers every locally written response carries.
    pub(crate) fn tags(&self) -> crate::proxy::write::Tags<'_> {
        crate::proxy::write::Tags {
            request_id: &self.head.request_id,
            rate: self.out.rate(),
            anthropic: self.head.endpoint == Some(Endpoint::Messages),
            cache: self.cache.as_ref().map(|c| c.mark.label()),
        }
    }
}

#[cfg(test)]
mod tests {
    /// Every request's future holds a `Ctx`: its size is a per-request
    /// cost (docs/benchmarks.md gives it before and after each change).
    #[test]
    fn ctx_stays_small() {
        let size = std::mem::size_of::<super::Ctx>();
        println!("size_of::<Ctx>() = {size} bytes");
        // 1,344 bytes before the attempt walker (engine::attempts), 1,384
        // after; 1,296 with the parts (issue 22); 1,136 with the translated
        // bodies boxed (only translated routes make them); 1,216 with the
        // trace context (boxed), the attempt's pool key, sequence number and
        // hedge mark, and the pipeline's response facts (issues 17 and 21);
        // 1,240 with the output capture's tap (a boxed `Option`, issue 20).
        assert!(size <= 1240, "Ctx grew to {size} bytes");
    }
}
