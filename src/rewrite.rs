//! Parse the request body once, then splice a new `model` value into the
//! original bytes. Every other byte is kept as the client sent it.

use crate::json_scan::{self, ScanError};
use bytes::{BufMut, Bytes, BytesMut};
use std::ops::Range;

/// Deepest JSON nesting accepted. Deeper bodies get a 400.
pub const MAX_DEPTH: usize = 128;

/// What the gateway needs from a body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    /// The client's model name, unescaped.
    pub model: String,
    /// Byte range of the model's JSON string (quotes included) in the body.
    pub model_span: Range<usize>,
    pub stream: bool,
    /// `stream_options.include_usage` as the client sent it.
    pub include_usage: bool,
    /// Byte range of the `stream_options` value, when present.
    pub stream_options_span: Option<Range<usize>>,
    /// Where the sampling parameters a trace shows are (found in the same
    /// pass; read only for a traced request).
    pub params: ParamSpans,
    /// A multipart form (`form`): `model_span` is the `model` field's raw
    /// value, replaced by the upstream model's bytes, not a JSON string.
    pub form: bool,
    /// Byte range of the `metadata` value, when present (read for the
    /// request's tags only when workloads are declared).
    pub metadata_span: Option<Range<usize>>,
}

/// Byte ranges of `max_tokens` (or `max_completion_tokens`,
/// `max_output_tokens`), `temperature` and `top_p` in the body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParamSpans {
    pub max_tokens: Option<Range<usize>>,
    pub temperature: Option<Range<usize>>,
    pub top_p: Option<Range<usize>>,
}

/// The sampling parameters a request set (a value that is not a number,
/// such as `null`, is not set).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RequestParams {
    pub max_tokens: Option<u64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
}

impl ParamSpans {
    /// The values at these ranges of `body` (the body they were found in).
    pub fn read(&self, body: &[u8]) -> RequestParams {
        let text = |r: &Option<Range<usize>>| {
            r.clone()
                .and_then(|r| body.get(r))
                .and_then(|b| std::str::from_utf8(b).ok())
        };
        RequestParams {
            max_tokens: text(&self.max_tokens).and_then(|t| t.parse().ok()),
            temperature: text(&self.temperature).and_then(|t| t.parse().ok()),
            top_p: text(&self.top_p).and_then(|t| t.parse().ok()),
        }
    }
}

/// Why a body was rejected; the text is safe to show the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyError {
    pub message: String,
    pub param: Option<&'static str>,
}

fn err(message: impl Into<String>, param: Option<&'static str>) -> BodyError {
    BodyError {
        message: message.into(),
        param,
    }
}

