//! The proxy side of provider translation. OpenAI-kind routes never get here
//! past a flag check: they keep the zero-copy splice and passthrough. For a
//! route whose provider speaks another dialect:
//!
//! - [`Bodies::prepare`] (in `upstream_peer`) refuses endpoints the kind
//!   does not serve and builds the translated body once per route (the
//!   client body is parsed into JSON only then), reused by retries of that
//!   route;
//! - [`Bodies::patch_request`] sets the route's own upstream path (Azure
//!   deployments, Anthropic's `/messages`, the Gemini method chosen for
//!   this request);
//! - [`Stage`] is the first stage of the response pipeline (`pipeline.rs`):
//!   a stream is translated event by event, a whole body once buffered
//!   (bounded), and a provider error into our OpenAI-format error.

use crate::accounting::meter::MAX_EVENT_BYTES;
use crate::base::endpoint::Endpoint;
use crate::base::error::GatewayError;
use crate::config::ProviderKind;
use crate::providers::dialect::{RouteDialect, Wire};
use crate::proxy::bedrock as bed;
use crate::proxy::ctx::Admitted;
use crate::proxy::gemini as gem;
use crate::proxy::pipeline::Counts;
use crate::runtime::RouteRt;
use crate::translate::bedrock::{self, EventPipe};
use crate::translate::pipe::Pipe;
use crate::translate::{anthropic, errors, gemini, RequestOpts, ResponseOpts, StreamTranslator};
use bytes::{Bytes, BytesMut};
use pingora::http::{RequestHeader, ResponseHeader};
use std::sync::Arc;

/// Largest provider error body read; the rest is ignored.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// The translated request bodies of one request: built once per route
/// and reused by that route's retries. Boxed, and only made when a
/// translated route is tried: every request's state holds it.
#[derive(Default)]
pub(crate) struct Bodies(Option<Box<Translations>>);

#[derive(Default)]
struct Translations {
    /// The client's body as JSON, parsed when a translated route is first tried.
    client: Option<serde_json::Value>,
    /// The translated body, and the route it was built for.
    body: Option<(usize, Bytes)>,
    /// The upstream path chosen with that body, where it depends on the
    /// request (Gemini), and the route it was chosen for.
    path: Option<(usize, http::Uri)>,
}

/// The provider's dialect stage of the response pipeline: what an accepted
/// response needs before the meter reads it.
#[derive(Default)]
pub(crate) enum Stage {
    /// Passthrough.
    #[default]
    Off,
    /// A provider error: its body is replaced by our error.
    Error {
        map: ErrorMap,
        status: u16,
        buf: BytesMut,
    },
    /// A whole provider response, translated at its end.
    Json(Box<WholeJson>),
    /// A provider event stream, translated event by event.
    Stream(Box<Pipe>),
    /// Bedrock's binary event stream, decoded and translated frame by
    /// frame.
    Events(Box<EventPipe>),
}

/// Why a response is cut short by its translation.
pub(crate) struct Broken {
    pub(crate) why: &'static str,
    /// What the client's stream ends with.
    pub(crate) error: GatewayError,
    /// The body holds complete client events from before the fault: they
    /// are metered and sent before the error event.
    pub(crate) keep: bool,
}

impl Broken {
    fn plain(why: &'static str) -> Self {
        Broken {
            why,
            error: GatewayError::UpstreamError,
            keep: false,
        }
    }
}

/// Which mapping a provider's error response gets.
pub(crate) enum ErrorMap {
    /// By status (Anthropic's, Azure's and OpenAI's shapes).
    Status,
    Gemini,
    /// By the `x-amzn-ErrorType` header (else the body's `__type`).
    Bedrock(Option<String>),
}

impl ErrorMap {
    fn of(d: &RouteDialect, resp: &ResponseHeader) -> ErrorMap {
        match d.wire {
            Wire::Gemini => ErrorMap::Gemini,
            Wire::Bedrock => ErrorMap::Bedrock(
                resp.headers
                    .get(bedrock::ERROR_TYPE_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string),
            ),
            Wire::Anthropic | Wire::Openai => ErrorMap::Status,
        }
    }

