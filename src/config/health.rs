//! `health`: the services to check, and how to restart them.

use std::time::Duration;

use serde::Deserialize;

use super::check::Check;
use super::inference::ServerKind;
use super::{de_seconds, invalid, valid_name, ConfigError, Range, NAME_RULE};
use super::{reasons, Reload};

/// Service health monitor settings.
#[derive(Reload, Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// The services to check, each on its own schedule.
    #[reload(live)]
    pub services: Vec<ServiceConfig>,
    /// Restart commands that may run at once, across every service, 1–100;
    /// a restart past it waits its turn.
    #[serde(default = "default_max_concurrent_restarts")]
    #[reload(kept = reasons::GATE)]
    pub max_concurrent_restarts: u32,
    /// The most bytes `/proxy/{service}/metrics` passes on from one
    /// server's page, 4 KiB–4 GiB; past it the scrape fails (502).
    #[serde(default = "default_proxy_max_bytes")]
    #[reload(live)]
    pub proxy_max_bytes: u64,
    /// The most bytes read of an HTTP check's body (`expect_body`), 1 KiB–
    /// 64 MiB; past it the check fails with reason `too_large`.
    #[serde(default = "default_body_max_bytes")]
    #[reload(kept = reasons::RESTART)]
    pub body_max_bytes: u64,
    /// The most bytes read of a service's `metrics_url` page for stall
    /// detection, 4 KiB–4 GiB; past it the read fails (`too_large`).
    #[serde(default = "default_page_max_bytes")]
    #[reload(kept = reasons::RESTART)]
    pub page_max_bytes: u64,
}

/// What a check may read of what a service sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadLimits {
    /// An HTTP check's body.
    pub body: usize,
    /// A `metrics_url` page.
    pub page: usize,
}

impl HealthConfig {
    pub fn read_limits(&self) -> ReadLimits {
        ReadLimits {
            body: self.body_max_bytes as usize,
            page: self.page_max_bytes as usize,
        }
    }
}

impl Default for ReadLimits {
    fn default() -> Self {
        HealthConfig::default().read_limits()
    }
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            services: Vec::new(),
            max_concurrent_restarts: default_max_concurrent_restarts(),
            proxy_max_bytes: default_proxy_max_bytes(),
            body_max_bytes: default_body_max_bytes(),
            page_max_bytes: default_page_max_bytes(),
        }
    }
}

fn default_max_concurrent_restarts() -> u32 {
    1
}

fn default_proxy_max_bytes() -> u64 {
    32 << 20
}

fn default_page_max_bytes() -> u64 {
    8 << 20
}

fn default_body_max_bytes() -> u64 {
    1 << 20
}

pub const BODY_MAX_BYTES: Range = Range::new("health.body_max_bytes", 1024.0, 67108864.0, "bytes");

pub const PAGE_MAX_BYTES: Range = Range::new("health.page_max_bytes", 4096.0, 4294967296.0, "bytes");

pub const PROXY_MAX_BYTES: Range = Range::new("health.proxy_max_bytes", 4096.0, 4294967296.0, "bytes");

impl HealthConfig {
    /// What still works but will not forever, one sentence each.
    pub fn deprecations(&self) -> Vec<String> {
        self.services
            .iter()
            .enumerate()
            .filter(|(_, s)| s.progress.as_ref().is_some_and(|p| p.metrics_url.is_some()))
            .map(|(i, s)| {
                format!(
                    "health.services[{i}].progress.metrics_url ({}) is deprecated: move it to health.services[{i}].metrics_url",
                    s.name
                )
            })
            .collect()
    }
}

/// Where a service's own Prometheus metrics say whether it makes progress.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProgressConfig {
    /// Deprecated: the service's `metrics_url`, which this is read as
    /// (with a warning) when that is not set.
    pub metrics_url: Option<String>,
    /// Metric names of a known server: `vllm`, `tgi`, `triton`, `llamacpp`
    /// or `mlserver` (docs/health-monitor.md). Or give `pending` and `done`.
    pub preset: Option<String>,
    /// Gauges whose sum is the work waiting or running.
    #[serde(default)]
    pub pending: Vec<String>,
    /// Counters whose sum grows while work gets done.
    #[serde(default)]
    pub done: Vec<String>,
    /// Work pending and no growth this long is a stall, 1 s–24 h.
    #[serde(default = "default_stall_after", deserialize_with = "de_seconds")]
    pub stall_after: Duration,
}

fn default_stall_after() -> Duration {
    Duration::from_secs(120)
}

