//! The restart policy of one monitored service: statuses, failure and
//! success thresholds, the start period, exponential backoff, giving up,
//! the dependency hold, and the gate that keeps restarts from running all at
//! once. Pure logic: time comes in as an argument, so every transition is
//! unit-tested without sleeping.
//!
//! ```text
//!        failure_threshold failed checks in a row    backoff(n) elapsed, no dependency down
//! healthy ─────────────────────────────▶ unhealthy ─────────────────────────────────▶ restarting
//!    ▲                                      │ (no restart command, or a dependency     │ start period,
//!    │ success_threshold passes in a row    │  is down: stays, nothing is restarted)    │ then the deciding check
//!    └──────────────────────────────────────┴──── restart_failed ◀──── fails ───────────┤
//!                                               │ n == max_retries                      │ passes ──▶ healthy
//!                                               ▼
//!                                             failed (still checked; passes ──▶ healthy)
//! ```
//!
//! A failure under the threshold changes no status: it is counted, and a
//! pass resets the count. Inside a start period (after the daemon starts
//! and after every restart) failures do not count; the first pass ends it,
//! and a period that ends without one counts as one failed check, which
//! after a restart decides `restart_failed`.
//!
//! Attempt *n* waits `backoff_base * 2^(n-1)`. The attempt count returns to
//! 0 once the service has stayed healthy for `reset_after`.

use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

/// A service's status; exactly these five.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Healthy,
    Unhealthy,
    Restarting,
    RestartFailed,
    Failed,
}

impl Status {
    pub const ALL: [Status; 5] = [
        Status::Healthy,
        Status::Unhealthy,
        Status::Restarting,
        Status::RestartFailed,
        Status::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Healthy => "healthy",
            Status::Unhealthy => "unhealthy",
            Status::Restarting => "restarting",
            Status::RestartFailed => "restart_failed",
            Status::Failed => "failed",
        }
    }
}

/// The built-in alerts a transition can raise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertKind {
    /// The service failed a check.
    Unhealthy,
    /// A restart did not bring it back.
    RestartFailed,
    /// Every allowed attempt was used: a person must look.
    MaxRetriesExceeded,
}

impl AlertKind {
    /// The `condition` field of the alert event.
    pub fn condition(self) -> &'static str {
        match self {
            AlertKind::Unhealthy => "service_unhealthy",
            AlertKind::RestartFailed => "service_restart_failed",
            AlertKind::MaxRetriesExceeded => "service_max_retries_exceeded",
        }
    }
}

/// The overall status of all services.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overall {
    Healthy,
    /// A non-critical service is not healthy.
    Degraded,
    /// A critical service is not healthy.
    Unhealthy,
}

impl Overall {
    /// From each service's status and whether it is critical.
    pub fn of<'a>(services: impl IntoIterator<Item = (&'a Status, bool)>) -> Overall {
        let mut overall = Overall::Healthy;
        for (status, critical) in services {
            if *status != Status::Healthy {
                if critical {
                    return Overall::Unhealthy;
                }
                overall = Overall::Degraded;
            }
        }
        overall
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Overall::Healthy => "healthy",
            Overall::Degraded => "degraded",
            Overall::Unhealthy => "unhealthy",
        }
    }
}

/// How a service is judged and restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// False for alert-only services (no restart command).
    pub restartable: bool,
    pub max_retries: u32,
    pub backoff_base: Duration,
    pub reset_after: Duration,
    /// Failed checks in a row before the service is `unhealthy` (and a
    /// restart is scheduled).
    pub failure_threshold: u32,
    /// Passed checks in a row before a service that is not healthy is
    /// `healthy` again.
    pub success_threshold: u32,
    /// After the daemon starts and after each restart: failures inside it do
    /// not count. Zero for none.
    pub start_period: Duration,
}

impl Policy {
    /// Wait before attempt `n` (1-based): `backoff_base * 2^(n-1)`.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.saturating_sub(1)).unwrap_or(u32::MAX);
        self.backoff_base.saturating_mul(factor)
    }
}

/// One check's result, as the policy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    Pass,
    Fail,
    /// Failed while a service it depends on is not healthy: counted like a
    /// failure, but it never schedules a restart.
    Held,
}

