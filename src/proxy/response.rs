//! The response on its way back: tag it, pick how its body is metered, and
//! pass each chunk through the meter.

use crate::accounting::meter::{BodyMeter, StreamMeter};
use crate::base::error::GatewayError;
use crate::engine::attempts::Failure;
use crate::proxy::attempt;
use crate::proxy::ctx::{Ctx, Meter};
use crate::proxy::headers::REQUEST_ID;
use crate::resilience::verdict::{judge, Verdict};
use bytes::Bytes;
use pingora::http::ResponseHeader;
use std::time::Instant;

/// Runs when the upstream's response header arrives: judges it (a failure
/// is retried elsewhere or mapped to our own error), then keeps only the
/// allow-listed provider headers, tags it and picks how its body is metered.
pub fn on_header(resp: &mut ResponseHeader, ctx: &mut Ctx) -> pingora::Result<()> {
    ctx.upstream_headers_at = Some(Instant::now());
    if let Some(w) = &ctx.watchdog {
        w.headers();
    }
    let stream = ctx.streams();
    let verdict = match attempt::current_upstream(ctx) {
        Ok(up) => judge(resp, &up.retry.on_status, stream),
        Err(_) => Verdict::Accept,
    };
    if let Verdict::Fail {
        error,
        skip_provider,
        retry_after,
    } = verdict
    {
        let failure = Failure::status(
            resp.status.as_u16(),
            error.clone(),
            retry_after,
            skip_provider,
        );
        attempt::record_failure(ctx, failure);
        let retry = attempt::may_retry(ctx);
        ctx.verdict_retry = Some(retry);
        if !retry {
            ctx.error = Some(error);
        }
        return Err(pingora::Error::explain(
            pingora::ErrorType::HTTPStatus(502),
            "upstream response counted as a failure",
        ));
    }
    attempt::record_success(ctx);
    crate::proxy::headers::client_response(resp);
    ctx.status = resp.status.as_u16();
    resp.insert_header(REQUEST_ID, ctx.request_id.as_str())?;
    for (name, value) in ctx.rate_headers.pairs() {
        resp.insert_header(name, value)?;
    }
    if let (Some(rt), Some(route)) = (ctx.rt.as_ref(), ctx.current_route()) {
        if let Some(name) = &rt.route_header {
            resp.insert_header(name.clone(), route.route_label.clone())?;
        }
    }
    // The response pipeline, decided once: the provider's dialect (a
    // translated route's mode), then the meter, then the front's (Messages).
    crate::proxy::translated::on_header(resp, ctx)?;
    ctx.meter = meter_for(resp, ctx);
    if matches!(ctx.meter, Meter::Stream(_)) && ctx.attempt.as_ref().is_some_and(|a| a.injected) {
        // Bytes will be cut: the upstream's length would no longer hold.
        resp.remove_header(&http::header::CONTENT_LENGTH);
    }
    crate::proxy::messages::on_header(resp, ctx)
}

/// How the body of an accepted response is metered: the one place the
/// meter is chosen. Called once the provider's translation has fixed the
/// status and content type the client sees.
fn meter_for(resp: &ResponseHeader, ctx: &Ctx) -> Meter {
    if !resp.status.is_success() {
        // Errors carry no usage (a mapped provider error included).
        return Meter::None;
    }
    if !crate::sse::is_event_stream(resp) {
        return Meter::Body(BodyMeter::default());
    }
    if ctx.front.is_some() && crate::proxy::messages::passthrough::current(ctx) {
        // Anthropic's own events, passed through to a Messages client.
        return Meter::Stream(Box::new(StreamMeter::anthropic()));
    }
    let ep = ctx
        .endpoint
        .unwrap_or(crate::base::endpoint::Endpoint::ChatCompletions);
    let injected = ctx.attempt.as_ref().is_some_and(|a| a.injected);
    Meter::Stream(Box::new(StreamMeter::new(ep, injected)))
}

/// Runs for each body chunk going to the client. An error aborts the
/// response (the stream then ends with an error event).
pub fn on_chunk(body: &mut Option<Bytes>, eos: bool, ctx: &mut Ctx) -> pingora::Result<()> {
    crate::proxy::translated::on_chunk(body, eos, ctx)?;
    if ctx.first_byte_at.is_none() && body.as_ref().is_some_and(|b| !b.is_empty()) {
        ctx.first_byte_at = Some(Instant::now());
    }
    if eos {
        // Disarm before Pingora can return the connection to its pool.
        ctx.watchdog = None;
    } else if let Some(w) = &ctx.watchdog {
        w.activity();
    }
    match &mut ctx.meter {
        Meter::None => {}
        Meter::Body(m) => m.on_chunk(body),
        Meter::Stream(m) => {
            if m.on_chunk(body, eos).is_err() {
                log::warn!(
                    "request {}: the upstream sent an SSE event over {} bytes; stream aborted",
                    ctx.request_id,
                    crate::accounting::meter::MAX_EVENT_BYTES
                );
                ctx.watchdog = None;
                ctx.mid_stream_error = Some(GatewayError::UpstreamError);
                ctx.unsent = body.take().filter(|b| !b.is_empty());
                return Err(pingora::Error::explain(
                    pingora::ErrorType::Custom("sse_event_too_large"),
                    "SSE event over the size limit",
                )
                .into_up());
            }
        }
    }
    crate::proxy::messages::on_chunk(body, eos, ctx);
    Ok(())
}
