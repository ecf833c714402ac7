//! Upstream attempts through Pingora's hooks: pick the route and backend
//! (the walker, `engine::attempts`), build the peer, header and body, and
//! decide after each failure whether to try again. A failure first moves to
//! another backend of the same provider (up to its `retry.attempts`), then
//! to the next route, with the body rewritten for that route's model.
//! Nothing is retried once a response byte has reached the client.

use crate::base::error::GatewayError;
use crate::engine::attempts::{Attempt, Failure};
use crate::proxy::ctx::{Ctx, Served};
use crate::proxy::headers;
use crate::resilience::watchdog::Watchdog;
use pingora::http::RequestHeader;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType};

/// The proxy's current attempt and what belongs to it alone: whether its
/// body went out, its timeout watchdog, and the verdict its response got.
/// A new attempt replaces all of it at once ([`Current::start`]).
#[derive(Default)]
pub(crate) struct Current {
    attempt: Option<Attempt>,
    body_sent: bool,
    /// Enforces first-byte/idle/total limits for this attempt.
    watchdog: Option<Watchdog>,
    /// Retry decision made by the response verdict, applied in
    /// `error_while_proxy`.
    verdict_retry: Option<bool>,
}

impl Current {
    /// `a` is the attempt now; the last one's state is dropped with it
    /// (its watchdog disarmed).
    pub(crate) fn start(&mut self, a: Attempt) {
        *self = Current {
            attempt: Some(a),
            ..Current::default()
        };
    }

    pub(crate) fn get(&self) -> Option<&Attempt> {
        self.attempt.as_ref()
    }

    /// The current attempt's route index.
    pub(crate) fn route(&self) -> Option<usize> {
        self.attempt.as_ref().map(|a| a.route)
    }

    /// The body chunk Pingora sends for this attempt: the whole body the
    /// first time, nothing after. The attempt gives its body up (moved,
    /// not cloned): nothing reads it once it is sent.
    fn body_chunk(&mut self) -> bytes::Bytes {
        if self.body_sent {
            return bytes::Bytes::new();
        }
        self.body_sent = true;
        self.attempt
            .as_mut()
            .map(|a| std::mem::take(&mut a.body))
            .unwrap_or_default()
    }

    /// The attempt's body went out (its request reached the provider).
    pub(crate) fn body_sent(&self) -> bool {
        self.body_sent
    }

    /// Stops the watchdog (the attempt ended, or its connection may go back
    /// to the pool).
    pub(crate) fn disarm(&mut self) {
        self.watchdog = None;
    }

    /// The response header arrived.
    pub(crate) fn headers_arrived(&self) {
        if let Some(w) = &self.watchdog {
            w.headers();
        }
    }

    /// A body chunk arrived.
    pub(crate) fn activity(&self) {
        if let Some(w) = &self.watchdog {
            w.activity();
        }
    }

    fn verdict(&mut self, retry: bool) {
        self.verdict_retry = Some(retry);
    }
}

/// Turns a gateway error into the Pingora error that carries it out of a hook.
pub(crate) fn fail(ctx: &mut Ctx, err: GatewayError) -> Box<Error> {
    let status = err.status();
    let msg = err.code();
    ctx.out.fail(err);
    Error::explain(ErrorType::HTTPStatus(status), msg)
}

/// Chooses the next backend to try and prepares this attempt's body and,
/// for a cloud provider, its credentials (a failure to get them fails the
/// attempt like a connect failure, and the walk goes on).
pub(crate) async fn next_peer(ctx: &mut Ctx) -> Result<Box<HttpPeer>, GatewayError> {
    ctx.current.disarm();
    let req = ctx.admitted()?.clone();
    let caps = ctx.caps();
    loop {
        let head = &ctx.head;
        let bodies = &mut ctx.bodies;
        let pick = ctx.attempts.next(
            &req.model,
            req.alias(),
            head.request_id.as_bytes(),
            &caps,
            false,
            |index, route| bodies.prepare(&req, &head.request_id, index, route),
        )?;
        let route = req.route(pick.route).ok_or(GatewayError::Internal)?;
        let mut attempt = pick.into_attempt(
            route,
            &req.body,
            &req.parsed,
            req.endpoint.usage_capable(),
            (&ctx.head.rt.workloads, req.tags),
        );
        crate::routing::attempt_started(&mut ctx.routing, &req.model.routing, attempt.route);
        if let Err(f) = crate::engine::attempts::authorize(&mut attempt).await {
            let stream = req.stream();
            crate::routing::attempt_failed(&mut ctx.routing, Some(&req.model.routing), stream);
            ctx.attempts.failed(&attempt, f);
            continue;
        }
        let peer = attempt.up.peer(attempt.addr, &route.limits);
        ctx.current.start(attempt);
        return Ok(Box::new(peer));
    }
}

