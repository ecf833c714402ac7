//! OpenAI Chat Completions request → Bedrock Converse request.

use super::limits::{MAX_MESSAGES, MAX_PARTS, MAX_STOP};
use crate::translate::bounds::{self, Values};
use crate::translate::chat::{self, bad, ToolChoice};
use crate::translate::{RequestOpts, Translated, Unsupported};
use base64::Engine as _;
use bytes::Bytes;
use serde_json::{json, Map, Value};

/// Translates a Chat Completions body for `Converse` / `ConverseStream`.
/// The model id and the stream choice travel in the path
/// ([`super::converse_path`]), so the body carries neither.
pub fn chat_request(req: &Value, opts: &RequestOpts) -> Result<Translated, Unsupported> {
    let obj = req.as_object().ok_or_else(|| Unsupported {
        param: String::new(),
        message: "The request body must be a JSON object.".into(),
    })?;
    let mut b = Builder {
        dropped: Vec::new(),
        drop_unsupported: opts.drop_unsupported,
        parts: 0,
        values: Values::default(),
    };
    let (system, messages) = messages(obj.get("messages"), &mut b)?;
    let mut out = Map::new();
    out.insert("messages".into(), Value::Array(messages));
    if !system.is_empty() {
        out.insert("system".into(), Value::Array(system));
    }
    let mut inference = Map::new();
    let max = match (obj.get("max_completion_tokens"), obj.get("max_tokens")) {
        (Some(v), _) if !v.is_null() => Some(max_tokens(v, "max_completion_tokens")?),
        (_, Some(v)) if !v.is_null() => Some(max_tokens(v, "max_tokens")?),
        _ => opts.default_max_tokens.map(|m| m.min(i32::MAX as u64)),
    };
    if let Some(m) = max {
        inference.insert("maxTokens".into(), Value::from(m));
    }
    let mut tools_cfg: Option<Vec<Value>> = None;
    let mut choice: Option<Value> = None;
    let mut choice_none = false;
    for (key, value) in obj {
        if value.is_null() {
            continue;
        }
        match key.as_str() {
            "model" | "messages" | "max_tokens" | "max_completion_tokens" | "stream" => {}
            "temperature" | "top_p" => {
                let t = value
                    .as_f64()
                    .filter(|t| t.is_finite())
                    .ok_or_else(|| bad(key, "must be a number"))?;
                if (0.0..=1.0).contains(&t) {
                    let name = if key == "temperature" {
                        "temperature"
                    } else {
                        "topP"
                    };
                    inference.insert(name.into(), value.clone());
                } else {
                    b.unsupported(
                        key,
                        &format!("Bedrock accepts a `{key}` between 0 and 1; send a value in that range."),
                    )?;
                }
            }
            "stop" => {
                let seqs = match value {
                    Value::String(s) => vec![Value::from(s.as_str())],
                    Value::Array(a) if a.iter().all(Value::is_string) => a.clone(),
                    _ => return Err(bad(key, "must be a string or an array of strings")),
                };
                if seqs.len() > MAX_STOP {
                    return Err(bad(key, &format!("may hold at most {MAX_STOP} sequences")));
                }
                if !seqs.is_empty() {
                    inference.insert("stopSequences".into(), Value::Array(seqs));
                }
            }
            "tools" => {
                let t = tools(value, &mut b)?;
                if !t.is_empty() {
                    tools_cfg = Some(t);
                }
            }
            "tool_choice" => match tool_choice(value)? {
                Some(c) => choice = Some(c),
                None => choice_none = true,
            },
            "parallel_tool_calls" => {
                if value.as_bool() == Some(false) {
                    b.unsupported(
                        key,
                        "Bedrock's Converse API cannot turn off parallel tool calls; remove `parallel_tool_calls`.",
                    )?;
                }
            }
            "response_format" => {
                if value.get("type").and_then(Value::as_str) != Some("text") {
                    b.unsupported(
                        "response_format",
                        "This model's provider (Bedrock Converse) supports `response_format` of type `text` only.",
                    )?;
                }
            }
            "n" if value.as_u64() == Some(1) => {}
            "logprobs" if value.as_bool() == Some(false) => {}
            // No Converse counterpart, and nothing the model computes
            // depends on them.
            "stream_options" | "store" | "service_tier" | "metadata" | "user" => {}
            other => b.unsupported(
                other,
                &format!(
                    "`{other}` is not supported by this model's provider (Bedrock); remove it."
                ),
            )?,
        }
    }
    if !inference.is_empty() {
        out.insert("inferenceConfig".into(), Value::Object(inference));
    }
    if let Some(tools) = tools_cfg {
        if choice_none {
            // Converse has no `none`: the model cannot call tools it is not
            // told about, but a conversation holding tool blocks needs them.
            if b.has_tool_blocks(&out) {
                return Err(bad(
                    "tool_choice",
                    "cannot be `none` with Bedrock when the conversation holds tool calls; use `auto`",
                ));
            }
        } else {
            let mut cfg = Map::new();
            cfg.insert("tools".into(), Value::Array(tools));
            if let Some(c) = choice {
                cfg.insert("toolChoice".into(), c);
            }
            out.insert("toolConfig".into(), Value::Object(cfg));
        }
    }
    let body = serde_json::to_vec(&Value::Object(out)).map_err(|_| bad("", "cannot encode"))?;
    Ok(Translated {
        body: Bytes::from(body),
        dropped: b.dropped,
    })
}

