//! Turns the bytes a captured response sent into what it said: its text,
//! its tool calls and its finish reason. Streams (OpenAI chat and
//! completions chunks, Responses events, Anthropic Messages events) are
//! assembled from their events; whole bodies are read as JSON. Runs on the
//! capture writer's thread, never on the request path. Only the first
//! choice is read (`n > 1` answers keep their first).

use crate::sse::Scanner;
use serde_json::Value;

/// Largest SSE event read when assembling (the meter's limit).
const MAX_EVENT: usize = crate::accounting::meter::MAX_EVENT_BYTES;

/// One tool call: its function's name and its arguments as sent.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ToolCall {
    pub name: String,
    pub arguments: String,
}

/// What a response said.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Output {
    pub text: String,
    pub tools: Vec<ToolCall>,
    pub finish: Option<String>,
}

/// Assembles a response from its bytes; `stream`: they are an SSE stream.
pub fn assemble(raw: &[u8], stream: bool) -> Output {
    let mut out = Output::default();
    if stream {
        let mut scanner = Scanner::new(MAX_EVENT);
        let _ = scanner.feed(raw, |e| {
            if e.data == b"[DONE]" || e.data.is_empty() {
                return;
            }
            if let Ok(v) = serde_json::from_slice::<Value>(e.data) {
                on_event(&v, &mut out);
            }
        });
        // A stream cut before its final blank line: its last event too.
        let _ = scanner.feed(b"\n\n", |e| {
            if let Ok(v) = serde_json::from_slice::<Value>(e.data) {
                on_event(&v, &mut out);
            }
        });
        return out;
    }
    match serde_json::from_slice::<Value>(raw) {
        Ok(v) => on_body(&v, &mut out),
        Err(_) => out.text = String::from_utf8_lossy(raw).into_owned(),
    }
    out
}

fn s(v: &Value) -> Option<&str> {
    v.as_str()
}

/// One streamed event, in whichever shape it comes.
fn on_event(v: &Value, out: &mut Output) {
    if let Some(c) = v.get("choices").and_then(|c| c.get(0)) {
        // OpenAI chat (`delta`) or completions (`text`) chunk.
        let delta = c.get("delta");
        if let Some(t) = delta.and_then(|d| d.get("content")).and_then(s) {
            out.text.push_str(t);
        }
        if let Some(t) = c.get("text").and_then(s) {
            out.text.push_str(t);
        }
        if let Some(calls) = delta
            .and_then(|d| d.get("tool_calls"))
            .and_then(Value::as_array)
        {
            for call in calls {
                let i = call
                    .get("index")
                    .and_then(Value::as_u64)
                    .and_then(|i| usize::try_from(i).ok())
                    .unwrap_or(out.tools.len().saturating_sub(1));
                // Bounded: an index far past the calls seen is a new call.
                let i = i.min(out.tools.len());
                if i == out.tools.len() {
                    out.tools.push(ToolCall::default());
                }
                let f = call.get("function");
                if let (Some(t), Some(n)) = (
                    out.tools.get_mut(i),
                    f.and_then(|f| f.get("name")).and_then(s),
                ) {
                    t.name.push_str(n);
                }
                if let (Some(t), Some(a)) = (
                    out.tools.get_mut(i),
                    f.and_then(|f| f.get("arguments")).and_then(s),
                ) {
                    t.arguments.push_str(a);
                }
            }
        }
        if let Some(f) = c.get("finish_reason").and_then(s) {
            out.finish = Some(f.to_string());
        }
        return;
    }
    match v.get("type").and_then(s) {
        // Anthropic Messages events.
        Some("content_block_start") => {
            let b = v.get("content_block");
            if b.and_then(|b| b.get("type")).and_then(s) == Some("tool_use") {
                out.tools.push(ToolCall {
                    name: b
                        .and_then(|b| b.get("name"))
                        .and_then(s)
                        .unwrap_or_default()
                        .to_string(),
                    arguments: String::new(),
                });
            } else if let Some(t) = b.and_then(|b| b.get("text")).and_then(s) {
                out.text.push_str(t);
            }
        }
        Some("content_block_delta") => {
            let d = v.get("delta");
            if let Some(t) = d.and_then(|d| d.get("text")).and_then(s) {
                out.text.push_str(t);
            }
            if let (Some(t), Some(p)) = (
                out.tools.last_mut(),
                d.and_then(|d| d.get("partial_json")).and_then(s),
            ) {
                t.arguments.push_str(p);
            }
        }
        Some("message_delta") => {
            if let Some(r) = v
                .get("delta")
                .and_then(|d| d.get("stop_reason"))
                .and_then(s)
            {
                out.finish = Some(r.to_string());
            }
        }
        // Responses events.
        Some("response.output_text.delta") => {
            if let Some(t) = v.get("delta").and_then(s) {
                out.text.push_str(t);
            }
        }
        Some("response.output_item.done") => {
            if let Some(item) = v.get("item") {
                function_call(item, out);
            }
        }
        Some("response.completed") => {
            if let Some(st) = v.get("response").and_then(|r| r.get("status")).and_then(s) {
                out.finish = Some(st.to_string());
            }
        }
        _ => {}
    }
}

