//! OpenAI Chat Completions request → Anthropic Messages request.

use crate::translate::bounds::{self, Values};
use crate::translate::chat::{self, bad, ToolChoice};
use crate::translate::{RequestOpts, Translated, Unsupported};
use bytes::Bytes;
use serde_json::{json, Map, Value};

/// Translates a Chat Completions body for the Messages API.
pub fn chat_request(req: &Value, opts: &RequestOpts) -> Result<Translated, Unsupported> {
    let obj = req.as_object().ok_or_else(|| Unsupported {
        param: String::new(),
        message: "The request body must be a JSON object.".into(),
    })?;
    let mut b = Builder {
        out: Map::new(),
        dropped: Vec::new(),
        drop_unsupported: opts.drop_unsupported,
        values: Values::default(),
    };
    b.out.insert("model".into(), Value::from(opts.model));
    let (system, messages) = messages(obj.get("messages"), &mut b)?;
    if let Some(s) = system {
        b.out.insert("system".into(), Value::from(s));
    }
    b.out.insert("messages".into(), Value::Array(messages));
    let max = match (obj.get("max_completion_tokens"), obj.get("max_tokens")) {
        (Some(v), _) if !v.is_null() => Some(positive(v, "max_completion_tokens")?),
        (_, Some(v)) if !v.is_null() => Some(positive(v, "max_tokens")?),
        _ => opts.default_max_tokens,
    };
    let max = max.ok_or_else(|| Unsupported {
        param: "max_tokens".into(),
        message: "This model's provider (Anthropic) requires a completion limit: set \
                  `max_tokens` (or `max_completion_tokens`) in the request, or ask the \
                  operator to set `max_tokens` on the route."
            .into(),
    })?;
    b.out.insert("max_tokens".into(), Value::from(max));
    for (key, value) in obj {
        if value.is_null() {
            continue;
        }
        match key.as_str() {
            "model" | "messages" | "max_tokens" | "max_completion_tokens" | "stream" => {}
            "temperature" => {
                let t = value.as_f64().ok_or_else(|| bad(key, "must be a number"))?;
                if (0.0..=1.0).contains(&t) {
                    b.out.insert(key.clone(), value.clone());
                } else {
                    b.unsupported(
                        key,
                        "Anthropic accepts a `temperature` between 0 and 1; send a value in that range.",
                    )?;
                }
            }
            "top_p" => {
                b.out.insert(key.clone(), value.clone());
            }
            "stop" => {
                let seqs = match value {
                    Value::String(s) => vec![Value::from(s.as_str())],
                    Value::Array(a) if a.iter().all(Value::is_string) => a.clone(),
                    _ => return Err(bad(key, "must be a string or an array of strings")),
                };
                if !seqs.is_empty() {
                    b.out.insert("stop_sequences".into(), Value::Array(seqs));
                }
            }
            "user" => {
                let u = value.as_str().ok_or_else(|| bad(key, "must be a string"))?;
                b.out.insert("metadata".into(), json!({ "user_id": u }));
            }
            "tools" => {
                let tools = tools(value, &mut b)?;
                if !tools.is_empty() {
                    b.out.insert("tools".into(), Value::Array(tools));
                }
            }
            "tool_choice" => {
                let choice = tool_choice(value)?;
                b.out.insert("tool_choice".into(), choice);
            }
            "parallel_tool_calls" => {
                if value.as_bool() == Some(false) {
                    b.out.insert("_no_parallel".into(), Value::Bool(true));
                }
            }
            "response_format" => response_format(value, &mut b)?,
            "n" if value.as_u64() == Some(1) => {}
            "logprobs" if value.as_bool() == Some(false) => {}
            // No Anthropic counterpart, and nothing the provider computes
            // depends on them.
            "stream_options" | "store" | "service_tier" | "metadata" => {}
            other => b.unsupported(
                other,
                &format!(
                    "`{other}` is not supported by this model's provider (Anthropic); remove it."
                ),
            )?,
        }
    }
    if b.out.remove("_no_parallel").is_some() {
        let choice = b
            .out
            .entry("tool_choice")
            .or_insert_with(|| json!({"type": "auto"}));
        if let Some(c) = choice.as_object_mut() {
            if c.get("type").and_then(Value::as_str) != Some("none") {
                c.insert("disable_parallel_tool_use".into(), Value::Bool(true));
            }
        }
    }
    if opts.stream {
        b.out.insert("stream".into(), Value::Bool(true));
    }
    let body = serde_json::to_vec(&Value::Object(b.out)).map_err(|_| bad("", "cannot encode"))?;
    Ok(Translated {
        body: Bytes::from(body),
        dropped: b.dropped,
    })
}

