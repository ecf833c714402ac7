//! The SSE event bound (RELIABILITY row 24), end to end and on the stream
//! meter: an upstream event is bounded as a whole, all its lines counted
//! (`data:`, `event:`, `id:`, comments), not only its `data:` lines. An
//! upstream that streams endless `: comment` or `id:` lines without ever
//! ending the event gets its stream cut with an SSE error event, with the
//! gateway's memory bounded, on a passthrough route, a translated (Gemini)
//! route and the Messages endpoint. An event of exactly
//! `MAX_EVENT_BYTES` passes byte for byte; one byte more is cut.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{json, Value};
use support::{
    wait_until, Behavior, Gateway, MockUpstream, Recorded, Reply, ReplyBody, CONFIG_HEAD,
};
use tollgate::accounting::meter::{StreamMeter, MAX_EVENT_BYTES};
use tollgate::base::endpoint::Endpoint;

const KEY: &str = "tg-hardening-sse-0001";
const MIB: usize = 1024 * 1024;
/// What an endless upstream sends before it would end the event.
const ENDLESS: usize = 128 * MIB;

/// What the scripted upstream streams after its first event.
#[derive(Clone, Copy, Debug)]
enum Tail {
    /// `line` repeated for [`ENDLESS`] bytes, never a blank line.
    Endless(&'static str),
    /// One event of exactly this many bytes (comment lines, then a data
    /// line), then `data: [DONE]`.
    Exact(usize),
}

fn first_event(path: &str) -> String {
    if path.contains(":streamGenerateContent") {
        let c = json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "Hel"}]}, "index": 0}]});
        format!("data: {c}\r\n\r\n")
    } else {
        let c = json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
            "model": "gpt-4o-mini",
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hel"}, "finish_reason": null}]});
        format!("data: {c}\n\n")
    }
}

/// The event of [`Tail::Exact`]: comment lines, then a data line, `size`
/// bytes from its first byte to the end of its data line.
fn exact_event(size: usize) -> String {
    let data = "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\
        \"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\"},\"finish_reason\":null}]}";
    let mut e = String::with_capacity(size + 2);
    let line = format!(": {}\n", "x".repeat(1021));
    // Whole lines while room is left for a last one of 2 to 1025 bytes.
    while e.len() + line.len() + data.len() + 2 <= size {
        e.push_str(&line);
    }
    let pad = size - e.len() - data.len();
    e.push(':');
    e.push_str(&"y".repeat(pad - 2));
    e.push('\n');
    e.push_str(data);
    assert_eq!(e.len(), size);
    e.push_str("\n\n");
    e
}

fn upstream(tail: Tail) -> Behavior {
    Behavior::func(move |r: &Recorded| {
        let mut chunks = vec![Bytes::from(first_event(&r.path))];
        match tail {
            Tail::Endless(line) => {
                let block = Bytes::from(line.repeat(256 * 1024 / line.len()));
                for _ in 0..ENDLESS / block.len() {
                    chunks.push(block.clone());
                }
                chunks.push(Bytes::from_static(b"\n\ndata: [DONE]\n\n"));
            }
            Tail::Exact(size) => {
                let e = exact_event(size);
                for piece in e.as_bytes().chunks(64 * 1024) {
                    chunks.push(Bytes::copy_from_slice(piece));
                }
                chunks.push(Bytes::from_static(b"data: [DONE]\n\n"));
            }
        }
        Reply {
            status: 200,
            headers: vec![("content-type".into(), "text/event-stream".into())],
            body: ReplyBody::Chunks(chunks, Duration::ZERO),
        }
    })
}

async fn gateway(up: &MockUpstream) -> Gateway {
    let port = up.port();
    Gateway::start(&format!(
        r#"{CONFIG_HEAD}providers:
  oai:
    kind: openai
    base_url: "http://127.0.0.1:{port}/v1"
    api_key: "sk-hardening-sse"
    health_check: {{ enabled: false }}
  gem:
    kind: gemini
    base_url: "http://127.0.0.1:{port}/v1beta"
    api_key: "AIzaSyHardeningSseKey0123456789abcdefgh"
    health_check: {{ enabled: false }}
models:
  plain: {{ routes: [ {{ provider: oai, model: gpt-4o-mini }} ] }}
  gemini: {{ routes: [ {{ provider: gem, model: gemini-2.5-flash }} ] }}
keys:
  - {{ name: t, key: "{KEY}" }}
"#
    ))
    .await
}

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// What a client read of a stream: the byte count, the last 64 KiB or
/// more, and whether it ended cleanly.
struct Read {
    total: usize,
    tail: Vec<u8>,
    clean: bool,
}

