//! The HTTP server loop: hyper's HTTP/1 connection driven by hand, so that
//! hostile or broken clients cannot stall the daemon.
//!
//! - **Header timeout.** hyper's timer closes a connection that has not sent
//!   a whole request head within `web.header_read_timeout`. hyper arms that
//!   timer whenever it waits for a head, so the same limit closes kept-alive
//!   connections that sit idle between requests, and slowloris clients.
//! - **Connection cap.** At most `web.max_connections` connections are open
//!   (fewer when `RLIMIT_NOFILE` leaves less room). A connection past the
//!   cap closes the oldest *idle* one (no request in flight), so a flood of
//!   silent connections cannot lock out `/metrics`; when every connection is
//!   busy, the new one waits up to a second for a slot and is then refused.
//! - **Shutdown deadline.** On shutdown every connection is asked to finish
//!   its request and close; after `web.shutdown_timeout` the rest are
//!   dropped, so the caller always gets to flush history.
//!
//! - **TLS.** With `--web.config.file` naming a certificate, each accepted
//!   connection does its rustls handshake first, within the header timeout;
//!   the config in force when the connection arrives is used, so a changed
//!   file applies to new connections without a restart.
//!
//! Upgraded connections (WebSockets) leave this loop once upgraded; the hub
//! caps and closes those.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::{IntCounterVec, IntGauge};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::config::WebConfig;
use crate::metrics::{family, Metrics};
use crate::webconf::WebRuntime;

/// File descriptors kept free for everything that is not an HTTP
/// connection (Redis, the store, health checks, WebSockets, logs).
const FD_RESERVE: u64 = 64;

/// hyper's own buffer for a request head. The API's limits on the URI and
/// the headers (see `api::limits`) are well below it, so oversized requests
/// get the API's JSON 414/431; only a head past this gets hyper's bare 431.
pub const MAX_HEAD_BYTES: usize = 128 * 1024;

/// hyper's own cap on header lines, likewise above the API's.
pub const MAX_HEADER_LINES: usize = 1000;

/// The server's limits, from `web.*`.
#[derive(Debug, Clone)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub max_connections: usize,
    pub shutdown_timeout: Duration,
}

impl Limits {
    /// `web.*` with the connection cap lowered to what the open-file limit
    /// allows (logged, never silent).
    pub fn from_config(web: &WebConfig, nofile: Option<u64>) -> Limits {
        let mut max_connections = web.max_connections;
        if let Some(n) = nofile {
            let room = n.saturating_sub(FD_RESERVE).max(1) as usize;
            if room < max_connections {
                tracing::warn!(
                    web.max_connections = max_connections,
                    rlimit_nofile = n,
                    cap = room,
                    "The open-file limit leaves room for fewer connections than web.max_connections; capping at what it allows."
                );
                max_connections = room;
            }
        }
        Limits {
            header_read_timeout: web.header_read_timeout,
            max_connections,
            shutdown_timeout: web.shutdown_timeout,
        }
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and returns the
/// result (the soft limit in force), or `None` where it cannot be read.
pub fn raise_nofile_limit() -> Option<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let before = getrlimit(Resource::Nofile);
    let (soft, hard) = (before.current, before.maximum);
    tracing::debug!(soft = ?soft, hard = ?hard, "RLIMIT_NOFILE at startup.");
    if soft.is_some() && soft != hard {
        let raised = rustix::process::Rlimit {
            current: hard,
            maximum: hard,
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            tracing::debug!(error = %e, "Could not raise RLIMIT_NOFILE.");
        }
    }
    let after = getrlimit(Resource::Nofile);
    tracing::debug!(soft = ?after.current, hard = ?after.maximum, "RLIMIT_NOFILE in force.");
    after.current
}

/// The server's own metrics.
#[derive(Clone)]
pub struct ServerMetrics {
    open: IntGauge,
    closed: IntCounterVec,
}

impl ServerMetrics {
    pub fn new(metrics: &Metrics) -> ServerMetrics {
        let open = family::<IntGauge>(
            "http_open_connections",
            "HTTP connections open now (WebSockets leave this count once upgraded).",
            &[],
        );
        let closed = family::<IntCounterVec>("http_connections_closed_by_server_total", "Connections the server closed itself: idle_evicted (oldest idle one, to make room past web.max_connections), refused (every connection busy), header_timeout (no whole request head within web.header_read_timeout, idle keep-alive included), tls_handshake (TLS handshake failed or timed out), shutdown_deadline (still open at web.shutdown_timeout).", &["reason"]);
        for r in [
            "idle_evicted",
            "refused",
            "header_timeout",
            "tls_handshake",
            "shutdown_deadline",
        ] {
            closed.with_label_values(&[r]);
        }
        metrics.add(&open);
        metrics.add(&closed);
        ServerMetrics { open, closed }
    }

