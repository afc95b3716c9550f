//! Configuration: one YAML file with a section per collector, built-in
//! defaults when no file is given, and a few environment overrides.
//!
//! Every value is checked once, at startup, by [`Config::validate`]. A value
//! out of range stops the daemon with a message naming the key, the value and
//! the allowed range; nothing is clamped silently. `inferwatch check-config`
//! runs the same code.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Errors found while loading or validating configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("failed to read config file ({path}): {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("failed to parse config file ({path}): {source}")]
    Parse {
        path: PathBuf,
        source: serde_path_to_error::Error<serde_yaml_ng::Error>,
    },
    #[error("invalid value for {key}: {value:?} is {problem}; allowed: {allowed}")]
    Invalid {
        key: String,
        value: String,
        problem: &'static str,
        allowed: String,
    },
}

/// The whole daemon configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Directory for the embedded SQLite history database.
    pub data_dir: PathBuf,
    /// HTTP server settings.
    pub web: WebConfig,
    /// GPU collector (NVML).
    pub gpu: GpuConfig,
    /// History store (SQLite by default, PostgreSQL by URL).
    pub store: StoreConfig,
    /// Service health checks and restarts.
    pub health: HealthConfig,
    /// The `/ws/system` live channel.
    pub websocket: WebSocketConfig,
    /// Redis job queues and their dead-letter queues.
    pub queues: QueuesConfig,
    /// Who may call the mutating endpoints.
    pub api: ApiConfig,
    /// Pipeline-stage ingest (HTTP and the Redis stream).
    pub pipeline: PipelineConfig,
    /// Filesystem usage and the cleanup preview.
    pub storage: StorageConfig,
    /// `--collector.<name>` (true) / `--no-collector.<name>` (false) flags,
    /// which win over the sections' own switches.
    #[serde(skip)]
    pub collector_flags: std::collections::HashMap<String, bool>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./data"),
            web: WebConfig::default(),
            gpu: GpuConfig::default(),
            store: StoreConfig::default(),
            health: HealthConfig::default(),
            websocket: WebSocketConfig::default(),
            queues: QueuesConfig::default(),
            api: ApiConfig::default(),
            pipeline: PipelineConfig::default(),
            storage: StorageConfig::default(),
            collector_flags: Default::default(),
        }
    }
}

impl Config {
    /// Applies a `--collector.<name>` (`on`) or `--no-collector.<name>` flag:
    /// it wins over the section's own switch, where it has one.
    pub fn set_collector(&mut self, name: &str, on: bool) {
        self.collector_flags.insert(name.to_string(), on);
        match name {
            "gpu" => self.gpu.enabled = on,
            "queues" => self.queues.enabled = on,
            "stream" => self.pipeline.stream.enabled = on,
            _ => {}
        }
    }
}

/// HTTP server settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebConfig {
    /// Address to listen on; `--web.listen-address` overrides it.
    pub listen_address: String,
    /// Time a client has to send a request's headers, 0.1–300 s. It also
    /// bounds how long a kept-alive connection may sit idle between requests.
    #[serde(deserialize_with = "de_seconds")]
    pub header_read_timeout: Duration,
    /// Time a client has to send a request body, 0.1–3600 s.
    #[serde(deserialize_with = "de_seconds")]
    pub body_read_timeout: Duration,
    /// Time one non-streaming API request may take in all, 0.1–3600 s.
    #[serde(deserialize_with = "de_seconds")]
    pub request_timeout: Duration,
    /// Open connections at once, 1–1,000,000; past it the oldest idle one is closed.
    pub max_connections: usize,
    /// How long graceful shutdown waits for open requests, 0–3600 s.
    #[serde(deserialize_with = "de_seconds")]
    pub shutdown_timeout: Duration,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            listen_address: "0.0.0.0:8790".to_string(),
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(60),
            max_connections: 1024,
            shutdown_timeout: Duration::from_secs(10),
        }
    }
}

/// GPU collector settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GpuConfig {
    /// Switch the collector off entirely (no NVML is loaded).
    pub enabled: bool,
    /// Path or soname of the NVML library.
    pub nvml_library: String,
    /// Seconds between polls (env `GPU_POLL_INTERVAL_SECONDS`), 1.0–60.0.
    #[serde(deserialize_with = "de_seconds")]
    pub poll_interval: Duration,
    /// Minutes of samples kept in memory (env `GPU_STATS_HISTORY_MINUTES`), 1–1440.
    pub history_minutes: u32,
    /// Longest one poll of all GPUs may take before it counts as failed, 0.1–60 s.
    #[serde(deserialize_with = "de_seconds")]
    pub timeout: Duration,
    /// Export `gpu_process_memory_used_bytes` per compute process.
    pub per_process: bool,
    /// Temperature above which one WARNING is logged per crossing, 1–150 °C.
    pub temperature_warning_celsius: f64,
    /// Seconds between reads of the expensive ("slow") fields such as the
    /// energy counter, 1–3600 and at least `poll_interval`. Unset: 15 s, or
    /// the poll interval when that is longer (see [`GpuConfig::slow_interval`]).
    #[serde(deserialize_with = "de_opt_seconds")]
    pub slow_interval: Option<Duration>,
    /// Field selection.
    pub fields: GpuFieldsConfig,
}

