//! inferwatch: a small monitoring daemon for self-hosted GPU inference.
//!
//! # Layout
//!
//! - `main.rs`: flags, logging, config loading; calls [`run`].
//! - [`config`]: the YAML config, its defaults and env overrides; one file
//!   per section with its struct, its `Range` constants and its checks;
//!   `config::LiveConfig`, the config in force, which a reload replaces;
//!   `config::servers`, what each inference server kind exports for SLOs
//!   (request counters, latency histograms and their buckets, with sources).
//! - [`reload`]: `SIGHUP` and `POST /-/reload`: read and check the file,
//!   split what changes live from what waits for a restart (`plan`, pure),
//!   put it in force; `inferwatch_config_last_reload_*`.
//! - [`collectors`]: the `Collector` trait, the runner (interval, timeout,
//!   shutdown, readiness, `inferwatch_collector_*` self-metrics, page
//!   refresh) and `REGISTRY`, the one list of collectors: the daemon starts
//!   them from it, the golden test reads them once through it
//!   (`collect_rounds`), and the `--collector.<name>` flags are generated
//!   from it. Each collector defines the families it writes.
//!   - [`collectors::gpu`]: NVML polling, history feed, `gpu_*` families.
//!   - [`collectors::health`]: one task per service (and a supervisor that
//!     follows reloads), the `service_*` and
//!     `inference_model_ready` families; `health::check` (HTTP, Open
//!     Inference, Redis, PostgreSQL checks, failure reasons, stall
//!     detection), `health::command` (restart commands) and
//!     `health::gpu_memory` (whether a restart gave the GPU memory back).
//!   - [`collectors::queues`]: queue and DLQ depths, the "DLQ jobs present" alert.
//!   - [`collectors::stream`]: the Redis stream input of pipeline events.
//!   - [`collectors::storage`]: filesystem usage, the disk alert.
//! - [`state`]: what collectors publish and readers read: the GPU snapshot
//!   and history ring, the service views, the filesystem reading, readiness.
//! - [`cleanup`]: the read-only file scan behind the cleanup preview.
//! - [`restart`]: the pure restart policy (statuses, thresholds, start
//!   period, backoff, give-up, reset, dependency hold) and the restart gate.
//! - [`dlq`]: the Redis side of queues and DLQs: polling and requeue-all;
//!   `dlq::entry` (the JobFailure shape), `dlq::list` (pages),
//!   `dlq::scripts` (every atomic Lua step), `dlq::archives` (clear,
//!   restore, the archive list), `dlq::search` (job ids, filters, cursor
//!   scans, single-job moves), `dlq::tasks` (filtered and rate-limited
//!   requeues as background tasks) and `dlq::processing` (jobs in flight).
//! - [`pipeline`]: pipeline event parsing, the cardinality guard, the
//!   `pipeline_*` families and `inference_fps`.
//! - [`client_tls`]: `ServiceTls`, the TLS settings of a client connection
//!   (plain data, below both `config` and `redis_conn`).
//! - [`redis_conn`]: a lazily (re)connected Redis connection, and the
//!   client with TLS and a password file; a leaf (it reads no config: the
//!   queues' target is built from their section by `dlq::redis_target`).
//! - [`redis_acl`]: `inferwatch redis-acl`, the least-privilege ACL user.
//! - [`nvml`]: the blocking NVML edge, on its own thread (init reasons, a
//!   driver gone mid-run); [`nvml::fields`]: every GPU field with its call
//!   and cadence class; [`nvml::meter`]: the call meter and the `Value` a
//!   read returns; [`nvml::profiling`]: GPM samples and metrics, per-process
//!   utilization, and the field-value reads (clock-event time, HBM
//!   temperature, remapped rows, the recovery action).
//! - [`attribution`]: who holds each GPU process: `/proc/<pid>/cgroup`
//!   (systemd unit, container in every runtime's form; `attribution::cgroup`),
//!   container names and compose labels from the Docker Engine API, cached
//!   (`attribution::docker`), `health.services[].match`, and the per-GPU
//!   process table with the `_other` fold and per-service sums
//!   (`attribution::table`). The GPU collector calls it once per poll.
//! - [`inference`]: the inference servers behind the health checks: their
//!   kinds, the HTTP service discovery list of their metrics
//!   (`inference::sd`), the bounded scrape proxy (`inference::proxy`),
//!   each GPU's energy split between the services that hold it
//!   (`inference::energy`, which the GPU collector calls once per poll) and
//!   `inferwatch slo-rules`, the SLO rules and burn-rate alerts of the
//!   config's `slo` section (`inference::slo`, pure).
//! - [`doctor`]: `inferwatch doctor`, what each field answers and costs here.
//! - [`xid`]: the XID catalog (`src/xid/xid_catalog.json`) and the kernel-log
//!   (`/dev/kmsg`) reader that finds the XIDs NVML events miss.
//! - [`webconf`]: `--web.config.file` (exporter-toolkit format): TLS, client
//!   certificates, bcrypt basic auth and headers, re-read when it changes.
//! - [`history`]: the REST sample shape and the in-memory ring.
//! - [`store`]: the SQLite/PostgreSQL history store and its batching writer;
//!   `store::dlq` keeps the DLQ audit trail and the move tasks there;
//!   `store::migrate` embeds the migrations of both backends.
//! - [`metrics`]: the registry, the daemon's own metrics, the page cache and
//!   the OpenMetrics encoder.
//! - [`events`]: the internal event bus (GPU polls and crossings, service
//!   status changes, built-in alerts).
//! - [`server`]: the accept loop: TLS handshake (from [`webconf`]), header
//!   timeout, connection cap with idle eviction, shutdown deadline,
//!   `RLIMIT_NOFILE`.
//! - [`hub`]: the `/ws/system` fan-out hub and the event -> message
//!   translation (not HTTP).
//! - [`api`]: `router(state)`, the `/` landing page, `/metrics`, the probes, the REST routes
//!   (system, DLQ with its auth in `api::dlq`: params, audit, then one file
//!   per group of handlers; pipeline ingest, storage), `/-/reload`
//!   (`api::lifecycle`), the
//!   `/ws/system` upgrade, query parsing (`api::query`), the error and limit
//!   layers, basic auth and headers from the web config (`api::basic_auth`),
//!   and the `http_*` request metrics middleware.
//!
//! Beside the crate: `alert_rules.yml`, `alertmanager.yml`, `monitoring/`
//! (Prometheus config, rule tests, Alertmanager template, Grafana
//! provisioning), `grafana-dashboards/` and `docker-compose-monitoring.yml`
//! query the metric names defined here.
//!
//! Arrows point one way: collectors write `state`, the API and the hub read
//! it; no module under `api` imports `collectors`, and nothing outside `api`
//! but this file imports `api`. `scripts/check_cycles` finds any import
//! cycle between top-level modules or sibling files.
//!
//! Tests: unit tests beside the code; the integration tests are one binary,
//! `tests/it/main.rs` with a module per area and the harness in
//! `tests/it/common/`; the reference docs are `docs/`, one topic a file.

