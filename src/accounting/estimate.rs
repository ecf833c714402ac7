//! Token estimates with a real tokenizer, for when the upstream reports no
//! usage. o200k for the GPT-4o / o-series / GPT-4.1+ families, cl100k
//! otherwise. The tokenizer loads on first use only.

use crate::base::endpoint::Endpoint;
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

/// The most prompt text the tokenizer reads for one estimate (256 KiB,
/// about 5 ms of tokenizer time). The text past it is estimated from its
/// byte length, at the rate of the part that was tokenized and at least one
/// token per 4 bytes.
pub const MAX_TOKENIZED_BYTES: usize = 256 * 1024;

/// The most choices (`n`, `best_of`) a reservation counts: what OpenAI
/// accepts. A larger value is reserved as this many.
pub const MAX_CHOICES: u64 = 128;

/// Estimated prompt tokens of a request body (at most
/// [`MAX_TOKENIZED_BYTES`] of its text tokenized).
pub fn prompt_tokens(model: &str, ep: Endpoint, body: &[u8]) -> u64 {
    let Some(doc) = document(ep, body) else {
        return 0;
    };
    prompt_of(model, ep, &doc).0
}

/// The request's fields as JSON: the body, or a form's text fields.
fn document(ep: Endpoint, body: &[u8]) -> Option<Value> {
    if ep.is_form() {
        crate::form::fields_json(body)
    } else {
        serde_json::from_slice::<Value>(body).ok()
    }
}

/// A request field the reservation depends on is not what it must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field, for `error.param`; `None` for the body as a whole.
    pub param: Option<&'static str>,
    pub message: String,
}

/// What a request may use at most, as the tokenizer counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Worst {
    pub prompt: u64,
    pub completion: u64,
    /// The whole prompt text was tokenized (none extrapolated).
    pub exact: bool,
}

/// The most tokens a request may use: its estimated prompt, and the
/// completion it allows: the largest of `max_completion_tokens`,
/// `max_tokens` and `max_output_tokens` that is set (else
/// `default_output`), times the larger of `n` and `best_of`. Embeddings,
/// moderations, images, speech and rerank produce no completion tokens
/// (images and speech are priced per unit, `accounting::units`).
///
/// The rule for those fields (RELIABILITY row 36): absent or `null` is
/// unset; a whole number ≥ 0 (≥ 1 for `n` and `best_of`) is taken, however
/// large, and the sums saturate (the store clamps a reservation to its
/// ceiling); anything else (negative, fractional, a string, a boolean, an
/// array or an object) is an error naming the field.
pub fn worst_case(
    model: &str,
    ep: Endpoint,
    body: &[u8],
    default_output: u64,
) -> Result<Worst, FieldError> {
    let doc = if ep.is_form() {
        // Multipart: its text fields, as strings (checked at admission).
        crate::form::fields_json(body).ok_or_else(|| FieldError {
            param: None,
            message: "The form body cannot be read for its token estimate.".into(),
        })?
    } else {
        serde_json::from_slice::<Value>(body).map_err(|e| FieldError {
            param: None,
            message: format!("The request body cannot be read for its token estimate: {e}."),
        })?
    };
    let (prompt, exact) = prompt_of(model, ep, &doc);
    if ep.is_transcription() {
        // Text out of audio in: no field bounds it, so the route's
        // default output is reserved.
        return Ok(Worst {
            prompt,
            completion: default_output,
            exact,
        });
    }
    if ep.no_completion() {
        return Ok(Worst {
            prompt,
            completion: 0,
            exact,
        });
    }
    let mut asked = None;
    for f in ["max_completion_tokens", "max_tokens", "max_output_tokens"] {
        if let Some(n) = whole(&doc, f, 0)? {
            asked = Some(asked.map_or(n, |a: u64| a.max(n)));
        }
    }
    let mut choices = 1u64;
    for f in ["n", "best_of"] {
        if let Some(n) = whole(&doc, f, 1)? {
            choices = choices.max(n);
        }
    }
    Ok(Worst {
        prompt,
        completion: asked
            .unwrap_or(default_output)
            .saturating_mul(choices.min(MAX_CHOICES)),
        exact,
    })
}

/// The value of the top-level integer field `name` of `doc`, at least
/// `min`. `Ok(None)`: absent or `null`. A whole number past `u64` counts as
/// `u64::MAX`.
fn whole(doc: &Value, name: &'static str, min: u64) -> Result<Option<u64>, FieldError> {
    let bad = || FieldError {
        param: Some(name),
        message: format!("`{name}` must be an integer of {min} or more."),
    };
    let n = match doc.get(name) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => n,
        Some(_) => return Err(bad()),
    };
    let v = match (n.as_u64(), n.as_f64()) {
        (Some(v), _) => v,
        // Negative integers, fractions and floats: only whole numbers ≥ 0.
        (None, Some(f)) if f.is_finite() && f >= 0.0 && f.fract() == 0.0 => {
            if f >= u64::MAX as f64 {
                u64::MAX
            } else {
                f as u64
            }
        }
        _ => return Err(bad()),
    };
    if v < min {
        return Err(bad());
    }
    Ok(Some(v))
}

