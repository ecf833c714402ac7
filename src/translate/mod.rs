//! Translation between the OpenAI dialect and other providers' dialects.
//!
//! Only routes whose provider is not OpenAI-shaped pay for it: OpenAI-kind
//! routes keep the parse-once splice and the zero-copy stream. Each
//! provider module (`anthropic`, `gemini`, and the reverse direction for the
//! Anthropic Messages endpoint in front) offers the same three pieces:
//!
//! - a request function: the client's parsed body, in the client's dialect,
//!   to the provider's body ([`RequestOpts`] in, [`Translated`] or
//!   [`Unsupported`] out);
//! - a response function: a whole non-stream provider body to the client's
//!   dialect, with its usage;
//! - a [`StreamTranslator`]: provider SSE events in, client SSE bytes out, one
//!   event at a time, holding only the state of the current block.

pub mod messages;

use crate::accounting::Usage;
use bytes::{Bytes, BytesMut};

pub mod gemini;

/// What a request translation needs besides the client's body.
#[derive(Debug, Clone, Copy)]
pub struct RequestOpts<'a> {
    /// The upstream model name of this route.
    pub model: &'a str,
    /// The client asked for a stream.
    pub stream: bool,
    /// Completion tokens to ask for when the body sets no maximum and the
    /// provider requires one (the route's `max_tokens`).
    pub default_max_tokens: Option<u64>,
    /// Drop fields the provider cannot honour (logged) instead of refusing.
    pub drop_unsupported: bool,
}

/// A translated request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Translated {
    pub body: Bytes,
    /// Fields dropped because of `drop_unsupported_params` (for the log line).
    pub dropped: Vec<String>,
}

/// A request field the provider cannot honour: answered as a 400
/// `invalid_request_error` whose `param` is the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported {
    /// The field, as a JSON path such as `messages[2].content[0].type`.
    pub param: String,
    /// Safe to show the client; says what to change.
    pub message: String,
}

/// A field the provider cannot honour: a 400 that names it.
impl From<Unsupported> for crate::base::error::GatewayError {
    fn from(u: Unsupported) -> Self {
        Self::UnsupportedParam {
            message: u.message,
            param: u.param,
        }
    }
}

/// What a response translation needs besides the provider's body.
#[derive(Debug, Clone, Copy)]
pub struct ResponseOpts<'a> {
    /// The model name to report to the client.
    pub model: &'a str,
    /// Used to derive response ids where the provider gives none.
    pub request_id: &'a str,
    /// Emit the final usage chunk in a stream (the client's
    /// `stream_options.include_usage`).
    pub include_usage: bool,
}

/// Rewrites a provider's event stream into the client's, event by event.
pub trait StreamTranslator: Send {
    /// One complete SSE event from the provider (`data` is its `data:` lines
    /// joined with `\n`). Appends zero or more complete client SSE events to
    /// `out`.
    fn event(&mut self, data: &[u8], out: &mut BytesMut);
    /// The provider's stream ended: appends what closes the client's stream
    /// (the usage chunk if asked for, `data: [DONE]`, or the Anthropic
    /// `message_stop`). Called once.
    fn finish(&mut self, out: &mut BytesMut);
    /// Usage seen so far (complete once the provider sent its last event).
    fn usage(&self) -> Option<Usage>;
}

pub mod anthropic;
pub mod bedrock;
pub mod bounds;
pub(crate) mod chat;
pub(crate) mod errors;
pub mod pipe;
