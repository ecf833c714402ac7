#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The rest of the OpenAI surface (issue 19, first slice): `/v1/moderations`,
//! `/v1/images/generations`, `/v1/audio/speech` and `/v1/rerank`, routed by
//! `model` through the real binary to a loopback upstream: the model
//! rewritten, speech audio passed byte for byte, unit prices counted in
//! `tollgate_units_total` and the access log, and every refusal (translated
//! kinds, unknown and forbidden aliases, `n` over its maximum, rerank on a
//! route that does not declare it) answered before any upstream is called.

mod support;

use bytes::Bytes;
use serde_json::{json, Value};
use std::time::Duration;
use support::{
    assert_error, Behavior, Gateway, MockUpstream, Recorded, Reply, ReplyBody, CONFIG_HEAD,
};

const KEY: &str = "tg-surface-alice-key-01";
/// May use `mod` only.
const KEY_NARROW: &str = "tg-surface-narrow-key-2";
/// Has a budget of 0.10 USD a day.
const KEY_BUDGET: &str = "tg-surface-budget-key-3";

/// Audio as a provider sends it: an MPEG frame header and bytes that are
/// not UTF-8 (a lossy text conversion anywhere would change them).
const AUDIO: &[u8] = b"\xff\xfb\x90\x64\x00\x0f\xf0\x00\x00\x69\x00\x00\x00\x08\x00\x00\x0d\x20\x00\x00\x01\xc3\x28\xa0\xa1\xfe\xfe\xff\x00\x80";

/// Answers like OpenAI (and Jina for rerank) by path; speech in three chunks.
fn upstream(r: &Recorded) -> Reply {
    if r.path.ends_with("/audio/transcriptions") {
        // A multipart form (tests/surface_form.rs covers its bytes).
        let out = json!({"text": "hello there", "usage": {"type": "tokens",
            "input_tokens": 12, "output_tokens": 2, "total_tokens": 14}});
        return Reply::json(200, out.to_string());
    }
    if r.path.ends_with("/images/edits") {
        let n = if String::from_utf8_lossy(&r.body).contains("name=\"n\"\r\n\r\n2\r\n") {
            2
        } else {
            1
        };
        let data: Vec<Value> = (0..n)
            .map(|_| json!({"url": "https://img.example/e.png"}))
            .collect();
        return Reply::json(200, json!({"created": 1, "data": data}).to_string());
    }
    let body = r.json();
    let model = body["model"].as_str().unwrap_or("?").to_string();
    if r.path.ends_with("/audio/speech") {
        let chunks = AUDIO.chunks(11).map(Bytes::copy_from_slice).collect();
        return Reply {
            status: 200,
            headers: vec![("content-type".into(), "audio/mpeg".into())],
            body: ReplyBody::Chunks(chunks, Duration::from_millis(1)),
        };
    }
    let out = if r.path.ends_with("/moderations") {
        json!({"id": "modr-1", "model": model, "results": [{"flagged": false,
            "categories": {"hate": false}, "category_scores": {"hate": 0.001}}]})
    } else if r.path.ends_with("/images/generations") {
        let n = body["n"].as_u64().unwrap_or(1);
        let data: Vec<Value> = (0..n)
            .map(|_| json!({"url": "https://img.example/1.png"}))
            .collect();
        json!({"created": 1, "data": data})
    } else if r.path.ends_with("/rerank") {
        json!({"id": "rr-1", "model": model, "results": [{"index": 1, "relevance_score": 0.9},
            {"index": 0, "relevance_score": 0.1}], "usage": {"total_tokens": 42}})
    } else {
        return Reply::no_such_path();
    };
    Reply::json(200, out.to_string())
}

