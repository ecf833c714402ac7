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
//! (`write::error` and the mid-stream error event ask [`error_body`]).
//! On a `kind: anthropic` route the request passes through instead
//! ([`passthrough`]).

pub(crate) mod passthrough;

use crate::accounting::meter::MAX_EVENT_BYTES;
use crate::base::endpoint::Endpoint;
use crate::base::error::GatewayError;
use crate::providers::mock;
use crate::proxy::ctx::Admitted;
use crate::proxy::pipeline::Counts;
use crate::rewrite::{self, Parsed};
use crate::runtime::{ModelRt, RouteRt};
use crate::translate::messages::{self as tr, MessagesStream};
use crate::translate::pipe::Pipe;
use crate::translate::{RequestOpts, ResponseOpts};
use bytes::{Bytes, BytesMut};
use pingora::http::ResponseHeader;
use serde_json::Value;

pub(crate) use crate::translate::messages::{error_body, error_event};

/// What a Messages request keeps from admission: the model name the
/// client asked for (reported back in responses) and, for `kind:
/// anthropic` routes, its own body.
pub(crate) struct Request {
    model: String,
    /// The client's own Anthropic body, as received, and where its model is.
    pub(crate) original: Bytes,
    pub(crate) model_span: std::ops::Range<usize>,
    /// Why translated (OpenAI-shaped) routes cannot take this request.
    pub(crate) refused: Option<GatewayError>,
}

/// The client's front stage of the response pipeline: what a Messages
/// client gets of the upstream's (metered) response.
#[derive(Default)]
pub(crate) enum Stage {
    /// Not a Messages request: the bytes pass.
    #[default]
    Off,
    /// A 2xx event stream, translated event by event.
    Stream(Box<Pipe>),
    /// A whole body, translated at its end.
    Whole(Box<Whole>),
    /// A passthrough response (`kind: anthropic`), watched for usage only.
    Pass(Box<passthrough::Watch>),
    /// The stream broke: nothing more is forwarded.
    Broken,
}

/// A whole upstream body being gathered.
pub(crate) struct Whole {
    /// A non-2xx status: the body is re-shaped as an Anthropic error.
    error: Option<u16>,
    buf: BytesMut,
    model: String,
    request_id: String,
}