struct Builder {
    dropped: Vec<String>,
    drop_unsupported: bool,
    /// Content parts seen so far, across all messages.
    parts: usize,
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

    /// Counts one content part against [`MAX_PARTS`].
    fn part(&mut self, at: &str) -> Result<(), Unsupported> {
        self.parts += 1;
        if self.parts > MAX_PARTS {
            return Err(bad(
                at,
                &format!("is past the limit of {MAX_PARTS} content parts per request"),
            ));
        }
        Ok(())
    }

    fn has_tool_blocks(&self, out: &Map<String, Value>) -> bool {
        out.get("messages")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|m| m.get("content").and_then(Value::as_array))
            .flatten()
            .any(|c| c.get("toolUse").is_some() || c.get("toolResult").is_some())
    }
}

/// A completion limit: a positive integer that fits Converse's int32.
fn max_tokens(v: &Value, param: &str) -> Result<u64, Unsupported> {
    v.as_u64()
        .filter(|n| (1..=i32::MAX as u64).contains(n))
        .ok_or_else(|| bad(param, "must be a positive integer of at most 2147483647"))
}

/// Splits the messages into the system blocks and the conversation, with
/// consecutive turns of one role merged (Converse wants them to alternate).
fn messages(v: Option<&Value>, b: &mut Builder) -> Result<(Vec<Value>, Vec<Value>), Unsupported> {
    let list = v
        .and_then(Value::as_array)
        .ok_or_else(|| bad("messages", "must be an array of messages"))?;
    if list.len() > MAX_MESSAGES {
        return Err(bad(
            "messages",
            &format!("may hold at most {MAX_MESSAGES} messages"),
        ));
    }
    let mut system = Vec::new();
    let mut out: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for (i, m) in list.iter().enumerate() {
        let at = format!("messages[{i}]");
        let role = m
            .get("role")
            .and_then(Value::as_str)
            .ok_or_else(|| bad(&format!("{at}.role"), "must be a string"))?;
        let (turn, blocks) = match role {
            "system" | "developer" => {
                let text = text_only(m.get("content"), &at, b)?;
                if !text.is_empty() {
                    system.push(json!({ "text": text }));
                }
                continue;
            }
            "user" => ("user", user_content(m.get("content"), &at, b)?),
            "assistant" => ("assistant", assistant(m, &at, b)?),
            "tool" => {
                let id = m
                    .get("tool_call_id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad(&format!("{at}.tool_call_id"), "must be a string"))?;
                let text = text_only(m.get("content"), &at, b)?;
                let result = json!({"toolResult": {
                    "toolUseId": id,
                    "content": [{"text": text}],
                }});
                ("user", vec![result])
            }
            other => {
                return Err(Unsupported {
                    param: format!("{at}.role"),
                    message: format!(
                        "The role `{other}` is not supported by this model's provider (Bedrock)."
                    ),
                })
            }
        };
        match out.last_mut() {
            Some((r, prev)) if *r == turn => prev.extend(blocks),
            _ => out.push((turn, blocks)),
        }
    }
    let conversation = out
        .into_iter()
        .map(|(role, content)| json!({"role": role, "content": content}))
        .collect();
    Ok((system, conversation))
}

/// Content that may only hold text: a string or an array of text parts.
fn text_only(v: Option<&Value>, at: &str, b: &mut Builder) -> Result<String, Unsupported> {
    chat::text_only(v, at, "Bedrock", &mut |part| b.part(part))
}

/// A user message's content: text and image blocks.
fn user_content(v: Option<&Value>, at: &str, b: &mut Builder) -> Result<Vec<Value>, Unsupported> {
    let parts = match v {
        Some(Value::String(s)) => return Ok(vec![json!({ "text": s })]),
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
        b.part(&here)?;
        match p.get("type").and_then(Value::as_str) {
            Some("text") => {
                let t = p
                    .get("text")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad(&format!("{here}.text"), "must be a string"))?;
                blocks.push(json!({ "text": t }));
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
                    "Content parts of type `{}` are not supported by this model's provider (Bedrock); send text or image_url parts.",
                    other.unwrap_or("?")
                ),
            )?,
        }
    }
    Ok(blocks)
}

