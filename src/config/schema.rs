//! The YAML schema as the user writes it. Every struct rejects unknown fields.

use super::duration::HumanDuration;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address of the OpenAI-compatible API listener, e.g. `127.0.0.1:8080`.
    pub listen: String,
    /// TLS on `listen`: certificate, key, versions, HTTP/2. Absent: plain HTTP.
    #[serde(default)]
    pub tls: Option<TlsSection>,
    /// An extra plaintext listener (e.g. for a local sidecar). Optional.
    #[serde(default)]
    pub plain_listen: Option<String>,
    /// Address of the Prometheus listener (serves `/metrics`). Optional.
    #[serde(default)]
    pub metrics_listen: Option<String>,
    /// Address of the admin API listener (`/admin/...`). Optional; needs
    /// `admin_key`.
    #[serde(default)]
    pub admin_listen: Option<String>,
    /// The admin API's bearer key; no gateway key opens it.
    #[serde(default)]
    pub admin_key: Option<String>,
    /// Largest accepted request body, in bytes. Default 32 MiB.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: u64,
    /// Process-level settings.
    #[serde(default)]
    pub server: ServerSection,
    /// Protection against slow or abusive clients.
    #[serde(default)]
    pub downstream: DownstreamSection,
    /// Access log settings.
    #[serde(default)]
    pub access_log: AccessLogSection,
    /// Attempts per request across all routes and backends.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// No new attempt starts this long after the request arrived.
    #[serde(default = "default_deadline")]
    pub request_deadline: HumanDuration,
    /// Response header naming the route that served the request
    /// (`provider/upstream-model`). Empty string: no header.
    #[serde(default = "default_route_header")]
    pub route_header: String,
    /// Upstream providers by name.
    pub providers: BTreeMap<String, Provider>,
    /// Model aliases clients may ask for, by name.
    pub models: BTreeMap<String, Model>,
    /// Gateway keys.
    #[serde(default)]
    pub keys: Vec<Key>,
    /// Teams that keys belong to, by name: shared limits and budgets.
    #[serde(default)]
    pub teams: BTreeMap<String, Team>,
    /// Where limit and budget counters live.
    #[serde(default)]
    pub limits_store: LimitsStore,
    /// File that spend and token budgets are saved to (memory store), so
    /// they survive a restart. Absent: budgets start from zero on start.
    #[serde(default)]
    pub state_file: Option<String>,
    /// How often the budget counters are written to `state_file`.
    #[serde(default = "default_state_interval")]
    pub state_interval: HumanDuration,
    /// Limits on shadow traffic, all aliases together.
    #[serde(default)]
    pub shadow: super::experiments::ShadowSection,
    /// The runtime key store: keys and teams managed through the admin API
    /// (`/admin/keys`, `/admin/teams`). Absent: keys come from this file only.
    #[serde(default)]
    pub key_store: Option<KeyStoreSection>,
    /// How long output captures are kept (`models.<alias>.capture`).
    #[serde(default)]
    pub capture_retention: super::capture::CaptureRetention,
    /// OpenTelemetry spans over OTLP/HTTP. Absent: off.
    #[serde(default)]
    pub tracing: Option<super::tracing::TracingSection>,
    /// The response cache's bound, all aliases together (each alias opts
    /// in with its own `cache:`).
    #[serde(default)]
    pub cache: super::cache::CacheSection,
    /// The bound on the Files and Batches ownership record
    /// (`files_provider` on keys and teams turns the endpoints on).
    #[serde(default)]
    pub files: super::files::FilesSection,
    /// Declared request tags (`x-tollgate-tags`, the body's `metadata`)
    /// that segment metrics, spend, limits and routing. Absent: none.
    #[serde(default)]
    pub workloads: super::workloads::WorkloadsSection,
}

