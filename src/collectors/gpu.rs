//! The GPU collector: polls NVML through [`crate::nvml`], keeps the latest
//! readings as a snapshot, feeds the history ring and the store, and turns
//! the snapshot into the `gpu_*` metric families on demand.
//!
//! The families are built from the snapshot at render time, so a GPU that
//! disappears or a process that exits simply has no series in the next
//! page; nothing stale lingers. Driver-cumulative values (energy, ECC) are
//! exposed as counters with the driver's own totals; XID errors arrive as
//! events and are summed here.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use prometheus::core::{Collector as PromCollector, Desc};
use prometheus::proto::{self, LabelPair, MetricFamily, MetricType};

use tokio::time::Instant;

use super::{CollectError, Collector};
use crate::attribution::{table, Attributor, GpuProcesses};
use crate::config::{GpuConfig, GpuMode};
use crate::events::{Event, EventBus};
use crate::history::GpuSample;
use crate::nvml::profiling::{PIPES, RECOVERY_ACTIONS};
use crate::nvml::{
    init_reason, DriverVersions, GpuReading, InitReason, NvmlHandle, NvmlStartError, PollerOptions, THROTTLE_REASONS,
};
use crate::state::{GpuSnapshot, GpuState, NvmlDown};
use crate::store::Store;
use crate::xid::kmsg::{self, Found, KernelLog};
use crate::xid::ledger::{Ledger, Source};
use crate::xid::{catalog, PciAddr};

/// The registry entry: NVML is loaded in the task, so a slow driver init
/// does not hold up the others.
pub const ENTRY: super::Entry = super::Entry {
    name: "gpu",
    about: "GPUs through NVML (gpu.mode: auto mocks only without a driver installed)",
    enabled,
    switch: Some(|c, on| c.gpu.enabled = on),
    build,
};

fn enabled(c: &crate::config::Config) -> bool {
    c.gpu.enabled
}

fn build(sh: &super::Shared) -> Result<super::Built, super::StartError> {
    let whole = sh.config.get();
    let (config, state, events, store, live) = (
        whole.gpu.clone(),
        sh.gpu.clone(),
        sh.events.clone(),
        sh.store.clone(),
        sh.config.clone(),
    );
    let attributor = config.per_process.then(|| Attributor::new(&whole, Some(&sh.metrics)));
    Ok(super::Built::Polled(Box::pin(async move {
        let collector = GpuCollector::start(config, state, events, store, attributor).await;
        Box::new(collector.follow(live)) as Box<dyn super::DynCollector>
    })))
}

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
enum Link {
    /// `gpu.mode: mock`, or `auto` on a machine with no NVML library.
    Mock,
    Up(NvmlHandle),
    /// A failing collector: the library is missing where the config says it
    /// is, does not load, or `nvmlInit` fails; retried with backoff.
    Down(Retry),
}

