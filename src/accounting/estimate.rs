//! Token estimates with a real tokenizer, for when the upstream reports no
//! usage. o200k for the GPT-4o / o-series / GPT-4.1+ families, cl100k
//! otherwise. The tokenizer loads on first use only.

use crate::proxy::endpoint::Endpoint;
use serde_json::Value;
use tiktoken_rs::CoreBPE;

/// Tokens added per chat message for its role and framing (OpenAI's rule of thumb).
const PER_MESSAGE: u64 = 3;
/// Tokens that prime the assistant's reply.
const REPLY_PRIMER: u64 = 3;

fn uses_o200k(model: &str) -> bool {
    let m = model
        .rsplit('/')
        .next()
        .unwrap_or(model)
        .to_ascii_lowercase();
    [
        "gpt-4o",
        "gpt-4.1",
        "gpt-4.5",
        "gpt-5",
        "o1",
        "o3",
        "o4",
        "chatgpt-4o",
        "gpt-oss",
    ]
    .iter()
    .any(|p| m.starts_with(p))
}

fn encoder(model: &str) -> &'static CoreBPE {
    if uses_o200k(model) {
        tiktoken_rs::o200k_base_singleton()
    } else {
        tiktoken_rs::cl100k_base_singleton()
    }
}

/// Loads both tokenizers (about a tenth of a second each), so the first
/// requests that need an estimate do not wait for them.
pub fn warm() {
    let _ = tiktoken_rs::o200k_base_singleton();
    let _ = tiktoken_rs::cl100k_base_singleton();
}

/// Tokens in `text` for `model`'s tokenizer.
pub fn count(model: &str, text: &str) -> u64 {
    if text.is_empty() {
        return 0;
    }
    encoder(model).encode_ordinary(text).len() as u64
}

/// Estimated prompt tokens of a request body.
pub fn prompt_tokens(model: &str, ep: Endpoint, body: &[u8]) -> u64 {
    let Ok(doc) = serde_json::from_slice::<Value>(body) else {
        return 0;
    };
    prompt_tokens_of(model, ep, &doc)
}

/// The most tokens a request may use: its estimated prompt, and the
/// completion it allows (`max_tokens`, `max_completion_tokens` or
/// `max_output_tokens`, else `default_output`, times `n`). Embeddings
/// produce no completion.
pub fn worst_case(model: &str, ep: Endpoint, body: &[u8], default_output: u64) -> (u64, u64) {
    let Ok(doc) = serde_json::from_slice::<Value>(body) else {
        return (0, default_output);
    };
    let prompt = prompt_tokens_of(model, ep, &doc);
    if ep == Endpoint::Embeddings {
        return (prompt, 0);
    }
    let asked = ["max_completion_tokens", "max_tokens", "max_output_tokens"]
        .iter()
        .find_map(|f| doc.get(*f).and_then(Value::as_u64));
    let choices = doc
        .get("n")
        .and_then(Value::as_u64)
        .unwrap_or(1)
        .clamp(1, 128);
    (
        prompt,
        asked.unwrap_or(default_output).saturating_mul(choices),
    )
}

fn prompt_tokens_of(model: &str, ep: Endpoint, doc: &Value) -> u64 {
    let mut text = String::new();
    let mut messages = 0u64;
    match ep {
        // A Messages request is counted in its translated (chat) form.
        Endpoint::ChatCompletions | Endpoint::Messages => {
            for m in doc
                .get("messages")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                messages += 1;
                strings(m.get("content"), &mut text);
                strings(m.get("name"), &mut text);
                if let Some(calls) = m.get("tool_calls") {
                    text.push_str(&calls.to_string());
                }
            }
            if let Some(tools) = doc.get("tools") {
                text.push_str(&tools.to_string());
            }
        }
        Endpoint::Completions => strings(doc.get("prompt"), &mut text),
        Endpoint::Embeddings => strings(doc.get("input"), &mut text),
        Endpoint::Responses => {
            strings(doc.get("instructions"), &mut text);
            strings(doc.get("input"), &mut text);
        }
        Endpoint::Models | Endpoint::Healthz => {}
    }
    let framing = if messages > 0 {
        messages * PER_MESSAGE + REPLY_PRIMER
    } else {
        0
    };
    count(model, &text) + framing
}

/// Appends every string found in `v` (strings, arrays of them, and the `text`
/// or `content` of content parts), separated by newlines.
fn strings(v: Option<&Value>, out: &mut String) {
    match v {
        Some(Value::String(s)) => {
            if !out.is_empty() {
                out.push('\n');
            }
            out.push_str(s);
        }
        Some(Value::Array(items)) => items.iter().for_each(|i| strings(Some(i), out)),
        Some(Value::Object(o)) => {
            strings(o.get("text"), out);
            strings(o.get("content"), out);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_family_tokenizer() {
        assert!(uses_o200k("gpt-4o-mini"));
        assert!(uses_o200k("openai/o3-mini"));
        assert!(!uses_o200k("gpt-3.5-turbo"));
        assert!(!uses_o200k("qwen2.5-7b-instruct"));
    }

    #[test]
    fn counts_chat_messages_with_framing() {
        let body = br#"{"model":"gpt-4o","messages":[{"role":"system","content":"Be brief."},
            {"role":"user","content":[{"type":"text","text":"Hello there"}]}]}"#;
        let n = prompt_tokens("gpt-4o", Endpoint::ChatCompletions, body);
        let text = count("gpt-4o", "Be brief.\nHello there");
        assert_eq!(n, text + 2 * PER_MESSAGE + REPLY_PRIMER);
        assert!((4..=8).contains(&text), "{text}");
    }
}
