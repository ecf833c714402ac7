#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `/v1/files` and `/v1/batches` (issue 19) through the real binary to a
//! mock OpenAI account (`support::files_mock`) that every team shares:
//! uploads (Content-Length and chunked), lists that show only the caller's
//! team's objects, content bytes intact, deletes, batches; another team's
//! key gets 404 for each object without the upstream being asked; a key
//! without `files_provider`, and bad ids, are refused before any upstream
//! call; with a SQLite key store the ownership survives a restart.

mod support;

use bytes::Bytes;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::time::Duration;
use support::files_mock::FilesApi;
use support::raw_client::Raw;
use support::{assert_error, Gateway, MockUpstream, CONFIG_HEAD};

const RED_1: &str = "tg-files-red-key-0001";
const RED_2: &str = "tg-files-red-key-0002";
const BLUE: &str = "tg-files-blue-key-0001";
/// No `files_provider` on it nor on its team.
const NONE: &str = "tg-files-none-key-0001";
/// A key without a team, with its own `files_provider`.
const SOLO: &str = "tg-files-solo-key-0001";
const PROVIDER_KEY: &str = "sk-files-upstream-secret";

fn config(up_port: u16, extra: &str) -> String {
    format!(
        r#"{CONFIG_HEAD}providers:
  oa:
    kind: openai
    base_url: "http://127.0.0.1:{up_port}/v1"
    api_key: "{PROVIDER_KEY}"
    health_check: {{ enabled: false }}
  m: {{ kind: mock }}
models:
  chat: {{ routes: [ {{ provider: m, model: x }} ] }}
teams:
  red: {{ files_provider: oa }}
  blue: {{ files_provider: oa }}
  grey: {{}}
keys:
  - {{ name: red-1, key: "{RED_1}", team: red }}
  - {{ name: red-2, key: "{RED_2}", team: red }}
  - {{ name: blue-1, key: "{BLUE}", team: blue }}
  - {{ name: none-1, key: "{NONE}", team: grey }}
  - {{ name: solo, key: "{SOLO}", files_provider: oa }}
{extra}"#
    )
}

async fn setup() -> (MockUpstream, FilesApi, Gateway) {
    let api = FilesApi::new();
    let up = MockUpstream::start(api.behavior()).await;
    let gw = Gateway::start(&config(up.port(), "")).await;
    (up, api, gw)
}

/// Bytes that are not UTF-8 and repeat with a period that is no power of
/// two (a shifted or dropped chunk shows).
fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8 ^ 0x80).collect()
}

const BOUNDARY: &str = "tollgate-files-test-boundary";

fn multipart(name: &str, content: &[u8], purpose: &str) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(
        format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\n{purpose}\r\n"
        )
        .as_bytes(),
    );
    b.extend_from_slice(
        format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n").as_bytes(),
    );
    b.extend_from_slice(content);
    b.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    b
}

