//! Golden tests for the Anthropic Messages endpoint's translators (no
//! network): Anthropic requests → OpenAI requests, OpenAI responses and
//! streams → Anthropic ones, from fixtures in tests/fixtures/messages/
//! written from the two APIs' references. Streams are also split at random
//! byte offsets (proptest): the output is the same however the bytes came.
//!
//! `TOLLGATE_BLESS=1` rewrites the expected files from the current output
//! (then review the diff).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::BytesMut;
use proptest::prelude::*;
use serde_json::{json, Value};
use std::path::PathBuf;
use tollgate::sse::Scanner;
use tollgate::translate::messages::{self, MessagesStream};
use tollgate::translate::{RequestOpts, ResponseOpts, StreamTranslator};

fn path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/messages")
        .join(name)
}

fn read(name: &str) -> String {
    std::fs::read_to_string(path(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Compares with the expected file (or writes it when blessing).
fn golden(name: &str, got: &str) {
    if std::env::var("TOLLGATE_BLESS").is_ok_and(|v| v == "1") {
        std::fs::write(path(name), got).unwrap();
        return;
    }
    let want = read(name);
    if name.ends_with(".json") {
        let w: Value = serde_json::from_str(&want).unwrap();
        let g: Value = serde_json::from_str(got).unwrap();
        assert_eq!(
            g,
            w,
            "{name}:\n{}",
            serde_json::to_string_pretty(&g).unwrap()
        );
    } else {
        assert_eq!(got, want, "{name}");
    }
}

const REQ: RequestOpts<'static> = RequestOpts {
    model: "gpt-4o-mini",
    stream: false,
    default_max_tokens: None,
    drop_unsupported: false,
};

const RESP: ResponseOpts<'static> = ResponseOpts {
    model: "claude-sonnet-4-5",
    request_id: "req7",
    include_usage: false,
};

fn translate_request(body: &Value, opts: &RequestOpts<'_>) -> Value {
    let t = messages::request(body, opts).unwrap();
    serde_json::from_slice(&t.body).unwrap()
}

#[test]
fn requests_translate_to_openai() {
    for name in ["request_text", "request_tools"] {
        let body: Value = serde_json::from_str(&read(&format!("{name}.anthropic.json"))).unwrap();
        let out = translate_request(&body, &REQ);
        golden(
            &format!("{name}.openai.json"),
            &serde_json::to_string_pretty(&out).unwrap(),
        );
    }
}

#[test]
fn unsupported_fields_are_named_or_dropped() {
    let base =
        json!({"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]});
    for (field, value, param) in [
        ("top_k", json!(5), "top_k"),
        (
            "thinking",
            json!({"type": "enabled", "budget_tokens": 1024}),
            "thinking",
        ),
        ("service_tier", json!("auto"), "service_tier"),
        (
            "tools",
            json!([{"type": "web_search_20250305", "name": "web_search"}]),
            "tools[0].type",
        ),
    ] {
        let mut b = base.clone();
        b[field] = value;
        let e = messages::request(&b, &REQ).unwrap_err();
        assert_eq!(e.param, param);
        assert!(e.message.contains(param), "{}", e.message);
        let dropping = RequestOpts {
            drop_unsupported: true,
            ..REQ
        };
        let t = messages::request(&b, &dropping).unwrap();
        assert_eq!(t.dropped, vec![param.to_string()]);
        let out: Value = serde_json::from_slice(&t.body).unwrap();
        assert!(out.get(field).is_none(), "{out}");
    }
    // A document block, refused by path.
    let mut b = base.clone();
    b["messages"] = json!([{"role": "user", "content": [{"type": "text", "text": "x"},
        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "d"}}]}]);
    assert_eq!(
        messages::request(&b, &REQ).unwrap_err().param,
        "messages[0].content[1].type"
    );
    // Disabled thinking asks for nothing: accepted.
    let mut b = base.clone();
    b["thinking"] = json!({"type": "disabled"});
    assert!(messages::request(&b, &REQ).is_ok());
}

#[test]
fn malformed_requests_name_the_field() {
    for (body, param) in [
        (json!({"model": "m", "max_tokens": 1}), "messages"),
        (
            json!({"model": "m", "max_tokens": 1, "messages": []}),
            "messages",
        ),
        (
            json!({"model": "m", "max_tokens": 0, "messages": [{"role": "user", "content": "x"}]}),
            "max_tokens",
        ),
        (
            json!({"model": "m", "messages": [{"role": "system", "content": "x"}]}),
            "messages[0].role",
        ),
        (
            json!({"model": "m", "messages": [{"role": "user", "content": 5}]}),
            "messages[0].content",
        ),
        (
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "tool_choice": {"type": "tool"}}),
            "tool_choice.name",
        ),
    ] {
        assert_eq!(
            messages::request(&body, &REQ).unwrap_err().param,
            param,
            "{body}"
        );
    }
}

#[test]
fn tool_choice_and_defaults() {
    let base = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
    for (choice, want) in [
        (json!({"type": "auto"}), json!("auto")),
        (json!({"type": "any"}), json!("required")),
        (json!({"type": "none"}), json!("none")),
        (
            json!({"type": "tool", "name": "get_weather"}),
            json!({"type": "function", "function": {"name": "get_weather"}}),
        ),
    ] {
        let mut b = base.clone();
        b["tool_choice"] = choice;
        assert_eq!(translate_request(&b, &REQ)["tool_choice"], want);
    }
    // No max_tokens: the route's default, when it has one.
    let with_default = RequestOpts {
        default_max_tokens: Some(256),
        ..REQ
    };
    assert_eq!(translate_request(&base, &with_default)["max_tokens"], 256);
    assert!(translate_request(&base, &REQ).get("max_tokens").is_none());
}

