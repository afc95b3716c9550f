//! The queue collector: polls every configured queue's depth, its DLQ's
//! depth and the age of the oldest DLQ entry (see [`crate::dlq`]), and
//! raises the "DLQ jobs present" alert when a DLQ goes from empty to
//! non-empty. While Redis is down the last values stay and the runner sets
//! `inferwatch_collector_success{collector="queues"}` to 0.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::{CollectError, Collector};
use prometheus::GaugeVec;

use crate::dlq::{QueueDepth, Queues};
use crate::events::{EventBus, Severity};
use crate::metrics::{family, Metrics};

/// The registry entry.
pub const ENTRY: super::Entry = super::Entry {
    name: "queues",
    about: "Redis queue and DLQ depths (queues)",
    enabled,
    build,
};

fn enabled(c: &crate::config::Config) -> bool {
    c.queues.enabled
}

fn build(sh: &super::Shared) -> Result<super::Built, super::StartError> {
    match &sh.queues {
        Some(queues) => super::Built::polled(QueueCollector::new(queues.clone(), sh.events.clone(), &sh.metrics)),
        None => Ok(super::Built::Nothing),
    }
}

/// The depth families, set from each poll.
struct DepthMetrics {
    queue: GaugeVec,
    dlq: GaugeVec,
    oldest_age: GaugeVec,
}

impl DepthMetrics {
    fn register(registry: &Metrics) -> DepthMetrics {
        let gauge = |name: &str, help: &str| family::<GaugeVec>(name, help, &["queue"]);
        let m = DepthMetrics {
            queue: gauge(
                "job_queue_depth",
                "Jobs waiting in the queue (LLEN), from the last poll.",
            ),
            dlq: gauge(
                "dlq_depth",
                "Jobs in the queue's dead-letter queue, from the last poll.",
            ),
            oldest_age: gauge(
                "dlq_oldest_job_age_seconds",
                "Age of the oldest DLQ entry, from its first_failed_at; 0 when the DLQ is empty.",
            ),
        };
        registry.add(&m.queue);
        registry.add(&m.dlq);
        registry.add(&m.oldest_age);
        m
    }

    fn set(&self, d: &QueueDepth) {
        let label = [d.queue.as_str()];
        self.queue.with_label_values(&label).set(d.depth as f64);
        self.dlq.with_label_values(&label).set(d.dlq_depth as f64);
        // An unreadable oldest entry keeps the previous age.
        if d.dlq_depth == 0 {
            self.oldest_age.with_label_values(&label).set(0.0);
        } else if let Some(age) = d.oldest_age_seconds {
            self.oldest_age.with_label_values(&label).set(age);
        }
    }
}

pub struct QueueCollector {
    queues: Arc<Queues>,
    events: EventBus,
    /// DLQ depth at the last poll, per queue.
    previous: HashMap<String, u64>,
    metrics: DepthMetrics,
}

impl QueueCollector {
    pub fn new(queues: Arc<Queues>, events: EventBus, registry: &Metrics) -> QueueCollector {
        QueueCollector {
            queues,
            events,
            previous: HashMap::new(),
            metrics: DepthMetrics::register(registry),
        }
    }
}

impl Collector for QueueCollector {
    fn name(&self) -> &'static str {
        "queues"
    }

    fn interval(&self) -> Duration {
        self.queues.config.poll_interval
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(5).min(self.queues.config.poll_interval.max(Duration::from_secs(1)))
    }

    async fn collect(&mut self) -> Result<(), CollectError> {
        let depths = self
            .queues
            .poll()
            .await
            .map_err(|e| CollectError::Failed(e.to_string()))?;
        for d in depths {
            self.metrics.set(&d);
            let was = self.previous.insert(d.queue.clone(), d.dlq_depth);
            if d.dlq_depth > 0 && was.unwrap_or(0) == 0 {
                self.events.alert(
                    Severity::Warning,
                    "dlq_jobs_present",
                    format!(
                        "DLQ {} holds {} job(s) that failed all their retries",
                        self.queues.dlq_key(&d.queue),
                        d.dlq_depth
                    ),
                );
            }
        }
        Ok(())
    }
}