/// The metric names of each progress preset, from each server's own source
/// (docs/health-monitor.md cites the files): `(pending gauges, done counters)`.
pub const PRESETS: &[(&str, &[&str], &[&str])] = &[
    (
        "vllm",
        &["vllm:num_requests_running", "vllm:num_requests_waiting"],
        &["vllm:generation_tokens_total"],
    ),
    (
        "tgi",
        &["tgi_queue_size", "tgi_batch_current_size"],
        &["tgi_batch_inference_success"],
    ),
    (
        "triton",
        &["nv_inference_pending_request_count"],
        &["nv_inference_exec_count"],
    ),
    (
        "llamacpp",
        &["llamacpp:requests_processing", "llamacpp:requests_deferred"],
        &["llamacpp:n_decode_total"],
    ),
    (
        "mlserver",
        &["rest_server_requests_in_progress"],
        &["model_infer_request_success_total"],
    ),
];

impl ProgressConfig {
    /// The pending gauges and done counters: the preset's, or the lists.
    pub fn names(&self) -> (Vec<String>, Vec<String>) {
        let own = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        match self
            .preset
            .as_deref()
            .and_then(|p| PRESETS.iter().find(|(n, _, _)| *n == p))
        {
            Some((_, pending, done)) => (own(pending), own(done)),
            None => (self.pending.clone(), self.done.clone()),
        }
    }
}

/// One monitored service. Read from the file by its `kind` (see
/// [`super::check`]): each kind takes its own keys.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceConfig {
    /// The `service` label and the key in `/api/system/health`: 1–64 of `A-Za-z0-9_.-`.
    pub name: String,
    /// `kind` and its keys: `http`, `redis`, `postgres` or `open_inference`.
    pub check: Check,
    /// Time between checks, 0.05–3600 s.
    pub interval: Duration,
    /// Longest one check may take before it counts as failed, 0.01–300 s.
    pub timeout: Duration,
    /// Restart attempts before the service is `failed`, 1–100.
    pub max_retries: u32,
    /// Attempt n waits `backoff_base * 2^(n-1)`, 0.01–3600 s.
    pub backoff_base: Duration,
    /// The attempt count returns to 0 after this long healthy, 0.01 s–7 days.
    pub reset_after: Duration,
    /// Without it the service is alert-only: it stays `unhealthy` when down.
    pub restart: Option<RestartConfig>,
    /// A critical service that is not healthy makes `/api/system/health`
    /// `unhealthy` (HTTP 503); any other makes it `degraded`.
    pub critical: bool,
    /// Failed checks in a row before the service is `unhealthy` and a
    /// restart is scheduled, 1–100.
    pub failure_threshold: u32,
    /// Passed checks in a row before it is `healthy` again, 1–100.
    pub success_threshold: u32,
    /// After the daemon starts and after each restart, failures do not
    /// count for this long, 0–24 h; the first pass ends it.
    pub start_period: Duration,
    /// Time between checks during the start period (default: `interval`).
    pub start_interval: Option<Duration>,
    /// A passing check slower than this is counted in
    /// `service_check_slow_total`, 0.001–300 s.
    pub slow_after: Option<Duration>,
    /// Stall detection from the service's own metrics (`metrics_url`).
    pub progress: Option<ProgressConfig>,
    /// The server's own Prometheus endpoint, `http://…/metrics`: stall
    /// detection reads it, `/api/sd/inference` lists it and
    /// `/proxy/{service}/metrics` fetches it.
    pub metrics_url: Option<String>,
    /// What serves it: `vllm`, `sglang`, `tgi`, `triton`, `llamacpp`,
    /// `mlserver` or `other` (default: `progress.preset`, else `other`).
    pub server: Option<ServerKind>,
    /// Services that must be healthy for this one to be restarted.
    pub depends_on: Vec<String>,
    /// How to recognise this service's GPU processes (docs/attribution.md).
    pub matcher: Option<ServiceMatch>,
}

/// How a GPU process is recognised as a service's: every key given must
/// match (at least one is given).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceMatch {
    /// The systemd unit, e.g. `vllm.service`.
    pub unit: Option<String>,
    /// The container's name (as `docker ps` shows it) or its id, full or a
    /// prefix of at least 12 hex digits.
    pub container: Option<String>,
    /// The compose service (`com.docker.compose.service`).
    pub compose_service: Option<String>,
    /// A file holding the pid of the service's main process; that process
    /// and its descendants match.
    pub pid_file: Option<std::path::PathBuf>,
    /// A regular expression searched in the process's command line (its
    /// arguments joined by spaces).
    pub cmdline: Option<String>,
}