/// Validates the whole document and finds `model` and `stream`, in one pass
/// ([`json_scan`]). Duplicate `model`, `stream` or `stream_options` keys are
/// an error, so the gateway never routes on one value while the provider
/// reads another.
pub fn parse(body: &[u8]) -> Result<Parsed, BodyError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(err("The request body is empty; send a JSON object.", None));
    }
    let mut model = None;
    let mut stream = None;
    let mut stream_options = None;
    let mut metadata = None;
    let mut duplicate = None;
    let mut params = ParamSpans::default();
    json_scan::scan(body, MAX_DEPTH, |key, value| {
        let (slot, name) = match &*key {
            "model" => (&mut model, "model"),
            "stream" => (&mut stream, "stream"),
            "stream_options" => (&mut stream_options, "stream_options"),
            "metadata" => (&mut metadata, "metadata"),
            "max_tokens" | "max_completion_tokens" | "max_output_tokens" => {
                params.max_tokens = Some(value);
                return;
            }
            "temperature" => {
                params.temperature = Some(value);
                return;
            }
            "top_p" => {
                params.top_p = Some(value);
                return;
            }
            _ => return,
        };
        if slot.replace(value).is_some() {
            duplicate.get_or_insert(name);
        }
    })
    .map_err(|e| match e {
        ScanError::TooDeep => err(
            format!("The request body is nested deeper than {MAX_DEPTH} levels."),
            None,
        ),
        ScanError::NotObject => err("The request body must be a JSON object.", None),
        ScanError::NotUtf8 { at } => err(
            format!("The request body is not valid UTF-8 (byte {at})."),
            None,
        ),
        ScanError::Syntax { at, what } => err(
            format!("The request body is not valid JSON: {what} at byte {at}."),
            None,
        ),
    })?;
    if let Some(name) = duplicate {
        return Err(err(
            format!("The request body has more than one `{name}` key."),
            Some(name),
        ));
    }
    let model_span = model.ok_or_else(|| err("The request body has no `model`.", Some("model")))?;
    let model: String = serde_json::from_slice(&body[model_span.clone()])
        .map_err(|_| err("`model` must be a string.", Some("model")))?;
    if model.is_empty() {
        return Err(err("`model` must not be empty.", Some("model")));
    }
    let stream = match stream.map(|r| &body[r]) {
        None | Some(b"null") | Some(b"false") => false,
        Some(b"true") => true,
        Some(_) => return Err(err("`stream` must be a boolean.", Some("stream"))),
    };
    let include_usage = match stream_options.clone().map(|r| &body[r]) {
        None | Some(b"null") => false,
        Some(opts) if opts.starts_with(b"{") => {
            // Already validated as part of the body; the last duplicate wins,
            // as in serde_json.
            let mut flag = false;
            let _ = json_scan::scan(opts, MAX_DEPTH, |key, value| {
                if &*key == "include_usage" {
                    flag = &opts[value] == b"true";
                }
            });
            flag
        }
        Some(_) => {
            return Err(err(
                "`stream_options` must be an object.",
                Some("stream_options"),
            ))
        }
    };
    Ok(Parsed {
        model,
        model_span,
        stream,
        include_usage,
        stream_options_span: stream_options,
        params,
        form: false,
        metadata_span: metadata,
    })
}

/// What the gateway needs from a `multipart/form-data` body with
/// `boundary`: the `model` field (its raw value's span) and `stream`
/// (`true` is refused by the caller for these endpoints). Errors: not a
/// form (`form::read`), no `model` or a second one, a model that is not
/// UTF-8.
pub fn parse_form(body: &[u8], boundary: &str) -> Result<(Parsed, crate::form::Form), BodyError> {
    if !body.starts_with(b"--") || body.get(2..2 + boundary.len()) != Some(boundary.as_bytes()) {
        return Err(err(
            "The multipart body must start with its boundary delimiter (a preamble is not accepted).",
            None,
        ));
    }
    let form = crate::form::read(body, boundary).map_err(|e| BodyError {
        message: e.message,
        param: e.param,
    })?;
    let mut models = form.parts.iter().filter(|p| p.name == "model");
    let Some(part) = models.next() else {
        return Err(err("The form has no `model` field.", Some("model")));
    };
    if part.file || models.next().is_some() {
        return Err(err(
            "The form must have exactly one `model` text field.",
            Some("model"),
        ));
    }
    let model = std::str::from_utf8(&body[part.value.clone()])
        .map_err(|_| err("`model` must be UTF-8 text.", Some("model")))?;
    if model.is_empty() {
        return Err(err("`model` is empty.", Some("model")));
    }
    let stream = form
        .text(body, "stream")
        .is_some_and(|s| s.trim().eq_ignore_ascii_case("true"));
    Ok((
        Parsed {
            model: model.to_string(),
            model_span: part.value.clone(),
            stream,
            include_usage: false,
            stream_options_span: None,
            params: ParamSpans::default(),
            form: true,
            metadata_span: None,
        },
        form,
    ))
}

