//! Credentials of the cloud kinds, one per provider: AWS credentials for
//! SigV4 (`kind: bedrock`), or a Google OAuth access token (`kind:
//! vertex`). The health ticker refreshes them before they expire
//! ([`CloudAuth::refresh`]), so a request finds them cached
//! ([`CloudAuth::material`] waits only when nothing usable is cached).
//! Failures are never shown to clients (502 generic), counted in
//! `tollgate_provider_auth_failures_total`, and judged by the walker like a
//! connect failure. Neither tokens nor keys are ever logged.

use crate::providers::aws::credentials::{self as aws, Credentials, CredentialsError};
use crate::providers::gcp::oauth::{TokenError, TokenSource};
use crate::telemetry::metrics;
use http::HeaderValue;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// A request uses cached credentials that stay good at least this long.
const REQUEST_MARGIN: Duration = Duration::from_secs(2);
/// After a failure on the request path, requests fail at once for this
/// long instead of each waiting for the endpoint (the ticker keeps trying).
const FAIL_FAST_MS: u64 = 1_000;
/// The ticker refreshes one provider at most this often.
const REFRESH_EVERY_MS: u64 = 1_000;

/// Where a provider's credentials come from.
pub(crate) enum Source {
    /// SigV4 with these credentials, in this region.
    Aws {
        region: String,
        creds: aws::Provider,
    },
    /// A Google OAuth access token.
    Google(TokenSource),
}

/// What one attempt authenticates with.
#[derive(Clone)]
pub(crate) enum Material {
    /// Sign the request (`sigv4::sign`) with these.
    Aws(Arc<Credentials>),
    /// Send this `Authorization` value (sensitive).
    Bearer(HeaderValue),
}

/// Why credentials could not be had (the detail was logged).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AuthFailure {
    /// The web-identity token file could not be read.
    TokenFile,
    /// STS failed or refused.
    Sts,
    /// The OAuth token endpoint failed or refused.
    TokenEndpoint,
}

impl AuthFailure {
    /// The `source` label of `tollgate_provider_auth_failures_total`.
    pub(crate) fn label(self) -> &'static str {
        match self {
            AuthFailure::TokenFile => "token_file",
            AuthFailure::Sts => "sts",
            AuthFailure::TokenEndpoint => "token_endpoint",
        }
    }
}

/// A provider's credentials and their refresh state.
pub(crate) struct CloudAuth {
    provider: String,
    source: Source,
    /// Monotonic ms until which requests fail fast after a failure.
    failing_until: AtomicU64,
    /// Monotonic ms of the ticker's last refresh.
    refreshed_at: AtomicU64,
}

impl CloudAuth {
    pub(crate) fn new(provider: &str, source: Source) -> Self {
        Self {
            provider: provider.to_string(),
            source,
            failing_until: AtomicU64::new(0),
            refreshed_at: AtomicU64::new(0),
        }
    }

    /// The AWS region, for SigV4.
    pub(crate) fn region(&self) -> Option<&str> {
        match &self.source {
            Source::Aws { region, .. } => Some(region),
            Source::Google(_) => None,
        }
    }

    /// What an attempt authenticates with: the cached credentials, or
    /// (only when none are usable) fetched now, one caller at a time.
    pub(crate) async fn material(&self) -> Result<Material, AuthFailure> {
        let now = SystemTime::now();
        if let Some(m) = self.cached(now) {
            return Ok(m);
        }
        let mono = crate::base::clock::monotonic_ms();
        if mono < self.failing_until.load(Relaxed) {
            return Err(self.failed_kind());
        }
        match self.fetch().await {
            Ok(m) => Ok(m),
            Err(e) => {
                self.failing_until
                    .store(mono.saturating_add(FAIL_FAST_MS), Relaxed);
                Err(e)
            }
        }
    }

    fn cached(&self, now: SystemTime) -> Option<Material> {
        match &self.source {
            Source::Aws { creds, .. } => creds.usable(now, REQUEST_MARGIN).map(Material::Aws),
            Source::Google(t) => t
                .usable(now, REQUEST_MARGIN)
                .and_then(|t| t.header().ok())
                .map(Material::Bearer),
        }
    }

    fn failed_kind(&self) -> AuthFailure {
        match &self.source {
            Source::Aws { .. } => AuthFailure::Sts,
            Source::Google(_) => AuthFailure::TokenEndpoint,
        }
    }

    async fn fetch(&self) -> Result<Material, AuthFailure> {
        let got = match &self.source {
            Source::Aws { creds, .. } => {
                creds.credentials().await.map(Material::Aws).map_err(|e| {
                    let kind = match e {
                        CredentialsError::TokenFile(_) => AuthFailure::TokenFile,
                        CredentialsError::Sts(_) => AuthFailure::Sts,
                    };
                    log::error!(
                        "provider {}: AWS credentials unavailable: {e}",
                        self.provider
                    );
                    kind
                })
            }
            Source::Google(t) => t
                .token()
                .await
                .and_then(|t| t.header())
                .map(Material::Bearer)
                .map_err(|e: TokenError| {
                    log::error!(
                        "provider {}: Vertex access token unavailable: {e}",
                        self.provider
                    );
                    AuthFailure::TokenEndpoint
                }),
        };
        if let Err(kind) = got {
            if let Some(m) = metrics::get() {
                m.auth_failures
                    .with_label_values(&[self.provider.as_str(), kind.label()])
                    .inc();
            }
        }
        got
    }

    /// Whether the ticker should refresh now: the credentials are within
    /// their `refresh_before` of expiring (or missing), and the last
    /// refresh is at least a second old.
    pub(crate) fn refresh_due(&self) -> bool {
        let mono = crate::base::clock::monotonic_ms();
        if mono.saturating_sub(self.refreshed_at.load(Relaxed)) < REFRESH_EVERY_MS
            && self.refreshed_at.load(Relaxed) != 0
        {
            return false;
        }
        let now = SystemTime::now();
        match &self.source {
            Source::Aws { creds, .. } => creds.refresh_due(now),
            Source::Google(t) => t.refresh_due(now),
        }
    }

    /// Refreshes the credentials (off the request path). A success ends a
    /// fail-fast period.
    pub(crate) async fn refresh(&self) {
        self.refreshed_at
            .store(crate::base::clock::monotonic_ms().max(1), Relaxed);
        if self.fetch().await.is_ok() {
            self.failing_until.store(0, Relaxed);
        }
    }
}

impl std::fmt::Debug for CloudAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.source {
            Source::Aws { .. } => "aws",
            Source::Google(_) => "google",
        };
        f.debug_struct("CloudAuth")
            .field("provider", &self.provider)
            .field("source", &kind)
            .finish()
    }
}
