//! Live reload: `SIGHUP` and `POST /-/reload` read the config file again,
//! as Prometheus and Alertmanager do.
//!
//! A reload reads and checks the whole file first (the same checks as
//! startup and `check-config`, and the web config file it names). An
//! invalid file changes nothing: the config in force keeps running, the
//! reason is logged, `/-/reload` answers 400, and
//! `inferwatch_config_last_reload_successful` drops to 0.
//!
//! A valid file is split by [`plan`] into what may change live and what
//! is kept until a restart (the listen address, `data_dir`, the store, the
//! Redis connection...); both lists are logged and answered. Then what
//! changes is put in force:
//! - the config itself ([`crate::config::LiveConfig`]): the GPU collector
//!   and the runner read their cadences, exclusions and service matches at
//!   the start of each round; the health monitor's supervisor starts,
//!   changes and stops service tasks by name;
//! - the queues' section ([`crate::dlq::Queues::set_config`]);
//! - the web config ([`crate::webconf::WebRuntime::install`]);
//! - the log level (through the closure `main` gives).
//!
//! Nothing here restarts a collector, the HTTP server or the WebSocket hub:
//! clients stay connected, the history ring and the store's pending batch
//! are untouched, and a service that stays keeps its counts and status.

use std::path::PathBuf;
use std::sync::Arc;

use prometheus::Gauge;
use serde::Serialize;

use crate::config::{Config, ConfigError, LogLevel};
use crate::metrics::family;

/// Checks what only the config's owners can check (token files, health
/// check URLs); `Err` says what is wrong.
pub type Check = Box<dyn Fn(&Config) -> Result<(), String> + Send + Sync>;

/// Sets the daemon's log level; `Err` says why it could not.
pub type SetLevel = Box<dyn Fn(LogLevel) -> Result<(), String> + Send + Sync>;

/// Whether a reload can change the log level.
pub enum LogControl {
    /// It can, through this.
    Settable(SetLevel),
    /// It cannot: `--log.level` or `RUST_LOG` fixed it (the reason).
    Fixed(&'static str),
}

/// Where the config comes from, as `main` read it at start.
pub struct Source {
    /// `--config`; `None`: the built-in defaults (and the environment).
    pub path: Option<PathBuf>,
    /// Applies again the command-line flags that win over the file
    /// (`--collector.<name>`, `--web.config.file`, `--web.listen-address`).
    pub flags: Box<dyn Fn(&mut Config) + Send + Sync>,
    pub log: LogControl,
    /// `--web.enable-lifecycle`: whether `POST /-/reload` is served.
    pub lifecycle: bool,
}

impl Default for Source {
    /// No file, no flags, a log level no reload can change, no lifecycle
    /// endpoint (state built by tests).
    fn default() -> Source {
        Source {
            path: None,
            flags: Box::new(|_| {}),
            log: LogControl::Fixed("the log was set up by the caller"),
            lifecycle: false,
        }
    }
}

/// A change the reload did not apply, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Kept {
    /// The config key (or section) that changed.
    pub key: &'static str,
    pub reason: &'static str,
}

/// What a reload did.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Report {
    /// The file read, or `null` when running on the built-in defaults.
    pub config_file: Option<String>,
    /// Keys whose new values are in force now.
    pub changed: Vec<&'static str>,
    /// Keys whose new values wait for a restart; the old ones stay.
    pub not_applied: Vec<Kept>,
}

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Invalid(String),
}

const RESTART: &str = "read once at start; restart inferwatch to apply it";
const LISTENER: &str = "the listener is bound at start; restart inferwatch to apply it";
const STORE: &str = "the history store is opened at start; restart inferwatch to apply it";
const SERVER: &str = "the HTTP server's limits are set at start; restart inferwatch to apply it";
const REDIS: &str = "the Redis connection is made at start; restart inferwatch to apply it";
const KEYS: &str = "running moves and archives derive their keys from it; restart inferwatch to apply it";
const NVML: &str = "NVML and the history ring are set up at start; restart inferwatch to apply it";
const GATE: &str = "the restart gate is built at start; restart inferwatch to apply it";

/// The config to put in force, and what changed.
#[derive(Debug)]
pub struct Plan {
    /// The old config with the new values of every key that may change live.
    pub config: Config,
    pub changed: Vec<&'static str>,
    pub kept: Vec<Kept>,
}

