//! Everything the soak runs: the components, the daemon's config, the jobs,
//! and the run itself (load, faults, samples, then the counts).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use serde_json::Value;

use super::*;
use crate::common::dockerd::Engine;
use crate::common::{gpus_state, Daemon, Driver, FakeGpus, HealthTarget, LlamaServer, Postgres, SentinelSet};

/// The GPUs the fake NVML shows, and which processes hold them.
pub struct Gpus {
    pub fake: FakeGpus,
    pub lost: bool,
    /// `(gpu, pid, bytes, name)`.
    pub procs: Vec<(u32, u32, u64, String)>,
}

impl Gpus {
    /// Writes the state: 8 GPUs, the processes, and, while the driver is
    /// lost, every device answering UNINITIALIZED (nvml.h: 1).
    pub fn apply(&self) {
        let mut s = String::new();
        if self.lost {
            s += "device_error 1\n";
        }
        s += &gpus_state(8);
        for gpu in 0..8 {
            let on: Vec<String> = self
                .procs
                .iter()
                .filter(|p| p.0 == gpu)
                .map(|(_, pid, bytes, name)| format!("{pid}:{bytes}:{name}"))
                .collect();
            if !on.is_empty() {
                s += &format!("{gpu}.procs {}\n", on.join(";"));
            }
        }
        self.fake.set(&s);
    }
}

pub struct Rig {
    pub set: SentinelSet,
    pub pg: Postgres,
    pub gpus: Arc<Mutex<Gpus>>,
    pub engine: Engine,
    pub llm: LlamaServer,
    pub target: HealthTarget,
    pub kernel_log: tempfile::NamedTempFile,
    pub daemon: Daemon,
}

impl Rig {
    pub async fn start() -> Rig {
        let set = SentinelSet::start().await;
        put_jobs(&set).await;
        let pg = Postgres::start().await;
        let engine = Engine::start().await;
        let (_, worker_pid) = engine.sleeping("inferwatch-soak-worker", &[("com.docker.compose.service", "gpuworker")]);
        let llm = LlamaServer::start().await;
        let mut target = HealthTarget::new();
        target.start().await;
        let gpus = Gpus {
            fake: FakeGpus::new(Driver::Current, ""),
            lost: false,
            procs: vec![
                (0, worker_pid, 4 << 30, "worker".into()),
                (1, llm.pid() as u32, 2 << 30, "llama-server".into()),
            ],
        };
        gpus.apply();
        let kernel_log = tempfile::NamedTempFile::new().unwrap();
        let rig_config = Config {
            sentinel: set.url(),
            pg: pg.url(),
            nvml: gpus.fake.lib_str(),
            kernel_log: kernel_log.path().display().to_string(),
            docker: engine.socket().display().to_string(),
            llm_health: llm.health_url(),
            llm_metrics: llm.metrics_url(),
            llm_pid_file: llm.pid_file(),
            target: target.url(),
            target_interval: 1,
        };
        // The harness turns the host's kernel log off through the
        // environment, which wins over the file: the soak's log is named
        // there too.
        let daemon = Daemon::start(&rig_config.render(), &[("GPU_KERNEL_LOG", &rig_config.kernel_log)]).await;
        Rig {
            set,
            pg,
            gpus: Arc::new(Mutex::new(gpus)),
            engine,
            llm,
            target,
            kernel_log,
            daemon,
        }
    }

    /// Runs load and faults for `minutes`, waits for every fault to clear,
    /// stops the load, and reports.
    pub async fn run(self, minutes: f64) -> Value {
        let duration = minutes * 60.0;
        let sh: Sh = Arc::new(Shared {
            start: Instant::now(),
            port: self.daemon.port,
            pid: AtomicI32::new(self.daemon.proc.pid()),
            stop: AtomicBool::new(false),
            counts: Counts::default(),
            faults: Mutex::new(Vec::new()),
            outages: Mutex::new(Vec::new()),
        });
        let sentinels = self.set.sentinel_ports.clone();
        let loads = load::start(&sh, &sentinels, &self.llm.base_url());
        let samples = tokio::spawn(report::every_minute(sh.clone(), duration));
        let config_path = self.daemon.config_path();
        let reloads = tokio::spawn(faults::reload_every_30s(sh.clone(), config_path, duration));
        let parts = faults::Parts {
            set: self.set,
            pg: self.pg,
            gpus: self.gpus,
            engine: self.engine,
            target: self.target,
            kernel_log: self.kernel_log,
            daemon: self.daemon,
        };
        let parts = faults::schedule(sh.clone(), parts, duration).await;
        at(&sh, duration).await;
        sh.stop.store(true, Ordering::Release);
        reloads.await.unwrap();
        for l in loads {
            l.await.unwrap();
        }
        let minutes_seen = samples.await.unwrap();
        let jobs = count_jobs(&parts.set, &sh).await;
        let history = report::history(&sh, &parts.pg).await;
        let _llm = self.llm;
        report::build(&sh, minutes, jobs, history, minutes_seen)
    }
}

/// The daemon's config: everything on, the poll at 1 s, the store flushed
/// every second. The in-memory history ring holds one minute, so that it is
/// full once the first minute (the warm-up) is over: with the default 60
/// minutes it grows by design for an hour, and would hide a leak.
pub struct Config {
    pub sentinel: String,
    pub pg: String,
    pub nvml: String,
    pub kernel_log: String,
    pub docker: String,
    pub llm_health: String,
    pub llm_metrics: String,
    pub llm_pid_file: String,
    pub target: String,
    /// The target's check interval in seconds: the reloads switch it
    /// between 1 and 2.
    pub target_interval: u32,
}

