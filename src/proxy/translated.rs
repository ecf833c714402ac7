//! The proxy side of provider translation. OpenAI-kind routes never get here
//! past a flag check: they keep the zero-copy splice and passthrough. For a
//! route whose provider speaks another dialect:
//!
//! - `prepare` (in `upstream_peer`) refuses endpoints the kind does not serve
//!   and builds the translated body once per route (the client body is parsed
//!   into JSON only then), reused by retries of that route;
//! - `patch_request` sets the route's own upstream path (Azure deployments,
//!   Anthropic's `/messages`);
//! - `on_header` / `on_chunk` translate the response: a stream event by
//!   event, a whole body once buffered (bounded), and a provider error into
//!   our OpenAI-format error.

use crate::accounting::meter::{StreamMeter, MAX_EVENT_BYTES};
use crate::accounting::Usage;
use crate::config::ProviderKind;
use crate::error::GatewayError;
use crate::proxy::ctx::{Ctx, Meter};
use crate::proxy::endpoint::Endpoint;
use crate::runtime::RouteRt;
use crate::translate::pipe::Pipe;
use crate::translate::{
    anthropic, errors, RequestOpts, ResponseOpts, StreamTranslator, Translated, Unsupported,
};
use bytes::{Bytes, BytesMut};
use pingora::http::{RequestHeader, ResponseHeader};
use serde_json::Value;

/// Largest non-stream provider body translated (over it: upstream error).
const MAX_BODY: usize = 16 * 1024 * 1024;
/// Largest provider error body read; the rest is ignored.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// Translation state of one request.
#[derive(Default)]
pub struct Tr {
    /// The client's body as JSON, parsed when a translated route is first tried.
    client: Option<serde_json::Value>,
    /// The translated body, and the route it was built for.
    body: Option<(usize, Bytes)>,
    /// What the current attempt's response needs.
    mode: Mode,
}

#[derive(Default)]
enum Mode {
    /// Passthrough.
    #[default]
    Off,
    /// A provider error: its body is replaced by our error.
    Error { status: u16, buf: BytesMut },
    /// A whole provider response, translated at its end.
    Json { kind: ProviderKind, buf: BytesMut },
    /// A provider event stream, translated event by event.
    Stream(Box<Pipe>),
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
    let stream = ctx.parsed.as_ref().is_some_and(|p| p.stream);
    if ctx.tr.client.is_none() {
        let v = serde_json::from_slice(&ctx.body)
            .map_err(|_| GatewayError::invalid("The request body is not valid JSON."))?;
        ctx.tr.client = Some(v);
    }
    let client = ctx.tr.client.as_ref().ok_or(GatewayError::Internal)?;
    let opts = RequestOpts {
        model: &route.model,
        stream,
        default_max_tokens: d.default_max_tokens,
        drop_unsupported: d.drop_unsupported,
    };
    let t = request(d.kind, client, &opts).map_err(|u| GatewayError::UnsupportedParam {
        message: u.message,
        param: u.param,
    })?;
    if !t.dropped.is_empty() {
        log::info!(
            "request {}: dropped fields provider {} cannot honour (drop_unsupported_params): {}",
            ctx.request_id,
            route.provider_name,
            t.dropped.join(", ")
        );
    }
    ctx.tr.body = Some((index, t.body.clone()));
    Ok(Some(t.body))
}

/// Sets the route's own upstream path, where it has one.
pub fn patch_request(upstream: &mut RequestHeader, ctx: &Ctx) {
    let (Some(route), Some(ep)) = (ctx.current_route(), ctx.endpoint) else {
        return;
    };
    if let Some(uri) = route.dialect.path(ep) {
        upstream.set_uri(uri.clone());
    }
}

