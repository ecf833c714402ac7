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
    /// Answered from the response cache: the stored answer's reported
    /// usage, which no provider spent again.
    Cache,
}

impl UsageSource {
    /// The `usage_source` value in the access log and on `/metrics`.
    pub fn label(self) -> &'static str {
        match self {
            UsageSource::Reported => "reported",
            UsageSource::Estimated => "estimated",
            UsageSource::Reserved => "reserved",
            UsageSource::Cache => "cache",
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

    /// [`Usage::from_json`] read straight from a `usage` object's JSON text
    /// (already validated: a member of a scanned response), without building
    /// a document: the same fields, the same rules (a count that is not a
    /// non-negative integer counts 0; of repeated keys the last wins).
    /// `None` if it is not an object.
    pub fn from_json_text(text: &[u8]) -> Option<Usage> {
        /// The count fields and the detail objects, as spans of `text`.
        #[derive(Default)]
        struct Spans {
            responses_shape: bool,
            counts: [Option<std::ops::Range<usize>>; 4],
            details: [Option<std::ops::Range<usize>>; 4],
        }
        const COUNTS: [&str; 4] = [
            "prompt_tokens",
            "completion_tokens",
            "input_tokens",
            "output_tokens",
        ];
        const DETAILS: [&str; 4] = [
            "prompt_tokens_details",
            "completion_tokens_details",
            "input_tokens_details",
            "output_tokens_details",
        ];
        const DEPTH: usize = 64;
        let mut s = Spans::default();
        crate::json_scan::scan(text, DEPTH, |key, range| {
            if let Some(i) = COUNTS.iter().position(|c| *c == key) {
                s.responses_shape |= i >= 2;
                s.counts[i] = Some(range);
            } else if let Some(i) = DETAILS.iter().position(|d| *d == key) {
                s.details[i] = Some(range);
            }
        })
        .ok()?;
        let count = |r: &Option<std::ops::Range<usize>>| {
            r.as_ref()
                .and_then(|r| text.get(r.clone()))
                .and_then(|b| std::str::from_utf8(b).ok())
                .and_then(|t| t.parse::<u64>().ok())
                .unwrap_or(0)
        };
        // One count inside a details object (`None`-safe: a details value
        // that is not an object counts 0).
        let detail = |r: &Option<std::ops::Range<usize>>, field: &str| {
            let Some(inner) = r.as_ref().and_then(|r| text.get(r.clone())) else {
                return 0;
            };
            let mut found = None;
            let scanned = crate::json_scan::scan(inner, DEPTH, |key, range| {
                if key == field {
                    found = Some(range);
                }
            });
            match (scanned, found) {
                (Ok(()), Some(range)) => inner
                    .get(range)
                    .and_then(|b| std::str::from_utf8(b).ok())
                    .and_then(|t| t.parse::<u64>().ok())
                    .unwrap_or(0),
                _ => 0,
            }
        };
        let (p, c, d) = if s.responses_shape {
            (2, 3, 2)
        } else {
            (0, 1, 0)
        };
        Some(Usage {
            prompt: count(&s.counts[p]),
            completion: count(&s.counts[c]),
            cached: detail(&s.details[d], "cached_tokens"),
            reasoning: detail(&s.details[d + 1], "reasoning_tokens"),
            cache_write: 0,
        })
    }

    /// Usage in a rerank answer: Jina's and Voyage's `usage`
    /// (`prompt_tokens`, else `total_tokens`), else Cohere's
    /// `meta.billed_units.input_tokens`. `None` when none of them counts a
    /// token (Cohere bills rerank in search units): the prompt is then
    /// estimated, never charged 0.
    pub fn find_rerank(doc: &Value) -> Option<Usage> {
        let u = doc.get("usage");
        let prompt = [
            u.and_then(|u| u.get("prompt_tokens")),
            u.and_then(|u| u.get("total_tokens")),
            u.and_then(|u| u.get("input_tokens")),
            doc.get("meta")
                .and_then(|m| m.get("billed_units"))
                .and_then(|b| b.get("input_tokens")),
        ]
        .into_iter()
        .flatten()
        .filter_map(Value::as_u64)
        .find(|n| *n > 0)?;
        Some(Usage {
            prompt,
            ..Usage::default()
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
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn rerank_usage_is_read_from_jina_voyage_or_cohere_shapes() {
        let p = |v: Value| Usage::find_rerank(&v).map(|u| u.prompt);
        assert_eq!(p(json!({"usage": {"total_tokens": 12}})), Some(12));
        assert_eq!(
            p(json!({"usage": {"prompt_tokens": 9, "total_tokens": 12}})),
            Some(9)
        );
        assert_eq!(
            p(json!({"meta": {"billed_units": {"input_tokens": 5}}})),
            Some(5)
        );
        assert_eq!(
            p(json!({"meta": {"billed_units": {"search_units": 1}}})),
            None
        );
        assert_eq!(p(json!({"usage": {"total_tokens": 0}})), None);
    }

    /// A JSON value a provider might put where a count goes.
    fn count_value() -> impl Strategy<Value = String> {
        prop_oneof![
            (0u64..u64::MAX).prop_map(|n| n.to_string()),
            Just("18446744073709551616".to_string()),
            (-50i64..0).prop_map(|n| n.to_string()),
            Just("-0".to_string()),
            Just("12.0".to_string()),
            Just("1e3".to_string()),
            Just("null".to_string()),
            Just("\"7\"".to_string()),
            Just("[1]".to_string()),
        ]
    }

    /// A usage-like object: known and unknown keys (repeats included),
    /// counts of any shape, details objects or other values.
    fn usage_text() -> impl Strategy<Value = String> {
        let key = prop_oneof![
            Just("prompt_tokens"),
            Just("completion_tokens"),
            Just("input_tokens"),
            Just("output_tokens"),
            Just("total_tokens"),
            Just("x"),
        ];
        let details_key = prop_oneof![
            Just("prompt_tokens_details"),
            Just("completion_tokens_details"),
            Just("input_tokens_details"),
            Just("output_tokens_details"),
        ];
        let inner = prop::collection::vec(
            (
                prop_oneof![Just("cached_tokens"), Just("reasoning_tokens"), Just("y")],
                count_value(),
            ),
            0..4,
        )
        .prop_map(|m| {
            let body: Vec<String> = m.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
            format!("{{{}}}", body.join(","))
        });
        let member = prop_oneof![
            (key, count_value()).prop_map(|(k, v)| format!("\"{k}\":{v}")),
            (details_key.clone(), inner).prop_map(|(k, v)| format!("\"{k}\": {v}")),
            (details_key, count_value()).prop_map(|(k, v)| format!("\"{k}\":{v}")),
        ];
        prop::collection::vec(member, 0..8).prop_map(|m| format!("{{{}}}", m.join(",")))
    }

    proptest! {
        /// The text reader and the `Value` reader agree on every object.
        #[test]
        fn the_text_reader_agrees_with_the_value_reader(text in usage_text()) {
            let doc: Value = serde_json::from_str(&text).unwrap();
            prop_assert_eq!(Usage::from_json_text(text.as_bytes()), Usage::from_json(&doc), "{}", text);
        }
    }

    #[test]
    fn the_text_reader_refuses_what_is_not_an_object() {
        for text in ["[]", "1", "null", "\"usage\""] {
            assert_eq!(Usage::from_json_text(text.as_bytes()), None, "{text}");
        }
    }

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
