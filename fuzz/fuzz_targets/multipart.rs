//! `form::read` and `rewrite::parse_form` on any bytes: no panic; the parts
//! found are in bounds, in order, within the documented limits; and a form
//! whose model is rewritten reads again with the new model and every other
//! part's bytes unchanged.
#![no_main]

mod common;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tollgate::form::{read, MAX_PARTS, MAX_TEXT_FIELD};
use tollgate::rewrite::{attempt_body, json_string, parse_form};

fuzz_target!(|data: &[u8]| {
    // The boundary: 1 to 8 bytes of the input (lossy), else a fixed one.
    let (n, rest) = common::take_byte(data);
    let n = (n as usize % 9).min(rest.len());
    let boundary = match String::from_utf8_lossy(&rest[..n]).into_owned() {
        b if b.is_empty() || b.contains(['\r', '\n']) => "XyZ".to_string(),
        b => b,
    };
    let body = Bytes::copy_from_slice(&rest[n..]);
    let Ok(form) = read(&body, &boundary) else {
        return;
    };
    assert!(form.parts.len() <= MAX_PARTS);
    let mut end = 0;
    for p in &form.parts {
        assert!(p.value.start >= end && p.value.end <= body.len() && p.value.start <= p.value.end);
        assert!(p.file || p.value.len() <= MAX_TEXT_FIELD);
        end = p.value.end;
    }
    let Ok((parsed, _)) = parse_form(&body, &boundary) else {
        return;
    };
    let model = "gpt-4o-transcribe";
    let (out, added) = attempt_body(&body, &parsed, model, &json_string(model), true);
    assert!(!added);
    let (again, form2) = parse_form(&out, &boundary).expect("the rewritten form reads");
    assert_eq!(again.model, model);
    assert_eq!(form2.parts.len(), form.parts.len());
    for (a, b) in form.parts.iter().zip(&form2.parts) {
        assert_eq!(a.name, b.name);
        if a.value != parsed.model_span {
            assert_eq!(&body[a.value.clone()], &out[b.value.clone()]);
        }
    }
});