impl GpuConfig {
    /// `fields.exclude` as fields (validation has refused unknown names).
    pub fn excluded_fields(&self) -> std::collections::HashSet<crate::nvml::fields::Field> {
        self.fields
            .exclude
            .iter()
            .filter_map(|n| crate::nvml::fields::Field::from_name(n))
            .collect()
    }

    /// The slow fields' interval in force.
    pub fn slow_interval(&self) -> Duration {
        self.slow_interval
            .unwrap_or_else(|| Duration::from_secs(15).max(self.poll_interval))
    }
}

/// Which GPU fields are read.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GpuFieldsConfig {
    /// Field names never to read (see `inferwatch doctor` for the list).
    pub exclude: Vec<String>,
}

impl Default for GpuConfig {
    fn default() -> Self {
        GpuConfig {
            enabled: true,
            nvml_library: "libnvidia-ml.so.1".to_string(),
            poll_interval: Duration::from_secs(5),
            history_minutes: 60,
            timeout: Duration::from_secs(3),
            per_process: false,
            temperature_warning_celsius: 85.0,
            slow_interval: None,
            fields: GpuFieldsConfig::default(),
        }
    }
}

/// History store settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Empty for SQLite at `<data_dir>/inferwatch.db`; else `sqlite://PATH` or `postgres://…`.
    pub url: String,
    /// Rows older than this many days are deleted once a day, 1–3650.
    pub retention_days: u32,
    /// Samples buffered while the database is unreachable, 100–10,000,000.
    /// When full, the oldest sample is dropped and counted.
    pub buffer_capacity: usize,
    /// Most samples written in one transaction, 1–10,000.
    pub batch_size: usize,
    /// Longest a sample waits before it is written, 0.1–300 s.
    #[serde(deserialize_with = "de_seconds")]
    pub flush_interval: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            url: String::new(),
            retention_days: 7,
            buffer_capacity: 100_000,
            batch_size: 500,
            flush_interval: Duration::from_secs(5),
        }
    }
}

/// Service health monitor settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// The services to check, each on its own schedule.
    pub services: Vec<ServiceConfig>,
}

/// How a service is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckKind {
    /// `GET url` must answer 2xx.
    Http,
    /// `PING` on `redis://…` must answer `PONG`.
    Redis,
    /// Connecting to `postgres://…` and `SELECT 1` must work.
    Postgres,
}

/// One monitored service.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// The `service` label and the key in `/api/system/health`: 1–64 of `A-Za-z0-9_.-`.
    pub name: String,
    /// `http`, `redis` or `postgres`.
    pub kind: CheckKind,
    /// `http://…/health`, `redis://…` or `postgres://…`, matching `kind`.
    pub url: String,
    /// Time between checks, 0.05–3600 s.
    #[serde(default = "default_check_interval", deserialize_with = "de_seconds")]
    pub interval: Duration,
    /// Longest one check may take before it counts as failed, 0.01–300 s.
    #[serde(default = "default_check_timeout", deserialize_with = "de_seconds")]
    pub timeout: Duration,
    /// Restart attempts before the service is `failed`, 1–100.
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    /// Attempt n waits `backoff_base * 2^(n-1)`, 0.01–3600 s.
    #[serde(default = "default_backoff_base", deserialize_with = "de_seconds")]
    pub backoff_base: Duration,
    /// The attempt count returns to 0 after this long healthy, 0.01 s–7 days.
    #[serde(default = "default_reset_after", deserialize_with = "de_seconds")]
    pub reset_after: Duration,
    /// Without it the service is alert-only: it stays `unhealthy` when down.
    #[serde(default)]
    pub restart: Option<RestartConfig>,
    /// A critical service that is not healthy makes `/api/system/health`
    /// `unhealthy` (HTTP 503); any other makes it `degraded`.
    #[serde(default)]
    pub critical: bool,
}

fn default_check_interval() -> Duration {
    Duration::from_secs(10)
}
fn default_check_timeout() -> Duration {
    Duration::from_secs(3)
}
fn default_max_retries() -> u32 {
    3
}
fn default_backoff_base() -> Duration {
    Duration::from_secs(5)
}
fn default_reset_after() -> Duration {
    Duration::from_secs(600)
}

