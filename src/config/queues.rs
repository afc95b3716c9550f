//! `queues`: the Redis job queues, their DLQs, and the listing limits.

use std::time::Duration;

use serde::Deserialize;

use super::{de_seconds, invalid, valid_name, ConfigError, Range, NAME_RULE};
use super::{reasons, Reload};

/// Redis job queues and their DLQs.
#[derive(Reload, Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueuesConfig {
    /// Switch the queue collector and the DLQ endpoints off.
    #[reload(kept = reasons::RESTART)]
    pub enabled: bool,
    /// `redis://[[USER]:PASSWORD@]HOST:PORT[/DB]`, or `rediss://` for TLS
    /// (see `tls`). With ACLs, name the user in the URL and keep the
    /// password in `password_file`.
    #[reload(kept = reasons::REDIS)]
    pub redis_url: String,
    /// TLS for a `rediss://` URL: `ca_file` (trusted instead of the system
    /// roots), `cert_file` and `key_file` (a client certificate), and
    /// `insecure_skip_verify`.
    #[reload(kept = reasons::REDIS)]
    pub tls: Option<super::ServiceTls>,
    /// A file holding the Redis password (only its owner may read it); it
    /// wins over a password in the URL.
    #[reload(kept = reasons::REDIS)]
    pub password_file: Option<std::path::PathBuf>,
    /// Base queue names (1–64 of `A-Za-z0-9_.-`); each has a DLQ `<dlq_prefix><name>`.
    #[reload(live)]
    pub names: Vec<String>,
    /// Prefix of the DLQ keys, 1–32 characters.
    #[reload(kept = reasons::KEYS)]
    pub dlq_prefix: String,
    /// Seconds between depth polls, 0.1–3600.
    #[serde(deserialize_with = "de_seconds")]
    #[reload(live)]
    pub poll_interval: Duration,
    /// The end producers push to: `left` (LPUSH, workers BRPOP) or `right`
    /// (RPUSH, workers BLPOP). Requeued jobs go to the same end.
    #[reload(live)]
    pub push_side: PushSide,
    /// How long a cleared DLQ's archive key lives, 60 s–365 days.
    #[serde(deserialize_with = "de_seconds")]
    #[reload(live)]
    pub clear_archive_ttl: Duration,
    /// Jobs moved per atomic step of a requeue, 1–10,000.
    #[reload(live)]
    pub requeue_batch: usize,
    /// A listed entry larger than this is shown truncated, 256 B–16 MiB.
    #[reload(live)]
    pub list_entry_max_bytes: usize,
    /// Bytes of entries one listing page may carry; `limit` shrinks to fit,
    /// 64 KiB–256 MiB and at least `list_entry_max_bytes`.
    #[reload(live)]
    pub list_page_max_bytes: usize,
    /// Entries one search request (or an id lookup) reads at most,
    /// 1,000–10,000,000.
    #[reload(live)]
    pub search_scan_max: u64,
    /// Suffix of each queue's processing list (reliable-queue workers
    /// `BLMOVE <queue> <queue><suffix>`), 1–32 characters; unset, jobs in
    /// flight are not watched.
    #[reload(kept = reasons::KEYS)]
    pub processing_suffix: Option<String>,
    /// A job in the processing list longer than this is stuck, 1 s–30 days.
    #[serde(deserialize_with = "de_seconds")]
    #[reload(live)]
    pub processing_stuck_after: Duration,
    /// How long the job at a queue's consumer end may wait before
    /// `QueueWaitTooLong` fires (exported as `job_queue_max_wait_seconds`),
    /// 1 s–30 days.
    #[serde(deserialize_with = "de_seconds")]
    #[reload(live)]
    pub max_wait: Duration,
    /// `max_wait` per queue, for the queues named.
    #[reload(live)]
    pub max_wait_by_queue: std::collections::BTreeMap<String, String>,
    /// Redis streams whose consumer groups' lag and pending counts are
    /// exported (besides the daemon's own `pipeline.stream`).
    #[reload(kept = reasons::RESTART)]
    pub streams: Vec<StreamWatch>,
    /// With a Sentinel URL, how long each requeue batch waits for one
    /// replica to confirm it (`WAIT 1`), 0.01–60 s.
    #[serde(deserialize_with = "de_seconds")]
    #[reload(live)]
    pub replica_wait: Duration,
    /// RQ's queues (python-rq), read where RQ's own source keeps them
    /// (docs/job-frameworks.md); each appears as `rq:<queue>`.
    #[reload(live)]
    pub rq: Option<RqQueues>,
    /// BullMQ's queues, each appearing as `bullmq:<queue>`.
    #[reload(live)]
    pub bullmq: Option<BullmqQueues>,
    /// Dramatiq's queues (its Redis broker), each appearing as
    /// `dramatiq:<queue>`.
    #[reload(live)]
    pub dramatiq: Option<DramatiqQueues>,
    /// Celery's queues (kombu's Redis transport), read only, each
    /// appearing as `celery:<queue>`.
    #[reload(live)]
    pub celery: Option<CeleryQueues>,
}

