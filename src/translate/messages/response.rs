//! OpenAI `chat.completion` → Anthropic `message`.
//!
//! The first choice's text becomes a `text` block (a `refusal` too), each
//! tool call a `tool_use` block with its arguments parsed (arguments that
//! are not a JSON object become `{}`). `finish_reason` maps as
//! `stop`→`end_turn`, `length`→`max_tokens`, `tool_calls`→`tool_use`,
//! `content_filter`→`refusal`. Usage is counted the Anthropic way:
//! `input_tokens` excludes `cache_read_input_tokens`.

use crate::accounting::Usage;
use crate::translate::ResponseOpts;
use bytes::Bytes;
use serde_json::{json, Value};

/// Why a body could not be translated (the client gets a 502 `api_error`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadResponse(pub &'static str);

/// Translates a whole non-stream OpenAI body. Returns the Anthropic body and
/// the usage it reported (OpenAI-counted: `prompt` includes `cached`).
pub fn response(
    body: &[u8],
    opts: &ResponseOpts<'_>,
) -> Result<(Bytes, Option<Usage>), BadResponse> {
    let doc: Value =
        serde_json::from_slice(body).map_err(|_| BadResponse("the upstream body is not JSON"))?;
    let choice = doc
        .get("choices")
        .and_then(Value::as_array)
        .and_then(|c| c.first())
        .ok_or(BadResponse("the upstream body has no choices"))?;
    let msg = choice.get("message").unwrap_or(&Value::Null);
    let mut content = Vec::new();
    for key in ["content", "refusal"] {
        if let Some(text) = msg
            .get(key)
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
        {
            content.push(json!({"type": "text", "text": text}));
        }
    }
    for call in msg
        .get("tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let f = call.get("function").unwrap_or(&Value::Null);
        let name = f.get("name").and_then(Value::as_str).unwrap_or_default();
        let id = call.get("id").and_then(Value::as_str).unwrap_or_default();
        let args = f.get("arguments").and_then(Value::as_str).unwrap_or("");
        content
            .push(json!({"type": "tool_use", "id": id, "name": name, "input": parse_input(args)}));
    }
    let finish = choice
        .get("finish_reason")
        .and_then(Value::as_str)
        .unwrap_or("stop");
    let usage = doc.get("usage").and_then(Usage::from_json);
    let id = super::message_id(doc.get("id").and_then(Value::as_str), opts.request_id);
    let out = json!({
        "id": id,
        "type": "message",
        "role": "assistant",
        "model": opts.model,
        "content": content,
        "stop_reason": super::stop_reason(finish),
        "stop_sequence": null,
        "usage": super::usage_json(&usage.unwrap_or_default()),
    });
    Ok((Bytes::from(out.to_string()), usage))
}

/// Tool arguments as Anthropic's `input` object.
pub(super) fn parse_input(args: &str) -> Value {
    match serde_json::from_str::<Value>(args) {
        Ok(v @ Value::Object(_)) => v,
        _ => json!({}),
    }
}