/// Replaces the client's header with the one for this attempt's provider.
pub(crate) fn upstream_request(
    client: &RequestHeader,
    upstream: &mut RequestHeader,
    ctx: &Ctx,
) -> Result<(), GatewayError> {
    let a = ctx.current.get().ok_or(GatewayError::Internal)?;
    let req = ctx.admitted()?;
    *upstream = headers::upstream_request(
        client,
        &a.up,
        a.auth(),
        req.endpoint,
        a.body.len(),
        &ctx.head.request_id,
        ctx.propagation(a.seq),
    )?;
    if let Some(route) = req.route(a.route) {
        ctx.bodies
            .patch_request(upstream, req.endpoint, a.route, route);
        crate::proxy::messages::passthrough::patch_request(client, upstream, req, route);
    }
    if let Some(call) = &req.files {
        crate::proxy::files::patch_request(call, upstream, a.body.len());
    }
    if let Some(m) = a.cloud() {
        crate::proxy::cloud::authenticate(upstream, a, m, req.stream())?;
    }
    Ok(())
}

/// Emits this attempt's body. Pingora calls this once per attempt with the
/// retry buffer's content, or with no data for a body it takes for empty
/// (`proxy::body`); we send the whole rewritten body in its place (and
/// never the client's bytes directly).
pub(crate) fn body_chunk(body: &mut Option<bytes::Bytes>, ctx: &mut Ctx) {
    *body = Some(ctx.current.body_chunk());
}

/// Starts the timeout watchdog for this attempt when its limits need one.
pub(crate) fn on_connected(ctx: &mut Ctx, fd: std::os::fd::RawFd) {
    let Some(limits) = ctx.current_route().map(|r| r.limits) else {
        return;
    };
    if limits.needs_watchdog() {
        match Watchdog::arm(fd, limits) {
            Ok(w) => ctx.current.watchdog = Some(w),
            Err(e) => log::warn!(
                "request {}: cannot arm the timeout watchdog: {e}",
                ctx.head.request_id
            ),
        }
    }
}

/// Whether another attempt may start.
pub(crate) fn may_retry(ctx: &Ctx) -> bool {
    ctx.out.served() == Served::No && ctx.attempts.may_retry(&ctx.caps())
}

/// Records a failed attempt: route statistics, then the walker's breaker,
/// cooldown, metrics, attempt log and the error to answer if nothing else
/// works.
fn record_failure(ctx: &mut Ctx, f: Failure) {
    let stream = ctx.streams();
    let req = ctx.req().cloned();
    let plan = req.as_ref().map(|r| &r.model.routing);
    crate::routing::attempt_failed(&mut ctx.routing, plan, stream);
    if let Some(a) = ctx.current.get() {
        ctx.attempts.failed(a, f);
    }
}

/// The current attempt's response was judged a failure (`retry_after`,
/// `skip_provider` from the verdict): recorded, and whether another
/// attempt follows is kept for `error_while_proxy`. When none does, its
/// error is the answer.
pub(crate) fn response_failed(ctx: &mut Ctx, f: Failure) {
    let error = f.error.clone();
    record_failure(ctx, f);
    let retry = may_retry(ctx);
    ctx.current.verdict(retry);
    if !retry {
        ctx.out.fail(error);
    }
}

/// The current attempt's response (its upstream status `status`) is
/// going to the client.
pub(crate) fn response_accepted(ctx: &mut Ctx, status: u16) {
    if let Some(a) = ctx.current.get() {
        ctx.attempts.succeeded(a, status);
    }
    ctx.out.serve(Served::Upstream);
}

/// Decides whether a connect failure is retried (on another backend or route).
pub(crate) fn on_connect_failure(ctx: &mut Ctx, mut e: Box<Error>) -> Box<Error> {
    let timeout = matches!(
        e.etype(),
        ErrorType::ConnectTimedout | ErrorType::TLSHandshakeTimedout
    );
    if let Some(a) = ctx.current.get() {
        log::warn!(
            "request {}: connecting to {} failed: {:?}",
            ctx.head.request_id,
            a.addr,
            e.etype()
        );
    }
    record_failure(ctx, Failure::connect(timeout));
    e.set_retry(may_retry(ctx));
    e
}

/// Decides whether an error while proxying is retried. Our own verdicts
/// (bad status) carry their decision; an I/O error or timeout before any
/// response reached the client is retried when attempts remain.
pub(crate) fn on_proxy_error(ctx: &mut Ctx, e: &mut Error) {
    if let Some(retry) = ctx.current.verdict_retry.take() {
        e.set_retry(retry);
        return;
    }
    let fired = ctx.current.watchdog.as_ref().and_then(|w| w.fired());
    let timeout = fired.is_some()
        || (matches!(
            e.etype(),
            ErrorType::ReadTimedout | ErrorType::WriteTimedout
        ) && e.esource() == &pingora::ErrorSource::Upstream);
    if e.esource() == &pingora::ErrorSource::Downstream && fired.is_none() {
        // The client failed (gone, or too slow to take the response within
        // the write timeout): not the upstream's fault, nothing to retry.
        e.set_retry(false);
        return;
    }
    if ctx.out.served() != Served::No {
        // Mid-stream: nothing can be retried; the stream ends with an error event.
        ctx.out.broke(if timeout {
            GatewayError::UpstreamTimeout
        } else {
            GatewayError::UpstreamError
        });
        e.set_retry(false);
        return;
    }
    if e.esource() != &pingora::ErrorSource::Upstream && fired.is_none() {
        e.set_retry(false);
        return;
    }
    record_failure(ctx, Failure::transfer(timeout));
    e.set_retry(may_retry(ctx));
}
