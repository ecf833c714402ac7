//! What each HTTP provider kind speaks: its auth header, its fixed headers,
//! its paths, and which endpoints it serves. Built once per provider and per
//! route at config load; the request path only reads it.

use crate::base::endpoint::Endpoint;
use crate::base::error::GatewayError;
use crate::config::{Provider, ProviderKind, Route};
use http::{HeaderName, HeaderValue, Uri};

/// `kind: anthropic`'s `base_url` when none is given.
pub(crate) const ANTHROPIC_BASE_URL: &str = "https://api.anthropic.com/v1";
/// `kind: anthropic`'s `anthropic-version` when none is given.
pub(crate) const ANTHROPIC_VERSION: &str = "2023-06-01";
/// Anthropic's "overloaded" status: retried and counted for fallback.
pub(crate) const ANTHROPIC_OVERLOADED: u16 = 529;

/// `kind: gemini`'s `base_url` when none is given (the v1beta API, which
/// has `systemInstruction`, tools and thinking budgets).
pub(crate) const GEMINI_BASE_URL: &str = "https://generativelanguage.googleapis.com/v1beta";

/// The `base_url` a provider uses when the config gives none: the kind's
/// (Anthropic, Gemini), or the one of its region (Bedrock) or location
/// (Vertex).
pub(crate) fn default_base_url(p: &Provider) -> Option<String> {
    match p.kind {
        ProviderKind::Anthropic => Some(ANTHROPIC_BASE_URL.into()),
        ProviderKind::Gemini => Some(GEMINI_BASE_URL.into()),
        ProviderKind::Bedrock => p.bedrock.as_ref().map(|b| b.default_base_url()),
        ProviderKind::Vertex => p.vertex.as_ref().map(|v| v.default_base_url()),
        _ => None,
    }
}

/// The header that carries a kind's provider key.
pub(crate) fn auth_header_name(kind: ProviderKind) -> HeaderName {
    match kind {
        ProviderKind::Anthropic => HeaderName::from_static("x-api-key"),
        ProviderKind::Azure => HeaderName::from_static("api-key"),
        // Never `?key=`: the URL ends up in logs. Vertex takes Google
        // Cloud API keys the same way.
        ProviderKind::Gemini | ProviderKind::Vertex => HeaderName::from_static("x-goog-api-key"),
        // Bedrock API keys are bearer tokens.
        _ => http::header::AUTHORIZATION,
    }
}

/// The header that carries the provider key, and its value.
pub(crate) fn auth_header(
    kind: ProviderKind,
    key: &str,
) -> Result<(HeaderName, HeaderValue), String> {
    let name = auth_header_name(kind);
    let value = if name == http::header::AUTHORIZATION {
        format!("Bearer {key}")
    } else {
        key.to_string()
    };
    let mut v = HeaderValue::from_str(&value)
        .map_err(|_| "api_key has characters not allowed in a header".to_string())?;
    v.set_sensitive(true);
    Ok((name, v))
}

/// Headers a kind sends on every request (besides the key).
pub(crate) fn fixed_headers(p: &Provider) -> Result<Vec<(HeaderName, HeaderValue)>, String> {
    if p.kind != ProviderKind::Anthropic {
        return Ok(Vec::new());
    }
    let version = p.anthropic_version.as_deref().unwrap_or(ANTHROPIC_VERSION);
    let mut out = vec![(
        HeaderName::from_static("anthropic-version"),
        HeaderValue::from_str(version).map_err(|_| "anthropic_version is not a header value")?,
    )];
    if !p.anthropic_beta.is_empty() {
        let beta = p.anthropic_beta.join(",");
        out.push((
            HeaderName::from_static("anthropic-beta"),
            HeaderValue::from_str(&beta).map_err(|_| "anthropic_beta is not a header value")?,
        ));
    }
    Ok(out)
}

/// The dialect a route's bodies are translated to (the provider's kind
/// says how they travel: Vertex carries Gemini's and Anthropic's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wire {
    /// OpenAI's own: spliced and passed through.
    Openai,
    Anthropic,
    Gemini,
    Bedrock,
}

