//! Golden tests against the fixtures in `tests/fixtures/gemini/`, written
//! from the Gemini API reference.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use crate::accounting::{Usage, UsageSource};
use crate::base::error::GatewayError;
use crate::sse::Scanner;
use crate::translate::{RequestOpts, ResponseOpts, StreamTranslator};
use bytes::BytesMut;
use proptest::prelude::*;
use serde_json::{json, Value};

macro_rules! fixture {
    ($name:literal) => {
        include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/gemini/",
            $name
        ))
    };
}

fn req_opts(drop: bool) -> RequestOpts<'static> {
    RequestOpts {
        model: "gemini-2.5-flash",
        stream: false,
        default_max_tokens: None,
        drop_unsupported: drop,
    }
}

fn resp_opts(include_usage: bool) -> ResponseOpts<'static> {
    ResponseOpts {
        model: "smart",
        request_id: "req-42",
        include_usage,
    }
}

fn parse(s: &str) -> Value {
    serde_json::from_str(s).unwrap()
}

/// `created` is the clock: zero it for comparisons.
fn normalized(mut v: Value) -> Value {
    if v.get("created").is_some() {
        v["created"] = 0.into();
    }
    v
}

fn translate(req: Value) -> Result<Value, crate::translate::Unsupported> {
    chat_request(&req, &req_opts(false)).map(|t| serde_json::from_slice(&t.body).unwrap())
}

#[test]
fn chat_request_matches_golden() {
    let got = translate(parse(fixture!("chat_request.json"))).unwrap();
    assert_eq!(got, parse(fixture!("chat_request.expected.json")));
}

