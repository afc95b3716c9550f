//! Internal events: what collectors announce for other parts of the daemon
//! (the WebSocket broadcaster, built-in alerts) to pick up.
//!
//! A `tokio::sync::broadcast` channel carries them, so a publisher never
//! blocks; a receiver that falls behind loses the oldest events and is told.

use serde::Serialize;
use tokio::sync::broadcast;

use crate::restart::Status;

/// How many events a slow receiver may lag behind before it loses some.
const CAPACITY: usize = 1024;

/// Alert severities of the built-in alerts (docs/health-monitor.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Severity {
    Info,
    Warning,
    Error,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "INFO",
            Severity::Warning => "WARNING",
            Severity::Error => "ERROR",
            Severity::Critical => "CRITICAL",
        }
    }
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
    /// `gpu` is the index, or `unknown` for a bus no GPU had.
    GpuXid { gpu: String, uuid: String, xid: String },
    /// A GPU poll finished and published a new snapshot (also in mock mode).
    GpuPolled,
    /// A monitored service changed status (or was checked for the first time).
    ServiceStatus {
        service: String,
        status: Status,
        message: String,
        /// True during the service's start period.
        starting: bool,
    },
    /// The start period after a restart ended: whether the service's old
    /// processes gave their GPU memory back.
    GpuMemoryAfterRestart {
        service: String,
        returned: bool,
        before_bytes: u64,
        after_bytes: u64,
        leftover_bytes: u64,
    },
    /// A built-in alert, already logged at its level by [`EventBus::alert`].
    Alert {
        severity: Severity,
        condition: String,
        message: String,
    },
}

impl Event {
    pub fn severity(&self) -> Severity {
        match self {
            Event::GpuTemperatureHigh { .. } => Severity::Warning,
            Event::GpuLost { .. } | Event::GpuXid { .. } => Severity::Error,
            Event::GpuPolled | Event::ServiceStatus { .. } => Severity::Info,
            Event::GpuMemoryAfterRestart { returned, .. } => {
                if *returned {
                    Severity::Info
                } else {
                    Severity::Warning
                }
            }
            Event::Alert { severity, .. } => *severity,
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

    /// Raises a built-in alert: one log line at the matching level (fields
    /// first, then the message) and one [`Event::Alert`], so the two never
    /// drift apart.
    pub fn alert(&self, severity: Severity, condition: &str, message: String) {
        let sev = severity.as_str();
        match severity {
            Severity::Info => tracing::info!(severity = sev, condition, "{message}"),
            Severity::Warning => tracing::warn!(severity = sev, condition, "{message}"),
            Severity::Error | Severity::Critical => tracing::error!(severity = sev, condition, "{message}"),
        }
        self.publish(Event::Alert {
            severity,
            condition: condition.to_string(),
            message,
        });
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
