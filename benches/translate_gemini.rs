//! Criterion micro-benchmarks of the Gemini translation (`kind: gemini`).
//!
//! `cargo bench --bench translate_gemini` (add `-- --test` to run each once).
//!
//! * `gemini_stream/text_event` and `tool_event`: one Gemini stream event (a
//!   text piece; two parallel function calls) through `ChatStream::event`,
//!   as the proxy runs it per event. Memory stays bounded: the translator
//!   keeps counters per candidate, never the text.
//! * `gemini_stream/whole_stream`: the text fixture (three events) through
//!   the scanner and the translator, `[DONE]` included.
//! * `gemini_request/chat` and `gemini_response/chat`: the fixture request
//!   (system, images, tool calls and results, two tools) and the non-stream
//!   text response.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use std::time::Duration;
use tollgate::sse::Scanner;
use tollgate::translate::gemini::{chat_request, chat_response, ChatStream};
use tollgate::translate::{RequestOpts, ResponseOpts, StreamTranslator};

const STREAM_TEXT: &str = include_str!("../tests/fixtures/gemini/stream_text.sse");
const STREAM_TOOLS: &str = include_str!("../tests/fixtures/gemini/stream_tools.sse");
const REQUEST: &str = include_str!("../tests/fixtures/gemini/chat_request.json");
const RESPONSE: &str = include_str!("../tests/fixtures/gemini/generate_text.json");

const OPTS: ResponseOpts<'static> = ResponseOpts {
    model: "smart",
    request_id: "req-42",
    include_usage: true,
};

/// The `data:` payload of the `n`th event of an SSE fixture.
fn event(sse: &str, n: usize) -> Vec<u8> {
    let mut scanner = Scanner::new(1 << 20);
    let mut events = Vec::new();
    if scanner
        .feed(sse.as_bytes(), |e| events.push(e.data.to_vec()))
        .is_err()
    {
        panic!("fixture does not scan");
    }
    events.swap_remove(n)
}

fn stream(c: &mut Criterion) {
    let mut g = c.benchmark_group("gemini_stream");
    g.measurement_time(Duration::from_secs(2));
    for (name, data) in [
        ("text_event", event(STREAM_TEXT, 1)),
        ("tool_event", event(STREAM_TOOLS, 1)),
    ] {
        g.throughput(Throughput::Elements(1));
        g.bench_function(name, |b| {
            let mut t = ChatStream::new(&OPTS);
            let mut out = bytes::BytesMut::with_capacity(4096);
            b.iter(|| {
                out.clear();
                t.event(black_box(&data), &mut out);
                out.len()
            })
        });
    }
    g.throughput(Throughput::Elements(3));
    g.bench_function("whole_stream", |b| {
        b.iter(|| {
            let mut scanner = Scanner::new(1 << 20);
            let mut t = ChatStream::new(&OPTS);
            let mut out = bytes::BytesMut::new();
            let fed = scanner.feed(black_box(STREAM_TEXT.as_bytes()), |e| {
                t.event(e.data, &mut out)
            });
            t.finish(&mut out);
            (fed.is_ok(), out.len())
        })
    });
    g.finish();
}

fn request_response(c: &mut Criterion) {
    let req: serde_json::Value = match serde_json::from_str(REQUEST) {
        Ok(v) => v,
        Err(e) => panic!("fixture: {e}"),
    };
    let opts = RequestOpts {
        model: "gemini-2.5-flash",
        stream: false,
        default_max_tokens: None,
        drop_unsupported: false,
    };
    c.bench_function("gemini_request/chat", |b| {
        b.iter(|| chat_request(black_box(&req), &opts).map(|t| t.body.len()))
    });
    c.bench_function("gemini_response/chat", |b| {
        b.iter(|| chat_response(black_box(RESPONSE.as_bytes()), &OPTS).map(|(b, _)| b.len()))
    });
}

criterion_group!(benches, stream, request_response);
criterion_main!(benches);
