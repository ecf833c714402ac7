//! The Anthropic Messages endpoint in front (`POST /v1/messages`): the
//! client speaks Anthropic, the upstream speaks OpenAI Chat Completions.
//!
//! The reverse of the provider translators, with the same three pieces:
//! [`request`] (Anthropic request → OpenAI request), [`response`] (OpenAI
//! `chat.completion` → Anthropic `message`) and [`stream::MessagesStream`]
//! (OpenAI `chat.completion.chunk` events → Anthropic stream events), plus
//! [`error`], the one renderer of errors in Anthropic's shape.

pub mod error;
pub mod request;
pub mod response;
pub mod stream;

pub use error::{error_body, error_event, error_type};
pub use request::request;
pub use response::response;
pub use stream::MessagesStream;

use bytes::{BufMut, BytesMut};

/// Appends one Anthropic SSE event: `event: <kind>\ndata: <json>\n\n`.
fn push_event(out: &mut BytesMut, kind: &str, data: &serde_json::Value) {
    out.put_slice(b"event: ");
    out.put_slice(kind.as_bytes());
    out.put_slice(b"\ndata: ");
    // Writing a Value to memory cannot fail.
    let _ = serde_json::to_writer(out.writer(), data);
    out.put_slice(b"\n\n");
}

/// An Anthropic message id from an OpenAI completion id (`chatcmpl-abc` →
/// `msg_abc`), or from the request id when the upstream gave none.
fn message_id(openai_id: Option<&str>, request_id: &str) -> String {
    let raw = openai_id
        .map(|s| s.strip_prefix("chatcmpl-").unwrap_or(s))
        .filter(|s| !s.is_empty())
        .unwrap_or(request_id);
    format!("msg_{raw}")
}

/// OpenAI `finish_reason` → Anthropic `stop_reason`. `content_filter`
/// becomes `refusal`, Anthropic's reason for output its safety system
/// stopped; anything unknown ends the turn.
fn stop_reason(finish: &str) -> &'static str {
    match finish {
        "length" => "max_tokens",
        "tool_calls" | "function_call" => "tool_use",
        "content_filter" => "refusal",
        _ => "end_turn",
    }
}

/// Anthropic's `usage` object from OpenAI-counted usage: Anthropic's
/// `input_tokens` excludes the tokens read from and written to the cache.
fn usage_json(u: &crate::accounting::Usage) -> serde_json::Value {
    serde_json::json!({
        "input_tokens": u.prompt.saturating_sub(u.cached + u.cache_write),
        "cache_creation_input_tokens": u.cache_write,
        "cache_read_input_tokens": u.cached,
        "output_tokens": u.completion,
    })
}