#[test]
fn tool_choice_and_response_format_map_to_gemini_config() {
    let base = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
    let with = |k: &str, v: Value| {
        let mut r = base.clone();
        r[k] = v;
        translate(r).unwrap()
    };
    assert_eq!(
        with("tool_choice", json!("none"))["toolConfig"],
        json!({"functionCallingConfig": {"mode": "NONE"}})
    );
    assert_eq!(
        with("tool_choice", json!("auto"))["toolConfig"],
        json!({"functionCallingConfig": {"mode": "AUTO"}})
    );
    assert_eq!(
        with(
            "tool_choice",
            json!({"type": "function", "function": {"name": "book_table"}})
        )["toolConfig"],
        json!({"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["book_table"]}})
    );
    assert_eq!(
        with("response_format", json!({"type": "json_object"}))["generationConfig"],
        json!({"responseMimeType": "application/json"})
    );
    let schema = json!({"type": "json_schema", "json_schema": {"name": "city", "strict": true,
        "schema": {"type": "object", "properties": {"name": {"type": "string"}},
                   "required": ["name"], "additionalProperties": false}}});
    assert_eq!(
        with("response_format", schema)["generationConfig"],
        json!({"responseMimeType": "application/json", "responseSchema": {
            "type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}})
    );
    assert_eq!(
        with("max_tokens", json!(64))["generationConfig"],
        json!({"maxOutputTokens": 64})
    );
}

#[test]
fn unsupported_fields_are_named_or_dropped() {
    let req = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}],
        "logit_bias": {"50256": -100}, "logprobs": true});
    let err = chat_request(&req, &req_opts(false)).unwrap_err();
    assert_eq!(err.param, "logit_bias");
    let ok = chat_request(&req, &req_opts(true)).unwrap();
    assert_eq!(ok.dropped, ["logit_bias", "logprobs"]);
    let body: Value = serde_json::from_slice(&ok.body).unwrap();
    assert!(body.get("generationConfig").is_none());

    let img = json!({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://example.com/a.png"}}]}]});
    let err = chat_request(&img, &req_opts(false)).unwrap_err();
    assert_eq!(err.param, "messages[0].content[0].image_url.url");
    let img = json!({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://example.com/render?id=7"}}]}]});
    let err = chat_request(&img, &req_opts(false)).unwrap_err();
    assert_eq!(err.param, "messages[0].content[0].image_url.url");

    let orphan = json!({"model": "m", "messages": [
        {"role": "user", "content": "hi"},
        {"role": "tool", "tool_call_id": "call_nope", "content": "x"}]});
    let err = chat_request(&orphan, &req_opts(true)).unwrap_err();
    assert_eq!(err.param, "messages[1].tool_call_id");
}

#[test]
fn route_default_max_tokens_applies_only_when_the_body_sets_none() {
    let req = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
    let opts = RequestOpts {
        default_max_tokens: Some(100),
        ..req_opts(false)
    };
    let t = chat_request(&req, &opts).unwrap();
    let v: Value = serde_json::from_slice(&t.body).unwrap();
    assert_eq!(v["generationConfig"]["maxOutputTokens"], 100);
    let both = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 10, "max_completion_tokens": 20, "logprobs": false,
        "parallel_tool_calls": true, "service_tier": "auto"});
    let v = translate(both).unwrap();
    assert_eq!(v["generationConfig"], json!({"maxOutputTokens": 20}));
}

#[test]
fn text_response_matches_golden_with_cached_and_thoughts() {
    let (body, usage) =
        chat_response(fixture!("generate_text.json").as_bytes(), &resp_opts(false)).unwrap();
    let got = normalized(serde_json::from_slice(&body).unwrap());
    assert_eq!(got, parse(fixture!("generate_text.expected.json")));
    assert_eq!(
        usage,
        Some(Usage {
            prompt: 2051,
            completion: 110,
            cached: 2048,
            reasoning: 96,
            ..Default::default()
        })
    );
}

#[test]
fn parallel_function_calls_become_tool_calls() {
    let (body, _) = chat_response(
        fixture!("generate_tools.json").as_bytes(),
        &resp_opts(false),
    )
    .unwrap();
    let got = normalized(serde_json::from_slice(&body).unwrap());
    assert_eq!(got, parse(fixture!("generate_tools.expected.json")));
}

#[test]
fn finish_reasons_and_blocked_prompts() {
    let reason = |r: &str| {
        let body = json!({"candidates": [{"content": {"parts": [{"text": "x"}], "role": "model"},
            "finishReason": r, "index": 0}]});
        let (out, usage) = chat_response(body.to_string().as_bytes(), &resp_opts(false)).unwrap();
        assert_eq!(usage, None);
        let v: Value = serde_json::from_slice(&out).unwrap();
        v["choices"][0]["finish_reason"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(reason("STOP"), "stop");
    assert_eq!(reason("MAX_TOKENS"), "length");
    for r in [
        "SAFETY",
        "RECITATION",
        "BLOCKLIST",
        "PROHIBITED_CONTENT",
        "SPII",
    ] {
        assert_eq!(reason(r), "content_filter", "{r}");
    }
    let (out, usage) =
        chat_response(fixture!("blocked.json").as_bytes(), &resp_opts(false)).unwrap();
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["choices"][0]["finish_reason"], "content_filter");
    assert_eq!(v["choices"][0]["message"]["content"], Value::Null);
    assert_eq!(usage.map(|u| u.prompt), Some(9));
    assert_eq!(
        chat_response(b"<html>", &resp_opts(false)),
        Err(GatewayError::UpstreamError)
    );
}

/// Runs a whole SSE byte stream, split into `chunks`, through the scanner
/// and the translator.
fn run_stream(chunks: &[&[u8]], include_usage: bool) -> (Vec<u8>, Option<Usage>) {
    let mut scanner = Scanner::new(1 << 20);
    let mut t = ChatStream::new(&resp_opts(include_usage));
    let mut out = BytesMut::new();
    for c in chunks {
        scanner.feed(c, |e| t.event(e.data, &mut out)).unwrap();
    }
    scanner.finish(|e| t.event(e.data, &mut out)).unwrap();
    t.finish(&mut out);
    (out.to_vec(), t.usage())
}

/// The output's events, `created` zeroed, `[DONE]` kept as a string.
fn events(out: &[u8]) -> Vec<Value> {
    let mut scanner = Scanner::new(1 << 20);
    let mut evs = Vec::new();
    scanner
        .feed(out, |e| {
            evs.push(match serde_json::from_slice(e.data) {
                Ok(v) => normalized(v),
                Err(_) => Value::String(String::from_utf8_lossy(e.data).into_owned()),
            })
        })
        .unwrap();
    evs
}

fn expected_events(jsonl: &str) -> Vec<Value> {
    jsonl
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| Value::String(l.to_string())))
        .collect()
}

#[test]
fn text_stream_matches_golden() {
    let (out, usage) = run_stream(&[fixture!("stream_text.sse").as_bytes()], true);
    assert_eq!(
        events(&out),
        expected_events(fixture!("stream_text.expected.jsonl"))
    );
    assert_eq!(
        usage.map(|u| (u.prompt, u.completion, u.cached)),
        Some((2051, 113, 2048))
    );
}

#[test]
fn tool_stream_matches_golden() {
    let (out, usage) = run_stream(&[fixture!("stream_tools.sse").as_bytes()], true);
    assert_eq!(
        events(&out),
        expected_events(fixture!("stream_tools.expected.jsonl"))
    );
    assert_eq!(usage.map(|u| u.reasoning), Some(32));
}

#[test]
fn stream_without_include_usage_has_no_usage_chunk() {
    let (out, usage) = run_stream(&[fixture!("stream_text.sse").as_bytes()], false);
    let evs = events(&out);
    let mut expected = expected_events(fixture!("stream_text.expected.jsonl"));
    expected.remove(4);
    assert_eq!(evs, expected);
    assert!(usage.is_some(), "usage is still counted");
}

#[test]
fn stream_error_event_becomes_an_openai_error_event() {
    let data = fixture!("error_429.json").replace('\n', "");
    let sse = format!("data: {data}\r\n\r\n");
    let (out, _) = run_stream(&[sse.as_bytes()], false);
    let evs = events(&out);
    assert_eq!(evs[0]["error"]["code"], "rate_limit_exceeded");
    assert_eq!(evs.len(), 1, "no [DONE] after an error: {evs:?}");
}

#[test]
fn a_stream_cut_before_its_finish_reason_ends_with_an_error() {
    let whole = fixture!("stream_text.sse");
    let cut = whole.rfind("data: ").unwrap();
    let (out, usage) = run_stream(&[&whole.as_bytes()[..cut]], true);
    let evs = events(&out);
    assert_eq!(evs.len(), 3, "{evs:?}");
    assert_eq!(evs[2]["error"]["code"], "upstream_error");
    assert_eq!(usage.map(|u| u.prompt), Some(2051));
}

#[test]
fn a_blocked_prompt_streams_a_content_filter_finish() {
    let data = fixture!("blocked.json").replace('\n', "");
    let (out, _) = run_stream(&[format!("data: {data}\r\n\r\n").as_bytes()], false);
    let evs = events(&out);
    assert_eq!(evs[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(evs[1]["choices"][0]["finish_reason"], "content_filter");
    assert_eq!(evs[1]["choices"][0]["delta"], json!({}));
    assert_eq!(evs[2], "[DONE]");
}

#[test]
fn two_candidates_stream_as_two_choices_and_thoughts_are_left_out() {
    let ev1 = json!({"candidates": [
        {"content": {"parts": [{"text": "hmm…", "thought": true}, {"text": "A \"q\"\n"}, {"text": "a"}],
            "role": "model"}, "index": 0},
        {"content": {"parts": [{"text": "B"}], "role": "model"}, "index": 1}]});
    let ev2 = json!({"candidates": [
        {"content": {"parts": [{"text": "!"}]}, "finishReason": "STOP", "index": 0},
        {"content": {"parts": [{"functionCall": {"name": "f", "args": {"x": 1}}}]},
            "finishReason": "STOP", "index": 1}],
        "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 7}});
    let sse = format!("data: {ev1}\n\ndata: {ev2}\n\n");
    let (out, _) = run_stream(&[sse.as_bytes()], true);
    let evs = events(&out);
    let choices = |i: usize| evs[i]["choices"].clone();
    assert_eq!(
        choices(0),
        json!([
            {"index": 0, "delta": {"role": "assistant", "content": "A \"q\"\na"}, "logprobs": null, "finish_reason": null},
            {"index": 1, "delta": {"role": "assistant", "content": "B"}, "logprobs": null, "finish_reason": null}])
    );
    assert_eq!(
        choices(1),
        json!([
            {"index": 0, "delta": {"content": "!"}, "logprobs": null, "finish_reason": null},
            {"index": 1, "delta": {"tool_calls": [{"index": 0, "id": "call_req-42_0", "type": "function",
                "function": {"name": "f", "arguments": "{\"x\":1}"}}]}, "logprobs": null, "finish_reason": null}])
    );
    assert_eq!(
        choices(2),
        json!([
            {"index": 0, "delta": {}, "logprobs": null, "finish_reason": "stop"},
            {"index": 1, "delta": {}, "logprobs": null, "finish_reason": "tool_calls"}])
    );
    assert_eq!(evs[3]["usage"]["completion_tokens"], 7);
    assert_eq!(evs[4], "[DONE]");
}

#[test]
fn thought_signatures_travel_in_extra_content_both_ways() {
    let body = json!({"candidates": [{"content": {"role": "model", "parts": [
        {"functionCall": {"name": "f", "args": {"a": 1}}, "thoughtSignature": "c2lnLTE="},
        {"functionCall": {"name": "g", "args": {}}}]}, "finishReason": "STOP", "index": 0}]});
    let (out, _) = chat_response(body.to_string().as_bytes(), &resp_opts(false)).unwrap();
    let v: Value = serde_json::from_slice(&out).unwrap();
    let calls = &v["choices"][0]["message"]["tool_calls"];
    assert_eq!(
        calls[0]["extra_content"],
        json!({"google": {"thought_signature": "c2lnLTE="}})
    );
    assert!(calls[1].get("extra_content").is_none());

    let sse = format!("data: {body}\r\n\r\n");
    let (out, _) = run_stream(&[sse.as_bytes()], false);
    let evs = events(&out);
    let streamed = &evs[0]["choices"][0]["delta"]["tool_calls"];
    assert_eq!(streamed[0]["extra_content"], calls[0]["extra_content"]);
    assert_eq!(streamed[0]["function"], calls[0]["function"]);

    // The client sends the assistant message back as it got it.
    let req = json!({"model": "m", "messages": [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": null, "tool_calls": calls},
        {"role": "tool", "tool_call_id": calls[0]["id"], "content": "{}"},
        {"role": "tool", "tool_call_id": calls[1]["id"], "content": "{}"}]});
    let sent = translate(req).unwrap();
    assert_eq!(
        sent["contents"][1]["parts"][0],
        json!({"functionCall": {"name": "f", "args": {"a": 1}}, "thoughtSignature": "c2lnLTE="})
    );
    assert!(sent["contents"][1]["parts"][1]
        .get("thoughtSignature")
        .is_none());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// However the provider's bytes are split, the output is the same.
    #[test]
    fn stream_output_is_independent_of_splits(
        which in 0usize..2,
        cuts in proptest::collection::vec(any::<proptest::sample::Index>(), 0..12),
    ) {
        let whole = [fixture!("stream_text.sse"), fixture!("stream_tools.sse")][which].as_bytes();
        let (expected, _) = run_stream(&[whole], true);
        let mut at: Vec<usize> = cuts.iter().map(|c| c.index(whole.len() + 1)).collect();
        at.sort_unstable();
        let mut chunks = Vec::new();
        let mut prev = 0;
        for a in at {
            chunks.push(&whole[prev..a]);
            prev = a;
        }
        chunks.push(&whole[prev..]);
        let (got, _) = run_stream(&chunks, true);
        prop_assert_eq!(events(&got), events(&expected));
    }
}

#[test]
fn embeddings_single_and_batch() {
    let opts = RequestOpts {
        model: "gemini-embedding-001",
        ..req_opts(false)
    };
    let (kind, t) = embed_request(
        &json!({"model": "emb", "input": "hello", "dimensions": 768}),
        &opts,
    )
    .unwrap();
    assert_eq!(kind, EmbedKind::Single);
    assert_eq!(
        kind.path("gemini-embedding-001"),
        "/models/gemini-embedding-001:embedContent"
    );
    assert_eq!(
        serde_json::from_slice::<Value>(&t.body).unwrap(),
        json!({"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "hello"}]},
               "outputDimensionality": 768})
    );
    let (kind, t) = embed_request(&json!({"model": "emb", "input": ["a", "b"]}), &opts).unwrap();
    assert_eq!(kind, EmbedKind::Batch);
    assert_eq!(
        serde_json::from_slice::<Value>(&t.body).unwrap(),
        json!({"requests": [
            {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "a"}]}},
            {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "b"}]}}]})
    );
    let err = embed_request(&json!({"model": "emb", "input": [[1, 2, 3]]}), &opts).unwrap_err();
    assert_eq!(err.param, "input[0]");

    let (body, usage, source) = embed_response(
        fixture!("embed_batch.json").as_bytes(),
        &resp_opts(false),
        EmbedOutput::Float,
        || 7,
    )
    .unwrap();
    assert_eq!((usage.prompt, source), (7, UsageSource::Estimated));
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap(),
        json!({"object": "list", "model": "smart", "usage": {"prompt_tokens": 7, "total_tokens": 7},
            "data": [
                {"object": "embedding", "index": 0, "embedding": [0.5, -0.25, 0.125]},
                {"object": "embedding", "index": 1, "embedding": [1.0, 0.0, -1.0]}]})
    );
    let (body, _, _) = embed_response(
        fixture!("embed_batch.json").as_bytes(),
        &resp_opts(false),
        EmbedOutput::Base64,
        || 7,
    )
    .unwrap();
    let v: Value = serde_json::from_slice(&body).unwrap();
    // 0.5, -0.25, 0.125 as little-endian f32.
    assert_eq!(v["data"][0]["embedding"], "AAAAPwAAgL4AAAA+");
    let (body, _, _) = embed_response(
        fixture!("embed_single.json").as_bytes(),
        &resp_opts(false),
        EmbedOutput::Float,
        || 7,
    )
    .unwrap();
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["data"].as_array().map(Vec::len), Some(1));
    assert_eq!(v["data"][0]["embedding"][3], 0.00069968984);
    let reported = br#"{"embedding": {"values": [0.5]}, "usageMetadata": {"promptTokenCount": 3}}"#;
    let (_, usage, source) =
        embed_response(reported, &resp_opts(false), EmbedOutput::Float, || 99).unwrap();
    assert_eq!((usage.prompt, source), (3, UsageSource::Reported));
}

