//! The providers of `/v1/files` and `/v1/batches` (each `files_provider`
//! named by a key or team), compiled for the request path: one route of
//! its own per provider, so those calls take the same attempt walk,
//! credentials, timeouts, retries and metrics as any other, and where the
//! provider's files API sits below its base URL.

use super::{ModelRt, ProviderRt, RouteRt};
use crate::config::{Config, ProviderKind};
use std::collections::HashMap;
use std::sync::Arc;

/// One `files_provider`, ready to use.
pub struct FilesRt {
    /// A one-route alias on the provider (`files:<provider>` in metrics and
    /// logs). Its route splices nothing into the body.
    pub model: Arc<ModelRt>,
    /// The path of the files API's root, the base URL's prefix included:
    /// `<prefix>` for `openai` (whose base URL ends in `/v1`),
    /// `<prefix>/openai` for `azure` with `api_version`, else
    /// `<prefix>/openai/v1`.
    pub root: String,
    /// A query every call carries (Azure's `api-version=…`), encoded.
    pub query: Option<String>,
}

/// The alias name a files provider's calls are counted under.
pub fn alias_of(provider: &str) -> String {
    format!("files:{provider}")
}

/// Compiles every provider a key or team names as `files_provider`.
/// `problems` gets what cannot be built (validation has named the field
/// already for a missing or translated provider).
pub fn build(
    cfg: &Config,
    providers: &HashMap<String, Arc<ProviderRt>>,
    durable: &super::durable::Durable,
    problems: &mut Vec<String>,
) -> HashMap<String, Arc<FilesRt>> {
    let named = cfg
        .keys
        .iter()
        .filter_map(|k| k.files_provider.as_ref())
        .chain(cfg.teams.values().filter_map(|t| t.files_provider.as_ref()));
    let mut out = HashMap::new();
    for name in named {
        if out.contains_key(name) {
            continue;
        }
        let (Some(p), Some(pc)) = (providers.get(name), cfg.providers.get(name)) else {
            continue;
        };
        let ProviderRt::Http(up) = &**p else {
            continue;
        };
        if !crate::config::files::serves_files(pc.kind) {
            continue;
        }
        let alias = alias_of(name);
        let model: crate::config::Model = match serde_json::from_value(serde_json::json!({
            "routes": [ { "provider": name, "model": "files" } ]
        })) {
            Ok(m) => m,
            Err(e) => {
                problems.push(format!("files_provider `{name}`: {e}"));
                continue;
            }
        };
        let Some(r) = model.routes.first() else {
            continue;
        };
        let mut route = RouteRt::compile(cfg, r, p);
        // The body goes as the client sent it: nothing is spliced.
        route.model_json = bytes::Bytes::new();
        let prefix = up.base.prefix.trim_end_matches('/');
        let (root, query) = match (pc.kind, &pc.api_version) {
            (ProviderKind::Azure, Some(v)) => (
                format!("{prefix}/openai"),
                Some(format!("api-version={}", encode(v))),
            ),
            (ProviderKind::Azure, None) => (format!("{prefix}/openai/v1"), None),
            _ => (prefix.to_string(), None),
        };
        let rt = ModelRt {
            name: Arc::from(alias.as_str()),
            routes: vec![route],
            rules: Vec::new(),
            prices: Vec::new(),
            reserve_output_tokens: 0,
            ratios: crate::governance::ratio::Ratios::build(
                &durable.ratios,
                &alias,
                [crate::config::routing::route_name(r)]
                    .iter()
                    .map(String::as_str),
            ),
            routing: crate::routing::Plan::build(&durable.routes, &alias, &model),
            cache: None,
            capture: None,
        };
        out.insert(
            name.clone(),
            Arc::new(FilesRt {
                model: Arc::new(rt),
                root,
                query,
            }),
        );
    }
    out
}

/// Percent-encodes a query value.
fn encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}