/// How one route talks to its provider.
#[derive(Debug, Clone)]
pub struct RouteDialect {
    pub(crate) kind: ProviderKind,
    pub(crate) wire: Wire,
    /// `kind: vertex`: the project and location of the route's paths.
    pub(crate) vertex: Option<(String, String)>,
    /// The route's `max_tokens`.
    pub(crate) default_max_tokens: Option<u64>,
    pub(crate) drop_unsupported: bool,
    /// The route declares `rerank: true`.
    pub(crate) rerank: bool,
    /// The upstream path (and query) per proxied endpoint, `None` where the
    /// kind has no such endpoint. Unset for OpenAI-kind routes, which use
    /// the provider's paths.
    paths: Option<[Option<Uri>; Endpoint::PROXIED.len()]>,
    /// The provider base URL's path, for paths chosen per request (Gemini's
    /// stream and batch-embedding methods).
    prefix: String,
}

impl RouteDialect {
    /// Plain OpenAI passthrough (also used for `mock`).
    pub fn openai() -> Self {
        Self {
            kind: ProviderKind::Openai,
            wire: Wire::Openai,
            vertex: None,
            default_max_tokens: None,
            drop_unsupported: false,
            rerank: false,
            paths: None,
            prefix: String::new(),
        }
    }

    /// The same with the route's `rerank` declaration.
    pub fn with_rerank(self, rerank: bool) -> Self {
        Self { rerank, ..self }
    }

    /// Builds a route's dialect. `prefix` is the provider base URL's path.
    pub fn build(p: &Provider, r: &Route, prefix: &str) -> Self {
        let paths = match p.kind {
            ProviderKind::Anthropic => Some(Endpoint::PROXIED.map(|ep| {
                (ep == Endpoint::ChatCompletions)
                    .then(|| uri(&format!("{prefix}/messages")))
                    .flatten()
            })),
            ProviderKind::Azure => Some(azure_paths(p, r, prefix)),
            ProviderKind::Gemini => Some(gemini_paths(r, prefix)),
            ProviderKind::Bedrock => Some(bedrock_paths(r, prefix)),
            ProviderKind::Vertex => Some(vertex_paths(p, r, prefix)),
            ProviderKind::Openai | ProviderKind::Mock => None,
        };
        let wire = match p.kind {
            ProviderKind::Anthropic => Wire::Anthropic,
            ProviderKind::Gemini => Wire::Gemini,
            ProviderKind::Bedrock => Wire::Bedrock,
            ProviderKind::Vertex => match crate::providers::gcp::vertex::Publisher::of(&r.model) {
                crate::providers::gcp::vertex::Publisher::Anthropic => Wire::Anthropic,
                crate::providers::gcp::vertex::Publisher::Google => Wire::Gemini,
            },
            ProviderKind::Openai | ProviderKind::Azure | ProviderKind::Mock => Wire::Openai,
        };
        Self {
            kind: p.kind,
            wire,
            vertex: p
                .vertex
                .as_ref()
                .map(|v| (v.project.clone(), v.location.clone())),
            default_max_tokens: r.max_tokens,
            drop_unsupported: r.drop_unsupported_params,
            rerank: r.rerank,
            paths,
            prefix: prefix.to_string(),
        }
    }

    /// `path` (below the base URL) with the base URL's prefix, for a path
    /// chosen per request.
    pub fn uri(&self, path: &str) -> Option<Uri> {
        uri(&format!("{}{path}", self.prefix))
    }

    /// Whether requests and responses are translated (not OpenAI-shaped).
    pub fn translates(&self) -> bool {
        self.wire != Wire::Openai
    }

    /// Whether provider error bodies are mapped to our errors.
    pub fn maps_errors(&self) -> bool {
        self.translates() || self.kind == ProviderKind::Azure
    }

    /// The path (below the base URL) of a Vertex chat call for `model`.
    pub(crate) fn vertex_chat_path(&self, model: &str, stream: bool) -> Option<String> {
        let (project, location) = self.vertex.as_ref()?;
        Some(crate::providers::gcp::vertex::chat_path(
            project, location, model, stream,
        ))
    }

    /// This route's own upstream path for `ep`, if it has one.
    pub fn path(&self, ep: Endpoint) -> Option<&Uri> {
        self.paths.as_ref()?.get(ep.index())?.as_ref()
    }

