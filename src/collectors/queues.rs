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

use crate::dlq::{QueueDepth, Queues, Watched};
use crate::events::{EventBus, Severity};
use crate::metrics::{family, Metrics};

/// The registry entry.
pub const ENTRY: super::Entry = super::Entry {
    name: "queues",
    about: "Redis queue and DLQ depths (queues)",
    enabled,
    switch: Some(|c, on| c.queues.enabled = on),
    build,
};

fn enabled(c: &crate::config::Config) -> bool {
    c.queues.enabled
}

fn build(sh: &super::Shared) -> Result<super::Built, super::StartError> {
    match &sh.queues {
        Some(queues) => {
            // The daemon's own consumer group, then the configured ones.
            let config = sh.config.get();
            let stream = &config.pipeline.stream;
            let mut watched: Vec<(String, String)> = Vec::new();
            if stream.enabled {
                watched.push((stream.key.clone(), stream.group.clone()));
            }
            for w in &config.queues.streams {
                if !watched.contains(&(w.stream.clone(), w.group.clone())) {
                    watched.push((w.stream.clone(), w.group.clone()));
                }
            }
            super::Built::polled(QueueCollector::new(
                (queues.clone(), sh.watched.clone()),
                sh.events.clone(),
                &sh.metrics,
                watched,
            ))
        }
        None => Ok(super::Built::Nothing),
    }
}

/// The depth families, set from each poll.
struct DepthMetrics {
    queue: GaugeVec,
    dlq: GaugeVec,
    oldest_age: GaugeVec,
    wait: GaugeVec,
    /// Registered at the first poll that reads jobs in flight (a
    /// processing list or a job framework's own), so that a queue section
    /// without any has no such families, and one a reload adds gets them.
    in_flight: InFlight,
}

struct InFlight {
    active: GaugeVec,
    stuck: GaugeVec,
    registry: prometheus::Registry,
    registered: std::sync::Once,
}

impl InFlight {
    fn register(&self) {
        self.registered.call_once(|| {
            for g in [&self.active, &self.stuck] {
                self.registry
                    .register(Box::new(g.clone()))
                    .expect("metric names are unique");
            }
        });
    }
}

impl DepthMetrics {
    fn register(registry: &Metrics, processing: bool) -> DepthMetrics {
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
            wait: gauge(
                "job_queue_oldest_age_seconds",
                "How long the job at the queue's consumer end has waited: from its enqueued_at, created_at or timestamp field, else from when the daemon first saw it (a lower bound, within one poll); 0 when the queue is empty.",
            ),
            in_flight: InFlight {
                registry: registry.registry(),
                registered: std::sync::Once::new(),
                active: gauge(
                    "job_queue_active",
                    "Jobs in the queue's processing list (LLEN of <queue><processing_suffix>), from the last poll.",
                ),
                stuck: gauge(
                    "job_queue_stuck",
                    "Jobs in the processing list for longer than queues.processing_stuck_after (judged from when the daemon first saw them).",
                ),
            },
        };
        if processing {
            m.in_flight.register();
        }
        registry.add(&m.queue);
        registry.add(&m.dlq);
        registry.add(&m.oldest_age);
        registry.add(&m.wait);
        m
    }

    /// Drops the series of a queue a reload removed.
    fn remove(&self, queue: &str) {
        let f = &self.in_flight;
        for g in [
            &self.queue,
            &self.dlq,
            &self.oldest_age,
            &self.wait,
            &f.active,
            &f.stuck,
        ] {
            let _ = g.remove_label_values(&[queue]);
        }
    }

    fn set(&self, d: &QueueDepth) {
        let label = [d.queue.as_str()];
        self.queue.with_label_values(&label).set(d.depth as f64);
        self.dlq.with_label_values(&label).set(d.dlq_depth as f64);
        self.wait.with_label_values(&label).set(d.wait_seconds);
        // An unreadable oldest entry keeps the previous age.
        if d.dlq_depth == 0 {
            self.oldest_age.with_label_values(&label).set(0.0);
        } else if let Some(age) = d.oldest_age_seconds {
            self.oldest_age.with_label_values(&label).set(age);
        }
        // An unreadable processing list keeps the previous values.
        if let Some(a) = &d.active {
            let f = &self.in_flight;
            f.register();
            f.active.with_label_values(&label).set(a.active as f64);
            f.stuck.with_label_values(&label).set(a.stuck as f64);
        }
    }
}

/// The watched streams' families.
struct StreamMetrics {
    watched: Vec<(String, String)>,
    length: GaugeVec,
    lag: GaugeVec,
    pending: GaugeVec,
    /// Keys of another type, logged once each.
    wrong_type: std::collections::HashSet<String>,
}

impl StreamMetrics {
    fn register(registry: &Metrics, watched: Vec<(String, String)>) -> StreamMetrics {
        let sg = &["stream", "group"];
        let m = StreamMetrics {
            watched,
            length: family::<GaugeVec>("redis_stream_length", "Entries in a watched Redis stream (XLEN); 0 when it does not exist.", &["stream"]),
            lag: family::<GaugeVec>(
                "redis_stream_group_lag",
                "Entries of the stream not yet delivered to the consumer group (XINFO GROUPS lag; Redis 7 and later, and only where Redis can tell).",
                sg,
            ),
            pending: family::<GaugeVec>(
                "redis_stream_group_pending",
                "Entries delivered to the consumer group and not acknowledged yet (XINFO GROUPS pending).",
                sg,
            ),
            wrong_type: Default::default(),
        };
        registry.add(&m.length);
        registry.add(&m.lag);
        registry.add(&m.pending);
        m
    }

