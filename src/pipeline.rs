//! Pipeline-stage events: parsing, validation with a cardinality guard, and
//! the `pipeline_*` metrics they feed. Both inputs (HTTP batches and the
//! Redis stream) call [`Pipeline::ingest`], so they behave the same.
//!
//! Event kinds:
//! `{"kind":"stage","stage":"detection","duration_seconds":0.042,"status":"ok|error","error_type":"timeout","items":1,"job_id":"..."}`
//! and `{"kind":"job","status":"completed|failed","duration_seconds":93.5,"job_id":"..."}`.
//!
//! Stage names and error types become label values, so they are guarded:
//! stage names come from `pipeline.stages` when set, otherwise the first
//! `pipeline.max_stages` distinct names are accepted and later new names are
//! rejected and counted, never turned into new series. Error types have the
//! same cap.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus::{Histogram, HistogramVec, IntCounter, IntCounterVec};
use serde::{Deserialize, Serialize};

use crate::config::{valid_name, PipelineConfig};
use crate::metrics::{family, histogram, Metrics};

/// Where events came from (`source` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Http,
    RedisStream,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Http => "http",
            Source::RedisStream => "redis_stream",
        }
    }
}

/// Why an event was rejected (`reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    InvalidJson,
    InvalidEvent,
    UnknownStage,
    StageLimit,
    ErrorTypeLimit,
    TooManyEvents,
    BodyTooLarge,
}

impl Reason {
    pub const ALL: [Reason; 7] = [
        Reason::InvalidJson,
        Reason::InvalidEvent,
        Reason::UnknownStage,
        Reason::StageLimit,
        Reason::ErrorTypeLimit,
        Reason::TooManyEvents,
        Reason::BodyTooLarge,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::InvalidJson => "invalid_json",
            Reason::InvalidEvent => "invalid_event",
            Reason::UnknownStage => "unknown_stage",
            Reason::StageLimit => "stage_limit",
            Reason::ErrorTypeLimit => "error_type_limit",
            Reason::TooManyEvents => "too_many_events",
            Reason::BodyTooLarge => "body_too_large",
        }
    }
}

#[derive(Debug, Deserialize, PartialEq, Eq, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum StageStatus {
    Ok,
    Error,
}

#[derive(Debug, Deserialize, PartialEq, Eq, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum JobStatus {
    Completed,
    Failed,
}

/// One event as sent; unknown extra fields are ignored.
#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum RawEvent {
    Stage {
        stage: String,
        duration_seconds: f64,
        status: StageStatus,
        #[serde(default)]
        error_type: Option<String>,
        #[serde(default, deserialize_with = "integral")]
        items: Option<u64>,
        #[serde(default)]
        job_id: Option<String>,
    },
    Job {
        status: JobStatus,
        duration_seconds: f64,
        #[serde(default)]
        job_id: Option<String>,
    },
}

/// A checked event, ready to apply.
#[derive(Debug, PartialEq)]
pub enum Event {
    Stage {
        stage: String,
        duration_seconds: f64,
        error_type: Option<String>,
        items: u64,
    },
    Job {
        completed: bool,
        duration_seconds: f64,
    },
}

/// One rejected event of a batch.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Rejection {
    pub index: usize,
    pub reason: Reason,
    pub detail: String,
}

/// What a batch did.
#[derive(Debug, Default, Serialize, utoipa::ToSchema)]
pub struct IngestReport {
    pub accepted: usize,
    pub rejected: usize,
    /// The first 100 rejections.
    pub errors: Vec<Rejection>,
}

/// Longest accepted duration: a week.
pub const MAX_DURATION: f64 = 7.0 * 86_400.0;
/// Largest `items` of one stage event.
pub const MAX_ITEMS: u64 = 1_000_000_000;
/// Longest `job_id`, in characters.
pub const MAX_JOB_ID: usize = 256;
/// Rejections listed in one report.
const MAX_LISTED: usize = 100;
/// Window of `inference_fps`.
const FPS_WINDOW: Duration = Duration::from_secs(60);

/// Why one pipeline event was refused; the text goes back to the sender.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    #[error("{field} {value:?} must be 1–64 of A-Za-z0-9_.-")]
    Name { field: &'static str, value: String },
    #[error("duration_seconds must be from 0 to {MAX_DURATION}, got {0}")]
    Duration(f64),
    #[error("error_type is only allowed with status error")]
    ErrorTypeWithOk,
    #[error("items must be at most {MAX_ITEMS}, got {0}")]
    Items(u64),
    #[error("job_id must be at most {MAX_JOB_ID} characters")]
    JobId,
}

