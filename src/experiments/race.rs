//! Racing legs (stub).
