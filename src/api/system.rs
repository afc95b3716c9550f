//! `/api/system/gpu`, `/api/system/gpus` and `/api/system/gpu/history`:
//! GPU readings in the REST JSON shape (docs/http-api.md), served from the collector's
//! snapshot, the in-memory ring, or (beyond the ring's window) the store.
//! `/api/system/health` and `/api/system/stats` summarise the health
//! monitor, the GPUs and the WebSocket from the same shared state.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use serde::Serialize;

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::query::{NoParams, Query};

use super::{AppError, AppState, ErrorBody, QueryErrors};
use crate::history::{format_time, GpuSample};
use crate::restart::{Overall, Status};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(gpu))
        .routes(routes!(gpus))
        .routes(routes!(history))
        .routes(routes!(health))
        .routes(routes!(stats))
}

/// The last poll's GPUs in REST shape, `None` in mock mode; 503 before the
/// first poll has finished.
fn current(state: &AppState) -> Result<Option<Vec<GpuSample>>, AppError> {
    let snap = state.gpu.snapshot();
    if let Some(down) = &snap.nvml_down {
        return Err(AppError::Unavailable {
            message: format!("the GPU collector is failing: NVML is down ({})", down.reason),
            detail: "inferwatch retries with backoff; see docs/runbooks.md#gpudriverdown for this reason".into(),
        });
    }
    let samples = snap.serve(state.pipeline.fps()).ok_or_else(|| AppError::Unavailable {
        message: "no GPU reading yet: the first poll has not finished".into(),
        detail: "retry after the daemon is ready (GET /-/ready)".into(),
    })?;
    Ok(snap.available.then_some(samples))
}

/// Which GPU.
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct GpuParam {
    /// NVML index of the GPU; the first by default
    #[param(value_type = Option<i64>, nullable = false, explode = false, minimum = 0, maximum = 4294967295.0)]
    gpu: Option<u32>,
}

/// How far back, for which GPU (the range of `minutes` is that of
/// `gpu.history_minutes`).
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct HistoryParams {
    /// How far back; 60 by default
    #[param(nullable = false, explode = false, minimum = 1, maximum = 1440)]
    minutes: Option<u32>,
    /// NVML index of the GPU; the first by default
    #[param(value_type = Option<i64>, nullable = false, explode = false, minimum = 0, maximum = 4294967295.0)]
    gpu: Option<u32>,
}

/// `GET /api/system/gpu[?gpu=N]`: one GPU (the first by default), or the
/// mock object when no GPU is available.
#[utoipa::path(get, path = "/api/system/gpu", tag = "system",
    params(GpuParam),
    responses(
        (status = 200, description = "One GPU, or the mock object in mock mode", body = GpuSample),
        QueryErrors,
        (status = 404, description = "No such GPU", body = ErrorBody),
        (status = 503, description = "No GPU reading yet, or NVML is down (the reason is named)", body = ErrorBody)
    ))]
pub async fn gpu(State(state): State<AppState>, Query(p): Query<GpuParam>) -> Result<Json<GpuSample>, AppError> {
    let wanted = p.gpu;
    let Some(all) = current(&state)? else {
        return match wanted {
            None => Ok(Json(GpuSample::mock(Utc::now()).with_fps(state.pipeline.fps()))),
            Some(n) => Err(AppError::NotFound(format!(
                "GPU {n} not found: no GPU is available (mock mode)"
            ))),
        };
    };
    let found = match wanted {
        None => all.first().cloned(),
        Some(n) => all.iter().find(|s| s.gpu == Some(n)).cloned(),
    };
    found.map(Json).ok_or_else(|| {
        let known: Vec<u32> = all.iter().filter_map(|s| s.gpu).collect();
        AppError::NotFound(format!(
            "GPU {} not found; available GPUs: {known:?}",
            wanted.unwrap_or(0)
        ))
    })
}

/// `GET /api/system/gpus`: every GPU, or `[mock]` when none is available.
#[utoipa::path(get, path = "/api/system/gpus", tag = "system",
    responses(
        (status = 200, description = "Every GPU ([mock] in mock mode)", body = Vec<GpuSample>),
        QueryErrors,
        (status = 503, description = "No GPU reading yet, or NVML is down (the reason is named)", body = ErrorBody)
    ))]
