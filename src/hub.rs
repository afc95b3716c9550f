//! The `/ws/system` fan-out hub and the event -> message translation. Not
//! HTTP: the API's `ws` module upgrades connections and serves each socket from
//! the queue the hub gives it.
//!
//! The [`Hub`] serialises each message once and hands the same bytes to
//! every client's bounded queue with `try_send`, so the broadcaster never
//! waits. A client whose queue is full is a slow consumer: it is cancelled
//! (even in the middle of a blocked socket write), disconnected and counted.
//! [`run_hub`] turns every internal event into the messages clients get;
//! the alert wording lives here.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::ws::Utf8Bytes;
use chrono::Utc;
use prometheus::{Histogram, IntCounter, IntCounterVec, IntGauge, IntGaugeVec};
use serde::Serialize;
use serde_json::json;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use crate::config::WebSocketConfig;
use crate::events::{Event, Severity};
use crate::history::format_time;
use crate::metrics::{family, histogram, Metrics};
use crate::pipeline::Pipeline;
use crate::state::{GpuState, HealthState};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    GpuStats,
    ServiceStatus,
    Alert,
}

impl EventType {
    const ALL: [EventType; 3] = [EventType::GpuStats, EventType::ServiceStatus, EventType::Alert];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::GpuStats => "gpu_stats",
            EventType::ServiceStatus => "service_status",
            EventType::Alert => "alert",
        }
    }
}

/// Who is connected: `?client=` or, failing that, the User-Agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientType {
    Browser,
    Api,
}

impl ClientType {
    pub fn as_str(self) -> &'static str {
        match self {
            ClientType::Browser => "browser",
            ClientType::Api => "api",
        }
    }

    /// Browsers all send `Mozilla/`; scripts and libraries do not.
    pub(crate) fn from_user_agent(ua: Option<&str>) -> ClientType {
        match ua {
            Some(ua) if ua.starts_with("Mozilla/") => ClientType::Browser,
            _ => ClientType::Api,
        }
    }
}

/// Why a connection ended badly (`error_type` label).
#[derive(Debug, Clone, Copy)]
pub(crate) enum WsError {
    SlowConsumer,
    SendFailed,
    Protocol,
    PingTimeout,
}

impl WsError {
    const ALL: [WsError; 4] = [
        WsError::SlowConsumer,
        WsError::SendFailed,
        WsError::Protocol,
        WsError::PingTimeout,
    ];

    fn as_str(self) -> &'static str {
        match self {
            WsError::SlowConsumer => "slow_consumer",
            WsError::SendFailed => "send_failed",
            WsError::Protocol => "protocol",
            WsError::PingTimeout => "ping_timeout",
        }
    }
}

/// One serialised message, shared by every queue it is in.
#[derive(Clone)]
pub(crate) struct Outgoing {
    pub(crate) kind: EventType,
    pub(crate) text: Utf8Bytes,
}

impl Outgoing {
    fn new(kind: EventType, data: impl Serialize) -> Outgoing {
        let body = json!({
            "type": kind.as_str(),
            "data": data,
            "timestamp": format_time(&Utc::now()),
        });
        Outgoing {
            kind,
            text: Utf8Bytes::from(body.to_string()),
        }
    }
}

/// Most queued messages written with one flush.
pub(crate) const MAX_BATCH: usize = 64;

struct Client {
    tx: mpsc::Sender<Outgoing>,
    cancel: CancellationToken,
}

/// The four `websocket_*` families.
pub(crate) struct WsMetrics {
    pub(crate) active: IntGaugeVec,
    pub(crate) sent: [IntCounter; 3],
    pub(crate) errors: IntCounterVec,
    pub(crate) duration: Histogram,
}

