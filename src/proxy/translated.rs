//! The proxy side of provider translation. OpenAI-kind routes never get here
//! past a flag check: they keep the zero-copy splice and passthrough. For a
//! route whose provider speaks another dialect:
//!
//! - `prepare` (in `upstream_peer`) refuses endpoints the kind does not serve
//!   and builds the translated body once per route (the client body is parsed
//!   into JSON only then), reused by retries of that route;
//! - `patch_request` sets the route's own upstream path (Azure deployments,
//!   Anthropic's `/messages`, the Gemini method chosen for this request);
//! - `on_header` / `on_chunk` translate the response: a stream event by
//!   event, a whole body once buffered (bounded), and a provider error into
//!   our OpenAI-format error.

use crate::accounting::meter::MAX_EVENT_BYTES;
use crate::base::endpoint::Endpoint;
use crate::base::error::GatewayError;
use crate::config::ProviderKind;
use crate::proxy::ctx::Ctx;
use crate::proxy::gemini as gem;
use crate::runtime::RouteRt;
use crate::translate::pipe::Pipe;
use crate::translate::{anthropic, errors, gemini, RequestOpts, ResponseOpts, StreamTranslator};
use bytes::{Bytes, BytesMut};
use pingora::http::{RequestHeader, ResponseHeader};

/// Largest provider error body read; the rest is ignored.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// Translation state of one request.
#[derive(Default)]
pub struct Tr {
    /// The client's body as JSON, parsed when a translated route is first tried.
    client: Option<serde_json::Value>,
    /// The translated body, and the route it was built for.
    body: Option<(usize, Bytes)>,
    /// The upstream path chosen with that body, where it depends on the
    /// request (Gemini), and the route it was chosen for.
    path: Option<(usize, http::Uri)>,
    /// What the current attempt's response needs.
    mode: Mode,
}

#[derive(Default)]
enum Mode {
    /// Passthrough.
    #[default]
    Off,
    /// A provider error: its body is replaced by our error.
    Error {
        kind: ProviderKind,
        status: u16,
        buf: BytesMut,
    },
    /// A whole provider response, translated at its end.
    Json { buf: BytesMut, what: Whole },
    /// A provider event stream, translated event by event.
    Stream(Box<Pipe>),
}

/// What a whole response is, by provider.
#[derive(Clone, Copy)]
enum Whole {
    Anthropic,
    Gemini(gem::Body),
}

/// A provider's error response mapped to ours. For a given status, the
/// mapped status never depends on the body.
fn provider_error(kind: ProviderKind, status: u16, body: &[u8]) -> GatewayError {
    match kind {
        ProviderKind::Gemini => gemini::error(status, body),
        _ => errors::provider_error(status, body),
    }
}

/// Checks that `route` serves the endpoint and, for a translated route,
/// returns its body (built once per route). `None`: splice as usual.
pub fn prepare(
    ctx: &mut Ctx,
    index: usize,
    route: &RouteRt,
    ep: Endpoint,
) -> Result<Option<Bytes>, GatewayError> {
    let d = &route.dialect;
    d.supports(ep, &route.provider_name)?;
    if let Some(body) = crate::proxy::messages::passthrough::prepare(ctx, route)? {
        return Ok(Some(body));
    }
    if !d.translates() {
        return Ok(None);
    }
    if let Some((i, b)) = &ctx.tr.body {
        if *i == index {
            return Ok(Some(b.clone()));
        }
    }
    let stream = ctx.streams();
    if ctx.tr.client.is_none() {
        ctx.tr.client = Some(crate::translate::bounds::parse_body(&ctx.body)?);
    }
    let client = ctx.tr.client.as_ref().ok_or(GatewayError::Internal)?;
    let opts = RequestOpts {
        model: &route.model,
        stream,
        default_max_tokens: d.default_max_tokens,
        drop_unsupported: d.drop_unsupported,
    };
    let (t, path) = match d.kind {
        ProviderKind::Gemini => {
            let (t, uri) = gem::request(client, &opts, ep, d)?;
            (t, Some(uri))
        }
        _ => (
            anthropic::chat_request(client, &opts).map_err(GatewayError::from)?,
            None,
        ),
    };
    if !t.dropped.is_empty() {
        log::info!(
            "request {}: dropped fields provider {} cannot honour (drop_unsupported_params): {}",
            ctx.request_id,
            route.provider_name,
            t.dropped.join(", ")
        );
    }
    ctx.tr.body = Some((index, t.body.clone()));
    ctx.tr.path = path.map(|p| (index, p));
    Ok(Some(t.body))
}

/// Sets the route's own upstream path, where it has one.
pub fn patch_request(upstream: &mut RequestHeader, ctx: &Ctx) {
    if let Some((i, uri)) = &ctx.tr.path {
        if ctx.attempt.as_ref().map(|a| a.route) == Some(*i) {
            upstream.set_uri(uri.clone());
            return;
        }
    }
    let (Some(route), Some(ep)) = (ctx.current_route(), ctx.endpoint) else {
        return;
    };
    if let Some(uri) = route.dialect.path(ep) {
        upstream.set_uri(uri.clone());
    }
}