    /// A provider's error response mapped to ours. For a given status (and
    /// error type), the mapped status never depends on the body.
    fn error(&self, status: u16, body: &[u8]) -> GatewayError {
        match self {
            ErrorMap::Gemini => gemini::error(status, body),
            ErrorMap::Bedrock(kind) => bedrock::error(status, kind.as_deref(), body),
            ErrorMap::Status => errors::provider_error(status, body),
        }
    }
}

/// A whole response being gathered, and what its translation needs.
pub(crate) struct WholeJson {
    buf: BytesMut,
    what: Whole,
    model: Arc<str>,
    fallback_id: String,
    /// The client's body (Gemini embeddings estimate their usage from it).
    client_body: Bytes,
}

/// What a whole response is, by provider.
#[derive(Clone, Copy)]
enum Whole {
    Anthropic,
    Gemini(gem::Body),
    Bedrock(bed::Body),
}

impl Bodies {
    /// The client's body as JSON, once a translated route parsed it.
    pub(crate) fn client(&self) -> Option<&serde_json::Value> {
        self.0.as_ref()?.client.as_ref()
    }

    /// Checks that `route` serves the endpoint and, for a translated route,
    /// returns its body (built once per route). `None`: splice as usual.
    pub(crate) fn prepare(
        &mut self,
        req: &Admitted,
        request_id: &str,
        index: usize,
        route: &RouteRt,
    ) -> Result<Option<Bytes>, GatewayError> {
        let d = &route.dialect;
        let ep = req.endpoint;
        d.supports(ep, &req.model.name, &route.provider_name)?;
        if let Some(body) = crate::proxy::messages::passthrough::prepare(req, route)? {
            return Ok(Some(body));
        }
        if !d.translates() {
            return Ok(None);
        }
        let this = self.0.get_or_insert_with(Box::default);
        if let Some((i, b)) = &this.body {
            if *i == index {
                return Ok(Some(b.clone()));
            }
        }
        if this.client.is_none() {
            this.client = Some(crate::translate::bounds::parse_body(&req.body)?);
        }
        let client = this.client.as_ref().ok_or(GatewayError::Internal)?;
        let opts = RequestOpts {
            model: &route.model,
            stream: req.stream(),
            default_max_tokens: d.default_max_tokens,
            drop_unsupported: d.drop_unsupported,
        };
        let (t, path) = match (d.wire, d.kind) {
            (Wire::Gemini, ProviderKind::Vertex) => {
                let t = gemini::chat_request(client, &opts).map_err(GatewayError::from)?;
                (t, Some(vertex_uri(d, &opts)?))
            }
            (Wire::Gemini, _) => {
                let (t, uri) = gem::request(client, &opts, ep, d)?;
                (t, Some(uri))
            }
            (Wire::Anthropic, ProviderKind::Vertex) => {
                let t = crate::providers::gcp::vertex::anthropic_request(client, &opts)
                    .map_err(GatewayError::from)?;
                (t, Some(vertex_uri(d, &opts)?))
            }
            (Wire::Bedrock, _) => {
                let (t, uri) = bed::request(client, &opts, ep, d)?;
                (t, Some(uri))
            }
            (Wire::Anthropic | Wire::Openai, _) => (
                anthropic::chat_request(client, &opts).map_err(GatewayError::from)?,
                None,
            ),
        };
        if !t.dropped.is_empty() {
            log::info!(
                "request {request_id}: dropped fields provider {} cannot honour (drop_unsupported_params): {}",
                route.provider_name,
                t.dropped.join(", ")
            );
        }
        this.body = Some((index, t.body.clone()));
        this.path = path.map(|p| (index, p));
        Ok(Some(t.body))
    }

