//! The readings that say what utilization hides: GPM profiling counters
//! (Hopper and newer, no DCGM), per-process SM utilization, and the
//! driver's field values (clock-event time, HBM temperature, row remapping).
//!
//! GPM works on two samples taken apart in time: the poller keeps one
//! sample per GPU ([`GpmSampler`]) and each slow tick takes a new one,
//! computes every metric over the interval in one `nvmlGpmMetricsGet`, and
//! frees the older sample. Field values are read in one
//! `nvmlDeviceGetFieldValues` per field group; a field the card does not
//! have fails inside a successful call, as on the real driver.

use std::collections::HashMap;

use nvml_wrapper::enums::device::SampleValue;
use nvml_wrapper::enums::gpm::GpmMetricId;
use nvml_wrapper::error::{nvml_sym, nvml_try, NvmlError};
use nvml_wrapper::struct_wrappers::device::FieldValueSample;
use nvml_wrapper::structs::device::FieldId;
use nvml_wrapper::sys_exports::field_id::*;
use nvml_wrapper::{Device, GpmSample, Nvml};
use nvml_wrapper_sys::bindings::{nvmlProcessUtilizationInfo_v1_t, nvmlProcessesUtilizationInfo_t};

use super::meter::{list, Meter, Value};

/// The driver's unit for a GPM metric.
#[derive(Clone, Copy)]
pub enum GpmUnit {
    /// Percent: ours is a 0-1 ratio.
    Percent,
    /// MiB per second: ours is bytes per second.
    MibPerSecond,
}

impl GpmUnit {
    fn convert(self, v: f64) -> f64 {
        match self {
            GpmUnit::Percent => v / 100.0,
            GpmUnit::MibPerSecond => v * 1024.0 * 1024.0,
        }
    }
}

use GpmUnit::{MibPerSecond as MIB, Percent as PCT};

/// GPM metrics read every slow tick, with the key each gets in a reading
/// and the driver's unit.
pub const GPM_METRICS: [(GpmMetricId, &str, GpmUnit); 14] = [
    (GpmMetricId::GraphicsUtil, "graphics", PCT),
    (GpmMetricId::SmUtil, "sm", PCT),
    (GpmMetricId::SmOccupancy, "occupancy", PCT),
    (GpmMetricId::AnyTensorUtil, "tensor", PCT),
    (GpmMetricId::DramBwUtil, "dram", PCT),
    (GpmMetricId::Fp16Util, "fp16", PCT),
    (GpmMetricId::Fp32Util, "fp32", PCT),
    (GpmMetricId::Fp64Util, "fp64", PCT),
    (GpmMetricId::IntegerUtil, "integer", PCT),
    (GpmMetricId::HmmaTensorUtil, "tensor_hmma", PCT),
    (GpmMetricId::ImmaTensorUtil, "tensor_imma", PCT),
    (GpmMetricId::DfmaTensorUtil, "tensor_dfma", PCT),
    (GpmMetricId::PcieTxPerSec, "pcie_tx", MIB),
    (GpmMetricId::PcieRxPerSec, "pcie_rx", MIB),
];

/// Only on a GPU with NVLink.
pub const GPM_NVLINK_METRICS: [(GpmMetricId, &str, GpmUnit); 2] = [
    (GpmMetricId::NvlinkTotalTxPerSec, "nvlink_tx", MIB),
    (GpmMetricId::NvlinkTotalRxPerSec, "nvlink_rx", MIB),
];

/// The pipes of `gpu_pipe_active_ratio{pipe}`, by GPM key.
pub const PIPES: [&str; 7] = [
    "fp16",
    "fp32",
    "fp64",
    "integer",
    "tensor_hmma",
    "tensor_imma",
    "tensor_dfma",
];

