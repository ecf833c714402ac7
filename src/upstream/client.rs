//! A small upstream client for requests the proxy loop does not drive
//! itself (shadow copies, hedged legs). It connects with Pingora's HTTP/1
//! connector using the provider's peer template (TLS, SNI, CA, timeouts)
//! and its own connection pool, sends a prebuilt header and body, and hands
//! back the response header and body chunks. Dropping an [`Exchange`]
//! closes its connection, which cancels the upstream request.

use crate::resilience::Limits;
use crate::upstream::Upstream;
use bytes::Bytes;
use pingora::connectors::http::v1::Connector;
use pingora::connectors::ConnectorOptions;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::v1::client::HttpSession;
use pingora::upstreams::peer::HttpPeer;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Idle pooled connections kept by this client.
const POOL_SIZE: usize = 256;

/// Builds the connector (its TLS roots included) ahead of the first
/// request, so no leg pays for it.
pub(crate) fn warm_up() {
    connector();
}

fn connector() -> &'static Connector {
    static CONNECTOR: OnceLock<Connector> = OnceLock::new();
    CONNECTOR.get_or_init(|| Connector::new(Some(ConnectorOptions::new(POOL_SIZE))))
}

/// Why an exchange failed, in the outcome labels of the proxy's attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    ConnectError,
    ConnectTimeout,
    /// No header, or no chunk, within its limit.
    Timeout,
    ReadError,
}

impl Failure {
    pub(crate) fn is_timeout(self) -> bool {
        matches!(self, Failure::ConnectTimeout | Failure::Timeout)
    }
}

/// One request in flight on one upstream connection.
pub(crate) struct Exchange {
    session: HttpSession,
    peer: HttpPeer,
    limits: Limits,
    started: Instant,
    header: ResponseHeader,
}

impl Exchange {
    /// Connects to `addr` of `up`, sends `req` and `body`, and waits for the
    /// response header (at most `limits.first_byte`). A pooled connection
    /// that turns out dead is replaced once by a fresh one.
    pub(crate) async fn start(
        up: &Upstream,
        addr: SocketAddr,
        limits: Limits,
        req: &RequestHeader,
        body: &Bytes,
    ) -> Result<Exchange, Failure> {
        let peer = up.peer(addr, &limits);
        let started = Instant::now();
        for _ in 0..2 {
            let (session, reused) = connect(&peer).await?;
            match exchange(session, req, body, limits.first_byte).await {
                Ok((session, header)) => {
                    return Ok(Exchange {
                        session,
                        peer,
                        limits,
                        started,
                        header,
                    })
                }
                // A pooled connection the server had closed: try a new one.
                Err(Failure::ReadError) if reused => continue,
                Err(f) => return Err(f),
            }
        }
        Err(Failure::ReadError)
    }

    pub(crate) fn header(&self) -> &ResponseHeader {
        &self.header
    }

    /// The next body chunk; `None` at the end. Waits at most the route's
    /// idle limit, and never past its total limit.
    pub(crate) async fn chunk(&mut self) -> Result<Option<Bytes>, Failure> {
        self.chunk_within(self.limits.idle).await
    }

    /// Like [`Exchange::chunk`], waiting at most `wait`.
    pub(crate) async fn chunk_within(
        &mut self,
        mut wait: Duration,
    ) -> Result<Option<Bytes>, Failure> {
        if let Some(total) = self.limits.total {
            wait = wait.min(total.saturating_sub(self.started.elapsed()));
        }
        match tokio::time::timeout(wait, self.session.read_body_bytes()).await {
            Ok(Ok(b)) => Ok(b),
            Ok(Err(e)) if e.etype() == &pingora::ErrorType::ReadTimedout => Err(Failure::Timeout),
            Ok(Err(_)) => Err(Failure::ReadError),
            Err(_) => Err(Failure::Timeout),
        }
    }

    /// Returns the connection to the pool when the body was read to its
    /// end; otherwise closes it.
    pub(crate) async fn finish(mut self) {
        if self.session.is_body_done() {
            connector()
                .release_http_session(self.session, &self.peer, Some(Duration::from_secs(60)))
                .await;
        }
    }
}

async fn connect(peer: &HttpPeer) -> Result<(HttpSession, bool), Failure> {
    match connector().get_http_session(peer).await {
        Ok(s) => Ok(s),
        Err(e) => Err(match e.etype() {
            pingora::ErrorType::ConnectTimedout | pingora::ErrorType::TLSHandshakeTimedout => {
                Failure::ConnectTimeout
            }
            _ => Failure::ConnectError,
        }),
    }
}

async fn exchange(
    mut session: HttpSession,
    req: &RequestHeader,
    body: &Bytes,
    first_byte: Duration,
) -> Result<(HttpSession, ResponseHeader), Failure> {
    let send = async {
        session.write_request_header(Box::new(req.clone())).await?;
        if !body.is_empty() {
            session.write_body(body).await?;
        }
        session.finish_body().await?;
        session.read_response().await?;
        Ok::<(), Box<pingora::Error>>(())
    };
    match tokio::time::timeout(first_byte, send).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) if e.etype() == &pingora::ErrorType::ReadTimedout => {
            return Err(Failure::Timeout)
        }
        Ok(Err(_)) => return Err(Failure::ReadError),
        Err(_) => return Err(Failure::Timeout),
    }
    let header = session.resp_header().cloned().ok_or(Failure::ReadError)?;
    Ok((session, header))
}
