//! Helpers shared by the fuzz targets (each target includes this file as a
//! module; not every target uses every helper).
#![allow(dead_code)]

/// A small deterministic generator (xorshift64*), seeded from the input,
/// for split points and options.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Splits `data` into chunks at points drawn from `rng` (some empty, some
/// one byte, some long).
pub fn split<'a>(data: &'a [u8], rng: &mut Rng) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let n = match rng.below(4) {
            0 => 0,
            1 => 1,
            2 => rng.below(8),
            _ => rng.below(rest.len() + 1),
        };
        let n = n.min(rest.len());
        out.push(&rest[..n]);
        rest = &rest[n..];
        if out.len() > 4 * data.len() + 8 {
            out.push(rest);
            break;
        }
    }
    out
}

/// The first byte (0 when empty) and the rest.
pub fn take_byte(data: &[u8]) -> (u8, &[u8]) {
    match data.split_first() {
        Some((b, rest)) => (*b, rest),
        None => (0, data),
    }
}

/// `out` with the digits after every `"created":` replaced by `0` (the
/// translators stamp chunks with the clock).
pub fn scrub_created(out: &[u8]) -> Vec<u8> {
    const KEY: &[u8] = b"\"created\":";
    let mut v = Vec::with_capacity(out.len());
    let mut i = 0;
    while i < out.len() {
        if out[i..].starts_with(KEY) {
            v.extend_from_slice(KEY);
            i += KEY.len();
            if out.get(i).is_some_and(u8::is_ascii_digit) {
                v.push(b'0');
                while out.get(i).is_some_and(u8::is_ascii_digit) {
                    i += 1;
                }
            }
        } else {
            v.push(out[i]);
            i += 1;
        }
    }
    v
}

/// One event of the reference SSE parser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefEvent {
    pub data: Vec<u8>,
    pub start: u64,
    pub end: u64,
}

/// A plain reading of the SSE format (WHATWG "event stream
/// interpretation", the parts the gateway uses): lines end in CRLF, LF or
/// CR; a blank line dispatches the event if it had `data:`; `data:` values
/// lose one leading space and are joined with LF; a line without `:` is a
/// field with an empty value; a last line without its ending is dropped.
/// `start` is where the event began (just past the previous blank line),
/// `end` just past the blank line that ended it.
pub fn reference_events(stream: &[u8]) -> Vec<RefEvent> {
    let mut out = Vec::new();
    let mut data: Vec<u8> = Vec::new();
    let mut has_data = false;
    let mut start = 0u64;
    let mut i = 0usize;
    while i < stream.len() {
        let Some(k) = stream[i..].iter().position(|&b| b == b'\n' || b == b'\r') else {
            break;
        };
        let line = &stream[i..i + k];
        let mut next = i + k + 1;
        if stream[i + k] == b'\r' && stream.get(next) == Some(&b'\n') {
            next += 1;
        }
        if line.is_empty() {
            if has_data {
                out.push(RefEvent {
                    data: std::mem::take(&mut data),
                    start,
                    end: next as u64,
                });
                has_data = false;
            }
            start = next as u64;
        } else {
            let (field, value) = match line.iter().position(|&b| b == b':') {
                Some(0) => (&b""[..], &b""[..]),
                Some(c) => {
                    let v = &line[c + 1..];
                    (&line[..c], v.strip_prefix(b" ").unwrap_or(v))
                }
                None => (line, &b""[..]),
            };
            if field == b"data" {
                if has_data {
                    data.push(b'\n');
                }
                data.extend_from_slice(value);
                has_data = true;
            }
        }
        i = next;
    }
    out
}

/// Asserts that `out` is whole SSE events whose `data:` is JSON (or
/// `[DONE]`), with nothing after the last blank line.
pub fn assert_json_events(out: &[u8]) {
    let events = reference_events(out);
    let end = events.last().map_or(0, |e| e.end as usize);
    let rest = &out[end..];
    assert!(
        rest.iter().all(|&b| b == b'\n' || b == b'\r'),
        "output ends in half an event: {:?}",
        String::from_utf8_lossy(rest)
    );
    for e in events {
        if e.data == b"[DONE]" {
            continue;
        }
        if let Err(err) = serde_json::from_slice::<serde_json::Value>(&e.data) {
            panic!(
                "output event is not JSON ({err}): {:?}",
                String::from_utf8_lossy(&e.data)
            );
        }
    }
}

/// Largest event the stream targets' pipe takes (small, so the cap is
/// exercised).
pub const MAX_EVENT: usize = 4096;

/// One stream translator behind the scanner (`translate::pipe::Pipe`) on
/// `chunks`: what it wrote (with `created` scrubbed), whether an event went
/// past [`MAX_EVENT`], and the usage it reported.
pub fn run_stream(
    make: &dyn Fn(&tollgate::translate::ResponseOpts) -> Box<dyn tollgate::translate::StreamTranslator>,
    include_usage: bool,
    chunks: &[&[u8]],
) -> (Vec<u8>, bool, Option<tollgate::accounting::Usage>) {
    let opts = tollgate::translate::ResponseOpts {
        model: "alias",
        request_id: "req-fuzz",
        include_usage,
    };
    let mut pipe = tollgate::translate::pipe::Pipe::new(make(&opts), MAX_EVENT);
    let mut out = bytes::BytesMut::new();
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

/// The stream targets' properties on one input: the whole stream writes
/// only whole JSON events (or `[DONE]`), and any split of it writes the same
/// bytes and reports the same usage.
pub fn check_stream(
    data: &[u8],
    make: &dyn Fn(&tollgate::translate::ResponseOpts) -> Box<dyn tollgate::translate::StreamTranslator>,
) {
    let (a, rest) = take_byte(data);
    let (b, stream) = take_byte(rest);
    let include_usage = a & 1 != 0;
    let whole = run_stream(make, include_usage, &[stream]);
    if !whole.1 {
        assert_json_events(&whole.0);
    }
    let mut rng = Rng::new(u64::from(a) << 8 | u64::from(b));
    let chunks = split(stream, &mut rng);
    assert_eq!(run_stream(make, include_usage, &chunks), whole);
}
