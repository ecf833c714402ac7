//! Embeddings on Bedrock through `InvokeModel` (`/model/{id}/invoke`):
//! Amazon Titan Text Embeddings (v1, v2) and Cohere Embed (v3, v4). Other
//! models are refused with a 400 naming `model`.

use super::limits::MAX_COHERE_TEXTS;
use crate::accounting::Usage;
use crate::base::error::GatewayError;
use crate::translate::Unsupported;
use bytes::Bytes;
use serde_json::{json, Value};

/// The embedding model family, from the model id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmbedFamily {
    /// `amazon.titan-embed-text-v1`: one text, no `dimensions`.
    TitanV1,
    /// `amazon.titan-embed-text-v2:0`: one text, `dimensions` 256/512/1024.
    TitanV2,
    /// `cohere.embed-english-v3`, `cohere.embed-multilingual-v3`: up to 96
    /// texts, no `dimensions`.
    CohereV3,
    /// `cohere.embed-v4:0`: up to 96 texts, `dimensions` 256/512/1024/1536.
    CohereV4,
}

impl EmbedFamily {
    /// The family of a model id (or an ARN / inference profile naming one).
    pub fn of(model: &str) -> Option<EmbedFamily> {
        let m = model.rsplit('/').next().unwrap_or(model);
        if m.contains("amazon.titan-embed-text-v2") {
            Some(EmbedFamily::TitanV2)
        } else if m.contains("amazon.titan-embed-text-v1") {
            Some(EmbedFamily::TitanV1)
        } else if m.contains("cohere.embed-v4") {
            Some(EmbedFamily::CohereV4)
        } else if m.contains("cohere.embed-english-v3")
            || m.contains("cohere.embed-multilingual-v3")
        {
            Some(EmbedFamily::CohereV3)
        } else {
            None
        }
    }
}

fn bad(param: &str, message: impl Into<String>) -> Unsupported {
    Unsupported {
        param: param.to_string(),
        message: message.into(),
    }
}

/// The texts of `input`: a string or an array of strings. Token arrays are
/// refused (neither family takes them).
fn texts(req: &Value) -> Result<Vec<&str>, Unsupported> {
    match req.get("input") {
        Some(Value::String(s)) => Ok(vec![s.as_str()]),
        Some(Value::Array(a)) if !a.is_empty() => a
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_str().ok_or_else(|| {
                    bad(
                        &format!("input[{i}]"),
                        "Bedrock embedding models take text only: send `input` as a string or an array of strings.",
                    )
                })
            })
            .collect(),
        _ => Err(bad(
            "input",
            "`input` must be a non-empty string or array of strings.",
        )),
    }
}

