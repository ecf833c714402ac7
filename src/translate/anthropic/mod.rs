//! `kind: anthropic`: the OpenAI Chat Completions dialect to and from
//! Anthropic's Messages API.

mod request;
mod response;
mod stream;
mod usage;

pub use request::chat_request;
pub use response::{chat_response, finish_reason};
pub use stream::ChatStream;
pub use usage::Tokens;

/// Maps an Anthropic error response (shared with the other kinds).
pub fn error(status: u16, body: &[u8]) -> crate::base::error::GatewayError {
    crate::translate::errors::provider_error(status, body)
}

#[cfg(test)]
mod tests;
