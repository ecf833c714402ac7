//! Golden tests against the fixtures in `tests/fixtures/bedrock/`, and the
//! translation's bounds and refusals.

use super::*;
use crate::base::error::GatewayError;
use crate::eventstream::{encode, DEFAULT_MAX_FRAME};
use crate::translate::{RequestOpts, ResponseOpts, StreamTranslator};
use bytes::BytesMut;
use serde_json::{json, Value};

macro_rules! fixture {
    ($name:literal) => {
        include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/bedrock/",
            $name
        ))
    };
}

fn opts(stream: bool) -> RequestOpts<'static> {
    RequestOpts {
        model: "anthropic.claude-3-5-sonnet-20240620-v1:0",
        stream,
        default_max_tokens: None,
        drop_unsupported: false,
    }
}

fn ropts(include_usage: bool) -> ResponseOpts<'static> {
    ResponseOpts {
        model: "claude-on-bedrock",
        request_id: "chatcmpl-req-1",
        include_usage,
    }
}

fn translate(req: Value) -> Result<Value, crate::translate::Unsupported> {
    chat_request(&req, &opts(false)).map(|t| serde_json::from_slice(&t.body).unwrap())
}

fn zero_created(mut v: Value) -> Value {
    if v.get("created").is_some() {
        v["created"] = json!(0);
    }
    v
}

/// Frames a `[type, payload]` JSON Lines stream as real event-stream bytes.
pub(crate) fn frames(jsonl: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for line in jsonl.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line).unwrap();
        let kind = v[0].as_str().unwrap();
        out.extend(encode(
            &[
                (":event-type", kind),
                (":content-type", "application/json"),
                (":message-type", "event"),
            ],
            v[1].to_string().as_bytes(),
        ));
    }
    out
}

/// The `data:` payloads of SSE output, `created` zeroed.
fn payloads(out: &[u8]) -> Vec<Value> {
    std::str::from_utf8(out)
        .unwrap()
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .map(|d| {
            if d == "[DONE]" {
                json!("[DONE]")
            } else {
                zero_created(serde_json::from_str(d).unwrap())
            }
        })
        .collect()
}

fn run(bytes: &[u8], cuts: &[usize], include_usage: bool) -> (Vec<u8>, EventPipe, bool) {
    let mut pipe = EventPipe::new(ChatStream::new(&ropts(include_usage)), DEFAULT_MAX_FRAME);
    let mut out = BytesMut::new();
    let mut at = 0;
    let mut ok = true;
    for &c in cuts.iter().chain(std::iter::once(&bytes.len())) {
        let c = c.clamp(at, bytes.len());
        ok &= pipe.feed(&bytes[at..c], &mut out).is_ok();
        at = c;
    }
    ok &= pipe.finish(&mut out).is_ok();
    (out.to_vec(), pipe, ok)
}

#[test]
fn request_matches_the_golden_converse_body() {
    let req: Value = serde_json::from_str(fixture!("chat_request.json")).unwrap();
    let want: Value = serde_json::from_str(fixture!("chat_request.expected.json")).unwrap();
    assert_eq!(translate(req).unwrap(), want);
}

#[test]
fn paths_encode_the_model_id() {
    assert_eq!(
        converse_path("anthropic.claude-3-5-sonnet-20240620-v1:0", false),
        "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse"
    );
    assert_eq!(
        converse_path("arn:aws:bedrock:us-east-1:1:inference-profile/us.meta.llama3", true),
        "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A1%3Ainference-profile%2Fus.meta.llama3/converse-stream"
    );
    assert_eq!(
        invoke_path("amazon.titan-embed-text-v2:0"),
        "/model/amazon.titan-embed-text-v2%3A0/invoke"
    );
}

