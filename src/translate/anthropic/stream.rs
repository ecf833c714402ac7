//! Anthropic Messages stream events → OpenAI `chat.completion.chunk` events,
//! one event at a time. The translator keeps only what later chunks need: the
//! response id and model (the chunk prefix), the current block, the tool-call
//! count, the stop reason and the token counters.

use super::response::finish_reason;
use super::usage::{Partial, Tokens};
use crate::accounting::Usage;
use crate::translate::chat::Chunks;
use crate::translate::errors::anthropic_error_type;
use crate::translate::{ResponseOpts, StreamTranslator};
use bytes::{BufMut, BytesMut};
use serde::Deserialize;
use std::borrow::Cow;

#[derive(Deserialize)]
struct Event<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    delta: Option<Delta<'a>>,
    #[serde(default, borrow)]
    content_block: Option<Block<'a>>,
    #[serde(default, borrow)]
    message: Option<Start<'a>>,
    #[serde(default)]
    usage: Option<Partial>,
    #[serde(default, borrow)]
    error: Option<ErrorBody<'a>>,
}

#[derive(Deserialize)]
struct Delta<'a> {
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    partial_json: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    thinking: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    stop_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Block<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Start<'a> {
    #[serde(default, borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(default)]
    usage: Option<Partial>,
}

#[derive(Deserialize)]
struct ErrorBody<'a> {
    #[serde(rename = "type", default, borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    message: Option<Cow<'a, str>>,
}

/// What the current content block is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Current {
    None,
    Text,
    Thinking,
    /// A tool call, with its OpenAI `index` (tool calls counted, not blocks).
    Tool(u32),
    Other,
}

/// Translates one Anthropic stream for an OpenAI Chat Completions client.
pub struct ChatStream {
    model: String,
    fallback_id: String,
    include_usage: bool,
    /// The chunks' prefix, set by `message_start` (its id).
    chunks: Chunks,
    current: Current,
    tools: u32,
    finish: Option<&'static str>,
    tokens: Tokens,
    seen_usage: bool,
    stopped: bool,
    errored: bool,
}

impl ChatStream {
    pub fn new(opts: &ResponseOpts<'_>) -> Self {
        Self {
            model: opts.model.to_string(),
            fallback_id: opts.request_id.to_string(),
            include_usage: opts.include_usage,
            chunks: Chunks::default(),
            current: Current::None,
            tools: 0,
            finish: None,
            tokens: Tokens::default(),
            seen_usage: false,
            stopped: false,
            errored: false,
        }
    }

    fn set_prefix(&mut self, id: &str) {
        self.chunks = Chunks::new(id, &self.model);
    }

    /// The chunk writer (with the request's id if no `message_start` came).
    fn chunks(&mut self) -> &Chunks {
        if self.chunks.is_unset() {
            self.chunks = Chunks::new(&self.fallback_id, &self.model);
        }
        &self.chunks
    }

    fn error_event(&mut self, out: &mut BytesMut, kind: &str, message: &str) {
        let err = anthropic_error_type(kind, message);
        out.put_slice(b"data: ");
        out.put_slice(&err.body());
        out.put_slice(b"\n\n");
        self.errored = true;
    }

    fn on_block_start(&mut self, b: Block<'_>, out: &mut BytesMut) {
        self.current = match &*b.kind {
            "text" => Current::Text,
            "thinking" => Current::Thinking,
            "tool_use" => Current::Tool(self.tools),
            _ => Current::Other,
        };
        match self.current {
            Current::Text => {
                if let Some(t) = b.text.filter(|t| !t.is_empty()) {
                    self.chunks().text(out, b"content", &t);
                }
            }
            Current::Tool(index) => {
                self.tools = self.tools.saturating_add(1);
                let id = b.id.unwrap_or_default();
                let name = b.name.unwrap_or_default();
                self.chunks().tool_start(out, index, &id, &name);
            }
            _ => {}
        }
    }

    fn on_delta(&mut self, d: Delta<'_>, out: &mut BytesMut) {
        match self.current {
            Current::Text => {
                if let Some(t) = d.text.filter(|t| !t.is_empty()) {
                    self.chunks().text(out, b"content", &t);
                }
            }
            Current::Thinking => {
                if let Some(t) = d.thinking.filter(|t| !t.is_empty()) {
                    self.chunks().text(out, b"reasoning_content", &t);
                }
            }
            Current::Tool(index) => {
                if let Some(j) = d.partial_json.filter(|j| !j.is_empty()) {
                    self.chunks().tool_args(out, index, &j);
                }
            }
            Current::None | Current::Other => {}
        }
    }
}

impl StreamTranslator for ChatStream {
    fn event(&mut self, data: &[u8], out: &mut BytesMut) {
        if self.errored {
            return;
        }
        let Ok(ev) = serde_json::from_slice::<Event<'_>>(data) else {
            // Not an event we can read (a comment-only or broken event): skip.
            return;
        };
        match &*ev.kind {
            "message_start" => {
                let start = ev.message;
                let id = start.as_ref().and_then(|m| m.id.as_deref()).unwrap_or("");
                let id = if id.is_empty() {
                    self.fallback_id.clone()
                } else {
                    id.to_string()
                };
                self.set_prefix(&id);
                if let Some(u) = start.and_then(|m| m.usage) {
                    self.tokens.update(&u);
                    self.seen_usage = true;
                }
                self.chunks().role(out);
            }
            "content_block_start" => {
                if let Some(b) = ev.content_block {
                    self.on_block_start(b, out);
                }
            }
            "content_block_delta" => {
                if let Some(d) = ev.delta {
                    self.on_delta(d, out);
                }
            }
            "content_block_stop" => self.current = Current::None,
            "message_delta" => {
                if let Some(u) = ev.usage {
                    self.tokens.update(&u);
                    self.seen_usage = true;
                }
                if let Some(stop) = ev.delta.and_then(|d| d.stop_reason) {
                    let reason = finish_reason(&stop);
                    self.finish = Some(reason);
                    self.chunks().finish(out, reason);
                }
            }
            "message_stop" => self.stopped = true,
            "error" => {
                let e = ev.error;
                let kind = e
                    .as_ref()
                    .and_then(|e| e.kind.as_deref())
                    .unwrap_or("api_error");
                let msg = e.as_ref().and_then(|e| e.message.as_deref()).unwrap_or("");
                let (kind, msg) = (kind.to_string(), msg.to_string());
                self.error_event(out, &kind, &msg);
            }
            // ping, and event types added later
            _ => {}
        }
    }

    fn finish(&mut self, out: &mut BytesMut) {
        if self.errored {
            return;
        }
        if !self.stopped {
            // The provider ended without `message_stop`: the answer is cut.
            self.error_event(out, "api_error", "");
            return;
        }
        if self.finish.is_none() {
            self.chunks().finish(out, "stop");
        }
        if self.include_usage {
            let usage = self.tokens.openai_json();
            self.chunks().usage(out, &usage);
        }
        out.put_slice(b"data: [DONE]\n\n");
    }

    fn usage(&self) -> Option<Usage> {
        self.seen_usage.then(|| self.tokens.usage())
    }
}
