//! `GET /proxy/{service}/metrics`: one service's own metrics page, fetched
//! through the daemon so that Prometheus reaches every server of a node
//! through the daemon's port, behind its TLS, basic auth and rate limit (as
//! exporter_exporter does for local exporters).
//!
//! The body passes through unchanged and streamed: chunk by chunk as the
//! server sends it, so memory never grows with a page. It is bounded in
//! bytes (`health.proxy_max_bytes`) and time (the service's `timeout`, for
//! the whole page). Past a bound before the answer starts it is a 502 that
//! names the reason; past one once the body has started, the connection is
//! cut, so a scraper sees a broken body, never a truncated 200.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use futures_util::Stream;
use prometheus::{HistogramVec, IntCounterVec};

use crate::config::ServiceConfig;

/// How a proxied scrape ended: the `result` label.
pub const RESULTS: [&str; 6] = [
    "ok",
    "too_large",
    "timeout",
    "unreachable",
    "upstream_error",
    "cancelled",
];

/// Why a scrape could not be answered (before its body started).
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("{service}'s metrics could not be reached: {reason}")]
    Unreachable { service: String, reason: String },
    #[error("{service}'s metrics did not answer within its timeout ({after:?})")]
    Timeout { service: String, after: Duration },
    #[error("{service}'s metrics page is {size} bytes, over health.proxy_max_bytes ({limit})")]
    TooLarge { service: String, size: u64, limit: u64 },
    #[error("{service}'s metrics answered HTTP {status}")]
    BadStatus { service: String, status: u16 },
}

impl ProxyError {
    /// The `result` label and the API's error code.
    pub fn result(&self) -> &'static str {
        match self {
            ProxyError::Unreachable { .. } => "unreachable",
            ProxyError::Timeout { .. } => "timeout",
            ProxyError::TooLarge { .. } => "too_large",
            ProxyError::BadStatus { .. } => "upstream_error",
        }
    }
}

/// The proxy's self-metrics and one HTTP client per service.
pub struct Proxy {
    scrapes: IntCounterVec,
    duration: HistogramVec,
    clients: Mutex<HashMap<String, (ServiceConfig, reqwest::Client)>>,
}

/// What the server answered: headers to pass on, and the bounded body.
pub struct Upstream {
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    pub body: Bounded,
}