#[test]
fn https_images_are_refused_naming_the_field() {
    let e = translate(json!({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "hi"},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]}))
    .unwrap_err();
    assert_eq!(e.param, "messages[0].content[1].image_url.url");
    assert!(e.message.contains("base64"), "{}", e.message);
    let e = translate(json!({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@not-base64"}}]}]}))
    .unwrap_err();
    assert_eq!(e.param, "messages[0].content[0].image_url.url");
    let ok = translate(json!({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "s3://bucket/cat.JPG"}}]}]}))
    .unwrap();
    assert_eq!(
        ok["messages"][0]["content"][0]["image"]["source"]["s3Location"]["uri"],
        "s3://bucket/cat.JPG"
    );
    assert_eq!(ok["messages"][0]["content"][0]["image"]["format"], "jpeg");
}

#[test]
fn numeric_fields_out_of_range_are_400s_naming_the_field() {
    for (field, value) in [
        ("max_tokens", json!(u64::MAX)),
        ("max_tokens", json!(-1)),
        ("max_tokens", json!(0)),
        ("max_tokens", json!(1.5)),
        ("max_tokens", json!("10")),
        ("max_completion_tokens", json!(2147483648u64)),
        ("temperature", json!("hot")),
        ("temperature", json!(1.5)),
        ("top_p", json!(-0.1)),
    ] {
        let mut req = json!({"messages": [{"role": "user", "content": "hi"}]});
        req[field] = value.clone();
        let e = translate(req).unwrap_err();
        assert_eq!(e.param, field, "{field}={value}");
        let g: GatewayError = e.into();
        assert_eq!(g.status(), 400);
    }
    let ok = translate(
        json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2147483647u64}),
    )
    .unwrap();
    assert_eq!(ok["inferenceConfig"]["maxTokens"], 2147483647u64);
}

#[test]
fn default_max_tokens_is_used_and_clamped() {
    let req = json!({"messages": [{"role": "user", "content": "hi"}]});
    let mut o = opts(false);
    o.default_max_tokens = Some(u64::MAX);
    let t: Value = serde_json::from_slice(&chat_request(&req, &o).unwrap().body).unwrap();
    assert_eq!(t["inferenceConfig"]["maxTokens"], i32::MAX as u64);
    assert!(t.get("model").is_none() && t.get("stream").is_none());
}

#[test]
fn bounds_on_client_input_are_400s_naming_the_field() {
    let many: Vec<Value> = (0..=limits::MAX_MESSAGES)
        .map(|_| json!({"role": "user", "content": "x"}))
        .collect();
    assert_eq!(
        translate(json!({ "messages": many })).unwrap_err().param,
        "messages"
    );
    let parts: Vec<Value> = (0..=limits::MAX_PARTS)
        .map(|_| json!({"type": "text", "text": "x"}))
        .collect();
    let e = translate(json!({"messages": [{"role": "user", "content": parts}]})).unwrap_err();
    assert_eq!(
        e.param,
        format!("messages[0].content[{}]", limits::MAX_PARTS)
    );
    let tools: Vec<Value> = (0..=limits::MAX_TOOLS)
        .map(|i| json!({"type": "function", "function": {"name": format!("t{i}")}}))
        .collect();
    let e = translate(json!({"messages": [{"role": "user", "content": "x"}], "tools": tools}))
        .unwrap_err();
    assert_eq!(e.param, "tools");
    let stops: Vec<String> = (0..=limits::MAX_STOP).map(|i| i.to_string()).collect();
    let e = translate(json!({"messages": [{"role": "user", "content": "x"}], "stop": stops}))
        .unwrap_err();
    assert_eq!(e.param, "stop");
    // Tool arguments nested 100k deep: refused, no stack overflow.
    let deep = "[".repeat(100_000);
    let e = translate(json!({"messages": [{"role": "assistant", "tool_calls": [
        {"id": "a", "type": "function", "function": {"name": "f", "arguments": deep}}]}]}))
    .unwrap_err();
    assert_eq!(e.param, "messages[0].tool_calls[0].function.arguments");
}

