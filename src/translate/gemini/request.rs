//! Chat Completions request → `generateContent` request body.

use super::schema;
use crate::translate::bounds::{self, ParseError, SchemaBudget, Values};
use crate::translate::{RequestOpts, Translated, Unsupported};
use bytes::Bytes;
use serde_json::{json, Map, Value};
use std::collections::HashMap;

/// Top-level fields read elsewhere or with no effect on Gemini's answer.
const IGNORED: &[&str] = &["model", "stream", "stream_options", "user", "store"];

/// Translates a Chat Completions body for `opts.model`. The model and the
/// stream choice are not in the body: see [`super::chat_path`].
pub fn chat_request(req: &Value, opts: &RequestOpts) -> Result<Translated, Unsupported> {
    let obj = req
        .as_object()
        .ok_or_else(|| unsupported("", "The request body must be a JSON object."))?;
    let mut b = Builder {
        drop: opts.drop_unsupported,
        dropped: Vec::new(),
        schemas: SchemaBudget::default(),
        values: Values::default(),
    };
    let mut out = Map::new();
    let mut config = Map::new();
    let mut tools = None;
    let mut tool_config = None;
    let mut messages = None;
    for (key, value) in obj {
        if value.is_null() || IGNORED.contains(&key.as_str()) {
            continue;
        }
        match key.as_str() {
            "messages" => messages = Some(value),
            "temperature" => number(&mut config, "temperature", key, value)?,
            "top_p" => number(&mut config, "topP", key, value)?,
            "presence_penalty" => number(&mut config, "presencePenalty", key, value)?,
            "frequency_penalty" => number(&mut config, "frequencyPenalty", key, value)?,
            "seed" => integer(&mut config, "seed", key, value)?,
            "n" => integer(&mut config, "candidateCount", key, value)?,
            // `max_completion_tokens` wins over the older `max_tokens`.
            "max_tokens"
                if obj
                    .get("max_completion_tokens")
                    .is_some_and(|v| !v.is_null()) => {}
            "max_tokens" | "max_completion_tokens" => {
                integer(&mut config, "maxOutputTokens", key, value)?
            }
            "stop" => {
                config.insert("stopSequences".into(), stop(value)?);
            }
            "response_format" => response_format(value, &mut config, &mut b)?,
            "reasoning_effort" => match thinking_budget(value) {
                Some(budget) => {
                    config.insert("thinkingConfig".into(), json!({ "thinkingBudget": budget }));
                }
                None => b.refuse(
                    key,
                    "`reasoning_effort` must be none, minimal, low, medium or high.",
                )?,
            },
            "tools" => tools = Some(function_declarations(value, &mut b)?),
            "tool_choice" => tool_config = tool_choice(value, &mut b)?,
            // Values that ask for nothing Gemini would do differently.
            "parallel_tool_calls" if value.as_bool() == Some(true) => {}
            "logprobs" if value.as_bool() == Some(false) => {}
            "service_tier" if matches!(value.as_str(), Some("auto" | "default")) => {}
            "modalities" if value == &json!(["text"]) => {}
            other => b.refuse(other, &format!("`{other}` is not supported by this model."))?,
        }
    }
    let messages = messages.ok_or_else(|| unsupported("messages", "`messages` is required."))?;
    let (system, contents) = conversation(messages, &mut b)?;
    if let Some(system) = system {
        out.insert("systemInstruction".into(), system);
    }
    out.insert("contents".into(), Value::Array(contents));
    if let Some(tools) = tools.flatten() {
        out.insert("tools".into(), tools);
    }
    if let Some(tc) = tool_config {
        out.insert("toolConfig".into(), tc);
    }
    if let Some(n) = opts.default_max_tokens {
        config.entry("maxOutputTokens").or_insert_with(|| n.into());
    }
    if !config.is_empty() {
        out.insert("generationConfig".into(), Value::Object(config));
    }
    Ok(Translated {
        body: Bytes::from(Value::Object(out).to_string()),
        dropped: b.dropped,
    })
}

pub(super) fn unsupported(param: impl Into<String>, message: impl Into<String>) -> Unsupported {
    Unsupported {
        param: param.into(),
        message: message.into(),
    }
}

