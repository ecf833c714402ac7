//! `${VAR}` expansion, done on the parsed YAML document, inside string
//! values only: a variable's value becomes (part of) one string, whatever it
//! contains (`"`, `,`, `}`, ` #`, `: `, `[`, line breaks), and can never
//! change the file's structure. Comments and map keys are not expanded.
//!
//! A value that is exactly one `${VAR}` whose text is a YAML number or
//! boolean written the canonical way (`8080`, `0.5`, `true`; not `0x1F`,
//! `1e3` or `True`) becomes that plain scalar, as if written unquoted, never
//! a structure: typed parsing then reads it as a number for a number field
//! (`port: ${PORT}`) and as the very same text for a string field.

use serde_yaml::Value;
use std::fmt;

/// One step of a field path, as `serde_path_to_error` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    Key(String),
    Index(usize),
}

/// A field path: `providers.up.api_key`, `keys[0].key`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct FieldPath(Vec<Step>);

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str(".");
        }
        for (i, step) in self.0.iter().enumerate() {
            match step {
                Step::Key(k) if i == 0 => f.write_str(k)?,
                Step::Key(k) => write!(f, ".{k}")?,
                Step::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

impl FieldPath {
    /// The same path as `serde_path_to_error` gives it; `None` when it has
    /// a step that cannot be followed in the document.
    pub(crate) fn of(path: &serde_path_to_error::Path) -> Option<FieldPath> {
        use serde_path_to_error::Segment;
        path.iter()
            .map(|s| match s {
                Segment::Seq { index } => Some(Step::Index(*index)),
                Segment::Map { key } => Some(Step::Key(key.clone())),
                Segment::Enum { variant } => Some(Step::Key(variant.clone())),
                Segment::Unknown => None,
            })
            .collect::<Option<Vec<_>>>()
            .map(FieldPath)
    }
}

/// A string value that was exactly one `${NAME}`.
#[derive(Debug)]
struct Whole {
    path: FieldPath,
    name: String,
}

/// Values at least this long are masked in error messages (they may be
/// secrets: gateway keys have at least 8 characters).
const MASK_MIN: usize = 8;

/// What expansion did, for [`Expanded::retype`] and error messages.
#[derive(Default)]
pub(crate) struct Expanded {
    wholes: Vec<Whole>,
    /// `(name, value)` of every variable used, values of [`MASK_MIN`] or
    /// more characters only.
    values: Vec<(String, String)>,
}

impl fmt::Debug for Expanded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Expanded")
            .field("wholes", &self.wholes)
            .field("values", &self.values.len())
            .finish()
    }
}

impl Expanded {
    /// `msg` with every variable's value written as `${NAME}` instead: a
    /// config error must not show a secret that came from the environment.
    pub(crate) fn mask(&self, msg: &str) -> String {
        let mut out = msg.to_string();
        for (name, value) in &self.values {
            if out.contains(value.as_str()) {
                out = out.replace(value.as_str(), &format!("${{{name}}}"));
            }
        }
        out
    }

    /// The variable whose value is the whole of the field at `path`.
    pub(crate) fn variable_at(&self, path: &FieldPath) -> Option<&str> {
        self.wholes
            .iter()
            .find(|w| &w.path == path)
            .map(|w| w.name.as_str())
    }
}

/// Replaces every `${NAME}` inside the string values of `doc` with the
/// variable's value from `lookup`; `$${` writes a literal `${`. Errors name
/// the field and the variable.
pub(crate) fn expand(
    doc: &mut Value,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Expanded, String> {
    let mut out = Expanded::default();
    let mut path = FieldPath::default();
    walk(doc, &mut path, lookup, &mut out)?;
    Ok(out)
}

fn walk(
    v: &mut Value,
    path: &mut FieldPath,
    lookup: &dyn Fn(&str) -> Option<String>,
    out: &mut Expanded,
) -> Result<(), String> {
    match v {
        Value::String(s) => {
            if !s.contains("${") {
                return Ok(());
            }
            let (text, whole) =
                expand_str(s, lookup, &mut out.values).map_err(|e| format!("{path}: {e}"))?;
            let Some(name) = whole else {
                *s = text;
                return Ok(());
            };
            out.wholes.push(Whole {
                path: path.clone(),
                name,
            });
            *v = plain_scalar(text);
        }
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                path.0.push(Step::Index(i));
                walk(item, path, lookup, out)?;
                path.0.pop();
            }
        }
        Value::Mapping(m) => {
            for (k, item) in m.iter_mut() {
                let key = match k {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    _ => "?".to_string(),
                };
                if key.contains("${") {
                    let at = if path.0.is_empty() {
                        key.clone()
                    } else {
                        format!("{path}.{key}")
                    };
                    return Err(format!(
                        "{at}: `${{` in a key: variables are expanded in values only"
                    ));
                }
                path.0.push(Step::Key(key));
                walk(item, path, lookup, out)?;
                path.0.pop();
            }
        }
        Value::Tagged(t) => walk(&mut t.value, path, lookup, out)?,
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
    Ok(())
}

/// A whole variable's text as the plain scalar it spells: a number or
/// boolean when the text is exactly how YAML writes that value, else the
/// string.
fn plain_scalar(text: String) -> Value {
    if let Ok(v @ (Value::Number(_) | Value::Bool(_))) = serde_yaml::from_str::<Value>(&text) {
        if serde_yaml::to_string(&v).is_ok_and(|t| t.trim_end() == text) {
            return v;
        }
    }
    Value::String(text)
}

