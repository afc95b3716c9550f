//! The service health monitor: checks each configured service (HTTP,
//! Open Inference liveness and readiness, Redis `PING`, PostgreSQL
//! `SELECT 1`, and stall detection from the service's own metrics) on its
//! own schedule, feeds the result to the pure restart policy in
//! [`crate::restart`] (thresholds, start period, backoff, dependency hold),
//! runs the restart command when the policy says so and the restart gate
//! gives it a turn, and publishes what happened as `service_*` metrics,
//! `service_status` and `alert` events, and the view that
//! `/api/system/health` reads.
//!
//! Each service runs in its own task, so a hanging target delays nobody
//! else. A check that says "down" is a successful reading, so these tasks do
//! not feed `inferwatch_collector_success`; the `service_*` families carry
//! everything, including `service_last_check_timestamp_seconds` for
//! staleness.
//!
//! A supervisor task follows the live config: a reload that adds a service
//! starts its task (with its start period), one that removes a service
//! stops its task and drops its series, and one that changes a service
//! passes the new settings to the running task, which keeps its counts,
//! status and backoff ([`crate::restart::Machine::set_policy`]).

mod check;
mod command;
mod gpu_memory;

use chrono::{DateTime, Utc};
use prometheus::{GaugeVec, HistogramVec, IntCounterVec};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::unix_now;
use crate::config::{LiveConfig, ServiceConfig};
use crate::events::{Event, EventBus};
use crate::metrics::{family, histogram, Metrics};
use crate::restart::{AlertKind, Check, Machine, Policy, RestartGate, Status, Step};
use crate::state::{HealthState, Readiness};
use check::{CheckError, Checker, Outcome, Progress, ProgressError, Reason};
use command::run_restart;
use gpu_memory::Held;

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

/// The `service_*` and `inference_model_ready` families.
pub struct HealthMetrics {
    up: GaugeVec,
    status: GaugeVec,
    check_duration: HistogramVec,
    restarts: IntCounterVec,
    restart_attempt: GaugeVec,
    consecutive_failures: GaugeVec,
    last_check: GaugeVec,
    check_failures: IntCounterVec,
    check_slow: IntCounterVec,
    starting: GaugeVec,
    ready: GaugeVec,
    model_ready: GaugeVec,
    stalled: GaugeVec,
}

impl HealthMetrics {
    /// Registers the families and creates every series of every configured
    /// service, so each status, reason and restart result exists from the
    /// start.
    pub fn register(metrics: &Metrics, services: &[ServiceConfig]) -> HealthMetrics {
        let m = HealthMetrics::families();
        metrics.add(&m.up);
        metrics.add(&m.status);
        metrics.add(&m.check_duration);
        metrics.add(&m.restarts);
        metrics.add(&m.restart_attempt);
        metrics.add(&m.consecutive_failures);
        metrics.add(&m.last_check);
        metrics.add(&m.check_failures);
        metrics.add(&m.check_slow);
        metrics.add(&m.starting);
        metrics.add(&m.ready);
        metrics.add(&m.model_ready);
        metrics.add(&m.stalled);
        for s in services {
            m.init(s);
        }
        m
    }

