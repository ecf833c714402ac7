//! An incremental Server-Sent Events scanner. It works on the side: it reads
//! the chunks the proxy forwards and reports each complete event with its
//! byte range in the stream. Events may split anywhere, including inside a
//! CRLF or a UTF-8 character; lines may end in CRLF, LF or CR; `data:` may
//! span several lines.
//!
//! Hand-written on purpose: it runs over every streamed byte, and the SSE
//! crates on crates.io parse into owned events (an allocation per event)
//! where this one reports borrowed ranges. Its cost is measured
//! (`benches/hot_path.rs`, `docs/benchmarks.md`) and it is fuzzed
//! (`fuzz/fuzz_targets/sse_scanner.rs`).

/// One complete event.
#[derive(Debug)]
pub struct Event<'a> {
    /// The `data:` lines joined with `\n`.
    pub data: &'a [u8],
    /// Stream offset of the event's first byte.
    pub start: u64,
    /// Stream offset just past the blank line that ended it.
    pub end: u64,
}

/// Whether a response's `Content-Type` says it is an SSE stream.
pub fn is_event_stream(resp: &pingora::http::ResponseHeader) -> bool {
    resp.headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"))
}

/// An event grew past the cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overflow;

/// Scanner state carried between chunks. Memory is bounded by `max_event`.
#[derive(Debug)]
pub struct Scanner {
    /// The unfinished line.
    line: Vec<u8>,
    /// Data of the event being read.
    data: Vec<u8>,
    has_data: bool,
    /// The last chunk ended in CR: a leading LF in the next one belongs to it.
    after_cr: bool,
    /// Stream offset of the next byte.
    offset: u64,
    /// Stream offset where the current (unfinished) event began.
    event_start: u64,
    max_event: usize,
}

impl Scanner {
    /// A scanner that refuses events longer than `max_event` bytes. An
    /// event's bytes run from its first byte to the end of its last line
    /// (not counting that line's ending or the blank line that ends the
    /// event), whatever its lines are: `data:`, `event:`, `id:`, comments.
    /// The result does not depend on how the stream is split into chunks.
    pub fn new(max_event: usize) -> Self {
        Self {
            line: Vec::new(),
            data: Vec::new(),
            has_data: false,
            after_cr: false,
            offset: 0,
            event_start: 0,
            max_event,
        }
    }

    /// Stream offset of the first byte not yet part of a complete event.
    pub fn pending_from(&self) -> u64 {
        self.event_start
    }

    /// Bytes fed so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Overflow when the current event, up to stream offset `upto`, is
    /// over the cap.
    fn within(&self, upto: u64) -> Result<(), Overflow> {
        if upto.saturating_sub(self.event_start) > self.max_event as u64 {
            Err(Overflow)
        } else {
            Ok(())
        }
    }

