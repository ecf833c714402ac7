#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The official `openai` Node SDK (tests/sdk/node, pinned in its
//! package-lock.json and installed by tests/run.sh, which exports
//! `TOLLGATE_NODE_SDK`) against the real gateway and a loopback mock
//! upstream: chat whole and streamed, and a 5 MiB audio transcription that
//! the SDK streams from an `fs.ReadStream` as a chunked multipart body
//! (issue 19). The client's framing is seen on the wire by a recording TCP
//! relay between node and the gateway; the upstream's copy of the file part
//! is compared by SHA-256.

mod support;

use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::{sse_chat_events, Gateway, MockUpstream, Recorded, Reply, CONFIG_HEAD};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const KEY: &str = "tg-sdk-node-key-001";
const FILE_BYTES: usize = 5 * 1024 * 1024;

/// Answers like OpenAI: chat (JSON or SSE) and a transcription.
fn openai_like(r: &Recorded) -> Reply {
    if r.path.ends_with("/audio/transcriptions") {
        let out = json!({"text": "hello there", "usage": {"type": "tokens", "input_tokens": 120,
            "output_tokens": 3, "total_tokens": 123}});
        return Reply::json(200, out.to_string());
    }
    let body = r.json();
    let model = body["model"].as_str().unwrap_or("?").to_string();
    if body["stream"] == true {
        return Reply::sse(sse_chat_events(&model, 4), Duration::from_millis(1));
    }
    let out = json!({"id": "c1", "object": "chat.completion", "created": 1, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello from upstream"},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}});
    Reply::json(200, out.to_string())
}

/// 5 MiB that is not UTF-8 and holds CRLFs and dashes, but no ASCII letter
/// (so never the SDK's `openai-…` boundary).
fn binary_file() -> Vec<u8> {
    (0..FILE_BYTES as u32)
        .map(|i| match i % 89 {
            0 => b'\r',
            1 => b'\n',
            2 | 3 => b'-',
            _ => (i.wrapping_mul(2_654_435_761) >> 24) as u8 | 0x80,
        })
        .collect()
}

fn sha256(b: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, b)
        .as_ref()
        .to_vec()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A loopback relay to `target` that records every byte clients send.
async fn recording_relay(target: String) -> (u16, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let target = target.clone();
            let log = log.clone();
            tokio::spawn(async move {
                let server = TcpStream::connect(&target).await.unwrap();
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let up = async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match cr.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        log.lock().unwrap().extend_from_slice(&buf[..n]);
                        if sw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = sw.shutdown().await;
                };
                let down = async move {
                    let _ = tokio::io::copy(&mut sr, &mut cw).await;
                    let _ = cw.shutdown().await;
                };
                tokio::join!(up, down);
            });
        }
    });
    (port, seen)
}

