//! The NVML edge: one dedicated OS thread owns the library handle and answers
//! poll requests, so blocking driver calls never run on the async workers.
//!
//! The thread initialises NVML once (through nvml-wrapper's dynamic loading,
//! at the configured path), registers for critical-XID events, and then
//! serves one poll at a time. The async side waits for the answer with a
//! timeout; while a poll is still running, a second one is refused rather
//! than queued behind a stuck driver.
//!
//! Which fields are read when, and how each is metered, is in [`fields`].
//! A field error skips that field for that GPU (logged once per GPU, field
//! and error); only `GpuLost`, or a handle or UUID that cannot be read,
//! takes the device out of the round.

pub mod fields;
pub mod meter;
pub mod profiling;

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use nvml_wrapper::error::NvmlError;
use nvml_wrapper::{Device, EventSet, Nvml};
use tokio::sync::oneshot;

use self::fields::{error_name, is_absent, Class, Field, Meter, NvmlMetrics, Value};

/// Throttle-reason bits from `nvml.h`, with the `reason` label each gets.
pub const THROTTLE_REASONS: [(u64, &str); 9] = [
    (0x1, "gpu_idle"),
    (0x2, "applications_clocks_setting"),
    (0x4, "sw_power_cap"),
    (0x8, "hw_slowdown"),
    (0x10, "sync_boost"),
    (0x20, "sw_thermal_slowdown"),
    (0x40, "hw_thermal_slowdown"),
    (0x80, "hw_power_brake_slowdown"),
    (0x100, "display_clock_setting"),
];

/// One GPU's readings in base units; `None` where the driver had no answer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GpuReading {
    pub index: u32,
    pub uuid: String,
    pub name: String,
    pub pci_bus_id: String,
    pub utilization: Option<f64>,
    pub memory_utilization: Option<f64>,
    pub memory_used_bytes: Option<u64>,
    pub memory_total_bytes: Option<u64>,
    pub memory_free_bytes: Option<u64>,
    pub temperature_celsius: Option<f64>,
    pub power_usage_watts: Option<f64>,
    pub power_limit_watts: Option<f64>,
    /// `(fan index, intended speed 0-1)` for each fan that answered.
    pub fans: Vec<(u32, f64)>,
    /// Graphics, SM and memory clocks, in Hz.
    pub clocks_hz: [Option<f64>; 3],
    pub encoder_utilization: Option<f64>,
    pub decoder_utilization: Option<f64>,
    pub energy_joules: Option<f64>,
    pub ecc_corrected: Option<u64>,
    pub ecc_uncorrected: Option<u64>,
    pub throttle_reasons: Option<u64>,
    /// `(pid, process name, bytes)`; only read when per-process is on.
    pub processes: Option<Vec<(u32, String, u64)>>,
    /// HBM temperature (fast, field value).
    pub memory_temperature_celsius: Option<f64>,
    /// Seconds with clocks held down since the driver loaded, per reason
    /// (fast, field values).
    pub clock_event_seconds: Vec<(String, f64)>,
    /// `slowdown`, `shutdown`, `gpu_max`, `memory_max` in °C (static).
    pub temperature_thresholds: Vec<(String, f64)>,
    /// Highest `graphics`, `sm`, `memory` clocks in Hz (static).
    pub max_clocks_hz: Vec<(String, f64)>,
    /// PCIe link `generation` and `width` (slow).
    pub pcie_link: Vec<(String, f64)>,
    /// PCIe replays since the driver loaded (slow).
    pub pcie_replay: Option<f64>,
    /// `correctable`, `uncorrectable` row counts and the `pending`,
    /// `failed` flags (slow).
    pub remapped_rows: Vec<(String, f64)>,
    /// Field 230's answer (an index into `profiling::RECOVERY_ACTIONS`),
    /// where the driver knows the field.
    pub recovery_action: Option<u32>,
    /// GPM metrics over the last slow interval, keyed as
    /// [`profiling::GPM_METRICS`], in ratios and bytes per second (slow).
    pub gpm: Vec<(String, f64)>,
    /// `(pid, name, SM 0-1, memory 0-1)`; only read when per-process is on (slow).
    pub process_utilization: Option<Vec<(u32, String, f64, f64)>>,
}

