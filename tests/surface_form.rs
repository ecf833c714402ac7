#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The multipart endpoints (issue 19): `/v1/images/edits`,
//! `/v1/audio/transcriptions` and `/v1/audio/translations` through the real
//! binary to a loopback upstream. The `model` field is rewritten in place
//! and every other byte (a 1 MiB binary file part included) arrives as
//! sent; chunked uploads work; transcriptions are priced by their answer's
//! tokens or duration; every refusal (no model, too many parts, not a form,
//! a translated kind, `stream`, `n`) is a 400 before any upstream call.

mod support;

use bytes::Bytes;
use serde_json::{json, Value};
use std::convert::Infallible;
use support::{assert_error, Behavior, Gateway, MockUpstream, Recorded, Reply, CONFIG_HEAD};

const KEY: &str = "tg-surface-form-key-001";
const BOUNDARY: &str = "----tollgate-form-7MA4YWxkTrZu0gW";

/// Answers like OpenAI by path: a transcription's `usage` in tokens, or
/// whisper's `verbose_json` with a 90 s `duration` when the form asks.
fn upstream(r: &Recorded) -> Reply {
    let body = String::from_utf8_lossy(&r.body);
    let out = if r.path.ends_with("/images/edits") {
        json!({"created": 1, "data": [{"url": "https://img.example/e.png"}]})
    } else if r.path.ends_with("/audio/transcriptions") || r.path.ends_with("/audio/translations") {
        if body.contains("verbose_json") {
            json!({"task": "transcribe", "duration": 90.0, "text": "hello there", "segments": []})
        } else {
            json!({"text": "hello there", "usage": {"type": "tokens", "input_tokens": 120,
                "output_tokens": 3, "total_tokens": 123}})
        }
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
    api_key: "sk-form-provider"
    health_check: {{ enabled: false }}
  claude:
    kind: anthropic
    base_url: "http://127.0.0.1:{up_port}/v1"
    api_key: "sk-form-anthropic"
    health_check: {{ enabled: false }}
models:
  stt:
    routes: [ {{ provider: up, model: whisper-1, price: {{ input: 1, output: 2, per_minute: 0.006 }} }} ]
  edit:
    routes: [ {{ provider: up, model: gpt-image-1, price: {{ input: 0, output: 0, per_image: 0.04 }} }} ]
  sonnet: {{ routes: [ {{ provider: claude, model: claude-sonnet-4 }} ] }}
keys:
  - {{ name: alice, key: "{KEY}" }}
"#
    )
}

/// A form: text fields, then one file part.
fn form(fields: &[(&str, &str)], file: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    for (k, v) in fields {
        b.extend_from_slice(
            format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n")
                .as_bytes(),
        );
    }
    b.extend_from_slice(
        format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: audio/wav\r\n\r\n").as_bytes(),
    );
    b.extend_from_slice(file);
    b.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    b
}

/// 1 MiB that is not UTF-8 and holds CRLFs and dashes (but never the
/// boundary).
fn binary_file() -> Vec<u8> {
    (0..1024 * 1024u32)
        .map(|i| match i % 97 {
            0 => b'\r',
            1 => b'\n',
            2 | 3 => b'-',
            _ => (i.wrapping_mul(2_654_435_761) >> 24) as u8 | 0x80,
        })
        .collect()
}

fn content_type() -> String {
    format!("multipart/form-data; boundary={BOUNDARY}")
}

async fn post(gw: &Gateway, path: &str, rid: &str, ct: &str, body: Vec<u8>) -> reqwest::Response {
    gw.http()
        .post(gw.url(path))
        .bearer_auth(KEY)
        .header("x-request-id", rid)
        .header("content-type", ct)
        .body(body)
        .send()
        .await
        .unwrap()
}

