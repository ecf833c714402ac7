//! W3C Trace Context: the client's `traceparent` and `tracestate`, read
//! strictly (a malformed `traceparent` is ignored, as the recommendation
//! asks), and the `traceparent` sent upstream.

use opentelemetry::trace::{SpanId, TraceId, TraceState};
use std::str::FromStr;

/// Length of a version-00 `traceparent`: `vv-<32 hex>-<16 hex>-ff`.
const TRACEPARENT_LEN: usize = 55;
/// Longest `tracestate` kept (32 members of 512 bytes at most, as the
/// recommendation allows; more is dropped whole).
const MAX_TRACESTATE: usize = 32 * 512;

/// A well-formed `traceparent` from the client.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Incoming {
    pub(crate) trace_id: TraceId,
    /// The client's span: the parent of ours.
    pub(crate) span_id: SpanId,
    pub(crate) sampled: bool,
    /// Its `tracestate`, when that is well-formed too.
    pub(crate) state: TraceState,
}

/// The client's trace context, or `None` when it sent none, or more than
/// one `traceparent`, or a malformed one.
pub(crate) fn incoming(headers: &http::HeaderMap) -> Option<Incoming> {
    let mut parents = headers.get_all("traceparent").iter();
    let (Some(v), None) = (parents.next(), parents.next()) else {
        return None;
    };
    let (trace_id, span_id, sampled) = parse_traceparent(v.as_bytes())?;
    Some(Incoming {
        trace_id,
        span_id,
        sampled,
        state: tracestate(headers),
    })
}

/// Parses a `traceparent` value: version, trace id, parent id and flags,
/// lowercase hex, neither id all zeros, version `ff` refused; a later
/// version is read as version 00 when its first 55 bytes have that shape
/// (and what follows starts with `-`).
pub(crate) fn parse_traceparent(v: &[u8]) -> Option<(TraceId, SpanId, bool)> {
    let v = v.trim_ascii();
    if v.len() < TRACEPARENT_LEN || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let version = hex_byte(&v[0..2])?;
    let extra_ok = match version {
        0 => v.len() == TRACEPARENT_LEN,
        0xff => false,
        _ => v.len() == TRACEPARENT_LEN || v[TRACEPARENT_LEN] == b'-',
    };
    if !extra_ok {
        return None;
    }
    let mut trace = [0u8; 16];
    for (i, b) in trace.iter_mut().enumerate() {
        *b = hex_byte(&v[3 + 2 * i..5 + 2 * i])?;
    }
    let mut span = [0u8; 8];
    for (i, b) in span.iter_mut().enumerate() {
        *b = hex_byte(&v[36 + 2 * i..38 + 2 * i])?;
    }
    let flags = hex_byte(&v[53..55])?;
    let (trace_id, span_id) = (TraceId::from_bytes(trace), SpanId::from_bytes(span));
    if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
        return None;
    }
    Some((trace_id, span_id, flags & 1 == 1))
}

/// The `tracestate` list members (several headers joined), or an empty
/// state when it is malformed or too long.
fn tracestate(headers: &http::HeaderMap) -> TraceState {
    let mut joined = String::new();
    for v in headers.get_all("tracestate") {
        let Ok(s) = v.to_str() else {
            return TraceState::NONE;
        };
        if !joined.is_empty() {
            joined.push(',');
        }
        joined.push_str(s);
        if joined.len() > MAX_TRACESTATE {
            return TraceState::NONE;
        }
    }
    if joined.is_empty() {
        return TraceState::NONE;
    }
    TraceState::from_str(&joined).unwrap_or(TraceState::NONE)
}

/// Two lowercase hex digits.
fn hex_byte(two: &[u8]) -> Option<u8> {
    let d = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    Some(d(*two.first()?)? << 4 | d(*two.get(1)?)?)
}

/// A version-00 `traceparent` value.
pub(crate) fn traceparent(trace_id: TraceId, span_id: SpanId, sampled: bool) -> http::HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; TRACEPARENT_LEN];
    out[..3].copy_from_slice(b"00-");
    let mut at = 3;
    for b in trace_id.to_bytes() {
        out[at] = HEX[usize::from(b >> 4)];
        out[at + 1] = HEX[usize::from(b & 15)];
        at += 2;
    }
    out[at] = b'-';
    at += 1;
    for b in span_id.to_bytes() {
        out[at] = HEX[usize::from(b >> 4)];
        out[at + 1] = HEX[usize::from(b & 15)];
        at += 2;
    }
    out[at..].copy_from_slice(if sampled { b"-01" } else { b"-00" });
    http::HeaderValue::from_bytes(&out).unwrap_or_else(|_| http::HeaderValue::from_static(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    #[test]
    fn a_valid_traceparent_is_read_and_written_back_the_same() {
        let (t, s, sampled) = parse_traceparent(GOOD.as_bytes()).unwrap();
        assert!(sampled);
        assert_eq!(traceparent(t, s, true).to_str().unwrap(), GOOD);
        let (_, _, unsampled) = parse_traceparent(GOOD.replace("-01", "-00").as_bytes()).unwrap();
        assert!(!unsampled);
        // A later version with more fields is read as version 00.
        let later = format!("{}-what-comes-next", GOOD.replacen("00", "cc", 1));
        assert!(parse_traceparent(later.as_bytes()).is_some());
    }

    #[test]
    fn malformed_traceparents_are_ignored() {
        for bad in [
            "",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
            "cc-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01x",
            "00_0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c8031zz-b7ad6b7169203331-01",
            "00-+af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ] {
            assert!(parse_traceparent(bad.as_bytes()).is_none(), "{bad}");
        }
    }

    #[test]
    fn two_traceparents_are_none_and_tracestates_join() {
        let mut h = http::HeaderMap::new();
        h.append("traceparent", GOOD.parse().unwrap());
        h.append("tracestate", "a=1".parse().unwrap());
        h.append("tracestate", "b=2".parse().unwrap());
        let got = incoming(&h).unwrap();
        assert_eq!(got.state.header(), "a=1,b=2");
        h.insert("tracestate", "not a list".parse().unwrap());
        assert_eq!(
            incoming(&h).unwrap().state.header(),
            "",
            "a bad tracestate is dropped"
        );
        h.append("traceparent", GOOD.parse().unwrap());
        assert!(incoming(&h).is_none());
    }
}