/// The result of one poll of every device.
#[derive(Debug, Default)]
pub struct PollOutcome {
    pub readings: Vec<GpuReading>,
    /// Indexes of devices that answered `GpuLost`.
    pub lost: Vec<u32>,
    /// Critical XID events since the last poll: `(index, uuid, xid)`.
    pub xids: Vec<(u32, String, u64)>,
    /// Devices that could not be identified (handle or UUID), or a device
    /// count that failed: these fail the round. Field errors never do.
    pub errors: Vec<String>,
    /// Set when the driver itself is gone (unloaded, or upgraded under the
    /// daemon): the device count, or every device, answered
    /// `UNINITIALIZED`, `DRIVER_NOT_LOADED` or `LIB_RM_VERSION_MISMATCH`.
    /// The value is the init reason it maps to.
    pub driver_gone: Option<InitReason>,
}

/// Why `nvmlInit` (or loading the library) failed: the `reason` label of
/// `inferwatch_nvml_init_errors_total`, and what `/api/system/gpu` and the
/// log say while NVML is down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum InitReason {
    LibraryNotFound,
    LibraryLoadFailed,
    DriverNotLoaded,
    LibRmVersionMismatch,
    NoPermission,
    InsufficientSize,
    Unknown,
}

impl InitReason {
    /// Every reason, each exported from 0.
    pub const ALL: [InitReason; 7] = [
        InitReason::LibraryNotFound,
        InitReason::LibraryLoadFailed,
        InitReason::DriverNotLoaded,
        InitReason::LibRmVersionMismatch,
        InitReason::NoPermission,
        InitReason::InsufficientSize,
        InitReason::Unknown,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            InitReason::LibraryNotFound => "library_not_found",
            InitReason::LibraryLoadFailed => "library_load_failed",
            InitReason::DriverNotLoaded => "driver_not_loaded",
            InitReason::LibRmVersionMismatch => "lib_rm_version_mismatch",
            InitReason::NoPermission => "no_permission",
            InitReason::InsufficientSize => "insufficient_size",
            InitReason::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for InitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why loading the library at `path` or `nvmlInit` failed.
pub fn init_reason(path: &str, e: &NvmlError) -> InitReason {
    match e {
        NvmlError::LibloadingError(le) => {
            let missing = if path.contains('/') {
                !std::path::Path::new(path).exists()
            } else {
                le.to_string().contains("No such file")
            };
            if missing {
                InitReason::LibraryNotFound
            } else {
                InitReason::LibraryLoadFailed
            }
        }
        NvmlError::LibraryNotFound => InitReason::LibraryNotFound,
        NvmlError::FailedToLoadSymbol(_) | NvmlError::FunctionNotFound => InitReason::LibraryLoadFailed,
        NvmlError::DriverNotLoaded => InitReason::DriverNotLoaded,
        NvmlError::LibRmVersionMismatch => InitReason::LibRmVersionMismatch,
        NvmlError::NoPermission => InitReason::NoPermission,
        NvmlError::InsufficientSize(_) => InitReason::InsufficientSize,
        _ => InitReason::Unknown,
    }
}

/// The init reason of an answer that means the driver is gone mid-run.
fn gone_reason(e: &NvmlError) -> Option<InitReason> {
    match e {
        NvmlError::Uninitialized | NvmlError::DriverNotLoaded => Some(InitReason::DriverNotLoaded),
        NvmlError::LibRmVersionMismatch => Some(InitReason::LibRmVersionMismatch),
        _ => None,
    }
}

/// What the driver says it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DriverVersions {
    pub driver: String,
    pub nvml: String,
    /// `MAJOR.MINOR` from `nvmlSystemGetCudaDriverVersion_v2`.
    pub cuda: String,
}

/// What the poller reads and how often. Each poll request carries them,
/// so a reload reaches the NVML thread at its next poll.
#[derive(Debug, Clone, PartialEq)]
pub struct PollerOptions {
    pub per_process: bool,
    pub exclude: HashSet<Field>,
    pub poll_interval: Duration,
    pub slow_interval: Duration,
}

/// Why NVML could not be used at all.
#[derive(Debug, thiserror::Error)]
pub enum NvmlStartError {
    #[error("failed to load NVML ({path}): {source}")]
    Init { path: String, source: NvmlError },
    #[error("NVML thread could not be started: {0}")]
    Thread(String),
}

/// Why one poll failed as a whole.
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error("the previous NVML poll is still running")]
    Busy,
    #[error("the NVML thread has stopped")]
    Gone,
}