fn config(up_port: u16) -> String {
    format!(
        r#"{CONFIG_HEAD}providers:
  up:
    kind: openai
    base_url: "http://127.0.0.1:{up_port}/v1"
    api_key: "sk-surface-provider"
    health_check: {{ enabled: false }}
  claude:
    kind: anthropic
    base_url: "http://127.0.0.1:{up_port}/v1"
    api_key: "sk-surface-anthropic"
    health_check: {{ enabled: false }}
models:
  mod: {{ routes: [ {{ provider: up, model: omni-moderation-latest }} ] }}
  img:
    routes: [ {{ provider: up, model: dall-e-3, price: {{ input: 0, output: 0, per_image: 0.04 }} }} ]
  tts:
    routes: [ {{ provider: up, model: tts-1, price: {{ input: 0, output: 0, per_million_characters: 15 }} }} ]
  stt: {{ routes: [ {{ provider: up, model: gpt-4o-transcribe }} ] }}
  rr: {{ routes: [ {{ provider: up, model: jina-reranker-v2, rerank: true }} ] }}
  rr-undeclared: {{ routes: [ {{ provider: up, model: jina-reranker-v2 }} ] }}
  sonnet: {{ routes: [ {{ provider: claude, model: claude-sonnet-4 }} ] }}
  mixed:
    routes:
      - {{ provider: claude, model: claude-sonnet-4 }}
      - {{ provider: up, model: second-undeclared, name: second }}
      - {{ provider: up, model: third-reranks, rerank: true, name: third }}
keys:
  - {{ name: alice, key: "{KEY}" }}
  - {{ name: narrow, key: "{KEY_NARROW}", models: [mod] }}
  - {{ name: budgeted, key: "{KEY_BUDGET}", budgets: [ {{ usd: 0.1, window: day }} ] }}
"#
    )
}

async fn post(gw: &Gateway, path: &str, key: &str, rid: &str, body: &Value) -> reqwest::Response {
    gw.http()
        .post(gw.url(path))
        .bearer_auth(key)
        .header("x-request-id", rid)
        .json(body)
        .send()
        .await
        .unwrap()
}

