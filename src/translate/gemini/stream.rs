//! `streamGenerateContent?alt=sse` → `chat.completion.chunk` events.
//!
//! Each Gemini event is a whole `GenerateContentResponse` holding the next
//! piece of each candidate; function calls arrive whole, never split. Each
//! event becomes at most one chunk per candidate, written as it arrives. The
//! state is a few counters per candidate (at most [`MAX_CHOICES`]) and the
//! latest usage: never the text.

use super::error::{error, http_status};
use super::response::{
    blocked, candidates, completion_id, finish_reason, now, usage, usage_json, Parts,
};
use crate::accounting::Usage;
use crate::translate::{ResponseOpts, StreamTranslator};
use bytes::{BufMut, BytesMut};
use serde_json::{json, Map, Value};

/// Candidates tracked per stream (OpenAI's own limit on `n`); others are
/// ignored.
pub const MAX_CHOICES: usize = 128;

/// Per-candidate progress.
#[derive(Debug, Clone, Copy)]
struct Choice {
    index: u64,
    role_sent: bool,
    /// Tool calls emitted so far: the `index` of the next one.
    tools: usize,
    /// Its finish reason was sent.
    done: bool,
}

/// The stream translator for one response.
#[derive(Debug)]
pub struct ChatStream {
    id: String,
    model: String,
    request_id: String,
    created: u64,
    include_usage: bool,
    choices: Vec<Choice>,
    /// Tool calls seen across candidates (numbers generated ids).
    calls: usize,
    usage: Option<Usage>,
    /// An error event was sent: the stream is over for the client.
    errored: bool,
}

impl ChatStream {
    pub fn new(opts: &ResponseOpts) -> Self {
        Self {
            id: completion_id(opts.request_id),
            model: opts.model.to_string(),
            request_id: opts.request_id.to_string(),
            created: now(),
            include_usage: opts.include_usage,
            choices: Vec::new(),
            calls: 0,
            usage: None,
            errored: false,
        }
    }

    /// Every candidate seen has finished (and there was at least one).
    fn complete(&self) -> bool {
        !self.choices.is_empty() && self.choices.iter().all(|c| c.done)
    }

    /// Ends the client's stream with an OpenAI-format error event (no
    /// `[DONE]` follows, so clients see the answer is incomplete).
    fn error_event(&mut self, err: &crate::error::GatewayError, out: &mut BytesMut) {
        out.put_slice(b"data: ");
        out.put_slice(&err.body());
        out.put_slice(b"\n\n");
        self.errored = true;
    }

    fn choice(&mut self, index: u64) -> Option<&mut Choice> {
        match self.choices.iter().position(|c| c.index == index) {
            Some(i) => self.choices.get_mut(i),
            None if self.choices.len() < MAX_CHOICES => {
                self.choices.push(Choice {
                    index,
                    role_sent: false,
                    tools: 0,
                    done: false,
                });
                self.choices.last_mut()
            }
            None => None,
        }
    }

    fn chunk(&self, choices: Vec<Value>) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        })
    }

    /// One candidate's piece → its delta choice and its finish choice, each
    /// only if there is one. The finish goes in a chunk of its own, after the
    /// delta, as OpenAI sends it: the SDKs' stream helpers close the last
    /// tool call only on a finish chunk that follows its delta.
    fn candidate(&mut self, pos: usize, cand: &Value) -> (Option<Value>, Option<Value>) {
        let index = cand
            .get("index")
            .and_then(Value::as_u64)
            .unwrap_or(pos as u64);
        let mut calls = self.calls;
        let parts = Parts::of(cand, &self.request_id, &mut calls);
        self.calls = calls;
        let reason = cand
            .get("finishReason")
            .filter(|r| r.as_str().is_some_and(|r| r != "FINISH_REASON_UNSPECIFIED"));
        let Some(state) = self.choice(index) else {
            return (None, None);
        };
        let mut delta = Map::new();
        if !state.role_sent {
            state.role_sent = true;
            delta.insert("role".into(), "assistant".into());
        }
        if let Some(text) = parts.text.filter(|t| !t.is_empty()) {
            delta.insert("content".into(), text.into());
        }
        if !parts.tool_calls.is_empty() {
            let mut calls = parts.tool_calls;
            for c in &mut calls {
                c["index"] = state.tools.into();
                state.tools += 1;
            }
            delta.insert("tool_calls".into(), Value::Array(calls));
        }
        let finish = reason.map(|r| finish_reason(Some(r), state.tools > 0));
        state.done |= finish.is_some();
        let choice = |delta: Map<String, Value>, finish: Option<&str>| {
            json!({
                "index": index,
                "delta": delta,
                "logprobs": null,
                "finish_reason": finish,
            })
        };
        let delta = (!delta.is_empty()).then(|| choice(delta, None));
        let finish = finish.map(|f| choice(Map::new(), Some(f)));
        (delta, finish)
    }
}

fn write_event(out: &mut BytesMut, v: &Value) {
    out.put_slice(b"data: ");
    out.put_slice(v.to_string().as_bytes());
    out.put_slice(b"\n\n");
}

impl StreamTranslator for ChatStream {
    fn event(&mut self, data: &[u8], out: &mut BytesMut) {
        if self.errored {
            return;
        }
        let Ok(doc) = serde_json::from_slice::<Value>(data) else {
            log::warn!(
                "request {}: skipped a Gemini stream event that is not JSON ({} bytes)",
                self.request_id,
                data.len()
            );
            return;
        };
        if let Some(e) = doc.get("error") {
            let err = error(http_status(e), data);
            self.error_event(&err, out);
            return;
        }
        if let Some(u) = usage(&doc) {
            self.usage = Some(u);
        }
        let mut choices = Vec::new();
        let mut finishes = Vec::new();
        for (pos, cand) in candidates(&doc).iter().enumerate() {
            let (delta, finish) = self.candidate(pos, cand);
            choices.extend(delta);
            finishes.extend(finish);
        }
        if candidates(&doc).is_empty() && blocked(&doc) {
            let first = self.choice(0).map(|c| {
                c.done = true;
                !std::mem::replace(&mut c.role_sent, true)
            });
            let mut delta = Map::new();
            if first == Some(true) {
                delta.insert("role".into(), "assistant".into());
            }
            choices.push(json!({
                "index": 0,
                "delta": delta,
                "logprobs": null,
                "finish_reason": "content_filter",
            }));
        }
        if !choices.is_empty() {
            write_event(out, &self.chunk(choices));
        }
        if !finishes.is_empty() {
            write_event(out, &self.chunk(finishes));
        }
    }

    fn finish(&mut self, out: &mut BytesMut) {
        if self.errored {
            return;
        }
        if !self.complete() {
            // Gemini's last chunk carries the finish reason: without it the
            // answer was cut short.
            log::warn!(
                "request {}: the Gemini stream ended without a finish reason",
                self.request_id
            );
            self.error_event(&crate::error::GatewayError::UpstreamError, out);
            return;
        }
        if self.include_usage {
            if let Some(u) = self.usage {
                let mut chunk = self.chunk(Vec::new());
                chunk["usage"] = usage_json(&u);
                write_event(out, &chunk);
            }
        }
        out.put_slice(b"data: [DONE]\n\n");
    }

    fn usage(&self) -> Option<Usage> {
        self.usage
    }
}
