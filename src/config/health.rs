//! `health`: the services to check, and how to restart them.

use std::time::Duration;

use serde::Deserialize;

use super::{de_seconds, invalid, valid_name, ConfigError, Range, NAME_RULE};

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
    /// TLS settings of an `https://` check.
    #[serde(default)]
    pub tls: Option<ServiceTls>,
}

/// How an `https://` health check trusts the service and proves itself.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceTls {
    /// PEM CAs to trust instead of the system and webpki roots.
    pub ca_file: Option<std::path::PathBuf>,
    /// Client certificate (PEM) for mutual TLS; needs `key_file`.
    pub cert_file: Option<std::path::PathBuf>,
    /// The client certificate's key (PEM).
    pub key_file: Option<std::path::PathBuf>,
    /// The name to verify the certificate against (and send as SNI) when it
    /// differs from the URL's host.
    pub server_name: Option<String>,
    /// Accept any certificate (a warning is logged at startup).
    #[serde(default)]
    pub insecure_skip_verify: bool,
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

pub const INTERVAL: Range = Range::new("health.services[].interval", 0.05, 3600.0, "seconds");
pub const TIMEOUT: Range = Range::new("health.services[].timeout", 0.01, 300.0, "seconds");
pub const MAX_RETRIES: Range = Range::new("health.services[].max_retries", 1.0, 100.0, "attempts");
pub const BACKOFF_BASE: Range = Range::new("health.services[].backoff_base", 0.01, 3600.0, "seconds");
pub const RESET_AFTER: Range = Range::new("health.services[].reset_after", 0.01, 604_800.0, "seconds");
pub const RESTART_TIMEOUT: Range = Range::new("health.services[].restart.timeout", 0.1, 3600.0, "seconds");
pub const RESTART_GRACE: Range = Range::new("health.services[].restart.grace_period", 0.0, 3600.0, "seconds");

impl HealthConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut seen = std::collections::HashSet::new();
        for (i, svc) in self.services.iter().enumerate() {
            if !seen.insert(svc.name.as_str()) {
                return Err(invalid(
                    &format!("health.services[{i}].name"),
                    &svc.name,
                    "a duplicate",
                    "a name used once",
                ));
            }
            svc.validate(i)?;
        }
        Ok(())
    }
}

impl CheckKind {
    /// The URL schemes this kind of check takes.
    fn schemes(self) -> &'static [&'static str] {
        match self {
            CheckKind::Http => &["http://", "https://"],
            CheckKind::Redis => &["redis://"],
            CheckKind::Postgres => &["postgres://", "postgresql://"],
        }
    }

    /// Whether the client library for this kind accepts `url`.
    fn parse(self, url: &str) -> Result<(), UrlError> {
        match self {
            CheckKind::Http => reqwest::Url::parse(url).map(|_| ()).map_err(UrlError::Http),
            CheckKind::Redis => redis::Client::open(url).map(|_| ()).map_err(UrlError::Redis),
            CheckKind::Postgres => {
                use std::str::FromStr;
                sqlx::postgres::PgConnectOptions::from_str(url)
                    .map(|_| ())
                    .map_err(UrlError::Postgres)
            }
        }
    }
}

/// Why a client library refused a service URL.
#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    #[error("{0}")]
    Http(#[from] url::ParseError),
    #[error("{0}")]
    Redis(#[from] redis::RedisError),
    #[error("{0}")]
    Postgres(#[from] sqlx::Error),
}

impl ServiceConfig {
    /// Checks service `i` (`health.services[i]`).
    fn validate(&self, i: usize) -> Result<(), ConfigError> {
        let key = |field: &str| format!("health.services[{i}].{field}");
        if !valid_name(&self.name) {
            return Err(invalid(&key("name"), &self.name, "not a valid name", NAME_RULE));
        }
        let schemes = self.kind.schemes();
        if !schemes.iter().any(|s| self.url.starts_with(s)) {
            return Err(invalid(
                &key("url"),
                &self.url,
                "not a URL for this kind",
                &format!("a URL starting with {}", schemes.join(" or ")),
            ));
        }
        if let Err(e) = self.kind.parse(&self.url) {
            return Err(invalid(
                &key("url"),
                &self.url,
                "not a valid URL",
                &format!("a URL of the form {}HOST:PORT/… ({e})", schemes[0]),
            ));
        }
        if let Some(tls) = &self.tls {
            if !self.url.starts_with("https://") {
                return Err(invalid(
                    &key("tls"),
                    "set",
                    "only for https:// checks",
                    "an https:// url, or no tls",
                ));
            }
            if tls.cert_file.is_some() != tls.key_file.is_some() {
                return Err(invalid(
                    &key("tls.cert_file"),
                    "only one of cert_file and key_file",
                    "incomplete",
                    "both cert_file and key_file, or neither",
                ));
            }
            for (field, file) in [
                ("ca_file", &tls.ca_file),
                ("cert_file", &tls.cert_file),
                ("key_file", &tls.key_file),
            ] {
                if let Some(f) = file {
                    if let Err(e) = std::fs::File::open(f) {
                        return Err(invalid(
                            &key(&format!("tls.{field}")),
                            &f.display().to_string(),
                            "cannot be read",
                            &format!("a readable PEM file ({e})"),
                        ));
                    }
                }
            }
        }
        INTERVAL.check_at(&key("interval"), self.interval.as_secs_f64())?;
        TIMEOUT.check_at(&key("timeout"), self.timeout.as_secs_f64())?;
        MAX_RETRIES.check_at(&key("max_retries"), self.max_retries as f64)?;
        BACKOFF_BASE.check_at(&key("backoff_base"), self.backoff_base.as_secs_f64())?;
        RESET_AFTER.check_at(&key("reset_after"), self.reset_after.as_secs_f64())?;
        let Some(r) = &self.restart else { return Ok(()) };
        if r.command.first().map_or(true, |p| p.trim().is_empty()) {
            return Err(invalid(
                &key("restart.command"),
                &format!("{:?}", r.command),
                "empty",
                "a program and its arguments, e.g. [systemctl, restart, rtdetr]",
            ));
        }
        RESTART_TIMEOUT.check_at(&key("restart.timeout"), r.timeout.as_secs_f64())?;
        RESTART_GRACE.check_at(&key("restart.grace_period"), r.grace_period.as_secs_f64())
    }
}
