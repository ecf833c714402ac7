//! The cloud kinds' per-attempt authentication, the last step of the
//! upstream header: Bedrock requests are SigV4-signed (`aws-sigv4`) over
//! the exact header and body this attempt sends, so a retry or a fallback
//! to another route is signed anew; Vertex requests carry the provider's
//! OAuth token. Both values are marked sensitive and never logged.

use crate::base::error::GatewayError;
use crate::engine::attempts::Attempt;
use crate::providers::aws::sigv4::{self, Payload, Request, Scope, BEDROCK};
use crate::upstream::cloud::Material;
use http::header;
use pingora::http::RequestHeader;

/// Adds this attempt's credentials to its upstream header: the SigV4
/// headers (`authorization`, `x-amz-date`, `x-amz-security-token`), or
/// `Authorization: Bearer <token>`.
pub(crate) fn authenticate(
    upstream: &mut RequestHeader,
    a: &Attempt,
    m: &Material,
    stream: bool,
) -> Result<(), GatewayError> {
    match m {
        Material::Bearer(v) => upstream
            .insert_header(header::AUTHORIZATION, v.clone())
            .map_err(|_| GatewayError::Internal),
        Material::Aws(creds) => {
            let region =
                a.up.cloud
                    .as_ref()
                    .and_then(|c| c.region())
                    .ok_or(GatewayError::Internal)?;
            // What Bedrock reads: JSON in; JSON or the event stream out.
            let accept = if stream {
                crate::translate::bedrock::EVENT_STREAM_TYPE
            } else {
                "application/json"
            };
            let set = |u: &mut RequestHeader, k: header::HeaderName, v: &str| {
                u.insert_header(k, v).map_err(|_| GatewayError::Internal)
            };
            set(upstream, header::CONTENT_TYPE, "application/json")?;
            set(upstream, header::ACCEPT, accept)?;
            let host = a.up.host.to_str().map_err(|_| GatewayError::Internal)?;
            let path = upstream
                .uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_string();
            let url = format!("https://{host}{path}");
            // Signed: host, content-type and the provider's own headers
            // (never the request id, which differs per request anyway).
            let mut signed: Vec<(&str, &str)> =
                vec![("host", host), ("content-type", "application/json")];
            for (k, v) in &a.up.extra_headers {
                if let Ok(v) = v.to_str() {
                    signed.push((k.as_str(), v));
                }
            }
            let req = Request {
                method: "POST",
                url: &url,
                headers: &signed,
                payload: Payload::Bytes(&a.body),
            };
            let scope = Scope {
                region,
                service: BEDROCK,
                time: std::time::SystemTime::now(),
            };
            let headers = sigv4::sign(&req, &scope, creds).map_err(|e| {
                log::error!("provider {}: {e}", a.up.name);
                GatewayError::Internal
            })?;
            for (k, v) in headers {
                upstream
                    .insert_header(k, v)
                    .map_err(|_| GatewayError::Internal)?;
            }
            Ok(())
        }
    }
}
