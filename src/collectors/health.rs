//! The service health monitor: checks each configured service (HTTP
//! `/health`, Redis `PING`, PostgreSQL `SELECT 1`) on its own schedule,
//! feeds the result to the pure restart policy in [`crate::restart`], runs
//! the restart command when the policy says so, and publishes what happened
//! as `service_*` metrics, `service_status` and `alert` events, and the view
//! that `/api/system/health` reads.
//!
//! Each service runs in its own task, so a hanging target delays nobody
//! else. A check that says "down" is a successful reading, so these tasks do
//! not feed `inferwatch_collector_success`; the `service_*` families carry
//! everything, including `service_last_check_timestamp_seconds` for
//! staleness.

use chrono::{DateTime, Utc};
use prometheus::{GaugeVec, HistogramVec, IntCounterVec};
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::unix_now;
use crate::config::{CheckKind, RestartConfig, ServiceConfig};
use crate::events::{Event, EventBus};
use crate::metrics::{family, histogram, Metrics};
use crate::restart::{AlertKind, Machine, Policy, Status, Step};
use crate::state::{HealthState, Readiness};

/// Why a health monitor could not be built.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("invalid URL for service {service} ({url}): {reason}")]
    Url {
        service: String,
        url: String,
        reason: String,
    },
}

/// The `service_*` families.
pub struct HealthMetrics {
    up: GaugeVec,
    status: GaugeVec,
    check_duration: HistogramVec,
    restarts: IntCounterVec,
    restart_attempt: GaugeVec,
    consecutive_failures: GaugeVec,
    last_check: GaugeVec,
}

impl HealthMetrics {
    /// Registers the families and creates every series of every configured
    /// service, so each status and restart result exists from the start.
    pub fn register(metrics: &Metrics, services: &[ServiceConfig]) -> HealthMetrics {
        let svc = &["service"];
        let gauge = |name: &str, help: &str, labels: &[&str]| family::<GaugeVec>(name, help, labels);
        let m = HealthMetrics {
            up: gauge("service_up", "1 if the service's last check passed, else 0.", svc),
            status: gauge(
                "service_status",
                "1 for the service's current status, 0 for the other four (healthy, unhealthy, restarting, restart_failed, failed).",
                &["service", "status"],
            ),
            check_duration: histogram("service_health_check_duration_seconds", "How long each health check took.", svc, prometheus::DEFAULT_BUCKETS.to_vec()),
            restarts: family::<IntCounterVec>("service_restarts_total", "Restart attempts, by whether the check after them passed.", &["service", "result"]),
            restart_attempt: gauge(
                "service_restart_attempt",
                "Restart attempts used since the service was last healthy for reset_after.",
                svc,
            ),
            consecutive_failures: gauge(
                "service_consecutive_failures",
                "Health checks failed in a row.",
                svc,
            ),
            last_check: gauge(
                "service_last_check_timestamp_seconds",
                "Unix time of the service's last health check.",
                svc,
            ),
        };
        metrics.add(&m.up);
        metrics.add(&m.status);
        metrics.add(&m.check_duration);
        metrics.add(&m.restarts);
        metrics.add(&m.restart_attempt);
        metrics.add(&m.consecutive_failures);
        metrics.add(&m.last_check);
        for s in services {
            let name = s.name.as_str();
            m.up.with_label_values(&[name]).set(0.0);
            for st in Status::ALL {
                m.status
                    .with_label_values(&[name, st.as_str()])
                    .set(if st == Status::Unhealthy { 1.0 } else { 0.0 });
            }
            m.check_duration.with_label_values(&[name]);
            for r in ["success", "failure"] {
                m.restarts.with_label_values(&[name, r]);
            }
            m.restart_attempt.with_label_values(&[name]).set(0.0);
            m.consecutive_failures.with_label_values(&[name]).set(0.0);
        }
        m
    }

    fn set_status(&self, service: &str, status: Status) {
        self.up
            .with_label_values(&[service])
            .set(if status == Status::Healthy { 1.0 } else { 0.0 });
        for st in Status::ALL {
            self.status
                .with_label_values(&[service, st.as_str()])
                .set(if st == status { 1.0 } else { 0.0 });
        }
    }
}

/// How one service is checked.
enum Checker {
    Http { client: reqwest::Client, url: reqwest::Url },
    Redis(redis::Client),
    Postgres(Box<sqlx::postgres::PgConnectOptions>),
}