struct Builder {
    out: Map<String, Value>,
    dropped: Vec<String>,
    drop_unsupported: bool,
    /// Values the JSON in tool-call arguments may build.
    values: Values,
}

impl Builder {
    /// Refuses the field, or notes it as dropped.
    fn unsupported(&mut self, param: &str, message: &str) -> Result<(), Unsupported> {
        if self.drop_unsupported {
            bounds::note_dropped(&mut self.dropped, param);
            Ok(())
        } else {
            Err(Unsupported {
                param: param.to_string(),
                message: message.to_string(),
            })
        }
    }
}

fn positive(v: &Value, param: &str) -> Result<u64, Unsupported> {
    v.as_u64()
        .filter(|n| *n > 0)
        .ok_or_else(|| bad(param, "must be a positive integer"))
}

/// Splits the messages into the system prompt and the conversation.
fn messages(
    v: Option<&Value>,
    b: &mut Builder,
) -> Result<(Option<String>, Vec<Value>), Unsupported> {
    let list = v
        .and_then(Value::as_array)
        .ok_or_else(|| bad("messages", "must be an array of messages"))?;
    let mut system: Vec<String> = Vec::new();
    let mut out: Vec<Value> = Vec::new();
    // Tool results gathered for the user turn that carries them.
    let mut results: Vec<Value> = Vec::new();
    for (i, m) in list.iter().enumerate() {
        let at = format!("messages[{i}]");
        let role = m
            .get("role")
            .and_then(Value::as_str)
            .ok_or_else(|| bad(&format!("{at}.role"), "must be a string"))?;
        if role != "tool" && !results.is_empty() {
            out.push(json!({"role": "user", "content": std::mem::take(&mut results)}));
        }
        match role {
            "system" | "developer" => system.push(text_only(m.get("content"), &at)?),
            "user" => {
                let content = user_content(m.get("content"), &at, b)?;
                out.push(json!({"role": "user", "content": content}));
            }
            "assistant" => out.push(assistant(m, &at, b)?),
            "tool" => {
                let id = m
                    .get("tool_call_id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad(&format!("{at}.tool_call_id"), "must be a string"))?;
                let content = text_only(m.get("content"), &at)?;
                results.push(json!({"type": "tool_result", "tool_use_id": id, "content": content}));
            }
            other => {
                return Err(Unsupported {
                    param: format!("{at}.role"),
                    message: format!(
                        "The role `{other}` is not supported by this model's provider (Anthropic)."
                    ),
                })
            }
        }
    }
    if !results.is_empty() {
        out.push(json!({"role": "user", "content": results}));
    }
    let system = (!system.is_empty()).then(|| system.join("\n\n"));
    Ok((system, out))
}

/// Content that may only hold text: a string or an array of text parts.
fn text_only(v: Option<&Value>, at: &str) -> Result<String, Unsupported> {
    chat::text_only(v, at, "Anthropic", &mut |_| Ok(()))
}

/// A user message's content: a string, or text and image blocks.
fn user_content(v: Option<&Value>, at: &str, b: &mut Builder) -> Result<Value, Unsupported> {
    let parts = match v {
        Some(Value::String(s)) => return Ok(Value::from(s.as_str())),
        Some(Value::Array(parts)) => parts,
        _ => {
            return Err(bad(
                &format!("{at}.content"),
                "must be a string or an array",
            ))
        }
    };
    let mut blocks = Vec::with_capacity(parts.len());
    for (j, p) in parts.iter().enumerate() {
        let here = format!("{at}.content[{j}]");
        match p.get("type").and_then(Value::as_str) {
            Some("text") => {
                let t = p
                    .get("text")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad(&format!("{here}.text"), "must be a string"))?;
                blocks.push(json!({"type": "text", "text": t}));
            }
            Some("image_url") => {
                let url = p
                    .pointer("/image_url/url")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad(&format!("{here}.image_url.url"), "must be a string"))?;
                blocks.push(image(url, &here)?);
            }
            other => b.unsupported(
                &format!("{here}.type"),
                &format!(
                    "Content parts of type `{}` are not supported by this model's provider (Anthropic); send text or image_url parts.",
                    other.unwrap_or("?")
                ),
            )?,
        }
    }
    Ok(Value::Array(blocks))
}

