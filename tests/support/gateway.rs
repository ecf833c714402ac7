//! Runs the real `tollgate` binary as a child process for end-to-end tests.
//!
//! The YAML template may contain these placeholders, substituted on every
//! write of the config file:
//! - `{LISTEN}`  → `127.0.0.1:PORT` of the proxy listener,
//! - `{METRICS}` → `127.0.0.1:PORT` of the metrics listener,
//! - `{TMP}`     → the gateway's private temp directory (no trailing slash),
//! - `{PLAIN}`   → `127.0.0.1:PORT` of a third free port (for `plain_listen`),
//! - `{ADMIN}`   → `127.0.0.1:PORT` of a fourth free port (for `admin_listen`).
//!
//! The ports are found by binding port 0 and releasing it, so another
//! process may take one before the gateway binds it. [`Gateway::start`]
//! therefore starts again on fresh ports when the gateway reports an address
//! in use (up to [`START_ATTEMPTS`] times), instead of waiting out Pingora's
//! own 30 s of bind retries.
//!
//! When the config has `tls:` and `plain_listen: "{PLAIN}"`, readiness is
//! polled over the plaintext listener.

use std::fs::OpenOptions;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long [`Gateway::start`] waits for `/healthz` to answer 200.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// How many times [`Gateway::start`] tries fresh ports when one is taken.
pub const START_ATTEMPTS: usize = 5;

/// How long [`Gateway::access_line`] waits for a request's line.
pub const ACCESS_LINE_TIMEOUT: Duration = Duration::from_secs(10);

/// The top of a config template: both listeners and the `server:` files in
/// `{TMP}`. Start a template with it, e.g. `format!("{CONFIG_HEAD}providers:\n…")`.
pub const CONFIG_HEAD: &str = r#"
listen: "{LISTEN}"
metrics_listen: "{METRICS}"
server: { pid_file: "{TMP}/t.pid", upgrade_sock: "{TMP}/u.sock" }
"#;

/// A running gateway process; SIGKILLed and reaped on drop.
pub struct Gateway {
    child: Child,
    dir: tempfile::TempDir,
    listen: String,
    metrics: String,
    plain: String,
    admin: String,
    tls: bool,
    config_path: PathBuf,
    log_path: PathBuf,
    /// One connection pool for this gateway (see [`Gateway::http`]).
    http: reqwest::Client,
}

impl Gateway {
    /// Starts the gateway with `yaml_template` and waits until it is ready.
    pub async fn start(yaml_template: &str) -> Gateway {
        Self::start_with_env(yaml_template, &[]).await
    }

    /// Like [`start`](Self::start), with extra environment variables
    /// (applied after `RUST_LOG=info`, so they may override it). When a
    /// listener's port was taken in the meantime, starts again on fresh
    /// ports (see the module docs).
    pub async fn start_with_env(yaml_template: &str, env: &[(&str, &str)]) -> Gateway {
        Self::start_inner(yaml_template, env, &[]).await
    }