type Request = (PollerOptions, oneshot::Sender<PollOutcome>);

/// Handle to the NVML thread.
pub struct NvmlHandle {
    tx: mpsc::SyncSender<Request>,
    /// Set while a poll is with the thread; cleared by the thread when done.
    busy: Arc<AtomicBool>,
    pub versions: DriverVersions,
}

impl NvmlHandle {
    /// Starts the thread and waits for NVML to initialise.
    pub async fn start(
        lib_path: &str,
        options: PollerOptions,
        metrics: Option<NvmlMetrics>,
    ) -> Result<NvmlHandle, NvmlStartError> {
        let (tx, rx) = mpsc::sync_channel::<Request>(1);
        let (init_tx, init_rx) = oneshot::channel();
        let path = lib_path.to_string();
        let busy = Arc::new(AtomicBool::new(false));
        let worker_busy = busy.clone();
        std::thread::Builder::new()
            .name("nvml".into())
            .spawn(move || worker(path, options, Meter::new(metrics), init_tx, rx, worker_busy))
            .map_err(|e| NvmlStartError::Thread(e.to_string()))?;
        let versions = init_rx
            .await
            .map_err(|_| NvmlStartError::Thread("exited during init".into()))??;
        Ok(NvmlHandle { tx, busy, versions })
    }

    /// Asks the thread for one poll of every device. While an earlier poll
    /// is still stuck in the driver, this fails at once with `Busy`.
    pub async fn poll(&self, options: &PollerOptions) -> Result<PollOutcome, PollError> {
        if self.busy.swap(true, Ordering::AcqRel) {
            return Err(PollError::Busy);
        }
        let (reply, answer) = oneshot::channel();
        // Never blocks: the thread has taken every earlier request.
        if self.tx.try_send((options.clone(), reply)).is_err() {
            self.busy.store(false, Ordering::Release);
            return Err(PollError::Gone);
        }
        answer.await.map_err(|_| PollError::Gone)
    }
}

fn worker(
    path: String,
    options: PollerOptions,
    meter: Meter,
    init_tx: oneshot::Sender<Result<DriverVersions, NvmlStartError>>,
    rx: mpsc::Receiver<Request>,
    busy: Arc<AtomicBool>,
) {
    let nvml = match Nvml::builder().lib_path(OsStr::new(&path)).init() {
        Ok(nvml) => nvml,
        Err(source) => {
            let _ = init_tx.send(Err(NvmlStartError::Init { path, source }));
            return;
        }
    };
    let versions = DriverVersions {
        driver: nvml.sys_driver_version().unwrap_or_default(),
        nvml: nvml.sys_nvml_version().unwrap_or_default(),
        cuda: nvml
            .sys_cuda_driver_version()
            .map(|v| format!("{}.{}", v / 1000, (v % 1000) / 10))
            .unwrap_or_default(),
    };
    let _ = init_tx.send(Ok(versions));
    let mut poller = Poller {
        nvml: &nvml,
        events: None,
        options,
        meter,
        last_slow: None,
        logged: HashSet::new(),
        statics: HashMap::new(),
        slow: HashMap::new(),
        gpm: profiling::GpmSampler::default(),
    };
    poller.events = poller.register_xid_events();
    // `recv` fails once the handle is dropped, which ends the thread.
    while let Ok((options, reply)) = rx.recv() {
        if options != poller.options {
            // A reload changed the cadences or the exclusions: the statics
            // depend on what is excluded, so they are read again.
            poller.statics.clear();
            poller.options = options;
        }
        let outcome = poller.poll();
        busy.store(false, Ordering::Release);
        // The asker may have timed out and gone; that is fine.
        let _ = reply.send(outcome);
    }
}

