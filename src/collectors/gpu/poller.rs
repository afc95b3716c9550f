//! The poller: loads NVML (or runs in mock mode where the mode says so),
//! polls every GPU each round, and publishes the snapshot the renderer and
//! the API read; says why it is blind and retries while NVML is down.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::time::Instant;

use super::link::{InitFailures, Link, Retry};
use super::xids::XidWatch;
use crate::attribution::{table, Attributor, GpuProcesses};
use crate::collectors::{CollectError, Collector};
use crate::config::{GpuConfig, GpuMode};
use crate::events::{Event, EventBus};
use crate::history::GpuSample;
use crate::nvml::{init_reason, DriverVersions, GpuReading, InitReason, NvmlHandle, NvmlStartError, PollerOptions};
use crate::state::{GpuSnapshot, GpuState, NvmlDown};
use crate::store::Store;

/// Polls NVML; mocks only where the mode says so; says why it is blind and
/// retries when NVML is down.
pub struct GpuCollector {
    config: GpuConfig,
    /// The config in force and the one last applied: each round starts by
    /// taking a reload's cadences, exclusions and service matches.
    live: Option<(crate::config::LiveConfig, Arc<crate::config::Config>)>,
    /// Where it writes.
    out: Outputs,
    /// NVML: mock, up or down (and retried), what it is, why it failed.
    link: Link,
    versions: DriverVersions,
    init: InitFailures,
    /// XIDs from NVML events and the kernel log.
    xids: XidWatch,
    /// UUIDs currently above the temperature threshold.
    hot: HashSet<String>,
    /// Who holds each GPU process (only with `gpu.per_process`), and what
    /// the last attribution took.
    attribution: Option<(Attributor, Option<f64>)>,
    /// Each GPU's energy charged to the services that hold it.
    energy: crate::inference::energy::EnergyLedger,
}

/// Where the collector's readings go.
struct Outputs {
    state: Arc<GpuState>,
    events: EventBus,
    store: Option<Arc<Store>>,
}

impl GpuCollector {
    /// Loads NVML (unless `gpu.mode` is `mock`). A failure is a failing
    /// collector that retries, except in `auto` on a machine with no NVML
    /// library at all, which runs in mock mode.
    pub async fn start(
        config: GpuConfig,
        state: Arc<GpuState>,
        events: EventBus,
        store: Option<Arc<Store>>,
        attributor: Option<Attributor>,
    ) -> GpuCollector {
        let mut c = GpuCollector {
            xids: XidWatch::new(config.poll_interval),
            config,
            live: None,
            out: Outputs { state, events, store },
            link: Link::Mock,
            versions: DriverVersions::default(),
            init: InitFailures::new(),
            hot: HashSet::new(),
            attribution: attributor.map(|a| (a, None)),
            energy: Default::default(),
        };
        c.xids
            .open(
                &c.config.kernel_log,
                c.config.kernel_log_record_max_bytes as usize,
                c.out.store.as_deref(),
            )
            .await;
        if c.config.mode == GpuMode::Mock {
            tracing::info!("gpu.mode is mock: the GPU collector serves the mock object and loads no NVML.");
            return c;
        }
        c.link = match c.init().await {
            Ok(h) => Link::Up(h),
            Err((reason, _))
                if reason == InitReason::LibraryNotFound
                    && c.config.mode == GpuMode::Auto
                    && !c.config.nvml_library.contains('/') =>
            {
                tracing::warn!(library = %c.config.nvml_library, "No NVIDIA driver is installed (the NVML library is not on this machine); the GPU collector runs in mock mode.");
                Link::Mock
            }
            Err((reason, message)) => {
                c.init.failed(reason, &message, &c.config.nvml_library);
                Link::Down(Retry::new(reason, message, Instant::now()))
            }
        };
        c
    }

    /// Follows `live` from now on: a reload's `gpu` section (the parts
    /// that may change live) and service matches apply from the next round.
    pub fn follow(mut self, live: crate::config::LiveConfig) -> GpuCollector {
        let seen = live.get();
        self.live = Some((live, seen));
        self
    }

    /// Takes a reloaded config, if there is one.
    fn refresh(&mut self) {
        let Some((live, seen)) = &mut self.live else { return };
        let now = live.get();
        if Arc::ptr_eq(seen, &now) {
            return;
        }
        if now.gpu != self.config {
            tracing::info!(poll_interval = ?now.gpu.poll_interval, slow_interval = ?now.gpu.slow_interval(), excluded = ?now.gpu.fields.exclude, "GPU collector takes the reloaded gpu settings.");
            self.config = now.gpu.clone();
            self.xids.set_poll_interval(self.config.poll_interval);
        }
        if now.health.services != seen.health.services {
            if let Some((a, _)) = &mut self.attribution {
                a.set_services(&now.health.services);
            }
        }
        *seen = now;
    }

