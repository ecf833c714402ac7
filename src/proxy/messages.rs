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

use crate::accounting::meter::MAX_EVENT_BYTES;
use crate::error::GatewayError;
use crate::providers::mock;
use crate::proxy::ctx::Ctx;
use crate::proxy::endpoint::Endpoint;
use crate::rewrite::{self, Parsed};
use crate::sse::Scanner;
use crate::translate::messages::{self as tr, MessagesStream};
use crate::translate::{RequestOpts, ResponseOpts, StreamTranslator};
use bytes::{Bytes, BytesMut};
use pingora::http::ResponseHeader;
use serde_json::Value;

pub use crate::translate::messages::{error_body, error_event};

/// Largest non-stream upstream body translated (a larger one is an error).
const MAX_BODY: usize = 16 * 1024 * 1024;

/// State of one Messages request.
pub struct Front {
    /// The model name the client asked for, reported back in responses.
    model: String,
    /// The client's own Anthropic body, as received.
    pub original: Bytes,
    mode: Mode,
}

enum Mode {
    /// No response header yet.
    Waiting,
    /// A 2xx event stream, translated event by event.
    Stream(Box<(Scanner, MessagesStream)>),
    /// A 2xx JSON body, translated whole at its end.
    Message(BytesMut),
    /// A non-2xx body, re-shaped as an Anthropic error at its end.
    Error(u16, BytesMut),
    /// The stream broke: nothing more is forwarded.
    Broken,
}

/// Admission of a Messages request: translates the body into the Chat
/// Completions body that is routed and sent upstream, and keeps the
/// original. Any other endpoint's body passes unchanged.
pub fn admit(
    ctx: &mut Ctx,
    ep: Endpoint,
    bytes: Bytes,
    parsed: Parsed,
) -> Result<(Bytes, Parsed), GatewayError> {
    if ep != Endpoint::Messages {
        return Ok((bytes, parsed));
    }
    // `rewrite::parse` has validated the document already.
    let doc: Value = serde_json::from_slice(&bytes)
        .map_err(|_| GatewayError::invalid("The request body is not valid JSON."))?;
    let opts = RequestOpts {
        model: &parsed.model,
        stream: parsed.stream,
        default_max_tokens: None,
        drop_unsupported: false,
    };
    let t = tr::request(&doc, &opts).map_err(|u| {
        let message = if u.param.is_empty() {
            u.message
        } else {
            format!("{}: {}", u.param, u.message)
        };
        GatewayError::InvalidRequest {
            message,
            param: None,
        }
    })?;
    if !t.dropped.is_empty() {
        log::info!(
            "request {}: dropped unsupported fields {:?}",
            ctx.request_id,
            t.dropped
        );
    }
    let translated = rewrite::parse(&t.body).map_err(|_| GatewayError::Internal)?;
    ctx.front = Some(Box::new(Front {
        model: parsed.model,
        original: bytes,
        mode: Mode::Waiting,
    }));
    Ok((t.body, translated))
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
    let Some(front) = ctx.front.as_mut() else {
        return Ok(());
    };
    let sse = resp
        .headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    let request_id = ctx.request_id.as_str();
    front.mode = if !resp.status.is_success() {
        Mode::Error(resp.status.as_u16(), BytesMut::new())
    } else if sse {
        let stream = MessagesStream::new(&response_opts(front, request_id));
        Mode::Stream(Box::new((Scanner::new(MAX_EVENT_BYTES), stream)))
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
        Mode::Stream(s) => {
            let (scanner, stream) = &mut **s;
            let mut fed = scanner.feed(&chunk, |e| stream.event(e.data, &mut out));
            if fed.is_ok() && eos {
                fed = scanner.finish(|e| stream.event(e.data, &mut out));
                stream.finish(&mut out);
            }
            if fed.is_err() {
                out.extend_from_slice(&error_event(&GatewayError::UpstreamError));
                front.mode = Mode::Broken;
            }
        }
        Mode::Message(buf) | Mode::Error(_, buf) => {
            if buf.len() + chunk.len() <= MAX_BODY {
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
    if let (Some(unsent), Mode::Stream(s)) = (ctx.unsent.take(), &mut front.mode) {
        let (scanner, stream) = &mut **s;
        let _ = scanner.feed(&unsent, |e| stream.event(e.data, &mut out));
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
            let mut scanner = Scanner::new(MAX_EVENT_BYTES);
            let mut stream = MessagesStream::new(&opts);
            let n = events.len();
            let mut translated = Vec::with_capacity(n + 1);
            for (i, ev) in events.iter().enumerate() {
                let mut out = BytesMut::new();
                let _ = scanner.feed(ev, |e| stream.event(e.data, &mut out));
                if i + 1 == n {
                    let _ = scanner.finish(|e| stream.event(e.data, &mut out));
                    stream.finish(&mut out);
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
