//! Upstream attempts: pick the route and backend, build the peer, header and
//! body, and decide after each failure whether to try again. A failure first
//! moves to another backend of the same provider (up to its `retry.attempts`),
//! then to the next route, with the body rewritten for that route's model.
//! Nothing is retried once a response byte has reached the client.

use crate::base::endpoint::Endpoint;
use crate::base::error::GatewayError;
use crate::proxy::ctx::{AttemptLog, Ctx};
use crate::proxy::headers;
use crate::resilience::watchdog::Watchdog;
use crate::rewrite;
use crate::runtime::ProviderRt;
use crate::telemetry::metrics;
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
    if ctx.attempts >= rt.max_attempts || ctx.start.elapsed() >= rt.request_deadline {
        return Err(exhausted(ctx));
    }
    let alias = ctx.alias.clone().ok_or(GatewayError::Internal)?;
    let model = rt.models.get(&*alias).ok_or(GatewayError::Internal)?;
    let ep = ctx.endpoint.ok_or(GatewayError::Internal)?;
    // Only Chat Completions and Completions take `stream_options`.
    let usage_capable = matches!(ep, Endpoint::ChatCompletions | Endpoint::Completions);
    loop {
        let Some((index, route)) = crate::routing::candidate(&ctx.order, ctx.route, &model.routes)
        else {
            if ctx.attempts == 0 && !ctx.any_health {
                // No route has a healthy backend. Health checks lag (a backend
                // that just came up): try the unhealthy ones once.
                ctx.any_health = true;
                ctx.route = 0;
                ctx.tried.clear();
                ctx.route_attempts = 0;
                continue;
            }
            return Err(exhausted(ctx));
        };
        let translated = crate::proxy::translated::prepare(ctx, ctx.route, route, ep);
        if let Err(e) = &translated {
            ctx.last_failure = Some(e.clone());
        }
        if let (ProviderRt::Http(up), Ok(translated)) = (&*route.provider, translated) {
            let provider_done = ctx.skip_provider || ctx.route_attempts >= up.retry.attempts;
            if !provider_done {
                match up.select(ctx.request_id.as_bytes(), &ctx.tried, ctx.any_health) {
                    Ok((addr, state)) => {
                        let ask = usage_capable && up.stream_usage;
                        let parsed = ctx.parsed.as_ref().ok_or(GatewayError::Internal)?;
                        let (body, injected) = match translated {
                            Some(body) => (body, false),
                            None => {
                                rewrite::attempt_body(&ctx.body, parsed, &route.model_json, ask)
                            }
                        };
                        count_retry(ctx, &alias);
                        ctx.tried.push(addr);
                        ctx.attempt_route = Some(index);
                        crate::routing::attempt_started(&mut ctx.routing, &model.routing, index);
                        ctx.backend = Some(addr);
                        ctx.backend_state = state;
                        ctx.attempts += 1;
                        ctx.route_attempts += 1;
                        ctx.attempt_body = body;
                        ctx.usage_injected = injected;
                        ctx.body_sent = false;
                        return Ok(Box::new(up.peer(addr, &route.limits)));
                    }
                    Err(Some(out)) => {
                        ctx.note_out(&out);
                    }
                    Err(None) => {}
                }
            }
        }
        ctx.route += 1;
        ctx.tried.clear();
        ctx.route_attempts = 0;
        ctx.skip_provider = false;
    }
}

fn count_retry(ctx: &Ctx, alias: &str) {
    if ctx.attempts == 0 {
        return;
    }
    let kind = if ctx.route_attempts == 0 {
        "fallback"
    } else {
        "retry"
    };
    if let Some(m) = metrics::get() {
        m.retries.with_label_values(&[alias, kind]).inc();
    }
}

/// What to answer when nothing is left to try.
pub fn exhausted(ctx: &Ctx) -> GatewayError {
    match (&ctx.last_failure, ctx.out_for_ms) {
        (Some(e), _) => e.clone(),
        (None, Some(ms)) => {
            let retry_after = Some(ms.div_ceil(1000).max(1));
            if ctx.out_rate_limited {
                GatewayError::RateLimited { retry_after }
            } else {
                GatewayError::UpstreamUnavailable { retry_after }
            }
        }
        (None, None) => GatewayError::UpstreamError,
    }
}