#[test]
fn responses_translate_to_anthropic() {
    for name in ["response_text", "response_tools", "response_length"] {
        let body = read(&format!("{name}.openai.json"));
        let (out, usage) = messages::response(body.as_bytes(), &RESP).unwrap();
        assert!(usage.is_some(), "{name}");
        let v: Value = serde_json::from_slice(&out).unwrap();
        golden(
            &format!("{name}.anthropic.json"),
            &serde_json::to_string_pretty(&v).unwrap(),
        );
    }
    let (_, usage) =
        messages::response(read("response_tools.openai.json").as_bytes(), &RESP).unwrap();
    let u = usage.unwrap();
    assert_eq!((u.prompt, u.cached, u.completion), (2082, 1920, 46));
    assert!(messages::response(b"{\"choices\":[]}", &RESP).is_err());
    assert!(messages::response(b"not json", &RESP).is_err());
}

#[test]
fn upstream_errors_become_anthropic_errors() {
    for (name, status, kind) in [
        ("error_429", 429, "rate_limit_error"),
        ("error_400", 400, "invalid_request_error"),
    ] {
        let body = read(&format!("{name}.openai.json"));
        let out = messages::error::from_openai_body(status, body.as_bytes());
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], kind);
        let want: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["message"], want["error"]["message"]);
    }
}

/// Feeds `chunks` through a scanner and the translator, as the proxy does.
fn run_stream(chunks: &[&[u8]]) -> (String, Option<tollgate::accounting::Usage>) {
    let mut scanner = Scanner::new(1 << 20);
    let mut t = MessagesStream::new(&RESP);
    let mut out = BytesMut::new();
    for c in chunks {
        scanner.feed(c, |e| t.event(e.data, &mut out)).unwrap();
    }
    scanner.finish(|e| t.event(e.data, &mut out)).unwrap();
    t.finish(&mut out);
    (String::from_utf8(out.to_vec()).unwrap(), t.usage())
}

const STREAMS: [&str; 4] = [
    "stream_text",
    "stream_tools",
    "stream_error",
    "stream_truncated",
];

#[test]
fn streams_translate_to_anthropic_events() {
    for name in STREAMS {
        let input = read(&format!("{name}.openai.sse"));
        let (out, _) = run_stream(&[input.as_bytes()]);
        golden(&format!("{name}.anthropic.sse"), &out);
        // Every event is `event: <type>` plus JSON data of that type.
        for ev in out.split_terminator("\n\n") {
            let (head, data) = ev.split_once('\n').unwrap();
            let kind = head.strip_prefix("event: ").unwrap();
            let v: Value = serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
            assert_eq!(v["type"], kind, "{name}: {ev}");
        }
    }
    let (out, usage) = run_stream(&[read("stream_tools.openai.sse").as_bytes()]);
    let u = usage.unwrap();
    assert_eq!((u.prompt, u.cached, u.completion), (2082, 1920, 46));
    assert!(out.ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"));
    let (out, _) = run_stream(&[read("stream_truncated.openai.sse").as_bytes()]);
    assert!(
        out.ends_with("}\n\n") && out.contains("event: error\n"),
        "{out}"
    );
    assert!(!out.contains("message_stop"), "{out}");
}

#[test]
fn stream_tool_arguments_assemble_to_the_input() {
    let (out, _) = run_stream(&[read("stream_tools.openai.sse").as_bytes()]);
    let mut args: Vec<String> = Vec::new();
    let mut names = Vec::new();
    for ev in out.split_terminator("\n\n") {
        let data = ev.split_once("\ndata: ").unwrap().1;
        let v: Value = serde_json::from_str(data).unwrap();
        if v["type"] == "content_block_start" && v["content_block"]["type"] == "tool_use" {
            names.push(v["content_block"]["name"].as_str().unwrap().to_string());
            args.push(String::new());
        }
        if v["delta"]["type"] == "input_json_delta" {
            args.last_mut()
                .unwrap()
                .push_str(v["delta"]["partial_json"].as_str().unwrap());
        }
    }
    assert_eq!(names, ["get_weather", "get_time"]);
    let first: Value = serde_json::from_str(&args[0]).unwrap();
    assert_eq!(
        first,
        json!({"location": "Paris, France", "unit": "celsius"})
    );
    let second: Value = serde_json::from_str(&args[1]).unwrap();
    assert_eq!(second, json!({"timezone": "Europe/Paris"}));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn any_split_of_the_stream_gives_the_same_events(
        which in 0..STREAMS.len(),
        cuts in proptest::collection::vec(any::<proptest::sample::Index>(), 0..12),
        crlf in any::<bool>(),
    ) {
        let mut input = read(&format!("{}.openai.sse", STREAMS[which]));
        if crlf {
            input = input.replace('\n', "\r\n");
        }
        let bytes = input.as_bytes();
        let (whole, _) = run_stream(&[bytes]);
        let mut at: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
        at.sort_unstable();
        let mut pieces = Vec::new();
        let mut prev = 0;
        for a in at {
            pieces.push(&bytes[prev..a]);
            prev = a;
        }
        pieces.push(&bytes[prev..]);
        let (split, _) = run_stream(&pieces);
        prop_assert_eq!(split, whole);
    }
}
