//! The Gemini side of the translated proxy path: which Gemini method a
//! request goes to (it depends on the request, not only on the route), and
//! how its non-stream response is read back.

use crate::accounting::estimate;
use crate::base::endpoint::Endpoint;
use crate::base::error::GatewayError;
use crate::providers::dialect::RouteDialect;
use crate::translate::gemini::{self, EmbedOutput};
use crate::translate::{RequestOpts, ResponseOpts, Translated};
use bytes::Bytes;
use http::Uri;
use serde_json::Value;

/// What a whole (non-stream) Gemini response is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Body {
    Chat,
    Embeddings(EmbedOutput),
}

impl Body {
    pub(crate) fn of(ep: Endpoint, client: Option<&Value>) -> Body {
        match (ep, client) {
            (Endpoint::Embeddings, Some(c)) => Body::Embeddings(EmbedOutput::of(c)),
            (Endpoint::Embeddings, None) => Body::Embeddings(EmbedOutput::Float),
            _ => Body::Chat,
        }
    }
}

/// The translated body and its upstream path: `generateContent` or
/// `streamGenerateContent?alt=sse` for chat, `embedContent` or
/// `batchEmbedContents` for embeddings.
pub(crate) fn request(
    client: &Value,
    opts: &RequestOpts,
    ep: Endpoint,
    dialect: &RouteDialect,
) -> Result<(Translated, Uri), GatewayError> {
    let (t, path) = if ep == Endpoint::Embeddings {
        let (kind, t) = gemini::embed_request(client, opts).map_err(GatewayError::from)?;
        (t, kind.path(opts.model))
    } else {
        let t = gemini::chat_request(client, opts).map_err(GatewayError::from)?;
        (t, gemini::chat_path(opts.model, opts.stream))
    };
    let uri = dialect.uri(&path).ok_or(GatewayError::Internal)?;
    Ok((t, uri))
}

/// A translated whole response, its usage, and whether that usage is an
/// estimate. Chat usage missing from the response is left to the body
/// meter (`None`).
pub(crate) fn response(
    whole: &[u8],
    opts: &ResponseOpts,
    what: Body,
    model: &str,
    client_body: &[u8],
) -> Result<(Bytes, Option<crate::accounting::Usage>, bool), GatewayError> {
    match what {
        Body::Chat => gemini::chat_response(whole, opts).map(|(b, u)| (b, u, false)),
        Body::Embeddings(output) => {
            let count = || estimate::prompt_tokens(model, Endpoint::Embeddings, client_body);
            gemini::embed_response(whole, opts, output, count).map(|(b, u, source)| {
                let estimated = source == crate::accounting::UsageSource::Estimated;
                (b, Some(u), estimated)
            })
        }
    }
}
