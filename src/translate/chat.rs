//! What the translators of block-and-tool providers (Anthropic's Messages
//! API, Bedrock's Converse) share on the OpenAI side, written once:
//!
//! - reading a Chat Completions request: text-only content, an assistant's
//!   tool calls (arguments parsed within the value budget), the function
//!   tools and `tool_choice`;
//! - writing the answer: the stop reason's `finish_reason`, the
//!   `chat.completion` message, and the stream's `chat.completion.chunk`
//!   events ([`Chunks`]);
//! - their usage counters, cache reads and writes included ([`CacheUsage`]).
//!
//! Each provider keeps only what its wire format does differently.

use crate::accounting::Usage;
use crate::base::clock::unix_secs;
use crate::translate::bounds::{self, ParseError, Values};
use crate::translate::Unsupported;
use bytes::{BufMut, BytesMut};
use serde_json::{json, Map, Value};

/// A field the client got wrong: a 400 naming it.
pub(crate) fn bad(param: &str, what: &str) -> Unsupported {
    Unsupported {
        param: param.to_string(),
        message: format!("`{param}` {what}."),
    }
}

/// Content that may only hold text: a string or an array of text parts,
/// joined. `provider` names the provider in the refusal; `on_part` sees
/// each part's path first (a provider's bound on parts).
pub(crate) fn text_only(
    v: Option<&Value>,
    at: &str,
    provider: &str,
    on_part: &mut dyn FnMut(&str) -> Result<(), Unsupported>,
) -> Result<String, Unsupported> {
    match v {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut s = String::new();
            for (j, p) in parts.iter().enumerate() {
                on_part(&format!("{at}.content[{j}]"))?;
                match (p.get("type").and_then(Value::as_str), p.get("text")) {
                    (Some("text"), Some(Value::String(t))) => s.push_str(t),
                    _ => {
                        return Err(Unsupported {
                            param: format!("{at}.content[{j}].type"),
                            message: format!(
                                "Only text parts are supported here by this model's provider ({provider})."
                            ),
                        })
                    }
                }
            }
            Ok(s)
        }
        Some(_) => Err(bad(
            &format!("{at}.content"),
            "must be a string or an array",
        )),
    }
}

/// One tool call of an assistant message.
pub(crate) struct ToolCall<'a> {
    pub(crate) id: &'a str,
    pub(crate) name: &'a str,
    /// The arguments, parsed (`{}` when empty).
    pub(crate) input: Value,
}

/// An assistant message's `tool_calls`, their arguments parsed within
/// `values` (the request's budget of JSON values). `on_part` sees each
/// call's path first.
pub(crate) fn tool_calls<'a>(
    m: &'a Value,
    at: &str,
    values: &mut Values,
    on_part: &mut dyn FnMut(&str) -> Result<(), Unsupported>,
) -> Result<Vec<ToolCall<'a>>, Unsupported> {
    let Some(calls) = m.get("tool_calls").filter(|c| !c.is_null()) else {
        return Ok(Vec::new());
    };
    let calls = calls
        .as_array()
        .ok_or_else(|| bad(&format!("{at}.tool_calls"), "must be an array"))?;
    let mut out = Vec::with_capacity(calls.len());
    for (k, c) in calls.iter().enumerate() {
        let here = format!("{at}.tool_calls[{k}]");
        on_part(&here)?;
        let id = c
            .get("id")
            .and_then(Value::as_str)
            .ok_or_else(|| bad(&format!("{here}.id"), "must be a string"))?;
        let name = c
            .pointer("/function/name")
            .and_then(Value::as_str)
            .ok_or_else(|| bad(&format!("{here}.function.name"), "must be a string"))?;
        let args = c
            .pointer("/function/arguments")
            .and_then(Value::as_str)
            .unwrap_or("");
        let param = format!("{here}.function.arguments");
        let input = if args.trim().is_empty() {
            json!({})
        } else {
            match values.parse(args.as_bytes()) {
                Ok(v) => v,
                Err(ParseError::Invalid(_)) => {
                    return Err(bad(&param, "must be a JSON object in a string"))
                }
                Err(ParseError::TooMany { .. }) => return Err(bounds::too_many_values(&param)),
            }
        };
        out.push(ToolCall { id, name, input });
    }
    Ok(out)
}

/// One function tool of the request.
pub(crate) struct FunctionTool<'a> {
    pub(crate) name: &'a str,
    pub(crate) description: Option<&'a str>,
    /// Its JSON schema (an empty object schema when none is given).
    pub(crate) parameters: Value,
}

