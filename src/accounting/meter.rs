//! Meters that watch a response on its way to the client: the stream meter
//! reads SSE events for usage, errors and streamed text, and can cut out the
//! usage-only chunk Tollgate asked for on the client's behalf. Chunks are
//! forwarded as the same `Bytes` unless a cut is needed.

use super::Usage;
use crate::base::endpoint::Endpoint;
use crate::sse::{Event, Overflow, Scanner};
use bytes::{Bytes, BytesMut};
use memchr::memmem;
use serde_json::Value;
use std::collections::VecDeque;

/// Nesting limit when scanning a response body for its usage (the same
/// as serde_json's own recursion limit).
const USAGE_SCAN_DEPTH: usize = 128;

/// Largest SSE event the scanner holds, all its lines counted (comments and
/// `id:` lines too); row 24: a 1 MiB line passes.
pub const MAX_EVENT_BYTES: usize = 4 * 1024 * 1024;
/// Streamed text kept for estimation; beyond it only bytes are counted.
const MAX_TEXT_BYTES: usize = 1024 * 1024;
/// Largest non-stream response body read whole (for usage, or to be
/// translated); larger ones are not parsed.
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// What the events said.
#[derive(Debug, Default)]
pub struct Seen {
    pub usage: Option<Usage>,
    /// Text the model produced (content, tool arguments), for estimation.
    pub text: String,
    /// Produced text bytes beyond `MAX_TEXT_BYTES`.
    pub text_overflow: u64,
    pub events: u64,
    pub done: bool,
    pub error_event: bool,
}

/// How a stream's events are shaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// OpenAI chunks: usage in a `usage` object, the end is `[DONE]`.
    OpenAi,
    /// Anthropic Messages events, passed through: their counts are read by
    /// the passthrough's own watch; the end is `message_stop`.
    Anthropic,
}

struct Sink {
    seen: Seen,
    /// The response's id, model and finish reasons, read for a traced
    /// request only.
    facts: Option<Box<super::facts::ResponseFacts>>,
    /// Cut the usage-only chunk (we injected `include_usage`).
    strip: bool,
    cuts: Vec<(u64, u64)>,
    patterns: &'static [&'static [u8]],
    shape: Shape,
}

impl Sink {
    fn on_event(&mut self, e: Event<'_>) {
        self.seen.events += 1;
        let d = e.data;
        if let Some(f) = &mut self.facts {
            if d != b"[DONE]" {
                f.on_event(d);
            }
        }
        if self.shape == Shape::Anthropic {
            self.on_anthropic_event(d);
            return;
        }
        if d == b"[DONE]" {
            self.seen.done = true;
            return;
        }
        let has_usage = usage_object_in(d);
        let has_error = memmem::find(d, b"\"error\"").is_some();
        if has_usage || has_error {
            if let Ok(v) = serde_json::from_slice::<Value>(d) {
                if let Some(u) = Usage::find(&v) {
                    self.seen.usage = Some(u);
                    let usage_only = v
                        .get("choices")
                        .and_then(Value::as_array)
                        .is_some_and(|c| c.is_empty());
                    if self.strip && usage_only {
                        self.cuts.push((e.start, e.end));
                        return;
                    }
                }
                let err = v.get("error").is_some_and(|x| !x.is_null())
                    || v.get("type").and_then(Value::as_str) == Some("error");
                self.seen.error_event |= err;
            }
        }
        for p in self.patterns {
            collect_strings(d, p, &mut self.seen);
        }
    }

    /// An Anthropic event: its text for estimates, its end and its errors.
    /// Only the (tiny) events naming `message_stop` or `error` are parsed.
    fn on_anthropic_event(&mut self, d: &[u8]) {
        let stop = memmem::find(d, b"\"message_stop\"").is_some();
        if stop || memmem::find(d, b"\"error\"").is_some() {
            if let Ok(v) = serde_json::from_slice::<Value>(d) {
                match v.get("type").and_then(Value::as_str) {
                    Some("message_stop") => self.seen.done = true,
                    Some("error") => self.seen.error_event = true,
                    _ => {}
                }
            }
        }
        for p in self.patterns {
            collect_strings(d, p, &mut self.seen);
        }
    }
}