/// A count given as a JSON integer, or as a number with no fraction
/// (`3.0`), which JSON Schema counts as an integer too.
fn integral<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    use serde::de::Error;
    let Some(n) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    if let Some(v) = n.as_u64() {
        return Ok(Some(v));
    }
    match n.as_f64() {
        Some(f) if f.fract() == 0.0 && (0.0..=u64::MAX as f64).contains(&f) => Ok(Some(f as u64)),
        _ => Err(D::Error::custom(format!(
            "items must be a whole number from 0, got {n}"
        ))),
    }
}

/// Parses and checks one event's shape (not the cardinality guard).
pub fn parse_event(raw: &str) -> Result<Event, EventError> {
    let ev: RawEvent = serde_json::from_str(raw)?;
    let duration_ok = |d: f64| d.is_finite() && (0.0..=MAX_DURATION).contains(&d);
    match ev {
        RawEvent::Stage {
            stage,
            duration_seconds,
            status,
            error_type,
            items,
            job_id,
        } => {
            if !valid_name(&stage) {
                return Err(EventError::Name {
                    field: "stage",
                    value: stage,
                });
            }
            if !duration_ok(duration_seconds) {
                return Err(EventError::Duration(duration_seconds));
            }
            check_job_id(job_id.as_deref())?;
            let error_type = stage_error_type(status, error_type)?;
            let items = items.unwrap_or(0);
            if items > MAX_ITEMS {
                return Err(EventError::Items(items));
            }
            Ok(Event::Stage {
                stage,
                duration_seconds,
                error_type,
                items,
            })
        }
        RawEvent::Job {
            status,
            duration_seconds,
            job_id,
        } => {
            if !duration_ok(duration_seconds) {
                return Err(EventError::Duration(duration_seconds));
            }
            check_job_id(job_id.as_deref())?;
            Ok(Event::Job {
                completed: status == JobStatus::Completed,
                duration_seconds,
            })
        }
    }
}

/// A stage's `error_type`: none when it went well, `unknown` when it
/// failed without one, else the one given (a valid name).
fn stage_error_type(status: StageStatus, error_type: Option<String>) -> Result<Option<String>, EventError> {
    match (status, error_type) {
        (StageStatus::Ok, None) => Ok(None),
        (StageStatus::Ok, Some(_)) => Err(EventError::ErrorTypeWithOk),
        (StageStatus::Error, None) => Ok(Some("unknown".to_string())),
        (StageStatus::Error, Some(t)) if valid_name(&t) => Ok(Some(t)),
        (StageStatus::Error, Some(t)) => Err(EventError::Name {
            field: "error_type",
            value: t,
        }),
    }
}

fn check_job_id(id: Option<&str>) -> Result<(), EventError> {
    match id {
        Some(id) if id.chars().count() > MAX_JOB_ID => Err(EventError::JobId),
        _ => Ok(()),
    }
}

/// Items processed per second over the last minute.
#[derive(Debug, Default)]
struct Rate {
    /// (second since start, items) for the last 60 s.
    buckets: VecDeque<(u64, u64)>,
}

impl Rate {
    fn add(&mut self, now: u64, items: u64) {
        match self.buckets.back_mut() {
            Some((sec, n)) if *sec == now => *n += items,
            _ => self.buckets.push_back((now, items)),
        }
        self.expire(now);
    }

    fn expire(&mut self, now: u64) {
        let window = FPS_WINDOW.as_secs();
        while self.buckets.front().is_some_and(|(sec, _)| sec + window <= now) {
            self.buckets.pop_front();
        }
    }

    /// `None` when nothing was processed in the window.
    fn per_second(&mut self, now: u64) -> Option<f64> {
        self.expire(now);
        if self.buckets.is_empty() {
            return None;
        }
        let items: u64 = self.buckets.iter().map(|(_, n)| n).sum();
        Some(items as f64 / FPS_WINDOW.as_secs_f64())
    }
}

/// Label values admitted so far.
#[derive(Default)]
struct Names {
    stages: HashMap<String, Histogram>,
    error_types: HashSet<String>,
}

