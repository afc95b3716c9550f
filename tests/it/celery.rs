//! Celery's queues with Celery's own worker (PyPI `celery[redis]`, in
//! target/celery): depth, in flight, stuck past the visibility timeout and
//! the wait of the next message, read only; and `examples/celery_dlq.py`,
//! whose hook gives a Celery app the seed's DLQ: failed tasks listed and
//! requeued through the API, replayed through `send_task`, and run once.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::{eventually, repo, sample_value, Daemon, Proc, Redis};
use crate::job_frameworks::{count, runs};

const LIMIT: Duration = Duration::from_secs(90);

fn bin(name: &str) -> PathBuf {
    let p = repo().join("target/celery/bin").join(name);
    assert!(p.exists(), "{} is missing: scripts/test installs Celery", p.display());
    p
}

/// The task module: `work(flag, n)` raises while the flag file exists,
/// else appends `n` to `ran`; its final failure goes to the DLQ through
/// the example's hook. `hold(path, n)` runs until the file `path` is gone,
/// acknowledged late (a task acknowledged early, Celery's default, leaves
/// `unacked` when it starts).
const MODULE: &str = r#"
import os, sys, time
from celery import Celery
from redis import Redis
sys.path.insert(0, os.environ['EXAMPLES'])
from celery_dlq import CeleryDlq

app = Celery('ctasks', broker=os.environ['REDIS_URL'])
app.conf.broker_connection_retry_on_startup = True
dlq = CeleryDlq(app, 'celery_failed')

@app.task(base=dlq.Task, name='ctasks.work')
def work(flag, n):
    if os.path.exists(flag):
        raise RuntimeError(f'job {n}: the flag is up')
    Redis.from_url(os.environ['REDIS_URL']).rpush('ran', n)

@app.task(name='ctasks.hold', acks_late=True)
def hold(path, n):
    while os.path.exists(path):
        time.sleep(0.05)
"#;

fn command(dir: &Path, redis: &Redis, program: PathBuf) -> Command {
    std::fs::write(dir.join("ctasks.py"), MODULE).unwrap();
    let mut c = Command::new(program);
    c.env("REDIS_URL", redis.url())
        .env("EXAMPLES", repo().join("examples"))
        .env("PYTHONPATH", dir)
        .current_dir(dir);
    c
}

