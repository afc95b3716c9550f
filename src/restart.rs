//! The restart policy of one monitored service: statuses, exponential
//! backoff, giving up, and forgetting old attempts. Pure logic: time comes
//! in as an argument, so every transition is unit-tested without sleeping.
//!
//! ```text
//!            check fails                   backoff(n) elapsed
//! healthy ───────────────▶ unhealthy ───────────────────────▶ restarting
//!    ▲                        │  (no restart command: stays)      │
//!    │ any check passes       │                                   │ deciding check
//!    └────────────────────────┴──── restart_failed ◀──── fails ───┤
//!                                   │ n == max_retries             │ passes ──▶ healthy
//!                                   ▼
//!                                 failed (still checked; a passing check ──▶ healthy)
//! ```
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

/// How a service is restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// False for alert-only services (no restart command).
    pub restartable: bool,
    pub max_retries: u32,
    pub backoff_base: Duration,
    pub reset_after: Duration,
}

impl Policy {
    /// Wait before attempt `n` (1-based): `backoff_base * 2^(n-1)`.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.saturating_sub(1)).unwrap_or(u32::MAX);
        self.backoff_base.saturating_mul(factor)
    }
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
}

/// One service's restart state.
#[derive(Debug, Clone)]
pub struct Machine {
    policy: Policy,
    status: Status,
    checked: bool,
    attempts: u32,
    consecutive_failures: u32,
    healthy_since: Option<Instant>,
    restart_due: Option<Instant>,
}

impl Machine {
    /// A service not yet checked counts as `unhealthy` (not proven up), but
    /// raises nothing until its first check.
    pub fn new(policy: Policy) -> Machine {
        Machine {
            policy,
            status: Status::Unhealthy,
            checked: false,
            attempts: 0,
            consecutive_failures: 0,
            healthy_since: None,
            restart_due: None,
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

    /// Feeds the result of one check taken at `now`.
    pub fn on_check(&mut self, ok: bool, now: Instant) -> Step {
        let from = self.status;
        let first = !self.checked;
        self.checked = true;
        let mut alert = None;
        let mut restart_result = None;
        if ok {
            self.consecutive_failures = 0;
            self.restart_due = None;
            if from == Status::Restarting {
                restart_result = Some(true);
            }
            if from != Status::Healthy {
                self.status = Status::Healthy;
                self.healthy_since = Some(now);
            }
            let since = *self.healthy_since.get_or_insert(now);
            if now.saturating_duration_since(since) >= self.policy.reset_after {
                self.attempts = 0;
            }
        } else {
            self.consecutive_failures += 1;
            self.healthy_since = None;
            match from {
                Status::Healthy => alert = Some(self.fail_fresh(now)),
                Status::Unhealthy if first => alert = Some(self.fail_fresh(now)),
                Status::Restarting => {
                    restart_result = Some(false);
                    alert = Some(self.fail_after_restart(now));
                }
                // Already known to be down: nothing new to say.
                Status::Unhealthy | Status::RestartFailed | Status::Failed => {}
            }
        }
        Step {
            from,
            to: self.status,
            changed: first || from != self.status,
            alert,
            restart_result,
        }
    }

    /// A healthy (or never checked) service failed.
    fn fail_fresh(&mut self, now: Instant) -> AlertKind {
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
        self.restart_due = Some(now + self.policy.backoff(self.attempts + 1));
        AlertKind::Unhealthy
    }

    /// The check after a restart failed.
    fn fail_after_restart(&mut self, now: Instant) -> AlertKind {
        if self.attempts >= self.policy.max_retries {
            self.status = Status::Failed;
            return AlertKind::MaxRetriesExceeded;
        }
        self.status = Status::RestartFailed;
        self.restart_due = Some(now + self.policy.backoff(self.attempts + 1));
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
            };
        }
        let alert = Some(self.fail_after_restart(now));
        Step {
            from,
            to: self.status,
            changed: true,
            alert,
            restart_result: Some(false),
        }
    }

    /// Starts the scheduled restart if it is due at `now`; returns its
    /// attempt number (1-based).
    pub fn start_restart(&mut self, now: Instant) -> Option<Step> {
        let due = self.restart_due?;
        if now < due {
            return None;
        }
        let from = self.status;
        self.restart_due = None;
        self.attempts += 1;
        self.status = Status::Restarting;
        Some(Step {
            from,
            to: Status::Restarting,
            changed: true,
            alert: None,
            restart_result: None,
        })
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
        let mut m = Machine::new(policy(true));
        assert_eq!(m.status(), Status::Unhealthy);
        let s = m.on_check(true, t0);
        assert_eq!(
            (s.from, s.to, s.changed, s.alert),
            (Status::Unhealthy, Status::Healthy, true, None)
        );

        let mut m = Machine::new(policy(true));
        let s = m.on_check(false, t0);
        assert_eq!(
            (s.to, s.changed, s.alert),
            (Status::Unhealthy, true, Some(AlertKind::Unhealthy))
        );
        assert_eq!(m.restart_due(), Some(at(t0, 5)));
    }

    #[test]
    fn healthy_to_unhealthy_schedules_the_first_restart() {
        let t0 = Instant::now();
        let mut m = Machine::new(policy(true));
        m.on_check(true, t0);
        let s = m.on_check(false, at(t0, 10));
        assert_eq!(
            (s.from, s.to, s.alert),
            (Status::Healthy, Status::Unhealthy, Some(AlertKind::Unhealthy))
        );
        assert_eq!(m.consecutive_failures(), 1);
        assert_eq!(m.restart_due(), Some(at(t0, 15)));
        // Further failures while waiting change nothing and raise nothing.
        let s = m.on_check(false, at(t0, 12));
        assert_eq!((s.to, s.changed, s.alert), (Status::Unhealthy, false, None));
        assert_eq!(m.consecutive_failures(), 2);
        // Not yet due.
        assert_eq!(m.start_restart(at(t0, 14)), None);
    }

