//! Configuration: one YAML file with a section per collector, built-in
//! defaults when no file is given, and a few environment overrides.
//!
//! Every value is checked once, at startup, by [`Config::validate`]. A value
//! out of range stops the daemon with a message naming the key, the value and
//! the allowed range; nothing is clamped silently. `inferwatch check-config`
//! runs the same code.
//!
//! Each section lives in its own file with its struct, its defaults, its
//! ranges (one [`Range`] constant each, used by the check and its message)
//! and its `validate`.

mod api;
mod attribution;
mod check;
mod gpu;
mod health;
mod inference;
mod live;
mod log;
mod pipeline;
mod queues;
mod reload_keys;
mod secret;
pub mod servers;
mod service_de;
mod slo;
mod storage;
mod store;
mod web;
mod websocket;

pub use api::ApiConfig;
pub use attribution::AttributionConfig;
pub use check::{
    Check, CheckKind, HttpCheck, HttpMethod, OpenInferenceCheck, PostgresCheck, RedisCheck, ServiceTls, StatusSpec,
};
pub use gpu::{GpuConfig, GpuFieldsConfig, GpuMode};
pub use health::{HealthConfig, ReadLimits, RestartConfig, ServiceConfig};
pub use inference::{InferenceConfig, ScrapeMode, ServerKind};
pub use live::LiveConfig;
pub use log::{LogConfig, LogLevel};
pub use pipeline::{PipelineConfig, StreamConfig};
pub use queues::{
    BullmqQueues, CeleryQueues, DramatiqQueues, PushSide, QueuesConfig, RqQueues, StreamWatch, REDIS_URL_RULE,
};
pub use reload_keys::{keys_of, reasons, reload_key, Changes, Kept, KeyDecision, Reload};
pub use secret::{read_secret_file, SecretFileError};
pub use slo::{AvailabilityObjective, LatencyObjective, ServiceSlo, SloConfig};
pub use storage::{RetentionConfig, StorageConfig};
pub use store::{StoreBackend, StoreConfig};
pub use web::WebConfig;
pub use websocket::WebSocketConfig;

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
#[derive(Reload, Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Directory for the embedded SQLite history database.
    #[reload(kept = reasons::STORE)]
    pub data_dir: PathBuf,
    /// HTTP server settings.
    #[reload(nested)]
    pub web: WebConfig,
    /// GPU collector (NVML).
    #[reload(nested)]
    pub gpu: GpuConfig,
    /// History store (SQLite by default, PostgreSQL by URL).
    #[reload(kept = reasons::STORE)]
    pub store: StoreConfig,
    /// Service health checks and restarts.
    #[reload(nested)]
    pub health: HealthConfig,
    /// The `/ws/system` live channel.
    #[reload(kept = reasons::RESTART)]
    pub websocket: WebSocketConfig,
    /// Redis job queues and their dead-letter queues.
    #[reload(nested)]
    pub queues: QueuesConfig,
    /// Who may call the mutating endpoints.
    #[reload(kept = reasons::RESTART)]
    pub api: ApiConfig,
    /// Pipeline-stage ingest (HTTP and the Redis stream).
    #[reload(kept = reasons::RESTART)]
    pub pipeline: PipelineConfig,
    /// Filesystem usage and the cleanup preview.
    #[reload(kept = reasons::RESTART)]
    pub storage: StorageConfig,
    /// Who holds each GPU process: the host's `/proc` and the Docker socket.
    #[reload(kept = reasons::RESTART)]
    pub attribution: AttributionConfig,
    /// The daemon's own log level.
    #[reload(nested)]
    pub log: LogConfig,
    /// How Prometheus reaches the inference servers' own metrics.
    #[reload(nested)]
    pub inference: InferenceConfig,
    /// Service level objectives, read by `inferwatch slo-rules`.
    #[reload(live)]
    pub slo: SloConfig,
    /// `--collector.<name>` (true) / `--no-collector.<name>` (false) flags,
    /// which win over the sections' own switches.
    #[serde(skip)]
    #[reload(skip = "set by the command line's --collector flags, applied again on every reload")]
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
            attribution: AttributionConfig::default(),
            log: LogConfig::default(),
            inference: InferenceConfig::default(),
            slo: SloConfig::default(),
            collector_flags: Default::default(),
        }
    }
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
        if let Some(secs) = env_number::<f64>(&env, "GPU_POLL_INTERVAL_SECONDS", "not a number", gpu::POLL_INTERVAL)? {
            self.gpu.poll_interval = Duration::from_secs_f64(secs);
        }
        if let Some(minutes) = env_number::<u32>(
            &env,
            "GPU_STATS_HISTORY_MINUTES",
            "not a whole number",
            gpu::HISTORY_MINUTES,
        )? {
            self.gpu.history_minutes = minutes;
        }
        // A container or a test run points the reader elsewhere (or, with
        // an empty value, turns it off) without editing the file.
        if let Some(path) = env("GPU_KERNEL_LOG") {
            self.gpu.kernel_log = path;
        }
        Ok(())
    }

    /// Checks every value against its documented range, section by section.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.gpu.validate()?;
        self.store.validate(&self.data_dir)?;
        self.health.validate()?;
        self.queues.validate()?;
        self.api.validate()?;
        self.pipeline.validate()?;
        self.storage.validate()?;
        self.attribution.validate()?;
        self.websocket.validate()?;
        self.slo.validate(&self.health)?;
        self.web.validate()
    }

    /// Resolves `store.url` against `data_dir`.
    pub fn store_backend(&self) -> Result<StoreBackend, ConfigError> {
        self.store.backend(&self.data_dir)
    }
}

