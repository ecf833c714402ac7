//! Property tests for the SSE scanner and the stream meter (no network).
//!
//! A realistic recorded OpenAI Chat Completions stream (role chunk, content
//! chunks with multi-byte UTF-8, a tool-call arguments chunk, a finish chunk,
//! the usage-only chunk and `[DONE]`) is written with LF, CRLF and CR line
//! endings, split at random byte offsets, and fed through
//! `StreamMeter::on_chunk` and `Scanner::feed`. However the stream is split:
//! - pass-through mode forwards it byte for byte and reads its usage;
//! - strip mode forwards it minus exactly the usage event;
//! - the scanner reports the same events.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use proptest::prelude::*;
use proptest::sample::Index;
use tollgate::accounting::meter::{StreamMeter, MAX_EVENT_BYTES};
use tollgate::accounting::Usage;
use tollgate::base::endpoint::Endpoint;
use tollgate::sse::Scanner;

/// The usage the recorded stream reports.
const USAGE: Usage = Usage {
    prompt: 1234,
    completion: 56,
    cached: 1024,
    reasoning: 8,
    cache_write: 0,
};

const HEAD: &str = r#""id":"chatcmpl-9xYzAbC123","object":"chat.completion.chunk","created":1718000000,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_0aa8d3e20b""#;

fn content_chunk(text_json: &str) -> String {
    format!(
        r#"{{{HEAD},"choices":[{{"index":0,"delta":{{"content":{text_json}}},"logprobs":null,"finish_reason":null}}],"usage":null}}"#
    )
}

/// Contents of the content chunks, as JSON string literals (escapes kept).
const CONTENTS: [&str; 10] = [
    r#""héllo""#,
    r#"" 世界""#,
    r#"", ""#,
    r#""ça va""#,
    r#"" — ""#,
    r#""naïve \"quoted\"""#,
    r#""\n""#,
    r#"" 🚀 emoji""#,
    r#"" Zürich""#,
    r#"" done.""#,
];

/// The text the meter must collect (content and tool arguments, unescaped).
fn expected_text() -> String {
    let mut t = String::new();
    for c in CONTENTS {
        t.push_str(&serde_json::from_str::<String>(c).unwrap());
    }
    t.push_str(r#"{"city":"Zürich","unit":"°C"}"#);
    t
}

/// The events' `data:` payloads, in order, and the index of the usage event.
fn payloads() -> (Vec<String>, usize) {
    let mut p = Vec::new();
    p.push(format!(
        r#"{{{HEAD},"choices":[{{"index":0,"delta":{{"role":"assistant","content":"","refusal":null}},"logprobs":null,"finish_reason":null}}],"usage":null}}"#
    ));
    for c in CONTENTS {
        p.push(content_chunk(c));
    }
    p.push(format!(
        r#"{{{HEAD},"choices":[{{"index":0,"delta":{{"tool_calls":[{{"index":0,"id":"call_Q1w2E3r4","type":"function","function":{{"name":"get_weather","arguments":"{{\"city\":\"Zürich\",\"unit\":\"°C\"}}"}}}}]}},"logprobs":null,"finish_reason":null}}],"usage":null}}"#
    ));
    p.push(format!(
        r#"{{{HEAD},"choices":[{{"index":0,"delta":{{}},"logprobs":null,"finish_reason":"stop"}}],"usage":null}}"#
    ));
    let usage_at = p.len();
    p.push(format!(
        r#"{{{HEAD},"choices":[],"usage":{{"prompt_tokens":1234,"completion_tokens":56,"total_tokens":1290,"prompt_tokens_details":{{"cached_tokens":1024,"audio_tokens":0}},"completion_tokens_details":{{"reasoning_tokens":8,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}}}}}"#
    ));
    p.push("[DONE]".to_string());
    // Sanity: every payload is one line, and all but [DONE] are JSON.
    for d in &p {
        assert!(!d.contains('\n') && !d.contains('\r'));
        if d != "[DONE]" {
            serde_json::from_str::<serde_json::Value>(d).unwrap();
        }
    }
    (p, usage_at)
}

const EOLS: [(&str, &str); 3] = [("LF", "\n"), ("CRLF", "\r\n"), ("CR", "\r")];

/// The stream with line ending `eol`, optionally without the usage event.
/// It opens with a keep-alive comment, as some providers send.
fn stream(eol: &str, with_usage: bool) -> Vec<u8> {
    let (p, usage_at) = payloads();
    let mut s = format!(": keep-alive{eol}{eol}");
    for (i, d) in p.iter().enumerate() {
        if i == usage_at && !with_usage {
            continue;
        }
        s.push_str(&format!("data: {d}{eol}{eol}"));
    }
    s.into_bytes()
}

/// Splits `input` at the (sorted, deduplicated, non-zero) `cuts`.
fn split(input: &[u8], cuts: &[usize]) -> Vec<Bytes> {
    let mut points: Vec<usize> = cuts
        .iter()
        .copied()
        .filter(|&c| c > 0 && c < input.len())
        .collect();
    points.sort_unstable();
    points.dedup();
    let mut out = Vec::new();
    let mut prev = 0;
    for p in points.into_iter().chain(std::iter::once(input.len())) {
        out.push(Bytes::copy_from_slice(&input[prev..p]));
        prev = p;
    }
    out
}

/// Feeds `chunks` through a meter; with `separate_eos` the end of stream
/// comes as its own empty (`None`) call, as Pingora may deliver it.
fn meter(chunks: &[Bytes], strip: bool, separate_eos: bool) -> (Vec<u8>, StreamMeter) {
    let mut m = StreamMeter::new(Endpoint::ChatCompletions, strip);
    let mut out = Vec::new();
    for (i, c) in chunks.iter().enumerate() {
        let eos = !separate_eos && i + 1 == chunks.len();
        let mut body = Some(c.clone());
        m.on_chunk(&mut body, eos).expect("no overflow");
        out.extend_from_slice(&body.unwrap_or_default());
    }
    if separate_eos {
        let mut body = None;
        m.on_chunk(&mut body, true).expect("no overflow");
        out.extend_from_slice(&body.unwrap_or_default());
    }
    (out, m)
}

type ScannedEvent = (Vec<u8>, u64, u64);

fn scan(chunks: &[Bytes]) -> Vec<ScannedEvent> {
    let mut s = Scanner::new(MAX_EVENT_BYTES);
    let mut got = Vec::new();
    for c in chunks {
        s.feed(c, |e| got.push((e.data.to_vec(), e.start, e.end)))
            .unwrap();
    }
    s.finish(|e| got.push((e.data.to_vec(), e.start, e.end)))
        .unwrap();
    got
}

/// Shows a byte string readably in assertion messages.
fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(b).escape_debug().to_string()
}

