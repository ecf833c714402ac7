//! Anthropic token counts, as they arrive, and their OpenAI form.

use crate::accounting::Usage;
use serde::Deserialize;
use serde_json::{json, Value};

/// Anthropic's usage counters. `input_tokens` excludes the cache reads and
/// writes, which OpenAI counts inside `prompt_tokens`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Tokens {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_creation_input_tokens: u64,
    pub cache_read_input_tokens: u64,
}

/// The same counters, each optional (a `message_delta` carries only the
/// ones that changed).
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(default)]
pub struct Partial {
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    pub cache_creation_input_tokens: Option<u64>,
    pub cache_read_input_tokens: Option<u64>,
}

impl Tokens {
    pub fn from_json(v: &Value) -> Tokens {
        serde_json::from_value(v.clone()).unwrap_or_default()
    }

    /// Applies the counters a later event reports (they are cumulative).
    pub fn update(&mut self, p: &Partial) {
        let set = |slot: &mut u64, v: Option<u64>| {
            if let Some(v) = v {
                *slot = v;
            }
        };
        set(&mut self.input_tokens, p.input_tokens);
        set(&mut self.output_tokens, p.output_tokens);
        set(
            &mut self.cache_creation_input_tokens,
            p.cache_creation_input_tokens,
        );
        set(&mut self.cache_read_input_tokens, p.cache_read_input_tokens);
    }

    pub fn prompt(&self) -> u64 {
        self.input_tokens + self.cache_read_input_tokens + self.cache_creation_input_tokens
    }

    pub fn usage(&self) -> Usage {
        Usage {
            prompt: self.prompt(),
            completion: self.output_tokens,
            cached: self.cache_read_input_tokens,
            reasoning: 0,
            cache_write: self.cache_creation_input_tokens,
        }
    }

    /// OpenAI's `usage` object.
    pub fn openai_json(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt(),
            "completion_tokens": self.output_tokens,
            "total_tokens": self.prompt() + self.output_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cache_read_input_tokens},
            "completion_tokens_details": {"reasoning_tokens": 0},
        })
    }
}
