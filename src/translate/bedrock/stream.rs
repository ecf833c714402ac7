//! ConverseStream events → OpenAI `chat.completion.chunk` events, one event
//! at a time, and [`EventPipe`]: the event-stream decoder and this
//! translator fed chunk by chunk, in the place `translate::pipe::Pipe`
//! takes for SSE providers.
//!
//! The translator keeps only the chunk prefix, the current tool block, the
//! tool-call count, the stop reason and the token counters. Bedrock sends
//! `messageStop` and then `metadata` (the usage) last.

use super::error::exception;
use super::response::{finish_reason, Tokens};
use crate::accounting::Usage;
use crate::base::error::GatewayError;
use crate::eventstream::{DecodeError, Decoder, Frame};
use crate::translate::chat::Chunks;
use crate::translate::{ResponseOpts, StreamTranslator};
use bytes::{BufMut, BytesMut};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct Payload<'a> {
    content_block_index: Option<u64>,
    #[serde(borrow)]
    start: Option<Start<'a>>,
    #[serde(borrow)]
    delta: Option<Delta<'a>>,
    #[serde(borrow)]
    stop_reason: Option<Cow<'a, str>>,
    usage: Option<Tokens>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct Start<'a> {
    #[serde(borrow)]
    tool_use: Option<ToolStart<'a>>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct ToolStart<'a> {
    #[serde(borrow)]
    tool_use_id: Cow<'a, str>,
    #[serde(borrow)]
    name: Cow<'a, str>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct Delta<'a> {
    #[serde(borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow)]
    tool_use: Option<ToolDelta<'a>>,
    #[serde(borrow)]
    reasoning_content: Option<ReasoningDelta<'a>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ToolDelta<'a> {
    #[serde(borrow)]
    input: Cow<'a, str>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ReasoningDelta<'a> {
    #[serde(borrow)]
    text: Option<Cow<'a, str>>,
}

/// Translates one ConverseStream for an OpenAI Chat Completions client.
pub struct ChatStream {
    include_usage: bool,
    chunks: Chunks,
    /// The open tool block: (contentBlockIndex, OpenAI tool-call index).
    tool: Option<(u64, u32)>,
    tools: u32,
    finish: Option<&'static str>,
    tokens: Tokens,
    seen_usage: bool,
    stopped: bool,
    errored: bool,
    /// Keep the error that ends the stream ([`ChatStream::failure`])
    /// instead of writing its event: the proxy writes it in the client's
    /// shape.
    defer: bool,
    failure: Option<GatewayError>,
}

impl ChatStream {
    /// Like [`ChatStream::new`], but the error that ends a stream is kept
    /// ([`ChatStream::failure`]) instead of written as an event.
    pub fn deferring(opts: &ResponseOpts<'_>) -> Self {
        Self {
            defer: true,
            ..Self::new(opts)
        }
    }

    /// The error that ended the stream, in deferring mode.
    pub fn failure(&self) -> Option<&GatewayError> {
        self.failure.as_ref()
    }

    /// `opts.request_id` becomes the chunks' `id` (Bedrock sends none).
    pub fn new(opts: &ResponseOpts<'_>) -> Self {
        Self {
            include_usage: opts.include_usage,
            chunks: Chunks::new(opts.request_id, opts.model),
            tool: None,
            tools: 0,
            finish: None,
            tokens: Tokens::default(),
            seen_usage: false,
            stopped: false,
            errored: false,
            defer: false,
            failure: None,
        }
    }

    /// Whether the stream already ended in an error event.
    pub fn errored(&self) -> bool {
        self.errored
    }

    /// One decoded frame: an event, an exception or an error.
    pub fn frame(&mut self, f: &Frame, out: &mut BytesMut) {
        match f.message_type.as_str() {
            "event" => self.on_event(&f.kind, &f.payload, out),
            "exception" => {
                let err = exception(&f.kind, &f.payload);
                log::warn!("Bedrock stream exception {}", f.kind);
                self.error_event(out, &err);
            }
            _ => {
                log::warn!("Bedrock stream error frame {}", f.kind);
                self.error_event(out, &GatewayError::UpstreamError);
            }
        }
    }

    /// The event stream could not be decoded: ends the client's stream with
    /// an error event (usage seen so far stays counted).
    pub fn fault(&mut self, e: &DecodeError, out: &mut BytesMut) {
        log::warn!("Bedrock stream ended: {e}");
        self.error_event(out, &GatewayError::UpstreamError);
    }

    fn error_event(&mut self, out: &mut BytesMut, err: &GatewayError) {
        if self.errored {
            return;
        }
        if self.defer {
            self.failure = Some(err.clone());
            self.errored = true;
            return;
        }
        out.put_slice(b"data: ");
        out.put_slice(&err.body());
        out.put_slice(b"\n\n");
        self.errored = true;
    }

    /// One event by its `:event-type` and JSON payload.
    pub fn on_event(&mut self, kind: &str, payload: &[u8], out: &mut BytesMut) {
        if self.errored {
            return;
        }
        let Ok(p) = serde_json::from_slice::<Payload<'_>>(payload) else {
            // An event we cannot read: skip it, as for SSE providers.
            return;
        };
        match kind {
            "messageStart" => self.chunks.role(out),
            "contentBlockStart" => {
                if let Some(t) = p.start.and_then(|s| s.tool_use) {
                    let index = self.tools;
                    self.tools = self.tools.saturating_add(1);
                    self.tool = Some((p.content_block_index.unwrap_or(0), index));
                    self.chunks.tool_start(out, index, &t.tool_use_id, &t.name);
                }
            }
            "contentBlockDelta" => {
                let Some(d) = p.delta else { return };
                if let Some(t) = d.text.filter(|t| !t.is_empty()) {
                    self.chunks.text(out, b"content", &t);
                } else if let Some(r) = d
                    .reasoning_content
                    .and_then(|r| r.text)
                    .filter(|t| !t.is_empty())
                {
                    self.chunks.text(out, b"reasoning_content", &r);
                } else if let Some(j) = d.tool_use.filter(|j| !j.input.is_empty()) {
                    let block = p.content_block_index.unwrap_or(0);
                    let index = match self.tool {
                        Some((b, i)) if b == block => i,
                        // A delta without its start: a call of its own.
                        _ => {
                            let i = self.tools;
                            self.tools = self.tools.saturating_add(1);
                            self.tool = Some((block, i));
                            i
                        }
                    };
                    self.chunks.tool_args(out, index, &j.input);
                }
            }
            "contentBlockStop" => self.tool = None,
            "messageStop" => {
                let reason = p.stop_reason.as_deref().map_or("stop", finish_reason);
                self.finish = Some(reason);
                self.stopped = true;
                self.chunks.finish(out, reason);
            }
            "metadata" => {
                if let Some(u) = p.usage {
                    self.tokens = u;
                    self.seen_usage = true;
                }
            }
            _ => {}
        }
    }
}

impl StreamTranslator for ChatStream {
    /// `data` is one event in the JSON union shape of `ConverseStreamOutput`
    /// (`{"contentBlockDelta": {…}}`), as the SDKs print it. The event-stream
    /// path uses [`ChatStream::frame`] instead and copies nothing.
    fn event(&mut self, data: &[u8], out: &mut BytesMut) {
        let Ok(map) =
            serde_json::from_slice::<std::collections::BTreeMap<Cow<'_, str>, &RawValue>>(data)
        else {
            return;
        };
        for (kind, payload) in map {
            self.on_event(&kind, payload.get().as_bytes(), out);
        }
    }

    fn finish(&mut self, out: &mut BytesMut) {
        if self.errored {
            return;
        }
        if !self.stopped {
            // The stream ended without `messageStop`: the answer is cut.
            self.error_event(out, &GatewayError::UpstreamError);
            return;
        }
        if self.include_usage && self.seen_usage {
            self.chunks.usage(out, &self.tokens.openai_json());
        }
        out.put_slice(b"data: [DONE]\n\n");
    }

    fn usage(&self) -> Option<Usage> {
        self.seen_usage.then(|| self.tokens.usage())
    }
}

/// The event-stream decoder and the translator, fed chunk by chunk: the
/// Bedrock counterpart of `translate::pipe::Pipe`.
pub struct EventPipe {
    decoder: Decoder,
    translator: ChatStream,
    finished: bool,
}

impl EventPipe {
    /// `max_frame`: the largest frame accepted (see
    /// `eventstream::DEFAULT_MAX_FRAME`).
    pub fn new(translator: ChatStream, max_frame: usize) -> Self {
        Self {
            decoder: Decoder::new(max_frame),
            translator,
            finished: false,
        }
    }

    /// Feeds one body chunk; appends the client events it completes to
    /// `out`. On a decode fault (bad CRC, oversized frame) `out` ends with an
    /// SSE error event and `Err` says the stream is over: send `out`, then
    /// end the response.
    pub fn feed(&mut self, chunk: &[u8], out: &mut BytesMut) -> Result<(), DecodeError> {
        if self.finished {
            return Ok(());
        }
        let t = &mut self.translator;
        let fed = self.decoder.feed(chunk, |f| t.frame(&f, out));
        if let Err(e) = &fed {
            self.finished = true;
            t.fault(e, out);
        }
        fed
    }

    /// The provider's body ended: closes the client's stream (`[DONE]`, or an
    /// error event if it ended inside a frame or before `messageStop`).
    pub fn finish(&mut self, out: &mut BytesMut) -> Result<(), DecodeError> {
        if self.finished {
            return Ok(());
        }
        self.finished = true;
        if let Err(e) = self.decoder.finish() {
            self.translator.fault(&e, out);
            return Err(e);
        }
        self.translator.finish(out);
        Ok(())
    }

    /// Usage the provider reported so far.
    pub fn usage(&self) -> Option<Usage> {
        self.translator.usage()
    }

    /// Whether the client's stream ended in an error event.
    pub fn errored(&self) -> bool {
        self.translator.errored()
    }

    /// The error that ended the stream (a deferring translator's).
    pub fn failure(&self) -> Option<&GatewayError> {
        self.translator.failure()
    }
}
