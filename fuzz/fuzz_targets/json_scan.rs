//! `json_scan::scan` against serde_json: whatever serde_json reads as an
//! object (top-level members in order, values as raw text), the scanner
//! accepts with the same keys and value spans; whatever the scanner
//! accepts, serde_json accepts too unless it is deeper than serde_json's
//! recursion limit. Spans are in order and inside the body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use std::fmt;
use tollgate::json_scan::{scan, ScanError};

/// The top-level members of an object, in document order.
struct Pairs<'a>(Vec<(String, &'a RawValue)>);

impl<'de: 'a, 'a> serde::Deserialize<'de> for Pairs<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Pairs<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Pairs<'a>, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = m.next_entry::<String, &'a RawValue>()? {
                    out.push((k, v));
                }
                Ok(Pairs(out))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// Bracket depth outside strings.
fn depth(b: &[u8]) -> usize {
    let (mut d, mut max, mut in_str, mut esc) = (0usize, 0usize, false, false);
    for &c in b {
        match (in_str, esc, c) {
            (true, true, _) => esc = false,
            (true, false, b'\\') => esc = true,
            (true, false, b'"') => in_str = false,
            (false, _, b'"') => in_str = true,
            (false, _, b'[' | b'{') => {
                d += 1;
                max = max.max(d);
            }
            (false, _, b']' | b'}') => d = d.saturating_sub(1),
            _ => {}
        }
    }
    max
}

fuzz_target!(|data: &[u8]| {
    let mut members = Vec::new();
    let got = scan(data, 128, |k, r| members.push((k.into_owned(), r)));
    if got.is_ok() {
        let mut prev = 0;
        for (_, r) in &members {
            assert!(prev <= r.start && r.start < r.end && r.end <= data.len());
            prev = r.end;
        }
    }
    match serde_json::from_slice::<Pairs>(data) {
        Ok(Pairs(pairs)) => {
            if got == Err(ScanError::TooDeep) {
                assert!(depth(data) > 128, "TooDeep at depth {}", depth(data));
                return;
            }
            assert_eq!(got, Ok(()), "serde_json reads it: {:?}", String::from_utf8_lossy(data));
            assert_eq!(members.len(), pairs.len());
            for ((k, r), (sk, sv)) in members.iter().zip(&pairs) {
                assert_eq!(k, sk);
                assert_eq!(&data[r.clone()], sv.get().as_bytes());
            }
        }
        Err(e) => {
            if got.is_ok() {
                // serde_json nests 127 levels, the scanner 128.
                assert!(
                    e.to_string().contains("recursion limit") && depth(data) == 128,
                    "scanner accepts what serde_json refuses ({e}): {:?}",
                    String::from_utf8_lossy(data)
                );
            }
        }
    }
});