/// `body` with `from` (which occurs once) replaced by `to`.
fn replaced(body: &[u8], from: &str, to: &str) -> Vec<u8> {
    let at = body
        .windows(from.len())
        .position(|w| w == from.as_bytes())
        .unwrap();
    assert!(body[at + 1..]
        .windows(from.len())
        .all(|w| w != from.as_bytes()));
    [&body[..at], to.as_bytes(), &body[at + from.len()..]].concat()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_model_field_is_rewritten_and_a_1_mib_binary_file_arrives_intact() {
    let up = MockUpstream::start(Behavior::func(upstream)).await;
    let gw = Gateway::start(&config(up.port())).await;
    let file = binary_file();
    assert!(std::str::from_utf8(&file).is_err());
    let cases = [
        (
            "/v1/audio/transcriptions",
            "stt",
            "whisper-1",
            "audio_transcriptions",
        ),
        (
            "/v1/audio/translations",
            "stt",
            "whisper-1",
            "audio_translations",
        ),
        ("/v1/images/edits", "edit", "gpt-image-1", "images_edits"),
    ];
    for (path, alias, upstream_model, label) in cases {
        let fields = [("model", alias), ("prompt", "a lighthouse"), ("n", "3")];
        let fields = if alias == "edit" {
            &fields[..]
        } else {
            &fields[..2]
        };
        let body = form(fields, &file);
        let rid = format!("form-{label}");
        let resp = post(&gw, path, &rid, &content_type(), body.clone()).await;
        assert_eq!(resp.status(), 200, "{path}");
        let v: Value = resp.json().await.unwrap();
        assert!(v.is_object(), "{v}");
        let sent = up.last().expect("the upstream was called");
        assert_eq!(sent.path, path);
        // Only the model's bytes changed; the boundary is kept and the
        // length recomputed.
        let want = replaced(
            &body,
            &format!("\r\n\r\n{alias}\r\n"),
            &format!("\r\n\r\n{upstream_model}\r\n"),
        );
        assert_eq!(sent.body.len(), want.len(), "{path}");
        assert!(
            sent.body[..] == want[..],
            "{path}: the body differs beyond the model"
        );
        assert_eq!(sent.header("content-type"), Some(content_type()));
        assert_eq!(sent.header("content-length"), Some(want.len().to_string()));
        let line = gw.access_line(&rid).await;
        assert_eq!(line["endpoint"], label, "{line}");
        assert_eq!(line["upstream_model"], upstream_model, "{line}");
        gw.wait_metric(
            "tollgate_requests_total",
            &[
                ("endpoint", label),
                ("request_model", alias),
                ("status_class", "2xx"),
            ],
            1.0,
        )
        .await;
    }
    // gpt-4o-transcribe's token usage, reported and priced by the tokens.
    let t = gw.access_line("form-audio_transcriptions").await;
    assert_eq!(
        (
            t["prompt_tokens"].as_u64(),
            t["completion_tokens"].as_u64(),
            t["usage_source"].as_str()
        ),
        (Some(120), Some(3), Some("reported")),
        "{t}"
    );
    assert!(
        (t["cost_usd"].as_f64().unwrap() - (120.0 + 6.0) / 1e6).abs() < 1e-12,
        "{t}"
    );
    // Image edits: n × per_image.
    let e = gw.access_line("form-images_edits").await;
    assert_eq!(e["images"], 3, "{e}");
    assert!(
        (e["cost_usd"].as_f64().unwrap() - 0.12).abs() < 1e-12,
        "{e}"
    );
    assert_eq!(up.hits(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verbose_json_duration_is_priced_per_minute() {
    let up = MockUpstream::start(Behavior::func(upstream)).await;
    let gw = Gateway::start(&config(up.port())).await;
    let body = form(
        &[("model", "stt"), ("response_format", "verbose_json")],
        b"RIFF\0\0",
    );
    let resp = post(
        &gw,
        "/v1/audio/transcriptions",
        "dur",
        &content_type(),
        body,
    )
    .await;
    assert_eq!(resp.status(), 200);
    let line = gw.access_line("dur").await;
    assert_eq!(line["audio_seconds"], 90, "{line}");
    assert_eq!(line["usage_source"], "estimated", "{line}");
    // 1.5 min × 0.006, plus the estimated text tokens.
    let cost = line["cost_usd"].as_f64().unwrap();
    assert!((0.009..0.0091).contains(&cost), "{line}");
    gw.wait_metric(
        "tollgate_units_total",
        &[("request_model", "stt"), ("unit", "second")],
        90.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_multipart_upload_works() {
    let up = MockUpstream::start(Behavior::func(upstream)).await;
    let gw = Gateway::start(&config(up.port())).await;
    let body = form(&[("model", "stt")], &binary_file());
    let pieces: Vec<Result<Bytes, Infallible>> = body
        .chunks(4096)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let resp = gw
        .http()
        .post(gw.url("/v1/audio/transcriptions"))
        .bearer_auth(KEY)
        .header("content-type", content_type())
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            pieces,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let sent = up.last().unwrap();
    let want = replaced(&body, "\r\n\r\nstt\r\n", "\r\n\r\nwhisper-1\r\n");
    assert!(sent.body[..] == want[..]);
    assert_eq!(sent.header("transfer-encoding"), None);
    assert_eq!(sent.header("content-length"), Some(want.len().to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_400s_that_never_reach_the_upstream() {
    let up = MockUpstream::start(Behavior::func(upstream)).await;
    let gw = Gateway::start(&config(up.port())).await;
    let ct = content_type();
    let path = "/v1/audio/transcriptions";
    let refused = |status: u16, body: &[u8]| {
        assert_error(
            status,
            body,
            (400, "invalid_request_error", "invalid_request"),
        )
    };
    // No model field.
    let resp = post(&gw, path, "r1", &ct, form(&[("prompt", "x")], b"a")).await;
    let v = refused(resp.status().as_u16(), &resp.bytes().await.unwrap());
    assert_eq!(v["error"]["param"], "model", "{v}");
    // 257 parts: one past the bound.
    let many: Vec<(&str, &str)> = std::iter::once(("model", "stt"))
        .chain(std::iter::repeat_n(("x", "1"), 255))
        .collect();
    let resp = post(&gw, path, "r2", &ct, form(&many, b"a")).await;
    let v = refused(resp.status().as_u16(), &resp.bytes().await.unwrap());
    assert!(
        v["error"]["message"].as_str().unwrap().contains("256"),
        "{v}"
    );
    // 256 parts is fine (checked below as the one upstream hit).
    let ok: Vec<(&str, &str)> = std::iter::once(("model", "stt"))
        .chain(std::iter::repeat_n(("x", "1"), 254))
        .collect();
    // A text field past 64 KiB.
    let big = "p".repeat(64 * 1024 + 1);
    let resp = post(
        &gw,
        path,
        "r3",
        &ct,
        form(&[("model", "stt"), ("prompt", &big)], b"a"),
    )
    .await;
    refused(resp.status().as_u16(), &resp.bytes().await.unwrap());
    // Not a form: JSON, no boundary, unterminated.
    let json_body = br#"{"model":"stt"}"#.to_vec();
    let resp = post(&gw, path, "r4", "application/json", json_body).await;
    refused(resp.status().as_u16(), &resp.bytes().await.unwrap());
    let resp = post(
        &gw,
        path,
        "r5",
        "multipart/form-data",
        form(&[("model", "stt")], b"a"),
    )
    .await;
    refused(resp.status().as_u16(), &resp.bytes().await.unwrap());
    let mut cut = form(&[("model", "stt")], b"abc");
    cut.truncate(cut.len() - BOUNDARY.len() - 6);
    let resp = post(&gw, path, "r6", &ct, cut).await;
    refused(resp.status().as_u16(), &resp.bytes().await.unwrap());
    // `stream` and `n` out of range.
    let resp = post(
        &gw,
        path,
        "r7",
        &ct,
        form(&[("model", "stt"), ("stream", "true")], b"a"),
    )
    .await;
    let v = refused(resp.status().as_u16(), &resp.bytes().await.unwrap());
    assert_eq!(v["error"]["param"], "stream", "{v}");
    let resp = post(
        &gw,
        "/v1/images/edits",
        "r8",
        &ct,
        form(&[("model", "edit"), ("n", "11")], b"a"),
    )
    .await;
    let v = refused(resp.status().as_u16(), &resp.bytes().await.unwrap());
    assert_eq!(v["error"]["param"], "n", "{v}");
    // A translated kind: 400 naming the endpoint and the alias.
    for p in [
        "/v1/audio/transcriptions",
        "/v1/audio/translations",
        "/v1/images/edits",
    ] {
        let resp = post(&gw, p, "r9", &ct, form(&[("model", "sonnet")], b"a")).await;
        let v = refused(resp.status().as_u16(), &resp.bytes().await.unwrap());
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains("`sonnet`") && msg.contains(p), "{msg}");
        assert_eq!(v["error"]["param"], "model");
    }
    assert_eq!(up.hits(), 0, "no refusal reached the upstream");
    let resp = post(&gw, path, "r10", &ct, form(&ok, b"a")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(up.hits(), 1);
}

/// The built-in mock provider answers the three endpoints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mock_provider_answers_the_multipart_endpoints() {
    let gw = Gateway::start(&format!(
        r#"{CONFIG_HEAD}providers:
  mock: {{ kind: mock, mock: {{ latency: 0ms, prompt_tokens: 7 }} }}
models:
  m: {{ routes: [ {{ provider: mock, model: mock-1 }} ] }}
keys:
  - {{ name: alice, key: "{KEY}" }}
"#
    ))
    .await;
    let ct = content_type();
    let resp = post(
        &gw,
        "/v1/audio/transcriptions",
        "m1",
        &ct,
        form(&[("model", "m")], b"a"),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert!(v["text"].is_string(), "{v}");
    let resp = post(
        &gw,
        "/v1/audio/translations",
        "m2",
        &ct,
        form(
            &[("model", "m"), ("response_format", "verbose_json")],
            &[0u8; 64000],
        ),
    )
    .await;
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["duration"], 2.0, "{v}");
    let resp = post(
        &gw,
        "/v1/images/edits",
        "m3",
        &ct,
        form(&[("model", "m"), ("prompt", "x"), ("n", "2")], b"png"),
    )
    .await;
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["data"].as_array().map(Vec::len), Some(2), "{v}");
}
