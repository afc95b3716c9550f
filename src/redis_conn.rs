//! One lazily (re)connected Redis connection, shared by the queue collector,
//! the DLQ endpoints and the stream reader.
//!
//! The daemon must start and keep serving while Redis is down, so nothing
//! connects at startup: the first command connects, and a connection error
//! drops the cached connection so that the next command reconnects.

use std::sync::Mutex;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisError, RedisResult};

/// A Redis client with a cached multiplexed connection.
pub struct RedisConn {
    client: redis::Client,
    config: AsyncConnectionConfig,
    cached: Mutex<Option<MultiplexedConnection>>,
}

impl RedisConn {
    /// `response_timeout` bounds every command (a blocking read needs more
    /// than its BLOCK time).
    pub fn new(url: &str, response_timeout: Duration) -> RedisResult<RedisConn> {
        Ok(RedisConn {
            client: redis::Client::open(url)?,
            config: AsyncConnectionConfig::new()
                .set_connection_timeout(Duration::from_secs(2))
                .set_response_timeout(response_timeout),
            cached: Mutex::new(None),
        })
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
