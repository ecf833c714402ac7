//! OpenAI Chat Completions and Embeddings → Gemini (`gemini::chat_request`,
//! `gemini::embed_request`) on any body the gateway would parse for
//! translation: never panics, and a translation is a JSON object (with
//! `contents`, or one embedding request per input).
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tollgate::translate::bounds::{parse_body, MAX_DROPPED, MAX_EMBED_INPUTS};
use tollgate::translate::gemini::{self, EmbedKind};
use tollgate::translate::RequestOpts;

fuzz_target!(|data: &[u8]| {
    let (flags, body) = common::take_byte(data);
    let Ok(req) = parse_body(body) else {
        return;
    };
    let opts = RequestOpts {
        model: "gemini-2.5-flash",
        stream: flags & 1 != 0,
        default_max_tokens: (flags & 2 != 0).then_some(1024),
        drop_unsupported: flags & 4 != 0,
    };
    if let Ok(t) = gemini::chat_request(&req, &opts) {
        let out: Value = serde_json::from_slice(&t.body).expect("translation is JSON");
        assert!(out["contents"].is_array());
        assert!(t.dropped.len() <= MAX_DROPPED + 1);
    }
    if let Ok((kind, t)) = gemini::embed_request(&req, &opts) {
        let out: Value = serde_json::from_slice(&t.body).expect("translation is JSON");
        match kind {
            EmbedKind::Single => assert!(out["content"]["parts"].is_array()),
            EmbedKind::Batch => {
                let n = out["requests"].as_array().map_or(0, Vec::len);
                assert!(n >= 1 && n <= MAX_EMBED_INPUTS);
            }
        }
    }
});
