//! TLS termination on `listen`.
//!
//! Rotation: the rustls config is built once, at start-up, with a certificate
//! resolver that reads the certificate from the current runtime snapshot (the
//! `ArcSwap` that reload swaps). SIGHUP loads and checks the new files as
//! part of the runtime; once it swaps, new handshakes get the new certificate.
//! A connection keeps the certificate it was handshaken with. A bad file
//! fails the whole reload and the running certificate stays.
//!
//! The handshake runs inside our server app on a plain TCP listener, through
//! Pingora's rustls `Acceptor` (built with `Acceptor::from_server_config`, so
//! `min_version` applies, which Pingora's `TlsSettings` cannot express), under
//! the header deadline. The TLS stream then goes to the proxy, which picks
//! HTTP/2 or HTTP/1.1 from ALPN.

pub(crate) mod cert;

use crate::config::{TlsSection, TlsVersion};
use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::listeners::tls::Acceptor;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::sync::Arc;

pub(crate) use cert::ServerCert;

/// What the TLS edge reads of the current config, at each handshake.
pub(crate) trait TlsSource: Send + Sync + 'static {
    /// The certificate to present.
    fn certificate(&self) -> Option<Arc<CertifiedKey>>;
    /// How long a client may take over its handshake.
    fn handshake_deadline(&self) -> std::time::Duration;
}

/// Hands rustls the certificate of the current config.
pub(crate) struct SnapshotResolver {
    source: Arc<dyn TlsSource>,
}

impl std::fmt::Debug for SnapshotResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SnapshotResolver")
    }
}

impl SnapshotResolver {
    pub(crate) fn new(source: Arc<dyn TlsSource>) -> Self {
        Self { source }
    }
}

impl ResolvesServerCert for SnapshotResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.source.certificate()
    }
}

/// The rustls server config for `tls`: versions, ALPN, and the resolver.
pub(crate) fn server_config(
    t: &TlsSection,
    resolver: Arc<dyn ResolvesServerCert>,
) -> Result<rustls::ServerConfig, String> {
    let versions: &[&'static rustls::SupportedProtocolVersion] = match t.min_version {
        TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::V1_3 => &[&rustls::version::TLS13],
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| format!("tls.min_version: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    cfg.alpn_protocols = if t.http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(cfg)
}

/// Wraps a server app (the proxy) with the TLS handshake.
pub(crate) struct TlsEdge<A> {
    pub(crate) inner: Arc<A>,
    pub(crate) acceptor: Acceptor,
    pub(crate) source: Arc<dyn TlsSource>,
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for TlsEdge<A> {
    async fn process_new(
        self: &Arc<Self>,
        session: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let l4 = session.into_any().downcast::<L4Stream>().ok()?;
        // A client that stalls its handshake is cut off like one that stalls
        // its request header.
        let deadline = self.source.handshake_deadline();
        match tokio::time::timeout(deadline, self.acceptor.tls_handshake(*l4)).await {
            Ok(Ok(tls)) => {
                count_handshake("success");
                self.inner.process_new(Box::new(tls), shutdown).await
            }
            Ok(Err(e)) => {
                count_handshake("failed");
                log::debug!("TLS handshake failed: {e}");
                None
            }
            Err(_) => {
                count_handshake("timeout");
                None
            }
        }
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await;
    }
}

fn count_handshake(result: &str) {
    if let Some(m) = crate::telemetry::metrics::get() {
        m.tls_handshakes.with_label_values(&[result]).inc();
    }
}

/// Exports the certificate's expiry, and warns when it is near.
pub(crate) fn export(cert: Option<&ServerCert>) {
    let Some(cert) = cert else { return };
    if let Some(m) = crate::telemetry::metrics::get() {
        m.tls_cert_expiry.set(cert.not_after);
    }
    if let Some(w) = cert.expiry_warning(crate::base::clock::unix_secs()) {
        log::warn!("{w}");
    }
}