/// Clock-event-reason duration fields (nanoseconds), with their `reason`.
/// nvml-wrapper renumbers the thermal and power-brake IDs for drivers from
/// 580.82 on.
const CLOCK_EVENTS: [(u32, &str); 5] = [
    (NVML_FI_DEV_CLOCKS_EVENT_REASON_SW_POWER_CAP, "sw_power_cap"),
    (NVML_FI_DEV_CLOCKS_EVENT_REASON_SYNC_BOOST, "sync_boost"),
    (NVML_FI_DEV_CLOCKS_EVENT_REASON_SW_THERM_SLOWDOWN, "sw_thermal_slowdown"),
    (NVML_FI_DEV_CLOCKS_EVENT_REASON_HW_THERM_SLOWDOWN, "hw_thermal_slowdown"),
    (
        NVML_FI_DEV_CLOCKS_EVENT_REASON_HW_POWER_BRAKE_SLOWDOWN,
        "hw_power_brake_slowdown",
    ),
];

const REMAPPED: [(u32, &str); 4] = [
    (NVML_FI_DEV_REMAPPED_COR, "correctable"),
    (NVML_FI_DEV_REMAPPED_UNC, "uncorrectable"),
    (NVML_FI_DEV_REMAPPED_PENDING, "pending"),
    (NVML_FI_DEV_REMAPPED_FAILURE, "failed"),
];

fn sample_number(v: &SampleValue) -> f64 {
    match *v {
        SampleValue::F64(x) => x,
        SampleValue::U32(x) => x as f64,
        SampleValue::U64(x) => x as f64,
        SampleValue::I64(x) => x as f64,
    }
}

/// One `nvmlDeviceGetFieldValues` for `ids`, as a list keyed by their
/// names, each scaled by `scale`: the fields that answered, or the last
/// per-field error when none did.
fn field_list(d: &Device, ids: &[(u32, &str)], scale: f64, call: &'static str, m: &Meter) -> Result<Value, NvmlError> {
    let wanted: Vec<FieldId> = ids.iter().map(|(id, _)| FieldId(*id)).collect();
    let samples = m.call(call, || d.field_values_for(&wanted))?;
    list(
        ids.iter()
            .zip(samples)
            .map(|((_, name), s): (&(u32, &str), Result<FieldValueSample, NvmlError>)| {
                (
                    name.to_string(),
                    s.and_then(|s| s.value).map(|v| sample_number(&v) * scale),
                )
            }),
    )
}

/// Seconds spent with clocks held down, per reason (driver nanoseconds).
pub fn clock_events(d: &Device, m: &Meter) -> Result<Value, NvmlError> {
    field_list(d, &CLOCK_EVENTS, 1e-9, "field_values_clock_events", m)
}

/// HBM temperature.
pub fn memory_temperature(d: &Device, m: &Meter) -> Result<Value, NvmlError> {
    let v = field_list(
        d,
        &[(NVML_FI_DEV_MEMORY_TEMP, "memory")],
        1.0,
        "field_values_memory_temperature",
        m,
    )?;
    v.get("memory").map(Value::Num).ok_or(NvmlError::NotSupported)
}

/// `NVML_FI_DEV_GET_GPU_RECOVERY_ACTION` (nvml.h): what the driver says a
/// failing GPU needs.
pub const NVML_FI_DEV_GET_GPU_RECOVERY_ACTION: u32 = 230;

/// The actions of `nvmlDeviceGpuRecoveryAction_t` (nvml.h), by value.
pub const RECOVERY_ACTIONS: [&str; 5] = ["none", "gpu_reset", "node_reboot", "drain_p2p", "drain_and_reset"];

/// The GPU's recovery action (field 230). Drivers that do not know the
/// field answer NOT_SUPPORTED for it, which skips it like any field.
pub fn recovery_action(d: &Device, m: &Meter) -> Result<Value, NvmlError> {
    let v = field_list(
        d,
        &[(NVML_FI_DEV_GET_GPU_RECOVERY_ACTION, "action")],
        1.0,
        "field_values_recovery_action",
        m,
    )?;
    v.get("action").map(Value::Num).ok_or(NvmlError::NotSupported)
}

