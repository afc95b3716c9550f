//! `pipeline`: pipeline-stage ingest over HTTP and the Redis stream.

use std::time::Duration;

use serde::Deserialize;

use super::{de_seconds, invalid, valid_name, ConfigError, Range, NAME_RULE};

/// Pipeline-stage ingest.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Allowed stage names; empty allows the first `max_stages` names seen.
    pub stages: Vec<String>,
    /// Most distinct stage names (and error types) when `stages` is empty, 1–1000.
    pub max_stages: usize,
    /// Buckets of `pipeline_stage_duration_seconds` and
    /// `pipeline_job_duration_seconds`, strictly increasing, seconds.
    pub buckets: Vec<f64>,
    /// The Redis stream input.
    pub stream: StreamConfig,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            stages: Vec::new(),
            max_stages: 50,
            buckets: vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0,
            ],
            stream: StreamConfig::default(),
        }
    }
}

/// The `pipeline:events` stream, read with a consumer group.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamConfig {
    /// Read the stream (it uses `queues.redis_url`).
    pub enabled: bool,
    /// Stream key.
    pub key: String,
    /// Consumer group, created at the stream's start when missing.
    pub group: String,
    /// This daemon's consumer name; empty means the host name.
    pub consumer: String,
    /// Entries read per XREADGROUP, 1–10,000.
    pub batch: usize,
    /// Pending entries of other consumers idle this long are claimed, 1 s–1 day.
    #[serde(deserialize_with = "de_seconds")]
    pub claim_idle: Duration,
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig {
            enabled: true,
            key: "pipeline:events".into(),
            group: "inferwatch".into(),
            consumer: String::new(),
            batch: 1000,
            claim_idle: Duration::from_secs(60),
        }
    }
}

pub const MAX_STAGES: Range = Range::new("pipeline.max_stages", 1.0, 1000.0, "names");
pub const STREAM_BATCH: Range = Range::new("pipeline.stream.batch", 1.0, 10_000.0, "entries");
pub const STREAM_CLAIM_IDLE: Range = Range::new("pipeline.stream.claim_idle", 1.0, 86_400.0, "seconds");

impl PipelineConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        MAX_STAGES.check(self.max_stages as f64)?;
        for (i, stage) in self.stages.iter().enumerate() {
            if !valid_name(stage) {
                return Err(invalid(
                    &format!("pipeline.stages[{i}]"),
                    stage,
                    "not a valid name",
                    NAME_RULE,
                ));
            }
        }
        let b = &self.buckets;
        let increasing = b.windows(2).all(|w| w[0] < w[1]);
        if b.is_empty() || !increasing || b.iter().any(|b| !b.is_finite() || *b <= 0.0) {
            return Err(invalid(
                "pipeline.buckets",
                &format!("{b:?}"),
                "not a strictly increasing list of positive numbers",
                "e.g. [0.01, 0.1, 1, 10, 120]",
            ));
        }
        self.stream.validate()
    }
}

impl StreamConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.key.is_empty() || self.group.is_empty() {
            return Err(invalid(
                "pipeline.stream.key",
                &self.key,
                "empty",
                "a stream key and a group name",
            ));
        }
        STREAM_BATCH.check(self.batch as f64)?;
        STREAM_CLAIM_IDLE.check(self.claim_idle.as_secs_f64())
    }
}
