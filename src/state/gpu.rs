//! The GPU collector's last poll, and the in-memory history ring.
//!
//! A reading is turned into its REST [`GpuSample`] once, when the collector
//! publishes it. `inference_fps` is not part of a GPU reading: readers join
//! it from the pipeline state when they serve a sample.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

use chrono::{DateTime, Utc};

use crate::config::GpuConfig;
use crate::history::{GpuSample, History};
use crate::nvml::fields::NvmlMetrics;
use crate::nvml::{DriverVersions, GpuReading};

/// What the API and `/metrics` read: the last poll's result.
#[derive(Debug, Clone, Default)]
pub struct GpuSnapshot {
    /// False in mock mode (NVML could not be loaded).
    pub available: bool,
    pub driver_version: String,
    pub readings: Vec<GpuReading>,
    /// Each GPU's processes with who holds them (only with `gpu.per_process`).
    pub processes: Vec<crate::attribution::GpuProcesses>,
    /// Each GPU's energy charged to services, since the daemon started.
    pub energy: crate::inference::energy::EnergyTotals,
    /// Seconds the last attribution took.
    pub attribution_seconds: Option<f64>,
    /// Cumulative XID counts per `(gpu, uuid, xid)` labels.
    pub xid_totals: BTreeMap<(String, String, String), u64>,
    /// Unix time each `(gpu, uuid, xid)` was last counted.
    pub xid_last_seen: BTreeMap<(String, String, String), f64>,
    /// `Some(readable)` when `gpu.kernel_log` is set.
    pub kernel_log_up: Option<bool>,
    pub kernel_log_overwritten: u64,
    pub kernel_log_records: u64,
    pub recorded_at: Option<DateTime<Utc>>,
    /// `readings` in the REST shape, one per reading, made when published
    /// (`inference_fps` is left `None`; see [`GpuSample::with_fps`]).
    pub samples: Vec<GpuSample>,
    /// True while NVML is loaded and answering.
    pub nvml_up: bool,
    /// Set while the collector is failing because NVML is down.
    pub nvml_down: Option<NvmlDown>,
    /// Failed inits by reason (every reason, from 0).
    pub init_errors: BTreeMap<crate::nvml::InitReason, u64>,
    /// The driver's versions, while NVML is up.
    pub versions: Option<DriverVersions>,
}

/// Why the GPU collector is blind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NvmlDown {
    /// Why NVML is down.
    pub reason: crate::nvml::InitReason,
    pub message: String,
}

impl GpuSnapshot {
    /// The samples to serve, with `inference_fps` joined in: one per GPU,
    /// or the mock object in mock mode; `None` before the first poll and
    /// while NVML is down.
    pub fn serve(&self, inference_fps: Option<f64>) -> Option<Vec<GpuSample>> {
        let at = self.recorded_at?;
        if self.nvml_down.is_some() {
            // Blind, and saying so: no mock object that looks like a GPU.
            return None;
        }
        let samples = if self.available {
            self.samples.clone()
        } else {
            vec![GpuSample::mock(at)]
        };
        Some(samples.into_iter().map(|s| s.with_fps(inference_fps)).collect())
    }
}

/// Shared GPU state: written by the collector, read by everything else.
pub struct GpuState {
    snapshot: RwLock<Arc<GpuSnapshot>>,
    history: Mutex<History>,
    per_process: bool,
    /// The NVML call meters, written by the NVML thread.
    pub nvml_metrics: Option<NvmlMetrics>,
}

impl GpuState {
    pub fn new(config: &GpuConfig, metrics: Option<&crate::metrics::Metrics>) -> Arc<GpuState> {
        Arc::new(GpuState {
            snapshot: RwLock::new(Arc::new(GpuSnapshot::default())),
            history: Mutex::new(History::new(config.history_minutes)),
            per_process: config.per_process,
            nvml_metrics: metrics.map(NvmlMetrics::new),
        })
    }

    pub fn snapshot(&self) -> Arc<GpuSnapshot> {
        self.snapshot.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether per-process series are exported.
    pub fn per_process(&self) -> bool {
        self.per_process
    }

    /// Replaces the snapshot (the GPU collector, after each poll).
    pub fn publish(&self, snapshot: GpuSnapshot) {
        *self.snapshot.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(snapshot);
    }

    /// Appends one poll's samples to the history ring (the GPU collector).
    pub fn record(&self, samples: &[GpuSample]) {
        let mut history = self.history.lock().unwrap_or_else(|e| e.into_inner());
        for s in samples {
            history.push(s.clone());
        }
    }

    /// Runs `f` with the in-memory history ring.
    pub fn with_history<T>(&self, f: impl FnOnce(&History) -> T) -> T {
        f(&self.history.lock().unwrap_or_else(|e| e.into_inner()))
    }
}
