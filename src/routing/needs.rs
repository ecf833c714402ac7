//! What a request needs from a route, read from its body: capabilities
//! (images → vision, `tools` → tools, a `json_schema` response format →
//! json_schema, `reasoning_effort` → reasoning), the completion it allows,
//! and the caller's `user`. One pass over the top-level members; messages
//! are only looked into when some route lacks vision.

use crate::base::endpoint::Endpoint;
use crate::config::routing::Capability;
use crate::json_scan;
use crate::rewrite::MAX_DEPTH;
use serde::Deserialize;
use std::ops::Range;

/// Every capability bit.
pub const ALL_CAPS: u8 = 0x0f;

/// A request's needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Needs {
    /// Capability bits the request uses.
    pub caps: u8,
    pub stream: bool,
    /// `max_completion_tokens`, `max_tokens` or `max_output_tokens`.
    pub max_output: Option<u64>,
    /// The body's `user`, when it is a non-empty string.
    pub user: Option<String>,
    /// The request's tags (routes reserved for workloads, `by_workload`).
    pub tags: crate::workload::TagSet,
}

impl Needs {
    /// The capabilities in `bits`, in a fixed order.
    pub fn names(bits: u8) -> impl Iterator<Item = Capability> {
        Capability::ALL
            .into_iter()
            .filter(move |c| bits & c.bit() != 0)
    }
}

#[derive(Default)]
struct Spans {
    tools: Option<Range<usize>>,
    functions: Option<Range<usize>>,
    response_format: Option<Range<usize>>,
    text: Option<Range<usize>>,
    reasoning_effort: Option<Range<usize>>,
    reasoning: Option<Range<usize>>,
    messages: Option<Range<usize>>,
    input: Option<Range<usize>>,
    user: Option<Range<usize>>,
    max_output: Option<Range<usize>>,
}

/// Reads the needs from `body` (already validated by `rewrite::parse`).
/// `vision` says whether images must be looked for.
pub fn derive(ep: Endpoint, body: &[u8], stream: bool, vision: bool) -> Needs {
    let mut s = Spans::default();
    let scanned = json_scan::scan(body, MAX_DEPTH, |key, span| {
        let slot = match &*key {
            "tools" => &mut s.tools,
            "functions" => &mut s.functions,
            "response_format" => &mut s.response_format,
            "text" => &mut s.text,
            "reasoning_effort" => &mut s.reasoning_effort,
            "reasoning" => &mut s.reasoning,
            "messages" => &mut s.messages,
            "input" => &mut s.input,
            "user" => &mut s.user,
            "max_completion_tokens" | "max_tokens" | "max_output_tokens" => {
                if s.max_output.is_none() {
                    s.max_output = Some(span);
                }
                return;
            }
            _ => return,
        };
        *slot = Some(span);
    });
    let mut needs = Needs {
        stream,
        ..Needs::default()
    };
    if scanned.is_err() {
        return needs;
    }
    let raw = |r: &Option<Range<usize>>| r.clone().and_then(|r| body.get(r));
    let present = |r: &Option<Range<usize>>| {
        raw(r).is_some_and(|v| !matches!(v, b"null" | b"[]" | b"{}" | b"\"\""))
    };
    if present(&s.tools) || present(&s.functions) {
        needs.caps |= Capability::Tools.bit();
    }
    if present(&s.reasoning_effort) || present(&s.reasoning) {
        needs.caps |= Capability::Reasoning.bit();
    }
    if json_schema_format(raw(&s.response_format)) || text_json_schema(raw(&s.text)) {
        needs.caps |= Capability::JsonSchema.bit();
    }
    if vision {
        let field = match ep {
            Endpoint::Responses => &s.input,
            _ => &s.messages,
        };
        if raw(field).is_some_and(has_image) {
            needs.caps |= Capability::Vision.bit();
        }
    }
    needs.max_output = raw(&s.max_output).and_then(|v| serde_json::from_slice::<u64>(v).ok());
    needs.user = raw(&s.user)
        .and_then(|v| serde_json::from_slice::<String>(v).ok())
        .filter(|u| !u.is_empty());
    needs
}

#[derive(Deserialize)]
struct Typed<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<std::borrow::Cow<'a, str>>,
}

