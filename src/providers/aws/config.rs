//! The `bedrock:` block of a `kind: bedrock` provider, ready to be wired
//! into `config::schema::Provider` (as `mock:` is). Parsed with unknown
//! fields rejected; [`BedrockConfig::validate`] reports every problem with
//! its field path; [`BedrockConfig::build`] turns it into the runtime
//! [`Auth`]. Every string may be `${VAR}` (expanded by the config loader).
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
//! ```

use super::credentials::{self, Credentials, Provider, WebIdentity};
use super::sigv4;
use crate::config::duration::HumanDuration;
use crate::providers::secret::Secret;
use crate::providers::token_client::TokenClient;
use http::HeaderValue;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Default `DurationSeconds` asked of STS.
pub const DEFAULT_SESSION_DURATION: Duration = Duration::from_secs(3600);
/// Default margin before expiry at which credentials are refreshed.
pub const DEFAULT_REFRESH_BEFORE: Duration = Duration::from_secs(300);
/// Default deadline of one STS call.
pub const DEFAULT_STS_TIMEOUT: Duration = Duration::from_secs(10);

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

/// How a Bedrock request is authenticated at run time.
#[derive(Debug, Clone)]
pub enum Auth {
    /// SigV4-sign each request with these credentials.
    SigV4(Provider),
    /// Send this `Authorization` value (sensitive).
    Bearer(HeaderValue),
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
        crate::translate::bedrock::base_url(&self.region)
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

    /// The runtime authentication. `var` reads the environment (the real
    /// one is `|k| std::env::var(k).ok()`); `client` makes the STS calls.
    /// Errors name the field or the missing variable.
    pub fn build(
        &self,
        at: &str,
        var: impl Fn(&str) -> Option<String>,
        client: TokenClient,
    ) -> Result<Auth, String> {
        let at = format!("{at}.credentials");
        let web = |token_file: Option<String>,
                   role_arn: Option<String>,
                   session_name: Option<String>,
                   sts_endpoint: Option<String>,
                   duration: Option<HumanDuration>,
                   refresh: Option<HumanDuration>,
                   client: TokenClient| {
            let token_file = token_file
                .or_else(|| var("AWS_WEB_IDENTITY_TOKEN_FILE"))
                .ok_or_else(|| {
                    format!("{at}.token_file: not set, and AWS_WEB_IDENTITY_TOKEN_FILE is not set")
                })?;
            let role_arn = role_arn
                .or_else(|| var("AWS_ROLE_ARN"))
                .ok_or_else(|| format!("{at}.role_arn: not set, and AWS_ROLE_ARN is not set"))?;
            let session_name = session_name
                .or_else(|| var("AWS_ROLE_SESSION_NAME"))
                .unwrap_or_else(|| "tollgate".into());
            let sts_endpoint = sts_endpoint
                .unwrap_or_else(|| format!("https://sts.{}.amazonaws.com", self.region));
            Ok::<Auth, String>(Auth::SigV4(Provider::web_identity(
                WebIdentity {
                    token_file,
                    role_arn,
                    session_name,
                    sts_endpoint,
                    duration: duration.map_or(DEFAULT_SESSION_DURATION, HumanDuration::get),
                    refresh_before: refresh.map_or(DEFAULT_REFRESH_BEFORE, HumanDuration::get),
                },
                client,
            )))
        };
        let credentials = self.credentials.clone().unwrap_or_default();
        match &credentials {
            AwsCredentials::Static {
                access_key_id,
                secret_access_key,
                session_token,
            } => Ok(Auth::SigV4(Provider::fixed(Credentials {
                access_key_id: access_key_id.clone(),
                secret_access_key: secret_access_key.clone(),
                session_token: session_token.clone(),
                expires: None,
            }))),
            AwsCredentials::Environment => {
                if let Some(c) = credentials::from_env(&var) {
                    return Ok(Auth::SigV4(Provider::fixed(c)));
                }
                if var("AWS_WEB_IDENTITY_TOKEN_FILE").is_some() {
                    return web(None, None, None, None, None, None, client);
                }
                Err(format!(
                    "{at}: source `environment`, but neither AWS_ACCESS_KEY_ID + AWS_SECRET_ACCESS_KEY nor AWS_WEB_IDENTITY_TOKEN_FILE + AWS_ROLE_ARN is set"
                ))
            }
            AwsCredentials::WebIdentity {
                token_file,
                role_arn,
                session_name,
                sts_endpoint,
                session_duration,
                refresh_before,
            } => web(
                token_file.clone(),
                role_arn.clone(),
                session_name.clone(),
                sts_endpoint.clone(),
                *session_duration,
                *refresh_before,
                client,
            ),
            AwsCredentials::ApiKey { api_key } => sigv4::bearer(api_key)
                .map(Auth::Bearer)
                .map_err(|_| format!("{at}.api_key: not a valid header value")),
        }
    }
}