/// What one input did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    pub from: Status,
    pub to: Status,
    /// True when the status changed, or on the very first check.
    pub changed: bool,
    pub alert: Option<AlertKind>,
    /// `Some` when this check decided a restart: true if it worked.
    pub restart_result: Option<bool>,
    /// True when this failure counted toward the threshold (false for a
    /// pass, and for a failure inside the start period).
    pub counted: bool,
}

/// One service's restart state.
#[derive(Debug, Clone)]
pub struct Machine {
    policy: Policy,
    status: Status,
    checked: bool,
    /// False until the first verdict (healthy, or the threshold reached):
    /// before it `unhealthy` only means "not proven up".
    decided: bool,
    attempts: u32,
    consecutive_failures: u32,
    consecutive_successes: u32,
    healthy_since: Option<Instant>,
    restart_due: Option<Instant>,
    starting_until: Option<Instant>,
}

impl Machine {
    /// A service not yet checked counts as `unhealthy` (not proven up), but
    /// raises nothing until its checks decide; its start period begins `now`.
    pub fn new(policy: Policy, now: Instant) -> Machine {
        let mut m = Machine {
            policy,
            status: Status::Unhealthy,
            checked: false,
            decided: false,
            attempts: 0,
            consecutive_failures: 0,
            consecutive_successes: 0,
            healthy_since: None,
            restart_due: None,
            starting_until: None,
        };
        m.begin_start_period(now);
        m
    }

    /// A reload changed the service's thresholds: the counts so far stay
    /// and the new policy judges them from the next check on; a restart
    /// the new config no longer allows is called off.
    pub fn set_policy(&mut self, policy: Policy) {
        self.policy = policy;
        if !policy.restartable {
            self.restart_due = None;
        }
    }

    pub fn status(&self) -> Status {
        self.status
    }

    /// Restart attempts used since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    /// When the next restart should run, if one is scheduled.
    pub fn restart_due(&self) -> Option<Instant> {
        self.restart_due
    }

    /// When the current start period ends, while one runs (it may already
    /// have passed: the next check ends it).
    pub fn starting_until(&self) -> Option<Instant> {
        self.starting_until
    }

    /// True while a start period runs (until its first pass, or the first
    /// check at or after its end).
    pub fn is_starting(&self) -> bool {
        self.starting_until.is_some()
    }

    fn begin_start_period(&mut self, now: Instant) {
        self.starting_until = (!self.policy.start_period.is_zero()).then(|| now + self.policy.start_period);
    }

    /// The restart command finished at `now`: the start period begins.
    pub fn on_restarted(&mut self, now: Instant) {
        if self.status == Status::Restarting {
            self.consecutive_failures = 0;
            self.consecutive_successes = 0;
            self.begin_start_period(now);
        }
    }

    /// Feeds the result of one check taken at `now`.
    pub fn on_check(&mut self, check: Check, now: Instant) -> Step {
        let from = self.status;
        let first = !self.checked;
        self.checked = true;
        let in_start_period = match self.starting_until {
            Some(until) if now < until => true,
            Some(_) => {
                self.starting_until = None;
                false
            }
            None => false,
        };
        let (alert, restart_result, counted) = match check {
            Check::Pass => (None, self.on_pass(from, now), false),
            Check::Fail | Check::Held if !in_start_period => {
                let (alert, result) = self.on_fail(from, check == Check::Held, now);
                (alert, result, true)
            }
            Check::Fail | Check::Held => {
                self.consecutive_successes = 0;
                (None, None, false)
            }
        };
        Step {
            from,
            to: self.status,
            changed: first || from != self.status,
            alert,
            restart_result,
            counted,
        }
    }

    /// A pass: ends the start period, resets the failures, cancels a
    /// pending restart, and makes the service healthy at the success
    /// threshold. Returns the restart's result when this decided one.
    fn on_pass(&mut self, from: Status, now: Instant) -> Option<bool> {
        let mut restart_result = None;
        self.starting_until = None;
        self.consecutive_failures = 0;
        self.consecutive_successes = self.consecutive_successes.saturating_add(1);
        // The service answers: a pending restart waits for the threshold
        // to be reached again.
        self.restart_due = None;
        if from != Status::Healthy && self.consecutive_successes >= self.policy.success_threshold {
            if from == Status::Restarting {
                restart_result = Some(true);
            }
            self.status = Status::Healthy;
            self.decided = true;
            self.healthy_since = Some(now);
        }
        if self.status == Status::Healthy {
            let since = *self.healthy_since.get_or_insert(now);
            if now.saturating_duration_since(since) >= self.policy.reset_after {
                self.attempts = 0;
            }
        }
        restart_result
    }

