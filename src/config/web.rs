//! `web`: the HTTP server: listen address, time limits, connection cap.

use std::time::Duration;

use serde::Deserialize;

use super::{de_seconds, invalid, ConfigError, Range};
use super::{reasons, Reload};

/// HTTP server settings.
#[derive(Reload, Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebConfig {
    /// Address to listen on; `--web.listen-address` overrides it.
    #[reload(kept = reasons::LISTENER)]
    pub listen_address: String,
    /// Time a client has to send a request's headers, 0.1–300 s. It also
    /// bounds how long a kept-alive connection may sit idle between requests.
    #[serde(deserialize_with = "de_seconds")]
    #[reload(kept = reasons::SERVER)]
    pub header_read_timeout: Duration,
    /// Time a client has to send a request body, 0.1–3600 s.
    #[serde(deserialize_with = "de_seconds")]
    #[reload(kept = reasons::SERVER)]
    pub body_read_timeout: Duration,
    /// Time one non-streaming API request may take in all, 0.1–3600 s.
    #[serde(deserialize_with = "de_seconds")]
    #[reload(kept = reasons::SERVER)]
    pub request_timeout: Duration,
    /// Open connections at once, 1–1,000,000; past it the oldest idle one is closed.
    #[reload(kept = reasons::SERVER)]
    pub max_connections: usize,
    /// How long graceful shutdown waits for open requests, 0–3600 s.
    #[serde(deserialize_with = "de_seconds")]
    #[reload(kept = reasons::SERVER)]
    pub shutdown_timeout: Duration,
    /// An exporter-toolkit web config file (TLS, client certificates, basic
    /// auth, headers); `--web.config.file` overrides it. Unset: plain HTTP.
    #[reload(live)]
    pub config_file: Option<std::path::PathBuf>,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            listen_address: "0.0.0.0:8790".to_string(),
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(60),
            max_connections: 1024,
            shutdown_timeout: Duration::from_secs(10),
            config_file: None,
        }
    }
}

pub const HEADER_READ_TIMEOUT: Range = Range::new("web.header_read_timeout", 0.1, 300.0, "seconds");
pub const BODY_READ_TIMEOUT: Range = Range::new("web.body_read_timeout", 0.1, 3600.0, "seconds");
pub const REQUEST_TIMEOUT: Range = Range::new("web.request_timeout", 0.1, 3600.0, "seconds");
pub const MAX_CONNECTIONS: Range = Range::new("web.max_connections", 1.0, 1_000_000.0, "connections");
pub const SHUTDOWN_TIMEOUT: Range = Range::new("web.shutdown_timeout", 0.0, 3600.0, "seconds");

impl WebConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        HEADER_READ_TIMEOUT.check(self.header_read_timeout.as_secs_f64())?;
        BODY_READ_TIMEOUT.check(self.body_read_timeout.as_secs_f64())?;
        REQUEST_TIMEOUT.check(self.request_timeout.as_secs_f64())?;
        MAX_CONNECTIONS.check(self.max_connections as f64)?;
        SHUTDOWN_TIMEOUT.check(self.shutdown_timeout.as_secs_f64())?;
        if self.listen_address.parse::<std::net::SocketAddr>().is_err() {
            return Err(invalid(
                "web.listen_address",
                &self.listen_address,
                "not a socket address",
                "HOST:PORT, e.g. 0.0.0.0:8790",
            ));
        }
        Ok(())
    }
}
