//! The Bedrock side of the translated proxy path: which operation a
//! request goes to (Converse, ConverseStream or, for embeddings,
//! `InvokeModel`), and how a whole response is read back.

use crate::accounting::{estimate, Usage};
use crate::base::endpoint::Endpoint;
use crate::base::error::GatewayError;
use crate::providers::dialect::RouteDialect;
use crate::translate::bedrock::{self, EmbedFamily};
use crate::translate::{RequestOpts, ResponseOpts, Translated};
use bytes::Bytes;
use http::Uri;
use pingora::http::ResponseHeader;
use serde_json::Value;

/// Bedrock's input-token count of an `InvokeModel` answer (Cohere's body
/// carries none).
const INPUT_TOKENS_HEADER: &str = "x-amzn-bedrock-input-token-count";

/// What a whole (non-stream) Bedrock response is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Body {
    Chat,
    /// An embeddings answer of this family, with the header's token count.
    Embeddings(EmbedFamily, Option<u64>),
}

impl Body {
    pub(crate) fn of(ep: Endpoint, model: &str, resp: &ResponseHeader) -> Body {
        match (ep, EmbedFamily::of(model)) {
            (Endpoint::Embeddings, Some(family)) => {
                let tokens = resp
                    .headers
                    .get(INPUT_TOKENS_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse().ok());
                Body::Embeddings(family, tokens)
            }
            _ => Body::Chat,
        }
    }
}

/// Whether the response is AWS's binary event stream (ConverseStream).
pub(crate) fn is_event_stream(resp: &ResponseHeader) -> bool {
    resp.headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with(bedrock::EVENT_STREAM_TYPE)
        })
}

/// The translated body and its upstream path: Converse or
/// ConverseStream for chat, `InvokeModel` for embeddings.
pub(crate) fn request(
    client: &Value,
    opts: &RequestOpts,
    ep: Endpoint,
    dialect: &RouteDialect,
) -> Result<(Translated, Uri), GatewayError> {
    let (t, path) = if ep == Endpoint::Embeddings {
        let (body, _) = bedrock::embed_request(client, opts.model).map_err(GatewayError::from)?;
        (
            Translated {
                body,
                dropped: Vec::new(),
            },
            bedrock::invoke_path(opts.model),
        )
    } else {
        let t = bedrock::chat_request(client, opts).map_err(GatewayError::from)?;
        (t, bedrock::converse_path(opts.model, opts.stream))
    };
    let uri = dialect.uri(&path).ok_or(GatewayError::Internal)?;
    Ok((t, uri))
}

/// A translated whole response, its usage, and whether that usage is an
/// estimate (an embeddings answer without a token count is estimated from
/// the client's input, never charged 0).
pub(crate) fn response(
    whole: &[u8],
    opts: &ResponseOpts,
    what: Body,
    model: &str,
    client_body: &[u8],
) -> Result<(Bytes, Option<Usage>, bool), GatewayError> {
    match what {
        Body::Chat => bedrock::chat_response(whole, opts).map(|(b, u)| (b, Some(u), false)),
        Body::Embeddings(family, tokens) => {
            let (out, usage) = bedrock::embed_response(whole, family, opts.model, tokens)?;
            Ok(match usage {
                Some(u) => (out, Some(u), false),
                None => {
                    let prompt = estimate::prompt_tokens(model, Endpoint::Embeddings, client_body);
                    let u = Usage {
                        prompt,
                        ..Usage::default()
                    };
                    (out, Some(u), true)
                }
            })
        }
    }
}
