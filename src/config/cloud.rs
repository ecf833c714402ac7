//! The `bedrock:` and `vertex:` blocks of the cloud kinds' providers: their
//! types (unknown fields rejected), their defaults and their validation,
//! which reports every problem with its field path and never quotes a
//! secret. How they become runtime credentials is the providers' part
//! (`providers::aws::config`, `providers::gcp::config`). Every string may
//! be `${VAR}` (expanded by the loader).
//!
//! ```yaml
//! providers:
//!   claude-aws:
//!     kind: bedrock
//!     bedrock:
//!       region: us-east-1
//!       credentials:              # default: { source: environment }
//!         source: static          # static | environment | web_identity | api_key
//!         access_key_id: ${AWS_ACCESS_KEY_ID}
//!         secret_access_key: ${AWS_SECRET_ACCESS_KEY}
//!         session_token: ${AWS_SESSION_TOKEN}   # optional
//!   vertex-eu:
//!     kind: vertex
//!     vertex:
//!       project: my-project
//!       location: europe-west4      # or global
//!       credentials:                # default: service_account from GOOGLE_APPLICATION_CREDENTIALS
//!         source: service_account   # service_account | access_token
//!         key_file: /etc/tollgate/vertex-sa.json
//! ```

use super::duration::HumanDuration;
use crate::base::secret::Secret;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Default `DurationSeconds` asked of STS.
pub const DEFAULT_SESSION_DURATION: Duration = Duration::from_secs(3600);
/// Default margin before expiry at which credentials are refreshed.
pub const DEFAULT_REFRESH_BEFORE: Duration = Duration::from_secs(300);

/// Default margin before expiry at which a token is refreshed.
pub const GCP_REFRESH_BEFORE: Duration = Duration::from_secs(300);

/// The Bedrock runtime endpoint of a region.
pub fn bedrock_base_url(region: &str) -> String {
    format!("https://bedrock-runtime.{region}.amazonaws.com")
}

/// The Vertex API base URL of a location:
/// `https://{location}-aiplatform.googleapis.com/v1`, or
/// `https://aiplatform.googleapis.com/v1` for `global`.
pub fn vertex_base_url(location: &str) -> String {
    if location == "global" {
        "https://aiplatform.googleapis.com/v1".into()
    } else {
        format!("https://{location}-aiplatform.googleapis.com/v1")
    }
}

/// Which publisher's models a Vertex route uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Publisher {
    Google,
    Anthropic,
}

impl Publisher {
    /// The publisher of a model name: `claude-*` is Anthropic's, anything
    /// else Google's.
    pub fn of(model: &str) -> Publisher {
        if model.starts_with("claude") {
            Publisher::Anthropic
        } else {
            Publisher::Google
        }
    }
}

/// `providers.<name>.bedrock`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BedrockConfig {
    /// AWS region of the Bedrock runtime endpoint (`us-east-1`).
    pub region: String,
    /// How requests are authenticated. Absent: `environment`, unless the
    /// provider has `api_key` / `api_keys` (Bedrock API keys, sent as
    /// `Authorization: Bearer`).
    #[serde(default)]
    pub credentials: Option<AwsCredentials>,
}

/// `providers.<name>.bedrock.credentials`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(tag = "source", rename_all = "snake_case", deny_unknown_fields)]
pub enum AwsCredentials {
    /// Keys written in the config (usually `${VAR}`s).
    Static {
        access_key_id: String,
        secret_access_key: Secret,
        #[serde(default)]
        session_token: Option<Secret>,
    },
    /// `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN`
    /// of the gateway's environment, else web identity from
    /// `AWS_WEB_IDENTITY_TOKEN_FILE` + `AWS_ROLE_ARN` (+
    /// `AWS_ROLE_SESSION_NAME`), read when the config is built.
    #[default]
    Environment,
    /// A web-identity token file exchanged through STS. Fields left out are
    /// taken from the environment variables above.
    WebIdentity {
        #[serde(default)]
        token_file: Option<String>,
        #[serde(default)]
        role_arn: Option<String>,
        #[serde(default)]
        session_name: Option<String>,
        /// Default `https://sts.<region>.amazonaws.com`.
        #[serde(default)]
        sts_endpoint: Option<String>,
        /// `DurationSeconds` asked for: 15m to 12h, default 1h.
        #[serde(default)]
        session_duration: Option<HumanDuration>,
        /// Refresh this long before expiry (default 5m; less than
        /// `session_duration`).
        #[serde(default)]
        refresh_before: Option<HumanDuration>,
    },
    /// A Bedrock API key, sent as `Authorization: Bearer <key>`.
    ApiKey { api_key: Secret },
}