    /// The families, not registered yet.
    fn families() -> HealthMetrics {
        let svc = &["service"];
        let gauge = |name: &str, help: &str, labels: &[&str]| family::<GaugeVec>(name, help, labels);
        HealthMetrics {
            up: gauge("service_up", "1 if the service is healthy (its checks passed per the thresholds), else 0.", svc),
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
                "Health checks failed in a row (failures inside a start period do not count).",
                svc,
            ),
            last_check: gauge(
                "service_last_check_timestamp_seconds",
                "Unix time of the service's last health check.",
                svc,
            ),
            check_failures: family::<IntCounterVec>(
                "service_check_failures_total",
                "Failed health checks by reason (timeout, connect, tls, http_status, body, not_ready, stalled, dependency, error), including those under the failure threshold.",
                &["service", "reason"],
            ),
            check_slow: family::<IntCounterVec>(
                "service_check_slow_total",
                "Health checks that passed but took longer than slow_after.",
                svc,
            ),
            starting: gauge("service_starting", "1 while the service is in its start period (after the daemon starts or a restart).", svc),
            ready: gauge(
                "service_ready",
                "1 if the service is ready to serve: Open Inference readiness, or the last check for other kinds.",
                svc,
            ),
            model_ready: gauge(
                "inference_model_ready",
                "1 if the Open Inference server says this model is ready.",
                &["service", "model"],
            ),
            stalled: gauge(
                "service_stalled",
                "1 while the service has work pending and its progress counters have not grown for stall_after.",
                svc,
            ),
        }
    }

    /// Creates every series of service `s`, so each status, reason and
    /// restart result exists from the start.
    fn init(&self, s: &ServiceConfig) {
        let m = self;
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
        for r in Reason::ALL {
            m.check_failures.with_label_values(&[name, r.as_str()]);
        }
        m.check_slow.with_label_values(&[name]);
        m.restart_attempt.with_label_values(&[name]).set(0.0);
        m.consecutive_failures.with_label_values(&[name]).set(0.0);
        m.starting
            .with_label_values(&[name])
            .set(if s.start_period.is_zero() { 0.0 } else { 1.0 });
        m.ready.with_label_values(&[name]).set(0.0);
        for model in &s.models {
            m.model_ready.with_label_values(&[name, model]).set(0.0);
        }
        if s.progress.is_some() {
            m.stalled.with_label_values(&[name]).set(0.0);
        }
    }

    /// Drops every series of service `s` (a reload removed it).
    fn remove(&self, s: &ServiceConfig) {
        let m = self;
        let name = s.name.as_str();
        for g in [
            &m.up,
            &m.restart_attempt,
            &m.consecutive_failures,
            &m.last_check,
            &m.starting,
            &m.ready,
            &m.stalled,
        ] {
            let _ = g.remove_label_values(&[name]);
        }
        let _ = m.check_duration.remove_label_values(&[name]);
        let _ = m.check_slow.remove_label_values(&[name]);
        for st in Status::ALL {
            let _ = m.status.remove_label_values(&[name, st.as_str()]);
        }
        for r in ["success", "failure"] {
            let _ = m.restarts.remove_label_values(&[name, r]);
        }
        for r in Reason::ALL {
            let _ = m.check_failures.remove_label_values(&[name, r.as_str()]);
        }
        for model in &s.models {
            let _ = m.model_ready.remove_label_values(&[name, model]);
        }
    }

    /// A reload changed service `new`: models and stall detection that
    /// came get their series, those that went lose theirs.
    fn change(&self, old: &ServiceConfig, new: &ServiceConfig) {
        let name = new.name.as_str();
        for model in old.models.iter().filter(|m| !new.models.contains(m)) {
            let _ = self.model_ready.remove_label_values(&[name, model]);
        }
        for model in new.models.iter().filter(|m| !old.models.contains(m)) {
            self.model_ready.with_label_values(&[name, model]).set(0.0);
        }
        match (old.progress.is_some(), new.progress.is_some()) {
            (true, false) => {
                let _ = self.stalled.remove_label_values(&[name]);
            }
            (false, true) => self.stalled.with_label_values(&[name]).set(0.0),
            _ => {}
        }
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

/// The registry entry: one task per configured service.
pub const ENTRY: super::Entry = super::Entry {
    name: "health",
    about: "service health checks and restarts (health.services)",
    enabled,
    switch: None,
    build,
};

fn enabled(_: &crate::config::Config) -> bool {
    true
}

fn build(sh: &super::Shared) -> Result<super::Built, super::StartError> {
    let config = sh.config.get();
    let sinks = Sinks {
        state: sh.health.clone(),
        gpu: sh.gpu.clone(),
        metrics: Arc::new(HealthMetrics::register(&sh.metrics, &config.health.services)),
        registry: sh.metrics.clone(),
        events: sh.events.clone(),
    };
    let monitor = HealthMonitor::new(&config.health, sinks)
        .map_err(|e| super::StartError {
            collector: "health",
            reason: e.to_string(),
        })?
        .follow(sh.config.clone());
    Ok(super::Built::Own(Box::new(move |readiness, stop| {
        monitor.spawn(readiness, stop)
    })))
}

/// Everything one service task writes to.
#[derive(Clone)]
pub struct Sinks {
    pub state: Arc<HealthState>,
    /// The GPU snapshot, for what a service holds when it is restarted.
    pub gpu: Arc<crate::state::GpuState>,
    pub metrics: Arc<HealthMetrics>,
    pub registry: Arc<Metrics>,
    pub events: EventBus,
}

/// One configured service, ready to be checked.
struct Service {
    config: ServiceConfig,
    checker: Checker,
    progress: Option<Progress>,
}

impl Service {
    fn new(config: &ServiceConfig) -> Result<Service, HealthError> {
        Ok(Service {
            config: config.clone(),
            checker: Checker::new(config)?,
            progress: Progress::new(config)?,
        })
    }

    fn policy(&self) -> Policy {
        let c = &self.config;
        Policy {
            restartable: c.restart.is_some(),
            max_retries: c.max_retries,
            backoff_base: c.backoff_base,
            reset_after: c.reset_after,
            failure_threshold: c.failure_threshold,
            success_threshold: c.success_threshold,
            start_period: c.start_period,
        }
    }
}

/// Checks that every service of `health` can be built (its URLs parse), as
/// startup does; a reload runs it before it changes anything.
pub fn check_services(health: &crate::config::HealthConfig) -> Result<(), HealthError> {
    health.services.iter().try_for_each(|s| Service::new(s).map(drop))
}

/// The health monitor: one task per configured service and, when it
/// follows the live config, a supervisor that starts, changes and stops
/// them as reloads add, change and remove services.
pub struct HealthMonitor {
    services: Vec<Service>,
    gate: RestartGate,
    sinks: Sinks,
    live: Option<LiveConfig>,
}

/// A running service task, and how to reach it.
struct Running {
    stop: CancellationToken,
    /// Its settings: what it was started with, or the last reload's.
    updates: watch::Sender<ServiceConfig>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    fn name(&self) -> String {
        self.updates.borrow().name.clone()
    }
}

/// The start-up readiness count that a task's first check takes one off;
/// `None` for a service a reload added.
type Pending = Option<(Arc<Readiness>, Arc<AtomicUsize>)>;

impl HealthMonitor {
    pub fn new(health: &crate::config::HealthConfig, sinks: Sinks) -> Result<HealthMonitor, HealthError> {
        let services = health
            .services
            .iter()
            .map(Service::new)
            .collect::<Result<_, HealthError>>()?;
        Ok(HealthMonitor {
            services,
            gate: RestartGate::new(health.max_concurrent_restarts as usize),
            sinks,
            live: None,
        })
    }

    /// Follows `live`: a reload that adds, changes or removes services
    /// reaches the running tasks.
    pub fn follow(mut self, live: LiveConfig) -> HealthMonitor {
        self.live = Some(live);
        self
    }

    /// Spawns the per-service tasks (and the supervisor when following the
    /// live config). Readiness (`health`) is reached once every service
    /// configured at start has had its first check.
    pub fn spawn(self, readiness: Arc<Readiness>, shutdown: CancellationToken) -> Vec<tokio::task::JoinHandle<()>> {
        let HealthMonitor {
            services,
            gate,
            sinks,
            live,
        } = self;
        if services.is_empty() && live.is_none() {
            return Vec::new();
        }
        let pending = (!services.is_empty()).then(|| {
            readiness.expect("health");
            (readiness.clone(), Arc::new(AtomicUsize::new(services.len())))
        });
        let parent = shutdown.clone();
        let task_sinks = sinks.clone();
        let start = move |service: Service, pending: Pending| {
            let stop = parent.child_token();
            let (updates, rx) = watch::channel(service.config.clone());
            let task = ServiceTask::new(service, gate.clone(), task_sinks.clone(), Instant::now());
            let task = tokio::spawn(task.run(pending, Some(rx), stop.clone()));
            Running { stop, updates, task }
        };
        let running: Vec<Running> = services.into_iter().map(|s| start(s, pending.clone())).collect();
        let Some(live) = live else {
            return running.into_iter().map(|r| r.task).collect();
        };
        let mut config = live.subscribe();
        vec![tokio::spawn(async move {
            let mut running = running;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    changed = config.changed() => if changed.is_err() { break },
                }
                let services = config.borrow_and_update().health.services.clone();
                running = Self::reconcile(running, &services, &sinks, &start).await;
            }
            for r in running {
                r.stop.cancel();
                let _ = r.task.await;
            }
        })]
    }

    /// Brings the running tasks in line with `services`: stops the removed
    /// ones (and drops their series), passes changes on, starts new ones.
    async fn reconcile(
        running: Vec<Running>,
        services: &[ServiceConfig],
        sinks: &Sinks,
        start: &impl Fn(Service, Pending) -> Running,
    ) -> Vec<Running> {
        let mut kept = Vec::new();
        for r in running {
            let name = r.name();
            match services.iter().find(|s| s.name == name) {
                Some(_) => kept.push(r),
                None => {
                    r.stop.cancel();
                    let _ = r.task.await;
                    sinks.metrics.remove(&r.updates.borrow());
                    tracing::info!(service = %name, "Service removed by a reload: its checks stopped and its series are gone.");
                }
            }
        }
        sinks.state.set_services(services);
        let mut next = Vec::new();
        for s in services {
            match kept.iter().position(|r| r.name() == s.name) {
                Some(i) => {
                    let r = kept.swap_remove(i);
                    let old = r.updates.borrow().clone();
                    if old != *s {
                        sinks.metrics.change(&old, s);
                        r.updates.send_replace(s.clone());
                        tracing::info!(service = %s.name, "Service changed by a reload: the new settings apply from its next check.");
                    }
                    next.push(r);
                }
                None => match Service::new(s) {
                    Ok(service) => {
                        sinks.metrics.init(s);
                        tracing::info!(service = %s.name, "Service added by a reload: checking it, with its start period.");
                        next.push(start(service, None));
                    }
                    // The reload checked it; this only guards the task.
                    Err(e) => {
                        tracing::error!(service = %s.name, error = %e, "Service added by a reload cannot be checked.")
                    }
                },
            }
        }
        sinks.registry.invalidate();
        next
    }
}

