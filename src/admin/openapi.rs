//! The OpenAPI 3 document of the admin API (`GET /admin/openapi.json`),
//! built from the same route table the dispatcher uses
//! ([`crate::admin::ROUTES`]), with hand-written schemas of the request
//! bodies.

use super::ROUTES;
use serde_json::{json, Map, Value};

fn limits() -> Value {
    json!({
        "type": "object", "additionalProperties": false,
        "properties": {
            "rpm": {"type": "integer", "minimum": 1, "maximum": 1_000_000_000_000u64},
            "tpm": {"type": "integer", "minimum": 1, "maximum": 1_000_000_000_000u64},
            "concurrency": {"type": "integer", "minimum": 1, "maximum": 1_000_000_000_000u64}
        }
    })
}

fn budget() -> Value {
    json!({
        "type": "object", "additionalProperties": false, "required": ["window"],
        "description": "Exactly one of usd and tokens.",
        "properties": {
            "usd": {"type": "number", "exclusiveMinimum": 0, "maximum": 1e9},
            "tokens": {"type": "integer", "minimum": 1, "maximum": 1_000_000_000_000_000_000u64},
            "window": {"type": "string", "description": "minute, hour, day, month or a rolling duration such as 30d (1m to 400d)"}
        }
    })
}

fn common(nullable: bool) -> Map<String, Value> {
    let opt = |v: Value| {
        if nullable {
            let mut v = v;
            v["nullable"] = Value::Bool(true);
            v
        } else {
            v
        }
    };
    let mut m = Map::new();
    m.insert(
        "limits".into(),
        json!({"$ref": "#/components/schemas/Limits"}),
    );
    m.insert(
        "budgets".into(),
        json!({"type": "array", "maxItems": 256, "items": {"$ref": "#/components/schemas/Budget"}}),
    );
    m.insert(
        "tier".into(),
        opt(json!({"type": "string", "maxLength": 64})),
    );
    m.insert(
        "regions".into(),
        opt(json!({"type": "array", "minItems": 1, "maxItems": 256, "items": {"type": "string", "maxLength": 64}})),
    );
    m.insert(
        "metadata".into(),
        opt(json!({"type": "object", "description": "Any JSON object, at most 8 KiB."})),
    );
    m
}

fn key_fields(nullable: bool) -> Map<String, Value> {
    let mut m = common(nullable);
    let opt = |mut v: Value| {
        if nullable {
            v["nullable"] = Value::Bool(true);
        }
        v
    };
    m.insert(
        "team".into(),
        opt(json!({"type": "string", "maxLength": 128})),
    );
    m.insert(
        "models".into(),
        opt(json!({"type": "array", "maxItems": 256, "items": {"type": "string"}, "description": "Aliases the key may use; absent: all."})),
    );
    m.insert(
        "expires_at".into(),
        opt(json!({"description": "RFC 3339 time or Unix seconds; in the future.", "oneOf": [{"type": "string", "format": "date-time"}, {"type": "integer", "minimum": 0}]})),
    );
    m
}

fn object(props: Map<String, Value>, required: &[&str]) -> Value {
    json!({"type": "object", "additionalProperties": false, "required": required, "properties": props})
}

fn schemas() -> Value {
    let name = json!({"type": "string", "minLength": 1, "maxLength": 128, "pattern": "^[A-Za-z0-9_.:/@-]+$"});
    let mut create_key = key_fields(false);
    create_key.insert("name".into(), name.clone());
    let mut create_team = common(false);
    create_team.insert("name".into(), name);
    json!({
        "Limits": limits(),
        "Budget": budget(),
        "CreateKey": object(create_key, &["name"]),
        "UpdateKey": object(key_fields(true), &[]),
        "RotateKey": {"type": "object", "additionalProperties": false, "properties": {
            "grace": {"type": "string", "description": "How long the old secret keeps working: 0s to 30d (default 0s)."}
        }},
        "CreateTeam": object(create_team, &["name"]),
        "UpdateTeam": object(common(true), &[]),
        "Error": {"type": "object", "required": ["error"], "properties": {"error": {
            "type": "object", "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"}, "type": {"type": "string"},
                "param": {"type": "string", "nullable": true}, "code": {"type": "string"}
            }
        }}},
        "Any": {"type": "object"}
    })
}

fn error_response(what: &str) -> Value {
    json!({"description": what, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
}

/// The document.
pub(crate) fn document() -> Value {
    let mut paths = Map::new();
    for r in ROUTES {
        let mut params: Vec<Value> = Vec::new();
        if r.path.contains("{name}") {
            params.push(json!({"name": "name", "in": "path", "required": true, "schema": {"type": "string"}}));
        }
        for q in r.query {
            params.push(
                json!({"name": q, "in": "query", "required": false, "schema": {"type": "string"}}),
            );
        }
        let mut responses = Map::new();
        responses.insert(
            r.ok.to_string(),
            json!({"description": "Success", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Any"}}}}),
        );
        responses.insert("401".into(), error_response("No or a wrong admin key"));
        responses.insert(
            "400".into(),
            error_response("A field is invalid (param names it)"),
        );
        if r.path.contains("{name}") {
            responses.insert("404".into(), error_response("No such key or team"));
        }
        if r.path.starts_with("/admin/capture") && r.path.contains("{name}") {
            responses.insert(
                "409".into(),
                error_response("No key store is configured (captures are kept in it)"),
            );
            responses.insert(
                "503".into(),
                error_response("The key store's database is unreachable"),
            );
        }
        if r.method != "GET" {
            responses.insert(
                "409".into(),
                error_response(
                    "A duplicate name, a config (read-only) key or team, or a team still in use",
                ),
            );
            responses.insert("413".into(), error_response("The body is over 1 MiB"));
            responses.insert(
                "503".into(),
                error_response("The key store's database is unreachable"),
            );
        }
        let mut op = json!({
            "operationId": format!("{:?}", r.op),
            "summary": r.summary,
            "parameters": params,
            "responses": responses,
            "security": [{"adminKey": []}],
        });
        if let Some(schema) = r.body {
            op["requestBody"] = json!({
                "required": !matches!(schema, "RotateKey"),
                "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}
            });
        }
        let entry = paths
            .entry(r.path.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        entry[r.method.to_ascii_lowercase()] = op;
    }
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Tollgate admin API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Keys, teams, budgets and usage of a Tollgate gateway. Served on admin_listen, behind admin_key. See docs/keys.md."
        },
        "paths": paths,
        "components": {
            "schemas": schemas(),
            "securitySchemes": {"adminKey": {"type": "http", "scheme": "bearer"}}
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_documented_once_and_refs_resolve() {
        let doc = document();
        let mut n = 0;
        for r in ROUTES {
            let op = &doc["paths"][r.path][r.method.to_ascii_lowercase()];
            assert!(op.is_object(), "{} {}", r.method, r.path);
            n += 1;
            if let Some(s) = r.body {
                assert!(doc["components"]["schemas"][s].is_object(), "{s}");
            }
        }
        let documented: usize = doc["paths"]
            .as_object()
            .unwrap()
            .values()
            .map(|p| p.as_object().unwrap().len())
            .sum();
        assert_eq!(n, documented);
        let text = doc.to_string();
        for part in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
            let name = &part[..part.find('"').unwrap()];
            assert!(doc["components"]["schemas"][name].is_object(), "{name}");
        }
    }
}
