//! A small HTTPS client for the gateway's own calls off the request path:
//! credential endpoints (AWS STS, Google's OAuth token endpoint: one form
//! POST, one small answer) and the OTLP trace collector
//! (`telemetry::trace`). It uses Pingora's HTTP/1 connector (the
//! platform's trust store, or a given CA list) with a small pool of its own,
//! resolves the host off the request path with tokio, and bounds time (one
//! deadline for the whole exchange) and the answer's size. It is not
//! `upstream::client::Exchange` because that one is built from a configured
//! provider's `Upstream` (balancer, breaker state), which these endpoints
//! are not.

use crate::ca_file::CaList;
use crate::config::url::{parse_base_url, BaseUrl};
use bytes::{Bytes, BytesMut};
use pingora::connectors::http::v1::Connector;
use pingora::connectors::ConnectorOptions;
use pingora::http::RequestHeader;
use pingora::upstreams::peer::HttpPeer;
use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Largest answer read from a token endpoint (they are well under 8 KiB).
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// Idle pooled connections kept for token endpoints.
const POOL_SIZE: usize = 8;

/// The pool shared by the credential clients.
fn shared_connector() -> Arc<Connector> {
    static CONNECTOR: OnceLock<Arc<Connector>> = OnceLock::new();
    CONNECTOR
        .get_or_init(|| Arc::new(Connector::new(Some(ConnectorOptions::new(POOL_SIZE)))))
        .clone()
}

/// Why a token request failed before an answer was read. Shown to
/// operators only (logs); clients see a generic 502.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransportError {
    /// The endpoint URL is not an http(s) URL we can use.
    BadUrl(String),
    /// The host did not resolve.
    Resolve,
    /// Connecting (TCP or TLS) failed.
    Connect,
    /// The whole exchange did not finish in time.
    Timeout,
    /// The connection broke while sending or reading.
    Io,
    /// The answer was larger than [`MAX_RESPONSE_BYTES`].
    TooLarge,
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadUrl(why) => write!(f, "bad token endpoint URL: {why}"),
            Self::Resolve => f.write_str("token endpoint host did not resolve"),
            Self::Connect => f.write_str("cannot connect to the token endpoint"),
            Self::Timeout => f.write_str("token endpoint did not answer in time"),
            Self::Io => f.write_str("token endpoint connection failed"),
            Self::TooLarge => f.write_str("token endpoint answer too large"),
        }
    }
}

/// A token endpoint's answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    /// Its `Retry-After`, as sent.
    pub retry_after: Option<String>,
    pub body: Bytes,
}

/// A client for one kind of endpoint.
#[derive(Clone)]
pub struct TokenClient {
    timeout: Duration,
    ca: Option<CaList>,
    connector: Arc<Connector>,
}

impl fmt::Debug for TokenClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenClient")
            .field("timeout", &self.timeout)
            .field("private_ca", &self.ca.is_some())
            .finish()
    }
}

impl TokenClient {
    /// `timeout` bounds each exchange, connect to last byte; `ca` replaces
    /// the platform trust store (tests, private endpoints).
    pub fn new(timeout: Duration, ca: Option<CaList>) -> Self {
        Self {
            timeout,
            ca,
            connector: shared_connector(),
        }
    }

    /// Like [`TokenClient::new`], with a connection pool of its own that
    /// lives as long as the client's clones: for a client driven by a
    /// runtime of its own (a pooled connection belongs to the runtime that
    /// made it).
    pub fn with_own_pool(timeout: Duration, ca: Option<CaList>) -> Self {
        Self {
            timeout,
            ca,
            connector: Arc::new(Connector::new(Some(ConnectorOptions::new(POOL_SIZE)))),
        }
    }

    /// POSTs `body` (`application/x-www-form-urlencoded`) to `url` and reads
    /// the answer, whatever its status.
    pub async fn post_form(&self, url: &str, body: &str) -> Result<Answer, TransportError> {
        let headers = [
            ("content-type", "application/x-www-form-urlencoded"),
            ("accept", "application/json, text/xml"),
        ];
        self.post(url, &headers, body.as_bytes()).await
    }

    /// POSTs `body` to `url` with `headers` (this client adds `host` and
    /// `content-length`) and reads the answer, whatever its status.
    pub async fn post(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Answer, TransportError> {
        let base = parse_base_url(url).map_err(TransportError::BadUrl)?;
        match tokio::time::timeout(self.timeout, self.exchange(&base, headers, body)).await {
            Ok(r) => r,
            Err(_) => Err(TransportError::Timeout),
        }
    }

    async fn exchange(
        &self,
        base: &BaseUrl,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Answer, TransportError> {
        let addr = tokio::net::lookup_host((base.host.as_str(), base.port))
            .await
            .map_err(|_| TransportError::Resolve)?
            .next()
            .ok_or(TransportError::Resolve)?;
        let sni = if base.tls {
            base.host.clone()
        } else {
            String::new()
        };
        let mut peer = HttpPeer::new(addr, base.tls, sni);
        peer.options.connection_timeout = Some(self.timeout);
        peer.options.read_timeout = Some(self.timeout);
        peer.options.idle_timeout = Some(Duration::from_secs(30));
        if let Some(ca) = &self.ca {
            peer.options.ca = Some(ca.clone());
        }
        let path = if base.prefix.is_empty() {
            "/"
        } else {
            base.prefix.as_str()
        };
        let mut req =
            RequestHeader::build("POST", path.as_bytes(), None).map_err(|_| TransportError::Io)?;
        let host = base.host_header();
        let len = body.len().to_string();
        let own = [("host", host.as_str()), ("content-length", len.as_str())];
        for (k, v) in headers.iter().chain(&own) {
            req.insert_header(k.to_string(), *v)
                .map_err(|_| TransportError::Io)?;
        }
        let (mut session, _) = self
            .connector
            .get_http_session(&peer)
            .await
            .map_err(|_| TransportError::Connect)?;
        session
            .write_request_header(Box::new(req))
            .await
            .map_err(|_| TransportError::Io)?;
        session
            .write_body(body)
            .await
            .map_err(|_| TransportError::Io)?;
        session
            .finish_body()
            .await
            .map_err(|_| TransportError::Io)?;
        session
            .read_response()
            .await
            .map_err(|_| TransportError::Io)?;
        let header = session.resp_header().ok_or(TransportError::Io)?;
        let status = header.status.as_u16();
        let retry_after = header
            .headers
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut out = BytesMut::new();
        while let Some(chunk) = session
            .read_body_bytes()
            .await
            .map_err(|_| TransportError::Io)?
        {
            if out.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(TransportError::TooLarge);
            }
            out.extend_from_slice(&chunk);
        }
        if session.is_body_done() {
            self.connector
                .release_http_session(session, &peer, Some(Duration::from_secs(30)))
                .await;
        }
        Ok(Answer {
            status,
            retry_after,
            body: out.freeze(),
        })
    }
}
