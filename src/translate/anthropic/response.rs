//! A whole Anthropic Messages response → an OpenAI `chat.completion`.

use super::usage::Tokens;
use crate::accounting::Usage;
use crate::base::error::GatewayError;
use crate::translate::chat;
use crate::translate::ResponseOpts;
use bytes::Bytes;
use serde_json::Value;

/// Anthropic `stop_reason` → OpenAI `finish_reason` (the table is
/// `translate::chat`'s, shared with Bedrock).
pub fn finish_reason(stop: &str) -> &'static str {
    chat::finish_reason(stop)
}

/// Translates a non-stream Messages response. An unreadable body is an
/// upstream error.
pub fn chat_response(body: &[u8], opts: &ResponseOpts) -> Result<(Bytes, Usage), GatewayError> {
    let doc: Value = serde_json::from_slice(body).map_err(|_| GatewayError::UpstreamError)?;
    if doc.get("type").and_then(Value::as_str) != Some("message") {
        return Err(GatewayError::UpstreamError);
    }
    let mut message = chat::Message::default();
    for block in doc
        .get("content")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let str_of = |k: &str| block.get(k).and_then(Value::as_str).unwrap_or("");
        match block.get("type").and_then(Value::as_str) {
            Some("text") => message.text.push_str(str_of("text")),
            Some("thinking") => message.reasoning.push_str(str_of("thinking")),
            Some("tool_use") => message.tool_call(str_of("id"), str_of("name"), block.get("input")),
            _ => {}
        }
    }
    let finish = doc
        .get("stop_reason")
        .and_then(Value::as_str)
        .map_or("stop", finish_reason);
    let tokens = doc.get("usage").map(Tokens::from_json).unwrap_or_default();
    let id = doc
        .get("id")
        .and_then(Value::as_str)
        .unwrap_or(opts.request_id);
    let out = message.completion(id, opts.model, finish, tokens.openai_json());
    Ok((Bytes::from(out.to_string()), tokens.usage()))
}
