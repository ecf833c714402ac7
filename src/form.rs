//! A reader for `multipart/form-data` request bodies (RFC 7578), over a body
//! already in memory: it finds the parts' byte ranges without copying any
//! of them, so a file part's bytes are read once (by the body reader) and
//! spliced through untouched. Part headers are parsed by `httparse`,
//! boundaries found with `memchr::memmem`.
//!
//! Bounds (each a 400 past it): [`MAX_PARTS`] parts, [`MAX_PART_HEADERS`]
//! bytes of headers per part, [`MAX_TEXT_FIELD`] bytes per text field (a part
//! without `filename`). File parts are bounded by `max_body_bytes` only.

use memchr::memmem;
use std::ops::Range;

/// Most parts one form may have.
pub const MAX_PARTS: usize = 256;
/// Most bytes of one part's headers (the blank line included).
pub const MAX_PART_HEADERS: usize = 8 * 1024;
/// Most bytes of one text field's value.
pub const MAX_TEXT_FIELD: usize = 64 * 1024;
/// Longest boundary RFC 2046 allows.
const MAX_BOUNDARY: usize = 70;
/// Most headers one part may carry.
const MAX_HEADERS_PER_PART: usize = 16;

/// Why a body is not a form this gateway reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormError {
    pub message: String,
    /// The field, for `error.param`.
    pub param: Option<&'static str>,
}

fn err(message: impl Into<String>) -> FormError {
    FormError {
        message: message.into(),
        param: None,
    }
}

/// One part: its field name, whether it is a file, and where its value is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub name: String,
    /// The part has a `filename` (a file upload).
    pub file: bool,
    /// The value's byte range in the body.
    pub value: Range<usize>,
}

/// The parts of a form, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Form {
    pub parts: Vec<Part>,
}

impl Form {
    /// The first text field named `name`.
    pub fn field(&self, name: &str) -> Option<&Part> {
        self.parts.iter().find(|p| p.name == name && !p.file)
    }

    /// A text field's value as UTF-8 (`None` if absent or not UTF-8).
    pub fn text<'b>(&self, body: &'b [u8], name: &str) -> Option<&'b str> {
        let p = self.field(name)?;
        std::str::from_utf8(body.get(p.value.clone())?).ok()
    }
}

/// The form of an admitted body, whose first line is its delimiter
/// (admission refuses a preamble): used where only the body is at hand
/// (estimates, units). `None` if it does not read.
pub fn sniff(body: &[u8]) -> Option<Form> {
    let line = body.get(..body.len().min(MAX_BOUNDARY + 4))?;
    let end = memmem::find(line, b"\r\n")?;
    let b = std::str::from_utf8(line.get(2..end)?).ok()?;
    if !line.starts_with(b"--") {
        return None;
    }
    read(body, b.trim_end_matches([' ', '\t'])).ok()
}

/// The form's text fields as a JSON object of strings (the first of each
/// name; non-UTF-8 values left out), for code that reads request fields
/// from JSON.
pub fn fields_json(body: &[u8]) -> Option<serde_json::Value> {
    let form = sniff(body)?;
    let mut map = serde_json::Map::new();
    for p in form.parts.iter().filter(|p| !p.file) {
        if map.contains_key(&p.name) {
            continue;
        }
        if let Some(v) = body
            .get(p.value.clone())
            .and_then(|v| std::str::from_utf8(v).ok())
        {
            map.insert(p.name.clone(), serde_json::Value::String(v.to_string()));
        }
    }
    Some(serde_json::Value::Object(map))
}

/// The boundary of a `multipart/form-data` Content-Type, unquoted.
pub fn boundary(content_type: &str) -> Result<&str, FormError> {
    let mut params = content_type.split(';');
    let mime = params.next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("multipart/form-data") {
        return Err(err(
            "This endpoint takes a multipart/form-data body (Content-Type: multipart/form-data; boundary=…).",
        ));
    }
    for p in params {
        let Some((k, v)) = p.split_once('=') else {
            continue;
        };
        if !k.trim().eq_ignore_ascii_case("boundary") {
            continue;
        }
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(v);
        if v.is_empty() || v.len() > MAX_BOUNDARY || v.bytes().any(|b| b == b'\r' || b == b'\n') {
            return Err(err(format!(
                "The multipart boundary must be 1 to {MAX_BOUNDARY} characters."
            )));
        }
        return Ok(v);
    }
    Err(err("The multipart/form-data Content-Type has no boundary."))
}

