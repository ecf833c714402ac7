//! `kind: mock`: OpenAI-shaped answers made locally, with configurable
//! latency, chunk count and usage. Used by the demo config and for load tests.

use crate::base::endpoint::Endpoint;
use crate::config::MockSettings;
use crate::rewrite::Parsed;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use std::time::Duration;

/// What the mock sends.
pub(crate) enum Reply {
    Json(Bytes),
    /// Binary audio (`/v1/audio/speech`), sent as `audio/mpeg`.
    Audio(Bytes),
    /// SSE events (each a complete `data: …\n\n`), paced by `interval`.
    Sse {
        events: Vec<Bytes>,
        interval: Duration,
    },
}

/// Builds the reply for one request.
pub(crate) fn reply(
    ep: Endpoint,
    s: &MockSettings,
    model: &str,
    parsed: &Parsed,
    body: &[u8],
    request_id: &str,
) -> Reply {
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let id = format!("mock-{request_id}");
    match ep {
        Endpoint::Embeddings => Reply::Json(embeddings(s, model, body)),
        Endpoint::Moderations => Reply::Json(moderations(model, &id, body)),
        Endpoint::ImageGenerations => Reply::Json(images(created, body)),
        Endpoint::AudioSpeech => Reply::Audio(Bytes::from_static(SPEECH)),
        Endpoint::Rerank => Reply::Json(rerank(s, model, &id, body)),
        Endpoint::ImageEdits => Reply::Json(images_of(created, form_n(body))),
        Endpoint::AudioTranscriptions | Endpoint::AudioTranslations => {
            Reply::Json(transcription(s, body))
        }
        Endpoint::ChatCompletions if parsed.stream => Reply::Sse {
            events: chat_stream(s, model, &id, created, parsed.include_usage),
            interval: s.chunk_interval.get(),
        },
        Endpoint::Completions if parsed.stream => Reply::Sse {
            events: completion_stream(s, model, &id, created),
            interval: s.chunk_interval.get(),
        },
        Endpoint::Responses if parsed.stream => Reply::Sse {
            events: responses_stream(s, model, &id, created),
            interval: s.chunk_interval.get(),
        },
        Endpoint::Completions => Reply::Json(json_bytes(&json!({
            "id": id, "object": "text_completion", "created": created, "model": model,
            "choices": [{"index": 0, "text": s.content, "finish_reason": "stop", "logprobs": null}],
            "usage": usage(s),
        }))),
        Endpoint::Responses => Reply::Json(json_bytes(&response_object(s, model, &id, created))),
        _ => Reply::Json(json_bytes(&json!({
            "id": id, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": s.content},
                         "finish_reason": "stop", "logprobs": null}],
            "usage": usage(s),
        }))),
    }
}

/// The usage the mock reports for a request to `ep`.
pub(crate) fn usage_of(ep: Endpoint, s: &MockSettings) -> crate::accounting::Usage {
    crate::accounting::Usage {
        prompt: s.prompt_tokens,
        completion: if ep.no_completion() {
            0
        } else {
            s.completion_tokens
        },
        ..Default::default()
    }
}

fn json_bytes(v: &Value) -> Bytes {
    Bytes::from(v.to_string())
}

fn sse(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

fn usage(s: &MockSettings) -> Value {
    json!({
        "prompt_tokens": s.prompt_tokens,
        "completion_tokens": s.completion_tokens,
        "total_tokens": s.prompt_tokens + s.completion_tokens,
    })
}

/// Splits the content into `n` non-empty pieces on char boundaries.
fn pieces(content: &str, n: usize) -> Vec<String> {
    let chars: Vec<char> = content.chars().collect();
    let n = n.clamp(1, chars.len().max(1));
    let per = chars.len().div_ceil(n).max(1);
    let out: Vec<String> = chars.chunks(per).map(|c| c.iter().collect()).collect();
    if out.is_empty() {
        vec![String::new()]
    } else {
        out
    }
}

fn chat_stream(
    s: &MockSettings,
    model: &str,
    id: &str,
    created: u64,
    with_usage: bool,
) -> Vec<Bytes> {
    let chunk = |delta: Value, finish: Value| {
        let mut c = json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": null}],
        });
        if with_usage {
            c["usage"] = Value::Null;
        }
        sse(&c)
    };
    let mut out = vec![chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    )];
    for p in pieces(&s.content, s.stream_chunks) {
        out.push(chunk(json!({"content": p}), Value::Null));
    }
    out.push(chunk(json!({}), json!("stop")));
    if with_usage {
        out.push(sse(&json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [], "usage": usage(s),
        })));
    }
    out.push(Bytes::from_static(b"data: [DONE]\n\n"));
    out
}

