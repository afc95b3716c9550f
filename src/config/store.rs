//! `store`: the history store: SQLite by default, PostgreSQL by URL.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{de_seconds, invalid, ConfigError, Range};

/// History store settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Empty for SQLite at `<data_dir>/inferwatch.db`; else `sqlite://PATH` or `postgres://…`.
    pub url: String,
    /// Rows older than this many days are deleted once a day, 1–3650.
    pub retention_days: u32,
    /// Samples buffered while the database is unreachable, 100–10,000,000.
    /// When full, the oldest sample is dropped and counted.
    pub buffer_capacity: usize,
    /// Most samples written in one transaction, 1–10,000.
    pub batch_size: usize,
    /// Longest a sample waits before it is written, 0.1–300 s.
    #[serde(deserialize_with = "de_seconds")]
    pub flush_interval: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            url: String::new(),
            retention_days: 7,
            buffer_capacity: 100_000,
            batch_size: 500,
            flush_interval: Duration::from_secs(5),
        }
    }
}

/// Which database the store talks to, derived from `store.url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreBackend {
    Sqlite(PathBuf),
    Postgres(String),
}

pub const RETENTION_DAYS: Range = Range::new("store.retention_days", 1.0, 3650.0, "days");
pub const BUFFER_CAPACITY: Range = Range::new("store.buffer_capacity", 100.0, 10_000_000.0, "samples");
pub const BATCH_SIZE: Range = Range::new("store.batch_size", 1.0, 10_000.0, "samples");
pub const FLUSH_INTERVAL: Range = Range::new("store.flush_interval", 0.1, 300.0, "seconds");

impl StoreConfig {
    pub fn validate(&self, data_dir: &Path) -> Result<(), ConfigError> {
        RETENTION_DAYS.check(self.retention_days as f64)?;
        BUFFER_CAPACITY.check(self.buffer_capacity as f64)?;
        BATCH_SIZE.check(self.batch_size as f64)?;
        FLUSH_INTERVAL.check(self.flush_interval.as_secs_f64())?;
        self.backend(data_dir).map(|_| ())
    }

    /// Resolves `url` against `data_dir`.
    pub fn backend(&self, data_dir: &Path) -> Result<StoreBackend, ConfigError> {
        let url = self.url.trim();
        if url.is_empty() {
            return Ok(StoreBackend::Sqlite(data_dir.join("inferwatch.db")));
        }
        if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(invalid("store.url", url, "missing a path", "sqlite://PATH"));
            }
            return Ok(StoreBackend::Sqlite(PathBuf::from(path)));
        }
        // The scheme here; the PostgreSQL client parses the rest, once,
        // where the store is opened (crate::store::postgres_options).
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(StoreBackend::Postgres(url.to_string()));
        }
        Err(invalid(
            "store.url",
            url,
            "an unknown scheme",
            "empty (SQLite in data_dir), sqlite://PATH or postgres://USER@HOST:PORT/DB",
        ))
    }
}