/// Reads the parts of `body` delimited by `boundary`. Errors: the body does
/// not start with a delimiter (after an optional preamble), a part is not
/// terminated by the next delimiter, the closing delimiter is missing, or
/// a bound is passed.
pub fn read(body: &[u8], boundary: &str) -> Result<Form, FormError> {
    let mut delim = Vec::with_capacity(boundary.len() + 4);
    delim.extend_from_slice(b"\r\n--");
    delim.extend_from_slice(boundary.as_bytes());
    let next_delim = memmem::Finder::new(&delim);
    // The first delimiter may open the body (no CRLF before it).
    let mut pos = if body.starts_with(&delim[2..]) {
        delim.len() - 2
    } else {
        match next_delim.find(body) {
            Some(i) => i + delim.len(),
            None => return Err(err("The multipart body has no boundary delimiter.")),
        }
    };
    let blank = memmem::Finder::new(b"\r\n\r\n");
    let mut form = Form::default();
    loop {
        let rest = body.get(pos..).unwrap_or_default();
        if rest.starts_with(b"--") {
            // The closing delimiter; what follows is the epilogue.
            return Ok(form);
        }
        // Transport padding, then the line end.
        let pad = rest
            .iter()
            .take_while(|b| **b == b' ' || **b == b'\t')
            .count();
        let Some(after) = rest.get(pad..).filter(|r| r.starts_with(b"\r\n")) else {
            return Err(err("The multipart body is malformed after a boundary."));
        };
        let head_start = pos + pad + 2;
        let after = &after[2..];
        if form.parts.len() >= MAX_PARTS {
            return Err(err(format!("The form has more than {MAX_PARTS} parts.")));
        }
        // Part headers end at a blank line; none at all is allowed.
        let head_len = if after.starts_with(b"\r\n") {
            2
        } else {
            let window = &after[..after.len().min(MAX_PART_HEADERS)];
            match blank.find(window) {
                Some(i) => i + 4,
                None if after.len() > MAX_PART_HEADERS => {
                    return Err(err(format!(
                        "A form part's headers are longer than {MAX_PART_HEADERS} bytes."
                    )))
                }
                None => return Err(err("A form part's headers are not terminated.")),
            }
        };
        let (name, file) = disposition(&after[..head_len])?;
        let value_start = head_start + head_len;
        let value_rest = body.get(value_start..).unwrap_or_default();
        let Some(len) = next_delim.find(value_rest) else {
            return Err(err(
                "The multipart body is unterminated: a part has no closing boundary.",
            ));
        };
        if !file && len > MAX_TEXT_FIELD {
            return Err(FormError {
                message: format!(
                    "The form field `{}` is longer than {MAX_TEXT_FIELD} bytes.",
                    shorten(&name)
                ),
                param: None,
            });
        }
        form.parts.push(Part {
            name,
            file,
            value: value_start..value_start + len,
        });
        pos = value_start + len + delim.len();
    }
}

/// The field name and whether the part is a file, from its
/// Content-Disposition (`form-data; name="…"; filename="…"`).
fn disposition(head: &[u8]) -> Result<(String, bool), FormError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS_PER_PART];
    let parsed = match httparse::parse_headers(head, &mut headers) {
        Ok(httparse::Status::Complete((_, h))) => h,
        Ok(httparse::Status::Partial) | Err(_) => {
            return Err(err("A form part's headers cannot be read."));
        }
    };
    let Some(cd) = parsed
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-disposition"))
    else {
        return Err(err("A form part has no Content-Disposition header."));
    };
    let cd = std::str::from_utf8(cd.value)
        .map_err(|_| err("A form part's Content-Disposition is not UTF-8."))?;
    let (kind, params) = cd.split_once(';').unwrap_or((cd, ""));
    if !kind.trim().eq_ignore_ascii_case("form-data") {
        return Err(err("A form part's Content-Disposition is not form-data."));
    }
    let mut name = None;
    let mut file = false;
    let mut rest = params;
    while let Some((k, v, tail)) = param(rest) {
        if k.eq_ignore_ascii_case("name") {
            name.get_or_insert(v);
        } else if k.eq_ignore_ascii_case("filename") || k.eq_ignore_ascii_case("filename*") {
            file = true;
        }
        rest = tail;
    }
    let name = name.ok_or_else(|| err("A form part's Content-Disposition has no name."))?;
    Ok((name, file))
}

/// The next `key=value` of a parameter list: the key, the value (a token,
/// or a quoted string with `\` escapes), and the rest after it.
fn param(s: &str) -> Option<(&str, String, &str)> {
    let s = s.trim_start_matches([';', ' ', '\t']);
    let (k, v) = s.split_once('=')?;
    let k = k.trim();
    let v = v.trim_start();
    if let Some(q) = v.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = q.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => return Some((k, out, &q[i + 1..])),
                '\\' => {
                    if let Some((_, e)) = chars.next() {
                        out.push(e);
                    }
                }
                c => out.push(c),
            }
        }
        None
    } else {
        let end = v.find(';').unwrap_or(v.len());
        Some((k, v[..end].trim().to_string(), &v[end..]))
    }
}

