//! The GPU fields inferwatch reads, each with its NVML call, its cadence
//! class and its cost meter. The poller ([`super::Poller`]) and
//! `inferwatch doctor` both read fields through [`Field::read`], so what
//! doctor reports is exactly what the daemon would do.
//!
//! Classes (docs/metrics.md repeats them per metric):
//! - **static**: read when a GPU is first seen, and again when it comes back
//!   after it was lost: things that cannot change without a reset.
//! - **fast**: every `gpu.poll_interval`; each costs microseconds.
//! - **slow**: every `gpu.slow_interval`; the expensive ones (the energy
//!   counter costs 3–5 ms of CPU per call on an H100); the last value is
//!   kept in between.
//!
//! Errors belong to fields: apart from `GpuLost`, an error skips that field
//! for that GPU and the round goes on. Every NVML call is counted and timed
//! in `inferwatch_nvml_calls_total` / `inferwatch_nvml_call_duration_seconds_total`,
//! and its errors in `inferwatch_nvml_call_errors_total{call,error}`.

use nvml_wrapper::enum_wrappers::device::{Clock, EccCounter, MemoryError, TemperatureSensor, TemperatureThreshold};
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::{Device, Nvml};

pub(crate) use super::meter::list;
pub use super::meter::{error_name, is_absent, list_get, Meter, NvmlMetrics, Value};
use super::profiling;

/// When a field is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Static,
    Fast,
    Slow,
}

impl Class {
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Static => "static",
            Class::Fast => "fast",
            Class::Slow => "slow",
        }
    }
}

/// Every field, in the order a round reads them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Field {
    Name,
    PciBusId,
    MemoryTotal,
    NumFans,
    Utilization,
    Memory,
    Temperature,
    PowerUsage,
    PowerLimit,
    FanSpeed,
    Clocks,
    Encoder,
    Decoder,
    Ecc,
    ThrottleReasons,
    Processes,
    Energy,
    TemperatureThresholds,
    MaxClocks,
    NvLink,
    ClockEvents,
    MemoryTemperature,
    PcieLink,
    PcieReplay,
    RemappedRows,
    RecoveryAction,
    Gpm,
    ProcessUtilization,
}

impl Field {
    pub const ALL: [Field; 28] = [
        Field::Name,
        Field::PciBusId,
        Field::MemoryTotal,
        Field::NumFans,
        Field::Utilization,
        Field::Memory,
        Field::Temperature,
        Field::PowerUsage,
        Field::PowerLimit,
        Field::FanSpeed,
        Field::Clocks,
        Field::Encoder,
        Field::Decoder,
        Field::Ecc,
        Field::ThrottleReasons,
        Field::Processes,
        Field::Energy,
        Field::TemperatureThresholds,
        Field::MaxClocks,
        Field::NvLink,
        Field::ClockEvents,
        Field::MemoryTemperature,
        Field::PcieLink,
        Field::PcieReplay,
        Field::RemappedRows,
        Field::RecoveryAction,
        Field::Gpm,
        Field::ProcessUtilization,
    ];

