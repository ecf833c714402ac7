//! The exporter's HTTP client: the gateway's own small client
//! (`providers::token_client`, on Pingora's connector and rustls, with the
//! platform's trust store or `tracing.ca_file`), so exporting needs no
//! second HTTP and TLS stack. It has a connection pool of its own, driven
//! by the export thread's runtime.

use super::Settings;
use crate::providers::token_client::{Answer, TokenClient, TransportError};

#[derive(Debug)]
pub(crate) struct Client(TokenClient);

impl Client {
    pub(crate) fn new(s: &Settings) -> Result<Client, String> {
        let ca = match &s.ca_file {
            Some(path) => Some(crate::ca_file::load_ca_file(path)?.0),
            None => None,
        };
        Ok(Client(TokenClient::with_own_pool(s.export_timeout, ca)))
    }

    /// POSTs `body` to `url` with `headers`; the answer, whatever its status.
    pub(crate) async fn post(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Answer, TransportError> {
        self.0.post(url, headers, body).await
    }
}

/// Why a send failed, without the request (its headers may hold secrets).
#[derive(Debug)]
pub(crate) struct SendError(pub(crate) TransportError);

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            TransportError::BadUrl(_) => "bad collector URL",
            TransportError::Resolve => "the collector's host did not resolve",
            TransportError::Connect => "cannot connect to the collector",
            TransportError::Timeout => "the collector did not answer in time",
            TransportError::Io => "the collector connection failed",
            TransportError::TooLarge => "the collector's answer was too large",
        })
    }
}
