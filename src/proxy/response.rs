//! The response on its way back: tag it, pick how its body is metered, and
//! pass each chunk through the meter.

use crate::accounting::meter::{BodyMeter, StreamMeter};
use crate::proxy::ctx::{Ctx, Meter};
use crate::proxy::headers::REQUEST_ID;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use std::time::Instant;

/// Runs when the upstream's response header arrives.
pub fn on_header(resp: &mut ResponseHeader, ctx: &mut Ctx) -> pingora::Result<()> {
    ctx.upstream_headers_at = Some(Instant::now());
    ctx.status = resp.status.as_u16();
    resp.insert_header(REQUEST_ID, ctx.request_id.as_str())?;
    if let (Some(rt), Some(route)) = (ctx.rt.as_ref(), ctx.current_route()) {
        if let Some(name) = &rt.route_header {
            resp.insert_header(name.clone(), route.route_label.clone())?;
        }
    }
    let ep = ctx.endpoint.unwrap_or(crate::proxy::endpoint::Endpoint::ChatCompletions);
    ctx.meter = if !resp.status.is_success() {
        Meter::None
    } else if is_event_stream(resp) {
        if ctx.usage_injected {
            // Bytes will be cut: the upstream's length would no longer hold.
            resp.remove_header(&http::header::CONTENT_LENGTH);
        }
        Meter::Stream(Box::new(StreamMeter::new(ep, ctx.usage_injected)))
    } else {
        Meter::Body(BodyMeter::default())
    };
    Ok(())
}

fn is_event_stream(resp: &ResponseHeader) -> bool {
    resp.headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"))
}

/// Runs for each body chunk going to the client.
pub fn on_chunk(body: &mut Option<Bytes>, eos: bool, ctx: &mut Ctx) {
    if ctx.first_byte_at.is_none() && body.as_ref().is_some_and(|b| !b.is_empty()) {
        ctx.first_byte_at = Some(Instant::now());
    }
    match &mut ctx.meter {
        Meter::None => {}
        Meter::Body(m) => m.on_chunk(body),
        Meter::Stream(m) => {
            if m.on_chunk(body, eos).is_err() {
                log::warn!(
                    "request {}: an SSE event exceeded the scan limit; usage will be estimated",
                    ctx.request_id
                );
            }
        }
    }
}