struct Poller<'n> {
    nvml: &'n Nvml,
    events: Option<EventSet<'n>>,
    options: PollerOptions,
    meter: Meter,
    /// When the slow fields were last read.
    last_slow: Option<Instant>,
    /// `(uuid, field, error)` already logged.
    logged: HashSet<(String, Field, &'static str)>,
    /// Static fields per UUID, read when the GPU is first seen (or back).
    statics: HashMap<String, Statics>,
    /// Slow fields' last values per UUID.
    slow: HashMap<String, Slow>,
    /// The GPM sample each GPU took at the last slow tick.
    gpm: profiling::GpmSampler<'n>,
}

/// The static fields of one GPU.
#[derive(Debug, Clone, Default)]
struct Statics {
    name: Option<String>,
    pci_bus_id: Option<String>,
    memory_total: Option<u64>,
    /// Fans to read: `nvmlDeviceGetNumFans`, or 1 (fan 0) when the driver
    /// cannot count them.
    fans: u32,
    /// Whether link 0 answers `nvmlDeviceGetNvLinkState`.
    nvlink: bool,
    /// Whether `nvmlGpmQueryDeviceSupport` says yes (and GPM is not excluded).
    gpm: bool,
    /// Thresholds and max clocks, put into every reading.
    values: Vec<(Field, Value)>,
}

/// The slow fields' last values of one GPU.
#[derive(Debug, Clone, Default)]
struct Slow {
    values: Vec<(Field, Value)>,
}

/// Why a device is out of this round.
enum Out {
    Lost,
    Unidentified(String),
    /// The driver answered as if it were gone: the reason, and the error.
    DriverGone(InitReason, String),
}

