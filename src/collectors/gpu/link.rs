//! Where the collector stands with NVML: mock, up, or down and retried
//! with backoff; and the init failures counted by reason.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use tokio::time::Instant;

use crate::nvml::{InitReason, NvmlHandle};

/// The retry schedule of an NVML that is down: 1 s, doubling to a
/// 5-minute cap. Pure: time comes in as an argument.
#[derive(Debug, Clone)]
pub struct Retry {
    /// The init reason of the last failure.
    pub reason: InitReason,
    /// The last failure's error, for the log and the API.
    pub message: String,
    /// When NVML went down.
    pub since: Instant,
    next_try: Instant,
    backoff: Duration,
}

impl Retry {
    pub const FIRST: Duration = Duration::from_secs(1);
    pub const CAP: Duration = Duration::from_secs(300);

    pub fn new(reason: InitReason, message: String, now: Instant) -> Retry {
        Retry {
            reason,
            message,
            since: now,
            next_try: now + Self::FIRST,
            backoff: Self::FIRST,
        }
    }

    /// Whether the next try is due at `now`.
    pub fn due(&self, now: Instant) -> bool {
        now >= self.next_try
    }

    /// The try at `now` failed too: wait twice as long, up to the cap.
    pub fn failed_again(&mut self, reason: InitReason, message: String, now: Instant) {
        self.backoff = (self.backoff * 2).min(Self::CAP);
        self.next_try = now + self.backoff;
        self.reason = reason;
        self.message = message;
    }

    /// The wait before the next try.
    pub fn backoff(&self) -> Duration {
        self.backoff
    }
}

/// Where the collector stands with NVML.
pub(super) enum Link {
    /// `gpu.mode: mock`, or `auto` on a machine with no NVML library.
    Mock,
    Up(NvmlHandle),
    /// A failing collector: the library is missing where the config says it
    /// is, does not load, or `nvmlInit` fails; retried with backoff.
    Down(Retry),
}

/// `inferwatch_nvml_init_errors_total` by reason, and which reasons were
/// logged since NVML was last up (each is logged once until then).
pub(super) struct InitFailures {
    pub(super) counts: BTreeMap<InitReason, u64>,
    logged: HashSet<InitReason>,
}

impl InitFailures {
    pub(super) fn new() -> InitFailures {
        InitFailures {
            counts: InitReason::ALL.iter().map(|r| (*r, 0)).collect(),
            logged: HashSet::new(),
        }
    }

    /// Counts a failed init (or a driver lost mid-run) and logs it once per
    /// reason until NVML is up again.
    pub(super) fn failed(&mut self, reason: InitReason, message: &str, library: &str) {
        *self.counts.entry(reason).or_default() += 1;
        if self.logged.insert(reason) {
            tracing::error!(reason = reason.as_str(), error = %message, library = %library, "NVML is down: the GPU collector is failing and retries with backoff (1 s doubling to 5 min).");
        }
    }

    /// NVML is up: the next failure of any reason is logged again.
    pub(super) fn up(&mut self) {
        self.logged.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn retries_start_at_one_second_and_double_to_five_minutes() {
        let mut r = Retry::new(InitReason::DriverNotLoaded, "x".into(), Instant::now());
        let mut waits = vec![r.backoff().as_secs()];
        for _ in 0..11 {
            tokio::time::advance(r.backoff()).await;
            assert!(r.due(Instant::now()));
            r.failed_again(InitReason::LibRmVersionMismatch, "y".into(), Instant::now());
            assert!(!r.due(Instant::now()));
            waits.push(r.backoff().as_secs());
        }
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        assert_eq!(
            r.reason,
            InitReason::LibRmVersionMismatch,
            "the last reason is reported"
        );
    }
}
