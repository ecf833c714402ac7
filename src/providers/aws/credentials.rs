//! AWS credentials for signing: static (config or environment) or web
//! identity (a token file exchanged through STS `AssumeRoleWithWebIdentity`,
//! cached and refreshed before it expires, one refresh at a time).

use super::sts;
use crate::base::error::GatewayError;
use crate::providers::secret::Secret;
use crate::providers::token_client::TokenClient;
use arc_swap::ArcSwapOption;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// One set of AWS credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: Secret,
    pub session_token: Option<Secret>,
    /// When temporary credentials stop working.
    pub expires: Option<SystemTime>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The key id is not secret by AWS's rules, but says which identity
        // we use: show its prefix only.
        let id: String = self.access_key_id.chars().take(4).collect();
        f.debug_struct("Credentials")
            .field("access_key_id", &format_args!("{id}…"))
            .field("session_token", &self.session_token.is_some())
            .field("expires", &self.expires)
            .finish()
    }
}

impl Credentials {
    /// Whether they are still good `margin` from now.
    pub fn fresh(&self, now: SystemTime, margin: Duration) -> bool {
        self.expires.is_none_or(|e| now + margin < e)
    }

    /// Whether they have not expired yet.
    pub fn valid(&self, now: SystemTime) -> bool {
        self.expires.is_none_or(|e| now < e)
    }
}

/// Why credentials could not be had. Operators see the detail in the log;
/// clients get [`GatewayError::UpstreamError`] (502 generic), and the
/// breaker should count it like a connect failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialsError {
    /// The web-identity token file cannot be read.
    TokenFile(String),
    /// STS could not be reached or answered badly.
    Sts(String),
}

impl fmt::Display for CredentialsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TokenFile(why) => write!(f, "web identity token file: {why}"),
            Self::Sts(why) => write!(f, "STS AssumeRoleWithWebIdentity: {why}"),
        }
    }
}

impl From<CredentialsError> for GatewayError {
    fn from(e: CredentialsError) -> Self {
        log::error!("AWS credentials unavailable: {e}");
        GatewayError::UpstreamError
    }
}

/// Settings of a web-identity credential source.
#[derive(Debug, Clone)]
pub struct WebIdentity {
    /// File holding the OIDC token (re-read on every refresh: it rotates).
    pub token_file: String,
    pub role_arn: String,
    pub session_name: String,
    /// STS endpoint URL (`https://sts.<region>.amazonaws.com`).
    pub sts_endpoint: String,
    /// `DurationSeconds` asked for (900 to 43200).
    pub duration: Duration,
    /// Refresh this long before the credentials expire.
    pub refresh_before: Duration,
}

/// Where credentials come from.
// One per provider, behind the provider's `Arc`: the variants' sizes cost
// nothing per request.
#[allow(clippy::large_enum_variant)]
pub enum Source {
    Static(Arc<Credentials>),
    WebIdentity {
        conf: WebIdentity,
        client: TokenClient,
        cache: ArcSwapOption<Credentials>,
        /// Held while one caller refreshes: the others wait for its result.
        refresh: tokio::sync::Mutex<()>,
    },
}

/// A credential provider shared by every request of one provider.
#[derive(Clone)]
pub struct Provider(Arc<Source>);

impl fmt::Debug for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &*self.0 {
            Source::Static(c) => f.debug_tuple("Static").field(&**c).finish(),
            Source::WebIdentity { conf, .. } => f
                .debug_struct("WebIdentity")
                .field("role_arn", &conf.role_arn)
                .field("sts_endpoint", &conf.sts_endpoint)
                .finish(),
        }
    }
}

impl Provider {
    /// Fixed credentials.
    pub fn fixed(c: Credentials) -> Self {
        Self(Arc::new(Source::Static(Arc::new(c))))
    }