impl ServiceMatch {
    /// At least one key; the `cmdline` regex compiles.
    fn validate(&self, key: &str) -> Result<(), ConfigError> {
        let given = [
            self.unit.is_some(),
            self.container.is_some(),
            self.compose_service.is_some(),
            self.pid_file.is_some(),
            self.cmdline.is_some(),
        ];
        if !given.contains(&true) {
            return Err(invalid(
                key,
                "{}",
                "names nothing to match",
                "one or more of unit, container, compose_service, pid_file, cmdline",
            ));
        }
        if let Some(re) = &self.cmdline {
            if let Err(e) = regex_lite::Regex::new(re) {
                return Err(invalid(
                    &format!("{key}.cmdline"),
                    re,
                    "not a regular expression",
                    &format!("a regular expression ({e})"),
                ));
            }
        }
        Ok(())
    }
}

impl ServiceConfig {
    /// The server's own metrics endpoint: `metrics_url`, else the
    /// deprecated `progress.metrics_url`.
    pub fn metrics_url(&self) -> Option<&str> {
        self.metrics_url
            .as_deref()
            .or_else(|| self.progress.as_ref().and_then(|p| p.metrics_url.as_deref()))
    }

    /// What serves it: `server`, else the progress preset's, else `other`.
    pub fn server(&self) -> ServerKind {
        self.server
            .or_else(|| {
                self.progress
                    .as_ref()?
                    .preset
                    .as_deref()
                    .and_then(ServerKind::from_preset)
            })
            .unwrap_or(ServerKind::Other)
    }

    /// How often checks run now: `start_interval` while starting.
    pub fn interval_while(&self, starting: bool) -> Duration {
        match self.start_interval {
            Some(i) if starting => i,
            _ => self.interval,
        }
    }
}

/// How a service is restarted.
#[derive(Debug, Clone, PartialEq, Deserialize)]
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
pub const FAILURE_THRESHOLD: Range = Range::new("health.services[].failure_threshold", 1.0, 100.0, "checks");
pub const SUCCESS_THRESHOLD: Range = Range::new("health.services[].success_threshold", 1.0, 100.0, "checks");
pub const START_PERIOD: Range = Range::new("health.services[].start_period", 0.0, 86_400.0, "seconds");
pub const START_INTERVAL: Range = Range::new("health.services[].start_interval", 0.05, 3600.0, "seconds");
pub const SLOW_AFTER: Range = Range::new("health.services[].slow_after", 0.001, 300.0, "seconds");
pub const STALL_AFTER: Range = Range::new("health.services[].progress.stall_after", 1.0, 86_400.0, "seconds");
pub const MAX_CONCURRENT_RESTARTS: Range = Range::new("health.max_concurrent_restarts", 1.0, 100.0, "restarts");

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
        MAX_CONCURRENT_RESTARTS.check(self.max_concurrent_restarts as f64)?;
        PROXY_MAX_BYTES.check(self.proxy_max_bytes as f64)?;
        BODY_MAX_BYTES.check(self.body_max_bytes as f64)?;
        PAGE_MAX_BYTES.check(self.page_max_bytes as f64)?;
        self.validate_dependencies()
    }

    /// `depends_on` names other configured services, and never in a cycle.
    fn validate_dependencies(&self) -> Result<(), ConfigError> {
        let index = |name: &str| self.services.iter().position(|s| s.name == name);
        for (i, svc) in self.services.iter().enumerate() {
            for (j, dep) in svc.depends_on.iter().enumerate() {
                let key = format!("health.services[{i}].depends_on[{j}]");
                if *dep == svc.name {
                    return Err(invalid(&key, dep, "the service itself", "names of other services"));
                }
                if index(dep).is_none() {
                    let names: Vec<&str> = self.services.iter().map(|s| s.name.as_str()).collect();
                    return Err(invalid(
                        &key,
                        dep,
                        "not a configured service",
                        &format!("one of {}", names.join(", ")),
                    ));
                }
            }
        }
        let mut done = vec![false; self.services.len()];
        for i in 0..self.services.len() {
            visit_dependencies(self, i, &mut Vec::new(), &mut done)?;
        }
        Ok(())
    }
}