/// Remapped rows (counts) and the pending / failed flags.
pub fn remapped_rows(d: &Device, m: &Meter) -> Result<Value, NvmlError> {
    field_list(d, &REMAPPED, 1.0, "field_values_remapped_rows", m)
}

/// The `(pid, name, sm 0-1, memory 0-1)` of each process with a sample;
/// idle (`NOT_FOUND`) is an empty list. Uses
/// `nvmlDeviceGetProcessesUtilizationInfo` where the driver has it, else
/// `nvmlDeviceGetProcessUtilization`.
pub fn process_utilization(nvml: &Nvml, d: &Device, m: &Meter) -> Result<Value, NvmlError> {
    let samples = match processes_utilization_info(nvml, d, m) {
        Err(NvmlError::FailedToLoadSymbol(_)) | Err(NvmlError::FunctionNotFound) => m
            .call("process_utilization", || match d.process_utilization_stats(None) {
                Err(NvmlError::NotFound) => Ok(Vec::new()),
                r => r,
            })
            .map(|v| {
                v.into_iter()
                    .map(|s| (s.pid, s.timestamp, s.sm_util, s.mem_util))
                    .collect()
            }),
        r => r,
    };
    let samples = samples?;
    // The newest sample of each process.
    let mut newest: HashMap<u32, (u64, u32, u32)> = HashMap::new();
    for (pid, ts, sm, mem) in samples {
        let e = newest.entry(pid).or_insert((ts, sm, mem));
        if ts >= e.0 {
            *e = (ts, sm, mem);
        }
    }
    let mut out: Vec<(u32, String, f64, f64)> = newest
        .into_iter()
        .map(|(pid, (_, sm, mem))| {
            let name = m
                .call("process_name", || nvml.sys_process_name(pid, 64))
                .unwrap_or_else(|_| "unknown".into());
            (pid, name, sm as f64 / 100.0, mem as f64 / 100.0)
        })
        .collect();
    out.sort_by_key(|p| p.0);
    Ok(Value::ProcessUtilization(out))
}

