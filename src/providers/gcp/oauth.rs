//! Google OAuth2 access tokens for Vertex AI: a service-account key signs an
//! RS256 JWT (`jsonwebtoken`) that the token endpoint exchanges for an
//! access token (`grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`).
//! The token is cached until `refresh_before` its expiry, then refreshed by
//! one caller while the others wait. Or a fixed token (from `${VAR}`).
//! Tokens and keys are [`Secret`]s and never printed.

use crate::base::error::GatewayError;
use crate::providers::secret::Secret;
use crate::providers::token_client::TokenClient;
use arc_swap::ArcSwapOption;
use http::HeaderValue;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The scope Vertex AI needs.
pub const CLOUD_PLATFORM: &str = "https://www.googleapis.com/auth/cloud-platform";
/// Google's token endpoint.
pub const DEFAULT_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
/// The JWT-bearer grant type.
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// Lifetime asked for in the JWT (Google's maximum).
const ASSERTION_LIFETIME: u64 = 3600;
/// Largest service-account key file read.
pub const MAX_KEY_FILE_BYTES: u64 = 64 * 1024;

/// The fields of a service-account key file we use (the rest are ignored).
#[derive(Clone, Deserialize)]
pub struct ServiceAccountKey {
    pub client_email: String,
    pub private_key: Secret,
    #[serde(default)]
    pub private_key_id: Option<String>,
    #[serde(default = "default_token_uri")]
    pub token_uri: String,
}

fn default_token_uri() -> String {
    DEFAULT_TOKEN_URI.into()
}

impl fmt::Debug for ServiceAccountKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceAccountKey")
            .field("client_email", &self.client_email)
            .field("token_uri", &self.token_uri)
            .finish()
    }
}

impl ServiceAccountKey {
    /// Parses a key file's JSON. Errors never quote the file.
    pub fn parse(json: &[u8]) -> Result<Self, String> {
        let k: ServiceAccountKey = serde_json::from_slice(json).map_err(|e| {
            format!(
                "not a service-account key file (line {}, column {})",
                e.line(),
                e.column()
            )
        })?;
        if k.client_email.is_empty() {
            return Err("client_email is empty".into());
        }
        Ok(k)
    }

    /// Reads and parses a key file (at most [`MAX_KEY_FILE_BYTES`]).
    pub fn from_file(path: &str) -> Result<Self, String> {
        let meta = std::fs::metadata(path).map_err(|e| format!("cannot read `{path}`: {e}"))?;
        if meta.len() > MAX_KEY_FILE_BYTES {
            return Err(format!(
                "`{path}` is larger than {MAX_KEY_FILE_BYTES} bytes"
            ));
        }
        let bytes = std::fs::read(path).map_err(|e| format!("cannot read `{path}`: {e}"))?;
        Self::parse(&bytes).map_err(|e| format!("`{path}`: {e}"))
    }
}

/// The JWT claims Google wants.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    pub iss: String,
    pub scope: String,
    pub aud: String,
    pub iat: u64,
    pub exp: u64,
}

/// A signer of assertions for one service account.
pub struct Signer {
    key: ServiceAccountKey,
    encoding: EncodingKey,
    scope: String,
}

impl Signer {
    /// Loads the private key and checks it can sign.
    pub fn new(key: ServiceAccountKey, scope: &str) -> Result<Self, String> {
        let encoding = EncodingKey::from_rsa_pem(key.private_key.expose().as_bytes())
            .map_err(|_| "private_key is not an RSA private key in PEM".to_string())?;
        let s = Self {
            key,
            encoding,
            scope: scope.to_string(),
        };
        s.assertion(0)
            .map_err(|_| "private_key cannot sign (not a usable RSA key)".to_string())?;
        Ok(s)
    }

    /// The token endpoint of the key.
    pub fn token_uri(&self) -> &str {
        &self.key.token_uri
    }

    /// A signed assertion issued at `now` (seconds since the epoch).
    pub fn assertion(&self, now: u64) -> Result<Secret, String> {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = self.key.private_key_id.clone();
        let claims = Claims {
            iss: self.key.client_email.clone(),
            scope: self.scope.clone(),
            aud: self.key.token_uri.clone(),
            iat: now,
            exp: now.saturating_add(ASSERTION_LIFETIME),
        };
        jsonwebtoken::encode(&header, &claims, &self.encoding)
            .map(Secret::new)
            .map_err(|e| e.to_string())
    }
}

/// An access token and when it expires.
#[derive(Clone, Debug)]
pub struct AccessToken {
    pub token: Secret,
    pub expires: Option<SystemTime>,
}

impl AccessToken {
    /// `Authorization: Bearer <token>`, marked sensitive.
    pub fn header(&self) -> Result<HeaderValue, TokenError> {
        let mut v = HeaderValue::from_str(&format!("Bearer {}", self.token.expose()))
            .map_err(|_| TokenError::Endpoint("access token is not a valid header value".into()))?;
        v.set_sensitive(true);
        Ok(v)
    }