impl Proxy {
    pub fn new(metrics: &crate::metrics::Metrics) -> Arc<Proxy> {
        let scrapes = crate::metrics::family::<IntCounterVec>(
            "inferwatch_proxy_scrapes_total",
            "Scrapes of a service's own metrics through /proxy/{service}/metrics, by result: ok, too_large (past health.proxy_max_bytes), timeout (past the service's timeout), unreachable, upstream_error (a non-2xx answer or a broken body), cancelled (the scraper went away).",
            &["service", "result"],
        );
        let duration = crate::metrics::histogram(
            "inferwatch_proxy_scrape_duration_seconds",
            "Time from a proxied scrape's request to the end of its body.",
            &["service"],
            vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0],
        );
        metrics.add(&scrapes);
        metrics.add(&duration);
        Arc::new(Proxy {
            scrapes,
            duration,
            clients: Mutex::new(HashMap::new()),
        })
    }

    /// Drops the series of services that are no longer configured.
    pub fn retain(&self, services: &[ServiceConfig]) {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        let gone: Vec<String> = clients
            .keys()
            .filter(|name| !services.iter().any(|s| &s.name == *name))
            .cloned()
            .collect();
        for name in gone {
            clients.remove(&name);
            for result in RESULTS {
                let _ = self.scrapes.remove_label_values(&[&name, result]);
            }
            let _ = self.duration.remove_label_values(&[&name]);
        }
    }

    /// The client for `svc` (its TLS and headers), built again when its
    /// settings change.
    fn client(&self, svc: &ServiceConfig) -> Result<reqwest::Client, String> {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((config, client)) = clients.get(&svc.name) {
            if config == svc {
                return Ok(client.clone());
            }
        }
        // Connections to the server are kept between scrapes.
        let client = client_builder(svc)?.build().map_err(|e| e.to_string())?;
        clients.insert(svc.name.clone(), (svc.clone(), client.clone()));
        Ok(client)
    }

    /// Asks `svc`'s `metrics_url`, with the scraper's `Accept` and
    /// `Accept-Encoding`; the body is read later, bounded.
    pub async fn fetch(
        self: &Arc<Self>,
        svc: &ServiceConfig,
        max_bytes: u64,
        accept: Option<&str>,
        accept_encoding: Option<&str>,
    ) -> Result<Upstream, ProxyError> {
        let started = Instant::now();
        let service = svc.name.clone();
        // Every result from 0, so that a rate covers the first failure.
        for result in RESULTS {
            self.scrapes.with_label_values(&[&service, result]);
        }
        let result = self.start(svc, max_bytes, accept, accept_encoding, started).await;
        if let Err(e) = &result {
            self.finish(&service, e.result(), started);
        }
        result
    }

    async fn start(
        self: &Arc<Self>,
        svc: &ServiceConfig,
        max_bytes: u64,
        accept: Option<&str>,
        accept_encoding: Option<&str>,
        started: Instant,
    ) -> Result<Upstream, ProxyError> {
        let service = svc.name.clone();
        let unreachable = |reason: String| ProxyError::Unreachable {
            service: service.clone(),
            reason,
        };
        let client = self.client(svc).map_err(unreachable)?;
        let url = svc.metrics_url().unwrap_or_default();
        let mut req = client.get(url);
        if let Some(a) = accept {
            req = req.header(reqwest::header::ACCEPT, a);
        }
        // Passed on as the server sends it: no decoding here, so a
        // compressed page costs no more than its bytes.
        req = req.header(reqwest::header::ACCEPT_ENCODING, accept_encoding.unwrap_or("identity"));
        let deadline = tokio::time::Instant::now() + svc.timeout;
        let resp = match tokio::time::timeout_at(deadline, req.send()).await {
            Err(_) => {
                return Err(ProxyError::Timeout {
                    service,
                    after: svc.timeout,
                })
            }
            Ok(Err(e)) => return Err(unreachable(error_chain(&e))),
            Ok(Ok(r)) => r,
        };
        self.answer(resp, svc, max_bytes, deadline, started)
    }

    /// The server's answer, checked: a 2xx within `max_bytes` if it says
    /// its length; its body from here on bounded.
    fn answer(
        self: &Arc<Self>,
        resp: reqwest::Response,
        svc: &ServiceConfig,
        max_bytes: u64,
        deadline: tokio::time::Instant,
        started: Instant,
    ) -> Result<Upstream, ProxyError> {
        let service = svc.name.clone();
        if !resp.status().is_success() {
            return Err(ProxyError::BadStatus {
                service,
                status: resp.status().as_u16(),
            });
        }
        if let Some(size) = resp.content_length().filter(|n| *n > max_bytes) {
            return Err(ProxyError::TooLarge {
                service,
                size,
                limit: max_bytes,
            });
        }
        let header = |name| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        Ok(Upstream {
            content_type: header(reqwest::header::CONTENT_TYPE),
            content_encoding: header(reqwest::header::CONTENT_ENCODING),
            body: Bounded {
                inner: Box::pin(resp.bytes_stream()),
                deadline: Box::pin(tokio::time::sleep_until(deadline)),
                left: max_bytes,
                done: false,
                proxy: self.clone(),
                service,
                started,
                limit: (max_bytes, svc.timeout),
            },
        })
    }

    fn finish(&self, service: &str, result: &'static str, started: Instant) {
        self.scrapes.with_label_values(&[service, result]).inc();
        self.duration
            .with_label_values(&[service])
            .observe(started.elapsed().as_secs_f64());
    }
}

type Inner = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// A server's body, passed on chunk by chunk until its byte or time bound;
/// then an error, which makes the server cut the connection.
pub struct Bounded {
    inner: Inner,
    deadline: Pin<Box<tokio::time::Sleep>>,
    left: u64,
    done: bool,
    proxy: Arc<Proxy>,
    service: String,
    started: Instant,
    limit: (u64, Duration),
}

