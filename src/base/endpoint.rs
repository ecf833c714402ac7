//! The endpoints Tollgate serves, matched on a normalized path only.

/// A known endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    ChatCompletions,
    Completions,
    Embeddings,
    Responses,
    /// Anthropic's Messages API in front: sent to OpenAI-kind upstreams as
    /// Chat Completions (see `translate::messages`).
    Messages,
    /// `POST /v1/moderations`.
    Moderations,
    /// `POST /v1/images/generations`.
    ImageGenerations,
    /// `POST /v1/audio/speech`: answered with binary audio, passed through
    /// unread.
    AudioSpeech,
    /// `POST /v1/rerank` (the Cohere/Jina shape), for routes with
    /// `rerank: true`.
    Rerank,
    /// `POST /v1/images/edits` (multipart/form-data).
    ImageEdits,
    /// `POST /v1/audio/transcriptions` (multipart/form-data).
    AudioTranscriptions,
    /// `POST /v1/audio/translations` (multipart/form-data).
    AudioTranslations,
    /// `POST /v1/files` (multipart/form-data: `file`, `purpose`). This and
    /// the other Files and Batches endpoints carry no `model`: they go to
    /// the caller's `files_provider` (`proxy::files`).
    FilesCreate,
    /// `GET /v1/files`.
    FilesList,
    /// `GET /v1/files/{id}`.
    FilesRetrieve,
    /// `DELETE /v1/files/{id}`.
    FilesDelete,
    /// `GET /v1/files/{id}/content`: the file's bytes, passed through unread.
    FilesContent,
    /// `POST /v1/batches`.
    BatchesCreate,
    /// `GET /v1/batches`.
    BatchesList,
    /// `GET /v1/batches/{id}`.
    BatchesRetrieve,
    /// `POST /v1/batches/{id}/cancel`.
    BatchesCancel,
    Models,
    Healthz,
}

/// What a request line resolves to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Ok(Endpoint),
    /// The endpoint, and the method it takes.
    WrongMethod(Endpoint, &'static str),
    Unknown,
}

impl Endpoint {
    /// Endpoints forwarded to a provider, in a fixed order (see `index`).
    pub const PROXIED: [Endpoint; 11] = [
        Endpoint::ChatCompletions,
        Endpoint::Completions,
        Endpoint::Embeddings,
        Endpoint::Responses,
        Endpoint::Moderations,
        Endpoint::ImageGenerations,
        Endpoint::AudioSpeech,
        Endpoint::Rerank,
        Endpoint::ImageEdits,
        Endpoint::AudioTranscriptions,
        Endpoint::AudioTranslations,
    ];

    /// Endpoints that never stream (`stream` in their body is ignored, or
    /// refused for images and the multipart endpoints).
    pub fn never_streams(self) -> bool {
        matches!(
            self,
            Endpoint::Embeddings
                | Endpoint::Moderations
                | Endpoint::ImageGenerations
                | Endpoint::AudioSpeech
                | Endpoint::Rerank
        ) || self.is_form()
            || self.is_files()
    }

    /// The Files and Batches endpoints (no `model`; `proxy::files`).
    pub fn is_files(self) -> bool {
        matches!(
            self,
            Endpoint::FilesCreate
                | Endpoint::FilesList
                | Endpoint::FilesRetrieve
                | Endpoint::FilesDelete
                | Endpoint::FilesContent
                | Endpoint::BatchesCreate
                | Endpoint::BatchesList
                | Endpoint::BatchesRetrieve
                | Endpoint::BatchesCancel
        )
    }

    /// Endpoints whose body is `multipart/form-data` (read by `form`), not
    /// JSON.
    pub fn is_form(self) -> bool {
        matches!(
            self,
            Endpoint::ImageEdits | Endpoint::AudioTranscriptions | Endpoint::AudioTranslations
        )
    }

    /// Transcriptions and translations: text out, priced by tokens or by
    /// the audio's duration (`price.per_minute`).
    pub fn is_transcription(self) -> bool {
        matches!(
            self,
            Endpoint::AudioTranscriptions | Endpoint::AudioTranslations
        )
    }

