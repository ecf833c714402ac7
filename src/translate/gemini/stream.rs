//! `streamGenerateContent?alt=sse` → `chat.completion.chunk` events.
//!
//! Each Gemini event is a whole `GenerateContentResponse` holding the next
//! piece of each candidate; function calls arrive whole, never split. Each
//! event becomes one chunk with the candidates' deltas, then, when a
//! candidate finished, one chunk with its finish reason (as OpenAI sends
//! it: the SDKs' stream helpers close the last tool call only on a finish
//! chunk that follows its delta). The event is read borrowed ([`wire`]) and
//! the chunks are written straight to the output. The state is a few
//! counters per candidate (at most [`MAX_CHOICES`]) and the latest usage:
//! never the text.

use super::error::{error, http_status};
use super::response::{call_id, completion_id, finish_reason, now, usage_json};
use super::wire::{self, Candidate};
use crate::accounting::Usage;
use crate::base::error::GatewayError;
use crate::translate::{ResponseOpts, StreamTranslator};
use bytes::{BufMut, BytesMut};
use serde_json::Value;

/// Candidates tracked per stream (OpenAI's own limit on `n`); others are
/// ignored.
pub(super) const MAX_CHOICES: usize = 128;

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
    /// `{"id":…,"object":"chat.completion.chunk","created":…,"model":…,"choices":[`
    prefix: Vec<u8>,
    request_id: String,
    include_usage: bool,
    choices: Vec<Choice>,
    /// Tool calls seen across candidates (numbers generated ids).
    calls: usize,
    usage: Option<Usage>,
    /// An error event was sent: the stream is over for the client.
    errored: bool,
}

/// Appends `s` as a JSON string.
fn put_str(out: &mut impl BufMut, s: &str) {
    let mut w = out.writer();
    // Writing a `str` to memory cannot fail.
    let _ = serde_json::to_writer(&mut w, s);
}

impl ChatStream {
    pub fn new(opts: &ResponseOpts) -> Self {
        let mut prefix = Vec::with_capacity(128);
        prefix.put_slice(b"{\"id\":");
        put_str(&mut prefix, &completion_id(opts.request_id));
        prefix.put_slice(b",\"object\":\"chat.completion.chunk\",\"created\":");
        prefix.put_slice(itoa::Buffer::new().format(now()).as_bytes());
        prefix.put_slice(b",\"model\":");
        put_str(&mut prefix, opts.model);
        prefix.put_slice(b",\"choices\":[");
        Self {
            prefix,
            request_id: opts.request_id.to_string(),
            include_usage: opts.include_usage,
            choices: Vec::new(),
            calls: 0,
            usage: None,
            errored: false,
        }
    }

    /// The position of candidate `index` in `choices`, added if new.
    fn slot(&mut self, index: u64) -> Option<usize> {
        match self.choices.iter().position(|c| c.index == index) {
            Some(i) => Some(i),
            None if self.choices.len() < MAX_CHOICES => {
                self.choices.push(Choice {
                    index,
                    role_sent: false,
                    tools: 0,
                    done: false,
                });
                Some(self.choices.len() - 1)
            }
            None => None,
        }
    }

    /// Every candidate seen has finished (and there was at least one).
    fn complete(&self) -> bool {
        !self.choices.is_empty() && self.choices.iter().all(|c| c.done)
    }

    /// Ends the client's stream with an OpenAI-format error event (no
    /// `[DONE]` follows, so clients see the answer is incomplete).
    fn error_event(&mut self, err: &GatewayError, out: &mut BytesMut) {
        out.put_slice(b"data: ");
        out.put_slice(&err.body());
        out.put_slice(b"\n\n");
        self.errored = true;
    }

