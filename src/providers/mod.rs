//! Provider kinds. `openai` is a passthrough handled by the proxy itself;
//! `mock` answers locally; `dialect` holds what `anthropic` and `azure`
//! speak differently.

pub mod dialect;
pub mod mock;