#[test]
fn errors_map_to_openai_statuses_without_leaking_keys() {
    let cases: [(u16, &str, u16, &str); 7] = [
        (429, fixture!("error_429.json"), 429, "rate_limit_exceeded"),
        (400, fixture!("error_400.json"), 400, "invalid_request"),
        (
            400,
            fixture!("error_400_key.json"),
            400,
            "upstream_auth_error",
        ),
        (401, fixture!("error_401.json"), 502, "upstream_auth_error"),
        (403, fixture!("error_403.json"), 502, "upstream_auth_error"),
        (503, fixture!("error_503.json"), 503, "upstream_unavailable"),
        (500, fixture!("error_500.json"), 502, "upstream_error"),
    ];
    for (status, body, want_status, want_code) in cases {
        let e = error(status, body.as_bytes());
        assert_eq!(e.status(), want_status, "{body}");
        assert_eq!(e.code(), want_code, "{body}");
        let rendered = String::from_utf8(e.body().to_vec()).unwrap();
        assert!(!rendered.contains("AIza"), "{rendered}");
        if want_code == "upstream_auth_error" {
            assert!(!rendered.contains("API key"), "{rendered}");
        }
    }
    assert_eq!(
        error(429, fixture!("error_429.json").as_bytes()).retry_after(),
        Some(37)
    );
    let e = error(400, fixture!("error_400.json").as_bytes());
    assert!(e.to_string().contains("contents is not specified"));
    // The status alone decides the answer's status (headers go out first).
    for (status, body) in [
        (400, fixture!("error_400_key.json")),
        (429, fixture!("error_429.json")),
        (403, fixture!("error_403.json")),
        (503, fixture!("error_503.json")),
        (500, fixture!("error_500.json")),
    ] {
        assert_eq!(
            error(status, body.as_bytes()).status(),
            error(status, b"").status()
        );
    }
    // Not JSON at all: the status decides.
    assert_eq!(error(503, b"<html>busy</html>").status(), 503);
    assert_eq!(error(502, b"").code(), "upstream_error");
}

#[test]
fn paths_carry_no_key() {
    assert_eq!(
        chat_path("gemini-2.5-flash", true),
        "/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    );
    assert_eq!(
        chat_path("gemini-2.5-flash", false),
        "/models/gemini-2.5-flash:generateContent"
    );
}
