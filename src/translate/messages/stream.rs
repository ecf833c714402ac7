//! OpenAI `chat.completion.chunk` events → Anthropic stream events, one
//! event at a time.
//!
//! The first chunk opens the message (`message_start`). Text deltas go to a
//! `text` block; a tool call opens a `tool_use` block with its id and name,
//! and its argument fragments follow as `input_json_delta`. A block is
//! stopped when the next one starts or the choice finishes. The usage chunk
//! (`choices: []`) is remembered; `[DONE]` (or the end of the stream after a
//! `finish_reason`) closes with `message_delta` (stop reason and usage) and
//! `message_stop`. An OpenAI error event becomes an Anthropic `error` event,
//! and so does a stream that ends before it finished.
//!
//! State is the current block and a few counters, never the response: each
//! delta is written out as soon as it is read. OpenAI streams parallel tool
//! calls one after another; a delta for a call whose block was already
//! stopped cannot be placed in Anthropic's stream and is dropped (logged).

use super::{error, push_event, usage_json};
use crate::accounting::Usage;
use crate::translate::{ResponseOpts, StreamTranslator};
use bytes::BytesMut;
use serde_json::{json, Value};

/// The block being written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Block {
    None,
    Text,
    /// A tool call, by its OpenAI `index`.
    Tool(u64),
}

/// One Anthropic stream being written from one OpenAI stream.
pub struct MessagesStream {
    model: String,
    request_id: String,
    started: bool,
    /// `message_stop` or an `error` was written: nothing more follows.
    ended: bool,
    block: Block,
    /// Anthropic index of the next block.
    next_index: u64,
    /// Highest OpenAI tool-call index given a block so far.
    last_tool: Option<u64>,
    stop_reason: Option<&'static str>,
    usage: Option<Usage>,
}

impl MessagesStream {
    pub fn new(opts: &ResponseOpts<'_>) -> Self {
        Self {
            model: opts.model.to_string(),
            request_id: opts.request_id.to_string(),
            started: false,
            ended: false,
            block: Block::None,
            next_index: 0,
            last_tool: None,
            stop_reason: None,
            usage: None,
        }
    }

    fn start(&mut self, openai_id: Option<&str>, out: &mut BytesMut) {
        if self.started {
            return;
        }
        self.started = true;
        let id = super::message_id(openai_id, &self.request_id);
        let usage = usage_json(&self.usage.unwrap_or_default());
        push_event(
            out,
            "message_start",
            &json!({"type": "message_start", "message": {
                "id": id, "type": "message", "role": "assistant", "model": self.model,
                "content": [], "stop_reason": null, "stop_sequence": null, "usage": usage}}),
        );
    }

    /// Index of the open block.
    fn index(&self) -> u64 {
        self.next_index.saturating_sub(1)
    }

    fn stop_block(&mut self, out: &mut BytesMut) {
        if self.block != Block::None {
            let index = self.index();
            push_event(
                out,
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": index}),
            );
            self.block = Block::None;
        }
    }

    fn open_block(&mut self, block: Block, content_block: Value, out: &mut BytesMut) {
        self.stop_block(out);
        let index = self.next_index;
        self.next_index += 1;
        self.block = block;
        push_event(
            out,
            "content_block_start",
            &json!({"type": "content_block_start", "index": index, "content_block": content_block}),
        );
    }

    fn delta(&self, delta: Value, out: &mut BytesMut) {
        let index = self.index();
        push_event(
            out,
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": index, "delta": delta}),
        );
    }

    fn text(&mut self, text: &str, out: &mut BytesMut) {
        if text.is_empty() {
            return;
        }
        if self.block != Block::Text {
            self.open_block(Block::Text, json!({"type": "text", "text": ""}), out);
        }
        self.delta(json!({"type": "text_delta", "text": text}), out);
    }

    fn tool(&mut self, call: &Value, out: &mut BytesMut) {
        let index = call.get("index").and_then(Value::as_u64).unwrap_or(0);
        let f = call.get("function").unwrap_or(&Value::Null);
        if self.block != Block::Tool(index) {
            if self.last_tool.is_some_and(|last| index <= last) {
                log::warn!(
                    "request {}: the upstream resumed tool call {index} after its block \
                     closed; fragment dropped",
                    self.request_id
                );
                return;
            }
            self.last_tool = Some(index);
            let id = match call.get("id").and_then(Value::as_str) {
                Some(id) if !id.is_empty() => id.to_string(),
                _ => format!("toolu_{}_{index}", self.request_id),
            };
            let name = f.get("name").and_then(Value::as_str).unwrap_or_default();
            self.open_block(
                Block::Tool(index),
                json!({"type": "tool_use", "id": id, "name": name, "input": {}}),
                out,
            );
        }
        if let Some(args) = f.get("arguments").and_then(Value::as_str) {
            if !args.is_empty() {
                self.delta(
                    json!({"type": "input_json_delta", "partial_json": args}),
                    out,
                );
            }
        }
    }

    /// Writes the end of a complete message.
    fn close(&mut self, out: &mut BytesMut) {
        self.start(None, out);
        self.stop_block(out);
        let usage = usage_json(&self.usage.unwrap_or_default());
        push_event(
            out,
            "message_delta",
            &json!({"type": "message_delta",
                "delta": {"stop_reason": self.stop_reason.unwrap_or("end_turn"), "stop_sequence": null},
                "usage": usage}),
        );
        push_event(out, "message_stop", &json!({"type": "message_stop"}));
        self.ended = true;
    }

    fn fail(&mut self, value: &Value, out: &mut BytesMut) {
        push_event(out, "error", value);
        self.ended = true;
    }
}

impl StreamTranslator for MessagesStream {
    fn event(&mut self, data: &[u8], out: &mut BytesMut) {
        if self.ended {
            return;
        }
        if data == b"[DONE]" {
            self.close(out);
            return;
        }
        let Ok(doc) = serde_json::from_slice::<Value>(data) else {
            log::warn!(
                "request {}: the upstream sent an event that is not JSON; skipped",
                self.request_id
            );
            return;
        };
        if doc.get("error").is_some_and(|e| !e.is_null()) {
            self.fail(&error::from_openai_event(&doc), out);
            return;
        }
        if let Some(u) = doc.get("usage").and_then(Usage::from_json) {
            self.usage = Some(u);
        }
        self.start(doc.get("id").and_then(Value::as_str), out);
        let Some(choice) = doc
            .get("choices")
            .and_then(Value::as_array)
            .and_then(|c| c.first())
        else {
            return;
        };
        if let Some(delta) = choice.get("delta") {
            for key in ["content", "refusal"] {
                if let Some(t) = delta.get(key).and_then(Value::as_str) {
                    self.text(t, out);
                }
            }
            for call in delta
                .get("tool_calls")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                self.tool(call, out);
            }
        }
        if let Some(finish) = choice.get("finish_reason").and_then(Value::as_str) {
            self.stop_reason = Some(super::stop_reason(finish));
            self.stop_block(out);
        }
    }

    fn finish(&mut self, out: &mut BytesMut) {
        if self.ended {
            return;
        }
        if self.stop_reason.is_some() {
            // Finished, only `[DONE]` is missing.
            self.close(out);
        } else {
            let e = crate::base::error::GatewayError::UpstreamError;
            let v = json!({"type": "error", "error": {"type": "api_error",
                "message": format!("{e} The stream ended before the message was complete.")}});
            self.fail(&v, out);
        }
    }

    fn usage(&self) -> Option<Usage> {
        self.usage
    }
}