    #[test]
    fn alert_only_services_stay_unhealthy() {
        let t0 = Instant::now();
        let mut m = Machine::new(policy(false));
        m.on_check(true, t0);
        let s = m.on_check(false, at(t0, 1));
        assert_eq!((s.to, s.alert), (Status::Unhealthy, Some(AlertKind::Unhealthy)));
        assert_eq!(m.restart_due(), None);
        for i in 2..100 {
            assert_eq!(m.on_check(false, at(t0, i)).to, Status::Unhealthy);
        }
        assert_eq!(m.start_restart(at(t0, 1000)), None);
        assert_eq!(m.on_check(true, at(t0, 1001)).to, Status::Healthy);
    }

    #[test]
    fn unhealthy_recovers_without_a_restart() {
        let t0 = Instant::now();
        let mut m = Machine::new(policy(true));
        m.on_check(true, t0);
        m.on_check(false, at(t0, 1));
        let s = m.on_check(true, at(t0, 2));
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
        let mut m = Machine::new(policy(true));
        m.on_check(true, t0);
        m.on_check(false, at(t0, 10));
        let s = m.start_restart(at(t0, 15)).unwrap();
        assert_eq!((s.from, s.to), (Status::Unhealthy, Status::Restarting));
        assert_eq!(m.attempts(), 1);
        let s = m.on_check(true, at(t0, 20));
        assert_eq!(
            (s.from, s.to, s.restart_result),
            (Status::Restarting, Status::Healthy, Some(true))
        );
    }

    #[test]
    fn failed_restarts_back_off_then_give_up_after_max_retries() {
        let t0 = Instant::now();
        let mut m = Machine::new(policy(true));
        m.on_check(true, t0);
        m.on_check(false, t0);
        let mut now = t0;
        let mut waits = Vec::new();
        let mut last = None;
        for attempt in 1..=3 {
            let due = m.restart_due().expect("a restart is scheduled");
            waits.push(due.duration_since(now).as_secs());
            let s = m.start_restart(due).unwrap();
            assert_eq!(s.to, Status::Restarting);
            assert_eq!(m.attempts(), attempt);
            now = due + Duration::from_secs(1);
            last = Some(m.on_check(false, now));
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
                assert!(!m.on_check(false, now).changed);
            }
        }
        assert_eq!(waits, [5, 10, 20]);
        let s = last.unwrap();
        assert_eq!((s.to, s.alert), (Status::Failed, Some(AlertKind::MaxRetriesExceeded)));
        assert_eq!(m.restart_due(), None, "no attempt after the last");
        let s = m.on_check(false, now + Duration::from_secs(100));
        assert_eq!((s.to, s.changed, s.alert), (Status::Failed, false, None));
    }

    #[test]
    fn failed_service_that_comes_back_is_healthy_and_attempts_reset_after_a_while() {
        let t0 = Instant::now();
        let mut m = Machine::new(Policy {
            max_retries: 1,
            ..policy(true)
        });
        m.on_check(false, t0);
        m.start_restart(at(t0, 5)).unwrap();
        assert_eq!(m.on_check(false, at(t0, 6)).to, Status::Failed);
        let s = m.on_check(true, at(t0, 100));
        assert_eq!(
            (s.from, s.to, s.restart_result),
            (Status::Failed, Status::Healthy, None)
        );
        assert_eq!(m.attempts(), 1, "kept until the service has stayed up for reset_after");

        // Flapping within reset_after: no attempt is left, straight to failed.
        let s = m.on_check(false, at(t0, 200));
        assert_eq!((s.to, s.alert), (Status::Failed, Some(AlertKind::MaxRetriesExceeded)));

        // Up for reset_after: attempts return to 0 and the next failure is
        // restarted again.
        m.on_check(true, at(t0, 300));
        m.on_check(true, at(t0, 899));
        assert_eq!(m.attempts(), 1);
        m.on_check(true, at(t0, 900));
        assert_eq!(m.attempts(), 0);
        let s = m.on_check(false, at(t0, 901));
        assert_eq!((s.to, s.alert), (Status::Unhealthy, Some(AlertKind::Unhealthy)));
        assert_eq!(m.restart_due(), Some(at(t0, 906)));
    }

    #[test]
    fn attempts_are_not_reset_by_a_short_recovery() {
        let t0 = Instant::now();
        let mut m = Machine::new(policy(true));
        m.on_check(false, t0);
        m.start_restart(at(t0, 5)).unwrap();
        m.on_check(true, at(t0, 6));
        assert_eq!(m.attempts(), 1);
        // Down again a minute later: the second attempt waits 10 s, not 5.
        m.on_check(false, at(t0, 66));
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
        let mut m = Machine::new(Policy {
            restartable: true,
            max_retries: 2,
            backoff_base: BASE,
            reset_after: Duration::from_secs(600),
        });
        let t0 = Instant::now();
        m.on_check(false, t0);
        assert!(m.start_restart(t0 + BASE).is_some());
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
        assert!(m.start_restart(t0 + BASE * 3).is_some());
        let s = m.on_restart_failed(t0 + BASE * 3);
        assert_eq!(s.to, Status::Failed, "the last attempt gives up");
        let s = m.on_restart_failed(t0 + BASE * 4);
        assert!(
            !s.changed && s.restart_result.is_none(),
            "outside a restart nothing happens"
        );
    }
}
