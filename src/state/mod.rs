//! The shared state that collectors write and the API, the hub and
//! `/metrics` read. Nothing here polls anything: each type holds the last
//! reading a collector published, behind a lock held only to copy it.
//!
//! Keeping these types out of `collectors` is what lets the arrows point
//! one way: `collectors` → `state` ← `api`, with no path between the two.

pub mod gpu;
pub mod health;
pub mod storage;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

pub use gpu::{GpuSnapshot, GpuState, NvmlDown};
pub use health::{HealthState, ServiceView};
pub use storage::{FsUsage, StorageReading, StorageState};

/// Everything collectors write and readers read, built once by
/// [`crate::build_state`]: the API's `AppState` wraps it (with the API-only
/// fields) and the collectors' `Shared` wraps it (with their runner and stop
/// token), so a piece of shared state is declared here and nowhere else.
#[derive(Clone)]
pub struct Shared {
    /// The config in force; a reload replaces it (read it when you use it).
    pub config: crate::config::LiveConfig,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub readiness: Arc<Readiness>,
    pub events: crate::events::EventBus,
    pub gpu: Arc<GpuState>,
    pub health: Arc<HealthState>,
    /// `None` only when a caller builds state without a history store.
    pub store: Option<Arc<crate::store::Store>>,
    /// `None` when `queues.enabled` is false.
    pub queues: Option<Arc<crate::dlq::Queues>>,
    /// What the queue collector's polls remember (depths, first-seen
    /// times): it writes, the API reads.
    pub watched: Arc<crate::dlq::Watched>,
    pub pipeline: Arc<crate::pipeline::Pipeline>,
    /// The storage collector's last filesystem reading.
    pub storage: Arc<StorageState>,
}

/// Tracks which enabled collectors have finished their first round.
#[derive(Default)]
pub struct Readiness {
    waiting: Mutex<HashSet<&'static str>>,
}

impl Readiness {
    pub fn expect(&self, name: &'static str) {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner()).insert(name);
    }

    pub fn done(&self, name: &'static str) {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner()).remove(name);
    }

    /// True once every expected collector has finished one round.
    pub fn is_ready(&self) -> bool {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner()).is_empty()
    }

    /// Collectors still waiting for their first round, sorted.
    pub fn waiting(&self) -> Vec<&'static str> {
        let mut v: Vec<_> = self
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .copied()
            .collect();
        v.sort_unstable();
        v
    }
}
