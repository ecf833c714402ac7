//! The Prometheus listener: `GET /metrics` in the text format.

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use prometheus::{Encoder, TextEncoder};

/// Serves the process's metrics registry.
pub(crate) struct MetricsApp;

#[async_trait]
impl ServeHttp for MetricsApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path();
        let (status, ctype, body) = if path == "/metrics" {
            let mut buf = Vec::new();
            match TextEncoder::new().encode(&prometheus::gather(), &mut buf) {
                Ok(()) => (200, "text/plain; version=0.0.4", buf),
                Err(e) => (500, "text/plain", e.to_string().into_bytes()),
            }
        } else {
            (404, "text/plain", b"not found: try /metrics\n".to_vec())
        };
        let len = body.len();
        Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, ctype)
            .header(http::header::CONTENT_LENGTH, len)
            .body(body)
            .unwrap_or_else(|_| Response::new(Vec::new()))
    }
}