pub mod api;
pub mod attribution;
pub mod bounded;
pub mod cleanup;
pub mod client_tls;
pub mod collectors;
pub mod config;
pub mod dlq;
pub mod doctor;
pub mod events;
pub mod history;
pub mod hub;
pub mod inference;
pub mod metrics;
pub mod nvml;
pub mod pipeline;
pub mod redis_acl;
pub mod redis_conn;
pub mod reload;
pub mod restart;
pub mod server;
pub mod state;
pub mod store;
pub mod webconf;
pub mod xid;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::auth::Auth;
use crate::api::AppState;
use crate::collectors::gpu::{GpuCollector, GpuFamilies};
use crate::collectors::health::HealthError;
use crate::config::Config;
use crate::dlq::Queues;
use crate::events::EventBus;
use crate::hub::{run_hub, Hub};
use crate::metrics::Metrics;
use crate::pipeline::Pipeline;
use crate::state::{GpuState, HealthState, Readiness};
use crate::store::{Store, StoreError};

/// Why the daemon stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Health(#[from] HealthError),
    #[error(transparent)]
    Collector(#[from] collectors::StartError),
    #[error("HTTP server failed: {0}")]
    Serve(#[from] std::io::Error),
    /// The config, its files or a URL refused (see [`check_config`]).
    #[error(transparent)]
    Check(#[from] CheckError),
}

/// The errors of the config's parts convert as [`check_config`]'s do.
macro_rules! run_error_via_check {
    ($($t:ty),*) => {$(
        impl From<$t> for RunError {
            fn from(e: $t) -> RunError {
                RunError::Check(CheckError::from(e))
            }
        }
    )*};
}
run_error_via_check!(
    crate::api::auth::AuthError,
    crate::config::ConfigError,
    webconf::WebConfigError
);

/// Warns when anyone who can reach the port may write: a non-loopback
/// listen address with no token.
fn warn_if_open(state: &AppState, addr: std::net::SocketAddr) {
    if writes_open_beyond_loopback(addr, state.auth.has_token()) {
        tracing::warn!(
            address = %addr,
            "Listening beyond loopback with no api.token: writes (DLQ moves, pipeline ingest) are open to api.trusted_networks only, and a local proxy or tunnel makes every client look like loopback. Set api.token."
        );
    }
}

/// True when the daemon listens beyond loopback and no token guards writes.
fn writes_open_beyond_loopback(addr: std::net::SocketAddr, has_token: bool) -> bool {
    !addr.ip().is_loopback() && !has_token
}

/// Builds the shared state for `config` (no tasks are started); a reload
/// re-reads nothing (see [`build_state_with`]).
pub fn build_state(config: Config) -> Result<AppState, RunError> {
    build_state_with(config, reload::Source::default())
}

/// What [`check_config`] found wrong.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(transparent)]
    Auth(#[from] crate::api::auth::AuthError),
    /// A value its owner refused: a URL its client cannot use (a health
    /// check's, the queues' Redis, the store's PostgreSQL).
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    WebConfig(#[from] webconf::WebConfigError),
}

/// The one check that `inferwatch check-config`, startup and a reload all
/// run, beyond parsing, keys and ranges ([`Config::load`]): the token files
/// are read, each health check's target is parsed as its client will, and
/// the queues' Redis URL and the store's PostgreSQL URL are parsed by their
/// clients, and the web config
/// file the config names is read. So a file one of the
/// three accepts, the others accept too.
pub fn check_config(config: &Config) -> Result<(), CheckError> {
    Auth::load(&config.api)?;
    collectors::health::check_services(&config.health)?;
    if config.queues.enabled {
        dlq::redis_target(&config.queues)?;
    }
    if let config::StoreBackend::Postgres(url) = config.store.backend(&config.data_dir)? {
        store::postgres_options(&url)?;
    }
    if let Some(path) = &config.web.config_file {
        webconf::load(path)?;
    }
    Ok(())
}

/// [`build_state`], with where the config came from, so that `SIGHUP` and
/// `POST /-/reload` can read it again.
pub fn build_state_with(config: Config, source: reload::Source) -> Result<AppState, RunError> {
    check_config(&config)?;
    let shared = build_shared(config)?;
    let config = shared.config.get();
    let metrics = shared.metrics.clone();
    let hub = Hub::new(config.websocket.clone(), &metrics);
    let auth = Arc::new(Auth::load(&config.api)?);
    let http = api::http_metrics::HttpMetrics::new(&metrics);
    let server = server::ServerMetrics::new(&metrics);
    let proxy = inference::proxy::Proxy::new(&metrics);
    let web = match &config.web.config_file {
        Some(path) => webconf::WebRuntime::load(path)?,
        None => webconf::WebRuntime::none(),
    };
    let collectors = collectors::REGISTRY
        .iter()
        .map(|e| (e.name, e.about, collectors::is_enabled(e, &config)))
        .collect();
    let reload = Arc::new(reload::Reloader::new(
        source,
        shared.clone(),
        web.clone(),
        Box::new(|c: &Config| check_config(c).map_err(|e| e.to_string())),
    ));
    Ok(AppState {
        shared,
        reload,
        hub,
        auth,
        http,
        server,
        proxy,
        preview: Default::default(),
        started_at: chrono::Utc::now(),
        collectors: Arc::new(collectors),
        web,
    })
}

/// The state the collectors write and the API reads, with its metric
/// families registered.
fn build_shared(config: Config) -> Result<state::Shared, RunError> {
    let metrics = Arc::new(Metrics::new());
    let gpu = GpuState::new(&config.gpu, Some(&metrics));
    metrics
        .register(Box::new(GpuFamilies::new(gpu.clone())))
        .expect("GPU families register once");
    let store = Store::open(&config, &metrics)?;
    let queues = match config.queues.enabled {
        true => Some(Queues::new(config.queues.clone(), &metrics)?),
        false => None,
    };
    Ok(state::Shared {
        health: HealthState::new(&config.health.services),
        pipeline: Arc::new(Pipeline::new(&config.pipeline, &metrics)),
        config: crate::config::LiveConfig::new(config),
        metrics,
        readiness: Arc::new(Readiness::default()),
        gpu,
        store: Some(store),
        events: EventBus::new(),
        queues,
        watched: Default::default(),
        storage: Default::default(),
    })
}

/// Starts the GPU collector (loading NVML, or mock mode) wired to `state`.
pub async fn gpu_collector(state: &AppState) -> GpuCollector {
    let config = state.config.get();
    let attributor = config
        .gpu
        .per_process
        .then(|| attribution::Attributor::new(&config, Some(&state.metrics)));
    GpuCollector::start(
        config.gpu.clone(),
        state.gpu.clone(),
        state.events.clone(),
        state.store.clone(),
        attributor,
    )
    .await
}

/// What the collectors get from `state`: the config and the shared state
/// they write to; `stop` ends their tasks. Registers the runner's
/// self-metrics, so it is called once per state.
pub fn shared(state: &AppState, stop: CancellationToken) -> collectors::Shared {
    collectors::Shared {
        state: state.shared.clone(),
        runner: collectors::RunnerMetrics::register(state.metrics.clone()),
        stop,
    }
}

/// Runs the daemon on `listener` until `shutdown` completes, then stops the
/// collectors and flushes pending history before returning.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    run_from(config, reload::Source::default(), listener, shutdown).await
}

/// [`run`], reloading from `source` on `SIGHUP` and `POST /-/reload`.
pub async fn run_from(
    config: Config,
    source: reload::Source,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let state = build_state_with(config, source)?;
    run_with_state(state, listener, shutdown).await
}

/// Reloads the config on every `SIGHUP` until `stop`. Registered before
/// anything else runs: `SIGHUP`'s default action ends the process.
fn reload_on_sighup(reloader: Arc<reload::Reloader>, stop: CancellationToken) -> Option<tokio::task::JoinHandle<()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "Cannot listen for SIGHUP: reload with POST /-/reload instead.");
            return None;
        }
    };
    Some(tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                got = hangup.recv() => if got.is_none() { break },
            }
            // The outcome is logged and in the metrics; nobody waits for it.
            let _ = reloader.reload("SIGHUP").await;
        }
    }))
}

