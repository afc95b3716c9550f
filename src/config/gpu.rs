//! `gpu`: the GPU collector: NVML library, cadences, field exclusions.

use std::time::Duration;

use serde::Deserialize;

use super::{de_opt_seconds, de_seconds, invalid, ConfigError, Range};
use super::{reasons, Reload};
use crate::nvml::fields::Field;

/// GPU collector settings.
#[derive(Reload, Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GpuConfig {
    /// Switch the collector off entirely (no NVML is loaded).
    #[reload(kept = reasons::NVML)]
    pub enabled: bool,
    /// `auto`: mock mode only on a machine with no NVML library at all;
    /// `nvml`: never mock; `mock`: always mock (a demo without a GPU).
    #[reload(kept = reasons::NVML)]
    pub mode: GpuMode,
    /// Path or soname of the NVML library.
    #[reload(kept = reasons::NVML)]
    pub nvml_library: String,
    /// Seconds between polls (env `GPU_POLL_INTERVAL_SECONDS`), 1.0–60.0.
    #[serde(deserialize_with = "de_seconds")]
    #[reload(live)]
    pub poll_interval: Duration,
    /// Minutes of samples kept in memory (env `GPU_STATS_HISTORY_MINUTES`), 1–1440.
    #[reload(kept = reasons::NVML)]
    pub history_minutes: u32,
    /// Longest one poll of all GPUs may take before it counts as failed, 0.1–60 s.
    #[serde(deserialize_with = "de_seconds")]
    #[reload(live)]
    pub timeout: Duration,
    /// Export `gpu_process_memory_used_bytes` per compute process, each
    /// attributed to its unit, container and service (see `attribution`).
    #[reload(kept = reasons::NVML)]
    pub per_process: bool,
    /// Per-process series per GPU, 1–10000; the smallest processes beyond
    /// it are summed into `process_name="_other"`.
    #[reload(live)]
    pub per_process_max: u32,
    /// Temperature above which one WARNING is logged per crossing, 1–150 °C.
    #[reload(live)]
    pub temperature_warning_celsius: f64,
    /// Seconds between reads of the expensive ("slow") fields such as the
    /// energy counter, 1–3600 and at least `poll_interval`. Unset: 15 s, or
    /// the poll interval when that is longer (see [`GpuConfig::slow_interval`]).
    #[serde(deserialize_with = "de_opt_seconds")]
    #[reload(live)]
    pub slow_interval: Option<Duration>,
    /// Field selection.
    #[reload(live)]
    pub fields: GpuFieldsConfig,
    /// The kernel log to read XIDs from (`/dev/kmsg`); `""` turns it off.
    #[reload(kept = reasons::RESTART)]
    pub kernel_log: String,
    /// The longest kernel-log record read from a file or FIFO, 8 KiB–1 MiB
    /// (the kernel writes at most 8 KiB); a longer one is skipped as it
    /// streams and counted in `inferwatch_read_limit_hits_total`.
    #[reload(kept = reasons::RESTART)]
    pub kernel_log_record_max_bytes: u64,
}

impl GpuConfig {
    /// `fields.exclude` as fields (validation has refused unknown names).
    pub fn excluded_fields(&self) -> std::collections::HashSet<crate::nvml::fields::Field> {
        self.fields
            .exclude
            .iter()
            .filter_map(|n| crate::nvml::fields::Field::from_name(n))
            .collect()
    }

    /// The slow fields' interval in force.
    pub fn slow_interval(&self) -> Duration {
        self.slow_interval
            .unwrap_or_else(|| Duration::from_secs(15).max(self.poll_interval))
    }
}

/// How the collector treats a missing or failing NVML.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GpuMode {
    /// Mock mode only when no NVML library is installed; a library that
    /// fails is a failing collector.
    #[default]
    Auto,
    /// Never mock: any NVML failure is a failing collector.
    Nvml,
    /// Always mock; NVML is never loaded.
    Mock,
}

/// Which GPU fields are read.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GpuFieldsConfig {
    /// Field names never to read (see `inferwatch doctor` for the list).
    pub exclude: Vec<String>,
}

impl Default for GpuConfig {
    fn default() -> Self {
        GpuConfig {
            enabled: true,
            mode: GpuMode::Auto,
            nvml_library: "libnvidia-ml.so.1".to_string(),
            poll_interval: Duration::from_secs(5),
            history_minutes: 60,
            timeout: Duration::from_secs(3),
            per_process: false,
            temperature_warning_celsius: 85.0,
            slow_interval: None,
            fields: GpuFieldsConfig::default(),
            kernel_log: "/dev/kmsg".to_string(),
            kernel_log_record_max_bytes: crate::xid::kmsg::MAX_RECORD as u64,
            per_process_max: 64,
        }
    }
}

pub const POLL_INTERVAL: Range = Range::new("gpu.poll_interval", 1.0, 60.0, "seconds");
pub const HISTORY_MINUTES: Range = Range::new("gpu.history_minutes", 1.0, 1440.0, "minutes");
pub const TIMEOUT: Range = Range::new("gpu.timeout", 0.1, 60.0, "seconds");
pub const KERNEL_LOG_RECORD_MAX: Range = Range::new("gpu.kernel_log_record_max_bytes", 8192.0, 1048576.0, "bytes");
pub const PER_PROCESS_MAX: Range = Range::new("gpu.per_process_max", 1.0, 10000.0, "series per GPU");
pub const TEMPERATURE_WARNING: Range = Range::new("gpu.temperature_warning_celsius", 1.0, 150.0, "°C");
/// The lower bound is also `gpu.poll_interval`.
pub const SLOW_INTERVAL: Range = Range::new(
    "gpu.slow_interval",
    1.0,
    3600.0,
    "seconds (and at least gpu.poll_interval)",
);

impl GpuConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        POLL_INTERVAL.check(self.poll_interval.as_secs_f64())?;
        HISTORY_MINUTES.check(self.history_minutes as f64)?;
        TIMEOUT.check(self.timeout.as_secs_f64())?;
        TEMPERATURE_WARNING.check(self.temperature_warning_celsius)?;
        PER_PROCESS_MAX.check(self.per_process_max as f64)?;
        KERNEL_LOG_RECORD_MAX.check(self.kernel_log_record_max_bytes as f64)?;
        if let Some(slow) = self.slow_interval {
            SLOW_INTERVAL
                .at_least(self.poll_interval.as_secs_f64())
                .check(slow.as_secs_f64())?;
        }
        for (i, name) in self.fields.exclude.iter().enumerate() {
            if Field::from_name(name).is_none() {
                let valid: Vec<&str> = Field::ALL.iter().map(|f| f.name()).collect();
                return Err(invalid(
                    &format!("gpu.fields.exclude[{i}]"),
                    name,
                    "not a known field",
                    &valid.join(", "),
                ));
            }
        }
        if self.nvml_library.trim().is_empty() {
            return Err(invalid("gpu.nvml_library", "", "empty", "a library path or soname"));
        }
        Ok(())
    }
}