/// Prompt text, gathered for the tokenizer up to [`MAX_TOKENIZED_BYTES`];
/// the bytes past it are only counted.
#[derive(Default)]
struct Text {
    buf: Vec<u8>,
    overflow: u64,
}

impl std::io::Write for Text {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let room = MAX_TOKENIZED_BYTES.saturating_sub(self.buf.len());
        let (now, later) = b.split_at(b.len().min(room));
        self.buf.extend_from_slice(now);
        self.overflow = self.overflow.saturating_add(later.len() as u64);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Text {
    fn push(&mut self, s: &str) {
        use std::io::Write;
        if !self.buf.is_empty() || self.overflow > 0 {
            let _ = self.write(b"\n");
        }
        let _ = self.write(s.as_bytes());
    }

    /// Appends `v` as JSON text (tool definitions and calls).
    fn push_json(&mut self, v: &Value) {
        use std::io::Write;
        if !self.buf.is_empty() || self.overflow > 0 {
            let _ = self.write(b"\n");
        }
        let _ = serde_json::to_writer(&mut *self, v);
    }

    /// Tokens in the text: the tokenized part, plus the rest at the same
    /// rate and at least one token per 4 bytes. `true`: all tokenized.
    fn tokens(&self, model: &str) -> (u64, bool) {
        // A cut inside a UTF-8 character costs one replacement character.
        let text = String::from_utf8_lossy(&self.buf);
        let counted = count(model, &text);
        if self.overflow == 0 {
            return (counted, true);
        }
        let len = self.buf.len().max(1) as u128;
        let at_rate = (u128::from(self.overflow) * u128::from(counted)).div_ceil(len);
        let floor = u128::from(self.overflow).div_ceil(4);
        let rest = u64::try_from(at_rate.max(floor)).unwrap_or(u64::MAX);
        (counted.saturating_add(rest), false)
    }
}

/// Estimated prompt tokens of a parsed request, and whether all its text
/// was tokenized.
fn prompt_of(model: &str, ep: Endpoint, doc: &Value) -> (u64, bool) {
    let mut text = Text::default();
    let mut messages = 0u64;
    match ep {
        // A Messages request is counted in its translated (chat) form.
        Endpoint::ChatCompletions | Endpoint::Messages => {
            if ep == Endpoint::Messages {
                strings(doc.get("system"), &mut text);
            }
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
                    text.push_json(calls);
                }
            }
            if let Some(tools) = doc.get("tools") {
                text.push_json(tools);
            }
        }
        Endpoint::Completions => strings(doc.get("prompt"), &mut text),
        Endpoint::Embeddings => strings(doc.get("input"), &mut text),
        Endpoint::Responses => {
            strings(doc.get("instructions"), &mut text);
            strings(doc.get("input"), &mut text);
        }
        Endpoint::Moderations | Endpoint::AudioSpeech => strings(doc.get("input"), &mut text),
        Endpoint::ImageGenerations | Endpoint::ImageEdits => strings(doc.get("prompt"), &mut text),
        // The audio itself is not tokenized: its `prompt` text is what is
        // known before the answer.
        Endpoint::AudioTranscriptions | Endpoint::AudioTranslations => {
            strings(doc.get("prompt"), &mut text)
        }
        Endpoint::Rerank => {
            strings(doc.get("query"), &mut text);
            strings(doc.get("documents"), &mut text);
        }
        // Files and batches carry no prompt (and are never estimated).
        Endpoint::FilesCreate
        | Endpoint::FilesList
        | Endpoint::FilesRetrieve
        | Endpoint::FilesDelete
        | Endpoint::FilesContent
        | Endpoint::BatchesCreate
        | Endpoint::BatchesList
        | Endpoint::BatchesRetrieve
        | Endpoint::BatchesCancel => {}
        Endpoint::Models | Endpoint::Healthz => {}
    }
    let framing = if messages > 0 {
        messages
            .saturating_mul(PER_MESSAGE)
            .saturating_add(REPLY_PRIMER)
    } else {
        0
    };
    let (tokens, exact) = text.tokens(model);
    (tokens.saturating_add(framing), exact)
}