/// How a service is restarted.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestartConfig {
    /// Program and arguments, run directly (no shell), e.g.
    /// `["systemctl", "restart", "rtdetr"]`.
    pub command: Vec<String>,
    /// The command is killed after this long, 0.1–3600 s.
    #[serde(default = "default_restart_timeout", deserialize_with = "de_seconds")]
    pub timeout: Duration,
    /// Wait after the command returns before the check that decides
    /// between `healthy` and `restart_failed`, 0–3600 s.
    #[serde(default = "default_grace_period", deserialize_with = "de_seconds")]
    pub grace_period: Duration,
}

fn default_restart_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_grace_period() -> Duration {
    Duration::from_secs(10)
}

/// `/ws/system` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebSocketConfig {
    /// Time between keepalive pings; a peer silent for two intervals is
    /// dropped, 0.05–3600 s.
    #[serde(deserialize_with = "de_seconds")]
    pub ping_interval: Duration,
    /// Messages queued per client before it counts as a slow consumer and is
    /// disconnected, 16–65536.
    pub client_queue: usize,
    /// Most clients connected at once; more get HTTP 503, 1–100000.
    pub max_clients: usize,
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        WebSocketConfig {
            ping_interval: Duration::from_secs(30),
            client_queue: 256,
            max_clients: 10_000,
        }
    }
}

/// Redis job queues and their DLQs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueuesConfig {
    /// Switch the queue collector and the DLQ endpoints off.
    pub enabled: bool,
    /// `redis://[:PASSWORD@]HOST:PORT[/DB]`.
    pub redis_url: String,
    /// Base queue names (1–64 of `A-Za-z0-9_.-`); each has a DLQ `<dlq_prefix><name>`.
    pub names: Vec<String>,
    /// Prefix of the DLQ keys, 1–32 characters.
    pub dlq_prefix: String,
    /// Seconds between depth polls, 0.1–3600.
    #[serde(deserialize_with = "de_seconds")]
    pub poll_interval: Duration,
    /// The end producers push to: `left` (LPUSH, workers BRPOP) or `right`
    /// (RPUSH, workers BLPOP). Requeued jobs go to the same end.
    pub push_side: PushSide,
    /// How long a cleared DLQ's archive key lives, 60 s–365 days.
    #[serde(deserialize_with = "de_seconds")]
    pub clear_archive_ttl: Duration,
    /// Jobs moved per atomic step of a requeue, 1–10,000.
    pub requeue_batch: usize,
    /// A listed entry larger than this is shown truncated, 256 B–16 MiB.
    pub list_entry_max_bytes: usize,
    /// Bytes of entries one listing page may carry; `limit` shrinks to fit,
    /// 64 KiB–256 MiB and at least `list_entry_max_bytes`.
    pub list_page_max_bytes: usize,
}

impl Default for QueuesConfig {
    fn default() -> Self {
        QueuesConfig {
            enabled: true,
            redis_url: "redis://127.0.0.1:6379/0".into(),
            names: vec!["detection_queue".into(), "analysis_queue".into()],
            dlq_prefix: "dlq:".into(),
            poll_interval: Duration::from_secs(5),
            push_side: PushSide::Left,
            clear_archive_ttl: Duration::from_secs(7 * 86_400),
            requeue_batch: 1000,
            list_entry_max_bytes: 64 * 1024,
            list_page_max_bytes: 8 * 1024 * 1024,
        }
    }
}

/// Which end of a list producers push to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PushSide {
    Left,
    Right,
}

/// Authorisation of the mutating endpoints (requeue, clear, restore).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Bearer token; when set (here or in `token_file`), it is required.
    pub token: String,
    /// File holding the token (whitespace trimmed), for secrets.
    pub token_file: Option<PathBuf>,
    /// With no token, only these networks may mutate (CIDR).
    pub trusted_networks: Vec<String>,
    /// A second token that may only post pipeline events, for workers.
    pub ingest_token: String,
    /// File holding the ingest token (wins over `ingest_token`).
    pub ingest_token_file: Option<PathBuf>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            token: String::new(),
            token_file: None,
            trusted_networks: vec!["127.0.0.0/8".into(), "::1/128".into()],
            ingest_token: String::new(),
            ingest_token_file: None,
        }
    }
}

