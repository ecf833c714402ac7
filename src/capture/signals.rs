//! The deterministic comparison of two answers to one request (a primary
//! and its shadow): exact match, text similarity, length ratio, JSON and
//! schema validity, tool-call and finish-reason agreement, and the score
//! that combines them.
//!
//! - **Similarity** is the Jaccard index of the two texts' token sets:
//!   text lowercased, split on every character that is not alphanumeric,
//!   the first [`SIGNAL_TEXT_BYTES`] of each text only. Two empty texts
//!   are similar (1).
//! - **Length ratio** is the shorter text's length over the longer's, in
//!   characters (1 when both are empty).
//! - **Score**: 1 for an exact match; otherwise the similarity, or 0 when
//!   the finish reasons differ, the tool calls differ, or (for a request
//!   that asked for JSON) one answer is valid JSON and the other is not.
//!   A pair **agrees** when its score is at least [`AGREE_AT`].

use super::assemble::{Output, ToolCall};
use serde_json::Value;
use std::collections::HashSet;

/// Bytes of each text the similarity reads.
pub const SIGNAL_TEXT_BYTES: usize = 64 * 1024;
/// The score from which a pair agrees.
pub const AGREE_AT: f64 = 0.8;
/// Deepest schema the validator follows.
const MAX_SCHEMA_DEPTH: usize = 64;

/// What the request asked of its answer's shape.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Wanted {
    #[default]
    Text,
    /// `response_format: {"type": "json_object"}`.
    Json,
    /// `response_format: {"type": "json_schema", ...}` and its schema.
    Schema(Value),
}

impl Wanted {
    /// From a Chat Completions request body.
    pub fn of(body: &Value) -> Wanted {
        let f = body.get("response_format");
        match f.and_then(|f| f.get("type")).and_then(Value::as_str) {
            Some("json_object") => Wanted::Json,
            Some("json_schema") => match f
                .and_then(|f| f.get("json_schema"))
                .and_then(|s| s.get("schema"))
            {
                Some(s) => Wanted::Schema(s.clone()),
                None => Wanted::Json,
            },
            _ => Wanted::Text,
        }
    }

    pub fn json(&self) -> bool {
        !matches!(self, Wanted::Text)
    }
}

/// The shape checks of one answer: JSON validity and schema validity
/// (`None` when the request did not ask for them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Shape {
    pub json_valid: Option<bool>,
    pub schema_valid: Option<bool>,
}

/// Checks one answer's text against what was wanted.
pub fn shape(text: &str, wanted: &Wanted) -> Shape {
    if !wanted.json() {
        return Shape::default();
    }
    let parsed = serde_json::from_str::<Value>(text.trim()).ok();
    Shape {
        json_valid: Some(parsed.is_some()),
        schema_valid: match wanted {
            Wanted::Schema(s) => Some(parsed.as_ref().is_some_and(|v| valid(v, s, 0))),
            _ => None,
        },
    }
}

/// The signals of one pair.
#[derive(Debug, Clone, PartialEq)]
pub struct Signals {
    pub exact: bool,
    pub similarity: f64,
    pub length_ratio: f64,
    /// `None`: neither answer called a tool.
    pub tools_agree: Option<bool>,
    pub finish_agree: bool,
    pub score: f64,
}

impl Signals {
    pub fn agrees(&self) -> bool {
        self.score >= AGREE_AT
    }
}

/// Compares a primary's answer with its shadow's.
pub fn compare(p: &Output, s: &Output, ps: Shape, ss: Shape) -> Signals {
    let tools_agree = if p.tools.is_empty() && s.tools.is_empty() {
        None
    } else {
        Some(tools_equal(&p.tools, &s.tools))
    };
    let exact = p.text == s.text && tools_agree != Some(false);
    let similarity = if exact {
        1.0
    } else {
        jaccard(&p.text, &s.text)
    };
    let finish_agree = p.finish == s.finish;
    let json_agree = ps.json_valid == ss.json_valid;
    let score = if exact && finish_agree {
        1.0
    } else if !finish_agree || tools_agree == Some(false) || !json_agree {
        0.0
    } else {
        similarity
    };
    Signals {
        exact,
        similarity,
        length_ratio: length_ratio(&p.text, &s.text),
        tools_agree,
        finish_agree,
        score,
    }
}