fn check_all_variants(cuts: &[Index], separate_eos: bool) {
    let (payloads, _) = payloads();
    let expected_text = expected_text();
    for (name, eol) in EOLS {
        let input = stream(eol, true);
        let without_usage = stream(eol, false);
        let offsets: Vec<usize> = cuts.iter().map(|i| i.index(input.len())).collect();
        let chunks = split(&input, &offsets);
        assert_eq!(chunks.concat(), input);

        // (a) pass-through: byte-identical, usage and text read.
        let (out, m) = meter(&chunks, false, separate_eos);
        assert!(
            out == input,
            "{name}: pass-through changed bytes (cuts {offsets:?})\n got: {}\nwant: {}",
            show(&out),
            show(&input)
        );
        assert_eq!(
            m.seen().usage,
            Some(USAGE),
            "{name}: usage (cuts {offsets:?})"
        );
        assert_eq!(
            m.seen().text,
            expected_text,
            "{name}: text (cuts {offsets:?})"
        );
        assert!(m.seen().done, "{name}: [DONE] not seen (cuts {offsets:?})");
        assert!(!m.seen().error_event, "{name}: no error event");

        // (b) strip: exactly the usage event (and its blank line) is gone.
        let (out, m) = meter(&chunks, true, separate_eos);
        assert!(
            out == without_usage,
            "{name}: strip output wrong (cuts {offsets:?})\n got: {}\nwant: {}",
            show(&out),
            show(&without_usage)
        );
        assert_eq!(
            m.seen().usage,
            Some(USAGE),
            "{name}: usage in strip mode (cuts {offsets:?})"
        );
        assert!(
            m.seen().done,
            "{name}: [DONE] in strip mode (cuts {offsets:?})"
        );

        // (c) the scanner reports the same events for every split.
        let whole = scan(std::slice::from_ref(&Bytes::from(input.clone())));
        let data: Vec<String> = whole
            .iter()
            .map(|e| String::from_utf8(e.0.clone()).unwrap())
            .collect();
        assert_eq!(data, payloads, "{name}: events of the unsplit stream");
        let got = scan(&chunks);
        assert_eq!(
            got, whole,
            "{name}: scanner events differ (cuts {offsets:?})"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// 1..20 chunks at random offsets, end of stream on the last chunk or
    /// separately.
    #[test]
    fn any_split_meters_and_strips_exactly(
        cuts in prop::collection::vec(any::<Index>(), 0..20),
        separate_eos in any::<bool>(),
    ) {
        check_all_variants(&cuts, separate_eos);
    }
}

/// Splits that proptest may rarely draw: one byte at a time, and a cut at
/// every single offset (two chunks), for each line ending.
#[test]
fn exhaustive_small_splits() {
    for (name, eol) in EOLS {
        let input = stream(eol, true);
        let without_usage = stream(eol, false);
        let whole = scan(std::slice::from_ref(&Bytes::from(input.clone())));
        let check = |offsets: &[usize]| {
            let chunks = split(&input, offsets);
            let (out, m) = meter(&chunks, false, false);
            assert!(out == input, "{name}: pass-through, cuts {offsets:?}");
            assert_eq!(m.seen().usage, Some(USAGE), "{name}: cuts {offsets:?}");
            let (out, _) = meter(&chunks, true, false);
            assert!(
                out == without_usage,
                "{name}: strip, cuts {offsets:?}\n got: {}",
                show(&out)
            );
            assert_eq!(scan(&chunks), whole, "{name}: scanner, cuts {offsets:?}");
        };
        for a in 1..input.len() {
            check(&[a]);
        }
        let all: Vec<usize> = (1..input.len()).collect();
        check(&all);
    }
}

/// A 1 MiB `data:` line passes through unchanged in both modes, in small
/// chunks or whole, and the scanner returns its data intact.
#[test]
fn one_mib_line_passes_unchanged() {
    let big = "x".repeat(1024 * 1024);
    let big_event = content_chunk(&format!("\"{big}\""));
    assert!(big_event.len() > 1024 * 1024);
    let mut input = Vec::new();
    let (p, _) = payloads();
    input.extend_from_slice(format!("data: {}\n\n", p[0]).as_bytes());
    input.extend_from_slice(format!("data: {big_event}\n\n").as_bytes());
    input.extend_from_slice(b"data: [DONE]\n\n");
    for chunk_len in [input.len(), 65_536, 4_093] {
        let chunks: Vec<Bytes> = input
            .chunks(chunk_len)
            .map(Bytes::copy_from_slice)
            .collect();
        for strip in [false, true] {
            let (out, m) = meter(&chunks, strip, false);
            assert!(
                out == input,
                "strip={strip}, chunk {chunk_len}: bytes changed"
            );
            assert!(!m.overflowed, "a 1 MiB line must not overflow the scanner");
            assert!(m.seen().done);
            assert_eq!(m.seen().events, 3);
        }
        let events = scan(&chunks);
        assert_eq!(events.len(), 3);
        assert!(
            events[1].0 == big_event.as_bytes(),
            "big event data changed"
        );
    }
}

/// A line longer than `MAX_EVENT_BYTES` makes `on_chunk` return `Err` once
/// (the proxy then aborts the stream with an error event). What was forwarded
/// before is exactly the complete events ahead of the long line: no half
/// event, and nothing after the error.
#[test]
fn over_long_line_is_an_error_and_forwards_only_complete_events() {
    let mut input = Vec::new();
    let (p, usage_at) = payloads();
    input.extend_from_slice(format!("data: {}\n\n", p[0]).as_bytes());
    input.extend_from_slice(format!("data: {}\n\n", p[1]).as_bytes());
    let complete = input.clone();
    // An unterminated-for-now line past the cap.
    input.extend_from_slice(b"data: {\"choices\":[{\"delta\":{\"content\":\"");
    input.extend(std::iter::repeat_n(b'y', MAX_EVENT_BYTES + 10));
    input.extend_from_slice(b"\"}}]}\n\n");
    input.extend_from_slice(format!("data: {}\n\n", p[usage_at]).as_bytes());
    input.extend_from_slice(b"data: [DONE]\n\n");
    for chunk_len in [input.len(), 1 << 20, 65_536, 7_777] {
        let chunks: Vec<Bytes> = input
            .chunks(chunk_len)
            .map(Bytes::copy_from_slice)
            .collect();
        for strip in [false, true] {
            let mut m = StreamMeter::new(Endpoint::ChatCompletions, strip);
            let mut out = Vec::new();
            let mut errors = 0;
            for (i, c) in chunks.iter().enumerate() {
                let mut body = Some(c.clone());
                let failed = m.on_chunk(&mut body, i + 1 == chunks.len()).is_err();
                if failed {
                    errors += 1;
                }
                if errors == 0 || failed {
                    out.extend_from_slice(&body.unwrap_or_default());
                } else {
                    assert!(
                        body.is_none_or(|b| b.is_empty()),
                        "strip={strip}, chunk {chunk_len}: bytes forwarded after the error"
                    );
                }
            }
            assert_eq!(
                errors, 1,
                "strip={strip}, chunk {chunk_len}: one Err expected"
            );
            assert!(m.overflowed);
            assert!(
                out == complete,
                "strip={strip}, chunk {chunk_len}: forwarded {} bytes, expected the {} bytes of complete events",
                out.len(),
                complete.len()
            );
        }
    }
}