    /// Sets the route's own upstream path, where it has one.
    pub(crate) fn patch_request(
        &self,
        upstream: &mut RequestHeader,
        ep: Endpoint,
        index: usize,
        route: &RouteRt,
    ) {
        if let Some((i, uri)) = self.0.as_ref().and_then(|t| t.path.as_ref()) {
            if *i == index {
                upstream.set_uri(uri.clone());
                return;
            }
        }
        if let Some(uri) = route.dialect.path(ep) {
            upstream.set_uri(uri.clone());
        }
    }
}

/// A Vertex route's chat path for this request (the stream method when
/// it streams).
fn vertex_uri(d: &RouteDialect, opts: &RequestOpts<'_>) -> Result<http::Uri, GatewayError> {
    let path = d
        .vertex_chat_path(opts.model, opts.stream)
        .ok_or(GatewayError::Internal)?;
    d.uri(&path).ok_or(GatewayError::Internal)
}

/// What choosing a response's stage needs to know of the request.
pub(crate) struct Accepting<'a> {
    pub(crate) req: &'a Admitted,
    pub(crate) route: &'a RouteRt,
    pub(crate) request_id: &'a str,
    /// The client's body as JSON, where a translated route parsed it.
    pub(crate) client: Option<&'a serde_json::Value>,
}

impl Stage {
    /// How an accepted response is translated, after the verdict: fixes the
    /// status and content type the client sees (the meter follows from
    /// them, in `pipeline`).
    pub(crate) fn choose(resp: &mut ResponseHeader, a: &Accepting<'_>) -> pingora::Result<Stage> {
        let d = &a.route.dialect;
        if !d.maps_errors() || crate::proxy::messages::passthrough::applies_to(a.req, a.route) {
            return Ok(Stage::Off);
        }
        let status = resp.status.as_u16();
        if !resp.status.is_success() {
            let map = ErrorMap::of(d, resp);
            let mapped = map.error(status, b"").status();
            resp.set_status(mapped)?;
            resp.remove_header(&http::header::CONTENT_LENGTH);
            resp.insert_header(http::header::CONTENT_TYPE, "application/json")?;
            return Ok(Stage::Error {
                map,
                status,
                buf: BytesMut::new(),
            });
        }
        if !d.translates() {
            return Ok(Stage::Off);
        }
        let fallback_id = format!("chatcmpl-{}", a.request_id);
        let opts = ResponseOpts {
            model: &a.route.model,
            request_id: &fallback_id,
            include_usage: a.req.parsed.include_usage,
        };
        resp.remove_header(&http::header::CONTENT_LENGTH);
        if d.wire == Wire::Bedrock && bed::is_event_stream(resp) {
            // The client reads SSE; the meter follows it as it would any
            // OpenAI stream.
            resp.insert_header(http::header::CONTENT_TYPE, "text/event-stream")?;
            let t = bedrock::ChatStream::deferring(&opts);
            return Ok(Stage::Events(Box::new(EventPipe::new(
                t,
                crate::eventstream::DEFAULT_MAX_FRAME,
            ))));
        }
        if d.wire != Wire::Bedrock && crate::sse::is_event_stream(resp) {
            let t: Box<dyn StreamTranslator> = match d.wire {
                Wire::Gemini => Box::new(gemini::ChatStream::new(&opts)),
                _ => Box::new(anthropic::ChatStream::new(&opts)),
            };
            return Ok(Stage::Stream(Box::new(Pipe::new(t, MAX_EVENT_BYTES))));
        }
        resp.insert_header(http::header::CONTENT_TYPE, "application/json")?;
        let what = match d.wire {
            Wire::Gemini => Whole::Gemini(gem::Body::of(a.req.endpoint, a.client)),
            Wire::Bedrock => Whole::Bedrock(bed::Body::of(a.req.endpoint, &a.route.model, resp)),
            Wire::Anthropic | Wire::Openai => Whole::Anthropic,
        };
        // The translated body is metered like an OpenAI one: Gemini may
        // leave out usage (then estimated from it), and a body that never
        // translates (too big, unreadable, cut short) leaves the meter
        // without a readable body, which is charged as unread.
        Ok(Stage::Json(Box::new(WholeJson {
            buf: BytesMut::new(),
            what,
            model: a.route.model.clone(),
            fallback_id,
            client_body: a.req.body.clone(),
        })))
    }