/// Starts the history store's writer, and marks the DLQ tasks an earlier
/// run left `running` as interrupted (its stop cut them off).
fn start_store(state: &AppState, stop: &CancellationToken) -> Option<tokio::task::JoinHandle<()>> {
    let store = state.store.clone()?;
    tracing::info!(store = %store.description(), "History store configured.");
    let writer = tokio::spawn(store.clone().run_writer(stop.clone()));
    let started = state.started_at;
    tokio::spawn(async move {
        if let Err(e) = store.interrupt_tasks(started).await {
            tracing::warn!(error = %e, "Could not check the history store for interrupted DLQ tasks.");
        }
    });
    Some(writer)
}

/// [`run`] with state the caller built (tests use it to watch events).
pub async fn run_with_state(
    state: AppState,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let collectors_stop = CancellationToken::new();
    let store_stop = CancellationToken::new();
    let mut tasks = Vec::new();
    tasks.extend(reload_on_sighup(state.reload.clone(), collectors_stop.clone()));

    let writer = start_store(&state, &store_stop);

    // The hub subscribes before any collector can publish.
    tasks.push(tokio::spawn(run_hub(
        state.hub.clone(),
        state.events.subscribe(),
        state.gpu.clone(),
        state.pipeline.clone(),
        collectors_stop.clone(),
    )));

    tasks.extend(collectors::start_all(&shared(&state, collectors_stop.clone()))?);

    let addr = listener.local_addr()?;
    tracing::info!(address = %addr, "Listening.");
    warn_if_open(&state, addr);
    let limits = server::Limits::from_config(&state.config.get().web, server::raise_nofile_limit());
    let server_metrics = state.server.clone();
    let web = state.web.clone();
    // 5xx answers are already logged once, with their cause, by `AppError`;
    // the trace layer's own failure line would repeat them at ERROR.
    let trace = tower_http::trace::TraceLayer::new_for_http()
        .on_failure(tower_http::trace::DefaultOnFailure::new().level(tracing::Level::DEBUG));
    let app = api::router(state).layer(trace);
    let served = server::serve(listener, app, limits, server_metrics, web, shutdown).await;

    tracing::info!("Shutting down: stopping collectors and flushing history.");
    collectors_stop.cancel();
    for t in tasks {
        let _ = t.await;
    }
    store_stop.cancel();
    if let Some(w) = writer {
        let _ = w.await;
    }
    served?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn open_listeners_without_a_token_are_flagged() {
        let f = super::writes_open_beyond_loopback;
        assert!(f("0.0.0.0:8790".parse().unwrap(), false));
        assert!(f("[::]:8790".parse().unwrap(), false));
        assert!(f("10.0.0.5:8790".parse().unwrap(), false));
        assert!(!f("0.0.0.0:8790".parse().unwrap(), true));
        assert!(!f("127.0.0.1:8790".parse().unwrap(), false));
        assert!(!f("[::1]:8790".parse().unwrap(), false));
    }
}