impl<'n> Poller<'n> {
    fn register_xid_events(&mut self) -> Option<EventSet<'n>> {
        use nvml_wrapper::bitmasks::event::EventTypes;
        let count = self.nvml.device_count().ok()?;
        let mut set = None;
        for i in 0..count {
            let Ok(device) = self.nvml.device_by_index(i) else {
                continue;
            };
            let fresh = match set.take() {
                Some(s) => s,
                None => match self.nvml.create_event_set() {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::debug!(error = %e, "NVML event sets are unavailable; XID errors will not be counted.");
                        return None;
                    }
                },
            };
            match device.register_events(EventTypes::CRITICAL_XID_ERROR, fresh) {
                Ok(s) => set = Some(s),
                Err(e) => tracing::debug!(gpu = i, error = %e.error, "XID events are not supported on this GPU."),
            }
        }
        set
    }

    fn poll(&mut self) -> PollOutcome {
        let mut out = PollOutcome::default();
        // Due within half a poll counts as due, so a 3 s cadence at a 1 s
        // poll is every third poll, not every fourth one after jitter.
        let slack = self.options.poll_interval / 2;
        let read_slow = self
            .last_slow
            .map_or(true, |t| t.elapsed() + slack >= self.options.slow_interval);
        if read_slow {
            self.last_slow = Some(Instant::now());
        }
        let count = match self.meter.call("device_count", || self.nvml.device_count()) {
            Ok(c) => c,
            Err(e) => {
                out.driver_gone = gone_reason(&e);
                out.errors.push(format!("failed to count devices: {e}"));
                return out;
            }
        };
        let mut seen = HashSet::new();
        // Devices that answered as if the driver were gone, and the reason.
        let mut gone = (0, None);
        for i in 0..count {
            match self.meter.call("handle_by_index", || self.nvml.device_by_index(i)) {
                Ok(device) => match self.read(i, &device, read_slow) {
                    Ok(r) => {
                        seen.insert(r.uuid.clone());
                        out.readings.push(r);
                    }
                    Err(Out::Lost) => out.lost.push(i),
                    Err(Out::Unidentified(e)) => out.errors.push(e),
                    Err(Out::DriverGone(reason, e)) => {
                        gone = (gone.0 + 1, Some(reason));
                        out.errors.push(e);
                    }
                },
                Err(NvmlError::GpuLost) => out.lost.push(i),
                Err(e) => {
                    if let Some(reason) = gone_reason(&e) {
                        gone = (gone.0 + 1, Some(reason));
                    }
                    out.errors.push(format!("failed to open GPU {i}: {e}"));
                }
            }
        }
        if count > 0 && gone.0 == count {
            out.driver_gone = gone.1;
        }
        // A GPU that is gone has its static fields read again when it returns.
        self.statics.retain(|uuid, _| seen.contains(uuid));
        self.slow.retain(|uuid, _| seen.contains(uuid));
        self.gpm.retain(|uuid| seen.contains(uuid));
        self.drain_events(&mut out);
        out
    }

    /// Logs a field error once per (GPU, field, error).
    fn field_error(&mut self, index: u32, uuid: &str, field: Field, e: &NvmlError) {
        let name = error_name(e);
        if !self.logged.insert((uuid.to_string(), field, name)) {
            return;
        }
        if is_absent(e) {
            tracing::debug!(
                gpu = index,
                uuid,
                field = field.name(),
                error = name,
                "GPU field not available from this driver or card; skipping it."
            );
        } else {
            tracing::info!(
                gpu = index,
                uuid,
                field = field.name(),
                error = name,
                "GPU field could not be read; skipping it."
            );
        }
    }

    /// Reads one field unless excluded: `Ok(None)` when skipped or failed.
    fn field(&mut self, index: u32, uuid: &str, d: &Device<'n>, field: Field, fans: u32) -> Result<Option<Value>, Out> {
        if self.options.exclude.contains(&field) {
            return Ok(None);
        }
        match field.read(self.nvml, d, fans, &self.meter) {
            Ok(v) => Ok(Some(v)),
            Err(NvmlError::GpuLost) => Err(Out::Lost),
            Err(e) => {
                self.field_error(index, uuid, field, &e);
                Ok(None)
            }
        }
    }

    fn read_statics(&mut self, index: u32, uuid: &str, d: &Device<'n>) -> Result<Statics, Out> {
        let mut s = Statics {
            fans: 1,
            ..Default::default()
        };
        if let Some(Value::Text(t)) = self.field(index, uuid, d, Field::Name, 0)? {
            s.name = Some(t);
        }
        if let Some(Value::Text(t)) = self.field(index, uuid, d, Field::PciBusId, 0)? {
            s.pci_bus_id = Some(t);
        }
        s.memory_total = self
            .field(index, uuid, d, Field::MemoryTotal, 0)?
            .and_then(|v| v.num())
            .map(|v| v as u64);
        if !self.options.exclude.contains(&Field::FanSpeed) {
            if let Some(n) = self.field(index, uuid, d, Field::NumFans, 0)?.and_then(|v| v.num()) {
                s.fans = n as u32;
            }
        }
        for field in [Field::TemperatureThresholds, Field::MaxClocks] {
            if let Some(v) = self.field(index, uuid, d, field, 0)? {
                s.values.push((field, v));
            }
        }
        if !self.options.exclude.contains(&Field::Gpm) {
            // "Not supported" is an answer like any field error: logged once, at debug.
            let answer = match profiling::gpm_supported(d, &self.meter) {
                Ok(true) => Ok(()),
                Ok(false) => Err(NvmlError::NotSupported),
                Err(NvmlError::GpuLost) => return Err(Out::Lost),
                Err(e) => Err(e),
            };
            if let Err(e) = &answer {
                self.field_error(index, uuid, Field::Gpm, e);
            }
            s.gpm = answer.is_ok();
            // NVLink only decides whether GPM is asked for NVLink traffic.
            s.nvlink = s.gpm && self.field(index, uuid, d, Field::NvLink, 0)?.and_then(|v| v.num()) == Some(1.0);
        }
        Ok(s)
    }

    /// Reads the slow fields (or only GPM): GPM from the sampler,
    /// per-process utilization only when per-process is on.
    fn read_slow(
        &mut self,
        index: u32,
        uuid: &str,
        d: &Device<'n>,
        statics: &Statics,
        only_gpm: bool,
    ) -> Result<Slow, Out> {
        let mut slow = Slow::default();
        let due = |f: &Field| f.class() == Class::Slow && (!only_gpm || *f == Field::Gpm);
        for field in Field::ALL.into_iter().filter(due) {
            let value = match field {
                Field::ProcessUtilization if !self.options.per_process => None,
                Field::Gpm if !statics.gpm => None,
                Field::Gpm => match self.gpm.tick(self.nvml, uuid, d, statics.nvlink, &self.meter) {
                    Ok(v) => v,
                    Err(NvmlError::GpuLost) => return Err(Out::Lost),
                    Err(e) => {
                        self.field_error(index, uuid, field, &e);
                        None
                    }
                },
                _ => self.field(index, uuid, d, field, 0)?,
            };
            if let Some(v) = value {
                slow.values.push((field, v));
            }
        }
        Ok(slow)
    }

    fn read(&mut self, index: u32, d: &Device<'n>, read_slow: bool) -> Result<GpuReading, Out> {
        let uuid = match self.meter.call("uuid", || d.uuid()) {
            Ok(u) => u,
            Err(NvmlError::GpuLost) => return Err(Out::Lost),
            Err(e) => {
                let text = format!("GPU {index}: failed to read its UUID: {e}");
                return Err(match gone_reason(&e) {
                    Some(reason) => Out::DriverGone(reason, text),
                    None => Out::Unidentified(text),
                });
            }
        };
        let u = uuid.as_str();
        let statics = match self.statics.get(u) {
            Some(s) => s.clone(),
            None => {
                let s = self.read_statics(index, u, d)?;
                self.statics.insert(uuid.clone(), s.clone());
                s
            }
        };
        let mut r = GpuReading {
            index,
            uuid: uuid.clone(),
            name: statics.name.clone().unwrap_or_else(|| "unknown".into()),
            pci_bus_id: statics.pci_bus_id.clone().unwrap_or_default(),
            memory_total_bytes: statics.memory_total,
            ..Default::default()
        };
        for field in Field::ALL.into_iter().filter(|f| f.class() == Class::Fast) {
            if field == Field::Processes && !self.options.per_process {
                continue;
            }
            if let Some(v) = self.field(index, u, d, field, statics.fans)? {
                apply(&mut r, field, v);
            }
        }
        // GPM's first metrics come at the poll after its first sample, not
        // a whole slow interval later; from then on, every slow tick.
        let gpm_warm_up = !read_slow
            && statics.gpm
            && self.gpm.has_sample(u)
            && self
                .slow
                .get(u)
                .is_some_and(|s| !s.values.iter().any(|(f, _)| *f == Field::Gpm));
        if read_slow {
            let slow = self.read_slow(index, u, d, &statics, false)?;
            self.slow.insert(uuid.clone(), slow);
        } else if gpm_warm_up {
            let gpm = self.read_slow(index, u, d, &statics, true)?;
            self.slow.entry(uuid.clone()).or_default().values.extend(gpm.values);
        }
        let kept = self.slow.get(u).map(|s| s.values.iter()).into_iter().flatten();
        for (field, v) in statics.values.iter().chain(kept) {
            apply(&mut r, *field, v.clone());
        }
        Ok(r)
    }
    fn drain_events(&mut self, out: &mut PollOutcome) {
        let Some(set) = &self.events else { return };
        // Bounded: a storm of events cannot keep a poll busy forever.
        for _ in 0..1024 {
            match set.wait(0) {
                Ok(ev) => {
                    let Some(nvml_wrapper::enums::event::XidError::Value(xid)) = ev.event_data else {
                        continue;
                    };
                    let index = ev.device.index().unwrap_or(u32::MAX);
                    let uuid = ev.device.uuid().unwrap_or_default();
                    out.xids.push((index, uuid, xid));
                }
                Err(NvmlError::Timeout) => break,
                Err(e) => {
                    out.errors.push(format!("failed to read NVML events: {e}"));
                    break;
                }
            }
        }
    }
}

