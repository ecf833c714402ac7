//! One pass over a JSON request body: validates it (RFC 8259 syntax, UTF-8,
//! a nesting limit) and reports each top-level member's key and value span.
//! The gateway needs a few top-level fields of bodies that can be megabytes
//! of message text, so the pass builds nothing and skips string contents
//! 16 bytes at a time.
//!
//! Hand-written on purpose: serde_json would build (or at least walk into
//! a visitor for) every value, and the body is parsed once per request on
//! the hot path; the cost is measured (`benches/hot_path.rs`,
//! `benches/callgrind.sh`) and the scanner is fuzzed and property-tested
//! against serde_json (`fuzz/fuzz_targets/json_scan.rs`, the tests below).

use std::borrow::Cow;
use std::ops::Range;

/// Why a body is not an acceptable JSON object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanError {
    /// The body is not UTF-8.
    NotUtf8 { at: usize },
    /// The top-level value is not an object.
    NotObject,
    /// Arrays and objects nest deeper than the limit.
    TooDeep,
    /// Not JSON: `what` went wrong at byte `at`.
    Syntax { at: usize, what: &'static str },
}

/// Validates `body` as one JSON object nested at most `max_depth` deep (the
/// object itself is depth 1) and calls `on_member` with each top-level key
/// (unescaped) and the byte range of its value, in document order.
pub fn scan<'a>(
    body: &'a [u8],
    max_depth: usize,
    mut on_member: impl FnMut(Cow<'a, str>, Range<usize>),
) -> Result<(), ScanError> {
    // ASCII (most bodies) is checked a word at a time; anything else is
    // validated whole. The scanner relies on it (`Scanner::key`).
    if !body.is_ascii() {
        if let Err(e) = std::str::from_utf8(body) {
            return Err(ScanError::NotUtf8 {
                at: e.valid_up_to(),
            });
        }
    }
    let mut s = Scanner {
        b: body,
        i: 0,
        max_depth,
    };
    s.document(&mut on_member)
}

type OnMember<'m, 'a> = &'m mut dyn FnMut(Cow<'a, str>, Range<usize>);

struct Scanner<'a> {
    /// The body: valid UTF-8 (checked by `scan`, the only constructor).
    b: &'a [u8],
    i: usize,
    max_depth: usize,
}

impl<'a> Scanner<'a> {
    fn document(&mut self, on_member: OnMember<'_, 'a>) -> Result<(), ScanError> {
        self.ws();
        if self.peek() != Some(b'{') {
            return Err(ScanError::NotObject);
        }
        self.object(1, Some(on_member))?;
        self.ws();
        if self.i != self.b.len() {
            return Err(self.syntax("trailing characters after the object"));
        }
        Ok(())
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn syntax(&self, what: &'static str) -> ScanError {
        ScanError::Syntax { at: self.i, what }
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    fn expect(&mut self, c: u8, what: &'static str) -> Result<(), ScanError> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(self.syntax(what))
        }
    }

    fn value(&mut self, depth: usize) -> Result<(), ScanError> {
        match self.peek() {
            Some(b'{') => self.object(depth + 1, None),
            Some(b'[') => self.array(depth + 1),
            Some(b'"') => self.string().map(drop),
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            Some(b'-' | b'0'..=b'9') => self.number(),
            None => Err(self.syntax("unexpected end of the body")),
            Some(_) => Err(self.syntax("expected a value")),
        }
    }

    /// At `{`. Reports members to `top` when given (the top level only).
    fn object(&mut self, depth: usize, mut top: Option<OnMember<'_, 'a>>) -> Result<(), ScanError> {
        if depth > self.max_depth {
            return Err(ScanError::TooDeep);
        }
        self.i += 1;
        self.ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Ok(());
        }
        loop {
            if self.peek() != Some(b'"') {
                return Err(self.syntax("expected a member name in quotes"));
            }
            let (key, escaped) = self.string()?;
            self.ws();
            self.expect(b':', "expected `:` after a member name")?;
            self.ws();
            let start = self.i;
            self.value(depth)?;
            if let Some(on_member) = top.as_mut() {
                on_member(self.key(key, escaped)?, start..self.i);
            }
            self.ws();
            match self.peek() {
                Some(b',') => {
                    self.i += 1;
                    self.ws();
                }
                Some(b'}') => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return Err(self.syntax("expected `,` or `}` in an object")),
            }
        }
    }

