//! The renderer: turns the latest snapshot into the `gpu_*` families at
//! scrape time, so a GPU that disappears or a process that exits simply
//! has no series in the next page; nothing stale lingers.

use std::sync::Arc;

use prometheus::core::{Collector as PromCollector, Desc};
use prometheus::proto::{self, LabelPair, MetricFamily, MetricType};

use crate::attribution::GpuProcesses;
use crate::nvml::profiling::{PIPES, RECOVERY_ACTIONS};
use crate::nvml::{GpuReading, THROTTLE_REASONS};
use crate::state::GpuState;
use crate::xid::catalog;

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
    KernelLogRecords = "inferwatch_kernel_log_records_total", COUNTER, &[], "Records read from gpu.kernel_log (every record, XID or not).";
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
            b.add(F::KernelLogRecords, &[], snap.kernel_log_records as f64);
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
