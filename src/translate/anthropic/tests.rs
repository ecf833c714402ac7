//! Golden tests against the fixtures in tests/fixtures/anthropic (written from
//! Anthropic's API reference), and split-anywhere properties for streams.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use crate::accounting::Usage;
use crate::translate::pipe::Pipe;
use crate::translate::{RequestOpts, ResponseOpts};
use bytes::BytesMut;
use proptest::prelude::*;
use serde_json::{json, Value};

macro_rules! fixture {
    ($name:literal) => {
        include_str!(concat!("../../../tests/fixtures/anthropic/", $name))
    };
}

fn opts(model: &str) -> RequestOpts<'_> {
    RequestOpts {
        model,
        stream: false,
        default_max_tokens: None,
        drop_unsupported: false,
    }
}

fn translate(req: Value, o: &RequestOpts) -> Result<Value, crate::translate::Unsupported> {
    chat_request(&req, o).map(|t| serde_json::from_slice(&t.body).unwrap())
}

#[test]
fn golden_request_with_system_images_tools_and_tool_results() {
    let req: Value = serde_json::from_str(fixture!("request_openai.json")).unwrap();
    let want: Value = serde_json::from_str(fixture!("request_anthropic.json")).unwrap();
    let o = RequestOpts {
        stream: true,
        ..opts("claude-sonnet-4-5")
    };
    let got = translate(req, &o).unwrap();
    assert_eq!(got, want, "\n got: {got:#}\nwant: {want:#}");
}

#[test]
fn max_tokens_comes_from_the_body_or_the_route_else_400_names_it() {
    let base = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
    let e = translate(base.clone(), &opts("c")).unwrap_err();
    assert_eq!(e.param, "max_tokens");
    assert!(e.message.contains("max_tokens"), "{}", e.message);
    let with_default = RequestOpts {
        default_max_tokens: Some(300),
        ..opts("c")
    };
    assert_eq!(
        translate(base.clone(), &with_default).unwrap()["max_tokens"],
        300
    );
    let mut body = base.clone();
    body["max_tokens"] = json!(42);
    assert_eq!(translate(body, &with_default).unwrap()["max_tokens"], 42);
    let mut body = base;
    body["max_completion_tokens"] = json!(7);
    body["max_tokens"] = json!(42);
    assert_eq!(translate(body, &opts("c")).unwrap()["max_tokens"], 7);
}

#[test]
fn unsupported_fields_are_refused_by_name_or_dropped() {
    let body = json!({"model": "m", "max_tokens": 5, "presence_penalty": 0.5,
        "messages": [{"role": "user", "content": "hi"}]});
    let e = translate(body.clone(), &opts("c")).unwrap_err();
    assert_eq!(e.param, "presence_penalty");
    let dropping = RequestOpts {
        drop_unsupported: true,
        ..opts("c")
    };
    let t = chat_request(&body, &dropping).unwrap();
    assert_eq!(t.dropped, vec!["presence_penalty".to_string()]);
    let v: Value = serde_json::from_slice(&t.body).unwrap();
    assert!(v.get("presence_penalty").is_none());
    // A content part Anthropic cannot take is named by its path.
    let audio = json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user",
        "content": [{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}]}]});
    assert_eq!(
        translate(audio, &opts("c")).unwrap_err().param,
        "messages[0].content[0].type"
    );
    for (field, value) in [
        ("n", json!(2)),
        ("logprobs", json!(true)),
        ("temperature", json!(1.5)),
    ] {
        let mut b = body.clone();
        b.as_object_mut().unwrap().remove("presence_penalty");
        b[field] = value;
        assert_eq!(translate(b, &opts("c")).unwrap_err().param, field);
    }
}

#[test]
fn tool_choice_forms() {
    for (choice, want) in [
        (json!("auto"), json!({"type": "auto"})),
        (json!("none"), json!({"type": "none"})),
        (json!("required"), json!({"type": "any"})),
        (
            json!({"type": "function", "function": {"name": "f"}}),
            json!({"type": "tool", "name": "f"}),
        ),
    ] {
        let body = json!({"model": "m", "max_tokens": 5, "tool_choice": choice,
            "messages": [{"role": "user", "content": "hi"}]});
        assert_eq!(translate(body, &opts("c")).unwrap()["tool_choice"], want);
    }
}