/// Appends every string found in `v` (strings, arrays of them, and the `text`
/// or `content` of content parts), separated by newlines.
fn strings(v: Option<&Value>, out: &mut Text) {
    match v {
        Some(Value::String(s)) => out.push(s),
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

    fn chat(extra: &str) -> Vec<u8> {
        format!(r#"{{"model":"m","messages":[{{"role":"user","content":"hi"}}]{extra}}}"#)
            .into_bytes()
    }

    #[test]
    fn completion_fields_are_whole_numbers_or_a_400_naming_them() {
        let worst = |extra: &str| worst_case("m", Endpoint::ChatCompletions, &chat(extra), 1024);
        let completion = |extra: &str| worst(extra).map(|w| w.completion);
        assert_eq!(completion(""), Ok(1024));
        assert_eq!(completion(r#","max_tokens":null"#), Ok(1024));
        assert_eq!(completion(r#","max_tokens":0"#), Ok(0));
        assert_eq!(completion(r#","max_tokens":100,"n":3"#), Ok(300));
        assert_eq!(completion(r#","max_tokens":1e3"#), Ok(1000));
        assert_eq!(completion(r#","max_tokens":100.0"#), Ok(100));
        // The largest of the three is what the provider may honour.
        assert_eq!(
            completion(r#","max_tokens":10,"max_completion_tokens":70"#),
            Ok(70)
        );
        // Huge values saturate; choices stop at MAX_CHOICES.
        assert_eq!(
            completion(r#","max_tokens":18446744073709551615"#),
            Ok(u64::MAX)
        );
        assert_eq!(completion(r#","max_tokens":1e30"#), Ok(u64::MAX));
        assert_eq!(
            completion(r#","max_tokens":9223372036854775807,"n":9223372036854775807"#),
            Ok(u64::MAX)
        );
        assert_eq!(completion(r#","max_tokens":2,"n":100000"#), Ok(256));
        assert_eq!(completion(r#","max_tokens":2,"best_of":5,"n":2"#), Ok(10));
        for (extra, param) in [
            (r#","max_tokens":-1"#, "max_tokens"),
            (r#","max_tokens":1.5"#, "max_tokens"),
            (r#","max_tokens":"100""#, "max_tokens"),
            (r#","max_tokens":true"#, "max_tokens"),
            (r#","max_completion_tokens":[1]"#, "max_completion_tokens"),
            (r#","max_output_tokens":{}"#, "max_output_tokens"),
            (r#","max_tokens":-9223372036854775808"#, "max_tokens"),
            (r#","max_tokens":-1e300"#, "max_tokens"),
            (r#","n":0"#, "n"),
            (r#","n":-3"#, "n"),
            (r#","n":2.5"#, "n"),
            (r#","best_of":"2""#, "best_of"),
        ] {
            let e = worst(extra).unwrap_err();
            assert_eq!(e.param, Some(param), "{extra}");
            assert!(e.message.contains(param), "{extra}: {}", e.message);
        }
        // Embeddings reserve no completion and ignore those fields.
        let e = worst_case(
            "m",
            Endpoint::Embeddings,
            br#"{"model":"m","input":"hello","max_tokens":-1}"#,
            1024,
        );
        assert_eq!(e.map(|w| w.completion), Ok(0));
        // A body serde cannot read (a number out of range) is a 400 too.
        assert!(worst(r#","x":1e400"#).is_err());
    }

    #[test]
    fn prompt_text_is_tokenized_up_to_the_cap_then_estimated_from_its_length() {
        let body = |len: usize| {
            let content = "ab ".repeat(len / 3 + 1)[..len].to_string();
            serde_json::json!({"model": "m", "messages": [{"role": "user", "content": content}]})
                .to_string()
        };
        let at = body(MAX_TOKENIZED_BYTES);
        let w = worst_case("m", Endpoint::ChatCompletions, at.as_bytes(), 0).unwrap();
        assert!(w.exact, "at the cap: all tokenized");
        let past = body(MAX_TOKENIZED_BYTES + 1);
        let p = worst_case("m", Endpoint::ChatCompletions, past.as_bytes(), 0).unwrap();
        assert!(!p.exact, "one byte past: extrapolated");
        assert!(p.prompt > w.prompt - 2, "{} vs {}", p.prompt, w.prompt);
        // Far past the cap the estimate grows with the length, at least a
        // token per 4 bytes.
        let big = body(8 * MAX_TOKENIZED_BYTES);
        let b = worst_case("m", Endpoint::ChatCompletions, big.as_bytes(), 0).unwrap();
        assert!(!b.exact);
        assert!(
            b.prompt >= (8 * MAX_TOKENIZED_BYTES / 4) as u64,
            "{}",
            b.prompt
        );
        assert!(b.prompt >= 7 * w.prompt, "{} vs {}", b.prompt, w.prompt);
    }
}