/// Puts a fast field's value into the reading.
fn apply(r: &mut GpuReading, field: Field, v: Value) {
    match field {
        Field::Utilization => {
            r.utilization = v.get("gpu");
            r.memory_utilization = v.get("memory");
        }
        Field::Memory => {
            r.memory_used_bytes = v.get("used").map(|b| b as u64);
            r.memory_free_bytes = v.get("free").map(|b| b as u64);
            r.memory_total_bytes = r.memory_total_bytes.or(v.get("total").map(|b| b as u64));
        }
        Field::Temperature => r.temperature_celsius = v.num(),
        Field::PowerUsage => r.power_usage_watts = v.num(),
        Field::PowerLimit => r.power_limit_watts = v.num(),
        Field::FanSpeed => {
            if let Value::List(l) = v {
                r.fans = l.into_iter().filter_map(|(k, v)| Some((k.parse().ok()?, v))).collect();
            }
        }
        Field::Clocks => {
            for (slot, name) in ["graphics", "sm", "memory"].into_iter().enumerate() {
                r.clocks_hz[slot] = v.get(name);
            }
        }
        Field::Encoder => r.encoder_utilization = v.num(),
        Field::Decoder => r.decoder_utilization = v.num(),
        Field::Ecc => {
            r.ecc_corrected = v.get("corrected").map(|n| n as u64);
            r.ecc_uncorrected = v.get("uncorrected").map(|n| n as u64);
        }
        Field::ThrottleReasons => r.throttle_reasons = v.num().map(|b| b as u64),
        Field::Processes => {
            if let Value::Processes(p) = v {
                r.processes = Some(p);
            }
        }
        Field::Energy => r.energy_joules = v.num(),
        Field::MemoryTemperature => r.memory_temperature_celsius = v.num(),
        Field::PcieReplay => r.pcie_replay = v.num(),
        Field::ClockEvents => r.clock_event_seconds = v.into_list(),
        Field::TemperatureThresholds => r.temperature_thresholds = v.into_list(),
        Field::MaxClocks => r.max_clocks_hz = v.into_list(),
        Field::PcieLink => r.pcie_link = v.into_list(),
        Field::RemappedRows => r.remapped_rows = v.into_list(),
        Field::RecoveryAction => r.recovery_action = v.num().map(|n| n as u32),
        Field::Gpm => r.gpm = v.into_list(),
        Field::ProcessUtilization => {
            if let Value::ProcessUtilization(p) = v {
                r.process_utilization = Some(p);
            }
        }
        Field::Name | Field::PciBusId | Field::MemoryTotal | Field::NumFans | Field::NvLink => {}
    }
}