    /// Refuses endpoints the kind does not serve, and `/v1/rerank` on a
    /// route without `rerank: true`, before any upstream call. `alias`: the
    /// model the client named, for the message (`param: model`).
    pub fn supports(&self, ep: Endpoint, alias: &str, provider: &str) -> Result<(), GatewayError> {
        let path = || format!("/v1{}", ep.upstream_suffix());
        match &self.paths {
            Some(paths) if paths.get(ep.index()).is_none_or(Option::is_none) => {
                Err(GatewayError::InvalidRequest {
                    message: format!(
                        "The model `{alias}` is served by provider `{provider}` ({}), which does not support {}.",
                        kind_name(self.kind),
                        path(),
                    ),
                    param: Some("model"),
                })
            }
            _ if ep == Endpoint::Rerank && !self.rerank => Err(GatewayError::InvalidRequest {
                message: format!(
                    "The model `{alias}` does not support {}: its route to provider `{provider}` does not declare `rerank: true`.",
                    path(),
                ),
                param: Some("model"),
            }),
            _ => Ok(()),
        }
    }
}

fn kind_name(kind: ProviderKind) -> &'static str {
    kind.name()
}

/// Bedrock's paths: Converse for chat (ConverseStream is chosen per
/// request) and `InvokeModel` for embeddings (Titan and Cohere models; the
/// body translation refuses others, naming `model`).
fn bedrock_paths(r: &Route, prefix: &str) -> [Option<Uri>; Endpoint::PROXIED.len()] {
    use crate::translate::bedrock;
    Endpoint::PROXIED.map(|ep| match ep {
        Endpoint::ChatCompletions => uri(&format!(
            "{prefix}{}",
            bedrock::converse_path(&r.model, false)
        )),
        Endpoint::Embeddings => uri(&format!("{prefix}{}", bedrock::invoke_path(&r.model))),
        _ => None,
    })
}

/// Vertex's paths: chat only (`generateContent` or `rawPredict` by the
/// model's publisher; the stream method is chosen per request).
fn vertex_paths(p: &Provider, r: &Route, prefix: &str) -> [Option<Uri>; Endpoint::PROXIED.len()] {
    Endpoint::PROXIED.map(|ep| match (ep, &p.vertex) {
        (Endpoint::ChatCompletions, Some(v)) => uri(&format!(
            "{prefix}{}",
            crate::providers::gcp::vertex::chat_path(&v.project, &v.location, &r.model, false)
        )),
        _ => None,
    })
}

/// Gemini's paths: chat and embeddings only. These are the non-stream,
/// single-input methods; a stream or a batch of inputs picks its own method
/// per request (see `proxy::translated`).
fn gemini_paths(r: &Route, prefix: &str) -> [Option<Uri>; Endpoint::PROXIED.len()] {
    use crate::translate::gemini;
    Endpoint::PROXIED.map(|ep| match ep {
        Endpoint::ChatCompletions => {
            uri(&format!("{prefix}{}", gemini::chat_path(&r.model, false)))
        }
        Endpoint::Embeddings => uri(&format!(
            "{prefix}{}",
            gemini::EmbedKind::Single.path(&r.model)
        )),
        _ => None,
    })
}

/// Azure's paths: `/openai/deployments/{deployment}/…?api-version=…` when
/// `api_version` is set, else the `/openai/v1/…` API.
fn azure_paths(p: &Provider, r: &Route, prefix: &str) -> [Option<Uri>; Endpoint::PROXIED.len()] {
    Endpoint::PROXIED.map(|ep| match &p.api_version {
        Some(version) => {
            if ep == Endpoint::Responses {
                return None;
            }
            let deployment = r.deployment.as_deref().unwrap_or(&r.model);
            uri(&format!(
                "{prefix}/openai/deployments/{}{}?api-version={}",
                encode(deployment),
                ep.upstream_suffix(),
                encode(version)
            ))
        }
        None => uri(&format!("{prefix}/openai/v1{}", ep.upstream_suffix())),
    })
}

fn uri(s: &str) -> Option<Uri> {
    s.parse().ok()
}