impl Checker {
    fn new(svc: &ServiceConfig) -> Result<Checker, HealthError> {
        let bad = |reason: String| HealthError::Url {
            service: svc.name.clone(),
            url: svc.url.clone(),
            reason,
        };
        Ok(match svc.kind {
            CheckKind::Http => Checker::Http {
                url: check_url(svc).map_err(bad)?,
                // A fresh connection per check: a pooled socket could hide a
                // server that has just been restarted or died. The task's own
                // timeout bounds the check, with one message for every kind.
                client: http_client(svc).map_err(bad)?,
            },
            CheckKind::Redis => Checker::Redis(redis::Client::open(svc.url.as_str()).map_err(|e| bad(e.to_string()))?),
            CheckKind::Postgres => Checker::Postgres(Box::new(
                sqlx::postgres::PgConnectOptions::from_str(&svc.url).map_err(|e| bad(e.to_string()))?,
            )),
        })
    }

    /// One check; `Err` says what failed, in one line.
    async fn check(&self) -> Result<(), CheckError> {
        match self {
            Checker::Http { client, url } => {
                let resp = client
                    .get(url.clone())
                    .send()
                    .await
                    .map_err(|e| CheckError::connect(&e))?;
                let status = resp.status();
                if status.is_success() {
                    Ok(())
                } else {
                    Err(CheckError::Status(status))
                }
            }
            Checker::Redis(client) => {
                let mut con = client
                    .get_multiplexed_async_connection()
                    .await
                    .map_err(|e| CheckError::connect(&e))?;
                let pong: String = redis::cmd("PING")
                    .query_async(&mut con)
                    .await
                    .map_err(|e| CheckError::connect(&e))?;
                if pong == "PONG" {
                    Ok(())
                } else {
                    Err(CheckError::Pong(pong))
                }
            }
            Checker::Postgres(opts) => {
                use sqlx::Connection;
                let mut con = sqlx::PgConnection::connect_with(opts)
                    .await
                    .map_err(|e| CheckError::connect(&e))?;
                sqlx::query("SELECT 1")
                    .execute(&mut con)
                    .await
                    .map_err(|e| CheckError::connect(&e))?;
                let _ = con.close().await;
                Ok(())
            }
        }
    }
}

/// The HTTP(S) client of one service: the system and webpki roots, or
/// only `tls.ca_file`; a client certificate for mutual TLS; a different
/// name to verify (the URL's address is still where it connects).
fn http_client(svc: &ServiceConfig) -> Result<reqwest::Client, String> {
    let mut b = reqwest::Client::builder().pool_max_idle_per_host(0).use_rustls_tls();
    let Some(tls) = &svc.tls else {
        return b.build().map_err(|e| e.to_string());
    };
    let read = |p: &std::path::Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    if let Some(ca) = &tls.ca_file {
        b = b.tls_built_in_root_certs(false);
        for cert in reqwest::Certificate::from_pem_bundle(&read(ca)?).map_err(|e| format!("tls.ca_file: {e}"))? {
            b = b.add_root_certificate(cert);
        }
    }
    if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
        let mut pem = read(cert)?;
        pem.push(b'\n');
        pem.extend(read(key)?);
        b = b.identity(reqwest::Identity::from_pem(&pem).map_err(|e| format!("tls.cert_file/key_file: {e}"))?);
    }
    if tls.insecure_skip_verify {
        tracing::warn!(service = %svc.name, "health.services[].tls.insecure_skip_verify is on: any certificate is accepted for this check.");
        b = b.danger_accept_invalid_certs(true);
    }
    if let Some(name) = &tls.server_name {
        // Verify `name`, connect where the URL points.
        let url = reqwest::Url::parse(&svc.url).map_err(|e| e.to_string())?;
        let port = url.port_or_known_default().unwrap_or(443);
        let host = url
            .host_str()
            .unwrap_or_default()
            .trim_matches(|c| c == '[' || c == ']')
            .to_string();
        let addrs: Vec<std::net::SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port))
            .map_err(|e| format!("{host}: {e}"))?
            .collect();
        b = b.resolve_to_addrs(name, &addrs);
    }
    b.build().map_err(|e| e.to_string())
}

/// The URL a check requests: the URL's host replaced by `tls.server_name`
/// (resolved to the URL's address by the client).
fn check_url(svc: &ServiceConfig) -> Result<reqwest::Url, String> {
    let mut url = reqwest::Url::parse(&svc.url).map_err(|e| e.to_string())?;
    if let Some(name) = svc.tls.as_ref().and_then(|t| t.server_name.as_ref()) {
        url.set_host(Some(name)).map_err(|e| format!("tls.server_name: {e}"))?;
    }
    Ok(url)
}

