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

pub use crate::config::Kept;
use crate::config::{Changes, Config, ConfigError, LogLevel, Reload};
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

/// What a reload did.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Report {
    /// The file read, or `null` when running on the built-in defaults.
    pub config_file: Option<String>,
    /// Keys whose new values are in force now.
    pub changed: Vec<String>,
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

/// The config to put in force, and what changed.
#[derive(Debug)]
pub struct Plan {
    /// The old config with the new values of every key that may change live.
    pub config: Config,
    pub changed: Vec<String>,
    pub kept: Vec<Kept>,
}

/// The one key whose decision depends on how the daemon was started.
const LOG_LEVEL: &str = "log.level";

/// Splits the changes from `old` to `new`: the keys that may change live
/// take their new value, the rest keep the old one and are listed with the
/// reason. Each config field declares which it is (`#[reload(...)]`, see
/// [`crate::config::Reload`]). `log` is why the log level is fixed, if it
/// is: then `log.level` is kept too. Pure.
pub fn plan(old: &Config, new: &Config, log: Option<&'static str>) -> Plan {
    let mut config = old.clone();
    let mut changes = Changes::default();
    config.reload(new, "", &mut changes);
    if let Some(why) = log {
        if let Some(i) = changes.changed.iter().position(|k| k == LOG_LEVEL) {
            changes.changed.remove(i);
            config.log.level = old.log.level;
            changes.kept.push(Kept {
                key: LOG_LEVEL.into(),
                reason: why,
            });
        }
    }
    Plan {
        config,
        changed: changes.changed,
        kept: changes.kept,
    }
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
                    let keys: Vec<&str> = report.not_applied.iter().map(|k| k.key.as_str()).collect();
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
        if changed.iter().any(|k| k == LOG_LEVEL) {
            if let LogControl::Settable(set) = &self.source.log {
                if let Err(e) = set(config.log.level.unwrap_or(LogLevel::Info)) {
                    tracing::warn!(error = %e, "The log level could not be changed.");
                    kept.push(Kept {
                        key: LOG_LEVEL.into(),
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
        let kept: Vec<&str> = p.kept.iter().map(|k| k.key.as_str()).collect();
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
                key: "log.level".into(),
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
        let kept: Vec<&str> = p.kept.iter().map(|k| k.key.as_str()).collect();
        assert_eq!(kept, ["health.max_concurrent_restarts", "websocket", "api"]);
        assert_eq!(p.config, old);
    }

    #[test]
    fn the_log_level_key_is_a_live_key_of_the_config() {
        let keys = crate::config::keys_of::<Config>();
        assert!(
            keys.contains(&(LOG_LEVEL.to_string(), crate::config::KeyDecision::Live)),
            "{keys:?}"
        );
    }

    #[test]
    fn every_key_is_declared_once_and_every_field_change_is_seen() {
        let keys = crate::config::keys_of::<Config>();
        let mut names: Vec<&str> = keys.iter().map(|(k, _)| k.as_str()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), keys.len(), "{keys:?}");
        // A change to each declared key is either changed or kept: never
        // dropped. Checked on the keys a one-line YAML can change.
        for (key, yaml) in [
            ("gpu.timeout", "gpu: {timeout: 7}"),
            ("queues.replica_wait", "queues: {replica_wait: 7}"),
            ("web.config_file", "web: {config_file: /x}"),
            ("gpu.kernel_log", "gpu: {kernel_log: /x}"),
            ("inference.scrape", "inference: {scrape: direct}"),
        ] {
            let p = plan(&parse(""), &parse(yaml), None);
            let (decision, seen) = keys.iter().find(|(k, _)| k == key).map(|(_, d)| (*d, key)).unwrap();
            match decision {
                crate::config::KeyDecision::Live => assert_eq!(p.changed, [seen], "{yaml}"),
                crate::config::KeyDecision::Kept(why) => {
                    assert_eq!(
                        p.kept,
                        [Kept {
                            key: seen.into(),
                            reason: why
                        }],
                        "{yaml}"
                    )
                }
            }
        }
    }
}