    /// Whether the response is opaque bytes (audio), never read as JSON.
    pub fn opaque_response(self) -> bool {
        matches!(self, Endpoint::AudioSpeech | Endpoint::FilesContent)
    }

    /// Whether the endpoint produces no completion tokens (nothing a
    /// `max_tokens` would bound).
    pub fn no_completion(self) -> bool {
        self.never_streams() && !self.is_transcription()
    }

    /// Whether the endpoint takes `stream_options` (so the gateway may ask
    /// a stream for usage): Chat Completions and Completions only.
    pub fn usage_capable(self) -> bool {
        matches!(self, Endpoint::ChatCompletions | Endpoint::Completions)
    }

    /// Position in [`Endpoint::PROXIED`]; Messages maps to Chat Completions
    /// (its OpenAI-kind upstream path), non-proxied endpoints to 0.
    pub fn index(self) -> usize {
        match self {
            Endpoint::ChatCompletions => 0,
            Endpoint::Completions => 1,
            Endpoint::Embeddings => 2,
            Endpoint::Responses => 3,
            Endpoint::Moderations => 4,
            Endpoint::ImageGenerations => 5,
            Endpoint::AudioSpeech => 6,
            Endpoint::Rerank => 7,
            Endpoint::ImageEdits => 8,
            Endpoint::AudioTranscriptions => 9,
            Endpoint::AudioTranslations => 10,
            Endpoint::Messages => 0,
            // Their paths are built per request (`proxy::files`).
            Endpoint::FilesCreate
            | Endpoint::FilesList
            | Endpoint::FilesRetrieve
            | Endpoint::FilesDelete
            | Endpoint::FilesContent
            | Endpoint::BatchesCreate
            | Endpoint::BatchesList
            | Endpoint::BatchesRetrieve
            | Endpoint::BatchesCancel => 0,
            Endpoint::Models | Endpoint::Healthz => 0,
        }
    }

    /// The path after the provider's base URL (which normally ends in `/v1`).
    pub fn upstream_suffix(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "/chat/completions",
            Endpoint::Completions => "/completions",
            Endpoint::Embeddings => "/embeddings",
            Endpoint::Responses => "/responses",
            Endpoint::Moderations => "/moderations",
            Endpoint::ImageGenerations => "/images/generations",
            Endpoint::AudioSpeech => "/audio/speech",
            Endpoint::Rerank => "/rerank",
            Endpoint::ImageEdits => "/images/edits",
            Endpoint::AudioTranscriptions => "/audio/transcriptions",
            Endpoint::AudioTranslations => "/audio/translations",
            Endpoint::Messages => "/messages",
            Endpoint::FilesCreate | Endpoint::FilesList => "/files",
            Endpoint::FilesRetrieve | Endpoint::FilesDelete => "/files/{file_id}",
            Endpoint::FilesContent => "/files/{file_id}/content",
            Endpoint::BatchesCreate | Endpoint::BatchesList => "/batches",
            Endpoint::BatchesRetrieve => "/batches/{batch_id}",
            Endpoint::BatchesCancel => "/batches/{batch_id}/cancel",
            Endpoint::Models => "/models",
            Endpoint::Healthz => "/healthz",
        }
    }

    /// Low-cardinality label for metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat_completions",
            Endpoint::Completions => "completions",
            Endpoint::Embeddings => "embeddings",
            Endpoint::Responses => "responses",
            Endpoint::Moderations => "moderations",
            Endpoint::ImageGenerations => "images_generations",
            Endpoint::AudioSpeech => "audio_speech",
            Endpoint::Rerank => "rerank",
            Endpoint::ImageEdits => "images_edits",
            Endpoint::AudioTranscriptions => "audio_transcriptions",
            Endpoint::AudioTranslations => "audio_translations",
            Endpoint::Messages => "messages",
            Endpoint::FilesCreate => "files_create",
            Endpoint::FilesList => "files_list",
            Endpoint::FilesRetrieve => "files_retrieve",
            Endpoint::FilesDelete => "files_delete",
            Endpoint::FilesContent => "files_content",
            Endpoint::BatchesCreate => "batches_create",
            Endpoint::BatchesList => "batches_list",
            Endpoint::BatchesRetrieve => "batches_retrieve",
            Endpoint::BatchesCancel => "batches_cancel",
            Endpoint::Models => "models",
            Endpoint::Healthz => "healthz",
        }
    }

    /// The OpenAI endpoint this one is served as (Messages is translated
    /// to Chat Completions); every other endpoint is itself.
    pub fn as_openai(self) -> Endpoint {
        match self {
            Endpoint::Messages => Endpoint::ChatCompletions,
            ep => ep,
        }
    }

    pub fn is_proxied(self) -> bool {
        !matches!(self, Endpoint::Models | Endpoint::Healthz)
    }
}