/// The allowed range of one numeric key. Each is a constant beside its
/// section; the check and its error message both read it.
#[derive(Debug, Clone, Copy)]
pub struct Range {
    pub key: &'static str,
    pub min: f64,
    pub max: f64,
    pub unit: &'static str,
}

impl Range {
    pub const fn new(key: &'static str, min: f64, max: f64, unit: &'static str) -> Range {
        Range { key, min, max, unit }
    }

    /// This range with its minimum raised to `floor` (a bound that depends
    /// on another key).
    pub fn at_least(self, floor: f64) -> Range {
        Range {
            min: self.min.max(floor),
            ..self
        }
    }

    /// Checks `value` for this range's key.
    pub fn check(&self, value: f64) -> Result<(), ConfigError> {
        self.check_at(self.key, value)
    }

    /// Checks `value` for `key`, an instance of this range's key
    /// (`health.services[2].interval` for `health.services[].interval`).
    pub fn check_at(&self, key: &str, value: f64) -> Result<(), ConfigError> {
        if value.is_finite() && value >= self.min && value <= self.max {
            return Ok(());
        }
        Err(ConfigError::Invalid {
            key: key.to_string(),
            value: format_number(value),
            problem: "out of range",
            allowed: self.allowed(),
        })
    }

    /// `"1–60 seconds"`.
    pub fn allowed(&self) -> String {
        format!("{}–{} {}", format_number(self.min), format_number(self.max), self.unit)
    }
}

/// What [`valid_name`] allows, for error messages.
pub const NAME_RULE: &str = "1–64 of A-Za-z0-9_.-";

/// A name used as a label value or key part: 1–64 of `A-Za-z0-9_.-`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// Reads `key` from `env`, parses it as `T` and checks it against `range`
/// (the range of the config key it overrides).
fn env_number<T: std::str::FromStr + Into<f64> + Copy>(
    env: &impl Fn(&str) -> Option<String>,
    key: &str,
    problem: &'static str,
    range: Range,
) -> Result<Option<T>, ConfigError> {
    let Some(raw) = env(key) else { return Ok(None) };
    let value: T = raw.trim().parse().map_err(|_| ConfigError::Invalid {
        key: key.to_string(),
        value: raw.clone(),
        problem,
        allowed: range.allowed(),
    })?;
    range.check_at(key, value.into())?;
    Ok(Some(value))
}

/// A [`ConfigError::Invalid`] with any password in `value` redacted; the
/// config's owners (the health checks, the Redis client) use it too, so a
/// URL their client refuses is named by its key like any other value.
pub fn invalid(key: &str, value: &str, problem: &'static str, allowed: &str) -> ConfigError {
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

/// A duration that is not a number with an optional unit.
#[derive(Debug, thiserror::Error)]
#[error("invalid duration {0:?}: use e.g. 500ms, 5s, 2m, 1h or 7d")]
pub struct DurationError(pub String);

/// Parses `"500ms"`, `"5s"`, `"2m"`, `"1h"`, `"7d"` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<f64, DurationError> {
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
        .map_err(|_| DurationError(text.to_string()))
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
        // (rediss:// is a valid scheme now: TLS.)
        c.queues.redis_url = "http://:hunter2@h:1/0".into();
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
