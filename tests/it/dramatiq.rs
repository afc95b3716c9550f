//! Dramatiq's queues with Dramatiq's own worker (PyPI `dramatiq[redis]`, in
//! target/dramatiq): messages its worker dead-lettered are counted, listed
//! with the traceback Dramatiq stored, requeued through the API while a
//! worker runs, and run exactly once.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::{eventually, repo, Daemon, Proc, Redis, SIGTERM};
use crate::job_frameworks::{all, count, runs};

const LIMIT: Duration = Duration::from_secs(90);

fn bin(name: &str) -> PathBuf {
    let p = repo().join("target/dramatiq/bin").join(name);
    assert!(p.exists(), "{} is missing: scripts/test installs Dramatiq", p.display());
    p
}

/// The actor module: `work(flag, n)` raises while the flag file exists,
/// else appends `n` to the Redis list `ran`. It is retried `RETRIES`
/// times (environment) with a 10–50 ms backoff, so that Dramatiq stores
/// the traceback of a try in the message before it dead-letters it.
const MODULE: &str = r#"
import os
import dramatiq
from dramatiq.brokers.redis import RedisBroker
from redis import Redis

dramatiq.set_broker(RedisBroker(url=os.environ['REDIS_URL']))

@dramatiq.actor(queue_name='default', max_retries=int(os.environ.get('RETRIES', '1')), min_backoff=10, max_backoff=50)
def work(flag, n):
    if os.path.exists(flag):
        raise RuntimeError(f'job {n}: the flag is up')
    Redis.from_url(os.environ['REDIS_URL']).rpush('ran', n)
"#;

