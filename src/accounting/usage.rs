//! Token usage as providers report it, normalized.

use serde_json::Value;

/// Where the figures came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageSource {
    /// The upstream reported them.
    Reported,
    /// Counted with the tokenizer because the upstream did not report them
    /// (or, for a stream cut short, not all of them: what it reported is
    /// kept, the output is counted from the text that passed).
    Estimated,
    /// Nothing could be counted (a non-stream answer too big, not JSON or
    /// cut short; a request cut off before its answer): the worst case the
    /// request allowed, as its reservation holds it.
    Reserved,
}

impl UsageSource {
    /// The `usage_source` value in the access log and on `/metrics`.
    pub fn label(self) -> &'static str {
        match self {
            UsageSource::Reported => "reported",
            UsageSource::Estimated => "estimated",
            UsageSource::Reserved => "reserved",
        }
    }
}

/// Tokens of one request. `prompt` includes `cached` and `cache_write`;
/// `completion` includes `reasoning`, as OpenAI counts them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt: u64,
    pub completion: u64,
    pub cached: u64,
    pub reasoning: u64,
    /// Prompt tokens written to the provider's cache (Anthropic's
    /// `cache_creation_input_tokens`), recorded apart from `cached` reads.
    pub cache_write: u64,
}

fn n(v: &Value, path: &[&str]) -> u64 {
    let mut cur = v;
    for p in path {
        match cur.get(p) {
            Some(x) => cur = x,
            None => return 0,
        }
    }
    cur.as_u64().unwrap_or(0)
}

impl Usage {
    /// The counts by the `kind` label of `tollgate_tokens_total`. Cache
    /// writes (Anthropic) are listed only when there were some, so other
    /// providers add no always-zero series.
    pub fn by_kind(&self) -> impl Iterator<Item = (&'static str, u64)> {
        [
            ("input", self.prompt),
            ("output", self.completion),
            ("cached_input", self.cached),
            ("reasoning", self.reasoning),
            ("cache_write", self.cache_write),
        ]
        .into_iter()
        .filter(|&(kind, n)| kind != "cache_write" || n > 0)
    }

    /// Reads a `usage` object in the Chat Completions, Completions,
    /// Embeddings or Responses shape. `None` if it is not an object.
    pub fn from_json(u: &Value) -> Option<Usage> {
        if !u.is_object() {
            return None;
        }
        if u.get("input_tokens").is_some() || u.get("output_tokens").is_some() {
            return Some(Usage {
                prompt: n(u, &["input_tokens"]),
                completion: n(u, &["output_tokens"]),
                cached: n(u, &["input_tokens_details", "cached_tokens"]),
                reasoning: n(u, &["output_tokens_details", "reasoning_tokens"]),
                cache_write: 0,
            });
        }
        Some(Usage {
            prompt: n(u, &["prompt_tokens"]),
            completion: n(u, &["completion_tokens"]),
            cached: n(u, &["prompt_tokens_details", "cached_tokens"]),
            reasoning: n(u, &["completion_tokens_details", "reasoning_tokens"]),
            cache_write: 0,
        })
    }

    /// Finds usage in a whole response or stream event: top-level `usage`, or
    /// `response.usage` (Responses API events).
    pub fn find(doc: &Value) -> Option<Usage> {
        doc.get("usage").and_then(Usage::from_json).or_else(|| {
            doc.get("response")
                .and_then(|r| r.get("usage"))
                .and_then(Usage::from_json)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_chat_and_responses_shapes() {
        let chat = json!({"usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120,
            "prompt_tokens_details": {"cached_tokens": 64}, "completion_tokens_details": {"reasoning_tokens": 5}}});
        assert_eq!(
            Usage::find(&chat),
            Some(Usage {
                prompt: 100,
                completion: 20,
                cached: 64,
                reasoning: 5,
                cache_write: 0,
            })
        );
        let resp = json!({"type": "response.completed", "response": {"usage": {"input_tokens": 7,
            "output_tokens": 3, "input_tokens_details": {"cached_tokens": 2}}}});
        assert_eq!(
            Usage::find(&resp),
            Some(Usage {
                prompt: 7,
                completion: 3,
                cached: 2,
                reasoning: 0,
                cache_write: 0,
            })
        );
        assert_eq!(Usage::find(&json!({"usage": null})), None);
    }
}
