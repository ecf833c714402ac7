//! The upstream request header, built fresh: only allow-listed client headers
//! are copied, then the provider's own `Host`, key and extra headers are set.
//! Nothing else the client sent (its key, cookies, proxy auth, hop-by-hop or
//! upgrade headers) can reach a provider.

use crate::error::GatewayError;
use crate::proxy::endpoint::Endpoint;
use crate::upstream::Upstream;
use http::header::{self, HeaderName};
use pingora::http::RequestHeader;

/// Client headers forwarded upstream. Everything else is dropped.
/// (`accept-encoding` is not forwarded: responses stay uncompressed so the
/// stream can be inspected.)
const ALLOWED: &[HeaderName] = &[header::CONTENT_TYPE, header::ACCEPT, header::USER_AGENT];

/// Header carrying the request id, both ways.
pub const REQUEST_ID: &str = "x-request-id";

/// Builds the header this attempt sends to `up`.
pub fn upstream_request(
    client: &RequestHeader,
    up: &Upstream,
    ep: Endpoint,
    body_len: usize,
    request_id: &str,
) -> Result<RequestHeader, GatewayError> {
    let uri = up.uri(ep);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut req = RequestHeader::build_no_case("POST", path.as_bytes(), Some(12))
        .map_err(|_| GatewayError::Internal)?;
    let set = |req: &mut RequestHeader, k: HeaderName, v: http::HeaderValue| {
        req.insert_header(k, v).map_err(|_| GatewayError::Internal)
    };
    for name in ALLOWED {
        if let Some(v) = client.headers.get(name) {
            set(&mut req, name.clone(), v.clone())?;
        }
    }
    for (k, v) in &up.extra_headers {
        set(&mut req, k.clone(), v.clone())?;
    }
    set(&mut req, header::HOST, up.host.clone())?;
    if let Some(auth) = &up.auth {
        set(&mut req, up.auth_name.clone(), auth.clone())?;
    }
    set(&mut req, header::CONTENT_LENGTH, body_len.into())?;
    if let Ok(v) = http::HeaderValue::from_str(request_id) {
        set(&mut req, HeaderName::from_static(REQUEST_ID), v)?;
    }
    Ok(req)
}

/// The client's `x-request-id` when it is short and printable, else `None`.
pub fn client_request_id(client: &RequestHeader) -> Option<String> {
    let v = client.headers.get(REQUEST_ID)?.to_str().ok()?;
    let ok = !v.is_empty()
        && v.len() <= 128
        && v.bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\');
    ok.then(|| v.to_string())
}

/// A new unique request id: a per-process random prefix and a counter.
pub fn new_request_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static SEED: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let seed = *SEED.get_or_init(|| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let mix = t ^ (u64::from(std::process::id()) << 32);
        mix.wrapping_mul(0x9E37_79B9_7F4A_7C15)
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{:016x}{:08x}", seed, n as u32)
}
