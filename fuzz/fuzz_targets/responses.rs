//! The whole-response translators on any body: Anthropic and Gemini chat
//! responses → `chat.completion`, Gemini embeddings → an OpenAI list, and
//! an OpenAI `chat.completion` → an Anthropic `message`. Never panics; what
//! they produce is JSON.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tollgate::translate::gemini::EmbedOutput;
use tollgate::translate::{anthropic, gemini, messages, ResponseOpts};

fn json(b: &[u8]) {
    if let Err(e) = serde_json::from_slice::<Value>(b) {
        panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(b));
    }
}

fuzz_target!(|data: &[u8]| {
    let (which, body) = common::take_byte(data);
    let opts = ResponseOpts {
        model: "alias",
        request_id: "req-fuzz",
        include_usage: which & 8 != 0,
    };
    match which % 5 {
        0 => {
            if let Ok((b, _)) = anthropic::chat_response(body, &opts) {
                json(&b);
            }
        }
        1 => {
            if let Ok((b, _)) = gemini::chat_response(body, &opts) {
                json(&b);
            }
        }
        2 | 3 => {
            let output = if which % 5 == 2 { EmbedOutput::Float } else { EmbedOutput::Base64 };
            if let Ok((b, u, _)) = gemini::embed_response(body, &opts, output, || 7) {
                json(&b);
                let v: Value = serde_json::from_slice(&b).expect("JSON");
                assert_eq!(v["usage"]["prompt_tokens"].as_u64(), Some(u.prompt));
            }
        }
        _ => {
            if let Ok((b, _)) = messages::response(body, &opts) {
                json(&b);
            }
        }
    }
});
