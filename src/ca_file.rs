//! Private CA files for HTTPS upstreams.

use pingora::utils::tls::{parse_x509, WrappedX509};
use std::sync::Arc;

/// Certificates trusted for one provider, in the form Pingora's peer wants.
pub(crate) type CaList = Arc<[WrappedX509]>;

/// Reads a PEM file of CA certificates, and gives them with a non-zero key
/// that differs between different sets of certificates (to keep pooled
/// connections apart by trust). Errors say what is wrong with the file.
pub(crate) fn load_ca_file(path: &str) -> Result<(CaList, u64), String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read `{path}`: {e}"))?;
    let mut reader = pem.as_slice();
    let mut certs = Vec::new();
    let mut key = std::hash::DefaultHasher::new();
    for item in rustls_pemfile::certs(&mut reader) {
        let der = item.map_err(|e| format!("`{path}` is not valid PEM: {e}"))?;
        // Pingora's wrapper panics on bad DER: check it here first.
        x509_parser::parse_x509_certificate(der.as_ref())
            .map_err(|e| format!("`{path}` holds a certificate that does not parse: {e}"))?;
        std::hash::Hash::hash(der.as_ref(), &mut key);
        certs.push(WrappedX509::new(der.as_ref().to_vec(), parse_x509));
    }
    if certs.is_empty() {
        return Err(format!(
            "`{path}` contains no PEM certificate (expected -----BEGIN CERTIFICATE-----)"
        ));
    }
    let key = std::hash::Hasher::finish(&key).max(1);
    Ok((Arc::from(certs.into_boxed_slice()), key))
}