    /// What the NVML thread reads and how often, from the config in force.
    fn poller_options(&self) -> PollerOptions {
        PollerOptions {
            per_process: self.config.per_process,
            exclude: self.config.excluded_fields(),
            poll_interval: self.config.poll_interval,
            slow_interval: self.config.slow_interval(),
        }
    }

    /// One try at loading NVML.
    async fn init(&mut self) -> Result<NvmlHandle, (InitReason, String)> {
        let options = self.poller_options();
        let path = self.config.nvml_library.clone();
        match NvmlHandle::start(&path, options, self.out.state.nvml_metrics.clone()).await {
            Ok(h) => {
                tracing::info!(library = %path, driver_version = %h.versions.driver, nvml_version = %h.versions.nvml, cuda_driver_version = %h.versions.cuda, "NVML loaded.");
                self.versions = h.versions.clone();
                self.init.up();
                Ok(h)
            }
            Err(e) => {
                let reason = match &e {
                    NvmlStartError::Init { source, .. } => init_reason(&path, source),
                    NvmlStartError::Thread(_) => InitReason::Unknown,
                };
                Err((reason, e.to_string()))
            }
        }
    }

    /// Reports GPUs that fell off the bus. The previous snapshot says which
    /// GPU sat at a now-lost index.
    fn report_lost(&self, lost: &[u32]) {
        let previous = self.out.state.snapshot();
        for index in lost {
            if let Some(uuid) = previous.readings.iter().find(|r| r.index == *index).map(|r| &r.uuid) {
                tracing::error!(gpu = index, uuid = %uuid, "GPU is lost (fell off the bus); its series are removed.");
                self.out.events.publish(Event::GpuLost {
                    gpu: *index,
                    uuid: uuid.clone(),
                });
            }
        }
    }

    /// True when running in mock mode.
    pub fn is_mock(&self) -> bool {
        matches!(self.link, Link::Mock)
    }

    /// The reason NVML is down, when the collector is failing.
    pub fn down_reason(&self) -> Option<InitReason> {
        match &self.link {
            Link::Down(r) => Some(r.reason),
            _ => None,
        }
    }

    fn check_temperature(&mut self, r: &GpuReading) {
        let threshold = self.config.temperature_warning_celsius;
        let Some(t) = r.temperature_celsius else { return };
        if t > threshold {
            if self.hot.insert(r.uuid.clone()) {
                tracing::warn!(gpu = r.index, uuid = %r.uuid, temperature = t, threshold, "GPU temperature is above the warning threshold.");
                self.out.events.publish(Event::GpuTemperatureHigh {
                    gpu: r.index,
                    uuid: r.uuid.clone(),
                    temperature: t,
                    threshold,
                });
            }
        } else if self.hot.remove(&r.uuid) {
            tracing::info!(gpu = r.index, uuid = %r.uuid, temperature = t, threshold, "GPU temperature is back below the warning threshold.");
        }
    }

    /// Each GPU's process table, with owners (only with `gpu.per_process`).
    async fn attribute(&mut self, readings: &[GpuReading]) -> Vec<GpuProcesses> {
        let Some((attributor, took)) = &mut self.attribution else {
            return Vec::new();
        };
        let started = std::time::Instant::now();
        let pids: HashSet<u32> = readings
            .iter()
            .flat_map(|r| r.processes.iter().flatten().map(|p| p.0))
            .collect();
        let owners = attributor.owners(&pids).await;
        let max = self.config.per_process_max as usize;
        let tables = readings.iter().filter_map(|r| table::build(r, &owners, max)).collect();
        *took = Some(started.elapsed().as_secs_f64());
        tables
    }

    /// The snapshot fields every state shares.
    fn base_snapshot(&self, nvml_up: bool, down: Option<NvmlDown>) -> GpuSnapshot {
        GpuSnapshot {
            recorded_at: Some(Utc::now()),
            nvml_up,
            nvml_down: down,
            init_errors: self.init.counts.clone(),
            versions: nvml_up.then(|| self.versions.clone()),
            xid_totals: self.xids.ledger.totals.clone(),
            xid_last_seen: self.xids.ledger.last_seen.clone(),
            kernel_log_up: self.xids.up,
            kernel_log_overwritten: self.xids.overwritten,
            kernel_log_records: self.xids.records,
            attribution_seconds: self.attribution.as_ref().and_then(|(_, took)| *took),
            ..Default::default()
        }
    }