/// Takes one service off the start-up readiness count; the last one
/// makes the health monitor ready.
fn first_check_done(pending: &Pending) {
    if let Some((readiness, pending)) = pending {
        if pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            readiness.done("health");
        }
    }
}

struct ServiceTask {
    service: Service,
    machine: Machine,
    policy: Policy,
    gate: RestartGate,
    sinks: Sinks,
    last_error: String,
    /// What the start period flag was when last published.
    was_starting: bool,
    /// The last progress read error, logged once until it changes.
    progress_error: Option<String>,
    /// What the service held on the GPUs when it was last restarted, and
    /// when the start period after the restart ended (then it is compared
    /// with the first GPU reading taken after that).
    gpu_before: Option<(Held, Option<DateTime<Utc>>)>,
}

/// What one probe read: the check, and the progress metrics if configured.
struct Probe {
    outcome: Outcome,
    progress: Option<Result<(f64, f64), ProgressError>>,
}

impl ServiceTask {
    fn config(&self) -> &ServiceConfig {
        &self.service.config
    }

    fn new(service: Service, gate: RestartGate, sinks: Sinks, now: Instant) -> ServiceTask {
        let policy = service.policy();
        ServiceTask {
            machine: Machine::new(policy, now),
            policy,
            was_starting: !service.config.start_period.is_zero(),
            service,
            gate,
            sinks,
            last_error: String::new(),
            progress_error: None,
            gpu_before: None,
        }
    }

