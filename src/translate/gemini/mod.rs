//! `kind: gemini`: the Generative Language API (v1beta) behind the OpenAI
//! dialect.
//!
//! - [`chat_request`]: Chat Completions body → `generateContent` /
//!   `streamGenerateContent` body (the model and the stream choice travel in
//!   the path, see [`chat_path`]).
//! - [`chat_response`]: a whole `generateContent` response → a
//!   `chat.completion`.
//! - [`ChatStream`]: `streamGenerateContent?alt=sse` events →
//!   `chat.completion.chunk` events, one Gemini chunk at a time.
//! - [`embed_request`] / [`embed_response`]: Embeddings ↔ `embedContent` /
//!   `batchEmbedContents`.
//! - [`error`]: a Gemini error body → the gateway's OpenAI-format error.
//!
//! Decisions worth knowing:
//! - `system` and `developer` messages, wherever they appear, become parts of
//!   `systemInstruction`, in order.
//! - Consecutive turns of the same Gemini role are merged into one turn
//!   (Gemini wants user and model turns to alternate); consecutive `tool`
//!   results therefore land in one `user` turn of `functionResponse` parts.
//! - A `tool` message's content becomes the `functionResponse.response`
//!   object when it is a JSON object, else `{"content": <text>}`.
//! - Images given as base64 data URLs become `inlineData`. `https` image URLs
//!   become `fileData` with the MIME type guessed from the file extension
//!   (png, jpg/jpeg, webp, heic, heif, gif); any other URL is refused as
//!   unsupported, naming the field. Gemini fetches the URL itself: if it
//!   cannot, its 400 reaches the client as an OpenAI-format 400.
//! - Tool parameter schemas and `response_format.json_schema.schema` are
//!   reduced to the OpenAPI subset Gemini's `Schema` accepts (keys such as
//!   `additionalProperties`, `$schema` and `strict` are dropped; a
//!   `["T", "null"]` type becomes `T` with `nullable`).
//! - Tool-call ids Gemini does not provide are `call_<request_id>_<n>`, `n`
//!   counting the calls of the response from 0.

mod embed;
mod error;
mod request;
mod response;
mod schema;
mod stream;
mod wire;

pub use embed::{embed_request, embed_response, EmbedKind, EmbedOutput};
pub use error::error;
pub use request::chat_request;
pub use response::chat_response;
pub use stream::ChatStream;

/// Fuzzing entry point: the schema inliner that `chat_request` runs on
/// tool parameters and `response_format.json_schema.schema`, on its own.
pub fn clean_schema(
    schema: &serde_json::Value,
    budget: &mut crate::translate::bounds::SchemaBudget,
    param: &str,
) -> Result<serde_json::Value, crate::translate::Unsupported> {
    schema::clean(schema, budget, param)
}

/// The resource name of `model`: `models/<model>`, or the name as given
/// when it already names a collection (`tunedModels/…`).
pub fn resource(model: &str) -> String {
    if model.contains('/') {
        model.to_string()
    } else {
        format!("models/{model}")
    }
}

/// The path, below the base URL, of a chat call for `model`.
pub fn chat_path(model: &str, stream: bool) -> String {
    let name = resource(model);
    if stream {
        format!("/{name}:streamGenerateContent?alt=sse")
    } else {
        format!("/{name}:generateContent")
    }
}

#[cfg(test)]
mod tests;
