//! The supervisor: one task per configured service and, when it follows
//! the live config, the loop that starts, changes and stops those tasks as
//! reloads add, change and remove services.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::task::{Pending, ServiceTask};
use super::{HealthError, Service, Sinks};
use crate::config::{LiveConfig, ServiceConfig};
use crate::restart::RestartGate;
use crate::state::Readiness;

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

impl HealthMonitor {
    pub fn new(health: &crate::config::HealthConfig, sinks: Sinks) -> Result<HealthMonitor, HealthError> {
        let services = health
            .services
            .iter()
            .map(|s| Service::new(s, sinks.limits))
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
                None => match Service::new(s, sinks.limits) {
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