/// Each endpoint: the path, a request body for `alias`, and the upstream model.
fn cases(alias_of: impl Fn(&str) -> String) -> Vec<(&'static str, Value)> {
    vec![
        (
            "/v1/moderations",
            json!({"model": alias_of("mod"), "input": ["hello", "world"]}),
        ),
        (
            "/v1/images/generations",
            json!({"model": alias_of("img"), "prompt": "a lighthouse", "n": 2, "size": "1024x1024"}),
        ),
        (
            "/v1/audio/speech",
            json!({"model": alias_of("tts"), "input": "Hé, lighthouse!", "voice": "alloy"}),
        ),
        (
            "/v1/rerank",
            json!({"model": alias_of("rr"), "query": "lighthouse", "documents": ["a cat", "a lighthouse"], "top_n": 2}),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_endpoint_reaches_the_upstream_with_the_model_rewritten_and_is_counted() {
    let up = MockUpstream::start(Behavior::func(upstream)).await;
    let gw = Gateway::start(&config(up.port())).await;
    let want = [
        ("/v1/moderations", "omni-moderation-latest", "moderations"),
        ("/v1/images/generations", "dall-e-3", "images_generations"),
        ("/v1/audio/speech", "tts-1", "audio_speech"),
        ("/v1/rerank", "jina-reranker-v2", "rerank"),
    ];
    for ((path, body), (_, upstream_model, label)) in cases(str::to_string).into_iter().zip(want) {
        let rid = format!("surface-{label}");
        let resp = post(&gw, path, KEY, &rid, &body).await;
        assert_eq!(resp.status(), 200, "{path}");
        let ctype = support::header(&resp, "content-type").unwrap_or_default();
        let got = resp.bytes().await.unwrap();
        let sent = up.last().expect("the upstream was called");
        assert_eq!(sent.path, path, "{path}");
        assert_eq!(
            sent.header("authorization").as_deref(),
            Some("Bearer sk-surface-provider")
        );
        // Only `model` changed, every other member as sent.
        let mut expected = body.clone();
        expected["model"] = json!(upstream_model);
        assert_eq!(sent.json(), expected, "{path}");
        if path == "/v1/audio/speech" {
            assert_eq!(ctype, "audio/mpeg");
            assert_eq!(&got[..], AUDIO, "speech bytes arrive byte for byte");
        } else {
            assert!(ctype.starts_with("application/json"), "{path}: {ctype}");
            let v: Value = serde_json::from_slice(&got).unwrap();
            assert!(v.is_object(), "{path}: {v}");
        }
        let line = gw.access_line(&rid).await;
        assert_eq!(line["endpoint"], label, "{line}");
        assert_eq!(line["upstream_model"], upstream_model, "{line}");
        assert_eq!(line["stream"], false, "{line}");
        gw.wait_metric(
            "tollgate_requests_total",
            &[
                ("endpoint", label),
                ("request_model", body["model"].as_str().unwrap()),
                ("status_class", "2xx"),
            ],
            1.0,
        )
        .await;
    }
    assert_eq!(up.hits(), 4);

    // Images: n × per_image; no tokens to price (input 0).
    let img = gw.access_line("surface-images_generations").await;
    assert_eq!(img["images"], 2, "{img}");
    assert_eq!(img.get("characters"), None, "{img}");
    assert!(
        (img["cost_usd"].as_f64().unwrap() - 0.08).abs() < 1e-12,
        "{img}"
    );
    // Speech: characters (not bytes) × per_million_characters; the audio is
    // opaque, so the tokens are the prompt's estimate.
    let tts = gw.access_line("surface-audio_speech").await;
    let chars = "Hé, lighthouse!".chars().count() as f64;
    assert_eq!(tts["characters"], 15, "{tts}");
    assert!(
        (tts["cost_usd"].as_f64().unwrap() - chars * 15.0 / 1e6).abs() < 1e-15,
        "{tts}"
    );
    assert_eq!(tts["usage_source"], "estimated", "{tts}");
    assert!(tts["prompt_tokens"].as_u64().unwrap() >= 1, "{tts}");
    assert_eq!(tts["completion_tokens"], 0, "{tts}");
    // Rerank: Jina's `usage.total_tokens`, reported.
    let rr = gw.access_line("surface-rerank").await;
    assert_eq!(
        (rr["prompt_tokens"].as_u64(), rr["usage_source"].as_str()),
        (Some(42), Some("reported")),
        "{rr}"
    );
    // Moderations without usage: estimated from `input`, never 0.
    let m = gw.access_line("surface-moderations").await;
    assert_eq!(m["usage_source"], "estimated", "{m}");
    assert!(m["prompt_tokens"].as_u64().unwrap() >= 1, "{m}");

    gw.wait_metric(
        "tollgate_units_total",
        &[
            ("request_model", "img"),
            ("provider", "up"),
            ("unit", "image"),
        ],
        2.0,
    )
    .await;
    gw.wait_metric(
        "tollgate_units_total",
        &[
            ("request_model", "tts"),
            ("provider", "up"),
            ("unit", "character"),
        ],
        15.0,
    )
    .await;
    let text = gw.metrics_text().await;
    assert_eq!(
        support::prom::sum(&text, "tollgate_units_total", &[("request_model", "mod")]),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_never_reach_the_upstream() {
    let up = MockUpstream::start(Behavior::func(upstream)).await;
    let gw = Gateway::start(&config(up.port())).await;
    let paths = [
        "/v1/moderations",
        "/v1/images/generations",
        "/v1/audio/speech",
        "/v1/rerank",
    ];

    // A translated kind (anthropic): 400 naming the endpoint and the alias.
    for (path, body) in cases(|_| "sonnet".to_string()) {
        let resp = post(&gw, path, KEY, "t", &body).await;
        let status = resp.status().as_u16();
        let v = assert_error(
            status,
            &resp.bytes().await.unwrap(),
            (400, "invalid_request_error", "invalid_request"),
        );
        assert_eq!(v["error"]["param"], "model", "{path}: {v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains("`sonnet`") && msg.contains(path),
            "{path}: {msg}"
        );
    }
    // Unknown alias 404, an alias the key may not use 403, as for chat.
    for (path, body) in cases(|_| "no-such-alias".to_string()) {
        let resp = post(&gw, path, KEY, "u", &body).await;
        let status = resp.status().as_u16();
        assert_error(
            status,
            &resp.bytes().await.unwrap(),
            (404, "invalid_request_error", "model_not_found"),
        );
    }
    for (path, body) in cases(str::to_string).into_iter().skip(1) {
        let resp = post(&gw, path, KEY_NARROW, "f", &body).await;
        let status = resp.status().as_u16();
        assert_error(
            status,
            &resp.bytes().await.unwrap(),
            (403, "permission_error", "model_not_allowed"),
        );
    }
    // `n` past the documented maximum (10), or not a whole number.
    for n in [json!(11), json!(0), json!(2.5), json!("2")] {
        let body = json!({"model": "img", "prompt": "x", "n": n});
        let resp = post(&gw, "/v1/images/generations", KEY, "n", &body).await;
        let status = resp.status().as_u16();
        let v = assert_error(
            status,
            &resp.bytes().await.unwrap(),
            (400, "invalid_request_error", "invalid_request"),
        );
        assert_eq!(v["error"]["param"], "n", "{v}");
    }
    // Streamed images are refused, naming `stream`.
    let body = json!({"model": "img", "prompt": "x", "stream": true});
    let resp = post(&gw, "/v1/images/generations", KEY, "s", &body).await;
    let status = resp.status().as_u16();
    let v = assert_error(
        status,
        &resp.bytes().await.unwrap(),
        (400, "invalid_request_error", "invalid_request"),
    );
    assert_eq!(v["error"]["param"], "stream", "{v}");
    // Rerank on a route without `rerank: true`.
    let body = json!({"model": "rr-undeclared", "query": "q", "documents": ["d"]});
    let resp = post(&gw, "/v1/rerank", KEY, "r", &body).await;
    let status = resp.status().as_u16();
    let v = assert_error(
        status,
        &resp.bytes().await.unwrap(),
        (400, "invalid_request_error", "invalid_request"),
    );
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("`rr-undeclared`") && msg.contains("rerank: true"),
        "{msg}"
    );
    assert_eq!(v["error"]["param"], "model");
    // The wrong method is a 405 like any endpoint's.
    for path in paths {
        let resp = gw
            .http()
            .get(gw.url(path))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 405, "{path}");
    }
    assert_eq!(up.hits(), 0, "no refusal reached the upstream");
}

/// The official `openai` Python SDK's `moderations.create`,
/// `images.generate` and `audio.speech.create` (bytes intact) through the
/// gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_python_sdk_calls_moderations_images_speech_transcriptions_and_edits() {
    let up = MockUpstream::start(Behavior::func(upstream)).await;
    let gw = Gateway::start(&config(up.port())).await;
    let audio_hex: String = AUDIO.iter().map(|b| format!("{b:02x}")).collect();
    let stdout = support::sdk::run_script_with_env(
        "tests/sdk/openai_surface.py",
        format!("{}/v1", gw.base_url()),
        KEY,
        &[("TOLLGATE_EXPECT_AUDIO_HEX", &audio_hex)],
        &gw,
    )
    .await;
    assert!(stdout.contains("5 passed, 0 failed"), "{stdout}");
    let reqs = up.requests();
    let paths: Vec<&str> = reqs.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/v1/moderations",
            "/v1/images/generations",
            "/v1/audio/speech",
            "/v1/audio/transcriptions",
            "/v1/images/edits"
        ]
    );
    // The SDK's forms reached the upstream with the route's model.
    let form = String::from_utf8_lossy(&reqs[3].body);
    assert!(form.contains("\r\n\r\ngpt-4o-transcribe\r\n"), "{form}");
    assert!(form.contains("filename=\"hello.wav\""), "{form}");
    let form = String::from_utf8_lossy(&reqs[4].body);
    assert!(form.contains("\r\n\r\ndall-e-3\r\n"), "{form}");
}