/// The queues of one RQ deployment.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RqQueues {
    /// Queue names as RQ knows them (`Queue('default')`), 1–64 of
    /// `A-Za-z0-9_.-`.
    pub queues: Vec<String>,
    /// RQ's key prefix with its colon (`RQ_KEY_PREFIX` in rq 3, `rq` by
    /// default): `rq:queue:<q>`, `rq:failed:<q>`, `rq:job:<id>`.
    #[serde(default = "default_rq_prefix")]
    pub prefix: String,
}

fn default_rq_prefix() -> String {
    "rq:".into()
}

/// The queues of one BullMQ deployment.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BullmqQueues {
    /// Queue names as BullMQ knows them (`new Queue('render')`), 1–64 of
    /// `A-Za-z0-9_.-`.
    pub queues: Vec<String>,
    /// BullMQ's `prefix` option, without the colon (`bull` by default):
    /// `bull:<q>:wait`, `bull:<q>:failed`, `bull:<q>:<id>`.
    #[serde(default = "default_bullmq_prefix")]
    pub prefix: String,
}

fn default_bullmq_prefix() -> String {
    "bull".into()
}

/// The queues of one Dramatiq Redis broker.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DramatiqQueues {
    /// Queue names as Dramatiq knows them (`queue_name=`, `default` by
    /// default), 1–64 of `A-Za-z0-9_.-`.
    pub queues: Vec<String>,
    /// The broker's `namespace` (`dramatiq` by default): `dramatiq:<q>`,
    /// `dramatiq:<q>.msgs`, `dramatiq:<q>.XQ`.
    #[serde(default = "default_dramatiq_namespace")]
    pub namespace: String,
}

fn default_dramatiq_namespace() -> String {
    "dramatiq".into()
}

/// The queues of one Celery app on kombu's Redis transport (read only).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CeleryQueues {
    /// Queue names (`celery` by default in Celery), 1–64 of
    /// `A-Za-z0-9_.-`.
    pub queues: Vec<String>,
    /// The transport's `visibility_timeout` (kombu's default, 1 h): a
    /// delivery unacknowledged for longer counts as stuck.
    #[serde(default = "default_visibility_timeout", deserialize_with = "super::de_seconds")]
    pub visibility_timeout: Duration,
}

fn default_visibility_timeout() -> Duration {
    Duration::from_secs(3600)
}

/// One watched stream and consumer group.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StreamWatch {
    pub stream: String,
    pub group: String,
}

impl Default for QueuesConfig {
    fn default() -> Self {
        QueuesConfig {
            enabled: true,
            redis_url: "redis://127.0.0.1:6379/0".into(),
            tls: None,
            password_file: None,
            names: vec!["detection_queue".into(), "analysis_queue".into()],
            dlq_prefix: "dlq:".into(),
            poll_interval: Duration::from_secs(5),
            push_side: PushSide::Left,
            clear_archive_ttl: Duration::from_secs(7 * 86_400),
            requeue_batch: 1000,
            list_entry_max_bytes: 64 * 1024,
            list_page_max_bytes: 8 * 1024 * 1024,
            search_scan_max: 50_000,
            processing_suffix: None,
            processing_stuck_after: Duration::from_secs(30 * 60),
            max_wait: Duration::from_secs(10 * 60),
            max_wait_by_queue: Default::default(),
            streams: Vec::new(),
            replica_wait: Duration::from_secs(1),
            rq: None,
            bullmq: None,
            dramatiq: None,
            celery: None,
        }
    }
}

/// Which end of a list producers push to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PushSide {
    Left,
    Right,
}

pub const POLL_INTERVAL: Range = Range::new("queues.poll_interval", 0.1, 3600.0, "seconds");
pub const CLEAR_ARCHIVE_TTL: Range = Range::new("queues.clear_archive_ttl", 60.0, 365.0 * 86_400.0, "seconds");
pub const REQUEUE_BATCH: Range = Range::new("queues.requeue_batch", 1.0, 10_000.0, "jobs");
pub const LIST_ENTRY_MAX_BYTES: Range =
    Range::new("queues.list_entry_max_bytes", 256.0, 16.0 * 1024.0 * 1024.0, "bytes");
