//! `/ws/system`: the live channel's HTTP side. [`upgrade`] checks the
//! request and takes a slot in the [`Hub`]; [`serve`] sends the snapshot (the
//! current GPU stats and every service's status), then whatever the hub
//! queues for the client: `gpu_stats` on each poll, `service_status` on each
//! change and `alert` for built-in alerts. Each connection pings every
//! `websocket.ping_interval` and is dropped when the peer has been silent
//! for two intervals.

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use futures_util::SinkExt;
use prometheus::IntCounter;
use serde_json::json;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::query::Query;
use super::{AppError, AppState};
use crate::hub::{snapshot, ClientType, Hub, Outgoing, WsError, MAX_BATCH};

/// What kind of client connects.
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct WsParams {
    /// browser (default) or api
    #[param(nullable = false, explode = false, inline)]
    client: Option<Client>,
}

#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Client {
    Browser,
    Api,
}

/// `GET /ws/system[?client=browser|api]`.
#[utoipa::path(get, path = "/ws/system", tag = "system",
    params(WsParams),
    responses(
        (status = 101, description = "WebSocket: a snapshot, then live events"),
        (status = 400, description = "Not a WebSocket upgrade, or a bad client parameter", body = super::ErrorBody),
        (status = 401, description = "Basic auth required (--web.config.file)", body = super::ErrorBody),
        (status = 503, description = "Too many clients (websocket.max_clients)", body = super::ErrorBody)
    ))]
pub async fn upgrade(
    State(state): State<AppState>,
    Query(p): Query<WsParams>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, AppError> {
    let client_type = match p.client {
        Some(Client::Browser) => ClientType::Browser,
        Some(Client::Api) => ClientType::Api,
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

/// Sends the snapshot, then forwards the hub's messages and pings until the
/// client leaves, fails, goes silent or is cut off. Returns why it ended
/// when that is an error.
async fn pump(
    hub: &Hub,
    socket: &mut WebSocket,
    cancel: &CancellationToken,
    rx: &mut mpsc::Receiver<Outgoing>,
    snap: Vec<Outgoing>,
) -> Option<WsError> {
    let ping_every = hub.config.ping_interval;
    let mut ping = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
    let mut last_heard = Instant::now();
    let sent = &hub.metrics.sent;
    let mut batch = snap;
    match send_all(socket, cancel, &mut batch, sent).await {
        Ok(()) => {}
        Err(None) => return None,
        Err(Some(_)) => return Some(WsError::SendFailed),
    }
    loop {
        tokio::select! {
            // The hub counted the slow consumer when it cut it off.
            _ = cancel.cancelled() => return None,
            m = rx.recv() => {
                let m = m?;
                // Take whatever else is queued and write it all at once.
                batch.push(m);
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(m) => batch.push(m),
                        Err(_) => break,
                    }
                }
                match send_all(socket, cancel, &mut batch, sent).await {
                    Ok(()) => {}
                    Err(None) => return None,
                    Err(Some(_)) => return Some(WsError::SendFailed),
                }
            }
            incoming = socket.recv() => match incoming {
                None | Some(Ok(Message::Close(_))) => return None,
                // Pongs, and anything else the client says, prove it is alive.
                Some(Ok(_)) => last_heard = Instant::now(),
                Some(Err(_)) => return Some(WsError::Protocol),
            },
            _ = ping.tick() => {
                if last_heard.elapsed() > ping_every * 2 {
                    return Some(WsError::PingTimeout);
                }
                match send(socket, cancel, Message::Ping(Default::default())).await {
                    Ok(()) => {}
                    Err(None) => return None,
                    Err(Some(_)) => return Some(WsError::SendFailed),
                }
            }
        }
    }
}

/// One client's connection, from snapshot to goodbye.
async fn serve(state: AppState, mut socket: WebSocket, client_type: ClientType) {
    let hub = state.hub.clone();
    let (id, mut rx, cancel, snap) = hub.register(|| snapshot(&state.gpu, &state.health, state.pipeline.fps()));
    let gauge = hub.metrics.gauge(client_type);
    gauge.inc();
    let started = Instant::now();
    let ended = pump(&hub, &mut socket, &cancel, &mut rx, snap).await;
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
