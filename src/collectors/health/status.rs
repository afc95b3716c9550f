//! The status text a service shows (`/api/system/health`, the
//! `service_status` event, the log): a function of the step the policy
//! took and what the task knows, nothing else.

use crate::restart::{Status, Step};

/// What the text is made of, besides the step.
pub(super) struct Facts<'a> {
    /// What the check that led to the step found wrong ("" when it passed).
    pub error: &'a str,
    /// Why the last restart command failed ("" when it did not).
    pub restart_error: &'a str,
    pub attempts: u32,
    pub max_retries: u32,
    /// Inside a start period.
    pub starting: bool,
}

/// The human message for a check's outcome.
pub(super) fn status_text(step: &Step, f: &Facts) -> String {
    let error = f.error;
    let restart_note = if f.restart_error.is_empty() {
        String::new()
    } else {
        format!(" ({})", f.restart_error)
    };
    let (attempts, max) = (f.attempts, f.max_retries);
    match (step.to, step.restart_result) {
        (Status::Healthy, Some(true)) => format!("restart attempt {attempts} brought the service back"),
        (Status::Healthy, _) if error.is_empty() => "check passed".into(),
        (Status::Healthy, _) => error.to_string(),
        (Status::RestartFailed, _) => {
            format!("restart attempt {attempts} of {max} did not bring the service back: {error}{restart_note}")
        }
        (Status::Failed, _) => {
            format!("gave up after {attempts} restart attempts; manual intervention needed: {error}{restart_note}")
        }
        (Status::Unhealthy | Status::Restarting, _) if f.starting && !error.is_empty() => format!("starting: {error}"),
        (Status::Unhealthy | Status::Restarting, _) => error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(to: Status, restart_result: Option<bool>) -> Step {
        Step {
            from: Status::Unhealthy,
            to,
            changed: true,
            alert: None,
            restart_result,
            counted: true,
        }
    }

    fn facts<'a>(error: &'a str, restart_error: &'a str, starting: bool) -> Facts<'a> {
        Facts {
            error,
            restart_error,
            attempts: 2,
            max_retries: 3,
            starting,
        }
    }

    #[test]
    fn healthy_says_the_restart_that_brought_it_back_or_that_the_check_passed() {
        let f = facts("", "", false);
        assert_eq!(
            status_text(&step(Status::Healthy, Some(true)), &f),
            "restart attempt 2 brought the service back"
        );
        assert_eq!(status_text(&step(Status::Healthy, None), &f), "check passed");
        // Live but not ready: the reason stays visible.
        let f = facts("live but not ready: model m loading", "", false);
        assert_eq!(
            status_text(&step(Status::Healthy, None), &f),
            "live but not ready: model m loading"
        );
    }

    #[test]
    fn failures_name_the_attempts_and_the_restart_commands_own_error() {
        let f = facts("connection refused", "exit status 1", false);
        assert_eq!(
            status_text(&step(Status::RestartFailed, Some(false)), &f),
            "restart attempt 2 of 3 did not bring the service back: connection refused (exit status 1)"
        );
        assert_eq!(
            status_text(&step(Status::Failed, None), &facts("connection refused", "", false)),
            "gave up after 2 restart attempts; manual intervention needed: connection refused"
        );
    }

    #[test]
    fn a_failure_inside_the_start_period_says_starting() {
        assert_eq!(
            status_text(&step(Status::Unhealthy, None), &facts("timeout", "", true)),
            "starting: timeout"
        );
        assert_eq!(
            status_text(&step(Status::Restarting, None), &facts("timeout", "", false)),
            "timeout"
        );
    }
}