/// Expands one string. Also returns the variable's name when the string was
/// exactly one `${NAME}`.
fn expand_str(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    used: &mut Vec<(String, String)>,
) -> Result<(String, Option<String>), String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut whole = None;
    while let Some(pos) = rest.find("${") {
        if rest[..pos].ends_with('$') {
            out.push_str(&rest[..pos - 1]);
            out.push_str("${");
            rest = &rest[pos + 2..];
            continue;
        }
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 2..];
        let end = after.find('}').ok_or_else(|| {
            "`${` without a closing `}` (write `$${` for a literal `${`)".to_string()
        })?;
        let name = &after[..end];
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!(
                "`${{{name}}}` is not a valid variable name (use letters, digits and _)"
            ));
        }
        let value = lookup(name).ok_or_else(|| {
            format!(
                "environment variable `{name}` is not set: export it, or put it in the service's EnvironmentFile"
            )
        })?;
        if pos == 0 && end + 3 == rest.len() && rest.len() == text.len() {
            whole = Some(name.to_string());
        }
        out.push_str(&value);
        if value.len() >= MASK_MIN && !used.iter().any(|(n, _)| n == name) {
            used.push((name.to_string(), value));
            // Longest first, so a value inside another is masked after it.
            used.sort_by_key(|(_, v)| std::cmp::Reverse(v.len()));
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok((out, whole))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "A" => Some("alpha".into()),
            "NL" => Some("x\ny".into()),
            "PORT" => Some("8080".into()),
            "WORD" => Some("eighty".into()),
            "NASTY" => Some("a\"b,c}d #e: f[g]\nh{i}'j".into()),
            _ => None,
        }
    }

    fn doc(yaml: &str) -> (Value, Result<Expanded, String>) {
        let mut v: Value = serde_yaml::from_str(yaml).unwrap();
        let r = expand(&mut v, &env);
        (v, r)
    }

    #[test]
    fn expands_inside_string_values_and_escapes() {
        let (v, r) = doc("k: ${A}-${A}\nl: $${A}\nm: [\"x${A}\"]\n");
        r.unwrap();
        assert_eq!(v["k"], Value::from("alpha-alpha"));
        assert_eq!(v["l"], Value::from("${A}"));
        assert_eq!(v["m"][0], Value::from("xalpha"));
    }

    #[test]
    fn values_are_kept_verbatim_whatever_they_contain() {
        let (v, r) = doc("a: { b: \"${NASTY}\", c: 1 }\nd: ${NASTY}\ne: '${NL}'\n");
        r.unwrap();
        let nasty = env("NASTY").unwrap();
        assert_eq!(v["a"]["b"], Value::from(nasty.as_str()));
        assert_eq!(v["a"]["c"], Value::from(1), "the structure is untouched");
        assert_eq!(v["d"], Value::from(nasty.as_str()));
        assert_eq!(v["e"], Value::from("x\ny"));
        assert_eq!(v.as_mapping().unwrap().len(), 3);
    }

    #[test]
    fn errors_name_the_field_and_the_variable() {
        let (_, r) = doc("a: 1\nproviders:\n  up:\n    api_key: \"${MISSING}\"\n");
        let err = r.unwrap_err();
        assert!(
            err.contains("providers.up.api_key") && err.contains("MISSING"),
            "{err}"
        );
        let (_, r) = doc("keys:\n  - { key: \"x${MISSING}\" }\n");
        assert!(r.unwrap_err().starts_with("keys[0].key: "));
        for bad in ["k: \"${}\"", "k: \"${A\"", "k: \"${A-B}\""] {
            assert!(doc(bad).1.is_err(), "{bad}");
        }
    }

    #[test]
    fn comments_and_keys_are_not_expanded() {
        let (v, r) = doc("# ${MISSING} in a comment\nk: v # ${MISSING}\n");
        r.unwrap();
        assert_eq!(v["k"], Value::from("v"));
        let (_, r) = doc("m:\n  ${A}: 1\n");
        let err = r.unwrap_err();
        assert!(
            err.contains("m.${A}") && err.contains("values only"),
            "{err}"
        );
    }

    #[test]
    fn long_values_are_masked_in_messages() {
        let (_, r) = doc("a: \"${NASTY}\"\nb: ${A}\n");
        let e = r.unwrap();
        let nasty = env("NASTY").unwrap();
        let msg = e.mask(&format!("bad value `{nasty}` and alpha"));
        assert_eq!(msg, "bad value `${NASTY}` and alpha", "short values stay");
    }

    #[test]
    fn a_whole_variable_spelling_a_number_becomes_a_plain_scalar() {
        let (v, r) = doc("port: ${PORT}\nq: \"${PORT}\"\nw: ${WORD}\np: \"${PORT}0\"\n");
        let e = r.unwrap();
        assert_eq!(v["port"], Value::from(8080));
        assert_eq!(v["q"], Value::from(8080), "quoted or not");
        assert_eq!(v["w"], Value::from("eighty"));
        assert_eq!(v["p"], Value::from("80800"), "not a whole variable");
        let at = |k: &str| FieldPath(vec![Step::Key(k.into())]);
        assert_eq!(e.variable_at(&at("port")), Some("PORT"));
        assert_eq!(e.variable_at(&at("p")), None);
        for (text, want) in [
            ("8080", Value::from(8080)),
            ("-3", Value::from(-3)),
            ("0.5", Value::from(0.5)),
            ("true", Value::from(true)),
            ("0x1F", Value::from("0x1F")),
            ("1e3", Value::from("1e3")),
            ("007", Value::from("007")),
            ("+5", Value::from("+5")),
            ("True", Value::from("True")),
            ("null", Value::from("null")),
            ("[1, 2]", Value::from("[1, 2]")),
            ("{a: 1}", Value::from("{a: 1}")),
        ] {
            assert_eq!(plain_scalar(text.to_string()), want, "{text}");
        }
    }
}