fn ropts(include_usage: bool) -> ResponseOpts<'static> {
    ResponseOpts {
        model: "smart",
        request_id: "req-1",
        include_usage,
    }
}

#[test]
fn golden_text_response_with_cache_usage() {
    let (body, usage) =
        chat_response(fixture!("message_text.json").as_bytes(), &ropts(false)).unwrap();
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "smart");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "Hello! The capital of France is Paris."
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens": 1233, "completion_tokens": 12, "total_tokens": 1245,
            "prompt_tokens_details": {"cached_tokens": 1024},
            "completion_tokens_details": {"reasoning_tokens": 0}})
    );
    assert_eq!(
        usage,
        Usage {
            prompt: 1233,
            completion: 12,
            cached: 1024,
            reasoning: 0,
            cache_write: 188
        }
    );
}

#[test]
fn golden_tool_use_response() {
    let (body, _) =
        chat_response(fixture!("message_tools.json").as_bytes(), &ropts(false)).unwrap();
    let v: Value = serde_json::from_slice(&body).unwrap();
    let msg = &v["choices"][0]["message"];
    assert_eq!(msg["content"], "I'll check the weather in both cities.");
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    let calls = msg["tool_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0]["id"], "toolu_01A09q90qw90lq917835lq9");
    assert_eq!(calls[0]["type"], "function");
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    let args: Value =
        serde_json::from_str(calls[1]["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(
        args,
        json!({"location": "Paris, France", "unit": "celsius"})
    );
}

#[test]
fn stop_reasons() {
    for (a, o) in [
        ("end_turn", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("stop_sequence", "stop"),
    ] {
        assert_eq!(finish_reason(a), o);
    }
}

/// Runs a provider stream through the translator in the given pieces.
fn run_stream(bytes: &[u8], cuts: &[usize], include_usage: bool) -> (String, Option<Usage>) {
    let mut pipe = Pipe::new(Box::new(ChatStream::new(&ropts(include_usage))), 1 << 20);
    let mut out = BytesMut::new();
    let mut prev = 0;
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    cuts.sort_unstable();
    for c in cuts.into_iter().chain([bytes.len()]) {
        pipe.feed(&bytes[prev..c], &mut out).unwrap();
        prev = c;
    }
    pipe.finish(&mut out).unwrap();
    let text = String::from_utf8(out.to_vec()).unwrap();
    // `created` is the translation time: normalize it.
    let mut norm = String::new();
    let mut rest = text.as_str();
    while let Some(i) = rest.find("\"created\":") {
        norm.push_str(&rest[..i + 10]);
        rest = rest[i + 10..].trim_start_matches(|c: char| c.is_ascii_digit());
        norm.push('0');
    }
    norm.push_str(rest);
    (norm, pipe.usage())
}

fn events(out: &str) -> Vec<&str> {
    out.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| e.strip_prefix("data: ").expect("data line"))
        .collect()
}

#[test]
fn golden_text_stream() {
    let (out, usage) = run_stream(fixture!("stream_text.sse").as_bytes(), &[], true);
    let head = r#"{"id":"msg_01StreamText00000001","object":"chat.completion.chunk","created":0,"model":"smart","choices":["#;
    let want = [
        format!(
            r#"{head}{{"index":0,"delta":{{"role":"assistant","content":""}},"logprobs":null,"finish_reason":null}}]}}"#
        ),
        format!(
            r#"{head}{{"index":0,"delta":{{"content":"Hello"}},"logprobs":null,"finish_reason":null}}]}}"#
        ),
        format!(
            r#"{head}{{"index":0,"delta":{{"content":", \"world\" — héllo!"}},"logprobs":null,"finish_reason":null}}]}}"#
        ),
        format!(r#"{head}{{"index":0,"delta":{{}},"logprobs":null,"finish_reason":"stop"}}]}}"#),
        format!(
            r#"{head}],"usage":{{"completion_tokens":15,"completion_tokens_details":{{"reasoning_tokens":0}},"prompt_tokens":2173,"prompt_tokens_details":{{"cached_tokens":2048}},"total_tokens":2188}}}}"#
        ),
        "[DONE]".to_string(),
    ];
    assert_eq!(
        events(&out),
        want.iter().map(String::as_str).collect::<Vec<_>>()
    );
    for e in events(&out).iter().filter(|e| **e != "[DONE]") {
        serde_json::from_str::<Value>(e).expect("each chunk is JSON");
    }
    assert_eq!(
        usage,
        Some(Usage {
            prompt: 2173,
            completion: 15,
            cached: 2048,
            reasoning: 0,
            cache_write: 100
        })
    );
    // Without include_usage: no usage chunk, but usage is still counted.
    let (out, usage) = run_stream(fixture!("stream_text.sse").as_bytes(), &[], false);
    assert!(!out.contains("\"usage\""), "{out}");
    assert!(out.ends_with("data: [DONE]\n\n"));
    assert_eq!(usage.map(|u| u.completion), Some(15));
}

#[test]
fn tool_call_stream_has_right_indices_ids_and_valid_arguments() {
    let (out, _) = run_stream(fixture!("stream_tools.sse").as_bytes(), &[], false);
    let mut args: Vec<String> = Vec::new();
    let mut ids: Vec<(u64, String, String)> = Vec::new();
    let mut text = String::new();
    let mut finish = None;
    for e in events(&out) {
        if e == "[DONE]" {
            continue;
        }
        let v: Value = serde_json::from_str(e).unwrap();
        let c = &v["choices"][0];
        if let Some(f) = c["finish_reason"].as_str() {
            finish = Some(f.to_string());
        }
        text.push_str(c["delta"]["content"].as_str().unwrap_or(""));
        for call in c["delta"]["tool_calls"].as_array().into_iter().flatten() {
            let i = call["index"].as_u64().unwrap() as usize;
            if let Some(id) = call["id"].as_str() {
                assert_eq!(i, ids.len(), "id and name come on a call's first delta");
                ids.push((
                    i as u64,
                    id.into(),
                    call["function"]["name"].as_str().unwrap().into(),
                ));
                args.push(String::new());
            }
            args[i].push_str(call["function"]["arguments"].as_str().unwrap_or(""));
        }
    }
    assert_eq!(text, "Checking both cities.");
    assert_eq!(finish.as_deref(), Some("tool_calls"));
    assert_eq!(
        ids,
        vec![
            (
                0,
                "toolu_01T1x1fJ34qAmk2tNTrN7Up6".into(),
                "get_weather".into()
            ),
            (
                1,
                "toolu_01B7xk2m3n4p5q6r7s8t9u0v".into(),
                "get_time".into()
            )
        ]
    );
    let a0: Value = serde_json::from_str(&args[0]).unwrap();
    let a1: Value = serde_json::from_str(&args[1]).unwrap();
    assert_eq!(
        a0,
        json!({"location": "San Francisco, CA", "unit": "celsius"})
    );
    assert_eq!(a1, json!({"tz": "Europe/Paris"}));
}

#[test]
fn an_error_event_ends_the_stream_with_an_openai_error_and_no_done() {
    let (out, usage) = run_stream(fixture!("stream_error.sse").as_bytes(), &[], true);
    let evs = events(&out);
    let last: Value = serde_json::from_str(evs.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "upstream_unavailable", "{out}");
    assert!(!out.contains("[DONE]"));
    assert!(out.contains("Partial"));
    assert_eq!(usage.map(|u| u.prompt), Some(12));
}

#[test]
fn a_stream_cut_before_message_stop_ends_with_an_error() {
    let full = fixture!("stream_text.sse");
    let cut = &full[..full.find("event: message_delta").unwrap()];
    let (out, _) = run_stream(cut.as_bytes(), &[], false);
    assert!(!out.contains("[DONE]"));
    let evs = events(&out);
    let last: Value = serde_json::from_str(evs.last().unwrap()).unwrap();
    assert!(last.get("error").is_some(), "{out}");
}

#[test]
fn crlf_line_endings_translate_the_same() {
    let lf = fixture!("stream_tools.sse");
    let crlf = lf.replace('\n', "\r\n");
    assert_eq!(
        run_stream(crlf.as_bytes(), &[], true),
        run_stream(lf.as_bytes(), &[], true)
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn split_anywhere_gives_the_same_output(cuts in proptest::collection::vec(any::<usize>(), 0..12)) {
        for fixture in [fixture!("stream_text.sse"), fixture!("stream_tools.sse"), fixture!("stream_error.sse")] {
            let whole = run_stream(fixture.as_bytes(), &[], true);
            let split = run_stream(fixture.as_bytes(), &cuts, true);
            prop_assert_eq!(split, whole);
        }
    }
}