/// Matches method and path. The path is normalized first: repeated slashes
/// collapse and one trailing slash is ignored. Anything with dot segments or
/// percent-escapes is unknown, so nothing can smuggle a different route past
/// auth. Below `/v1/files/` and `/v1/batches/` everything is one of their
/// endpoints: the id is checked by `proxy::files` (a bad one is a 400).
pub fn route(method: &http::Method, path: &str) -> Route {
    // A path that is already a route's is in normal form: no allocation.
    let found = match known(path) {
        Some(found) => found,
        None => {
            if let Some((shape, _)) = object_path(path) {
                return shape.route(method);
            }
            let normal = normalize(path);
            if let Some((shape, _)) = normal.as_deref().and_then(object_path) {
                return shape.route(method);
            }
            match normal.as_deref().and_then(known) {
                Some(found) => found,
                None => return Route::Unknown,
            }
        }
    };
    let (ep, allowed) = found;
    let ok = method.as_str() == allowed || (allowed == "GET" && method == http::Method::HEAD);
    if ok {
        Route::Ok(ep)
    } else {
        Route::WrongMethod(ep, allowed)
    }
}

/// The endpoint of a normalized path, and the method it takes.
fn known(path: &str) -> Option<(Endpoint, &'static str)> {
    Some(match path {
        "/v1/chat/completions" | "/chat/completions" => (Endpoint::ChatCompletions, "POST"),
        "/v1/completions" | "/completions" => (Endpoint::Completions, "POST"),
        "/v1/embeddings" | "/embeddings" => (Endpoint::Embeddings, "POST"),
        "/v1/responses" | "/responses" => (Endpoint::Responses, "POST"),
        "/v1/messages" | "/messages" => (Endpoint::Messages, "POST"),
        "/v1/moderations" | "/moderations" => (Endpoint::Moderations, "POST"),
        "/v1/images/generations" | "/images/generations" => (Endpoint::ImageGenerations, "POST"),
        "/v1/audio/speech" | "/audio/speech" => (Endpoint::AudioSpeech, "POST"),
        "/v1/rerank" | "/rerank" => (Endpoint::Rerank, "POST"),
        "/v1/images/edits" | "/images/edits" => (Endpoint::ImageEdits, "POST"),
        "/v1/audio/transcriptions" | "/audio/transcriptions" => {
            (Endpoint::AudioTranscriptions, "POST")
        }
        "/v1/audio/translations" | "/audio/translations" => (Endpoint::AudioTranslations, "POST"),
        "/v1/models" | "/models" => (Endpoint::Models, "GET"),
        "/healthz" => (Endpoint::Healthz, "GET"),
        _ => return None,
    })
}

/// Which Files or Batches path a request names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Files,
    File,
    FileContent,
    Batches,
    Batch,
    BatchCancel,
}

