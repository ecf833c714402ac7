//! The response pipeline: how an accepted response's body reaches the
//! client and what it is charged. One value per response, chosen once when
//! the response header is accepted ([`Pipeline::choose`]), or made for a
//! locally answered request ([`Pipeline::local`]). Each chunk goes through
//! three stages, in this order:
//!
//! 1. the provider's dialect (`translated::Stage`): off for OpenAI-kind
//!    routes; a provider error becomes ours; another dialect's body or
//!    stream becomes OpenAI's;
//! 2. the meter ([`Meter`]), which reads OpenAI's shape (or Anthropic's
//!    own events on a Messages passthrough); a files call's JSON answer
//!    is held whole by `files::Stage` instead, which records and filters
//!    its ids;
//! 3. the client's front (`messages::Stage`): off for OpenAI clients; a
//!    Messages client gets Anthropic's shape.
//!
//! The pipeline knows nothing of `Ctx`: the hooks hand it what it needs.

use crate::accounting::facts::ResponseFacts;
use crate::accounting::meter::{BodyMeter, BodyUsage, StreamMeter};
use crate::accounting::settle::Observed;
use crate::accounting::Usage;
use crate::base::endpoint::Endpoint;
use crate::base::error::GatewayError;
use crate::proxy::messages;
use crate::proxy::translated::{self, Accepting};
use bytes::Bytes;
use pingora::http::ResponseHeader;

/// How the response body is watched for usage.
#[derive(Default)]
pub(crate) enum Meter {
    #[default]
    None,
    Stream(Box<StreamMeter>),
    Body(BodyMeter),
    /// A body that is not JSON by design (speech audio): passed through
    /// untouched, nothing kept.
    Opaque,
    /// A files call's JSON answer, read whole to record and filter its
    /// ids (`files::Stage`); nothing is counted.
    Objects(Box<crate::proxy::files::Stage>),
}

/// Usage known without the meter: read by a stage (a translator, a
/// passthrough's watch) or known without reading (the mock provider).
#[derive(Clone, Copy, Default)]
pub(crate) struct Counts {
    pub(crate) usage: Option<Usage>,
    /// The counts are an estimate (a translated response without them).
    pub(crate) estimated: bool,
}

/// Why a response was aborted mid-way.
pub(crate) struct Abort {
    pub(crate) why: &'static str,
    /// What the client's stream ends with.
    pub(crate) error: GatewayError,
}

/// One response's way to the client.
#[derive(Default)]
pub(crate) struct Pipeline {
    provider: translated::Stage,
    meter: Meter,
    front: messages::Stage,
    counts: Counts,
    /// Complete events not yet forwarded when the stream was aborted: they
    /// go out just before the error event.
    unsent: Option<Bytes>,
    /// A rerank or transcription answer, read whole: its usage is read by
    /// `Usage::find_rerank` (or a transcription's duration), from
    /// the whole body.
    rerank: bool,
}

impl Pipeline {
    /// The pipeline of an accepted upstream response, chosen once: the
    /// provider's stage first (it may map the status and content type the
    /// client sees), the meter from what the client sees, then the front's
    /// stage. `injected`: the attempt's body asked for stream usage on the
    /// client's behalf (the meter then drops the usage chunk it added).
    /// `facts`: the request is traced, so the meter also reads the
    /// response's id, model and finish reasons.
    pub(crate) fn choose(
        resp: &mut ResponseHeader,
        a: &Accepting<'_>,
        injected: bool,
        facts: bool,
    ) -> pingora::Result<Pipeline> {
        let provider = translated::Stage::choose(resp, a)?;
        let passthrough = messages::passthrough::applies_to(a.req, a.route);
        let mut meter = match crate::proxy::files::Stage::choose(resp, a.req) {
            Some(stage) => Meter::Objects(stage),
            None => meter_for(resp, a.req.endpoint, passthrough, injected),
        };
        if let (Meter::Stream(m), true) = (&mut meter, facts) {
            m.read_facts();
        }
        if matches!(meter, Meter::Stream(_)) && injected {
            // Bytes will be cut: the upstream's length would no longer hold.
            resp.remove_header(&http::header::CONTENT_LENGTH);
        }
        let front = messages::Stage::choose(resp, a.req, a.route, a.request_id)?;
        // Files and batches are not metered: nothing to count or charge.
        let counts = Counts {
            usage: a.req.files.is_some().then(Usage::default),
            estimated: false,
        };
        Ok(Pipeline {
            provider,
            meter,
            front,
            counts,
            unsent: None,
            rerank: a.req.endpoint == Endpoint::Rerank || a.req.endpoint.is_transcription(),
        })
    }

    /// A locally answered request's: no body to watch, its usage known.
    pub(crate) fn local(usage: Usage) -> Pipeline {
        Pipeline {
            counts: Counts {
                usage: Some(usage),
                estimated: false,
            },
            ..Pipeline::default()
        }
    }