impl ServiceConfig {
    /// Checks service `i` (`health.services[i]`).
    fn validate(&self, i: usize) -> Result<(), ConfigError> {
        let key = |field: &str| format!("health.services[{i}].{field}");
        if !valid_name(&self.name) {
            return Err(invalid(&key("name"), &self.name, "not a valid name", NAME_RULE));
        }
        self.check.validate(i)?;
        INTERVAL.check_at(&key("interval"), self.interval.as_secs_f64())?;
        TIMEOUT.check_at(&key("timeout"), self.timeout.as_secs_f64())?;
        MAX_RETRIES.check_at(&key("max_retries"), self.max_retries as f64)?;
        BACKOFF_BASE.check_at(&key("backoff_base"), self.backoff_base.as_secs_f64())?;
        RESET_AFTER.check_at(&key("reset_after"), self.reset_after.as_secs_f64())?;
        FAILURE_THRESHOLD.check_at(&key("failure_threshold"), self.failure_threshold as f64)?;
        SUCCESS_THRESHOLD.check_at(&key("success_threshold"), self.success_threshold as f64)?;
        START_PERIOD.check_at(&key("start_period"), self.start_period.as_secs_f64())?;
        if let Some(i) = self.start_interval {
            START_INTERVAL.check_at(&key("start_interval"), i.as_secs_f64())?;
        }
        if let Some(s) = self.slow_after {
            SLOW_AFTER.check_at(&key("slow_after"), s.as_secs_f64())?;
        }
        self.validate_progress(i)?;
        if let Some(m) = &self.matcher {
            m.validate(&key("match"))?;
        }
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

impl ServiceConfig {
    /// `metrics_url` (or the deprecated `progress.metrics_url`, not both
    /// with different values): an HTTP URL.
    fn validate_metrics_url(&self, i: usize) -> Result<(), ConfigError> {
        let key = |field: &str| format!("health.services[{i}].{field}");
        let old = self.progress.as_ref().and_then(|p| p.metrics_url.as_deref());
        if let (Some(new), Some(old)) = (self.metrics_url.as_deref(), old) {
            if new != old {
                return Err(invalid(
                    &key("progress.metrics_url"),
                    old,
                    "a second, different metrics URL",
                    "metrics_url alone (progress.metrics_url is deprecated)",
                ));
            }
        }
        let field = if self.metrics_url.is_some() {
            "metrics_url"
        } else {
            "progress.metrics_url"
        };
        match self.metrics_url() {
            Some(url)
                if !(url.starts_with("http://") || url.starts_with("https://"))
                    || reqwest::Url::parse(url).is_err() =>
            {
                Err(invalid(
                    &key(field),
                    url,
                    "not an HTTP URL",
                    "http://HOST:PORT/metrics or https://…",
                ))
            }
            _ => Ok(()),
        }
    }

    /// `progress`: a metrics URL, and a known preset or both name lists.
    fn validate_progress(&self, i: usize) -> Result<(), ConfigError> {
        let key = |field: &str| format!("health.services[{i}].{field}");
        self.validate_metrics_url(i)?;
        let Some(p) = &self.progress else { return Ok(()) };
        if self.metrics_url().is_none() {
            return Err(invalid(
                &key("metrics_url"),
                "missing",
                "required by progress",
                "the service's own metrics URL, e.g. http://127.0.0.1:8000/metrics",
            ));
        }
        let presets: Vec<&str> = PRESETS.iter().map(|(n, _, _)| *n).collect();
        match &p.preset {
            Some(name) if !presets.contains(&name.as_str()) => {
                return Err(invalid(
                    &key("progress.preset"),
                    name,
                    "not a known preset",
                    &format!("one of {}, or pending and done", presets.join(", ")),
                ));
            }
            Some(_) if !p.pending.is_empty() || !p.done.is_empty() => {
                return Err(invalid(
                    &key("progress.preset"),
                    "set with pending/done",
                    "ambiguous",
                    "either a preset or pending and done",
                ));
            }
            None if p.pending.is_empty() || p.done.is_empty() => {
                return Err(invalid(
                    &key("progress"),
                    "no preset",
                    "incomplete",
                    &format!("a preset ({}) or both pending and done", presets.join(", ")),
                ));
            }
            _ => {}
        }
        STALL_AFTER.check_at(&key("progress.stall_after"), p.stall_after.as_secs_f64())
    }
}

/// Depth-first search from service `at`: a service met again on the
/// current path closes a cycle, an error naming it.
fn visit_dependencies(
    health: &HealthConfig,
    at: usize,
    path: &mut Vec<usize>,
    done: &mut [bool],
) -> Result<(), ConfigError> {
    if done[at] {
        return Ok(());
    }
    if let Some(p) = path.iter().position(|&s| s == at) {
        let cycle: Vec<&str> = path[p..]
            .iter()
            .chain(std::iter::once(&at))
            .map(|&s| health.services[s].name.as_str())
            .collect();
        return Err(invalid(
            &format!("health.services[{}].depends_on", path[path.len() - 1]),
            &cycle.join(" -> "),
            "a cycle",
            "dependencies that never lead back to the service",
        ));
    }
    path.push(at);
    for dep in &health.services[at].depends_on {
        if let Some(d) = health.services.iter().position(|s| s.name == *dep) {
            visit_dependencies(health, d, path, done)?;
        }
    }
    path.pop();
    done[at] = true;
    Ok(())
}