pub async fn gpus(State(state): State<AppState>, _: Query<NoParams>) -> Result<Json<Vec<GpuSample>>, AppError> {
    Ok(Json(current(&state)?.unwrap_or_else(|| {
        vec![GpuSample::mock(Utc::now()).with_fps(state.pipeline.fps())]
    })))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct HistoryBody {
    gpu: u32,
    minutes: u32,
    /// `memory` inside the in-memory window, `store` beyond it.
    #[schema(value_type = String, pattern = "^(memory|store)$")]
    source: &'static str,
    samples: Vec<GpuSample>,
}

/// `GET /api/system/gpu/history?minutes=N[&gpu=N]`.
#[utoipa::path(get, path = "/api/system/gpu/history", tag = "system",
    params(HistoryParams),
    responses(
        (status = 200, description = "The GPU's samples, from memory or the store", body = HistoryBody),
        QueryErrors,
        (status = 503, description = "The history store is unavailable", body = ErrorBody)
    ))]
pub async fn history(
    State(state): State<AppState>,
    Query(p): Query<HistoryParams>,
) -> Result<Json<HistoryBody>, AppError> {
    let minutes = p.minutes.unwrap_or(60);
    let gpu = p.gpu.unwrap_or(0);
    let since = Utc::now() - chrono::Duration::minutes(minutes as i64);
    let in_memory = state.gpu.with_history(|h| i64::from(minutes) <= h.window_minutes());
    let (source, samples) = if in_memory {
        ("memory", state.gpu.with_history(|h| h.since(gpu, since)))
    } else {
        let store = state.store.as_ref().ok_or_else(|| AppError::Unavailable {
            message: "history beyond the in-memory window needs the store, which is disabled".into(),
            detail: format!("in-memory window: {} minutes", state.config.get().gpu.history_minutes),
        })?;
        let samples = store.history(gpu, since).await.map_err(|e| AppError::Unavailable {
            message: "history store unavailable".into(),
            detail: e.to_string(),
        })?;
        ("store", samples)
    };
    Ok(Json(HistoryBody {
        gpu,
        minutes,
        source,
        samples,
    }))
}

/// `GET /api/system/health`: 200 when healthy or degraded, 503 when a
/// critical service is not healthy.
#[utoipa::path(get, path = "/api/system/health", tag = "system",
    responses(
        (status = 200, description = "Healthy or degraded", body = HealthBody),
        QueryErrors,
        (status = 503, description = "A critical service is not healthy", body = HealthBody)
    ))]