/// Whether `d` has a `"usage"` key followed by an object (OpenAI sends
/// `"usage":null` in every chunk of a stream that asked for usage: those
/// chunks are not parsed).
fn usage_object_in(d: &[u8]) -> bool {
    memmem::find_iter(d, b"\"usage\"").any(|pos| {
        let rest = &d[pos + 7..];
        let mut it = rest.iter().skip_while(|b| b.is_ascii_whitespace());
        it.next() == Some(&b':') && it.find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
    })
}

/// Appends every JSON string value that follows `"key":` in `d`.
fn collect_strings(d: &[u8], key: &[u8], seen: &mut Seen) {
    for pos in memmem::find_iter(d, key) {
        let mut i = pos + key.len();
        while d.get(i).is_some_and(|b| b.is_ascii_whitespace()) {
            i += 1;
        }
        if d.get(i) != Some(&b'"') {
            continue;
        }
        let Some(end) = string_end(d, i) else {
            continue;
        };
        if let Ok(s) = serde_json::from_slice::<String>(&d[i..=end]) {
            if seen.text.len() + s.len() <= MAX_TEXT_BYTES {
                seen.text.push_str(&s);
            } else {
                seen.text_overflow += s.len() as u64;
            }
        }
    }
}

/// Index of the quote closing the JSON string that opens at `open`.
fn string_end(d: &[u8], open: usize) -> Option<usize> {
    let mut j = open + 1;
    loop {
        let k = memchr::memchr2(b'"', b'\\', d.get(j..)?)?;
        if d[j + k] == b'\\' {
            j += k + 2;
        } else {
            return Some(j + k);
        }
    }
}

/// Keys whose string values are model output, per endpoint.
fn output_keys(ep: Endpoint) -> &'static [&'static [u8]] {
    match ep {
        Endpoint::Completions => &[b"\"text\":"],
        Endpoint::Responses => &[b"\"delta\":"],
        _ => &[
            b"\"content\":",
            b"\"arguments\":",
            b"\"reasoning_content\":",
        ],
    }
}

/// Keys whose string values are model output in Anthropic stream events
/// (`text_delta`, `input_json_delta`, `thinking_delta`, and a block's
/// opening text).
const ANTHROPIC_OUTPUT_KEYS: &[&[u8]] = &[b"\"text\":", b"\"partial_json\":", b"\"thinking\":"];

/// Watches an SSE response.
pub struct StreamMeter {
    scanner: Scanner,
    sink: Sink,
    /// Bytes held back (strip mode only) until their event completes.
    held: BytesMut,
    held_start: u64,
    /// The scanner gave up (over-long event): bytes still flow, unread.
    pub overflowed: bool,
}

impl StreamMeter {
    /// A meter for an OpenAI-shaped stream of endpoint `ep`; it cuts the
    /// usage-only chunk when `strip_usage_chunk` (usage was asked for on the
    /// client's behalf).
    pub fn new(ep: Endpoint, strip_usage_chunk: bool) -> Self {
        Self::with(output_keys(ep), strip_usage_chunk, Shape::OpenAi)
    }

    /// A meter for an Anthropic Messages stream passed through as it is: it
    /// reads the streamed text (for an estimate when the stream is cut) and
    /// the stream's end, never changing a byte.
    pub fn anthropic() -> Self {
        Self::with(ANTHROPIC_OUTPUT_KEYS, false, Shape::Anthropic)
    }

