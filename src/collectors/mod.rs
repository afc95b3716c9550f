//! The collector trait, the runner that drives every collector, and the one
//! registry of collectors ([`REGISTRY`]).
//!
//! The registry is the only place collectors are listed: the daemon starts
//! them from it ([`start_all`]), the golden test takes readings of each
//! through it ([`collect_rounds`]), and the `--collector.<name>` /
//! `--no-collector.<name>` flags are generated from it. Adding a collector
//! is one file with a `pub const ENTRY: Entry` plus one line here.
//!
//! The runner owns what all collectors share: the interval, a timeout around
//! each round, shutdown, readiness, and the self-metrics
//! `inferwatch_collector_success`, `inferwatch_collector_duration_seconds`
//! and `inferwatch_collector_last_success_timestamp_seconds`. A collector
//! only knows how to take one reading and write it into shared state.

pub mod gpu;
pub mod health;
pub mod queues;
pub mod storage;
pub mod stream;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use prometheus::{GaugeVec, IntCounterVec};

use crate::metrics::{family, Metrics};
use crate::state::Readiness;

/// What a collector's constructor gets: the config and the shared state it
/// writes to.
pub struct Shared {
    /// The shared state they write (`sh.gpu` and the like reach it through
    /// `Deref`).
    pub state: crate::state::Shared,
    /// The runner's self-metrics.
    pub runner: Arc<RunnerMetrics>,
    /// Cancelled when the daemon stops.
    pub stop: CancellationToken,
}

impl std::ops::Deref for Shared {
    type Target = crate::state::Shared;

    fn deref(&self) -> &crate::state::Shared {
        &self.state
    }
}

/// Why a collector could not be started (a bad setting the config check
/// cannot see, such as a Redis URL redis-rs refuses).
#[derive(Debug, thiserror::Error)]
#[error("failed to start the {collector} collector: {reason}")]
pub struct StartError {
    pub collector: &'static str,
    pub reason: String,
}

/// One entry of the registry.
pub struct Entry {
    /// The `collector` label and the flag name.
    pub name: &'static str,
    /// One line for `--help`.
    pub about: &'static str,
    /// Whether the config switches it on (a flag can override).
    pub enabled: fn(&Config) -> bool,
    /// Sets the config's own switch, for collectors whose section has one
    /// (`gpu.enabled`): a flag then also reaches what reads the section.
    pub switch: Option<fn(&mut Config, bool)>,
    /// Builds it from the config and the shared state. Errors here stop
    /// startup; slow setup (loading NVML) goes in the returned future.
    pub build: fn(&Shared) -> Result<Built, StartError>,
}

/// A future that yields a collector once its slow setup is done.
pub type Setup = Pin<Box<dyn Future<Output = Box<dyn DynCollector>> + Send>>;

/// Spawns a collector's own tasks, given readiness and the shutdown token.
pub type Spawner = Box<dyn FnOnce(Arc<Readiness>, CancellationToken) -> Vec<tokio::task::JoinHandle<()>> + Send>;

/// What a registry entry builds.
pub enum Built {
    /// A collector the runner polls on its interval.
    Polled(Setup),
    /// Tasks on their own schedule (the health monitor: one per service);
    /// the closure spawns them.
    Own(Spawner),
    /// Nothing to run with this config (e.g. no queues configured).
    Nothing,
}

impl Built {
    /// A collector that needs no slow setup.
    pub fn polled<C: Collector>(collector: C) -> Result<Built, StartError> {
        Ok(Built::Polled(Box::pin(async move {
            Box::new(collector) as Box<dyn DynCollector>
        })))
    }
}

/// Every collector, in start order.
pub const REGISTRY: &[Entry] = &[gpu::ENTRY, health::ENTRY, queues::ENTRY, stream::ENTRY, storage::ENTRY];

/// Applies a `--collector.<name>` (`on`) or `--no-collector.<name>` flag:
/// it wins over the config, and sets the section's own switch where the
/// registry entry has one.
pub fn set_flag(config: &mut Config, name: &str, on: bool) {
    config.collector_flags.insert(name.to_string(), on);
    if let Some(switch) = REGISTRY.iter().find(|e| e.name == name).and_then(|e| e.switch) {
        switch(config, on);
    }
}

/// Whether `entry` runs: its `--collector.<name>` / `--no-collector.<name>`
/// flag when given, else the config.
pub fn is_enabled(entry: &Entry, config: &Config) -> bool {
    config
        .collector_flags
        .get(entry.name)
        .copied()
        .unwrap_or_else(|| (entry.enabled)(config))
}

/// Builds every enabled collector, logging the disabled ones.
fn build_enabled(shared: &Shared) -> Result<Vec<(&'static str, Built)>, StartError> {
    let mut built = Vec::new();
    for entry in REGISTRY {
        if is_enabled(entry, &shared.config.get()) {
            built.push((entry.name, (entry.build)(shared)?));
        } else {
            tracing::info!(collector = entry.name, "Collector disabled.");
        }
    }
    Ok(built)
}

