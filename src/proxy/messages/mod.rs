//! The Anthropic Messages endpoint (`POST /v1/messages`) in the proxy path.
//!
//! Admission translates the client's Anthropic body once into an OpenAI
//! Chat Completions body; from then on the request is routed, limited,
//! retried and metered exactly like a chat request (the meters read the
//! upstream's OpenAI response, so usage is exact). On the way back the
//! response is translated after the meter has seen it: a stream event by
//! event, a JSON body whole at its end (sent chunked, since its length is
//! known only then), and an upstream error re-shaped as an Anthropic error.
//! Errors the gateway answers itself use Anthropic's shape too
//! (`respond::error` and the mid-stream error event ask [`error_body`]).
//! On a `kind: anthropic` route the request passes through instead
//! ([`passthrough`]).

pub mod passthrough;

use crate::accounting::meter::MAX_EVENT_BYTES;
use crate::base::endpoint::Endpoint;
use crate::base::error::GatewayError;
use crate::providers::mock;
use crate::proxy::ctx::Ctx;
use crate::rewrite::{self, Parsed};
use crate::runtime::ModelRt;
use crate::translate::messages::{self as tr, MessagesStream};
use crate::translate::pipe::Pipe;
use crate::translate::{RequestOpts, ResponseOpts};
use bytes::{Bytes, BytesMut};
use pingora::http::ResponseHeader;
use serde_json::Value;

pub use crate::translate::messages::{error_body, error_event};

/// State of one Messages request.
pub struct Front {
    /// The model name the client asked for, reported back in responses.
    model: String,
    /// The client's own Anthropic body, as received, and where its model is.
    pub(crate) original: Bytes,
    pub(crate) model_span: std::ops::Range<usize>,
    /// Why translated (OpenAI-shaped) routes cannot take this request.
    pub(crate) refused: Option<GatewayError>,
    mode: Mode,
}

enum Mode {
    /// No response header yet.
    Waiting,
    /// A 2xx event stream, translated event by event.
    Stream(Box<Pipe>),
    /// A 2xx JSON body, translated whole at its end.
    Message(BytesMut),
    /// A non-2xx body, re-shaped as an Anthropic error at its end.
    Error(u16, BytesMut),
    /// A passthrough response (`kind: anthropic`), watched for usage only.
    Pass(Box<passthrough::Watch>),
    /// The stream broke: nothing more is forwarded.
    Broken,
}

/// Admission of a Messages request: translates the body into the Chat
/// Completions body that is routed, limited and sent to OpenAI-shaped
/// routes, and keeps the original for `kind: anthropic` routes. The
/// translation takes `max_tokens` and `drop_unsupported_params` from the
/// alias's first translated route. A body those routes cannot take is
/// refused here, unless an Anthropic route could take it: then only the
/// translated routes fail with that error (and the original body is what
/// limits and estimates read). Any other endpoint's body passes unchanged.
pub fn admit(
    ctx: &mut Ctx,
    ep: Endpoint,
    model: &ModelRt,
    bytes: Bytes,
    parsed: Parsed,
) -> Result<(Bytes, Parsed), GatewayError> {
    if ep != Endpoint::Messages {
        return Ok((bytes, parsed));
    }
    // `rewrite::parse` has validated the document already; this parse is
    // bounded in the values it builds.
    let doc: Value = crate::translate::bounds::parse_body(&bytes)?;
    let translated_route = model.routes.iter().find(|r| !passthrough::applies(r));
    let opts = RequestOpts {
        model: &parsed.model,
        stream: parsed.stream,
        default_max_tokens: translated_route.and_then(|r| r.dialect.default_max_tokens),
        drop_unsupported: translated_route.is_some_and(|r| r.dialect.drop_unsupported),
    };
    let translation = tr::request(&doc, &opts).map_err(|u| {
        let message = if u.param.is_empty() {
            u.message
        } else {
            format!("{}: {}", u.param, u.message)
        };
        GatewayError::InvalidRequest {
            message,
            param: None,
        }
    });
    let mut front = Box::new(Front {
        model: parsed.model.clone(),
        original: bytes.clone(),
        model_span: parsed.model_span.clone(),
        refused: None,
        mode: Mode::Waiting,
    });
    let out = match translation {
        Ok(t) => {
            if !t.dropped.is_empty() {
                log::info!(
                    "request {}: dropped fields OpenAI cannot honour (drop_unsupported_params): {}",
                    ctx.request_id,
                    t.dropped.join(", ")
                );
            }
            let p = rewrite::parse(&t.body).map_err(|_| GatewayError::Internal)?;
            (t.body, p)
        }
        Err(e) if model.routes.iter().any(passthrough::applies) => {
            front.refused = Some(e);
            (bytes, parsed)
        }
        Err(e) => return Err(e),
    };
    ctx.front = Some(front);
    Ok(out)
}

fn response_opts<'a>(front: &'a Front, request_id: &'a str) -> ResponseOpts<'a> {
    ResponseOpts {
        model: &front.model,
        request_id,
        include_usage: true,
    }
}

