//! One health check of one service, and why it failed: HTTP (method, body,
//! headers, expected status and body), the Open Inference Protocol's
//! liveness and readiness, Redis `PING`, PostgreSQL `SELECT 1`, and stall
//! detection from the service's own Prometheus metrics.
//!
//! Every failure carries a [`Reason`] from a closed list, the `reason`
//! label of `service_check_failures_total`.

use std::str::FromStr;
use std::time::Duration;

use crate::bounded::{ReadError, Source};

use tokio::time::Instant;

use super::HealthError;
use crate::config::{Check, HttpMethod, ServiceConfig};
use crate::inference::proxy::http_client;

/// Why a check failed: the `reason` label, a closed list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Timeout,
    Connect,
    Tls,
    HttpStatus,
    Body,
    /// A body or page over its byte limit.
    TooLarge,
    NotReady,
    Stalled,
    Dependency,
    Error,
}

impl Reason {
    pub const ALL: [Reason; 10] = [
        Reason::Timeout,
        Reason::Connect,
        Reason::Tls,
        Reason::HttpStatus,
        Reason::Body,
        Reason::TooLarge,
        Reason::NotReady,
        Reason::Stalled,
        Reason::Dependency,
        Reason::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Timeout => "timeout",
            Reason::Connect => "connect",
            Reason::Tls => "tls",
            Reason::HttpStatus => "http_status",
            Reason::Body => "body",
            Reason::TooLarge => "too_large",
            Reason::NotReady => "not_ready",
            Reason::Stalled => "stalled",
            Reason::Dependency => "dependency",
            Reason::Error => "error",
        }
    }
}

/// Why one health check failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The connection could not be made or broke: the error and its causes.
    #[error("{0}")]
    Connect(String),
    /// The TLS handshake or the certificate failed.
    #[error("{0}")]
    Tls(String),
    #[error("HTTP {0}")]
    Status(reqwest::StatusCode),
    #[error("{0}")]
    Body(String),
    #[error("the body is larger than {0} bytes (health.body_max_bytes)")]
    TooLarge(usize),
    #[error("PING answered {0:?}")]
    Pong(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("stalled: {pending} pending and no progress for {idle:?}")]
    Stalled { pending: f64, idle: Duration },
}

impl CheckError {
    pub fn reason(&self) -> Reason {
        match self {
            CheckError::Connect(_) => Reason::Connect,
            CheckError::Tls(_) => Reason::Tls,
            CheckError::Status(_) => Reason::HttpStatus,
            CheckError::Body(_) => Reason::Body,
            CheckError::TooLarge(_) => Reason::TooLarge,
            CheckError::Pong(_) => Reason::Error,
            CheckError::Timeout(_) => Reason::Timeout,
            CheckError::Stalled { .. } => Reason::Stalled,
        }
    }

    fn connect(e: &dyn std::error::Error) -> CheckError {
        CheckError::Connect(error_chain(e))
    }

    /// A request error: TLS when the chain says so, else a connection error.
    fn http(e: &reqwest::Error) -> CheckError {
        let text = error_chain(e);
        let lower = text.to_ascii_lowercase();
        if ["certificate", "tls", "handshake", "ssl"]
            .iter()
            .any(|w| lower.contains(w))
        {
            CheckError::Tls(text)
        } else {
            CheckError::Connect(text)
        }
    }
}

/// `error: cause: cause`, as one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        source = cause.source();
    }
    s
}

/// What an Open Inference server said about readiness.
#[derive(Debug, Clone, PartialEq)]
pub struct Readiness {
    pub ready: bool,
    /// Each configured model and whether it is ready.
    pub models: Vec<(String, bool)>,
    /// Why it is not ready, for the message.
    pub why: String,
}

/// One check's result: liveness decides the status; readiness is reported
/// beside it (`None` for kinds without readiness: it equals liveness).
#[derive(Debug)]
pub struct Outcome {
    pub live: Result<(), CheckError>,
    pub readiness: Option<Readiness>,
}

/// The parts of an HTTP check that the config sets.
pub struct HttpCheck {
    client: reqwest::Client,
    url: reqwest::Url,
    method: reqwest::Method,
    body: Option<String>,
    /// Inclusive ranges of status codes that pass.
    expect: Vec<(u16, u16)>,
    expect_body: Option<String>,
    /// The most bytes of the body read (`health.body_max_bytes`).
    max_body: usize,
}

