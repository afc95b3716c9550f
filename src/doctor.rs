//! `inferwatch doctor`: what will inferwatch see on this box, and what will
//! it cost? Loads NVML the way the daemon does, reads every field of every
//! GPU through the same [`Field::read`] the poller uses, `samples` times
//! each, and reports per field the NVML call, the result (`ok` or the
//! error's name), the value in `/metrics` units, the median time inside
//! NVML, and the field's cadence class. The summary turns the medians and
//! the configured cadences into the expected share of a core per GPU.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::time::{Duration, Instant};

use nvml_wrapper::error::NvmlError;
use nvml_wrapper::Nvml;
use serde::Serialize;

use crate::config::GpuConfig;
use crate::nvml::fields::{error_name, Class, Field, Meter, Value};

/// Why doctor could not look at any GPU.
#[derive(Debug, thiserror::Error)]
pub enum DoctorError {
    #[error(
        "NVML state: down ({reason}): no NVML library at {path}: {source} (install the NVIDIA driver, or set gpu.nvml_library / --nvml-library)"
    )]
    NoLibrary {
        path: String,
        reason: crate::nvml::InitReason,
        source: NvmlError,
    },
    #[error("NVML state: down ({reason}): NVML failed to initialise from {path}: {source} (see docs/runbooks.md#gpudriverdown; try nvidia-smi)")]
    Init {
        path: String,
        reason: crate::nvml::InitReason,
        source: NvmlError,
    },
    #[error("NVML loaded from {path} (driver {driver}) but no GPU answered: {why}")]
    NoDevices { path: String, driver: String, why: String },
}

/// What doctor reads and how.
#[derive(Debug, Clone)]
pub struct Options {
    pub library: String,
    pub samples: usize,
    pub poll_interval: Duration,
    pub slow_interval: Duration,
    pub per_process: bool,
    pub exclude: HashSet<Field>,
    /// `gpu.kernel_log` (empty: off).
    pub kernel_log: String,
}

/// The lines about XIDs that doctor prints whatever NVML does: whether the
/// kernel log can be read, and the XID catalog's version.
pub fn xid_lines(o: &Options) -> Vec<String> {
    let kernel = if o.kernel_log.is_empty() {
        "Kernel log: off (gpu.kernel_log is empty); XIDs come from NVML events only".to_string()
    } else {
        match std::fs::File::open(&o.kernel_log) {
            Ok(_) => format!("Kernel log: {} is readable; XIDs are read from it", o.kernel_log),
            Err(e) => format!(
                "Kernel log: {} cannot be read ({e}); XIDs come from NVML events only, which miss some (79, 119, 120). /dev/kmsg needs CAP_SYSLOG when kernel.dmesg_restrict is 1",
                o.kernel_log
            ),
        }
    };
    vec![
        kernel,
        format!("XID catalog: {}", crate::xid::catalog::catalog().version),
    ]
}

impl Options {
    pub fn from_config(gpu: &GpuConfig, library: Option<String>, samples: usize) -> Options {
        Options {
            library: library.unwrap_or_else(|| gpu.nvml_library.clone()),
            samples: samples.max(1),
            poll_interval: gpu.poll_interval,
            slow_interval: gpu.slow_interval(),
            per_process: gpu.per_process,
            exclude: gpu.excluded_fields(),
            kernel_log: gpu.kernel_log.clone(),
        }
    }
}

/// One field of one GPU.
#[derive(Debug, Serialize)]
pub struct FieldReport {
    pub field: &'static str,
    pub call: &'static str,
    pub class: &'static str,
    /// `ok`, an error name (`invalid_argument`, `not_supported`, ...), or
    /// `excluded` (by `gpu.fields.exclude`; never called).
    pub result: String,
    pub value: Option<String>,
    /// Median time of one read of the field, in microseconds.
    pub median_us: Option<f64>,
    /// Whether the daemon reads it with this configuration.
    pub read_by_daemon: bool,
}

/// One GPU.
#[derive(Debug, Serialize)]
pub struct GpuReport {
    pub index: u32,
    pub uuid: String,
    pub fields: Vec<FieldReport>,
    /// Expected time inside NVML per second of wall time at the configured
    /// cadences, as a percentage of one core.
    pub expected_cpu_percent: f64,
}