fn region_ok(r: &str) -> bool {
    !r.is_empty()
        && r.len() <= 32
        && r.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !r.starts_with('-')
        && !r.ends_with('-')
}

impl BedrockConfig {
    /// The runtime endpoint, `https://bedrock-runtime.<region>.amazonaws.com`
    /// (a provider's `base_url` overrides it).
    pub fn default_base_url(&self) -> String {
        bedrock_base_url(&self.region)
    }

    /// Every problem, each naming its field below `at`
    /// (`providers.claude-aws.bedrock`).
    pub fn validate(&self, at: &str) -> Vec<String> {
        let mut errs = Vec::new();
        if !region_ok(&self.region) {
            errs.push(format!(
                "{at}.region: `{}` is not an AWS region name (e.g. us-east-1)",
                self.region
            ));
        }
        let at = format!("{at}.credentials");
        let Some(credentials) = &self.credentials else {
            return errs;
        };
        match credentials {
            AwsCredentials::Static {
                access_key_id,
                secret_access_key,
                session_token,
            } => {
                if access_key_id.is_empty()
                    || !access_key_id.bytes().all(|b| b.is_ascii_alphanumeric())
                {
                    errs.push(format!(
                        "{at}.access_key_id: must be a non-empty alphanumeric key id"
                    ));
                }
                if secret_access_key.is_empty() || !visible(secret_access_key.expose()) {
                    errs.push(format!(
                        "{at}.secret_access_key: must be non-empty visible ASCII"
                    ));
                }
                if session_token
                    .as_ref()
                    .is_some_and(|t| t.is_empty() || !visible(t.expose()))
                {
                    errs.push(format!(
                        "{at}.session_token: must be non-empty visible ASCII"
                    ));
                }
            }
            AwsCredentials::Environment => {}
            AwsCredentials::WebIdentity {
                sts_endpoint,
                session_duration,
                refresh_before,
                role_arn,
                ..
            } => {
                if let Some(e) = sts_endpoint {
                    if let Err(why) = crate::config::url::parse_base_url(e) {
                        errs.push(format!("{at}.sts_endpoint: {why}"));
                    }
                }
                let d = session_duration.map_or(DEFAULT_SESSION_DURATION, HumanDuration::get);
                if !(Duration::from_secs(900)..=Duration::from_secs(43200)).contains(&d) {
                    errs.push(format!(
                        "{at}.session_duration: must be between 15m and 12h"
                    ));
                }
                let r = refresh_before.map_or(DEFAULT_REFRESH_BEFORE, HumanDuration::get);
                if r >= d {
                    errs.push(format!(
                        "{at}.refresh_before: must be shorter than session_duration"
                    ));
                }
                if role_arn.as_ref().is_some_and(|a| !a.starts_with("arn:")) {
                    errs.push(format!(
                        "{at}.role_arn: must be an IAM role ARN (arn:aws:iam::…:role/…)"
                    ));
                }
            }
            AwsCredentials::ApiKey { api_key } => {
                if api_key.is_empty() || !visible(api_key.expose()) || api_key.expose().len() > 4096
                {
                    errs.push(format!(
                        "{at}.api_key: must be 1 to 4096 visible ASCII characters"
                    ));
                }
            }
        }
        errs
    }
}

fn visible(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_graphic())
}

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
        vertex_base_url(&self.location)
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
}