    fn with(patterns: &'static [&'static [u8]], strip: bool, shape: Shape) -> Self {
        Self {
            scanner: Scanner::new(MAX_EVENT_BYTES),
            sink: Sink {
                seen: Seen::default(),
                facts: None,
                strip,
                cuts: Vec::new(),
                patterns,
                shape,
            },
            held: BytesMut::new(),
            held_start: 0,
            overflowed: false,
        }
    }

    pub fn seen(&self) -> &Seen {
        &self.sink.seen
    }

    /// Also reads the response's id, model and finish reasons (for a traced
    /// request).
    pub fn read_facts(&mut self) {
        self.sink.facts.get_or_insert_with(Box::default);
    }

    /// What [`StreamMeter::read_facts`] found.
    pub fn facts(&self) -> Option<&super::facts::ResponseFacts> {
        self.sink.facts.as_deref()
    }

    /// Reads one chunk and sets what is forwarded in its place: the same
    /// `Bytes` when the chunk ends on an event boundary and nothing is cut.
    /// An unfinished event at the end of a chunk is held back until it is
    /// complete (a client cannot use half an event, and if the stream breaks
    /// there, the error event must not be glued to half an event). An event
    /// over the scan limit is an error: the caller aborts the stream, and
    /// nothing more is forwarded.
    pub fn on_chunk(&mut self, body: &mut Option<Bytes>, eos: bool) -> Result<(), Overflow> {
        let chunk = body.take().unwrap_or_default();
        if self.overflowed {
            return Ok(());
        }
        let start = self.scanner.offset();
        let sink = &mut self.sink;
        let mut scanned = self.scanner.feed(&chunk, |e| sink.on_event(e));
        if scanned.is_ok() && eos {
            scanned = self.scanner.finish(|e| sink.on_event(e));
        }
        let overflow = scanned.err();
        let (data, data_start) = if self.held.is_empty() {
            (chunk, start)
        } else {
            self.held.extend_from_slice(&chunk);
            (self.held.split().freeze(), self.held_start)
        };
        let end = data_start + data.len() as u64;
        let boundary = if eos && overflow.is_none() {
            end
        } else {
            self.scanner.pending_from().clamp(data_start, end)
        };
        let keep = (boundary - data_start) as usize;
        *body = Some(cut(data.slice(..keep), data_start, &mut self.sink.cuts));
        if let Some(o) = overflow {
            // The complete events before the long one go out (before the
            // error event); the long one is dropped.
            self.overflowed = true;
            self.held = BytesMut::new();
            return Err(o);
        }
        if keep < data.len() {
            self.held.extend_from_slice(&data[keep..]);
            self.held_start = boundary;
        }
        Ok(())
    }
}

/// `data` (starting at stream offset `start`) without the cut ranges.
fn cut(data: Bytes, start: u64, cuts: &mut Vec<(u64, u64)>) -> Bytes {
    if cuts.is_empty() {
        return data;
    }
    let end = start + data.len() as u64;
    let mut out = BytesMut::with_capacity(data.len());
    let mut pos = start;
    cuts.sort_unstable();
    for &(a, b) in cuts.iter() {
        let (a, b) = (a.clamp(start, end), b.clamp(start, end));
        if a > pos {
            out.extend_from_slice(&data[(pos - start) as usize..(a - start) as usize]);
        }
        pos = pos.max(b);
    }
    if pos < end {
        out.extend_from_slice(&data[(pos - start) as usize..]);
    }
    cuts.retain(|&(_, b)| b > end);
    out.freeze()
}

/// What a non-stream body said about usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyUsage {
    Reported(Usage),
    /// JSON, but no usage in it: estimate.
    Missing,
    /// Not JSON, cut short, or too big to read whole, and no usage found
    /// near its end: the provider's counts are unknown.
    Unreadable,
}

/// Bytes kept from the end of a body too big to read whole, where its
/// `usage` member is looked for (providers write it after the choices).
const TAIL_BYTES: usize = 64 * 1024;