    /// A member name; `range` spans its quotes.
    fn key(&self, range: Range<usize>, escaped: bool) -> Result<Cow<'a, str>, ScanError> {
        let raw = &self.b[range.clone()];
        if escaped {
            serde_json::from_slice::<String>(raw)
                .map(Cow::Owned)
                .map_err(|_| ScanError::Syntax {
                    at: range.start,
                    what: "a member name with an invalid escape",
                })
        } else {
            let inner = &raw[1..raw.len() - 1];
            // SAFETY: `self.b` is UTF-8 (`scan` checks it before any
            // `Scanner` exists), and `inner` starts and ends next to an
            // ASCII quote, so on character boundaries.
            Ok(Cow::Borrowed(unsafe {
                std::str::from_utf8_unchecked(inner)
            }))
        }
    }

    fn array(&mut self, depth: usize) -> Result<(), ScanError> {
        if depth > self.max_depth {
            return Err(ScanError::TooDeep);
        }
        self.i += 1;
        self.ws();
        if self.peek() == Some(b']') {
            self.i += 1;
            return Ok(());
        }
        loop {
            self.value(depth)?;
            self.ws();
            match self.peek() {
                Some(b',') => {
                    self.i += 1;
                    self.ws();
                }
                Some(b']') => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return Err(self.syntax("expected `,` or `]` in an array")),
            }
        }
    }

    /// At `"`. Returns the range including both quotes, and whether the
    /// string holds escapes.
    fn string(&mut self) -> Result<(Range<usize>, bool), ScanError> {
        let start = self.i;
        let mut escaped = false;
        self.i += 1;
        loop {
            self.i = find_special(self.b, self.i);
            match self.peek() {
                Some(b'"') => {
                    self.i += 1;
                    return Ok((start..self.i, escaped));
                }
                Some(b'\\') => {
                    escaped = true;
                    self.escape()?;
                }
                Some(_) => return Err(self.syntax("a control character in a string")),
                None => return Err(self.syntax("an unterminated string")),
            }
        }
    }

    /// At `\`.
    fn escape(&mut self) -> Result<(), ScanError> {
        match self.b.get(self.i + 1) {
            Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {
                self.i += 2;
                Ok(())
            }
            Some(b'u') => {
                let hex = self.b.get(self.i + 2..self.i + 6);
                if hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                    self.i += 6;
                    Ok(())
                } else {
                    Err(self.syntax("a `\\u` escape without four hex digits"))
                }
            }
            _ => Err(self.syntax("an invalid escape in a string")),
        }
    }

    fn literal(&mut self, word: &'static [u8]) -> Result<(), ScanError> {
        if self.b[self.i..].starts_with(word) {
            self.i += word.len();
            Ok(())
        } else {
            Err(self.syntax("expected a value"))
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.i;
        while let Some(b'0'..=b'9') = self.peek() {
            self.i += 1;
        }
        self.i - start
    }

    fn number(&mut self) -> Result<(), ScanError> {
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek() {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(self.syntax("a malformed number")),
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            if self.digits() == 0 {
                return Err(self.syntax("a malformed number"));
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            if self.digits() == 0 {
                return Err(self.syntax("a malformed number"));
            }
        }
        Ok(())
    }
}

/// The index of the first `"`, `\` or control character at or after `i`,
/// or `b.len()`.
fn find_special(b: &[u8], mut i: usize) -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::*;
        // SAFETY: SSE2 is part of the x86_64 baseline; every load reads 16
        // bytes inside `b` (`i + 16 <= b.len()`).
        unsafe {
            let quote = _mm_set1_epi8(b'"' as i8);
            let backslash = _mm_set1_epi8(b'\\' as i8);
            let ctl = _mm_set1_epi8(0x1f);
            while i + 16 <= b.len() {
                let x = _mm_loadu_si128(b.as_ptr().add(i).cast());
                // x <= 0x1f (unsigned) exactly when min(x, 0x1f) == x.
                let hit = _mm_or_si128(
                    _mm_or_si128(_mm_cmpeq_epi8(x, quote), _mm_cmpeq_epi8(x, backslash)),
                    _mm_cmpeq_epi8(_mm_min_epu8(x, ctl), x),
                );
                let mask = _mm_movemask_epi8(hit);
                if mask != 0 {
                    return i + mask.trailing_zeros() as usize;
                }
                i += 16;
            }
        }
    }
    while i < b.len() && !matches!(b[i], b'"' | b'\\' | 0..=0x1f) {
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn members(body: &[u8]) -> Result<Vec<(String, String)>, ScanError> {
        let mut out = Vec::new();
        scan(body, 128, |k, r| {
            out.push((
                k.into_owned(),
                String::from_utf8_lossy(&body[r]).into_owned(),
            ))
        })?;
        Ok(out)
    }

    #[test]
    fn reports_top_level_members_only() {
        let m = members(br#" {"model" : "a\"b", "x":{"model":1},"mod\u0065l":[1,2] ,"n":-1.5e3} "#)
            .unwrap();
        let keys: Vec<&str> = m.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["model", "x", "model", "n"]);
        assert_eq!(m[0].1, r#""a\"b""#);
        assert_eq!(m[1].1, r#"{"model":1}"#);
        assert_eq!(m[2].1, "[1,2]");
        assert_eq!(m[3].1, "-1.5e3");
    }

    #[test]
    fn rejects_what_json_rejects() {
        for bad in [
            &b""[..],
            b"{",
            b"{\"a\":}",
            b"{\"a\":1,}",
            b"{\"a\":[1,]}",
            b"{\"a\":01}",
            b"{\"a\":1.}",
            b"{\"a\":.5}",
            b"{\"a\":1e}",
            b"{\"a\":tru}",
            b"{\"a\":\"\x01\"}",
            b"{\"a\":\"\\x\"}",
            b"{\"a\":\"\\u12g4\"}",
            b"{\"a\":\"\xff\"}",
            b"{\"a\":1} x",
            b"{a:1}",
            b"{\"a\" 1}",
            b"{\"a\":\"unterminated}",
        ] {
            assert!(members(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        assert_eq!(members(b"[1]"), Err(ScanError::NotObject));
        assert_eq!(members(b"\"s\""), Err(ScanError::NotObject));
    }

    #[test]
    fn nesting_limit_counts_the_object_itself() {
        let nest = |n: usize| format!("{{\"a\":{}1{}}}", "[".repeat(n - 1), "]".repeat(n - 1));
        assert!(members(nest(128).as_bytes()).is_ok());
        assert_eq!(members(nest(129).as_bytes()), Err(ScanError::TooDeep));
        let deep = format!("{{\"a\":{}", "[".repeat(100_000));
        assert_eq!(members(deep.as_bytes()), Err(ScanError::TooDeep));
    }

    /// A bad byte anywhere (in a string, in a key, after an escape,
    /// outside strings, after a syntax error) is reported as `NotUtf8` at
    /// the first bad byte; multi-byte text of any length passes (keys
    /// borrow it unchecked, so this is what makes that sound).
    #[test]
    fn not_utf8_is_reported_at_its_first_bad_byte() {
        let long = "é中😀".repeat(40);
        let ok = format!(r#"{{"{long}":"{long}","b":["x{long}\n{long}"]}}"#);
        let found = members(ok.as_bytes()).unwrap();
        assert_eq!(found[0].0, long);
        assert_eq!(found[0].1, format!("\"{long}\""));
        for (bad, at) in [
            (&b"{\"a\":\"\xff\"}"[..], 6),
            (b"{\"\xc3\":1}", 2),
            (b"{\"a\":\"x\\n\xe4\xb8\"}", 9),
            (b"{\"a\":1}\xff", 7),
            (b"{\"a\":\xff}", 5),
            (b"{\"a\":tru\xe9}", 8),
            (b"{\"a\":\"0123456789abcdef0123456789\xc0\xaf\"}", 32),
        ] {
            assert_eq!(
                members(bad),
                Err(ScanError::NotUtf8 { at }),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn finds_specials_at_every_offset() {
        for len in 0..40 {
            for at in 0..len {
                for c in [b'"', b'\\', 0u8, 0x1f] {
                    let mut b = vec![b'x'; len];
                    b[at] = c;
                    assert_eq!(find_special(&b, 0), at);
                }
                let b = vec![0xe9u8; len];
                assert_eq!(find_special(&b, 0), len);
            }
        }
    }

    /// Bracket depth outside strings, the way a second pass would count it.
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

    fn json() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<i32>().prop_map(|i| serde_json::Value::from(f64::from(i) / 8.0)),
            "(\\PC|[\"\\\\\n\t\u{1}])*".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(6, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
                prop::collection::btree_map("[a-z]{0,6}", inner, 0..6)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Valid documents are accepted with serde_json's view of the top
        /// level; mutated ones are accepted exactly when serde_json accepts
        /// them (as UTF-8, within the depth limit).
        #[test]
        fn agrees_with_serde_json(
            members_in in prop::collection::btree_map("[a-z\"\\\\]{0,5}", json(), 0..5),
            cut in any::<prop::sample::Index>(),
            byte in any::<u8>(),
            mutate in any::<bool>(),
        ) {
            let doc = serde_json::Value::Object(members_in.into_iter().collect());
            let text = if mutate { serde_json::to_string(&doc) } else { serde_json::to_string_pretty(&doc) }.unwrap();
            let got = members(text.as_bytes()).unwrap();
            let want: Vec<(String, String)> = doc
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.to_string()))
                .collect();
            let got_keys: Vec<&String> = got.iter().map(|(k, _)| k).collect();
            let want_keys: Vec<&String> = want.iter().map(|(k, _)| k).collect();
            prop_assert_eq!(got_keys, want_keys);
            for (k, v) in &got {
                let parsed: serde_json::Value = serde_json::from_str(v).unwrap();
                prop_assert_eq!(Some(&parsed), doc.get(k));
            }
            let mut bytes = text.into_bytes();
            if mutate && !bytes.is_empty() {
                let i = cut.index(bytes.len());
                bytes[i] = byte;
            }
            let reference = std::str::from_utf8(&bytes).is_ok()
                && serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).is_ok()
                && bytes.trim_ascii_start().first() == Some(&b'{')
                && depth(&bytes) <= 128;
            let lone_surrogate = bytes.windows(3).any(|w| w.eq_ignore_ascii_case(b"\\ud"));
            if !lone_surrogate {
                prop_assert_eq!(members(&bytes).is_ok(), reference, "{:?}", String::from_utf8_lossy(&bytes));
            }
        }
    }
}
