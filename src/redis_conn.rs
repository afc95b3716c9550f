//! One lazily (re)connected Redis connection, shared by the queue collector,
//! the DLQ endpoints and the stream reader.
//!
//! The daemon must start and keep serving while Redis is down, so nothing
//! connects at startup: the first command connects, and a connection error
//! drops the cached connection so that the next command reconnects.

use std::sync::Mutex;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, IntoConnectionInfo, RedisError, RedisResult};

use crate::config::ServiceTls;

/// A Redis client with a cached multiplexed connection.
pub struct RedisConn {
    client: redis::Client,
    config: AsyncConnectionConfig,
    cached: Mutex<Option<MultiplexedConnection>>,
}

/// A client for `url`: TLS settings for a `rediss://` URL (a CA to trust,
/// a client certificate, or no verification at all), and a password that
/// wins over the URL's (from a `password_file`).
pub fn client(url: &str, tls: Option<&ServiceTls>, password: Option<String>) -> RedisResult<redis::Client> {
    let mut info = url.into_connection_info()?;
    if password.is_some() {
        info.redis.password = password;
    }
    let Some(tls) = tls else {
        return redis::Client::open(info);
    };
    if tls.insecure_skip_verify {
        if let redis::ConnectionAddr::TcpTls { insecure, .. } = &mut info.addr {
            *insecure = true;
        }
    }
    let read = |p: &std::path::PathBuf| {
        std::fs::read(p).map_err(|e| {
            RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "TLS file",
                format!("{}: {e}", p.display()),
            ))
        })
    };
    let client_tls = match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
            client_cert: read(cert)?,
            client_key: read(key)?,
        }),
        _ => None,
    };
    let root_cert = tls.ca_file.as_ref().map(read).transpose()?;
    redis::Client::build_with_tls(info, redis::TlsCertificates { client_tls, root_cert })
}

impl RedisConn {
    /// `response_timeout` bounds every command (a blocking read needs more
    /// than its BLOCK time).
    pub fn new(client: redis::Client, response_timeout: Duration) -> RedisConn {
        RedisConn {
            client,
            config: AsyncConnectionConfig::new()
                .set_connection_timeout(Duration::from_secs(2))
                .set_response_timeout(response_timeout),
            cached: Mutex::new(None),
        }
    }

    /// The cached connection, or a new one.
    pub async fn get(&self) -> RedisResult<MultiplexedConnection> {
        if let Some(c) = self.cached.lock().unwrap_or_else(|e| e.into_inner()).clone() {
            return Ok(c);
        }
        let c = self
            .client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await?;
        *self.cached.lock().unwrap_or_else(|e| e.into_inner()) = Some(c.clone());
        Ok(c)
    }

    /// Passes `r` through, forgetting the connection when the error means
    /// it is gone.
    pub fn check<T>(&self, r: RedisResult<T>) -> RedisResult<T> {
        if let Err(e) = &r {
            if is_connection_error(e) {
                *self.cached.lock().unwrap_or_else(|e| e.into_inner()) = None;
            }
        }
        r
    }
}

/// True when `e` means the connection (or Redis) is gone, rather than a
/// command error such as WRONGTYPE.
pub fn is_connection_error(e: &RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout()
}
