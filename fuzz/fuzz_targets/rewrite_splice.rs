//! `rewrite::parse` then `attempt_body`: the body built for an attempt
//! parses again, carries the new model (and `include_usage` when it was
//! added), and otherwise means what the client's body meant: as JSON it
//! equals the client's document with `model` (and `stream_options`)
//! changed. A model that does not change leaves the bytes alone.
#![no_main]

mod common;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tollgate::rewrite::{attempt_body, json_string, parse, splice};

fuzz_target!(|data: &[u8]| {
    let (flags, rest) = common::take_byte(data);
    // The new model: a few bytes of the input (lossy), or a fixed name.
    let (n, rest) = common::take_byte(rest);
    let n = (n as usize % 16).min(rest.len());
    let model = match String::from_utf8_lossy(&rest[..n]).into_owned() {
        m if m.is_empty() => "gpt-4o-mini".to_string(),
        m => m,
    };
    let body = Bytes::copy_from_slice(&rest[n..]);
    let Ok(p) = parse(&body) else {
        return;
    };
    let model_json = json_string(&model);
    let ask = flags & 1 == 1;
    let (out, added) = attempt_body(&body, &p, &model, &model_json, ask);
    let again = parse(&out).unwrap_or_else(|e| {
        panic!("the attempt body does not parse ({}): {:?}", e.message, String::from_utf8_lossy(&out))
    });
    assert_eq!(again.model, model);
    assert_eq!(again.stream, p.stream);
    assert_eq!(added, ask && p.stream && !p.include_usage);
    assert_eq!(again.include_usage, p.include_usage || added);
    if let Ok(mut want) = serde_json::from_slice::<Value>(&body) {
        let got: Value = serde_json::from_slice(&out).expect("JSON");
        want["model"] = Value::from(model.as_str());
        if added {
            let so = want
                .as_object_mut()
                .expect("object")
                .entry("stream_options")
                .or_insert_with(|| Value::Object(Default::default()));
            if !so.is_object() {
                *so = Value::Object(Default::default());
            }
            so["include_usage"] = Value::Bool(true);
        }
        assert_eq!(got, want);
    }
    let same = splice(&body, &p.model_span, &body[p.model_span.clone()]);
    assert_eq!(same.as_ptr(), body.as_ptr(), "an unchanged model copied the body");
});