    fn set(&mut self, r: &crate::dlq::StreamsReading) {
        for (stream, len) in &r.lengths {
            self.length.with_label_values(&[stream]).set(*len as f64);
        }
        for (stream, group) in &self.watched {
            let labels = [stream.as_str(), group.as_str()];
            match r.groups.iter().find(|g| g.stream == *stream && g.group == *group) {
                Some(g) => {
                    self.pending.with_label_values(&labels).set(g.pending as f64);
                    match g.lag {
                        Some(lag) => self.lag.with_label_values(&labels).set(lag as f64),
                        None => {
                            let _ = self.lag.remove_label_values(&labels);
                        }
                    }
                }
                None => {
                    // No such group (yet): no series, rather than a zero
                    // that looks like a caught-up consumer.
                    let _ = self.lag.remove_label_values(&labels);
                    let _ = self.pending.remove_label_values(&labels);
                }
            }
        }
        for (key, t) in &r.wrong_type {
            if self.wrong_type.insert(key.clone()) {
                tracing::warn!(stream = %key, found = %t, "A watched stream key holds another type; its lag is not read.");
            }
        }
    }
}

pub struct QueueCollector {
    queues: Arc<Queues>,
    /// What the polls remember, in the shared state.
    watched: Arc<Watched>,
    events: EventBus,
    /// `None` when no stream is watched.
    streams: Option<StreamMetrics>,
    /// DLQ depth at the last poll, per queue.
    previous: HashMap<String, u64>,
    /// The processing-list error last logged, per queue (logged on change).
    active_errors: HashMap<String, String>,
    metrics: DepthMetrics,
    /// `job_queue_max_wait_seconds`, from the `queues` section in force.
    max_wait: GaugeVec,
    /// The section the series were last set from.
    seen: Arc<crate::config::QueuesConfig>,
}

impl QueueCollector {
    pub fn new(
        (queues, watched_state): (Arc<Queues>, Arc<Watched>),
        events: EventBus,
        registry: &Metrics,
        watched: Vec<(String, String)>,
    ) -> QueueCollector {
        // Jobs in flight: the seed's processing lists, or a framework's own.
        let c = queues.config();
        let processing = c.processing_suffix.is_some()
            || c.rq.is_some()
            || c.bullmq.is_some()
            || c.dramatiq.is_some()
            || c.celery.is_some();
        let max_wait = family::<GaugeVec>(
            "job_queue_max_wait_seconds",
            "How long the job at the queue's consumer end may wait (queues.max_wait, or queues.max_wait_by_queue): QueueWaitTooLong compares job_queue_oldest_age_seconds with it.",
            &["queue"],
        );
        registry.add(&max_wait);
        let seen = queues.config();
        set_max_wait(&max_wait, &seen);
        QueueCollector {
            watched: watched_state,
            max_wait,
            seen,
            streams: (!watched.is_empty()).then(|| StreamMetrics::register(registry, watched)),
            queues,
            events,
            previous: HashMap::new(),
            active_errors: HashMap::new(),
            metrics: DepthMetrics::register(registry, processing),
        }
    }
}

/// `job_queue_max_wait_seconds` of every queue in `config`.
fn set_max_wait(gauge: &GaugeVec, config: &crate::config::QueuesConfig) {
    gauge.reset();
    // Validation has checked every entry.
    for (queue, limit) in config.max_wait_by_queue().unwrap_or_default() {
        gauge.with_label_values(&[&queue]).set(limit.as_secs_f64());
    }
}

impl QueueCollector {
    /// After a reload: the series of queues that went are dropped and the
    /// wait limits set again; the new queues' series come with this poll.
    fn follow_config(&mut self) {
        let now = self.queues.config();
        if Arc::ptr_eq(&now, &self.seen) {
            return;
        }
        let (before, after) = (self.seen.all_names(), now.all_names());
        for q in before.iter().filter(|q| !after.contains(q)) {
            self.metrics.remove(q);
            self.previous.remove(q);
            self.active_errors.remove(q);
        }
        set_max_wait(&self.max_wait, &now);
        self.seen = now;
    }
}

impl Collector for QueueCollector {
    fn name(&self) -> &'static str {
        "queues"
    }

    fn interval(&self) -> Duration {
        self.queues.config().poll_interval
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(5).min(self.queues.config().poll_interval.max(Duration::from_secs(1)))
    }

    async fn collect(&mut self) -> Result<(), CollectError> {
        self.follow_config();
        let polled = self.queues.poll(&self.watched).await;
        // Whether the queue Redis answered, for /api/system/health.
        self.watched
            .set_redis_up(!matches!(polled, Err(crate::dlq::DlqError::Unavailable(_))));
        let depths = polled.map_err(|e| CollectError::Failed(e.to_string()))?;
        for d in depths {
            self.metrics.set(&d);
            match &d.active_error {
                Some(e) if self.active_errors.get(&d.queue) != Some(e) => {
                    tracing::warn!(queue = %d.queue, error = %e, "Could not read the queue's processing list; job_queue_active and job_queue_stuck keep their last values.");
                    self.active_errors.insert(d.queue.clone(), e.clone());
                }
                Some(_) => {}
                None => {
                    self.active_errors.remove(&d.queue);
                }
            }
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
        if let Some(streams) = &mut self.streams {
            let reading = self
                .queues
                .streams(&streams.watched)
                .await
                .map_err(|e| CollectError::Failed(e.to_string()))?;
            streams.set(&reading);
        }
        Ok(())
    }
}