/// The built-in mock provider (the demo's) answers all four endpoints
/// locally; its images are priced and counted like an upstream's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mock_provider_answers_every_new_endpoint() {
    let gw = Gateway::start(&format!(
        r#"{CONFIG_HEAD}providers:
  mock: {{ kind: mock, mock: {{ latency: 0ms, prompt_tokens: 7 }} }}
models:
  m:
    routes: [ {{ provider: mock, model: mock-1, rerank: true, price: {{ input: 0, output: 0, per_image: 0.5 }} }} ]
keys:
  - {{ name: alice, key: "{KEY}" }}
"#
    ))
    .await;
    for (path, body) in cases(|_| "m".to_string()) {
        let rid = format!("mock-{}", path.rsplit('/').next().unwrap());
        let resp = post(&gw, path, KEY, &rid, &body).await;
        assert_eq!(resp.status(), 200, "{path}");
        let ctype = support::header(&resp, "content-type").unwrap_or_default();
        let got = resp.bytes().await.unwrap();
        if path == "/v1/audio/speech" {
            assert_eq!(ctype, "audio/mpeg");
            assert!(std::str::from_utf8(&got).is_err(), "binary audio");
            continue;
        }
        let v: Value = serde_json::from_slice(&got).unwrap();
        match path {
            "/v1/moderations" => assert_eq!(v["results"].as_array().map(Vec::len), Some(2), "{v}"),
            "/v1/images/generations" => {
                assert_eq!(v["data"].as_array().map(Vec::len), Some(2), "{v}")
            }
            _ => assert_eq!(v["results"][0]["index"], 0, "{v}"),
        }
    }
    let line = gw.access_line("mock-generations").await;
    assert_eq!(
        (line["images"].as_u64(), line["cost_usd"].as_f64()),
        (Some(2), Some(1.0)),
        "{line}"
    );
    assert_eq!(line["prompt_tokens"], 7, "{line}");
    gw.wait_metric(
        "tollgate_units_total",
        &[("request_model", "m"), ("unit", "image")],
        2.0,
    )
    .await;
}

