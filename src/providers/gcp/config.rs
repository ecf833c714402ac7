//! The `vertex:` block of a `kind: vertex` provider, ready to be wired into
//! `config::schema::Provider` (as `mock:` is). Parsed with unknown fields
//! rejected; [`VertexConfig::validate`] reports every problem with its
//! field path; [`VertexConfig::build`] loads the key and gives the runtime
//! [`TokenSource`]. Every string may be `${VAR}`.
//!
//! ```yaml
//! providers:
//!   vertex-eu:
//!     kind: vertex
//!     vertex:
//!       project: my-project
//!       location: europe-west4      # or global
//!       credentials:                # default: service_account from GOOGLE_APPLICATION_CREDENTIALS
//!         source: service_account   # service_account | access_token
//!         key_file: /etc/tollgate/vertex-sa.json
//! ```

use super::oauth::{ServiceAccountKey, Signer, TokenSource, CLOUD_PLATFORM};
use crate::config::duration::HumanDuration;
use crate::providers::secret::Secret;
use crate::providers::token_client::TokenClient;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Default margin before expiry at which a token is refreshed.
pub const DEFAULT_REFRESH_BEFORE: Duration = Duration::from_secs(300);
/// Default deadline of one token-endpoint call.
pub const DEFAULT_TOKEN_TIMEOUT: Duration = Duration::from_secs(10);

/// `providers.<name>.vertex`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VertexConfig {
    /// Google Cloud project id.
    pub project: String,
    /// Region (`us-central1`, `europe-west4`) or `global`.
    pub location: String,
    /// How requests are authenticated. Absent: `service_account` from
    /// `GOOGLE_APPLICATION_CREDENTIALS`, unless the provider has `api_key`
    /// / `api_keys` (Google Cloud API keys, sent as `x-goog-api-key`).
    #[serde(default)]
    pub credentials: Option<GcpCredentials>,
}

/// `providers.<name>.vertex.credentials`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "source", rename_all = "snake_case", deny_unknown_fields)]
pub enum GcpCredentials {
    /// A service-account key: `key_file` (default: the file named by
    /// `GOOGLE_APPLICATION_CREDENTIALS`) or its JSON in `key_json`.
    ServiceAccount {
        #[serde(default)]
        key_file: Option<String>,
        #[serde(default)]
        key_json: Option<Secret>,
        /// Overrides the key's `token_uri` (private endpoints, tests).
        #[serde(default)]
        token_uri: Option<String>,
        /// Refresh this long before the token expires (default 5m, at most 30m).
        #[serde(default)]
        refresh_before: Option<HumanDuration>,
    },
    /// A fixed access token, usually `${GOOGLE_OAUTH_ACCESS_TOKEN}`; it is
    /// not refreshed.
    AccessToken { access_token: Secret },
}

impl Default for GcpCredentials {
    fn default() -> Self {
        GcpCredentials::ServiceAccount {
            key_file: None,
            key_json: None,
            token_uri: None,
            refresh_before: None,
        }
    }
}