#[test]
fn unsupported_fields_are_refused_or_dropped() {
    let req = json!({"messages": [{"role": "user", "content": "x"}], "logit_bias": {"1": 2},
        "response_format": {"type": "json_object"}, "parallel_tool_calls": false});
    assert_eq!(translate(req.clone()).unwrap_err().param, "logit_bias");
    let mut o = opts(false);
    o.drop_unsupported = true;
    let t = chat_request(&req, &o).unwrap();
    let mut dropped = t.dropped.clone();
    dropped.sort();
    assert_eq!(
        dropped,
        ["logit_bias", "parallel_tool_calls", "response_format"]
    );
}

#[test]
fn tool_choice_none_drops_tools_unless_the_history_has_tool_blocks() {
    let tools = json!([{"type": "function", "function": {"name": "f"}}]);
    let t = translate(json!({"messages": [{"role": "user", "content": "x"}], "tools": tools, "tool_choice": "none"})).unwrap();
    assert!(t.get("toolConfig").is_none());
    let e = translate(json!({"messages": [
        {"role": "user", "content": "x"},
        {"role": "assistant", "tool_calls": [{"id": "a", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "a", "content": "r"}],
        "tools": tools, "tool_choice": "none"}))
    .unwrap_err();
    assert_eq!(e.param, "tool_choice");
    let t = translate(json!({"messages": [{"role": "user", "content": "x"}], "tools": tools, "tool_choice": "required"})).unwrap();
    assert_eq!(t["toolConfig"]["toolChoice"], json!({"any": {}}));
}

#[test]
fn empty_assistant_turns_are_refused() {
    let e = translate(json!({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": ""}]})).unwrap_err();
    assert_eq!(e.param, "messages[1].content");
}

#[test]
fn text_response_matches_the_golden_completion() {
    let (body, usage) =
        chat_response(fixture!("converse_text.json").as_bytes(), &ropts(false)).unwrap();
    let got = zero_created(serde_json::from_slice(&body).unwrap());
    let want: Value = serde_json::from_str(fixture!("converse_text.expected.json")).unwrap();
    assert_eq!(got, want);
    assert_eq!(usage.prompt, 1330);
    assert_eq!(usage.cached, 1024);
    assert_eq!(usage.cache_write, 276);
    assert_eq!(usage.completion, 15);
}

#[test]
fn tool_response_becomes_tool_calls() {
    let (body, usage) =
        chat_response(fixture!("converse_tools.json").as_bytes(), &ropts(false)).unwrap();
    let v: Value = serde_json::from_slice(&body).unwrap();
    let c = &v["choices"][0];
    assert_eq!(c["finish_reason"], "tool_calls");
    assert_eq!(c["message"]["content"], "Let me check the weather.");
    let call = &c["message"]["tool_calls"][0];
    assert_eq!(call["id"], "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q");
    assert_eq!(call["function"]["name"], "get_weather");
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args, json!({"city": "Paris"}));
    assert_eq!((usage.prompt, usage.completion), (402, 58));
}

#[test]
fn stop_reasons_map() {
    for (b, o) in [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("guardrail_intervened", "content_filter"),
        ("content_filtered", "content_filter"),
    ] {
        assert_eq!(finish_reason(b), o);
    }
}

#[test]
fn usage_near_u64_max_saturates() {
    let body = json!({"output": {"message": {"content": [{"text": "x"}]}},
        "usage": {"inputTokens": u64::MAX, "outputTokens": u64::MAX, "cacheReadInputTokens": u64::MAX}});
    let (out, usage) = chat_response(body.to_string().as_bytes(), &ropts(false)).unwrap();
    assert_eq!(usage.prompt, u64::MAX);
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["usage"]["total_tokens"], u64::MAX);
}

#[test]
fn unreadable_responses_are_upstream_errors() {
    for body in [&b"not json"[..], b"{}", br#"{"output":{}}"#] {
        assert_eq!(
            chat_response(body, &ropts(false)).unwrap_err(),
            GatewayError::UpstreamError
        );
    }
}

#[test]
fn stream_matches_the_golden_chunks_at_every_split() {
    let bytes = frames(fixture!("stream_text.jsonl"));
    let want: Vec<Value> = fixture!("stream_text.expected.jsonl")
        .lines()
        .map(|l| {
            if l == "[DONE]" {
                json!("[DONE]")
            } else {
                serde_json::from_str(l).unwrap()
            }
        })
        .collect();
    for cut in 0..bytes.len() {
        let (out, pipe, ok) = run(&bytes, &[cut], true);
        assert!(ok);
        assert_eq!(payloads(&out), want, "cut at {cut}");
        let u = pipe.usage().unwrap();
        assert_eq!(
            (u.prompt, u.completion, u.cached, u.cache_write),
            (1330, 9, 1024, 276)
        );
    }
    // Without include_usage: no usage chunk, usage still counted.
    let (out, pipe, _) = run(&bytes, &[], false);
    assert_eq!(payloads(&out).len(), want.len() - 1);
    assert_eq!(pipe.usage().unwrap().completion, 9);
}

#[test]
fn streamed_tool_calls_are_indexed_and_their_arguments_joined() {
    let (out, _, ok) = run(
        &frames(fixture!("stream_tools.jsonl")),
        &[7, 100, 333],
        false,
    );
    assert!(ok);
    let p = payloads(&out);
    let mut args = String::new();
    let mut saw_start = false;
    for v in &p {
        if let Some(calls) = v.pointer("/choices/0/delta/tool_calls") {
            assert_eq!(calls[0]["index"], 0);
            if calls[0].get("id").is_some() {
                assert_eq!(calls[0]["id"], "tooluse_abc");
                assert_eq!(calls[0]["function"]["name"], "get_weather");
                saw_start = true;
            }
            args.push_str(calls[0]["function"]["arguments"].as_str().unwrap());
        }
    }
    assert!(saw_start);
    assert_eq!(args, r#"{"city": "Paris"}"#);
    let finish = p
        .iter()
        .find_map(|v| {
            v.pointer("/choices/0/finish_reason")
                .filter(|f| !f.is_null())
        })
        .unwrap();
    assert_eq!(finish, "tool_calls");
    assert_eq!(p.last().unwrap(), &json!("[DONE]"));
}

fn assert_ends_in_error(out: &[u8], status: u16) {
    let p = payloads(out);
    let last = p.last().unwrap();
    assert!(last.get("error").is_some(), "{p:?}");
    assert!(!p.contains(&json!("[DONE]")), "{p:?}");
    let code = last["error"]["code"].as_str().unwrap();
    let want = match status {
        429 => "rate_limit_exceeded",
        400 => "invalid_request",
        _ => "upstream_error",
    };
    assert_eq!(code, want);
}

#[test]
fn a_corrupted_crc_ends_the_stream_with_an_error_event_after_the_text_that_passed() {
    let mut bytes = frames(fixture!("stream_text.jsonl"));
    // Corrupt the CRC (last 4 bytes) of the contentBlockStop frame, after
    // the text deltas.
    let lens: Vec<usize> = {
        let mut v = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let n = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
            v.push(at + n);
            at += n;
        }
        v
    };
    bytes[lens[3] - 1] ^= 0xff;
    let (out, pipe, ok) = run(&bytes, &[11, 200], true);
    assert!(!ok);
    assert_ends_in_error(&out, 502);
    assert!(pipe.errored());
    // The text that passed was sent.
    assert!(String::from_utf8_lossy(&out).contains("cloudy"));
}

#[test]
fn a_truncated_frame_ends_the_stream_with_an_error_event() {
    let bytes = frames(fixture!("stream_text.jsonl"));
    let (out, _, ok) = run(&bytes[..bytes.len() - 5], &[], false);
    assert!(!ok);
    assert_ends_in_error(&out, 502);
}

#[test]
fn a_stream_without_message_stop_ends_in_an_error_event() {
    let jsonl: String = fixture!("stream_text.jsonl")
        .lines()
        .take(3)
        .collect::<Vec<_>>()
        .join("\n");
    let (out, _, ok) = run(&frames(&jsonl), &[], false);
    assert!(ok, "the framing was fine");
    assert_ends_in_error(&out, 502);
}

#[test]
fn an_oversized_frame_ends_the_stream_with_an_error_event() {
    let mut bytes = frames(fixture!("stream_text.jsonl"));
    bytes.extend(encode(
        &[
            (":event-type", "contentBlockDelta"),
            (":message-type", "event"),
        ],
        format!(
            r#"{{"delta":{{"text":"{}"}}}}"#,
            "x".repeat(DEFAULT_MAX_FRAME)
        )
        .as_bytes(),
    ));
    let (out, _, ok) = run(&bytes, &[], false);
    assert!(!ok);
    assert_ends_in_error(&out, 502);
}

#[test]
fn stream_exceptions_map_to_error_events() {
    let mut bytes = frames(
        &fixture!("stream_text.jsonl")
            .lines()
            .take(2)
            .collect::<Vec<_>>()
            .join("\n"),
    );
    bytes.extend(encode(
        &[
            (":exception-type", "throttlingException"),
            (":content-type", "application/json"),
            (":message-type", "exception"),
        ],
        fixture!("error_throttling.json").as_bytes(),
    ));
    let (out, _, _) = run(&bytes, &[], false);
    assert_ends_in_error(&out, 429);
    let mut bytes = frames(
        &fixture!("stream_text.jsonl")
            .lines()
            .take(2)
            .collect::<Vec<_>>()
            .join("\n"),
    );
    bytes.extend(encode(
        &[
            (":exception-type", "validationException"),
            (":message-type", "exception"),
        ],
        fixture!("error_validation.json").as_bytes(),
    ));
    let (out, _, _) = run(&bytes, &[], false);
    assert_ends_in_error(&out, 400);
    assert!(String::from_utf8_lossy(&out).contains("roles must alternate"));
}

#[test]
fn the_stream_translator_trait_takes_union_shaped_events() {
    let mut t = ChatStream::new(&ropts(false));
    let mut out = BytesMut::new();
    for line in fixture!("stream_text.jsonl").lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        let ev = json!({ v[0].as_str().unwrap(): v[1] });
        t.event(ev.to_string().as_bytes(), &mut out);
    }
    t.finish(&mut out);
    let p = payloads(&out);
    assert_eq!(p.len(), 5);
    assert_eq!(t.usage().unwrap().completion, 9);
}

#[test]
fn errors_map_by_type_then_status() {
    let v = error(
        400,
        Some("ValidationException:http://internal.amazon.com/coral/com.amazon.bedrock/"),
        fixture!("error_validation.json").as_bytes(),
    );
    assert_eq!(v.status(), 400);
    assert!(v.to_string().contains("roles must alternate"), "{v}");
    let t = error(
        429,
        Some("ThrottlingException"),
        fixture!("error_throttling.json").as_bytes(),
    );
    assert_eq!(t, GatewayError::RateLimited { retry_after: None });
    assert!(retryable(&t));
    let a = error(
        403,
        Some("AccessDeniedException"),
        fixture!("error_access_denied.json").as_bytes(),
    );
    assert_eq!(a.status(), 502);
    assert!(!a.to_string().contains("AKIA"), "{a}");
    assert!(!String::from_utf8_lossy(&a.body()).contains("arn:aws"));
    assert_eq!(
        error(400, Some("AccessDeniedException"), b"{}").status(),
        502
    );
    assert_eq!(
        error(404, Some("ResourceNotFoundException"), b"{}").status(),
        502
    );
    assert_eq!(
        error(408, Some("ModelTimeoutException"), b"{}").status(),
        504
    );
    assert_eq!(
        error(503, Some("ServiceUnavailableException"), b"{}").status(),
        503
    );
    assert_eq!(
        error(400, Some("ServiceQuotaExceededException"), b"{}").status(),
        429
    );
    assert_eq!(error(424, Some("ModelErrorException"), b"{}").status(), 502);
    // No header: the body's `__type`, then the status.
    let b = error(
        400,
        None,
        br#"{"__type":"com.amazon.coral.validate#ValidationException","message":"bad"}"#,
    );
    assert!(b.to_string().contains("bad"));
    assert_eq!(error(429, None, b"").status(), 429);
    assert_eq!(error(500, None, b"").status(), 502);
    assert_eq!(error(401, None, b"{}").status(), 502);
    // A key echoed in a validation message is blanked.
    let k = error(
        400,
        Some("ValidationException"),
        br#"{"message":"bad key sk-abcdefghijk0123456789"}"#,
    );
    assert!(!k.to_string().contains("sk-abcdefghijk"), "{k}");
}

#[test]
fn titan_embeddings_take_one_text_and_report_tokens() {
    let (body, fam) = embed_request(
        &json!({"input": "hello", "dimensions": 512}),
        "amazon.titan-embed-text-v2:0",
    )
    .unwrap();
    assert_eq!(fam, EmbedFamily::TitanV2);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        v,
        json!({"inputText": "hello", "dimensions": 512, "normalize": true})
    );
    assert_eq!(
        embed_request(
            &json!({"input": ["a", "b"]}),
            "amazon.titan-embed-text-v2:0"
        )
        .unwrap_err()
        .param,
        "input"
    );
    assert_eq!(
        embed_request(
            &json!({"input": "a", "dimensions": 3}),
            "amazon.titan-embed-text-v2:0"
        )
        .unwrap_err()
        .param,
        "dimensions"
    );
    assert_eq!(
        embed_request(
            &json!({"input": "a", "dimensions": 256}),
            "amazon.titan-embed-text-v1"
        )
        .unwrap_err()
        .param,
        "dimensions"
    );
    let (out, usage) =
        embed_response(fixture!("titan_embed.json").as_bytes(), fam, "emb", None).unwrap();
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["data"][0]["embedding"], json!([0.125, -0.5, 0.25]));
    assert_eq!(usage.unwrap().prompt, 7);
}