/// How one service is checked.
pub enum Checker {
    Http(Box<HttpCheck>),
    OpenInference {
        client: reqwest::Client,
        base: reqwest::Url,
        models: Vec<String>,
    },
    Redis(crate::redis_conn::Target),
    Postgres(Box<sqlx::postgres::PgConnectOptions>),
}

impl Checker {
    pub fn new(svc: &ServiceConfig, max_body: usize) -> Result<Checker, HealthError> {
        let bad = |reason: String| HealthError::Url {
            service: svc.name.clone(),
            field: "url",
            url: svc.check.url().to_string(),
            reason,
        };
        Ok(match &svc.check {
            Check::Http(h) => Checker::Http(Box::new(HttpCheck {
                url: check_url(svc).map_err(bad)?,
                // A fresh connection per check: a pooled socket could hide a
                // server that has just been restarted or died. The task's own
                // timeout bounds the check, with one message for every kind.
                client: http_client(svc).map_err(bad)?,
                method: match h.method {
                    HttpMethod::Get => reqwest::Method::GET,
                    HttpMethod::Head => reqwest::Method::HEAD,
                    HttpMethod::Post => reqwest::Method::POST,
                },
                body: h.body.clone(),
                expect: h.expect_status.iter().filter_map(|s| s.codes()).collect(),
                expect_body: h.expect_body.clone(),
                max_body,
            })),
            Check::OpenInference(o) => {
                let mut base = check_url(svc).map_err(bad)?;
                if !base.path().ends_with('/') {
                    base.set_path(&format!("{}/", base.path()));
                }
                Checker::OpenInference {
                    client: http_client(svc).map_err(bad)?,
                    base,
                    models: o.models.clone(),
                }
            }
            Check::Redis(r) => {
                Checker::Redis(crate::redis_conn::target(&r.url, r.tls.as_ref(), None).map_err(|e| bad(e.to_string()))?)
            }
            Check::Postgres(p) => Checker::Postgres(Box::new(
                sqlx::postgres::PgConnectOptions::from_str(&p.url).map_err(|e| bad(e.to_string()))?,
            )),
        })
    }

    /// One check.
    pub async fn check(&self) -> Outcome {
        match self {
            Checker::Http(h) => Outcome {
                live: h.check().await,
                readiness: None,
            },
            Checker::OpenInference { client, base, models } => open_inference(client, base, models).await,
            Checker::Redis(client) => Outcome {
                live: redis_ping(client).await,
                readiness: None,
            },
            Checker::Postgres(opts) => Outcome {
                live: postgres_select(opts).await,
                readiness: None,
            },
        }
    }
}

impl HttpCheck {
    async fn check(&self) -> Result<(), CheckError> {
        let mut req = self.client.request(self.method.clone(), self.url.clone());
        if let Some(body) = &self.body {
            req = req.body(body.clone());
        }
        let resp = req.send().await.map_err(|e| CheckError::http(&e))?;
        let status = resp.status();
        let code = status.as_u16();
        if !self.expect.iter().any(|(lo, hi)| (*lo..=*hi).contains(&code)) {
            return Err(CheckError::Status(status));
        }
        let Some(want) = &self.expect_body else { return Ok(()) };
        // The task's timeout bounds the time; this bounds the bytes.
        let body = crate::bounded::read_body(resp, self.max_body, Source::HealthBody)
            .await
            .map_err(|e| match e {
                ReadError::TooLarge { limit } => CheckError::TooLarge(limit),
                e => CheckError::Body(e.to_string()),
            })?;
        if String::from_utf8_lossy(&body).contains(want.as_str()) {
            Ok(())
        } else {
            Err(CheckError::Body(format!("the body does not contain {want:?}")))
        }
    }
}

