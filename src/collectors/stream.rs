//! The Redis stream input of pipeline events: reads `pipeline.stream.key`
//! with a consumer group and feeds each entry's `event` field to
//! [`crate::pipeline::Pipeline::ingest`]. An entry is acknowledged only
//! after it has been applied (or rejected), so delivery is at least once.
//!
//! On start (and after every reconnect) the reader first re-reads its own
//! pending entries (a previous run of this consumer that died before
//! acknowledging), then claims other consumers' entries idle for
//! `claim_idle` with XAUTOCLAIM, then reads new entries. The group is
//! created at the start of the stream, so events written while no daemon
//! ran are all counted.
//!
//! It is a [`Collector`] like the others: one round reads until the stream
//! is drained or `BLOCK` has passed, so the runner's
//! `inferwatch_collector_*{collector="stream"}` series show an outage, and
//! the runner's interval paces reconnects.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::streams::{StreamId, StreamReadOptions, StreamReadReply};
use redis::Value;
use tokio::time::Instant;

use super::{CollectError, Collector};
use crate::config::StreamConfig;
use crate::pipeline::{Pipeline, Source};
use crate::redis_conn::RedisConn;

/// How long one XREADGROUP waits for new entries.
const BLOCK: Duration = Duration::from_secs(1);

/// The registry entry: needs the queues' Redis.
pub const ENTRY: super::Entry = super::Entry {
    name: "stream",
    about: "pipeline events from the Redis stream (pipeline.stream)",
    enabled,
    switch: Some(|c, on| c.pipeline.stream.enabled = on),
    build,
};

fn enabled(c: &crate::config::Config) -> bool {
    c.queues.enabled && c.pipeline.stream.enabled
}

fn build(sh: &super::Shared) -> Result<super::Built, super::StartError> {
    let config = sh.config.get();
    let fail = |reason: String| super::StartError {
        collector: "stream",
        reason,
    };
    let target = crate::dlq::redis_target(&config.queues).map_err(|e| fail(e.to_string()))?;
    let reader = StreamReader::new(config.pipeline.stream.clone(), target, sh.pipeline.clone())
        .map_err(|e| fail(format!("invalid queues.redis_url: {e}")))?;
    super::Built::polled(reader)
}

pub struct StreamReader {
    config: StreamConfig,
    consumer: String,
    redis: RedisConn,
    pipeline: Arc<Pipeline>,
    /// The connection of the current session, set up (group created, our
    /// pending entries re-read, idle ones claimed); `None` after an error.
    session: Option<MultiplexedConnection>,
    next_claim: Instant,
}

impl Collector for StreamReader {
    fn name(&self) -> &'static str {
        "stream"
    }

    fn interval(&self) -> Duration {
        BLOCK
    }

    /// One read can block for `BLOCK`, and Redis may take its response
    /// timeout on top.
    fn timeout(&self) -> Duration {
        BLOCK * 2 + Duration::from_secs(5)
    }

    async fn collect(&mut self) -> Result<(), CollectError> {
        let result = self.round().await;
        if result.is_err() {
            // The next round sets the session up again.
            self.session = None;
        }
        result.map_err(|e| CollectError::Failed(format!("pipeline stream {} unavailable: {e}", self.config.key)))
    }
}

impl StreamReader {
    /// `target` is the queues' Redis (`dlq::redis_target`).
    pub fn new(
        config: StreamConfig,
        target: crate::redis_conn::Target,
        pipeline: Arc<Pipeline>,
    ) -> Result<StreamReader, redis::RedisError> {
        let consumer = if config.consumer.is_empty() {
            hostname()
        } else {
            config.consumer.clone()
        };
        Ok(StreamReader {
            redis: RedisConn::new(target, BLOCK + Duration::from_secs(5)),
            config,
            consumer,
            pipeline,
            session: None,
            next_claim: Instant::now(),
        })
    }

    async fn con(&self) -> redis::RedisResult<MultiplexedConnection> {
        let r = self.redis.get().await;
        self.redis.check(r)
    }

    /// One round: sets the session up if needed, then reads new entries
    /// until the stream is drained or `BLOCK` has passed, claiming idle
    /// entries when `claim_idle` is due.
    async fn round(&mut self) -> redis::RedisResult<()> {
        let mut con = match self.session.clone() {
            Some(c) => c,
            None => {
                let c = self.set_up().await?;
                self.session = Some(c.clone());
                c
            }
        };
        let started = Instant::now();
        loop {
            let left = BLOCK.saturating_sub(started.elapsed());
            let n = self
                .read(&mut con, ">", Some(left.max(Duration::from_millis(1))))
                .await?;
            if Instant::now() >= self.next_claim {
                self.claim(&mut con).await?;
                self.next_claim = Instant::now() + self.config.claim_idle;
            }
            if n == 0 || started.elapsed() >= BLOCK {
                return Ok(());
            }
        }
    }

