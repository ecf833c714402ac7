//! Headers across the gateway, both ways through allow-lists.
//!
//! Upstream: the request header is built fresh: only allow-listed client
//! headers are copied, then the provider's own `Host`, key and extra headers
//! are set, and, with tracing on, the gateway's own `traceparent` and
//! `tracestate` (the client's, validated, continued). Nothing else the client sent (its key, cookies, proxy auth,
//! hop-by-hop or upgrade headers) can reach a provider.
//!
//! Downstream: of the provider's response header only the allow-listed
//! fields reach the client; the gateway then adds its own.

use crate::base::endpoint::Endpoint;
use crate::base::error::GatewayError;
use crate::telemetry::trace::Propagation;
use crate::upstream::Upstream;
use http::header::{self, HeaderName};
use pingora::http::{RequestHeader, ResponseHeader};

/// Client headers forwarded upstream. Everything else is dropped.
/// (`accept-encoding` is not forwarded: responses stay uncompressed so the
/// stream can be inspected.)
const ALLOWED: &[HeaderName] = &[header::CONTENT_TYPE, header::ACCEPT, header::USER_AGENT];

/// Provider response headers passed on to clients: what the body's bytes
/// mean and how they are framed (the framing fields are adjusted later
/// wherever the body is rewritten), caching, and the provider's retry hint
/// on a passed-on 429/503. Everything else is dropped: account and project
/// ids (`openai-organization`, `openai-project`), cookies, the provider's
/// own rate-limit and request-id headers (which describe the gateway's
/// account, not the client's), timing (`openai-processing-ms`), `server`,
/// `alt-svc`, `keep-alive` and anything custom. The gateway adds its own
/// `x-request-id`, `x-ratelimit-*` and route header after this filter.
const RESPONSE_ALLOWED: &[HeaderName] = &[
    header::CONTENT_TYPE,
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::CONTENT_ENCODING,
    header::CACHE_CONTROL,
    header::RETRY_AFTER,
];

/// OpenAI's millisecond `Retry-After`, allowed with it.
const RETRY_AFTER_MS: &str = "retry-after-ms";

/// Drops every provider response header that is not in the allow-list.
pub(crate) fn client_response(resp: &mut ResponseHeader) {
    let dropped: Vec<HeaderName> = resp
        .headers
        .keys()
        .filter(|k| !RESPONSE_ALLOWED.contains(k) && k.as_str() != RETRY_AFTER_MS)
        .cloned()
        .collect();
    for name in &dropped {
        resp.remove_header(name);
    }
}

/// Header carrying the request id, both ways.
pub(crate) const REQUEST_ID: &str = "x-request-id";

/// Builds the header this attempt sends to `up`, with `auth` (the
/// attempt's key: its pool key's or the provider's) in the kind's key
/// header; `trace` is the W3C trace context for it (the gateway's own,
/// never the client's header copied).
pub(crate) fn upstream_request(
    client: &RequestHeader,
    up: &Upstream,
    auth: Option<&http::HeaderValue>,
    ep: Endpoint,
    body_len: usize,
    request_id: &str,
    trace: Option<Propagation>,
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
    if let Some(auth) = auth {
        set(&mut req, up.auth_name.clone(), auth.clone())?;
    }
    set(&mut req, header::CONTENT_LENGTH, body_len.into())?;
    if let Ok(v) = http::HeaderValue::from_str(request_id) {
        set(&mut req, HeaderName::from_static(REQUEST_ID), v)?;
    }
    if let Some(t) = trace {
        set(
            &mut req,
            HeaderName::from_static("traceparent"),
            t.traceparent,
        )?;
        if let Some(state) = t.tracestate {
            set(&mut req, HeaderName::from_static("tracestate"), state)?;
        }
    }
    Ok(req)
}

/// The client's `x-request-id` when it is short and printable, else `None`.
pub(crate) fn client_request_id(client: &RequestHeader) -> Option<String> {
    let v = client.headers.get(REQUEST_ID)?.to_str().ok()?;
    let ok = !v.is_empty()
        && v.len() <= 128
        && v.bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\');
    ok.then(|| v.to_string())
}

/// A new unique request id: a per-process random prefix and a counter.
pub(crate) fn new_request_id() -> String {
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
    request_id_text(seed, n as u32)
}

/// `seed` and `n` as 16 and 8 lowercase hex digits (what
/// `format!("{seed:016x}{n:08x}")` writes, without the formatter's cost on
/// every request).
fn request_id_text(seed: u64, n: u32) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(24);
    for shift in (0..16).rev() {
        out.push(char::from(HEX[((seed >> (shift * 4)) & 0xf) as usize]));
    }
    for shift in (0..8).rev() {
        out.push(char::from(HEX[((n >> (shift * 4)) & 0xf) as usize]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #[test]
        fn request_ids_are_written_as_the_formatter_writes_them(seed: u64, n: u32) {
            proptest::prop_assert_eq!(request_id_text(seed, n), format!("{seed:016x}{n:08x}"));
        }
    }

    #[test]
    fn only_allow_listed_response_headers_remain() {
        let mut r = ResponseHeader::build(429, None).unwrap();
        for (k, v) in [
            ("Content-Type", "application/json"),
            ("content-length", "12"),
            ("retry-after", "7"),
            ("retry-after-ms", "7000"),
            ("cache-control", "no-cache"),
            ("openai-organization", "org-secret"),
            ("openai-project", "proj_1"),
            ("set-cookie", "__cf_bm=abc"),
            ("set-cookie", "other=1"),
            ("x-ratelimit-remaining-requests", "9"),
            ("x-request-id", "req_upstream"),
            ("openai-processing-ms", "12"),
            ("server", "cloudflare"),
            ("keep-alive", "timeout=5"),
            ("x-custom", "1"),
        ] {
            r.append_header(k.to_string(), v).unwrap();
        }
        client_response(&mut r);
        let mut left: Vec<&str> = r.headers.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(
            left,
            [
                "cache-control",
                "content-length",
                "content-type",
                "retry-after",
                "retry-after-ms"
            ]
        );
        // The case-preserving name map agrees (it is what goes on the wire).
        let mut wire = Vec::new();
        r.header_to_h1_wire(&mut wire);
        let wire = String::from_utf8(wire).unwrap().to_ascii_lowercase();
        assert!(
            !wire.contains("set-cookie") && !wire.contains("openai"),
            "{wire}"
        );
        assert!(wire.contains("content-type: application/json"), "{wire}");
    }
}
