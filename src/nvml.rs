//! The NVML edge: one dedicated OS thread owns the library handle and answers
//! poll requests, so blocking driver calls never run on the async workers.
//!
//! The thread initialises NVML once (through nvml-wrapper's dynamic loading,
//! at the configured path), registers for critical-XID events, and then
//! serves one poll at a time. The async side waits for the answer with a
//! timeout; while a poll is still running, a second one is refused rather
//! than queued behind a stuck driver.
//!
//! A field the driver does not have (`NotSupported`, `FailedToLoadSymbol`)
//! is `None` in the reading and is logged once at debug level. `GpuLost`
//! drops the whole device from that poll.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};

use nvml_wrapper::enum_wrappers::device::{Clock, EccCounter, MemoryError, TemperatureSensor};
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::{Device, EventSet, Nvml};
use tokio::sync::oneshot;

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
    pub fan_speed_ratio: Option<f64>,
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
}

/// The result of one poll of every device.
#[derive(Debug, Default)]
pub struct PollOutcome {
    pub readings: Vec<GpuReading>,
    /// Indexes of devices that answered `GpuLost`.
    pub lost: Vec<u32>,
    /// Critical XID events since the last poll: `(index, uuid, xid)`.
    pub xids: Vec<(u32, String, u64)>,
    /// Unexpected errors (not "unsupported", not "lost").
    pub errors: Vec<String>,
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

type Request = oneshot::Sender<PollOutcome>;

/// Handle to the NVML thread.
pub struct NvmlHandle {
    tx: mpsc::SyncSender<Request>,
    /// Set while a poll is with the thread; cleared by the thread when done.
    busy: Arc<AtomicBool>,
    pub driver_version: String,
}

impl NvmlHandle {
    /// Starts the thread and waits for NVML to initialise.
    pub async fn start(lib_path: &str, per_process: bool) -> Result<NvmlHandle, NvmlStartError> {
        let (tx, rx) = mpsc::sync_channel::<Request>(1);
        let (init_tx, init_rx) = oneshot::channel();
        let path = lib_path.to_string();
        let busy = Arc::new(AtomicBool::new(false));
        let worker_busy = busy.clone();
        std::thread::Builder::new()
            .name("nvml".into())
            .spawn(move || worker(path, per_process, init_tx, rx, worker_busy))
            .map_err(|e| NvmlStartError::Thread(e.to_string()))?;
        let driver_version = init_rx
            .await
            .map_err(|_| NvmlStartError::Thread("exited during init".into()))??;
        Ok(NvmlHandle {
            tx,
            busy,
            driver_version,
        })
    }

    /// Asks the thread for one poll of every device. While an earlier poll
    /// is still stuck in the driver, this fails at once with `Busy`.
    pub async fn poll(&self) -> Result<PollOutcome, PollError> {
        if self.busy.swap(true, Ordering::AcqRel) {
            return Err(PollError::Busy);
        }
        let (reply, answer) = oneshot::channel();
        // Never blocks: the thread has taken every earlier request.
        if self.tx.try_send(reply).is_err() {
            self.busy.store(false, Ordering::Release);
            return Err(PollError::Gone);
        }
        answer.await.map_err(|_| PollError::Gone)
    }
}

fn worker(
    path: String,
    per_process: bool,
    init_tx: oneshot::Sender<Result<String, NvmlStartError>>,
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
    let driver_version = nvml.sys_driver_version().unwrap_or_default();
    let _ = init_tx.send(Ok(driver_version));
    let mut poller = Poller {
        nvml: &nvml,
        events: None,
        per_process,
        logged: HashSet::new(),
    };
    poller.events = poller.register_xid_events();
    // `recv` fails once the handle is dropped, which ends the thread.
    while let Ok(reply) = rx.recv() {
        let outcome = poller.poll();
        busy.store(false, Ordering::Release);
        // The asker may have timed out and gone; that is fine.
        let _ = reply.send(outcome);
    }
}

struct Poller<'n> {
    nvml: &'n Nvml,
    events: Option<EventSet<'n>>,
    per_process: bool,
    /// `(uuid, field)` pairs already logged as unsupported.
    logged: HashSet<(String, &'static str)>,
}

/// A device answered `GpuLost`.
struct Lost;

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
        let count = match self.nvml.device_count() {
            Ok(c) => c,
            Err(e) => {
                out.errors.push(format!("failed to count devices: {e}"));
                return out;
            }
        };
        for i in 0..count {
            match self.nvml.device_by_index(i) {
                Ok(device) => match self.read(i, &device, &mut out.errors) {
                    Ok(r) => out.readings.push(r),
                    Err(Lost) => out.lost.push(i),
                },
                Err(NvmlError::GpuLost) => out.lost.push(i),
                Err(e) => out.errors.push(format!("failed to open GPU {i}: {e}")),
            }
        }
        self.drain_events(&mut out);
        out
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

