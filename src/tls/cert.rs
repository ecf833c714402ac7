//! Loading and checking the server certificate and key: readable, parsable,
//! the key matches the leaf, the leaf is not expired. Errors name the files
//! and never carry key material.

use crate::config::TlsSection;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use std::fmt;
use std::sync::Arc;

/// A warning is logged when the certificate expires within this long.
pub(crate) const EXPIRY_WARNING_SECS: i64 = 14 * 24 * 3600;

/// A loaded, checked certificate chain with its signing key.
pub struct ServerCert {
    pub(crate) key: Arc<CertifiedKey>,
    /// The leaf's `notAfter`, as Unix seconds.
    pub(crate) not_after: i64,
    /// The leaf's serial number, hex with colons.
    pub(crate) serial: String,
    pub(crate) cert_path: String,
    pub(crate) key_path: String,
}

// Hand-written so the signing key can never end up in a log line.
impl fmt::Debug for ServerCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerCert")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .field("serial", &self.serial)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl ServerCert {
    /// Reads `tls.cert` and `tls.key` and checks them at time `now` (Unix
    /// seconds). Every problem names its field and file.
    pub fn load(t: &TlsSection, now: i64) -> Result<Self, Vec<String>> {
        let chain = read_chain(&t.cert);
        let key = read_key(&t.key);
        let (chain, key) = match (chain, key) {
            (Ok(c), Ok(k)) => (c, k),
            (c, k) => {
                return Err([c.err(), k.err()].into_iter().flatten().collect());
            }
        };
        let leaf = x509_parser::parse_x509_certificate(chain[0].as_ref())
            .map_err(|e| {
                vec![format!(
                    "tls.cert: the first certificate in `{}` does not parse: {e}",
                    t.cert
                )]
            })?
            .1;
        let not_after = leaf.validity().not_after.timestamp();
        let serial = leaf.raw_serial_as_string();
        if not_after <= now {
            return Err(vec![format!(
                "tls.cert: the certificate in `{}` expired at {} (serial {serial}); renew it",
                t.cert,
                leaf.validity().not_after
            )]);
        }
        let signer = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|_| {
            vec![format!(
                "tls.key: the private key in `{}` is of an unsupported type (use RSA, ECDSA P-256/P-384 or Ed25519)",
                t.key
            )]
        })?;
        let certified = CertifiedKey::new(chain, signer);
        if certified.keys_match().is_err() {
            return Err(vec![format!(
                "tls.key: the private key in `{}` does not match the certificate in `{}` (tls.cert); install the key that belongs to this certificate",
                t.key, t.cert
            )]);
        }
        Ok(Self {
            key: Arc::new(certified),
            not_after,
            serial,
            cert_path: t.cert.clone(),
            key_path: t.key.clone(),
        })
    }

    /// A warning to log when the certificate expires soon.
    pub fn expiry_warning(&self, now: i64) -> Option<String> {
        let left = self.not_after - now;
        (left < EXPIRY_WARNING_SECS).then(|| {
            format!(
                "tls.cert: the certificate in `{}` (serial {}) expires in {} hours; renew it",
                self.cert_path,
                self.serial,
                left / 3600
            )
        })
    }
}

fn read_chain(path: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("tls.cert: cannot read `{path}`: {e}"))?;
    let chain = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("tls.cert: `{path}` is not valid PEM: {e}"))?;
    if chain.is_empty() {
        return Err(format!(
            "tls.cert: `{path}` contains no PEM certificate (expected -----BEGIN CERTIFICATE-----, leaf first)"
        ));
    }
    Ok(chain)
}

/// The error never quotes the file's content, only its path.
fn read_key(path: &str) -> Result<PrivateKeyDer<'static>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("tls.key: cannot read `{path}`: {e}"))?;
    match rustls_pemfile::private_key(&mut pem.as_slice()) {
        Ok(Some(k)) => Ok(k),
        Ok(None) => Err(format!(
            "tls.key: `{path}` contains no PEM private key (expected PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)"
        )),
        Err(_) => Err(format!("tls.key: `{path}` is not valid PEM")),
    }
}