/// The whole report.
#[derive(Debug, Serialize)]
pub struct Report {
    pub library: String,
    /// `up` (doctor fails with the reason otherwise).
    pub nvml_state: &'static str,
    pub driver_version: String,
    pub nvml_version: String,
    pub cuda_driver_version: String,
    pub samples: usize,
    pub poll_interval_seconds: f64,
    pub slow_interval_seconds: f64,
    pub gpus: Vec<GpuReport>,
    /// Devices that could not be opened or identified.
    pub problems: Vec<String>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Loads and initialises NVML from `library`, or says why not.
fn load(library: &str) -> Result<Nvml, DoctorError> {
    Nvml::builder().lib_path(OsStr::new(library)).init().map_err(|source| {
        let reason = crate::nvml::init_reason(library, &source);
        let path = library.to_string();
        match source {
            NvmlError::LibloadingError(_) => DoctorError::NoLibrary { path, reason, source },
            _ => DoctorError::Init { path, reason, source },
        }
    })
}

/// Runs the checks.
pub fn run(o: &Options) -> Result<Report, DoctorError> {
    let nvml = load(&o.library)?;
    let driver_version = nvml.sys_driver_version().unwrap_or_else(|_| "unknown".into());
    let nvml_version = nvml.sys_nvml_version().unwrap_or_else(|_| "unknown".into());
    let cuda_driver_version = nvml
        .sys_cuda_driver_version()
        .map(|v| format!("{}.{}", v / 1000, (v % 1000) / 10))
        .unwrap_or_else(|_| "unknown".into());
    let no_devices = |why: String| DoctorError::NoDevices {
        path: o.library.clone(),
        driver: driver_version.clone(),
        why,
    };
    let count = nvml
        .device_count()
        .map_err(|e| no_devices(format!("counting devices failed: {e}")))?;
    let mut gpus = Vec::new();
    let mut problems = Vec::new();
    for index in 0..count {
        match probe_gpu(&nvml, index, o) {
            Ok(g) => gpus.push(g),
            Err(p) => problems.push(p.to_string()),
        }
    }
    if gpus.is_empty() {
        return Err(no_devices(if count == 0 {
            "the driver reports 0 devices".into()
        } else {
            problems.join("; ")
        }));
    }
    Ok(Report {
        library: o.library.clone(),
        nvml_state: "up",
        driver_version,
        nvml_version,
        cuda_driver_version,
        samples: o.samples,
        poll_interval_seconds: o.poll_interval.as_secs_f64(),
        slow_interval_seconds: o.slow_interval.as_secs_f64(),
        gpus,
        problems,
    })
}

/// A GPU that could not be identified, so none of its fields were probed.
#[derive(Debug, thiserror::Error)]
#[error("GPU {index}: {what}: {error}")]
struct ProbeError {
    index: u32,
    what: &'static str,
    error: &'static str,
}

/// Every field of one GPU; `Err` says why the GPU could not be identified.
fn probe_gpu(nvml: &Nvml, index: u32, o: &Options) -> Result<GpuReport, ProbeError> {
    let meter = Meter::default();
    let failed = |what: &'static str| {
        move |e: NvmlError| ProbeError {
            index,
            what,
            error: error_name(&e),
        }
    };
    let device = nvml.device_by_index(index).map_err(failed("cannot be opened"))?;
    let uuid = device.uuid().map_err(failed("its UUID cannot be read"))?;
    // The fan count decides how many fans are read, as in the daemon.
    let fans = match Field::NumFans.read(nvml, &device, 0, &meter) {
        Ok(v) => v.num().map_or(1, |n| n as u32),
        Err(_) => 1,
    };
    let mut fields = Vec::new();
    let mut per_second = 0.0;
    for field in Field::ALL {
        // Excluded, off without per_process, or only read for a field that is excluded.
        let skipped = o.exclude.contains(&field)
            || (!o.per_process && matches!(field, Field::Processes | Field::ProcessUtilization))
            || (field == Field::NumFans && o.exclude.contains(&Field::FanSpeed))
            || (field == Field::NvLink && o.exclude.contains(&Field::Gpm));
        let read_by_daemon = !skipped;
        let report = probe_field(nvml, &device, field, fans, o, read_by_daemon, &meter);
        if let (true, Some(us)) = (read_by_daemon, report.median_us) {
            per_second += match field.class() {
                Class::Fast => us / o.poll_interval.as_secs_f64(),
                Class::Slow => us / o.slow_interval.as_secs_f64(),
                Class::Static => 0.0,
            };
        }
        fields.push(report);
    }
    Ok(GpuReport {
        index,
        uuid,
        fields,
        // µs per second -> share of a core, in percent.
        expected_cpu_percent: per_second / 1e6 * 100.0,
    })
}

