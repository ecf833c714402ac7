#![allow(clippy::unwrap_used, clippy::expect_used)]
//! TLS termination, certificate rotation and HTTP/2 from clients, end to
//! end: the real gateway binary with a certificate from a throwaway CA
//! (rcgen), in front of mock upstreams on loopback. Clients trust only that
//! CA: reqwest (rustls), raw tokio-rustls + hyper (to see the peer
//! certificate and to hold one HTTP/2 connection), and `curl --http2`.

mod support;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{prom, sse_chat_events, Behavior, Gateway, MockUpstream, TestCa};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

const KEY: &str = "tg-edge-key-0001";
const QUICK: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// Config and clients
// ---------------------------------------------------------------------------

/// A TLS gateway whose alias `m` falls back across `ports` in order (one
/// provider per port, health checks off). `tls_extra` goes inside `tls:`
/// (one `key: value` per line), `top` at the top level.
fn config(cert: &Path, key: &Path, ports: &[u16], tls_extra: &str, top: &str) -> String {
    let mut providers = String::new();
    let mut routes = String::new();
    for (i, p) in ports.iter().enumerate() {
        providers.push_str(&format!(
            "  p{i}:\n    kind: openai\n    base_url: \"http://127.0.0.1:{p}/v1\"\n    api_key: \"sk-edge-upstream\"\n    health_check: {{ enabled: false, interval: 100ms }}\n"
        ));
        routes.push_str(&format!(
            "      - {{ provider: p{i}, model: upstream-{i} }}\n"
        ));
    }
    let tls_extra: String = tls_extra
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| format!("  {}\n", l.trim()))
        .collect();
    format!(
        r#"
listen: "{{LISTEN}}"
plain_listen: "{{PLAIN}}"
metrics_listen: "{{METRICS}}"
server: {{ pid_file: "{{TMP}}/t.pid", upgrade_sock: "{{TMP}}/u.sock" }}
tls:
  cert: "{cert}"
  key: "{key}"
{tls_extra}{top}
providers:
{providers}
models:
  m:
    routes:
{routes}
keys:
  - {{ name: edge, key: "{KEY}" }}
"#,
        cert = cert.display(),
        key = key.display(),
    )
}

/// Starts the gateway and waits until its TLS listener completes handshakes.
async fn start(ca: &TestCa, yaml: &str) -> Gateway {
    let gw = Gateway::start(yaml).await;
    let deadline = Instant::now() + QUICK;
    while tls_connect(&gw.listen_addr(), ca, &[b"http/1.1"])
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "TLS listener not ready; log:\n{}",
            gw.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    gw
}

fn client_config(ca: &TestCa, alpn: &[&[u8]]) -> rustls::ClientConfig {
    let mut cfg = rustls::ClientConfig::builder_with_provider(support::tls::ring_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(ca.root_store())
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    cfg
}

async fn tls_connect_with(
    addr: &str,
    cfg: rustls::ClientConfig,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
}

async fn tls_connect(
    addr: &str,
    ca: &TestCa,
    alpn: &[&[u8]],
) -> std::io::Result<TlsStream<TcpStream>> {
    tls_connect_with(addr, client_config(ca, alpn)).await
}

/// The serial number of the certificate the server presented.
fn peer_serial(s: &TlsStream<TcpStream>) -> String {
    let certs = s
        .get_ref()
        .1
        .peer_certificates()
        .expect("peer certificates");
    let (_, c) = x509_parser::parse_x509_certificate(certs[0].as_ref()).unwrap();
    c.raw_serial_as_string()
}

/// The serial number of the first certificate in a PEM file.
fn file_serial(path: &Path) -> String {
    let pem = std::fs::read(path).unwrap();
    let der = rustls_pemfile::certs(&mut pem.as_slice())
        .next()
        .unwrap()
        .unwrap();
    let (_, c) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
    c.raw_serial_as_string()
}

/// The notAfter (Unix seconds) of the first certificate in a PEM file.
fn file_not_after(path: &Path) -> i64 {
    let pem = std::fs::read(path).unwrap();
    let der = rustls_pemfile::certs(&mut pem.as_slice())
        .next()
        .unwrap()
        .unwrap();
    let (_, c) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
    c.validity().not_after.timestamp()
}

/// The serial a fresh connection sees.
async fn serial_now(gw: &Gateway, ca: &TestCa) -> String {
    let s = tls_connect(&gw.listen_addr(), ca, &[b"http/1.1"])
        .await
        .expect("TLS handshake");
    peer_serial(&s)
}

/// A reqwest client trusting only the test CA.
fn https_client(ca: &TestCa) -> reqwest::Client {
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.ca_pem().as_bytes()).unwrap())
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