/// Where runtime keys and teams are stored: one of `sqlite` (a file,
/// created and migrated on start) or `postgres` (a URL, for several
/// instances).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KeyStoreSection {
    /// SQLite database file (relative paths are relative to this file).
    #[serde(default)]
    pub sqlite: Option<String>,
    /// `postgres://user:${PGPASSWORD}@host:5432/db`.
    #[serde(default)]
    pub postgres: Option<String>,
    /// How often the store is polled for changes made elsewhere (on
    /// PostgreSQL `LISTEN/NOTIFY` brings them sooner).
    #[serde(default = "default_key_store_poll")]
    pub poll_interval: HumanDuration,
    /// Longest wait for a connection or a statement before the store counts
    /// as down.
    #[serde(default = "default_key_store_timeout")]
    pub timeout: HumanDuration,
}

fn default_key_store_poll() -> HumanDuration {
    HumanDuration::from_millis(500)
}

fn default_key_store_timeout() -> HumanDuration {
    HumanDuration::from_secs(3)
}

fn default_state_interval() -> HumanDuration {
    HumanDuration::from_secs(5)
}

/// Where limit and budget counters live: `memory`, or
/// `{ redis: { url, on_error } }`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitsStore {
    /// In this process; budgets are saved to `state_file`.
    #[default]
    Memory,
    /// In Redis, shared by every gateway instance that names it.
    Redis(RedisStore),
}

impl<'de> Deserialize<'de> for LimitsStore {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = LimitsStore;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("`memory` or `{ redis: { url: ..., on_error: ... } }`")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<LimitsStore, E> {
                match v {
                    "memory" => Ok(LimitsStore::Memory),
                    other => Err(E::custom(format!(
                        "unknown store `{other}`: use `memory` or `{{ redis: {{ url: ... }} }}`"
                    ))),
                }
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<LimitsStore, A::Error> {
                let key: String = map
                    .next_key()?
                    .ok_or_else(|| serde::de::Error::custom("is empty: name a store"))?;
                let store = match key.as_str() {
                    "redis" => LimitsStore::Redis(map.next_value()?),
                    other => {
                        return Err(serde::de::Error::custom(format!(
                            "unknown store `{other}`: use `memory` or `redis`"
                        )))
                    }
                };
                if map.next_key::<String>()?.is_some() {
                    return Err(serde::de::Error::custom("name exactly one store"));
                }
                Ok(store)
            }
        }
        d.deserialize_any(V)
    }
}

/// A Redis limits store.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RedisStore {
    /// `redis://[:password@]host:port[/db]`.
    pub url: String,
    /// What admission does while Redis cannot be reached.
    #[serde(default)]
    pub on_error: OnError,
}

/// Admission while the shared store is unreachable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Refuse with 503 `limits_unavailable`.
    #[default]
    FailClosed,
    /// Admit without limits, counting each such admission.
    FailOpen,
}

/// Rates and concurrency at one level (key, team or model alias).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Requests per minute (sliding window).
    #[serde(default)]
    pub rpm: Option<u64>,
    /// Tokens (prompt + completion) per minute (sliding window), reserved at
    /// admission and settled to the real usage.
    #[serde(default)]
    pub tpm: Option<u64>,
    /// Requests in flight at once.
    #[serde(default)]
    pub concurrency: Option<u64>,
}

impl Limits {
    pub fn is_empty(&self) -> bool {
        self.rpm.is_none() && self.tpm.is_none() && self.concurrency.is_none()
    }
}

/// A spend or token budget over a window.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// US dollars at the routes' prices.
    #[serde(default)]
    pub usd: Option<f64>,
    /// Tokens (prompt + completion).
    #[serde(default)]
    pub tokens: Option<u64>,
    pub window: BudgetWindow,
}

/// A budget's window: a calendar period (UTC) or a rolling duration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BudgetWindow {
    Minute,
    Hour,
    Day,
    /// The calendar month, UTC.
    Month,
    /// The last `d` (60 buckets of `d / 60`).
    Rolling(std::time::Duration),
}