    /// A failure that counts (outside the start period): the threshold,
    /// the deciding check after a restart, and a held restart's schedule.
    fn on_fail(&mut self, from: Status, held: bool, now: Instant) -> (Option<AlertKind>, Option<bool>) {
        self.consecutive_successes = 0;
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        let reached = self.consecutive_failures >= self.policy.failure_threshold;
        match from {
            // Outside its start period, the first failure after a restart
            // decides it.
            Status::Restarting => (Some(self.fail_after_restart(now, held)), Some(false)),
            Status::Healthy if reached => (Some(self.fail_fresh(now, held)), None),
            Status::Unhealthy if reached && !self.decided => (Some(self.fail_fresh(now, held)), None),
            // Already known to be down: nothing new to say, but a restart
            // held back by a dependency is scheduled now.
            Status::Unhealthy | Status::RestartFailed if reached && !held => {
                self.schedule(now);
                (None, None)
            }
            Status::Healthy | Status::Unhealthy | Status::RestartFailed | Status::Failed => (None, None),
        }
    }

    /// Schedules the next attempt if the service may be restarted and none
    /// is pending.
    fn schedule(&mut self, now: Instant) {
        if self.policy.restartable && self.restart_due.is_none() && self.attempts < self.policy.max_retries {
            self.restart_due = Some(now + self.policy.backoff(self.attempts + 1));
        }
    }

    /// A healthy (or never decided) service reached its failure threshold.
    fn fail_fresh(&mut self, now: Instant, held: bool) -> AlertKind {
        self.decided = true;
        self.healthy_since = None;
        if !self.policy.restartable {
            self.status = Status::Unhealthy;
            return AlertKind::Unhealthy;
        }
        if self.attempts >= self.policy.max_retries {
            // Flapping: every attempt was used within `reset_after`.
            self.status = Status::Failed;
            return AlertKind::MaxRetriesExceeded;
        }
        self.status = Status::Unhealthy;
        if !held {
            self.schedule(now);
        }
        AlertKind::Unhealthy
    }

    /// The check after a restart failed.
    fn fail_after_restart(&mut self, now: Instant, held: bool) -> AlertKind {
        self.starting_until = None;
        if self.attempts >= self.policy.max_retries {
            self.status = Status::Failed;
            return AlertKind::MaxRetriesExceeded;
        }
        self.status = Status::RestartFailed;
        if !held {
            self.schedule(now);
        }
        AlertKind::RestartFailed
    }

    /// The restart command itself failed (non-zero exit, killed at its
    /// timeout, or could not start): the attempt is decided now, without
    /// waiting `grace_period` for a check. Nothing happens outside a restart.
    pub fn on_restart_failed(&mut self, now: Instant) -> Step {
        let from = self.status;
        if from != Status::Restarting {
            return Step {
                from,
                to: from,
                changed: false,
                alert: None,
                restart_result: None,
                counted: false,
            };
        }
        let alert = Some(self.fail_after_restart(now, false));
        Step {
            from,
            to: self.status,
            changed: true,
            alert,
            restart_result: Some(false),
            counted: false,
        }
    }

    /// Starts the scheduled restart if it is due at `now`; returns its step.
    /// With `held` (a dependency is not healthy) the restart is dropped
    /// instead: the next failure with every dependency healthy schedules it
    /// again.
    pub fn start_restart(&mut self, now: Instant, held: bool) -> Option<Step> {
        let due = self.restart_due?;
        if now < due {
            return None;
        }
        self.restart_due = None;
        if held {
            return None;
        }
        let from = self.status;
        self.attempts += 1;
        self.status = Status::Restarting;
        Some(Step {
            from,
            to: Status::Restarting,
            changed: true,
            alert: None,
            restart_result: None,
            counted: false,
        })
    }
}

/// At most `max` restart commands at once, across every service: the rest
/// wait their turn, in order of arrival.
#[derive(Clone)]
pub struct RestartGate(std::sync::Arc<tokio::sync::Semaphore>);

