//! AWS event-stream decoding (`application/vnd.amazon.eventstream`), the
//! binary framing of Bedrock's `ConverseStream`.
//!
//! A frame is a 12-byte prelude (total length, headers length, prelude
//! CRC32), headers, a payload and a CRC32 of everything before it. The
//! [`Decoder`] takes the response body in chunks split anywhere and yields
//! whole frames as [`Frame`]s; the CRCs and the header layout are checked by
//! `aws-smithy-eventstream`'s `read_message_from`. The decoder itself only
//! finds frame boundaries and bounds memory: a frame whose prelude announces
//! more than `max_frame` bytes is refused as soon as its prelude has arrived,
//! so at most one frame (plus one chunk) is ever buffered.

use aws_smithy_eventstream::frame::read_message_from;
use aws_smithy_types::event_stream::{HeaderValue, Message};
use bytes::{Buf, Bytes, BytesMut};
use std::fmt;

/// The default bound on one frame: 1 MiB. A Converse stream event carries
/// one text or tool-input delta, normally well under 1 KiB.
pub const DEFAULT_MAX_FRAME: usize = 1024 * 1024;

/// The event-stream format's own ceiling on a frame (16 MiB).
pub const SPEC_MAX_FRAME: usize = 16 * 1024 * 1024;

/// Prelude (12) plus message CRC (4): the smallest frame.
const MIN_FRAME: usize = 16;

/// One decoded frame.
#[derive(Clone, PartialEq, Eq)]
pub struct Frame {
    /// `:message-type`: `event`, `exception` or `error`.
    pub message_type: String,
    /// `:event-type` of an event, `:exception-type` of an exception, or
    /// `:error-code` of an error.
    pub kind: String,
    /// `:error-message` of an `error` frame (its payload is usually empty).
    pub error_message: Option<String>,
    /// The payload (JSON for Bedrock), shared with the received chunk.
    pub payload: Bytes,
}

impl Frame {
    /// An `event` frame.
    pub fn is_event(&self) -> bool {
        self.message_type == "event"
    }
}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Frame")
            .field("message_type", &self.message_type)
            .field("kind", &self.kind)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

/// Why the stream cannot be decoded further. Every variant ends the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// A prelude announced a frame over the bound (or under 16 bytes).
    FrameSize { announced: usize, max: usize },
    /// A CRC did not match, or the headers were malformed.
    Corrupt(String),
    /// The stream ended inside a frame.
    Truncated { buffered: usize },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::FrameSize { announced, max } => {
                write!(f, "event-stream frame of {announced} bytes (bound {max})")
            }
            Self::Corrupt(why) => write!(f, "corrupt event-stream frame: {why}"),
            Self::Truncated { buffered } => {
                write!(f, "event stream ended inside a frame ({buffered} bytes)")
            }
        }
    }
}

impl std::error::Error for DecodeError {}

/// Incremental decoder: byte chunks in, frames out.
#[derive(Debug)]
pub struct Decoder {
    buf: BytesMut,
    max_frame: usize,
    failed: bool,
}