/// Splits the changes from `old` to `new`: the keys that may change live
/// take their new value, the rest keep the old one and are listed with the
/// reason. `log` is why the log level is fixed, if it is. Pure.
pub fn plan(old: &Config, new: &Config, log: Option<&'static str>) -> Plan {
    let mut p = Plan {
        config: old.clone(),
        changed: Vec::new(),
        kept: Vec::new(),
    };
    // `effective.<path>` takes `new.<path>` (live), or stays and is listed.
    macro_rules! live {
        ($key:literal, $($f:ident).+) => {
            if p.config.$($f).+ != new.$($f).+ {
                p.config.$($f).+ = new.$($f).+.clone();
                p.changed.push($key);
            }
        };
    }
    macro_rules! kept {
        ($key:literal, $why:expr, $($f:ident).+) => {
            if p.config.$($f).+ != new.$($f).+ {
                p.kept.push(Kept { key: $key, reason: $why });
            }
        };
    }
    // Every field is named, so a new one does not compile until it is
    // put in one list or the other.
    let Config {
        data_dir: _,
        web,
        gpu,
        store: _,
        health,
        websocket: _,
        queues,
        api: _,
        pipeline: _,
        storage: _,
        attribution: _,
        log: crate::config::LogConfig { level: _ },
        inference,
        slo: _,
        collector_flags: _,
    } = new;
    kept!("data_dir", STORE, data_dir);
    kept!("store", STORE, store);

    let crate::config::WebConfig {
        listen_address: _,
        header_read_timeout: _,
        body_read_timeout: _,
        request_timeout: _,
        max_connections: _,
        shutdown_timeout: _,
        config_file: _,
    } = web;
    kept!("web.listen_address", LISTENER, web.listen_address);
    kept!("web.header_read_timeout", SERVER, web.header_read_timeout);
    kept!("web.body_read_timeout", SERVER, web.body_read_timeout);
    kept!("web.request_timeout", SERVER, web.request_timeout);
    kept!("web.max_connections", SERVER, web.max_connections);
    kept!("web.shutdown_timeout", SERVER, web.shutdown_timeout);
    live!("web.config_file", web.config_file);

    let crate::config::GpuConfig {
        enabled: _,
        mode: _,
        nvml_library: _,
        poll_interval: _,
        history_minutes: _,
        timeout: _,
        per_process: _,
        per_process_max: _,
        temperature_warning_celsius: _,
        slow_interval: _,
        fields: _,
        kernel_log: _,
    } = gpu;
    kept!("gpu.enabled", NVML, gpu.enabled);
    kept!("gpu.mode", NVML, gpu.mode);
    kept!("gpu.nvml_library", NVML, gpu.nvml_library);
    kept!("gpu.history_minutes", NVML, gpu.history_minutes);
    kept!("gpu.per_process", NVML, gpu.per_process);
    kept!("gpu.kernel_log", RESTART, gpu.kernel_log);
    live!("gpu.poll_interval", gpu.poll_interval);
    live!("gpu.slow_interval", gpu.slow_interval);
    live!("gpu.timeout", gpu.timeout);
    live!("gpu.per_process_max", gpu.per_process_max);
    live!("gpu.temperature_warning_celsius", gpu.temperature_warning_celsius);
    live!("gpu.fields", gpu.fields);

    let crate::config::HealthConfig {
        services: _,
        max_concurrent_restarts: _,
        proxy_max_bytes: _,
    } = health;
    live!("health.services", health.services);
    kept!("health.max_concurrent_restarts", GATE, health.max_concurrent_restarts);
    // The proxy and the discovery list read the config at each request.
    live!("health.proxy_max_bytes", health.proxy_max_bytes);
    let crate::config::InferenceConfig { scrape: _ } = inference;
    live!("inference.scrape", inference.scrape);
    // Only `inferwatch slo-rules` reads it, from the file, never the
    // running daemon: nothing to restart, and a reload checks it all the same.
    live!("slo", slo);

    let crate::config::QueuesConfig {
        enabled: _,
        redis_url: _,
        tls: _,
        password_file: _,
        names: _,
        dlq_prefix: _,
        poll_interval: _,
        push_side: _,
        clear_archive_ttl: _,
        requeue_batch: _,
        list_entry_max_bytes: _,
        list_page_max_bytes: _,
        search_scan_max: _,
        processing_suffix: _,
        processing_stuck_after: _,
        max_wait: _,
        max_wait_by_queue: _,
        streams: _,
        replica_wait: _,
    } = queues;
    kept!("queues.enabled", RESTART, queues.enabled);
    kept!("queues.redis_url", REDIS, queues.redis_url);
    kept!("queues.tls", REDIS, queues.tls);
    kept!("queues.password_file", REDIS, queues.password_file);
    kept!("queues.dlq_prefix", KEYS, queues.dlq_prefix);
    kept!("queues.processing_suffix", KEYS, queues.processing_suffix);
    kept!("queues.streams", RESTART, queues.streams);
    live!("queues.names", queues.names);
    live!("queues.poll_interval", queues.poll_interval);
    live!("queues.push_side", queues.push_side);
    live!("queues.clear_archive_ttl", queues.clear_archive_ttl);
    live!("queues.requeue_batch", queues.requeue_batch);
    live!("queues.list_entry_max_bytes", queues.list_entry_max_bytes);
    live!("queues.list_page_max_bytes", queues.list_page_max_bytes);
    live!("queues.search_scan_max", queues.search_scan_max);
    live!("queues.processing_stuck_after", queues.processing_stuck_after);
    live!("queues.max_wait", queues.max_wait);
    live!("queues.max_wait_by_queue", queues.max_wait_by_queue);
    live!("queues.replica_wait", queues.replica_wait);

    kept!("websocket", RESTART, websocket);
    kept!("api", RESTART, api);
    kept!("pipeline", RESTART, pipeline);
    kept!("storage", RESTART, storage);
    kept!("attribution", RESTART, attribution);
    match log {
        None => live!("log.level", log.level),
        Some(why) => kept!("log.level", why, log.level),
    }
    p
}