/// Refuses or drops (with `drop_unsupported_params`) what Gemini cannot
/// honour, and holds the request's work budgets.
pub(super) struct Builder {
    pub drop: bool,
    pub dropped: Vec<String>,
    /// What the schema inliner may still emit.
    pub schemas: SchemaBudget,
    /// Values the JSON in strings (tool arguments, tool results) may build.
    pub values: Values,
}

impl Builder {
    pub(super) fn refuse(&mut self, param: &str, message: &str) -> Result<(), Unsupported> {
        if self.drop {
            bounds::note_dropped(&mut self.dropped, param);
            Ok(())
        } else {
            Err(unsupported(param, message))
        }
    }

    /// The JSON in the string at `param`, within the value budget: `None`
    /// when it is not JSON.
    fn parse(&mut self, text: &str, param: &str) -> Result<Option<Value>, Unsupported> {
        match self.values.parse(text.as_bytes()) {
            Ok(v) => Ok(Some(v)),
            Err(ParseError::Invalid(_)) => Ok(None),
            Err(ParseError::TooMany { .. }) => Err(bounds::too_many_values(param)),
        }
    }
}

fn number(cfg: &mut Map<String, Value>, to: &str, key: &str, v: &Value) -> Result<(), Unsupported> {
    if !v.is_number() {
        return Err(unsupported(key, format!("`{key}` must be a number.")));
    }
    cfg.insert(to.into(), v.clone());
    Ok(())
}

fn integer(
    cfg: &mut Map<String, Value>,
    to: &str,
    key: &str,
    v: &Value,
) -> Result<(), Unsupported> {
    if v.as_i64().is_none() {
        return Err(unsupported(key, format!("`{key}` must be an integer.")));
    }
    cfg.insert(to.into(), v.clone());
    Ok(())
}

fn stop(v: &Value) -> Result<Value, Unsupported> {
    match v {
        Value::String(s) => Ok(json!([s])),
        Value::Array(a) if a.iter().all(Value::is_string) => Ok(v.clone()),
        _ => Err(unsupported(
            "stop",
            "`stop` must be a string or an array of strings.",
        )),
    }
}

/// Gemini 2.5's thinking budgets for OpenAI's effort levels.
fn thinking_budget(v: &Value) -> Option<u64> {
    match v.as_str()? {
        // Turns thinking off where the model allows it (Gemini 2.5 Flash).
        "none" => Some(0),
        "minimal" | "low" => Some(1024),
        "medium" => Some(8192),
        "high" => Some(24576),
        _ => None,
    }
}

fn response_format(
    v: &Value,
    cfg: &mut Map<String, Value>,
    b: &mut Builder,
) -> Result<(), Unsupported> {
    match v.get("type").and_then(Value::as_str) {
        Some("text") => {}
        Some("json_object") => {
            cfg.insert("responseMimeType".into(), "application/json".into());
        }
        Some("json_schema") => {
            cfg.insert("responseMimeType".into(), "application/json".into());
            if let Some(s) = v.get("json_schema").and_then(|j| j.get("schema")) {
                let s = schema::clean(s, &mut b.schemas, "response_format.json_schema.schema")?;
                cfg.insert("responseSchema".into(), s);
            }
        }
        _ => b.refuse(
            "response_format.type",
            "`response_format.type` must be text, json_object or json_schema.",
        )?,
    }
    Ok(())
}