pub const PROCESSING_STUCK_AFTER: Range = Range::new("queues.processing_stuck_after", 1.0, 30.0 * 86_400.0, "seconds");
pub const REPLICA_WAIT: Range = Range::new("queues.replica_wait", 0.01, 60.0, "seconds");
pub const MAX_WAIT: Range = Range::new("queues.max_wait", 1.0, 30.0 * 86_400.0, "seconds");
pub const SEARCH_SCAN_MAX: Range = Range::new("queues.search_scan_max", 1000.0, 10_000_000.0, "entries");
/// The lower bound is also `queues.list_entry_max_bytes`.
pub const LIST_PAGE_MAX_BYTES: Range = Range::new(
    "queues.list_page_max_bytes",
    64.0 * 1024.0,
    256.0 * 1024.0 * 1024.0,
    "bytes (and at least queues.list_entry_max_bytes)",
);

/// What `queues.redis_url` may be.
pub const REDIS_URL_RULE: &str = "redis://[[USER]:PASSWORD@]HOST:PORT[/DB], rediss:// for TLS, or redis+sentinel://[[USER]:PASSWORD@]HOST:PORT[,HOST:PORT...]/MASTER[/DB]";

impl QueuesConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        // The scheme here; the Redis client parses the rest, once, where the
        // connection is made (dlq::redis_target, which
        // crate::check_config runs for check-config, startup and reload).
        let url = self.redis_url.as_str();
        let tls_url = url.starts_with("rediss://") || url.starts_with("rediss+sentinel://");
        if !(url.starts_with("redis://") || tls_url || crate::redis_conn::is_sentinel_url(url)) {
            return Err(invalid("queues.redis_url", url, "not a Redis URL", REDIS_URL_RULE));
        }
        if let Some(tls) = &self.tls {
            if !tls_url {
                return Err(invalid(
                    "queues.tls",
                    "set",
                    "only for a rediss:// (or rediss+sentinel://) URL",
                    "a rediss://HOST:PORT queues.redis_url, or no tls",
                ));
            }
            tls.validate("queues.tls")?;
        }
        self.password()?;
        self.validate_names()?;
        if self.dlq_prefix.is_empty() || self.dlq_prefix.len() > 32 {
            return Err(invalid(
                "queues.dlq_prefix",
                &self.dlq_prefix,
                "empty or too long",
                "1–32 characters, e.g. dlq:",
            ));
        }
        POLL_INTERVAL.check(self.poll_interval.as_secs_f64())?;
        CLEAR_ARCHIVE_TTL.check(self.clear_archive_ttl.as_secs_f64())?;
        REQUEUE_BATCH.check(self.requeue_batch as f64)?;
        LIST_ENTRY_MAX_BYTES.check(self.list_entry_max_bytes as f64)?;
        SEARCH_SCAN_MAX.check(self.search_scan_max as f64)?;
        PROCESSING_STUCK_AFTER.check(self.processing_stuck_after.as_secs_f64())?;
        if let Some(suffix) = &self.processing_suffix {
            self.validate_suffix(suffix)?;
        }
        self.max_wait_by_queue()?;
        REPLICA_WAIT.check(self.replica_wait.as_secs_f64())?;
        self.validate_streams()?;
        self.validate_frameworks()?;
        LIST_PAGE_MAX_BYTES
            .at_least(self.list_entry_max_bytes as f64)
            .check(self.list_page_max_bytes as f64)
    }

    /// The suffix must give keys of their own: not empty, not a DLQ or
    /// archive key, and no processing list that is another queue.
    fn validate_suffix(&self, suffix: &str) -> Result<(), ConfigError> {
        let key = "queues.processing_suffix";
        let rule = "1–32 characters, no whitespace, e.g. :processing";
        if suffix.is_empty()
            || suffix.chars().count() > 32
            || suffix.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(invalid(key, suffix, "empty, too long or holding whitespace", rule));
        }
        for name in &self.names {
            let list = format!("{name}{suffix}");
            if self.names.contains(&list) || list.starts_with(&self.dlq_prefix) {
                return Err(invalid(
                    key,
                    suffix,
                    "names a processing list that is a queue or DLQ key",
                    &format!("a suffix whose lists are not queues or DLQs ({list} is)"),
                ));
            }
        }
        Ok(())
    }

    /// The password from `password_file`, if set.
    pub fn password(&self) -> Result<Option<String>, ConfigError> {
        let Some(path) = &self.password_file else {
            return Ok(None);
        };
        super::read_secret_file(path).map(Some).map_err(|e| {
            let (problem, allowed) = e.describe();
            invalid("queues.password_file", &path.display().to_string(), problem, &allowed)
        })
    }

    /// The wait threshold of each configured queue.
    pub fn max_wait_by_queue(&self) -> Result<Vec<(String, Duration)>, ConfigError> {
        MAX_WAIT.check(self.max_wait.as_secs_f64())?;
        let all = self.all_names();
        for (name, text) in &self.max_wait_by_queue {
            let key = format!("queues.max_wait_by_queue.{name}");
            if !all.contains(name) {
                return Err(invalid(&key, name, "not a configured queue", &all.join(", ")));
            }
            let secs = super::parse_duration(text)
                .map_err(|_| invalid(&key, text, "not a duration", "a duration such as 90s, 5m or 2h"))?;
            MAX_WAIT.check_at(&key, secs)?;
        }
        Ok(all
            .into_iter()
            .map(|n| {
                let own = self
                    .max_wait_by_queue
                    .get(&n)
                    .and_then(|t| super::parse_duration(t).ok());
                (n, own.map(Duration::from_secs_f64).unwrap_or(self.max_wait))
            })
            .collect())
    }

    /// Every queue as its `queue` label reads: the seed's names, then each
    /// job framework's as `<framework>:<queue>` (`rq:default`).
    pub fn all_names(&self) -> Vec<String> {
        let mut out = self.names.clone();
        let frameworks = [
            ("rq", self.rq.as_ref().map(|r| &r.queues)),
            ("bullmq", self.bullmq.as_ref().map(|r| &r.queues)),
            ("dramatiq", self.dramatiq.as_ref().map(|r| &r.queues)),
            ("celery", self.celery.as_ref().map(|r| &r.queues)),
        ];
        for (name, queues) in frameworks {
            out.extend(queues.into_iter().flatten().map(|q| format!("{name}:{q}")));
        }
        out
    }

    /// Stream keys and group names: 1–256 characters, no whitespace.
    fn validate_streams(&self) -> Result<(), ConfigError> {
        for (i, w) in self.streams.iter().enumerate() {
            for (field, value) in [("stream", &w.stream), ("group", &w.group)] {
                if value.is_empty() || value.len() > 256 || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    return Err(invalid(
                        &format!("queues.streams[{i}].{field}"),
                        value,
                        "empty, too long or holding whitespace",
                        "1–256 characters without whitespace",
                    ));
                }
            }
        }
        Ok(())
    }

    /// RQ's queues: valid names, once each, and a prefix of 1–32
    /// characters without whitespace.
    fn validate_frameworks(&self) -> Result<(), ConfigError> {
        if let Some(rq) = &self.rq {
            validate_framework("rq", &rq.queues, ("prefix", &rq.prefix, "rq:"))?;
        }
        if let Some(b) = &self.bullmq {
            validate_framework("bullmq", &b.queues, ("prefix", &b.prefix, "bull"))?;
        }
        if let Some(d) = &self.dramatiq {
            validate_framework("dramatiq", &d.queues, ("namespace", &d.namespace, "dramatiq"))?;
        }
        if let Some(c) = &self.celery {
            validate_queue_names("queues.celery.queues", &c.queues)?;
            let v = c.visibility_timeout;
            if v < Duration::from_secs(1) || v > Duration::from_secs(7 * 86_400) {
                return Err(invalid(
                    "queues.celery.visibility_timeout",
                    &format!("{v:?}"),
                    "out of range",
                    "1s–7d, the transport's visibility_timeout",
                ));
            }
        }
        Ok(())
    }

    fn validate_names(&self) -> Result<(), ConfigError> {
        validate_queue_names("queues.names", &self.names)
    }
}

