//! A whole Converse response → an OpenAI `chat.completion`, and Bedrock's
//! token counts.

use crate::accounting::Usage;
use crate::base::error::GatewayError;
use crate::translate::chat::{self, CacheUsage};
use crate::translate::ResponseOpts;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;

/// Converse `stopReason` → OpenAI `finish_reason` (the table is
/// `translate::chat`'s, shared with Anthropic).
pub fn finish_reason(stop: &str) -> &'static str {
    chat::finish_reason(stop)
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
    /// The counts in the shape every cache-counting provider shares.
    fn common(&self) -> CacheUsage {
        CacheUsage {
            input: self.input_tokens,
            output: self.output_tokens,
            cache_read: self.cache_read_input_tokens,
            cache_write: self.cache_write_input_tokens,
        }
    }

    /// Prompt tokens as OpenAI counts them (saturating).
    pub fn prompt(&self) -> u64 {
        self.common().prompt()
    }

    /// The gateway's usage record.
    pub fn usage(&self) -> Usage {
        self.common().usage()
    }

    /// OpenAI's `usage` object.
    pub fn openai_json(&self) -> Value {
        self.common().openai_json()
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
    let mut message = chat::Message::default();
    for block in content {
        if let Some(t) = block.get("text").and_then(Value::as_str) {
            message.text.push_str(t);
        } else if let Some(r) = block
            .pointer("/reasoningContent/reasoningText/text")
            .and_then(Value::as_str)
        {
            message.reasoning.push_str(r);
        } else if let Some(u) = block.get("toolUse") {
            let str_of = |k: &str| u.get(k).and_then(Value::as_str).unwrap_or("");
            message.tool_call(str_of("toolUseId"), str_of("name"), u.get("input"));
        }
    }
    let finish = doc
        .get("stopReason")
        .and_then(Value::as_str)
        .map_or("stop", finish_reason);
    let tokens: Tokens = doc
        .get("usage")
        .and_then(|u| Tokens::deserialize(u).ok())
        .unwrap_or_default();
    let out = message.completion(opts.request_id, opts.model, finish, tokens.openai_json());
    Ok((Bytes::from(out.to_string()), tokens.usage()))
}
