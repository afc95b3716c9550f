//! GPU samples in the REST shape, and the in-memory ring that serves recent
//! history without touching the database.
//!
//! The ring keeps `gpu.history_minutes` of samples per GPU; older requests
//! go to the store.

use std::collections::{BTreeMap, VecDeque};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Serialize, Serializer};

use crate::nvml::GpuReading;

/// Name shown when no GPU can be read (the REST API's mock object).
pub const MOCK_GPU_NAME: &str = "Mock GPU (No NVIDIA GPU Available)";

const MIB: f64 = 1024.0 * 1024.0;

/// One GPU reading in the REST API's JSON shape (percent, MB, watts).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct GpuSample {
    /// GPU index; absent in the mock object.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    pub gpu_name: String,
    /// Percent, 0–100.
    pub gpu_utilization: Option<f64>,
    /// MiB.
    pub memory_used: Option<f64>,
    /// MiB.
    pub memory_total: Option<f64>,
    /// °C.
    pub temperature: Option<f64>,
    /// Watts.
    pub power_usage: Option<f64>,
    /// Items per second over the last 60 s from pipeline events; null without events.
    pub inference_fps: Option<f64>,
    #[serde(serialize_with = "rfc3339")]
    pub recorded_at: DateTime<Utc>,
}

impl GpuSample {
    pub fn from_reading(r: &GpuReading, at: DateTime<Utc>) -> GpuSample {
        GpuSample {
            gpu: Some(r.index),
            uuid: Some(r.uuid.clone()),
            gpu_name: r.name.clone(),
            gpu_utilization: r.utilization.map(|u| (u * 100.0).round()),
            memory_used: r.memory_used_bytes.map(|b| (b as f64 / MIB).round()),
            memory_total: r.memory_total_bytes.map(|b| (b as f64 / MIB).round()),
            temperature: r.temperature_celsius,
            power_usage: r.power_usage_watts,
            inference_fps: None,
            recorded_at: at,
        }
    }

    /// This sample with `inference_fps` joined from the pipeline state.
    pub fn with_fps(self, inference_fps: Option<f64>) -> GpuSample {
        GpuSample { inference_fps, ..self }
    }

    /// The placeholder served when NVML is unavailable.
    pub fn mock(at: DateTime<Utc>) -> GpuSample {
        GpuSample {
            gpu: None,
            uuid: None,
            gpu_name: MOCK_GPU_NAME.to_string(),
            gpu_utilization: None,
            memory_used: None,
            memory_total: None,
            temperature: None,
            power_usage: None,
            inference_fps: None,
            recorded_at: at,
        }
    }
}

/// RFC 3339 in UTC with millisecond precision and a `Z` suffix.
pub fn format_time(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn rfc3339<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_time(t))
}

/// Per-GPU rings covering a fixed window.
pub struct History {
    window: chrono::Duration,
    per_gpu: BTreeMap<u32, VecDeque<GpuSample>>,
}

impl History {
    pub fn new(minutes: u32) -> History {
        History {
            window: chrono::Duration::minutes(minutes as i64),
            per_gpu: BTreeMap::new(),
        }
    }

    /// Minutes this ring covers.
    pub fn window_minutes(&self) -> i64 {
        self.window.num_minutes()
    }

    /// Appends a sample and drops the ones that fell out of the window.
    pub fn push(&mut self, sample: GpuSample) {
        let Some(gpu) = sample.gpu else { return };
        let cutoff = sample.recorded_at - self.window;
        let ring = self.per_gpu.entry(gpu).or_default();
        ring.push_back(sample);
        while ring.front().is_some_and(|s| s.recorded_at < cutoff) {
            ring.pop_front();
        }
    }

    /// Samples of `gpu` recorded at or after `since`, oldest first.
    pub fn since(&self, gpu: u32, since: DateTime<Utc>) -> Vec<GpuSample> {
        self.per_gpu
            .get(&gpu)
            .map(|ring| ring.iter().filter(|s| s.recorded_at >= since).cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(gpu: u32, at: DateTime<Utc>) -> GpuSample {
        let r = GpuReading {
            index: gpu,
            uuid: format!("GPU-{gpu}"),
            name: "Test".into(),
            utilization: Some(0.42),
            memory_used_bytes: Some(3 * 1024 * 1024 * 1024),
            ..Default::default()
        };
        GpuSample::from_reading(&r, at)
    }

    #[test]
    fn ring_trims_to_window() {
        let mut h = History::new(10);
        let t0 = Utc::now();
        for m in 0..30 {
            h.push(sample(0, t0 + chrono::Duration::minutes(m)));
        }
        let all = h.since(0, t0);
        assert_eq!(all.len(), 11, "samples at minutes 19..=29 remain");
        assert_eq!(all[0].recorded_at, t0 + chrono::Duration::minutes(19));
        assert!(h.since(1, t0).is_empty());
    }

    #[test]
    fn design_shape_and_units() {
        let t = DateTime::parse_from_rfc3339("2026-01-02T03:04:05.678Z")
            .unwrap()
            .with_timezone(&Utc);
        let v = serde_json::to_value(sample(0, t)).unwrap();
        assert_eq!(v["gpu_utilization"], 42.0);
        assert_eq!(v["memory_used"], 3072.0);
        assert_eq!(v["recorded_at"], "2026-01-02T03:04:05.678Z");
        assert!(v["inference_fps"].is_null());
        let m = serde_json::to_value(GpuSample::mock(t)).unwrap();
        assert_eq!(m["gpu_name"], MOCK_GPU_NAME);
        for k in [
            "gpu_utilization",
            "memory_used",
            "memory_total",
            "temperature",
            "power_usage",
        ] {
            assert!(m[k].is_null(), "{k} must be null in the mock object");
        }
    }
}