impl WsMetrics {
    fn register(metrics: &Metrics) -> WsMetrics {
        let active = family::<IntGaugeVec>(
            "websocket_connections_active",
            "Open /ws/system connections.",
            &["client_type"],
        );
        let sent_vec = family::<IntCounterVec>(
            "websocket_messages_sent_total",
            "Messages written to /ws/system clients (one per client per message).",
            &["event_type"],
        );
        let errors = family::<IntCounterVec>(
            "websocket_errors_total",
            "Connections ended by an error: slow_consumer, send_failed, protocol, ping_timeout.",
            &["error_type"],
        );
        let duration = histogram(
            "websocket_connection_duration_seconds",
            "How long /ws/system connections lasted.",
            &[],
            vec![10.0, 30.0, 60.0, 300.0, 600.0, 1800.0, 3600.0],
        )
        .with_label_values::<&str>(&[]);
        metrics.add(&active);
        metrics.add(&sent_vec);
        metrics.add(&errors);
        metrics.add(&duration);
        for t in [ClientType::Browser, ClientType::Api] {
            active.with_label_values(&[t.as_str()]);
        }
        for e in WsError::ALL {
            errors.with_label_values(&[e.as_str()]);
        }
        let sent = EventType::ALL.map(|t| sent_vec.with_label_values(&[t.as_str()]));
        WsMetrics {
            active,
            sent,
            errors,
            duration,
        }
    }

    pub(crate) fn error(&self, e: WsError) {
        self.errors.with_label_values(&[e.as_str()]).inc();
    }

    pub(crate) fn gauge(&self, t: ClientType) -> IntGauge {
        self.active.with_label_values(&[t.as_str()])
    }
}

/// The fan-out point for every connected client.
pub struct Hub {
    clients: Mutex<HashMap<u64, Client>>,
    /// Clients admitted: connected, or between handshake and upgrade.
    slots: std::sync::atomic::AtomicUsize,
    next_id: AtomicU64,
    pub(crate) metrics: WsMetrics,
    pub(crate) config: WebSocketConfig,
}

impl Hub {
    pub fn new(config: WebSocketConfig, metrics: &Metrics) -> Arc<Hub> {
        Arc::new(Hub {
            clients: Mutex::new(HashMap::new()),
            slots: std::sync::atomic::AtomicUsize::new(0),
            next_id: AtomicU64::new(0),
            metrics: WsMetrics::register(metrics),
            config,
        })
    }

    /// Connected clients by type: `(browser, api)`.
    pub fn counts(&self) -> (i64, i64) {
        (
            self.metrics.gauge(ClientType::Browser).get(),
            self.metrics.gauge(ClientType::Api).get(),
        )
    }

    /// Admits one more client if fewer than `websocket.max_clients` hold a
    /// slot. Checked and taken in one step, so simultaneous handshakes
    /// cannot overshoot; the slot is freed when the [`Slot`] drops (the
    /// client left, or its upgrade never happened).
    pub(crate) fn reserve(self: &Arc<Hub>) -> Option<Slot> {
        let max = self.config.max_clients;
        self.slots
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1))
            .ok()
            .map(|_| Slot(self.clone()))
    }

    /// Hands `batch` to every client without waiting; a client whose queue
    /// cannot take the whole batch is cut off. A batch (e.g. one poll's
    /// `gpu_stats`) lands in each queue before that client is woken again,
    /// so it is written with a single flush.
    fn broadcast(&self, batch: &[Outgoing]) {
        if batch.is_empty() {
            return;
        }
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        clients.retain(|_, c| {
            for msg in batch {
                match c.tx.try_send(msg.clone()) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        self.metrics.error(WsError::SlowConsumer);
                        c.cancel.cancel();
                        return false;
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return false,
                }
            }
            true
        });
    }

    /// Registers a client and takes its snapshot under the same lock, so no
    /// broadcast can slip between the snapshot and the queue.
    pub(crate) fn register(
        &self,
        snapshot: impl FnOnce() -> Vec<Outgoing>,
    ) -> (u64, mpsc::Receiver<Outgoing>, CancellationToken, Vec<Outgoing>) {
        let (tx, rx) = mpsc::channel(self.config.client_queue);
        let cancel = CancellationToken::new();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        let snap = snapshot();
        clients.insert(
            id,
            Client {
                tx,
                cancel: cancel.clone(),
            },
        );
        (id, rx, cancel, snap)
    }

    pub(crate) fn unregister(&self, id: u64) {
        self.clients.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
    }
}

/// One admitted client's place in the hub.
pub(crate) struct Slot(Arc<Hub>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.slots.fetch_sub(1, Ordering::AcqRel);
    }
}