fn visible(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<BedrockConfig, String> {
        serde_yaml::from_str(yaml).map_err(|e| e.to_string())
    }

    fn client() -> TokenClient {
        TokenClient::new(DEFAULT_STS_TIMEOUT, None)
    }

    #[test]
    fn unknown_fields_are_rejected_at_every_level() {
        assert!(parse("region: us-east-1\nregoin: x").is_err());
        let e = parse("region: us-east-1\ncredentials: {source: static, access_key_id: A, secret_access_key: B, sesion_token: C}").unwrap_err();
        assert!(e.contains("sesion_token"), "{e}");
        assert!(parse("region: us-east-1\ncredentials: {source: magic}").is_err());
    }

    #[test]
    fn validation_names_every_bad_field() {
        let c = parse("region: US_East\ncredentials: {source: web_identity, session_duration: 5m, role_arn: nope, sts_endpoint: ftp://x}").unwrap();
        let errs = c.validate("providers.b.bedrock");
        let all = errs.join("\n");
        for f in [
            "bedrock.region",
            "credentials.session_duration",
            "credentials.role_arn",
            "credentials.sts_endpoint",
            "credentials.refresh_before",
        ] {
            assert!(all.contains(f), "{f} missing in {all}");
        }
        let ok = parse("region: eu-central-1\ncredentials: {source: static, access_key_id: AKIDEXAMPLE, secret_access_key: s3cr3t/x+y}").unwrap();
        assert!(ok.validate("p").is_empty());
        assert_eq!(
            ok.default_base_url(),
            "https://bedrock-runtime.eu-central-1.amazonaws.com"
        );
    }

    #[test]
    fn secrets_never_print() {
        let c = parse("region: us-east-1\ncredentials: {source: static, access_key_id: AKIDEXAMPLE, secret_access_key: topsecretvalue, session_token: tokenvalue123}").unwrap();
        let shown = format!("{c:?} {}", serde_json::to_string(&c).unwrap());
        assert!(
            !shown.contains("topsecretvalue") && !shown.contains("tokenvalue123"),
            "{shown}"
        );
        let built = c.build("p", |_| None, client()).unwrap();
        let shown = format!("{built:?}");
        assert!(
            !shown.contains("topsecretvalue") && !shown.contains("AKIDEXAMPLE"),
            "{shown}"
        );
    }

    #[test]
    fn environment_prefers_keys_then_web_identity() {
        let c = parse("region: us-east-1").unwrap();
        let env = |k: &str| match k {
            "AWS_ACCESS_KEY_ID" => Some("AKID".to_string()),
            "AWS_SECRET_ACCESS_KEY" => Some("secret".to_string()),
            _ => None,
        };
        assert!(matches!(
            c.build("p", env, client()).unwrap(),
            Auth::SigV4(_)
        ));
        let env = |k: &str| match k {
            "AWS_WEB_IDENTITY_TOKEN_FILE" => Some("/var/run/token".to_string()),
            "AWS_ROLE_ARN" => Some("arn:aws:iam::1:role/r".to_string()),
            _ => None,
        };
        let a = c.build("p", env, client()).unwrap();
        assert!(
            format!("{a:?}").contains("sts.us-east-1.amazonaws.com"),
            "{a:?}"
        );
        let e = c.build("p", |_| None, client()).unwrap_err();
        assert!(
            e.contains("p.credentials") && e.contains("AWS_ACCESS_KEY_ID"),
            "{e}"
        );
        let w = parse("region: us-east-1\ncredentials: {source: web_identity}").unwrap();
        let e = w.build("p", |_| None, client()).unwrap_err();
        assert!(e.contains("p.credentials.token_file"), "{e}");
    }

    #[test]
    fn api_keys_become_bearer_headers() {
        let c = parse("region: us-east-1\ncredentials: {source: api_key, api_key: ABSKexample}")
            .unwrap();
        match c.build("p", |_| None, client()).unwrap() {
            Auth::Bearer(v) => {
                assert_eq!(v, "Bearer ABSKexample");
                assert!(v.is_sensitive());
            }
            other => panic!("{other:?}"),
        }
    }
}
