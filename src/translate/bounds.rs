//! Work bounds of the request translators. Every amount of work a client's
//! body can cause while it is translated has a bound here, and a request
//! past one is refused with a 400 whose `param` names the field (see
//! "Work bounds" in `docs/config.md`):
//!
//! - [`MAX_VALUES`]: JSON values built from the body when it is parsed for
//!   translation, and again for the JSON a translator parses out of strings
//!   (tool-call arguments, tool results). Parsing is the one step whose
//!   memory grows faster than the body (a 25-byte content part costs about
//!   700 bytes as a `serde_json::Value`); every other step of a translation
//!   emits at most a few values per value it reads.
//! - [`MAX_TOOLS`]: tools per request.
//! - [`MAX_EMBED_INPUTS`]: strings in one embeddings `input` array (each
//!   becomes a whole Gemini request object).
//! - [`SchemaBudget`]: subschemas and bytes the Gemini schema inliner emits
//!   for one request, over all its schemas (inlining `$ref`s can expand a
//!   schema exponentially).

use crate::base::error::GatewayError;
use crate::translate::Unsupported;
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use std::fmt;

/// JSON values (objects, arrays, strings, numbers, booleans, nulls) one
/// parse for translation may build: the body, and separately all the JSON
/// found in its strings.
pub const MAX_VALUES: usize = 512 * 1024;

/// Tools (function declarations) per request.
pub const MAX_TOOLS: usize = 512;

/// Strings in an embeddings `input` array (OpenAI's own limit).
pub const MAX_EMBED_INPUTS: usize = 2048;

/// Steps of the schema inliner per request: each subschema visited, each
/// member of a subschema read, and each JSON value copied counts one.
pub const MAX_SCHEMA_NODES: usize = 32 * 1024;

/// Bytes of names, strings and keys the schema inliner emits per request.
pub const MAX_SCHEMA_BYTES: usize = 4 * 1024 * 1024;

/// Fields noted as dropped (`drop_unsupported_params`) per request; past
/// it one more entry says how many were left out.
pub const MAX_DROPPED: usize = 64;

/// Why a bounded parse failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// Not JSON, or nested deeper than serde_json's 127 levels: serde_json's
    /// reason.
    Invalid(String),
    /// More values than the budget had left; `top` is the top-level member
    /// being read when it ran out, if the document is an object.
    TooMany { top: Option<String> },
}

/// A budget of JSON values for the parses of one translation.
#[derive(Debug)]
pub struct Values {
    left: usize,
}

impl Default for Values {
    fn default() -> Self {
        Self::new(MAX_VALUES)
    }
}

impl Values {
    /// A budget of `n` values.
    pub fn new(n: usize) -> Self {
        Self { left: n }
    }

    /// Parses `text` as one JSON document, charging each value it builds.
    pub fn parse(&mut self, text: &[u8]) -> Result<Value, ParseError> {
        let mut state = State {
            left: self.left,
            depth: 0,
            top: None,
            exhausted: false,
        };
        let mut de = serde_json::Deserializer::from_slice(text);
        let parsed = Seed(&mut state)
            .deserialize(&mut de)
            .and_then(|v| de.end().map(|()| v));
        self.left = state.left;
        match parsed {
            Ok(v) => Ok(v),
            Err(_) if state.exhausted => Err(ParseError::TooMany { top: state.top }),
            Err(e) => Err(ParseError::Invalid(e.to_string())),
        }
    }
}

/// Parses a client body for translation, within [`MAX_VALUES`]. Past it:
/// a 400 naming the top-level field that held the excess.
pub fn parse_body(body: &[u8]) -> Result<Value, GatewayError> {
    match Values::default().parse(body) {
        Ok(v) => Ok(v),
        // The body passed the gateway's own JSON check: what serde_json
        // refuses on top of it is depth (it nests 127 levels, the check
        // 128) or a number out of range.
        Err(ParseError::Invalid(why)) => Err(GatewayError::invalid(format!(
            "The request body cannot be translated for this model's provider: {why}."
        ))),
        Err(ParseError::TooMany { top }) => Err(Unsupported {
            param: top.unwrap_or_default(),
            message: format!(
                "The request body holds more than {MAX_VALUES} JSON values (objects, arrays, \
                 strings, numbers); a request translated for this model's provider may hold \
                 at most that many."
            ),
        }
        .into()),
    }
}