pub fn python(dir: &Path, redis: &Redis, code: &str) -> String {
    let out = command(dir, redis, bin("python")).arg("-c").arg(code).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Celery's own worker (threads pool: one process), killed when dropped.
struct Worker(#[allow(dead_code)] Proc);

impl Worker {
    fn start(dir: &Path, redis: &Redis, concurrency: usize) -> Worker {
        let child = command(dir, redis, bin("celery"))
            .args([
                "-A",
                "ctasks",
                "worker",
                "--pool",
                "threads",
                "-c",
                &concurrency.to_string(),
            ])
            .args([
                "--without-heartbeat",
                "--without-gossip",
                "--without-mingle",
                "-l",
                "warning",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Worker(Proc { child, name: "celery" })
    }
}

fn config(redis: &Redis, extra: &str) -> String {
    format!(
        "gpu:\n  enabled: false\npipeline:\n  stream:\n    enabled: false\nqueues:\n  redis_url: {}\n  poll_interval: 100ms\n  names: [celery_failed]\n  celery: {{queues: [celery]{extra}}}\n",
        redis.url()
    )
}

#[tokio::test]
async fn celerys_queue_is_read_depth_wait_in_flight_and_stuck_past_the_visibility_timeout() {
    let redis = Redis::start().await;
    let dir = tempfile::tempdir().unwrap();
    let hold = dir.path().join("hold");
    std::fs::write(&hold, "x").unwrap();
    python(
        dir.path(),
        &redis,
        &format!(
            "import ctasks\nfor i in range(30):\n    ctasks.hold.delay({:?}, i)\n",
            hold.display().to_string()
        ),
    );
    let d = Daemon::start(&config(&redis, ", visibility_timeout: 1s"), &[]).await;
    let series = |name: &str| format!("{name}{{queue=\"celery:celery\"}}");
    let page = eventually("Celery's queue to wait a while", LIMIT, async || {
        let page = d.get_text("/metrics").await;
        (sample_value(&page, &series("job_queue_oldest_age_seconds")).unwrap_or(0.0) >= 0.5).then_some(page)
    })
    .await;
    assert_eq!(sample_value(&page, &series("job_queue_depth")), Some(30.0));
    assert_eq!(sample_value(&page, &series("job_queue_active")), Some(0.0));
    assert_eq!(count(&redis, "LLEN", "celery").await, 30, "read only: nothing moved");

    // Celery's worker takes messages (its prefetch: 2 threads × 4) and
    // holds them unacknowledged, past the 1 s visibility timeout: the two
    // running and the six reserved.
    let w = Worker::start(dir.path(), &redis, 2);
    let page = eventually("deliveries held past the visibility timeout", LIMIT, async || {
        let page = d.get_text("/metrics").await;
        let unacked = count(&redis, "HLEN", "unacked").await as f64;
        let active = sample_value(&page, &series("job_queue_active"))?;
        let stuck = sample_value(&page, &series("job_queue_stuck"))?;
        (unacked > 0.0 && active == unacked && stuck == unacked).then_some(page)
    })
    .await;
    let depth = sample_value(&page, &series("job_queue_depth")).unwrap();
    let active = sample_value(&page, &series("job_queue_active")).unwrap();
    assert_eq!(
        depth + active,
        30.0,
        "each message waiting or in flight: {depth} + {active}"
    );

    std::fs::remove_file(&hold).unwrap();
    eventually("the queue to drain", LIMIT, async || {
        let page = d.get_text("/metrics").await;
        (sample_value(&page, &series("job_queue_depth")) == Some(0.0)
            && sample_value(&page, &series("job_queue_active")) == Some(0.0)
            && sample_value(&page, &series("job_queue_oldest_age_seconds")) == Some(0.0))
        .then_some(())
    })
    .await;
    drop(w);
}

#[tokio::test]
async fn the_example_hook_gives_celery_the_dlq_requeued_through_the_api_and_replayed_once_each() {
    let redis = Redis::start().await;
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("flag");
    std::fs::write(&flag, "up").unwrap();
    let w = Worker::start(dir.path(), &redis, 4);
    python(
        dir.path(),
        &redis,
        &format!(
            "import ctasks\nfor i in range(20):\n    ctasks.work.delay({:?}, i)\n",
            flag.display().to_string()
        ),
    );
    eventually("20 failures in the DLQ", LIMIT, async || {
        (count(&redis, "LLEN", "dlq:celery_failed").await == 20).then_some(())
    })
    .await;

    let d = Daemon::start(&config(&redis, ""), &[]).await;
    let page = d.get_json("/api/dlq/jobs/dlq:celery_failed?limit=20").await;
    let jobs = page["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 20, "{page}");
    for j in jobs {
        let n = j["original_job"]["args"][1].as_u64().unwrap();
        assert_eq!(
            j["error"].as_str(),
            Some(format!("RuntimeError: job {n}: the flag is up").as_str()),
            "{j}"
        );
        assert_eq!(j["original_job"]["task"], "ctasks.work");
        assert_eq!(j["original_job"]["queue"], "celery");
    }
    // The cause is fixed; the console's requeue puts the jobs on the
    // replay list, and the example's replay publishes them to Celery.
    std::fs::remove_file(&flag).unwrap();
    let report = d.post_json("/api/system/dlq/requeue-all?queue=dlq:celery_failed").await;
    assert_eq!(report["requeued"].as_u64(), Some(20), "{report}");
    let out = command(dir.path(), &redis, bin("python"))
        .arg(repo().join("examples/celery_dlq.py"))
        .args(["replay", "--app", "ctasks:app", "--name", "celery_failed", "--once"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "replayed 20");
    eventually("Celery's worker to run the 20", LIMIT, async || {
        (count(&redis, "LLEN", "ran").await == 20).then_some(())
    })
    .await;
    drop(w);
    assert_eq!(runs(&redis).await, (20, 20), "each job ran exactly once");
    assert_eq!(count(&redis, "LLEN", "celery_failed").await, 0);
    assert_eq!(count(&redis, "LLEN", "celery_failed:replaying").await, 0);
    assert_eq!(count(&redis, "LLEN", "dlq:celery_failed").await, 0);
}