/// A turn to run a restart command; the next waiter goes when it is dropped.
pub type Turn = tokio::sync::OwnedSemaphorePermit;

impl RestartGate {
    pub fn new(max: usize) -> RestartGate {
        RestartGate(std::sync::Arc::new(tokio::sync::Semaphore::new(max.max(1))))
    }

    /// A turn now, or `None` when `max` restarts are running.
    pub fn try_turn(&self) -> Option<Turn> {
        self.0.clone().try_acquire_owned().ok()
    }

    /// Waits for a turn.
    pub async fn turn(&self) -> Turn {
        // The semaphore is never closed.
        self.0
            .clone()
            .acquire_owned()
            .await
            .expect("the restart gate is never closed")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: Duration = Duration::from_secs(5);

    fn policy(restartable: bool) -> Policy {
        Policy {
            restartable,
            max_retries: 3,
            backoff_base: BASE,
            reset_after: Duration::from_secs(600),
            failure_threshold: 1,
            success_threshold: 1,
            start_period: Duration::ZERO,
        }
    }

    fn at(t0: Instant, secs: u64) -> Instant {
        t0 + Duration::from_secs(secs)
    }

    #[test]
    fn backoff_doubles_from_the_base() {
        let p = policy(true);
        let got: Vec<u64> = (1..=4).map(|n| p.backoff(n).as_secs()).collect();
        assert_eq!(got, [5, 10, 20, 40]);
        assert_eq!(p.backoff(40), BASE.saturating_mul(u32::MAX), "saturates, never wraps");
    }

    #[test]
    fn starts_unchecked_and_the_first_check_always_reports() {
        let t0 = Instant::now();
        let mut m = Machine::new(policy(true), Instant::now());
        assert_eq!(m.status(), Status::Unhealthy);
        let s = m.on_check(Check::Pass, t0);
        assert_eq!(
            (s.from, s.to, s.changed, s.alert),
            (Status::Unhealthy, Status::Healthy, true, None)
        );

        let mut m = Machine::new(policy(true), Instant::now());
        let s = m.on_check(Check::Fail, t0);
        assert_eq!(
            (s.to, s.changed, s.alert),
            (Status::Unhealthy, true, Some(AlertKind::Unhealthy))
        );
        assert_eq!(m.restart_due(), Some(at(t0, 5)));
    }

    #[test]
    fn healthy_to_unhealthy_schedules_the_first_restart() {
        let t0 = Instant::now();
        let mut m = Machine::new(policy(true), Instant::now());
        m.on_check(Check::Pass, t0);
        let s = m.on_check(Check::Fail, at(t0, 10));
        assert_eq!(
            (s.from, s.to, s.alert),
            (Status::Healthy, Status::Unhealthy, Some(AlertKind::Unhealthy))
        );
        assert_eq!(m.consecutive_failures(), 1);
        assert_eq!(m.restart_due(), Some(at(t0, 15)));
        // Further failures while waiting change nothing and raise nothing.
        let s = m.on_check(Check::Fail, at(t0, 12));
        assert_eq!((s.to, s.changed, s.alert), (Status::Unhealthy, false, None));
        assert_eq!(m.consecutive_failures(), 2);
        // Not yet due.
        assert_eq!(m.start_restart(at(t0, 14), false), None);
    }

    #[test]
    fn alert_only_services_stay_unhealthy() {
        let t0 = Instant::now();
        let mut m = Machine::new(policy(false), Instant::now());
        m.on_check(Check::Pass, t0);
        let s = m.on_check(Check::Fail, at(t0, 1));
        assert_eq!((s.to, s.alert), (Status::Unhealthy, Some(AlertKind::Unhealthy)));
        assert_eq!(m.restart_due(), None);
        for i in 2..100 {
            assert_eq!(m.on_check(Check::Fail, at(t0, i)).to, Status::Unhealthy);
        }
        assert_eq!(m.start_restart(at(t0, 1000), false), None);
        assert_eq!(m.on_check(Check::Pass, at(t0, 1001)).to, Status::Healthy);
    }

    #[test]
    fn unhealthy_recovers_without_a_restart() {
        let t0 = Instant::now();
        let mut m = Machine::new(policy(true), Instant::now());
        m.on_check(Check::Pass, t0);
        m.on_check(Check::Fail, at(t0, 1));
        let s = m.on_check(Check::Pass, at(t0, 2));
        assert_eq!(
            (s.from, s.to, s.restart_result),
            (Status::Unhealthy, Status::Healthy, None)
        );
        assert_eq!(m.restart_due(), None, "the pending restart is cancelled");
        assert_eq!(m.attempts(), 0);
    }

    #[test]
    fn restart_that_works() {
        let t0 = Instant::now();
        let mut m = Machine::new(policy(true), Instant::now());
        m.on_check(Check::Pass, t0);
        m.on_check(Check::Fail, at(t0, 10));
        let s = m.start_restart(at(t0, 15), false).unwrap();
        assert_eq!((s.from, s.to), (Status::Unhealthy, Status::Restarting));
        assert_eq!(m.attempts(), 1);
        let s = m.on_check(Check::Pass, at(t0, 20));
        assert_eq!(
            (s.from, s.to, s.restart_result),
            (Status::Restarting, Status::Healthy, Some(true))
        );
    }

    #[test]
    fn failed_restarts_back_off_then_give_up_after_max_retries() {
        let t0 = Instant::now();
        let mut m = Machine::new(policy(true), Instant::now());
        m.on_check(Check::Pass, t0);
        m.on_check(Check::Fail, t0);
        let mut now = t0;
        let mut waits = Vec::new();
        let mut last = None;
        for attempt in 1..=3 {
            let due = m.restart_due().expect("a restart is scheduled");
            waits.push(due.duration_since(now).as_secs());
            let s = m.start_restart(due, false).unwrap();
            assert_eq!(s.to, Status::Restarting);
            assert_eq!(m.attempts(), attempt);
            now = due + Duration::from_secs(1);
            last = Some(m.on_check(Check::Fail, now));
            let s = last.unwrap();
            assert_eq!(s.restart_result, Some(false));
            if attempt < 3 {
                assert_eq!(
                    (s.from, s.to, s.alert),
                    (
                        Status::Restarting,
                        Status::RestartFailed,
                        Some(AlertKind::RestartFailed)
                    )
                );
                // Checks failing while waiting change nothing.
                assert!(!m.on_check(Check::Fail, now).changed);
            }
        }
        assert_eq!(waits, [5, 10, 20]);
        let s = last.unwrap();
        assert_eq!((s.to, s.alert), (Status::Failed, Some(AlertKind::MaxRetriesExceeded)));
        assert_eq!(m.restart_due(), None, "no attempt after the last");
        let s = m.on_check(Check::Fail, now + Duration::from_secs(100));
        assert_eq!((s.to, s.changed, s.alert), (Status::Failed, false, None));
    }

    #[test]
    fn failed_service_that_comes_back_is_healthy_and_attempts_reset_after_a_while() {
        let t0 = Instant::now();
        let mut m = Machine::new(
            Policy {
                max_retries: 1,
                ..policy(true)
            },
            Instant::now(),
        );
        m.on_check(Check::Fail, t0);
        m.start_restart(at(t0, 5), false).unwrap();
        assert_eq!(m.on_check(Check::Fail, at(t0, 6)).to, Status::Failed);
        let s = m.on_check(Check::Pass, at(t0, 100));
        assert_eq!(
            (s.from, s.to, s.restart_result),
            (Status::Failed, Status::Healthy, None)
        );
        assert_eq!(m.attempts(), 1, "kept until the service has stayed up for reset_after");

        // Flapping within reset_after: no attempt is left, straight to failed.
        let s = m.on_check(Check::Fail, at(t0, 200));
        assert_eq!((s.to, s.alert), (Status::Failed, Some(AlertKind::MaxRetriesExceeded)));

        // Up for reset_after: attempts return to 0 and the next failure is
        // restarted again.
        m.on_check(Check::Pass, at(t0, 300));
        m.on_check(Check::Pass, at(t0, 899));
        assert_eq!(m.attempts(), 1);
        m.on_check(Check::Pass, at(t0, 900));
        assert_eq!(m.attempts(), 0);
        let s = m.on_check(Check::Fail, at(t0, 901));
        assert_eq!((s.to, s.alert), (Status::Unhealthy, Some(AlertKind::Unhealthy)));
        assert_eq!(m.restart_due(), Some(at(t0, 906)));
    }

    #[test]
    fn attempts_are_not_reset_by_a_short_recovery() {
        let t0 = Instant::now();
        let mut m = Machine::new(policy(true), Instant::now());
        m.on_check(Check::Fail, t0);
        m.start_restart(at(t0, 5), false).unwrap();
        m.on_check(Check::Pass, at(t0, 6));
        assert_eq!(m.attempts(), 1);
        // Down again a minute later: the second attempt waits 10 s, not 5.
        m.on_check(Check::Fail, at(t0, 66));
        assert_eq!(m.restart_due(), Some(at(t0, 76)));
    }

    #[test]
    fn every_status_has_a_distinct_name() {
        let names: std::collections::HashSet<_> = Status::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(names.len(), 5);
        assert_eq!(
            serde_json::to_string(&Status::RestartFailed).unwrap(),
            "\"restart_failed\""
        );
    }

    #[test]
    fn a_failed_restart_command_decides_the_attempt_at_once() {
        let mut m = Machine::new(
            Policy {
                restartable: true,
                max_retries: 2,
                backoff_base: BASE,
                reset_after: Duration::from_secs(600),
                failure_threshold: 1,
                success_threshold: 1,
                start_period: Duration::ZERO,
            },
            Instant::now(),
        );
        let t0 = Instant::now();
        m.on_check(Check::Fail, t0);
        assert!(m.start_restart(t0 + BASE, false).is_some());
        let s = m.on_restart_failed(t0 + BASE);
        assert_eq!(
            (s.from, s.to, s.restart_result),
            (Status::Restarting, Status::RestartFailed, Some(false))
        );
        assert_eq!(s.alert, Some(AlertKind::RestartFailed));
        assert_eq!(
            m.restart_due(),
            Some(t0 + BASE + BASE * 2),
            "the next attempt backs off"
        );
        assert!(m.start_restart(t0 + BASE * 3, false).is_some());
        let s = m.on_restart_failed(t0 + BASE * 3);
        assert_eq!(s.to, Status::Failed, "the last attempt gives up");
        let s = m.on_restart_failed(t0 + BASE * 4);
        assert!(
            !s.changed && s.restart_result.is_none(),
            "outside a restart nothing happens"
        );
    }

    fn judged(failure_threshold: u32, success_threshold: u32, start_period: u64) -> Policy {
        Policy {
            failure_threshold,
            success_threshold,
            start_period: Duration::from_secs(start_period),
            ..policy(true)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_reloaded_policy_keeps_the_counts_and_judges_them_from_the_next_check() {
        let mut m = Machine::new(judged(5, 1, 0), Instant::now());
        m.on_check(Check::Pass, Instant::now());
        for _ in 0..2 {
            tokio::time::advance(Duration::from_secs(10)).await;
            assert_eq!(m.on_check(Check::Fail, Instant::now()).to, Status::Healthy);
        }
        // The reload lowers the threshold to 3: the two failures stay, and
        // the third one is the verdict.
        m.set_policy(judged(3, 1, 0));
        assert_eq!((m.status(), m.consecutive_failures()), (Status::Healthy, 2));
        tokio::time::advance(Duration::from_secs(10)).await;
        let s = m.on_check(Check::Fail, Instant::now());
        assert_eq!((s.to, s.alert), (Status::Unhealthy, Some(AlertKind::Unhealthy)));
        assert!(m.restart_due().is_some(), "a restartable service gets its restart");
        // The next reload removes the restart command: the restart is off.
        m.set_policy(Policy {
            restartable: false,
            ..judged(3, 1, 0)
        });
        assert_eq!(m.restart_due(), None);
        assert_eq!(m.consecutive_failures(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_under_the_threshold_change_no_status_and_a_pass_resets_the_count() {
        let mut m = Machine::new(judged(3, 1, 0), Instant::now());
        assert!(!m.is_starting(), "no start period by default");
        m.on_check(Check::Pass, Instant::now());
        for n in 1..=2 {
            tokio::time::advance(Duration::from_secs(10)).await;
            let s = m.on_check(Check::Fail, Instant::now());
            assert_eq!(
                (s.to, s.changed, s.alert, s.counted),
                (Status::Healthy, false, None, true)
            );
            assert_eq!(m.consecutive_failures(), n);
            assert_eq!(m.restart_due(), None);
        }
        tokio::time::advance(Duration::from_secs(10)).await;
        m.on_check(Check::Pass, Instant::now());
        assert_eq!(m.consecutive_failures(), 0, "a pass resets the count");
        for _ in 0..2 {
            tokio::time::advance(Duration::from_secs(10)).await;
            assert_eq!(m.on_check(Check::Fail, Instant::now()).to, Status::Healthy);
        }
        tokio::time::advance(Duration::from_secs(10)).await;
        let now = Instant::now();
        let s = m.on_check(Check::Fail, now);
        assert_eq!(
            (s.from, s.to, s.alert),
            (Status::Healthy, Status::Unhealthy, Some(AlertKind::Unhealthy))
        );
        assert_eq!(
            m.restart_due(),
            Some(now + BASE),
            "the third failure schedules attempt 1"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_service_down_at_daemon_start_is_decided_by_the_threshold_too() {
        let mut m = Machine::new(judged(3, 1, 0), Instant::now());
        let s = m.on_check(Check::Fail, Instant::now());
        assert_eq!(
            (s.to, s.changed, s.alert),
            (Status::Unhealthy, true, None),
            "reported, not alerted"
        );
        m.on_check(Check::Fail, Instant::now());
        assert_eq!(m.restart_due(), None);
        let s = m.on_check(Check::Fail, Instant::now());
        assert_eq!(s.alert, Some(AlertKind::Unhealthy));
        assert!(m.restart_due().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn the_start_period_at_daemon_start_ignores_failures_and_ends_at_the_first_pass() {
        let t0 = Instant::now();
        let mut m = Machine::new(judged(3, 1, 60), t0);
        assert_eq!(m.starting_until(), Some(at(t0, 60)));
        for _ in 0..5 {
            tokio::time::advance(Duration::from_secs(10)).await;
            let s = m.on_check(Check::Fail, Instant::now());
            assert!(!s.counted);
            assert_eq!((s.to, s.alert), (Status::Unhealthy, None));
        }
        assert_eq!(m.consecutive_failures(), 0);
        assert!(m.is_starting());
        tokio::time::advance(Duration::from_secs(5)).await;
        let s = m.on_check(Check::Pass, Instant::now());
        assert_eq!(s.to, Status::Healthy);
        assert!(!m.is_starting(), "the first pass ends it");
        // Later failures count at once.
        assert!(m.on_check(Check::Fail, Instant::now()).counted);
    }

    #[tokio::test(start_paused = true)]
    async fn a_start_period_that_ends_without_a_pass_counts_as_one_failed_check() {
        let t0 = Instant::now();
        let mut m = Machine::new(judged(3, 1, 60), t0);
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(!m.on_check(Check::Fail, Instant::now()).counted);
        tokio::time::advance(Duration::from_secs(30)).await;
        let s = m.on_check(Check::Fail, Instant::now());
        assert!(s.counted, "the check at the period's end counts");
        assert!(!m.is_starting());
        assert_eq!((m.consecutive_failures(), s.alert), (1, None));
        m.on_check(Check::Fail, Instant::now());
        let s = m.on_check(Check::Fail, Instant::now());
        assert_eq!(s.alert, Some(AlertKind::Unhealthy));
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_restart_the_start_period_waits_for_a_loading_model() {
        let mut m = Machine::new(judged(3, 1, 0), Instant::now());
        m.on_check(Check::Pass, Instant::now());
        for _ in 0..3 {
            m.on_check(Check::Fail, Instant::now());
        }
        tokio::time::advance(BASE).await;
        assert!(m.start_restart(Instant::now(), false).is_some());
        // The policy's start period applies after every restart.
        m.policy.start_period = Duration::from_secs(120);
        m.on_restarted(Instant::now());
        assert!(m.is_starting());
        for _ in 0..11 {
            tokio::time::advance(Duration::from_secs(10)).await;
            let s = m.on_check(Check::Fail, Instant::now());
            assert_eq!((s.to, s.restart_result, s.counted), (Status::Restarting, None, false));
        }
        tokio::time::advance(Duration::from_secs(5)).await;
        let s = m.on_check(Check::Pass, Instant::now());
        assert_eq!((s.to, s.restart_result), (Status::Healthy, Some(true)));

        // Again, and this time the period runs out: that check decides.
        for _ in 0..3 {
            m.on_check(Check::Fail, Instant::now());
        }
        tokio::time::advance(BASE * 2).await;
        assert!(m.start_restart(Instant::now(), false).is_some());
        m.on_restarted(Instant::now());
        tokio::time::advance(Duration::from_secs(120)).await;
        let s = m.on_check(Check::Fail, Instant::now());
        assert_eq!(
            (s.to, s.restart_result, s.alert),
            (Status::RestartFailed, Some(false), Some(AlertKind::RestartFailed))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_success_threshold_needs_passes_in_a_row_and_a_pass_holds_the_restart() {
        let mut m = Machine::new(judged(1, 2, 0), Instant::now());
        let s = m.on_check(Check::Pass, Instant::now());
        assert_eq!(s.to, Status::Unhealthy, "one pass of two");
        m.on_check(Check::Pass, Instant::now());
        assert_eq!(m.status(), Status::Healthy);
        m.on_check(Check::Fail, Instant::now());
        assert_eq!(m.status(), Status::Unhealthy);
        assert!(m.restart_due().is_some());
        let s = m.on_check(Check::Pass, Instant::now());
        assert_eq!(s.to, Status::Unhealthy);
        assert_eq!(m.restart_due(), None, "a pass cancels the pending restart");
        m.on_check(Check::Fail, Instant::now());
        assert!(
            m.restart_due().is_some(),
            "a failure at the threshold schedules it again"
        );
        m.on_check(Check::Pass, Instant::now());
        m.on_check(Check::Pass, Instant::now());
        assert_eq!(m.status(), Status::Healthy);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dependency_that_is_down_holds_every_restart() {
        let mut m = Machine::new(judged(3, 1, 0), Instant::now());
        m.on_check(Check::Pass, Instant::now());
        for _ in 0..10 {
            tokio::time::advance(Duration::from_secs(10)).await;
            m.on_check(Check::Held, Instant::now());
        }
        assert_eq!(m.status(), Status::Unhealthy, "the status is honest");
        assert_eq!(m.restart_due(), None, "nothing is restarted");
        assert_eq!(m.attempts(), 0);
        // The dependency is back and the service still fails: now it is.
        let now = Instant::now();
        m.on_check(Check::Fail, now);
        assert_eq!(m.restart_due(), Some(now + BASE));
        // A dependency that goes down before the restart is due drops it.
        tokio::time::advance(BASE).await;
        assert_eq!(m.start_restart(Instant::now(), true), None);
        assert_eq!((m.restart_due(), m.attempts()), (None, 0));
        m.on_check(Check::Fail, Instant::now());
        tokio::time::advance(BASE).await;
        assert!(m.start_restart(Instant::now(), false).is_some());
        assert_eq!(m.attempts(), 1);
        // A failed deciding check while the dependency is down waits too.
        let s = m.on_check(Check::Held, Instant::now());
        assert_eq!((s.to, m.restart_due()), (Status::RestartFailed, None));
    }

    #[tokio::test(start_paused = true)]
    async fn the_gate_lets_one_restart_run_at_a_time() {
        async fn restarts(max: usize) -> Vec<(Duration, Duration)> {
            let gate = RestartGate::new(max);
            let t0 = Instant::now();
            let tasks: Vec<_> = (0..3)
                .map(|_| {
                    let gate = gate.clone();
                    tokio::spawn(async move {
                        let _turn = match gate.try_turn() {
                            Some(t) => t,
                            None => gate.turn().await,
                        };
                        let start = t0.elapsed();
                        tokio::time::sleep(Duration::from_secs(10)).await;
                        (start, t0.elapsed())
                    })
                })
                .collect();
            let mut spans = Vec::new();
            for t in tasks {
                spans.push(t.await.unwrap());
            }
            spans.sort();
            spans
        }
        let one = restarts(1).await;
        for pair in one.windows(2) {
            assert!(pair[1].0 >= pair[0].1, "restarts overlap: {one:?}");
        }
        assert_eq!(one.last().unwrap().1, Duration::from_secs(30));
        let two = restarts(2).await;
        assert_eq!(two[1].0, Duration::ZERO, "two run together with max 2");
        assert_eq!(two[2].0, Duration::from_secs(10));
    }
}