fn https_url(gw: &Gateway, path: &str) -> String {
    let port = gw.listen_addr().rsplit(':').next().unwrap().to_string();
    format!("https://localhost:{port}{path}")
}

type H2 = hyper::client::conn::http2::SendRequest<Full<Bytes>>;

/// One HTTP/2 connection (ALPN `h2`), driven in the background.
async fn h2_connect(gw: &Gateway, ca: &TestCa) -> H2 {
    let tls = tls_connect(&gw.listen_addr(), ca, &[b"h2", b"http/1.1"])
        .await
        .expect("TLS handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]), "ALPN");
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    send
}

fn chat_request(body: impl Into<Bytes>) -> http::Request<Full<Bytes>> {
    http::Request::post("https://localhost/v1/chat/completions")
        .header("authorization", format!("Bearer {KEY}"))
        .header("content-type", "application/json")
        .body(Full::new(body.into()))
        .unwrap()
}

fn chat_body(stream: bool) -> String {
    serde_json::json!({"model": "m", "stream": stream,
        "messages": [{"role": "user", "content": "hi"}]})
    .to_string()
}

/// A chat body of exactly `len` bytes (padding inside the message).
fn big_body(len: usize) -> String {
    let head = r#"{"model":"m","messages":[{"role":"user","content":""#;
    let tail = r#""}]}"#;
    let pad = len - head.len() - tail.len();
    format!("{head}{}{tail}", "x".repeat(pad))
}

/// Replaces `dst` with `src` by rename, so a reader never sees half a file.
fn install(src: &Path, dst: &Path) {
    let tmp = dst.with_extension("tmp");
    std::fs::copy(src, &tmp).unwrap();
    std::fs::rename(&tmp, dst).unwrap();
}

async fn reloads(gw: &Gateway, result: &str) -> f64 {
    let text = gw.metrics_text().await;
    prom::sample(
        &text,
        "tollgate_config_reloads_total",
        &[("result", result)],
    )
    .unwrap_or(0.0)
}

async fn wait_reloads(gw: &Gateway, result: &str, n: f64) {
    let deadline = Instant::now() + QUICK;
    while reloads(gw, result).await < n {
        assert!(
            Instant::now() < deadline,
            "no {result} reload #{n}; log:\n{}",
            gw.logs()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn curl() -> tokio::process::Command {
    let mut c = tokio::process::Command::new("curl");
    c.env_remove("http_proxy")
        .env_remove("https_proxy")
        .env_remove("HTTPS_PROXY")
        .env_remove("ALL_PROXY");
    c
}

fn curl_resolve(gw: &Gateway) -> String {
    let port = gw.listen_addr().rsplit(':').next().unwrap().to_string();
    format!("localhost:{port}:127.0.0.1")
}

struct Setup {
    ca: TestCa,
    cert: PathBuf,
    key: PathBuf,
}

fn setup() -> Setup {
    let ca = TestCa::new();
    let (cert, key) = ca.issue_files("server", &["localhost", "127.0.0.1"]);
    Setup { ca, cert, key }
}

// ---------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_the_test_ca_is_served_and_the_expiry_is_exported() {
    let s = setup();
    let up = MockUpstream::start(Behavior::ChatEcho).await;
    let gw = start(&s.ca, &config(&s.cert, &s.key, &[up.port()], "", "")).await;

    let resp = https_client(&s.ca)
        .post(https_url(&gw, "/v1/chat/completions"))
        .bearer_auth(KEY)
        .header("content-type", "application/json")
        .body(chat_body(false))
        .send()
        .await
        .expect("HTTPS request");
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["model"], "upstream-0", "{body}");
    assert_eq!(up.last().unwrap().json()["model"], "upstream-0");

    // The plaintext sidecar listener serves too.
    let plain = support::client()
        .post(format!("http://{}/v1/chat/completions", gw.plain_addr()))
        .bearer_auth(KEY)
        .body(chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), 200);

    // A plaintext request on the TLS port gets no HTTP answer: the
    // handshake fails and the connection is closed.
    let refused = support::client()
        .get(format!("http://{}/healthz", gw.listen_addr()))
        .send()
        .await;
    assert!(refused.is_err(), "plaintext on the TLS port: {refused:?}");

    let pem = std::fs::read(&s.cert).unwrap();
    let der = rustls_pemfile::certs(&mut pem.as_slice())
        .next()
        .unwrap()
        .unwrap();
    let (_, c) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
    let text = gw.metrics_text().await;
    prom::assert_sample(
        &text,
        "tollgate_tls_cert_expiry_timestamp_seconds",
        &[],
        c.validity().not_after.timestamp() as f64,
    );
    // The readiness probe's and the HTTPS request's handshakes; the
    // plaintext request's failed. A handshake is counted as its task ends,
    // which can be just after the client saw the close: polled.
    for (result, want) in [("success", 2.0), ("failed", 1.0)] {
        assert_eq!(
            gw.wait_sample(
                "tollgate_tls_handshakes_total",
                &[("result", result)],
                want,
                Duration::from_secs(5)
            )
            .await,
            Some(want),
            "{result}: {}",
            gw.metrics_text().await
        );
    }
    // Never the key: neither its PEM armour nor its body.
    let key_pem = std::fs::read_to_string(&s.key).unwrap();
    let key_line = key_pem.lines().nth(1).unwrap();
    assert!(!gw.logs().contains(key_line) && !gw.logs().contains("PRIVATE KEY"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_version_1_3_refuses_a_tls_1_2_client_and_http2_false_offers_only_http1() {
    let s = setup();
    let up = MockUpstream::start(Behavior::ChatEcho).await;
    let yaml = config(
        &s.cert,
        &s.key,
        &[up.port()],
        "min_version: \"1.3\"\nhttp2: false",
        "",
    );
    let gw = start(&s.ca, &yaml).await;
    let mut tls12 = rustls::ClientConfig::builder_with_provider(support::tls::ring_provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(s.ca.root_store())
        .with_no_client_auth();
    tls12.alpn_protocols = vec![b"http/1.1".to_vec()];
    assert!(tls_connect_with(&gw.listen_addr(), tls12).await.is_err());
    let ok = tls_connect(&gw.listen_addr(), &s.ca, &[b"h2", b"http/1.1"])
        .await
        .expect("TLS 1.3 handshake");
    assert_eq!(
        ok.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    assert_eq!(ok.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotation_under_load_ten_sighups_during_200_requests_drop_nothing() {
    let s = setup();
    let up = MockUpstream::start(Behavior::ChatEcho).await;
    let gw = start(&s.ca, &config(&s.cert, &s.key, &[up.port()], "", "")).await;
    assert_eq!(serial_now(&gw, &s.ca).await, file_serial(&s.cert));
    let first_expiry = file_not_after(&s.cert);
    prom::assert_sample(
        &gw.metrics_text().await,
        "tollgate_tls_cert_expiry_timestamp_seconds",
        &[],
        first_expiry as f64,
    );

    // A connection opened before any rotation keeps its certificate.
    let early = tls_connect(&gw.listen_addr(), &s.ca, &[b"http/1.1"])
        .await
        .unwrap();
    let early_serial = peer_serial(&early);
    let (mut early_send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(early))
        .await
        .unwrap();
    tokio::spawn(conn);

    // At least 200 requests, each on a new connection (new handshake), up to
    // 8 at a time, going on until 20 more have started after the last
    // rotation: however slow the rotations, they all fall inside the load.
    let ca = Arc::new(s.ca);
    let url = https_url(&gw, "/v1/chat/completions");
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let rotated = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let ca = ca.clone();
        let done = done.clone();
        let rotated = rotated.clone();
        tokio::spawn(async move {
            let sem = Arc::new(tokio::sync::Semaphore::new(8));
            let mut tasks = Vec::new();
            let mut after_rotations = 0;
            while tasks.len() < 200 || after_rotations < 20 {
                assert!(tasks.len() < 5000, "the rotations never finished");
                if rotated.load(std::sync::atomic::Ordering::SeqCst) {
                    after_rotations += 1;
                }
                tokio::time::sleep(Duration::from_millis(12)).await;
                let permit = sem.clone().acquire_owned().await.unwrap();
                let client = reqwest::Client::builder()
                    .use_rustls_tls()
                    .tls_built_in_root_certs(false)
                    .add_root_certificate(
                        reqwest::Certificate::from_pem(ca.ca_pem().as_bytes()).unwrap(),
                    )
                    .pool_max_idle_per_host(0)
                    .no_proxy()
                    .build()
                    .unwrap();
                let url = url.clone();
                let done = done.clone();
                tasks.push(tokio::spawn(async move {
                    let r = client
                        .post(url)
                        .bearer_auth(KEY)
                        .body(chat_body(false))
                        .send()
                        .await;
                    drop(permit);
                    done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    match r {
                        Ok(r) if r.status() == 200 => Ok(()),
                        Ok(r) => Err(format!("status {}", r.status())),
                        Err(e) => Err(format!("{e:?}")),
                    }
                }));
            }
            let mut failures = Vec::new();
            for t in tasks {
                if let Err(e) = t.await.unwrap() {
                    failures.push(e);
                }
            }
            failures
        })
    };

    let mut last = file_serial(&s.cert);
    for i in 0..10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (c, k) = ca.issue_files(&format!("next{i}"), &["localhost", "127.0.0.1"]);
        install(&c, &s.cert);
        install(&k, &s.key);
        gw.sighup();
        wait_reloads(&gw, "success", (i + 1) as f64).await;
        let now = serial_now(&gw, &ca).await;
        assert_ne!(
            now, last,
            "rotation {i} did not change the served certificate"
        );
        assert_eq!(now, file_serial(&c), "rotation {i}");
        last = now;
    }
    rotated.store(true, std::sync::atomic::Ordering::SeqCst);
    let done_at_last_rotation = done.load(std::sync::atomic::Ordering::SeqCst);
    let failures = load.await.unwrap();
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert_eq!(reloads(&gw, "failed").await, 0.0);

    // The early connection still works, on the certificate it started with.
    eprintln!("requests done when the last rotation was in: {done_at_last_rotation}");
    assert_ne!(early_serial, last);
    let r = early_send
        .send_request(chat_request(chat_body(false)))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The expiry gauge follows the rotations: it shows the last leaf's
    // notAfter, which differs from the first leaf's (each test leaf has its
    // own validity period).
    let text = gw.metrics_text().await;
    let last_expiry = file_not_after(&s.cert);
    assert_ne!(last_expiry, first_expiry, "the leaves share a notAfter");
    prom::assert_sample(
        &text,
        "tollgate_tls_cert_expiry_timestamp_seconds",
        &[],
        last_expiry as f64,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_certificate_on_sighup_keeps_the_old_one_and_counts_a_failure() {
    let s = setup();
    let up = MockUpstream::start(Behavior::ChatEcho).await;
    let gw = start(&s.ca, &config(&s.cert, &s.key, &[up.port()], "", "")).await;
    let original = file_serial(&s.cert);
    let saved_cert = s.cert.with_extension("orig");
    std::fs::copy(&s.cert, &saved_cert).unwrap();

    // 1. A certificate whose key is not the one in tls.key.
    let (other_cert, _) = s.ca.issue_files("other", &["localhost"]);
    install(&other_cert, &s.cert);
    gw.sighup();
    wait_reloads(&gw, "failed", 1.0).await;
    // The metric is counted just before the reason is logged.
    assert!(
        gw.wait_log("does not match the certificate", QUICK).await,
        "{}",
        gw.logs()
    );
    assert_eq!(serial_now(&gw, &s.ca).await, original);

    // 2. An expired certificate (with its own key).
    let (old_cert, old_key) = s.ca.issue_files_until(
        "expired",
        &["localhost"],
        time::OffsetDateTime::now_utc() - time::Duration::days(1),
    );
    install(&old_cert, &s.cert);
    install(&old_key, &s.key);
    gw.sighup();
    wait_reloads(&gw, "failed", 2.0).await;
    assert!(gw.wait_log("expired at", QUICK).await, "{}", gw.logs());
    assert_eq!(serial_now(&gw, &s.ca).await, original);

    // 3. An unreadable key path.
    std::fs::remove_file(&s.key).unwrap();
    gw.sighup();
    wait_reloads(&gw, "failed", 3.0).await;
    assert_eq!(serial_now(&gw, &s.ca).await, original);

    // Requests are still served on the old certificate.
    let resp = https_client(&s.ca)
        .post(https_url(&gw, "/v1/chat/completions"))
        .bearer_auth(KEY)
        .body(chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(reloads(&gw, "success").await, 0.0);
    assert!(!gw.logs().contains("PRIVATE KEY"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_flag_fails_on_a_mismatched_key_naming_both_files() {
    let s = setup();
    let (_, other_key) = s.ca.issue_files("other", &["localhost"]);
    let dir = tempfile::tempdir().unwrap();
    let run = |yaml: String| {
        let path = dir.path().join("t.yaml");
        let yaml = yaml
            .replace("{LISTEN}", "127.0.0.1:1")
            .replace("{PLAIN}", "127.0.0.1:2")
            .replace("{METRICS}", "127.0.0.1:3")
            .replace("{TMP}", &dir.path().to_string_lossy());
        std::fs::write(&path, yaml).unwrap();
        std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .arg("--config")
            .arg(&path)
            .arg("--test")
            .output()
            .unwrap()
    };

    let out = run(config(&s.cert, &other_key, &[9], "", ""));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("tls.key"), "{err}");
    assert!(
        err.contains(&*s.cert.to_string_lossy()),
        "cert path missing: {err}"
    );
    assert!(
        err.contains(&*other_key.to_string_lossy()),
        "key path missing: {err}"
    );
    assert!(!err.contains("PRIVATE KEY"), "{err}");

    let good = run(config(&s.cert, &s.key, &[9], "", ""));
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );

    let (old_c, old_k) = s.ca.issue_files_until(
        "expired",
        &["localhost"],
        time::OffsetDateTime::now_utc() - time::Duration::hours(1),
    );
    let out = run(config(&old_c, &old_k, &[9], "", ""));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("tls.cert") && err.contains("expired"), "{err}");

    let (soon_c, soon_k) = s.ca.issue_files_until(
        "soon",
        &["localhost"],
        time::OffsetDateTime::now_utc() + time::Duration::days(3),
    );
    let out = run(config(&soon_c, &soon_k, &[9], "", ""));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("warning") && err.contains("expires in"),
        "{err}"
    );

    let out = run(config(
        &s.cert,
        &dir.path().join("missing.key"),
        &[9],
        "",
        "",
    ));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("tls.key: cannot read") && err.contains("missing.key"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------
// HTTP/2
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_http2_stream_arrives_chunk_by_chunk() {
    let s = setup();
    let events = sse_chat_events("upstream-0", 4);
    let n = events.len();
    // The upstream sends each event only once curl has printed the one
    // before: a gateway that held events back would never get the next.
    let gate = support::Gate::new();
    let g = gate.clone();
    let up = MockUpstream::start(Behavior::func(move |_| support::Reply {
        status: 200,
        headers: vec![("content-type".into(), "text/event-stream".into())],
        body: support::ReplyBody::Gated(
            events.iter().cloned().map(Bytes::from).collect(),
            g.clone(),
        ),
    }))
    .await;
    let gw = start(&s.ca, &config(&s.cert, &s.key, &[up.port()], "", "")).await;

    let mut child = curl()
        .args(["-sS", "-N", "--http2", "--cacert"])
        .arg(s.ca.ca_file())
        .args(["--resolve", &curl_resolve(&gw)])
        .args(["-H", &format!("Authorization: Bearer {KEY}")])
        .args(["-H", "Content-Type: application/json"])
        .args(["-d", &chat_body(true)])
        .args(["-w", "\\nHTTP_VERSION=%{http_version}\\n"])
        .arg(https_url(&gw, "/v1/chat/completions"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run curl");
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut events_seen = 0;
    let mut version = String::new();
    loop {
        let line = tokio::time::timeout(QUICK, lines.next_line())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "event {} never reached curl: held back; log:\n{}",
                    events_seen + 1,
                    gw.logs()
                )
            })
            .unwrap();
        let Some(line) = line else { break };
        if line.starts_with("data: ") {
            events_seen += 1;
            gate.open(1);
        }
        if let Some(v) = line.strip_prefix("HTTP_VERSION=") {
            version = v.to_string();
        }
    }
    assert!(child.wait().await.unwrap().success());
    assert_eq!(version, "2", "curl did not use HTTP/2");
    assert_eq!(events_seen, n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_http2_8mib_body_is_rewritten_after_a_503_fallback() {
    let s = setup();
    let down = MockUpstream::start(Behavior::json(
        503,
        r#"{"error":{"message":"overloaded","type":"server_error"}}"#,
    ))
    .await;
    let up = MockUpstream::start(Behavior::ChatEcho).await;
    let gw = start(
        &s.ca,
        &config(&s.cert, &s.key, &[down.port(), up.port()], "", ""),
    )
    .await;

    let body = big_body(8 * 1024 * 1024);
    let file = gw.tmp_dir().join("big.json");
    std::fs::write(&file, &body).unwrap();
    let out = curl()
        .args(["-sS", "--http2", "--cacert"])
        .arg(s.ca.ca_file())
        .args(["--resolve", &curl_resolve(&gw)])
        .args(["-H", &format!("Authorization: Bearer {KEY}")])
        .args(["-H", "Content-Type: application/json"])
        .arg("--data-binary")
        .arg(format!("@{}", file.display()))
        .args([
            "-w",
            "\\nHTTP_VERSION=%{http_version} STATUS=%{http_code}\\n",
        ])
        .arg(https_url(&gw, "/v1/chat/completions"))
        .output()
        .await
        .expect("run curl");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("HTTP_VERSION=2 STATUS=200"),
        "{stdout}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        gw.logs()
    );
    assert_eq!(down.hits(), 1);
    let got = up.last().expect("fallback upstream hit");
    let want = body.replacen(r#""model":"m""#, r#""model":"upstream-1""#, 1);
    assert_eq!(got.body.len(), want.len());
    assert!(
        got.body == want.as_bytes(),
        "body not rewritten byte for byte"
    );
    assert_eq!(got.header("content-length"), Some(want.len().to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_body_of_64_kib_plus_one_and_without_content_length_is_forwarded() {
    let s = setup();
    let down = MockUpstream::start(Behavior::json(503, "{}")).await;
    let up = MockUpstream::start(Behavior::ChatEcho).await;
    let gw = start(
        &s.ca,
        &config(&s.cert, &s.key, &[down.port(), up.port()], "", ""),
    )
    .await;
    let mut h2 = h2_connect(&gw, &s.ca).await;

    // With Content-Length, just over the retry buffer.
    let body = big_body(64 * 1024 + 1);
    let mut req = chat_request(body.clone());
    req.headers_mut()
        .insert("content-length", body.len().to_string().parse().unwrap());
    let r = h2.send_request(req).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), http::Version::HTTP_2);
    let want = body.replacen(r#""model":"m""#, r#""model":"upstream-1""#, 1);
    assert!(up.last().unwrap().body == want.as_bytes());

    // HTTP/2 lets a client leave Content-Length out: a small body is read to
    // its end and forwarded.
    let small = chat_body(false);
    let mut req = chat_request(small.clone());
    req.headers_mut().remove("content-length");
    let (parts, _) = req.into_parts();
    let stream_body = http_body_util::StreamBody::new(futures_util::stream::iter(vec![Ok::<
        _,
        std::convert::Infallible,
    >(
        hyper::body::Frame::data(Bytes::from(small.clone())),
    )]));
    let tls = tls_connect(&gw.listen_addr(), &s.ca, &[b"h2"])
        .await
        .unwrap();
    let (mut send2, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let r = send2
        .send_request(http::Request::from_parts(parts, stream_body))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.last().unwrap().json()["model"], "upstream-1");
    assert_eq!(down.hits(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn h2_100_concurrent_streams_on_one_connection_all_complete() {
    let s = setup();
    let up = MockUpstream::start(Behavior::ChatEcho).await;
    let gw = start(&s.ca, &config(&s.cert, &s.key, &[up.port()], "", "")).await;
    let h2 = h2_connect(&gw, &s.ca).await;

    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let mut h2 = h2.clone();
            tokio::spawn(async move {
                let stream = i % 2 == 0;
                let r = h2
                    .send_request(chat_request(chat_body(stream)))
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                assert_eq!(r.version(), http::Version::HTTP_2);
                let body = r.into_body().collect().await.unwrap().to_bytes();
                let text = String::from_utf8_lossy(&body).into_owned();
                if stream {
                    assert!(text.contains("data: [DONE]"), "{text}");
                } else {
                    assert!(text.contains("upstream-0"), "{text}");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(up.hits(), 100);
    // One TLS handshake for all of them (plus the readiness probe).
    let text = gw.metrics_text().await;
    let hs = prom::sample(
        &text,
        "tollgate_tls_handshakes_total",
        &[("result", "success")],
    );
    assert_eq!(hs, Some(2.0), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_stream_reset_by_the_client_cancels_the_upstream() {
    let s = setup();
    let events = sse_chat_events("upstream-0", 50);
    let up = MockUpstream::start(Behavior::sse(events, Duration::from_millis(100))).await;
    let gw = start(&s.ca, &config(&s.cert, &s.key, &[up.port()], "", "")).await;
    let mut h2 = h2_connect(&gw, &s.ca).await;

    let r = h2
        .send_request(chat_request(chat_body(true)))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut body = r.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert!(first.is_data());
    // Dropping the body resets the stream (RST_STREAM CANCEL); the
    // connection stays open.
    drop(body);
    assert!(
        up.wait_cancelled(1, QUICK).await,
        "upstream stream was not cancelled; log:\n{}",
        gw.logs()
    );
    // Other streams on the same connection are unaffected.
    up.set_behavior(Behavior::ChatEcho);
    let r = h2
        .send_request(chat_request(chat_body(false)))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(gw.wait_log("\"status\":499", QUICK).await, "{}", gw.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn h2_limits_body_header_size_and_concurrent_streams() {
    let s = setup();
    let events = sse_chat_events("upstream-0", 3);
    // Streams stay open until the gate opens (first chunk only before).
    let gate = support::Gate::new();
    let g = gate.clone();
    let up = MockUpstream::start(Behavior::func(move |r| {
        if r.json()["stream"] == true {
            support::Reply {
                status: 200,
                headers: vec![("content-type".into(), "text/event-stream".into())],
                body: support::ReplyBody::Gated(
                    events.iter().cloned().map(Bytes::from).collect(),
                    g.clone(),
                ),
            }
        } else {
            support::Reply::json(200, r#"{"id":"c","object":"chat.completion","created":1,"model":"upstream-0","choices":[]}"#)
        }
    }))
    .await;
    let yaml = config(
        &s.cert,
        &s.key,
        &[up.port()],
        "max_concurrent_streams: 4",
        "max_body_bytes: 100000\ndownstream: { max_header_bytes: 4096 }",
    );
    let gw = start(&s.ca, &yaml).await;
    let mut h2 = h2_connect(&gw, &s.ca).await;

    // Body over max_body_bytes: 413, and never upstream.
    let r = h2
        .send_request(chat_request(big_body(100_001)))
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    // Header over max_header_bytes: 431 (docs/config.md, HTTP/2), sent by
    // the h2 layer (SETTINGS_MAX_HEADER_LIST_SIZE) before the stream is reset.
    let mut req = chat_request(chat_body(false));
    req.headers_mut()
        .insert("x-big", "a".repeat(6000).parse().unwrap());
    let r = h2.send_request(req).await.expect("a 431 response");
    assert_eq!(r.status(), 431);
    assert_eq!(up.hits(), 0);

    // Ten streams at once on one connection: at most 4 are open at a time.
    // One request first, so the client has the server's SETTINGS (streams
    // opened before that would be refused, which is the peer's right).
    let mut h2 = h2_connect(&gw, &s.ca).await;
    let r = h2
        .send_request(chat_request(chat_body(false)))
        .await
        .unwrap();
    r.into_body().collect().await.unwrap();
    up.reset();
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let mut h2 = h2.clone();
            tokio::spawn(async move {
                let r = h2
                    .send_request(chat_request(chat_body(true)))
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                r.into_body().collect().await.unwrap();
            })
        })
        .collect();
    // No stream can end before the gate opens, so a fifth upstream request
    // could only come from a fifth stream open at once. (The wait only
    // gives a wrong fifth stream time to show; it cannot fail a right
    // gateway.)
    assert!(up.wait_hits(4, QUICK).await, "4 streams never opened");
    assert!(
        !up.wait_hits(5, Duration::from_millis(500)).await,
        "a fifth stream opened: {} upstream requests",
        up.hits()
    );
    gate.open(1000);
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(up.hits(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_over_tls_gets_the_header_deadline_and_size_limit() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = setup();
    let up = MockUpstream::start(Behavior::ChatEcho).await;
    let yaml = config(
        &s.cert,
        &s.key,
        &[up.port()],
        "",
        "downstream: { header_timeout: 500ms, max_header_bytes: 4096 }",
    );
    let gw = start(&s.ca, &yaml).await;

    // A header that trickles in (slowloris) is cut off at header_timeout.
    let mut slow = tls_connect(&gw.listen_addr(), &s.ca, &[b"http/1.1"])
        .await
        .unwrap();
    let t0 = Instant::now();
    slow.write_all(b"POST /v1/chat/completions HTTP/1.1\r\n")
        .await
        .unwrap();
    // A few more bytes, then silence (writing after the 408 could reset the
    // connection before the answer is read).
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        slow.write_all(b"x-a: b\r\n").await.unwrap();
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(QUICK, slow.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());

    // A header over max_header_bytes gets 431.
    let mut big = tls_connect(&gw.listen_addr(), &s.ca, &[b"http/1.1"])
        .await
        .unwrap();
    let req = format!(
        "GET /healthz HTTP/1.1\r\nhost: localhost\r\nx-big: {}\r\n\r\n",
        "a".repeat(6000)
    );
    big.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(QUICK, big.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 431"), "{text}");

    // A normal request on a kept-alive TLS connection: served, twice.
    let tls = tls_connect(&gw.listen_addr(), &s.ca, &[b"http/1.1"])
        .await
        .unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    for i in 0..2 {
        // hyper takes the next request only once the connection has
        // finished the previous exchange.
        send.ready()
            .await
            .unwrap_or_else(|e| panic!("request {i}: connection closed: {e}"));
        let r = send
            .send_request(chat_request(chat_body(false)))
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.into_body().collect().await.unwrap();
    }
    assert_eq!(up.hits(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_idle_http2_and_tls_connections_exits_promptly() {
    let s = setup();
    let up = MockUpstream::start(Behavior::ChatEcho).await;
    let yaml = config(
        &s.cert,
        &s.key,
        &[up.port()],
        "",
        "server: { pid_file: \"{TMP}/t2.pid\", upgrade_sock: \"{TMP}/u2.sock\", grace_period: 10s }",
    );
    let yaml = yaml.replacen(
        "server: { pid_file: \"{TMP}/t.pid\", upgrade_sock: \"{TMP}/u.sock\" }\n",
        "",
        1,
    );
    let mut gw = start(&s.ca, &yaml).await;
    // An idle HTTP/2 connection and an idle HTTPS keep-alive connection,
    // each after one request.
    let mut h2 = h2_connect(&gw, &s.ca).await;
    let r = h2
        .send_request(chat_request(chat_body(false)))
        .await
        .unwrap();
    r.into_body().collect().await.unwrap();
    let tls = tls_connect(&gw.listen_addr(), &s.ca, &[b"http/1.1"])
        .await
        .unwrap();
    let (mut h1, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let r = h1
        .send_request(chat_request(chat_body(false)))
        .await
        .unwrap();
    r.into_body().collect().await.unwrap();

    let t = Instant::now();
    gw.sigterm();
    let status = gw
        .wait_exit(QUICK)
        .await
        .unwrap_or_else(|| panic!("gateway still running; log:\n{}", gw.logs()));
    assert_eq!(status.code(), Some(0), "log:\n{}", gw.logs());
    let took = t.elapsed();
    // At once means well inside the 10 s grace period (it takes
    // milliseconds; the margin is for loaded machines).
    assert!(
        took < Duration::from_secs(5),
        "idle gateway took {took:?} to exit after SIGTERM (grace period 10 s)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_upgrade_hands_over_the_tls_and_plain_listeners() {
    let s = setup();
    let up = MockUpstream::start(Behavior::ChatEcho).await;
    let mut old = start(&s.ca, &config(&s.cert, &s.key, &[up.port()], "", "")).await;
    let serial = serial_now(&old, &s.ca).await;

    // The new process takes the listeners over `server.upgrade_sock`.
    let log = old.tmp_dir().join("new.log");
    let f = std::fs::File::create(&log).unwrap();
    let _new = KillOnDrop(
        std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .arg("--config")
            .arg(old.config_path())
            .arg("-u")
            .env("RUST_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::from(f.try_clone().unwrap()))
            .stderr(std::process::Stdio::from(f))
            .spawn()
            .unwrap(),
    );
    let new_logs = || std::fs::read_to_string(&log).unwrap_or_default();
    let sock = old.tmp_dir().join("u.sock");
    let deadline = Instant::now() + QUICK;
    while !sock.exists() {
        assert!(
            Instant::now() < deadline,
            "no upgrade socket; new log:\n{}",
            new_logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    old.signal("-QUIT");
    let status = old.wait_exit(Duration::from_secs(15)).await;
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "old log:\n{}",
        old.logs()
    );
    assert!(new_logs().contains("(TLS 1.2+, HTTP/2)"), "{}", new_logs());

    // The new process serves HTTPS (HTTP/1.1 and HTTP/2) with the same
    // certificate, and the plaintext listener.
    let resp = https_client(&s.ca)
        .post(https_url(&old, "/v1/chat/completions"))
        .bearer_auth(KEY)
        .body(chat_body(false))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}; new log:\n{}", new_logs()));
    assert_eq!(resp.status(), 200);
    assert_eq!(serial_now(&old, &s.ca).await, serial);
    let mut h2 = h2_connect(&old, &s.ca).await;
    let r = h2
        .send_request(chat_request(chat_body(false)))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let plain = support::client()
        .post(format!("http://{}/v1/chat/completions", old.plain_addr()))
        .bearer_auth(KEY)
        .body(chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), 200);
}

/// A child process killed and reaped when the test ends, pass or fail.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