/// Why one health check failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The request or connection failed: the error and its causes.
    #[error("{0}")]
    Connect(String),
    #[error("HTTP {0}")]
    Status(reqwest::StatusCode),
    #[error("PING answered {0:?}")]
    Pong(String),
    #[error("no answer within {0:?}")]
    Timeout(std::time::Duration),
}

impl CheckError {
    fn connect(e: &dyn std::error::Error) -> CheckError {
        CheckError::Connect(error_chain(e))
    }
}

/// `error: cause: cause`, as one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        source = cause.source();
    }
    s
}

/// Why a restart command failed: `summary` is safe to show anywhere (it
/// never holds the argv, which can carry secrets); `stderr` is the tail of
/// the command's standard error, for the log only.
#[derive(Debug)]
struct RestartFailure {
    summary: String,
    stderr: String,
}

/// Lines of a failed command's stderr kept for the log.
const STDERR_LINES: usize = 20;

/// How loud each service alert is: the mapping lives with the monitor that
/// raises the alerts, so the pure policy in `restart` needs no event types.
fn severity(kind: AlertKind) -> crate::events::Severity {
    use crate::events::Severity;
    match kind {
        AlertKind::Unhealthy => Severity::Warning,
        AlertKind::RestartFailed => Severity::Error,
        AlertKind::MaxRetriesExceeded => Severity::Critical,
    }
}

/// Runs a restart command directly (no shell) in its own process group, so
/// that its children die with it when it is killed at `restart.timeout` or
/// when the daemon stops mid-restart. Its stderr is read into a bounded
/// tail for the log; stdout goes to the daemon's own.
async fn run_restart(r: &RestartConfig) -> Result<(), RestartFailure> {
    let fail = |summary: String| RestartFailure {
        summary,
        stderr: String::new(),
    };
    let mut child = tokio::process::Command::new(&r.command[0])
        .args(&r.command[1..])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| fail(format!("the restart command could not be started ({})", e.kind())))?;
    let group = child.id().map(|id| GroupKiller(id as i32));
    // The tail is read until EOF by its own task: a server the command
    // starts may keep the pipe open, and must never block on it.
    let tail = Arc::new(std::sync::Mutex::new(std::collections::VecDeque::new()));
    let reader = child.stderr.take().map(|err| {
        let tail = tail.clone();
        tokio::spawn(async move {
            use tokio::io::AsyncBufReadExt;
            let mut lines = tokio::io::BufReader::new(err).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let mut t = tail.lock().unwrap_or_else(|e| e.into_inner());
                if t.len() == STDERR_LINES {
                    t.pop_front();
                }
                t.push_back(line);
            }
        })
    });
    let waited = tokio::time::timeout(r.timeout, child.wait()).await;
    let summary = match waited {
        Ok(Ok(status)) if status.success() => {
            if let Some(g) = group {
                g.disarm();
            }
            return Ok(());
        }
        Ok(Ok(status)) => format!("the restart command failed ({status})"),
        Ok(Err(e)) => format!("waiting for the restart command failed ({})", e.kind()),
        Err(_) => format!("the restart command was killed after {:?}", r.timeout),
    };
    // The group dies here (the command and every child it left).
    drop(group);
    let _ = child.wait().await;
    if let Some(reader) = reader {
        // With the whole group dead, the pipe reaches EOF at once.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), reader).await;
    }
    let stderr = tail
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .cloned()
        .collect::<Vec<_>>()
        .join("\n");
    Err(RestartFailure { summary, stderr })
}

/// Kills a restart command's whole process group when dropped, unless the
/// command succeeded (a server it started must live on).
struct GroupKiller(i32);

impl GroupKiller {
    fn disarm(self) {
        std::mem::forget(self);
    }
}

impl Drop for GroupKiller {
    fn drop(&mut self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.0) {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
    }
}

/// The registry entry: one task per configured service.
pub const ENTRY: super::Entry = super::Entry {
    name: "health",
    about: "service health checks and restarts (health.services)",
    enabled,
    build,
};

fn enabled(_: &crate::config::Config) -> bool {
    true
}

