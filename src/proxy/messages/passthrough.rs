//! A Messages request on a `kind: anthropic` route passes through: the
//! client's own body with only `model` spliced, to the provider's
//! `/messages` with the provider's key and `anthropic-version` (set by the
//! provider's dialect). The response goes back untouched; it is only
//! watched for its usage, which Anthropic counts its own way (cache reads
//! and writes outside `input_tokens`).

use crate::accounting::meter::MAX_EVENT_BYTES;
use crate::accounting::Usage;
use crate::base::error::GatewayError;
use crate::config::ProviderKind;
use crate::proxy::ctx::Admitted;
use crate::runtime::RouteRt;
use crate::sse::Scanner;
use crate::translate::anthropic::Tokens;
use bytes::{Bytes, BytesMut};
use pingora::http::RequestHeader;
use serde_json::Value;

/// Whether `route` gets Messages requests as they are.
pub(crate) fn applies(route: &RouteRt) -> bool {
    route.dialect.kind == ProviderKind::Anthropic
}

/// The body for an attempt of a Messages request: on a passthrough route
/// the client's body with the route's model; on a translated route the
/// error that refused the translation, if one did. `Ok(None)` for the
/// usual splice.
pub(crate) fn prepare(req: &Admitted, route: &RouteRt) -> Result<Option<Bytes>, GatewayError> {
    let Some(front) = req.messages.as_deref() else {
        return Ok(None);
    };
    if !applies(route) {
        return front.refused.clone().map_or(Ok(None), Err);
    }
    Ok(Some(crate::rewrite::splice(
        &front.original,
        &front.model_span,
        &route.model_json,
    )))
}

/// Whether an attempt of `req` on `route` is a Messages passthrough.
pub(crate) fn applies_to(req: &Admitted, route: &RouteRt) -> bool {
    req.messages.is_some() && applies(route)
}

/// The client's `anthropic-beta` goes to an Anthropic provider whose config
/// names no betas of its own.
pub(crate) fn patch_request(
    client: &RequestHeader,
    upstream: &mut RequestHeader,
    req: &Admitted,
    route: &RouteRt,
) {
    const BETA: &str = "anthropic-beta";
    if !applies_to(req, route) || upstream.headers.contains_key(BETA) {
        return;
    }
    if let Some(v) = client.headers.get(BETA) {
        let _ = upstream.insert_header(BETA, v.clone());
    }
}

/// Watches a passthrough response for its usage.
pub(crate) enum Watch {
    Stream {
        scanner: Scanner,
        tokens: Option<Tokens>,
    },
    Body(BytesMut),
}

impl Watch {
    pub(crate) fn new(sse: bool) -> Self {
        if sse {
            Watch::Stream {
                scanner: Scanner::new(MAX_EVENT_BYTES),
                tokens: None,
            }
        } else {
            Watch::Body(BytesMut::new())
        }
    }

    /// Reads one chunk (left as it is). Returns the usage once known.
    pub(crate) fn on_chunk(&mut self, chunk: &[u8], eos: bool) -> Option<Usage> {
        match self {
            Watch::Stream { scanner, tokens } => {
                let mut read = |data: &[u8]| stream_event(data, tokens);
                let _ = scanner.feed(chunk, |e| read(e.data));
                if eos {
                    let _ = scanner.finish(|e| read(e.data));
                }
                tokens.map(|t| t.usage())
            }
            Watch::Body(buf) => {
                if buf.len() + chunk.len() <= crate::accounting::meter::MAX_BODY_BYTES {
                    buf.extend_from_slice(chunk);
                }
                if !eos {
                    return None;
                }
                let doc: Value = serde_json::from_slice(buf).ok()?;
                doc.get("usage").map(|u| Tokens::from_json(u).usage())
            }
        }
    }
}

/// `message_start` carries the first counts, `message_delta` the later ones.
fn stream_event(data: &[u8], tokens: &mut Option<Tokens>) {
    let Ok(doc) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    match doc.get("type").and_then(Value::as_str) {
        Some("message_start") => {
            if let Some(u) = doc.get("message").and_then(|m| m.get("usage")) {
                *tokens = Some(Tokens::from_json(u));
            }
        }
        Some("message_delta") => {
            if let Some(u) = doc.get("usage") {
                // Cumulative counts; only those present changed.
                let t = tokens.get_or_insert_with(Tokens::default);
                for (key, slot) in [
                    ("input_tokens", &mut t.input_tokens),
                    ("output_tokens", &mut t.output_tokens),
                    ("cache_read_input_tokens", &mut t.cache_read_input_tokens),
                    (
                        "cache_creation_input_tokens",
                        &mut t.cache_creation_input_tokens,
                    ),
                ] {
                    if let Some(n) = u.get(key).and_then(Value::as_u64) {
                        *slot = n;
                    }
                }
            }
        }
        _ => {}
    }
}