/// Pipeline-stage ingest.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Allowed stage names; empty allows the first `max_stages` names seen.
    pub stages: Vec<String>,
    /// Most distinct stage names (and error types) when `stages` is empty, 1–1000.
    pub max_stages: usize,
    /// Buckets of `pipeline_stage_duration_seconds` and
    /// `pipeline_job_duration_seconds`, strictly increasing, seconds.
    pub buckets: Vec<f64>,
    /// The Redis stream input.
    pub stream: StreamConfig,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            stages: Vec::new(),
            max_stages: 50,
            buckets: vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0,
            ],
            stream: StreamConfig::default(),
        }
    }
}

/// The `pipeline:events` stream, read with a consumer group.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamConfig {
    /// Read the stream (it uses `queues.redis_url`).
    pub enabled: bool,
    /// Stream key.
    pub key: String,
    /// Consumer group, created at the stream's start when missing.
    pub group: String,
    /// This daemon's consumer name; empty means the host name.
    pub consumer: String,
    /// Entries read per XREADGROUP, 1–10,000.
    pub batch: usize,
    /// Pending entries of other consumers idle this long are claimed, 1 s–1 day.
    #[serde(deserialize_with = "de_seconds")]
    pub claim_idle: Duration,
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig {
            enabled: true,
            key: "pipeline:events".into(),
            group: "inferwatch".into(),
            consumer: String::new(),
            batch: 1000,
            claim_idle: Duration::from_secs(60),
        }
    }
}

/// Filesystems to watch and the cleanup preview.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Paths whose filesystems are reported, besides `data_dir`.
    pub paths: Vec<PathBuf>,
    /// Seconds between filesystem polls, 1–3600.
    #[serde(deserialize_with = "de_seconds")]
    pub poll_interval: Duration,
    /// Used percent above which one CRITICAL alert fires per crossing, 1–100.
    pub alert_used_percent: f64,
    /// Directories whose old files the cleanup preview reports.
    pub retention: Vec<RetentionConfig>,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            paths: Vec::new(),
            poll_interval: Duration::from_secs(30),
            alert_used_percent: 90.0,
            retention: Vec::new(),
        }
    }
}

/// One `storage.retention` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// Directory to scan (recursively).
    pub path: PathBuf,
    /// Files older than this many days are reported, 1–36500.
    pub days: u32,
}

/// Which database the store talks to, derived from `store.url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreBackend {
    Sqlite(PathBuf),
    Postgres(String),
}

impl Config {
    /// Loads `path` (or the defaults when `None`), applies the environment
    /// overrides from `env`, and validates the result.
    pub fn load(path: Option<&Path>, env: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let mut config = match path {
            Some(path) => Self::from_file(path)?,
            None => Config::default(),
        };
        config.apply_env(env)?;
        config.validate()?;
        Ok(config)
    }

    /// Parses a YAML file without environment overrides or validation.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_yaml(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    /// Parses YAML text; an empty document gives the defaults. Errors carry
    /// the full key path (`gpu.poll_interval: ...`).
    pub fn from_yaml(text: &str) -> Result<Config, serde_path_to_error::Error<serde_yaml_ng::Error>> {
        if text.trim().is_empty() {
            return Ok(Config::default());
        }
        serde_path_to_error::deserialize(serde_yaml_ng::Deserializer::from_str(text))
    }