/// `GET {base}v2/health/live` decides liveness; `v2/health/ready` and each
/// model's `v2/models/{m}/ready` decide readiness (Open Inference Protocol,
/// KServe v2 REST: 200 for yes; MLServer answers 400 and Triton 400/503
/// for no).
async fn open_inference(client: &reqwest::Client, base: &reqwest::Url, models: &[String]) -> Outcome {
    let get = |path: String| async move {
        let url = base.join(&path).map_err(|e| CheckError::Connect(e.to_string()))?;
        let resp = client.get(url).send().await.map_err(|e| CheckError::http(&e))?;
        Ok::<_, CheckError>(resp.status())
    };
    let live = match get("v2/health/live".into()).await {
        Ok(s) if s.is_success() => Ok(()),
        Ok(s) => Err(CheckError::Status(s)),
        Err(e) => Err(e),
    };
    if live.is_err() {
        return Outcome { live, readiness: None };
    }
    let mut why = Vec::new();
    let server = match get("v2/health/ready".into()).await {
        Ok(s) if s.is_success() => true,
        Ok(s) => {
            why.push(format!("server not ready (HTTP {})", s.as_u16()));
            false
        }
        Err(e) => {
            why.push(format!("server readiness unknown ({e})"));
            false
        }
    };
    let mut states = Vec::with_capacity(models.len());
    for m in models {
        let ready = match get(format!("v2/models/{m}/ready")).await {
            Ok(s) if s.is_success() => true,
            Ok(s) => {
                why.push(format!("model {m} not ready (HTTP {})", s.as_u16()));
                false
            }
            Err(e) => {
                why.push(format!("model {m} readiness unknown ({e})"));
                false
            }
        };
        states.push((m.clone(), ready));
    }
    let ready = server && states.iter().all(|(_, r)| *r);
    Outcome {
        live,
        readiness: Some(Readiness {
            ready,
            models: states,
            why: why.join("; "),
        }),
    }
}

async fn redis_ping(target: &crate::redis_conn::Target) -> Result<(), CheckError> {
    let client = target.client().await.map_err(|e| CheckError::connect(&e))?;
    let mut con = client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| CheckError::connect(&e))?;
    let pong: String = redis::cmd("PING")
        .query_async(&mut con)
        .await
        .map_err(|e| CheckError::connect(&e))?;
    if pong == "PONG" {
        Ok(())
    } else {
        Err(CheckError::Pong(pong))
    }
}

async fn postgres_select(opts: &sqlx::postgres::PgConnectOptions) -> Result<(), CheckError> {
    use sqlx::Connection;
    let mut con = sqlx::PgConnection::connect_with(opts)
        .await
        .map_err(|e| CheckError::connect(&e))?;
    sqlx::query("SELECT 1")
        .execute(&mut con)
        .await
        .map_err(|e| CheckError::connect(&e))?;
    let _ = con.close().await;
    Ok(())
}

/// The URL a check requests: the URL's host replaced by `tls.server_name`
/// (resolved to the URL's address by the client).
fn check_url(svc: &ServiceConfig) -> Result<reqwest::Url, String> {
    let mut url = reqwest::Url::parse(svc.check.url()).map_err(|e| e.to_string())?;
    if let Some(name) = svc.check.tls().and_then(|t| t.server_name.as_ref()) {
        url.set_host(Some(name)).map_err(|e| format!("tls.server_name: {e}"))?;
    }
    Ok(url)
}

/// Whether work that is pending gets done: pure, fed one reading per check.
#[derive(Debug, Clone)]
pub struct StallTracker {
    stall_after: Duration,
    last_done: Option<f64>,
    last_pending: f64,
    progress_at: Option<Instant>,
}

impl StallTracker {
    pub fn new(stall_after: Duration) -> StallTracker {
        StallTracker {
            stall_after,
            last_done: None,
            last_pending: 0.0,
            progress_at: None,
        }
    }

    /// One reading at `now`: the sum of the pending gauges and of the done
    /// counters. `Some(idle)` when work is pending and the counters have not
    /// moved for `stall_after` or longer. Any change of the counters (a
    /// restart resets them) is progress, and so is having nothing pending;
    /// work that arrives starts the clock at the first reading that sees it.
    pub fn observe(&mut self, pending: f64, done: f64, now: Instant) -> Option<Duration> {
        let moved = self.last_done != Some(done);
        let arrived = self.last_pending <= 0.0;
        self.last_done = Some(done);
        self.last_pending = pending;
        if moved || arrived || pending <= 0.0 {
            self.progress_at = Some(now);
            return None;
        }
        let idle = now.saturating_duration_since(*self.progress_at.get_or_insert(now));
        (idle >= self.stall_after).then_some(idle)
    }
}