impl std::fmt::Display for BudgetWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Minute => f.write_str("minute"),
            Self::Hour => f.write_str("hour"),
            Self::Day => f.write_str("day"),
            Self::Month => f.write_str("month"),
            Self::Rolling(d) => {
                let s = d.as_secs();
                match s {
                    _ if d.subsec_millis() != 0 => write!(f, "{}ms", d.as_millis()),
                    _ if s % 86_400 == 0 => write!(f, "{}d", s / 86_400),
                    _ if s % 3_600 == 0 => write!(f, "{}h", s / 3_600),
                    _ if s % 60 == 0 => write!(f, "{}m", s / 60),
                    _ => write!(f, "{s}s"),
                }
            }
        }
    }
}

impl Serialize for BudgetWindow {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for BudgetWindow {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(match s.as_str() {
            "minute" => Self::Minute,
            "hour" => Self::Hour,
            "day" => Self::Day,
            "month" => Self::Month,
            other => {
                let d = super::duration::parse_duration(other).map_err(|_| {
                    serde::de::Error::custom(format!(
                        "`{other}` is not a window: use minute, hour, day, month or a duration such as 30d"
                    ))
                })?;
                if d < std::time::Duration::from_secs(60) {
                    return Err(serde::de::Error::custom(format!(
                        "a rolling window must be at least 1m, got `{other}`"
                    )));
                }
                Self::Rolling(d)
            }
        })
    }
}

/// A team: limits and budgets shared by every key that names it.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Team {
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub budgets: Vec<Budget>,
    /// Routes listing this tier in `tiers` open up to this caller.
    #[serde(default)]
    pub tier: Option<String>,
    /// Only routes whose `region` is listed are used (fallbacks included).
    #[serde(default)]
    pub regions: Option<Vec<String>>,
    /// The provider that serves this team's `/v1/files` and `/v1/batches`
    /// (an `openai` or `azure` kind). Absent: those endpoints answer 403.
    #[serde(default)]
    pub files_provider: Option<String>,
    /// Tags a request of this caller carries when it sets none itself.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Per tag key, the only values this caller may use (400 outside).
    #[serde(default)]
    pub allowed_tags: BTreeMap<String, Vec<String>>,
    /// Limits and budgets per workload, keyed `tag=value`.
    #[serde(default)]
    pub workload_limits: BTreeMap<String, super::workloads::WorkloadLimits>,
}

fn default_max_attempts() -> u32 {
    5
}

fn default_deadline() -> HumanDuration {
    HumanDuration::from_secs(600)
}

fn default_route_header() -> String {
    "x-tollgate-route".into()
}

pub const DEFAULT_MAX_BODY_BYTES: u64 = 32 * 1024 * 1024;

fn default_max_body_bytes() -> u64 {
    DEFAULT_MAX_BODY_BYTES
}

/// TLS termination on `listen`. Only file paths: `/admin/config` may show
/// them; the key's content is never in the config.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// PEM certificate chain, leaf first (e.g. certbot's `fullchain.pem`).
    pub cert: String,
    /// PEM private key of the leaf (PKCS#8, PKCS#1 or SEC1).
    pub key: String,
    /// Oldest TLS version accepted.
    #[serde(default)]
    pub min_version: TlsVersion,
    /// Offer HTTP/2 in ALPN (`h2`, then `http/1.1`).
    #[serde(default = "yes")]
    pub http2: bool,
    /// Most concurrent HTTP/2 streams a client may open on one connection.
    #[serde(default = "default_h2_streams")]
    pub max_concurrent_streams: u32,
}

fn default_h2_streams() -> u32 {
    128
}

/// `min_version` values: `"1.2"` or `"1.3"` (quoted or not).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TlsVersion {
    #[default]
    V1_2,
    V1_3,
}