/// `tools` → `[{"functionDeclarations": [...]}]`, or `None` when none is left.
fn function_declarations(v: &Value, b: &mut Builder) -> Result<Option<Value>, Unsupported> {
    let tools = v
        .as_array()
        .ok_or_else(|| unsupported("tools", "`tools` must be an array."))?;
    bounds::tools(tools.len())?;
    let mut decls = Vec::with_capacity(tools.len());
    for (i, t) in tools.iter().enumerate() {
        if t.get("type").and_then(Value::as_str) != Some("function") {
            b.refuse(
                &format!("tools[{i}].type"),
                "Only tools of type `function` are supported by this model.",
            )?;
            continue;
        }
        let f = t.get("function");
        let name = f
            .and_then(|f| f.get("name"))
            .and_then(Value::as_str)
            .ok_or_else(|| {
                unsupported(
                    format!("tools[{i}].function.name"),
                    "A function tool needs a name.",
                )
            })?;
        let mut d = Map::new();
        d.insert("name".into(), name.into());
        if let Some(desc) = f
            .and_then(|f| f.get("description"))
            .filter(|d| d.is_string())
        {
            d.insert("description".into(), desc.clone());
        }
        if let Some(p) = f.and_then(|f| f.get("parameters")).filter(|p| !p.is_null()) {
            let at = format!("tools[{i}].function.parameters");
            d.insert("parameters".into(), schema::clean(p, &mut b.schemas, &at)?);
        }
        decls.push(Value::Object(d));
    }
    Ok((!decls.is_empty()).then(|| json!([{ "functionDeclarations": decls }])))
}

fn tool_choice(v: &Value, b: &mut Builder) -> Result<Option<Value>, Unsupported> {
    let mode = |m: &str| json!({ "functionCallingConfig": { "mode": m } });
    match v {
        Value::String(s) => match s.as_str() {
            "auto" => Ok(Some(mode("AUTO"))),
            "none" => Ok(Some(mode("NONE"))),
            "required" => Ok(Some(mode("ANY"))),
            _ => Err(unsupported(
                "tool_choice",
                "`tool_choice` must be auto, none, required or a named function.",
            )),
        },
        Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("function") => {
            let name = o
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    unsupported(
                        "tool_choice.function.name",
                        "A named tool choice needs a name.",
                    )
                })?;
            Ok(Some(json!({ "functionCallingConfig": {
                "mode": "ANY",
                "allowedFunctionNames": [name],
            }})))
        }
        _ => {
            b.refuse(
                "tool_choice",
                "This form of `tool_choice` is not supported by this model.",
            )?;
            Ok(None)
        }
    }
}

/// `messages` → (`systemInstruction`, `contents`).
fn conversation(
    messages: &Value,
    b: &mut Builder,
) -> Result<(Option<Value>, Vec<Value>), Unsupported> {
    let messages = messages
        .as_array()
        .ok_or_else(|| unsupported("messages", "`messages` must be an array."))?;
    let mut system: Vec<Value> = Vec::new();
    let mut contents: Vec<Value> = Vec::new();
    // Tool-call id → function name, from the assistant turns seen so far
    // (the latest call with an id wins).
    let mut call_names: HashMap<String, String> = HashMap::new();
    for (i, m) in messages.iter().enumerate() {
        let at = format!("messages[{i}]");
        let role = m.get("role").and_then(Value::as_str).unwrap_or_default();
        let (gemini_role, parts) = match role {
            "system" | "developer" => {
                system.extend(text_parts(m.get("content"), &at)?);
                continue;
            }
            "user" => ("user", user_parts(m.get("content"), &at, b)?),
            "assistant" => ("model", assistant_parts(m, &at, &mut call_names, b)?),
            "tool" => ("user", vec![tool_result(m, &at, &call_names, b)?]),
            _ => {
                return Err(unsupported(
                    format!("{at}.role"),
                    format!("The role `{role}` is not supported by this model."),
                ))
            }
        };
        if parts.is_empty() {
            continue;
        }
        push_turn(&mut contents, gemini_role, parts);
    }
    let system = (!system.is_empty()).then(|| json!({ "parts": system }));
    Ok((system, contents))
}

/// Appends a turn, merging it into the previous one of the same role.
fn push_turn(contents: &mut Vec<Value>, role: &str, parts: Vec<Value>) {
    if let Some(last) = contents.last_mut() {
        if last.get("role").and_then(Value::as_str) == Some(role) {
            if let Some(prev) = last.get_mut("parts").and_then(Value::as_array_mut) {
                prev.extend(parts);
                return;
            }
        }
    }
    contents.push(json!({ "role": role, "parts": parts }));
}