    /// Runs one chunk through the stages. `Ok(Some((status, err)))`: the
    /// provider's error (its `status`) was answered as `err`. `Err`: the response is aborted (the
    /// stream then ends with an error event).
    pub(crate) fn on_chunk(
        &mut self,
        body: &mut Option<Bytes>,
        eos: bool,
    ) -> Result<Option<(u16, GatewayError)>, Abort> {
        let mapped = match self.provider.on_chunk(body, eos, &mut self.counts) {
            Ok(mapped) => mapped,
            Err(b) => {
                if b.keep {
                    // The events before the fault reached the meter and go
                    // out just before the error event.
                    if let Meter::Stream(m) = &mut self.meter {
                        let _ = m.on_chunk(body, false);
                    }
                    self.unsent = body.take().filter(|b| !b.is_empty());
                }
                return Err(Abort {
                    why: b.why,
                    error: b.error,
                });
            }
        };
        match &mut self.meter {
            Meter::None | Meter::Opaque => {}
            Meter::Objects(o) => {
                if o.on_chunk(body, eos).is_err() {
                    return Err(Abort {
                        why: "the upstream's files answer is over the files answer limit",
                        error: GatewayError::UpstreamError,
                    });
                }
            }
            Meter::Body(m) => m.on_chunk(body),
            Meter::Stream(m) => {
                if m.on_chunk(body, eos).is_err() {
                    self.unsent = body.take().filter(|b| !b.is_empty());
                    return Err(Abort {
                        why: "the upstream sent an SSE event over the size limit",
                        error: GatewayError::UpstreamError,
                    });
                }
            }
        }
        self.front.on_chunk(body, eos, &mut self.counts);
        Ok(mapped)
    }

    /// A files call's record changes, for the database (once).
    pub(crate) fn take_object_ops(&mut self) -> Vec<crate::objects::Op> {
        match &mut self.meter {
            Meter::Objects(o) => o.take_ops(),
            _ => Vec::new(),
        }
    }

    /// Whether the client is reading a stream the meter follows (it then
    /// ends with an error event when it breaks).
    pub(crate) fn streams(&self) -> bool {
        matches!(self.meter, Meter::Stream(_))
    }

    /// Whether the body reached its end as its shape defines it: a
    /// stream's end marker passed with no error event (`[DONE]`; a
    /// Responses stream's `response.completed`, the event that carries its
    /// usage: `responses`); a whole body: its settled usage decides.
    pub(crate) fn complete(&self, responses: bool) -> bool {
        match &self.meter {
            Meter::Stream(m) => {
                let seen = m.seen();
                let ended = seen.done || (responses && seen.usage.is_some());
                ended && !seen.error_event
            }
            Meter::Body(_) | Meter::Opaque | Meter::Objects(_) => true,
            Meter::None => false,
        }
    }

    /// What ends a stream that broke after it started: the complete events
    /// not yet forwarded and the error event, in the client's shape.
    pub(crate) fn stream_error(&mut self, err: &GatewayError) -> Vec<Bytes> {
        let unsent = self.unsent.take();
        if let Some(anthropic) = self.front.stream_error(unsent.clone(), err) {
            return vec![anthropic];
        }
        let event = Bytes::from(format!(
            "data: {}\n\n",
            String::from_utf8_lossy(&err.body())
        ));
        unsent.into_iter().chain([event]).collect()
    }

    /// The response's id, model and finish reasons (a traced request's:
    /// see [`Pipeline::choose`]), as the meter saw them.
    pub(crate) fn facts(&self) -> Option<ResponseFacts> {
        match &self.meter {
            Meter::Stream(m) => m.facts().cloned(),
            Meter::Body(m) => m.facts(),
            Meter::None | Meter::Opaque | Meter::Objects(_) => None,
        }
    }

    /// What the response showed of its usage, for `accounting::settle`.
    /// `None`: no response was watched and none is owed.
    pub(crate) fn observed(&self) -> Option<Observed<'_>> {
        let local = self.counts.usage.map(|u| {
            if self.counts.estimated {
                Observed::Estimated(u)
            } else {
                Observed::Known(u)
            }
        });
        Some(match (&self.meter, local) {
            // A translator's (or passthrough watch's) counts are final only
            // if the stream ended.
            (Meter::Stream(m), _) => Observed::Stream {
                seen: m.seen(),
                counts: self.counts.usage,
            },
            (_, Some(local)) => local,
            (Meter::Body(m), None) if self.rerank => m
                .json()
                .map_or(Observed::Unread, |d| Observed::Body(Some(d))),
            (Meter::Body(m), None) => match m.usage() {
                BodyUsage::Reported(u) => Observed::Known(u),
                BodyUsage::Missing => Observed::Body(m.json()),
                BodyUsage::Unreadable => Observed::Unread,
            },
            (Meter::Opaque, None) => Observed::Opaque,
            (Meter::Objects(_), None) => Observed::Known(Usage::default()),
            (Meter::None, None) => return None,
        })
    }
}

/// How the body of an accepted response is metered: the one place the
/// meter is chosen, once the provider's stage has fixed the status and
/// content type the client sees.
fn meter_for(resp: &ResponseHeader, ep: Endpoint, passthrough: bool, injected: bool) -> Meter {
    if !resp.status.is_success() {
        // Errors carry no usage (a mapped provider error included).
        return Meter::None;
    }
    if ep.opaque_response() || ep.is_files() {
        // Audio, a file's content (and a files call's answer that is not
        // read whole): never parsed, never buffered, whatever its type.
        return Meter::Opaque;
    }
    if !crate::sse::is_event_stream(resp) {
        return Meter::Body(BodyMeter::default());
    }
    if passthrough {
        // Anthropic's own events, passed through to a Messages client.
        return Meter::Stream(Box::new(StreamMeter::anthropic()));
    }
    Meter::Stream(Box::new(StreamMeter::new(ep, injected)))
}