/// Reads a service's own `/metrics` for stall detection.
pub struct Progress {
    client: reqwest::Client,
    url: reqwest::Url,
    pending: Vec<String>,
    done: Vec<String>,
    pub tracker: StallTracker,
    /// The most bytes of the page read (`health.page_max_bytes`).
    max_page: usize,
}

/// Why the progress metrics could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ProgressError {
    #[error("fetching {url} failed: {reason}")]
    Fetch { url: String, reason: String },
    #[error("{url} is not Prometheus text: {reason}")]
    Parse { url: String, reason: String },
}

impl Progress {
    pub fn new(svc: &ServiceConfig, max_page: usize) -> Result<Option<Progress>, HealthError> {
        let Some(p) = &svc.progress else { return Ok(None) };
        let bad = |reason: String| HealthError::Url {
            service: svc.name.clone(),
            field: "metrics_url",
            url: svc.metrics_url().unwrap_or_default().to_string(),
            reason,
        };
        let url = reqwest::Url::parse(svc.metrics_url().unwrap_or_default()).map_err(|e| bad(e.to_string()))?;
        let (pending, done) = p.names();
        Ok(Some(Progress {
            client: http_client(svc).map_err(bad)?,
            url,
            pending,
            done,
            tracker: StallTracker::new(p.stall_after),
            max_page,
        }))
    }

    /// The sums of the pending gauges and of the done counters.
    pub async fn read(&self) -> Result<(f64, f64), ProgressError> {
        let fetch = |reason: String| ProgressError::Fetch {
            url: self.url.to_string(),
            reason,
        };
        let resp = self
            .client
            .get(self.url.clone())
            .send()
            .await
            .map_err(|e| fetch(error_chain(&e)))?;
        if !resp.status().is_success() {
            return Err(fetch(format!("HTTP {}", resp.status().as_u16())));
        }
        let page = crate::bounded::read_body(resp, self.max_page, Source::MetricsUrl)
            .await
            .map_err(|e| fetch(format!("{} ({})", e, e.reason())))?;
        let text = String::from_utf8_lossy(&page);
        sums(&text, &self.pending, &self.done).map_err(|reason| ProgressError::Parse {
            url: self.url.to_string(),
            reason,
        })
    }
}