    fn closed(&self, reason: &str, n: u64) {
        self.closed.with_label_values(&[reason]).inc_by(n);
    }
}

/// One open connection, as the accept loop sees it.
struct Conn {
    /// Requests in flight on it.
    busy: Arc<AtomicUsize>,
    /// Asks it to finish and close.
    close: CancellationToken,
}

/// The open connections, oldest first.
#[derive(Default)]
struct Conns {
    open: Mutex<BTreeMap<u64, Conn>>,
    freed: Notify,
}

impl Conns {
    fn len(&self) -> usize {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Asks the oldest connection with no request in flight to close;
    /// false when every connection is busy.
    fn evict_oldest_idle(&self) -> bool {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let idle = open
            .values()
            .find(|c| c.busy.load(Ordering::Acquire) == 0 && !c.close.is_cancelled());
        match idle {
            Some(c) => {
                c.close.cancel();
                true
            }
            None => false,
        }
    }

    /// True while a connection asked to close has not closed yet.
    fn closing(&self) -> bool {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.values().any(|c| c.close.is_cancelled())
    }

    fn remove(&self, id: u64) {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
        self.freed.notify_waiters();
    }
}

/// Serves `app` on `listener` until `shutdown` completes, then closes the
/// open connections within `limits.shutdown_timeout`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    metrics: ServerMetrics,
    web: Arc<WebRuntime>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let conns = Arc::new(Conns::default());
    let stop = CancellationToken::new();
    let mut tasks = JoinSet::new();
    let next_id = AtomicU64::new(0);
    tokio::pin!(shutdown);
    loop {
        while tasks.try_join_next().is_some() {}
        let Some((stream, peer)) = next_connection(&listener, &mut shutdown).await else {
            break;
        };
        if conns.len() >= limits.max_connections && !make_room(&conns, &metrics, limits.max_connections).await {
            metrics.closed("refused", 1);
            tracing::debug!(peer = %peer, "Connection refused: every connection is busy.");
            drop(stream);
            continue;
        }
        let id = next_id.fetch_add(1, Ordering::Relaxed);
        let conn = Conn {
            busy: Arc::new(AtomicUsize::new(0)),
            close: CancellationToken::new(),
        };
        let (busy, close) = (conn.busy.clone(), conn.close.clone());
        conns.open.lock().unwrap_or_else(|e| e.into_inner()).insert(id, conn);
        metrics.open.inc();
        let (app, conns, stop, metrics, limits) = (
            app.clone(),
            conns.clone(),
            stop.clone(),
            metrics.clone(),
            limits.clone(),
        );
        let tls = web.current().tls.clone();
        tasks.spawn(async move {
            let conn = Connection {
                peer,
                app,
                busy,
                close,
                stop,
            };
            handshake_and_serve(conn, stream, tls, &limits, &metrics).await;
            conns.remove(id);
            metrics.open.dec();
        });
    }

