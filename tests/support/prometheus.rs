//! A real Prometheus server (Debian's `prometheus` package, which also ships
//! `promtool`) on a loopback port, scraping given targets every second, with
//! its HTTP API wrapped for tests. Killed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long [`Prometheus::start`] waits for `/-/ready`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// One sample of an instant query: its labels and its value as Prometheus
/// wrote it (`"1.5"`, `"NaN"`, `"+Inf"`).
#[derive(Debug, Clone)]
pub struct Sample {
    pub labels: serde_json::Map<String, Value>,
    pub value: String,
}

impl Sample {
    /// The value as a number (`NaN` and infinities included).
    pub fn number(&self) -> f64 {
        match self.value.as_str() {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or(f64::NAN),
        }
    }

    /// The value of label `name`, if present.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels.get(name).and_then(Value::as_str)
    }
}

/// A running `prometheus`; SIGKILLed and reaped on drop.
pub struct Prometheus {
    child: Child,
    dir: tempfile::TempDir,
    addr: String,
}

impl Prometheus {
    /// Starts Prometheus scraping `targets` (`host:port`, path `/metrics`)
    /// every second as job `tollgate`, evaluating `rule_files` every second,
    /// and waits until it is ready.
    pub async fn start(targets: &[String], rule_files: &[PathBuf]) -> Prometheus {
        let dir = tempfile::tempdir().expect("prometheus tempdir");
        let addr = super::gateway::free_addrs()[0].clone();
        let rules: Vec<String> = rule_files
            .iter()
            .map(|p| format!("  - \"{}\"\n", p.display()))
            .collect();
        let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n{}\
             scrape_configs:\n  - job_name: tollgate\n    static_configs:\n      - targets: [{}]\n",
            if rules.is_empty() {
                "  []\n".to_string()
            } else {
                rules.concat()
            },
            targets.join(", ")
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write prometheus.yml");
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("prometheus log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("clone log")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start prometheus (Debian package prometheus; .ci/run installs it)");
        let mut p = Prometheus { child, dir, addr };
        p.wait_ready().await;
        p
    }

    async fn wait_ready(&mut self) {
        let url = format!("http://{}/-/ready", self.addr);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(r) = super::client().get(&url).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("prometheus exited ({status}); log:\n{}", self.logs());
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready after {READY_TIMEOUT:?}; log:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The server's own log so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// `GET /api/v1/<path>` with `params`; the `data` of a `success`
    /// answer, or the error Prometheus gave.
    pub async fn api(&self, path: &str, params: &[(&str, &str)]) -> Result<Value, String> {
        let url = format!("http://{}/api/v1/{path}", self.addr);
        let resp = super::client()
            .get(&url)
            .query(params)
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        let body: Value = resp
            .json()
            .await
            .map_err(|e| format!("GET {url}: not JSON: {e}"))?;
        if body["status"] == "success" {
            Ok(body["data"].clone())
        } else {
            Err(format!("{}: {}", body["errorType"], body["error"]))
        }
    }

    /// Runs an instant query now; its samples (a scalar result is one
    /// sample without labels).
    pub async fn query(&self, expr: &str) -> Result<Vec<Sample>, String> {
        let data = self.api("query", &[("query", expr)]).await?;
        let sample = |v: &Value| Sample {
            labels: v["metric"].as_object().cloned().unwrap_or_default(),
            value: v["value"][1].as_str().unwrap_or("NaN").to_string(),
        };
        match data["resultType"].as_str() {
            Some("vector") => Ok(data["result"]
                .as_array()
                .map(|a| a.iter().map(sample).collect())
                .unwrap_or_default()),
            Some("scalar") => Ok(vec![Sample {
                labels: Default::default(),
                value: data["result"][1].as_str().unwrap_or("NaN").to_string(),
            }]),
            other => Err(format!("unexpected result type {other:?} for {expr}")),
        }
    }

    /// The values of `label` over the series of `metric` (what Grafana's
    /// `label_values(metric, label)` lists).
    pub async fn label_values(&self, metric: &str, label: &str) -> Result<Vec<String>, String> {
        let data = self
            .api(&format!("label/{label}/values"), &[("match[]", metric)])
            .await?;
        Ok(data
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Every alerting rule Prometheus loaded, as `/api/v1/rules` lists them
    /// (name, health, lastError, state, alerts…).
    pub async fn alerting_rules(&self) -> Result<Vec<Value>, String> {
        let data = self.api("rules", &[("type", "alert")]).await?;
        Ok(data["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `promtool` with `args` in `dir`.
pub fn promtool(dir: &Path, args: &[&str]) -> Output {
    Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run promtool (Debian package prometheus; .ci/run installs it)")
}
