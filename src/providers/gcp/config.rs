//! How a `kind: vertex` provider's `vertex:` block (its types and
//! validation are `config::cloud`'s) becomes the runtime `TokenSource`:
//! [`VertexConfig::build`].

use super::oauth::{ServiceAccountKey, Signer, TokenSource, CLOUD_PLATFORM};
pub use crate::config::cloud::{
    GcpCredentials, VertexConfig, GCP_REFRESH_BEFORE as DEFAULT_REFRESH_BEFORE,
};
use crate::config::duration::HumanDuration;
use crate::providers::token_client::TokenClient;
use std::time::Duration;

/// Default deadline of one token-endpoint call.
pub const DEFAULT_TOKEN_TIMEOUT: Duration = Duration::from_secs(10);

impl VertexConfig {
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
    use crate::base::secret::Secret;

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