impl Bounded {
    fn end(&mut self, result: &'static str) {
        self.done = true;
        self.proxy.finish(&self.service, result, self.started);
    }

    fn fail(&mut self, result: &'static str, why: String) -> Poll<Option<std::io::Result<Bytes>>> {
        tracing::warn!(service = %self.service, result, "A proxied metrics scrape was cut: {why}.");
        self.end(result);
        Poll::Ready(Some(Err(std::io::Error::other(why))))
    }
}

impl Stream for Bounded {
    type Item = std::io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            let why = format!("the page took longer than the service's timeout ({:?})", self.limit.1);
            return self.fail("timeout", why);
        }
        match self.inner.as_mut().poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                self.end("ok");
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => self.fail(
                "upstream_error",
                format!("the server's body broke: {}", error_chain(&e)),
            ),
            Poll::Ready(Some(Ok(chunk))) => {
                let n = chunk.len() as u64;
                if n > self.left {
                    let why = format!("the page is over health.proxy_max_bytes ({} bytes)", self.limit.0);
                    return self.fail("too_large", why);
                }
                self.left -= n;
                Poll::Ready(Some(Ok(chunk)))
            }
        }
    }
}

use std::future::Future as _;

impl Drop for Bounded {
    fn drop(&mut self) {
        if !self.done {
            // The scraper went away (or its own timeout ended the request).
            self.end("cancelled");
        }
    }
}

/// An error with its sources, which reqwest keeps apart.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The client of a service's health check: a new connection for every
/// check, so a check sees what a new client would.
pub fn http_client(svc: &ServiceConfig) -> Result<reqwest::Client, String> {
    client_builder(svc)?
        .pool_max_idle_per_host(0)
        .build()
        .map_err(|e| e.to_string())
}

/// The HTTP(S) client of one service: the system and webpki roots, or
/// only `tls.ca_file`; a client certificate for mutual TLS; a different
/// name to verify (the URL's address is still where it connects); the
/// configured headers on every request.
pub fn client_builder(svc: &ServiceConfig) -> Result<reqwest::ClientBuilder, String> {
    let mut b = reqwest::Client::builder().use_rustls_tls();
    if !svc.check.headers().is_empty() {
        let mut headers = reqwest::header::HeaderMap::new();
        for (k, v) in svc.check.headers() {
            let name =
                reqwest::header::HeaderName::from_bytes(k.as_bytes()).map_err(|e| format!("headers.{k}: {e}"))?;
            let value = reqwest::header::HeaderValue::from_str(v).map_err(|e| format!("headers.{k}: {e}"))?;
            headers.insert(name, value);
        }
        b = b.default_headers(headers);
    }
    let Some(tls) = svc.check.tls() else {
        return Ok(b);
    };
    let read = |p: &std::path::Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    if let Some(ca) = &tls.ca_file {
        b = b.tls_built_in_root_certs(false);
        for cert in reqwest::Certificate::from_pem_bundle(&read(ca)?).map_err(|e| format!("tls.ca_file: {e}"))? {
            b = b.add_root_certificate(cert);
        }
    }
    if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
        let mut pem = read(cert)?;
        pem.push(b'\n');
        pem.extend(read(key)?);
        b = b.identity(reqwest::Identity::from_pem(&pem).map_err(|e| format!("tls.cert_file/key_file: {e}"))?);
    }
    if tls.insecure_skip_verify {
        tracing::warn!(service = %svc.name, "health.services[].tls.insecure_skip_verify is on: any certificate is accepted for this check.");
        b = b.danger_accept_invalid_certs(true);
    }
    if let Some(name) = &tls.server_name {
        // Verify `name`, connect where the URL points.
        let url = reqwest::Url::parse(svc.check.url()).map_err(|e| e.to_string())?;
        let port = url.port_or_known_default().unwrap_or(443);
        let host = url
            .host_str()
            .unwrap_or_default()
            .trim_matches(|c| c == '[' || c == ']')
            .to_string();
        let addrs: Vec<std::net::SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port))
            .map_err(|e| format!("{host}: {e}"))?
            .collect();
        b = b.resolve_to_addrs(name, &addrs);
    }
    Ok(b)
}