/// Text-only content (system, assistant): a string or text parts.
fn text_parts(content: Option<&Value>, at: &str) -> Result<Vec<Value>, Unsupported> {
    match content {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![json!({ "text": s })]),
        Some(Value::Array(items)) => {
            let mut parts = Vec::with_capacity(items.len());
            for (j, p) in items.iter().enumerate() {
                let text = match p.get("type").and_then(Value::as_str) {
                    Some("text") => p.get("text"),
                    Some("refusal") => p.get("refusal"),
                    _ => None,
                };
                match text.and_then(Value::as_str) {
                    Some(t) => parts.push(json!({ "text": t })),
                    None => {
                        return Err(unsupported(
                            format!("{at}.content[{j}].type"),
                            "Only text parts are supported in this message.",
                        ))
                    }
                }
            }
            Ok(parts)
        }
        Some(_) => Err(unsupported(
            format!("{at}.content"),
            "`content` must be a string or an array of parts.",
        )),
    }
}

fn user_parts(
    content: Option<&Value>,
    at: &str,
    b: &mut Builder,
) -> Result<Vec<Value>, Unsupported> {
    let Some(Value::Array(items)) = content else {
        return text_parts(content, at);
    };
    let mut parts = Vec::with_capacity(items.len());
    for (j, p) in items.iter().enumerate() {
        let here = format!("{at}.content[{j}]");
        match p.get("type").and_then(Value::as_str) {
            Some("text") => match p.get("text").and_then(Value::as_str) {
                Some(t) => parts.push(json!({ "text": t })),
                None => {
                    return Err(unsupported(
                        format!("{here}.text"),
                        "A text part needs `text`.",
                    ))
                }
            },
            Some("image_url") => {
                let url = p
                    .get("image_url")
                    .and_then(|u| u.get("url").or(Some(u)))
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                match media_part(url, &format!("{here}.image_url.url")) {
                    Ok(part) => parts.push(part),
                    Err(e) => b.refuse(&e.param, &e.message)?,
                }
            }
            Some("input_audio") => {
                let a = p.get("input_audio");
                let data = a.and_then(|a| a.get("data")).and_then(Value::as_str);
                let mime = match a.and_then(|a| a.get("format")).and_then(Value::as_str) {
                    Some("wav") => Some("audio/wav"),
                    Some("mp3") => Some("audio/mp3"),
                    _ => None,
                };
                match (data, mime) {
                    (Some(data), Some(mime)) => {
                        parts.push(json!({ "inlineData": { "mimeType": mime, "data": data } }))
                    }
                    _ => b.refuse(
                        &format!("{here}.input_audio"),
                        "Audio must be base64 `data` in `wav` or `mp3` format.",
                    )?,
                }
            }
            Some("file") => {
                let data = p
                    .get("file")
                    .and_then(|f| f.get("file_data"))
                    .and_then(Value::as_str);
                match data.map(|d| data_url(d, &format!("{here}.file.file_data"))) {
                    Some(Ok(part)) => parts.push(part),
                    Some(Err(e)) => b.refuse(&e.param, &e.message)?,
                    None => b.refuse(
                        &format!("{here}.file"),
                        "Files must be given inline as `file_data` (a base64 data URL).",
                    )?,
                }
            }
            _ => b.refuse(
                &format!("{here}.type"),
                "This content part type is not supported by this model.",
            )?,
        }
    }
    Ok(parts)
}

/// An image URL → `inlineData` (data URL) or `fileData` (https URL).
fn media_part(url: &str, at: &str) -> Result<Value, Unsupported> {
    if url.starts_with("data:") {
        return data_url(url, at);
    }
    if let Some(rest) = url.strip_prefix("https://") {
        let path = rest.split(['?', '#']).next().unwrap_or_default();
        let ext = path
            .rsplit_once('.')
            .map(|(_, e)| e.to_ascii_lowercase())
            .unwrap_or_default();
        let mime = match ext.as_str() {
            "png" => "image/png",
            "jpg" | "jpeg" => "image/jpeg",
            "webp" => "image/webp",
            "heic" => "image/heic",
            "heif" => "image/heif",
            "gif" => "image/gif",
            _ => {
                return Err(unsupported(
                    at,
                    "Image URLs must end in .png, .jpg, .jpeg, .webp, .heic, .heif or .gif; \
                     otherwise send the image as a base64 data URL.",
                ))
            }
        };
        return Ok(json!({ "fileData": { "mimeType": mime, "fileUri": url } }));
    }
    Err(unsupported(
        at,
        "Images must be base64 data URLs or https URLs.",
    ))
}