/// Starts every enabled collector. Each polled one is expected by
/// readiness at once, and runs after its setup in its own task, so a slow
/// setup holds up nobody else.
pub fn start_all(shared: &Shared) -> Result<Vec<tokio::task::JoinHandle<()>>, StartError> {
    let mut tasks = Vec::new();
    for (name, built) in build_enabled(shared)? {
        match built {
            Built::Polled(setup) => {
                shared.readiness.expect(name);
                let (runner, readiness, stop) = (shared.runner.clone(), shared.readiness.clone(), shared.stop.clone());
                tasks.push(tokio::spawn(async move {
                    let collector = tokio::select! {
                        _ = stop.cancelled() => return,
                        c = setup => c,
                    };
                    let _ = spawn(collector, runner, readiness, stop).await;
                }));
            }
            Built::Own(start) => tasks.extend(start(shared.readiness.clone(), shared.stop.clone())),
            Built::Nothing => {}
        }
    }
    Ok(tasks)
}

/// Takes `rounds` readings, back to back, of every enabled polled
/// collector, in registry order, and starts nothing. Returns the rounds that
/// failed, by collector. The golden `/metrics` test renders from two (GPM
/// metrics need two samples).
pub async fn collect_rounds(shared: &Shared, rounds: usize) -> Result<Vec<(&'static str, CollectError)>, StartError> {
    let mut failed = Vec::new();
    for (name, built) in build_enabled(shared)? {
        if let Built::Polled(setup) = built {
            let mut collector = setup.await;
            for _ in 0..rounds {
                if let Err(e) = run_once(&mut collector, &shared.runner, &shared.readiness).await {
                    failed.push((name, e));
                }
            }
        }
    }
    Ok(failed)
}

/// The runner's self-metrics, one series per collector; set by
/// [`run_once`] and nowhere else.
pub struct RunnerMetrics {
    pub success: GaugeVec,
    pub duration: GaugeVec,
    pub last_success: GaugeVec,
    pub errors: IntCounterVec,
    pub interval: GaugeVec,
    /// The registry, whose cached page each finished round marks stale.
    registry: Arc<Metrics>,
}

impl RunnerMetrics {
    pub fn register(registry: Arc<Metrics>) -> Arc<RunnerMetrics> {
        let c = &["collector"];
        let m = RunnerMetrics {
            success: family(
                "inferwatch_collector_success",
                "1 if the collector's last run succeeded, 0 if it failed.",
                c,
            ),
            duration: family(
                "inferwatch_collector_duration_seconds",
                "How long the collector's last run took.",
                c,
            ),
            last_success: family(
                "inferwatch_collector_last_success_timestamp_seconds",
                "Unix time of the collector's last successful run.",
                c,
            ),
            errors: family(
                "inferwatch_collector_errors_total",
                "Collector rounds that failed or timed out.",
                c,
            ),
            interval: family(
                "inferwatch_collector_interval_seconds",
                "Configured time between the starts of two rounds of the collector.",
                c,
            ),
            registry,
        };
        m.registry.add(&m.success);
        m.registry.add(&m.duration);
        m.registry.add(&m.last_success);
        m.registry.add(&m.errors);
        m.registry.add(&m.interval);
        Arc::new(m)
    }
}

/// Why one collection round failed.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error("collection timed out after {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Failed(String),
}

/// One source of readings, polled by [`spawn`].
pub trait Collector: Send + 'static {
    /// The `collector` label value.
    fn name(&self) -> &'static str;
    /// Time between the starts of two rounds.
    fn interval(&self) -> Duration;
    /// Longest one round may take before it counts as failed.
    fn timeout(&self) -> Duration;
    /// Takes one reading and publishes it into shared state.
    fn collect(&mut self) -> impl Future<Output = Result<(), CollectError>> + Send;
}

/// [`Collector`] in a box, so the registry can hold any of them.
pub trait DynCollector: Send + 'static {
    fn name(&self) -> &'static str;
    fn interval(&self) -> Duration;
    fn timeout(&self) -> Duration;
    fn collect_boxed(&mut self) -> Pin<Box<dyn Future<Output = Result<(), CollectError>> + Send + '_>>;
}

impl<C: Collector> DynCollector for C {
    fn name(&self) -> &'static str {
        Collector::name(self)
    }
    fn interval(&self) -> Duration {
        Collector::interval(self)
    }
    fn timeout(&self) -> Duration {
        Collector::timeout(self)
    }
    fn collect_boxed(&mut self) -> Pin<Box<dyn Future<Output = Result<(), CollectError>> + Send + '_>> {
        Box::pin(Collector::collect(self))
    }
}