impl Serialize for TlsVersion {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(match self {
            TlsVersion::V1_2 => "1.2",
            TlsVersion::V1_3 => "1.3",
        })
    }
}

impl<'de> Deserialize<'de> for TlsVersion {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = TlsVersion;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("\"1.2\" or \"1.3\"")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<TlsVersion, E> {
                match s.trim() {
                    "1.2" => Ok(TlsVersion::V1_2),
                    "1.3" => Ok(TlsVersion::V1_3),
                    _ => Err(E::invalid_value(serde::de::Unexpected::Str(s), &self)),
                }
            }
            fn visit_f64<E: serde::de::Error>(self, x: f64) -> Result<TlsVersion, E> {
                if x == 1.2 {
                    Ok(TlsVersion::V1_2)
                } else if x == 1.3 {
                    Ok(TlsVersion::V1_3)
                } else {
                    Err(E::invalid_value(serde::de::Unexpected::Float(x), &self))
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// Process-level settings (threads, graceful stop, upgrade socket).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// Worker threads for the proxy service. Default: the number of CPUs.
    pub threads: Option<usize>,
    /// How long SIGTERM waits for in-flight requests before the runtime stops.
    pub grace_period: HumanDuration,
    /// How long the runtime gets to shut down after the grace period.
    pub shutdown_timeout: HumanDuration,
    /// PID file (used by the graceful upgrade).
    pub pid_file: String,
    /// Unix socket used to hand listeners over during a graceful upgrade (`-u`).
    pub upgrade_sock: String,
    /// Idle upstream connections kept per process.
    pub upstream_keepalive_pool: usize,
}

impl Default for ServerSection {
    fn default() -> Self {
        Self {
            threads: None,
            grace_period: HumanDuration::from_secs(30),
            shutdown_timeout: HumanDuration::from_secs(5),
            pid_file: "/tmp/tollgate.pid".into(),
            upgrade_sock: "/tmp/tollgate_upgrade.sock".into(),
            upstream_keepalive_pool: 1024,
        }
    }
}

/// Limits toward clients.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DownstreamSection {
    /// Longest pause while reading the request body before answering 408.
    pub body_idle_timeout: HumanDuration,
    /// Idle keep-alive connections are closed after this long.
    pub keepalive: HumanDuration,
    /// A client that accepts no response bytes for this long is dropped (and
    /// its upstream request cancelled).
    pub write_timeout: HumanDuration,
    /// From a request's first byte to the end of its header (slowloris).
    pub header_timeout: HumanDuration,
    /// Largest request header; larger ones get 431.
    pub max_header_bytes: usize,
    /// Read buffer of each client connection (fixed at start-up). Pingora's
    /// default, 64 KiB, is zeroed per connection: with thousands of open
    /// streams it dominates memory. Large bodies bypass it.
    pub read_buffer_bytes: usize,
}

impl Default for DownstreamSection {
    fn default() -> Self {
        Self {
            body_idle_timeout: HumanDuration::from_secs(30),
            keepalive: HumanDuration::from_secs(60),
            write_timeout: HumanDuration::from_secs(30),
            header_timeout: HumanDuration::from_secs(10),
            max_header_bytes: 64 * 1024,
            read_buffer_bytes: 8 * 1024,
        }
    }
}

/// One JSON line per request.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessLogSection {
    pub enabled: bool,
    /// File to append to. Absent: stderr.
    pub path: Option<String>,
}

impl Default for AccessLogSection {
    fn default() -> Self {
        Self {
            enabled: true,
            path: None,
        }
    }
}

