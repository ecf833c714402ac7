//! The stream translator Gemini `streamGenerateContent` events → OpenAI `chat.completion.chunk` events, behind the scanner
//! (`translate::pipe::Pipe`), on any byte stream: never panics, writes
//! only whole events whose data is JSON (or `[DONE]`), and writes the
//! same bytes and reports the same usage however the stream is split.
#![no_main]

mod common;

use bytes::BytesMut;
use common::{assert_json_events, scrub_created, split, Rng};
use libfuzzer_sys::fuzz_target;
use tollgate::translate::pipe::Pipe;
use tollgate::translate::{gemini::ChatStream as Translator, ResponseOpts};

/// Largest event the pipe takes here (small, so the cap is exercised).
const MAX_EVENT: usize = 4096;

fn run(include_usage: bool, chunks: &[&[u8]]) -> (Vec<u8>, bool, Option<tollgate::accounting::Usage>) {
    let opts = ResponseOpts {
        model: "alias",
        request_id: "req-fuzz",
        include_usage,
    };
    let mut pipe = Pipe::new(Box::new(Translator::new(&opts)), MAX_EVENT);
    let mut out = BytesMut::new();
    let mut overflow = false;
    for c in chunks {
        if pipe.feed(c, &mut out).is_err() {
            overflow = true;
            break;
        }
    }
    if !overflow {
        overflow = pipe.finish(&mut out).is_err();
    }
    let usage = pipe.usage();
    (scrub_created(&out), overflow, usage)
}

fuzz_target!(|data: &[u8]| {
    let (a, rest) = common::take_byte(data);
    let (b, stream) = common::take_byte(rest);
    let include_usage = a & 1 != 0;
    let whole = run(include_usage, &[stream]);
    if !whole.1 {
        assert_json_events(&whole.0);
    }
    let mut rng = Rng::new(u64::from(a) << 8 | u64::from(b));
    let chunks = split(stream, &mut rng);
    assert_eq!(run(include_usage, &chunks), whole);
});
