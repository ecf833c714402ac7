//! Upstream attempts: pick the route and backend, build the peer, header and
//! body, and decide after each failure whether to try again. A failure first
//! moves to another backend of the same provider (up to its `retry.attempts`),
//! then to the next route, with the body rewritten for that route's model.
//! Nothing is retried once a response byte has reached the client.

use crate::base::error::GatewayError;
use crate::engine::attempts::Failure;
use crate::proxy::ctx::Ctx;
use crate::proxy::headers;
use crate::resilience::watchdog::Watchdog;
use crate::upstream::UpstreamRef;
use pingora::http::RequestHeader;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType};

/// Turns a gateway error into the Pingora error that carries it out of a hook.
pub fn fail(ctx: &mut Ctx, err: GatewayError) -> Box<Error> {
    let status = err.status();
    let msg = err.code();
    ctx.error = Some(err);
    Error::explain(ErrorType::HTTPStatus(status), msg)
}

/// Chooses the next backend to try and prepares this attempt's body.
pub fn next_peer(ctx: &mut Ctx) -> Result<Box<HttpPeer>, GatewayError> {
    ctx.watchdog = None;
    let rt = ctx.runtime()?.clone();
    let alias = ctx.alias.clone().ok_or(GatewayError::Internal)?;
    let model = rt.models.get(&*alias).ok_or(GatewayError::Internal)?;
    let ep = ctx.endpoint.ok_or(GatewayError::Internal)?;
    let caps = ctx.caps(&rt);
    // The walker and the request id leave `ctx` for the walk, which lets
    // `prepare` (a translated route's body, cached in `ctx`) borrow it.
    let mut walk = std::mem::take(&mut ctx.attempts);
    let request_id = std::mem::take(&mut ctx.request_id);
    let pick = walk.next(
        model,
        &alias,
        request_id.as_bytes(),
        &caps,
        false,
        |index, route| crate::proxy::translated::prepare(ctx, index, route, ep),
    );
    ctx.request_id = request_id;
    ctx.attempts = walk;
    let pick = pick?;
    let route = model.routes.get(pick.route).ok_or(GatewayError::Internal)?;
    let parsed = ctx.parsed.as_ref().ok_or(GatewayError::Internal)?;
    let attempt = pick.into_attempt(route, &ctx.body, parsed, ep.usage_capable());
    crate::routing::attempt_started(&mut ctx.routing, &model.routing, attempt.route);
    let peer = attempt.up.peer(attempt.addr, &route.limits);
    ctx.attempt = Some(attempt);
    ctx.body_sent = false;
    Ok(Box::new(peer))
}

/// What to answer when nothing is left to try.
pub fn exhausted(ctx: &Ctx) -> GatewayError {
    ctx.attempts.exhausted()
}

/// The provider of the current attempt.
pub fn current_upstream(ctx: &Ctx) -> Result<UpstreamRef, GatewayError> {
    ctx.attempt
        .as_ref()
        .map(|a| a.up.clone())
        .ok_or(GatewayError::Internal)
}

/// Replaces the client's header with the one for this attempt's provider.
pub fn upstream_request(
    client: &RequestHeader,
    upstream: &mut RequestHeader,
    ctx: &Ctx,
) -> Result<(), GatewayError> {
    let up = current_upstream(ctx)?;
    let ep = ctx.endpoint.ok_or(GatewayError::Internal)?;
    let len = ctx.attempt.as_ref().map_or(0, |a| a.body.len());
    *upstream = headers::upstream_request(client, &up, ep, len, &ctx.request_id)?;
    crate::proxy::translated::patch_request(upstream, ctx);
    crate::proxy::messages::passthrough::patch_request(client, upstream, ctx);
    Ok(())
}

/// Emits this attempt's body. Pingora calls this once per attempt with the
/// retry buffer's tail; we send the whole rewritten body in its place.
pub fn body_chunk(body: &mut Option<bytes::Bytes>, ctx: &mut Ctx) {
    if ctx.body_sent {
        // Never forward client bytes directly: the body was already sent whole.
        *body = Some(bytes::Bytes::new());
    } else {
        *body = Some(
            ctx.attempt
                .as_ref()
                .map(|a| a.body.clone())
                .unwrap_or_default(),
        );
        ctx.body_sent = true;
    }
}

/// Starts the timeout watchdog for this attempt when its limits need one.
pub fn on_connected(ctx: &mut Ctx, fd: std::os::fd::RawFd) {
    let Some(limits) = ctx.current_route().map(|r| r.limits) else {
        return;
    };
    if limits.needs_watchdog() {
        match Watchdog::arm(fd, limits) {
            Ok(w) => ctx.watchdog = Some(w),
            Err(e) => log::warn!(
                "request {}: cannot arm the timeout watchdog: {e}",
                ctx.request_id
            ),
        }
    }
}

/// Whether another attempt may start.
pub fn may_retry(ctx: &Ctx) -> bool {
    let Some(rt) = ctx.rt.as_ref() else {
        return false;
    };
    !ctx.response_started && ctx.attempts.may_retry(&ctx.caps(rt))
}

/// Records a failed attempt: route statistics, then the walker's breaker,
/// cooldown, metrics, attempt log and the error to answer if nothing else
/// works.
pub fn record_failure(ctx: &mut Ctx, f: Failure) {
    let plan =
        crate::proxy::ctx::alias_model(ctx.rt.as_ref(), ctx.alias.as_deref()).map(|m| &m.routing);
    let stream = ctx.streams();
    crate::routing::attempt_failed(&mut ctx.routing, plan, stream);
    if let Some(a) = &ctx.attempt {
        ctx.attempts.failed(a, f);
    }
}

/// Records a successful attempt (the response is going to the client).
pub fn record_success(ctx: &mut Ctx) {
    if let Some(a) = &ctx.attempt {
        ctx.attempts.succeeded(a);
    }
    ctx.response_started = true;
}

/// Decides whether a connect failure is retried (on another backend or route).
pub fn on_connect_failure(ctx: &mut Ctx, mut e: Box<Error>) -> Box<Error> {
    let timeout = matches!(
        e.etype(),
        ErrorType::ConnectTimedout | ErrorType::TLSHandshakeTimedout
    );
    if let Some(addr) = ctx.attempt.as_ref().map(|a| a.addr) {
        log::warn!(
            "request {}: connecting to {addr} failed: {:?}",
            ctx.request_id,
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
pub fn on_proxy_error(ctx: &mut Ctx, e: &mut Error) {
    if let Some(retry) = ctx.verdict_retry.take() {
        e.set_retry(retry);
        return;
    }
    let fired = ctx.watchdog.as_ref().and_then(|w| w.fired());
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
    if ctx.response_started {
        // Mid-stream: nothing can be retried; the stream ends with an error event.
        ctx.mid_stream_error = Some(if timeout {
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