/// The pipeline metrics and the guard in front of them.
pub struct Pipeline {
    allowed_stages: HashSet<String>,
    max_names: usize,
    m: Families,
    names: Mutex<Names>,
    rate: Mutex<Rate>,
    started: Instant,
}

/// The `pipeline_*` families, registered with every fixed series created.
struct Families {
    stage_duration: HistogramVec,
    stage_errors: IntCounterVec,
    jobs: IntCounterVec,
    job_duration: Histogram,
    items: IntCounter,
    events: IntCounterVec,
    rejected: IntCounterVec,
}

impl Families {
    fn register(config: &PipelineConfig, metrics: &Metrics) -> Families {
        let stage_duration = histogram(
            "pipeline_stage_duration_seconds",
            "Duration of pipeline stages, from ingested stage events.",
            &["stage"],
            config.buckets.clone(),
        );
        let stage_errors = family::<IntCounterVec>(
            "pipeline_stage_errors_total",
            "Stage events with status error, by stage and error type.",
            &["stage", "error_type"],
        );
        let jobs = family::<IntCounterVec>(
            "pipeline_jobs_total",
            "Finished pipeline jobs by status (completed, failed).",
            &["status"],
        );
        let job_duration = histogram(
            "pipeline_job_duration_seconds",
            "End-to-end duration of finished pipeline jobs.",
            &[],
            config.buckets.clone(),
        )
        .with_label_values::<&str>(&[]);
        let items = family::<IntCounter>(
            "pipeline_items_processed_total",
            "Items (frames, images, meshes) reported by stage events.",
            &[],
        );
        let events = family::<IntCounterVec>(
            "pipeline_events_total",
            "Pipeline events accepted, by input.",
            &["source"],
        );
        let rejected = family::<IntCounterVec>(
            "pipeline_events_rejected_total",
            "Pipeline events rejected, by reason (batch-level refusals count once per request).",
            &["reason"],
        );
        let f = Families {
            stage_duration,
            stage_errors,
            jobs,
            job_duration,
            items,
            events,
            rejected,
        };
        f.add_to(metrics);
        f
    }

    /// Registers every family, each label value known ahead from 0.
    fn add_to(&self, metrics: &Metrics) {
        metrics.add(&self.stage_duration);
        metrics.add(&self.stage_errors);
        metrics.add(&self.jobs);
        metrics.add(&self.job_duration);
        metrics.add(&self.items);
        metrics.add(&self.events);
        metrics.add(&self.rejected);
        for s in ["completed", "failed"] {
            self.jobs.with_label_values(&[s]);
        }
        for s in [Source::Http, Source::RedisStream] {
            self.events.with_label_values(&[s.as_str()]);
        }
        for r in Reason::ALL {
            self.rejected.with_label_values(&[r.as_str()]);
        }
    }
}

impl Pipeline {
    pub fn new(config: &PipelineConfig, metrics: &Metrics) -> Pipeline {
        let m = Families::register(config, metrics);
        let mut names = Names::default();
        for s in &config.stages {
            names
                .stages
                .insert(s.clone(), m.stage_duration.with_label_values(&[s.as_str()]));
        }
        Pipeline {
            allowed_stages: config.stages.iter().cloned().collect(),
            max_names: config.max_stages,
            m,
            names: Mutex::new(names),
            rate: Mutex::new(Rate::default()),
            started: Instant::now(),
        }
    }

    /// Counts a refusal of a whole batch (too large, not JSON).
    pub fn reject_batch(&self, reason: Reason) {
        self.m.rejected.with_label_values(&[reason.as_str()]).inc();
    }

