//! The storage collector's last filesystem reading.

use serde::Serialize;

/// One filesystem's usage, as `df` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct FsUsage {
    pub path: String,
    pub total_bytes: u64,
    pub used_bytes: u64,
    /// Free for root.
    pub free_bytes: u64,
    /// Free for unprivileged users.
    pub available_bytes: u64,
    /// `used / (used + available) * 100`, like `df`.
    pub used_percent: f64,
}

/// The storage collector's last reading, for `/api/system/storage/stats`:
/// the API serves it instead of calling statvfs per request.
#[derive(Default)]
pub struct StorageState {
    last: std::sync::RwLock<Option<StorageReading>>,
}

/// One round's usage of every watched path.
#[derive(Debug, Clone)]
pub struct StorageReading {
    pub at: chrono::DateTime<chrono::Utc>,
    /// Per path, in `watched` order: the usage, or why it could not be read.
    pub filesystems: Vec<Result<FsUsage, (String, String)>>,
}

impl StorageState {
    pub fn last(&self) -> Option<StorageReading> {
        self.last.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces the reading (the storage collector, after each round).
    pub fn publish(&self, reading: StorageReading) {
        *self.last.write().unwrap_or_else(|e| e.into_inner()) = Some(reading);
    }
}