/// Refuses a `tools` array longer than [`MAX_TOOLS`].
pub fn tools(len: usize) -> Result<(), Unsupported> {
    if len > MAX_TOOLS {
        return Err(Unsupported {
            param: "tools".into(),
            message: format!(
                "`tools` holds {len} tools; a request translated for this model's provider \
                 may hold at most {MAX_TOOLS}."
            ),
        });
    }
    Ok(())
}

/// The refusal for JSON inside the string at `param` that would take the
/// translation past its value budget.
pub fn too_many_values(param: &str) -> Unsupported {
    Unsupported {
        param: param.to_string(),
        message: format!(
            "The JSON in this field's string takes the request past {MAX_VALUES} JSON values \
             (counting all such fields); a request translated for this model's provider may \
             hold at most that many."
        ),
    }
}

/// Notes `param` as dropped, keeping at most [`MAX_DROPPED`] names.
pub fn note_dropped(dropped: &mut Vec<String>, param: &str) {
    match dropped.len() {
        n if n < MAX_DROPPED => dropped.push(param.to_string()),
        n if n == MAX_DROPPED => dropped.push("(and more)".into()),
        _ => {}
    }
}

/// What the Gemini schema inliner may still emit for one request.
#[derive(Debug)]
pub struct SchemaBudget {
    nodes: usize,
    bytes: usize,
}

impl Default for SchemaBudget {
    fn default() -> Self {
        Self::new(MAX_SCHEMA_NODES, MAX_SCHEMA_BYTES)
    }
}

/// The inliner ran out of budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exhausted;

impl SchemaBudget {
    /// A budget of `nodes` steps and `bytes` bytes.
    pub fn new(nodes: usize, bytes: usize) -> Self {
        Self { nodes, bytes }
    }

    /// Charges one step (a subschema visited, a member read).
    pub fn node(&mut self) -> Result<(), Exhausted> {
        self.nodes = self.nodes.checked_sub(1).ok_or(Exhausted)?;
        Ok(())
    }

    /// Charges `n` emitted bytes (a name, a key).
    pub fn bytes(&mut self, n: usize) -> Result<(), Exhausted> {
        self.bytes = self.bytes.checked_sub(n).ok_or(Exhausted)?;
        Ok(())
    }

    /// Charges a value about to be copied: each value in it is a node, each
    /// string and key its bytes. Stops at the first charge that fails.
    pub fn value(&mut self, v: &Value) -> Result<(), Exhausted> {
        self.node()?;
        match v {
            Value::String(s) => self.bytes(s.len()),
            Value::Array(a) => a.iter().try_for_each(|x| self.value(x)),
            Value::Object(o) => o.iter().try_for_each(|(k, x)| {
                self.bytes(k.len())?;
                self.value(x)
            }),
            _ => Ok(()),
        }
    }

    /// The refusal naming the schema at `param`.
    pub fn refusal(param: &str) -> Unsupported {
        Unsupported {
            param: param.to_string(),
            message: format!(
                "The schema `{param}` expands (with its `$ref`s inlined, as Gemini needs) \
                 past {MAX_SCHEMA_NODES} schema nodes or {MAX_SCHEMA_BYTES} bytes, counting \
                 every schema of the request; simplify it, or refer to a recursive type from \
                 one place only."
            ),
        }
    }
}

/// Parse state shared by the seeds of one document.
struct State {
    left: usize,
    /// Nesting of the value being read (0: the document itself).
    depth: usize,
    /// The top-level member being read.
    top: Option<String>,
    exhausted: bool,
}

impl State {
    fn charge<E: de::Error>(&mut self) -> Result<(), E> {
        match self.left.checked_sub(1) {
            Some(n) => {
                self.left = n;
                Ok(())
            }
            None => {
                self.exhausted = true;
                Err(E::custom("too many JSON values"))
            }
        }
    }
}