    /// Translates one response chunk in place, noting the counts the
    /// translation read in `counts`. `Ok(Some((status, err)))`: the
    /// provider's error (its `status`) was answered as this error of ours. `Err`: the response is aborted,
    /// for the reason given.
    pub(crate) fn on_chunk(
        &mut self,
        body: &mut Option<Bytes>,
        eos: bool,
        counts: &mut Counts,
    ) -> Result<Option<(u16, GatewayError)>, Broken> {
        match self {
            Stage::Off => Ok(None),
            Stage::Error { map, status, buf } => {
                if let Some(b) = body.take() {
                    let room = MAX_ERROR_BODY.saturating_sub(buf.len());
                    buf.extend_from_slice(&b[..b.len().min(room)]);
                }
                *body = Some(Bytes::new());
                if !eos {
                    return Ok(None);
                }
                let err = map.error(*status, buf);
                *body = Some(err.body());
                Ok(Some((*status, err)))
            }
            Stage::Json(j) => {
                if let Some(b) = body.take() {
                    if j.buf.len() + b.len() > crate::accounting::meter::MAX_BODY_BYTES {
                        *self = Stage::Off;
                        return Err(Broken::plain(
                            "provider response over the translation limit",
                        ));
                    }
                    j.buf.extend_from_slice(&b);
                }
                *body = Some(Bytes::new());
                if !eos {
                    return Ok(None);
                }
                let whole = std::mem::take(&mut j.buf).freeze();
                let opts = ResponseOpts {
                    model: &j.model,
                    request_id: &j.fallback_id,
                    include_usage: false,
                };
                let translated = match j.what {
                    Whole::Anthropic => {
                        anthropic::chat_response(&whole, &opts).map(|(b, u)| (b, Some(u), false))
                    }
                    Whole::Gemini(what) => {
                        gem::response(&whole, &opts, what, &j.model, &j.client_body)
                    }
                    Whole::Bedrock(what) => {
                        bed::response(&whole, &opts, what, &j.model, &j.client_body)
                    }
                };
                match translated {
                    Ok((out, usage, estimated)) => {
                        *body = Some(out);
                        *counts = Counts { usage, estimated };
                        Ok(None)
                    }
                    Err(_) => {
                        *self = Stage::Off;
                        Err(Broken::plain("unreadable provider response"))
                    }
                }
            }
            Stage::Stream(pipe) => {
                let mut out = BytesMut::new();
                let chunk = body.take().unwrap_or_default();
                let mut fed = pipe.feed(&chunk, &mut out);
                if fed.is_ok() && eos {
                    fed = pipe.finish(&mut out);
                }
                counts.usage = pipe.usage();
                if fed.is_err() {
                    *body = None;
                    *self = Stage::Off;
                    return Err(Broken::plain("provider SSE event over the size limit"));
                }
                *body = Some(out.freeze());
                Ok(None)
            }
            Stage::Events(pipe) => {
                let mut out = BytesMut::new();
                let chunk = body.take().unwrap_or_default();
                let fed = pipe.feed(&chunk, &mut out);
                if fed.is_ok() && eos && pipe.failure().is_none() {
                    let _ = pipe.finish(&mut out);
                }
                counts.usage = pipe.usage();
                *body = Some(out.freeze());
                match pipe.failure() {
                    // A bad frame (CRC, size, cut short) or an exception:
                    // what was decoded before it goes out, then the error.
                    Some(err) => Err(Broken {
                        why: "the provider's event stream failed",
                        error: err.clone(),
                        keep: true,
                    }),
                    None => Ok(None),
                }
            }
        }
    }
}
