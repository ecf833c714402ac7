//! The canonical form of a request body and the hash of it: object keys
//! sorted, no whitespace, strings and numbers as `serde_json` writes them.
//! Two bodies that differ only in key order or whitespace hash the same.
//! Numbers are compared as the value serde_json reads (`1.0` and `1` differ,
//! as do `1` and `1e0`; two spellings of one `f64` are the same).
//!
//! The form is written while serde_json parses the body (a
//! `DeserializeSeed` that writes each value as it is read), into a buffer
//! kept per thread: no `serde_json::Value` is built, and only each
//! object's member list is allocated. It is hashed once, with BLAKE3
//! (software SHA-256 cost about 3,500 instructions per 64 bytes where the
//! CPU's SHA extensions are not used, e.g. under callgrind; BLAKE3's SIMD
//! code is several times cheaper on every x86-64 and ARM CPU). Figures:
//! docs/benchmarks.md, "Response cache".

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt;

/// A scratch buffer larger than this is not kept for the next request.
const KEEP_SCRATCH: usize = 64 * 1024;

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

fn hasher(parts: &[&[u8]]) -> blake3::Hasher {
    let mut h = blake3::Hasher::new();
    for p in parts {
        // Length-prefixed: parts never run into each other.
        h.update(&(p.len() as u64).to_le_bytes());
        h.update(p);
    }
    h
}

/// The hash of length-prefixed `parts`.
pub(crate) fn digest(parts: &[&[u8]]) -> [u8; 32] {
    hasher(parts).finalize().into()
}

/// The hash of `parts` and the canonical form of the JSON `body`. `None`:
/// the body is not JSON that serde_json reads (never cached).
pub(crate) fn request_key(parts: &[&[u8]], body: &[u8]) -> Option<[u8; 32]> {
    let mut h = hasher(parts);
    let written = SCRATCH.with(|s| match s.try_borrow_mut() {
        Ok(mut buf) => {
            let ok = canonical_into(body, &mut buf).map(|()| {
                h.update(&buf);
            });
            buf.clear();
            if buf.capacity() > KEEP_SCRATCH {
                buf.shrink_to(KEEP_SCRATCH);
            }
            ok
        }
        // Not reentrant in practice; a buffer of its own if it ever is.
        Err(_) => {
            let mut buf = Vec::new();
            canonical_into(body, &mut buf).map(|()| {
                h.update(&buf);
            })
        }
    });
    written.map(|()| h.finalize().into())
}

/// Writes the canonical form of the JSON `body` into `out` (cleared first).
pub(crate) fn canonical_into(body: &[u8], out: &mut Vec<u8>) -> Option<()> {
    out.clear();
    // Read as text: serde_json then checks the UTF-8 once, here, instead of
    // string by string.
    let text = std::str::from_utf8(body).ok()?;
    let mut de = serde_json::Deserializer::from_str(text);
    Canon { out: &mut *out }.deserialize(&mut de).ok()?;
    de.end().ok()
}

/// Writes the value it is given, canonically, at the end of `out`.
struct Canon<'b> {
    out: &'b mut Vec<u8>,
}

impl Canon<'_> {
    fn json<T: serde::Serialize + ?Sized, E: de::Error>(self, v: &T) -> Result<(), E> {
        serde_json::to_writer(&mut *self.out, v).map_err(E::custom)
    }
}

impl<'de> DeserializeSeed<'de> for Canon<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Canon<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.out.extend_from_slice(b"null");
        Ok(())
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.out
            .extend_from_slice(if v { b"true" as &[u8] } else { b"false" });
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.json(&v)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.json(&v)
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.json(&v)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.json(v)
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<(), E> {
        quoted(self.out, v);
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.out.push(b'[');
        let mut first = true;
        loop {
            let at = self.out.len();
            if !first {
                self.out.push(b',');
            }
            if seq
                .next_element_seed(Canon {
                    out: &mut *self.out,
                })?
                .is_none()
            {
                self.out.truncate(at);
                break;
            }
            first = false;
        }
        self.out.push(b']');
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        // Each member's value is written at the end of `out` as it is
        // read; then the object is rewritten with its members in key
        // order (stable: duplicate keys keep their order).
        let start = self.out.len();
        let mut members: Vec<(Cow<'de, str>, usize, usize)> = Vec::new();
        while let Some(k) = map.next_key_seed(Key)? {
            let from = self.out.len();
            map.next_value_seed(Canon {
                out: &mut *self.out,
            })?;
            members.push((k, from, self.out.len()));
        }
        members.sort_by(|a, b| a.0.cmp(&b.0));
        let values = self.out.split_off(start);
        self.out.push(b'{');
        for (i, (k, from, to)) in members.iter().enumerate() {
            if i > 0 {
                self.out.push(b',');
            }
            match k {
                Cow::Borrowed(k) => quoted(self.out, k),
                Cow::Owned(k) => {
                    serde_json::to_writer(&mut *self.out, k.as_str()).map_err(de::Error::custom)?
                }
            }
            self.out.push(b':');
            let v = values
                .get(from - start..to - start)
                .ok_or_else(|| de::Error::custom("member out of range"))?;
            self.out.extend_from_slice(v);
        }
        self.out.push(b'}');
        Ok(())
    }
}