/// The wire format a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// The OpenAI wire format: OpenAI, DeepSeek, Qwen, Groq, vLLM, Ollama...
    Openai,
    /// Answers locally with OpenAI-shaped responses. No network, no key.
    Mock,
    /// Anthropic's Messages API; requests and responses are translated.
    Anthropic,
    /// Azure OpenAI: the OpenAI wire format on Azure's paths, `api-key` auth.
    Azure,
    /// Google's Generative Language API (Gemini, v1beta); requests and
    /// responses are translated. The key goes in `x-goog-api-key`, never in
    /// the URL.
    Gemini,
    /// AWS Bedrock's Converse API (and `InvokeModel` for Titan and Cohere
    /// embeddings), SigV4-signed or with a Bedrock API key; the `bedrock:`
    /// block holds the region and credentials.
    Bedrock,
    /// Google Vertex AI: Gemini models (the Gemini translation) and
    /// Anthropic models (`rawPredict`), with an OAuth access token from a
    /// service account; the `vertex:` block holds project, location and
    /// credentials.
    Vertex,
}

impl ProviderKind {
    /// The kind as the config spells it.
    pub fn name(self) -> &'static str {
        match self {
            ProviderKind::Openai => "openai",
            ProviderKind::Mock => "mock",
            ProviderKind::Anthropic => "anthropic",
            ProviderKind::Azure => "azure",
            ProviderKind::Gemini => "gemini",
            ProviderKind::Bedrock => "bedrock",
            ProviderKind::Vertex => "vertex",
        }
    }
}

/// One upstream provider.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Provider {
    pub kind: ProviderKind,
    /// `http(s)://host[:port][/prefix]`. Required for every kind but `mock`,
    /// `anthropic` (default `https://api.anthropic.com/v1`) and `gemini`
    /// (default `https://generativelanguage.googleapis.com/v1beta`).
    #[serde(default)]
    pub base_url: Option<String>,
    /// Sent upstream as `Authorization: Bearer …` (`x-api-key` for
    /// anthropic, `api-key` for azure, `x-goog-api-key` for gemini). Usually
    /// `${ENV_VAR}`.
    #[serde(default)]
    pub api_key: Option<String>,
    /// A key pool instead of `api_key`: each request picks a key by weight
    /// among those not cooling down and within their limits; a 429 cools
    /// that key and the request retries with another one before falling
    /// back to the next route.
    #[serde(default)]
    pub api_keys: Option<Vec<PoolKey>>,
    /// Addresses to balance across instead of `base_url`'s host (`host:port`).
    #[serde(default)]
    pub backends: Option<Vec<String>>,
    /// PEM file of extra CA certificates trusted for this provider's TLS.
    #[serde(default)]
    pub ca_file: Option<String>,
    /// Extra headers sent upstream on every request (e.g. `OpenAI-Organization`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub timeouts: Timeouts,
    #[serde(default)]
    pub retry: RetryPolicy,
    #[serde(default)]
    pub breaker: BreakerPolicy,
    #[serde(default)]
    pub health_check: HealthCheck,
    /// How often hostnames in `base_url`/`backends` are re-resolved.
    #[serde(default = "default_dns_refresh")]
    pub dns_refresh: HumanDuration,
    /// Settings of `kind: mock`.
    #[serde(default)]
    pub mock: Option<MockSettings>,
    /// Ask streaming upstreams for usage (`stream_options.include_usage`) when
    /// the client did not, then hide that usage chunk from the client.
    #[serde(default = "yes")]
    pub stream_usage: bool,
    /// `kind: anthropic`: the `anthropic-version` header. Default `2023-06-01`.
    #[serde(default)]
    pub anthropic_version: Option<String>,
    /// `kind: anthropic`: beta features, sent as one `anthropic-beta` header.
    #[serde(default)]
    pub anthropic_beta: Vec<String>,
    /// `kind: azure`: the `api-version` of the deployment-path API
    /// (`/openai/deployments/{deployment}/…`). Absent: the `/openai/v1/` API.
    #[serde(default)]
    pub api_version: Option<String>,
    /// `kind: bedrock`: region and credentials.
    #[serde(default)]
    pub bedrock: Option<super::cloud::BedrockConfig>,
    /// `kind: vertex`: project, location and credentials.
    #[serde(default)]
    pub vertex: Option<super::cloud::VertexConfig>,
}