/// Builds one attempt's body: the route's model spliced in and, when
/// `ask_usage` is set for a stream whose client did not ask for usage,
/// `stream_options.include_usage: true` added. Returns the body and whether
/// usage was added on the client's behalf. The body is copied once at most,
/// and every byte not edited is the client's.
pub fn attempt_body(
    body: &Bytes,
    p: &Parsed,
    model: &str,
    model_json: &[u8],
    ask_usage: bool,
) -> (Bytes, bool) {
    if p.form {
        return (splice(body, &p.model_span, model.as_bytes()), false);
    }
    if !(ask_usage && p.stream && !p.include_usage) {
        return (splice(body, &p.model_span, model_json), false);
    }
    let mut edits: Vec<(Range<usize>, &[u8])> = vec![(p.model_span.clone(), model_json)];
    match &p.stream_options_span {
        Some(span) if body[span.clone()].starts_with(b"{") => {
            // Edit the object's bytes in place, so every other member keeps
            // the client's exact text (a number re-serialized through
            // serde_json can lose digits). `parse` checked it is an object.
            let opts = &body[span.clone()];
            let mut present = false;
            let _ = json_scan::scan(opts, MAX_DEPTH, |key, value| {
                if &*key == "include_usage" {
                    present = true;
                    let at = span.start + value.start..span.start + value.end;
                    edits.push((at, b"true"));
                }
            });
            if !present {
                let at = span.start + 1;
                let empty = opts[1..]
                    .iter()
                    .find(|b| !b.is_ascii_whitespace())
                    .is_some_and(|b| *b == b'}');
                let member: &[u8] = if empty {
                    br#""include_usage":true"#
                } else {
                    br#""include_usage":true,"#
                };
                edits.push((at..at, member));
            }
        }
        // `null` (the only other value `parse` accepts).
        Some(span) => edits.push((span.clone(), br#"{"include_usage":true}"#)),
        None => {
            // Insert as the first member, right after the opening brace.
            let at = body.iter().position(|b| *b == b'{').map_or(0, |i| i + 1);
            edits.push((at..at, br#""stream_options":{"include_usage":true},"#));
        }
    }
    edits.sort_by_key(|e| e.0.start);
    (splice_many(body, &edits), true)
}

/// Applies non-overlapping edits, sorted by start, in one pass.
fn splice_many(body: &[u8], edits: &[(Range<usize>, &[u8])]) -> Bytes {
    let grow: usize = edits.iter().map(|(_, v)| v.len()).sum();
    let mut out = BytesMut::with_capacity(body.len() + grow);
    let mut pos = 0;
    for (r, v) in edits {
        out.put_slice(&body[pos..r.start]);
        out.put_slice(v);
        pos = r.end;
    }
    out.put_slice(&body[pos..]);
    out.freeze()
}

/// Encodes a model name as a JSON string, once, at config load.
pub fn json_string(s: &str) -> Bytes {
    Bytes::from(serde_json::Value::from(s).to_string())
}

/// The body with the model's JSON string replaced by `new_model_json`.
/// Returns the original `Bytes` (no copy) when nothing changes.
pub fn splice(body: &Bytes, span: &Range<usize>, new_model_json: &[u8]) -> Bytes {
    if body.get(span.clone()) == Some(new_model_json) {
        return body.clone();
    }
    let mut out = BytesMut::with_capacity(body.len() - span.len() + new_model_json.len());
    out.put_slice(&body[..span.start]);
    out.put_slice(new_model_json);
    out.put_slice(&body[span.end..]);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_usage(b: &[u8]) -> String {
        let body = Bytes::copy_from_slice(b);
        let p = parse(&body).unwrap();
        let (out, added) = attempt_body(&body, &p, "m", br#""m2""#, true);
        assert!(added);
        let again = parse(&out).unwrap();
        assert!(again.include_usage && again.model == "m2");
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn include_usage_is_spliced_into_the_clients_bytes() {
        // Found by fuzzing: a re-serialized `stream_options` changed the
        // last digits of a long number.
        assert_eq!(
            with_usage(br#"{"model":"m","stream":true,"stream_options":{"x":1.00000000000000000000001e300}}"#),
            r#"{"model":"m2","stream":true,"stream_options":{"include_usage":true,"x":1.00000000000000000000001e300}}"#
        );
        assert_eq!(
            with_usage(br#"{"model":"m","stream":true,"stream_options":{ }}"#),
            r#"{"model":"m2","stream":true,"stream_options":{"include_usage":true }}"#
        );
        assert_eq!(
            with_usage(br#"{"stream_options":null,"model":"m","stream":true}"#),
            r#"{"stream_options":{"include_usage":true},"model":"m2","stream":true}"#
        );
        // A false (or duplicated) flag is overwritten where it stands.
        assert_eq!(
            with_usage(br#"{"model":"m","stream":true,"stream_options":{"include_usage":false,"a":[],"include_usage":0}}"#),
            r#"{"model":"m2","stream":true,"stream_options":{"include_usage":true,"a":[],"include_usage":true}}"#
        );
    }

    #[test]
    fn finds_model_and_stream() {
        let b = br#"{"messages":[{"role":"user","content":"hi \"model\""}],"model":"fast","stream":true}"#;
        let p = parse(b).unwrap();
        assert_eq!(p.model, "fast");
        assert!(p.stream);
        assert_eq!(&b[p.model_span.clone()], br#""fast""#);
    }

    #[test]
    fn sampling_parameters_are_found_in_the_same_pass() {
        let b = br#"{"model":"m","max_completion_tokens":256,"temperature":0.7,"top_p":1,"x":{"top_p":5}}"#;
        let p = parse(b).unwrap();
        let v = p.params.read(b);
        assert_eq!(
            (v.max_tokens, v.temperature, v.top_p),
            (Some(256), Some(0.7), Some(1.0))
        );
        let none = parse(br#"{"model":"m","temperature":null}"#).unwrap();
        assert_eq!(
            none.params.read(br#"{"model":"m","temperature":null}"#),
            RequestParams::default()
        );
    }

    #[test]
    fn splice_changes_only_model() {
        let b = Bytes::from_static(br#"{"model" : "fast","x":{"model":"keep"},"n":1.50}"#);
        let p = parse(&b).unwrap();
        let out = splice(&b, &p.model_span, &json_string("qwen2.5-7b"));
        assert_eq!(
            &out[..],
            br#"{"model" : "qwen2.5-7b","x":{"model":"keep"},"n":1.50}"#
        );
        let same = splice(&b, &p.model_span, &json_string("fast"));
        assert_eq!(same.as_ptr(), b.as_ptr(), "unchanged model must not copy");
    }

    #[test]
    fn escaped_model_is_unescaped_and_replaced_whole() {
        let b = Bytes::from_static(br#"{"model":"f\u0061st"}"#);
        let p = parse(&b).unwrap();
        assert_eq!(p.model, "fast");
        assert_eq!(
            &splice(&b, &p.model_span, br#""m""#)[..],
            br#"{"model":"m"}"#
        );
    }

    #[test]
    fn rejects_bad_bodies() {
        for (body, want) in [
            (&b""[..], "empty"),
            (b"   ", "empty"),
            (b"{", "not valid JSON"),
            (b"[1,2]", "must be a JSON object"),
            (b"\"s\"", "must be a JSON object"),
            (
                b"{\"model\":\"a\",}",
                "not valid JSON: expected a member name in quotes at byte 13",
            ),
            (b"{\"model\":\"\xff\"}", "not valid UTF-8 (byte 10)"),
            (b"{}", "no `model`"),
            (br#"{"model":5}"#, "must be a string"),
            (br#"{"model":""}"#, "must not be empty"),
            (br#"{"model":"a","model":"b"}"#, "more than one `model`"),
            (
                br#"{"model":"a","mod\u0065l":"b"}"#,
                "more than one `model`",
            ),
            (
                br#"{"model":"a","stream":true,"stream":false}"#,
                "more than one `stream`",
            ),
            (br#"{"model":"a","stream":"yes"}"#, "must be a boolean"),
            (br#"{"model":"a","stream_options":[]}"#, "must be an object"),
        ] {
            let e = parse(body).unwrap_err();
            assert!(e.message.contains(want), "{body:?}: {}", e.message);
        }
    }

    #[test]
    fn usage_is_requested_for_streams_that_did_not_ask() {
        let b = Bytes::from_static(br#"{"model":"fast","stream":true,"messages":[]}"#);
        let p = parse(&b).unwrap();
        let (out, added) = attempt_body(&b, &p, "m", br#""m""#, true);
        assert!(added);
        assert_eq!(
            &out[..],
            br#"{"stream_options":{"include_usage":true},"model":"m","stream":true,"messages":[]}"#
        );
        let b = Bytes::from_static(br#"{"stream_options":{"x":1},"model":"fast","stream":true}"#);
        let p = parse(&b).unwrap();
        let (out, added) = attempt_body(&b, &p, "m", br#""m""#, true);
        assert!(added);
        assert_eq!(
            &out[..],
            br#"{"stream_options":{"include_usage":true,"x":1},"model":"m","stream":true}"#
        );
        // Asked already, not streaming, or switched off: model only.
        for (body, ask) in [
            (
                &br#"{"model":"fast","stream":true,"stream_options":{"include_usage":true}}"#[..],
                true,
            ),
            (br#"{"model":"fast"}"#, true),
            (br#"{"model":"fast","stream":true}"#, false),
        ] {
            let b = Bytes::copy_from_slice(body);
            let p = parse(&b).unwrap();
            let (out, added) = attempt_body(&b, &p, "m", br#""m""#, ask);
            assert!(!added);
            assert_eq!(out, splice(&b, &p.model_span, br#""m""#));
        }
        let p = parse(br#"{"model":"x","stream_options":null,"stream":true}"#).unwrap();
        assert!(p.stream_options_span.is_some() && !p.include_usage);
        assert!(parse(br#"{"model":"x","stream_options":5}"#).is_err());
    }

    #[test]
    fn deep_nesting_is_rejected_without_overflow() {
        let mut b = br#"{"model":"m","messages":"#.to_vec();
        b.extend(std::iter::repeat_n(b'[', 100_000));
        b.extend(std::iter::repeat_n(b']', 100_000));
        b.push(b'}');
        assert!(parse(&b).unwrap_err().message.contains("nested deeper"));
        // Brackets inside strings do not count.
        let s = format!(r#"{{"model":"m","x":"{}"}}"#, "[".repeat(1000));
        assert!(parse(s.as_bytes()).is_ok());
    }

    #[test]
    fn a_form_gets_the_raw_model_in_place() {
        let body = Bytes::from_static(
            b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\n\r\n\xff\x00\r\n--b\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nstt\r\n--b--\r\n",
        );
        let (p, _) = parse_form(&body, "b").unwrap();
        assert!(p.form && !p.stream);
        assert_eq!(p.model, "stt");
        let (out, added) = attempt_body(&body, &p, "whisper-1", br#""whisper-1""#, true);
        assert!(!added);
        let want = [
            &body[..p.model_span.start],
            b"whisper-1",
            &body[p.model_span.end..],
        ]
        .concat();
        assert_eq!(&out[..], &want[..]);
        assert_eq!(parse_form(&out, "b").unwrap().0.model, "whisper-1");
        // No model, two models, a model that is a file, a preamble.
        for bad in [
            &b"--b\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\nv\r\n--b--"[..],
            b"--b\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nv\r\n--b\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nw\r\n--b--",
            b"--b\r\nContent-Disposition: form-data; name=\"model\"; filename=\"m\"\r\n\r\nv\r\n--b--",
        ] {
            assert_eq!(parse_form(bad, "b").unwrap_err().param, Some("model"));
        }
        let pre = b"hi\r\n--b\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nv\r\n--b--";
        assert!(parse_form(pre, "b").is_err());
    }
}