    /// Appends one candidate's delta choice (if it carries anything) to
    /// `deltas`, and returns its finish reason, if it finished.
    fn candidate(
        &mut self,
        pos: usize,
        cand: &Candidate<'_>,
        deltas: &mut Vec<u8>,
    ) -> Option<(u64, &'static str)> {
        let index = cand.index.unwrap_or(pos as u64);
        let slot = self.slot(index)?;
        let state = &mut self.choices[slot];
        let mut delta: Vec<u8> = Vec::new();
        let field = |delta: &mut Vec<u8>, name: &[u8]| {
            delta.put_slice(if delta.is_empty() { b"{" } else { b"," });
            delta.put_slice(name);
        };
        if !state.role_sent {
            state.role_sent = true;
            field(&mut delta, b"\"role\":\"assistant\"");
        }
        let parts = cand
            .content
            .as_ref()
            .map_or(&[][..], |c| c.parts.as_slice());
        // Thought summaries are left out.
        let live = || parts.iter().filter(|p| p.thought != Some(true));
        let mut texts = live()
            .filter_map(|p| p.text.as_deref())
            .filter(|t| !t.is_empty());
        if let Some(first) = texts.next() {
            field(&mut delta, b"\"content\":");
            match texts.next() {
                None => put_str(&mut delta, first),
                Some(second) => {
                    let mut joined = format!("{first}{second}");
                    joined.extend(texts);
                    put_str(&mut delta, &joined);
                }
            }
        }
        let mut n = 0;
        for (fc, sig) in live().filter_map(|p| {
            p.function_call
                .as_ref()
                .map(|fc| (fc, p.thought_signature.as_deref()))
        }) {
            if n == 0 {
                field(&mut delta, b"\"tool_calls\":[");
            } else {
                delta.put_slice(b",");
            }
            let id = match fc.id.as_deref() {
                Some(id) if !id.is_empty() => id.to_string(),
                _ => call_id(&self.request_id, self.calls + n),
            };
            // Re-serialized, so arguments read the same as in a non-stream
            // answer.
            let args = fc
                .args
                .and_then(|a| serde_json::from_str::<Value>(a.get()).ok())
                .filter(|a| !a.is_null())
                .map_or_else(|| "{}".to_string(), |a| a.to_string());
            delta.put_slice(b"{\"index\":");
            delta.put_slice(itoa::Buffer::new().format(state.tools).as_bytes());
            delta.put_slice(b",\"id\":");
            put_str(&mut delta, &id);
            delta.put_slice(b",\"type\":\"function\",\"function\":{\"name\":");
            put_str(&mut delta, &fc.name);
            delta.put_slice(b",\"arguments\":");
            put_str(&mut delta, &args);
            delta.put_slice(b"}");
            if let Some(sig) = sig {
                delta.put_slice(b",\"extra_content\":{\"google\":{\"thought_signature\":");
                put_str(&mut delta, sig);
                delta.put_slice(b"}}");
            }
            delta.put_slice(b"}");
            state.tools += 1;
            n += 1;
        }
        if n > 0 {
            delta.put_slice(b"]");
        }
        let reason = cand
            .finish_reason
            .as_deref()
            .filter(|r| *r != "FINISH_REASON_UNSPECIFIED")
            .map(|r| finish_reason(Some(r), state.tools > 0));
        state.done |= reason.is_some();
        self.calls += n;
        if !delta.is_empty() {
            delta.put_slice(b"}");
            if !deltas.is_empty() {
                deltas.put_slice(b",");
            }
            put_choice(deltas, index, &delta, None);
        }
        reason.map(|r| (index, r))
    }

    /// Writes one chunk event holding `choices` (already-written choice
    /// objects, comma-separated).
    fn write_chunk(&self, out: &mut BytesMut, choices: &[u8]) {
        out.put_slice(b"data: ");
        out.put_slice(&self.prefix);
        out.put_slice(choices);
        out.put_slice(b"]}\n\n");
    }
}

/// `{"index":…,"delta":…,"logprobs":null,"finish_reason":…}`
fn put_choice(out: &mut Vec<u8>, index: u64, delta: &[u8], finish: Option<&str>) {
    out.put_slice(b"{\"index\":");
    out.put_slice(itoa::Buffer::new().format(index).as_bytes());
    out.put_slice(b",\"delta\":");
    out.put_slice(delta);
    out.put_slice(b",\"logprobs\":null,\"finish_reason\":");
    match finish {
        Some(f) => put_str(out, f),
        None => out.put_slice(b"null"),
    }
    out.put_slice(b"}");
}

impl StreamTranslator for ChatStream {
    fn event(&mut self, data: &[u8], out: &mut BytesMut) {
        if self.errored {
            return;
        }
        let ev: wire::Event<'_> = match serde_json::from_slice(data) {
            Ok(ev) => ev,
            Err(_) => {
                log::warn!(
                    "request {}: skipped a Gemini stream event that is not a response ({} bytes)",
                    self.request_id,
                    data.len()
                );
                return;
            }
        };
        if let Some(raw) = ev.error {
            let status = serde_json::from_str::<Value>(raw.get()).map_or(500, |e| http_status(&e));
            let err = error(status, data);
            self.error_event(&err, out);
            return;
        }
        if let Some(u) = ev.usage {
            self.usage = Some(u.usage());
        }
        let mut deltas = Vec::new();
        let mut finishes: Vec<(u64, &'static str)> = Vec::new();
        for (pos, cand) in ev.candidates.iter().enumerate() {
            finishes.extend(self.candidate(pos, cand, &mut deltas));
        }
        let blocked = ev
            .feedback
            .as_ref()
            .is_some_and(|f| f.block_reason.is_some());
        if ev.candidates.is_empty() && blocked {
            // The prompt was blocked: no candidate will come.
            if let Some(slot) = self.slot(0) {
                let c = &mut self.choices[slot];
                c.done = true;
                if !std::mem::replace(&mut c.role_sent, true) {
                    if !deltas.is_empty() {
                        deltas.put_slice(b",");
                    }
                    put_choice(&mut deltas, 0, b"{\"role\":\"assistant\"}", None);
                }
            }
            finishes.push((0, "content_filter"));
        }
        if !deltas.is_empty() {
            self.write_chunk(out, &deltas);
        }
        if !finishes.is_empty() {
            let mut choices = Vec::new();
            for (i, (index, reason)) in finishes.into_iter().enumerate() {
                if i > 0 {
                    choices.put_slice(b",");
                }
                put_choice(&mut choices, index, b"{}", Some(reason));
            }
            self.write_chunk(out, &choices);
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
            self.error_event(&GatewayError::UpstreamError, out);
            return;
        }
        if self.include_usage {
            if let Some(u) = self.usage {
                out.put_slice(b"data: ");
                out.put_slice(&self.prefix);
                out.put_slice(b"],\"usage\":");
                out.put_slice(usage_json(&u).to_string().as_bytes());
                out.put_slice(b"}\n\n");
            }
        }
        out.put_slice(b"data: [DONE]\n\n");
    }

    fn usage(&self) -> Option<Usage> {
        self.usage
    }
}
