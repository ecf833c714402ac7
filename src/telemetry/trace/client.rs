//! The OTLP exporter's HTTP client: the gateway's own small client
//! (`providers::token_client`, on Pingora's connector and rustls, with the
//! platform's trust store or `tracing.ca_file`), so exporting needs no
//! second HTTP and TLS stack. It has a connection pool of its own, driven
//! by the export thread's runtime.

use super::Settings;
use crate::providers::token_client::{TokenClient, TransportError};
use async_trait::async_trait;
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};

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
}

/// Why a send failed, without the request (its headers may hold secrets).
#[derive(Debug)]
struct SendError(TransportError);

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

impl std::error::Error for SendError {}

#[async_trait]
impl HttpClient for Client {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let url = request.uri().to_string();
        let headers: Vec<(&str, &str)> = request
            .headers()
            .iter()
            .filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?)))
            .collect();
        let answer = self
            .0
            .post(&url, &headers, request.body())
            .await
            .map_err(|e| Box::new(SendError(e)) as HttpError)?;
        let mut response = Response::builder().status(answer.status);
        if let Some(v) = &answer.retry_after {
            response = response.header(http::header::RETRY_AFTER, v.as_str());
        }
        Ok(response.body(answer.body)?)
    }
}
