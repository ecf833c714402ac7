//! The parts of a Gemini stream event (`GenerateContentResponse`) the stream
//! translator reads, borrowed from the event's bytes. Everything else
//! (safety ratings, citations, model version, token details) is skipped
//! without being built.

use crate::accounting::Usage;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;

#[derive(Deserialize)]
pub(super) struct Event<'a> {
    #[serde(default, borrow)]
    pub candidates: Vec<Candidate<'a>>,
    #[serde(default, rename = "usageMetadata")]
    pub usage: Option<UsageMetadata>,
    #[serde(default, rename = "promptFeedback", borrow)]
    pub feedback: Option<Feedback<'a>>,
    /// An error sent inside the stream.
    #[serde(default, borrow)]
    pub error: Option<&'a RawValue>,
}

#[derive(Deserialize)]
pub(super) struct Candidate<'a> {
    #[serde(default, borrow)]
    pub content: Option<Content<'a>>,
    #[serde(default, rename = "finishReason", borrow)]
    pub finish_reason: Option<Cow<'a, str>>,
    #[serde(default)]
    pub index: Option<u64>,
}

#[derive(Deserialize)]
pub(super) struct Content<'a> {
    #[serde(default, borrow)]
    pub parts: Vec<Part<'a>>,
}

#[derive(Deserialize)]
pub(super) struct Part<'a> {
    #[serde(default, borrow)]
    pub text: Option<Cow<'a, str>>,
    #[serde(default)]
    pub thought: Option<bool>,
    #[serde(default, rename = "functionCall", borrow)]
    pub function_call: Option<FunctionCall<'a>>,
    #[serde(default, rename = "thoughtSignature", borrow)]
    pub thought_signature: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
pub(super) struct FunctionCall<'a> {
    #[serde(default, borrow)]
    pub name: Cow<'a, str>,
    #[serde(default, borrow)]
    pub args: Option<&'a RawValue>,
    #[serde(default, borrow)]
    pub id: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
pub(super) struct Feedback<'a> {
    #[serde(default, rename = "blockReason", borrow)]
    pub block_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "camelCase")]
pub(super) struct UsageMetadata {
    #[serde(default)]
    pub prompt_token_count: u64,
    #[serde(default)]
    pub candidates_token_count: u64,
    #[serde(default)]
    pub cached_content_token_count: u64,
    #[serde(default)]
    pub thoughts_token_count: u64,
    #[serde(default)]
    pub tool_use_prompt_token_count: u64,
}

impl UsageMetadata {
    /// OpenAI's counting: `promptTokenCount` already includes the cached
    /// tokens; tool-use prompt tokens count as prompt; thoughts count as
    /// completion (and as reasoning).
    pub(super) fn usage(&self) -> Usage {
        Usage {
            prompt: self.prompt_token_count + self.tool_use_prompt_token_count,
            completion: self.candidates_token_count + self.thoughts_token_count,
            cached: self.cached_content_token_count,
            reasoning: self.thoughts_token_count,
            ..Default::default()
        }
    }
}
