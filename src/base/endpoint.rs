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
        self == Endpoint::AudioSpeech
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
/// auth.
pub fn route(method: &http::Method, path: &str) -> Route {
    // A path that is already a route's is in normal form: no allocation.
    let found = match known(path) {
        Some(found) => found,
        None => match normalize(path).as_deref().and_then(known) {
            Some(found) => found,
            None => return Route::Unknown,
        },
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