impl Config {
    pub fn render(&self) -> String {
        format!(
            "gpu:\n  nvml_library: {nvml}\n  poll_interval: 1s\n  history_minutes: 1\n  per_process: true\n  kernel_log: {kl}\n\
             queues:\n  redis_url: \"{s}\"\n  poll_interval: 1s\n  names: [{QUEUE}]\n  requeue_batch: 200\n  \
             replica_wait: 1s\n\
             store:\n  url: \"{pg}\"\n  flush_interval: 1s\n\
             attribution:\n  docker_socket: {docker}\n\
             health:\n  services:\n\
             \x20   - {{name: llm, kind: http, url: \"{lh}\", metrics_url: \"{lm}\", server: llamacpp, interval: 1s, \
             timeout: 2s, match: {{pid_file: {pf}}}}}\n\
             \x20   - {{name: target, kind: http, url: \"{t}\", interval: {ti}s, timeout: 2s, failure_threshold: 2, \
             match: {{compose_service: gpuworker}}}}\n\
             \x20   - {{name: cache, kind: redis, url: \"{s}\", interval: 1s}}\n",
            nvml = self.nvml,
            kl = self.kernel_log,
            s = self.sentinel,
            pg = self.pg,
            docker = self.docker,
            lh = self.llm_health,
            lm = self.llm_metrics,
            pf = self.llm_pid_file,
            t = self.target,
            ti = self.target_interval,
        )
    }
}

/// The failure entry of job `i`: half fail with a CUDA error (the filtered
/// moves take those), half with a timeout.
pub fn failure(i: usize) -> String {
    let error = if i % 2 == 0 {
        "CUDA out of memory"
    } else {
        "timeout after 30s"
    };
    format!(
        r#"{{"original_job":{{"id":"soak-{i}"}},"error":"{error}","attempt_count":1,"first_failed_at":"2026-12-07T10:00:00Z","last_failed_at":"2026-12-07T10:00:00Z","queue_name":"{QUEUE}"}}"#
    )
}

/// Puts the jobs in the DLQ and waits until both replicas hold them.
async fn put_jobs(set: &SentinelSet) {
    let port = set.master_port().await.unwrap();
    let mut c = crate::common::sentinel_conn(port).await.unwrap();
    let all: Vec<String> = (0..JOBS).map(failure).collect();
    for chunk in all.chunks(5_000) {
        let _: () = c.lpush(DLQ, chunk).await.unwrap();
    }
    let acked: u64 = redis::cmd("WAIT").arg(2).arg(30_000).query_async(&mut c).await.unwrap();
    assert_eq!(acked, 2, "both replicas hold every job before the soak starts");
}

/// A connection to the master the Sentinels name now, checked with `ROLE`
/// (an old master that came back says `slave` until Sentinel is done).
pub async fn master(sentinels: &[u16]) -> Option<redis::aio::MultiplexedConnection> {
    let port = crate::common::master_port_of(sentinels).await?;
    let mut c = crate::common::sentinel_conn(port).await?;
    let role: redis::Value = redis::cmd("ROLE").query_async(&mut c).await.ok()?;
    match role {
        redis::Value::Array(items) if matches!(items.first(), Some(redis::Value::BulkString(r)) if r == b"master") => {
            Some(c)
        }
        _ => None,
    }
}

/// Where every job is at the end, on the master: the queue, the DLQ and
/// the archives of clears that were not undone. Each id is counted.
async fn count_jobs(set: &SentinelSet, sh: &Shared) -> Value {
    let mut c = crate::common::eventually("the master after the soak", Duration::from_secs(60), || async {
        master(&set.sentinel_ports).await
    })
    .await;
    let queue: Vec<String> = c.lrange(QUEUE, 0, -1).await.unwrap();
    let dlq: Vec<String> = c.lrange(DLQ, 0, -1).await.unwrap();
    let archives: Vec<String> = c.keys(format!("{DLQ}:cleared:*")).await.unwrap();
    let mut archived = Vec::new();
    for key in &archives {
        let entries: Vec<String> = c.lrange(key, 0, -1).await.unwrap();
        archived.extend(entries);
    }
    let mut seen = std::collections::HashMap::<String, u32>::new();
    for q in &queue {
        let v: Value = serde_json::from_str(q).unwrap();
        *seen.entry(v["id"].as_str().unwrap().to_string()).or_default() += 1;
    }
    for e in dlq.iter().chain(&archived) {
        let v: Value = serde_json::from_str(e).unwrap();
        *seen
            .entry(v["original_job"]["id"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    let missing = (0..JOBS).filter(|i| !seen.contains_key(&format!("soak-{i}"))).count();
    let n = &sh.counts;
    json!({
        "created": JOBS,
        "present": queue.len() + dlq.len() + archived.len(),
        "distinct": seen.len(),
        "duplicated": seen.values().filter(|c| **c > 1).count(),
        "missing": missing,
        "in_queue": queue.len(),
        "in_dlq": dlq.len(),
        "in_archives": archived.len(),
        "archives": archives.len(),
        "moved": {
            "requeued": n.requeued.load(Ordering::Relaxed),
            "filtered": n.filtered_moved.load(Ordering::Relaxed),
            "cleared": n.cleared.load(Ordering::Relaxed),
            "restored": n.restored.load(Ordering::Relaxed),
            "failed_again_by_the_worker": n.worker_failed_again.load(Ordering::Relaxed),
        },
    })
}