    /// The name used in `gpu.fields.exclude` and by doctor.
    pub fn name(self) -> &'static str {
        match self {
            Field::Name => "name",
            Field::PciBusId => "pci_bus_id",
            Field::MemoryTotal => "memory_total",
            Field::NumFans => "num_fans",
            Field::Utilization => "utilization",
            Field::Memory => "memory",
            Field::Temperature => "temperature",
            Field::PowerUsage => "power_usage",
            Field::PowerLimit => "power_limit",
            Field::FanSpeed => "fan_speed",
            Field::Clocks => "clocks",
            Field::Encoder => "encoder",
            Field::Decoder => "decoder",
            Field::Ecc => "ecc",
            Field::ThrottleReasons => "throttle_reasons",
            Field::Processes => "processes",
            Field::Energy => "energy",
            Field::TemperatureThresholds => "temperature_thresholds",
            Field::MaxClocks => "max_clocks",
            Field::NvLink => "nvlink",
            Field::ClockEvents => "clock_events",
            Field::MemoryTemperature => "memory_temperature",
            Field::PcieLink => "pcie_link",
            Field::PcieReplay => "pcie_replay",
            Field::RemappedRows => "remapped_rows",
            Field::RecoveryAction => "recovery_action",
            Field::Gpm => "gpm",
            Field::ProcessUtilization => "process_utilization",
        }
    }

    pub fn from_name(name: &str) -> Option<Field> {
        Field::ALL.into_iter().find(|f| f.name() == name)
    }

    /// The NVML function behind the field.
    pub fn nvml_function(self) -> &'static str {
        match self {
            Field::Name => "nvmlDeviceGetName",
            Field::PciBusId => "nvmlDeviceGetPciInfo_v3",
            Field::MemoryTotal | Field::Memory => "nvmlDeviceGetMemoryInfo_v2",
            Field::NumFans => "nvmlDeviceGetNumFans",
            Field::Utilization => "nvmlDeviceGetUtilizationRates",
            Field::Temperature => "nvmlDeviceGetTemperature",
            Field::PowerUsage => "nvmlDeviceGetPowerUsage",
            Field::PowerLimit => "nvmlDeviceGetEnforcedPowerLimit",
            Field::FanSpeed => "nvmlDeviceGetFanSpeed_v2",
            Field::Clocks => "nvmlDeviceGetClockInfo",
            Field::Encoder => "nvmlDeviceGetEncoderUtilization",
            Field::Decoder => "nvmlDeviceGetDecoderUtilization",
            Field::Ecc => "nvmlDeviceGetTotalEccErrors",
            Field::ThrottleReasons => "nvmlDeviceGetCurrentClocksThrottleReasons",
            Field::Processes => "nvmlDeviceGetComputeRunningProcesses_v3",
            Field::Energy => "nvmlDeviceGetTotalEnergyConsumption",
            Field::TemperatureThresholds => "nvmlDeviceGetTemperatureThreshold",
            Field::MaxClocks => "nvmlDeviceGetMaxClockInfo",
            Field::NvLink => "nvmlDeviceGetNvLinkState",
            Field::ClockEvents | Field::MemoryTemperature | Field::RemappedRows | Field::RecoveryAction => {
                "nvmlDeviceGetFieldValues"
            }
            Field::PcieLink => "nvmlDeviceGetCurrPcieLinkGeneration/Width",
            Field::PcieReplay => "nvmlDeviceGetPcieReplayCounter",
            Field::Gpm => "nvmlGpmSampleGet + nvmlGpmMetricsGet",
            Field::ProcessUtilization => "nvmlDeviceGetProcessesUtilizationInfo",
        }
    }

    pub fn class(self) -> Class {
        match self {
            Field::Name
            | Field::PciBusId
            | Field::MemoryTotal
            | Field::NumFans
            | Field::TemperatureThresholds
            | Field::MaxClocks
            | Field::NvLink => Class::Static,
            Field::Energy
            | Field::PcieLink
            | Field::PcieReplay
            | Field::RemappedRows
            | Field::RecoveryAction
            | Field::Gpm
            | Field::ProcessUtilization => Class::Slow,
            _ => Class::Fast,
        }
    }

    /// Reads the field once. `fans` is how many fans to read (from
    /// `num_fans`, or 1 when the driver cannot count them). Lists (clocks,
    /// fans, ECC) keep the entries that answered and fail only when none did.
    pub fn read(self, nvml: &Nvml, d: &Device, fans: u32, m: &Meter) -> Result<Value, NvmlError> {
        Ok(match self {
            Field::Name => Value::Text(m.call("name", || d.name())?),
            Field::PciBusId => Value::Text(m.call("pci_info", || d.pci_info())?.bus_id),
            Field::MemoryTotal => Value::Num(m.call("memory_info", || d.memory_info())?.total as f64),
            Field::NumFans => Value::Num(m.call("num_fans", || d.num_fans())? as f64),
            Field::Utilization => utilization(d, m)?,
            Field::Memory => memory(d, m)?,
            Field::Temperature => Value::Num(m.call("temperature", || d.temperature(TemperatureSensor::Gpu))? as f64),
            Field::PowerUsage => Value::Num(m.call("power_usage", || d.power_usage())? as f64 / 1000.0),
            Field::PowerLimit => {
                Value::Num(m.call("enforced_power_limit", || d.enforced_power_limit())? as f64 / 1000.0)
            }
            Field::Encoder => {
                Value::Num(m.call("encoder_utilization", || d.encoder_utilization())?.utilization as f64 / 100.0)
            }
            Field::Decoder => {
                Value::Num(m.call("decoder_utilization", || d.decoder_utilization())?.utilization as f64 / 100.0)
            }
            Field::FanSpeed => fan_speeds(d, fans, m)?,
            Field::Clocks => clocks(d, m)?,
            Field::Ecc => ecc_errors(d, m)?,
            Field::Processes => processes(nvml, d, m)?,
            Field::ThrottleReasons => Value::Num(
                m.call("clocks_throttle_reasons", || d.current_throttle_reasons())?
                    .bits() as f64,
            ),
            Field::Energy => {
                Value::Num(m.call("total_energy_consumption", || d.total_energy_consumption())? as f64 / 1000.0)
            }
            Field::TemperatureThresholds => thresholds(d, m)?,
            Field::MaxClocks => max_clocks(d, m)?,
            Field::NvLink => {
                let active = m.call("nvlink_state", || d.link_wrapper_for(0).is_active())?;
                Value::Num(if active { 1.0 } else { 0.0 })
            }
            Field::ClockEvents => profiling::clock_events(d, m)?,
            Field::MemoryTemperature => profiling::memory_temperature(d, m)?,
            Field::PcieLink => pcie_link(d, m)?,
            Field::PcieReplay => Value::Num(m.call("pcie_replay_counter", || d.pcie_replay_counter())? as f64),
            Field::RemappedRows => profiling::remapped_rows(d, m)?,
            Field::RecoveryAction => profiling::recovery_action(d, m)?,
            Field::Gpm => profiling::gpm_probe(nvml, d, m)?,
            Field::ProcessUtilization => profiling::process_utilization(nvml, d, m)?,
        })
    }
}

