//! The upstream's response on its way back: judge its header (a failure is
//! retried elsewhere or mapped to our own error), keep the allow-listed
//! headers, tag it, choose its pipeline (`pipeline.rs`), then run each
//! body chunk through that pipeline.

use crate::engine::attempts::Failure;
use crate::proxy::attempt;
use crate::proxy::ctx::Ctx;
use crate::proxy::headers::REQUEST_ID;
use crate::proxy::pipeline::Pipeline;
use crate::proxy::translated::Accepting;
use crate::resilience::verdict::{judge, Verdict};
use bytes::Bytes;
use pingora::http::ResponseHeader;

/// Runs when the upstream's response header arrives.
pub(crate) fn on_header(resp: &mut ResponseHeader, ctx: &mut Ctx) -> pingora::Result<()> {
    ctx.out.upstream_answered();
    ctx.current.headers_arrived();
    let stream = ctx.streams();
    let verdict = match ctx.current.get() {
        Some(a) if a.up.kind == crate::config::ProviderKind::Bedrock => {
            crate::resilience::verdict::judge_bedrock(resp, &a.up.retry.on_status, stream)
        }
        Some(a) => judge(resp, &a.up.retry.on_status, stream),
        None => Verdict::Accept,
    };
    if let Verdict::Fail {
        error,
        skip_provider,
        retry_after,
    } = verdict
    {
        let status = resp.status.as_u16();
        attempt::response_failed(
            ctx,
            Failure::status(status, error, retry_after, skip_provider),
        );
        return Err(pingora::Error::explain(
            pingora::ErrorType::HTTPStatus(502),
            "upstream response counted as a failure",
        ));
    }
    attempt::response_accepted(ctx, resp.status.as_u16());
    let (Ok(req), Some(route)) = (ctx.admitted(), ctx.current_route()) else {
        crate::proxy::headers::client_response(resp);
        tag(resp, ctx)?;
        ctx.out.sent(resp.status.as_u16());
        return Ok(());
    };
    let accepting = Accepting {
        req,
        route,
        request_id: &ctx.head.request_id,
        client: ctx.bodies.client(),
    };
    let injected = ctx.current.get().is_some_and(|a| a.injected);
    // The pipeline is chosen while the provider's own headers are there
    // (Bedrock names its error type and token count in them), then only
    // the allow-listed ones stay.
    let pipeline = Pipeline::choose(resp, &accepting, injected, ctx.sampled())?;
    crate::proxy::headers::client_response(resp);
    if let Some(name) = &ctx.head.rt.route_header {
        resp.insert_header(name.clone(), route.route_label.clone())?;
    }
    ctx.resp = pipeline;
    tag(resp, ctx)?;
    // The status the client sees (a provider error's mapped one).
    ctx.out.sent(resp.status.as_u16());
    Ok(())
}

/// The gateway's own headers on a proxied response: the request id and
/// the rate-limit state.
fn tag(resp: &mut ResponseHeader, ctx: &Ctx) -> pingora::Result<()> {
    resp.insert_header(REQUEST_ID, ctx.head.request_id.as_str())?;
    for (name, value) in ctx.out.rate().pairs() {
        resp.insert_header(name, value)?;
    }
    if let Some(c) = &ctx.cache {
        resp.insert_header(crate::proxy::cached::HEADER, c.mark.label())?;
    }
    Ok(())
}

/// Runs for each body chunk going to the client. An error aborts the
/// response (the stream then ends with an error event).
pub(crate) fn on_chunk(body: &mut Option<Bytes>, eos: bool, ctx: &mut Ctx) -> pingora::Result<()> {
    let ran = ctx.resp.on_chunk(body, eos);
    ctx.out.body_sent(body.as_ref());
    if let (Some(c), Ok(None)) = (&mut ctx.cache, &ran) {
        c.capture(body, eos);
    }
    if let (Some(t), Ok(None)) = (&mut ctx.capture, &ran) {
        t.push(body.as_ref());
    }
    if eos {
        // Disarm before Pingora can return the connection to its pool.
        ctx.current.disarm();
    } else {
        ctx.current.activity();
    }
    match ran {
        Ok(None) => Ok(()),
        Ok(Some((status, mapped))) => {
            log::warn!(
                "request {}: provider answered {status}; mapped to {} {}",
                ctx.head.request_id,
                mapped.status(),
                mapped.code()
            );
            ctx.out.fail(mapped);
            Ok(())
        }
        Err(abort) => {
            log::warn!(
                "request {}: {}; response aborted",
                ctx.head.request_id,
                abort.why
            );
            ctx.current.disarm();
            ctx.out.broke(abort.error);
            Err(
                pingora::Error::explain(pingora::ErrorType::Custom("response_aborted"), abort.why)
                    .into_up(),
            )
        }
    }
}
