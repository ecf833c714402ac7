//! OpenAI Chat Completions → Anthropic Messages (`anthropic::chat_request`)
//! on any body the gateway would parse for translation: never panics, and
//! a translation is a JSON object for the route's model within the
//! dropped-field cap.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tollgate::translate::bounds::{parse_body, MAX_DROPPED};
use tollgate::translate::{anthropic, RequestOpts};

fuzz_target!(|data: &[u8]| {
    let (flags, body) = common::take_byte(data);
    let Ok(req) = parse_body(body) else {
        return;
    };
    let opts = RequestOpts {
        model: "claude-sonnet-4-5",
        stream: flags & 1 != 0,
        default_max_tokens: (flags & 2 != 0).then_some(1024),
        drop_unsupported: flags & 4 != 0,
    };
    if let Ok(t) = anthropic::chat_request(&req, &opts) {
        let out: Value = serde_json::from_slice(&t.body).expect("translation is JSON");
        assert_eq!(out["model"], "claude-sonnet-4-5");
        assert!(out["messages"].is_array());
        assert!(out["max_tokens"].as_u64().is_some_and(|n| n > 0));
        assert!(t.dropped.len() <= MAX_DROPPED + 1);
    }
});