    fn fresh(&self, now: SystemTime, margin: Duration) -> bool {
        self.expires.is_none_or(|e| now + margin < e)
    }
}

/// The token endpoint failed. Operators see why in the log; clients get
/// [`GatewayError::UpstreamError`] (502 generic), and the breaker should
/// count it like a connect failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    Endpoint(String),
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Endpoint(why) => write!(f, "OAuth token endpoint: {why}"),
        }
    }
}

impl From<TokenError> for GatewayError {
    fn from(e: TokenError) -> Self {
        log::error!("Vertex access token unavailable: {e}");
        GatewayError::UpstreamError
    }
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: Option<String>,
    expires_in: Option<u64>,
    error: Option<String>,
}

/// Reads the token endpoint's answer (`access_token`, `expires_in`). An
/// error answer gives its `error` code only.
pub fn parse_token_answer(
    status: u16,
    body: &[u8],
    now: SystemTime,
) -> Result<AccessToken, TokenError> {
    let a: TokenAnswer = serde_json::from_slice(body)
        .map_err(|_| TokenError::Endpoint(format!("status {status}, body is not JSON")))?;
    if !(200..300).contains(&status) {
        let code = a.error.unwrap_or_else(|| "unknown".into());
        let code: String = code
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
            .take(64)
            .collect();
        return Err(TokenError::Endpoint(format!(
            "status {status}, error {code}"
        )));
    }
    let token = a
        .access_token
        .filter(|t| !t.is_empty())
        .ok_or_else(|| TokenError::Endpoint("answer has no access_token".into()))?;
    let expires_in = a.expires_in.unwrap_or(ASSERTION_LIFETIME).min(86_400);
    Ok(AccessToken {
        token: Secret::new(token),
        expires: Some(now + Duration::from_secs(expires_in)),
    })
}

enum Source {
    Fixed(Arc<AccessToken>),
    ServiceAccount {
        signer: Box<Signer>,
        client: TokenClient,
        refresh_before: Duration,
        cache: ArcSwapOption<AccessToken>,
        refresh: tokio::sync::Mutex<()>,
    },
}

/// Access tokens for one Vertex provider, shared by its requests.
#[derive(Clone)]
pub struct TokenSource(Arc<Source>);

impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &*self.0 {
            Source::Fixed(_) => f.write_str("TokenSource::Fixed([redacted])"),
            Source::ServiceAccount { signer, .. } => f
                .debug_struct("TokenSource::ServiceAccount")
                .field("client_email", &signer.key.client_email)
                .field("token_uri", &signer.key.token_uri)
                .finish(),
        }
    }
}

fn epoch_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl TokenSource {
    /// A fixed token (from the environment); never refreshed.
    pub fn fixed(token: Secret) -> Self {
        Self(Arc::new(Source::Fixed(Arc::new(AccessToken {
            token,
            expires: None,
        }))))
    }

    /// Tokens from a service account through its token endpoint.
    pub fn service_account(signer: Signer, client: TokenClient, refresh_before: Duration) -> Self {
        Self(Arc::new(Source::ServiceAccount {
            signer: Box::new(signer),
            client,
            refresh_before,
            cache: ArcSwapOption::empty(),
            refresh: tokio::sync::Mutex::new(()),
        }))
    }

    /// A token usable for at least `within` from now, without waiting: the
    /// fixed one, or the cached one.
    pub fn usable(&self, now: SystemTime, within: Duration) -> Option<Arc<AccessToken>> {
        match &*self.0 {
            Source::Fixed(t) => Some(t.clone()),
            Source::ServiceAccount { cache, .. } => {
                cache.load_full().filter(|t| t.fresh(now, within))
            }
        }
    }

    /// Whether [`TokenSource::token`] would call the token endpoint now:
    /// nothing cached, or a token within `refresh_before` of its expiry.
    pub fn refresh_due(&self, now: SystemTime) -> bool {
        match &*self.0 {
            Source::Fixed(_) => false,
            Source::ServiceAccount {
                cache,
                refresh_before,
                ..
            } => cache
                .load_full()
                .is_none_or(|t| !t.fresh(now, *refresh_before)),
        }
    }

    /// A token to send now: the cached one until `refresh_before` its
    /// expiry, else a new one (one request at a time; the others wait for
    /// it). A failed refresh falls back to a cached token not yet expired.
    pub async fn token(&self) -> Result<Arc<AccessToken>, TokenError> {
        let (signer, client, margin, cache, refresh) = match &*self.0 {
            Source::Fixed(t) => return Ok(t.clone()),
            Source::ServiceAccount {
                signer,
                client,
                refresh_before,
                cache,
                refresh,
            } => (signer, client, *refresh_before, cache, refresh),
        };
        if let Some(t) = cache.load_full() {
            if t.fresh(SystemTime::now(), margin) {
                return Ok(t);
            }
        }
        let _one = refresh.lock().await;
        let cached = cache.load_full();
        if let Some(t) = &cached {
            if t.fresh(SystemTime::now(), margin) {
                return Ok(t.clone());
            }
        }
        match fetch(signer, client).await {
            Ok(t) => {
                let t = Arc::new(t);
                cache.store(Some(t.clone()));
                Ok(t)
            }
            Err(e) => match cached {
                Some(t) if t.fresh(SystemTime::now(), Duration::ZERO) => {
                    log::warn!("Vertex token refresh failed, using the cached token: {e}");
                    Ok(t)
                }
                _ => Err(e),
            },
        }
    }
}

