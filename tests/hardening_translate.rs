//! Client structures that expand when translated (RELIABILITY row 37,
//! issue 14), end to end: the real gateway in front of mock Gemini,
//! Anthropic and OpenAI upstreams on loopback. A schema whose `$ref`s fan
//! out, thousands of tools, too many JSON values, deeply nested content
//! parts: each gets a 400 naming its field, quickly, without reaching an
//! upstream, and the gateway keeps serving with its memory bounded. At each
//! bound the request still goes through.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{assert_error, Behavior, Gateway, MockUpstream, Recorded, Reply, CONFIG_HEAD};
use tollgate::translate::bounds::{MAX_EMBED_INPUTS, MAX_TOOLS, MAX_VALUES};

const KEY: &str = "tg-hardening-translate-1";

fn gemini_fixture(name: &str) -> String {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Answers chat and embeddings calls of every kind with a fixture.
fn mock(r: &Recorded) -> Reply {
    let p = r.path.as_str();
    let name = if p.ends_with(":generateContent") {
        "gemini/generate_text.json"
    } else if p.ends_with(":batchEmbedContents") {
        "gemini/embed_batch.json"
    } else if p.ends_with("/messages") {
        "anthropic/message_text.json"
    } else {
        "messages/response_text.openai.json"
    };
    Reply::json(200, gemini_fixture(name))
}

struct Setup {
    gem: MockUpstream,
    ant: MockUpstream,
    oai: MockUpstream,
    gw: Gateway,
}

impl Setup {
    async fn start() -> Setup {
        let gem = MockUpstream::start(Behavior::func(mock)).await;
        let ant = MockUpstream::start(Behavior::func(mock)).await;
        let oai = MockUpstream::start(Behavior::func(mock)).await;
        let (g, a, o) = (gem.port(), ant.port(), oai.port());
        let gw = Gateway::start(&format!(
            r#"{CONFIG_HEAD}providers:
  gem:
    kind: gemini
    base_url: "http://127.0.0.1:{g}/v1beta"
    api_key: "AIzaSyHardeningTranslateKey0123456789ab"
    retry: {{ attempts: 1 }}
    health_check: {{ enabled: false }}
  ant:
    kind: anthropic
    base_url: "http://127.0.0.1:{a}/v1"
    api_key: "sk-ant-hardening"
    retry: {{ attempts: 1 }}
    health_check: {{ enabled: false }}
  oai:
    kind: openai
    base_url: "http://127.0.0.1:{o}/v1"
    api_key: "sk-oai-hardening"
    health_check: {{ enabled: false }}
models:
  gemini: {{ routes: [ {{ provider: gem, model: gemini-2.5-flash }} ] }}
  gemini-emb: {{ routes: [ {{ provider: gem, model: gemini-embedding-001 }} ] }}
  claude: {{ routes: [ {{ provider: ant, model: claude-sonnet-4-5, max_tokens: 64 }} ] }}
  plain: {{ routes: [ {{ provider: oai, model: gpt-4o-mini }} ] }}
keys:
  - {{ name: t, key: "{KEY}" }}
"#
        ))
        .await;
        Setup { gem, ant, oai, gw }
    }

    fn hits(&self) -> usize {
        self.gem.hits() + self.ant.hits() + self.oai.hits()
    }

    /// Posts `body` to `path`; returns the status and the body.
    async fn post(&self, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
        let resp = support::client()
            .post(self.gw.url(path))
            .header("authorization", format!("Bearer {KEY}"))
            .header("x-api-key", KEY)
            .header("anthropic-version", "2023-06-01")
            .header("content-type", "application/json")
            .body(body.to_vec())
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}; log:\n{}", self.gw.logs()));
        let status = resp.status().as_u16();
        (status, resp.bytes().await.unwrap().to_vec())
    }

    /// Sends `body` and asserts a 400 `invalid_request_error` naming
    /// `param`, answered without reaching any upstream.
    async fn refused(&self, path: &str, body: &Value, param: &str) {
        let before = self.hits();
        let (status, resp) = self.post(path, body.to_string().as_bytes()).await;
        let v = assert_error(
            status,
            &resp,
            (400, "invalid_request_error", "unsupported_parameter"),
        );
        assert_eq!(v["error"]["param"], param, "{v}");
        assert_eq!(self.hits(), before, "a refused request reached an upstream");
    }

    /// A plain chat request on `alias` still answers 200.
    async fn healthy(&mut self, alias: &str) {
        assert!(
            self.gw.is_running(),
            "the gateway died; log:\n{}",
            self.gw.logs()
        );
        let (status, body) = self
            .post("/v1/chat/completions", &chat(alias, json!({})))
            .await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    }
}