/// `(pid, timestamp, sm %, memory %)` from the newer call, which
/// nvml-wrapper does not wrap. Each call costs ~2 ms of CPU on an H100, so
/// the first try passes room for [`PROCESS_ROOM`] processes and only a
/// busier GPU costs a second call with the count the driver asked for.
fn processes_utilization_info(nvml: &Nvml, d: &Device, m: &Meter) -> Result<Vec<(u32, u64, u32, u32)>, NvmlError> {
    let sym = nvml_sym(nvml.lib().nvmlDeviceGetProcessesUtilizationInfo.as_ref())?;
    // NVML_STRUCT_VERSION(ProcessesUtilizationInfo, 1).
    let version = std::mem::size_of::<nvmlProcessesUtilizationInfo_t>() as u32 | (1 << 24);
    let mut room = PROCESS_ROOM;
    loop {
        // SAFETY: `nvmlProcessUtilizationInfo_v1_t` is plain integers, so
        // all-zero is a valid value.
        let mut buf: Vec<nvmlProcessUtilizationInfo_v1_t> = vec![unsafe { std::mem::zeroed() }; room];
        let mut info = nvmlProcessesUtilizationInfo_t {
            version,
            processSamplesCount: room as u32,
            lastSeenTimeStamp: 0,
            procUtilArray: buf.as_mut_ptr(),
        };
        // SAFETY: the handle belongs to this live `Nvml`; the struct is the
        // v1 layout its version names, and the array holds
        // `processSamplesCount` entries.
        // Idle is NOT_FOUND: no process had a sample, which is no error.
        let r = m.call("processes_utilization_info", || {
            match unsafe { nvml_try(sym(d.handle(), &mut info)) } {
                Err(NvmlError::NotFound) => {
                    info.processSamplesCount = 0;
                    Ok(())
                }
                r => r,
            }
        });
        match r {
            Ok(()) => {
                buf.truncate((info.processSamplesCount as usize).min(room));
                return Ok(buf.iter().map(|s| (s.pid, s.timeStamp, s.smUtil, s.memUtil)).collect());
            }
            Err(NvmlError::InsufficientSize(_))
                if (info.processSamplesCount as usize) > room && room == PROCESS_ROOM =>
            {
                room = info.processSamplesCount as usize;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Processes one per-process utilization call has room for at first.
const PROCESS_ROOM: usize = 64;

/// Whether the driver says the GPU has GPM.
pub fn gpm_supported(d: &Device, m: &Meter) -> Result<bool, NvmlError> {
    m.call("gpm_query_device_support", || d.gpm_support())
}

/// Every metric over the interval between two samples, in our units.
fn gpm_metrics(nvml: &Nvml, a: &GpmSample, b: &GpmSample, nvlink: bool, m: &Meter) -> Result<Value, NvmlError> {
    let wanted: Vec<(GpmMetricId, &str, GpmUnit)> = GPM_METRICS
        .iter()
        .chain(if nvlink { GPM_NVLINK_METRICS.iter() } else { [].iter() })
        .cloned()
        .collect();
    let ids: Vec<GpmMetricId> = wanted.iter().map(|w| w.0).collect();
    let results = m.call("gpm_metrics_get", || {
        nvml_wrapper::gpm::gpm_metrics_get(nvml, a, b, &ids)
    })?;
    list(
        wanted
            .iter()
            .zip(results)
            .map(|((_, key, unit), r)| (key.to_string(), r.map(|v| unit.convert(v.value)))),
    )
}

/// One GPU's GPM sample kept between slow ticks.
#[derive(Default)]
pub struct GpmSampler<'n> {
    previous: HashMap<String, GpmSample<'n>>,
}

impl<'n> GpmSampler<'n> {
    /// Takes a new sample of `uuid`'s GPU; with an earlier one, returns the
    /// metrics over the interval. The earlier sample is freed (dropped)
    /// either way. An error forgets the GPU's sample, so it starts over.
    pub fn tick(
        &mut self,
        nvml: &'n Nvml,
        uuid: &str,
        d: &Device<'n>,
        nvlink: bool,
        m: &Meter,
    ) -> Result<Option<Value>, NvmlError> {
        let sample = match m.call("gpm_sample_get", || d.gpm_sample()) {
            Ok(s) => s,
            Err(e) => {
                self.previous.remove(uuid);
                return Err(e);
            }
        };
        let Some(previous) = self.previous.insert(uuid.to_string(), sample) else {
            return Ok(None);
        };
        let current = &self.previous[uuid];
        let r = gpm_metrics(nvml, &previous, current, nvlink, m);
        if r.is_err() {
            self.previous.remove(uuid);
        }
        r.map(Some)
    }

    /// Whether `uuid`'s GPU has a sample to compute from.
    pub fn has_sample(&self, uuid: &str) -> bool {
        self.previous.contains_key(uuid)
    }

    /// Frees the samples of GPUs that are gone.
    pub fn retain(&mut self, live: impl Fn(&str) -> bool) {
        self.previous.retain(|uuid, _| live(uuid));
    }
}

/// Doctor's GPM read: support, two samples back to back, and the metrics
/// (NVLink included) over that (microsecond) interval: the result and the
/// cost say what the daemon will get; the values say little.
pub fn gpm_probe(nvml: &Nvml, d: &Device, m: &Meter) -> Result<Value, NvmlError> {
    if !gpm_supported(d, m)? {
        return Err(NvmlError::NotSupported);
    }
    let a = m.call("gpm_sample_get", || d.gpm_sample())?;
    let b = m.call("gpm_sample_get", || d.gpm_sample())?;
    gpm_metrics(nvml, &a, &b, true, m)
}
