//! A whole Anthropic Messages response → an OpenAI `chat.completion`.

use super::usage::Tokens;
use crate::accounting::Usage;
use crate::base::error::GatewayError;
use crate::translate::ResponseOpts;
use bytes::Bytes;
use serde_json::{json, Map, Value};

/// Anthropic `stop_reason` → OpenAI `finish_reason`.
pub fn finish_reason(stop: &str) -> &'static str {
    match stop {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        // end_turn, stop_sequence, pause_turn
        _ => "stop",
    }
}

/// Translates a non-stream Messages response. An unreadable body is an
/// upstream error.
pub fn chat_response(body: &[u8], opts: &ResponseOpts) -> Result<(Bytes, Usage), GatewayError> {
    let doc: Value = serde_json::from_slice(body).map_err(|_| GatewayError::UpstreamError)?;
    if doc.get("type").and_then(Value::as_str) != Some("message") {
        return Err(GatewayError::UpstreamError);
    }
    let mut text = String::new();
    let mut reasoning = String::new();
    let mut calls = Vec::new();
    for block in doc
        .get("content")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        match block.get("type").and_then(Value::as_str) {
            Some("text") => text.push_str(block.get("text").and_then(Value::as_str).unwrap_or("")),
            Some("thinking") => {
                reasoning.push_str(block.get("thinking").and_then(Value::as_str).unwrap_or(""))
            }
            Some("tool_use") => {
                let input = block.get("input").cloned().unwrap_or_else(|| json!({}));
                calls.push(json!({
                    "id": block.get("id").and_then(Value::as_str).unwrap_or(""),
                    "type": "function",
                    "function": {
                        "name": block.get("name").and_then(Value::as_str).unwrap_or(""),
                        "arguments": input.to_string(),
                    },
                }));
            }
            _ => {}
        }
    }
    let mut message = Map::new();
    message.insert("role".into(), Value::from("assistant"));
    message.insert(
        "content".into(),
        if text.is_empty() && !calls.is_empty() {
            Value::Null
        } else {
            Value::from(text)
        },
    );
    if !reasoning.is_empty() {
        message.insert("reasoning_content".into(), Value::from(reasoning));
    }
    if !calls.is_empty() {
        message.insert("tool_calls".into(), Value::Array(calls));
    }
    message.insert("refusal".into(), Value::Null);
    let finish = doc
        .get("stop_reason")
        .and_then(Value::as_str)
        .map_or("stop", finish_reason);
    let tokens = doc.get("usage").map(Tokens::from_json).unwrap_or_default();
    let out = json!({
        "id": doc.get("id").and_then(Value::as_str).unwrap_or(opts.request_id),
        "object": "chat.completion",
        "created": crate::base::clock::unix_secs(),
        "model": opts.model,
        "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish}],
        "usage": tokens.openai_json(),
    });
    Ok((Bytes::from(out.to_string()), tokens.usage()))
}