impl Shape {
    fn route(self, method: &http::Method) -> Route {
        use http::Method as M;
        let (ep, allowed) = match (self, method) {
            (Shape::Files, &M::POST) => return Route::Ok(Endpoint::FilesCreate),
            (Shape::Files, &M::GET) => return Route::Ok(Endpoint::FilesList),
            (Shape::Files, _) => (Endpoint::FilesList, "GET, POST"),
            (Shape::File, &M::GET) => return Route::Ok(Endpoint::FilesRetrieve),
            (Shape::File, &M::DELETE) => return Route::Ok(Endpoint::FilesDelete),
            (Shape::File, _) => (Endpoint::FilesRetrieve, "GET, DELETE"),
            (Shape::FileContent, &M::GET) => return Route::Ok(Endpoint::FilesContent),
            (Shape::FileContent, _) => (Endpoint::FilesContent, "GET"),
            (Shape::Batches, &M::POST) => return Route::Ok(Endpoint::BatchesCreate),
            (Shape::Batches, &M::GET) => return Route::Ok(Endpoint::BatchesList),
            (Shape::Batches, _) => (Endpoint::BatchesList, "GET, POST"),
            (Shape::Batch, &M::GET) => return Route::Ok(Endpoint::BatchesRetrieve),
            (Shape::Batch, _) => (Endpoint::BatchesRetrieve, "GET"),
            (Shape::BatchCancel, &M::POST) => return Route::Ok(Endpoint::BatchesCancel),
            (Shape::BatchCancel, _) => (Endpoint::BatchesCancel, "POST"),
        };
        Route::WrongMethod(ep, allowed)
    }
}

/// A Files or Batches path: its shape and the raw id segment (`""` for a
/// collection), unchecked. `/v1/files/../x` is the file `../x` here, so
/// that the id check refuses it with a 400 rather than it routing anywhere.
fn object_path(path: &str) -> Option<(Shape, &str)> {
    let rest = path.strip_prefix("/v1").unwrap_or(path);
    let (files, rest) = match (rest.strip_prefix("/files"), rest.strip_prefix("/batches")) {
        (Some(r), _) => (true, r),
        (_, Some(r)) => (false, r),
        _ => return None,
    };
    if !(rest.is_empty() || rest.starts_with('/')) {
        return None;
    }
    let rest = rest.strip_prefix('/').unwrap_or(rest);
    // One trailing slash is ignored, as for every path.
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let (shape, id) = match (files, rest) {
        (true, "") => (Shape::Files, ""),
        (false, "") => (Shape::Batches, ""),
        (true, r) => match r.strip_suffix("/content") {
            Some(id) => (Shape::FileContent, id),
            None => (Shape::File, r),
        },
        (false, r) => match r.strip_suffix("/cancel") {
            Some(id) => (Shape::BatchCancel, id),
            None => (Shape::Batch, r),
        },
    };
    Some((shape, id))
}

/// The raw (unchecked) object id a Files or Batches path names: the
/// segment between `/v1/files/` (or `/v1/batches/`) and `/content` (or
/// `/cancel`), as the client sent it. `None` for other paths.
pub fn object_id(path: &str) -> Option<std::borrow::Cow<'_, str>> {
    if let Some((_, id)) = object_path(path) {
        return Some(std::borrow::Cow::Borrowed(id));
    }
    let normal = normalize(path)?;
    let (_, id) = object_path(&normal)?;
    Some(std::borrow::Cow::Owned(id.to_string()))
}