/// One key of a provider's key pool (`api_keys`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PoolKey {
    /// The secret (usually `${ENV_VAR}`), sent as the kind's key header.
    pub key: String,
    /// Share of the picks among the usable keys. 0: a standby key, used
    /// only when no weighted key is usable. Default 1.
    #[serde(default = "one")]
    pub weight: f64,
    /// The key's own provider quota: past it the key is not picked until
    /// its window has room.
    #[serde(default)]
    pub limits: PoolKeyLimits,
    /// Shown in metrics and logs instead of the key's index. Never the
    /// secret.
    #[serde(default)]
    pub name: Option<String>,
}

fn one() -> f64 {
    1.0
}

/// A pool key's limits, per rolling minute.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PoolKeyLimits {
    /// Requests (attempts) per minute.
    #[serde(default)]
    pub rpm: Option<u64>,
    /// Tokens (prompt + completion, as reported) per minute.
    #[serde(default)]
    pub tpm: Option<u64>,
}

fn yes() -> bool {
    true
}

fn default_dns_refresh() -> HumanDuration {
    HumanDuration::from_secs(30)
}

/// Upstream timeouts.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// TCP (and TLS) connect.
    pub connect: HumanDuration,
    /// From sending the request to the response headers (for streams, the
    /// first token). Past it the attempt fails over. Default: `idle`.
    pub first_byte: Option<HumanDuration>,
    /// Longest silence between reads once the response has started.
    pub idle: HumanDuration,
    /// Longest a single attempt may take in all. Default: no limit.
    pub total: Option<HumanDuration>,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: HumanDuration::from_secs(5),
            first_byte: None,
            idle: HumanDuration::from_secs(300),
            total: None,
        }
    }
}

/// Per-route overrides of the provider's timeouts; unset fields inherit.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutOverrides {
    pub connect: Option<HumanDuration>,
    pub first_byte: Option<HumanDuration>,
    pub idle: Option<HumanDuration>,
    pub total: Option<HumanDuration>,
}

/// When to try another backend of the same provider.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// Attempts on this provider (backends tried) before moving to the next route.
    pub attempts: usize,
    /// Response statuses that count as failures and move the request on.
    /// Connection errors, TLS errors and timeouts always do.
    pub on_status: Vec<u16>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 2,
            on_status: vec![408, 429, 500, 502, 503, 504],
        }
    }
}

/// Passive health: a backend that keeps failing is skipped for a cooldown.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerPolicy {
    pub enabled: bool,
    /// Consecutive failures that open the breaker.
    pub consecutive_failures: u32,
    /// Failure ratio over the last `window` outcomes that opens it…
    pub failure_ratio: f64,
    /// …once at least `min_requests` of them were seen. At most 64.
    pub window: u32,
    pub min_requests: u32,
    /// How long it stays open before one probe request may close it.
    pub cooldown: HumanDuration,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        Self {
            enabled: true,
            consecutive_failures: 5,
            failure_ratio: 0.5,
            window: 32,
            min_requests: 10,
            cooldown: HumanDuration::from_secs(30),
        }
    }
}

/// Active health checks. They never send a billed request.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthCheck {
    pub enabled: bool,
    pub interval: HumanDuration,
    pub timeout: HumanDuration,
    /// When set, `GET` this path (e.g. `/health` or `/v1/models`) and expect 2xx.
    /// Otherwise a TCP (or TLS) connect.
    pub path: Option<String>,
    /// Consecutive failures that take a backend out.
    pub unhealthy_after: usize,
    /// Consecutive successes that bring it back.
    pub healthy_after: usize,
}

impl Default for HealthCheck {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: HumanDuration::from_secs(5),
            timeout: HumanDuration::from_secs(1),
            path: None,
            unhealthy_after: 1,
            healthy_after: 1,
        }
    }
}