    drop(listener);
    stop.cancel();
    drain(tasks, limits.shutdown_timeout, &metrics).await;
    Ok(())
}

/// The next connection, or `None` once `shutdown` completes. An accept
/// error (EMFILE and friends) backs off instead of spinning; the
/// connections already open keep being served.
async fn next_connection<F: Future<Output = ()>>(
    listener: &TcpListener,
    shutdown: &mut std::pin::Pin<&mut F>,
) -> Option<(tokio::net::TcpStream, std::net::SocketAddr)> {
    loop {
        tokio::select! {
            _ = shutdown.as_mut() => return None,
            r = listener.accept() => match r {
                Ok(accepted) => return Some(accepted),
                Err(e) => {
                    tracing::warn!(error = %e, "Accept failed.");
                    tokio::select! {
                        _ = shutdown.as_mut() => return None,
                        _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                    }
                }
            },
        }
    }
}

/// Serves one accepted connection: plain, or after a TLS handshake that
/// must finish within the header timeout.
async fn handshake_and_serve(
    conn: Connection,
    stream: tokio::net::TcpStream,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: &Limits,
    metrics: &ServerMetrics,
) {
    let _ = stream.set_nodelay(true);
    let peer = conn.peer;
    match tls {
        None => conn.serve(stream, limits, metrics).await,
        Some(config) => {
            let accept = tokio_rustls::TlsAcceptor::from(config).accept(stream);
            match tokio::time::timeout(limits.header_read_timeout, accept).await {
                Ok(Ok(tls_stream)) => conn.serve(tls_stream, limits, metrics).await,
                Ok(Err(e)) => {
                    metrics.closed("tls_handshake", 1);
                    tracing::debug!(peer = %peer, error = %e, "TLS handshake failed.");
                }
                Err(_) => {
                    metrics.closed("tls_handshake", 1);
                    tracing::debug!(peer = %peer, "TLS handshake timed out.");
                }
            }
        }
    }
}

/// Waits up to `deadline` for the connections to finish, then drops the rest.
async fn drain(mut tasks: JoinSet<()>, deadline: Duration, metrics: &ServerMetrics) {
    let all = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(deadline, all).await.is_err() {
        let left = tasks.len();
        tracing::warn!(connections = left, timeout = ?deadline, "Shutdown deadline reached: dropping the connections still open.");
        metrics.closed("shutdown_deadline", left as u64);
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
        metrics.open.sub(left as i64);
    }
}

/// Past the cap: asks the oldest idle connection to close (one at a time)
/// and waits until the count is really below the cap, so the descriptors in
/// use never pass it; when every connection is busy it waits for one to
/// finish. Gives up after a second: false when no room was made.
async fn make_room(conns: &Conns, metrics: &ServerMetrics, cap: usize) -> bool {
    let room = async {
        loop {
            let freed = conns.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if conns.len() < cap {
                return;
            }
            if !conns.closing() && conns.evict_oldest_idle() {
                metrics.closed("idle_evicted", 1);
            }
            freed.await;
        }
    };
    tokio::time::timeout(Duration::from_secs(1), room).await.is_ok()
}

/// One accepted connection and what serving it needs.
struct Connection {
    peer: SocketAddr,
    app: Router,
    busy: Arc<AtomicUsize>,
    close: CancellationToken,
    stop: CancellationToken,
}

impl Connection {
    /// Drives the connection (plain or TLS) until it closes, is evicted,
    /// or the server stops.
    async fn serve<S>(self, stream: S, limits: &Limits, metrics: &ServerMetrics)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let Connection {
            peer,
            app,
            busy,
            close,
            stop,
        } = self;
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            // The peer address feeds the trusted-network check of writes.
            req.extensions_mut().insert(ConnectInfo(peer));
            let guard = BusyGuard::new(busy.clone());
            let app = app.clone();
            async move {
                let resp = app.oneshot(req.map(axum::body::Body::new)).await;
                drop(guard);
                resp
            }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .keep_alive(true)
            .max_buf_size(MAX_HEAD_BYTES)
            .max_headers(MAX_HEADER_LINES)
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        tokio::pin!(conn);
        let result = tokio::select! {
            r = conn.as_mut() => r,
            _ = close.cancelled() => {
                conn.as_mut().graceful_shutdown();
                conn.as_mut().await
            }
            _ = stop.cancelled() => {
                conn.as_mut().graceful_shutdown();
                conn.as_mut().await
            }
        };
        if let Err(e) = result {
            if e.is_timeout() {
                metrics.closed("header_timeout", 1);
            }
            tracing::debug!(peer = %peer, error = %e, "Connection ended with an error.");
        }
    }
}

/// Counts a request in flight on its connection while it lives.
struct BusyGuard(Arc<AtomicUsize>);

impl BusyGuard {
    fn new(busy: Arc<AtomicUsize>) -> BusyGuard {
        busy.fetch_add(1, Ordering::AcqRel);
        BusyGuard(busy)
    }
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_idle_connection_is_evicted_first() {
        let conns = Conns::default();
        let mk = |busy: usize| Conn {
            busy: Arc::new(AtomicUsize::new(busy)),
            close: CancellationToken::new(),
        };
        {
            let mut open = conns.open.lock().unwrap();
            open.insert(1, mk(1));
            open.insert(2, mk(0));
            open.insert(3, mk(0));
        }
        assert!(conns.evict_oldest_idle());
        let open = conns.open.lock().unwrap();
        assert!(!open[&1].close.is_cancelled(), "busy connections are never evicted");
        assert!(open[&2].close.is_cancelled());
        assert!(!open[&3].close.is_cancelled());
        drop(open);
        assert!(conns.evict_oldest_idle(), "3 is next");
        assert!(!conns.evict_oldest_idle(), "only the busy one is left");
    }

    #[test]
    fn the_cap_leaves_room_for_other_descriptors() {
        let web = WebConfig::default();
        assert_eq!(Limits::from_config(&web, Some(256)).max_connections, 192);
        assert_eq!(Limits::from_config(&web, Some(1 << 20)).max_connections, 1024);
        assert_eq!(Limits::from_config(&web, None).max_connections, 1024);
    }
}