fn name_ok(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

impl VertexConfig {
    /// The API base URL of the location (a provider's `base_url` overrides it).
    pub fn default_base_url(&self) -> String {
        super::vertex::base_url(&self.location)
    }

    /// Every problem, each naming its field below `at`.
    pub fn validate(&self, at: &str) -> Vec<String> {
        let mut errs = Vec::new();
        if !name_ok(&self.project, 63) {
            errs.push(format!(
                "{at}.project: `{}` is not a Google Cloud project id (lowercase letters, digits, -)",
                self.project
            ));
        }
        if !name_ok(&self.location, 32) {
            errs.push(format!(
                "{at}.location: `{}` is not a location (e.g. us-central1, global)",
                self.location
            ));
        }
        let at = format!("{at}.credentials");
        let Some(credentials) = &self.credentials else {
            return errs;
        };
        match credentials {
            GcpCredentials::ServiceAccount {
                key_file,
                key_json,
                token_uri,
                refresh_before,
            } => {
                if key_file.is_some() && key_json.is_some() {
                    errs.push(format!("{at}: set key_file or key_json, not both"));
                }
                if let Some(u) = token_uri {
                    if let Err(why) = crate::config::url::parse_base_url(u) {
                        errs.push(format!("{at}.token_uri: {why}"));
                    }
                }
                if refresh_before.is_some_and(|r| r.get() > Duration::from_secs(1800)) {
                    errs.push(format!("{at}.refresh_before: must be at most 30m"));
                }
            }
            GcpCredentials::AccessToken { access_token } => {
                let t = access_token.expose();
                if t.is_empty() || t.len() > 4096 || !t.bytes().all(|b| b.is_ascii_graphic()) {
                    errs.push(format!(
                        "{at}.access_token: must be 1 to 4096 visible ASCII characters"
                    ));
                }
            }
        }
        errs
    }

    /// Loads the key (checking it can sign) and gives the token source.
    /// `var` reads the environment; `client` calls the token endpoint.
    /// Errors name the field and never quote key material.
    pub fn build(
        &self,
        at: &str,
        var: impl Fn(&str) -> Option<String>,
        client: TokenClient,
    ) -> Result<TokenSource, String> {
        let at = format!("{at}.credentials");
        let credentials = self.credentials.clone().unwrap_or_default();
        match &credentials {
            GcpCredentials::AccessToken { access_token } => {
                Ok(TokenSource::fixed(access_token.clone()))
            }
            GcpCredentials::ServiceAccount {
                key_file,
                key_json,
                token_uri,
                refresh_before,
            } => {
                let mut key = match (key_json, key_file) {
                    (Some(json), _) => ServiceAccountKey::parse(json.expose().as_bytes())
                        .map_err(|e| format!("{at}.key_json: {e}"))?,
                    (None, Some(f)) => ServiceAccountKey::from_file(f)
                        .map_err(|e| format!("{at}.key_file: {e}"))?,
                    (None, None) => {
                        let f = var("GOOGLE_APPLICATION_CREDENTIALS").ok_or_else(|| {
                            format!("{at}.key_file: not set, and GOOGLE_APPLICATION_CREDENTIALS is not set")
                        })?;
                        ServiceAccountKey::from_file(&f).map_err(|e| {
                            format!("{at}.key_file (GOOGLE_APPLICATION_CREDENTIALS): {e}")
                        })?
                    }
                };
                if let Some(u) = token_uri {
                    key.token_uri = u.clone();
                }
                let signer = Signer::new(key, CLOUD_PLATFORM).map_err(|e| format!("{at}: {e}"))?;
                Ok(TokenSource::service_account(
                    signer,
                    client,
                    refresh_before.map_or(DEFAULT_REFRESH_BEFORE, HumanDuration::get),
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/gcp/test-sa.json"
    ));

    fn parse(yaml: &str) -> Result<VertexConfig, String> {
        serde_yaml::from_str(yaml).map_err(|e| e.to_string())
    }

    fn client() -> TokenClient {
        TokenClient::new(DEFAULT_TOKEN_TIMEOUT, None)
    }

    #[test]
    fn unknown_fields_are_rejected() {
        assert!(parse("project: p\nlocation: l\nprojct: x").is_err());
        assert!(parse("project: p\nlocation: l\ncredentials: {source: access_token, access_token: t, extra: 1}").is_err());
    }

    #[test]
    fn validation_names_every_bad_field() {
        let c = parse("project: My_Proj\nlocation: 'us central'\ncredentials: {source: service_account, key_file: a, key_json: b, token_uri: 'ftp://x', refresh_before: 2h}").unwrap();
        let all = c.validate("providers.v.vertex").join("\n");
        for f in [
            "vertex.project",
            "vertex.location",
            "credentials: set key_file",
            "credentials.token_uri",
            "credentials.refresh_before",
        ] {
            assert!(all.contains(f), "{f} missing in {all}");
        }
        let ok = parse("project: my-proj\nlocation: global\ncredentials: {source: access_token, access_token: ya29.x}").unwrap();
        assert!(ok.validate("p").is_empty());
        assert_eq!(
            ok.default_base_url(),
            "https://aiplatform.googleapis.com/v1"
        );
    }

    #[test]
    fn keys_load_from_json_file_or_environment_and_never_print() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sa.json");
        std::fs::write(&path, KEY).unwrap();
        let p = path.to_str().unwrap().to_string();
        let c = parse("project: p\nlocation: us-central1").unwrap();
        let env = |k: &str| (k == "GOOGLE_APPLICATION_CREDENTIALS").then(|| p.clone());
        let src = c.build("x", env, client()).unwrap();
        let shown = format!("{src:?} {c:?}");
        assert!(
            shown.contains("gateway@tollgate-test") && !shown.contains("PRIVATE KEY"),
            "{shown}"
        );
        let e = c.build("x", |_| None, client()).unwrap_err();
        assert!(
            e.contains("x.credentials.key_file") && e.contains("GOOGLE_APPLICATION_CREDENTIALS"),
            "{e}"
        );
        let inline = VertexConfig {
            credentials: Some(GcpCredentials::ServiceAccount {
                key_json: Some(Secret::new(KEY)),
                key_file: None,
                token_uri: None,
                refresh_before: None,
            }),
            ..c.clone()
        };
        assert!(inline.build("x", |_| None, client()).is_ok());
        let shown = serde_json::to_string(&inline).unwrap();
        assert!(!shown.contains("PRIVATE KEY"), "{shown}");
        let bad = VertexConfig {
            credentials: Some(GcpCredentials::ServiceAccount {
                key_json: Some(Secret::new(
                    "{\"client_email\":\"a\",\"private_key\":\"nope-secret\"}",
                )),
                key_file: None,
                token_uri: None,
                refresh_before: None,
            }),
            ..c
        };
        let e = bad.build("x", |_| None, client()).unwrap_err();
        assert!(
            e.starts_with("x.credentials") && !e.contains("nope-secret"),
            "{e}"
        );
    }
}
