//! Anthropic Messages → OpenAI Chat Completions (`messages::request`) on any
//! body the gateway would parse for translation: never panics, and a
//! translation is a body the gateway itself accepts (`rewrite::parse`: it
//! is routed, limited and spliced as an OpenAI body) with the same model
//! and stream choice.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use tollgate::translate::bounds::{parse_body, MAX_DROPPED};
use tollgate::translate::{messages, RequestOpts};

fuzz_target!(|data: &[u8]| {
    let (flags, body) = common::take_byte(data);
    let Ok(req) = parse_body(body) else {
        return;
    };
    let Some(model) = req.get("model").and_then(|m| m.as_str()).filter(|m| !m.is_empty()) else {
        return;
    };
    let stream = req.get("stream") == Some(&serde_json::Value::Bool(true));
    let opts = RequestOpts {
        model,
        stream,
        default_max_tokens: (flags & 2 != 0).then_some(1024),
        drop_unsupported: flags & 4 != 0,
    };
    if let Ok(t) = messages::request(&req, &opts) {
        let p = tollgate::rewrite::parse(&t.body).unwrap_or_else(|e| {
            panic!("translation refused by the gateway ({}): {:?}", e.message, String::from_utf8_lossy(&t.body))
        });
        assert_eq!(p.model, model);
        assert_eq!(p.stream, stream);
        assert!(t.dropped.len() <= MAX_DROPPED + 1);
    }
});