fn shorten(s: &str) -> String {
    s.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(parts: &[(&str, Option<&str>, &[u8])]) -> Vec<u8> {
        let mut b = Vec::new();
        for (name, file, value) in parts {
            b.extend_from_slice(b"--XyZ\r\n");
            match file {
                Some(f) => b.extend_from_slice(
                    format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\nContent-Type: application/octet-stream\r\n\r\n").as_bytes(),
                ),
                None => b.extend_from_slice(
                    format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes(),
                ),
            }
            b.extend_from_slice(value);
            b.extend_from_slice(b"\r\n");
        }
        b.extend_from_slice(b"--XyZ--\r\n");
        b
    }

    #[test]
    fn reads_fields_and_files_by_range() {
        let bin: Vec<u8> = (0..=255u8)
            .chain(b"\r\n--XyY-not".iter().copied())
            .collect();
        let body = form(&[("model", None, b"whisper"), ("file", Some("a.wav"), &bin)]);
        let f = read(&body, "XyZ").unwrap();
        assert_eq!(f.parts.len(), 2);
        assert_eq!(f.text(&body, "model"), Some("whisper"));
        assert!(f.parts[1].file);
        // A delimiter-looking run inside the file that is not the exact
        // boundary is file content.
        assert_eq!(&body[f.parts[1].value.clone()][..256], &bin[..256]);
        assert!(f.field("file").is_none());
    }

    #[test]
    fn boundary_is_read_from_the_content_type() {
        assert_eq!(
            boundary("multipart/form-data; boundary=abc").unwrap(),
            "abc"
        );
        assert_eq!(
            boundary("Multipart/Form-Data;charset=x; boundary=\"a b\"").unwrap(),
            "a b"
        );
        assert!(boundary("application/json").is_err());
        assert!(boundary("multipart/form-data").is_err());
        assert!(boundary("multipart/form-data; boundary=").is_err());
        assert!(boundary(&format!("multipart/form-data; boundary={}", "x".repeat(71))).is_err());
    }

    #[test]
    fn malformed_bodies_are_errors() {
        let good = form(&[("model", None, b"m")]);
        assert!(read(&good, "XyZ").is_ok());
        // Unterminated: the closing delimiter cut off.
        assert!(read(&good[..good.len() - 9], "XyZ").is_err());
        assert!(read(b"no delimiter here", "XyZ").is_err());
        assert!(read(b"--XyZ\r\nno blank line", "XyZ").is_err());
        assert!(read(b"--XyZ\r\nX-A: b\r\n\r\nv\r\n--XyZ--", "XyZ").is_err());
        assert!(read(
            b"--XyZ\r\nContent-Disposition: form-data\r\n\r\nv\r\n--XyZ--",
            "XyZ"
        )
        .is_err());
        // A preamble before the first delimiter is allowed.
        let mut pre = b"preamble\r\n".to_vec();
        pre.extend_from_slice(&good);
        assert_eq!(read(&pre, "XyZ").unwrap().text(&pre, "model"), Some("m"));
    }

    #[test]
    fn bounds_are_enforced() {
        let many: Vec<(&str, Option<&str>, &[u8])> = vec![("x", None, b"1"); MAX_PARTS];
        assert!(read(&form(&many), "XyZ").is_ok());
        let more: Vec<(&str, Option<&str>, &[u8])> = vec![("x", None, b"1"); MAX_PARTS + 1];
        assert!(read(&form(&more), "XyZ")
            .unwrap_err()
            .message
            .contains("256"));
        let big = vec![b'a'; MAX_TEXT_FIELD];
        assert!(read(&form(&[("prompt", None, &big)]), "XyZ").is_ok());
        let bigger = vec![b'a'; MAX_TEXT_FIELD + 1];
        assert!(read(&form(&[("prompt", None, &bigger)]), "XyZ").is_err());
        assert!(read(&form(&[("file", Some("f"), &bigger)]), "XyZ").is_ok());
        let mut long = b"--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\nX-Pad: ".to_vec();
        long.extend(std::iter::repeat_n(b'p', MAX_PART_HEADERS));
        long.extend_from_slice(b"\r\n\r\nv\r\n--XyZ--");
        assert!(read(&long, "XyZ").unwrap_err().message.contains("8192"));
    }

    #[test]
    fn quoted_names_unescape() {
        let body = b"--b\r\nContent-Disposition: form-data; name=\"a\\\"b;c\"\r\n\r\nv\r\n--b--";
        let f = read(body, "b").unwrap();
        assert_eq!(f.parts[0].name, "a\"b;c");
    }
}