    /// Applies `GPU_POLL_INTERVAL_SECONDS` and `GPU_STATS_HISTORY_MINUTES`.
    pub fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        if let Some(secs) = env_number::<f64>(
            &env,
            "GPU_POLL_INTERVAL_SECONDS",
            "not a number",
            (1.0, 60.0),
            "seconds",
        )? {
            self.gpu.poll_interval = Duration::from_secs_f64(secs);
        }
        if let Some(minutes) = env_number::<u32>(
            &env,
            "GPU_STATS_HISTORY_MINUTES",
            "not a whole number",
            (1.0, 1440.0),
            "minutes",
        )? {
            self.gpu.history_minutes = minutes;
        }
        Ok(())
    }

    /// Checks every value against its documented range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let g = &self.gpu;
        check_range("gpu.poll_interval", g.poll_interval.as_secs_f64(), 1.0, 60.0, "seconds")?;
        check_range("gpu.history_minutes", g.history_minutes as f64, 1.0, 1440.0, "minutes")?;
        check_range("gpu.timeout", g.timeout.as_secs_f64(), 0.1, 60.0, "seconds")?;
        check_range(
            "gpu.temperature_warning_celsius",
            g.temperature_warning_celsius,
            1.0,
            150.0,
            "°C",
        )?;
        if let Some(slow) = g.slow_interval {
            check_range(
                "gpu.slow_interval",
                slow.as_secs_f64(),
                g.poll_interval.as_secs_f64().max(1.0),
                3600.0,
                "seconds (and at least gpu.poll_interval)",
            )?;
        }
        for (i, name) in g.fields.exclude.iter().enumerate() {
            if crate::nvml::fields::Field::from_name(name).is_none() {
                let valid: Vec<&str> = crate::nvml::fields::Field::ALL.iter().map(|f| f.name()).collect();
                return Err(invalid(
                    &format!("gpu.fields.exclude[{i}]"),
                    name,
                    "not a known field",
                    &valid.join(", "),
                ));
            }
        }
        if g.nvml_library.trim().is_empty() {
            return Err(invalid("gpu.nvml_library", "", "empty", "a library path or soname"));
        }
        let s = &self.store;
        check_range("store.retention_days", s.retention_days as f64, 1.0, 3650.0, "days")?;
        check_range(
            "store.buffer_capacity",
            s.buffer_capacity as f64,
            100.0,
            10_000_000.0,
            "samples",
        )?;
        check_range("store.batch_size", s.batch_size as f64, 1.0, 10_000.0, "samples")?;
        check_range(
            "store.flush_interval",
            s.flush_interval.as_secs_f64(),
            0.1,
            300.0,
            "seconds",
        )?;
        self.store_backend()?;
        self.validate_health()?;
        self.validate_queues()?;
        let w = &self.websocket;
        check_range(
            "websocket.ping_interval",
            w.ping_interval.as_secs_f64(),
            0.05,
            3600.0,
            "seconds",
        )?;
        check_range(
            "websocket.client_queue",
            w.client_queue as f64,
            16.0,
            65536.0,
            "messages",
        )?;
        check_range("websocket.max_clients", w.max_clients as f64, 1.0, 100_000.0, "clients")?;
        let web = &self.web;
        check_range(
            "web.header_read_timeout",
            web.header_read_timeout.as_secs_f64(),
            0.1,
            300.0,
            "seconds",
        )?;
        check_range(
            "web.body_read_timeout",
            web.body_read_timeout.as_secs_f64(),
            0.1,
            3600.0,
            "seconds",
        )?;
        check_range(
            "web.request_timeout",
            web.request_timeout.as_secs_f64(),
            0.1,
            3600.0,
            "seconds",
        )?;
        check_range(
            "web.max_connections",
            web.max_connections as f64,
            1.0,
            1_000_000.0,
            "connections",
        )?;
        check_range(
            "web.shutdown_timeout",
            web.shutdown_timeout.as_secs_f64(),
            0.0,
            3600.0,
            "seconds",
        )?;
        if self.web.listen_address.parse::<std::net::SocketAddr>().is_err() {
            return Err(invalid(
                "web.listen_address",
                &self.web.listen_address,
                "not a socket address",
                "HOST:PORT, e.g. 0.0.0.0:8790",
            ));
        }
        Ok(())
    }

    fn validate_queues(&self) -> Result<(), ConfigError> {
        let q = &self.queues;
        if redis::Client::open(q.redis_url.as_str()).is_err() || !q.redis_url.starts_with("redis://") {
            return Err(invalid(
                "queues.redis_url",
                &q.redis_url,
                "not a valid Redis URL",
                "redis://[:PASSWORD@]HOST:PORT[/DB]",
            ));
        }
        if q.names.is_empty() {
            return Err(invalid("queues.names", "[]", "empty", "at least one queue name"));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, name) in q.names.iter().enumerate() {
            if !valid_name(name) {
                return Err(invalid(
                    &format!("queues.names[{i}]"),
                    name,
                    "not a valid name",
                    "1–64 of A-Za-z0-9_.-",
                ));
            }
            if !seen.insert(name) {
                return Err(invalid(
                    &format!("queues.names[{i}]"),
                    name,
                    "a duplicate",
                    "a name used once",
                ));
            }
        }
        if q.dlq_prefix.is_empty() || q.dlq_prefix.len() > 32 {
            return Err(invalid(
                "queues.dlq_prefix",
                &q.dlq_prefix,
                "empty or too long",
                "1–32 characters, e.g. dlq:",
            ));
        }
        check_range(
            "queues.poll_interval",
            q.poll_interval.as_secs_f64(),
            0.1,
            3600.0,
            "seconds",
        )?;
        check_range(
            "queues.clear_archive_ttl",
            q.clear_archive_ttl.as_secs_f64(),
            60.0,
            365.0 * 86_400.0,
            "seconds",
        )?;
        check_range("queues.requeue_batch", q.requeue_batch as f64, 1.0, 10_000.0, "jobs")?;
        check_range(
            "queues.list_entry_max_bytes",
            q.list_entry_max_bytes as f64,
            256.0,
            16.0 * 1024.0 * 1024.0,
            "bytes",
        )?;
        check_range(
            "queues.list_page_max_bytes",
            q.list_page_max_bytes as f64,
            (64.0 * 1024.0f64).max(q.list_entry_max_bytes as f64),
            256.0 * 1024.0 * 1024.0,
            "bytes (and at least queues.list_entry_max_bytes)",
        )?;
        for (i, net) in self.api.trusted_networks.iter().enumerate() {
            if net.parse::<ipnet::IpNet>().is_err() && net.parse::<std::net::IpAddr>().is_err() {
                return Err(invalid(
                    &format!("api.trusted_networks[{i}]"),
                    net,
                    "not a network",
                    "CIDR like 127.0.0.0/8 or ::1/128, or a single address",
                ));
            }
        }
        let p = &self.pipeline;
        check_range("pipeline.max_stages", p.max_stages as f64, 1.0, 1000.0, "names")?;
        for (i, stage) in p.stages.iter().enumerate() {
            if !valid_name(stage) {
                return Err(invalid(
                    &format!("pipeline.stages[{i}]"),
                    stage,
                    "not a valid name",
                    "1–64 of A-Za-z0-9_.-",
                ));
            }
        }
        let increasing = p.buckets.windows(2).all(|w| w[0] < w[1]);
        if p.buckets.is_empty() || !increasing || p.buckets.iter().any(|b| !b.is_finite() || *b <= 0.0) {
            return Err(invalid(
                "pipeline.buckets",
                &format!("{:?}", p.buckets),
                "not a strictly increasing list of positive numbers",
                "e.g. [0.01, 0.1, 1, 10, 120]",
            ));
        }
        let st = &p.stream;
        if st.key.is_empty() || st.group.is_empty() {
            return Err(invalid(
                "pipeline.stream.key",
                &st.key,
                "empty",
                "a stream key and a group name",
            ));
        }
        check_range("pipeline.stream.batch", st.batch as f64, 1.0, 10_000.0, "entries")?;
        check_range(
            "pipeline.stream.claim_idle",
            st.claim_idle.as_secs_f64(),
            1.0,
            86_400.0,
            "seconds",
        )?;
        let s = &self.storage;
        check_range(
            "storage.poll_interval",
            s.poll_interval.as_secs_f64(),
            1.0,
            3600.0,
            "seconds",
        )?;
        check_range(
            "storage.alert_used_percent",
            s.alert_used_percent,
            1.0,
            100.0,
            "percent",
        )?;
        for (i, r) in s.retention.iter().enumerate() {
            check_range(
                &format!("storage.retention[{i}].days"),
                r.days as f64,
                1.0,
                36_500.0,
                "days",
            )?;
        }
        Ok(())
    }

    fn validate_health(&self) -> Result<(), ConfigError> {
        let mut seen = std::collections::HashSet::new();
        for (i, svc) in self.health.services.iter().enumerate() {
            let key = |field: &str| format!("health.services[{i}].{field}");
            if !valid_name(&svc.name) {
                return Err(invalid(
                    &key("name"),
                    &svc.name,
                    "not a valid name",
                    "1–64 of A-Za-z0-9_.-",
                ));
            }
            if !seen.insert(svc.name.as_str()) {
                return Err(invalid(&key("name"), &svc.name, "a duplicate", "a name used once"));
            }
            let schemes: &[&str] = match svc.kind {
                CheckKind::Http => &["http://"],
                CheckKind::Redis => &["redis://"],
                CheckKind::Postgres => &["postgres://", "postgresql://"],
            };
            if !schemes.iter().any(|s| svc.url.starts_with(s)) {
                return Err(invalid(
                    &key("url"),
                    &svc.url,
                    "not a URL for this kind",
                    &format!("a URL starting with {}", schemes.join(" or ")),
                ));
            }
            let parsed = match svc.kind {
                CheckKind::Http => reqwest::Url::parse(&svc.url).map(|_| ()).map_err(|e| e.to_string()),
                CheckKind::Redis => redis::Client::open(svc.url.as_str())
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
                CheckKind::Postgres => {
                    use std::str::FromStr;
                    sqlx::postgres::PgConnectOptions::from_str(&svc.url)
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                }
            };
            if let Err(e) = parsed {
                return Err(invalid(
                    &key("url"),
                    &svc.url,
                    "not a valid URL",
                    &format!("a URL of the form {}HOST:PORT/… ({e})", schemes[0]),
                ));
            }
            check_range(&key("interval"), svc.interval.as_secs_f64(), 0.05, 3600.0, "seconds")?;
            check_range(&key("timeout"), svc.timeout.as_secs_f64(), 0.01, 300.0, "seconds")?;
            check_range(&key("max_retries"), svc.max_retries as f64, 1.0, 100.0, "attempts")?;
            check_range(
                &key("backoff_base"),
                svc.backoff_base.as_secs_f64(),
                0.01,
                3600.0,
                "seconds",
            )?;
            check_range(
                &key("reset_after"),
                svc.reset_after.as_secs_f64(),
                0.01,
                604_800.0,
                "seconds",
            )?;
            if let Some(r) = &svc.restart {
                if r.command.first().map_or(true, |p| p.trim().is_empty()) {
                    return Err(invalid(
                        &key("restart.command"),
                        &format!("{:?}", r.command),
                        "empty",
                        "a program and its arguments, e.g. [systemctl, restart, rtdetr]",
                    ));
                }
                check_range(&key("restart.timeout"), r.timeout.as_secs_f64(), 0.1, 3600.0, "seconds")?;
                check_range(
                    &key("restart.grace_period"),
                    r.grace_period.as_secs_f64(),
                    0.0,
                    3600.0,
                    "seconds",
                )?;
            }
        }
        Ok(())
    }

    /// Resolves `store.url` against `data_dir`.
    pub fn store_backend(&self) -> Result<StoreBackend, ConfigError> {
        let url = self.store.url.trim();
        if url.is_empty() {
            return Ok(StoreBackend::Sqlite(self.data_dir.join("inferwatch.db")));
        }
        if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(invalid("store.url", url, "missing a path", "sqlite://PATH"));
            }
            return Ok(StoreBackend::Sqlite(PathBuf::from(path)));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            use std::str::FromStr;
            if let Err(e) = sqlx::postgres::PgConnectOptions::from_str(url) {
                return Err(invalid(
                    "store.url",
                    url,
                    "not a valid PostgreSQL URL",
                    &format!("postgres://USER[:PASSWORD]@HOST:PORT/DB ({e})"),
                ));
            }
            return Ok(StoreBackend::Postgres(url.to_string()));
        }
        Err(invalid(
            "store.url",
            url,
            "an unknown scheme",
            "empty (SQLite in data_dir), sqlite://PATH or postgres://USER@HOST:PORT/DB",
        ))
    }
}

