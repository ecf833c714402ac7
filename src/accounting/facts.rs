//! What a response says about itself (its id, the model that answered, why
//! it stopped), for a traced request's span. Read only when the request is
//! traced: from the stream's events as the meter sees them (a few string
//! searches per event), or from a non-stream body once, at the end. Never
//! any content.

use memchr::memmem;
use std::ops::Range;

/// Finish reasons kept, at most (one per choice).
const MAX_REASONS: usize = 16;
/// Stream events searched for the response's id and model, at most.
const ID_EVENTS: u32 = 4;
/// Longest id or model name kept.
const MAX_NAME: usize = 256;

/// A response's id, model and finish reasons.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResponseFacts {
    pub id: Option<String>,
    pub model: Option<String>,
    pub finish_reasons: Vec<String>,
    /// Stream events looked at for the id and model.
    searched: u32,
}

impl ResponseFacts {
    /// Reads one stream event's data (an OpenAI chunk, a Responses API
    /// event, or an Anthropic Messages event).
    pub fn on_event(&mut self, data: &[u8]) {
        if self.id.is_none() && self.model.is_none() && self.searched < ID_EVENTS {
            self.searched += 1;
            self.read_names(data);
        }
        for key in [&b"\"finish_reason\""[..], b"\"stop_reason\""] {
            self.read_reasons(data, key);
        }
    }

    /// Reads a whole non-stream JSON body: its top-level `id` and `model`,
    /// and the finish reasons of its choices (or Anthropic's `stop_reason`).
    pub fn of_body(body: &[u8]) -> ResponseFacts {
        let mut facts = ResponseFacts::default();
        let mut choices = None;
        let mut stop = None;
        let (id, model, _) = names(body, |key, value| match key {
            "choices" => choices = Some(value),
            "stop_reason" => stop = Some(value),
            _ => {}
        });
        facts.id = id;
        facts.model = model;
        if let Some(r) = choices {
            facts.read_reasons(&body[r], b"\"finish_reason\"");
        }
        if let Some(reason) = stop
            .and_then(|r| body.get(r))
            .and_then(|v| serde_json::from_slice::<String>(v).ok())
        {
            facts.finish_reasons.push(reason);
        }
        facts
    }

    /// The top-level `id` and `model`, or those of a nested `response`
    /// (Responses API events) or `message` (Anthropic's `message_start`).
    fn read_names(&mut self, data: &[u8]) {
        let (id, model, nested) = names(data, |_, _| {});
        if id.is_some() || model.is_some() {
            (self.id, self.model) = (id, model);
        } else if let Some(r) = nested {
            let (id, model, _) = names(&data[r], |_, _| {});
            (self.id, self.model) = (id, model);
        }
    }

    /// Appends every string that follows `"key":` in `d` (a `null` is no
    /// reason). In JSON text a quoted key followed by a colon cannot be
    /// inside a string, so text that mentions the key never matches.
    fn read_reasons(&mut self, d: &[u8], key: &[u8]) {
        for pos in memmem::find_iter(d, key) {
            if self.finish_reasons.len() >= MAX_REASONS {
                return;
            }
            if let Some(s) = string_after(d, pos + key.len()) {
                self.finish_reasons.push(s);
            }
        }
    }
}

/// The top-level string members `id` and `model` of the JSON object `d`,
/// and the span of a `response` or `message` object member; `other` sees
/// every other member.
fn names(
    d: &[u8],
    mut other: impl FnMut(&str, Range<usize>),
) -> (Option<String>, Option<String>, Option<Range<usize>>) {
    let (mut id, mut model, mut nested) = (None, None, None);
    let _ = crate::json_scan::scan(d, 128, |key, value| match &*key {
        "id" => id = Some(value),
        "model" => model = Some(value),
        "response" | "message" if d.get(value.start) == Some(&b'{') => nested = Some(value),
        k => other(k, value),
    });
    let text = |r: Option<Range<usize>>| {
        r.and_then(|r| d.get(r))
            .filter(|v| v.len() <= MAX_NAME + 2)
            .and_then(|v| serde_json::from_slice::<String>(v).ok())
    };
    (text(id), text(model), nested)
}

/// The JSON string after `: ` at `at` (whitespace allowed around the
/// colon), if the value there is a string.
fn string_after(d: &[u8], mut at: usize) -> Option<String> {
    let skip = |d: &[u8], mut i: usize| {
        while d.get(i).is_some_and(u8::is_ascii_whitespace) {
            i += 1;
        }
        i
    };
    at = skip(d, at);
    if d.get(at) != Some(&b':') {
        return None;
    }
    at = skip(d, at + 1);
    if d.get(at) != Some(&b'"') {
        return None;
    }
    let mut j = at + 1;
    let end = loop {
        let k = memchr::memchr2(b'"', b'\\', d.get(j..)?)?;
        if d[j + k] == b'\\' {
            j += k + 2;
        } else {
            break j + k;
        }
    };
    if end - at > MAX_NAME {
        return None;
    }
    serde_json::from_slice(&d[at..=end]).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chat_stream_gives_its_id_model_and_each_choices_reason() {
        let mut f = ResponseFacts::default();
        for e in [
            r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","model":"gpt-4o-2024","choices":[{"index":0,"delta":{"content":"say \"finish_reason\": \"x\""},"finish_reason":null}]}"#,
            r#"{"id":"chatcmpl-1","model":"gpt-4o-2024","choices":[{"index":0,"delta":{},"finish_reason":"stop"},{"index":1,"delta":{},"finish_reason" : "length"}]}"#,
        ] {
            f.on_event(e.as_bytes());
        }
        assert_eq!(f.id.as_deref(), Some("chatcmpl-1"));
        assert_eq!(f.model.as_deref(), Some("gpt-4o-2024"));
        assert_eq!(f.finish_reasons, ["stop", "length"]);
    }

    #[test]
    fn nested_names_and_anthropic_stop_reasons() {
        let mut f = ResponseFacts::default();
        f.on_event(
            br#"{"type":"message_start","message":{"id":"msg_1","model":"claude-x","content":[]}}"#,
        );
        f.on_event(br#"{"type":"message_delta","delta":{"stop_reason":"end_turn"}}"#);
        assert_eq!(
            (f.id.as_deref(), f.model.as_deref()),
            (Some("msg_1"), Some("claude-x"))
        );
        assert_eq!(f.finish_reasons, ["end_turn"]);
        let mut r = ResponseFacts::default();
        r.on_event(br#"{"type":"response.created","response":{"id":"resp_9","model":"o3"}}"#);
        assert_eq!(r.id.as_deref(), Some("resp_9"));
    }

    #[test]
    fn a_body_gives_the_same() {
        let body = br#"{"id":"chatcmpl-2","model":"m-1","choices":[{"message":{"content":"\"finish_reason\":\"no\""},"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":1}}"#;
        let f = ResponseFacts::of_body(body);
        assert_eq!(f.id.as_deref(), Some("chatcmpl-2"));
        assert_eq!(f.model.as_deref(), Some("m-1"));
        assert_eq!(f.finish_reasons, ["tool_calls"]);
        let a = ResponseFacts::of_body(
            br#"{"id":"msg_2","type":"message","model":"claude","content":[],"stop_reason":"max_tokens"}"#,
        );
        assert_eq!(a.finish_reasons, ["max_tokens"]);
        assert_eq!(
            ResponseFacts::of_body(b"not json"),
            ResponseFacts::default()
        );
    }
}
