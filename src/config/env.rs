//! `${VAR}` expansion, done on the raw text before YAML parsing so that every
//! field can use it. A missing variable is an error that names it.

/// Replaces every `${NAME}` with the variable's value from `lookup`.
/// `$${` escapes a literal `${`. Errors name the variable and its line.
pub fn expand(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
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
            format!(
                "line {}: `${{` without a closing `}}`",
                line_of(text, rest, pos)
            )
        })?;
        let name = &after[..end];
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!(
                "line {}: `${{{name}}}` is not a valid variable name (use letters, digits and _)",
                line_of(text, rest, pos)
            ));
        }
        let value = lookup(name).ok_or_else(|| {
            format!(
                "line {}: environment variable `{name}` is not set: export it, or put it in the service's EnvironmentFile",
                line_of(text, rest, pos)
            )
        })?;
        // Values go into YAML: a value with a newline could inject structure.
        if value.contains('\n') || value.contains('\r') {
            return Err(format!(
                "line {}: environment variable `{name}` contains a line break, which is not allowed",
                line_of(text, rest, pos)
            ));
        }
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn line_of(whole: &str, rest: &str, pos: usize) -> usize {
    let offset = whole.len() - rest.len() + pos;
    whole[..offset].matches('\n').count() + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "A" => Some("alpha".into()),
            "NL" => Some("x\ny".into()),
            _ => None,
        }
    }

    #[test]
    fn expands_and_escapes() {
        assert_eq!(expand("k: ${A}-${A}", env).as_deref(), Ok("k: alpha-alpha"));
        assert_eq!(expand("k: $${A}", env).as_deref(), Ok("k: ${A}"));
    }

    #[test]
    fn missing_variable_is_named_with_its_line() {
        let err = expand("a: 1\nb: ${MISSING}\n", env).unwrap_err();
        assert!(err.contains("MISSING") && err.contains("line 2"), "{err}");
    }

    #[test]
    fn rejects_bad_names_and_newlines() {
        assert!(expand("${}", env).is_err());
        assert!(expand("${A", env).is_err());
        assert!(expand("${NL}", env).is_err());
    }
}