/// Reads one field `o.samples` times: the first result and the median time.
fn probe_field(
    nvml: &Nvml,
    device: &nvml_wrapper::Device,
    field: Field,
    fans: u32,
    o: &Options,
    read_by_daemon: bool,
    meter: &Meter,
) -> FieldReport {
    let mut report = FieldReport {
        field: field.name(),
        call: field.nvml_function(),
        class: field.class().as_str(),
        result: "excluded".into(),
        value: None,
        median_us: None,
        read_by_daemon,
    };
    if o.exclude.contains(&field) {
        return report;
    }
    let mut first: Option<Result<Value, NvmlError>> = None;
    let mut times = Vec::with_capacity(o.samples);
    for _ in 0..o.samples {
        let start = Instant::now();
        let r = field.read(nvml, device, fans, meter);
        times.push(start.elapsed().as_secs_f64() * 1e6);
        first.get_or_insert(r);
    }
    let med = median(times);
    report.median_us = Some((med * 100.0).round() / 100.0);
    match first.expect("at least one sample") {
        Ok(v) => {
            report.result = "ok".into();
            report.value = Some(v.to_string());
        }
        Err(e) => report.result = error_name(&e).to_string(),
    }
    report
}

/// What one slow field costs per GPU at the slow interval, or why it is not read.
fn cost_line(g: &GpuReport, field: &str, what: &str, how: &str, slow_seconds: f64) -> String {
    let Some(f) = g.fields.iter().find(|f| f.field == field) else {
        return String::new();
    };
    match (f.result.as_str(), f.median_us) {
        ("ok", Some(us)) => format!(
            "  {what}: {:.2} ms per read every {slow_seconds} s = {:.4} % of one core ({}; {how})\n",
            us / 1000.0,
            us / slow_seconds / 1e6 * 100.0,
            if f.read_by_daemon {
                "read"
            } else {
                "not read with this config"
            },
        ),
        (result, _) => format!("  {what}: {result}\n"),
    }
}

/// The recovery action field 230 gave, by name.
fn recovery_action(g: &GpuReport) -> String {
    g.fields
        .iter()
        .find(|f| f.field == "recovery_action")
        .map(
            |f| match (f.result.as_str(), f.value.as_deref().unwrap_or("").parse::<usize>()) {
                ("ok", Ok(i)) => crate::nvml::profiling::RECOVERY_ACTIONS
                    .get(i)
                    .map_or_else(|| format!("unknown ({i})"), |a| a.to_string()),
                (result, _) => format!("{result} (the driver does not report it)"),
            },
        )
        .unwrap_or_default()
}

/// One GPU's fields with their class, call, result, cost and value.
fn gpu_table(g: &GpuReport, r: &Report) -> String {
    let mut out = format!("\nGPU {}  {}\n", g.index, g.uuid);
    out += &format!(
        "  {:<22} {:<7} {:<42} {:<19} {:>11}  {}\n",
        "field", "class", "NVML call", "result", "median", "value"
    );
    for f in &g.fields {
        let cost = f.median_us.map_or("-".to_string(), |us| {
            if us >= 1000.0 {
                format!("{:.2} ms", us / 1000.0)
            } else {
                format!("{us:.1} µs")
            }
        });
        let class = if f.read_by_daemon || f.result == "excluded" {
            f.class.to_string()
        } else {
            format!("{}*", f.class)
        };
        out += &format!(
            "  {:<22} {:<7} {:<42} {:<19} {:>11}  {}\n",
            f.field,
            class,
            f.call,
            f.result,
            cost,
            f.value.as_deref().unwrap_or("")
        );
    }
    for (field, what, how) in [
        ("gpm", "GPM profiling", "exclude `gpm` to save it"),
        ("process_utilization", "per-process utilization", "gpu.per_process"),
    ] {
        out += &cost_line(g, field, what, how, r.slow_interval_seconds);
    }
    out += &format!(
        "  expected: {:.4} % of one core for this GPU (fast fields every {} s, slow every {} s)\n",
        g.expected_cpu_percent, r.poll_interval_seconds, r.slow_interval_seconds
    );
    out
}

/// The report as a table.
pub fn render(r: &Report) -> String {
    let mut out = format!(
        "inferwatch doctor: NVML from {}, driver {}, {} GPU(s), median of {} reads per field\n",
        r.library,
        r.driver_version,
        r.gpus.len(),
        r.samples
    );
    out += &format!(
        "NVML state: {}; driver {}, NVML {}, CUDA driver {}\n",
        r.nvml_state, r.driver_version, r.nvml_version, r.cuda_driver_version
    );
    for g in &r.gpus {
        out += &format!("GPU {} recovery action: {}\n", g.index, recovery_action(g));
    }
    for g in &r.gpus {
        out += &gpu_table(g, r);
    }
    let total: f64 = r.gpus.iter().map(|g| g.expected_cpu_percent).sum();
    out += &format!(
        "\nSummary: {} GPU(s); expected time inside NVML {:.4} % of one core in all ({:.4} % per GPU). * = not read with this config.\n",
        r.gpus.len(),
        total,
        total / r.gpus.len() as f64
    );
    for p in &r.problems {
        out += &format!("Problem: {p}\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 3.0);
        assert_eq!(median(vec![5.0]), 5.0);
    }
}