    /// A reload changed this service: new checks and thresholds, the same
    /// counts, status and backoff.
    fn reconfigure(&mut self, config: ServiceConfig) {
        let progress = if config.progress == self.service.config.progress {
            self.service.progress.take().map(Ok)
        } else {
            Progress::new(&config).transpose()
        };
        let built = Checker::new(&config).and_then(|checker| Ok((checker, progress.transpose()?)));
        match built {
            Ok((checker, progress)) => {
                self.service = Service {
                    config,
                    checker,
                    progress,
                };
                self.policy = self.service.policy();
                self.machine.set_policy(self.policy);
            }
            Err(e) => {
                tracing::error!(service = %config.name, error = %e, "Reloaded settings cannot be used; the service keeps its old ones.")
            }
        }
    }

    /// `updates`: the service's reloaded settings.
    async fn run(
        mut self,
        pending: Pending,
        mut updates: Option<watch::Receiver<ServiceConfig>>,
        shutdown: CancellationToken,
    ) {
        let mut next_check = Instant::now();
        let mut first = true;
        loop {
            let wake = self.machine.restart_due().map_or(next_check, |due| due.min(next_check));
            let update = async {
                match updates.as_mut() {
                    Some(rx) => rx.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                open = update => {
                    match open {
                        true => {
                            let config = updates.as_mut().map(|rx| rx.borrow_and_update().clone());
                            if let Some(config) = config {
                                self.reconfigure(config);
                            }
                        }
                        false => updates = None,
                    }
                    continue;
                }
                _ = tokio::time::sleep_until(wake) => {}
            }
            let now = Instant::now();
            if self.machine.restart_due().is_some_and(|due| due <= now) {
                let held = self.held_by();
                match self.machine.start_restart(now, held.is_some()) {
                    Some(step) => {
                        match self.restart(step, &shutdown).await {
                            Some(next) => next_check = next.unwrap_or(next_check),
                            None => break,
                        }
                        continue;
                    }
                    None => {
                        if let Some(dep) = held {
                            tracing::info!(service = %self.config().name, dependency = %dep, "Restart held back: a service it depends on is not healthy.");
                        }
                    }
                }
            }
            if Instant::now() < next_check {
                continue;
            }
            let started = Instant::now();
            let timeout = self.config().timeout;
            let probe = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = tokio::time::timeout(timeout, self.probe()) => r.unwrap_or(Probe {
                    outcome: Outcome { live: Err(CheckError::Timeout(timeout)), readiness: None },
                    progress: None,
                }),
            };
            self.record_check(started, probe);
            next_check = started + self.config().interval_while(self.machine.is_starting());
            if let Some(until) = self.machine.starting_until() {
                // The check at the end of the start period counts.
                next_check = next_check.min(until);
            }
            if std::mem::take(&mut first) {
                first_check_done(&pending);
            }
        }
        // A service a reload removed before its first check must not hold
        // readiness back for ever.
        if first {
            first_check_done(&pending);
        }
        tracing::debug!(service = %self.config().name, "Health checks stopped.");
    }