/// Streams `body` to `path` and reads the answer to its end.
async fn stream(gw: &Gateway, path: &str, body: &Value) -> Read {
    let resp = support::client()
        .post(gw.url(path))
        .header("authorization", format!("Bearer {KEY}"))
        .header("anthropic-version", "2023-06-01")
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200, "log:\n{}", gw.logs());
    let mut s = resp.bytes_stream();
    let mut r = Read {
        total: 0,
        tail: Vec::new(),
        clean: true,
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match tokio::time::timeout_at(deadline, s.next()).await {
            Ok(Some(Ok(b))) => {
                r.total += b.len();
                r.tail.extend_from_slice(&b);
                if r.tail.len() > 8 * MIB {
                    r.tail.drain(..r.tail.len() - 64 * 1024);
                }
            }
            Ok(Some(Err(_))) => {
                r.clean = false;
                break;
            }
            Ok(None) => break,
            Err(_) => panic!("the stream did not end; {} MiB read", r.total / MIB),
        }
    }
    r
}

/// The JSON of the last `data:` line of `tail`.
fn last_data(tail: &[u8]) -> Value {
    let text = String::from_utf8_lossy(tail);
    let line = text
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("data: "))
        .unwrap_or_else(|| {
            panic!(
                "no data line in {:?}",
                &text[text.len().saturating_sub(300)..]
            )
        });
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
}

fn chat(alias: &str) -> Value {
    json!({"model": alias, "stream": true, "messages": [{"role": "user", "content": "hi"}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_comment_or_id_lines_end_with_an_error_event_and_bounded_memory() {
    for (line, alias, path) in [
        (": keep-alive\n", "plain", "/v1/chat/completions"),
        ("id: 1234567\n", "plain", "/v1/chat/completions"),
        (": keep-alive\r\n", "gemini", "/v1/chat/completions"),
        ("id: 1234567\n", "plain", "/v1/messages"),
    ] {
        let up = MockUpstream::start(upstream(Tail::Endless(line))).await;
        let gw = gateway(&up).await;
        let before = peak_rss_kib(gw.pid());
        let body = if path == "/v1/messages" {
            json!({"model": alias, "max_tokens": 16, "stream": true,
                   "messages": [{"role": "user", "content": "hi"}]})
        } else {
            chat(alias)
        };
        let r = stream(&gw, path, &body).await;
        let what = format!("{line:?} on {alias} {path}");
        assert!(
            r.clean,
            "{what}: the stream ended with an error, not an error event"
        );
        assert!(
            r.total < 16 * MIB,
            "{what}: the event was not cut: {} MiB reached the client",
            r.total / MIB
        );
        let last = last_data(&r.tail);
        if path == "/v1/messages" {
            assert_eq!(last["type"], "error", "{what}: {last}");
        } else {
            assert_eq!(last["error"]["code"], "upstream_error", "{what}: {last}");
        }
        assert!(
            !String::from_utf8_lossy(&r.tail).contains("[DONE]"),
            "{what}"
        );
        // Bounded: a fixed amount for the 4 MiB cap and its copies, never
        // the 128 MiB the upstream would send.
        let grew = peak_rss_kib(gw.pid()).saturating_sub(before) / 1024;
        assert!(grew < 96, "{what}: peak RSS grew by {grew} MiB");
        assert!(
            wait_until(Duration::from_secs(20), || up.cancelled() == 1).await,
            "{what}: the upstream stream was not aborted"
        );
        assert!(gw.logs().contains("over"), "{what}: log:\n{}", gw.logs());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_of_max_event_bytes_passes_and_one_byte_more_is_cut() {
    // At the bound: byte for byte (the client asked for usage, so nothing
    // is cut out of the stream).
    let up = MockUpstream::start(upstream(Tail::Exact(MAX_EVENT_BYTES))).await;
    let gw = gateway(&up).await;
    let mut body = chat("plain");
    body["stream_options"] = json!({"include_usage": true});
    let r = stream(&gw, "/v1/chat/completions", &body).await;
    let expected = format!(
        "{}{}data: [DONE]\n\n",
        first_event(""),
        exact_event(MAX_EVENT_BYTES)
    );
    assert!(r.clean);
    assert_eq!(r.total, expected.len());
    assert!(r.tail == expected.as_bytes(), "the event was changed");

    // One past: cut with an error event.
    let up = MockUpstream::start(upstream(Tail::Exact(MAX_EVENT_BYTES + 1))).await;
    let gw = gateway(&up).await;
    let r = stream(&gw, "/v1/chat/completions", &body).await;
    assert!(r.clean);
    assert!(r.total < MAX_EVENT_BYTES, "{} bytes", r.total);
    assert_eq!(last_data(&r.tail)["error"]["code"], "upstream_error");
}

#[test]
fn the_stream_meter_holds_at_most_one_capped_event() {
    // Endless comments fed to the meter that holds unfinished events back:
    // it gives up past the cap instead of holding the stream.
    let mut m = StreamMeter::new(Endpoint::ChatCompletions, true);
    let block = Bytes::from(": keep-alive\n".repeat(20_000));
    let mut fed = 0usize;
    let mut forwarded = 0usize;
    loop {
        let mut body = Some(block.clone());
        let r = m.on_chunk(&mut body, false);
        forwarded += body.map_or(0, |b| b.len());
        fed += block.len();
        if r.is_err() {
            break;
        }
        assert!(
            fed <= MAX_EVENT_BYTES + block.len(),
            "no overflow after {fed} bytes"
        );
    }
    assert!(m.overflowed);
    assert_eq!(forwarded, 0, "half an event went out");
}