pub async fn health(State(state): State<AppState>, _: Query<NoParams>) -> Result<Response, AppError> {
    let services = state.health.services();
    let overall = Overall::of(services.iter().map(|s| (&s.status, s.critical)));
    let tables = state.gpu.snapshot().processes.clone();
    let gpu_memory = services
        .iter()
        .map(|s| {
            let held = tables
                .iter()
                .filter_map(|t| {
                    t.services.get(&s.name).map(|u| ServiceGpuMemory {
                        gpu: t.gpu,
                        uuid: t.uuid.clone(),
                        memory_used_bytes: u.bytes,
                    })
                })
                .collect();
            (s.name.clone(), held)
        })
        .collect();
    let mut services: BTreeMap<String, String> = services
        .iter()
        .map(|s| (s.name.clone(), s.status.as_str().to_string()))
        .collect();
    let overall = own_dependencies(&state, &mut services, overall);
    let code = if overall == Overall::Unhealthy {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    let body = HealthBody {
        status: overall.as_str().to_string(),
        services,
        gpu_memory,
        timestamp: format_time(&Utc::now()),
    };
    Ok((code, Json(body)).into_response())
}

/// Adds the daemon's own dependencies to `services`, as the seed names
/// them: `redis` (the queue Redis, from the last poll) and `database` (the
/// history store, from the writer's last flush). They are alert-only: never
/// restarted and never critical, so one that is down makes the answer
/// `degraded`. A configured service of the same name keeps its place.
fn own_dependencies(state: &AppState, services: &mut BTreeMap<String, String>, overall: Overall) -> Overall {
    let own = [
        ("redis", state.queues.as_ref().and(state.watched.redis_up())),
        ("database", state.store.as_ref().and_then(|s| s.reachable())),
    ];
    let mut overall = overall;
    for (name, up) in own {
        let Some(up) = up else { continue };
        if services.contains_key(name) {
            continue;
        }
        services.insert(name.to_string(), if up { "healthy" } else { "unhealthy" }.to_string());
        if !up && overall == Overall::Healthy {
            overall = Overall::Degraded;
        }
    }
    overall
}

/// `/api/system/health`'s body.
#[derive(Serialize, utoipa::ToSchema)]
pub struct HealthBody {
    /// healthy, degraded or unhealthy.
    #[schema(pattern = "^(healthy|degraded|unhealthy)$")]
    status: String,
    /// Each service's status: healthy, unhealthy, restarting, restart_failed, failed, unknown.
    services: BTreeMap<String, String>,
    /// Each service's GPU memory per GPU, from its processes in the last GPU
    /// poll (`health.services[].match`; empty without gpu.per_process).
    gpu_memory: std::collections::BTreeMap<String, Vec<ServiceGpuMemory>>,
    /// RFC 3339, UTC.
    timestamp: String,
}

/// What a service's processes hold on one GPU.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ServiceGpuMemory {
    gpu: u32,
    uuid: String,
    memory_used_bytes: u64,
}

/// DLQ depths from the queue collector's last poll (`None` when queues are
/// disabled or never polled).
fn dlq_stats(state: &AppState) -> Option<DlqSummary> {
    let queues = state.queues.as_ref()?;
    let depths = state.watched.last_depths(&queues.config().all_names());
    if depths.is_empty() {
        return None;
    }
    Some(DlqSummary {
        total: depths.iter().map(|d| d.dlq_depth).sum(),
        by_queue: depths.iter().map(|d| (d.queue.clone(), d.dlq_depth)).collect(),
        queued_jobs: depths.iter().map(|d| d.depth).sum(),
        active_jobs: queues
            .config()
            .processing_suffix
            .is_some()
            .then(|| depths.iter().filter_map(|d| d.active.as_ref()).map(|a| a.active).sum()),
        stuck_jobs: queues
            .config()
            .processing_suffix
            .is_some()
            .then(|| depths.iter().filter_map(|d| d.active.as_ref()).map(|a| a.stuck).sum()),
        queues: depths
            .iter()
            .map(|d| QueueView {
                framework: queues.framework_of(&d.queue),
                dlq: queues.dlq_key(&d.queue),
                queue: d.queue.clone(),
                depth: d.depth,
                dlq_depth: d.dlq_depth,
                oldest_age_seconds: d.oldest_age_seconds,
                active: d.active.as_ref().map(|a| a.active),
                stuck: d.active.as_ref().map(|a| a.stuck),
            })
            .collect(),
    })
}

