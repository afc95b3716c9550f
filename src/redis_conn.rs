//! One lazily (re)connected Redis connection, shared by the queue collector,
//! the DLQ endpoints and the stream reader.
//!
//! The daemon must start and keep serving while Redis is down, so nothing
//! connects at startup: the first command connects, and a connection error
//! drops the cached connection so that the next command reconnects.
//!
//! A [`Target`] is one server, or the master that Redis Sentinel names for
//! a `redis+sentinel://` URL: each (re)connect asks the Sentinels again, so
//! after a failover the next command reaches the new master. A `READONLY`
//! answer (the old master came back as a replica) drops the connection too.

use std::sync::Mutex;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, IntoConnectionInfo, RedisError, RedisResult};

use crate::client_tls::ServiceTls;

/// Where the Redis is.
#[derive(Clone)]
pub enum Target {
    Direct(redis::Client),
    /// The master Sentinel names; asked at every (re)connect.
    Sentinel(std::sync::Arc<tokio::sync::Mutex<redis::sentinel::SentinelClient>>),
}

impl Target {
    /// A client of the server to talk to now.
    pub async fn client(&self) -> RedisResult<redis::Client> {
        match self {
            Target::Direct(c) => Ok(c.clone()),
            Target::Sentinel(s) => s.lock().await.async_get_client().await,
        }
    }

    pub fn is_sentinel(&self) -> bool {
        matches!(self, Target::Sentinel(_))
    }
}

/// A `redis+sentinel://[USER:PASSWORD@]HOST:PORT[,HOST:PORT…]/MASTER[/DB]`
/// URL (`rediss+sentinel://` for TLS to the master), as redis-py and
/// Spring spell it; the user and password are the master's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentinelUrl {
    pub tls: bool,
    pub sentinels: Vec<(String, u16)>,
    pub master: String,
    pub db: i64,
    pub username: Option<String>,
    pub password: Option<String>,
}

/// Whether `url` names Sentinels (a pure check of its scheme, which the
/// config uses too).
pub fn is_sentinel_url(url: &str) -> bool {
    url.starts_with("redis+sentinel://") || url.starts_with("rediss+sentinel://")
}