fn completion_stream(s: &MockSettings, model: &str, id: &str, created: u64) -> Vec<Bytes> {
    let mut out: Vec<Bytes> = pieces(&s.content, s.stream_chunks)
        .into_iter()
        .map(|p| {
            sse(
                &json!({"id": id, "object": "text_completion", "created": created, "model": model,
                "choices": [{"index": 0, "text": p, "finish_reason": null, "logprobs": null}]}),
            )
        })
        .collect();
    out.push(sse(
        &json!({"id": id, "object": "text_completion", "created": created, "model": model,
        "choices": [{"index": 0, "text": "", "finish_reason": "stop", "logprobs": null}]}),
    ));
    out.push(Bytes::from_static(b"data: [DONE]\n\n"));
    out
}

fn response_object(s: &MockSettings, model: &str, id: &str, created: u64) -> Value {
    json!({
        "id": id, "object": "response", "created_at": created, "status": "completed", "model": model,
        "output": [{"type": "message", "id": format!("msg-{id}"), "status": "completed", "role": "assistant",
                    "content": [{"type": "output_text", "text": s.content, "annotations": []}]}],
        "usage": {"input_tokens": s.prompt_tokens, "output_tokens": s.completion_tokens,
                  "total_tokens": s.prompt_tokens + s.completion_tokens},
    })
}

fn responses_stream(s: &MockSettings, model: &str, id: &str, created: u64) -> Vec<Bytes> {
    let event = |name: &str, v: Value| Bytes::from(format!("event: {name}\ndata: {v}\n\n"));
    let mut start = response_object(s, model, id, created);
    start["status"] = json!("in_progress");
    start["output"] = json!([]);
    let mut out = vec![event(
        "response.created",
        json!({"type": "response.created", "response": start}),
    )];
    for p in pieces(&s.content, s.stream_chunks) {
        out.push(event(
            "response.output_text.delta",
            json!({"type": "response.output_text.delta", "output_index": 0, "content_index": 0, "delta": p}),
        ));
    }
    out.push(event(
        "response.completed",
        json!({"type": "response.completed", "response": response_object(s, model, id, created)}),
    ));
    out
}

/// The mock's speech: an MPEG audio frame header and bytes that are not
/// UTF-8, so a test sees whether they pass untouched.
const SPEECH: &[u8] = b"\xff\xf3\x44\xc4\x00\x00\x00\x03\x48\x00\x00\x00\x00\xfe\x80\x00tollgate mock speech\x00\xc3\x28\xa0\xa1";

/// A 1×1 transparent PNG, base64-encoded.
const PIXEL_PNG: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==";

/// How many inputs `input` holds: a string is one, an array one per item.
fn input_count(body: &[u8]) -> usize {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("input").and_then(Value::as_array).map(Vec::len))
        .unwrap_or(1)
        .clamp(1, 2048)
}

fn moderations(model: &str, id: &str, body: &[u8]) -> Bytes {
    let categories = ["harassment", "hate", "self-harm", "sexual", "violence"];
    let flags: serde_json::Map<String, Value> = categories
        .iter()
        .map(|c| (c.to_string(), json!(false)))
        .collect();
    let scores: serde_json::Map<String, Value> = categories
        .iter()
        .map(|c| (c.to_string(), json!(0.0001)))
        .collect();
    let result = json!({"flagged": false, "categories": flags, "category_scores": scores});
    let results = vec![result; input_count(body)];
    json_bytes(&json!({"id": format!("modr-{id}"), "model": model, "results": results}))
}

fn images(created: u64, body: &[u8]) -> Bytes {
    let n = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("n").and_then(Value::as_u64))
        .unwrap_or(1);
    images_of(created, n)
}

