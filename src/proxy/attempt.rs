//! One upstream attempt: pick the route and backend, build the peer, the
//! header and the body. A failed connect moves on to the next backend of the
//! same provider, then to the next route.

use crate::error::GatewayError;
use crate::proxy::ctx::Ctx;
use crate::proxy::endpoint::Endpoint;
use crate::proxy::headers;
use crate::rewrite;
use crate::runtime::ProviderRt;
use crate::upstream::UpstreamRef;
use pingora::http::RequestHeader;
use pingora::upstreams::peer::HttpPeer;

/// Turns a gateway error into the Pingora error that carries it out of a hook.
pub fn fail(ctx: &mut Ctx, err: GatewayError) -> Box<pingora::Error> {
    let status = err.status();
    let msg = err.code();
    ctx.error = Some(err);
    pingora::Error::explain(pingora::ErrorType::HTTPStatus(status), msg)
}

/// Chooses the next backend to try and prepares this attempt's body.
pub fn next_peer(ctx: &mut Ctx) -> Result<Box<HttpPeer>, GatewayError> {
    let rt = ctx.runtime()?.clone();
    let alias = ctx.alias.clone().ok_or(GatewayError::Internal)?;
    let model = rt.models.get(&*alias).ok_or(GatewayError::Internal)?;
    let parsed = ctx.parsed.clone().ok_or(GatewayError::Internal)?;
    let ep = ctx.endpoint.ok_or(GatewayError::Internal)?;
    // Only Chat Completions and Completions take `stream_options`.
    let usage_capable = matches!(ep, Endpoint::ChatCompletions | Endpoint::Completions);
    loop {
        let Some(route) = model.routes.get(ctx.route) else {
            if ctx.attempts == 0 && !ctx.any_health {
                // No route has a healthy backend. Health checks can lag
                // (a backend that just came up): try the others once.
                ctx.any_health = true;
                ctx.route = 0;
                ctx.tried.clear();
                continue;
            }
            break;
        };
        if let ProviderRt::Http(up) = &*route.provider {
            if let Some(backend) = up.select(ctx.request_id.as_bytes(), &ctx.tried, ctx.any_health) {
                let addr = *backend.addr.as_inet().ok_or(GatewayError::Internal)?;
                ctx.tried.push(addr);
                ctx.backend = Some(addr);
                ctx.attempts += 1;
                let ask = usage_capable && up.stream_usage;
                let (body, injected) =
                    rewrite::attempt_body(&ctx.body, &parsed, &route.model_json, ask);
                ctx.attempt_body = body;
                ctx.usage_injected = injected;
                ctx.body_sent = false;
                return Ok(Box::new(up.peer(addr)));
            }
        }
        // Nothing (left) to try on this route: fall back to the next one.
        ctx.route += 1;
        ctx.tried.clear();
    }
    Err(ctx.last_failure.clone().unwrap_or(GatewayError::UpstreamError))
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
    *upstream = headers::upstream_request(
        client,
        &up,
        ep,
        ctx.attempt_body.len(),
        &ctx.request_id,
    )?;
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

/// Decides whether a connect failure is retried (on another backend or route).
pub fn on_connect_failure(ctx: &mut Ctx, mut e: Box<pingora::Error>) -> Box<pingora::Error> {
    let timeout = matches!(
        e.etype(),
        pingora::ErrorType::ConnectTimedout | pingora::ErrorType::TLSHandshakeTimedout
    );
    ctx.last_failure = Some(if timeout {
        GatewayError::UpstreamTimeout
    } else {
        GatewayError::UpstreamError
    });
    if let Some(addr) = ctx.backend {
        log::warn!(
            "request {}: connecting to {addr} failed: {:?}",
            ctx.request_id,
            e.etype()
        );
    }
    // `next_peer` decides whether anything is left to try.
    e.set_retry(true);
    e
}
