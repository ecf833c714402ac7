//! The Gemini schema inliner (`gemini::clean_schema`) on any JSON value:
//! never panics, stays within its budget (a refusal names the field), and
//! what it emits has no references left, only keys Gemini's `Schema`
//! knows, and bounded nesting.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tollgate::translate::bounds::{SchemaBudget, Values};
use tollgate::translate::gemini::clean_schema;

const KNOWN: &[&str] = &[
    "type", "format", "title", "description", "nullable", "enum", "maxItems", "minItems",
    "required", "minProperties", "maxProperties", "minLength", "maxLength", "pattern",
    "example", "default", "minimum", "maximum", "propertyOrdering", "properties", "items",
    "anyOf",
];

/// Checks a cleaned subschema; returns its nesting in subschemas.
fn check(v: &Value, depth: usize) -> usize {
    let obj = v.as_object().expect("every subschema is an object");
    assert!(depth <= 64, "nested {depth} subschemas deep");
    let mut deepest = depth;
    for (k, x) in obj {
        assert!(KNOWN.contains(&k.as_str()), "unknown key {k:?} emitted");
        match k.as_str() {
            "properties" => {
                for s in x.as_object().expect("properties is an object").values() {
                    deepest = deepest.max(check(s, depth + 1));
                }
            }
            "items" => deepest = deepest.max(check(x, depth + 1)),
            "anyOf" => {
                for s in x.as_array().expect("anyOf is an array") {
                    deepest = deepest.max(check(s, depth + 1));
                }
            }
            _ => {}
        }
    }
    deepest
}

fuzz_target!(|data: &[u8]| {
    let Ok(schema) = Values::default().parse(data) else {
        return;
    };
    let mut budget = SchemaBudget::default();
    match clean_schema(&schema, &mut budget, "tools[0].function.parameters") {
        Ok(v) => {
            check(&v, 0);
        }
        Err(e) => assert_eq!(e.param, "tools[0].function.parameters"),
    }
});