/// Parses a Sentinel URL; the error says what is missing.
pub fn parse_sentinel_url(url: &str) -> Result<SentinelUrl, String> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("redis+sentinel://") {
        (false, r)
    } else if let Some(r) = url.strip_prefix("rediss+sentinel://") {
        (true, r)
    } else {
        return Err("not a redis+sentinel:// URL".into());
    };
    let (auth, rest) = match rest.rsplit_once('@') {
        Some((a, r)) => (Some(a), r),
        None => (None, rest),
    };
    let (hosts, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut sentinels = Vec::new();
    for h in hosts.split(',').filter(|h| !h.is_empty()) {
        let (host, port) = match h.rsplit_once(':') {
            Some((host, port)) => (
                host,
                port.parse::<u16>().map_err(|_| format!("{h:?} has no valid port"))?,
            ),
            None => (h, 26379),
        };
        sentinels.push((host.to_string(), port));
    }
    if sentinels.is_empty() {
        return Err("no Sentinel HOST:PORT".into());
    }
    let mut parts = path.split('/').filter(|p| !p.is_empty());
    let master = parts
        .next()
        .ok_or("no master name: add /MASTER after the Sentinels, e.g. /mymaster/0")?
        .to_string();
    let db = match parts.next() {
        Some(d) => d.parse().map_err(|_| format!("{d:?} is not a database number"))?,
        None => 0,
    };
    let decode = |s: &str| {
        form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    let (username, password) = match auth {
        None => (None, None),
        Some(a) => match a.split_once(':') {
            Some((u, p)) => ((!u.is_empty()).then(|| decode(u)), Some(decode(p))),
            None => (Some(decode(a)), None),
        },
    };
    Ok(SentinelUrl {
        tls,
        sentinels,
        master,
        db,
        username,
        password,
    })
}

/// A Sentinel target for a parsed URL.
fn sentinel_target(u: SentinelUrl, tls: Option<&ServiceTls>, password: Option<String>) -> RedisResult<Target> {
    use redis::sentinel::{SentinelClientBuilder, SentinelServerType};
    let addrs = u
        .sentinels
        .iter()
        .map(|(h, p)| redis::ConnectionAddr::Tcp(h.clone(), *p));
    let mut b =
        SentinelClientBuilder::new(addrs, u.master.clone(), SentinelServerType::Master)?.set_client_to_redis_db(u.db);
    if let Some(user) = u.username {
        b = b.set_client_to_redis_username(user);
    }
    if let Some(pw) = password.or(u.password) {
        b = b.set_client_to_redis_password(pw);
    }
    if u.tls {
        let insecure = tls.is_some_and(|t| t.insecure_skip_verify);
        b = b.set_client_to_redis_tls_mode(if insecure {
            redis::TlsMode::Insecure
        } else {
            redis::TlsMode::Secure
        });
        if let Some(t) = tls {
            b = b.set_client_to_redis_certificates(certificates(t)?);
        }
    }
    Ok(Target::Sentinel(std::sync::Arc::new(tokio::sync::Mutex::new(
        b.build()?,
    ))))
}

/// A target for `url` (one server, or Sentinel), with `tls` for a TLS URL
/// and a `password` that wins over the URL's.
pub fn target(url: &str, tls: Option<&ServiceTls>, password: Option<String>) -> RedisResult<Target> {
    if is_sentinel_url(url) {
        let u = parse_sentinel_url(url)
            .map_err(|e| RedisError::from((redis::ErrorKind::InvalidClientConfig, "Sentinel URL", e)))?;
        return sentinel_target(u, tls, password);
    }
    client(url, tls, password).map(Target::Direct)
}

/// The TLS files of `tls`, read.
fn certificates(tls: &ServiceTls) -> RedisResult<redis::TlsCertificates> {
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
    Ok(redis::TlsCertificates { client_tls, root_cert })
}

/// A Redis target with a cached multiplexed connection.
pub struct RedisConn {
    target: Target,
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
    redis::Client::build_with_tls(info, certificates(tls)?)
}

impl RedisConn {
    /// `response_timeout` bounds every command (a blocking read needs more
    /// than its BLOCK time).
    pub fn new(target: Target, response_timeout: Duration) -> RedisConn {
        RedisConn {
            target,
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
            .target
            .client()
            .await?
            .get_multiplexed_async_connection_with_config(&self.config)
            .await?;
        *self.cached.lock().unwrap_or_else(|e| e.into_inner()) = Some(c.clone());
        Ok(c)
    }

    /// Passes `r` through, forgetting the connection when the error means
    /// it is gone.
    pub fn check<T>(&self, r: RedisResult<T>) -> RedisResult<T> {
        if let Err(e) = &r {
            // READONLY: this server is a replica now (a failover happened).
            if is_connection_error(e) || e.code() == Some("READONLY") {
                *self.cached.lock().unwrap_or_else(|e| e.into_inner()) = None;
            }
        }
        r
    }
}

impl RedisConn {
    /// Whether the target is a Sentinel-named master (moves then ask a
    /// replica to confirm each batch).
    pub fn is_sentinel(&self) -> bool {
        self.target.is_sentinel()
    }
}

/// True when `e` means the connection (or Redis) is gone, rather than a
/// command error such as WRONGTYPE.
pub fn is_connection_error(e: &RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_urls_name_their_sentinels_master_database_and_auth() {
        let u = parse_sentinel_url("redis+sentinel://app:p%40ss@s1:26379,s2:26380,s3/mymaster/2").unwrap();
        assert_eq!(
            u.sentinels,
            [
                ("s1".to_string(), 26379),
                ("s2".to_string(), 26380),
                ("s3".to_string(), 26379)
            ]
        );
        assert_eq!((u.master.as_str(), u.db, u.tls), ("mymaster", 2, false));
        assert_eq!(
            (u.username.as_deref(), u.password.as_deref()),
            (Some("app"), Some("p@ss"))
        );
        let u = parse_sentinel_url("rediss+sentinel://s1:1/m").unwrap();
        assert_eq!((u.tls, u.db, u.username), (true, 0, None));
        let e = parse_sentinel_url("redis+sentinel://s1:26379").unwrap_err();
        assert!(e.contains("no master name"), "{e}");
        assert!(parse_sentinel_url("redis+sentinel://s1:26379/")
            .unwrap_err()
            .contains("master"));
        assert!(parse_sentinel_url("redis+sentinel:///m")
            .unwrap_err()
            .contains("Sentinel"));
        assert!(parse_sentinel_url("redis+sentinel://s1:port/m")
            .unwrap_err()
            .contains("port"));
    }
}
