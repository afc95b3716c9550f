//! The queue collector: polls every configured queue's depth, its DLQ's
//! depth and the age of the oldest DLQ entry (see [`crate::dlq`]), and
//! raises the "DLQ jobs present" alert when a DLQ goes from empty to
//! non-empty. While Redis is down the last values stay and the runner sets
//! `inferwatch_collector_success{collector="queues"}` to 0.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::{CollectError, Collector};
use crate::dlq::Queues;
use crate::events::{EventBus, Severity};

/// The registry entry.
pub const ENTRY: super::Entry = super::Entry {
    name: "queues",
    about: "Redis queue and DLQ depths (queues)",
    enabled: enabled,
    build: build,
};

fn enabled(c: &crate::config::Config) -> bool {
    c.queues.enabled
}

fn build(sh: &super::Shared) -> Result<super::Built, super::StartError> {
    match &sh.queues {
        Some(queues) => super::Built::polled(QueueCollector::new(queues.clone(), sh.events.clone())),
        None => Ok(super::Built::Nothing),
    }
}

pub struct QueueCollector {
    queues: Arc<Queues>,
    events: EventBus,
    /// DLQ depth at the last poll, per queue.
    previous: HashMap<String, u64>,
}

impl QueueCollector {
    pub fn new(queues: Arc<Queues>, events: EventBus) -> QueueCollector {
        QueueCollector {
            queues,
            events,
            previous: HashMap::new(),
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