    /// Feeds one chunk; calls `on_event` for each event it completes.
    pub fn feed(
        &mut self,
        chunk: &[u8],
        mut on_event: impl FnMut(Event<'_>),
    ) -> Result<(), Overflow> {
        let base = self.offset;
        let mut i = 0;
        if self.after_cr && !chunk.is_empty() {
            // The line held back at a trailing CR ends here, taking a leading LF.
            self.after_cr = false;
            if chunk[0] == b'\n' {
                i = 1;
            }
            let line = std::mem::take(&mut self.line);
            // Its content ended just before that CR, the previous chunk's
            // last byte.
            let r = self.line_done(&line, base - 1, base + i as u64, &mut on_event);
            self.line = line;
            self.line.clear();
            r?;
        }
        while i < chunk.len() {
            let Some(k) = memchr::memchr2(b'\n', b'\r', &chunk[i..]) else {
                self.within(base + chunk.len() as u64)?;
                self.line.extend_from_slice(&chunk[i..]);
                break;
            };
            let line_end = i + k;
            let next = if chunk[line_end] == b'\r' {
                match chunk.get(line_end + 1) {
                    Some(b'\n') => line_end + 2,
                    Some(_) => line_end + 1,
                    None => {
                        // CR at the very end: an LF may follow in the next
                        // chunk. Hold the line until we know (a blank one
                        // adds nothing to the event).
                        if !(self.line.is_empty() && line_end == i) {
                            self.within(base + line_end as u64)?;
                        }
                        self.line.extend_from_slice(&chunk[i..line_end]);
                        self.after_cr = true;
                        break;
                    }
                }
            } else {
                line_end + 1
            };
            let content_end = base + line_end as u64;
            let end_abs = base + next as u64;
            if self.line.is_empty() {
                self.line_done(&chunk[i..line_end], content_end, end_abs, &mut on_event)?;
            } else {
                self.within(content_end)?;
                let mut line = std::mem::take(&mut self.line);
                line.extend_from_slice(&chunk[i..line_end]);
                let r = self.line_done(&line, content_end, end_abs, &mut on_event);
                line.clear();
                self.line = line;
                r?;
            }
            i = next;
        }
        self.offset += chunk.len() as u64;
        Ok(())
    }

    /// Ends the stream: completes a line held at a trailing CR.
    pub fn finish(&mut self, mut on_event: impl FnMut(Event<'_>)) -> Result<(), Overflow> {
        if self.after_cr {
            self.after_cr = false;
            let line = std::mem::take(&mut self.line);
            self.line_done(&line, self.offset - 1, self.offset, &mut on_event)?;
        }
        Ok(())
    }

    /// One complete line, whose content ends at stream offset
    /// `content_end` and whose line ending at `end_abs`.
    fn line_done(
        &mut self,
        line: &[u8],
        content_end: u64,
        end_abs: u64,
        on_event: &mut impl FnMut(Event<'_>),
    ) -> Result<(), Overflow> {
        if line.is_empty() {
            if self.has_data {
                on_event(Event {
                    data: &self.data,
                    start: self.event_start,
                    end: end_abs,
                });
                self.data.clear();
                self.has_data = false;
            }
            self.event_start = end_abs;
            return Ok(());
        }
        // Every line counts toward its event's size, comments and `id:`
        // lines too: an event of endless comments is as long as any other.
        self.within(content_end)?;
        let (field, value) = match memchr::memchr(b':', line) {
            Some(0) => return Ok(()), // a comment
            Some(c) => {
                let v = &line[c + 1..];
                (&line[..c], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        if field == b"data" {
            if self.has_data {
                self.data.push(b'\n');
            }
            self.data.extend_from_slice(value);
            self.has_data = true;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(chunks: &[&[u8]]) -> Vec<(String, u64, u64)> {
        let mut s = Scanner::new(1 << 20);
        let mut out = Vec::new();
        let mut push =
            |e: Event<'_>| out.push((String::from_utf8_lossy(e.data).into_owned(), e.start, e.end));
        for c in chunks {
            s.feed(c, &mut push).unwrap();
        }
        s.finish(&mut push).unwrap();
        out
    }

    #[test]
    fn events_with_any_line_ending() {
        let got = scan(&[b"data: a\n\ndata: b\r\n\r\ndata: c\r\rdata: d\ndata: e\n\n"]);
        let data: Vec<&str> = got.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(data, ["a", "b", "c", "d\ne"]);
        assert_eq!((got[0].1, got[0].2), (0, 9));
        assert_eq!(got[1].1, 9);
    }

    #[test]
    fn crlf_split_across_chunks_is_one_line_ending() {
        let got = scan(&[b"data: a\r", b"\n\r", b"\ndata: b\r\n\r\n"]);
        let data: Vec<&str> = got.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(data, ["a", "b"]);
    }

    #[test]
    fn every_split_point_gives_the_same_events() {
        let whole: &[u8] =
            "event: x\r\ndata: {\"é\":1}\r\n: comment\r\n\r\ndata: [DONE]\n\ndata:tail\r\r"
                .as_bytes();
        let expect = scan(&[whole]);
        assert_eq!(expect.len(), 3);
        for a in 0..whole.len() {
            for b in a..whole.len() {
                assert_eq!(
                    scan(&[&whole[..a], &whole[a..b], &whole[b..]]),
                    expect,
                    "{a},{b}"
                );
            }
        }
    }

    #[test]
    fn overflow_is_reported() {
        let mut s = Scanner::new(8);
        assert_eq!(s.feed(b"data: 0123456789", |_| {}), Err(Overflow));
    }

    /// The events' data and whether the scan overflowed, feeding `chunks`
    /// to a scanner capped at `max`.
    fn scan_capped(max: usize, chunks: &[&[u8]]) -> (Vec<String>, bool) {
        let mut s = Scanner::new(max);
        let mut out = Vec::new();
        let mut push = |e: Event<'_>| out.push(String::from_utf8_lossy(e.data).into_owned());
        for c in chunks {
            if s.feed(c, &mut push).is_err() {
                return (out, true);
            }
        }
        let over = s.finish(&mut push).is_err();
        (out, over)
    }

    #[test]
    fn an_event_of_comment_or_id_lines_is_bounded_as_a_whole() {
        for line in [": keep-alive", "id: 42", "event: ping", "retry: 1", ":"] {
            for ending in ["\n", "\r\n", "\r"] {
                // Ten such lines, then the data line that ends the event's
                // bytes; a blank line ends the event.
                let head = format!("{line}{ending}").repeat(10);
                let size = head.len() + "data: x".len();
                let stream = format!("data: a{ending}{ending}{head}data: x{ending}{ending}");
                let bytes = stream.as_bytes();
                for (max, over) in [(size, false), (size - 1, true)] {
                    let want = if over {
                        vec!["a".to_string()]
                    } else {
                        vec!["a".into(), "x".into()]
                    };
                    for a in 0..=bytes.len() {
                        let got = scan_capped(max, &[&bytes[..a], &bytes[a..]]);
                        assert_eq!(
                            got,
                            (want.clone(), over),
                            "{line:?}{ending:?} max {max} split {a}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn endless_comments_overflow_with_bounded_memory() {
        let mut s = Scanner::new(1024);
        let mut fed = 0usize;
        let result = loop {
            if let Err(e) = s.feed(b": still here\nid: 7\n", |_| panic!("no event")) {
                break e;
            }
            fed += 1;
            assert!(fed < 1000, "never overflowed");
        };
        assert_eq!(result, Overflow);
        assert!(s.line.capacity() <= 1024 && s.data.capacity() <= 1024);
    }

    use proptest::prelude::*;

    proptest! {
        /// However a stream is split, the scanner reports the same events,
        /// and overflows exactly when fed whole overflows.
        #[test]
        fn splits_never_change_events_or_overflow(
            lines in prop::collection::vec((0usize..8, 0usize..3), 0..40),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
            max in 0usize..80,
        ) {
            const LINES: [&str; 8] = ["data: x", "data:", ": c", "id: 1", "event: e", "", "dataxyz", "data: {\"é\":1}"];
            const ENDINGS: [&str; 3] = ["\n", "\r\n", "\r"];
            let stream: String = lines.iter().map(|&(l, e)| format!("{}{}", LINES[l], ENDINGS[e])).collect();
            let bytes = stream.as_bytes();
            let whole = scan_capped(max, &[bytes]);
            let mut points: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
            points.sort_unstable();
            let mut chunks = Vec::new();
            let mut prev = 0;
            for p in points {
                chunks.push(&bytes[prev..p]);
                prev = p;
            }
            chunks.push(&bytes[prev..]);
            prop_assert_eq!(scan_capped(max, &chunks), whole);
        }
    }
}