/// A form's `n` field (an image edit's), 1 if absent.
fn form_n(body: &[u8]) -> u64 {
    crate::form::fields_json(body)
        .and_then(|d| {
            d.get("n")
                .and_then(Value::as_str)
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(1)
}

/// A transcription in the `json` shape gpt-4o-transcribe answers (`text`
/// and token `usage`), or whisper's `verbose_json` (with `duration`: the
/// file part's size in bytes / 32000, as 16 kHz 16-bit mono audio) when the
/// form asks for it.
fn transcription(s: &MockSettings, body: &[u8]) -> Bytes {
    let fields = crate::form::fields_json(body).unwrap_or(Value::Null);
    if fields.get("response_format").and_then(Value::as_str) == Some("verbose_json") {
        let bytes = crate::form::sniff(body)
            .and_then(|f| f.parts.iter().find(|p| p.file).map(|p| p.value.len()))
            .unwrap_or(0);
        return json_bytes(&json!({
            "task": "transcribe", "language": "english",
            "duration": bytes as f64 / 32000.0, "text": s.content, "segments": [],
        }));
    }
    json_bytes(&json!({
        "text": s.content,
        "usage": {
            "type": "tokens",
            "input_tokens": s.prompt_tokens,
            "output_tokens": s.completion_tokens,
            "total_tokens": s.prompt_tokens + s.completion_tokens,
        },
    }))
}

fn images_of(created: u64, n: u64) -> Bytes {
    let n = n.clamp(1, crate::accounting::units::MAX_IMAGES);
    let data: Vec<Value> = (0..n)
        .map(|_| json!({"b64_json": PIXEL_PNG, "revised_prompt": null}))
        .collect();
    json_bytes(&json!({"created": created, "data": data}))
}

fn rerank(s: &MockSettings, model: &str, id: &str, body: &[u8]) -> Bytes {
    let doc = serde_json::from_slice::<Value>(body).unwrap_or(Value::Null);
    let docs = doc
        .get("documents")
        .and_then(Value::as_array)
        .map_or(0, |d| d.len().min(10_000));
    let top = doc
        .get("top_n")
        .and_then(Value::as_u64)
        .map_or(docs, |n| (n as usize).min(docs));
    let results: Vec<Value> = (0..top)
        .map(|i| json!({"index": i, "relevance_score": 1.0 / (i as f64 + 1.0)}))
        .collect();
    json_bytes(&json!({
        "id": id, "model": model, "results": results,
        "usage": {"total_tokens": s.prompt_tokens},
    }))
}

#[derive(Deserialize)]
struct EmbedInput<'a> {
    #[serde(borrow)]
    input: Option<&'a RawValue>,
}

fn embeddings(s: &MockSettings, model: &str, body: &[u8]) -> Bytes {
    // Count the inputs: a string is one, an array of strings (or of token
    // arrays) is one each.
    let count = serde_json::from_slice::<EmbedInput>(body)
        .ok()
        .and_then(|e| e.input)
        .map(
            |raw| match serde_json::from_str::<Vec<&RawValue>>(raw.get()) {
                Ok(items)
                    if items
                        .first()
                        .is_some_and(|i| i.get().starts_with(['"', '['])) =>
                {
                    items.len()
                }
                _ => 1,
            },
        )
        .unwrap_or(1)
        .min(2048);
    let dims = s.embedding_dimensions.max(1);
    let data: Vec<Value> = (0..count)
        .map(|i| {
            let v: Vec<f64> = (0..dims)
                .map(|d| (((i * 31 + d * 7) % 100) as f64) / 100.0 - 0.5)
                .collect();
            json!({"object": "embedding", "index": i, "embedding": v})
        })
        .collect();
    json_bytes(&json!({
        "object": "list", "data": data, "model": model,
        "usage": {"prompt_tokens": s.prompt_tokens, "total_tokens": s.prompt_tokens},
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rewrite::parse;

    #[test]
    fn stream_has_role_chunks_and_done() {
        let s = MockSettings::default();
        let body = br#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#;
        let p = parse(body).unwrap();
        let Reply::Sse { events, .. } = reply(Endpoint::ChatCompletions, &s, "m", &p, body, "r")
        else {
            panic!("expected a stream");
        };
        assert!(events[0].starts_with(b"data: {"));
        assert_eq!(events.len(), s.stream_chunks + 4);
        assert!(events[events.len() - 2]
            .windows(13)
            .any(|w| w == b"\"total_tokens"));
        assert_eq!(&events[events.len() - 1][..], b"data: [DONE]\n\n");
    }

    #[test]
    fn embeddings_count_inputs() {
        let s = MockSettings::default();
        let body = br#"{"model":"e","input":["a","b","c"]}"#;
        let p = parse(body).unwrap();
        let Reply::Json(b) = reply(Endpoint::Embeddings, &s, "e", &p, body, "r") else {
            panic!("expected json");
        };
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["data"].as_array().unwrap().len(), 3);
    }
}