fn head(s: &str) -> &str {
    if s.len() <= SIGNAL_TEXT_BYTES {
        return s;
    }
    let mut end = SIGNAL_TEXT_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn tokens(s: &str) -> HashSet<String> {
    head(s)
        .split(|c: char| !c.is_alphanumeric())
        .filter(|t| !t.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// The Jaccard index of the two texts' token sets (see the module's doc).
pub fn jaccard(a: &str, b: &str) -> f64 {
    let (a, b) = (tokens(a), tokens(b));
    if a.is_empty() && b.is_empty() {
        return 1.0;
    }
    let both = a.intersection(&b).count();
    let either = a.len() + b.len() - both;
    both as f64 / either as f64
}

/// The shorter text's length over the longer's, in characters.
pub fn length_ratio(a: &str, b: &str) -> f64 {
    let (a, b) = (a.chars().count(), b.chars().count());
    let (lo, hi) = (a.min(b), a.max(b));
    if hi == 0 {
        1.0
    } else {
        lo as f64 / hi as f64
    }
}

/// Same tools called in the same order with the same arguments (compared
/// as JSON values when both parse, else as text).
fn tools_equal(a: &[ToolCall], b: &[ToolCall]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.name == y.name
                && match (
                    serde_json::from_str::<Value>(&x.arguments),
                    serde_json::from_str::<Value>(&y.arguments),
                ) {
                    (Ok(u), Ok(v)) => u == v,
                    _ => x.arguments == y.arguments,
                }
        })
}

/// A small subset of JSON Schema: `type` (a name or a list), `enum`,
/// `const`, `properties`, `required`, `additionalProperties: false` or a
/// schema, `items`, `minItems`, `maxItems`, `anyOf`. Other keywords are not
/// checked.
pub fn valid(v: &Value, schema: &Value, depth: usize) -> bool {
    if depth > MAX_SCHEMA_DEPTH {
        return false;
    }
    let Some(sc) = schema.as_object() else {
        // `true` accepts everything, `false` nothing.
        return schema.as_bool().unwrap_or(true);
    };
    if let Some(t) = sc.get("type") {
        let ok = match t {
            Value::String(t) => type_is(v, t),
            Value::Array(ts) => ts.iter().filter_map(Value::as_str).any(|t| type_is(v, t)),
            _ => true,
        };
        if !ok {
            return false;
        }
    }
    if let Some(e) = sc.get("enum").and_then(Value::as_array) {
        if !e.contains(v) {
            return false;
        }
    }
    if let Some(c) = sc.get("const") {
        if c != v {
            return false;
        }
    }
    if let Some(any) = sc.get("anyOf").and_then(Value::as_array) {
        if !any.iter().any(|s| valid(v, s, depth + 1)) {
            return false;
        }
    }
    if let Some(o) = v.as_object() {
        let props = sc.get("properties").and_then(Value::as_object);
        for r in sc
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            if !o.contains_key(r) {
                return false;
            }
        }
        for (k, x) in o {
            // A listed property meets its schema; another one meets
            // `additionalProperties` (absent: anything goes).
            let rule = props
                .and_then(|p| p.get(k))
                .or_else(|| sc.get("additionalProperties"));
            if rule.is_some_and(|r| !valid(x, r, depth + 1)) {
                return false;
            }
        }
    }
    if let Some(a) = v.as_array() {
        let n = a.len() as u64;
        if sc
            .get("minItems")
            .and_then(Value::as_u64)
            .is_some_and(|m| n < m)
            || sc
                .get("maxItems")
                .and_then(Value::as_u64)
                .is_some_and(|m| n > m)
        {
            return false;
        }
        if let Some(items) = sc.get("items") {
            if !a.iter().all(|x| valid(x, items, depth + 1)) {
                return false;
            }
        }
    }
    true
}

