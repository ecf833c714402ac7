//! `kind: bedrock`: the OpenAI Chat Completions dialect to and from AWS
//! Bedrock's Converse API, and Embeddings through `InvokeModel`.
//!
//! - [`chat_request`]: Chat Completions body → `Converse` /
//!   `ConverseStream` body (the model id and the stream choice travel in the
//!   path, see [`converse_path`]).
//! - [`chat_response`]: a whole `Converse` response → a `chat.completion`.
//! - [`ChatStream`]: ConverseStream events → `chat.completion.chunk`
//!   events; [`EventPipe`] runs the binary event-stream decoder
//!   (`eventstream`) and the translator chunk by chunk.
//! - [`embed_request`] / [`embed_response`]: Embeddings ↔ Titan / Cohere
//!   `InvokeModel` bodies.
//! - [`error`] / [`exception`]: Bedrock error responses and stream
//!   exceptions → the gateway's OpenAI-format error.
//!
//! Decisions worth knowing (also in docs/providers.md):
//! - `system` and `developer` messages become `system` text blocks, in order.
//! - Consecutive turns of one role are merged (Converse wants user and
//!   assistant turns to alternate); `tool` results become `toolResult` blocks
//!   of a user turn.
//! - Images: base64 data URLs become `image.source.bytes` (checked to be
//!   base64), `s3://` URLs `image.source.s3Location`; http(s) URLs are
//!   refused with a 400 naming the field, since Converse needs the bytes.
//! - `tool_choice: none` drops the tools (Converse has no `none`), unless the
//!   conversation holds tool blocks, which is refused.
//! - Bedrock returns no response id: the gateway's request id is used.
//! - Usage: `prompt_tokens` = `inputTokens` + `cacheReadInputTokens` +
//!   `cacheWriteInputTokens`; cache reads are `cached_tokens`.

mod embed;
mod error;
pub mod limits;
mod request;
mod response;
mod stream;

pub use embed::{embed_request, embed_response, EmbedFamily};
pub use error::{error, exception, retryable, throttled, ERROR_TYPE_HEADER};
pub use request::chat_request;
pub use response::{chat_response, finish_reason, Tokens};
pub use stream::{ChatStream, EventPipe};

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// Characters left as they are in a path segment (RFC 3986 unreserved).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// The `Content-Type` of a ConverseStream response.
pub const EVENT_STREAM_TYPE: &str = "application/vnd.amazon.eventstream";

/// A model id (or ARN) as one percent-encoded path segment: `:` and `/`
/// are encoded, as the AWS SDKs do.
pub fn model_segment(model: &str) -> String {
    utf8_percent_encode(model, SEGMENT).to_string()
}

/// The path of a Converse call for `model`.
pub fn converse_path(model: &str, stream: bool) -> String {
    let m = model_segment(model);
    if stream {
        format!("/model/{m}/converse-stream")
    } else {
        format!("/model/{m}/converse")
    }
}

/// The path of an `InvokeModel` call (embeddings) for `model`.
pub fn invoke_path(model: &str) -> String {
    format!("/model/{}/invoke", model_segment(model))
}

#[cfg(test)]
mod tests;