    /// One check, then (if it passed) the progress metrics.
    async fn probe(&self) -> Probe {
        let outcome = self.service.checker.check().await;
        let progress = match &self.service.progress {
            Some(p) if outcome.live.is_ok() => Some(p.read().await),
            _ => None,
        };
        Probe { outcome, progress }
    }

    /// The name of the first service this one depends on that is not
    /// healthy, if any.
    fn held_by(&self) -> Option<String> {
        self.config()
            .depends_on
            .iter()
            .filter_map(|d| self.sinks.state.service(d))
            .find(|v| v.status != Status::Healthy)
            .map(|v| v.name)
    }

    /// Runs the restart command the policy asked for, when the gate gives
    /// it a turn. Returns `None` on shutdown, else when the next check is
    /// due (`None` inside: unchanged).
    async fn restart(&mut self, step: Step, shutdown: &CancellationToken) -> Option<Option<Instant>> {
        let Some(restart) = self.config().restart.clone() else {
            return Some(None);
        };
        let name = self.config().name.clone();
        let attempt = self.machine.attempts();
        // The argv can carry secrets: name the service, never the command.
        let message = format!(
            "restart attempt {attempt} of {} after {:?} backoff: running the restart command of {name}",
            self.config().max_retries,
            self.policy.backoff(attempt),
        );
        self.apply(step, message, None);
        self.note_gpu_memory(&name);
        let turn = match self.gate.try_turn() {
            Some(turn) => turn,
            None => {
                tracing::info!(service = %name, attempt, "Restart waits its turn: health.max_concurrent_restarts restarts are running.");
                tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    t = self.gate.turn() => t,
                }
            }
        };
        let outcome = tokio::select! {
            _ = shutdown.cancelled() => return None,
            r = run_restart(&restart) => r,
        };
        drop(turn);
        Some(Some(match outcome {
            Ok(()) => {
                tracing::info!(service = %name, attempt, "Restart command finished.");
                self.machine.on_restarted(Instant::now());
                self.publish_starting();
                Instant::now() + restart.grace_period
            }
            Err(e) => {
                tracing::warn!(service = %name, attempt, error = %e.summary, stderr = %e.stderr, "Restart command failed.");
                // Decided now: no grace period for a command that failed.
                let step = self.machine.on_restart_failed(Instant::now());
                let message = format!(
                    "restart attempt {attempt} of {} failed: {}",
                    self.config().max_retries,
                    e.summary
                );
                self.last_error = e.summary;
                self.apply(step, message, Some(Utc::now()));
                Instant::now() + self.config().interval
            }
        }))
    }

    /// Feeds one probe's result to the policy and publishes the step.
    fn record_check(&mut self, started: Instant, probe: Probe) {
        let name = self.config().name.clone();
        let m = self.sinks.metrics.clone();
        let elapsed = started.elapsed();
        m.check_duration
            .with_label_values(&[&name])
            .observe(elapsed.as_secs_f64());
        let Probe { outcome, progress } = probe;
        let mut live = outcome.live;
        if let Some(reading) = progress {
            live = live.and_then(|()| self.judge_progress(reading));
        }
        if live.is_ok() && self.config().slow_after.is_some_and(|s| elapsed > s) {
            m.check_slow.with_label_values(&[&name]).inc();
        }
        let held = if live.is_err() { self.held_by() } else { None };
        let check = match (&live, &held) {
            (Ok(()), _) => Check::Pass,
            (Err(_), Some(_)) => Check::Held,
            (Err(_), None) => Check::Fail,
        };
        let step = self.machine.on_check(check, Instant::now());
        let mut error = live
            .as_ref()
            .err()
            .map(|e| self.count_failure(e, held.as_deref(), step.counted));
        let ready = self.readiness(outcome.readiness.as_ref(), live.is_ok(), &mut error);
        m.ready.with_label_values(&[&name]).set(if ready { 1.0 } else { 0.0 });
        let message = self.describe(&step, error.as_ref());
        let ready_changed = self.sinks.state.service(&name).is_some_and(|v| v.ready != ready);
        self.sinks.state.update(&name, |v| v.ready = ready);
        if ready_changed && step.to == Status::Healthy && !step.changed {
            // A live service whose readiness changed says why.
            tracing::info!(service = %name, ready, reason = %message, "Service readiness changed.");
            self.sinks.state.update(&name, |v| v.message = message.clone());
        }
        self.apply(step, message, Some(Utc::now()));
        if live.is_ok() {
            self.last_error.clear();
        }
        if !self.machine.is_starting() {
            self.judge_gpu_memory(&name);
        }
    }

    /// Before a restart: logs how much GPU memory the service holds, and
    /// keeps it for the comparison after the start period.
    fn note_gpu_memory(&mut self, name: &str) {
        let held = Held::of(&self.sinks.gpu.snapshot().processes, name);
        if held.total() == 0 {
            self.gpu_before = None;
            return;
        }
        tracing::info!(service = %name, gpu_memory_bytes = held.total(), per_gpu = ?held.per_gpu, "Restarting a service that holds GPU memory.");
        self.gpu_before = Some((held, None));
    }

    /// Once the start period after a restart has ended: says on the log and
    /// the WebSocket whether the old processes gave their memory back.
    fn judge_gpu_memory(&mut self, name: &str) {
        let Some((_, ended)) = &mut self.gpu_before else { return };
        let ended = *ended.get_or_insert_with(Utc::now);
        let snapshot = self.sinks.gpu.snapshot();
        if snapshot.recorded_at.map_or(true, |at| at <= ended) {
            return;
        }
        let Some((before, _)) = self.gpu_before.take() else {
            return;
        };
        let v = gpu_memory::judge(&before, &snapshot.processes, name);
        if v.returned {
            tracing::info!(service = %name, before_bytes = v.before_bytes, after_bytes = v.after_bytes, leftover_bytes = v.leftover_bytes, "The restart returned the service's GPU memory.");
        } else {
            tracing::warn!(service = %name, before_bytes = v.before_bytes, after_bytes = v.after_bytes, leftover_bytes = v.leftover_bytes, "The restart did not return the service's GPU memory: its old processes, or a context no process holds, still have it.");
        }
        self.sinks.events.publish(crate::events::Event::GpuMemoryAfterRestart {
            service: name.to_string(),
            returned: v.returned,
            before_bytes: v.before_bytes,
            after_bytes: v.after_bytes,
            leftover_bytes: v.leftover_bytes,
        });
    }

    /// Counts a failed check by reason (`dependency` when a dependency is
    /// down), logs it at DEBUG, and says what failed.
    fn count_failure(&self, e: &CheckError, held: Option<&str>, counted: bool) -> String {
        let name = self.config().name.as_str();
        let reason = if held.is_some() { Reason::Dependency } else { e.reason() };
        let error = match held {
            Some(dep) => format!("{e} (not restarted: {dep}, which it depends on, is not healthy)"),
            None => e.to_string(),
        };
        self.sinks
            .metrics
            .check_failures
            .with_label_values(&[name, reason.as_str()])
            .inc();
        tracing::debug!(
            service = %name,
            reason = reason.as_str(),
            consecutive = self.machine.consecutive_failures(),
            threshold = self.config().failure_threshold,
            counted,
            error = %error,
            "Health check failed."
        );
        error
    }

    /// Readiness: the Open Inference answer (models and server), or the
    /// check itself for the other kinds. A live server that is not ready is
    /// counted with reason `not_ready` and says why in `error`.
    fn readiness(&self, readiness: Option<&check::Readiness>, live: bool, error: &mut Option<String>) -> bool {
        let name = self.config().name.as_str();
        let m = &self.sinks.metrics;
        match readiness {
            Some(r) if live => {
                for (model, ok) in &r.models {
                    m.model_ready
                        .with_label_values(&[name, model])
                        .set(if *ok { 1.0 } else { 0.0 });
                }
                if !r.ready {
                    m.check_failures
                        .with_label_values(&[name, Reason::NotReady.as_str()])
                        .inc();
                    error.get_or_insert_with(|| format!("live but not ready: {}", r.why));
                }
                r.ready
            }
            _ => {
                if !live {
                    for model in &self.config().models {
                        m.model_ready.with_label_values(&[name, model]).set(0.0);
                    }
                }
                live
            }
        }
    }

    /// A progress reading: a stall fails the check; a read error is logged
    /// once and decides nothing (the service answered its check).
    fn judge_progress(&mut self, reading: Result<(f64, f64), ProgressError>) -> Result<(), CheckError> {
        let name = self.config().name.clone();
        let stalled = match reading {
            Ok((pending, done)) => {
                self.progress_error = None;
                // A reading only exists when progress is configured.
                let Some(progress) = self.service.progress.as_mut() else {
                    return Ok(());
                };
                progress
                    .tracker
                    .observe(pending, done, Instant::now())
                    .map(|idle| CheckError::Stalled { pending, idle })
            }
            Err(e) => {
                let text = e.to_string();
                if self.progress_error.as_deref() != Some(text.as_str()) {
                    tracing::warn!(service = %name, error = %text, "Progress metrics could not be read; stall detection waits for the next reading.");
                    self.progress_error = Some(text);
                }
                return Ok(());
            }
        };
        self.sinks
            .metrics
            .stalled
            .with_label_values(&[&name])
            .set(if stalled.is_some() { 1.0 } else { 0.0 });
        match stalled {
            Some(e) => Err(e),
            None => Ok(()),
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
        let max = self.config().max_retries;
        match (step.to, step.restart_result) {
            (Status::Healthy, Some(true)) => {
                format!("restart attempt {} brought the service back", self.machine.attempts())
            }
            (Status::Healthy, _) if error.is_empty() => "check passed".into(),
            (Status::Healthy, _) => error.to_string(),
            (Status::RestartFailed, _) => format!(
                "restart attempt {} of {max} did not bring the service back: {error}{restart_note}",
                self.machine.attempts(),
            ),
            (Status::Failed, _) => format!(
                "gave up after {} restart attempts; manual intervention needed: {error}{restart_note}",
                self.machine.attempts()
            ),
            (Status::Unhealthy | Status::Restarting, _) if self.machine.is_starting() && !error.is_empty() => {
                format!("starting: {error}")
            }
            (Status::Unhealthy | Status::Restarting, _) => error.to_string(),
        }
    }

    /// Publishes the start period that a restart command's end began:
    /// a step that changes no status, through the one publishing path.
    fn publish_starting(&mut self) {
        let status = self.machine.status();
        let message = self
            .sinks
            .state
            .service(&self.config().name)
            .map(|v| v.message)
            .unwrap_or_default();
        let step = Step {
            from: status,
            to: status,
            changed: false,
            alert: None,
            restart_result: None,
            counted: false,
        };
        self.apply(step, message, None);
    }

    /// Publishes a step: metrics, the API view, events and alerts.
    fn apply(&mut self, step: Step, message: String, checked_at: Option<DateTime<Utc>>) {
        let name = self.config().name.clone();
        let name = name.as_str();
        let m = &self.sinks.metrics;
        m.set_status(name, step.to);
        m.restart_attempt
            .with_label_values(&[name])
            .set(self.machine.attempts() as f64);
        m.consecutive_failures
            .with_label_values(&[name])
            .set(self.machine.consecutive_failures() as f64);
        let starting = self.machine.is_starting();
        m.starting
            .with_label_values(&[name])
            .set(if starting { 1.0 } else { 0.0 });
        if checked_at.is_some() {
            m.last_check.with_label_values(&[name]).set(unix_now());
        }
        if let Some(worked) = step.restart_result {
            let result = if worked { "success" } else { "failure" };
            m.restarts.with_label_values(&[name, result]).inc();
        }
        let (attempts, failures) = (self.machine.attempts(), self.machine.consecutive_failures());
        let starting_changed = starting != self.was_starting;
        self.was_starting = starting;
        // A view's message only changes with the status, so a steady failure
        // keeps the text that explained the transition.
        self.sinks.state.update(name, |v| {
            if step.changed || starting_changed {
                v.message = message.clone();
            }
            v.status = step.to;
            v.starting = starting;
            v.restart_attempts = attempts;
            v.consecutive_failures = failures;
            if checked_at.is_some() {
                v.last_check = checked_at;
            }
        });
        if step.changed {
            tracing::info!(service = name, from = step.from.as_str(), to = step.to.as_str(), starting, reason = %message, "Service status changed.");
        }
        if step.changed || starting_changed {
            self.sinks.events.publish(Event::ServiceStatus {
                service: name.to_string(),
                status: step.to,
                message: message.clone(),
                starting,
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
