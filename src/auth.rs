//! Gateway key lookup. Keys are stored only as SHA-256 digests; a presented key
//! is hashed and the digest compared in constant time.

use sha2::{Digest, Sha256};
use std::collections::HashMap;
use subtle::ConstantTimeEq;

/// Longest `Authorization` value we will hash. Longer ones are rejected as-is.
pub const MAX_KEY_LEN: usize = 512;

/// Why a configured key (gateway or admin) could never match what a client
/// presents, or `None` when it can. [`presented_key`] yields 1 to
/// [`MAX_KEY_LEN`] ASCII bytes with the spaces around them trimmed; config
/// keys are held to visible ASCII (`!` to `~`): no spaces, tabs, control or
/// non-ASCII characters, which clients and SDKs cannot send reliably.
pub fn unpresentable(key: &str) -> Option<&'static str> {
    if key.len() > MAX_KEY_LEN {
        return Some("is longer than 512 characters, which clients cannot present");
    }
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Some(
            "may contain only visible ASCII characters (no spaces, tabs, line breaks or non-ASCII): no client could present it",
        );
    }
    None
}

/// The SHA-256 digest keys are stored and looked up by.
pub fn digest(secret: &[u8]) -> [u8; 32] {
    Sha256::digest(secret).into()
}

/// A `key_sha256` value (64 hex digits) as a digest.
pub fn parse_hex_digest(text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut out).ok()?;
    Some(out)
}

/// Digest → key slot. The presented key is hashed first, so the map lookup
/// works on a SHA-256 digest: its timing says nothing about any stored key
/// (finding a key from it would need a preimage). The match is then
/// confirmed with a constant-time compare. A map, not a scan: a constant-time
/// scan costs 30 µs per request at 1,000 keys.
#[derive(Debug, Default)]
pub struct KeyIndex {
    slots: HashMap<[u8; 32], usize>,
}

impl KeyIndex {
    /// Builds the index; on a repeated digest the first slot wins (config
    /// validation refuses duplicate keys before this).
    pub fn new(digests: Vec<[u8; 32]>) -> Self {
        let mut slots = HashMap::with_capacity(digests.len());
        for (i, d) in digests.into_iter().enumerate() {
            slots.entry(d).or_insert(i);
        }
        Self { slots }
    }

    /// The slot of the key whose digest matches `presented`'s, if any.
    pub fn lookup(&self, presented: &[u8]) -> Option<usize> {
        self.lookup_digest(&digest(presented))
    }

    /// The slot of the key with digest `d`, if any.
    pub fn lookup_digest(&self, d: &[u8; 32]) -> Option<usize> {
        let (known, &slot) = self.slots.get_key_value(d)?;
        bool::from(known.ct_eq(d)).then_some(slot)
    }
}

/// Pulls the key out of the request's auth headers. `None` for anything but
/// exactly one well-formed `Authorization: Bearer <key>` (or, with none of
/// those, one `x-api-key`).
pub fn presented_key(headers: &http::HeaderMap) -> Option<&[u8]> {
    let mut auth = headers.get_all(http::header::AUTHORIZATION).iter();
    match (auth.next(), auth.next()) {
        (Some(v), None) => {
            let raw = v.as_bytes();
            if raw.len() > MAX_KEY_LEN + 7 || !raw.is_ascii() {
                return None;
            }
            let key = strip_bearer(raw)?;
            (!key.is_empty()).then_some(key)
        }
        (Some(_), Some(_)) => None,
        (None, _) => {
            let mut alt = headers.get_all("x-api-key").iter();
            match (alt.next(), alt.next()) {
                (Some(v), None) if v.len() <= MAX_KEY_LEN && v.as_bytes().is_ascii() => {
                    (!v.is_empty()).then_some(v.as_bytes())
                }
                _ => None,
            }
        }
    }
}

fn strip_bearer(raw: &[u8]) -> Option<&[u8]> {
    if raw.len() < 7 || !raw[..7].eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let key = &raw[7..];
    let start = key.iter().position(|b| *b != b' ')?;
    let end = key.iter().rposition(|b| *b != b' ')? + 1;
    Some(&key[start..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderValue};

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn configured_keys_must_be_presentable() {
        assert_eq!(unpresentable("tg-key_01~!#"), None);
        assert_eq!(unpresentable(&"k".repeat(MAX_KEY_LEN)), None);
        for bad in [
            "tg key 01",
            " tg-key-01",
            "tg-key-01\t",
            "tg-clé-01",
            "tg-key\n01",
            &"k".repeat(MAX_KEY_LEN + 1),
        ] {
            assert!(unpresentable(bad).is_some(), "{bad:?}");
        }
        // What is refused really can never match: a padded key is trimmed.
        let h = headers(&[("authorization", "Bearer  tg-key-01 ")]);
        assert_eq!(presented_key(&h), Some(&b"tg-key-01"[..]));
    }

    #[test]
    fn finds_known_key_only() {
        let idx = KeyIndex::new(vec![digest(b"alpha-key"), digest(b"beta-key")]);
        assert_eq!(idx.lookup(b"beta-key"), Some(1));
        assert_eq!(idx.lookup(b"gamma-key"), None);
    }

    #[test]
    fn extracts_bearer_and_rejects_odd_headers() {
        let h = headers(&[("authorization", "Bearer sk-1")]);
        assert_eq!(presented_key(&h), Some(&b"sk-1"[..]));
        let h = headers(&[("authorization", "bearer  sk-1 ")]);
        assert_eq!(presented_key(&h), Some(&b"sk-1"[..]));
        assert_eq!(presented_key(&headers(&[])), None);
        let dup = headers(&[("authorization", "Bearer a"), ("authorization", "Bearer a")]);
        assert_eq!(presented_key(&dup), None);
        assert_eq!(
            presented_key(&headers(&[("authorization", "Basic abc")])),
            None
        );
        let long = format!("Bearer {}", "k".repeat(10_000));
        assert_eq!(presented_key(&headers(&[("authorization", &long)])), None);
        let h = headers(&[("x-api-key", "sk-2")]);
        assert_eq!(presented_key(&h), Some(&b"sk-2"[..]));
    }
}