    /// Starts (retrying on a taken port) with the binary run through
    /// `wrapper` (empty: run directly).
    async fn start_inner(yaml_template: &str, env: &[(&str, &str)], wrapper: &[&str]) -> Gateway {
        for attempt in 1..=START_ATTEMPTS {
            let mut gw = Self::spawn_inner(yaml_template, env, wrapper);
            match gw.try_ready(READY_TIMEOUT).await {
                Ok(()) => return gw,
                Err(NotReady::PortInUse) if attempt < START_ATTEMPTS => {
                    eprintln!(
                        "tollgate start {attempt}: a port was taken ({}, {}, {}, {}); trying fresh ports",
                        gw.listen, gw.metrics, gw.plain, gw.admin
                    );
                }
                Err(e) => panic!("{}", e.message(&gw)),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// Spawns the gateway without waiting for readiness (e.g. to test
    /// that an invalid config makes it exit; see [`wait_exit`](Self::wait_exit)).
    pub fn spawn_with_env(yaml_template: &str, env: &[(&str, &str)]) -> Gateway {
        Self::spawn_inner(yaml_template, env, &[])
    }

    fn spawn_inner(yaml_template: &str, env: &[(&str, &str)], wrapper: &[&str]) -> Gateway {
        let dir = tempfile::tempdir().expect("gateway tempdir");
        let [listen, metrics, plain, admin] = free_addrs4();
        let config_path = dir.path().join("tollgate.yaml");
        let log_path = dir.path().join("tollgate.log");
        let config = render(yaml_template, &listen, &metrics, dir.path())
            .replace("{PLAIN}", &plain)
            .replace("{ADMIN}", &admin);
        let tls = yaml_template.contains("\ntls:") && yaml_template.contains("{PLAIN}");
        std::fs::write(&config_path, config).expect("write config");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("open gateway log");
        let log2 = log.try_clone().expect("clone log handle");
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(env!("CARGO_BIN_EXE_tollgate"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_tollgate")),
        };
        cmd.arg("--config")
            .arg(&config_path)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn tollgate");
        Gateway {
            child,
            dir,
            listen,
            metrics,
            plain,
            admin,
            tls,
            config_path,
            log_path,
            http: client(),
        }
    }

    /// A client whose connections to this gateway are kept and reused, as
    /// SDK clients do: requests sent one after another through it go over
    /// one connection, which reads the next request only after the last
    /// one's logging phase (its settle) is done. [`client`] opens a new
    /// connection per client, which can overtake that.
    pub fn http(&self) -> reqwest::Client {
        self.http.clone()
    }

    /// Polls `GET /healthz` every 50 ms until it answers 200 and the metrics
    /// and admin listeners (when configured) accept connections; panics with
    /// the log on timeout or if the process exits first.
    pub async fn wait_ready(&mut self, timeout: Duration) {
        if let Err(e) = self.try_ready(timeout).await {
            panic!("{}", e.message(self));
        }
    }

    /// [`wait_ready`](Self::wait_ready) without the panic. A listener that
    /// cannot bind its port (Pingora logs `is in use` and retries for 30 s)
    /// stops the child at once and answers [`NotReady::PortInUse`].
    async fn try_ready(&mut self, timeout: Duration) -> Result<(), NotReady> {
        let client = client();
        let url = if self.tls {
            format!("http://{}/healthz", self.plain)
        } else {
            self.url("/healthz")
        };
        // Each listener is bound by its own service thread: the metrics and
        // admin ones may come up after the proxy's, so wait for those the
        // config names too (a connection they accept is enough).
        let config = std::fs::read_to_string(&self.config_path).unwrap_or_default();
        // `{PLAIN}` may be any listener (the admin API's, in the key store
        // tests), so it is waited for too.
        let others: Vec<String> = [&self.metrics, &self.admin, &self.plain]
            .into_iter()
            .filter(|a| config.contains(a.as_str()))
            .cloned()
            .collect();
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(r) = client
                .get(&url)
                .timeout(Duration::from_secs(2))
                .send()
                .await
            {
                let mut up = r.status().as_u16() == 200;
                for addr in &others {
                    up = up && tokio::net::TcpStream::connect(addr.as_str()).await.is_ok();
                }
                if up {
                    return Ok(());
                }
            }
            let logs = self.logs();
            if logs.contains("is in use, will try again") || logs.contains("Address already in use")
            {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return Err(NotReady::PortInUse);
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(NotReady::Exited(status));
            }
            if Instant::now() >= deadline {
                return Err(NotReady::Timeout(timeout, url));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `http://127.0.0.1:PORT` of the proxy listener.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.listen)
    }

    /// `base_url()` + `path` (`path` should start with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url(), path)
    }

    /// The proxy listener address, `127.0.0.1:PORT`.
    pub fn listen_addr(&self) -> String {
        self.listen.clone()
    }

    /// The address `{PLAIN}` expands to, `127.0.0.1:PORT`.
    pub fn plain_addr(&self) -> String {
        self.plain.clone()
    }

    /// The address `{ADMIN}` expands to, `127.0.0.1:PORT`.
    pub fn admin_addr(&self) -> String {
        self.admin.clone()
    }

    /// The metrics listener address, `127.0.0.1:PORT`.
    pub fn metrics_addr(&self) -> String {
        self.metrics.clone()
    }

    /// `http://127.0.0.1:PORT/metrics` of the metrics listener.
    pub fn metrics_url(&self) -> String {
        format!("http://{}/metrics", self.metrics)
    }

    /// Path of the config file the gateway was started with.
    pub fn config_path(&self) -> PathBuf {
        self.config_path.clone()
    }

    /// The gateway's private temp directory (what `{TMP}` expands to).
    pub fn tmp_dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// Path of the combined stdout/stderr log file.
    pub fn log_path(&self) -> PathBuf {
        self.log_path.clone()
    }

    /// Rewrites the config file from `yaml_template` (same substitutions).
    pub fn write_config(&self, yaml_template: &str) {
        let content = self.render(yaml_template);
        // Write-then-rename so a concurrent reader never sees a torn file.
        let tmp = self.dir.path().join("tollgate.yaml.tmp");
        std::fs::write(&tmp, content).expect("write config");
        std::fs::rename(&tmp, &self.config_path).expect("rename config");
    }

    /// Applies the placeholder substitutions to `yaml_template`.
    pub fn render(&self, yaml_template: &str) -> String {
        render(yaml_template, &self.listen, &self.metrics, self.dir.path())
            .replace("{PLAIN}", &self.plain)
            .replace("{ADMIN}", &self.admin)
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGHUP (config reload).
    pub fn sighup(&self) {
        self.signal("-HUP");
    }

    /// Sends SIGTERM (graceful shutdown).
    pub fn sigterm(&self) {
        self.signal("-TERM");
    }

    /// Sends SIGINT.
    pub fn sigint(&self) {
        self.signal("-INT");
    }

    /// Sends `sig` (e.g. `"-QUIT"`) to the child with `kill(1)`.
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {sig} {} failed", self.pid());
    }

    /// The log file contents so far.
    pub fn logs(&self) -> String {
        std::fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Waits (without blocking the runtime) until `needle` appears in the
    /// log; returns whether it did within `timeout`.
    pub async fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.logs().contains(needle) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The JSON access-log line of request `rid`, waiting (up to
    /// [`ACCESS_LINE_TIMEOUT`]) for the async writer. Looks in the process
    /// log and in `{TMP}/access.log` (where a test config with
    /// `access_log: { path: "{TMP}/access.log" }` puts it); panics with both
    /// on timeout.
    pub async fn access_line(&self, rid: &str) -> serde_json::Value {
        let file = self.dir.path().join("access.log");
        let deadline = Instant::now() + ACCESS_LINE_TIMEOUT;
        loop {
            let logs = self.logs();
            let access = std::fs::read_to_string(&file).unwrap_or_default();
            let found = logs
                .lines()
                .chain(access.lines())
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l.trim()).ok())
                .find(|v| v.get("request_id").and_then(|id| id.as_str()) == Some(rid));
            if let Some(v) = found {
                return v;
            }
            if Instant::now() >= deadline {
                panic!("no access-log line for {rid}; access log:\n{access}\nlog:\n{logs}");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits up to `timeout` for the process to exit; `None` if still running.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// `Gateway::client()` — same as the free function [`client`].
    pub fn client() -> reqwest::Client {
        client()
    }

    /// Polls `/metrics` every 25 ms until the one sample of `metric` with
    /// `labels` equals `want`, for up to `timeout`; returns the last value
    /// seen (`None`: no such sample). Assert on the result, e.g.
    /// `assert_eq!(gw.wait_sample(m, &[], 1.0, QUICK).await, Some(1.0))`.
    pub async fn wait_sample(
        &self,
        metric: &str,
        labels: &[(&str, &str)],
        want: f64,
        timeout: Duration,
    ) -> Option<f64> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = super::prom::sample(&self.metrics_text().await, metric, labels);
            if got == Some(want) || Instant::now() >= deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// GET the metrics endpoint and return its body (panics on failure).
    pub async fn metrics_text(&self) -> String {
        let resp = client()
            .get(self.metrics_url())
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {}: {e}; log:\n{}", self.metrics_url(), self.logs()));
        assert_eq!(resp.status().as_u16(), 200, "metrics status");
        resp.text().await.expect("metrics body")
    }

    /// Polls `/metrics` until the sum of `name`'s samples whose labels
    /// include `labels` (0 when none) equals `want`; panics with the
    /// metric's lines after [`ACCESS_LINE_TIMEOUT`]. Request counters are
    /// updated in the logging phase, just after the client has its answer.
    pub async fn wait_metric(&self, name: &str, labels: &[(&str, &str)], want: f64) {
        let deadline = Instant::now() + ACCESS_LINE_TIMEOUT;
        loop {
            let text = self.metrics_text().await;
            if super::prom::sum(&text, name, labels) == want {
                return;
            }
            if Instant::now() >= deadline {
                let lines: Vec<&str> = text.lines().filter(|l| l.starts_with(name)).collect();
                panic!(
                    "{name}{labels:?} never became {want}:\n{}",
                    lines.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Like [`start_with_env`](Self::start_with_env), with the binary run
    /// through `wrapper`: the command is `wrapper[0] wrapper[1..] TOLLGATE
    /// --config FILE`. The wrapper must end by exec'ing its arguments in its
    /// own process (`unshare -m sh -c '…; exec "$0" "$@"'`), so that
    /// [`pid`](Self::pid) and the signals reach the gateway itself.
    pub async fn start_wrapped(
        yaml_template: &str,
        env: &[(&str, &str)],
        wrapper: &[&str],
    ) -> Gateway {
        assert!(!wrapper.is_empty(), "a wrapper command");
        Self::start_inner(yaml_template, env, wrapper).await
    }
}

/// Why [`Gateway::try_ready`] gave up.
enum NotReady {
    /// A listener's port was taken before the gateway could bind it.
    PortInUse,
    /// The process exited first.
    Exited(ExitStatus),
    /// `/healthz` did not answer 200 in time (the URL polled).
    Timeout(Duration, String),
}

impl NotReady {
    fn message(&self, gw: &Gateway) -> String {
        match self {
            NotReady::PortInUse => format!(
                "tollgate could not bind its ports in {START_ATTEMPTS} attempts; log:\n{}",
                gw.logs()
            ),
            NotReady::Exited(status) => format!(
                "tollgate exited ({status}) before becoming ready; log:\n{}",
                gw.logs()
            ),
            NotReady::Timeout(t, url) => {
                format!(
                    "tollgate not ready after {t:?} at {url}; log:\n{}",
                    gw.logs()
                )
            }
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A reqwest client that never uses a proxy (60 s overall timeout).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(60))
        .build()
        .expect("build reqwest client")
}

/// Substitutes `{LISTEN}`, `{METRICS}` and `{TMP}` in `template`.
pub fn render(template: &str, listen: &str, metrics: &str, tmp: &Path) -> String {
    template
        .replace("{LISTEN}", listen)
        .replace("{METRICS}", metrics)
        .replace("{TMP}", &tmp.to_string_lossy())
}

/// Three distinct free loopback addresses (`127.0.0.1:PORT`).
pub fn free_addrs3() -> [String; 3] {
    let l: Vec<TcpListener> = (0..3)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind free port"))
        .collect();
    let a = |i: usize| format!("127.0.0.1:{}", l[i].local_addr().expect("addr").port());
    [a(0), a(1), a(2)]
}

/// Four distinct free loopback addresses (`127.0.0.1:PORT`).
pub fn free_addrs4() -> [String; 4] {
    let l: Vec<TcpListener> = (0..4)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind free port"))
        .collect();
    let a = |i: usize| format!("127.0.0.1:{}", l[i].local_addr().expect("addr").port());
    [a(0), a(1), a(2), a(3)]
}

/// A loopback port that refuses connections for as long as the test process
/// lives: a socket is bound to it but never listens, so nothing else (the
/// kernel's port-0 picks, other tests' mocks, a gateway) can take it, and a
/// connection to it is refused (RST) rather than accepted by a stranger.
pub fn refused_port() -> u16 {
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind a refused port");
    let port = sock.local_addr().expect("addr").port();
    // Kept bound (and unlistened) until the process exits.
    std::mem::forget(sock);
    port
}

/// Two distinct free loopback addresses (`127.0.0.1:PORT`).
pub fn free_addrs() -> [String; 2] {
    let a = TcpListener::bind("127.0.0.1:0").expect("bind free port");
    let b = TcpListener::bind("127.0.0.1:0").expect("bind free port");
    let pa = a.local_addr().expect("addr").port();
    let pb = b.local_addr().expect("addr").port();
    [format!("127.0.0.1:{pa}"), format!("127.0.0.1:{pb}")]
}

/// A config with one `kind: openai` provider per port, `p0`, `p1`… (alias
/// `m` falls back across them in order, upstream models `up-0`, `up-1`…),
/// health checks off, one attempt per provider, and one key `k`.
/// `provider_extra[i]` goes into provider `i`'s map, `top` at the top level.
pub fn fallback_chain(ports: &[u16], provider_extra: &[&str], top: &str, key: &str) -> String {
    let mut providers = String::new();
    let mut routes = String::new();
    for (i, p) in ports.iter().enumerate() {
        let extra = provider_extra.get(i).copied().unwrap_or("");
        providers.push_str(&format!(
            "  p{i}: {{ kind: openai, base_url: \"http://127.0.0.1:{p}/v1\", api_key: \"sk-up-{i}\", \
             health_check: {{ enabled: false }}, retry: {{ attempts: 1 }} {extra} }}\n"
        ));
        routes.push_str(&format!("      - {{ provider: p{i}, model: up-{i} }}\n"));
    }
    format!(
        r#"{CONFIG_HEAD}{top}
providers:
{providers}
models:
  m:
    routes:
{routes}
keys:
  - {{ name: k, key: "{key}" }}
"#
    )
}