/// A spend budget reserves images at `n × per_image` before the upstream
/// is called, and settles the same figure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spend_budget_reserves_and_settles_images_at_their_unit_price() {
    let up = MockUpstream::start(Behavior::func(upstream)).await;
    let gw = Gateway::start(&config(up.port())).await;
    let image = |n: u64| json!({"model": "img", "prompt": "x", "n": n});
    let status = |r: reqwest::Response| r.status().as_u16();
    // 3 × 0.04 = 0.12 > 0.10: refused before the upstream.
    let r = post(&gw, "/v1/images/generations", KEY_BUDGET, "b1", &image(3)).await;
    let code = status(r);
    assert_eq!((code, up.hits()), (429, 0));
    // 2 × 0.04 fits, and is what is spent.
    let r = post(&gw, "/v1/images/generations", KEY_BUDGET, "b2", &image(2)).await;
    assert_eq!(status(r), 200);
    let remaining = [("level", "key"), ("name", "budgeted"), ("unit", "usd")];
    let mut left = None;
    for _ in 0..400 {
        left = support::sample(
            &gw.metrics_text().await,
            "tollgate_budget_remaining",
            &remaining,
        );
        if left.is_some_and(|l| (l - 0.02).abs() < 1e-9) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(left.is_some_and(|l| (l - 0.02).abs() < 1e-9), "{left:?}");
    // One more (0.04) no longer fits in the 0.02 left.
    let r = post(&gw, "/v1/images/generations", KEY_BUDGET, "b3", &image(1)).await;
    assert_eq!((status(r), up.hits()), (429, 1));
}