fn normalize(path: &str) -> Option<String> {
    if !path.starts_with('/') || path.contains('%') || path.len() > 256 {
        return None;
    }
    let mut out = String::with_capacity(path.len());
    for seg in path.split('/').filter(|s| !s.is_empty()) {
        if seg == "." || seg == ".." {
            return None;
        }
        out.push('/');
        out.push_str(seg);
    }
    if out.is_empty() {
        out.push('/');
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    #[test]
    fn matches_known_paths() {
        assert_eq!(
            route(&Method::POST, "/v1/chat/completions"),
            Route::Ok(Endpoint::ChatCompletions)
        );
        assert_eq!(
            route(&Method::POST, "//v1//chat/completions/"),
            Route::Ok(Endpoint::ChatCompletions)
        );
        assert_eq!(
            route(&Method::POST, "/v1/messages"),
            Route::Ok(Endpoint::Messages)
        );
        assert_eq!(
            route(&Method::POST, "/messages/"),
            Route::Ok(Endpoint::Messages)
        );
        assert_eq!(
            route(&Method::GET, "/v1/models"),
            Route::Ok(Endpoint::Models)
        );
        for (p, ep) in [
            ("/v1/moderations", Endpoint::Moderations),
            ("/v1/images/generations", Endpoint::ImageGenerations),
            ("//v1/audio//speech/", Endpoint::AudioSpeech),
            ("/v1/rerank", Endpoint::Rerank),
            ("/v1/images/edits", Endpoint::ImageEdits),
            ("/v1/audio/transcriptions", Endpoint::AudioTranscriptions),
            ("/audio/translations/", Endpoint::AudioTranslations),
        ] {
            assert_eq!(route(&Method::POST, p), Route::Ok(ep), "{p}");
        }
        assert_eq!(
            route(&Method::GET, "/v1/rerank"),
            Route::WrongMethod(Endpoint::Rerank, "POST")
        );
        assert_eq!(
            route(&Method::GET, "/v1/chat/completions"),
            Route::WrongMethod(Endpoint::ChatCompletions, "POST")
        );
    }

    #[test]
    fn files_and_batches_route_by_method_and_shape() {
        for (m, p, want) in [
            (Method::POST, "/v1/files", Endpoint::FilesCreate),
            (Method::GET, "/v1/files/", Endpoint::FilesList),
            (Method::GET, "//v1//files", Endpoint::FilesList),
            (Method::GET, "/v1/files/file-abc", Endpoint::FilesRetrieve),
            (Method::DELETE, "/files/file-abc", Endpoint::FilesDelete),
            (
                Method::GET,
                "/v1/files/file-abc/content",
                Endpoint::FilesContent,
            ),
            (Method::POST, "/v1/batches", Endpoint::BatchesCreate),
            (Method::GET, "/v1/batches", Endpoint::BatchesList),
            (
                Method::GET,
                "/v1/batches/batch_1",
                Endpoint::BatchesRetrieve,
            ),
            (
                Method::POST,
                "/v1/batches/batch_1/cancel",
                Endpoint::BatchesCancel,
            ),
            // Bad ids still name the endpoint: the id check answers 400.
            (Method::GET, "/v1/files/../x", Endpoint::FilesRetrieve),
            (
                Method::GET,
                "/v1/files/a%2Fb/content",
                Endpoint::FilesContent,
            ),
        ] {
            assert_eq!(route(&m, p), Route::Ok(want), "{m} {p}");
        }
        assert_eq!(
            route(&Method::PUT, "/v1/files"),
            Route::WrongMethod(Endpoint::FilesList, "GET, POST")
        );
        assert_eq!(
            route(&Method::GET, "/v1/batches/b/cancel"),
            Route::WrongMethod(Endpoint::BatchesCancel, "POST")
        );
        assert_eq!(route(&Method::GET, "/v1/filesystem"), Route::Unknown);
        assert_eq!(object_id("/v1/files/../x").as_deref(), Some("../x"));
        assert_eq!(
            object_id("/v1/files/a%2Fb/content").as_deref(),
            Some("a%2Fb")
        );
        assert_eq!(object_id("//v1/batches/b_1/cancel").as_deref(), Some("b_1"));
        assert_eq!(object_id("/v1/files").as_deref(), Some(""));
        assert_eq!(object_id("/v1/models"), None);
    }

    #[test]
    fn odd_paths_are_unknown() {
        for p in [
            "/v1/../v1/models",
            "/v1/%2e%2e/models",
            "/v1/chat/completions%00",
            "v1/models",
            "/admin",
        ] {
            assert_eq!(route(&Method::GET, p), Route::Unknown, "{p}");
        }
    }
}
