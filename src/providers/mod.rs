//! Provider kinds. `openai` is a passthrough handled by the proxy itself;
//! `mock` answers locally; `dialect` holds what `anthropic` and `azure`
//! speak differently.

pub mod aws;
pub(crate) mod dialect;
pub mod gcp;
pub(crate) mod mock;
pub mod secret;
pub mod token_client;
