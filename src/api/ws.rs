//! `/ws/system`: the live channel. Every client first gets a snapshot (the
//! current GPU stats and every service's status), then `gpu_stats` on each
//! poll, `service_status` on each change and `alert` for built-in alerts.
//!
//! The [`Hub`] serialises each message once and hands the same bytes to
//! every client's bounded queue with `try_send`, so the broadcaster never
//! waits. A client whose queue is full is a slow consumer: it is cancelled
//! (even in the middle of a blocked socket write), disconnected and counted.
//! Each connection pings every `websocket.ping_interval` and is dropped when
//! the peer has been silent for two intervals.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use chrono::Utc;
use futures_util::SinkExt;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts};
use serde::Serialize;
use serde_json::json;
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::system::{params, RawQuery};
use super::{AppError, AppState};
use crate::collectors::gpu::GpuState;
use crate::collectors::health::HealthState;
use crate::config::WebSocketConfig;
use crate::events::{Event, Severity};
use crate::history::{format_time, GpuSample};
use crate::metrics::Metrics;

/// The message types, as the `type` field and the `event_type` label.
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
    fn from_user_agent(ua: Option<&str>) -> ClientType {
        match ua {
            Some(ua) if ua.starts_with("Mozilla/") => ClientType::Browser,
            _ => ClientType::Api,
        }
    }
}