    /// Checks and applies `raw` events (each one event's JSON); invalid
    /// ones are rejected with their index and reason, valid ones applied.
    pub fn ingest<'a>(&self, source: Source, raw: impl IntoIterator<Item = &'a str>) -> IngestReport {
        let mut report = IngestReport::default();
        let mut rejected_by: HashMap<Reason, u64> = HashMap::new();
        let mut items = 0u64;
        let mut names = self.names.lock().unwrap_or_else(|e| e.into_inner());
        for (index, text) in raw.into_iter().enumerate() {
            let outcome = parse_event(text)
                .map_err(|e| (Reason::InvalidEvent, e.to_string()))
                .and_then(|ev| self.admit(&mut names, ev));
            match outcome {
                Ok(ev) => {
                    report.accepted += 1;
                    items += self.apply(&names, ev);
                }
                Err((reason, detail)) => {
                    report.rejected += 1;
                    *rejected_by.entry(reason).or_default() += 1;
                    if report.errors.len() < MAX_LISTED {
                        report.errors.push(Rejection { index, reason, detail });
                    }
                }
            }
        }
        drop(names);
        self.m
            .events
            .with_label_values(&[source.as_str()])
            .inc_by(report.accepted as u64);
        for (reason, n) in rejected_by {
            self.m.rejected.with_label_values(&[reason.as_str()]).inc_by(n);
        }
        if items > 0 {
            self.m.items.inc_by(items);
        }
        if report.accepted > 0 {
            // Any accepted event means the pipeline is reporting: the rate
            // is 0, not unknown, when it processed nothing.
            let now = self.started.elapsed().as_secs();
            self.rate.lock().unwrap_or_else(|e| e.into_inner()).add(now, items);
        }
        report
    }

    /// The cardinality guard.
    fn admit(&self, names: &mut Names, ev: Event) -> Result<Event, (Reason, String)> {
        if let Event::Stage { stage, error_type, .. } = &ev {
            if !names.stages.contains_key(stage) {
                if !self.allowed_stages.is_empty() {
                    let mut known: Vec<_> = self.allowed_stages.iter().cloned().collect();
                    known.sort();
                    return Err((
                        Reason::UnknownStage,
                        format!("stage {stage:?} is not in pipeline.stages: {known:?}"),
                    ));
                }
                if names.stages.len() >= self.max_names {
                    return Err((
                        Reason::StageLimit,
                        format!(
                            "stage {stage:?} would be stage name number {}; at most {} distinct names are accepted (pipeline.max_stages), list them in pipeline.stages",
                            names.stages.len() + 1,
                            self.max_names
                        ),
                    ));
                }
                let h = self.m.stage_duration.with_label_values(&[stage.as_str()]);
                names.stages.insert(stage.clone(), h);
            }
            if let Some(t) = error_type {
                if !names.error_types.contains(t) {
                    if names.error_types.len() >= self.max_names {
                        return Err((
                            Reason::ErrorTypeLimit,
                            format!(
                                "error_type {t:?} would be error type number {}; at most {} distinct error types are accepted",
                                names.error_types.len() + 1,
                                self.max_names
                            ),
                        ));
                    }
                    names.error_types.insert(t.clone());
                }
            }
        }
        Ok(ev)
    }

    /// Applies an admitted event; returns its items.
    fn apply(&self, names: &Names, ev: Event) -> u64 {
        match ev {
            Event::Stage {
                stage,
                duration_seconds,
                error_type,
                items,
            } => {
                if let Some(h) = names.stages.get(&stage) {
                    h.observe(duration_seconds);
                }
                if let Some(t) = error_type {
                    self.m
                        .stage_errors
                        .with_label_values(&[stage.as_str(), t.as_str()])
                        .inc();
                }
                items
            }
            Event::Job {
                completed,
                duration_seconds,
            } => {
                let status = if completed { "completed" } else { "failed" };
                self.m.jobs.with_label_values(&[status]).inc();
                self.m.job_duration.observe(duration_seconds);
                0
            }
        }
    }

    /// Items per second over the last 60 s; `None` when no event arrived.
    pub fn fps(&self) -> Option<f64> {
        let now = self.started.elapsed().as_secs();
        self.rate.lock().unwrap_or_else(|e| e.into_inner()).per_second(now)
    }

    /// Accepted events by source: `(http, redis_stream)`.
    pub fn accepted(&self) -> (u64, u64) {
        (
            self.m.events.with_label_values(&[Source::Http.as_str()]).get(),
            self.m.events.with_label_values(&[Source::RedisStream.as_str()]).get(),
        )
    }

    /// Rejected events, all reasons.
    pub fn rejected_total(&self) -> u64 {
        Reason::ALL
            .iter()
            .map(|r| self.m.rejected.with_label_values(&[r.as_str()]).get())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipeline(stages: &[&str], max: usize) -> Pipeline {
        let config = PipelineConfig {
            stages: stages.iter().map(|s| s.to_string()).collect(),
            max_stages: max,
            ..PipelineConfig::default()
        };
        Pipeline::new(&config, &Metrics::new())
    }

    #[test]
    fn parses_both_kinds_and_defaults() {
        let ev =
            parse_event(r#"{"kind":"stage","stage":"detection","duration_seconds":0.042,"status":"error"}"#).unwrap();
        assert_eq!(
            ev,
            Event::Stage {
                stage: "detection".into(),
                duration_seconds: 0.042,
                error_type: Some("unknown".into()),
                items: 0
            }
        );
        let ev =
            parse_event(r#"{"kind":"job","status":"failed","duration_seconds":93.5,"job_id":"j","extra":1}"#).unwrap();
        assert_eq!(
            ev,
            Event::Job {
                completed: false,
                duration_seconds: 93.5
            }
        );
        // JSON Schema's integers include 4.0; 4.5 and -1 are not counts.
        let whole = r#"{"kind":"stage","stage":"d","duration_seconds":1,"status":"ok","items":4.0}"#;
        assert!(matches!(parse_event(whole).unwrap(), Event::Stage { items: 4, .. }));
        for bad in ["4.5", "-1", "\"4\""] {
            let raw = format!(r#"{{"kind":"stage","stage":"d","duration_seconds":1,"status":"ok","items":{bad}}}"#);
            assert!(parse_event(&raw).is_err(), "{raw}");
        }
        let null = r#"{"kind":"stage","stage":"d","duration_seconds":1,"status":"ok","items":null,"error_type":null}"#;
        assert!(matches!(parse_event(null).unwrap(), Event::Stage { items: 0, .. }));
    }

    #[test]
    fn bad_events_say_why() {
        let cases = [
            (r#"{"stage":"a","duration_seconds":1,"status":"ok"}"#, "kind"),
            (r#"{"kind":"frame"}"#, "unknown variant"),
            (
                r#"{"kind":"stage","stage":"a b","duration_seconds":1,"status":"ok"}"#,
                "A-Za-z0-9_.-",
            ),
            (
                r#"{"kind":"stage","stage":"a","duration_seconds":-1,"status":"ok"}"#,
                "duration_seconds",
            ),
            (
                r#"{"kind":"stage","stage":"a","duration_seconds":1,"status":"maybe"}"#,
                "unknown variant",
            ),
            (
                r#"{"kind":"stage","stage":"a","duration_seconds":1,"status":"ok","error_type":"x"}"#,
                "only allowed",
            ),
            (r#"{"kind":"job","status":"completed"}"#, "duration_seconds"),
            ("[1]", "invalid type"),
        ];
        for (raw, want) in cases {
            let err = parse_event(raw).unwrap_err().to_string();
            assert!(err.contains(want), "{raw}: {err}");
        }
    }

    #[test]
    fn stage_cap_rejects_new_names_but_keeps_known_ones() {
        let p = pipeline(&[], 2);
        let ev =
            |s: &str| format!(r#"{{"kind":"stage","stage":"{s}","duration_seconds":0.1,"status":"ok","items":2}}"#);
        let batch = [ev("a"), ev("b"), ev("c"), ev("a")];
        let r = p.ingest(Source::Http, batch.iter().map(String::as_str));
        assert_eq!((r.accepted, r.rejected), (3, 1));
        assert_eq!(r.errors[0].index, 2);
        assert_eq!(r.errors[0].reason, Reason::StageLimit);
        assert_eq!(p.m.stage_duration.with_label_values(&["a"]).get_sample_count(), 2);
        assert_eq!(p.m.rejected.with_label_values(&["stage_limit"]).get(), 1);
        assert_eq!(p.m.items.get(), 6);
    }

    #[test]
    fn configured_stages_are_the_only_ones() {
        let p = pipeline(&["detection"], 50);
        let r = p.ingest(
            Source::RedisStream,
            [r#"{"kind":"stage","stage":"analysis","duration_seconds":1,"status":"ok"}"#],
        );
        assert_eq!(r.errors[0].reason, Reason::UnknownStage);
        assert!(r.errors[0].detail.contains("detection"));
    }

    #[test]
    fn fps_is_null_without_events_and_averages_a_minute() {
        let mut r = Rate::default();
        assert_eq!(r.per_second(0), None);
        r.add(0, 60);
        r.add(30, 60);
        assert_eq!(r.per_second(30), Some(2.0));
        assert_eq!(r.per_second(60), Some(1.0), "the first second left the window");
        assert_eq!(r.per_second(90), None);
    }
}