/// The lowercased request head the client sent for `request_line`.
fn client_head(wire: &[u8], request_line: &str) -> String {
    let at = find(wire, request_line.as_bytes())
        .unwrap_or_else(|| panic!("the client never sent {request_line}"));
    let end = find(&wire[at..], b"\r\n\r\n").unwrap();
    String::from_utf8_lossy(&wire[at..at + end]).to_ascii_lowercase()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_node_sdk_chats_and_streams_a_5_mib_chunked_transcription() {
    let sdk_dir = std::env::var("TOLLGATE_NODE_SDK").unwrap_or_else(|_| {
        panic!("TOLLGATE_NODE_SDK is not set: run the suite with `bash tests/run.sh`, which installs the openai Node SDK")
    });
    let upstream = MockUpstream::start(support::Behavior::func(openai_like)).await;
    let config = format!(
        r#"{CONFIG_HEAD}providers:
  up:
    kind: openai
    base_url: "http://127.0.0.1:{port}/v1"
    api_key: "sk-provider-node-sdk"
    health_check: {{ enabled: false }}
models:
  fast: {{ routes: [ {{ provider: up, model: upstream-chat }} ] }}
  stt: {{ routes: [ {{ provider: up, model: whisper-1 }} ] }}
keys:
  - {{ name: node, key: "{KEY}" }}
"#,
        port = upstream.port()
    );
    let gw = Gateway::start(&config).await;
    let (relay_port, wire) = recording_relay(gw.listen_addr()).await;

    let file = binary_file();
    let path = gw.tmp_dir().join("upload.wav");
    std::fs::write(&path, &file).unwrap();

    let out = tokio::process::Command::new(
        std::env::var("TOLLGATE_NODE").unwrap_or_else(|_| "node".into()),
    )
    .arg(format!("{sdk_dir}/upload.mjs"))
    .env(
        "TOLLGATE_BASE_URL",
        format!("http://127.0.0.1:{relay_port}/v1"),
    )
    .env("TOLLGATE_KEY", KEY)
    .env("TOLLGATE_MODEL", "fast")
    .env("TOLLGATE_STT_MODEL", "stt")
    .env("TOLLGATE_UPLOAD", &path)
    .output()
    .await
    .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "node SDK script failed:\n{stdout}\n{}\ngateway log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        gw.logs()
    );
    let got: Value = serde_json::from_str(stdout.trim()).expect("one JSON line");

    // Chat answers arrived, whole and streamed, from the route's model.
    assert_eq!(got["chat"], "hello from upstream", "{got}");
    assert_eq!(got["chat_model"], "upstream-chat", "{got}");
    assert!(got["stream_chunks"].as_u64().unwrap() >= 4, "{got}");
    assert!(!got["stream"].as_str().unwrap().is_empty(), "{got}");
    assert_eq!(got["transcription"], "hello there", "{got}");

    // The SDK handed fetch a stream without a length for the upload...
    let sent = got["requests"].as_array().unwrap();
    let upload = sent
        .iter()
        .find(|r| r["path"] == "/v1/audio/transcriptions")
        .unwrap();
    assert_eq!(
        (&upload["body"], &upload["content_length"]),
        (&json!("stream"), &Value::Null),
        "{got}"
    );
    // ...and on the wire it was chunked, while the chats carried a length
    // (the relay sees the framing the client really used).
    let wire = wire.lock().unwrap().clone();
    let head = client_head(&wire, "POST /v1/audio/transcriptions ");
    assert!(head.contains("\r\ntransfer-encoding: chunked"), "{head}");
    assert!(!head.contains("\r\ncontent-length:"), "{head}");
    let chat = client_head(&wire, "POST /v1/chat/completions ");
    assert!(chat.contains("\r\ncontent-length:"), "{chat}");
    assert!(wire.len() > FILE_BYTES);

    // The upstream got the form with the route's model and the file part
    // byte for byte, with a length.
    let stt: Vec<Recorded> = upstream
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/audio/transcriptions"))
        .collect();
    assert_eq!(stt.len(), 1);
    let r = &stt[0];
    assert_eq!(r.header("transfer-encoding"), None);
    assert_eq!(r.header("content-length"), Some(r.body.len().to_string()));
    let ct = r.header("content-type").unwrap();
    let boundary = ct.split("boundary=").nth(1).unwrap().trim_matches('"');
    let body = &r.body[..];
    assert!(
        find(body, b"name=\"model\"\r\n\r\nwhisper-1\r\n").is_some(),
        "{}",
        String::from_utf8_lossy(&body[..body.len().min(600)])
    );
    assert!(find(body, b"\r\n\r\nstt\r\n").is_none());
    let file_head = find(body, b"filename=\"").unwrap();
    let start = file_head + find(&body[file_head..], b"\r\n\r\n").unwrap() + 4;
    let end = start + find(&body[start..], format!("\r\n--{boundary}").as_bytes()).unwrap();
    assert_eq!(end - start, FILE_BYTES);
    assert_eq!(sha256(&body[start..end]), sha256(&file));

    // Two chats and one transcription reached the upstream, nothing else.
    assert_eq!(upstream.requests().len(), 3);
}

