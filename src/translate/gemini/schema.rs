//! JSON Schema (as OpenAI takes it) → the OpenAPI subset Gemini's `Schema`
//! accepts. Gemini answers 400 to any key it does not know, so only known
//! keys are kept; the rest (`additionalProperties`, `$schema`, `strict`,
//! `$defs`, ...) are dropped.

use serde_json::{Map, Value};

/// Keys copied as they are.
const PLAIN: &[&str] = &[
    "format",
    "title",
    "description",
    "nullable",
    "enum",
    "maxItems",
    "minItems",
    "required",
    "minProperties",
    "maxProperties",
    "minLength",
    "maxLength",
    "pattern",
    "example",
    "default",
    "minimum",
    "maximum",
    "propertyOrdering",
];

/// Deepest nesting kept; deeper subschemas become `{}`.
const MAX_DEPTH: usize = 64;

/// A cleaned copy of `schema`.
pub fn clean(schema: &Value) -> Value {
    clean_at(schema, 0)
}

fn clean_at(schema: &Value, depth: usize) -> Value {
    let Some(obj) = schema.as_object() else {
        return Value::Object(Map::new());
    };
    if depth >= MAX_DEPTH {
        return Value::Object(Map::new());
    }
    let mut out = Map::new();
    for (k, v) in obj {
        match k.as_str() {
            "type" => match v {
                Value::String(_) => {
                    out.insert("type".into(), v.clone());
                }
                // ["string", "null"] → "string" + nullable.
                Value::Array(types) => {
                    let mut real = types.iter().filter(|t| t.as_str() != Some("null"));
                    if let Some(t) = real.next() {
                        out.insert("type".into(), t.clone());
                    }
                    if types.iter().any(|t| t.as_str() == Some("null")) {
                        out.insert("nullable".into(), Value::Bool(true));
                    }
                }
                _ => {}
            },
            "const" => {
                out.insert("enum".into(), Value::Array(vec![v.clone()]));
            }
            "properties" => {
                if let Some(props) = v.as_object() {
                    let cleaned = props
                        .iter()
                        .map(|(name, s)| (name.clone(), clean_at(s, depth + 1)))
                        .collect();
                    out.insert("properties".into(), Value::Object(cleaned));
                }
            }
            "items" => {
                out.insert("items".into(), clean_at(v, depth + 1));
            }
            "anyOf" | "oneOf" => {
                if let Some(list) = v.as_array() {
                    let cleaned = list.iter().map(|s| clean_at(s, depth + 1)).collect();
                    out.insert("anyOf".into(), Value::Array(cleaned));
                }
            }
            k if PLAIN.contains(&k) => {
                out.insert(k.into(), v.clone());
            }
            _ => {}
        }
    }
    Value::Object(out)
}