/// The provider of the current attempt.
pub fn current_upstream(ctx: &Ctx) -> Result<UpstreamRef, GatewayError> {
    match ctx.current_route().map(|r| &*r.provider) {
        Some(ProviderRt::Http(up)) => Ok(up.clone()),
        _ => Err(GatewayError::Internal),
    }
}

/// Replaces the client's header with the one for this attempt's provider.
pub fn upstream_request(
    client: &RequestHeader,
    upstream: &mut RequestHeader,
    ctx: &Ctx,
) -> Result<(), GatewayError> {
    let up = current_upstream(ctx)?;
    let ep = ctx.endpoint.ok_or(GatewayError::Internal)?;
    *upstream =
        headers::upstream_request(client, &up, ep, ctx.attempt_body.len(), &ctx.request_id)?;
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
        *body = Some(ctx.attempt_body.clone());
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
    !ctx.response_started
        && ctx.attempts < rt.max_attempts
        && ctx.start.elapsed() < rt.request_deadline
}

/// Records a failed attempt: breaker, cooldown, metrics, the attempt log, and
/// the error to answer if nothing else works.
pub fn record_failure(
    ctx: &mut Ctx,
    outcome: &'static str,
    error: GatewayError,
    retry_after: Option<u64>,
    skip_provider: bool,
) {
    let plan =
        crate::proxy::ctx::alias_model(ctx.rt.as_ref(), ctx.alias.as_deref()).map(|m| &m.routing);
    let stream = ctx.parsed.as_ref().is_some_and(|p| p.stream);
    crate::routing::attempt_failed(&mut ctx.routing, plan, stream);
    let up = current_upstream(ctx).ok();
    let now = crate::base::clock::monotonic_ms();
    if let (Some(s), Some(up)) = (&ctx.backend_state, &up) {
        s.record(false, now, &up.breaker);
        if let Some(secs) = retry_after {
            let rate_limit = matches!(error, GatewayError::RateLimited { .. });
            s.cool_for(secs.saturating_mul(1000), now, rate_limit);
        }
    }
    if let (Some(m), Some(up)) = (metrics::get(), &up) {
        m.attempts
            .with_label_values(&[up.name.as_str(), outcome])
            .inc();
    }
    ctx.attempt_log.push(AttemptLog {
        provider: up,
        backend: ctx.backend,
        outcome,
    });
    ctx.last_failure = Some(error);
    ctx.skip_provider |= skip_provider;
}

/// Records a successful attempt (the response is going to the client).
pub fn record_success(ctx: &mut Ctx) {
    let up = current_upstream(ctx).ok();
    if let (Some(s), Some(up)) = (&ctx.backend_state, &up) {
        s.record(true, crate::base::clock::monotonic_ms(), &up.breaker);
    }
    if let (Some(m), Some(up)) = (metrics::get(), &up) {
        m.attempts
            .with_label_values(&[up.name.as_str(), "success"])
            .inc();
    }
    ctx.attempt_log.push(AttemptLog {
        provider: up,
        backend: ctx.backend,
        outcome: "success",
    });
    ctx.response_started = true;
}

/// Decides whether a connect failure is retried (on another backend or route).
pub fn on_connect_failure(ctx: &mut Ctx, mut e: Box<Error>) -> Box<Error> {
    let timeout = matches!(
        e.etype(),
        ErrorType::ConnectTimedout | ErrorType::TLSHandshakeTimedout
    );
    let (outcome, err) = if timeout {
        ("connect_timeout", GatewayError::UpstreamTimeout)
    } else {
        ("connect_error", GatewayError::UpstreamError)
    };
    if let Some(addr) = ctx.backend {
        log::warn!(
            "request {}: connecting to {addr} failed: {:?}",
            ctx.request_id,
            e.etype()
        );
    }
    record_failure(ctx, outcome, err, None, false);
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
    let (outcome, err) = if timeout {
        ("timeout", GatewayError::UpstreamTimeout)
    } else {
        ("read_error", GatewayError::UpstreamError)
    };
    record_failure(ctx, outcome, err, None, false);
    e.set_retry(may_retry(ctx));
}
