//! Bounds on the work one client request can cause in the Bedrock
//! translation. Past each, the request is refused with a 400 naming the
//! field (documented in docs/providers.md).

/// Messages per request.
pub const MAX_MESSAGES: usize = 10_000;
/// Content parts (text, image, tool call) per request, across messages.
pub const MAX_PARTS: usize = 20_000;
/// Tools per request (the bound of every translated provider).
pub use crate::translate::bounds::MAX_TOOLS;
/// Stop sequences per request.
pub const MAX_STOP: usize = 16;
/// Texts per embeddings request for Cohere on Bedrock (Cohere's own limit).
pub const MAX_COHERE_TEXTS: usize = 96;
