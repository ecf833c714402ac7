//! `sse::Scanner`: without a cap it reports exactly the events of a plain
//! reference reading of the format, with their offsets; with a small cap,
//! however the stream is split, it reports the same events and overflows
//! at the same point as when fed whole, and holds no more than the cap.
#![no_main]

mod common;

use common::{reference_events, split, Rng};
use libfuzzer_sys::fuzz_target;
use tollgate::sse::Scanner;

#[derive(Debug, PartialEq, Eq)]
struct Run {
    events: Vec<(Vec<u8>, u64, u64)>,
    overflow: bool,
}

fn run(max: usize, chunks: &[&[u8]]) -> Run {
    let mut s = Scanner::new(max);
    let mut events = Vec::new();
    let mut push = |e: tollgate::sse::Event<'_>| {
        assert!(e.start < e.end && e.data.len() <= max);
        events.push((e.data.to_vec(), e.start, e.end));
    };
    for c in chunks {
        if s.feed(c, &mut push).is_err() {
            return Run { events, overflow: true };
        }
    }
    let overflow = s.finish(&mut push).is_err();
    Run { events, overflow }
}

fuzz_target!(|data: &[u8]| {
    let (a, rest) = common::take_byte(data);
    let (b, stream) = common::take_byte(rest);
    let mut rng = Rng::new(u64::from(a) << 8 | u64::from(b));
    let whole = run(stream.len() + 1, &[stream]);
    assert!(!whole.overflow);
    let want: Vec<(Vec<u8>, u64, u64)> = reference_events(stream)
        .into_iter()
        .map(|e| (e.data, e.start, e.end))
        .collect();
    assert_eq!(whole.events, want);
    let max = usize::from(a) % 96;
    let capped = run(max, &[stream]);
    for _ in 0..3 {
        let chunks = split(stream, &mut rng);
        assert_eq!(run(max, &chunks), capped, "split {:?}", chunks.iter().map(|c| c.len()).collect::<Vec<_>>());
    }
});