/// Speech audio is streamed through as it comes, never held until its end:
/// the client has the first chunk while the upstream still holds the rest
/// (behind a gate the test opens only then).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speech_audio_reaches_the_client_before_the_upstream_finishes() {
    use futures_util::StreamExt;
    let gate = support::Gate::new();
    let held = gate.clone();
    let (first, rest) = AUDIO.split_at(9);
    let up = MockUpstream::start(Behavior::func(move |_| Reply {
        status: 200,
        headers: vec![("content-type".into(), "audio/ogg".into())],
        body: ReplyBody::Gated(
            vec![Bytes::copy_from_slice(first), Bytes::copy_from_slice(rest)],
            held.clone(),
        ),
    }))
    .await;
    let gw = Gateway::start(&config(up.port())).await;
    let body = json!({"model": "tts", "input": "hi", "voice": "alloy", "response_format": "opus"});
    let resp = post(&gw, "/v1/audio/speech", KEY, "speech-held", &body).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        support::header(&resp, "content-type").as_deref(),
        Some("audio/ogg")
    );
    let mut stream = resp.bytes_stream();
    let mut got = Vec::new();
    while got.len() < first.len() {
        let chunk = tokio::time::timeout(Duration::from_secs(20), stream.next())
            .await
            .expect("the first audio chunk arrives while the upstream holds the rest")
            .expect("a chunk")
            .unwrap();
        got.extend_from_slice(&chunk);
    }
    assert_eq!(got, first);
    gate.open(1);
    while let Some(chunk) = stream.next().await {
        got.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(got, AUDIO);
    let line = gw.access_line("speech-held").await;
    assert_eq!(
        (line["status"].as_u64(), line["characters"].as_u64()),
        (Some(200), Some(2)),
        "{line}"
    );
}

/// In a mixed chain, the routes that cannot serve an endpoint (a translated
/// kind; for rerank, one without `rerank: true`) are skipped, never called.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_chain_skips_the_routes_that_cannot_serve_the_endpoint() {
    let up = MockUpstream::start(Behavior::func(upstream)).await;
    let gw = Gateway::start(&config(up.port())).await;
    let body = json!({"model": "mixed", "input": "hello"});
    let resp = post(&gw, "/v1/moderations", KEY, "mixed-mod", &body).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(up.last().unwrap().json()["model"], "second-undeclared");
    let body = json!({"model": "mixed", "query": "q", "documents": ["a", "b"]});
    let resp = post(&gw, "/v1/rerank", KEY, "mixed-rr", &body).await;
    assert_eq!(resp.status(), 200);
    let sent = up.last().unwrap();
    assert_eq!(
        (sent.path.as_str(), sent.json()["model"].as_str()),
        ("/v1/rerank", Some("third-reranks"))
    );
    assert_eq!(up.hits(), 2, "the skipped routes were never called");
}

/// `--test` on a config: its exit code and stderr.
fn check_config(yaml: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("t.yaml");
    let yaml = yaml
        .replace("{LISTEN}", "127.0.0.1:1")
        .replace("{METRICS}", "127.0.0.1:2")
        .replace("{TMP}", &dir.path().display().to_string());
    std::fs::write(&file, yaml).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .arg("--config")
        .arg(&file)
        .arg("--test")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn unit_prices_and_rerank_are_validated() {
    let with = |route: &str| {
        format!(
            "{CONFIG_HEAD}providers:\n  up: {{ kind: openai, base_url: \"http://127.0.0.1:9/v1\", api_key: k }}\n  claude: {{ kind: anthropic, api_key: k }}\nmodels:\n  m: {{ routes: [ {route} ] }}\nkeys:\n  - {{ name: a, key: \"{KEY}\" }}\n"
        )
    };
    let ok = with("{ provider: up, model: x, rerank: true, price: { input: 1, output: 2, per_image: 0.04, per_million_characters: 15, per_minute: 0.006 } }");
    assert_eq!(check_config(&ok).0, Some(0), "{}", check_config(&ok).1);
    for (route, names) in [
        ("{ provider: up, model: x, price: { input: 1, output: 2, per_image: -1 } }", "price.per_image"),
        (
            "{ provider: up, model: x, price: { input: 1, output: 2, per_million_characters: .nan } }",
            "price.per_million_characters",
        ),
        ("{ provider: up, model: x, price: { input: 1, output: 2, per_second: 1 } }", "per_second"),
        ("{ provider: up, model: x, price: { input: 1, output: 2, per_minute: -0.5 } }", "price.per_minute"),
        ("{ provider: claude, model: c, rerank: true }", "routes[0].rerank"),
        ("{ provider: up, model: x, rerank: yes please }", "rerank"),
    ] {
        let (code, stderr) = check_config(&with(route));
        assert_eq!(code, Some(1), "{route}: {stderr}");
        assert!(stderr.contains(names), "{route}: {stderr}");
    }
}
