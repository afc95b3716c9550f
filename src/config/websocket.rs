//! `websocket`: the `/ws/system` live channel.

use std::time::Duration;

use serde::Deserialize;

use super::{de_seconds, ConfigError, Range};

/// `/ws/system` settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebSocketConfig {
    /// Time between keepalive pings; a peer silent for two intervals is
    /// dropped, 0.05–3600 s.
    #[serde(deserialize_with = "de_seconds")]
    pub ping_interval: Duration,
    /// Messages queued per client before it counts as a slow consumer and is
    /// disconnected, 16–65536.
    pub client_queue: usize,
    /// Most clients connected at once; more get HTTP 503, 1–100000.
    pub max_clients: usize,
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        WebSocketConfig {
            ping_interval: Duration::from_secs(30),
            client_queue: 256,
            max_clients: 10_000,
        }
    }
}

pub const PING_INTERVAL: Range = Range::new("websocket.ping_interval", 0.05, 3600.0, "seconds");
pub const CLIENT_QUEUE: Range = Range::new("websocket.client_queue", 16.0, 65536.0, "messages");
pub const MAX_CLIENTS: Range = Range::new("websocket.max_clients", 1.0, 100_000.0, "clients");

impl WebSocketConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        PING_INTERVAL.check(self.ping_interval.as_secs_f64())?;
        CLIENT_QUEUE.check(self.client_queue as f64)?;
        MAX_CLIENTS.check(self.max_clients as f64)
    }
}