fn build(sh: &super::Shared) -> Result<super::Built, super::StartError> {
    let sinks = Sinks {
        state: sh.health.clone(),
        metrics: Arc::new(HealthMetrics::register(&sh.metrics, &sh.config.health.services)),
        registry: sh.metrics.clone(),
        events: sh.events.clone(),
    };
    let monitor = HealthMonitor::new(&sh.config.health.services, sinks).map_err(|e| super::StartError {
        collector: "health",
        reason: e.to_string(),
    })?;
    Ok(super::Built::Own(Box::new(move |readiness, stop| {
        monitor.spawn(readiness, stop)
    })))
}

/// Everything one service task writes to.
#[derive(Clone)]
pub struct Sinks {
    pub state: Arc<HealthState>,
    pub metrics: Arc<HealthMetrics>,
    pub registry: Arc<Metrics>,
    pub events: EventBus,
}

/// The health monitor: one task per configured service.
pub struct HealthMonitor {
    services: Vec<(ServiceConfig, Checker)>,
    sinks: Sinks,
}

impl HealthMonitor {
    pub fn new(services: &[ServiceConfig], sinks: Sinks) -> Result<HealthMonitor, HealthError> {
        let services = services
            .iter()
            .map(|s| Ok((s.clone(), Checker::new(s)?)))
            .collect::<Result<_, HealthError>>()?;
        Ok(HealthMonitor { services, sinks })
    }

    /// Spawns the per-service tasks. Readiness (`health`) is reached once
    /// every service has had its first check.
    pub fn spawn(self, readiness: Arc<Readiness>, shutdown: CancellationToken) -> Vec<tokio::task::JoinHandle<()>> {
        if self.services.is_empty() {
            return Vec::new();
        }
        readiness.expect("health");
        let pending = Arc::new(AtomicUsize::new(self.services.len()));
        self.services
            .into_iter()
            .enumerate()
            .map(|(index, (config, checker))| {
                let policy = Policy {
                    restartable: config.restart.is_some(),
                    max_retries: config.max_retries,
                    backoff_base: config.backoff_base,
                    reset_after: config.reset_after,
                };
                let task = ServiceTask {
                    index,
                    machine: Machine::new(policy),
                    policy,
                    config,
                    checker,
                    sinks: self.sinks.clone(),
                    last_error: String::new(),
                };
                let (readiness, pending, shutdown) = (readiness.clone(), pending.clone(), shutdown.clone());
                tokio::spawn(task.run(readiness, pending, shutdown))
            })
            .collect()
    }
}

struct ServiceTask {
    index: usize,
    config: ServiceConfig,
    checker: Checker,
    machine: Machine,
    policy: Policy,
    sinks: Sinks,
    last_error: String,
}

