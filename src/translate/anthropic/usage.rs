//! Anthropic token counts, as they arrive, and their OpenAI form.

use crate::accounting::Usage;
use crate::translate::chat::CacheUsage;
use serde::Deserialize;
use serde_json::Value;

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

    /// The counts in the shape every cache-counting provider shares.
    fn common(&self) -> CacheUsage {
        CacheUsage {
            input: self.input_tokens,
            output: self.output_tokens,
            cache_read: self.cache_read_input_tokens,
            cache_write: self.cache_creation_input_tokens,
        }
    }

    /// Prompt tokens as OpenAI counts them (cache reads and writes
    /// included; saturating).
    pub fn prompt(&self) -> u64 {
        self.common().prompt()
    }

    pub fn usage(&self) -> Usage {
        self.common().usage()
    }

    /// OpenAI's `usage` object.
    pub fn openai_json(&self) -> Value {
        self.common().openai_json()
    }
}
