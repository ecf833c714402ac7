//! A throwaway certificate authority for TLS tests.
//!
//! [`TestCa`] creates a self-signed CA with rcgen, writes its PEM into a
//! temporary directory it owns, and issues server leaf certificates signed
//! by that CA.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// Leaves issued so far by this process (each gets a distinct `not_after`).
static LEAVES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A day ago: the latest `not_before` a leaf gets, so it is valid now
/// (unless its `not_after` has passed).
fn earliest() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc() - time::Duration::days(1)
}

/// A self-signed test certificate authority.
pub struct TestCa {
    cert: rcgen::Certificate,
    key: KeyPair,
    dir: tempfile::TempDir,
    ca_file: PathBuf,
}

impl TestCa {
    /// Creates a new CA and writes its certificate to `<tempdir>/ca.pem`.
    pub fn new() -> TestCa {
        let key = KeyPair::generate().expect("generate CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "Tollgate Test CA");
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("self-sign CA");
        let dir = tempfile::tempdir().expect("CA tempdir");
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, cert.pem()).expect("write ca.pem");
        TestCa {
            cert,
            key,
            dir,
            ca_file,
        }
    }

    /// The CA certificate in PEM form.
    pub fn ca_pem(&self) -> String {
        self.cert.pem()
    }

    /// The CA certificate in DER form.
    pub fn ca_der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }

    /// Path of a PEM file holding the CA certificate (lives as long as `self`).
    pub fn ca_file(&self) -> PathBuf {
        self.ca_file.clone()
    }

    /// The temporary directory owned by this CA.
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// Issues a server leaf certificate for `names` (DNS names, or IP
    /// addresses when a name parses as one), valid from a day ago until
    /// about a year from now: each leaf a process issues expires an hour
    /// after the one before. Returns the chain (leaf only) and its PKCS#8
    /// private key.
    pub fn issue(&self, names: &[&str]) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let (cert, key) = self.leaf(names);
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        (vec![cert.der().clone()], key_der)
    }

    /// Issues a leaf for `names` and writes `<stem>.crt` / `<stem>.key` PEM
    /// files into the CA's tempdir. Returns `(cert_path, key_path)`.
    pub fn issue_files(&self, stem: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let (cert, key) = self.leaf(names);
        let crt = self.dir.path().join(format!("{stem}.crt"));
        let keyp = self.dir.path().join(format!("{stem}.key"));
        std::fs::write(&crt, cert.pem()).expect("write leaf cert");
        std::fs::write(&keyp, key.serialize_pem()).expect("write leaf key");
        (crt, keyp)
    }

    /// Like [`issue_files`](Self::issue_files), valid until `not_after`
    /// (and from 30 days before it, or from a day ago when that is earlier,
    /// so a leaf that expires soon is already valid).
    pub fn issue_files_until(
        &self,
        stem: &str,
        names: &[&str],
        not_after: time::OffsetDateTime,
    ) -> (PathBuf, PathBuf) {
        let (cert, key) = self.leaf_with(names, Some(not_after));
        let crt = self.dir.path().join(format!("{stem}.crt"));
        let keyp = self.dir.path().join(format!("{stem}.key"));
        std::fs::write(&crt, cert.pem()).expect("write leaf cert");
        std::fs::write(&keyp, key.serialize_pem()).expect("write leaf key");
        (crt, keyp)
    }

    fn leaf(&self, names: &[&str]) -> (rcgen::Certificate, KeyPair) {
        self.leaf_with(names, None)
    }

    fn leaf_with(
        &self,
        names: &[&str],
        not_after: Option<time::OffsetDateTime>,
    ) -> (rcgen::Certificate, KeyPair) {
        let key = KeyPair::generate().expect("generate leaf key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("leaf params");
        // Every leaf gets its own validity period, so a check that the
        // gateway exports *this* leaf's expiry cannot pass on another's.
        let not_after = not_after.unwrap_or_else(|| {
            let n = LEAVES.fetch_add(1, std::sync::atomic::Ordering::SeqCst) as i64;
            let now = time::OffsetDateTime::now_utc()
                .replace_nanosecond(0)
                .expect("whole second");
            now + time::Duration::days(365) + time::Duration::hours(n)
        });
        params.not_after = not_after;
        params.not_before = (not_after - time::Duration::days(30)).min(earliest());
        params.subject_alt_names = names
            .iter()
            .map(|n| match n.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName((*n).to_string().try_into().expect("DNS name")),
            })
            .collect();
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().copied().unwrap_or("tollgate-test-leaf"),
        );
        params.is_ca = IsCa::NoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("sign leaf");
        (cert, key)
    }

    /// A rustls root store trusting only this CA.
    pub fn root_store(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der()).expect("add CA root");
        roots
    }

    /// A rustls client config (ring provider) trusting only this CA.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let cfg = rustls::ClientConfig::builder_with_provider(ring_provider())
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(self.root_store())
            .with_no_client_auth();
        Arc::new(cfg)
    }

    /// A rustls server config (ring provider) with a leaf for `names`.
    pub fn server_config(&self, names: &[&str]) -> Arc<rustls::ServerConfig> {
        let (chain, key) = self.issue(names);
        let cfg = rustls::ServerConfig::builder_with_provider(ring_provider())
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server cert");
        Arc::new(cfg)
    }
}

impl Default for TestCa {
    fn default() -> Self {
        TestCa::new()
    }
}

/// The rustls `ring` crypto provider, chosen explicitly so tests never
/// depend on a process-wide default provider.
pub fn ring_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}