#[test]
fn cohere_embeddings_batch_and_take_tokens_from_the_header() {
    let (body, fam) =
        embed_request(&json!({"input": ["a", "b"]}), "cohere.embed-english-v3").unwrap();
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["texts"], json!(["a", "b"]));
    assert_eq!(v["input_type"], "search_document");
    let (out, usage) = embed_response(
        fixture!("cohere_embed.json").as_bytes(),
        fam,
        "emb",
        Some(4),
    )
    .unwrap();
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["data"][1]["embedding"], json!([0.3, 0.4]));
    assert_eq!(v["data"][1]["index"], 1);
    assert_eq!(usage.unwrap().prompt, 4);
    // No count anywhere: no usage (the caller estimates; never charged 0).
    assert!(
        embed_response(fixture!("cohere_embed.json").as_bytes(), fam, "emb", None)
            .unwrap()
            .1
            .is_none()
    );
    let many: Vec<String> = (0..=limits::MAX_COHERE_TEXTS)
        .map(|i| i.to_string())
        .collect();
    assert_eq!(
        embed_request(&json!({"input": many}), "cohere.embed-english-v3")
            .unwrap_err()
            .param,
        "input"
    );
}

#[test]
fn unsupported_embedding_requests_name_the_field() {
    assert_eq!(
        embed_request(&json!({"input": "a"}), "meta.llama3-8b-instruct-v1:0")
            .unwrap_err()
            .param,
        "model"
    );
    assert_eq!(
        embed_request(&json!({"input": [1, 2, 3]}), "cohere.embed-english-v3")
            .unwrap_err()
            .param,
        "input[0]"
    );
    assert_eq!(
        embed_request(
            &json!({"input": "a", "encoding_format": "base64"}),
            "cohere.embed-english-v3"
        )
        .unwrap_err()
        .param,
        "encoding_format"
    );
    assert_eq!(
        embed_request(&json!({"input": []}), "cohere.embed-english-v3")
            .unwrap_err()
            .param,
        "input"
    );
}
