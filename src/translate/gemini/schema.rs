//! JSON Schema (as OpenAI takes it) → the OpenAPI subset Gemini's `Schema`
//! accepts. Gemini answers 400 to any key it does not know, so only known
//! keys are kept; the rest (`additionalProperties`, `$schema`, `strict`,
//! ...) are dropped. Gemini's `Schema` has no references: local `$ref`s
//! (`#/$defs/…`, `#/definitions/…`, as pydantic writes them) are inlined,
//! to a bounded depth (a recursive type ends in `{}`). What one request's
//! schemas may emit in all is bounded ([`SchemaBudget`]): a type referred
//! to from several places of itself expands exponentially.

use crate::translate::bounds::{Exhausted, SchemaBudget};
use crate::translate::Unsupported;
use serde_json::{Map, Value};
use std::collections::HashMap;

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
pub(super) const MAX_DEPTH: usize = 64;

/// Deepest chain of `$ref`s inlined (a recursive type is unrolled this
/// many times, then ends in `{}`).
pub(super) const MAX_REFS: usize = 16;

/// A cleaned copy of `schema`, the field at `param`, charged to `budget`
/// (one per request: see [`SchemaBudget`]). Past the budget: refused,
/// naming `param`.
pub(super) fn clean(
    schema: &Value,
    budget: &mut SchemaBudget,
    param: &str,
) -> Result<Value, Unsupported> {
    Cleaner {
        root: schema,
        budget,
        targets: HashMap::new(),
    }
    .at(schema, 0, 0)
    .map_err(|Exhausted| SchemaBudget::refusal(param))
}

struct Cleaner<'a, 'b> {
    /// Where `#/…` references point.
    root: &'a Value,
    budget: &'b mut SchemaBudget,
    /// Each reference resolved once (a JSON pointer lookup allocates).
    targets: HashMap<&'a str, Option<&'a Value>>,
}

type Out = Result<Value, Exhausted>;

/// The target of a local reference such as `#/$defs/Item`.
fn target<'a>(root: &'a Value, reference: &str) -> Option<&'a Value> {
    root.pointer(reference.strip_prefix('#')?)
}