impl ServiceTask {
    async fn run(mut self, readiness: Arc<Readiness>, pending: Arc<AtomicUsize>, shutdown: CancellationToken) {
        let mut next_check = Instant::now();
        let mut first = true;
        loop {
            let wake = self.machine.restart_due().map_or(next_check, |due| due.min(next_check));
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep_until(wake) => {}
            }
            if let Some(step) = self.machine.start_restart(Instant::now()) {
                match self.restart(step, &shutdown).await {
                    Some(next) => next_check = next.unwrap_or(next_check),
                    None => break,
                }
                continue;
            }
            if Instant::now() < next_check {
                continue;
            }
            let started = Instant::now();
            let result = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = tokio::time::timeout(self.config.timeout, self.checker.check()) => {
                    r.unwrap_or(Err(CheckError::Timeout(self.config.timeout)))
                }
            };
            self.record_check(started, result);
            next_check = started + self.config.interval;
            if std::mem::take(&mut first) && pending.fetch_sub(1, Ordering::AcqRel) == 1 {
                readiness.done("health");
            }
        }
        tracing::debug!(service = %self.config.name, "Health checks stopped.");
    }

    /// Runs the restart command the policy asked for. Returns `None` on
    /// shutdown, else when the next check is due (`None` inside: unchanged).
    async fn restart(&mut self, step: Step, shutdown: &CancellationToken) -> Option<Option<Instant>> {
        let Some(restart) = self.config.restart.clone() else {
            return Some(None);
        };
        let attempt = self.machine.attempts();
        // The argv can carry secrets: name the service, never the command.
        let message = format!(
            "restart attempt {attempt} of {} after {:?} backoff: running the restart command of {}",
            self.config.max_retries,
            self.policy.backoff(attempt),
            self.config.name
        );
        self.apply(step, message, None);
        let outcome = tokio::select! {
            _ = shutdown.cancelled() => return None,
            r = run_restart(&restart) => r,
        };
        Some(Some(match outcome {
            Ok(()) => {
                tracing::info!(service = %self.config.name, attempt, "Restart command finished.");
                Instant::now() + restart.grace_period
            }
            Err(e) => {
                tracing::warn!(service = %self.config.name, attempt, error = %e.summary, stderr = %e.stderr, "Restart command failed.");
                // Decided now: no grace period for a command that failed.
                let step = self.machine.on_restart_failed(Instant::now());
                let message = format!(
                    "restart attempt {attempt} of {} failed: {}",
                    self.config.max_retries, e.summary
                );
                self.last_error = e.summary;
                self.apply(step, message, Some(Utc::now()));
                Instant::now() + self.config.interval
            }
        }))
    }

    /// Feeds one check's result to the policy and publishes the step.
    fn record_check(&mut self, started: Instant, result: Result<(), CheckError>) {
        self.sinks
            .metrics
            .check_duration
            .with_label_values(&[&self.config.name])
            .observe(started.elapsed().as_secs_f64());
        let step = self.machine.on_check(result.is_ok(), Instant::now());
        let error = result.as_ref().err().map(|e| e.to_string());
        let message = self.describe(&step, error.as_ref());
        self.apply(step, message, Some(Utc::now()));
        if result.is_ok() {
            self.last_error.clear();
        }
    }

    /// The human message for a check's outcome.
    fn describe(&self, step: &Step, error: Option<&String>) -> String {
        let error = error.map(String::as_str).unwrap_or("");
        let restart_note = if self.last_error.is_empty() {
            String::new()
        } else {
            format!(" ({})", self.last_error)
        };
        match (step.to, step.restart_result) {
            (Status::Healthy, Some(true)) => {
                format!("restart attempt {} brought the service back", self.machine.attempts())
            }
            (Status::Healthy, _) => "check passed".into(),
            (Status::RestartFailed, _) => format!(
                "restart attempt {} of {} did not bring the service back: {error}{restart_note}",
                self.machine.attempts(),
                self.config.max_retries
            ),
            (Status::Failed, _) => format!(
                "gave up after {} restart attempts; manual intervention needed: {error}{restart_note}",
                self.machine.attempts()
            ),
            (Status::Unhealthy | Status::Restarting, _) => error.to_string(),
        }
    }

    /// Publishes a step: metrics, the API view, events and alerts.
    fn apply(&mut self, step: Step, message: String, checked_at: Option<DateTime<Utc>>) {
        let name = self.config.name.as_str();
        let m = &self.sinks.metrics;
        m.set_status(name, step.to);
        m.restart_attempt
            .with_label_values(&[name])
            .set(self.machine.attempts() as f64);
        m.consecutive_failures
            .with_label_values(&[name])
            .set(self.machine.consecutive_failures() as f64);
        if checked_at.is_some() {
            m.last_check.with_label_values(&[name]).set(unix_now());
        }
        if let Some(worked) = step.restart_result {
            let result = if worked { "success" } else { "failure" };
            m.restarts.with_label_values(&[name, result]).inc();
        }
        let (attempts, failures) = (self.machine.attempts(), self.machine.consecutive_failures());
        // A view's message only changes with the status, so a steady failure
        // keeps the text that explained the transition.
        self.sinks.state.update(self.index, |v| {
            if step.changed {
                v.message = message.clone();
            }
            v.status = step.to;
            v.restart_attempts = attempts;
            v.consecutive_failures = failures;
            if checked_at.is_some() {
                v.last_check = checked_at;
            }
        });
        if step.changed {
            tracing::info!(service = name, from = step.from.as_str(), to = step.to.as_str(), reason = %message, "Service status changed.");
            self.sinks.events.publish(Event::ServiceStatus {
                service: name.to_string(),
                status: step.to,
                message: message.clone(),
            });
        }
        if let Some(alert) = step.alert {
            let text = match alert {
                AlertKind::Unhealthy => format!("Service {name} is unhealthy: {message}"),
                AlertKind::RestartFailed => format!("Service {name}: {message}"),
                AlertKind::MaxRetriesExceeded => format!("Service {name} exceeded its restart attempts: {message}"),
            };
            self.sinks.events.alert(severity(alert), alert.condition(), text);
        }
        self.sinks.registry.invalidate();
    }
}
