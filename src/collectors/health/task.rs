//! One service's task: checks it on its schedule, feeds each result to the
//! pure restart policy ([`crate::restart::Machine`]), runs the restart
//! command when the policy says so and the gate gives it a turn, judges the
//! GPU memory it held once a restart's start period ends, and publishes
//! every step (metrics, the API view, events and alerts).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::check::{self, CheckError, Checker, Outcome, Progress, ProgressError, Reason};
use super::command::run_restart;
use super::gpu_memory::{self, Held};
use super::status::{status_text, Facts};
use super::{unix_now, Service, Sinks};
use crate::config::ServiceConfig;
use crate::events::Event;
use crate::restart::{AlertKind, Check, Machine, Policy, RestartGate, Status, Step};
use crate::state::Readiness;

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

pub(super) struct ServiceTask {
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

/// The start-up readiness count that a task's first check takes one off;
/// `None` for a service a reload added.
pub(super) type Pending = Option<(Arc<Readiness>, Arc<AtomicUsize>)>;

/// Takes one service off the start-up readiness count; the last one
/// makes the health monitor ready.
pub(super) fn first_check_done(pending: &Pending) {
    if let Some((readiness, pending)) = pending {
        if pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            readiness.done("health");
        }
    }
}

/// How a restart ended, for the task's loop.
enum Restarted {
    /// The task is shutting down (while it waited for its turn or ran).
    Shutdown,
    /// The command ran (or there was none): the next check is due then.
    NextCheckAt(Instant),
    /// There is no restart command: the schedule stays as it was.
    NoCommand,
}

/// What woke the task's loop.
enum Wake {
    Shutdown,
    /// A reload changed the service's settings (now in force).
    Reconfigured,
    /// A check or a restart may be due.
    Due,
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

    pub(super) fn new(service: Service, gate: RestartGate, sinks: Sinks, now: Instant) -> ServiceTask {
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
            Progress::new(&config, self.sinks.limits.page).transpose()
        };
        let built =
            Checker::new(&config, self.sinks.limits.body).and_then(|checker| Ok((checker, progress.transpose()?)));
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
    pub(super) async fn run(
        mut self,
        pending: Pending,
        mut updates: Option<watch::Receiver<ServiceConfig>>,
        shutdown: CancellationToken,
    ) {
        let mut next_check = Instant::now();
        let mut first = true;
        loop {
            match self.wait(&mut updates, next_check, &shutdown).await {
                Wake::Shutdown => break,
                Wake::Reconfigured => continue,
                Wake::Due => {}
            }
            match self.restart_if_due(&shutdown).await {
                Some(Restarted::Shutdown) => break,
                Some(Restarted::NextCheckAt(at)) => {
                    next_check = at;
                    continue;
                }
                Some(Restarted::NoCommand) => continue,
                None => {}
            }
            if Instant::now() < next_check {
                continue;
            }
            let Some(next) = self.check_once(&shutdown).await else {
                break;
            };
            next_check = next;
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

    /// Sleeps until the next check or restart is due, a reload changes the
    /// service (put in force here), or shutdown.
    async fn wait(
        &mut self,
        updates: &mut Option<watch::Receiver<ServiceConfig>>,
        next_check: Instant,
        shutdown: &CancellationToken,
    ) -> Wake {
        let wake = self.machine.restart_due().map_or(next_check, |due| due.min(next_check));
        let update = async {
            match updates.as_mut() {
                Some(rx) => rx.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => Wake::Shutdown,
            open = update => {
                match updates.as_mut().filter(|_| open) {
                    Some(rx) => {
                        let config = rx.borrow_and_update().clone();
                        self.reconfigure(config);
                    }
                    // The supervisor is gone: no more reloads.
                    None => *updates = None,
                }
                Wake::Reconfigured
            }
            _ = tokio::time::sleep_until(wake) => Wake::Due,
        }
    }

    /// Runs the restart the policy has due now, if any and if no dependency
    /// holds it back; `None` when none ran.
    async fn restart_if_due(&mut self, shutdown: &CancellationToken) -> Option<Restarted> {
        let now = Instant::now();
        if !self.machine.restart_due().is_some_and(|due| due <= now) {
            return None;
        }
        let held = self.held_by();
        match self.machine.start_restart(now, held.is_some()) {
            Some(step) => Some(self.restart(step, shutdown).await),
            None => {
                if let Some(dep) = held {
                    tracing::info!(service = %self.config().name, dependency = %dep, "Restart held back: a service it depends on is not healthy.");
                }
                None
            }
        }
    }

    /// One check within the service's timeout, recorded; when the next one
    /// is due, or `None` on shutdown.
    async fn check_once(&mut self, shutdown: &CancellationToken) -> Option<Instant> {
        let started = Instant::now();
        let timeout = self.config().timeout;
        let probe = tokio::select! {
            _ = shutdown.cancelled() => return None,
            r = tokio::time::timeout(timeout, self.probe()) => r.unwrap_or(Probe {
                outcome: Outcome { live: Err(CheckError::Timeout(timeout)), readiness: None },
                progress: None,
            }),
        };
        self.record_check(started, probe);
        let next = started + self.config().interval_while(self.machine.is_starting());
        // The check at the end of the start period counts.
        Some(self.machine.starting_until().map_or(next, |until| next.min(until)))
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
    /// it a turn.
    async fn restart(&mut self, step: Step, shutdown: &CancellationToken) -> Restarted {
        let Some(restart) = self.config().restart.clone() else {
            return Restarted::NoCommand;
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
                    _ = shutdown.cancelled() => return Restarted::Shutdown,
                    t = self.gate.turn() => t,
                }
            }
        };
        let outcome = tokio::select! {
            _ = shutdown.cancelled() => return Restarted::Shutdown,
            r = run_restart(&restart) => r,
        };
        drop(turn);
        Restarted::NextCheckAt(match outcome {
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
        })
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
        let message = status_text(
            &step,
            &Facts {
                error: error.as_deref().unwrap_or(""),
                restart_error: &self.last_error,
                attempts: self.machine.attempts(),
                max_retries: self.config().max_retries,
                starting: self.machine.is_starting(),
            },
        );
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
                    for model in self.config().check.models() {
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