/// Collects a non-stream response body (by reference) to read its usage.
/// Memory: the body up to `MAX_BODY_BYTES`; past it, only its last
/// `TAIL_BYTES` (plus one chunk).
#[derive(Default)]
pub struct BodyMeter {
    parts: Vec<Bytes>,
    len: usize,
    too_big: bool,
    /// Past `MAX_BODY_BYTES`: the last chunks, at least `TAIL_BYTES` of them.
    tail: VecDeque<Bytes>,
    tail_len: usize,
    /// The whole body's one scan: its top-level members, `None` when it is
    /// not one JSON document. Made once, read by the usage and the facts.
    scanned: std::sync::OnceLock<Option<Box<super::facts::Members>>>,
}

impl BodyMeter {
    /// Takes one chunk of the body on its way to the client.
    pub fn on_chunk(&mut self, body: &Option<Bytes>) {
        let Some(b) = body.as_ref().filter(|b| !b.is_empty()) else {
            return;
        };
        self.len = self.len.saturating_add(b.len());
        if !self.too_big && self.len > MAX_BODY_BYTES {
            self.too_big = true;
            for p in std::mem::take(&mut self.parts) {
                self.keep_tail(p);
            }
        }
        if self.too_big {
            self.keep_tail(b.clone());
        } else {
            self.parts.push(b.clone());
        }
    }

    /// Keeps `b` at the end of the tail, dropping chunks from its front
    /// while the rest still holds `TAIL_BYTES`.
    fn keep_tail(&mut self, b: Bytes) {
        self.tail_len += b.len();
        self.tail.push_back(b);
        while let Some(front) = self.tail.front() {
            if self.tail_len - front.len() < TAIL_BYTES {
                break;
            }
            self.tail_len -= front.len();
            self.tail.pop_front();
        }
    }

    /// The body's bytes (one piece borrowed when it came in one chunk).
    fn bytes(&self) -> Option<std::borrow::Cow<'_, [u8]>> {
        if self.too_big {
            return None;
        }
        match self.parts.as_slice() {
            [one] => Some(std::borrow::Cow::Borrowed(&one[..])),
            parts => Some(std::borrow::Cow::Owned(parts.concat())),
        }
    }

    /// The reported usage, read without building the rest of the document:
    /// one validating pass finds the top-level `usage` member, and only that
    /// member is parsed. A body that is not one JSON document (too big, cut
    /// short, or not JSON) is searched near its end for a `usage` object.
    pub fn usage(&self) -> BodyUsage {
        let Some(bytes) = self.bytes() else {
            let tail: Vec<u8> = self.tail.iter().flat_map(|b| b.iter().copied()).collect();
            return usage_near_end(&tail).map_or(BodyUsage::Unreadable, BodyUsage::Reported);
        };
        let Some(members) = self.members(&bytes) else {
            let tail = &bytes[bytes.len().saturating_sub(TAIL_BYTES)..];
            return usage_near_end(tail).map_or(BodyUsage::Unreadable, BodyUsage::Reported);
        };
        match members
            .usage
            .clone()
            .and_then(|r| bytes.get(r))
            .and_then(Usage::from_json_text)
        {
            Some(u) => BodyUsage::Reported(u),
            None => BodyUsage::Missing,
        }
    }

    /// The body's id, model and finish reasons, when it was read whole (a
    /// traced request's, at its end).
    pub fn facts(&self) -> Option<super::facts::ResponseFacts> {
        let bytes = self.bytes()?;
        let members = self.members(&bytes)?;
        Some(super::facts::ResponseFacts::of_members(&bytes, members))
    }

    /// The top-level members of `bytes` (the whole body, [`BodyMeter::bytes`]),
    /// scanned once.
    fn members(&self, bytes: &[u8]) -> Option<&super::facts::Members> {
        self.scanned
            .get_or_init(|| {
                let mut m = super::facts::Members::default();
                crate::json_scan::scan(bytes, USAGE_SCAN_DEPTH, |key, range| m.note(&key, range))
                    .ok()
                    .map(|()| Box::new(m))
            })
            .as_deref()
    }

    /// The whole parsed body, when it was JSON and not too big (slow path:
    /// estimation when the upstream reported no usage).
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.bytes()?).ok()
    }
}

