//! JSON Schema (as OpenAI takes it) → the OpenAPI subset Gemini's `Schema`
//! accepts. Gemini answers 400 to any key it does not know, so only known
//! keys are kept; the rest (`additionalProperties`, `$schema`, `strict`,
//! ...) are dropped. Gemini's `Schema` has no references: local `$ref`s
//! (`#/$defs/…`, `#/definitions/…`, as pydantic writes them) are inlined,
//! to a bounded depth (a recursive type ends in `{}`).

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

/// Deepest chain of `$ref`s inlined.
const MAX_REFS: usize = 16;

/// A cleaned copy of `schema`.
pub fn clean(schema: &Value) -> Value {
    Cleaner { root: schema }.at(schema, 0, 0)
}

struct Cleaner<'a> {
    /// Where `#/…` references point.
    root: &'a Value,
}

impl Cleaner<'_> {
    /// The target of a local reference such as `#/$defs/Item`.
    fn target(&self, reference: &str) -> Option<&Value> {
        let pointer = reference.strip_prefix('#')?;
        self.root.pointer(pointer)
    }

    fn at(&self, schema: &Value, depth: usize, refs: usize) -> Value {
        let Some(obj) = schema.as_object() else {
            return Value::Object(Map::new());
        };
        if depth >= MAX_DEPTH {
            return Value::Object(Map::new());
        }
        if let Some(reference) = obj.get("$ref").and_then(Value::as_str) {
            let mut out = match self.target(reference) {
                Some(t) if refs < MAX_REFS => self.at(t, depth + 1, refs + 1),
                _ => Value::Object(Map::new()),
            };
            // A description next to the reference describes this use of it.
            if let (Some(d), Some(o)) = (obj.get("description"), out.as_object_mut()) {
                o.insert("description".into(), d.clone());
            }
            return out;
        }
        self.fields(obj, depth, refs)
    }

    fn fields(&self, obj: &Map<String, Value>, depth: usize, refs: usize) -> Value {
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
                            .map(|(name, s)| (name.clone(), self.at(s, depth + 1, refs)))
                            .collect();
                        out.insert("properties".into(), Value::Object(cleaned));
                    }
                }
                "items" => {
                    out.insert("items".into(), self.at(v, depth + 1, refs));
                }
                "anyOf" | "oneOf" => {
                    if let Some(list) = v.as_array() {
                        let cleaned = list.iter().map(|s| self.at(s, depth + 1, refs)).collect();
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
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn local_refs_are_inlined_and_recursion_is_bounded() {
        let s = json!({
            "$defs": {
                "City": {"type": "object", "properties": {"name": {"type": "string"}},
                         "required": ["name"], "additionalProperties": false},
                "Node": {"type": "object", "properties": {"next": {"$ref": "#/$defs/Node"}}}
            },
            "type": "object",
            "properties": {
                "home": {"$ref": "#/$defs/City", "description": "Where they live"},
                "trips": {"type": "array", "items": {"$ref": "#/$defs/City"}},
                "list": {"$ref": "#/$defs/Node"},
                "odd": {"$ref": "https://example.com/x.json"}
            }
        });
        let c = clean(&s);
        assert!(c.get("$defs").is_none());
        assert_eq!(
            c["properties"]["home"],
            json!({"type": "object", "properties": {"name": {"type": "string"}},
                   "required": ["name"], "description": "Where they live"})
        );
        assert_eq!(
            c["properties"]["trips"]["items"]["required"],
            json!(["name"])
        );
        assert_eq!(c["properties"]["odd"], json!({}));
        // The recursive type is cut off, not followed forever.
        let mut depth = 0;
        let mut node = &c["properties"]["list"];
        while let Some(next) = node.get("properties").and_then(|p| p.get("next")) {
            node = next;
            depth += 1;
        }
        assert!(depth > 0 && depth <= MAX_REFS, "{depth}");
    }
}
