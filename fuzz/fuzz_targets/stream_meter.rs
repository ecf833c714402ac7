//! `StreamMeter::on_chunk` over any split of any stream: in passthrough
//! mode the client gets the upstream's bytes unchanged; in strip mode the
//! bytes minus whole events; either way the same bytes, usage and counts
//! however the stream was split.
#![no_main]

mod common;

use bytes::Bytes;
use common::{split, Rng};
use libfuzzer_sys::fuzz_target;
use tollgate::accounting::meter::StreamMeter;
use tollgate::base::endpoint::Endpoint;

#[derive(Debug, PartialEq)]
struct Run {
    out: Vec<u8>,
    overflow: bool,
    usage: Option<tollgate::accounting::Usage>,
    text: String,
    events: u64,
    done: bool,
}

fn run(ep: Endpoint, strip: bool, chunks: &[&[u8]]) -> Run {
    let mut m = StreamMeter::new(ep, strip);
    let mut out = Vec::new();
    let mut overflow = false;
    for (i, c) in chunks.iter().enumerate() {
        let mut body = Some(Bytes::copy_from_slice(c));
        let r = m.on_chunk(&mut body, i + 1 == chunks.len());
        out.extend_from_slice(&body.unwrap_or_default());
        if r.is_err() {
            overflow = true;
            break;
        }
    }
    let s = m.seen();
    Run {
        out,
        overflow,
        usage: s.usage,
        text: s.text.clone(),
        events: s.events,
        done: s.done,
    }
}

fuzz_target!(|data: &[u8]| {
    let (a, rest) = common::take_byte(data);
    let (b, stream) = common::take_byte(rest);
    let ep = match a % 4 {
        0 => Endpoint::ChatCompletions,
        1 => Endpoint::Completions,
        2 => Endpoint::Responses,
        _ => Endpoint::Messages,
    };
    let strip = a & 4 != 0;
    let mut rng = Rng::new(u64::from(b) << 8 | u64::from(a));
    // Always at least one chunk, so the stream ends.
    let whole = run(ep, strip, &[stream]);
    assert!(!whole.overflow);
    if strip {
        // Whole events cut out: what is left is a subsequence.
        let mut it = stream.iter();
        assert!(whole.out.iter().all(|b| it.any(|s| s == b)), "strip mode added bytes");
    } else {
        assert_eq!(whole.out, stream, "passthrough changed the bytes");
    }
    let mut chunks = split(stream, &mut rng);
    chunks.push(&[]);
    assert_eq!(run(ep, strip, &chunks), whole);
});
