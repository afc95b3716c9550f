//! `storage`: filesystems to watch, the disk alert, the cleanup preview.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{de_seconds, ConfigError, Range};

/// Filesystems to watch and the cleanup preview.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Paths whose filesystems are reported, besides `data_dir`.
    pub paths: Vec<PathBuf>,
    /// Seconds between filesystem polls, 1–3600.
    #[serde(deserialize_with = "de_seconds")]
    pub poll_interval: Duration,
    /// Used percent above which one CRITICAL alert fires per crossing, 1–100.
    pub alert_used_percent: f64,
    /// Directories whose old files the cleanup preview reports.
    pub retention: Vec<RetentionConfig>,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            paths: Vec::new(),
            poll_interval: Duration::from_secs(30),
            alert_used_percent: 90.0,
            retention: Vec::new(),
        }
    }
}

/// One `storage.retention` entry.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// Directory to scan (recursively).
    pub path: PathBuf,
    /// Files older than this many days are reported, 1–36500.
    pub days: u32,
}

pub const POLL_INTERVAL: Range = Range::new("storage.poll_interval", 1.0, 3600.0, "seconds");
pub const ALERT_USED_PERCENT: Range = Range::new("storage.alert_used_percent", 1.0, 100.0, "percent");
pub const RETENTION_DAYS: Range = Range::new("storage.retention[].days", 1.0, 36_500.0, "days");

impl StorageConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        POLL_INTERVAL.check(self.poll_interval.as_secs_f64())?;
        ALERT_USED_PERCENT.check(self.alert_used_percent)?;
        for (i, r) in self.retention.iter().enumerate() {
            RETENTION_DAYS.check_at(&format!("storage.retention[{i}].days"), r.days as f64)?;
        }
        Ok(())
    }
}