/// `/api/system/stats`'s body (docs/http-api.md documents each field).
#[derive(Serialize, utoipa::ToSchema)]
pub struct StatsBody {
    /// healthy, degraded or unhealthy.
    status: String,
    services: ServiceCounts,
    gpus: GpuSummary,
    websocket: WsCounts,
    /// Null when queues are disabled or not polled yet.
    dlq: Option<DlqSummary>,
    pipeline: PipelineCounts,
    uptime_seconds: f64,
    started_at: String,
    version: String,
    timestamp: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ServiceCounts {
    total: usize,
    critical: usize,
    /// Services per status (every status, 0 included).
    by_status: std::collections::BTreeMap<String, usize>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct GpuSummary {
    available: bool,
    count: usize,
    /// RFC 3339; null before the first poll.
    last_poll: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct WsCounts {
    clients: i64,
    browser: i64,
    api: i64,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct DlqSummary {
    total: u64,
    by_queue: std::collections::BTreeMap<String, u64>,
    queued_jobs: u64,
    /// Jobs in the processing lists; null without queues.processing_suffix.
    active_jobs: Option<u64>,
    /// Of those, how many are stuck; null without queues.processing_suffix.
    stuck_jobs: Option<u64>,
    /// Each queue from the last poll, in config order.
    queues: Vec<QueueView>,
}

/// One queue from the last poll.
#[derive(Serialize, utoipa::ToSchema)]
pub struct QueueView {
    queue: String,
    /// The job framework whose queue this is (`rq`, `bullmq`,
    /// `dramatiq`, `celery`); absent for the seed's lists.
    #[serde(skip_serializing_if = "Option::is_none")]
    framework: Option<&'static str>,
    /// Its DLQ's key.
    dlq: String,
    /// Jobs waiting (LLEN).
    depth: u64,
    dlq_depth: u64,
    /// Age of the oldest DLQ entry; null when the DLQ is empty or the entry unreadable.
    oldest_age_seconds: Option<f64>,
    /// Jobs in the processing list; null without queues.processing_suffix (or unreadable).
    active: Option<u64>,
    /// Stuck jobs in the processing list; null as active.
    stuck: Option<u64>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct PipelineCounts {
    events_ingested: IngestedCounts,
    events_rejected: u64,
    /// Items per second over the last minute; null without events.
    inference_fps: Option<f64>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct IngestedCounts {
    http: u64,
    redis_stream: u64,
    total: u64,
}

/// `GET /api/system/stats`: system counts in one object (docs/http-api.md documents
/// each field).
#[utoipa::path(get, path = "/api/system/stats", tag = "system",
    responses(
        (status = 200, description = "Services, GPUs, WebSocket, DLQ and pipeline counts in one object", body = StatsBody),
        QueryErrors
    ))]
pub async fn stats(State(state): State<AppState>, _: Query<NoParams>) -> Result<Json<StatsBody>, AppError> {
    let services = state.health.services();
    let mut by_status: std::collections::BTreeMap<String, usize> =
        Status::ALL.iter().map(|s| (s.as_str().to_string(), 0)).collect();
    for s in &services {
        if let Some(n) = by_status.get_mut(s.status.as_str()) {
            *n += 1;
        }
    }
    let snap = state.gpu.snapshot();
    let (browser, api) = state.hub.counts();
    let (http, stream) = state.pipeline.accepted();
    let now = Utc::now();
    // The same overall status as /api/system/health, own dependencies too.
    let mut names = services.iter().map(|s| (s.name.clone(), String::new())).collect();
    let overall = Overall::of(services.iter().map(|s| (&s.status, s.critical)));
    let overall = own_dependencies(&state, &mut names, overall);
    Ok(Json(StatsBody {
        status: overall.as_str().to_string(),
        services: ServiceCounts {
            total: services.len(),
            critical: services.iter().filter(|s| s.critical).count(),
            by_status,
        },
        gpus: GpuSummary {
            available: snap.available,
            count: snap.readings.len(),
            last_poll: snap.recorded_at.as_ref().map(format_time),
        },
        websocket: WsCounts {
            clients: browser + api,
            browser,
            api,
        },
        dlq: dlq_stats(&state),
        pipeline: PipelineCounts {
            events_ingested: IngestedCounts {
                http,
                redis_stream: stream,
                total: http + stream,
            },
            events_rejected: state.pipeline.rejected_total(),
            inference_fps: state.pipeline.fps(),
        },
        uptime_seconds: (now - state.started_at).num_milliseconds() as f64 / 1000.0,
        started_at: format_time(&state.started_at),
        version: env!("CARGO_PKG_VERSION").to_string(),
        timestamp: format_time(&now),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overall_status_follows_criticality() {
        let (h, u, f) = (Status::Healthy, Status::Unhealthy, Status::Failed);
        assert_eq!(Overall::of([]), Overall::Healthy);
        assert_eq!(Overall::of([(&h, true), (&h, false)]), Overall::Healthy);
        assert_eq!(Overall::of([(&h, true), (&u, false)]), Overall::Degraded);
        assert_eq!(Overall::of([(&f, false), (&u, true)]), Overall::Unhealthy);
        assert_eq!(Overall::of([(&u, true), (&h, false)]), Overall::Unhealthy);
    }
}