/// A name used as a label value or key part: 1–64 of `A-Za-z0-9_.-`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// Reads `key` from `env`, parses it as `T` and checks it against `range`.
fn env_number<T: std::str::FromStr + Into<f64> + Copy>(
    env: &impl Fn(&str) -> Option<String>,
    key: &str,
    problem: &'static str,
    range: (f64, f64),
    unit: &str,
) -> Result<Option<T>, ConfigError> {
    let Some(raw) = env(key) else { return Ok(None) };
    let value: T = raw.trim().parse().map_err(|_| ConfigError::Invalid {
        key: key.to_string(),
        value: raw.clone(),
        problem,
        allowed: format!("{}–{} {unit}", format_number(range.0), format_number(range.1)),
    })?;
    check_range(key, value.into(), range.0, range.1, unit)?;
    Ok(Some(value))
}

fn invalid(key: &str, value: &str, problem: &'static str, allowed: &str) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        value: redact_url(value),
        problem,
        allowed: allowed.to_string(),
    }
}

/// `scheme://user:secret@host/...` with the secret replaced by `***`, so no
/// error message or log line repeats a password from a URL.
pub fn redact_url(value: &str) -> String {
    let Some(scheme_end) = value.find("://") else {
        return value.to_string();
    };
    let rest = &value[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return value.to_string();
    };
    let userinfo = &rest[..at];
    let user = match userinfo.find(':') {
        Some(colon) => format!("{}:***", &userinfo[..colon]),
        None if userinfo.is_empty() => String::new(),
        // redis://SECRET@host: a lone userinfo is a password for Redis.
        None => "***".to_string(),
    };
    format!("{}{user}{}", &value[..scheme_end + 3], &rest[at..])
}