/// A chat body for `alias` with `extra`'s members added.
fn chat(alias: &str, extra: Value) -> Vec<u8> {
    let mut b = json!({"model": alias, "messages": [{"role": "user", "content": "hi"}]});
    for (k, v) in extra.as_object().unwrap() {
        b[k] = v.clone();
    }
    b.to_string().into_bytes()
}

/// The ~600-byte schema of issue 14: a `$defs` entry that refers to itself
/// from several properties (4^16 subschemas once inlined).
fn exponential_schema() -> Value {
    let me = json!({"$ref": "#/$defs/Node"});
    json!({
        "$defs": {"Node": {"type": "object", "description": "A node of the tree.",
            "properties": {"left": me, "right": me, "up": me, "down": me},
            "required": ["left", "right"]}},
        "type": "object",
        "properties": {"root": {"$ref": "#/$defs/Node"}, "name": {"type": "string"}}
    })
}

fn peak_rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib / 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exponential_schema_is_a_quick_400_on_a_gemini_route_and_the_gateway_lives() {
    let mut s = Setup::start().await;
    let schema = exponential_schema();
    let rf = json!({"type": "json_schema", "json_schema": {"name": "tree", "schema": schema}});
    let body = chat("gemini", json!({ "response_format": rf }));
    assert!(body.len() < 700, "{} bytes", body.len());
    let before = peak_rss_mib(s.gw.pid());
    let started = Instant::now();
    // Several at once: each would have taken the whole process down.
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (url, body) = (s.gw.url("/v1/chat/completions"), body.clone());
        tasks.push(tokio::spawn(async move {
            let r = support::client()
                .post(url)
                .header("authorization", format!("Bearer {KEY}"))
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.bytes().await.unwrap())
        }));
    }
    for t in tasks {
        let (status, resp) = t.await.unwrap();
        let v = assert_error(
            status,
            &resp,
            (400, "invalid_request_error", "unsupported_parameter"),
        );
        assert_eq!(v["error"]["param"], "response_format.json_schema.schema");
    }
    // Generous on 2 shared cores; unbounded, the process died instead.
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(s.hits(), 0, "no upstream was to be called");
    let grew = peak_rss_mib(s.gw.pid()).saturating_sub(before);
    eprintln!(
        "four exponential schemas: {:?}, peak RSS +{grew} MiB",
        started.elapsed()
    );
    assert!(grew < 256, "peak RSS grew by {grew} MiB");

    // The same schema as a tool's parameters, after a harmless tool.
    let tools = json!([
        {"type": "function", "function": {"name": "ok", "parameters": {"type": "object"}}},
        {"type": "function", "function": {"name": "tree", "parameters": schema}}
    ]);
    let body: Value = serde_json::from_slice(&chat("gemini", json!({ "tools": tools }))).unwrap();
    s.refused(
        "/v1/chat/completions",
        &body,
        "tools[1].function.parameters",
    )
    .await;

    // Through the Messages endpoint (Anthropic → OpenAI → Gemini): refused
    // in Anthropic's shape, naming the field.
    let before = s.hits();
    let msg = json!({"model": "gemini", "max_tokens": 16,
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"name": "tree", "input_schema": schema}]});
    let (status, resp) = s.post("/v1/messages", msg.to_string().as_bytes()).await;
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&resp));
    let v: Value = serde_json::from_slice(&resp).unwrap();
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("tools[0].function.parameters"),
        "{v}"
    );
    assert_eq!(s.hits(), before);

    s.healthy("gemini").await;
    assert_eq!(s.gem.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_tools_pass_and_one_more_is_a_400_on_every_translated_route() {
    let mut s = Setup::start().await;
    let openai_tools = |n: usize| -> Value {
        (0..n)
            .map(|i| {
                json!({"type": "function", "function": {"name": format!("f{i}"),
                "parameters": {"type": "object", "properties": {"x": {"type": "string"}}}}})
            })
            .collect()
    };
    let anthropic_tools = |n: usize| -> Value {
        (0..n)
            .map(|i| json!({"name": format!("f{i}"), "input_schema": {"type": "object"}}))
            .collect()
    };
    let messages = |alias: &str, n: usize| {
        json!({"model": alias, "max_tokens": 16, "tools": anthropic_tools(n),
               "messages": [{"role": "user", "content": "hi"}]})
    };
    for alias in ["gemini", "claude"] {
        // Thousands of tools: refused, naming `tools`.
        let many: Value =
            serde_json::from_slice(&chat(alias, json!({"tools": openai_tools(5000)}))).unwrap();
        s.refused("/v1/chat/completions", &many, "tools").await;
        let past: Value =
            serde_json::from_slice(&chat(alias, json!({"tools": openai_tools(MAX_TOOLS + 1)})))
                .unwrap();
        s.refused("/v1/chat/completions", &past, "tools").await;
        // At the bound: translated and sent.
        let before = s.hits();
        let (status, body) = s
            .post(
                "/v1/chat/completions",
                &chat(alias, json!({"tools": openai_tools(MAX_TOOLS)})),
            )
            .await;
        assert_eq!(status, 200, "{alias}: {}", String::from_utf8_lossy(&body));
        assert_eq!(s.hits(), before + 1);
    }
    // The Messages endpoint's own translation (Anthropic → OpenAI).
    let before = s.hits();
    let (status, resp) = s
        .post(
            "/v1/messages",
            messages("plain", MAX_TOOLS + 1).to_string().as_bytes(),
        )
        .await;
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&resp));
    let v: Value = serde_json::from_slice(&resp).unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("tools:"),
        "{v}"
    );
    assert_eq!(s.hits(), before);
    let (status, resp) = s
        .post(
            "/v1/messages",
            messages("plain", MAX_TOOLS).to_string().as_bytes(),
        )
        .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&resp));
    assert_eq!(s.oai.hits(), 1);
    s.healthy("gemini").await;
}

