//! Anthropic Messages request → OpenAI Chat Completions request.
//!
//! - `system` (a string or text blocks) becomes the first message, `system`.
//! - User content: `text`, `image` (base64 → data URL, `url` → its URL) and
//!   `tool_result` blocks. Each `tool_result` becomes one `tool` message, in
//!   order, ahead of the user's other content in that turn (OpenAI wants the
//!   results right after the assistant's calls). An `is_error` result's text
//!   is prefixed with `Error: `, since OpenAI has no flag for it.
//! - Assistant content: `text` and `tool_use` (→ `tool_calls`, `input` as a
//!   JSON string).
//! - `tools`, `tool_choice` (`auto`/`any`/`tool`/`none` → `auto`/`required`/
//!   named/`none`; `disable_parallel_tool_use` → `parallel_tool_calls:
//!   false`), `max_tokens`, `stop_sequences` → `stop`, `temperature`,
//!   `top_p`, `metadata.user_id` → `user`, and `stream` (with
//!   `stream_options.include_usage`, so a stream reports its usage).
//! - `cache_control` hints are dropped silently: OpenAI caches on its own.
//! - Anything else OpenAI cannot honour (`top_k`, `thinking`, server tools,
//!   documents, ...) is refused with [`Unsupported`] naming the field, or
//!   dropped when the route says `drop_unsupported_params`.

use crate::translate::bounds;
use crate::translate::{RequestOpts, Translated, Unsupported};
use bytes::Bytes;
use serde_json::{json, Map, Value};

/// Translates a parsed Anthropic request body for an OpenAI-kind route.
pub fn request(body: &Value, opts: &RequestOpts<'_>) -> Result<Translated, Unsupported> {
    let mut t = Translator {
        drop: opts.drop_unsupported,
        dropped: Vec::new(),
    };
    let out = t.translate(body, opts)?;
    let bytes = serde_json::to_vec(&Value::Object(out))
        .map_err(|_| invalid("", "The request could not be translated."))?;
    Ok(Translated {
        body: Bytes::from(bytes),
        dropped: t.dropped,
    })
}

fn invalid(param: impl Into<String>, message: impl Into<String>) -> Unsupported {
    Unsupported {
        param: param.into(),
        message: message.into(),
    }
}

/// Top-level fields accepted without effect: the gateway routes by `model`
/// and always sets `stream_options` itself.
const IGNORED: &[&str] = &["model", "cache_control"];

struct Translator {
    drop: bool,
    dropped: Vec<String>,
}

impl Translator {
    /// A field OpenAI cannot honour: refused, or dropped and noted.
    fn unsupported(&mut self, param: String, why: &str) -> Result<(), Unsupported> {
        if self.drop {
            bounds::note_dropped(&mut self.dropped, &param);
            Ok(())
        } else {
            let message =
                format!("`{param}` is not supported for this model's provider ({why}); remove it.");
            Err(invalid(param, message))
        }
    }