/// Sums the samples named in `pending` and in `done` (full sample names:
/// `x_count` and `x_sum` of a histogram or summary are their own names).
/// Parsed with `prom_text_format_parser`; a family it reports as malformed
/// (a TYPE line without samples of that exact name) still gives its samples.
pub fn sums(text: &str, pending: &[String], done: &[String]) -> Result<(f64, f64), String> {
    use prom_text_format_parser::{ScrapeParseError, Type, ValueType};
    let (metrics, err) = prom_text_format_parser::parse_scrape(text);
    if let Some(ScrapeParseError::Parse(e)) = err {
        return Err(e.lines().next().unwrap_or_default().to_string());
    }
    let (mut p, mut d) = (0.0, 0.0);
    for m in &metrics {
        for s in &m.samples {
            let name = match (m.kind, s.value.value_type) {
                (Type::Histogram, ValueType::Sample) => continue,
                (_, ValueType::Count) => format!("{}_count", m.name),
                (_, ValueType::Sum) => format!("{}_sum", m.name),
                (_, ValueType::Sample) => m.name.clone(),
            };
            let v = s.value.value.as_f64();
            if !v.is_finite() {
                continue;
            }
            if pending.contains(&name) {
                p += v;
            }
            if done.contains(&name) {
                d += v;
            }
        }
    }
    Ok((p, d))
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 256, ..Default::default() })]

        /// Any page gives sums or an error, never a panic.
        #[test]
        fn any_page_sums_or_is_refused(page in "(.{0,60}\n){0,10}") {
            let _ = sums(&page, &["a".into()], &["b_total".into()]);
        }

        /// A page of gauge and counter samples sums to what was written.
        #[test]
        fn sums_add_up_the_samples_written(
            pending in proptest::collection::vec(0u32..1_000_000, 0..8),
            done in proptest::collection::vec(0u32..1_000_000, 0..8),
        ) {
            let mut page = String::from("# TYPE q gauge\n");
            for (i, v) in pending.iter().enumerate() {
                page.push_str(&format!("q{{model=\"m{i}\"}} {v}\n"));
            }
            page.push_str("# TYPE r counter\n");
            for (i, v) in done.iter().enumerate() {
                page.push_str(&format!("r_total{{model=\"m{i}\"}} {v}\n"));
            }
            let want = (pending.iter().map(|v| *v as f64).sum::<f64>(), done.iter().map(|v| *v as f64).sum::<f64>());
            proptest::prop_assert_eq!(sums(&page, &["q".into()], &["r_total".into()]).unwrap(), want);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn pending_work_with_frozen_counters_is_a_stall_after_stall_after() {
        let mut t = StallTracker::new(Duration::from_secs(120));
        assert_eq!(t.observe(3.0, 100.0, Instant::now()), None);
        tokio::time::advance(Duration::from_secs(119)).await;
        assert_eq!(t.observe(3.0, 100.0, Instant::now()), None);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(t.observe(3.0, 100.0, Instant::now()), Some(Duration::from_secs(120)));
        // One token more is progress.
        assert_eq!(t.observe(3.0, 101.0, Instant::now()), None);
        tokio::time::advance(Duration::from_secs(200)).await;
        assert!(t.observe(3.0, 101.0, Instant::now()).is_some());
        // A counter that went back (the server restarted) is progress too.
        assert_eq!(t.observe(3.0, 0.0, Instant::now()), None);
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_pending_is_never_a_stall() {
        let mut t = StallTracker::new(Duration::from_secs(10));
        for _ in 0..10 {
            assert_eq!(t.observe(0.0, 5.0, Instant::now()), None);
            tokio::time::advance(Duration::from_secs(60)).await;
        }
        // Work arrives: the clock starts now, not at the first reading.
        assert_eq!(t.observe(1.0, 5.0, Instant::now()), None);
        tokio::time::advance(Duration::from_secs(9)).await;
        assert_eq!(t.observe(1.0, 5.0, Instant::now()), None);
    }

    #[test]
    fn sums_read_real_exposition_formats() {
        // prometheus_client (vLLM, MLServer): colons, _total and _created,
        // blank lines; metrics-exporter-prometheus (TGI): no _total; a
        // summary's _count.
        let text = "# HELP vllm:num_requests_running Running.\n# TYPE vllm:num_requests_running gauge\n\
vllm:num_requests_running{model_name=\"m\"} 2.0\n\n\
# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{model_name=\"m\",engine=\"0\"} 3.0\n\
vllm:num_requests_waiting{model_name=\"m\",engine=\"1\"} 1.0\n\
# TYPE vllm:generation_tokens_total counter\nvllm:generation_tokens_total{model_name=\"m\"} 1234.0\n\
# TYPE vllm:generation_tokens_created gauge\nvllm:generation_tokens_created{model_name=\"m\"} 1.7e+09\n\
# TYPE tgi_batch_inference_success counter\ntgi_batch_inference_success{method=\"decode\"} 7\n\
# TYPE d summary\nd_count 4\nd_sum 2.5\n\
# TYPE h histogram\nh_bucket{le=\"+Inf\"} 9\nh_count 9\nh_sum NaN\n";
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let (p, d) = sums(
            text,
            &names(&["vllm:num_requests_running", "vllm:num_requests_waiting"]),
            &names(&["vllm:generation_tokens_total"]),
        )
        .unwrap();
        assert_eq!((p, d), (6.0, 1234.0));
        let (_, d) = sums(
            text,
            &[],
            &names(&["tgi_batch_inference_success", "d_count", "h_count", "h_sum"]),
        )
        .unwrap();
        assert_eq!(d, 7.0 + 4.0 + 9.0, "NaN is skipped, buckets are not counts");
        assert!(sums("this is { not metrics\n", &[], &[]).is_err());
    }

    #[test]
    fn every_reason_has_a_distinct_name() {
        let names: std::collections::HashSet<_> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(names.len(), Reason::ALL.len());
    }
}
