//! A whole Converse response → an OpenAI `chat.completion`, and Bedrock's
//! token counts.

use crate::accounting::Usage;
use crate::base::error::GatewayError;
use crate::translate::ResponseOpts;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Map, Value};

/// Converse `stopReason` → OpenAI `finish_reason`.
pub fn finish_reason(stop: &str) -> &'static str {
    match stop {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "guardrail_intervened" | "content_filtered" => "content_filter",
        // end_turn, stop_sequence
        _ => "stop",
    }
}

/// Bedrock's `usage` object (Converse and the stream's `metadata`).
/// `inputTokens` excludes the cache reads and writes, which OpenAI counts
/// inside `prompt_tokens`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Tokens {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_input_tokens: u64,
    pub cache_write_input_tokens: u64,
}

impl Tokens {
    /// Prompt tokens as OpenAI counts them (saturating).
    pub fn prompt(&self) -> u64 {
        self.input_tokens
            .saturating_add(self.cache_read_input_tokens)
            .saturating_add(self.cache_write_input_tokens)
    }

    /// The gateway's usage record.
    pub fn usage(&self) -> Usage {
        Usage {
            prompt: self.prompt(),
            completion: self.output_tokens,
            cached: self.cache_read_input_tokens,
            reasoning: 0,
            cache_write: self.cache_write_input_tokens,
        }
    }

    /// OpenAI's `usage` object.
    pub fn openai_json(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt(),
            "completion_tokens": self.output_tokens,
            "total_tokens": self.prompt().saturating_add(self.output_tokens),
            "prompt_tokens_details": {"cached_tokens": self.cache_read_input_tokens},
            "completion_tokens_details": {"reasoning_tokens": 0},
        })
    }
}

/// Translates a non-stream Converse response. An unreadable body, or one
/// without `output.message`, is an upstream error.
pub fn chat_response(body: &[u8], opts: &ResponseOpts) -> Result<(Bytes, Usage), GatewayError> {
    let doc: Value = serde_json::from_slice(body).map_err(|_| GatewayError::UpstreamError)?;
    let content = doc
        .pointer("/output/message/content")
        .and_then(Value::as_array)
        .ok_or(GatewayError::UpstreamError)?;
    let mut text = String::new();
    let mut reasoning = String::new();
    let mut calls = Vec::new();
    for block in content {
        if let Some(t) = block.get("text").and_then(Value::as_str) {
            text.push_str(t);
        } else if let Some(r) = block
            .pointer("/reasoningContent/reasoningText/text")
            .and_then(Value::as_str)
        {
            reasoning.push_str(r);
        } else if let Some(u) = block.get("toolUse") {
            let input = u.get("input").cloned().unwrap_or_else(|| json!({}));
            calls.push(json!({
                "id": u.get("toolUseId").and_then(Value::as_str).unwrap_or(""),
                "type": "function",
                "function": {
                    "name": u.get("name").and_then(Value::as_str).unwrap_or(""),
                    "arguments": input.to_string(),
                },
            }));
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
        .get("stopReason")
        .and_then(Value::as_str)
        .map_or("stop", finish_reason);
    let tokens: Tokens = doc
        .get("usage")
        .and_then(|u| Tokens::deserialize(u).ok())
        .unwrap_or_default();
    let out = json!({
        "id": opts.request_id,
        "object": "chat.completion",
        "created": crate::base::clock::unix_secs(),
        "model": opts.model,
        "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish}],
        "usage": tokens.openai_json(),
    });
    Ok((Bytes::from(out.to_string()), tokens.usage()))
}