    /// Credentials usable for at least `within` from now, without waiting:
    /// the fixed ones, or the cached web-identity ones.
    pub fn usable(&self, now: SystemTime, within: Duration) -> Option<Arc<Credentials>> {
        match &*self.0 {
            Source::Static(c) => Some(c.clone()),
            Source::WebIdentity { cache, .. } => cache.load_full().filter(|c| c.fresh(now, within)),
        }
    }

    /// Whether [`Provider::credentials`] would call STS now: web identity
    /// with nothing cached, or credentials within `refresh_before` of
    /// their expiry. A background refresher calls it so that requests find
    /// fresh credentials.
    pub fn refresh_due(&self, now: SystemTime) -> bool {
        match &*self.0 {
            Source::Static(_) => false,
            Source::WebIdentity { conf, cache, .. } => cache
                .load_full()
                .is_none_or(|c| !c.fresh(now, conf.refresh_before)),
        }
    }

    /// Web identity through STS, with `client` for the STS call.
    pub fn web_identity(conf: WebIdentity, client: TokenClient) -> Self {
        Self(Arc::new(Source::WebIdentity {
            conf,
            client,
            cache: ArcSwapOption::empty(),
            refresh: tokio::sync::Mutex::new(()),
        }))
    }

    /// Credentials to sign with now. Cached web-identity credentials are used
    /// until `refresh_before` their expiry; then one caller refreshes while
    /// the others wait. If a refresh fails but the cached credentials have
    /// not expired yet, those are used (and the failure logged).
    pub async fn credentials(&self) -> Result<Arc<Credentials>, CredentialsError> {
        let (conf, client, cache, refresh) = match &*self.0 {
            Source::Static(c) => return Ok(c.clone()),
            Source::WebIdentity {
                conf,
                client,
                cache,
                refresh,
            } => (conf, client, cache, refresh),
        };
        if let Some(c) = cache.load_full() {
            if c.fresh(SystemTime::now(), conf.refresh_before) {
                return Ok(c);
            }
        }
        let _one = refresh.lock().await;
        // Another caller may have refreshed while we waited.
        let cached = cache.load_full();
        if let Some(c) = &cached {
            if c.fresh(SystemTime::now(), conf.refresh_before) {
                return Ok(c.clone());
            }
        }
        match assume(conf, client).await {
            Ok(c) => {
                let c = Arc::new(c);
                cache.store(Some(c.clone()));
                Ok(c)
            }
            Err(e) => match cached {
                Some(c) if c.valid(SystemTime::now()) => {
                    log::warn!("AWS credentials refresh failed, using the cached ones: {e}");
                    Ok(c)
                }
                _ => Err(e),
            },
        }
    }
}

async fn assume(conf: &WebIdentity, client: &TokenClient) -> Result<Credentials, CredentialsError> {
    let token = tokio::fs::read_to_string(&conf.token_file)
        .await
        .map_err(|e| CredentialsError::TokenFile(format!("`{}`: {e}", conf.token_file)))?;
    let token = Secret::new(token.trim());
    if token.is_empty() {
        return Err(CredentialsError::TokenFile(format!(
            "`{}` is empty",
            conf.token_file
        )));
    }
    let body = sts::request_body(
        &conf.role_arn,
        &conf.session_name,
        &token,
        conf.duration.as_secs(),
    );
    let answer = client
        .post_form(&conf.sts_endpoint, &body)
        .await
        .map_err(|e| CredentialsError::Sts(e.to_string()))?;
    sts::parse_response(answer.status, &answer.body).map_err(CredentialsError::Sts)
}

/// Credentials from the process environment (`AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`), through `var` so tests
/// need not touch the real environment. `None` if the key pair is not set.
pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Option<Credentials> {
    let id = var("AWS_ACCESS_KEY_ID").filter(|v| !v.is_empty())?;
    let secret = var("AWS_SECRET_ACCESS_KEY").filter(|v| !v.is_empty())?;
    Some(Credentials {
        access_key_id: id,
        secret_access_key: Secret::new(secret),
        session_token: var("AWS_SESSION_TOKEN")
            .filter(|v| !v.is_empty())
            .map(Secret::new),
        expires: None,
    })
}