    fn translate(
        &mut self,
        body: &Value,
        opts: &RequestOpts<'_>,
    ) -> Result<Map<String, Value>, Unsupported> {
        let doc = body
            .as_object()
            .ok_or_else(|| invalid("", "The request body must be a JSON object."))?;
        let mut out = Map::new();
        out.insert("model".into(), Value::from(opts.model));
        let mut messages = Vec::new();
        if let Some(system) = doc.get("system") {
            if let Some(text) = self.system_text(system)? {
                messages.push(json!({"role": "system", "content": text}));
            }
        }
        let turns = doc
            .get("messages")
            .and_then(Value::as_array)
            .ok_or_else(|| invalid("messages", "`messages` must be an array of messages."))?;
        if turns.is_empty() {
            return Err(invalid("messages", "`messages` must not be empty."));
        }
        for (i, m) in turns.iter().enumerate() {
            self.message(m, i, &mut messages)?;
        }
        out.insert("messages".into(), Value::Array(messages));
        for (key, value) in doc {
            match key.as_str() {
                "messages" | "system" => {}
                "max_tokens" => {
                    let n = value.as_u64().filter(|n| *n > 0).ok_or_else(|| {
                        invalid("max_tokens", "`max_tokens` must be a positive integer.")
                    })?;
                    out.insert("max_tokens".into(), n.into());
                }
                "stop_sequences" => {
                    let ok = value
                        .as_array()
                        .is_some_and(|a| a.iter().all(Value::is_string));
                    if !ok {
                        return Err(invalid(
                            "stop_sequences",
                            "`stop_sequences` must be an array of strings.",
                        ));
                    }
                    if value.as_array().is_some_and(|a| !a.is_empty()) {
                        out.insert("stop".into(), value.clone());
                    }
                }
                "temperature" | "top_p" => {
                    if !value.is_number() {
                        return Err(invalid(key.clone(), format!("`{key}` must be a number.")));
                    }
                    out.insert(key.clone(), value.clone());
                }
                "stream" => match value {
                    Value::Bool(true) => {
                        out.insert("stream".into(), true.into());
                        out.insert("stream_options".into(), json!({"include_usage": true}));
                    }
                    Value::Bool(false) | Value::Null => {}
                    _ => return Err(invalid("stream", "`stream` must be a boolean.")),
                },
                "metadata" => self.metadata(value, &mut out)?,
                "tools" => {
                    let tools = self.tools(value)?;
                    if !tools.is_empty() {
                        out.insert("tools".into(), Value::Array(tools));
                    }
                }
                "tool_choice" => self.tool_choice(value, &mut out)?,
                "thinking" if value.get("type").and_then(Value::as_str) == Some("disabled") => {}
                k if IGNORED.contains(&k) => {}
                other => self.unsupported(other.to_string(), "OpenAI has no equivalent")?,
            }
        }
        if !out.contains_key("max_tokens") {
            if let Some(n) = opts.default_max_tokens {
                out.insert("max_tokens".into(), n.into());
            }
        }
        Ok(out)
    }

    /// `system`: a string, or an array of text blocks (joined by newlines).
    fn system_text(&mut self, system: &Value) -> Result<Option<String>, Unsupported> {
        match system {
            Value::Null => Ok(None),
            Value::String(s) => Ok((!s.is_empty()).then(|| s.clone())),
            Value::Array(blocks) => {
                let mut parts = Vec::new();
                for (j, b) in blocks.iter().enumerate() {
                    let param = format!("system[{j}]");
                    match block_type(b, &param)? {
                        "text" => parts.push(text_of(b, &param)?.to_string()),
                        _ => self.unsupported(format!("{param}.type"), "only text blocks")?,
                    }
                }
                Ok((!parts.is_empty()).then(|| parts.join("\n")))
            }
            _ => Err(invalid(
                "system",
                "`system` must be a string or an array of text blocks.",
            )),
        }
    }

    fn message(&mut self, m: &Value, i: usize, out: &mut Vec<Value>) -> Result<(), Unsupported> {
        let role = m.get("role").and_then(Value::as_str);
        let content = m.get("content").ok_or_else(|| {
            invalid(
                format!("messages[{i}].content"),
                "Each message needs `content`.",
            )
        })?;
        match role {
            Some("user") => self.user(content, i, out),
            Some("assistant") => self.assistant(content, i, out),
            _ => Err(invalid(
                format!("messages[{i}].role"),
                "`role` must be `user` or `assistant`.",
            )),
        }
    }

    fn user(&mut self, content: &Value, i: usize, out: &mut Vec<Value>) -> Result<(), Unsupported> {
        let blocks = match content {
            Value::String(s) => {
                out.push(json!({"role": "user", "content": s}));
                return Ok(());
            }
            Value::Array(b) => b,
            _ => return Err(content_type_error(i)),
        };
        let mut parts = Vec::new();
        for (j, b) in blocks.iter().enumerate() {
            let param = format!("messages[{i}].content[{j}]");
            match block_type(b, &param)? {
                "text" => parts.push(json!({"type": "text", "text": text_of(b, &param)?})),
                "image" => parts.push(image_part(b, &param)?),
                "tool_result" => out.push(self.tool_result(b, &param)?),
                _ => self.unsupported(format!("{param}.type"), "an unsupported content block")?,
            }
        }
        if !parts.is_empty() {
            out.push(json!({"role": "user", "content": simplify(parts)}));
        }
        Ok(())
    }