/// Builds one `Value`, charging the state for it and everything in it.
struct Seed<'s>(&'s mut State);

impl<'de> DeserializeSeed<'de> for Seed<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Seed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        self.0.charge()?;
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        self.0.charge()?;
        Ok(Value::from(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        self.0.charge()?;
        Ok(Value::from(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        self.0.charge()?;
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        self.0.charge()?;
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        self.0.charge()?;
        Ok(Value::String(v))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        self.0.charge()?;
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        self.visit_unit()
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let state = self.0;
        state.charge()?;
        state.depth += 1;
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(Seed(state))? {
            out.push(v);
        }
        state.depth -= 1;
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let state = self.0;
        state.charge()?;
        let top = state.depth == 0;
        state.depth += 1;
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if top {
                state.top = Some(key.clone());
            }
            let v = map.next_value_seed(Seed(state))?;
            out.insert(key, v);
        }
        state.depth -= 1;
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_like_serde_json() {
        let text = r#"{"a":[1,-2,3.5,"x\u00e9",true,null,{"b":{}}],"c":"","a":2,"d":18446744073709551615}"#;
        let want: Value = serde_json::from_str(text).unwrap();
        assert_eq!(Values::default().parse(text.as_bytes()).unwrap(), want);
        let deep = format!("{}{}", "[".repeat(129), "]".repeat(129));
        for bad in ["", "{", "[1,]", "{\"a\":1} x", "nul", "1e400", &deep] {
            assert!(
                matches!(
                    Values::default().parse(bad.as_bytes()),
                    Err(ParseError::Invalid(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn value_budget_at_the_bound_and_one_past() {
        // {"m":[0,0,0]}: the object, the array and three numbers.
        let text = br#"{"m":[0,0,0]}"#;
        assert!(Values::new(5).parse(text).is_ok());
        assert_eq!(
            Values::new(4).parse(text),
            Err(ParseError::TooMany {
                top: Some("m".into())
            })
        );
        // The budget is shared by the parses that draw on it.
        let mut v = Values::new(9);
        assert!(v.parse(text).is_ok());
        assert!(v.parse(b"[1,2,3]").is_ok());
        assert_eq!(v.parse(b"1"), Err(ParseError::TooMany { top: None }));
    }

    #[test]
    fn a_body_past_max_values_names_its_field() {
        let mut body = String::from(r#"{"model":"m","messages":["#);
        // The object, "m", the array: MAX_VALUES - 3 zeros fit.
        body.push_str(&"0,".repeat(MAX_VALUES - 4));
        body.push_str("0]}");
        assert!(parse_body(body.as_bytes()).is_ok());
        body.insert_str(body.len() - 2, ",0");
        let e = parse_body(body.as_bytes()).unwrap_err();
        assert_eq!(e.status(), 400);
        let v: Value = serde_json::from_slice(&e.body()).unwrap();
        assert_eq!(v["error"]["param"], "messages");
        assert_eq!(v["error"]["type"], "invalid_request_error");
    }

    #[test]
    fn schema_budget_counts_nodes_and_bytes() {
        let v = serde_json::json!({"ab": ["cd", 1]});
        // 4 values; 2 + 2 bytes.
        assert!(SchemaBudget::new(4, 4).value(&v).is_ok());
        assert_eq!(SchemaBudget::new(3, 4).value(&v), Err(Exhausted));
        assert_eq!(SchemaBudget::new(4, 3).value(&v), Err(Exhausted));
    }

    #[test]
    fn tools_at_the_bound_and_one_past() {
        assert!(tools(MAX_TOOLS).is_ok());
        assert_eq!(tools(MAX_TOOLS + 1).unwrap_err().param, "tools");
    }

    #[test]
    fn dropped_names_are_capped() {
        let mut d = Vec::new();
        for i in 0..1000 {
            note_dropped(&mut d, &format!("f{i}"));
        }
        assert_eq!(d.len(), MAX_DROPPED + 1);
        assert_eq!(d[MAX_DROPPED], "(and more)");
    }

    // The translators, at their bounds and one past.

    use crate::translate::{anthropic, gemini, messages, RequestOpts};
    use serde_json::json;

    fn opts(drop: bool) -> RequestOpts<'static> {
        RequestOpts {
            model: "m",
            stream: false,
            default_max_tokens: Some(16),
            drop_unsupported: drop,
        }
    }

    /// Each request translator on an OpenAI-shaped body (the Messages one on
    /// its Anthropic counterpart), returning the refused field.
    fn refused(openai: &Value, anthropic_body: &Value) -> [Option<String>; 3] {
        let o = opts(false);
        [
            gemini::chat_request(openai, &o).err().map(|e| e.param),
            anthropic::chat_request(openai, &o).err().map(|e| e.param),
            messages::request(anthropic_body, &o).err().map(|e| e.param),
        ]
    }

    #[test]
    fn every_translator_takes_max_tools_and_refuses_one_more() {
        let with = |n: usize| {
            let f: Vec<Value> = (0..n)
                .map(|i| json!({"type": "function", "function": {"name": format!("f{i}")}}))
                .collect();
            let a: Vec<Value> = (0..n)
                .map(|i| json!({"name": format!("f{i}"), "input_schema": {"type": "object"}}))
                .collect();
            let msg = json!([{"role": "user", "content": "hi"}]);
            refused(
                &json!({"model": "m", "messages": msg, "tools": f}),
                &json!({"model": "m", "max_tokens": 5, "messages": msg, "tools": a}),
            )
        };
        assert_eq!(with(MAX_TOOLS), [None, None, None]);
        let tools = Some("tools".to_string());
        assert_eq!(with(MAX_TOOLS + 1), [tools.clone(), tools.clone(), tools]);
    }

    #[test]
    fn embeddings_take_max_inputs_and_refuse_one_more() {
        let with = |n: usize| {
            let req = json!({"model": "m", "input": vec!["x"; n]});
            gemini::embed_request(&req, &opts(false))
                .err()
                .map(|e| e.param)
        };
        assert_eq!(with(MAX_EMBED_INPUTS), None);
        assert_eq!(with(MAX_EMBED_INPUTS + 1).as_deref(), Some("input"));
    }

    /// Tool-call arguments holding `{"a":[0,…]}` with `n` zeros: `n + 2`
    /// values.
    fn call_with_args(n: usize) -> Value {
        let args = format!("{{\"a\":[{}]}}", vec!["0"; n].join(","));
        json!({"model": "m", "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": args}}]}
        ]})
    }

    #[test]
    fn json_in_tool_arguments_is_bounded_at_max_values() {
        let o = opts(false);
        let at = "messages[1].tool_calls[0].function.arguments";
        let ok = call_with_args(MAX_VALUES - 2);
        assert!(gemini::chat_request(&ok, &o).is_ok());
        assert!(anthropic::chat_request(&ok, &o).is_ok());
        let past = call_with_args(MAX_VALUES - 1);
        assert_eq!(gemini::chat_request(&past, &o).unwrap_err().param, at);
        assert_eq!(anthropic::chat_request(&past, &o).unwrap_err().param, at);
    }

    #[test]
    fn json_in_tool_results_draws_on_the_same_budget() {
        let o = opts(false);
        let mut req = call_with_args(MAX_VALUES / 2);
        let result = format!("{{\"a\":[{}]}}", vec!["0"; MAX_VALUES / 2].join(","));
        req["messages"]
            .as_array_mut()
            .unwrap()
            .push(json!({"role": "tool", "tool_call_id": "c1", "content": result}));
        assert_eq!(
            gemini::chat_request(&req, &o).unwrap_err().param,
            "messages[2].content"
        );
    }

    #[test]
    fn tool_results_find_their_call_in_linear_time() {
        // Every result names the first of many calls with long ids: a
        // backwards scan per result took minutes here.
        const N: usize = 30_000;
        let id = |i: usize| format!("{}{i:08}", "c".repeat(200));
        let calls: Vec<Value> = (0..N)
            .map(|i| {
                json!({"id": id(i), "type": "function",
                            "function": {"name": format!("f{i}"), "arguments": "{}"}})
            })
            .collect();
        let mut msgs = vec![
            json!({"role": "user", "content": "hi"}),
            json!({"role": "assistant", "content": null, "tool_calls": calls}),
        ];
        for _ in 0..N {
            msgs.push(json!({"role": "tool", "tool_call_id": id(0), "content": "ok"}));
        }
        let req = json!({"model": "m", "messages": msgs});
        let started = std::time::Instant::now();
        let t = gemini::chat_request(&req, &opts(false)).unwrap();
        // Generous for a debug build on 2 busy cores (it takes about 2 s
        // alone); the backwards scan took 400 s.
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "{:?}",
            started.elapsed()
        );
        let out: Value = serde_json::from_slice(&t.body).unwrap();
        let results = &out["contents"][2]["parts"];
        assert_eq!(results.as_array().unwrap().len(), N);
        assert_eq!(results[0]["functionResponse"]["name"], "f0");
    }

    #[test]
    fn a_later_call_with_the_same_id_names_the_result() {
        let call = |name: &str| {
            json!({"role": "assistant", "content": null, "tool_calls": [
                {"id": "same", "type": "function", "function": {"name": name, "arguments": "{}"}}]})
        };
        let req = json!({"model": "m", "messages": [
            {"role": "user", "content": "hi"}, call("first"),
            {"role": "tool", "tool_call_id": "same", "content": "1"},
            {"role": "user", "content": "again"}, call("second"),
            {"role": "tool", "tool_call_id": "same", "content": "2"}]});
        let t = gemini::chat_request(&req, &opts(false)).unwrap();
        let out: Value = serde_json::from_slice(&t.body).unwrap();
        assert_eq!(
            out["contents"][2]["parts"][0]["functionResponse"]["name"],
            "first"
        );
        // "again" joins the first results' user turn.
        assert_eq!(
            out["contents"][4]["parts"][0]["functionResponse"]["name"],
            "second"
        );
    }

    #[test]
    fn dropped_fields_are_capped_in_every_translator() {
        let parts: Vec<Value> = (0..1000).map(|_| json!({"type": "video"})).collect();
        let openai = json!({"model": "m", "messages": [{"role": "user", "content": parts}]});
        let blocks: Vec<Value> = (0..1000).map(|_| json!({"type": "video"})).collect();
        let anth = json!({"model": "m", "max_tokens": 5,
                          "messages": [{"role": "user", "content": blocks}]});
        let o = opts(true);
        for dropped in [
            gemini::chat_request(&openai, &o).unwrap().dropped,
            anthropic::chat_request(&openai, &o).unwrap().dropped,
            messages::request(&anth, &o).unwrap().dropped,
        ] {
            assert_eq!(dropped.len(), MAX_DROPPED + 1);
        }
    }

    #[test]
    fn the_exponential_schema_is_refused_in_tools_and_response_format() {
        // A type that refers to itself from four properties (issue 14).
        let me = json!({"$ref": "#/$defs/Node"});
        let s = json!({"$defs": {"Node": {"type": "object",
            "properties": {"a": me, "b": me, "c": me, "d": me}}}, "$ref": "#/$defs/Node"});
        let msg = json!([{"role": "user", "content": "hi"}]);
        let o = opts(false);
        let tools = json!({"model": "m", "messages": msg, "tools": [
            {"type": "function", "function": {"name": "ok", "parameters": {"type": "object"}}},
            {"type": "function", "function": {"name": "bad", "parameters": s}}]});
        assert_eq!(
            gemini::chat_request(&tools, &o).unwrap_err().param,
            "tools[1].function.parameters"
        );
        let rf = json!({"model": "m", "messages": msg, "response_format":
            {"type": "json_schema", "json_schema": {"name": "x", "schema": s}}});
        assert_eq!(
            gemini::chat_request(&rf, &o).unwrap_err().param,
            "response_format.json_schema.schema"
        );
    }
}