    /// A new session: the group exists, our own pending entries (from a run
    /// that died mid-batch) are applied, idle ones claimed.
    async fn set_up(&mut self) -> redis::RedisResult<MultiplexedConnection> {
        let (key, group) = (self.config.key.as_str(), self.config.group.as_str());
        let mut con = self.con().await?;
        let created: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg(&["CREATE", key, group, "0", "MKSTREAM"])
            .query_async(&mut con)
            .await;
        match created {
            Ok(()) => tracing::info!(stream = key, group, "Created the pipeline stream's consumer group."),
            Err(e) if e.code() == Some("BUSYGROUP") => {}
            Err(e) => return self.redis.check(Err(e)),
        }
        tracing::info!(stream = key, group, consumer = %self.consumer, "Reading pipeline events from the stream.");
        while self.read(&mut con, "0", None).await? > 0 {}
        self.claim(&mut con).await?;
        self.next_claim = Instant::now() + self.config.claim_idle;
        Ok(con)
    }

    /// One XREADGROUP; applies and acknowledges what it got.
    async fn read(
        &self,
        con: &mut redis::aio::MultiplexedConnection,
        id: &str,
        block: Option<Duration>,
    ) -> redis::RedisResult<usize> {
        let mut opts = StreamReadOptions::default()
            .group(&self.config.group, &self.consumer)
            .count(self.config.batch);
        if let Some(b) = block {
            opts = opts.block(b.as_millis() as usize);
        }
        let r: redis::RedisResult<Option<StreamReadReply>> = redis::cmd("XREADGROUP")
            .arg(&opts)
            .arg("STREAMS")
            .arg(&self.config.key)
            .arg(id)
            .query_async(con)
            .await;
        let reply = self.redis.check(r)?;
        let entries: Vec<StreamId> = reply
            .map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect())
            .unwrap_or_default();
        self.apply_and_ack(con, entries).await
    }

    /// XAUTOCLAIMs entries other consumers left idle, applying each batch.
    async fn claim(&self, con: &mut redis::aio::MultiplexedConnection) -> redis::RedisResult<()> {
        let mut cursor = "0-0".to_string();
        loop {
            let r: redis::RedisResult<redis::streams::StreamAutoClaimReply> = redis::cmd("XAUTOCLAIM")
                .arg(&self.config.key)
                .arg(&self.config.group)
                .arg(&self.consumer)
                .arg(self.config.claim_idle.as_millis() as u64)
                .arg(&cursor)
                .arg("COUNT")
                .arg(self.config.batch)
                .query_async(con)
                .await;
            let reply = self.redis.check(r)?;
            let n = reply.claimed.len();
            if n > 0 {
                tracing::info!(stream = %self.config.key, claimed = n, "Claimed pipeline events a dead consumer left pending.");
            }
            self.apply_and_ack(con, reply.claimed).await?;
            cursor = reply.next_stream_id;
            if cursor == "0-0" {
                return Ok(());
            }
        }
    }

    async fn apply_and_ack(
        &self,
        con: &mut redis::aio::MultiplexedConnection,
        entries: Vec<StreamId>,
    ) -> redis::RedisResult<usize> {
        if entries.is_empty() {
            return Ok(0);
        }
        // An entry without a readable `event` field is still acknowledged
        // (and counted as rejected), or it would come back forever.
        let texts: Vec<String> = entries
            .iter()
            .map(|e| match e.map.get("event") {
                Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
                Some(Value::SimpleString(s)) => s.clone(),
                _ => String::new(),
            })
            .collect();
        let report = self
            .pipeline
            .ingest(Source::RedisStream, texts.iter().map(String::as_str));
        if report.rejected > 0 {
            tracing::debug!(rejected = report.rejected, first = ?report.errors.first(), "Rejected pipeline events from the stream.");
        }
        let ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
        let r: redis::RedisResult<u64> = redis::cmd("XACK")
            .arg(&self.config.key)
            .arg(&self.config.group)
            .arg(&ids)
            .query_async(con)
            .await;
        self.redis.check(r)?;
        Ok(entries.len())
    }
}

/// The host name, for the default consumer name.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "inferwatch".into())
}