/// The Node SDK's `files.create` from an `fs.ReadStream` (5 MiB, sent
/// chunked), then `batches.create`, `batches.list` and `batches.cancel`
/// on it, and another team's key refused with `NotFoundError` for both
/// (issue 19), against a mock Files and Batches account.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_node_sdk_uploads_5_mib_chunked_and_creates_lists_and_cancels_a_batch() {
    const OTHER: &str = "tg-sdk-node-other-01";
    let sdk_dir = std::env::var("TOLLGATE_NODE_SDK").unwrap_or_else(|_| {
        panic!("TOLLGATE_NODE_SDK is not set: run the suite with `bash tests/run.sh`, which installs the openai Node SDK")
    });
    let api = support::files_mock::FilesApi::new();
    let upstream = MockUpstream::start(api.behavior()).await;
    let config = format!(
        r#"{CONFIG_HEAD}providers:
  up:
    kind: openai
    base_url: "http://127.0.0.1:{port}/v1"
    api_key: "sk-provider-node-sdk"
    health_check: {{ enabled: false }}
models:
  fast: {{ routes: [ {{ provider: up, model: upstream-chat }} ] }}
teams:
  builders: {{ files_provider: up }}
  others: {{ files_provider: up }}
keys:
  - {{ name: node, key: "{KEY}", team: builders }}
  - {{ name: other, key: "{OTHER}", team: others }}
"#,
        port = upstream.port()
    );
    let gw = Gateway::start(&config).await;
    let (relay_port, wire) = recording_relay(gw.listen_addr()).await;
    let file = binary_file();
    let path = gw.tmp_dir().join("batch-input.jsonl");
    std::fs::write(&path, &file).unwrap();

    let out = tokio::process::Command::new(
        std::env::var("TOLLGATE_NODE").unwrap_or_else(|_| "node".into()),
    )
    .arg(format!("{sdk_dir}/files.mjs"))
    .env(
        "TOLLGATE_BASE_URL",
        format!("http://127.0.0.1:{relay_port}/v1"),
    )
    .env("TOLLGATE_KEY", KEY)
    .env("TOLLGATE_OTHER_KEY", OTHER)
    .env("TOLLGATE_UPLOAD", &path)
    .output()
    .await
    .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "node SDK script failed:\n{stdout}\n{}\ngateway log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        gw.logs()
    );
    let got: Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
    let file_id = got["file_id"].as_str().unwrap().to_string();
    let batch_id = got["batch_id"].as_str().unwrap().to_string();
    assert!(file_id.starts_with("file-abc"), "{got}");
    assert_eq!(got["file_bytes"], FILE_BYTES, "{got}");
    assert_eq!(got["batch_input"], json!(file_id), "{got}");
    assert_eq!(got["listed"], json!([batch_id]), "{got}");
    assert_eq!(got["cancelled"], "cancelling", "{got}");
    assert_eq!(
        got["refused"],
        json!(["404 not_found", "404 not_found", "404 not_found"]),
        "{got}"
    );

    // The upload left the SDK as a stream without a length, went chunked
    // on the wire, and reached the account whole.
    let sent = got["requests"].as_array().unwrap();
    let upload = sent.iter().find(|r| r["path"] == "/v1/files").unwrap();
    assert_eq!(
        (&upload["body"], &upload["content_length"]),
        (&json!("stream"), &Value::Null),
        "{got}"
    );
    let wire = wire.lock().unwrap().clone();
    let head = client_head(&wire, "POST /v1/files ");
    assert!(head.contains("\r\ntransfer-encoding: chunked"), "{head}");
    assert_eq!(sha256(&api.file_bytes(&file_id).unwrap()), sha256(&file));

    // Upload, batch create, list and cancel reached the upstream; none of
    // the other team's calls did.
    let paths: Vec<String> = upstream
        .requests()
        .iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert_eq!(
        paths,
        [
            "POST /v1/files".to_string(),
            "POST /v1/batches".to_string(),
            "GET /v1/batches".to_string(),
            format!("POST /v1/batches/{batch_id}/cancel"),
        ]
    );
}
