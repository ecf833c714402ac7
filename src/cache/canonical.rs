//! The canonical form of a request body and the hash of it: object keys
//! sorted, no whitespace, strings and numbers as `serde_json` writes them.
//! Two bodies that differ only in key order or whitespace hash the same.

use serde_json::Value;
use sha2::{Digest, Sha256};
use std::io::Write;

/// Feeds bytes written to it into the hash.
struct Hashing(Sha256);

impl Write for Hashing {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Hashing {
    /// A length-prefixed part: parts never run into each other.
    fn part(&mut self, p: &[u8]) {
        self.0.update((p.len() as u64).to_le_bytes());
        self.0.update(p);
    }
}

/// The hash of length-prefixed `parts`.
pub(crate) fn digest(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Hashing(Sha256::new());
    for p in parts {
        h.part(p);
    }
    h.0.finalize().into()
}

/// The hash of `parts` and the canonical form of the JSON `body`. `None`:
/// the body is not JSON.
pub(crate) fn request_key(parts: &[&[u8]], body: &[u8]) -> Option<[u8; 32]> {
    let doc: Value = serde_json::from_slice(body).ok()?;
    let mut h = Hashing(Sha256::new());
    for p in parts {
        h.part(p);
    }
    write_canonical(&mut h, &doc).ok()?;
    Some(h.0.finalize().into())
}

/// Writes `v` in canonical form.
pub(crate) fn write_canonical<W: Write>(w: &mut W, v: &Value) -> std::io::Result<()> {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_unstable();
            w.write_all(b"{")?;
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    w.write_all(b",")?;
                }
                serde_json::to_writer(&mut *w, k)?;
                w.write_all(b":")?;
                if let Some(child) = map.get(k) {
                    write_canonical(w, child)?;
                }
            }
            w.write_all(b"}")
        }
        Value::Array(items) => {
            w.write_all(b"[")?;
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    w.write_all(b",")?;
                }
                write_canonical(w, item)?;
            }
            w.write_all(b"]")
        }
        other => serde_json::to_writer(&mut *w, other).map_err(std::io::Error::other),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn canon(s: &str) -> String {
        let v: Value = serde_json::from_str(s).unwrap();
        let mut out = Vec::new();
        write_canonical(&mut out, &v).unwrap();
        String::from_utf8(out).unwrap()
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
        assert_eq!(canon(r#"{"s":"a\"\n\u00e9"}"#), r#"{"s":"a\"\né"}"#);
    }
}