/// `response_format: {"type": "json_schema", ...}`.
fn json_schema_format(v: Option<&[u8]>) -> bool {
    v.and_then(|v| serde_json::from_slice::<Typed>(v).ok())
        .and_then(|t| t.kind)
        .is_some_and(|k| k == "json_schema")
}

/// The Responses API's `text: {"format": {"type": "json_schema"}}`.
fn text_json_schema(v: Option<&[u8]>) -> bool {
    #[derive(Deserialize)]
    struct Text<'a> {
        #[serde(borrow)]
        format: Option<Typed<'a>>,
    }
    v.and_then(|v| serde_json::from_slice::<Text>(v).ok())
        .and_then(|t| t.format)
        .and_then(|f| f.kind)
        .is_some_and(|k| k == "json_schema")
}

/// Whether messages (or Responses input items) carry an image part.
fn has_image(v: &[u8]) -> bool {
    // Most bodies never mention images: skip the parse for them.
    if memchr::memmem::find(v, b"image").is_none() {
        return false;
    }
    #[derive(Deserialize)]
    struct Item<'a> {
        #[serde(rename = "type", borrow)]
        kind: Option<std::borrow::Cow<'a, str>>,
        content: Option<HasImage>,
    }
    match serde_json::from_slice::<Vec<Item>>(v) {
        Ok(items) => items
            .iter()
            .any(|i| i.kind.as_deref().is_some_and(is_image) || i.content.is_some_and(|c| c.0)),
        Err(_) => false,
    }
}

fn is_image(kind: &str) -> bool {
    matches!(kind, "image_url" | "input_image" | "image")
}

/// A message's `content`: a string (no image), or a list of parts, any of
/// which may be an image. Read without buffering the value.
#[derive(Clone, Copy)]
struct HasImage(bool);

impl<'de> Deserialize<'de> for HasImage {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = HasImage;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("message content")
            }
            fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<HasImage, E> {
                Ok(HasImage(false))
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<HasImage, E> {
                Ok(HasImage(false))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<HasImage, A::Error> {
                let mut found = false;
                while let Some(part) = seq.next_element::<Typed<'de>>()? {
                    found |= part.kind.as_deref().is_some_and(is_image);
                }
                Ok(HasImage(found))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<HasImage, A::Error> {
                while map
                    .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(HasImage(false))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(body: &str) -> Vec<&'static str> {
        let n = derive(Endpoint::ChatCompletions, body.as_bytes(), false, true);
        Needs::names(n.caps).map(Capability::label).collect()
    }

    #[test]
    fn reads_each_capability_from_the_body() {
        assert!(
            caps(r#"{"model":"m","messages":[{"role":"user","content":"an image"}]}"#).is_empty()
        );
        assert_eq!(
            caps(
                r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"hi"},{"type":"image_url","image_url":{"url":"data:..."}}]}]}"#
            ),
            ["vision"]
        );
        assert_eq!(
            caps(r#"{"model":"m","tools":[{"type":"function","function":{"name":"f"}}]}"#),
            ["tools"]
        );
        assert!(caps(r#"{"model":"m","tools":[]}"#).is_empty());
        assert!(caps(r#"{"model":"m","tools":null}"#).is_empty());
        assert_eq!(
            caps(r#"{"model":"m","response_format":{"type":"json_schema","json_schema":{}}}"#),
            ["json_schema"]
        );
        assert!(caps(r#"{"model":"m","response_format":{"type":"json_object"}}"#).is_empty());
        assert_eq!(
            caps(r#"{"model":"m","reasoning_effort":"high"}"#),
            ["reasoning"]
        );
    }

    #[test]
    fn reads_max_output_and_user() {
        let n = derive(
            Endpoint::ChatCompletions,
            br#"{"model":"m","max_tokens":300,"user":"u-1"}"#,
            true,
            false,
        );
        assert_eq!(n.max_output, Some(300));
        assert_eq!(n.user.as_deref(), Some("u-1"));
        assert!(n.stream);
    }

    #[test]
    fn responses_input_images_count() {
        let n = derive(
            Endpoint::Responses,
            br#"{"model":"m","input":[{"role":"user","content":[{"type":"input_image","image_url":"x"}]}]}"#,
            false,
            true,
        );
        assert_eq!(n.caps, Capability::Vision.bit());
    }
}