/// The upstream's response header was accepted: picks how its body is
/// translated and fixes the framing (the translated body's length is not
/// the upstream's).
pub fn on_header(resp: &mut ResponseHeader, ctx: &mut Ctx) -> pingora::Result<()> {
    let pass = passthrough::current(ctx);
    let Some(front) = ctx.front.as_mut() else {
        return Ok(());
    };
    let sse = crate::sse::is_event_stream(resp);
    if pass {
        front.mode = Mode::Pass(Box::new(passthrough::Watch::new(sse)));
        return Ok(());
    }
    let request_id = ctx.request_id.as_str();
    front.mode = if !resp.status.is_success() {
        Mode::Error(resp.status.as_u16(), BytesMut::new())
    } else if sse {
        let stream = MessagesStream::new(&response_opts(front, request_id));
        Mode::Stream(Box::new(Pipe::new(Box::new(stream), MAX_EVENT_BYTES)))
    } else {
        Mode::Message(BytesMut::new())
    };
    resp.remove_header(&http::header::CONTENT_LENGTH);
    resp.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
    if !sse {
        resp.insert_header(http::header::CONTENT_TYPE, "application/json")?;
    }
    Ok(())
}

/// Translates one upstream body chunk (already seen by the meter) into what
/// the client gets.
pub fn on_chunk(body: &mut Option<Bytes>, eos: bool, ctx: &mut Ctx) {
    let Some(front) = ctx.front.as_mut() else {
        return;
    };
    let chunk = body.take().unwrap_or_default();
    let mut out = BytesMut::new();
    let request_id = ctx.request_id.as_str();
    match &mut front.mode {
        Mode::Waiting => out.extend_from_slice(&chunk),
        Mode::Broken => {}
        Mode::Pass(watch) => {
            if let Some(u) = watch.on_chunk(&chunk, eos) {
                ctx.local_usage = Some(u);
            }
            *body = Some(chunk);
            return;
        }
        Mode::Stream(pipe) => {
            let mut fed = pipe.feed(&chunk, &mut out);
            if fed.is_ok() && eos {
                fed = pipe.finish(&mut out);
            }
            if fed.is_err() {
                out.extend_from_slice(&error_event(&GatewayError::UpstreamError));
                front.mode = Mode::Broken;
            }
        }
        Mode::Message(buf) | Mode::Error(_, buf) => {
            if buf.len() + chunk.len() <= crate::accounting::meter::MAX_BODY_BYTES {
                buf.extend_from_slice(&chunk);
            }
            if eos {
                let whole = std::mem::take(buf);
                out = BytesMut::from(&whole_body(front, &whole, request_id)[..]);
            }
        }
    }
    *body = Some(out.freeze());
}

/// The client's body for a whole upstream body.
fn whole_body(front: &Front, whole: &[u8], request_id: &str) -> Bytes {
    match &front.mode {
        Mode::Error(status, _) => tr::error::from_openai_body(*status, whole),
        _ => match tr::response(whole, &response_opts(front, request_id)) {
            Ok((b, _)) => b,
            Err(e) => {
                log::warn!(
                    "request {request_id}: cannot translate the upstream's response ({})",
                    e.0
                );
                error_body(&GatewayError::UpstreamError)
            }
        },
    }
}

/// What ends a Messages stream that broke after it started: the complete
/// events not yet forwarded (translated), then an Anthropic `error` event.
/// `None` for other endpoints.
pub fn stream_error(ctx: &mut Ctx, err: &GatewayError) -> Option<Bytes> {
    let front = ctx.front.as_mut()?;
    let mut out = BytesMut::new();
    if let Some(unsent) = ctx.unsent.take() {
        match &mut front.mode {
            Mode::Stream(pipe) => {
                let _ = pipe.feed(&unsent, &mut out);
            }
            Mode::Pass(_) => out.extend_from_slice(&unsent),
            _ => {}
        }
    }
    front.mode = Mode::Broken;
    out.extend_from_slice(&error_event(err));
    Some(out.freeze())
}

/// A local (mock provider) reply to a Messages request, translated like an
/// upstream's.
pub fn local_reply(ctx: &Ctx, reply: mock::Reply) -> mock::Reply {
    let Some(front) = ctx.front.as_ref() else {
        return reply;
    };
    let opts = response_opts(front, &ctx.request_id);
    match reply {
        mock::Reply::Json(b) => mock::Reply::Json(match tr::response(&b, &opts) {
            Ok((out, _)) => out,
            Err(_) => error_body(&GatewayError::Internal),
        }),
        mock::Reply::Sse { events, interval } => {
            let mut pipe = Pipe::new(Box::new(MessagesStream::new(&opts)), MAX_EVENT_BYTES);
            let n = events.len();
            let mut translated = Vec::with_capacity(n + 1);
            for (i, ev) in events.iter().enumerate() {
                let mut out = BytesMut::new();
                let _ = pipe.feed(ev, &mut out);
                if i + 1 == n {
                    let _ = pipe.finish(&mut out);
                }
                if !out.is_empty() {
                    translated.push(out.freeze());
                }
            }
            mock::Reply::Sse {
                events: translated,
                interval,
            }
        }
    }
}
