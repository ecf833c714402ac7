//! `/v1/files` and `/v1/batches` (issue 19). They carry no `model`: each
//! goes to the caller's `files_provider` (the key's, else its team's) on
//! that provider's own route (`runtime::files`), through the same attempt
//! walk, credentials, header allow-lists, timeouts, limits, metrics and
//! access log as every other endpoint. What is theirs:
//!
//! - **Ids are checked** before anything else: 1 to [`MAX_ID_BYTES`] of
//!   `A-Z a-z 0-9 _ -`, else 400 (so `..`, `%2F` or `?` never reach an
//!   upstream path). List queries keep only `limit`, `after`, `order` and
//!   `purpose`, with values of the same alphabet.
//! - **Objects are scoped** to their owner (a team, or a key without a
//!   team: `objects`). A file or batch the caller does not own answers 404
//!   without the upstream being asked; so does `POST /v1/batches` with an
//!   `input_file_id` it does not own.
//! - **Answers are read** ([`Stage`]), except a file's content, which is
//!   streamed through untouched: a create's `id` is recorded as the
//!   caller's (a batch's `output_file_id` and `error_file_id` too, once
//!   seen) before the answer is released, a delete the upstream confirmed
//!   forgets the id, and a list keeps only the caller's objects. Such an
//!   answer is read whole, up to [`MAX_ANSWER_BYTES`].

use crate::base::endpoint::{self, Endpoint};
use crate::base::error::GatewayError;
use crate::keys::KeyRt;
use crate::objects::{self, Kind, Op};
use crate::proxy::admit::Next;
use crate::proxy::ctx::{Admitted, Ctx};
use crate::runtime::files::FilesRt;
use crate::runtime::Runtime;
use bytes::{Bytes, BytesMut};
use pingora::http::{RequestHeader, ResponseHeader};
use std::sync::Arc;

/// Longest file or batch id accepted (OpenAI's are about 30 bytes).
pub(crate) const MAX_ID_BYTES: usize = 128;
/// Largest list query accepted.
pub(crate) const MAX_QUERY_BYTES: usize = 1024;
/// Largest JSON answer read whole (a list of 10,000 files is about 3 MB);
/// a longer one is cut off (502).
pub(crate) const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;

/// The query parameters a list passes on.
const LIST_PARAMS: &[&str] = &["limit", "after", "order", "purpose"];

/// One Files or Batches call, decided before its body is read.
pub(crate) struct Call {
    ep: Endpoint,
    method: http::Method,
    /// The upstream path and query.
    uri: http::Uri,
    /// Who the caller is, as the record names owners.
    owner: Arc<str>,
    /// The id in the path, checked (object endpoints).
    id: Option<String>,
}

/// The owner a key's objects are recorded under: its team, else itself.
pub(crate) fn owner_of(key: &KeyRt) -> Arc<str> {
    match &key.team {
        Some(t) => Arc::from(format!("team:{t}")),
        None => Arc::from(format!("key:{}", key.name)),
    }
}