/// `inferwatch_config_last_reload_*`, Prometheus's names for the same.
struct ReloadMetrics {
    successful: Gauge,
    last_success: Gauge,
}

/// Runs reloads, one at a time.
pub struct Reloader {
    source: Source,
    /// What reloads change.
    state: crate::state::Shared,
    web: Arc<crate::webconf::WebRuntime>,
    /// Checks the config's parts that only their owners can check (token
    /// files, health check URLs); `lib.rs` builds it.
    check: Check,
    metrics: ReloadMetrics,
    lock: tokio::sync::Mutex<()>,
}

impl Reloader {
    /// The startup config counts as the first successful load.
    pub fn new(
        source: Source,
        state: crate::state::Shared,
        web: Arc<crate::webconf::WebRuntime>,
        check: Check,
    ) -> Reloader {
        let metrics = ReloadMetrics {
            successful: family(
                "inferwatch_config_last_reload_successful",
                "1 if the last config reload (SIGHUP or POST /-/reload) succeeded, or none was tried; 0 if it failed and the config in force is the one before it.",
                &[],
            ),
            last_success: family(
                "inferwatch_config_last_reload_success_timestamp_seconds",
                "Unix time of the last successful config load (startup counts).",
                &[],
            ),
        };
        state.metrics.add(&metrics.successful);
        state.metrics.add(&metrics.last_success);
        metrics.successful.set(1.0);
        metrics.last_success.set(crate::collectors::unix_now());
        Reloader {
            source,
            state,
            web,
            check,
            metrics,
            lock: tokio::sync::Mutex::new(()),
        }
    }

    /// Whether `POST /-/reload` is served (`--web.enable-lifecycle`).
    pub fn lifecycle(&self) -> bool {
        self.source.lifecycle
    }

    /// Reads the config file again and puts in force what may change live.
    /// `trigger` (`SIGHUP`, `POST /-/reload`) goes to the log.
    pub async fn reload(&self, trigger: &'static str) -> Result<Report, ReloadError> {
        let _one = self.lock.lock().await;
        let result = self.try_reload();
        let file = self.file();
        match &result {
            Ok(report) => {
                self.metrics.successful.set(1.0);
                self.metrics.last_success.set(crate::collectors::unix_now());
                tracing::info!(trigger, file = %file, changed = ?report.changed, "Config reloaded.");
                if !report.not_applied.is_empty() {
                    let keys: Vec<&str> = report.not_applied.iter().map(|k| k.key).collect();
                    tracing::warn!(trigger, file = %file, not_applied = ?keys, "Config reloaded, but these changes wait for a restart; their old values stay in force.");
                }
            }
            Err(e) => {
                self.metrics.successful.set(0.0);
                tracing::error!(trigger, file = %file, error = %e, "Config reload failed; the config in force is unchanged.");
            }
        }
        self.state.metrics.invalidate();
        result
    }

    fn file(&self) -> String {
        self.source
            .path
            .as_ref()
            .map_or_else(|| "(built-in defaults)".to_string(), |p| p.display().to_string())
    }