/// What `kind: mock` answers.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MockSettings {
    /// Delay before the response (non-stream) or the first chunk (stream).
    pub latency: HumanDuration,
    /// Number of content chunks in a streamed answer.
    pub stream_chunks: usize,
    /// Delay between streamed chunks.
    pub chunk_interval: HumanDuration,
    /// The reply text; split across the chunks when streaming.
    pub content: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Length of the vectors returned for embeddings.
    pub embedding_dimensions: usize,
}

impl Default for MockSettings {
    fn default() -> Self {
        Self {
            latency: HumanDuration::from_millis(0),
            stream_chunks: 5,
            chunk_interval: HumanDuration::from_millis(0),
            content: "Hello from the Tollgate mock provider.".into(),
            prompt_tokens: 10,
            completion_tokens: 8,
            embedding_dimensions: 8,
        }
    }
}

/// A model alias: the name clients send.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Model {
    /// Tried in order: the first is the primary, the rest are fallbacks
    /// (unless `strategy` orders them otherwise).
    pub routes: Vec<Route>,
    /// How the eligible routes are ordered for each request.
    #[serde(default)]
    pub strategy: super::routing::Strategy,
    /// An A/B split of the callers over named routes. Empty: no split.
    #[serde(default)]
    pub split: Vec<super::routing::SplitVariant>,
    /// A global cap on this alias, all callers together.
    #[serde(default)]
    pub limits: Limits,
    /// Completion tokens reserved at admission when the body sets neither
    /// `max_tokens` nor `max_completion_tokens` (nor `max_output_tokens`).
    #[serde(default = "default_reserve_output_tokens")]
    pub reserve_output_tokens: u64,
    /// Copy a sample of requests to another route in the background.
    #[serde(default)]
    pub shadow: Option<super::experiments::Shadow>,
    /// Race a slow primary against the next route.
    #[serde(default)]
    pub hedge: Option<super::experiments::Hedge>,
    /// Answer identical requests from the response cache. Absent: off.
    #[serde(default)]
    pub cache: Option<super::cache::AliasCache>,
    /// The strategy and routes by the value of one tag.
    #[serde(default)]
    pub by_workload: Option<super::workloads::ByWorkload>,
    /// Keep a sample of requests and answers (and their shadows') for
    /// comparison and review. Absent: nothing is captured.
    #[serde(default)]
    pub capture: Option<super::capture::Capture>,
}

pub const DEFAULT_RESERVE_OUTPUT_TOKENS: u64 = 1024;

fn default_reserve_output_tokens() -> u64 {
    DEFAULT_RESERVE_OUTPUT_TOKENS
}