    fn tool_result(&mut self, b: &Value, param: &str) -> Result<Value, Unsupported> {
        let id = b
            .get("tool_use_id")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid(format!("{param}.tool_use_id"), "`tool_use_id` is required."))?;
        let mut text = match b.get("content") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(inner)) => {
                let mut parts = Vec::new();
                for (k, c) in inner.iter().enumerate() {
                    let p = format!("{param}.content[{k}]");
                    match block_type(c, &p)? {
                        "text" => parts.push(text_of(c, &p)?.to_string()),
                        _ => self.unsupported(
                            format!("{p}.type"),
                            "OpenAI tool results hold text only",
                        )?,
                    }
                }
                parts.join("\n")
            }
            Some(_) => {
                return Err(invalid(
                    format!("{param}.content"),
                    "A tool result's `content` must be a string or an array of blocks.",
                ))
            }
        };
        if b.get("is_error").and_then(Value::as_bool) == Some(true) {
            text.insert_str(0, "Error: ");
        }
        Ok(json!({"role": "tool", "tool_call_id": id, "content": text}))
    }

    fn assistant(
        &mut self,
        content: &Value,
        i: usize,
        out: &mut Vec<Value>,
    ) -> Result<(), Unsupported> {
        let blocks = match content {
            Value::String(s) => {
                out.push(json!({"role": "assistant", "content": s}));
                return Ok(());
            }
            Value::Array(b) => b,
            _ => return Err(content_type_error(i)),
        };
        let mut text = String::new();
        let mut calls = Vec::new();
        for (j, b) in blocks.iter().enumerate() {
            let param = format!("messages[{i}].content[{j}]");
            match block_type(b, &param)? {
                "text" => text.push_str(text_of(b, &param)?),
                "tool_use" => calls.push(tool_call(b, &param)?),
                _ => self.unsupported(format!("{param}.type"), "an unsupported content block")?,
            }
        }
        let mut msg = Map::new();
        msg.insert("role".into(), "assistant".into());
        let content = if text.is_empty() && !calls.is_empty() {
            Value::Null
        } else {
            Value::String(text)
        };
        msg.insert("content".into(), content);
        if !calls.is_empty() {
            msg.insert("tool_calls".into(), Value::Array(calls));
        }
        out.push(Value::Object(msg));
        Ok(())
    }

    fn metadata(&mut self, value: &Value, out: &mut Map<String, Value>) -> Result<(), Unsupported> {
        match value {
            Value::Null => Ok(()),
            Value::Object(m) => {
                match m.get("user_id") {
                    None | Some(Value::Null) => {}
                    Some(Value::String(u)) => {
                        out.insert("user".into(), u.clone().into());
                    }
                    Some(_) => {
                        return Err(invalid(
                            "metadata.user_id",
                            "`metadata.user_id` must be a string.",
                        ))
                    }
                }
                Ok(())
            }
            _ => Err(invalid("metadata", "`metadata` must be an object.")),
        }
    }

    fn tools(&mut self, value: &Value) -> Result<Vec<Value>, Unsupported> {
        let tools = value
            .as_array()
            .ok_or_else(|| invalid("tools", "`tools` must be an array."))?;
        bounds::tools(tools.len())?;
        let mut out = Vec::with_capacity(tools.len());
        for (i, t) in tools.iter().enumerate() {
            let param = format!("tools[{i}]");
            match t.get("type").and_then(Value::as_str) {
                None | Some("custom") => {}
                Some(_) => {
                    self.unsupported(
                        format!("{param}.type"),
                        "server tools run only on Anthropic",
                    )?;
                    continue;
                }
            }
            let name = t
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid(format!("{param}.name"), "Each tool needs a `name`."))?;
            let mut f = Map::new();
            f.insert("name".into(), name.into());
            if let Some(d) = t.get("description").and_then(Value::as_str) {
                f.insert("description".into(), d.into());
            }
            let schema = t
                .get("input_schema")
                .filter(|s| s.is_object())
                .ok_or_else(|| {
                    invalid(
                        format!("{param}.input_schema"),
                        "Each tool needs an `input_schema` object.",
                    )
                })?;
            f.insert("parameters".into(), schema.clone());
            out.push(json!({"type": "function", "function": f}));
        }
        Ok(out)
    }

    fn tool_choice(
        &mut self,
        value: &Value,
        out: &mut Map<String, Value>,
    ) -> Result<(), Unsupported> {
        let kind = value.get("type").and_then(Value::as_str);
        let choice = match kind {
            Some("auto") => json!("auto"),
            Some("any") => json!("required"),
            Some("none") => json!("none"),
            Some("tool") => {
                let name = value.get("name").and_then(Value::as_str).ok_or_else(|| {
                    invalid(
                        "tool_choice.name",
                        "`tool_choice` of type `tool` needs a `name`.",
                    )
                })?;
                json!({"type": "function", "function": {"name": name}})
            }
            _ => {
                return Err(invalid(
                    "tool_choice.type",
                    "`tool_choice.type` must be `auto`, `any`, `tool` or `none`.",
                ))
            }
        };
        out.insert("tool_choice".into(), choice);
        if value
            .get("disable_parallel_tool_use")
            .and_then(Value::as_bool)
            == Some(true)
            && kind != Some("none")
        {
            out.insert("parallel_tool_calls".into(), false.into());
        }
        Ok(())
    }
}