/// GPU and memory-controller utilization, 0-1.
fn utilization(d: &Device, m: &Meter) -> Result<Value, NvmlError> {
    let u = m.call("utilization_rates", || d.utilization_rates())?;
    Ok(Value::List(vec![
        ("gpu".into(), u.gpu as f64 / 100.0),
        ("memory".into(), u.memory as f64 / 100.0),
    ]))
}

/// Device memory used, free and total, in bytes.
fn memory(d: &Device, m: &Meter) -> Result<Value, NvmlError> {
    let mem = m.call("memory_info", || d.memory_info())?;
    Ok(Value::List(vec![
        ("used".into(), mem.used as f64),
        ("free".into(), mem.free as f64),
        ("total".into(), mem.total as f64),
    ]))
}

/// The PCIe link's current generation and width.
fn pcie_link(d: &Device, m: &Meter) -> Result<Value, NvmlError> {
    list(
        [
            (
                "generation".to_string(),
                m.call("pcie_link_generation", || d.current_pcie_link_gen())
                    .map(f64::from),
            ),
            (
                "width".to_string(),
                m.call("pcie_link_width", || d.current_pcie_link_width()).map(f64::from),
            ),
        ]
        .into_iter(),
    )
}

fn fan_speeds(d: &Device, fans: u32, m: &Meter) -> Result<Value, NvmlError> {
    list((0..fans).map(|i| {
        (
            i.to_string(),
            m.call("fan_speed", || d.fan_speed(i)).map(|p| p as f64 / 100.0),
        )
    }))
}

/// One reading per clock domain (`graphics`, `sm`, `memory`), MHz to Hz.
fn per_clock(
    m: &Meter,
    call: &'static str,
    read: impl Fn(Clock) -> Result<u32, NvmlError>,
) -> Result<Value, NvmlError> {
    let domains = [
        (Clock::Graphics, "graphics"),
        (Clock::SM, "sm"),
        (Clock::Memory, "memory"),
    ];
    list(
        domains
            .into_iter()
            .map(|(c, n)| (n.to_string(), m.call(call, || read(c)).map(|mhz| mhz as f64 * 1e6))),
    )
}

fn clocks(d: &Device, m: &Meter) -> Result<Value, NvmlError> {
    per_clock(m, "clock_info", |c| d.clock_info(c))
}

fn ecc_errors(d: &Device, m: &Meter) -> Result<Value, NvmlError> {
    let kinds = [
        (MemoryError::Corrected, "corrected"),
        (MemoryError::Uncorrected, "uncorrected"),
    ];
    list(kinds.into_iter().map(|(t, n)| {
        (
            n.to_string(),
            m.call("total_ecc_errors", || d.total_ecc_errors(t, EccCounter::Volatile))
                .map(|v| v as f64),
        )
    }))
}

/// The temperature thresholds the card reports, in °C.
fn thresholds(d: &Device, m: &Meter) -> Result<Value, NvmlError> {
    let kinds = [
        (TemperatureThreshold::Slowdown, "slowdown"),
        (TemperatureThreshold::Shutdown, "shutdown"),
        (TemperatureThreshold::GpuMax, "gpu_max"),
        (TemperatureThreshold::MemoryMax, "memory_max"),
    ];
    list(kinds.into_iter().map(|(t, n)| {
        (
            n.to_string(),
            m.call("temperature_threshold", || d.temperature_threshold(t))
                .map(f64::from),
        )
    }))
}

/// The highest clock of each domain, in Hz.
fn max_clocks(d: &Device, m: &Meter) -> Result<Value, NvmlError> {
    per_clock(m, "max_clock_info", |c| d.max_clock_info(c))
}

/// Compute processes with their memory; a name that cannot be read is
/// `unknown`, not a failed field.
fn processes(nvml: &Nvml, d: &Device, m: &Meter) -> Result<Value, NvmlError> {
    let procs = m.call("compute_running_processes", || d.running_compute_processes())?;
    Ok(Value::Processes(
        procs
            .into_iter()
            .map(|p| {
                let bytes = match p.used_gpu_memory {
                    nvml_wrapper::enums::device::UsedGpuMemory::Used(b) => b,
                    nvml_wrapper::enums::device::UsedGpuMemory::Unavailable => 0,
                };
                let name = m
                    .call("process_name", || nvml.sys_process_name(p.pid, 64))
                    .unwrap_or_else(|_| "unknown".into());
                (p.pid, name, bytes)
            })
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_classes_are_set() {
        for f in Field::ALL {
            assert_eq!(Field::from_name(f.name()), Some(f));
        }
        assert_eq!(Field::Energy.class(), Class::Slow);
        assert_eq!(Field::Name.class(), Class::Static);
        assert_eq!(Field::FanSpeed.class(), Class::Fast);
        assert_eq!(Field::from_name("fan"), None);
    }
}