/// Why a connection ended badly (`error_type` label).
#[derive(Debug, Clone, Copy)]
enum WsError {
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
struct Outgoing {
    kind: EventType,
    text: Utf8Bytes,
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
const MAX_BATCH: usize = 64;

struct Client {
    tx: mpsc::Sender<Outgoing>,
    cancel: CancellationToken,
}

/// The four `websocket_*` families.
struct WsMetrics {
    active: IntGaugeVec,
    sent: [IntCounter; 3],
    errors: IntCounterVec,
    duration: Histogram,
}

impl WsMetrics {
    fn register(metrics: &Metrics) -> WsMetrics {
        let active = IntGaugeVec::new(
            Opts::new("websocket_connections_active", "Open /ws/system connections."),
            &["client_type"],
        )
        .expect("valid metric");
        let sent_vec = IntCounterVec::new(
            Opts::new(
                "websocket_messages_sent_total",
                "Messages written to /ws/system clients (one per client per message).",
            ),
            &["event_type"],
        )
        .expect("valid metric");
        let errors = IntCounterVec::new(
            Opts::new(
                "websocket_errors_total",
                "Connections ended by an error: slow_consumer, send_failed, protocol, ping_timeout.",
            ),
            &["error_type"],
        )
        .expect("valid metric");
        let duration = Histogram::with_opts(
            HistogramOpts::new(
                "websocket_connection_duration_seconds",
                "How long /ws/system connections lasted.",
            )
            .buckets(vec![10.0, 30.0, 60.0, 300.0, 600.0, 1800.0, 3600.0]),
        )
        .expect("valid metric");
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

    fn error(&self, e: WsError) {
        self.errors.with_label_values(&[e.as_str()]).inc();
    }

    fn gauge(&self, t: ClientType) -> IntGauge {
        self.active.with_label_values(&[t.as_str()])
    }
}

/// The fan-out point for every connected client.
pub struct Hub {
    clients: Mutex<HashMap<u64, Client>>,
    /// Clients admitted: connected, or between handshake and upgrade.
    slots: std::sync::atomic::AtomicUsize,
    next_id: AtomicU64,
    metrics: WsMetrics,
    config: WebSocketConfig,
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
    fn reserve(self: &Arc<Hub>) -> Option<Slot> {
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
    fn register(
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

    fn unregister(&self, id: u64) {
        self.clients.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
    }
}

/// One admitted client's place in the hub.
struct Slot(Arc<Hub>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.slots.fetch_sub(1, Ordering::AcqRel);
    }
}

/// `gpu_stats` messages for the current snapshot: one per GPU, or the mock
/// object in mock mode; none before the first poll.
fn gpu_messages(gpu: &GpuState) -> Vec<Outgoing> {
    let snap = gpu.snapshot();
    let Some(at) = snap.recorded_at else { return Vec::new() };
    let fps = snap.inference_fps;
    if !snap.available {
        let mock = GpuSample {
            inference_fps: fps,
            ..GpuSample::mock(at)
        };
        return vec![Outgoing::new(EventType::GpuStats, mock)];
    }
    snap.readings
        .iter()
        .map(|r| {
            let sample = GpuSample {
                inference_fps: fps,
                ..GpuSample::from_reading(r, at)
            };
            Outgoing::new(EventType::GpuStats, sample)
        })
        .collect()
}

fn service_message(service: &str, status: &str, message: &str) -> Outgoing {
    Outgoing::new(
        EventType::ServiceStatus,
        json!({ "service": service, "status": status, "message": message }),
    )
}

fn alert_message(severity: Severity, condition: &str, message: &str) -> Outgoing {
    Outgoing::new(
        EventType::Alert,
        json!({ "severity": severity, "condition": condition, "message": message }),
    )
}

fn snapshot(gpu: &GpuState, health: &HealthState) -> Vec<Outgoing> {
    let mut out = gpu_messages(gpu);
    out.extend(
        health
            .services()
            .iter()
            .map(|s| service_message(&s.name, s.status.as_str(), &s.message)),
    );
    out
}

/// Turns internal events into messages until `shutdown`.
pub async fn run_hub(
    hub: Arc<Hub>,
    mut events: broadcast::Receiver<Event>,
    gpu: Arc<GpuState>,
    shutdown: CancellationToken,
) {
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => break,
            e = events.recv() => e,
        };
        let event = match event {
            Ok(e) => e,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(
                    skipped = n,
                    "WebSocket hub fell behind the event bus; events were skipped."
                );
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => break,
        };
        let messages = match &event {
            Event::GpuPolled => gpu_messages(&gpu),
            Event::ServiceStatus {
                service,
                status,
                message,
            } => vec![service_message(service, status.as_str(), message)],
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
        };
        hub.broadcast(&messages);
    }
}

/// `GET /ws/system[?client=browser|api]`.
pub async fn upgrade(
    State(state): State<AppState>,
    q: RawQuery,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, AppError> {
    let map = params(q, &["client"])?;
    let client_type = match map.get("client").map(String::as_str) {
        Some("browser") => ClientType::Browser,
        Some("api") => ClientType::Api,
        Some(other) => {
            return Err(AppError::bad_request(
                format!("client must be browser or api, got {other:?}"),
                json!({ "parameter": "client", "allowed": ["browser", "api"] }),
            ))
        }
        None => ClientType::from_user_agent(headers.get("user-agent").and_then(|v| v.to_str().ok())),
    };
    let ws = ws.map_err(|e| {
        AppError::bad_request(
            format!("expected a WebSocket upgrade request: {e}"),
            json!({ "hint": "connect with a WebSocket client, e.g. websocat ws://HOST:PORT/ws/system" }),
        )
    })?;
    let hub = state.hub.clone();
    let Some(slot) = hub.reserve() else {
        return Err(AppError::status(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "too many WebSocket clients (websocket.max_clients = {})",
                hub.config.max_clients
            ),
            json!({ "max_clients": hub.config.max_clients, "hint": "retry later or raise websocket.max_clients" }),
        )
        .with_code("too_many_clients"));
    };
    // Clients only send pongs and close frames: a small read buffer (the
    // default is 128 KiB per connection) keeps memory per client low.
    Ok(ws
        .read_buffer_size(4 * 1024)
        .max_message_size(64 * 1024)
        .write_buffer_size(16 * 1024)
        .on_upgrade(move |socket| async move {
            serve(state, socket, client_type).await;
            drop(slot);
        }))
}

/// Writes `msgs` with one flush, unless `cancel` fires first; counts what
/// was written. `Err(None)` means cancelled.
async fn send_all(
    socket: &mut WebSocket,
    cancel: &CancellationToken,
    msgs: &mut Vec<Outgoing>,
    sent: &[IntCounter; 3],
) -> Result<(), Option<axum::Error>> {
    let write = async {
        for m in msgs.iter() {
            socket.feed(Message::Text(m.text.clone())).await?;
        }
        socket.flush().await
    };
    tokio::select! {
        _ = cancel.cancelled() => return Err(None),
        r = write => r.map_err(Some)?,
    }
    for m in msgs.drain(..) {
        sent[m.kind as usize].inc();
    }
    Ok(())
}

/// Sends a control frame unless `cancel` fires first.
async fn send(socket: &mut WebSocket, cancel: &CancellationToken, msg: Message) -> Result<(), Option<axum::Error>> {
    tokio::select! {
        _ = cancel.cancelled() => Err(None),
        r = socket.send(msg) => r.map_err(Some),
    }
}

/// One client's connection, from snapshot to goodbye.
async fn serve(state: AppState, mut socket: WebSocket, client_type: ClientType) {
    let hub = state.hub.clone();
    let (id, mut rx, cancel, snap) = hub.register(|| snapshot(&state.gpu, &state.health));
    let gauge = hub.metrics.gauge(client_type);
    gauge.inc();
    let started = Instant::now();
    let ping_every = hub.config.ping_interval;
    let mut ping = tokio::time::interval_at(started + ping_every, ping_every);
    let mut last_heard = Instant::now();

    let sent = &hub.metrics.sent;
    let mut batch = snap;
    let ended: Option<WsError> = 'conn: {
        match send_all(&mut socket, &cancel, &mut batch, sent).await {
            Ok(()) => {}
            Err(None) => break 'conn None,
            Err(Some(_)) => break 'conn Some(WsError::SendFailed),
        }
        loop {
            tokio::select! {
                // The hub counted the slow consumer when it cut it off.
                _ = cancel.cancelled() => break None,
                m = rx.recv() => {
                    let Some(m) = m else { break None };
                    // Take whatever else is queued and write it all at once.
                    batch.push(m);
                    while batch.len() < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(m) => batch.push(m),
                            Err(_) => break,
                        }
                    }
                    match send_all(&mut socket, &cancel, &mut batch, sent).await {
                        Ok(()) => {}
                        Err(None) => break None,
                        Err(Some(_)) => break Some(WsError::SendFailed),
                    }
                }
                incoming = socket.recv() => match incoming {
                    None | Some(Ok(Message::Close(_))) => break None,
                    // Pongs, and anything else the client says, prove it is alive.
                    Some(Ok(_)) => last_heard = Instant::now(),
                    Some(Err(_)) => break Some(WsError::Protocol),
                },
                _ = ping.tick() => {
                    if last_heard.elapsed() > ping_every * 2 {
                        break Some(WsError::PingTimeout);
                    }
                    match send(&mut socket, &cancel, Message::Ping(Default::default())).await {
                        Ok(()) => {}
                        Err(None) => break None,
                        Err(Some(_)) => break Some(WsError::SendFailed),
                    }
                }
            }
        }
    };
    hub.unregister(id);
    if let Some(e) = ended {
        hub.metrics.error(e);
    }
    if cancel.is_cancelled() {
        tracing::info!(
            client_type = client_type.as_str(),
            "WebSocket client disconnected: it fell too far behind (slow consumer)."
        );
    }
    gauge.dec();
    hub.metrics.duration.observe(started.elapsed().as_secs_f64());
}