impl Collector for Box<dyn DynCollector> {
    fn name(&self) -> &'static str {
        (**self).name()
    }
    fn interval(&self) -> Duration {
        (**self).interval()
    }
    fn timeout(&self) -> Duration {
        (**self).timeout()
    }
    fn collect(&mut self) -> impl Future<Output = Result<(), CollectError>> + Send {
        (**self).collect_boxed()
    }
}

/// Runs `collector` every interval until `shutdown` is cancelled.
pub fn spawn<C: Collector>(
    mut collector: C,
    metrics: Arc<RunnerMetrics>,
    readiness: Arc<Readiness>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let name = collector.name();
    readiness.expect(name);
    tokio::spawn(async move {
        let mut next = Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep_until(next) => {}
            }
            let started = Instant::now();
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = run_once(&mut collector, &metrics, &readiness) => {}
            }
            // Asked each round, so a reloaded interval applies from the next
            // one. A round longer than the interval delays the next start
            // (the next round starts at once), as `MissedTickBehavior::Delay`.
            next = started + collector.interval();
        }
        tracing::debug!(collector = name, "Collector stopped.");
    })
}

/// Runs one round of `collector` with its timeout, records the
/// self-metrics, marks it ready and invalidates the cached page.
pub async fn run_once<C: Collector>(
    collector: &mut C,
    metrics: &RunnerMetrics,
    readiness: &Readiness,
) -> Result<(), CollectError> {
    let name = collector.name();
    let timeout = collector.timeout();
    // Alerts compare the last-success age with this, per collector.
    metrics
        .interval
        .with_label_values(&[name])
        .set(collector.interval().as_secs_f64());
    let started = Instant::now();
    let result = tokio::time::timeout(timeout, collector.collect())
        .await
        .unwrap_or(Err(CollectError::Timeout(timeout)));
    record(metrics, name, started.elapsed(), &result);
    readiness.done(name);
    metrics.registry.invalidate();
    result
}

fn record(metrics: &RunnerMetrics, name: &str, took: Duration, result: &Result<(), CollectError>) {
    metrics.duration.with_label_values(&[name]).set(took.as_secs_f64());
    // Touched on every round so the counter exists at 0 before any failure.
    let errors = metrics.errors.with_label_values(&[name]);
    let success = metrics.success.with_label_values(&[name]);
    // One WARN when a collector starts failing and one INFO when it
    // recovers; the rounds in between log at debug level.
    let was_failing = errors.get() > 0 && success.get() == 0.0;
    match result {
        Ok(()) => {
            success.set(1.0);
            metrics.last_success.with_label_values(&[name]).set(unix_now());
            if was_failing {
                tracing::info!(collector = name, "Collection recovered.");
            }
        }
        Err(e) => {
            success.set(0.0);
            errors.inc();
            if was_failing {
                tracing::debug!(collector = name, error = %e, "Collection failed again.");
            } else {
                tracing::warn!(collector = name, error = %e, "Collection failed.");
            }
        }
    }
}

/// Seconds since the Unix epoch, as a float.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Flaky {
        rounds: u32,
    }

    impl Collector for Flaky {
        fn name(&self) -> &'static str {
            "flaky"
        }
        fn interval(&self) -> Duration {
            Duration::from_secs(10)
        }
        fn timeout(&self) -> Duration {
            Duration::from_secs(1)
        }
        async fn collect(&mut self) -> Result<(), CollectError> {
            self.rounds += 1;
            match self.rounds {
                1 => Ok(()),
                2 => Err(CollectError::Failed("boom".into())),
                _ => {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    Ok(())
                }
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn runner_records_success_failure_and_timeout() {
        let metrics = RunnerMetrics::register(Arc::new(Metrics::new()));
        let readiness = Arc::new(Readiness::default());
        let shutdown = CancellationToken::new();
        let success = |m: &RunnerMetrics| m.success.with_label_values(&["flaky"]).get();

        let handle = spawn(
            Flaky { rounds: 0 },
            metrics.clone(),
            readiness.clone(),
            shutdown.clone(),
        );
        assert!(!readiness.is_ready());
        // Round 1 runs at t=0.
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(readiness.is_ready());
        assert_eq!(success(&metrics), 1.0);
        // Round 2 at t=10 fails.
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(success(&metrics), 0.0);
        // Round 3 at t=20 sleeps 5 s against a 1 s timeout.
        metrics.success.with_label_values(&["flaky"]).set(1.0);
        tokio::time::sleep(Duration::from_millis(11_500)).await;
        assert_eq!(success(&metrics), 0.0);
        assert_eq!(
            metrics.errors.with_label_values(&["flaky"]).get(),
            2,
            "the failure and the timeout"
        );
        let took = metrics.duration.with_label_values(&["flaky"]).get();
        assert!((took - 1.0).abs() < 0.01, "timeout round lasted {took}");
        shutdown.cancel();
        handle.await.unwrap();
    }
}