/// `data:<mime>;base64,<data>` → `inlineData`.
fn data_url(url: &str, at: &str) -> Result<Value, Unsupported> {
    let parsed = url
        .strip_prefix("data:")
        .and_then(|r| r.split_once(','))
        .and_then(|(meta, data)| Some((meta.strip_suffix(";base64")?, data)));
    match parsed {
        Some((mime, data)) if !mime.is_empty() => {
            Ok(json!({ "inlineData": { "mimeType": mime, "data": data } }))
        }
        _ => Err(unsupported(
            at,
            "Data URLs must have the form `data:<mime type>;base64,<data>`.",
        )),
    }
}

fn assistant_parts(
    m: &Value,
    at: &str,
    call_names: &mut HashMap<String, String>,
    b: &mut Builder,
) -> Result<Vec<Value>, Unsupported> {
    let mut parts = text_parts(m.get("content"), at)?;
    parts.retain(|p| p.get("text").and_then(Value::as_str) != Some(""));
    let calls = match m.get("tool_calls") {
        None | Some(Value::Null) => return Ok(parts),
        Some(Value::Array(calls)) => calls,
        Some(_) => {
            return Err(unsupported(
                format!("{at}.tool_calls"),
                "`tool_calls` must be an array.",
            ))
        }
    };
    for (k, c) in calls.iter().enumerate() {
        let here = format!("{at}.tool_calls[{k}]");
        let f = c.get("function");
        let name = f
            .and_then(|f| f.get("name"))
            .and_then(Value::as_str)
            .ok_or_else(|| {
                unsupported(format!("{here}.function.name"), "A tool call needs a name.")
            })?;
        let args = match f.and_then(|f| f.get("arguments")) {
            None | Some(Value::Null) => json!({}),
            Some(Value::String(s)) if s.trim().is_empty() => json!({}),
            Some(Value::String(s)) => match b.parse(s, &format!("{here}.function.arguments"))? {
                Some(v @ Value::Object(_)) => v,
                _ => {
                    return Err(unsupported(
                        format!("{here}.function.arguments"),
                        "Tool call arguments must be a JSON object encoded as a string.",
                    ))
                }
            },
            Some(_) => {
                return Err(unsupported(
                    format!("{here}.function.arguments"),
                    "Tool call arguments must be a string.",
                ))
            }
        };
        if let Some(id) = c.get("id").and_then(Value::as_str) {
            call_names.insert(id.to_string(), name.to_string());
        }
        let mut part = json!({ "functionCall": { "name": name, "args": args } });
        // Gemini 3 refuses a conversation whose function calls lost their
        // thought signature; it comes back where the response put it.
        if let Some(sig) = c
            .pointer("/extra_content/google/thought_signature")
            .and_then(Value::as_str)
        {
            part["thoughtSignature"] = sig.into();
        }
        parts.push(part);
    }
    Ok(parts)
}

/// A `tool` message → a `functionResponse` part, named after its call.
fn tool_result(
    m: &Value,
    at: &str,
    call_names: &HashMap<String, String>,
    b: &mut Builder,
) -> Result<Value, Unsupported> {
    let id = m.get("tool_call_id").and_then(Value::as_str);
    let name = id
        .and_then(|id| call_names.get(id))
        .map(String::as_str)
        .or_else(|| m.get("name").and_then(Value::as_str))
        .ok_or_else(|| {
            unsupported(
                format!("{at}.tool_call_id"),
                "`tool_call_id` must match a tool call of an earlier assistant message.",
            )
        })?;
    let text = match m.get("content") {
        Some(Value::String(s)) => s.clone(),
        other => text_parts(other, at)?
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect(),
    };
    let response = match b.parse(&text, &format!("{at}.content"))? {
        Some(v @ Value::Object(_)) => v,
        _ => json!({ "content": text }),
    };
    Ok(json!({ "functionResponse": { "name": name, "response": response } }))
}