/// Where an alias goes.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// A name under `providers`.
    pub provider: String,
    /// The model name the upstream receives.
    pub model: String,
    /// USD per million tokens. Without it, requests are counted as unpriced.
    #[serde(default)]
    pub price: Option<Price>,
    /// Overrides of the provider's timeouts for this route.
    #[serde(default)]
    pub timeouts: Option<TimeoutOverrides>,
    /// Completion tokens asked for when the request sets no maximum, for
    /// providers that require one (`kind: anthropic`).
    #[serde(default)]
    pub max_tokens: Option<u64>,
    /// Drop request fields the provider cannot honour (with a log line)
    /// instead of answering 400.
    #[serde(default)]
    pub drop_unsupported_params: bool,
    /// `kind: azure` with `api_version`: the deployment name. Default: `model`.
    #[serde(default)]
    pub deployment: Option<String>,
    /// Shown in logs and metrics and named by `split`. Default `provider/model`.
    #[serde(default)]
    pub name: Option<String>,
    /// Share of first picks under `strategy: weighted` (0: fallback only). Default 1.
    #[serde(default)]
    pub weight: Option<f64>,
    /// What the model can do. Absent: not declared, assumed capable.
    #[serde(default)]
    pub capabilities: Option<Vec<super::routing::Capability>>,
    /// Prompt plus completion tokens the model takes. Absent: unknown, no check.
    #[serde(default)]
    pub context_window: Option<u64>,
    /// Where the provider processes data (e.g. `eu`), matched by `regions`.
    #[serde(default)]
    pub region: Option<String>,
    /// Tiers this route is reserved for. Absent: open to every caller.
    #[serde(default)]
    pub tiers: Option<Vec<String>>,
    /// Requests in flight on this route before it goes behind the others.
    #[serde(default)]
    pub max_concurrency: Option<u32>,
    /// The upstream serves `POST /rerank` (Cohere/Jina shape). Default
    /// false: `/v1/rerank` skips this route.
    #[serde(default)]
    pub rerank: bool,
    /// Per tag key, the values this route is reserved for (others skip it,
    /// logged as `workload`). Absent: open to every workload.
    #[serde(default)]
    pub workloads: Option<BTreeMap<String, Vec<String>>>,
    /// Send the request's tags to the provider: `none` (default),
    /// `metadata` or `user`.
    #[serde(default)]
    pub forward_tags: super::workloads::ForwardTags,
}

/// A route's price: USD per million tokens, plus unit prices for images
/// and speech.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input: f64,
    /// Cached prompt tokens. Default: the input price.
    #[serde(default)]
    pub cached_input: Option<f64>,
    pub output: f64,
    /// USD per generated image (`/v1/images/generations`, times `n`).
    #[serde(default)]
    pub per_image: Option<f64>,
    /// USD per million characters of speech input (`/v1/audio/speech`).
    #[serde(default)]
    pub per_million_characters: Option<f64>,
    /// USD per minute of audio transcribed or translated
    /// (`/v1/audio/transcriptions`, `/v1/audio/translations`), charged
    /// when the answer says its duration.
    #[serde(default)]
    pub per_minute: Option<f64>,
}

/// A gateway key.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Key {
    /// Shown in logs and metrics. Never the secret.
    pub name: String,
    /// The secret itself (usually `${ENV_VAR}`), or…
    #[serde(default)]
    pub key: Option<String>,
    /// …its SHA-256, hex-encoded.
    #[serde(default)]
    pub key_sha256: Option<String>,
    /// Aliases this key may use. Absent: all.
    #[serde(default)]
    pub models: Option<Vec<String>>,
    /// The team under `teams` whose limits and budgets also apply.
    #[serde(default)]
    pub team: Option<String>,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub budgets: Vec<Budget>,
    /// Routes listing this tier in `tiers` open up to this caller.
    #[serde(default)]
    pub tier: Option<String>,
    /// Only routes whose `region` is listed are used (fallbacks included).
    #[serde(default)]
    pub regions: Option<Vec<String>>,
    /// The provider that serves this key's `/v1/files` and `/v1/batches`;
    /// overrides its team's.
    #[serde(default)]
    pub files_provider: Option<String>,
    /// Tags a request of this caller carries when it sets none itself.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Per tag key, the only values this caller may use (400 outside).
    #[serde(default)]
    pub allowed_tags: BTreeMap<String, Vec<String>>,
    /// Limits and budgets per workload, keyed `tag=value`.
    #[serde(default)]
    pub workload_limits: BTreeMap<String, super::workloads::WorkloadLimits>,
}

impl Key {
    /// The SHA-256 digest that identifies the key: of `key`, or `key_sha256`
    /// decoded. `None` when neither is usable (validation reports why).
    pub fn digest(&self) -> Option<[u8; 32]> {
        match (&self.key, &self.key_sha256) {
            (Some(secret), _) => Some(crate::auth::digest(secret.as_bytes())),
            (None, Some(hexed)) => crate::auth::parse_hex_digest(hexed),
            (None, None) => None,
        }
    }
}
