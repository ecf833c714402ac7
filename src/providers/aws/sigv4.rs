//! SigV4 request signing with the `aws-sigv4` crate: given a request's
//! method, URL, headers and body (or the body's SHA-256), a region, a
//! service name, credentials and a time, the headers to add
//! (`authorization`, `x-amz-date`, and `x-amz-security-token` for temporary
//! credentials), each marked sensitive where it carries a secret.

use super::credentials::Credentials;
use aws_sigv4::http_request::{sign as aws_sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use http::{HeaderName, HeaderValue};
use std::fmt;
use std::time::SystemTime;

/// The signing name of Bedrock's runtime API.
pub const BEDROCK: &str = "bedrock";

/// The body as the signature covers it.
#[derive(Debug, Clone, Copy)]
pub enum Payload<'a> {
    /// The body itself (hashed here).
    Bytes(&'a [u8]),
    /// Its SHA-256, lowercase hex, when the caller has it already.
    Sha256Hex(&'a str),
}

/// What is signed.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub method: &'a str,
    /// The full URL as sent, already percent-encoded
    /// (`https://bedrock-runtime.us-east-1.amazonaws.com/model/m%3A0/converse`).
    pub url: &'a str,
    /// Headers sent and signed (at least `host` when the URL's authority is
    /// not what is sent, and `content-type`). `authorization`,
    /// `user-agent`, `x-amzn-trace-id` and `transfer-encoding` are never
    /// signed.
    pub headers: &'a [(&'a str, &'a str)],
    pub payload: Payload<'a>,
}

/// Where the signature is computed.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    pub region: &'a str,
    pub service: &'a str,
    pub time: SystemTime,
}

/// Signing failed (a malformed URL or header; never shows credentials).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignError(pub String);

impl fmt::Display for SignError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigV4 signing failed: {}", self.0)
    }
}

impl std::error::Error for SignError {}

/// Signs `req` and returns the headers to add to it.
pub fn sign(
    req: &Request<'_>,
    scope: &Scope<'_>,
    creds: &Credentials,
) -> Result<Vec<(HeaderName, HeaderValue)>, SignError> {
    let identity = aws_credential_types::Credentials::new(
        creds.access_key_id.clone(),
        creds.secret_access_key.expose(),
        creds.session_token.as_ref().map(|t| t.expose().to_string()),
        creds.expires,
        "tollgate",
    )
    .into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(scope.region)
        .name(scope.service)
        .time(scope.time)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| SignError(e.to_string()))?
        .into();
    let hash;
    let body = match req.payload {
        Payload::Bytes(b) => SignableBody::Bytes(b),
        Payload::Sha256Hex(h) => {
            hash = h.to_string();
            SignableBody::Precomputed(hash)
        }
    };
    let signable = SignableRequest::new(req.method, req.url, req.headers.iter().copied(), body)
        .map_err(|e| SignError(e.to_string()))?;
    let (instructions, _signature) = aws_sign(signable, &params)
        .map_err(|e| SignError(e.to_string()))?
        .into_parts();
    let (headers, _params) = instructions.into_parts();
    headers
        .into_iter()
        .map(|h| {
            let name = HeaderName::from_static(h.name());
            let mut value =
                HeaderValue::from_str(h.value()).map_err(|e| SignError(e.to_string()))?;
            value.set_sensitive(h.sensitive() || name == http::header::AUTHORIZATION);
            Ok((name, value))
        })
        .collect()
}

/// `Authorization: Bearer <key>` for Bedrock API keys, marked sensitive.
pub fn bearer(api_key: &crate::providers::secret::Secret) -> Result<HeaderValue, SignError> {
    let mut v = HeaderValue::from_str(&format!("Bearer {}", api_key.expose()))
        .map_err(|_| SignError("the API key is not a valid header value".into()))?;
    v.set_sensitive(true);
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::secret::Secret;
    use std::time::{Duration, UNIX_EPOCH};

    fn creds(token: bool) -> Credentials {
        Credentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: Secret::new("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
            session_token: token.then(|| Secret::new("session-token-xyz")),
            expires: None,
        }
    }

    /// AWS's documented example (sigv4 test suite, `get-vanilla`): the
    /// signature we get must be the published one.
    #[test]
    fn matches_the_aws_test_suite_vanilla_get() {
        let time = UNIX_EPOCH + Duration::from_secs(1440938160); // 20150830T123600Z
        let req = Request {
            method: "GET",
            url: "https://example.amazonaws.com/",
            headers: &[("host", "example.amazonaws.com")],
            payload: Payload::Bytes(b""),
        };
        let scope = Scope {
            region: "us-east-1",
            service: "service",
            time,
        };
        let h = sign(&req, &scope, &creds(false)).unwrap();
        let auth = h
            .iter()
            .find(|(n, _)| n == http::header::AUTHORIZATION)
            .map(|(_, v)| v.to_str().unwrap().to_string())
            .unwrap();
        assert_eq!(
            auth,
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=host;x-amz-date, \
             Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
        let date = h.iter().find(|(n, _)| n == "x-amz-date").unwrap();
        assert_eq!(date.1, "20150830T123600Z");
        assert!(h
            .iter()
            .find(|(n, _)| n == http::header::AUTHORIZATION)
            .unwrap()
            .1
            .is_sensitive());
    }

    #[test]
    fn temporary_credentials_add_the_security_token() {
        let req = Request {
            method: "POST",
            url: "https://bedrock-runtime.us-east-1.amazonaws.com/model/m%3A0/converse",
            headers: &[("content-type", "application/json")],
            payload: Payload::Bytes(b"{}"),
        };
        let scope = Scope {
            region: "us-east-1",
            service: BEDROCK,
            time: SystemTime::now(),
        };
        let h = sign(&req, &scope, &creds(true)).unwrap();
        let token = h.iter().find(|(n, _)| n == "x-amz-security-token").unwrap();
        assert_eq!(token.1, "session-token-xyz");
        assert!(token.1.is_sensitive());
        // A precomputed hash signs the same as the bytes.
        let hex = "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";
        let req2 = Request {
            payload: Payload::Sha256Hex(hex),
            ..req
        };
        let h2 = sign(&req2, &scope, &creds(true)).unwrap();
        assert_eq!(h, h2);
    }

    #[test]
    fn bearer_keys_are_sensitive() {
        let v = bearer(&Secret::new("ABSK-key")).unwrap();
        assert!(v.is_sensitive());
        assert!(bearer(&Secret::new("bad\nkey")).is_err());
    }
}