/// Picks how an accepted response is translated, after the verdict: the
/// status and content type the client sees (the meter follows from them,
/// in `response::on_header`).
pub fn on_header(resp: &mut ResponseHeader, ctx: &mut Ctx) -> pingora::Result<()> {
    ctx.tr.mode = Mode::Off;
    if crate::proxy::messages::passthrough::current(ctx) {
        return Ok(());
    }
    let Some((kind, maps_errors, translates, model)) = ctx.current_route().map(|r| {
        (
            r.dialect.kind,
            r.dialect.maps_errors(),
            r.dialect.translates(),
            r.model.clone(),
        )
    }) else {
        return Ok(());
    };
    if !maps_errors {
        return Ok(());
    }
    let status = resp.status.as_u16();
    if !resp.status.is_success() {
        let mapped = provider_error(kind, status, b"").status();
        resp.set_status(mapped)?;
        resp.remove_header(&http::header::CONTENT_LENGTH);
        resp.insert_header(http::header::CONTENT_TYPE, "application/json")?;
        ctx.status = mapped;
        ctx.tr.mode = Mode::Error {
            kind,
            status,
            buf: BytesMut::new(),
        };
        return Ok(());
    }
    if !translates {
        return Ok(());
    }
    let ep = ctx.endpoint.unwrap_or(Endpoint::ChatCompletions);
    let is_sse = crate::sse::is_event_stream(resp);
    let parsed = ctx.parsed.as_ref();
    let fallback_id = format!("chatcmpl-{}", ctx.request_id);
    let opts = ResponseOpts {
        model: &model,
        request_id: &fallback_id,
        include_usage: parsed.is_some_and(|p| p.include_usage),
    };
    resp.remove_header(&http::header::CONTENT_LENGTH);
    if let Some(a) = ctx.attempt.as_mut() {
        a.injected = false;
    }
    if is_sse {
        let t: Box<dyn StreamTranslator> = match kind {
            ProviderKind::Gemini => Box::new(gemini::ChatStream::new(&opts)),
            _ => Box::new(anthropic::ChatStream::new(&opts)),
        };
        ctx.tr.mode = Mode::Stream(Box::new(Pipe::new(t, MAX_EVENT_BYTES)));
    } else {
        resp.insert_header(http::header::CONTENT_TYPE, "application/json")?;
        let what = match kind {
            ProviderKind::Gemini => Whole::Gemini(gem::Body::of(ep, ctx.tr.client.as_ref())),
            _ => Whole::Anthropic,
        };
        ctx.tr.mode = Mode::Json {
            buf: BytesMut::new(),
            what,
        };
        // The translated body is metered like an OpenAI one: Gemini may
        // leave out usage (then estimated from it), and a body that never
        // translates (too big, unreadable, cut short) leaves the meter
        // without a readable body, which is charged as unread.
    }
    Ok(())
}

/// Translates one response chunk in place. An error aborts the response.
pub fn on_chunk(body: &mut Option<Bytes>, eos: bool, ctx: &mut Ctx) -> pingora::Result<()> {
    match &mut ctx.tr.mode {
        Mode::Off => Ok(()),
        Mode::Error { kind, status, buf } => {
            if let Some(b) = body.take() {
                let room = MAX_ERROR_BODY.saturating_sub(buf.len());
                buf.extend_from_slice(&b[..b.len().min(room)]);
            }
            *body = Some(Bytes::new());
            if eos {
                let err = provider_error(*kind, *status, buf);
                log::warn!(
                    "request {}: provider answered {status}; mapped to {} {}",
                    ctx.request_id,
                    err.status(),
                    err.code()
                );
                *body = Some(err.body());
                ctx.error = Some(err);
            }
            Ok(())
        }
        Mode::Json { buf, what } => {
            if let Some(b) = body.take() {
                if buf.len() + b.len() > crate::accounting::meter::MAX_BODY_BYTES {
                    return abort(ctx, "provider response over the translation limit");
                }
                buf.extend_from_slice(&b);
            }
            *body = Some(Bytes::new());
            if !eos {
                return Ok(());
            }
            let whole = std::mem::take(buf).freeze();
            let what = *what;
            let model = ctx.current_route().map(|r| r.model.clone());
            let fallback_id = format!("chatcmpl-{}", ctx.request_id);
            let opts = ResponseOpts {
                model: model.as_deref().unwrap_or(""),
                request_id: &fallback_id,
                include_usage: false,
            };
            let translated = match what {
                Whole::Anthropic => {
                    anthropic::chat_response(&whole, &opts).map(|(b, u)| (b, Some(u), false))
                }
                Whole::Gemini(what) => gem::response(
                    &whole,
                    &opts,
                    what,
                    model.as_deref().unwrap_or(""),
                    &ctx.body,
                ),
            };
            match translated {
                Ok((out, usage, estimated)) => {
                    *body = Some(out);
                    ctx.local_usage = usage;
                    ctx.local_usage_estimated = estimated;
                    Ok(())
                }
                Err(_) => abort(ctx, "unreadable provider response"),
            }
        }
        Mode::Stream(pipe) => {
            let mut out = BytesMut::new();
            let chunk = body.take().unwrap_or_default();
            let mut fed = pipe.feed(&chunk, &mut out);
            if fed.is_ok() && eos {
                fed = pipe.finish(&mut out);
            }
            ctx.local_usage = pipe.usage();
            *body = Some(out.freeze());
            if fed.is_err() {
                *body = None;
                return abort(ctx, "provider SSE event over the size limit");
            }
            Ok(())
        }
    }
}

fn abort(ctx: &mut Ctx, why: &'static str) -> pingora::Result<()> {
    log::warn!("request {}: {why}; response aborted", ctx.request_id);
    ctx.tr.mode = Mode::Off;
    ctx.watchdog = None;
    ctx.mid_stream_error = Some(GatewayError::UpstreamError);
    Err(pingora::Error::explain(pingora::ErrorType::Custom("translation_failed"), why).into_up())
}