/// Picks how an accepted response is translated, after the verdict. Returns
/// `true` when it chose the meter (the caller then leaves it alone).
pub fn on_header(resp: &mut ResponseHeader, ctx: &mut Ctx) -> pingora::Result<bool> {
    ctx.tr.mode = Mode::Off;
    if crate::proxy::messages::passthrough::current(ctx) {
        return Ok(false);
    }
    let Some((kind, maps_errors, translates, model)) = ctx.current_route().map(|r| {
        let d = &r.dialect;
        (d.kind, d.maps_errors(), d.translates(), r.model.clone())
    }) else {
        return Ok(false);
    };
    if !maps_errors {
        return Ok(false);
    }
    let status = resp.status.as_u16();
    if !resp.status.is_success() {
        let mapped = errors::provider_error(status, b"").status();
        resp.set_status(mapped)?;
        resp.remove_header(&http::header::CONTENT_LENGTH);
        resp.insert_header(http::header::CONTENT_TYPE, "application/json")?;
        ctx.status = mapped;
        ctx.tr.mode = Mode::Error {
            status,
            buf: BytesMut::new(),
        };
        ctx.meter = Meter::None;
        return Ok(true);
    }
    if !translates {
        return Ok(false);
    }
    let ep = ctx.endpoint.unwrap_or(Endpoint::ChatCompletions);
    let is_sse = resp
        .headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    let parsed = ctx.parsed.as_ref();
    let fallback_id = format!("chatcmpl-{}", ctx.request_id);
    let opts = ResponseOpts {
        model: &model,
        request_id: &fallback_id,
        include_usage: parsed.is_some_and(|p| p.include_usage),
    };
    resp.remove_header(&http::header::CONTENT_LENGTH);
    ctx.usage_injected = false;
    if is_sse {
        let t = stream_translator(kind, &opts);
        ctx.tr.mode = Mode::Stream(Box::new(Pipe::new(t, MAX_EVENT_BYTES)));
        ctx.meter = Meter::Stream(Box::new(StreamMeter::new(ep, false)));
    } else {
        resp.insert_header(http::header::CONTENT_TYPE, "application/json")?;
        ctx.tr.mode = Mode::Json {
            kind,
            buf: BytesMut::new(),
        };
        ctx.meter = Meter::None;
    }
    Ok(true)
}

/// Translates one response chunk in place. An error aborts the response.
pub fn on_chunk(body: &mut Option<Bytes>, eos: bool, ctx: &mut Ctx) -> pingora::Result<()> {
    match &mut ctx.tr.mode {
        Mode::Off => Ok(()),
        Mode::Error { status, buf } => {
            if let Some(b) = body.take() {
                let room = MAX_ERROR_BODY.saturating_sub(buf.len());
                buf.extend_from_slice(&b[..b.len().min(room)]);
            }
            *body = Some(Bytes::new());
            if eos {
                let err = errors::provider_error(*status, buf);
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
        Mode::Json { kind, buf } => {
            if let Some(b) = body.take() {
                if buf.len() + b.len() > MAX_BODY {
                    return abort(ctx, "provider response over the translation limit");
                }
                buf.extend_from_slice(&b);
            }
            *body = Some(Bytes::new());
            if !eos {
                return Ok(());
            }
            let whole = std::mem::take(buf).freeze();
            let kind = *kind;
            let model = ctx.current_route().map(|r| r.model.clone());
            let fallback_id = format!("chatcmpl-{}", ctx.request_id);
            let opts = ResponseOpts {
                model: model.as_deref().unwrap_or(""),
                request_id: &fallback_id,
                include_usage: false,
            };
            match response(kind, &whole, &opts) {
                Ok((out, usage)) => {
                    *body = Some(out);
                    ctx.local_usage = Some(usage);
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

/// The kind's request translation (Chat Completions in). Add a kind here,
/// in `response` and in `stream_translator`, and mark it in
/// `RouteDialect::translates`.
fn request(
    kind: ProviderKind,
    client: &Value,
    opts: &RequestOpts,
) -> Result<Translated, Unsupported> {
    match kind {
        ProviderKind::Anthropic => anthropic::chat_request(client, opts),
        _ => Err(Unsupported {
            param: String::new(),
            message: "This provider kind does not translate requests.".into(),
        }),
    }
}

/// The kind's non-stream response translation.
fn response(
    kind: ProviderKind,
    body: &[u8],
    opts: &ResponseOpts,
) -> Result<(Bytes, Usage), GatewayError> {
    match kind {
        ProviderKind::Anthropic => anthropic::chat_response(body, opts),
        _ => Err(GatewayError::Internal),
    }
}

/// The kind's stream translator.
fn stream_translator(_kind: ProviderKind, opts: &ResponseOpts) -> Box<dyn StreamTranslator> {
    Box::new(anthropic::ChatStream::new(opts))
}

fn abort(ctx: &mut Ctx, why: &'static str) -> pingora::Result<()> {
    log::warn!("request {}: {why}; response aborted", ctx.request_id);
    ctx.tr.mode = Mode::Off;
    ctx.watchdog = None;
    ctx.mid_stream_error = Some(GatewayError::UpstreamError);
    Err(pingora::Error::explain(pingora::ErrorType::Custom("translation_failed"), why).into_up())
}