impl Decoder {
    /// A decoder refusing frames over `max_frame` bytes (capped at
    /// [`SPEC_MAX_FRAME`]).
    pub fn new(max_frame: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            max_frame: max_frame.clamp(MIN_FRAME, SPEC_MAX_FRAME),
            failed: false,
        }
    }

    /// Bytes held for the frame not yet complete.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Feeds one chunk and calls `on_frame` for each frame it completes, in
    /// order. After an error the decoder stays failed and ignores input.
    pub fn feed(
        &mut self,
        chunk: &[u8],
        mut on_frame: impl FnMut(Frame),
    ) -> Result<(), DecodeError> {
        if self.failed {
            return Ok(());
        }
        self.buf.extend_from_slice(chunk);
        loop {
            match self.next_frame() {
                Ok(Some(frame)) => on_frame(frame),
                Ok(None) => return Ok(()),
                Err(e) => {
                    self.failed = true;
                    self.buf = BytesMut::new();
                    return Err(e);
                }
            }
        }
    }

    /// The body ended: an error if it ended inside a frame.
    pub fn finish(&mut self) -> Result<(), DecodeError> {
        if self.failed || self.buf.is_empty() {
            return Ok(());
        }
        self.failed = true;
        let buffered = self.buf.len();
        self.buf = BytesMut::new();
        Err(DecodeError::Truncated { buffered })
    }

    fn next_frame(&mut self) -> Result<Option<Frame>, DecodeError> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let announced = (&self.buf[..4]).get_u32() as usize;
        if !(MIN_FRAME..=self.max_frame).contains(&announced) {
            return Err(DecodeError::FrameSize {
                announced,
                max: self.max_frame,
            });
        }
        if self.buf.len() < announced {
            // Reserve once for the whole frame rather than growing per chunk.
            self.buf.reserve(announced - self.buf.len());
            return Ok(None);
        }
        let bytes = self.buf.split_to(announced).freeze();
        let msg = read_message_from(bytes).map_err(|e| DecodeError::Corrupt(e.to_string()))?;
        Ok(Some(frame_of(msg)))
    }
}

fn header(msg: &Message, name: &str) -> Option<String> {
    msg.headers()
        .iter()
        .find(|h| h.name().as_str() == name)
        .and_then(|h| match h.value() {
            HeaderValue::String(s) => Some(s.as_str().to_string()),
            _ => None,
        })
}

fn frame_of(msg: Message) -> Frame {
    let message_type = header(&msg, ":message-type").unwrap_or_else(|| "event".into());
    let kind = match message_type.as_str() {
        "exception" => header(&msg, ":exception-type"),
        "error" => header(&msg, ":error-code"),
        _ => header(&msg, ":event-type"),
    }
    .unwrap_or_default();
    let error_message = header(&msg, ":error-message");
    Frame {
        message_type,
        kind,
        error_message,
        payload: msg.payload().clone(),
    }
}