fn type_is(v: &Value, t: &str) -> bool {
    match t {
        "string" => v.is_string(),
        "number" => v.is_number(),
        "integer" => v.as_i64().is_some() || v.as_u64().is_some(),
        "boolean" => v.is_boolean(),
        "object" => v.is_object(),
        "array" => v.is_array(),
        "null" => v.is_null(),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn out(text: &str, finish: &str) -> Output {
        Output {
            text: text.into(),
            tools: vec![],
            finish: Some(finish.into()),
        }
    }

    #[test]
    fn jaccard_of_token_sets_is_exact() {
        assert_eq!(jaccard("The cat sat.", "the CAT sat"), 1.0);
        // {a, b, c} and {b, c, d}: 2 shared of 4.
        assert_eq!(jaccard("a b c", "b c d"), 0.5);
        assert_eq!(jaccard("", ""), 1.0);
        assert_eq!(jaccard("x", ""), 0.0);
        assert_eq!(length_ratio("abcd", "ab"), 0.5);
        assert_eq!(length_ratio("", ""), 1.0);
    }

    #[test]
    fn score_is_one_for_an_exact_match_and_zero_for_another_finish() {
        let s = compare(
            &out("hi there", "stop"),
            &out("hi there", "stop"),
            Shape::default(),
            Shape::default(),
        );
        assert_eq!((s.exact, s.score, s.finish_agree), (true, 1.0, true));
        assert!(s.agrees());
        let s = compare(
            &out("hi there", "stop"),
            &out("hi there", "length"),
            Shape::default(),
            Shape::default(),
        );
        assert_eq!((s.exact, s.score, s.finish_agree), (true, 0.0, false));
        let s = compare(
            &out("a b c", "stop"),
            &out("b c d", "stop"),
            Shape::default(),
            Shape::default(),
        );
        assert_eq!((s.exact, s.score), (false, 0.5));
        assert!(!s.agrees());
    }

    #[test]
    fn tool_calls_agree_on_names_and_arguments_as_json() {
        let mut a = out("", "tool_calls");
        a.tools.push(ToolCall {
            name: "f".into(),
            arguments: "{\"x\":1, \"y\":2}".into(),
        });
        let mut b = a.clone();
        b.tools[0].arguments = "{\"y\":2,\"x\":1}".into();
        let s = compare(&a, &b, Shape::default(), Shape::default());
        assert_eq!((s.tools_agree, s.score), (Some(true), 1.0));
        b.tools[0].name = "g".into();
        let s = compare(&a, &b, Shape::default(), Shape::default());
        assert_eq!((s.tools_agree, s.score, s.exact), (Some(false), 0.0, false));
    }

    #[test]
    fn json_and_schema_validity_are_checked_when_asked_for() {
        let body = json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
            "type": "object", "required": ["n"], "additionalProperties": false,
            "properties": {"n": {"type": "integer"}, "tags": {"type": "array", "items": {"enum": ["a", "b"]}}}
        }}}});
        let w = Wanted::of(&body);
        assert_eq!(
            shape("{\"n\": 3, \"tags\": [\"a\"]}", &w),
            Shape {
                json_valid: Some(true),
                schema_valid: Some(true)
            }
        );
        assert_eq!(
            shape("{\"n\": 3.5}", &w),
            Shape {
                json_valid: Some(true),
                schema_valid: Some(false)
            }
        );
        assert_eq!(shape("{\"n\": 3, \"z\": 1}", &w).schema_valid, Some(false));
        assert_eq!(shape("{\"tags\": [\"c\"]}", &w).schema_valid, Some(false));
        assert_eq!(
            shape("not json", &w),
            Shape {
                json_valid: Some(false),
                schema_valid: Some(false)
            }
        );
        assert_eq!(
            shape(
                "{}",
                &Wanted::of(&json!({"response_format": {"type": "json_object"}}))
            )
            .schema_valid,
            None
        );
        assert_eq!(shape("{}", &Wanted::Text), Shape::default());
        // JSON validity disagreeing: score 0 even for similar text.
        let s = compare(
            &out("{\"a\":1}", "stop"),
            &out("{\"a\":1", "stop"),
            Shape {
                json_valid: Some(true),
                schema_valid: None,
            },
            Shape {
                json_valid: Some(false),
                schema_valid: None,
            },
        );
        assert_eq!(s.score, 0.0);
    }
}
