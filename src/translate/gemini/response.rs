//! A whole `generateContent` response → a `chat.completion`, and the pieces
//! the stream translator shares with it (usage, finish reasons, ids).

use super::wire::UsageMetadata;
use crate::accounting::Usage;
use crate::base::error::GatewayError;
use crate::translate::ResponseOpts;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Map, Value};

/// Translates a `generateContent` body. The usage is `None` when Gemini sent
/// no `usageMetadata` (the caller estimates).
pub fn chat_response(
    body: &[u8],
    opts: &ResponseOpts,
) -> Result<(Bytes, Option<Usage>), GatewayError> {
    let doc: Value = serde_json::from_slice(body).map_err(|_| GatewayError::UpstreamError)?;
    if !doc.is_object() {
        return Err(GatewayError::UpstreamError);
    }
    let usage = usage(&doc);
    let mut calls = 0usize;
    let mut choices = Vec::new();
    for (pos, cand) in candidates(&doc).iter().enumerate() {
        let index = cand
            .get("index")
            .and_then(Value::as_u64)
            .unwrap_or(pos as u64);
        let parts = Parts::of(cand, opts.request_id, &mut calls);
        let called = !parts.tool_calls.is_empty();
        let mut message = Map::new();
        message.insert("role".into(), "assistant".into());
        message.insert(
            "content".into(),
            parts.text.map_or(Value::Null, Value::String),
        );
        if !parts.tool_calls.is_empty() {
            message.insert("tool_calls".into(), Value::Array(parts.tool_calls));
        }
        choices.push(json!({
            "index": index,
            "message": message,
            "logprobs": null,
            "finish_reason": finish_reason(cand.get("finishReason").and_then(Value::as_str), called),
        }));
    }
    if choices.is_empty() {
        // The prompt was blocked (`promptFeedback.blockReason`), or Gemini
        // answered nothing at all.
        let reason = if blocked(&doc) {
            "content_filter"
        } else {
            "stop"
        };
        choices.push(json!({
            "index": 0,
            "message": { "role": "assistant", "content": null },
            "logprobs": null,
            "finish_reason": reason,
        }));
    }
    let mut out = json!({
        "id": completion_id(opts.request_id),
        "object": "chat.completion",
        "created": now(),
        "model": opts.model,
        "choices": choices,
    });
    if let Some(u) = usage {
        out["usage"] = usage_json(&u);
    }
    Ok((Bytes::from(out.to_string()), usage))
}

/// `candidates`, or an empty list.
pub(super) fn candidates(doc: &Value) -> &[Value] {
    doc.get("candidates")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

pub(super) fn blocked(doc: &Value) -> bool {
    doc.get("promptFeedback")
        .and_then(|f| f.get("blockReason"))
        .is_some_and(|r| !r.is_null())
}

/// The text and tool calls of one candidate.
pub(super) struct Parts {
    /// Text parts joined; `None` when there are none.
    pub text: Option<String>,
    /// OpenAI `tool_calls` entries (without `index`).
    pub tool_calls: Vec<Value>,
}

impl Parts {
    /// Reads `content.parts`. Thought summaries (`thought: true`) are left
    /// out. `calls` numbers generated tool-call ids across the response.
    pub(super) fn of(cand: &Value, request_id: &str, calls: &mut usize) -> Parts {
        let mut text: Option<String> = None;
        let mut tool_calls = Vec::new();
        let parts = cand
            .get("content")
            .and_then(|c| c.get("parts"))
            .and_then(Value::as_array)
            .map_or(&[][..], Vec::as_slice);
        for p in parts {
            if p.get("thought").and_then(Value::as_bool) == Some(true) {
                continue;
            }
            if let Some(t) = p.get("text").and_then(Value::as_str) {
                text.get_or_insert_with(String::new).push_str(t);
            } else if let Some(fc) = p.get("functionCall") {
                let id = match fc.get("id").and_then(Value::as_str) {
                    Some(id) if !id.is_empty() => id.to_string(),
                    _ => call_id(request_id, *calls),
                };
                *calls += 1;
                let args = fc.get("args").filter(|a| !a.is_null());
                let arguments = args.map_or_else(|| "{}".to_string(), Value::to_string);
                let mut call = json!({
                    "id": id,
                    "type": "function",
                    "function": {
                        "name": fc.get("name").and_then(Value::as_str).unwrap_or_default(),
                        "arguments": arguments,
                    },
                });
                if let Some(sig) = p.get("thoughtSignature").and_then(Value::as_str) {
                    call["extra_content"] = signature_json(sig);
                }
                tool_calls.push(call);
            }
        }
        Parts { text, tool_calls }
    }
}

/// Where a function call's thought signature travels in the OpenAI dialect
/// (as Google's own OpenAI-compatible endpoint puts it): clients that send
/// the assistant message back as they got it return it, and Gemini 3 needs
/// it back to accept the conversation.
pub(super) fn signature_json(sig: &str) -> Value {
    json!({ "google": { "thought_signature": sig } })
}

/// A tool-call id for a call Gemini gave none: `call_<request_id>_<n>`.
/// (`request_id` may come as a ready completion id, `chatcmpl-<id>`.)
pub(super) fn call_id(request_id: &str, n: usize) -> String {
    let id = request_id.strip_prefix("chatcmpl-").unwrap_or(request_id);
    format!("call_{id}_{n}")
}

/// The completion id: `chatcmpl-<request_id>` (Gemini's `responseId` is not
/// used, so ids stay traceable to the gateway's request id).
pub(super) fn completion_id(request_id: &str) -> String {
    if request_id.starts_with("chatcmpl-") {
        request_id.to_string()
    } else {
        format!("chatcmpl-{request_id}")
    }
}

pub(super) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Gemini's `finishReason` → OpenAI's `finish_reason`. A candidate that
/// called functions and stopped normally finished with `tool_calls`.
pub(super) fn finish_reason(reason: Option<&str>, called: bool) -> &'static str {
    match reason {
        Some("MAX_TOKENS") => "length",
        Some(
            "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY",
        ) => "content_filter",
        _ if called => "tool_calls",
        _ => "stop",
    }
}

/// `usageMetadata` → usage (see [`UsageMetadata::usage`]).
pub(super) fn usage(doc: &Value) -> Option<Usage> {
    let m = doc.get("usageMetadata").filter(|m| m.is_object())?;
    UsageMetadata::deserialize(m).ok().map(|m| m.usage())
}

/// OpenAI's `usage` object.
pub(super) fn usage_json(u: &Usage) -> Value {
    json!({
        "prompt_tokens": u.prompt,
        "completion_tokens": u.completion,
        "total_tokens": u.prompt + u.completion,
        "prompt_tokens_details": { "cached_tokens": u.cached },
        "completion_tokens_details": { "reasoning_tokens": u.reasoning },
    })
}