/// Admission of a Messages request: translates the body into the Chat
/// Completions body that is routed, limited and sent to OpenAI-shaped
/// routes, and keeps the original for `kind: anthropic` routes. The
/// translation takes `max_tokens` and `drop_unsupported_params` from the
/// alias's first translated route. A body those routes cannot take is
/// refused here, unless an Anthropic route could take it: then only the
/// translated routes fail with that error (and the original body is what
/// limits and estimates read). Any other endpoint's body passes unchanged.
pub(crate) fn admit(
    request_id: &str,
    ep: Endpoint,
    model: &ModelRt,
    bytes: Bytes,
    parsed: Parsed,
) -> Result<(Bytes, Parsed, Option<Box<Request>>), GatewayError> {
    if ep != Endpoint::Messages {
        return Ok((bytes, parsed, None));
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
    let mut front = Box::new(Request {
        model: parsed.model.clone(),
        original: bytes.clone(),
        model_span: parsed.model_span.clone(),
        refused: None,
    });
    let (body, parsed) = match translation {
        Ok(t) => {
            if !t.dropped.is_empty() {
                log::info!(
                    "request {request_id}: dropped fields OpenAI cannot honour (drop_unsupported_params): {}",
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
    Ok((body, parsed, Some(front)))
}

fn response_opts<'a>(model: &'a str, request_id: &'a str) -> ResponseOpts<'a> {
    ResponseOpts {
        model,
        request_id,
        include_usage: true,
    }
}

impl Stage {
    /// How an accepted response reaches a Messages client, fixing the
    /// framing (the translated body's length is not the upstream's).
    /// `Off` for other endpoints.
    pub(crate) fn choose(
        resp: &mut ResponseHeader,
        req: &Admitted,
        route: &RouteRt,
        request_id: &str,
    ) -> pingora::Result<Stage> {
        let Some(front) = req.messages.as_deref() else {
            return Ok(Stage::Off);
        };
        let sse = crate::sse::is_event_stream(resp);
        if passthrough::applies(route) {
            return Ok(Stage::Pass(Box::new(passthrough::Watch::new(sse))));
        }
        let stage = if resp.status.is_success() && sse {
            let stream = MessagesStream::new(&response_opts(&front.model, request_id));
            Stage::Stream(Box::new(Pipe::new(Box::new(stream), MAX_EVENT_BYTES)))
        } else {
            Stage::Whole(Box::new(Whole {
                error: (!resp.status.is_success()).then(|| resp.status.as_u16()),
                buf: BytesMut::new(),
                model: front.model.clone(),
                request_id: request_id.to_string(),
            }))
        };
        resp.remove_header(&http::header::CONTENT_LENGTH);
        resp.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
        if !sse {
            resp.insert_header(http::header::CONTENT_TYPE, "application/json")?;
        }
        Ok(stage)
    }

    /// Translates one upstream body chunk (already seen by the meter) into
    /// what the client gets; a passthrough's usage goes to `counts`.
    pub(crate) fn on_chunk(&mut self, body: &mut Option<Bytes>, eos: bool, counts: &mut Counts) {
        let chunk = match self {
            Stage::Off => return,
            Stage::Pass(watch) => {
                if let Some(b) = body.as_ref() {
                    if let Some(u) = watch.on_chunk(b, eos) {
                        counts.usage = Some(u);
                    }
                } else if let Some(u) = watch.on_chunk(&[], eos) {
                    counts.usage = Some(u);
                }
                return;
            }
            _ => body.take().unwrap_or_default(),
        };
        let mut out = BytesMut::new();
        match self {
            Stage::Off | Stage::Pass(_) | Stage::Broken => {}
            Stage::Stream(pipe) => {
                let mut fed = pipe.feed(&chunk, &mut out);
                if fed.is_ok() && eos {
                    fed = pipe.finish(&mut out);
                }
                if fed.is_err() {
                    out.extend_from_slice(&error_event(&GatewayError::UpstreamError));
                    *self = Stage::Broken;
                }
            }
            Stage::Whole(w) => {
                if w.buf.len() + chunk.len() <= crate::accounting::meter::MAX_BODY_BYTES {
                    w.buf.extend_from_slice(&chunk);
                }
                if eos {
                    out = BytesMut::from(&w.body()[..]);
                }
            }
        }
        *body = Some(out.freeze());
    }

    /// What ends a Messages stream that broke after it started: the
    /// complete events not yet forwarded (translated), then an Anthropic
    /// `error` event. `None` for other endpoints.
    pub(crate) fn stream_error(
        &mut self,
        unsent: Option<Bytes>,
        err: &GatewayError,
    ) -> Option<Bytes> {
        if matches!(self, Stage::Off) {
            return None;
        }
        let mut out = BytesMut::new();
        if let Some(unsent) = unsent {
            match self {
                Stage::Stream(pipe) => {
                    let _ = pipe.feed(&unsent, &mut out);
                }
                Stage::Pass(_) => out.extend_from_slice(&unsent),
                _ => {}
            }
        }
        *self = Stage::Broken;
        out.extend_from_slice(&error_event(err));
        Some(out.freeze())
    }
}

impl Whole {
    /// The client's body for the whole upstream body.
    fn body(&mut self) -> Bytes {
        let whole = std::mem::take(&mut self.buf);
        if let Some(status) = self.error {
            return tr::error::from_openai_body(status, &whole);
        }
        match tr::response(&whole, &response_opts(&self.model, &self.request_id)) {
            Ok((b, _)) => b,
            Err(e) => {
                log::warn!(
                    "request {}: cannot translate the upstream's response ({})",
                    self.request_id,
                    e.0
                );
                error_body(&GatewayError::UpstreamError)
            }
        }
    }
}

/// A local (mock provider) reply to a Messages request, translated like an
/// upstream's.
pub(crate) fn local_reply(req: &Admitted, request_id: &str, reply: mock::Reply) -> mock::Reply {
    let Some(front) = req.messages.as_deref() else {
        return reply;
    };
    let opts = response_opts(&front.model, request_id);
    match reply {
        audio @ mock::Reply::Audio(_) => audio,
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