/// A Responses `function_call` output item.
fn function_call(item: &Value, out: &mut Output) {
    if item.get("type").and_then(s) == Some("function_call") {
        out.tools.push(ToolCall {
            name: item.get("name").and_then(s).unwrap_or_default().to_string(),
            arguments: item
                .get("arguments")
                .and_then(s)
                .unwrap_or_default()
                .to_string(),
        });
    }
}

/// A whole response body.
fn on_body(v: &Value, out: &mut Output) {
    if let Some(c) = v.get("choices").and_then(|c| c.get(0)) {
        let m = c.get("message");
        if let Some(t) = m.and_then(|m| m.get("content")).and_then(s) {
            out.text.push_str(t);
        }
        if let Some(t) = c.get("text").and_then(s) {
            out.text.push_str(t);
        }
        for call in m
            .and_then(|m| m.get("tool_calls"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let f = call.get("function");
            out.tools.push(ToolCall {
                name: f
                    .and_then(|f| f.get("name"))
                    .and_then(s)
                    .unwrap_or_default()
                    .to_string(),
                arguments: f
                    .and_then(|f| f.get("arguments"))
                    .and_then(s)
                    .unwrap_or_default()
                    .to_string(),
            });
        }
        out.finish = c.get("finish_reason").and_then(s).map(str::to_string);
        return;
    }
    if let Some(blocks) = v.get("content").and_then(Value::as_array) {
        // An Anthropic message.
        for b in blocks {
            match b.get("type").and_then(s) {
                Some("text") => out
                    .text
                    .push_str(b.get("text").and_then(s).unwrap_or_default()),
                Some("tool_use") => out.tools.push(ToolCall {
                    name: b.get("name").and_then(s).unwrap_or_default().to_string(),
                    arguments: b.get("input").map(Value::to_string).unwrap_or_default(),
                }),
                _ => {}
            }
        }
        out.finish = v.get("stop_reason").and_then(s).map(str::to_string);
        return;
    }
    if let Some(items) = v.get("output").and_then(Value::as_array) {
        // A Responses answer.
        for item in items {
            for part in item
                .get("content")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if part.get("type").and_then(s) == Some("output_text") {
                    out.text
                        .push_str(part.get("text").and_then(s).unwrap_or_default());
                }
            }
            function_call(item, out);
        }
        out.finish = v.get("status").and_then(s).map(str::to_string);
        return;
    }
    // Anything else (an error body): its JSON as text.
    out.text = v.to_string();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assembles_a_chat_stream_with_text_tool_calls_and_finish() {
        let raw = concat!(
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Hel\"}}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\"}}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"name\":\"get\",\"arguments\":\"{\\\"a\\\"\"}}]}}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\":1}\"}}]}}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\n",
            "data: [DONE]\n\n"
        );
        let o = assemble(raw.as_bytes(), true);
        assert_eq!(o.text, "Hello");
        assert_eq!(
            o.tools,
            vec![ToolCall {
                name: "get".into(),
                arguments: "{\"a\":1}".into()
            }]
        );
        assert_eq!(o.finish.as_deref(), Some("tool_calls"));
    }

    #[test]
    fn assembles_an_anthropic_stream() {
        let raw = concat!(
            "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n",
            "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"}}\n\n",
        );
        let o = assemble(raw.as_bytes(), true);
        assert_eq!(o.text, "Hi");
        assert_eq!(o.finish.as_deref(), Some("end_turn"));
    }

    #[test]
    fn reads_whole_chat_and_messages_bodies_and_keeps_other_text() {
        let chat = br#"{"choices":[{"message":{"content":"ok","tool_calls":[{"function":{"name":"f","arguments":"{}"}}]},"finish_reason":"stop"}]}"#;
        let o = assemble(chat, false);
        assert_eq!(o.text, "ok");
        assert_eq!(o.tools[0].name, "f");
        assert_eq!(o.finish.as_deref(), Some("stop"));
        let msg = br#"{"content":[{"type":"text","text":"a"},{"type":"tool_use","name":"g","input":{"x":1}}],"stop_reason":"tool_use"}"#;
        let o = assemble(msg, false);
        assert_eq!(
            (o.text.as_str(), o.tools[0].arguments.as_str()),
            ("a", "{\"x\":1}")
        );
        assert_eq!(assemble(b"not json", false).text, "not json");
    }
}
