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
//!
//! By idea: `check` (one check of each kind), `task` (one service's loop),
//! `supervisor` (the tasks, and reloads), `metrics` (the families),
//! `status` (the status text), `command` (the restart command) and
//! `gpu_memory` (what a restart gave back).

mod check;
mod command;
mod gpu_memory;
mod metrics;
mod status;
mod supervisor;
mod task;

use std::sync::Arc;

use super::unix_now;
use crate::config::ServiceConfig;
use crate::events::EventBus;
use crate::metrics::Metrics;
use crate::restart::Policy;
use crate::state::HealthState;
use check::{Checker, Progress};
pub use metrics::HealthMetrics;
pub use supervisor::HealthMonitor;

/// Why a health monitor could not be built.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    /// The check's client refused a URL of the service (`field`: `url` or
    /// `metrics_url`).
    #[error("invalid URL for service {service} ({field}: {url}): {reason}")]
    Url {
        service: String,
        field: &'static str,
        url: String,
        reason: String,
    },
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
        limits: config.health.read_limits(),
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
    /// What a check may read of what a service sends (kept until restart).
    pub limits: crate::config::ReadLimits,
}

/// One configured service, ready to be checked.
struct Service {
    config: ServiceConfig,
    checker: Checker,
    progress: Option<Progress>,
}

impl Service {
    fn new(config: &ServiceConfig, limits: crate::config::ReadLimits) -> Result<Service, HealthError> {
        Ok(Service {
            config: config.clone(),
            checker: Checker::new(config, limits.body)?,
            progress: Progress::new(config, limits.page)?,
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

/// Checks that every service of `health` can be built: each URL parsed by
/// the client that will use it, as startup does. A reload and
/// `check-config` run it too ([`crate::check_config`]); the error names
/// the key.
pub fn check_services(health: &crate::config::HealthConfig) -> Result<(), crate::config::ConfigError> {
    for (i, s) in health.services.iter().enumerate() {
        if let Err(HealthError::Url { field, url, reason, .. }) = Service::new(s, health.read_limits()) {
            return Err(crate::config::invalid(
                &format!("health.services[{i}].{field}"),
                &url,
                "not a valid URL",
                &format!("a URL its client accepts ({reason})"),
            ));
        }
    }
    Ok(())
}
