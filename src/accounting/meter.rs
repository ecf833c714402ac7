//! Meters that watch a response on its way to the client: the stream meter
//! reads SSE events for usage, errors and streamed text, and can cut out the
//! usage-only chunk Tollgate asked for on the client's behalf. Chunks are
//! forwarded as the same `Bytes` unless a cut is needed.

use super::Usage;
use crate::proxy::endpoint::Endpoint;
use crate::sse::{Event, Overflow, Scanner};
use bytes::{Bytes, BytesMut};
use memchr::memmem;
use serde_json::Value;

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

struct Sink {
    seen: Seen,
    /// Cut the usage-only chunk (we injected `include_usage`).
    strip: bool,
    cuts: Vec<(u64, u64)>,
    patterns: &'static [&'static [u8]],
}

impl Sink {
    fn on_event(&mut self, e: Event<'_>) {
        self.seen.events += 1;
        let d = e.data;
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
    pub fn new(ep: Endpoint, strip_usage_chunk: bool) -> Self {
        Self {
            scanner: Scanner::new(MAX_EVENT_BYTES),
            sink: Sink {
                seen: Seen::default(),
                strip: strip_usage_chunk,
                cuts: Vec::new(),
                patterns: output_keys(ep),
            },
            held: BytesMut::new(),
            held_start: 0,
            overflowed: false,
        }
    }

    pub fn seen(&self) -> &Seen {
        &self.sink.seen
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
    /// Not JSON, or too big to read: nothing to charge.
    Unreadable,
}

/// Collects a non-stream response body (by reference) to read its usage.
#[derive(Default)]
pub struct BodyMeter {
    parts: Vec<Bytes>,
    len: usize,
    too_big: bool,
}

impl BodyMeter {
    pub fn on_chunk(&mut self, body: &Option<Bytes>) {
        if let Some(b) = body {
            self.len += b.len();
            if self.len > MAX_BODY_BYTES {
                self.too_big = true;
                self.parts.clear();
            } else if !b.is_empty() {
                self.parts.push(b.clone());
            }
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
    /// member is parsed.
    pub fn usage(&self) -> BodyUsage {
        let Some(bytes) = self.bytes() else {
            return BodyUsage::Unreadable;
        };
        let mut span = None;
        let scanned = crate::json_scan::scan(&bytes, USAGE_SCAN_DEPTH, |key, range| {
            if key == "usage" {
                span = Some(range);
            }
        });
        if scanned.is_err() {
            return BodyUsage::Unreadable;
        }
        let usage = span
            .and_then(|r| bytes.get(r))
            .and_then(|v| serde_json::from_slice::<Value>(v).ok());
        match usage.as_ref().and_then(Usage::from_json) {
            Some(u) => BodyUsage::Reported(u),
            None => BodyUsage::Missing,
        }
    }

    /// The whole parsed body, when it was JSON and not too big (slow path:
    /// estimation when the upstream reported no usage).
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.bytes()?).ok()
    }
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
}
