//! `auth::presented_key` on any set of `Authorization` and `x-api-key`
//! headers, against the rule it documents: a key only from exactly one
//! `Authorization: Bearer <key>` (ASCII, bounded), or with none of those,
//! exactly one `x-api-key`; never empty, never with the spaces around it.
//! The key index then finds what it was built from.
#![no_main]

mod common;

use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use tollgate::auth::{digest, presented_key, KeyIndex, MAX_KEY_LEN};

/// The rule, written out plainly.
fn expected(auth: &[&[u8]], alt: &[&[u8]]) -> Option<Vec<u8>> {
    match auth {
        [v] => {
            if v.len() > MAX_KEY_LEN + 7 || !v.is_ascii() || v.len() < 7 {
                return None;
            }
            if !v[..7].eq_ignore_ascii_case(b"bearer ") {
                return None;
            }
            let s = std::str::from_utf8(&v[7..]).ok()?;
            let k = s.trim_matches(' ');
            (!k.is_empty()).then(|| k.as_bytes().to_vec())
        }
        [] => match alt {
            [v] if v.len() <= MAX_KEY_LEN && v.is_ascii() && !v.is_empty() => Some(v.to_vec()),
            _ => None,
        },
        _ => None,
    }
}

fuzz_target!(|data: &[u8]| {
    let mut headers = HeaderMap::new();
    let mut auth: Vec<Vec<u8>> = Vec::new();
    let mut alt: Vec<Vec<u8>> = Vec::new();
    let mut rest = data;
    while rest.len() >= 2 {
        let (sel, len) = (rest[0], usize::from(rest[1]) * 4);
        rest = &rest[2..];
        let n = len.min(rest.len());
        let (value, tail) = rest.split_at(n);
        rest = tail;
        let Ok(v) = HeaderValue::from_bytes(value) else {
            continue;
        };
        let name = match sel % 3 {
            0 => {
                auth.push(v.as_bytes().to_vec());
                http::header::AUTHORIZATION
            }
            1 => {
                alt.push(v.as_bytes().to_vec());
                HeaderName::from_static("x-api-key")
            }
            _ => HeaderName::from_static("x-other"),
        };
        headers.append(name, v);
    }
    let auth: Vec<&[u8]> = auth.iter().map(Vec::as_slice).collect();
    let alt: Vec<&[u8]> = alt.iter().map(Vec::as_slice).collect();
    let got = presented_key(&headers);
    assert_eq!(got.map(<[u8]>::to_vec), expected(&auth, &alt));
    if let Some(k) = got {
        let idx = KeyIndex::new(vec![digest(b"other-key"), digest(k)]);
        assert_eq!(idx.lookup(k), Some(1));
    }
});