    /// Turns one field's result into `Some`, `None` (unsupported or failed),
    /// or `Err(Lost)`.
    fn field<T>(
        &mut self,
        uuid: &str,
        field: &'static str,
        r: Result<T, NvmlError>,
        errors: &mut Vec<String>,
    ) -> Result<Option<T>, Lost> {
        match r {
            Ok(v) => Ok(Some(v)),
            Err(NvmlError::GpuLost) => Err(Lost),
            Err(e @ (NvmlError::NotSupported | NvmlError::FailedToLoadSymbol(_))) => {
                if self.logged.insert((uuid.to_string(), field)) {
                    tracing::debug!(uuid, field, reason = %e, "GPU field is not supported by this driver; skipping it.");
                }
                Ok(None)
            }
            Err(e) => {
                errors.push(format!("GPU {uuid}: failed to read {field}: {e}"));
                Ok(None)
            }
        }
    }

    fn read(&mut self, index: u32, d: &Device<'n>, errors: &mut Vec<String>) -> Result<GpuReading, Lost> {
        let uuid = match d.uuid() {
            Ok(u) => u,
            Err(NvmlError::GpuLost) => return Err(Lost),
            Err(_) => format!("GPU-index-{index}"),
        };
        let u = uuid.as_str();
        let mut r = GpuReading {
            index,
            uuid: uuid.clone(),
            ..Default::default()
        };
        r.name = self
            .field(u, "name", d.name(), errors)?
            .unwrap_or_else(|| "unknown".into());
        r.pci_bus_id = self
            .field(u, "pci_info", d.pci_info(), errors)?
            .map(|p| p.bus_id)
            .unwrap_or_default();
        if let Some(util) = self.field(u, "utilization", d.utilization_rates(), errors)? {
            r.utilization = Some(util.gpu as f64 / 100.0);
            r.memory_utilization = Some(util.memory as f64 / 100.0);
        }
        if let Some(mem) = self.field(u, "memory", d.memory_info(), errors)? {
            r.memory_used_bytes = Some(mem.used);
            r.memory_total_bytes = Some(mem.total);
            r.memory_free_bytes = Some(mem.free);
        }
        r.temperature_celsius = self
            .field(u, "temperature", d.temperature(TemperatureSensor::Gpu), errors)?
            .map(f64::from);
        r.power_usage_watts = self
            .field(u, "power_usage", d.power_usage(), errors)?
            .map(|mw| mw as f64 / 1000.0);
        r.power_limit_watts = self
            .field(u, "power_limit", d.enforced_power_limit(), errors)?
            .map(|mw| mw as f64 / 1000.0);
        r.fan_speed_ratio = self
            .field(u, "fan_speed", d.fan_speed(0), errors)?
            .map(|p| p as f64 / 100.0);
        for (slot, (clock, name)) in [
            (Clock::Graphics, "clock_graphics"),
            (Clock::SM, "clock_sm"),
            (Clock::Memory, "clock_memory"),
        ]
        .into_iter()
        .enumerate()
        {
            r.clocks_hz[slot] = self
                .field(u, name, d.clock_info(clock), errors)?
                .map(|mhz| mhz as f64 * 1e6);
        }
        r.encoder_utilization = self
            .field(u, "encoder", d.encoder_utilization(), errors)?
            .map(|x| x.utilization as f64 / 100.0);
        r.decoder_utilization = self
            .field(u, "decoder", d.decoder_utilization(), errors)?
            .map(|x| x.utilization as f64 / 100.0);
        r.energy_joules = self
            .field(u, "energy", d.total_energy_consumption(), errors)?
            .map(|mj| mj as f64 / 1000.0);
        r.ecc_corrected = self.field(
            u,
            "ecc",
            d.total_ecc_errors(MemoryError::Corrected, EccCounter::Volatile),
            errors,
        )?;
        r.ecc_uncorrected = match r.ecc_corrected {
            Some(_) => self.field(
                u,
                "ecc",
                d.total_ecc_errors(MemoryError::Uncorrected, EccCounter::Volatile),
                errors,
            )?,
            None => None,
        };
        r.throttle_reasons = self
            .field(u, "throttle_reasons", d.current_throttle_reasons(), errors)?
            .map(|t| t.bits());
        if self.per_process {
            if let Some(procs) = self.field(u, "processes", d.running_compute_processes(), errors)? {
                let list = procs
                    .into_iter()
                    .map(|p| {
                        let bytes = match p.used_gpu_memory {
                            nvml_wrapper::enums::device::UsedGpuMemory::Used(b) => b,
                            nvml_wrapper::enums::device::UsedGpuMemory::Unavailable => 0,
                        };
                        let name = self
                            .nvml
                            .sys_process_name(p.pid, 64)
                            .unwrap_or_else(|_| "unknown".into());
                        (p.pid, name, bytes)
                    })
                    .collect();
                r.processes = Some(list);
            }
        }
        Ok(r)
    }
}
