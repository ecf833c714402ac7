//! The request engine: request logic over runtime types, below the Pingora
//! hooks. It never names the proxy's `Ctx` or Pingora's `Session`
//! (`tests/layers.rs` checks), so the proxy and the hedge race share it.

pub(crate) mod attempts;