/// Percent-encodes what may not appear raw in a path segment or query value.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn provider(yaml: &str) -> Provider {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn route(yaml: &str) -> Route {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn azure_deployment_and_v1_paths() {
        let p = provider(
            "{kind: azure, base_url: 'https://r.openai.azure.com', api_version: '2024-10-21'}",
        );
        let d = RouteDialect::build(
            &p,
            &route("{provider: az, model: gpt-4o, deployment: 'my dep'}"),
            "",
        );
        assert_eq!(
            d.path(Endpoint::ChatCompletions).unwrap(),
            "/openai/deployments/my%20dep/chat/completions?api-version=2024-10-21"
        );
        assert!(d.supports(Endpoint::Responses, "x", "az").is_err());
        let d = RouteDialect::build(&p, &route("{provider: az, model: gpt-4o}"), "");
        assert_eq!(
            d.path(Endpoint::Embeddings).unwrap(),
            "/openai/deployments/gpt-4o/embeddings?api-version=2024-10-21"
        );
        let v1 = provider("{kind: azure, base_url: 'https://r.openai.azure.com'}");
        let d = RouteDialect::build(&v1, &route("{provider: az, model: gpt-4o}"), "");
        assert_eq!(d.path(Endpoint::Responses).unwrap(), "/openai/v1/responses");
    }

    fn load(providers: &str, route_extra: &str) -> Result<crate::config::Config, String> {
        let yaml = format!(
            "listen: \"127.0.0.1:8080\"\nproviders:\n{providers}\nmodels:\n  m:\n    routes:\n      - {{ provider: p, model: x {route_extra} }}\n"
        );
        crate::config::parse_str(&yaml, |_| None, std::path::Path::new("."))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn config_accepts_the_documented_kinds() {
        let cfg = load(
            "  p: { kind: anthropic, api_key: k, anthropic_beta: [b1, b2] }",
            ", max_tokens: 512, drop_unsupported_params: true",
        )
        .unwrap();
        let r = &cfg.models["m"].routes[0];
        assert_eq!((r.max_tokens, r.drop_unsupported_params), (Some(512), true));
        let rt = crate::runtime::Runtime::build(cfg, &Default::default()).unwrap();
        let up = &rt.upstreams["p"];
        assert_eq!(up.auth_name, "x-api-key");
        assert!(up.retry.on_status.contains(&529));
        assert_eq!(up.host, "api.anthropic.com");
        assert!(up
            .extra_headers
            .iter()
            .any(|(k, v)| k == "anthropic-beta" && v == "b1,b2"));
        assert!(up
            .extra_headers
            .iter()
            .any(|(k, v)| k == "anthropic-version" && v == ANTHROPIC_VERSION));
        load("  p: { kind: azure, base_url: 'https://r.openai.azure.com', api_key: k, api_version: '2024-10-21' }", ", deployment: d1").unwrap();
    }

    #[test]
    fn config_errors_name_the_field_and_the_fix() {
        for (providers, route, want) in [
            (
                "  p: { kind: openai, base_url: 'http://h/v1', anthropic_version: '2023-06-01' }",
                "",
                "providers.p.anthropic_version: only applies to `kind: anthropic`",
            ),
            (
                "  p: { kind: anthropic, api_version: '1' }",
                "",
                "providers.p.api_version: only applies to `kind: azure`",
            ),
            (
                "  p: { kind: azure, api_key: k }",
                "",
                "providers.p.base_url: is required",
            ),
            (
                "  p: { kind: azure, base_url: 'https://r.openai.azure.com/openai/v1' }",
                "",
                "give the resource endpoint only",
            ),
            (
                "  p: { kind: anthropic, anthropic_beta: ['a,b'] }",
                "",
                "providers.p.anthropic_beta[0]",
            ),
            (
                "  p: { kind: anthropic }",
                ", max_tokens: 0",
                "models.m.routes[0].max_tokens: must be at least 1",
            ),
            (
                "  p: { kind: anthropic }",
                ", deployment: d",
                "models.m.routes[0].deployment: only applies",
            ),
            (
                "  p: { kind: anthropic }",
                ", max_tokenz: 5",
                "unknown field `max_tokenz`",
            ),
        ] {
            let e = load(providers, route).unwrap_err();
            assert!(e.contains(want), "{providers} {route}: {e}");
        }
    }

    #[test]
    fn gemini_config_defaults_and_errors() {
        let cfg = load("  p: { kind: gemini, api_key: AIzaK }", "").unwrap();
        let rt = crate::runtime::Runtime::build(cfg, &Default::default()).unwrap();
        let up = &rt.upstreams["p"];
        assert_eq!(up.auth_name, "x-goog-api-key");
        assert_eq!(up.host, "generativelanguage.googleapis.com");
        assert_eq!(up.base.prefix, "/v1beta");
        let e = load("  p: { kind: gemini }", "").map(|_| ());
        assert!(e.is_ok(), "{e:?}");
        let e = load("  p: { kind: gemini }", ", deployment: d").unwrap_err();
        assert!(e.contains("models.m.routes[0].deployment"), "{e}");
        let yaml = "listen: \"127.0.0.1:8080\"\nproviders:\n  p: { kind: gemini }\nmodels:\n  m:\n    routes:\n      - { provider: p, model: 'x?key=1' }\n";
        let e = crate::config::parse_str(yaml, |_| None, std::path::Path::new("."))
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(e.contains("models.m.routes[0].model"), "{e}");
    }

    #[test]
    fn gemini_serves_chat_and_embeddings_with_the_key_in_a_header() {
        let p = provider("{kind: gemini, api_key: k}");
        let d = RouteDialect::build(
            &p,
            &route("{provider: g, model: gemini-2.5-flash}"),
            "/v1beta",
        );
        assert_eq!(
            d.path(Endpoint::ChatCompletions).unwrap(),
            "/v1beta/models/gemini-2.5-flash:generateContent"
        );
        assert_eq!(
            d.path(Endpoint::Embeddings).unwrap(),
            "/v1beta/models/gemini-2.5-flash:embedContent"
        );
        assert_eq!(
            d.uri("/models/x:streamGenerateContent?alt=sse").unwrap(),
            "/v1beta/models/x:streamGenerateContent?alt=sse"
        );
        assert!(d.supports(Endpoint::Completions, "x", "g").is_err());
        assert!(d.supports(Endpoint::Responses, "x", "g").is_err());
        assert!(d.translates() && d.maps_errors());
        let (name, value) = auth_header(ProviderKind::Gemini, "AIzaKey").unwrap();
        assert_eq!(name.as_str(), "x-goog-api-key");
        assert!(value.is_sensitive());
        assert_eq!(default_base_url(&p), Some(GEMINI_BASE_URL.to_string()));
    }

    #[test]
    fn anthropic_serves_chat_only() {
        let p = provider("{kind: anthropic}");
        let d = RouteDialect::build(&p, &route("{provider: a, model: claude}"), "/v1");
        assert_eq!(d.path(Endpoint::ChatCompletions).unwrap(), "/v1/messages");
        let e = d.supports(Endpoint::Embeddings, "claude", "a").unwrap_err();
        assert_eq!(e.status(), 400);
        assert!(e.to_string().contains("embeddings"), "{e}");
        assert!(RouteDialect::openai()
            .supports(Endpoint::Embeddings, "gpt", "o")
            .is_ok());
        for ep in [
            Endpoint::Moderations,
            Endpoint::ImageGenerations,
            Endpoint::AudioSpeech,
            Endpoint::Rerank,
        ] {
            let e = d.supports(ep, "claude", "a").unwrap_err();
            let GatewayError::InvalidRequest { message, param } = &e else {
                panic!("{e:?}");
            };
            assert_eq!(*param, Some("model"));
            assert!(message.contains("`claude`"), "{message}");
            assert!(message.contains(ep.upstream_suffix()), "{message}");
        }
    }

    #[test]
    fn rerank_needs_the_route_to_declare_it() {
        let o = RouteDialect::openai();
        let e = o.supports(Endpoint::Rerank, "r", "o").unwrap_err();
        assert!(e.to_string().contains("rerank: true"), "{e}");
        assert!(o
            .with_rerank(true)
            .supports(Endpoint::Rerank, "r", "o")
            .is_ok());
        let p = provider("{kind: openai}");
        let d = RouteDialect::build(&p, &route("{provider: o, model: m, rerank: true}"), "/v1");
        assert!(d.supports(Endpoint::Rerank, "r", "o").is_ok());
    }
}