fn check_range(key: &str, value: f64, min: f64, max: f64, unit: &str) -> Result<(), ConfigError> {
    if value.is_finite() && value >= min && value <= max {
        return Ok(());
    }
    Err(ConfigError::Invalid {
        key: key.to_string(),
        value: format_number(value),
        problem: "out of range",
        allowed: format!("{}–{} {unit}", format_number(min), format_number(max)),
    })
}

fn format_number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v}")
    }
}

/// Accepts a duration as a number of seconds (`5`, `0.5`) or a string with a
/// unit (`"500ms"`, `"5s"`, `"2m"`, `"1h"`, `"7d"`).
fn de_opt_seconds<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    de_seconds(d).map(Some)
}

fn de_seconds<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Num(f64),
        Text(String),
    }
    let secs = match Raw::deserialize(d)? {
        Raw::Num(n) => n,
        Raw::Text(t) => parse_duration(&t).map_err(serde::de::Error::custom)?,
    };
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return Err(serde::de::Error::custom(format!(
            "invalid duration {secs}: must be a non-negative number of seconds"
        )));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses `"500ms"`, `"5s"`, `"2m"`, `"1h"`, `"7d"` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<f64, String> {
    let t = text.trim();
    let (num, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = t.strip_suffix('h') {
        (n, 3600.0)
    } else if let Some(n) = t.strip_suffix('d') {
        (n, 86_400.0)
    } else {
        (t, 1.0)
    };
    num.trim()
        .parse::<f64>()
        .map(|v| v * scale)
        .map_err(|_| format!("invalid duration {text:?}: use e.g. 500ms, 5s, 2m, 1h or 7d"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn defaults_are_valid() {
        let c = Config::load(None, no_env).unwrap();
        assert_eq!(c.gpu.poll_interval, Duration::from_secs(5));
        assert_eq!(c.gpu.history_minutes, 60);
        assert_eq!(c.web.listen_address, "0.0.0.0:8790");
        assert_eq!(
            c.store_backend().unwrap(),
            StoreBackend::Sqlite(PathBuf::from("./data/inferwatch.db"))
        );
    }

    #[test]
    fn durations_accept_numbers_and_units() {
        let c = Config::from_yaml("gpu:\n  poll_interval: 2m\n  timeout: 500ms\n").unwrap();
        assert_eq!(c.gpu.poll_interval, Duration::from_secs(120));
        assert_eq!(c.gpu.timeout, Duration::from_millis(500));
        let c = Config::from_yaml("gpu:\n  poll_interval: 1.5\n").unwrap();
        assert_eq!(c.gpu.poll_interval, Duration::from_millis(1500));
        assert!(Config::from_yaml("gpu:\n  poll_interval: soon\n").is_err());
    }

    #[test]
    fn env_overrides_apply_and_are_checked() {
        let env = |k: &str| match k {
            "GPU_POLL_INTERVAL_SECONDS" => Some("2.5".to_string()),
            "GPU_STATS_HISTORY_MINUTES" => Some("120".to_string()),
            _ => None,
        };
        let c = Config::load(None, env).unwrap();
        assert_eq!(c.gpu.poll_interval, Duration::from_millis(2500));
        assert_eq!(c.gpu.history_minutes, 120);

        let bad = |k: &str| (k == "GPU_POLL_INTERVAL_SECONDS").then(|| "0.5".to_string());
        let msg = Config::load(None, bad).unwrap_err().to_string();
        assert!(
            msg.contains("GPU_POLL_INTERVAL_SECONDS") && msg.contains("0.5") && msg.contains("1–60"),
            "{msg}"
        );
    }

    #[test]
    fn slow_interval_defaults_to_15s_or_the_poll_interval() {
        let mut c = Config::default();
        assert_eq!(c.gpu.slow_interval(), Duration::from_secs(15));
        c.gpu.poll_interval = Duration::from_secs(60);
        c.validate().unwrap();
        assert_eq!(
            c.gpu.slow_interval(),
            Duration::from_secs(60),
            "never faster than the poll"
        );
        c.gpu.slow_interval = Some(Duration::from_secs(30));
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("gpu.slow_interval") && e.contains("at least gpu.poll_interval"),
            "{e}"
        );
        c.gpu.slow_interval = Some(Duration::from_secs(120));
        c.validate().unwrap();
        assert_eq!(c.gpu.slow_interval(), Duration::from_secs(120));
    }

    #[test]
    fn urls_in_errors_lose_their_passwords() {
        assert_eq!(redact_url("redis://:hunter2@h:6379/0"), "redis://:***@h:6379/0");
        assert_eq!(
            redact_url("postgres://u:p%40ss@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact_url("redis://tok@h"), "redis://***@h");
        assert_eq!(redact_url("http://h:80/x@y"), "http://h:80/x@y");
        let mut c = Config::default();
        c.queues.redis_url = "redis://:hunter2@".into();
        c.queues.names.clear();
        c.queues.redis_url = "rediss://:hunter2@h:1/0".into();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("queues.redis_url") && !e.contains("hunter2"), "{e}");
        let mut c = Config::default();
        c.store.url = "mysql://u:hunter2@h/db".into();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("store.url") && !e.contains("hunter2"), "{e}");
    }

    #[test]
    fn store_url_schemes() {
        let mut c = Config::default();
        c.store.url = "postgres://u@h:5432/db".into();
        assert!(matches!(c.store_backend().unwrap(), StoreBackend::Postgres(_)));
        c.store.url = "mysql://x".into();
        assert!(c.validate().unwrap_err().to_string().contains("store.url"));
    }
}
