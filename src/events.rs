//! Internal events: what collectors announce for other parts of the daemon
//! (the WebSocket broadcaster, built-in alerts) to pick up.
//!
//! A `tokio::sync::broadcast` channel carries them, so a publisher never
//! blocks; a receiver that falls behind loses the oldest events and is told.

use serde::Serialize;
use tokio::sync::broadcast;

/// How many events a slow receiver may lag behind before it loses some.
const CAPACITY: usize = 1024;

/// Alert severities, matching the design's built-in alert table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Severity {
    Info,
    Warning,
    Error,
    Critical,
}

/// One internal event.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A GPU's temperature rose above the warning threshold.
    GpuTemperatureHigh {
        gpu: u32,
        uuid: String,
        temperature: f64,
        threshold: f64,
    },
    /// A GPU that was present stopped answering (`GpuLost`).
    GpuLost { gpu: u32, uuid: String },
    /// NVML reported a critical XID error.
    GpuXid { gpu: u32, uuid: String, xid: u64 },
}

impl Event {
    pub fn severity(&self) -> Severity {
        match self {
            Event::GpuTemperatureHigh { .. } => Severity::Warning,
            Event::GpuLost { .. } | Event::GpuXid { .. } => Severity::Error,
        }
    }
}

/// The event bus: cheap to clone, publishing never blocks.
#[derive(Clone)]
pub struct EventBus {
    tx: broadcast::Sender<Event>,
}

impl EventBus {
    pub fn new() -> EventBus {
        EventBus {
            tx: broadcast::channel(CAPACITY).0,
        }
    }

    /// Publishes `event`; having no subscriber is fine.
    pub fn publish(&self, event: Event) {
        let _ = self.tx.send(event);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new()
    }
}