/// Uploads `content` as `key`; `chunked`: sent as a stream of 16 KiB
/// pieces (`Transfer-Encoding: chunked`, no `Content-Length`).
async fn upload(
    gw: &Gateway,
    key: &str,
    name: &str,
    content: &[u8],
    chunked: bool,
) -> (u16, Value) {
    let body = multipart(name, content, "batch");
    let body = if chunked {
        let pieces: Vec<Result<Bytes, Infallible>> = body
            .chunks(16 * 1024)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        reqwest::Body::wrap_stream(futures_util::stream::iter(pieces))
    } else {
        reqwest::Body::from(body)
    };
    let r = gw
        .http()
        .post(gw.url("/v1/files"))
        .bearer_auth(key)
        .header(
            "content-type",
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let b = r.bytes().await.unwrap();
    (status, serde_json::from_slice(&b).unwrap_or(Value::Null))
}

async fn call(
    gw: &Gateway,
    method: &str,
    path: &str,
    key: &str,
    body: Option<Value>,
) -> (u16, Bytes) {
    let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut rq = gw.http().request(m, gw.url(path)).bearer_auth(key);
    if let Some(b) = body {
        rq = rq.json(&b);
    }
    let r = rq.send().await.unwrap();
    (r.status().as_u16(), r.bytes().await.unwrap())
}

async fn json_call(
    gw: &Gateway,
    method: &str,
    path: &str,
    key: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let (s, b) = call(gw, method, path, key, body).await;
    (s, serde_json::from_slice(&b).unwrap_or(Value::Null))
}

fn ids(list: &Value) -> Vec<String> {
    list["data"]
        .as_array()
        .unwrap_or_else(|| panic!("no data: {list}"))
        .iter()
        .map(|v| v["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_are_scoped_to_their_team_from_upload_to_delete() {
    let (up, api, gw) = setup().await;
    // A 1 MiB upload with Content-Length, a 5 MiB one chunked.
    let a_bytes = payload(1024 * 1024);
    let (s, a) = upload(&gw, RED_1, "a.jsonl", &a_bytes, false).await;
    assert_eq!(s, 200, "{a}");
    let a_id = a["id"].as_str().unwrap().to_string();
    assert!(a_id.starts_with("file-abc"), "{a}");
    assert_eq!(a["bytes"], 1024 * 1024);
    let b_bytes = payload(5 * 1024 * 1024 + 7);
    let (s, b) = upload(&gw, RED_2, "b.jsonl", &b_bytes, true).await;
    assert_eq!(s, 200, "{b}");
    let b_id = b["id"].as_str().unwrap().to_string();
    let (s, c) = upload(&gw, BLUE, "c.jsonl", b"{\"blue\":1}\n", false).await;
    assert_eq!(s, 200, "{c}");
    let c_id = c["id"].as_str().unwrap().to_string();
    // The upstream got each file's bytes whole, with the provider's key.
    assert_eq!(api.file_bytes(&a_id).unwrap(), Bytes::from(a_bytes.clone()));
    assert_eq!(api.file_bytes(&b_id).unwrap(), Bytes::from(b_bytes.clone()));
    let last = up.last().unwrap();
    assert_eq!(last.path, "/v1/files");
    assert_eq!(
        last.header("authorization").as_deref(),
        Some(format!("Bearer {PROVIDER_KEY}").as_str())
    );

    // Lists: each team sees exactly its own, newest first.
    let (s, red) = json_call(&gw, "GET", "/v1/files", RED_1, None).await;
    assert_eq!(s, 200, "{red}");
    assert_eq!(ids(&red), [b_id.clone(), a_id.clone()]);
    assert_eq!(red["object"], "list");
    assert_eq!(red["has_more"], false);
    assert_eq!(
        (red["first_id"].as_str(), red["last_id"].as_str()),
        (Some(&*b_id), Some(&*a_id))
    );
    let (_, blue) = json_call(&gw, "GET", "/v1/files?limit=20&purpose=batch", BLUE, None).await;
    assert_eq!(ids(&blue), vec![c_id.clone()]);
    assert_eq!(up.last().unwrap().path, "/v1/files?limit=20&purpose=batch");
    let (_, solo) = json_call(&gw, "GET", "/v1/files", SOLO, None).await;
    assert_eq!(
        ids(&solo),
        Vec::<String>::new(),
        "a teamless key owns nothing yet"
    );

    // A team mate retrieves and downloads it, bytes intact.
    let r = gw
        .http()
        .get(gw.url(&format!("/v1/files/{a_id}")))
        .bearer_auth(RED_2)
        .header("x-request-id", "files-retrieve-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let got: Value = r.json().await.unwrap();
    assert_eq!(got["id"].as_str(), Some(&*a_id), "{got}");
    let line = gw.access_line("files-retrieve-1").await;
    assert_eq!(
        (
            &line["endpoint"],
            &line["key"],
            &line["model"],
            &line["provider"],
            &line["status"]
        ),
        (
            &json!("files_retrieve"),
            &json!("red-2"),
            &json!("files:oa"),
            &json!("oa"),
            &json!(200)
        ),
        "{line}"
    );
    let (s, content) = call(
        &gw,
        "GET",
        &format!("/v1/files/{b_id}/content"),
        RED_1,
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(content.len(), b_bytes.len());
    assert!(content == b_bytes, "content bytes changed");

    // Another team: 404 for the file, its content, its delete, and a batch
    // on it; the upstream is never asked.
    let hits = up.hits();
    for (method, path, body) in [
        ("GET", format!("/v1/files/{a_id}"), None),
        ("GET", format!("/v1/files/{a_id}/content"), None),
        ("DELETE", format!("/v1/files/{a_id}"), None),
        (
            "POST",
            "/v1/batches".to_string(),
            Some(
                json!({"input_file_id": a_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}),
            ),
        ),
    ] {
        let (s, b) = call(&gw, method, &path, BLUE, body).await;
        let v = assert_error(s, &b, (404, "invalid_request_error", "not_found"));
        assert!(
            v["error"]["message"].as_str().unwrap().contains(&a_id),
            "{v}"
        );
    }
    let (s, b) = call(&gw, "GET", &format!("/v1/files/{c_id}"), SOLO, None).await;
    assert_error(s, &b, (404, "invalid_request_error", "not_found"));
    assert_eq!(up.hits(), hits, "no upstream call for another team's file");

    // The owner deletes it; the record goes once the upstream confirms.
    let (s, del) = json_call(&gw, "DELETE", &format!("/v1/files/{a_id}"), RED_2, None).await;
    assert_eq!((s, &del["deleted"]), (200, &json!(true)), "{del}");
    assert!(!api.file_ids().contains(&a_id));
    let hits = up.hits();
    let (s, b) = call(&gw, "GET", &format!("/v1/files/{a_id}"), RED_1, None).await;
    assert_error(s, &b, (404, "invalid_request_error", "not_found"));
    assert_eq!(up.hits(), hits);
    let (_, red) = json_call(&gw, "GET", "/v1/files", RED_1, None).await;
    assert_eq!(ids(&red), vec![b_id.clone()]);

    gw.wait_metric(
        "tollgate_requests_total",
        &[("endpoint", "files_create"), ("status_class", "2xx")],
        3.0,
    )
    .await;
    gw.wait_metric(
        "tollgate_requests_total",
        &[("endpoint", "files_retrieve"), ("status_class", "4xx")],
        3.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_are_created_listed_retrieved_and_cancelled_by_their_team_only() {
    let (up, api, gw) = setup().await;
    let (_, input) = upload(&gw, RED_1, "in.jsonl", b"{\"custom_id\":\"1\"}\n", false).await;
    let input_id = input["id"].as_str().unwrap().to_string();
    let create = json!({"input_file_id": input_id, "endpoint": "/v1/chat/completions",
        "completion_window": "24h", "metadata": {"job": "nightly"}});
    let (s, batch) = json_call(&gw, "POST", "/v1/batches", RED_2, Some(create.clone())).await;
    assert_eq!(s, 200, "{batch}");
    let batch_id = batch["id"].as_str().unwrap().to_string();
    assert!(batch_id.starts_with("batch_abc"), "{batch}");
    assert_eq!(batch["metadata"]["job"], "nightly");
    assert_eq!(up.last().unwrap().json()["input_file_id"], json!(input_id));
    // A blue batch on a blue file, so both lists have something.
    let (_, blue_in) = upload(&gw, BLUE, "blue.jsonl", b"{}\n", false).await;
    let blue_create = json!({"input_file_id": blue_in["id"], "endpoint": "/v1/embeddings", "completion_window": "24h"});
    let (s, blue_batch) = json_call(&gw, "POST", "/v1/batches", BLUE, Some(blue_create)).await;
    assert_eq!(s, 200, "{blue_batch}");
    let blue_batch_id = blue_batch["id"].as_str().unwrap().to_string();

    let (s, red) = json_call(&gw, "GET", "/v1/batches", RED_1, None).await;
    assert_eq!(s, 200);
    assert_eq!(ids(&red), vec![batch_id.clone()]);
    let (_, blue) = json_call(&gw, "GET", "/v1/batches", BLUE, None).await;
    assert_eq!(ids(&blue), vec![blue_batch_id.clone()]);

    let hits = up.hits();
    for (method, path) in [
        ("GET", format!("/v1/batches/{batch_id}")),
        ("POST", format!("/v1/batches/{batch_id}/cancel")),
    ] {
        let (s, b) = call(&gw, method, &path, BLUE, None).await;
        let v = assert_error(s, &b, (404, "invalid_request_error", "not_found"));
        assert_eq!(v["error"]["param"], "batch_id");
    }
    // A file id is not a batch id, even for its owner.
    let (s, b) = call(&gw, "GET", &format!("/v1/batches/{input_id}"), RED_1, None).await;
    assert_error(s, &b, (404, "invalid_request_error", "not_found"));
    assert_eq!(up.hits(), hits);

    // The batch completes: its output file becomes red's when red sees it.
    let out_id = api.complete_batch(&batch_id, "{\"custom_id\":\"1\",\"response\":{}}\n");
    let (s, got) = json_call(&gw, "GET", &format!("/v1/batches/{batch_id}"), RED_1, None).await;
    assert_eq!(
        (s, got["output_file_id"].as_str()),
        (200, Some(&*out_id)),
        "{got}"
    );
    let (s, out) = call(
        &gw,
        "GET",
        &format!("/v1/files/{out_id}/content"),
        RED_2,
        None,
    )
    .await;
    assert_eq!(
        (s, &out[..]),
        (200, &b"{\"custom_id\":\"1\",\"response\":{}}\n"[..])
    );
    let (s, b) = call(
        &gw,
        "GET",
        &format!("/v1/files/{out_id}/content"),
        BLUE,
        None,
    )
    .await;
    assert_error(s, &b, (404, "invalid_request_error", "not_found"));

    let (s, cancelled) = json_call(
        &gw,
        "POST",
        &format!("/v1/batches/{blue_batch_id}/cancel"),
        BLUE,
        None,
    )
    .await;
    assert_eq!(
        (s, cancelled["status"].as_str()),
        (200, Some("cancelling")),
        "{cancelled}"
    );
    assert_eq!(
        up.last().unwrap().path,
        format!("/v1/batches/{blue_batch_id}/cancel")
    );
    assert_eq!(up.last().unwrap().method, "POST");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_without_files_provider_gets_403_and_no_upstream_call() {
    let (up, _api, gw) = setup().await;
    let (s, b) = call(&gw, "GET", "/v1/files", NONE, None).await;
    let v = assert_error(s, &b, (403, "permission_error", "files_not_configured"));
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("files_provider"),
        "{v}"
    );
    let (s, v) = upload(&gw, NONE, "x.jsonl", b"x", false).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (403, Some("files_not_configured"))
    );
    let (s, b) = call(
        &gw,
        "POST",
        "/v1/batches",
        NONE,
        Some(json!({"input_file_id": "file-x"})),
    )
    .await;
    let v = assert_error(s, &b, (403, "permission_error", "files_not_configured"));
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/v1/batches"),
        "{v}"
    );
    assert_eq!(up.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_over_max_body_bytes_is_413_and_reaches_no_upstream() {
    let api = FilesApi::new();
    let up = MockUpstream::start(api.behavior()).await;
    let gw = Gateway::start(&config(up.port(), "max_body_bytes: 1048576\n")).await;
    // The form's own bytes take it past the limit by a few hundred bytes.
    let content = payload(1024 * 1024 - 100);
    for chunked in [false, true] {
        let (s, v) = upload(&gw, RED_1, "big.jsonl", &content, chunked).await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (413, Some("request_too_large")),
            "{v}"
        );
    }
    let (s, v) = upload(&gw, RED_1, "fits.jsonl", &payload(1024 * 1024 - 400), true).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(up.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_ids_and_queries_are_400_and_reach_no_upstream() {
    let (up, _api, gw) = setup().await;
    let long = "f".repeat(129);
    for (method, path, param) in [
        ("GET", "/v1/files/../x".to_string(), "file_id"),
        (
            "GET",
            "/v1/files/file-a%2F..%2Fbatches/content".to_string(),
            "file_id",
        ),
        ("DELETE", "/v1/files/file-a%2Fb".to_string(), "file_id"),
        ("GET", format!("/v1/files/{long}"), "file_id"),
        (
            "POST",
            "/v1/batches/batch_1%3Fx=1/cancel".to_string(),
            "batch_id",
        ),
        ("GET", "/v1/batches/a/b".to_string(), "batch_id"),
        ("GET", "/v1/files?after=..%2Fx".to_string(), "after"),
    ] {
        let mut raw = Raw::connect(&gw.listen_addr()).await;
        raw.send(
            format!("{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {RED_1}\r\nContent-Length: 0\r\n\r\n")
                .as_bytes(),
        )
        .await;
        let r = raw.response(Duration::from_secs(10)).await.unwrap();
        let v = r.assert_error((400, "invalid_request_error", "invalid_request"));
        assert_eq!(v["error"]["param"], param, "{method} {path}: {v}");
    }
    // The longest id accepted is checked for its owner, not refused.
    let (s, b) = call(
        &gw,
        "GET",
        &format!("/v1/files/{}", "f".repeat(128)),
        RED_1,
        None,
    )
    .await;
    assert_error(s, &b, (404, "invalid_request_error", "not_found"));
    let (s, b) = call(&gw, "GET", "/v1/batches?x=1", RED_1, None).await;
    assert_error(s, &b, (400, "invalid_request_error", "invalid_request"));
    let (s, b) = call(
        &gw,
        "POST",
        "/v1/batches",
        RED_1,
        Some(json!({"input_file_id": "../x"})),
    )
    .await;
    let v = assert_error(s, &b, (400, "invalid_request_error", "invalid_request"));
    assert_eq!(v["error"]["param"], "input_file_id");
    assert_eq!(up.hits(), 0);
}

/// Uploads as red, restarts the gateway on the same key store, and checks
/// that red's team still owns the file and blue still gets 404 for it.
async fn ownership_survives_a_restart(store: &str, env: &[(&str, &str)]) {
    let api = FilesApi::new();
    let up = MockUpstream::start(api.behavior()).await;
    let extra = format!(
        "admin_listen: \"{{PLAIN}}\"\nadmin_key: \"{}\"\nkey_store: {store}\n",
        support::keystore::ADMIN_KEY
    );
    let template = config(up.port(), &extra);
    let mut gw = Gateway::start_with_env(&template, env).await;
    let (s, f) = upload(&gw, RED_1, "keep.jsonl", b"{\"keep\":1}\n", false).await;
    assert_eq!(s, 200, "{f}");
    let id = f["id"].as_str().unwrap().to_string();
    gw.sigterm();
    assert!(gw.wait_exit(Duration::from_secs(20)).await.is_some());

    let again = Gateway::start_with_env(&template, env).await;
    let (s, got) = json_call(&again, "GET", &format!("/v1/files/{id}"), RED_2, None).await;
    assert_eq!((s, got["id"].as_str()), (200, Some(&*id)), "{got}");
    let (_, red) = json_call(&again, "GET", "/v1/files", RED_1, None).await;
    assert_eq!(ids(&red), vec![id.clone()]);
    let hits = up.hits();
    let (s, b) = call(
        &again,
        "GET",
        &format!("/v1/files/{id}/content"),
        BLUE,
        None,
    )
    .await;
    assert_error(s, &b, (404, "invalid_request_error", "not_found"));
    assert_eq!(up.hits(), hits);
    // A runtime key of the store in team red takes red's files_provider
    // and sees red's file; one without a team has no provider.
    let admin = support::keystore::Admin::of(&again);
    let runtime_red = admin
        .create_key(json!({"name": "runtime-red", "team": "red"}))
        .await;
    let (s, got) = json_call(
        &again,
        "GET",
        &format!("/v1/files/{id}"),
        &runtime_red,
        None,
    )
    .await;
    assert_eq!((s, got["id"].as_str()), (200, Some(&*id)), "{got}");
    let loner = admin.create_key(json!({"name": "runtime-loner"})).await;
    let (s, b) = call(&again, "GET", "/v1/files", &loner, None).await;
    assert_error(s, &b, (403, "permission_error", "files_not_configured"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ownership_survives_a_restart_with_a_sqlite_key_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("{{ sqlite: \"{}/keys.db\" }}", dir.path().display());
    ownership_survives_a_restart(&store, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ownership_survives_a_restart_with_a_postgres_key_store() {
    let pg = support::postgres::Postgres::start();
    let store = format!("{{ postgres: \"{}\" }}", pg.url_template());
    ownership_survives_a_restart(&store, &pg.env()).await;
}

/// The official `openai` Python SDK's `files.create`, `files.list`,
/// `files.content`, `batches.create`, `batches.list` and `batches.cancel`
/// (tests/sdk/openai_surface.py with TOLLGATE_CHECKS=files), and another
/// team's key getting `openai.NotFoundError` for every object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_python_sdk_manages_files_and_batches_scoped_to_its_team() {
    let (up, _api, gw) = setup().await;
    // Blue's own file, which red's lists must not show.
    let (s, blue) = upload(&gw, BLUE, "blue.jsonl", b"{}\n", false).await;
    assert_eq!(s, 200, "{blue}");
    let stdout = support::sdk::run_script_with_env(
        "tests/sdk/openai_surface.py",
        format!("{}/v1", gw.base_url()),
        RED_1,
        &[("TOLLGATE_CHECKS", "files"), ("TOLLGATE_OTHER_KEY", BLUE)],
        &gw,
    )
    .await;
    assert!(stdout.contains("7 passed, 0 failed"), "{stdout}");
    let paths: Vec<String> = up
        .requests()
        .iter()
        .map(|r| {
            format!(
                "{} {}",
                r.method,
                r.path.split('/').take(3).collect::<Vec<_>>().join("/")
            )
        })
        .collect();
    // Blue's upload, then the script's six calls and blue's list; none of
    // blue's six refused calls.
    assert_eq!(
        paths,
        [
            "POST /v1/files",
            "POST /v1/files",
            "GET /v1/files",
            "GET /v1/files",
            "POST /v1/batches",
            "GET /v1/batches",
            "POST /v1/batches",
            "GET /v1/files",
        ],
        "{stdout}"
    );
}