/// An image part: a base64 data URL or an https URL.
fn image(url: &str, at: &str) -> Result<Value, Unsupported> {
    if let Some(rest) = url.strip_prefix("data:") {
        let (meta, data) = rest.split_once(',').unwrap_or((rest, ""));
        let media = meta.strip_suffix(";base64");
        return match media {
            Some(m @ ("image/jpeg" | "image/png" | "image/gif" | "image/webp")) if !data.is_empty() => Ok(json!({
                "type": "image",
                "source": {"type": "base64", "media_type": m, "data": data},
            })),
            _ => Err(Unsupported {
                param: format!("{at}.image_url.url"),
                message: "Images must be base64 data URLs of type image/jpeg, image/png, image/gif or image/webp, or https URLs.".into(),
            }),
        };
    }
    if url.starts_with("https://") {
        return Ok(json!({"type": "image", "source": {"type": "url", "url": url}}));
    }
    Err(Unsupported {
        param: format!("{at}.image_url.url"),
        message: "Image URLs must be https URLs or base64 data URLs.".into(),
    })
}

/// An assistant message: its text, then a `tool_use` block per tool call.
fn assistant(m: &Value, at: &str, b: &mut Builder) -> Result<Value, Unsupported> {
    let mut blocks = Vec::new();
    let text = text_only(m.get("content"), at)?;
    if !text.is_empty() {
        blocks.push(json!({"type": "text", "text": text}));
    }
    for c in chat::tool_calls(m, at, &mut b.values, &mut |_| Ok(()))? {
        blocks.push(json!({"type": "tool_use", "id": c.id, "name": c.name, "input": c.input}));
    }
    if blocks.is_empty() {
        blocks.push(json!({"type": "text", "text": ""}));
    }
    Ok(json!({"role": "assistant", "content": blocks}))
}

/// OpenAI function tools → Anthropic tools.
fn tools(v: &Value, b: &mut Builder) -> Result<Vec<Value>, Unsupported> {
    let tools = chat::function_tools(v, "Anthropic", &mut |param, message| {
        b.unsupported(param, message)
    })?;
    Ok(tools
        .into_iter()
        .map(|t| {
            let mut tool = Map::new();
            tool.insert("name".into(), Value::from(t.name));
            if let Some(d) = t.description {
                tool.insert("description".into(), Value::from(d));
            }
            tool.insert("input_schema".into(), t.parameters);
            Value::Object(tool)
        })
        .collect())
}

fn tool_choice(v: &Value) -> Result<Value, Unsupported> {
    Ok(match chat::tool_choice(v)? {
        ToolChoice::Auto => json!({"type": "auto"}),
        ToolChoice::None => json!({"type": "none"}),
        ToolChoice::Required => json!({"type": "any"}),
        ToolChoice::Function(name) => json!({"type": "tool", "name": name}),
    })
}

/// `response_format`: `text` needs nothing; `json_schema` maps to Anthropic's
/// structured outputs (`output_format`; the provider needs the
/// `structured-outputs-2025-11-13` beta in `anthropic_beta`); `json_object`
/// has no equivalent.
fn response_format(v: &Value, b: &mut Builder) -> Result<(), Unsupported> {
    match v.get("type").and_then(Value::as_str) {
        Some("text") => Ok(()),
        Some("json_schema") => {
            let schema = v
                .pointer("/json_schema/schema")
                .filter(|s| s.is_object())
                .ok_or_else(|| bad("response_format.json_schema.schema", "must be an object"))?;
            b.out.insert(
                "output_format".into(),
                json!({"type": "json_schema", "schema": schema}),
            );
            Ok(())
        }
        _ => b.unsupported(
            "response_format",
            "This model's provider (Anthropic) supports `response_format` of type `text` or `json_schema` only.",
        ),
    }
}