/// Whether `id` is a well-formed file or batch id.
pub(crate) fn valid_id(id: &str) -> bool {
    (1..=MAX_ID_BYTES).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn bad_id(param: &'static str) -> GatewayError {
    GatewayError::InvalidRequest {
        message: format!(
            "`{param}` must be 1 to {MAX_ID_BYTES} characters of A-Z, a-z, 0-9, `_` and `-`."
        ),
        param: Some(param),
    }
}

fn not_found(kind: Kind, id: &str) -> GatewayError {
    let (what, param) = match kind {
        Kind::File => ("File", "file_id"),
        Kind::Batch => ("Batch", "batch_id"),
    };
    GatewayError::ObjectNotFound {
        message: format!("No such {what} object: {id}"),
        param,
    }
}

/// What an endpoint's path names, and the id's field.
fn object_of(ep: Endpoint) -> Option<(Kind, &'static str)> {
    match ep {
        Endpoint::FilesRetrieve | Endpoint::FilesDelete | Endpoint::FilesContent => {
            Some((Kind::File, "file_id"))
        }
        Endpoint::BatchesRetrieve | Endpoint::BatchesCancel => Some((Kind::Batch, "batch_id")),
        _ => None,
    }
}

/// Before the body is read: the caller's provider, the id's shape and
/// owner, the query, the upstream path. Every refusal here reaches no
/// upstream.
pub(crate) fn begin(
    ep: Endpoint,
    req: &RequestHeader,
    key: &KeyRt,
    rt: &Runtime,
) -> Result<(Call, Arc<FilesRt>), GatewayError> {
    let path = req.uri.path();
    let id = match object_of(ep) {
        Some((kind, param)) => {
            let raw = endpoint::object_id(path).ok_or(GatewayError::Internal)?;
            if !valid_id(&raw) {
                return Err(bad_id(param));
            }
            Some((kind, raw.into_owned()))
        }
        None => None,
    };
    let not_configured = || {
        GatewayError::FilesNotConfigured {
        message: format!(
            "/v1{} is not available to this key: no `files_provider` is set for the key or its team.",
            match ep {
                Endpoint::BatchesCreate | Endpoint::BatchesList | Endpoint::BatchesRetrieve | Endpoint::BatchesCancel => "/batches",
                _ => "/files",
            }
        ),
    }
    };
    let provider = key.files_provider.as_ref().ok_or_else(not_configured)?;
    let frt = rt
        .files
        .get(&**provider)
        .cloned()
        .ok_or_else(not_configured)?;
    let owner = owner_of(key);
    if let Some((kind, id)) = &id {
        if !objects::global().owns(&owner, *kind, id) {
            return Err(not_found(*kind, id));
        }
    }
    let query = match ep {
        Endpoint::FilesList | Endpoint::BatchesList => list_query(req.uri.query())?,
        _ => None,
    };
    let tail = match (ep, &id) {
        (Endpoint::FilesCreate | Endpoint::FilesList, _) => "/files".to_string(),
        (Endpoint::BatchesCreate | Endpoint::BatchesList, _) => "/batches".to_string(),
        (Endpoint::FilesContent, Some((_, id))) => format!("/files/{id}/content"),
        (Endpoint::FilesRetrieve | Endpoint::FilesDelete, Some((_, id))) => format!("/files/{id}"),
        (Endpoint::BatchesRetrieve, Some((_, id))) => format!("/batches/{id}"),
        (Endpoint::BatchesCancel, Some((_, id))) => format!("/batches/{id}/cancel"),
        _ => return Err(GatewayError::Internal),
    };
    let q: Vec<&str> = [frt.query.as_deref(), query.as_deref()]
        .into_iter()
        .flatten()
        .collect();
    let full = if q.is_empty() {
        format!("{}{tail}", frt.root)
    } else {
        format!("{}{tail}?{}", frt.root, q.join("&"))
    };
    let uri: http::Uri = full.parse().map_err(|_| GatewayError::Internal)?;
    let method = match ep {
        Endpoint::FilesCreate | Endpoint::BatchesCreate | Endpoint::BatchesCancel => {
            http::Method::POST
        }
        Endpoint::FilesDelete => http::Method::DELETE,
        _ => http::Method::GET,
    };
    Ok((
        Call {
            ep,
            method,
            uri,
            owner,
            id: id.map(|(_, id)| id),
        },
        frt,
    ))
}

/// A list's query with only the parameters it passes on, re-encoded; an
/// unknown parameter or a value outside the id alphabet is a 400.
fn list_query(q: Option<&str>) -> Result<Option<String>, GatewayError> {
    let Some(q) = q.filter(|q| !q.is_empty()) else {
        return Ok(None);
    };
    if q.len() > MAX_QUERY_BYTES {
        return Err(GatewayError::invalid(format!(
            "The query string is longer than {MAX_QUERY_BYTES} bytes."
        )));
    }
    let mut out = form_urlencoded::Serializer::new(String::new());
    for (k, v) in form_urlencoded::parse(q.as_bytes()) {
        let Some(name) = LIST_PARAMS.iter().find(|p| **p == k) else {
            return Err(GatewayError::InvalidRequest {
                message: format!(
                    "Unknown query parameter `{}`; lists take {}.",
                    shorten(&k),
                    LIST_PARAMS.join(", ")
                ),
                param: None,
            });
        };
        if !valid_id(&v) {
            return Err(GatewayError::InvalidRequest {
                message: format!(
                    "`{name}` must be 1 to {MAX_ID_BYTES} characters of A-Z, a-z, 0-9, `_` and `-`."
                ),
                param: Some(name),
            });
        }
        out.append_pair(name, &v);
    }
    Ok(Some(out.finish()))
}

fn shorten(s: &str) -> String {
    s.chars().take(64).collect()
}

/// After the body is read: a batch's `input_file_id` must be the
/// caller's; then the request is admitted on the provider's route and
/// against the key's and team's limits (a files call is not tokenized).
pub(crate) async fn admit(
    ctx: &mut Ctx,
    call: Call,
    frt: Arc<FilesRt>,
    body: Bytes,
    early: Option<crate::governance::Admitted>,
) -> Result<Next, GatewayError> {
    if call.ep == Endpoint::BatchesCreate {
        check_input_file(&body, &call.owner)?;
    }
    let key = ctx.head.key.clone().ok_or(GatewayError::Internal)?;
    let ep = call.ep;
    let model = frt.model.clone();
    let req = ctx.admit(Admitted {
        endpoint: ep,
        model: model.clone(),
        parsed: crate::rewrite::Parsed {
            model: String::new(),
            model_span: 0..0,
            stream: false,
            include_usage: false,
            stream_options_span: None,
            params: Default::default(),
            form: false,
            metadata_span: None,
        },
        body,
        messages: None,
        files: Some(Box::new(call)),
        // Files and Batches calls carry no tags (`none`).
        tags: Default::default(),
    });
    // The provider's own route, whatever the key's tier and regions.
    let order = crate::routing::decide(
        &mut ctx.routing,
        &model.routing,
        &crate::routing::Access::default(),
        &key.name,
        ep,
        &req.parsed,
        &[],
        req.tags,
    )?;
    ctx.attempts = crate::engine::attempts::Attempts::new(order);
    let limits = crate::governance::AliasLimits {
        rules: &[],
        tokenizer: None,
        prices: &[],
        reserve_output_tokens: 0,
        ratios: &model.ratios,
    };
    let admitted = crate::governance::admit_request(
        &key.rules,
        &[],
        limits,
        ctx.attempts.order(),
        ep,
        &Bytes::new(),
        early,
    )
    .await;
    crate::proxy::admit::hold_admission(ctx, admitted)?;
    Ok(Next::Proxy)
}

/// `POST /v1/batches`: the body is a JSON object whose `input_file_id`,
/// when given, is a file the caller owns.
fn check_input_file(body: &[u8], owner: &str) -> Result<(), GatewayError> {
    #[derive(serde::Deserialize)]
    struct Create {
        #[serde(default)]
        input_file_id: Option<serde_json::Value>,
    }
    let c: Create = serde_json::from_slice(body).map_err(|_| GatewayError::InvalidRequest {
        message:
            "The body must be a JSON object (input_file_id, endpoint, completion_window, metadata)."
                .into(),
        param: None,
    })?;
    match c.input_file_id {
        None | Some(serde_json::Value::Null) => Ok(()),
        Some(serde_json::Value::String(id)) => {
            if !valid_id(&id) {
                return Err(bad_id("input_file_id"));
            }
            if objects::global().owns(owner, Kind::File, &id) {
                Ok(())
            } else {
                Err(GatewayError::ObjectNotFound {
                    message: format!("No such File object: {id}"),
                    param: "input_file_id",
                })
            }
        }
        Some(_) => Err(bad_id("input_file_id")),
    }
}

/// The attempt's upstream header: the call's method and path (after the
/// route's own, which a files call replaces), and no `Content-Length` on a
/// bodiless GET or DELETE.
pub(crate) fn patch_request(call: &Call, upstream: &mut RequestHeader, body_len: usize) {
    upstream.set_method(call.method.clone());
    upstream.set_uri(call.uri.clone());
    if body_len == 0 && call.method != http::Method::POST {
        upstream.remove_header(&http::header::CONTENT_LENGTH);
    }
}

/// Reads a JSON answer whole, records and filters it, then releases it.
pub(crate) struct Stage {
    ep: Endpoint,
    owner: Arc<str>,
    id: Option<String>,
    buf: BytesMut,
    /// The record's changes, written to the database in the logging phase.
    ops: Vec<Op>,
}

/// The answer was longer than [`MAX_ANSWER_BYTES`].
pub(crate) struct TooLong;

impl Stage {
    /// The stage of an accepted answer: a files call's successful JSON
    /// answer (not a file's content, which streams through).
    pub(crate) fn choose(resp: &mut ResponseHeader, req: &Admitted) -> Option<Box<Stage>> {
        let call = req.files.as_ref()?;
        if call.ep == Endpoint::FilesContent || !resp.status.is_success() {
            return None;
        }
        // A filtered list changes length: sent chunked.
        resp.remove_header(&http::header::CONTENT_LENGTH);
        if resp
            .insert_header(http::header::TRANSFER_ENCODING, "chunked")
            .is_err()
        {
            return None;
        }
        Some(Box::new(Stage {
            ep: call.ep,
            owner: call.owner.clone(),
            id: call.id.clone(),
            buf: BytesMut::new(),
            ops: Vec::new(),
        }))
    }

    /// Holds each chunk back; at the end, emits the answer as the caller
    /// may see it, its ids recorded first.
    pub(crate) fn on_chunk(&mut self, body: &mut Option<Bytes>, eos: bool) -> Result<(), TooLong> {
        if let Some(b) = body.take() {
            if self.buf.len().saturating_add(b.len()) > MAX_ANSWER_BYTES {
                return Err(TooLong);
            }
            self.buf.extend_from_slice(&b);
        }
        *body = Some(if eos { self.finish() } else { Bytes::new() });
        Ok(())
    }

    /// The record's changes, for `objects::persist`.
    pub(crate) fn take_ops(&mut self) -> Vec<Op> {
        std::mem::take(&mut self.ops)
    }

    fn finish(&mut self) -> Bytes {
        let raw = std::mem::take(&mut self.buf).freeze();
        let o = objects::global();
        let owner = self.owner.clone();
        match self.ep {
            Endpoint::FilesList | Endpoint::BatchesList => {
                let kind = if self.ep == Endpoint::FilesList {
                    Kind::File
                } else {
                    Kind::Batch
                };
                let mut doc: serde_json::Value = match serde_json::from_slice(&raw) {
                    Ok(serde_json::Value::Object(m)) => serde_json::Value::Object(m),
                    // Nothing that cannot be filtered goes out.
                    _ => serde_json::json!({"object": "list", "data": [], "has_more": false}),
                };
                let mut kept = Vec::new();
                if let Some(serde_json::Value::Array(items)) = doc.get_mut("data") {
                    items.retain(|item| {
                        item.get("id")
                            .and_then(|v| v.as_str())
                            .is_some_and(|id| o.owns(&owner, kind, id))
                    });
                    if kind == Kind::Batch {
                        for item in items.iter() {
                            self.ops.extend(record_batch_files(&owner, item));
                        }
                    }
                    kept = items
                        .iter()
                        .filter_map(|i| i.get("id").and_then(|v| v.as_str()).map(str::to_string))
                        .collect();
                } else if let Some(m) = doc.as_object_mut() {
                    m.insert("data".into(), serde_json::Value::Array(Vec::new()));
                }
                if let Some(m) = doc.as_object_mut() {
                    for (field, at) in [("first_id", kept.first()), ("last_id", kept.last())] {
                        if m.contains_key(field) {
                            m.insert(
                                field.into(),
                                at.map_or(serde_json::Value::Null, |s| s.clone().into()),
                            );
                        }
                    }
                }
                Bytes::from(doc.to_string())
            }
            Endpoint::FilesCreate => {
                if let Some(id) = id_in(&raw) {
                    self.ops.extend(o.record(&owner, Kind::File, &id));
                }
                raw
            }
            Endpoint::BatchesCreate | Endpoint::BatchesRetrieve | Endpoint::BatchesCancel => {
                if let Ok(doc) = serde_json::from_slice::<serde_json::Value>(&raw) {
                    if let Some(id) = doc
                        .get("id")
                        .and_then(|v| v.as_str())
                        .filter(|id| valid_id(id))
                    {
                        self.ops.extend(o.record(&owner, Kind::Batch, id));
                    }
                    self.ops.extend(record_batch_files(&owner, &doc));
                }
                raw
            }
            Endpoint::FilesDelete => {
                let deleted = serde_json::from_slice::<serde_json::Value>(&raw)
                    .ok()
                    .is_some_and(|d| d.get("deleted") == Some(&serde_json::Value::Bool(true)));
                if let (true, Some(id)) = (deleted, &self.id) {
                    self.ops.extend(o.forget(id));
                }
                raw
            }
            _ => raw,
        }
    }
}

/// A create's `id`, when it is a well-formed one.
fn id_in(raw: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Created {
        id: String,
    }
    serde_json::from_slice::<Created>(raw)
        .ok()
        .map(|c| c.id)
        .filter(|id| valid_id(id))
}

/// Records a batch's output and error files as its owner's.
fn record_batch_files(owner: &Arc<str>, batch: &serde_json::Value) -> Vec<Op> {
    let mut ops = Vec::new();
    for field in ["output_file_id", "error_file_id"] {
        if let Some(id) = batch
            .get(field)
            .and_then(|v| v.as_str())
            .filter(|id| valid_id(id))
        {
            ops.extend(objects::global().record(owner, Kind::File, id));
        }
    }
    ops
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime() -> Runtime {
        let text = r#"
listen: "127.0.0.1:8080"
providers:
  oa: { kind: openai, base_url: "http://127.0.0.1:9/prefix/v1", api_key: k }
  az: { kind: azure, base_url: "https://r.openai.azure.com", api_key: k, api_version: "2024-10-21" }
  az1: { kind: azure, base_url: "https://r.openai.azure.com", api_key: k }
  m: { kind: mock }
models:
  a: { routes: [ { provider: m, model: x } ] }
teams:
  t-az: { files_provider: az }
  t-az1: { files_provider: az1 }
keys:
  - { name: k-oa, key: "tg-files-unit-0001", files_provider: oa }
  - { name: k-az, key: "tg-files-unit-0002", team: t-az }
  - { name: k-az1, key: "tg-files-unit-0003", team: t-az1 }
  - { name: k-own, key: "tg-files-unit-0004", team: t-az, files_provider: oa }
  - { name: k-none, key: "tg-files-unit-0005" }
"#;
        let cfg = crate::config::parse_str(text, |_| None, std::path::Path::new("/etc/tollgate"))
            .unwrap();
        Runtime::build(cfg, &Arc::new(Default::default())).unwrap()
    }

    fn key<'a>(rt: &'a Runtime, name: &str) -> &'a KeyRt {
        rt.key_info.iter().find(|k| &*k.name == name).unwrap()
    }

    fn uri(rt: &Runtime, key_name: &str, ep: Endpoint, path: &str) -> Result<String, GatewayError> {
        let req = RequestHeader::build("GET", path.as_bytes(), None).unwrap();
        begin(ep, &req, key(rt, key_name), rt).map(|(c, _)| c.uri.to_string())
    }

    #[test]
    fn each_kind_gets_its_files_paths_below_the_base_url() {
        let rt = runtime();
        assert_eq!(
            uri(
                &rt,
                "k-oa",
                Endpoint::FilesList,
                "/v1/files?limit=2&order=asc"
            )
            .unwrap(),
            "/prefix/v1/files?limit=2&order=asc"
        );
        assert_eq!(
            uri(&rt, "k-az", Endpoint::FilesList, "/v1/files?purpose=batch").unwrap(),
            "/openai/files?api-version=2024-10-21&purpose=batch"
        );
        assert_eq!(
            uri(&rt, "k-az1", Endpoint::BatchesCreate, "/v1/batches").unwrap(),
            "/openai/v1/batches"
        );
        // A key's own files_provider overrides its team's.
        assert_eq!(
            uri(&rt, "k-own", Endpoint::FilesCreate, "/v1/files?x=1").unwrap(),
            "/prefix/v1/files"
        );
        let e = uri(&rt, "k-none", Endpoint::FilesList, "/v1/files").unwrap_err();
        assert_eq!((e.status(), e.code()), (403, "files_not_configured"));
        let f = &rt.files["az"];
        assert_eq!(&*f.model.name, "files:az");
        assert!(
            f.model.routes[0].model_json.is_empty(),
            "nothing is spliced"
        );
    }

    #[test]
    fn an_object_is_found_only_by_its_owner() {
        let rt = runtime();
        let owner = owner_of(key(&rt, "k-az"));
        assert_eq!(&*owner, "team:t-az");
        assert_eq!(&*owner_of(key(&rt, "k-oa")), "key:k-oa");
        objects::global().record(&owner, Kind::File, "file-unit-owned");
        assert_eq!(
            uri(
                &rt,
                "k-az",
                Endpoint::FilesContent,
                "/v1/files/file-unit-owned/content"
            )
            .unwrap(),
            "/openai/files/file-unit-owned/content?api-version=2024-10-21"
        );
        let e = uri(
            &rt,
            "k-oa",
            Endpoint::FilesContent,
            "/v1/files/file-unit-owned/content",
        )
        .unwrap_err();
        assert_eq!((e.status(), e.code()), (404, "not_found"));
        let e = uri(
            &rt,
            "k-az",
            Endpoint::BatchesRetrieve,
            "/v1/batches/file-unit-owned",
        )
        .unwrap_err();
        assert_eq!(
            (e.status(), e.code()),
            (404, "not_found"),
            "a file is no batch"
        );
        let e = uri(&rt, "k-az", Endpoint::FilesDelete, "/v1/files/..%2Fx").unwrap_err();
        assert_eq!((e.status(), e.code()), (400, "invalid_request"));
        assert!(check_input_file(br#"{"input_file_id":"file-unit-owned"}"#, &owner).is_ok());
        let e =
            check_input_file(br#"{"input_file_id":"file-unit-owned"}"#, "team:other").unwrap_err();
        assert_eq!((e.status(), e.code()), (404, "not_found"));
        assert!(check_input_file(b"[1]", &owner).is_err());
    }

    #[test]
    fn ids_are_bounded_in_length_and_alphabet() {
        assert!(valid_id("file-abc_123"));
        assert!(valid_id(&"a".repeat(MAX_ID_BYTES)));
        for bad in [
            "",
            "../x",
            "a%2Fb",
            "a/b",
            "a?b",
            "a.b",
            "ä",
            &"a".repeat(MAX_ID_BYTES + 1),
        ] {
            assert!(!valid_id(bad), "{bad}");
        }
    }

    #[test]
    fn list_queries_keep_known_parameters_only() {
        assert_eq!(list_query(None).unwrap(), None);
        assert_eq!(
            list_query(Some("limit=2&after=file-1&purpose=batch"))
                .unwrap()
                .as_deref(),
            Some("limit=2&after=file-1&purpose=batch")
        );
        assert_eq!(list_query(Some("x=1")).unwrap_err().status(), 400);
        assert_eq!(list_query(Some("after=..%2Fx")).unwrap_err().status(), 400);
        let long = format!("after={}", "a".repeat(MAX_QUERY_BYTES));
        assert_eq!(list_query(Some(&long)).unwrap_err().status(), 400);
    }
}
