//! A mock of OpenAI's Files and Batches APIs, as a [`Behavior::func`] for
//! [`MockUpstream`](super::MockUpstream): uploads (multipart `file` and
//! `purpose`) get ids `file-<n>…`, batches `batch_<n>…`; list, retrieve,
//! content, delete, batch create (404 for an unknown `input_file_id`),
//! list, retrieve and cancel behave like OpenAI's. Everything lives in one
//! account: the gateway must do the scoping.

use super::mock::{Behavior, Recorded, Reply, ReplyBody};
use bytes::Bytes;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};

#[derive(Clone)]
struct File {
    id: String,
    filename: String,
    purpose: String,
    bytes: Bytes,
    created_at: u64,
}

#[derive(Default)]
struct State {
    files: Vec<File>,
    batches: Vec<Value>,
    next: u64,
}

/// The shared state of one mock account.
#[derive(Clone, Default)]
pub struct FilesApi {
    state: Arc<Mutex<State>>,
}

fn not_found(what: &str, id: &str) -> Reply {
    Reply::json(
        404,
        json!({"error": {"message": format!("No such {what}: {id}"), "type": "invalid_request_error", "param": "id", "code": null}}).to_string(),
    )
}

fn file_json(f: &File) -> Value {
    json!({"id": f.id, "object": "file", "bytes": f.bytes.len(), "created_at": f.created_at,
        "filename": f.filename, "purpose": f.purpose, "status": "processed"})
}

