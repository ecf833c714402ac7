//! Provider kinds. `openai` is a passthrough handled by the proxy itself;
//! `mock` answers locally.

pub mod mock;