    /// A round while NVML is down: try again when due; else say why.
    async fn retry(&mut self) -> Result<(), CollectError> {
        let Link::Down(retry) = &self.link else { return Ok(()) };
        let now = Instant::now();
        if retry.due(now) {
            let since = retry.since;
            match self.init().await {
                Ok(h) => {
                    let down_for = since.elapsed();
                    tracing::info!(
                        down_seconds = down_for.as_secs_f64(),
                        "NVML is up again; GPUs are read without a restart."
                    );
                    self.link = Link::Up(h);
                    return Ok(());
                }
                Err((reason, message)) => {
                    self.init.failed(reason, &message, &self.config.nvml_library);
                    if let Link::Down(r) = &mut self.link {
                        r.failed_again(reason, message, Instant::now());
                    }
                }
            }
        }
        let Link::Down(r) = &self.link else { return Ok(()) };
        let down = NvmlDown {
            reason: r.reason,
            message: r.message.clone(),
        };
        let error = format!("NVML is down ({}): {}", r.reason, r.message);
        // Kernel-log XIDs count in every state: NVML may be down because
        // of the very fault they report.
        self.xids.drain(&self.out.events, self.out.store.as_deref()).await;
        self.out.state.publish(self.base_snapshot(false, Some(down)));
        self.out.events.publish(Event::GpuPolled);
        Err(CollectError::Failed(error))
    }
}

impl GpuCollector {
    /// Every GPU answered as if the driver were gone (unloaded or upgraded
    /// under the daemon): NVML is shut down and the retry loop starts.
    fn driver_gone(&mut self, reason: InitReason, errors: &[String]) -> CollectError {
        let message = format!(
            "every GPU answered as if the driver were gone (unloaded or upgraded): {}",
            errors.join("; ")
        );
        // Dropping the handle shuts NVML down on its thread.
        self.link = Link::Down(Retry::new(reason, message.clone(), Instant::now()));
        self.init.failed(reason, &message, &self.config.nvml_library);
        self.hot.clear();
        let error = format!("NVML is down ({reason}): {message}");
        self.out
            .state
            .publish(self.base_snapshot(false, Some(NvmlDown { reason, message })));
        self.out.events.publish(Event::GpuPolled);
        CollectError::Failed(error)
    }
}

impl Collector for GpuCollector {
    fn name(&self) -> &'static str {
        "gpu"
    }

    fn interval(&self) -> Duration {
        self.config.poll_interval
    }

    fn timeout(&self) -> Duration {
        self.config.timeout
    }

    async fn collect(&mut self) -> Result<(), CollectError> {
        self.refresh();
        if matches!(self.link, Link::Down(_)) {
            self.retry().await?;
        }
        let nvml = match &self.link {
            Link::Up(h) => h,
            Link::Down(_) => return Ok(()),
            Link::Mock => {
                self.xids.drain(&self.out.events, self.out.store.as_deref()).await;
                self.out.state.publish(self.base_snapshot(false, None));
                self.out.events.publish(Event::GpuPolled);
                return Ok(());
            }
        };
        let outcome = nvml
            .poll(&self.poller_options())
            .await
            .map_err(|e| CollectError::Failed(e.to_string()))?;
        if let Some(reason) = outcome.driver_gone {
            return Err(self.driver_gone(reason, &outcome.errors));
        }
        let driver_version = self.versions.driver.clone();
        let now = Utc::now();

        let readings = outcome.readings;
        self.xids.note_buses(&readings);
        self.xids.report_nvml(&self.out.events, &outcome.xids);
        // After the poll: the kernel lines' buses map to the GPUs just read.
        self.xids.drain(&self.out.events, self.out.store.as_deref()).await;
        self.report_lost(&outcome.lost);
        for r in &readings {
            self.check_temperature(r);
        }
        let live: HashSet<&str> = readings.iter().map(|r| r.uuid.as_str()).collect();
        self.hot.retain(|u| live.contains(u.as_str()));
        self.xids.retain(&live, Instant::now());

        let processes = self.attribute(&readings).await;
        self.energy.account(&readings, &processes, Instant::now());
        let samples: Vec<GpuSample> = readings.iter().map(|r| GpuSample::from_reading(r, now)).collect();
        self.out.state.record(&samples);
        if let Some(store) = &self.out.store {
            store.push(samples.clone());
        }
        self.out.state.publish(GpuSnapshot {
            available: true,
            driver_version,
            readings,
            processes,
            energy: self.energy.totals().clone(),
            recorded_at: Some(now),
            samples,
            ..self.base_snapshot(true, None)
        });
        self.out.events.publish(Event::GpuPolled);

        round_result(&outcome.lost, outcome.errors)
    }
}

/// A round's result: lost GPUs and unidentified devices fail it (field
/// errors never do).
fn round_result(lost: &[u32], errors: Vec<String>) -> Result<(), CollectError> {
    let mut problems = Vec::new();
    if !lost.is_empty() {
        problems.push(format!("GPU(s) {lost:?} lost"));
    }
    problems.extend(errors);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(CollectError::Failed(problems.join("; ")))
    }
}