/// Encodes one frame (for tests and mocks of this crate).
#[cfg(test)]
pub(crate) fn encode(headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
    use aws_smithy_types::event_stream::Header;
    let headers = headers
        .iter()
        .map(|(k, v)| Header::new(k.to_string(), HeaderValue::String(v.to_string().into())))
        .collect();
    let msg = Message::new_from_parts(headers, Bytes::copy_from_slice(payload));
    let mut out = Vec::new();
    let _ = aws_smithy_eventstream::frame::write_message_to(&msg, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn event(kind: &str, payload: &str) -> Vec<u8> {
        encode(
            &[
                (":event-type", kind),
                (":content-type", "application/json"),
                (":message-type", "event"),
            ],
            payload.as_bytes(),
        )
    }

    fn stream() -> Vec<u8> {
        let mut s = Vec::new();
        s.extend(event("messageStart", r#"{"role":"assistant"}"#));
        for i in 0..20 {
            s.extend(event(
                "contentBlockDelta",
                &format!(r#"{{"contentBlockIndex":0,"delta":{{"text":"tök {i} ✓"}}}}"#),
            ));
        }
        s.extend(event("messageStop", r#"{"stopReason":"end_turn"}"#));
        s
    }

    fn decode_all(bytes: &[u8], cuts: &[usize]) -> Result<Vec<Frame>, DecodeError> {
        let mut d = Decoder::new(DEFAULT_MAX_FRAME);
        let mut out = Vec::new();
        let mut at = 0;
        for &c in cuts.iter().chain(std::iter::once(&bytes.len())) {
            let c = c.clamp(at, bytes.len());
            d.feed(&bytes[at..c], |f| out.push(f))?;
            at = c;
        }
        d.finish()?;
        Ok(out)
    }

    #[test]
    fn decodes_events_with_their_types() {
        let frames = decode_all(&stream(), &[]).unwrap();
        assert_eq!(frames.len(), 22);
        assert_eq!(frames[0].kind, "messageStart");
        assert!(frames[0].is_event());
        assert_eq!(&frames[21].payload[..], br#"{"stopReason":"end_turn"}"#);
    }

    #[test]
    fn every_single_split_decodes_the_same() {
        let s = stream();
        let whole = decode_all(&s, &[]).unwrap();
        for cut in 0..s.len() {
            assert_eq!(decode_all(&s, &[cut]).unwrap(), whole, "cut at {cut}");
        }
        // One byte at a time.
        let cuts: Vec<usize> = (1..s.len()).collect();
        assert_eq!(decode_all(&s, &cuts).unwrap(), whole);
    }

    #[test]
    fn exception_frames_carry_their_type() {
        let f = encode(
            &[
                (":exception-type", "throttlingException"),
                (":content-type", "application/json"),
                (":message-type", "exception"),
            ],
            br#"{"message":"Too many requests"}"#,
        );
        let frames = decode_all(&f, &[]).unwrap();
        assert_eq!(frames[0].message_type, "exception");
        assert_eq!(frames[0].kind, "throttlingException");
    }

    #[test]
    fn a_flipped_payload_byte_fails_the_message_crc() {
        let mut s = stream();
        let first = (&s[..4]).get_u32() as usize;
        s[first - 6] ^= 0x20;
        let e = decode_all(&s, &[]).unwrap_err();
        assert!(matches!(e, DecodeError::Corrupt(_)), "{e:?}");
    }

    #[test]
    fn a_flipped_prelude_byte_fails_the_prelude_crc() {
        let mut s = stream();
        s[7] ^= 1; // headers length
        assert!(matches!(
            decode_all(&s, &[]).unwrap_err(),
            DecodeError::Corrupt(_)
        ));
    }

    #[test]
    fn a_stream_cut_inside_a_frame_is_truncated() {
        let s = stream();
        let e = decode_all(&s[..s.len() - 3], &[]).unwrap_err();
        assert!(
            matches!(e, DecodeError::Truncated { buffered } if buffered > 0),
            "{e:?}"
        );
    }

    #[test]
    fn a_frame_over_the_bound_is_refused_from_its_prelude() {
        let mut d = Decoder::new(64);
        let big = event("contentBlockDelta", &"x".repeat(100));
        // Only the prelude has arrived: refused without waiting for the rest.
        let e = d.feed(&big[..12], |_| {}).unwrap_err();
        assert!(matches!(e, DecodeError::FrameSize { max: 64, .. }), "{e:?}");
        // The decoder stays failed.
        let mut n = 0;
        d.feed(&stream(), |_| n += 1).unwrap();
        assert_eq!(n, 0);
        // A length of 0xFFFFFFFF never allocates.
        let mut d = Decoder::new(DEFAULT_MAX_FRAME);
        assert!(d.feed(&[0xff, 0xff, 0xff, 0xff], |_| {}).is_err());
        let mut d = Decoder::new(DEFAULT_MAX_FRAME);
        assert!(d.feed(&[0, 0, 0, 3], |_| {}).is_err());
    }

    proptest! {
        #[test]
        fn random_splits_decode_to_the_same_frames(mut cuts in proptest::collection::vec(0usize..2000, 0..12)) {
            let s = stream();
            cuts.sort_unstable();
            let whole = decode_all(&s, &[]).unwrap();
            prop_assert_eq!(decode_all(&s, &cuts).unwrap(), whole);
        }

        #[test]
        fn corrupted_bytes_never_panic(pos in 0usize..2000, bit in 0u8..8, cut in 0usize..2000) {
            let mut s = stream();
            let p = pos % s.len();
            s[p] ^= 1 << bit;
            // CRC32 catches every single-bit error: always an error, never
            // a panic.
            prop_assert!(decode_all(&s, &[cut]).is_err());
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode_all(&bytes, &[bytes.len() / 2]);
        }
    }
}