/// The usage object of the last `"usage": {` in `d`, a piece of a JSON
/// document that may start or end anywhere. In JSON text, `"usage"`
/// followed by a colon can only be a key (a quote inside a string is
/// escaped), so a string value that merely mentions usage never matches.
/// Only that last candidate is parsed (one bounded parse, whatever `d`
/// holds); it counts if it reads as a usage object.
fn usage_near_end(d: &[u8]) -> Option<Usage> {
    const KEY: &[u8] = b"\"usage\"";
    let pos = memmem::rfind_iter(d, KEY).find(|&p| {
        let mut it = d[p + KEY.len()..]
            .iter()
            .skip_while(|b| b.is_ascii_whitespace());
        it.next() == Some(&b':') && it.find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
    })?;
    let rest = &d[pos + KEY.len()..];
    let open = rest.iter().position(|&b| b == b'{')?;
    let mut de = serde_json::Deserializer::from_slice(&rest[open..]);
    let v = <Value as serde::Deserialize>::deserialize(&mut de).ok()?;
    Usage::from_json(&v)
}

/// Model output text in a non-stream response, for estimation.
pub fn output_text(doc: &Value) -> String {
    let mut out = String::new();
    if let Some(choices) = doc.get("choices").and_then(Value::as_array) {
        for c in choices {
            for key in ["content", "reasoning_content"] {
                if let Some(s) = c
                    .get("message")
                    .and_then(|m| m.get(key))
                    .and_then(Value::as_str)
                {
                    out.push_str(s);
                }
            }
            if let Some(s) = c.get("text").and_then(Value::as_str) {
                out.push_str(s);
            }
            let calls = c
                .get("message")
                .and_then(|m| m.get("tool_calls"))
                .and_then(Value::as_array);
            for call in calls.into_iter().flatten() {
                if let Some(a) = call.pointer("/function/arguments").and_then(Value::as_str) {
                    out.push_str(a);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_usage_object_is_worth_parsing() {
        assert!(usage_object_in(
            br#"{"choices":[],"usage":{"prompt_tokens":1}}"#
        ));
        assert!(usage_object_in(br#"{"usage" :  {"x":1}}"#));
        assert!(usage_object_in(
            br#"{"type":"response.completed","response":{"usage":{"input_tokens":3}}}"#
        ));
        assert!(!usage_object_in(
            br#"{"choices":[{"delta":{"content":"hi"}}],"usage":null}"#
        ));
        assert!(!usage_object_in(
            br#"{"choices":[{"delta":{"content":""usage" is a word"}}]}"#
        ));
        assert!(!usage_object_in(br#"{"usage""#));
    }

    const STREAM: &str = concat!(
        "data: {\"id\":\"1\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}],\"usage\":null}\n\n",
        "data: {\"id\":\"1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\\\"lo\"}}],\"usage\":null}\n\n",
        "data: {\"id\":\"1\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
        "data: {\"id\":\"1\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2,\"total_tokens\":11}}\n\n",
        "data: [DONE]\n\n"
    );

    fn run(strip: bool, splits: &[usize]) -> (Vec<u8>, StreamMeter) {
        let mut m = StreamMeter::new(Endpoint::ChatCompletions, strip);
        let bytes = STREAM.as_bytes();
        let mut out = Vec::new();
        let mut prev = 0;
        let mut points = splits.to_vec();
        points.push(bytes.len());
        for (i, &p) in points.iter().enumerate() {
            let mut body = Some(Bytes::copy_from_slice(&bytes[prev..p]));
            m.on_chunk(&mut body, i + 1 == points.len()).unwrap();
            out.extend_from_slice(&body.unwrap_or_default());
            prev = p;
        }
        (out, m)
    }

    #[test]
    fn passthrough_reads_usage_and_text_without_changing_bytes() {
        let (out, m) = run(false, &[10, 200, 201]);
        assert_eq!(out, STREAM.as_bytes());
        let s = m.seen();
        assert_eq!(s.usage.map(|u| u.prompt), Some(9));
        assert_eq!(s.text, "Hel\"lo");
        assert!(s.done);
    }

    #[test]
    fn strip_mode_removes_only_the_usage_chunk() {
        let usage_line = STREAM.lines().nth(6).unwrap();
        let expected = STREAM.replace(&format!("{usage_line}\n\n"), "");
        for a in (0..STREAM.len()).step_by(7) {
            let (out, m) = run(true, &[a]);
            assert_eq!(String::from_utf8(out).unwrap(), expected, "split at {a}");
            assert_eq!(m.seen().usage.map(|u| u.completion), Some(2));
        }
    }

    fn body_meter(chunks: &[&[u8]]) -> BodyMeter {
        let mut m = BodyMeter::default();
        for c in chunks {
            m.on_chunk(&Some(Bytes::copy_from_slice(c)));
        }
        m
    }

    #[test]
    fn usage_at_the_end_of_a_body_too_big_to_read_is_found() {
        let head = br#"{"id":"x","choices":[{"message":{"content":""#;
        let filler = vec![b'a'; 1024 * 1024];
        let usage = br#""}}],"usage":{"prompt_tokens":12,"completion_tokens":4000000},"system_fingerprint":"fp"}"#;
        let mut chunks: Vec<&[u8]> = vec![head];
        chunks.extend(std::iter::repeat_n(&filler[..], 17));
        chunks.push(usage);
        let m = body_meter(&chunks);
        match m.usage() {
            BodyUsage::Reported(u) => assert_eq!((u.prompt, u.completion), (12, 4_000_000)),
            other => panic!("{other:?}"),
        }
        assert!(m.tail_len < TAIL_BYTES + filler.len() + usage.len());
        assert!(m.json().is_none(), "never parsed whole");
        // Without usage at its end: unreadable, not "missing".
        chunks.pop();
        chunks.push(br#""}}]}"#);
        assert_eq!(body_meter(&chunks).usage(), BodyUsage::Unreadable);
    }

    #[test]
    fn a_cut_or_foreign_body_is_unreadable_unless_its_usage_passed() {
        let whole = br#"{"choices":[{"message":{"content":"say \"usage\": {\"prompt_tokens\": 0}"}}],"usage":{"prompt_tokens":7,"completion_tokens":3}}"#;
        let cut = &whole[..whole.len() - 30];
        assert_eq!(
            body_meter(&[cut]).usage(),
            BodyUsage::Unreadable,
            "the quoted usage is text"
        );
        let almost = &whole[..whole.len() - 1];
        match body_meter(&[almost]).usage() {
            BodyUsage::Reported(u) => assert_eq!((u.prompt, u.completion), (7, 3)),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            body_meter(&[b"<html>busy</html>"]).usage(),
            BodyUsage::Unreadable
        );
        assert_eq!(body_meter(&[]).usage(), BodyUsage::Unreadable);
        match body_meter(&[&whole[..10], &whole[10..]]).usage() {
            BodyUsage::Reported(u) => assert_eq!(u.prompt, 7),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_anthropic_stream_is_read_for_its_text_and_its_end() {
        let events = concat!(
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"content\":[],\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\n",
            "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"message_stop is \\\"just\\\" text\"}}\n\n",
            "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":9}}\n\n",
        );
        let mut m = StreamMeter::anthropic();
        let mut body = Some(Bytes::from_static(events.as_bytes()));
        m.on_chunk(&mut body, false).unwrap();
        assert_eq!(body.as_deref(), Some(events.as_bytes()), "bytes unchanged");
        let s = m.seen();
        assert_eq!(s.text, "message_stop is \"just\" text");
        assert!(!s.done, "no message_stop event yet");
        assert!(
            s.usage.is_none(),
            "Anthropic counts are the watch's to read"
        );
        let stop = "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
        let mut body = Some(Bytes::from_static(stop.as_bytes()));
        m.on_chunk(&mut body, true).unwrap();
        assert!(m.seen().done);
    }
}