/// The request's `tools` (at most [`bounds::MAX_TOOLS`]). A tool that is
/// not a function goes to `unsupported(param, message)`, which refuses it
/// or notes it as dropped.
pub(crate) fn function_tools<'a>(
    v: &'a Value,
    provider: &str,
    unsupported: &mut dyn FnMut(&str, &str) -> Result<(), Unsupported>,
) -> Result<Vec<FunctionTool<'a>>, Unsupported> {
    let list = v
        .as_array()
        .ok_or_else(|| bad("tools", "must be an array"))?;
    bounds::tools(list.len())?;
    let mut out = Vec::with_capacity(list.len());
    for (i, t) in list.iter().enumerate() {
        if t.get("type").and_then(Value::as_str) != Some("function") {
            unsupported(
                &format!("tools[{i}].type"),
                &format!(
                    "Only `function` tools are supported by this model's provider ({provider})."
                ),
            )?;
            continue;
        }
        let f = t
            .get("function")
            .ok_or_else(|| bad(&format!("tools[{i}].function"), "is required"))?;
        let name = f
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| bad(&format!("tools[{i}].function.name"), "must be a string"))?;
        let parameters = match f.get("parameters") {
            None | Some(Value::Null) => json!({"type": "object", "properties": {}}),
            Some(p @ Value::Object(_)) => p.clone(),
            Some(_) => {
                return Err(bad(
                    &format!("tools[{i}].function.parameters"),
                    "must be an object",
                ))
            }
        };
        out.push(FunctionTool {
            name,
            description: f.get("description").and_then(Value::as_str),
            parameters,
        });
    }
    Ok(out)
}

/// What `tool_choice` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ToolChoice<'a> {
    Auto,
    None,
    Required,
    Function(&'a str),
}

/// Reads `tool_choice`.
pub(crate) fn tool_choice(v: &Value) -> Result<ToolChoice<'_>, Unsupported> {
    match v {
        Value::String(s) => match s.as_str() {
            "auto" => Ok(ToolChoice::Auto),
            "none" => Ok(ToolChoice::None),
            "required" => Ok(ToolChoice::Required),
            _ => Err(bad(
                "tool_choice",
                "must be auto, none, required or a named function",
            )),
        },
        Value::Object(_) => v
            .pointer("/function/name")
            .and_then(Value::as_str)
            .map(ToolChoice::Function)
            .ok_or_else(|| bad("tool_choice.function.name", "must be a string")),
        _ => Err(bad("tool_choice", "must be a string or an object")),
    }
}

/// A provider's stop reason (Anthropic's `stop_reason`, Bedrock's
/// `stopReason`) → OpenAI's `finish_reason`.
pub(crate) fn finish_reason(stop: &str) -> &'static str {
    match stop {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        // Anthropic's refusal; Bedrock's guardrail and content filter.
        "refusal" | "guardrail_intervened" | "content_filtered" => "content_filter",
        // end_turn, stop_sequence, pause_turn
        _ => "stop",
    }
}

/// The assistant message of a whole answer, gathered block by block.
#[derive(Default)]
pub(crate) struct Message {
    pub(crate) text: String,
    pub(crate) reasoning: String,
    calls: Vec<Value>,
}

impl Message {
    /// A tool call block (its input object becomes the arguments string).
    pub(crate) fn tool_call(&mut self, id: &str, name: &str, input: Option<&Value>) {
        let arguments = input.map_or_else(|| "{}".to_string(), Value::to_string);
        self.calls.push(json!({
            "id": id,
            "type": "function",
            "function": {"name": name, "arguments": arguments},
        }));
    }

    /// The `chat.completion` with this message.
    pub(crate) fn completion(self, id: &str, model: &str, finish: &str, usage: Value) -> Value {
        let mut message = Map::new();
        message.insert("role".into(), Value::from("assistant"));
        message.insert(
            "content".into(),
            if self.text.is_empty() && !self.calls.is_empty() {
                Value::Null
            } else {
                Value::from(self.text)
            },
        );
        if !self.reasoning.is_empty() {
            message.insert("reasoning_content".into(), Value::from(self.reasoning));
        }
        if !self.calls.is_empty() {
            message.insert("tool_calls".into(), Value::Array(self.calls));
        }
        message.insert("refusal".into(), Value::Null);
        json!({
            "id": id,
            "object": "chat.completion",
            "created": unix_secs(),
            "model": model,
            "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish}],
            "usage": usage,
        })
    }
}

/// Writes a stream's `chat.completion.chunk` events, all with one prefix
/// (`data: {"id":…,"object":…,"created":…,"model":…,"choices":[`).
#[derive(Default)]
pub(crate) struct Chunks {
    prefix: Vec<u8>,
}