/// `gpu_stats` messages for the current snapshot, with `inference_fps`
/// joined in: one per GPU, or the mock object in mock mode; none before the
/// first poll.
fn gpu_messages(gpu: &GpuState, fps: Option<f64>) -> Vec<Outgoing> {
    gpu.snapshot()
        .serve(fps)
        .unwrap_or_default()
        .into_iter()
        .map(|sample| Outgoing::new(EventType::GpuStats, sample))
        .collect()
}

fn service_message(service: &str, status: &str, message: &str, starting: bool) -> Outgoing {
    Outgoing::new(
        EventType::ServiceStatus,
        json!({ "service": service, "status": status, "message": message, "starting": starting }),
    )
}

fn alert_message(severity: Severity, condition: &str, message: &str) -> Outgoing {
    Outgoing::new(
        EventType::Alert,
        json!({ "severity": severity, "condition": condition, "message": message }),
    )
}

/// What a new client is sent first: the GPUs and every service's status.
pub(crate) fn snapshot(gpu: &GpuState, health: &HealthState, fps: Option<f64>) -> Vec<Outgoing> {
    let mut out = gpu_messages(gpu, fps);
    out.extend(
        health
            .services()
            .iter()
            .map(|s| service_message(&s.name, s.status.as_str(), &s.message, s.starting)),
    );
    out
}

/// Turns internal events into messages until `shutdown`.
pub async fn run_hub(
    hub: Arc<Hub>,
    mut events: broadcast::Receiver<Event>,
    gpu: Arc<GpuState>,
    pipeline: Arc<Pipeline>,
    shutdown: CancellationToken,
) {
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => break,
            e = events.recv() => e,
        };
        match event {
            Ok(e) => hub.broadcast(&messages(&e, &gpu, &pipeline)),
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(
                    skipped = n,
                    "WebSocket hub fell behind the event bus; events were skipped."
                );
            }
            Err(broadcast::error::RecvError::Closed) => break,
        }
    }
}

/// The messages one internal event becomes, with the alert wording.
fn messages(event: &Event, gpu: &GpuState, pipeline: &Pipeline) -> Vec<Outgoing> {
    match event {
        Event::GpuPolled => gpu_messages(gpu, pipeline.fps()),
        Event::ServiceStatus {
            service,
            status,
            message,
            starting,
        } => vec![service_message(service, status.as_str(), message, *starting)],
        Event::Alert {
            severity,
            condition,
            message,
        } => vec![alert_message(*severity, condition, message)],
        Event::GpuTemperatureHigh {
            gpu,
            uuid,
            temperature,
            threshold,
        } => vec![alert_message(
            event.severity(),
            "gpu_temperature_high",
            &format!("GPU {gpu} ({uuid}) is at {temperature} °C, above {threshold} °C"),
        )],
        Event::GpuLost { gpu, uuid } => vec![alert_message(
            event.severity(),
            "gpu_lost",
            &format!("GPU {gpu} ({uuid}) is lost (fell off the bus)"),
        )],
        Event::GpuXid { gpu, uuid, xid } => vec![alert_message(
            event.severity(),
            "gpu_xid_error",
            &format!("GPU {gpu} ({uuid}) reported XID {xid}"),
        )],
        Event::GpuMemoryAfterRestart { .. } => memory_after_restart_message(event).into_iter().collect(),
    }
}

/// The alert that says whether a restart returned a service's GPU memory
/// (`None` for any other event).
fn memory_after_restart_message(event: &Event) -> Option<Outgoing> {
    let Event::GpuMemoryAfterRestart {
        service,
        returned,
        before_bytes,
        after_bytes,
        leftover_bytes,
    } = event
    else {
        return None;
    };
    let gib = |b: &u64| *b as f64 / (1u64 << 30) as f64;
    let message = if *returned {
        format!(
            "the restart of {service} returned its GPU memory ({:.2} GiB before, {:.2} GiB now)",
            gib(before_bytes),
            gib(after_bytes)
        )
    } else {
        format!("the restart of {service} did not return its GPU memory: {:.2} GiB of the {:.2} GiB it held are still taken", gib(leftover_bytes), gib(before_bytes))
    };
    Some(Outgoing::new(
        EventType::Alert,
        json!({
            "severity": event.severity(),
            "condition": "gpu_memory_after_restart",
            "message": message,
            "service": service,
            "returned": returned,
            "before_bytes": before_bytes,
            "after_bytes": after_bytes,
            "leftover_bytes": leftover_bytes,
        }),
    ))
}