fn list(data: Vec<Value>) -> Reply {
    let first = data.first().map(|v| v["id"].clone()).unwrap_or(Value::Null);
    let last = data.last().map(|v| v["id"].clone()).unwrap_or(Value::Null);
    Reply::json(
        200,
        json!({"object": "list", "data": data, "has_more": false, "first_id": first, "last_id": last})
            .to_string(),
    )
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    let first = needle[0];
    let mut i = from;
    while i + needle.len() <= hay.len() {
        match hay[i..].iter().position(|b| *b == first) {
            None => return None,
            Some(p) => i += p,
        }
        if i + needle.len() <= hay.len() && &hay[i..i + needle.len()] == needle {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// The parts of a multipart body: (name, filename, content).
pub fn parts(content_type: &str, body: &[u8]) -> Vec<(String, Option<String>, Bytes)> {
    let Some(b) = content_type.split("boundary=").nth(1) else {
        return Vec::new();
    };
    let b = b.split(';').next().unwrap_or("").trim().trim_matches('"');
    let delim = format!("--{b}");
    let mut out = Vec::new();
    let mut at = match find(body, delim.as_bytes(), 0) {
        Some(i) => i + delim.len(),
        None => return out,
    };
    loop {
        if body[at..].starts_with(b"--") {
            break;
        }
        let head_start = at + 2; // CRLF after the delimiter
        let Some(head_end) = find(body, b"\r\n\r\n", head_start) else {
            break;
        };
        let head = String::from_utf8_lossy(&body[head_start..head_end]).into_owned();
        let content_start = head_end + 4;
        let marker = format!("\r\n{delim}");
        let Some(next) = find(body, marker.as_bytes(), content_start) else {
            break;
        };
        let attr = |k: &str| {
            head.split(&format!("{k}=\""))
                .nth(1)
                .and_then(|r| r.split('"').next())
                .map(str::to_string)
        };
        out.push((
            attr("name").unwrap_or_default(),
            attr("filename"),
            Bytes::copy_from_slice(&body[content_start..next]),
        ));
        at = next + marker.len();
    }
    out
}

impl FilesApi {
    pub fn new() -> FilesApi {
        FilesApi::default()
    }

    /// The behavior that serves this account.
    pub fn behavior(&self) -> Behavior {
        let me = self.clone();
        Behavior::func(move |r| me.handle(r))
    }

    /// The stored bytes of file `id`.
    pub fn file_bytes(&self, id: &str) -> Option<Bytes> {
        let s = self.state.lock().unwrap();
        s.files.iter().find(|f| f.id == id).map(|f| f.bytes.clone())
    }

    /// Every file id in the account.
    pub fn file_ids(&self) -> Vec<String> {
        let s = self.state.lock().unwrap();
        s.files.iter().map(|f| f.id.clone()).collect()
    }

    /// Completes batch `id`: it gets an output file (created in the
    /// account, holding `output`); returns that file's id.
    pub fn complete_batch(&self, id: &str, output: &str) -> String {
        let mut s = self.state.lock().unwrap();
        s.next += 1;
        let fid = format!("file-out{:04}", s.next);
        let n = s.next;
        s.files.push(File {
            id: fid.clone(),
            filename: "batch_output.jsonl".into(),
            purpose: "batch_output".into(),
            bytes: Bytes::from(output.to_string()),
            created_at: 1_700_000_000 + n,
        });
        let b = s.batches.iter_mut().find(|b| b["id"] == id).expect("batch");
        b["status"] = json!("completed");
        b["output_file_id"] = json!(fid);
        fid
    }

    fn handle(&self, r: &Recorded) -> Reply {
        let path = r.path.split('?').next().unwrap_or("");
        let Some(rest) = path.strip_prefix("/v1") else {
            return Reply::no_such_path();
        };
        let segs: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
        let mut s = self.state.lock().unwrap();
        match (r.method.as_str(), segs.as_slice()) {
            ("POST", ["files"]) => {
                let ct = r.header("content-type").unwrap_or_default();
                let parts = parts(&ct, &r.body);
                let file = parts.iter().find(|p| p.0 == "file");
                let purpose = parts.iter().find(|p| p.0 == "purpose");
                let (Some(file), Some(purpose)) = (file, purpose) else {
                    return Reply::json(
                        400,
                        r#"{"error":{"message":"file and purpose are required","type":"invalid_request_error","param":null,"code":null}}"#,
                    );
                };
                s.next += 1;
                let f = File {
                    id: format!("file-abc{:04}", s.next),
                    filename: file.1.clone().unwrap_or_else(|| "upload".into()),
                    purpose: String::from_utf8_lossy(&purpose.2).into_owned(),
                    bytes: file.2.clone(),
                    created_at: 1_700_000_000 + s.next,
                };
                let out = file_json(&f);
                s.files.push(f);
                Reply::json(200, out.to_string())
            }
            ("GET", ["files"]) => {
                // Newest first, like OpenAI's default order.
                list(s.files.iter().rev().map(file_json).collect())
            }
            ("GET", ["files", id]) => match s.files.iter().find(|f| f.id == *id) {
                Some(f) => Reply::json(200, file_json(f).to_string()),
                None => not_found("File", id),
            },
            ("GET", ["files", id, "content"]) => match s.files.iter().find(|f| f.id == *id) {
                Some(f) => {
                    // In pieces, as a large download arrives.
                    let chunks = f
                        .bytes
                        .chunks(64 * 1024)
                        .map(Bytes::copy_from_slice)
                        .collect();
                    Reply {
                        status: 200,
                        headers: vec![("content-type".into(), "application/octet-stream".into())],
                        body: ReplyBody::Chunks(chunks, std::time::Duration::ZERO),
                    }
                }
                None => not_found("File", id),
            },
            ("DELETE", ["files", id]) => {
                let before = s.files.len();
                s.files.retain(|f| f.id != *id);
                if s.files.len() == before {
                    return not_found("File", id);
                }
                Reply::json(
                    200,
                    json!({"id": id, "object": "file", "deleted": true}).to_string(),
                )
            }
            ("POST", ["batches"]) => {
                let body: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
                let input = body["input_file_id"].as_str().unwrap_or("").to_string();
                if !s.files.iter().any(|f| f.id == input) {
                    return not_found("File", &input);
                }
                s.next += 1;
                let b = json!({
                    "id": format!("batch_abc{:04}", s.next), "object": "batch",
                    "endpoint": body["endpoint"], "errors": null, "input_file_id": input,
                    "completion_window": body["completion_window"], "status": "validating",
                    "output_file_id": null, "error_file_id": null,
                    "created_at": 1_700_000_000 + s.next,
                    "request_counts": {"total": 0, "completed": 0, "failed": 0},
                    "metadata": body.get("metadata").cloned().unwrap_or(Value::Null),
                });
                s.batches.push(b.clone());
                Reply::json(200, b.to_string())
            }
            ("GET", ["batches"]) => list(s.batches.iter().rev().cloned().collect()),
            ("GET", ["batches", id]) => match s.batches.iter().find(|b| b["id"] == *id) {
                Some(b) => Reply::json(200, b.to_string()),
                None => not_found("Batch", id),
            },
            ("POST", ["batches", id, "cancel"]) => {
                match s.batches.iter_mut().find(|b| b["id"] == *id) {
                    Some(b) => {
                        b["status"] = json!("cancelling");
                        Reply::json(200, b.to_string())
                    }
                    None => not_found("Batch", id),
                }
            }
            _ => Reply::no_such_path(),
        }
    }
}