fn content_type_error(i: usize) -> Unsupported {
    invalid(
        format!("messages[{i}].content"),
        "`content` must be a string or an array of content blocks.",
    )
}

fn block_type<'a>(b: &'a Value, param: &str) -> Result<&'a str, Unsupported> {
    b.get("type").and_then(Value::as_str).ok_or_else(|| {
        invalid(
            format!("{param}.type"),
            "Each content block needs a `type`.",
        )
    })
}

fn text_of<'a>(b: &'a Value, param: &str) -> Result<&'a str, Unsupported> {
    b.get("text").and_then(Value::as_str).ok_or_else(|| {
        invalid(
            format!("{param}.text"),
            "A text block needs a string `text`.",
        )
    })
}

/// One text part is sent as a plain string (the form every
/// OpenAI-compatible server takes); anything else as parts.
fn simplify(mut parts: Vec<Value>) -> Value {
    if parts.len() == 1 && parts[0].get("type").and_then(Value::as_str) == Some("text") {
        if let Some(Value::String(s)) = parts[0].get_mut("text").map(Value::take) {
            return Value::String(s);
        }
    }
    Value::Array(parts)
}

fn image_part(b: &Value, param: &str) -> Result<Value, Unsupported> {
    let source = b.get("source").ok_or_else(|| {
        invalid(
            format!("{param}.source"),
            "An image block needs a `source`.",
        )
    })?;
    let field = |k: &str| source.get(k).and_then(Value::as_str);
    let url = match field("type") {
        Some("base64") => match (field("media_type"), field("data")) {
            (Some(mt), Some(data)) => format!("data:{mt};base64,{data}"),
            _ => {
                return Err(invalid(
                    format!("{param}.source"),
                    "A base64 image needs `media_type` and `data`.",
                ))
            }
        },
        Some("url") => field("url")
            .ok_or_else(|| invalid(format!("{param}.source.url"), "A url image needs a `url`."))?
            .to_string(),
        _ => {
            return Err(invalid(
                format!("{param}.source.type"),
                "Image sources must be `base64` or `url` for this model's provider.",
            ))
        }
    };
    Ok(json!({"type": "image_url", "image_url": {"url": url}}))
}

fn tool_call(b: &Value, param: &str) -> Result<Value, Unsupported> {
    let id = b
        .get("id")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(format!("{param}.id"), "A tool_use block needs an `id`."))?;
    let name = b
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(format!("{param}.name"), "A tool_use block needs a `name`."))?;
    let input = b.get("input").cloned().unwrap_or_else(|| json!({}));
    Ok(json!({"id": id, "type": "function",
        "function": {"name": name, "arguments": input.to_string()}}))
}