fn python(dir: &Path, redis: &Redis, code: &str, retries: u32) {
    std::fs::write(dir.join("dqjobs.py"), MODULE).unwrap();
    let out = Command::new(bin("python"))
        .arg("-c")
        .arg(code)
        .env("REDIS_URL", redis.url())
        .env("RETRIES", retries.to_string())
        .env("PYTHONPATH", dir)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Sends `n` messages through the actor's own `send`.
pub fn send(dir: &Path, redis: &Redis, flag: &Path, n: usize, retries: u32) {
    let code = format!(
        "import dqjobs\nfor i in range({n}):\n    dqjobs.work.send({:?}, i)\n",
        flag.display().to_string()
    );
    python(dir, redis, &code, retries);
}

/// Dramatiq's own worker, until stopped.
pub struct Worker(Proc);

impl Worker {
    pub fn start(dir: &Path, redis: &Redis, retries: u32) -> Worker {
        let child = Command::new(bin("dramatiq"))
            .args(["dqjobs", "--processes", "1", "--threads", "8", "--path"])
            .arg(dir)
            .env("REDIS_URL", redis.url())
            .env("RETRIES", retries.to_string())
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Worker(Proc {
            child,
            name: "dramatiq",
        })
    }
}

impl Drop for Worker {
    /// SIGTERM: Dramatiq's main process stops its worker processes (a
    /// SIGKILL would leave them running), which put back what they had
    /// fetched and not started.
    fn drop(&mut self) {
        self.0.stop_with(SIGTERM);
    }
}

/// Waits until `dead` messages are dead-lettered, `ran` have run, and
/// nothing is queued, delayed or held.
pub async fn settled(redis: &Redis, dead: u64, ran: u64) {
    eventually(
        &format!("Dramatiq's worker to leave {dead} dead and {ran} run"),
        LIMIT,
        async || {
            let x = count(redis, "ZCARD", "dramatiq:default.XQ").await;
            let r = count(redis, "LLEN", "ran").await;
            let held = count(redis, "HLEN", "dramatiq:default.msgs").await
                + count(redis, "HLEN", "dramatiq:default.DQ.msgs").await;
            (x == dead && r == ran && held == 0).then_some(())
        },
    )
    .await;
}

fn config(redis: &Redis) -> String {
    format!(
        "gpu:\n  enabled: false\npipeline:\n  stream:\n    enabled: false\nqueues:\n  redis_url: {}\n  poll_interval: 100ms\n  names: [seed]\n  dramatiq: {{queues: [default]}}\n",
        redis.url()
    )
}

/// A Redis, a flag up, and `n` messages Dramatiq's worker dead-lettered
/// after `retries` retries.
async fn dead_letters(n: u64, retries: u32) -> (Redis, tempfile::TempDir, PathBuf) {
    let redis = Redis::start().await;
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("flag");
    std::fs::write(&flag, "up").unwrap();
    send(dir.path(), &redis, &flag, n as usize, retries);
    let w = Worker::start(dir.path(), &redis, retries);
    settled(&redis, n, 0).await;
    drop(w);
    (redis, dir, flag)
}

fn default_queue() -> inferwatch::dlq::FrameworkQueue {
    inferwatch::dlq::FrameworkQueue {
        framework: inferwatch::dlq::Framework::Dramatiq,
        queue: "default".into(),
    }
}

#[tokio::test]
async fn dramatiq_dead_letters_are_counted_listed_and_requeued_once_each_while_its_worker_runs() {
    let (redis, dir, flag) = dead_letters(200, 1).await;
    let d = Daemon::start(&config(&redis), &[]).await;
    crate::job_frameworks::counted(&d, "dramatiq:default", 200.0).await;

    let listing = d.get_json("/api/dlq/jobs/dlq:dramatiq:default?limit=200").await;
    assert_eq!(listing["total"].as_u64(), Some(200), "{listing}");
    let jobs = listing["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 200);
    for j in jobs {
        assert_eq!(j["framework"], "dramatiq");
        assert_eq!(j["original_job"]["actor_name"], "work", "{j}");
        let n = j["original_job"]["payload"]["args"][1]
            .as_u64()
            .expect("the message's args");
        // The traceback Dramatiq stored: the first try's, before the retry.
        assert!(
            j["error"]
                .as_str()
                .unwrap()
                .contains(&format!("RuntimeError: job {n}: the flag is up")),
            "{j}"
        );
        assert_eq!(j["attempt_count"].as_u64(), Some(1), "{j}");
    }

    // The cause is fixed; a worker runs while the API's requeue and a
    // second one in batches of 7 race over the same dead letters.
    std::fs::remove_file(&flag).unwrap();
    let _w = Worker::start(dir.path(), &redis, 1);
    crate::job_frameworks::racing_requeues(&d, default_queue(), 200).await;

    // Dramatiq's worker runs every message exactly once, and acks it.
    settled(&redis, 0, 200).await;
    assert_eq!(runs(&redis).await, (200, 200), "each message ran exactly once");
    assert_eq!(count(&redis, "HLEN", "dramatiq:default.XQ.msgs").await, 0);
}

#[tokio::test]
async fn sigkill_of_the_daemon_mid_dramatiq_requeue_leaves_each_message_in_one_place() {
    const N: u64 = 3_000;
    let (redis, _dir, _flag) = dead_letters(N, 0).await;
    let cfg = config(&redis).replace("  dramatiq:", "  requeue_batch: 1\n  dramatiq:");
    let moves = crate::job_frameworks::Moves {
        dlq: "dlq:dramatiq:default",
        failed: "dramatiq:default.XQ",
        queue: "dramatiq:default",
    };
    crate::job_frameworks::sigkill_mid_requeue(&redis, &cfg, moves, (N, 300), async |queued: &[String]| {
        // Each message's body is where its id is, and only there.
        let held = count(&redis, "HLEN", "dramatiq:default.msgs").await;
        let dead_held = count(&redis, "HLEN", "dramatiq:default.XQ.msgs").await;
        assert_eq!((held, dead_held), (queued.len() as u64, N - queued.len() as u64));
    })
    .await;
    assert_eq!(count(&redis, "HLEN", "dramatiq:default.msgs").await, N);
}

#[tokio::test]
async fn a_dramatiq_requeue_checks_every_key_first_and_leaves_a_dead_letter_without_its_message() {
    let (redis, _dir, _flag) = dead_letters(3, 0).await;
    let mut c = redis.connection().await;
    let ids = all(&redis, "ZRANGE", "dramatiq:default.XQ").await;
    let _: () = redis::cmd("HDEL")
        .arg("dramatiq:default.XQ.msgs")
        .arg(&ids[0])
        .query_async(&mut c)
        .await
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg("dramatiq:default.msgs")
        .arg("x")
        .query_async(&mut c)
        .await
        .unwrap();
    let q = crate::job_frameworks::queues_for(&config(&redis), 100);
    let e = q.requeue_all_framework(&default_queue()).await.unwrap_err().to_string();
    assert!(e.contains("dramatiq:default.msgs holds a string, not a hash"), "{e}");
    assert_eq!(count(&redis, "ZCARD", "dramatiq:default.XQ").await, 3, "nothing moved");
    let _: () = redis::cmd("DEL")
        .arg("dramatiq:default.msgs")
        .query_async(&mut c)
        .await
        .unwrap();
    let r = q.requeue_all_framework(&default_queue()).await.unwrap();
    assert_eq!((r.requeued, r.left, r.taken), (2, 1, 0), "{r:?}");
    assert_eq!(all(&redis, "ZRANGE", "dramatiq:default.XQ").await, vec![ids[0].clone()]);
}

#[tokio::test]
async fn dramatiq_messages_requeued_one_by_filter_and_all_through_the_api_run_once_each() {
    let (redis, dir, flag) = dead_letters(30, 1).await;
    let d = Daemon::start(&config(&redis), &[]).await;
    crate::job_frameworks::clear_and_restore(&d, "dlq:dramatiq:default", 30).await;
    std::fs::remove_file(&flag).unwrap();
    // One message, those whose traceback names jobs 1x, then the rest.
    crate::job_frameworks::requeue_three_ways(&d, "dlq:dramatiq:default", 30, "job 1").await;
    let _w = Worker::start(dir.path(), &redis, 1);
    settled(&redis, 0, 30).await;
    assert_eq!(runs(&redis).await, (30, 30), "each message ran exactly once");
}