/// An image part. Converse takes the image's bytes (base64 in JSON) or an
/// S3 location; it does not fetch https URLs.
fn image(url: &str, at: &str) -> Result<Value, Unsupported> {
    let field = format!("{at}.image_url.url");
    if let Some(rest) = url.strip_prefix("data:") {
        let (meta, data) = rest.split_once(',').unwrap_or((rest, ""));
        let format = match meta.strip_suffix(";base64") {
            Some("image/jpeg") => "jpeg",
            Some("image/png") => "png",
            Some("image/gif") => "gif",
            Some("image/webp") => "webp",
            _ => {
                return Err(Unsupported {
                    param: field,
                    message: "Images must be base64 data URLs of type image/jpeg, image/png, image/gif or image/webp.".into(),
                })
            }
        };
        if data.is_empty()
            || base64::engine::general_purpose::STANDARD
                .decode(data)
                .is_err()
        {
            return Err(Unsupported {
                param: field,
                message: "The image data URL does not hold valid base64.".into(),
            });
        }
        return Ok(json!({"image": {"format": format, "source": {"bytes": data}}}));
    }
    if url.starts_with("s3://") {
        let format = match url
            .rsplit('.')
            .next()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("jpg" | "jpeg") => "jpeg",
            Some("png") => "png",
            Some("gif") => "gif",
            Some("webp") => "webp",
            _ => {
                return Err(Unsupported {
                    param: field,
                    message: "An s3:// image URL must end in .png, .jpg, .jpeg, .gif or .webp."
                        .into(),
                })
            }
        };
        return Ok(json!({"image": {"format": format, "source": {"s3Location": {"uri": url}}}}));
    }
    Err(Unsupported {
        param: field,
        message: "This model's provider (Bedrock) needs the image itself: send it as a base64 data URL (or an s3:// URL); it does not fetch http(s) URLs.".into(),
    })
}

/// An assistant message: its text, then a `toolUse` block per tool call.
fn assistant(m: &Value, at: &str, b: &mut Builder) -> Result<Vec<Value>, Unsupported> {
    let mut blocks = Vec::new();
    let text = text_only(m.get("content"), at, b)?;
    if !text.is_empty() {
        blocks.push(json!({ "text": text }));
    }
    let mut values = std::mem::take(&mut b.values);
    let calls = chat::tool_calls(m, at, &mut values, &mut |part| b.part(part));
    b.values = values;
    for c in calls? {
        blocks.push(json!({"toolUse": {"toolUseId": c.id, "name": c.name, "input": c.input}}));
    }
    if blocks.is_empty() {
        return Err(bad(
            &format!("{at}.content"),
            "must hold text or tool calls (Bedrock refuses empty assistant turns)",
        ));
    }
    Ok(blocks)
}

/// OpenAI function tools → Converse `toolSpec`s.
fn tools(v: &Value, b: &mut Builder) -> Result<Vec<Value>, Unsupported> {
    let tools = chat::function_tools(v, "Bedrock", &mut |param, message| {
        b.unsupported(param, message)
    })?;
    Ok(tools
        .into_iter()
        .map(|t| {
            let mut spec = Map::new();
            spec.insert("name".into(), Value::from(t.name));
            if let Some(d) = t.description {
                spec.insert("description".into(), Value::from(d));
            }
            spec.insert("inputSchema".into(), json!({ "json": t.parameters }));
            json!({ "toolSpec": spec })
        })
        .collect())
}

/// `tool_choice` → Converse `toolChoice`; `None` for `none`.
fn tool_choice(v: &Value) -> Result<Option<Value>, Unsupported> {
    Ok(match chat::tool_choice(v)? {
        ToolChoice::Auto => Some(json!({"auto": {}})),
        ToolChoice::None => None,
        ToolChoice::Required => Some(json!({"any": {}})),
        ToolChoice::Function(name) => Some(json!({"tool": {"name": name}})),
    })
}