/// Writes a string serde_json lent from the body as it stands between its
/// quotes. serde_json lends only a string written without escapes, and
/// refuses `"` and control characters unescaped, so these bytes are what
/// its serializer would write (the property test compares the two).
fn quoted(out: &mut Vec<u8>, s: &str) {
    out.reserve(s.len() + 2);
    out.push(b'"');
    out.extend_from_slice(s.as_bytes());
    out.push(b'"');
}

/// An object's key, borrowed from the body when it has no escapes.
struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Cow<'de, str>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Cow<'de, str>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use proptest::prelude::*;
    use serde_json::Value;

    fn canon(s: &str) -> String {
        let mut out = Vec::new();
        canonical_into(s.as_bytes(), &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    /// The reference: the canonical form written from a `serde_json::Value`
    /// (whose maps are sorted).
    fn reference(v: &Value) -> String {
        match v {
            Value::Object(map) => {
                let members: Vec<String> = map
                    .iter()
                    .map(|(k, v)| format!("{}:{}", serde_json::to_string(k).unwrap(), reference(v)))
                    .collect();
                format!("{{{}}}", members.join(","))
            }
            Value::Array(items) => {
                let items: Vec<String> = items.iter().map(reference).collect();
                format!("[{}]", items.join(","))
            }
            other => serde_json::to_string(other).unwrap(),
        }
    }

    #[test]
    fn key_order_and_whitespace_do_not_matter() {
        let a = r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0}"#;
        let b = "{ \"temperature\" : 0,\n \"messages\": [ {\"content\":\"hi\", \"role\":\"user\"} ],\"model\":\"m\" }";
        assert_eq!(canon(a), canon(b));
        assert_eq!(
            canon(a),
            r#"{"messages":[{"content":"hi","role":"user"}],"model":"m","temperature":0}"#
        );
        assert_eq!(
            request_key(&[b"x"], a.as_bytes()),
            request_key(&[b"x"], b.as_bytes())
        );
    }

    #[test]
    fn content_array_order_and_parts_matter() {
        let a = r#"{"stop":["a","b"]}"#;
        let b = r#"{"stop":["b","a"]}"#;
        assert_ne!(
            request_key(&[], a.as_bytes()),
            request_key(&[], b.as_bytes())
        );
        let (ab, a_b) = (digest(&[b"ab", b""]), digest(&[b"a", b"b"]));
        assert_ne!(ab, a_b, "parts are length-prefixed");
        assert_ne!(
            request_key(&[b"k1"], a.as_bytes()),
            request_key(&[b"k2"], a.as_bytes())
        );
        assert_eq!(request_key(&[], b"not json"), None);
        assert_eq!(request_key(&[], b"{} trailing"), None);
        assert_eq!(request_key(&[], br#"{"n":1e400}"#), None);
        assert_eq!(canon(r#"{"s":"a\"\n\u00e9"}"#), r#"{"s":"a\"\né"}"#);
        // An escaped key sorts by what it says.
        assert_eq!(canon(r#"{"b":1,"\u0061":2}"#), r#"{"a":2,"b":1}"#);
        assert_eq!(canon("[]"), "[]");
        assert_eq!(
            canon(r#"{"e":{},"l":[[],[1,null,true,false,-2,0.5]]}"#),
            r#"{"e":{},"l":[[],[1,null,true,false,-2,0.5]]}"#
        );
    }

    #[test]
    fn duplicate_keys_keep_their_order() {
        // Parsers that keep the first and those that keep the last both
        // read the two bodies alike when their canonical forms are equal.
        assert_eq!(canon(r#"{"a":1,"b":0,"a":2}"#), r#"{"a":1,"a":2,"b":0}"#);
        assert_ne!(canon(r#"{"a":1,"a":2}"#), canon(r#"{"a":2,"a":1}"#));
    }

    fn json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            ".{0,8}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(".{0,6}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// The same document with its members in reverse order and spaces
    /// between every token.
    fn shuffled(v: &Value) -> String {
        match v {
            Value::Object(map) => {
                let members: Vec<String> = map
                    .iter()
                    .rev()
                    .map(|(k, v)| {
                        format!(" {} :\n{} ", serde_json::to_string(k).unwrap(), shuffled(v))
                    })
                    .collect();
                format!("{{ {} }}", members.join(" , "))
            }
            Value::Array(items) => {
                let items: Vec<String> = items.iter().map(shuffled).collect();
                format!("[ {} ]", items.join(" ,\t"))
            }
            other => serde_json::to_string(other).unwrap(),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// The streamed canonical form is the one written from a parsed
        /// `Value`, and key order and whitespace do not change the key.
        #[test]
        fn canonical_form_matches_the_value_reference(v in json()) {
            let text = serde_json::to_string(&v).unwrap();
            // Against the value read back (serde_json's float reading is
            // not correctly rounded: a number's last digit may differ from
            // the generated one, alike in both forms).
            let read: Value = serde_json::from_str(&text).unwrap();
            prop_assert_eq!(canon(&text), reference(&read));
            let body = format!("{{\"x\":{text}}}");
            let other = format!("{{ \"x\" : {} }}", shuffled(&v));
            prop_assert_eq!(
                request_key(&[b"p"], body.as_bytes()),
                request_key(&[b"p"], other.as_bytes())
            );
        }
    }
}