async fn fetch(signer: &Signer, client: &TokenClient) -> Result<AccessToken, TokenError> {
    let now = SystemTime::now();
    let assertion = signer
        .assertion(epoch_secs(now))
        .map_err(TokenError::Endpoint)?;
    let body = form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", JWT_BEARER)
        .append_pair("assertion", assertion.expose())
        .finish();
    let answer = client
        .post_form(signer.token_uri(), &body)
        .await
        .map_err(|e| TokenError::Endpoint(e.to_string()))?;
    parse_token_answer(answer.status, &answer.body, now)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/gcp/test-sa.json"
    ));
    const PUBLIC: &[u8] = include_bytes!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/gcp/test-sa-public.der"
    ));

    #[test]
    fn assertions_are_rs256_with_googles_claims() {
        let key = ServiceAccountKey::parse(KEY.as_bytes()).unwrap();
        let s = Signer::new(key, CLOUD_PLATFORM).unwrap();
        let jwt = s.assertion(1_700_000_000).unwrap();
        let parts: Vec<&str> = jwt.expose().split('.').collect();
        assert_eq!(parts.len(), 3);
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header: serde_json::Value =
            serde_json::from_slice(&b64.decode(parts[0]).unwrap()).unwrap();
        assert_eq!(header["alg"], "RS256");
        assert_eq!(header["kid"], "0123456789abcdef0123456789abcdef01234567");
        let claims: Claims = serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(
            claims,
            Claims {
                iss: "gateway@tollgate-test.iam.gserviceaccount.com".into(),
                scope: CLOUD_PLATFORM.into(),
                aud: DEFAULT_TOKEN_URI.into(),
                iat: 1_700_000_000,
                exp: 1_700_003_600,
            }
        );
        let sig = b64.decode(parts[2]).unwrap();
        let signed = format!("{}.{}", parts[0], parts[1]);
        ring::signature::UnparsedPublicKey::new(
            &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            PUBLIC,
        )
        .verify(signed.as_bytes(), &sig)
        .expect("signature verifies against the public half");
    }

    #[test]
    fn bad_keys_are_refused_without_quoting_them() {
        let mut v: serde_json::Value = serde_json::from_str(KEY).unwrap();
        v["private_key"] = serde_json::json!(
            "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n"
        );
        let key = ServiceAccountKey::parse(v.to_string().as_bytes()).unwrap();
        let e = Signer::new(key, CLOUD_PLATFORM).err().unwrap();
        assert!(!e.contains("bm90IGEga2V5"), "{e}");
        let e = ServiceAccountKey::parse(b"{\"private_key\": \"secret-material\"").unwrap_err();
        assert!(!e.contains("secret-material"), "{e}");
        let key = ServiceAccountKey::parse(KEY.as_bytes()).unwrap();
        assert!(!format!("{key:?}").contains("PRIVATE"));
    }

    #[test]
    fn token_answers_are_read_and_errors_name_the_code_only() {
        let now = UNIX_EPOCH + Duration::from_secs(1000);
        let t = parse_token_answer(
            200,
            br#"{"access_token":"ya29.abc","expires_in":3599,"token_type":"Bearer"}"#,
            now,
        )
        .unwrap();
        assert_eq!(t.token.expose(), "ya29.abc");
        assert_eq!(t.expires, Some(now + Duration::from_secs(3599)));
        assert!(t.header().unwrap().is_sensitive());
        let e = parse_token_answer(400, br#"{"error":"invalid_grant","error_description":"Invalid JWT Signature for ya29.secret"}"#, now).unwrap_err();
        assert!(
            e.to_string().contains("invalid_grant") && !e.to_string().contains("ya29"),
            "{e}"
        );
        assert!(parse_token_answer(200, b"{}", now).is_err());
        assert!(parse_token_answer(200, b"<html>", now).is_err());
        // A huge expires_in is capped (no overflow).
        let t = parse_token_answer(
            200,
            br#"{"access_token":"x","expires_in":18446744073709551615}"#,
            now,
        )
        .unwrap();
        assert_eq!(t.expires, Some(now + Duration::from_secs(86_400)));
        assert!(format!("{t:?}").contains("[redacted]"));
    }
}
