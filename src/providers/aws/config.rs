//! How a `kind: bedrock` provider's `bedrock:` block (its types and
//! validation are `config::cloud`'s) becomes the runtime [`Auth`]:
//! [`BedrockConfig::build`].

use super::credentials::{self, Credentials, Provider, WebIdentity};
use super::sigv4;
pub use crate::config::cloud::{
    AwsCredentials, BedrockConfig, DEFAULT_REFRESH_BEFORE, DEFAULT_SESSION_DURATION,
};
use crate::config::duration::HumanDuration;
use crate::providers::token_client::TokenClient;
use http::HeaderValue;
use std::time::Duration;

/// Default deadline of one STS call.
pub const DEFAULT_STS_TIMEOUT: Duration = Duration::from_secs(10);

/// How a Bedrock request is authenticated at run time.
#[derive(Debug, Clone)]
pub enum Auth {
    /// SigV4-sign each request with these credentials.
    SigV4(Provider),
    /// Send this `Authorization` value (sensitive).
    Bearer(HeaderValue),
}

impl BedrockConfig {
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