impl<'a> Cleaner<'a, '_> {
    fn at(&mut self, schema: &'a Value, depth: usize, refs: usize) -> Out {
        self.budget.node()?;
        let Some(obj) = schema.as_object() else {
            return Ok(Value::Object(Map::new()));
        };
        if depth >= MAX_DEPTH {
            return Ok(Value::Object(Map::new()));
        }
        if let Some(reference) = obj.get("$ref").and_then(Value::as_str) {
            let root = self.root;
            let found = *self
                .targets
                .entry(reference)
                .or_insert_with(|| target(root, reference));
            let mut out = match found {
                Some(t) if refs < MAX_REFS => self.at(t, depth + 1, refs + 1)?,
                _ => Value::Object(Map::new()),
            };
            // A description next to the reference describes this use of it.
            if let (Some(d), Some(o)) = (obj.get("description"), out.as_object_mut()) {
                self.budget.value(d)?;
                o.insert("description".into(), d.clone());
            }
            return Ok(out);
        }
        self.fields(obj, depth, refs)
    }

    /// A copy of `v`, charged.
    fn copy(&mut self, v: &Value) -> Out {
        self.budget.value(v)?;
        Ok(v.clone())
    }

    fn fields(&mut self, obj: &'a Map<String, Value>, depth: usize, refs: usize) -> Out {
        let mut out = Map::new();
        for (k, v) in obj {
            // Reading a member is work even when it is dropped.
            self.budget.node()?;
            match k.as_str() {
                "type" => match v {
                    Value::String(_) => {
                        out.insert("type".into(), self.copy(v)?);
                    }
                    // ["string", "null"] → "string" + nullable.
                    Value::Array(types) => {
                        let mut real = types.iter().filter(|t| t.as_str() != Some("null"));
                        if let Some(t) = real.next() {
                            out.insert("type".into(), self.copy(t)?);
                        }
                        if types.iter().any(|t| t.as_str() == Some("null")) {
                            out.insert("nullable".into(), Value::Bool(true));
                        }
                    }
                    _ => {}
                },
                "const" => {
                    out.insert("enum".into(), Value::Array(vec![self.copy(v)?]));
                }
                "properties" => {
                    if let Some(props) = v.as_object() {
                        let mut cleaned = Map::new();
                        for (name, s) in props {
                            self.budget.bytes(name.len())?;
                            cleaned.insert(name.clone(), self.at(s, depth + 1, refs)?);
                        }
                        out.insert("properties".into(), Value::Object(cleaned));
                    }
                }
                "items" => {
                    out.insert("items".into(), self.at(v, depth + 1, refs)?);
                }
                "anyOf" | "oneOf" => {
                    if let Some(list) = v.as_array() {
                        let mut cleaned = Vec::with_capacity(list.len());
                        for s in list {
                            cleaned.push(self.at(s, depth + 1, refs)?);
                        }
                        out.insert("anyOf".into(), Value::Array(cleaned));
                    }
                }
                k if PLAIN.contains(&k) => {
                    out.insert(k.into(), self.copy(v)?);
                }
                _ => {}
            }
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::translate::bounds::{MAX_SCHEMA_BYTES, MAX_SCHEMA_NODES};
    use serde_json::json;

    fn clean1(s: &Value) -> Result<Value, Unsupported> {
        clean(
            s,
            &mut SchemaBudget::default(),
            "response_format.json_schema.schema",
        )
    }

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
        let c = clean1(&s).unwrap();
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

    /// The ~600-byte schema of issue 14: a type that refers to itself from
    /// four properties (4^16 subschemas if inlined to MAX_REFS).
    fn exponential() -> Value {
        let me = json!({"$ref": "#/$defs/Node"});
        json!({
            "$defs": {"Node": {"type": "object", "description": "a node",
                "properties": {"a": me, "b": me, "c": me, "d": me}}},
            "$ref": "#/$defs/Node"
        })
    }

    #[test]
    fn an_exponential_schema_is_refused_quickly_naming_its_field() {
        let s = exponential();
        assert!(s.to_string().len() < 600, "{}", s.to_string().len());
        let started = std::time::Instant::now();
        let e = clean1(&s).unwrap_err();
        assert_eq!(e.param, "response_format.json_schema.schema");
        assert!(e.message.contains("$ref"), "{}", e.message);
        // Generous for a debug build on a busy machine; unbounded, it ran out
        // of memory instead.
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn fan_out_to_missing_targets_is_charged_too() {
        let miss: Vec<Value> = (0..1000).map(|_| json!({"$ref": "#/nope"})).collect();
        let me = json!({"$ref": "#/$defs/N"});
        let s = json!({"$defs": {"N": {"anyOf": miss, "properties": {"a": me, "b": me}}},
                       "$ref": "#/$defs/N"});
        assert!(clean1(&s).is_err());
    }

    /// `{"properties": {"p0": {}, …}}` with `n` properties: the root, its
    /// one member and `n` subschemas are `n + 2` steps.
    fn wide(n: usize) -> Value {
        let props: Map<String, Value> = (0..n).map(|i| (format!("p{i}"), json!({}))).collect();
        json!({ "properties": props })
    }

    #[test]
    fn schema_nodes_at_the_bound_and_one_past() {
        assert!(clean1(&wide(MAX_SCHEMA_NODES - 2)).is_ok());
        assert!(clean1(&wide(MAX_SCHEMA_NODES - 1)).is_err());
    }

    #[test]
    fn the_largest_schema_openai_takes_fits() {
        // OpenAI's structured outputs allow 5,000 properties in all.
        let props: Map<String, Value> = (0..5000)
            .map(|i| {
                (
                    format!("field_{i}"),
                    json!({"type": "string", "description": "d"}),
                )
            })
            .collect();
        let s = json!({"type": "object", "properties": props, "required": ["field_0"]});
        assert!(clean1(&s).is_ok());
    }

    #[test]
    fn schema_bytes_at_the_bound_and_one_past() {
        let s = |n: usize| json!({ "description": "d".repeat(n) });
        assert!(clean1(&s(MAX_SCHEMA_BYTES)).is_ok());
        assert!(clean1(&s(MAX_SCHEMA_BYTES + 1)).is_err());
    }

    #[test]
    fn the_budget_is_shared_by_the_schemas_of_a_request() {
        let mut budget = SchemaBudget::default();
        let half = wide(MAX_SCHEMA_NODES / 2);
        assert!(clean(&half, &mut budget, "tools[0].function.parameters").is_ok());
        let e = clean(&half, &mut budget, "tools[1].function.parameters").unwrap_err();
        assert_eq!(e.param, "tools[1].function.parameters");
    }

    #[test]
    fn depth_at_the_bound_and_one_past() {
        // `d` levels of `items` above a string schema: the leaf sits at depth d.
        let nested = |d: usize| {
            let mut s = json!({"type": "string"});
            for _ in 0..d {
                s = json!({"type": "array", "items": s});
            }
            s
        };
        let leaf = |mut v: &Value| {
            while let Some(next) = v.get("items") {
                v = next;
            }
            v.clone()
        };
        assert_eq!(
            leaf(&clean1(&nested(MAX_DEPTH - 1)).unwrap()),
            json!({"type": "string"})
        );
        assert_eq!(leaf(&clean1(&nested(MAX_DEPTH)).unwrap()), json!({}));
    }
}