/// Translates an OpenAI Embeddings body for `model`'s `InvokeModel` body.
pub fn embed_request(req: &Value, model: &str) -> Result<(Bytes, EmbedFamily), Unsupported> {
    let family = EmbedFamily::of(model).ok_or_else(|| {
        bad(
            "model",
            "Embeddings on Bedrock support Amazon Titan Text Embeddings and Cohere Embed models only.",
        )
    })?;
    if let Some(f) = req.get("encoding_format").filter(|v| !v.is_null()) {
        if f.as_str() != Some("float") {
            return Err(bad(
                "encoding_format",
                "Embeddings on Bedrock are returned as floats only: set `encoding_format` to `float` or leave it out.",
            ));
        }
    }
    let dims = match req.get("dimensions").filter(|v| !v.is_null()) {
        None => None,
        Some(v) => Some(
            v.as_u64()
                .ok_or_else(|| bad("dimensions", "`dimensions` must be a positive integer."))?,
        ),
    };
    let texts = texts(req)?;
    let body = match family {
        EmbedFamily::TitanV1 | EmbedFamily::TitanV2 => {
            if texts.len() != 1 {
                return Err(bad(
                    "input",
                    "Titan embedding models embed one text per request: send `input` as one string.",
                ));
            }
            let mut b = json!({ "inputText": texts[0] });
            match (family, dims) {
                (_, None) => {}
                (EmbedFamily::TitanV2, Some(d @ (256 | 512 | 1024))) => {
                    b["dimensions"] = Value::from(d);
                    b["normalize"] = Value::Bool(true);
                }
                (EmbedFamily::TitanV2, Some(_)) => {
                    return Err(bad(
                        "dimensions",
                        "Titan Text Embeddings v2 supports `dimensions` of 256, 512 or 1024.",
                    ))
                }
                _ => {
                    return Err(bad(
                        "dimensions",
                        "Titan Text Embeddings v1 does not support `dimensions`.",
                    ))
                }
            }
            b
        }
        EmbedFamily::CohereV3 | EmbedFamily::CohereV4 => {
            if texts.len() > MAX_COHERE_TEXTS {
                return Err(bad(
                    "input",
                    format!("Cohere embedding models take at most {MAX_COHERE_TEXTS} texts per request."),
                ));
            }
            let mut b = json!({
                "texts": texts,
                "input_type": "search_document",
                "embedding_types": ["float"],
            });
            match (family, dims) {
                (_, None) => {}
                (EmbedFamily::CohereV4, Some(d @ (256 | 512 | 1024 | 1536))) => {
                    b["output_dimension"] = Value::from(d);
                }
                (EmbedFamily::CohereV4, Some(_)) => {
                    return Err(bad(
                        "dimensions",
                        "Cohere Embed v4 supports `dimensions` of 256, 512, 1024 or 1536.",
                    ))
                }
                _ => {
                    return Err(bad(
                        "dimensions",
                        "Cohere Embed v3 does not support `dimensions`.",
                    ))
                }
            }
            b
        }
    };
    let bytes = serde_json::to_vec(&body).map_err(|_| bad("", "cannot encode"))?;
    Ok((Bytes::from(bytes), family))
}

/// Translates an `InvokeModel` embeddings response to an OpenAI
/// `list` of embeddings. `header_tokens` is Bedrock's
/// `x-amzn-bedrock-input-token-count` header, which Cohere needs (its body
/// carries no count). Usage is `None` when neither gives a count: the caller
/// estimates it rather than charging 0.
pub fn embed_response(
    body: &[u8],
    family: EmbedFamily,
    model: &str,
    header_tokens: Option<u64>,
) -> Result<(Bytes, Option<Usage>), GatewayError> {
    let doc: Value = serde_json::from_slice(body).map_err(|_| GatewayError::UpstreamError)?;
    let (vectors, body_tokens): (Vec<&Value>, Option<u64>) = match family {
        EmbedFamily::TitanV1 | EmbedFamily::TitanV2 => {
            let v = doc.get("embedding").ok_or(GatewayError::UpstreamError)?;
            (
                vec![v],
                doc.get("inputTextTokenCount").and_then(Value::as_u64),
            )
        }
        EmbedFamily::CohereV3 | EmbedFamily::CohereV4 => {
            let e = doc.get("embeddings").ok_or(GatewayError::UpstreamError)?;
            // `embedding_types` given: {"float": [[…]]}; else [[…]].
            let list = e
                .get("float")
                .unwrap_or(e)
                .as_array()
                .ok_or(GatewayError::UpstreamError)?;
            (list.iter().collect(), None)
        }
    };
    if vectors.iter().any(|v| !v.is_array()) {
        return Err(GatewayError::UpstreamError);
    }
    let tokens = body_tokens.or(header_tokens);
    let data: Vec<Value> = vectors
        .into_iter()
        .enumerate()
        .map(|(i, v)| json!({"object": "embedding", "index": i, "embedding": v}))
        .collect();
    let t = tokens.unwrap_or(0);
    let out = json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": t, "total_tokens": t},
    });
    let usage = tokens.map(|t| Usage {
        prompt: t,
        ..Usage::default()
    });
    Ok((Bytes::from(out.to_string()), usage))
}