/// Polls NVML; mocks only where the mode says so; says why it is blind and
/// retries when NVML is down.
pub struct GpuCollector {
    config: GpuConfig,
    state: Arc<GpuState>,
    link: Link,
    events: EventBus,
    store: Option<Arc<Store>>,
    /// UUIDs currently above the temperature threshold.
    hot: HashSet<String>,
    /// XIDs from NVML events and the kernel log, each counted once.
    xids: Ledger,
    /// The kernel-log reader, when `gpu.kernel_log` is set and readable.
    kernel_log: Option<KernelLog>,
    /// `Some(readable)` when `gpu.kernel_log` is set.
    kernel_log_up: Option<bool>,
    kernel_log_overwritten: u64,
    boot_id: String,
    /// Every GPU seen this run, by PCI address: kernel lines name the bus,
    /// also of a GPU that has just fallen off it.
    buses: HashMap<PciAddr, (u32, String)>,
    /// `inferwatch_nvml_init_errors_total` by reason.
    init_errors: BTreeMap<InitReason, u64>,
    /// Reasons already logged since NVML was last up.
    logged: HashSet<InitReason>,
    versions: DriverVersions,
    /// Who holds each GPU process (only with `gpu.per_process`).
    attributor: Option<Attributor>,
    /// What the last attribution took.
    attribution_seconds: Option<f64>,
    /// The config in force and the one last applied: each round starts by
    /// taking a reload's cadences, exclusions and service matches.
    live: Option<(crate::config::LiveConfig, Arc<crate::config::Config>)>,
    /// Each GPU's energy charged to the services that hold it.
    energy: crate::inference::energy::EnergyLedger,
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
            config,
            attributor,
            attribution_seconds: None,
            state,
            link: Link::Mock,
            events,
            store,
            hot: HashSet::new(),
            xids: Ledger::new(Duration::from_secs(5)),
            kernel_log: None,
            kernel_log_up: None,
            kernel_log_overwritten: 0,
            boot_id: String::new(),
            buses: HashMap::new(),
            init_errors: InitReason::ALL.iter().map(|r| (*r, 0)).collect(),
            logged: HashSet::new(),
            versions: DriverVersions::default(),
            live: None,
            energy: Default::default(),
        };
        c.xids = Ledger::new(Self::xid_window(c.config.poll_interval));
        c.open_kernel_log().await;
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
                c.failed(reason, &message);
                Link::Down(Retry::new(reason, message, Instant::now()))
            }
        };
        c
    }

    /// NVML events reach us up to a poll late: the window that matches them
    /// with kernel-log lines covers it.
    fn xid_window(poll_interval: Duration) -> Duration {
        Duration::from_secs(5) + poll_interval
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
            self.xids.set_window(Self::xid_window(self.config.poll_interval));
        }
        if now.health.services != seen.health.services {
            if let Some(a) = &mut self.attributor {
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
        match NvmlHandle::start(&path, options, self.state.nvml_metrics.clone()).await {
            Ok(h) => {
                tracing::info!(library = %path, driver_version = %h.versions.driver, nvml_version = %h.versions.nvml, cuda_driver_version = %h.versions.cuda, "NVML loaded.");
                self.versions = h.versions.clone();
                self.logged.clear();
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

    /// Counts a failed init (or a driver lost mid-run) and logs it once per
    /// reason until NVML is up again.
    fn failed(&mut self, reason: InitReason, message: &str) {
        *self.init_errors.entry(reason).or_default() += 1;
        if self.logged.insert(reason) {
            tracing::error!(reason = reason.as_str(), error = %message, library = %self.config.nvml_library, "NVML is down: the GPU collector is failing and retries with backoff (1 s doubling to 5 min).");
        }
    }

    /// Starts the kernel-log reader after the position stored for this
    /// boot. Not being able to read it is one WARN line and
    /// `inferwatch_kernel_log_up 0`, never a failed round.
    async fn open_kernel_log(&mut self) {
        let path = self.config.kernel_log.clone();
        if path.is_empty() {
            return;
        }
        self.boot_id = kmsg::boot_id();
        let stored = match &self.store {
            Some(store) => match store.kernel_log_position(&path).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(path = %path, error = %e, "The stored kernel-log position could not be read; the kernel's buffer is read from its start.");
                    None
                }
            },
            None => None,
        };
        let resume = kmsg::resume_after(stored, &self.boot_id);
        match KernelLog::start(&path, resume) {
            Ok(k) => {
                tracing::info!(path = %path, resume_after = ?resume, boot_id = %self.boot_id, "Reading XIDs from the kernel log.");
                self.kernel_log = Some(k);
                self.kernel_log_up = Some(true);
            }
            Err(e) => {
                tracing::warn!(path = %path, error = %e, "The kernel log cannot be read: XIDs come from NVML events only, which miss some (79, 119, 120). /dev/kmsg needs CAP_SYSLOG when kernel.dmesg_restrict is 1 (the systemd unit grants it).");
                self.kernel_log_up = Some(false);
            }
        }
    }

    /// Counts one XID (once across NVML and the kernel log) and reports it
    /// with the catalog's severity and action.
    fn report_xid(&mut self, gpu: String, uuid: String, xid: u64, source: Source, at: Instant) {
        let (severity, action) = catalog::classify(xid);
        let key = (gpu.clone(), uuid.clone(), xid.to_string());
        if !self.xids.record(key, source, at, super::unix_now()) {
            return;
        }
        let cause = catalog::catalog()
            .xids
            .get(&xid.to_string())
            .map(|e| e.cause.as_str())
            .unwrap_or("not in the XID catalog");
        let from = match source {
            Source::Nvml => "nvml",
            Source::Kernel => "kernel_log",
        };
        match severity {
            "critical" => {
                tracing::error!(gpu = %gpu, uuid = %uuid, xid, severity, action, from, cause, "GPU reported an XID error.")
            }
            "warning" => {
                tracing::warn!(gpu = %gpu, uuid = %uuid, xid, severity, action, from, cause, "GPU reported an XID error.")
            }
            _ => {
                tracing::info!(gpu = %gpu, uuid = %uuid, xid, severity, action, from, cause, "GPU reported an XID error.")
            }
        }
        self.events.publish(Event::GpuXid {
            gpu,
            uuid,
            xid: xid.to_string(),
        });
    }

    /// Counts the XIDs NVML delivered since the last poll.
    fn report_xids(&mut self, xids: &[(u32, String, u64)]) {
        let now = Instant::now();
        for (gpu, uuid, xid) in xids {
            self.report_xid(gpu.to_string(), uuid.clone(), *xid, Source::Nvml, now);
        }
    }

    /// Counts what the kernel-log reader found since the last round, maps
    /// each bus to its GPU, and stores how far it has read.
    async fn drain_kernel_log(&mut self) {
        let Some(k) = &self.kernel_log else { return };
        let drained = k.drain();
        let up = k.is_up();
        let path = k.path.clone();
        self.kernel_log_up = Some(up);
        self.kernel_log_overwritten += drained.overwritten;
        if drained.overwritten > 0 {
            tracing::warn!(path = %path, overwritten = drained.overwritten, "The kernel log overwrote records before they were read; XIDs in them are lost.");
        }
        for x in drained.xids {
            match x.found {
                Found::Xid { pci, xid } => {
                    let (gpu, uuid) = match self.buses.get(&pci) {
                        Some((index, uuid)) => (index.to_string(), uuid.clone()),
                        // A bus no GPU of this run had: its address stands in for the UUID.
                        None => ("unknown".to_string(), pci.to_string()),
                    };
                    self.report_xid(gpu, uuid, xid, Source::Kernel, x.at);
                }
                Found::SXid { pci, sxid } => {
                    let key = ("nvswitch".to_string(), pci.to_string(), format!("sxid_{sxid}"));
                    if self.xids.record(key, Source::Kernel, x.at, super::unix_now()) {
                        tracing::warn!(nvswitch = %pci, sxid, message = %x.message, "NVSwitch reported an SXid error.");
                    }
                }
            }
        }
        if let (Some(store), Some(seq)) = (&self.store, drained.read_seq) {
            let save = store.save_kernel_log_position(&path, &self.boot_id, seq);
            match tokio::time::timeout(Duration::from_secs(1), save).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "Storing the kernel-log position failed; the next round stores it.")
                }
                Err(_) => tracing::debug!("Storing the kernel-log position timed out; the next round stores it."),
            }
        }
    }

    /// Reports GPUs that fell off the bus. The previous snapshot says which
    /// GPU sat at a now-lost index.
    fn report_lost(&self, lost: &[u32]) {
        let previous = self.state.snapshot();
        for index in lost {
            if let Some(uuid) = previous.readings.iter().find(|r| r.index == *index).map(|r| &r.uuid) {
                tracing::error!(gpu = index, uuid = %uuid, "GPU is lost (fell off the bus); its series are removed.");
                self.events.publish(Event::GpuLost {
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
                self.events.publish(Event::GpuTemperatureHigh {
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
        let Some(attributor) = &mut self.attributor else {
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
        self.attribution_seconds = Some(started.elapsed().as_secs_f64());
        tables
    }

    /// The snapshot fields every state shares.
    fn base_snapshot(&self, nvml_up: bool, down: Option<NvmlDown>) -> GpuSnapshot {
        GpuSnapshot {
            recorded_at: Some(Utc::now()),
            nvml_up,
            nvml_down: down,
            init_errors: self.init_errors.iter().map(|(r, n)| (*r, *n)).collect(),
            versions: nvml_up.then(|| self.versions.clone()),
            xid_totals: self.xids.totals.clone(),
            xid_last_seen: self.xids.last_seen.clone(),
            kernel_log_up: self.kernel_log_up,
            kernel_log_overwritten: self.kernel_log_overwritten,
            attribution_seconds: self.attribution_seconds,
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
                    self.failed(reason, &message);
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
        self.drain_kernel_log().await;
        self.state.publish(self.base_snapshot(false, Some(down)));
        self.events.publish(Event::GpuPolled);
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
        self.failed(reason, &message);
        self.hot.clear();
        let error = format!("NVML is down ({reason}): {message}");
        self.state
            .publish(self.base_snapshot(false, Some(NvmlDown { reason, message })));
        self.events.publish(Event::GpuPolled);
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
                self.drain_kernel_log().await;
                self.state.publish(self.base_snapshot(false, None));
                self.events.publish(Event::GpuPolled);
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
        for r in &readings {
            if let Some(pci) = PciAddr::parse(&r.pci_bus_id) {
                self.buses.insert(pci, (r.index, r.uuid.clone()));
            }
        }
        self.report_xids(&outcome.xids);
        // After the poll: the kernel lines' buses map to the GPUs just read.
        self.drain_kernel_log().await;
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
        self.state.record(&samples);
        if let Some(store) = &self.store {
            store.push(samples.clone());
        }
        self.state.publish(GpuSnapshot {
            available: true,
            driver_version,
            readings,
            processes,
            energy: self.energy.totals().clone(),
            recorded_at: Some(now),
            samples,
            ..self.base_snapshot(true, None)
        });
        self.events.publish(Event::GpuPolled);

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

/// One family this collector can emit.
struct Family {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    labels: &'static [&'static str],
}

const GPU: &[&str] = &["gpu", "uuid"];
const PROC: &[&str] = &[
    "gpu",
    "uuid",
    "pid",
    "process_name",
    "service",
    "unit",
    "container",
    "compose_project",
    "compose_service",
];

macro_rules! families {
    ($($id:ident = $name:literal, $kind:ident, $labels:expr, $help:literal;)*) => {
        #[allow(non_camel_case_types, clippy::upper_case_acronyms)]
        #[derive(Clone, Copy)]
        enum F { $($id),* }
        const FAMILIES: &[Family] = &[$(Family { name: $name, help: $help, kind: MetricType::$kind, labels: $labels }),*];
    };
}

families! {
    Available = "gpu_available", GAUGE, &[], "1 if NVML is loaded and GPUs can be read, 0 in mock mode or while NVML is down.";
    NvmlUp = "inferwatch_nvml_up", GAUGE, &[], "1 while NVML is loaded and answering, 0 while it is down (or in mock mode).";
    NvmlInitErrors = "inferwatch_nvml_init_errors_total", COUNTER, &["reason"], "Failed NVML inits (and drivers lost mid-run) by reason: library_not_found, library_load_failed, driver_not_loaded, lib_rm_version_mismatch, no_permission, insufficient_size, unknown.";
    DriverInfo = "gpu_driver_info", GAUGE, &["driver_version", "nvml_version", "cuda_driver_version"], "Always 1 while NVML is up; the driver, NVML and CUDA driver versions.";
    Devices = "gpu_devices", GAUGE, &[], "Number of GPUs that answered the last poll.";
    Info = "gpu_info", GAUGE, &["gpu", "uuid", "name", "driver_version", "pci_bus_id"], "Always 1; carries the GPU's identity for joins.";
    Util = "gpu_utilization_ratio", GAUGE, GPU, "Fraction of the last sample period a kernel was running (0-1).";
    MemUtil = "gpu_memory_utilization_ratio", GAUGE, GPU, "Fraction of the last sample period device memory was being read or written (0-1).";
    MemUsed = "gpu_memory_used_bytes", GAUGE, GPU, "Device memory in use.";
    MemTotal = "gpu_memory_total_bytes", GAUGE, GPU, "Total device memory.";
    MemFree = "gpu_memory_free_bytes", GAUGE, GPU, "Free device memory.";
    Temp = "gpu_temperature_celsius", GAUGE, GPU, "GPU core temperature.";
    Power = "gpu_power_usage_watts", GAUGE, GPU, "Current power draw.";
    PowerLimit = "gpu_power_limit_watts", GAUGE, GPU, "Enforced power limit.";
    Fan = "gpu_fan_speed_ratio", GAUGE, &["gpu", "uuid", "fan"], "Intended speed of each fan as a fraction of maximum (0-1); no series on a GPU without fans.";
    Clock = "gpu_clock_hz", GAUGE, &["gpu", "uuid", "clock"], "Current clock speed by clock domain.";
    Enc = "gpu_encoder_utilization_ratio", GAUGE, GPU, "Video encoder utilization (0-1).";
    Dec = "gpu_decoder_utilization_ratio", GAUGE, GPU, "Video decoder utilization (0-1).";
    Energy = "gpu_energy_joules_total", COUNTER, GPU, "Energy consumed since the driver was loaded.";
    Ecc = "gpu_ecc_errors_total", COUNTER, &["gpu", "uuid", "type"], "Volatile ECC error count since the driver was loaded.";
    Throttle = "gpu_throttle_reason_active", GAUGE, &["gpu", "uuid", "reason"], "1 if this clock throttle reason is active.";
    Xid = "gpu_xid_errors_total", COUNTER, &["gpu", "uuid", "xid"], "XID errors since the daemon started, from NVML events and the kernel log, each counted once (gpu unknown: a bus no GPU had, its address in uuid; gpu nvswitch: an SXid, xid sxid_N).";
    XidLastSeen = "gpu_xid_last_seen_timestamp_seconds", GAUGE, &["gpu", "uuid", "xid", "severity", "action"], "Unix time an XID was last counted, with the XID catalog's severity (critical, warning, info) and action.";
    KernelLogUp = "inferwatch_kernel_log_up", GAUGE, &[], "1 while gpu.kernel_log is being read, 0 when it cannot be (no series when it is off).";
    KernelLogOverwritten = "inferwatch_kernel_log_overwritten_total", COUNTER, &[], "Times the kernel log overwrote records before they were read (EPIPE): XIDs in them are lost.";
    Proc = "gpu_process_memory_used_bytes", GAUGE, PROC, "Device memory used by a compute process, with who holds it: service (a health.services match), systemd unit, container and compose labels, empty when unknown (only with gpu.per_process; past gpu.per_process_max the smallest are summed into process_name=\"_other\").";
    ProcSm = "gpu_process_sm_utilization_ratio", GAUGE, PROC, "Fraction of the GPU's SMs a compute process kept busy in its latest driver sample (0-1; only with gpu.per_process).";
    ProcMemUtil = "gpu_process_memory_utilization_ratio", GAUGE, PROC, "Fraction of time a compute process was reading or writing device memory in its latest driver sample (0-1; only with gpu.per_process).";
    ServiceMem = "gpu_service_memory_used_bytes", GAUGE, &["gpu", "uuid", "service"], "Device memory held by a service's compute processes; service=\"unattributed\" for processes no health.services match names (only with gpu.per_process).";
    ServiceSm = "gpu_service_sm_utilization_ratio", GAUGE, &["gpu", "uuid", "service"], "Summed SM use of a service's compute processes in their latest driver samples (0-1 per process; only with gpu.per_process).";
    Unattributed = "gpu_unattributed_memory_bytes", GAUGE, GPU, "Used device memory that no running compute process accounts for: memory held by dead or foreign contexts (only with gpu.per_process).";
    AttributionSeconds = "inferwatch_gpu_attribution_duration_seconds", GAUGE, &[], "Seconds the last poll spent finding who holds each GPU process (/proc reads, Docker calls on a cache miss, service matching; only with gpu.per_process).";
    ServiceEnergy = "gpu_service_energy_joules_total", COUNTER, &["gpu", "uuid", "service"], "Energy of the GPU charged to a service since the daemon started: each poll's energy goes to the services holding processes on it, split by SM use, else by memory (docs/inference.md, energy per service).";
    UnattributedEnergy = "gpu_unattributed_energy_joules_total", COUNTER, GPU, "Energy of the GPU since the daemon started that no service held (no process, or processes no health.services match names).";
    EnergyMethod = "gpu_energy_method", GAUGE, &["gpu", "uuid", "method"], "1 for how the GPU's energy is measured: counter (the driver's total energy counter) or power (power draw times the poll interval, where the driver has no counter).";
    Folded = "gpu_processes_folded", GAUGE, GPU, "Compute processes past gpu.per_process_max summed into process_name=\"_other\" in the last poll.";
    GraphicsActive = "gpu_graphics_engine_active_ratio", GAUGE, GPU, "GPM: fraction of the slow interval the graphics or compute engine was active (0-1).";
    SmActive = "gpu_sm_active_ratio", GAUGE, GPU, "GPM: fraction of the slow interval an SM had at least one warp assigned, averaged over SMs (0-1).";
    SmOccupancy = "gpu_sm_occupancy_ratio", GAUGE, GPU, "GPM: resident warps as a fraction of the theoretical maximum, averaged over SMs (0-1).";
    TensorActive = "gpu_tensor_active_ratio", GAUGE, GPU, "GPM: fraction of the slow interval any tensor pipe was active (0-1).";
    DramActive = "gpu_dram_active_ratio", GAUGE, GPU, "GPM: fraction of peak DRAM bandwidth used over the slow interval (0-1).";
    Pipe = "gpu_pipe_active_ratio", GAUGE, &["gpu", "uuid", "pipe"], "GPM: fraction of the slow interval each pipe was active (0-1): fp16, fp32, fp64, integer, tensor_hmma, tensor_imma, tensor_dfma.";
    PcieThroughput = "gpu_pcie_throughput_bytes_per_second", GAUGE, &["gpu", "uuid", "direction"], "GPM: PCIe traffic over the slow interval, tx (from the GPU) and rx.";
    NvlinkThroughput = "gpu_nvlink_throughput_bytes_per_second", GAUGE, &["gpu", "uuid", "direction"], "GPM: NVLink traffic over all links over the slow interval (only on GPUs with NVLink).";
    ClockEvent = "gpu_clock_event_seconds_total", COUNTER, &["gpu", "uuid", "reason"], "Time the clocks were held down for each reason since the driver loaded: sw_power_cap, sync_boost, sw_thermal_slowdown, hw_thermal_slowdown, hw_power_brake_slowdown.";
    MemTemp = "gpu_memory_temperature_celsius", GAUGE, GPU, "Device memory (HBM) temperature.";
    Threshold = "gpu_temperature_threshold_celsius", GAUGE, &["gpu", "uuid", "threshold"], "The card's temperature thresholds: slowdown, shutdown, gpu_max, memory_max.";
    MaxClock = "gpu_clock_max_hz", GAUGE, &["gpu", "uuid", "clock"], "Highest clock speed by clock domain.";
    PcieGen = "gpu_pcie_link_generation", GAUGE, GPU, "Current PCIe link generation (a link that trained below its usual generation is a hardware problem).";
    PcieWidth = "gpu_pcie_link_width", GAUGE, GPU, "Current PCIe link width in lanes.";
    PcieReplay = "gpu_pcie_replay_total", COUNTER, GPU, "PCIe replays (retransmissions) since the driver loaded.";
    Remapped = "gpu_remapped_rows", GAUGE, &["gpu", "uuid", "type"], "Memory rows remapped for correctable and uncorrectable errors.";
    RemappedPending = "gpu_remapped_rows_pending", GAUGE, GPU, "1 if a row remap is pending (needs a GPU reset).";
    RemappedFailed = "gpu_remapped_rows_failed", GAUGE, GPU, "1 if a row remap has failed (the card should be replaced).";
    RecoveryAction = "gpu_recovery_action", GAUGE, &["gpu", "uuid", "action"], "1 for the recovery action the driver says the GPU needs (field 230): none, gpu_reset, node_reboot, drain_p2p, drain_and_reset; no series where the driver does not know the field.";
}

/// Exposes the snapshot as Prometheus families.
pub struct GpuFamilies {
    state: Arc<GpuState>,
    descs: Vec<Desc>,
}

impl GpuFamilies {
    pub fn new(state: Arc<GpuState>) -> GpuFamilies {
        let descs = FAMILIES
            .iter()
            .map(|f| {
                Desc::new(
                    f.name.into(),
                    f.help.into(),
                    f.labels.iter().map(|l| l.to_string()).collect(),
                    Default::default(),
                )
                .expect("valid metric descriptor")
            })
            .collect();
        GpuFamilies { state, descs }
    }
}

/// Accumulates metrics per family while a page is built.
struct Builder {
    metrics: Vec<Vec<proto::Metric>>,
}

impl Builder {
    fn add(&mut self, f: F, labels: &[&str], value: f64) {
        let family = &FAMILIES[f as usize];
        let pairs = family
            .labels
            .iter()
            .zip(labels)
            .map(|(name, value)| {
                let mut p = LabelPair::default();
                p.set_name(name.to_string());
                p.set_value(value.to_string());
                p
            })
            .collect();
        let mut m = proto::Metric::from_label(pairs);
        if family.kind == MetricType::COUNTER {
            let mut c = proto::Counter::default();
            c.set_value(value);
            m.set_counter(c);
        } else {
            let mut g = proto::Gauge::default();
            g.set_value(value);
            m.set_gauge(g);
        }
        self.metrics[f as usize].push(m);
    }

    fn opt(&mut self, f: F, labels: &[&str], value: Option<f64>) {
        if let Some(v) = value {
            self.add(f, labels, v);
        }
    }

    /// Every series of one GPU's reading.
    fn reading(&mut self, r: &GpuReading, driver_version: &str) {
        let idx = r.index.to_string();
        let l = [idx.as_str(), r.uuid.as_str()];
        self.add(F::Info, &[&idx, &r.uuid, &r.name, driver_version, &r.pci_bus_id], 1.0);
        self.opt(F::Util, &l, r.utilization);
        self.opt(F::MemUtil, &l, r.memory_utilization);
        self.opt(F::MemUsed, &l, r.memory_used_bytes.map(|v| v as f64));
        self.opt(F::MemTotal, &l, r.memory_total_bytes.map(|v| v as f64));
        self.opt(F::MemFree, &l, r.memory_free_bytes.map(|v| v as f64));
        self.opt(F::Temp, &l, r.temperature_celsius);
        self.opt(F::Power, &l, r.power_usage_watts);
        self.opt(F::PowerLimit, &l, r.power_limit_watts);
        for (fan, ratio) in &r.fans {
            self.add(F::Fan, &[l[0], l[1], &fan.to_string()], *ratio);
        }
        for (clock, hz) in ["graphics", "sm", "memory"].iter().zip(r.clocks_hz) {
            self.opt(F::Clock, &[l[0], l[1], clock], hz);
        }
        self.opt(F::Enc, &l, r.encoder_utilization);
        self.opt(F::Dec, &l, r.decoder_utilization);
        self.opt(F::Energy, &l, r.energy_joules);
        self.opt(F::Ecc, &[l[0], l[1], "corrected"], r.ecc_corrected.map(|v| v as f64));
        self.opt(
            F::Ecc,
            &[l[0], l[1], "uncorrected"],
            r.ecc_uncorrected.map(|v| v as f64),
        );
        if let Some(bits) = r.throttle_reasons {
            for (bit, reason) in THROTTLE_REASONS {
                self.add(
                    F::Throttle,
                    &[l[0], l[1], reason],
                    if bits & bit != 0 { 1.0 } else { 0.0 },
                );
            }
        }
        self.health(r, &l);
        self.gpm(r, &l);
    }

    /// One GPU's process table: each process with its owner (the SM and
    /// memory-utilization samples are a slow field; a process that has
    /// exited since has no series), the per-service sums, the memory no
    /// process accounts for, and how many were folded into `_other`.
    fn processes(&mut self, t: &GpuProcesses) {
        let idx = t.gpu.to_string();
        let l = [idx.as_str(), t.uuid.as_str()];
        for row in &t.rows {
            let o = &row.owner;
            let labels = [
                l[0],
                l[1],
                &row.pid,
                &row.name,
                &o.service,
                &o.unit,
                &o.container,
                &o.compose_project,
                &o.compose_service,
            ];
            self.add(F::Proc, &labels, row.bytes as f64);
            self.opt(F::ProcSm, &labels, row.sm);
            self.opt(F::ProcMemUtil, &labels, row.memory_utilization);
        }
        for (service, used) in &t.services {
            self.add(F::ServiceMem, &[l[0], l[1], service], used.bytes as f64);
            self.opt(F::ServiceSm, &[l[0], l[1], service], used.sm);
        }
        self.opt(F::Unattributed, &l, t.unattributed_bytes.map(|b| b as f64));
        self.add(F::Folded, &l, t.folded as f64);
    }

    /// Throttle time, memory temperature, thresholds, PCIe link, remapping.
    fn energy(&mut self, e: &crate::inference::energy::EnergyTotals) {
        for ((gpu, uuid, service), joules) in &e.services {
            self.add(F::ServiceEnergy, &[gpu, uuid, service], *joules);
        }
        for ((gpu, uuid), joules) in &e.unattributed {
            self.add(F::UnattributedEnergy, &[gpu, uuid], *joules);
        }
        for ((gpu, uuid), current) in &e.method {
            for method in crate::inference::energy::METHODS {
                self.add(
                    F::EnergyMethod,
                    &[gpu, uuid, method],
                    if method == *current { 1.0 } else { 0.0 },
                );
            }
        }
    }

    fn health(&mut self, r: &GpuReading, l: &[&str; 2]) {
        for (reason, seconds) in &r.clock_event_seconds {
            self.add(F::ClockEvent, &[l[0], l[1], reason], *seconds);
        }
        self.opt(F::MemTemp, l, r.memory_temperature_celsius);
        for (threshold, celsius) in &r.temperature_thresholds {
            self.add(F::Threshold, &[l[0], l[1], threshold], *celsius);
        }
        for (clock, hz) in &r.max_clocks_hz {
            self.add(F::MaxClock, &[l[0], l[1], clock], *hz);
        }
        let get = crate::nvml::fields::list_get;
        self.opt(F::PcieGen, l, get(&r.pcie_link, "generation"));
        self.opt(F::PcieWidth, l, get(&r.pcie_link, "width"));
        self.opt(F::PcieReplay, l, r.pcie_replay);
        for kind in ["correctable", "uncorrectable"] {
            self.opt(F::Remapped, &[l[0], l[1], kind], get(&r.remapped_rows, kind));
        }
        self.opt(F::RemappedPending, l, get(&r.remapped_rows, "pending"));
        self.opt(F::RemappedFailed, l, get(&r.remapped_rows, "failed"));
        if let Some(current) = r.recovery_action {
            for (i, action) in RECOVERY_ACTIONS.iter().enumerate() {
                self.add(
                    F::RecoveryAction,
                    &[l[0], l[1], action],
                    if i as u32 == current { 1.0 } else { 0.0 },
                );
            }
            if current as usize >= RECOVERY_ACTIONS.len() {
                // A value newer than this build knows: still visible.
                self.add(F::RecoveryAction, &[l[0], l[1], &format!("unknown_{current}")], 1.0);
            }
        }
    }

    /// The GPM metrics, where the GPU has them.
    fn gpm(&mut self, r: &GpuReading, l: &[&str; 2]) {
        for (key, v) in &r.gpm {
            let (family, label) = match key.as_str() {
                "graphics" => (F::GraphicsActive, None),
                "sm" => (F::SmActive, None),
                "occupancy" => (F::SmOccupancy, None),
                "tensor" => (F::TensorActive, None),
                "dram" => (F::DramActive, None),
                "pcie_tx" => (F::PcieThroughput, Some("tx")),
                "pcie_rx" => (F::PcieThroughput, Some("rx")),
                "nvlink_tx" => (F::NvlinkThroughput, Some("tx")),
                "nvlink_rx" => (F::NvlinkThroughput, Some("rx")),
                pipe if PIPES.contains(&pipe) => (F::Pipe, Some(pipe)),
                _ => continue,
            };
            match label {
                Some(label) => self.add(family, &[l[0], l[1], label], *v),
                None => self.add(family, l, *v),
            }
        }
    }
}

impl PromCollector for GpuFamilies {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let snap = self.state.snapshot();
        let mut b = Builder {
            metrics: vec![Vec::new(); FAMILIES.len()],
        };
        b.add(F::Available, &[], if snap.available { 1.0 } else { 0.0 });
        b.add(F::NvmlUp, &[], if snap.nvml_up { 1.0 } else { 0.0 });
        for (reason, n) in &snap.init_errors {
            b.add(F::NvmlInitErrors, &[reason.as_str()], *n as f64);
        }
        if let Some(v) = &snap.versions {
            b.add(F::DriverInfo, &[&v.driver, &v.nvml, &v.cuda], 1.0);
        }
        b.add(F::Devices, &[], snap.readings.len() as f64);
        for r in &snap.readings {
            b.reading(r, &snap.driver_version);
        }
        for t in &snap.processes {
            b.processes(t);
        }
        b.energy(&snap.energy);
        b.opt(F::AttributionSeconds, &[], snap.attribution_seconds);
        for ((gpu, uuid, xid), n) in &snap.xid_totals {
            b.add(F::Xid, &[gpu, uuid, xid], *n as f64);
        }
        for ((gpu, uuid, xid), at) in &snap.xid_last_seen {
            let (severity, action) = match xid.strip_prefix("sxid_") {
                Some(_) => ("warning", "check_nvswitch"),
                None => catalog::classify(xid.parse().unwrap_or(0)),
            };
            b.add(F::XidLastSeen, &[gpu, uuid, xid, severity, action], *at);
        }
        if let Some(up) = snap.kernel_log_up {
            b.add(F::KernelLogUp, &[], if up { 1.0 } else { 0.0 });
            b.add(F::KernelLogOverwritten, &[], snap.kernel_log_overwritten as f64);
        }
        FAMILIES
            .iter()
            .zip(b.metrics)
            .filter(|(_, metrics)| !metrics.is_empty())
            .map(|(f, metrics)| {
                let mut mf = MetricFamily::default();
                mf.set_name(f.name.to_string());
                mf.set_help(f.help.to_string());
                mf.set_field_type(f.kind);
                mf.set_metric(metrics);
                mf
            })
            .collect()
    }
}