/// A chat body for `alias` whose `stop` array holds `n` strings: the body
/// is `n + 7` JSON values.
fn with_stops(alias: &str, n: usize) -> Vec<u8> {
    let mut b = String::from(r#"{"model":""#);
    b.push_str(alias);
    b.push_str(r#"","messages":[{"role":"user","content":"hi"}],"stop":["#);
    b.push_str(&vec![r#""""#; n].join(","));
    b.push_str("]}");
    b.into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_values_of_a_translated_body_are_bounded_at_max_values() {
    let s = Setup::start().await;
    // At the bound: parsed, translated, sent.
    let (status, body) = s
        .post(
            "/v1/chat/completions",
            &with_stops("gemini", MAX_VALUES - 7),
        )
        .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(s.gem.hits(), 1);
    // One past: refused, naming the member that held the excess.
    let (status, resp) = s
        .post(
            "/v1/chat/completions",
            &with_stops("gemini", MAX_VALUES - 6),
        )
        .await;
    let v = assert_error(
        status,
        &resp,
        (400, "invalid_request_error", "unsupported_parameter"),
    );
    assert_eq!(v["error"]["param"], "stop", "{v}");
    assert_eq!(s.gem.hits(), 1);
    // Only translation parses the body into values: a passthrough route
    // forwards the same body.
    let (status, body) = s
        .post("/v1/chat/completions", &with_stops("plain", MAX_VALUES * 2))
        .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(s.oai.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_content_parts_and_embedding_batches_are_refused_by_name() {
    let mut s = Setup::start().await;
    // Content parts nested as deep as the body may nest (128 levels):
    // a part must be an object with a type, and is refused by its path.
    let mut part = json!("x");
    for _ in 0..120 {
        part = json!([part]);
    }
    let nested = json!({"model": "gemini",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, part]}]});
    s.refused(
        "/v1/chat/completions",
        &nested,
        "messages[0].content[1].type",
    )
    .await;
    let nested = json!({"model": "claude",
        "messages": [{"role": "user", "content": [part]}]});
    s.refused(
        "/v1/chat/completions",
        &nested,
        "messages[0].content[0].type",
    )
    .await;
    // Deeper than the body may nest: refused before any translation.
    let mut deep = String::from(r#"{"model":"gemini","messages":"#);
    deep.push_str(&"[".repeat(100_000));
    deep.push_str(&"]".repeat(100_000));
    deep.push('}');
    let (status, resp) = s.post("/v1/chat/completions", deep.as_bytes()).await;
    assert_error(
        status,
        &resp,
        (400, "invalid_request_error", "invalid_request"),
    );
    assert_eq!(s.hits(), 0);

    // An embeddings batch: at the bound it goes through, one past is refused.
    let batch = |n: usize| json!({"model": "gemini-emb", "input": vec!["text"; n]});
    let big: Value = batch(MAX_EMBED_INPUTS + 1);
    let before = s.hits();
    let (status, resp) = s.post("/v1/embeddings", big.to_string().as_bytes()).await;
    let v = assert_error(
        status,
        &resp,
        (400, "invalid_request_error", "unsupported_parameter"),
    );
    assert_eq!(v["error"]["param"], "input");
    assert_eq!(s.hits(), before);
    let (status, _) = s
        .post(
            "/v1/embeddings",
            batch(MAX_EMBED_INPUTS).to_string().as_bytes(),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(s.hits(), before + 1);
    s.healthy("gemini").await;
}