    fn try_reload(&self) -> Result<Report, ReloadError> {
        let mut new = Config::load(self.source.path.as_deref(), |k| std::env::var(k).ok())?;
        (self.source.flags)(&mut new);
        (self.check)(&new).map_err(ReloadError::Invalid)?;
        for d in new.health.deprecations() {
            tracing::warn!("{d}.");
        }
        let old = self.state.config.get();
        let fixed = match &self.source.log {
            LogControl::Settable(_) => None,
            LogControl::Fixed(why) => Some(*why),
        };
        let Plan {
            config,
            changed,
            mut kept,
        } = plan(&old, &new, fixed);
        // The kept keys' old values with the new live ones: checked again as
        // a whole (a bound between two keys can straddle the two lists).
        config
            .validate()
            .map_err(|e| ReloadError::Invalid(format!("{e} (with the values kept until a restart)")))?;
        // Read before anything changes, so a broken web config changes
        // nothing either. It is read on every reload, as Prometheus does.
        let web = match &config.web.config_file {
            Some(path) => Some(crate::webconf::load(path).map_err(|e| ReloadError::Invalid(e.to_string()))?),
            None => None,
        };

        self.web.install(config.web.config_file.as_deref(), web);
        if changed.contains(&"log.level") {
            if let LogControl::Settable(set) = &self.source.log {
                if let Err(e) = set(config.log.level.unwrap_or(LogLevel::Info)) {
                    tracing::warn!(error = %e, "The log level could not be changed.");
                    kept.push(Kept {
                        key: "log.level",
                        reason: "the log filter could not be replaced",
                    });
                }
            }
        }
        if let Some(queues) = &self.state.queues {
            if config.queues != old.queues {
                queues.set_config(config.queues.clone());
            }
        }
        self.state.config.replace(config);
        Ok(Report {
            config_file: self.source.path.as_ref().map(|p| p.display().to_string()),
            changed: changed
                .into_iter()
                .filter(|c| !kept.iter().any(|k| k.key == *c))
                .collect(),
            not_applied: kept,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Config {
        Config::from_yaml(yaml).unwrap()
    }

    #[test]
    fn an_unchanged_file_changes_nothing() {
        let c =
            parse("gpu: {poll_interval: 2}\nhealth: {services: [{name: a, kind: http, url: 'http://127.0.0.1:1/'}]}");
        let p = plan(&c, &c.clone(), None);
        assert!(p.changed.is_empty() && p.kept.is_empty(), "{p:?}");
        assert_eq!(p.config, c);
    }

    #[test]
    fn live_keys_take_the_new_value_and_the_rest_keep_the_old_one() {
        let old = parse("data_dir: /a\nweb: {listen_address: '127.0.0.1:1'}\ngpu: {poll_interval: 2}\nqueues: {names: [a], redis_url: 'redis://h1/'}");
        let new = parse("data_dir: /b\nweb: {listen_address: '127.0.0.1:2'}\ngpu: {poll_interval: 5, fields: {exclude: [fan_speed]}}\nqueues: {names: [a, b], redis_url: 'redis://h2/'}\nhealth: {services: [{name: a, kind: http, url: 'http://127.0.0.1:1/'}]}\nlog: {level: debug}");
        let p = plan(&old, &new, None);
        assert_eq!(
            p.changed,
            [
                "gpu.poll_interval",
                "gpu.fields",
                "health.services",
                "queues.names",
                "log.level"
            ]
        );
        let kept: Vec<&str> = p.kept.iter().map(|k| k.key).collect();
        assert_eq!(kept, ["data_dir", "web.listen_address", "queues.redis_url"]);
        assert_eq!(p.config.gpu.poll_interval, new.gpu.poll_interval);
        assert_eq!(p.config.gpu.fields, new.gpu.fields);
        assert_eq!(p.config.health.services, new.health.services);
        assert_eq!(p.config.queues.names, new.queues.names);
        assert_eq!(p.config.data_dir, old.data_dir);
        assert_eq!(p.config.web.listen_address, old.web.listen_address);
        assert_eq!(p.config.queues.redis_url, old.queues.redis_url);
    }

    #[test]
    fn a_fixed_log_level_is_kept_with_its_reason() {
        let old = parse("");
        let new = parse("log: {level: error}");
        let p = plan(&old, &new, Some("--log.level is given"));
        assert!(p.changed.is_empty());
        assert_eq!(
            p.kept,
            [Kept {
                key: "log.level",
                reason: "--log.level is given"
            }]
        );
        assert_eq!(p.config.log.level, None);
    }

    #[test]
    fn whole_sections_read_at_start_are_kept() {
        let old = parse("");
        let new = parse("websocket: {max_clients: 5}\napi: {token: abc}\nhealth: {max_concurrent_restarts: 3}");
        let p = plan(&old, &new, None);
        let kept: Vec<&str> = p.kept.iter().map(|k| k.key).collect();
        assert_eq!(kept, ["health.max_concurrent_restarts", "websocket", "api"]);
        assert_eq!(p.config, old);
    }
}