impl Chunks {
    /// Chunks with this response id and model.
    pub(crate) fn new(id: &str, model: &str) -> Self {
        let mut p = Vec::with_capacity(128 + id.len() + model.len());
        p.extend_from_slice(b"data: {\"id\":");
        json_str(&mut p, id);
        p.extend_from_slice(b",\"object\":\"chat.completion.chunk\",\"created\":");
        p.extend_from_slice(itoa::Buffer::new().format(unix_secs()).as_bytes());
        p.extend_from_slice(b",\"model\":");
        json_str(&mut p, model);
        p.extend_from_slice(b",\"choices\":[");
        Chunks { prefix: p }
    }

    /// Whether no id was set yet.
    pub(crate) fn is_unset(&self) -> bool {
        self.prefix.is_empty()
    }

    /// One content chunk (`delta` writes a complete JSON object).
    pub(crate) fn delta(&self, out: &mut BytesMut, delta: impl FnOnce(&mut BytesMut)) {
        out.put_slice(&self.prefix);
        out.put_slice(b"{\"index\":0,\"delta\":");
        delta(out);
        out.put_slice(b",\"logprobs\":null,\"finish_reason\":null}]}\n\n");
    }

    /// The first chunk: the assistant's role.
    pub(crate) fn role(&self, out: &mut BytesMut) {
        self.delta(out, |o| {
            o.put_slice(b"{\"role\":\"assistant\",\"content\":\"\"}")
        });
    }

    /// A text delta under `key` (`content`, `reasoning_content`).
    pub(crate) fn text(&self, out: &mut BytesMut, key: &[u8], text: &str) {
        self.delta(out, |o| {
            o.put_slice(b"{\"");
            o.put_slice(key);
            o.put_slice(b"\":");
            json_str_b(o, text);
            o.put_u8(b'}');
        });
    }

    /// A tool call's first chunk: its index, id and name.
    pub(crate) fn tool_start(&self, out: &mut BytesMut, index: u32, id: &str, name: &str) {
        self.delta(out, |o| {
            o.put_slice(b"{\"tool_calls\":[{\"index\":");
            o.put_slice(itoa::Buffer::new().format(index).as_bytes());
            o.put_slice(b",\"id\":");
            json_str_b(o, id);
            o.put_slice(b",\"type\":\"function\",\"function\":{\"name\":");
            json_str_b(o, name);
            o.put_slice(b",\"arguments\":\"\"}}]}");
        });
    }

    /// A piece of a tool call's arguments.
    pub(crate) fn tool_args(&self, out: &mut BytesMut, index: u32, args: &str) {
        self.delta(out, |o| {
            o.put_slice(b"{\"tool_calls\":[{\"index\":");
            o.put_slice(itoa::Buffer::new().format(index).as_bytes());
            o.put_slice(b",\"function\":{\"arguments\":");
            json_str_b(o, args);
            o.put_slice(b"}}]}");
        });
    }

    /// The finish chunk, the only one with a finish reason.
    pub(crate) fn finish(&self, out: &mut BytesMut, reason: &'static str) {
        out.put_slice(&self.prefix);
        out.put_slice(b"{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"");
        out.put_slice(reason.as_bytes());
        out.put_slice(b"\"}]}\n\n");
    }

    /// The usage-only chunk (`stream_options.include_usage`).
    pub(crate) fn usage(&self, out: &mut BytesMut, usage: &Value) {
        out.put_slice(&self.prefix);
        out.put_slice(b"],\"usage\":");
        out.put_slice(usage.to_string().as_bytes());
        out.put_slice(b"}\n\n");
    }
}

fn json_str(out: &mut Vec<u8>, s: &str) {
    // Writing a str into a Vec cannot fail.
    let _ = serde_json::to_writer(out, s);
}

fn json_str_b(out: &mut BytesMut, s: &str) {
    let _ = serde_json::to_writer(out.writer(), s);
}

/// Token counts of a provider that counts cache reads and writes apart
/// from the other prompt tokens (Anthropic, Bedrock), as OpenAI counts
/// them: all three inside `prompt_tokens`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct CacheUsage {
    pub(crate) input: u64,
    pub(crate) output: u64,
    pub(crate) cache_read: u64,
    pub(crate) cache_write: u64,
}

impl CacheUsage {
    /// Prompt tokens as OpenAI counts them (saturating).
    pub(crate) fn prompt(&self) -> u64 {
        self.input
            .saturating_add(self.cache_read)
            .saturating_add(self.cache_write)
    }

    /// The gateway's usage record.
    pub(crate) fn usage(&self) -> Usage {
        Usage {
            prompt: self.prompt(),
            completion: self.output,
            cached: self.cache_read,
            reasoning: 0,
            cache_write: self.cache_write,
        }
    }

    /// OpenAI's `usage` object.
    pub(crate) fn openai_json(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt(),
            "completion_tokens": self.output,
            "total_tokens": self.prompt().saturating_add(self.output),
            "prompt_tokens_details": {"cached_tokens": self.cache_read},
            "completion_tokens_details": {"reasoning_tokens": 0},
        })
    }
}