/// Queue names under `key`: at least one, each valid, each once.
/// A job framework's section: valid queue names, once each, and a key
/// prefix (`key`, its value, an example) of 1–32 characters without
/// whitespace.
fn validate_framework(name: &str, queues: &[String], prefix: (&str, &str, &str)) -> Result<(), ConfigError> {
    validate_queue_names(&format!("queues.{name}.queues"), queues)?;
    let (key, p, example) = prefix;
    if p.is_empty() || p.chars().count() > 32 || p.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(
            &format!("queues.{name}.{key}"),
            p,
            "empty, too long or holding whitespace",
            &format!("1–32 characters, e.g. {example}"),
        ));
    }
    Ok(())
}

fn validate_queue_names(key: &str, names: &[String]) -> Result<(), ConfigError> {
    if names.is_empty() {
        return Err(invalid(key, "[]", "empty", "at least one queue name"));
    }
    let mut seen = std::collections::HashSet::new();
    for (i, name) in names.iter().enumerate() {
        let at = format!("{key}[{i}]");
        if !valid_name(name) {
            return Err(invalid(&at, name, "not a valid name", NAME_RULE));
        }
        if !seen.insert(name) {
            return Err(invalid(&at, name, "a duplicate", "a name used once"));
        }
    }
    Ok(())
}
