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
    pub const PROXIED: [Endpoint; 4] = [
        Endpoint::ChatCompletions,
        Endpoint::Completions,
        Endpoint::Embeddings,
        Endpoint::Responses,
    ];

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
