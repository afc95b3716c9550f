//! BullMQ's queues with BullMQ's own worker (npm `bullmq` and `ioredis`, in
//! target/bullmq, on Node): jobs its worker failed are counted, listed,
//! requeued through the API while a worker runs, and run exactly once.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::{eventually, repo, sample_value, Daemon, Redis};
use crate::job_frameworks::{all, count, runs};

const LIMIT: Duration = Duration::from_secs(90);

/// The node_modules scripts/test installs BullMQ into.
fn node_modules() -> PathBuf {
    let p = repo().join("target/bullmq/node_modules");
    assert!(
        p.join("bullmq").exists(),
        "{} is missing: scripts/test installs BullMQ",
        p.display()
    );
    p
}

/// A script with BullMQ's own Queue and Worker on queue `render`:
/// `add N` adds N jobs (`{n: i}`) through `Queue.addBulk`; `work FLAG C`
/// runs a Worker of concurrency C whose processor throws while the flag
/// file exists, else appends the job's id to the Redis list `ran`.
const SCRIPT: &str = r#"
const { Queue, Worker } = require('bullmq');
const IORedis = require('ioredis');
const fs = require('fs');
const url = process.env.REDIS_URL;
const [mode, arg, conc] = process.argv.slice(2);
const connection = new IORedis(url, { maxRetriesPerRequest: null });
(async () => {
  if (mode === 'add') {
    const q = new Queue('render', { connection });
    const n = Number(arg);
    for (let s = 0; s < n; s += 1000) {
      const jobs = [];
      for (let i = s; i < Math.min(n, s + 1000); i++) jobs.push({ name: 'render', data: { n: i } });
      await q.addBulk(jobs);
    }
    await q.close();
    await connection.quit();
  } else {
    const record = new IORedis(url);
    new Worker('render', async (job) => {
      if (fs.existsSync(arg)) throw new Error(`job ${job.data.n}: the flag is up`);
      await record.rpush('ran', job.id);
    }, { connection, concurrency: Number(conc) });
  }
})().catch((e) => { console.error(e); process.exit(1); });
"#;

fn node(dir: &Path, redis: &Redis, args: &[&str]) -> Command {
    std::fs::write(dir.join("bull.js"), SCRIPT).unwrap();
    let mut c = Command::new("node");
    c.arg(dir.join("bull.js"))
        .args(args)
        .env("REDIS_URL", redis.url())
        .env("NODE_PATH", node_modules())
        .current_dir(dir);
    c
}

/// Adds `n` jobs through BullMQ's `Queue.addBulk`.
pub fn add(dir: &Path, redis: &Redis, n: usize) {
    let out = node(dir, redis, &["add", &n.to_string()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// BullMQ's own Worker, until stopped.
pub struct Worker(Child);

impl Worker {
    pub fn start(dir: &Path, redis: &Redis, flag: &Path, concurrency: usize) -> Worker {
        let child = node(
            dir,
            redis,
            &["work", &flag.display().to_string(), &concurrency.to_string()],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
        Worker(child)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until the sorted set `set` holds `n` and nothing waits or runs.
pub async fn settled(redis: &Redis, set: &str, n: u64) {
    let set = set.to_string();
    eventually(
        &format!("BullMQ's worker to leave {n} jobs in {set}"),
        LIMIT,
        async || {
            let done = count(redis, "ZCARD", &set).await;
            let waiting = count(redis, "LLEN", "bull:render:wait").await;
            let active = count(redis, "LLEN", "bull:render:active").await;
            (done == n && waiting == 0 && active == 0).then_some(())
        },
    )
    .await;
}

fn config(redis: &Redis) -> String {
    format!(
        "gpu:\n  enabled: false\npipeline:\n  stream:\n    enabled: false\nqueues:\n  redis_url: {}\n  poll_interval: 100ms\n  names: [seed]\n  bullmq: {{queues: [render]}}\n",
        redis.url()
    )
}

/// A Redis, a flag up, and `n` jobs of queue `render` BullMQ's worker failed.
async fn failed_jobs(n: u64) -> (Redis, tempfile::TempDir, PathBuf) {
    let redis = Redis::start().await;
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("flag");
    std::fs::write(&flag, "up").unwrap();
    add(dir.path(), &redis, n as usize);
    let w = Worker::start(dir.path(), &redis, &flag, 50);
    settled(&redis, "bull:render:failed", n).await;
    drop(w);
    (redis, dir, flag)
}

#[tokio::test]
async fn bullmq_jobs_its_worker_failed_are_counted_listed_and_requeued_once_each_while_it_runs() {
    let (redis, dir, flag) = failed_jobs(200).await;
    let d = Daemon::start(&config(&redis), &[]).await;
    crate::job_frameworks::counted(&d, "bullmq:render", 200.0).await;

    // Listed in the seed's JobFailure shape, with BullMQ's own words.
    let listing = d.get_json("/api/dlq/jobs/dlq:bullmq:render?start=0&limit=200").await;
    assert_eq!(listing["total"].as_u64(), Some(200), "{listing}");
    let jobs = listing["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 200);
    for j in jobs {
        assert_eq!(
            (j["framework"].as_str(), j["queue_name"].as_str()),
            (Some("bullmq"), Some("bullmq:render"))
        );
        let n = j["original_job"]["data"]["n"].as_u64().expect("the job's data");
        assert!(
            j["error"]
                .as_str()
                .unwrap()
                .contains(&format!("job {n}: the flag is up")),
            "{j}"
        );
        assert_eq!(
            j["failed_reason"].as_str(),
            Some(format!("job {n}: the flag is up").as_str()),
            "{j}"
        );
        assert_eq!(j["attempt_count"].as_u64(), Some(1), "{j}");
        assert!(j["last_failed_at"].as_str().is_some_and(|t| t.ends_with('Z')), "{j}");
    }

    // The cause is fixed; a worker runs while the API's requeue and a
    // second one in batches of 7 race over the same failed set.
    std::fs::remove_file(&flag).unwrap();
    let _w = Worker::start(dir.path(), &redis, &flag, 10);
    let fq = inferwatch::dlq::FrameworkQueue {
        framework: inferwatch::dlq::Framework::Bullmq,
        queue: "render".into(),
    };
    let report = crate::job_frameworks::racing_requeues(&d, fq, 200).await;

    // BullMQ's worker runs every job exactly once, and completes it.
    settled(&redis, "bull:render:completed", 200).await;
    assert_eq!(runs(&redis).await, (200, 200), "each job ran exactly once");
    assert_eq!(count(&redis, "ZCARD", "bull:render:failed").await, 0);
    let events = count(&redis, "XLEN", "bull:render:events").await;
    assert!(events > 0);
    let page = d.get_text("/metrics").await;
    let moved = sample_value(&page, "dlq_jobs_requeued_total{queue=\"bullmq:render\"}").unwrap();
    assert_eq!(
        moved,
        report["requeued"].as_f64().unwrap(),
        "the daemon counts its own moves"
    );
}

#[tokio::test]
async fn sigkill_of_the_daemon_mid_bullmq_requeue_leaves_each_job_in_one_place() {
    const N: u64 = 5_000;
    let (redis, _dir, _flag) = failed_jobs(N).await;
    let cfg = config(&redis).replace("  bullmq:", "  requeue_batch: 1\n  bullmq:");
    let moves = crate::job_frameworks::Moves {
        dlq: "dlq:bullmq:render",
        failed: "bull:render:failed",
        queue: "bull:render:wait",
    };
    crate::job_frameworks::sigkill_mid_requeue(&redis, &cfg, moves, (N, 300), async |waiting: &[String]| {
        let mut c = redis.connection().await;
        for id in waiting {
            let reason: Option<String> = redis::cmd("HGET")
                .arg(format!("bull:render:{id}"))
                .arg("failedReason")
                .query_async(&mut c)
                .await
                .unwrap();
            assert_eq!(reason, None, "job {id} on wait is no longer marked failed");
        }
    })
    .await;
}

#[tokio::test]
async fn a_bullmq_requeue_checks_every_key_first_and_leaves_flow_children_and_lost_jobs() {
    let (redis, _dir, _flag) = failed_jobs(4).await;
    let mut c = redis.connection().await;
    let ids = all(&redis, "ZRANGE", "bull:render:failed").await;
    let _: () = redis::cmd("DEL")
        .arg(format!("bull:render:{}", ids[0]))
        .query_async(&mut c)
        .await
        .unwrap();
    let _: () = redis::cmd("HSET")
        .arg(format!("bull:render:{}", ids[1]))
        .arg("parentKey")
        .arg("bull:flows:1")
        .query_async(&mut c)
        .await
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg("bull:render:marker")
        .arg("x")
        .query_async(&mut c)
        .await
        .unwrap();
    let q = crate::job_frameworks::queues_for(&config(&redis), 100);
    let fq = inferwatch::dlq::FrameworkQueue {
        framework: inferwatch::dlq::Framework::Bullmq,
        queue: "render".into(),
    };
    let e = q.requeue_all_framework(&fq).await.unwrap_err().to_string();
    assert!(e.contains("bull:render:marker holds a string, not a zset"), "{e}");
    assert_eq!(count(&redis, "ZCARD", "bull:render:failed").await, 4, "nothing moved");
    let _: () = redis::cmd("DEL")
        .arg("bull:render:marker")
        .query_async(&mut c)
        .await
        .unwrap();
    let r = q.requeue_all_framework(&fq).await.unwrap();
    assert_eq!((r.requeued, r.left, r.taken), (2, 2, 0), "{r:?}");
    assert_eq!(all(&redis, "ZRANGE", "bull:render:failed").await, ids[..2].to_vec());
    let marker = all(&redis, "ZRANGE", "bull:render:marker").await;
    assert_eq!(marker, vec!["0".to_string()], "the worker's marker is set");
}

#[tokio::test]
async fn bullmq_jobs_requeued_one_by_filter_and_all_through_the_api_run_once_each() {
    let (redis, dir, flag) = failed_jobs(30).await;
    let d = Daemon::start(&config(&redis), &[]).await;
    crate::job_frameworks::clear_and_restore(&d, "dlq:bullmq:render", 30).await;
    std::fs::remove_file(&flag).unwrap();
    // One job, those whose error names jobs 1x, then the rest.
    crate::job_frameworks::requeue_three_ways(&d, "dlq:bullmq:render", 30, "job 1").await;
    let _w = Worker::start(dir.path(), &redis, &flag, 5);
    settled(&redis, "bull:render:completed", 30).await;
    assert_eq!(runs(&redis).await, (30, 30), "each job ran exactly once");
}

/// A task's state from its status URL.
async fn task(d: &Daemon, url: &str) -> serde_json::Value {
    d.get_json(url).await
}

async fn post(d: &Daemon, path: &str) -> (u16, serde_json::Value) {
    let resp = reqwest::Client::new().post(d.url(path)).send().await.unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

#[tokio::test]
async fn a_bullmq_requeue_as_a_task_holds_its_rate_reports_progress_and_cancels() {
    const N: u64 = 600;
    let (redis, _dir, _flag) = failed_jobs(N).await;
    let d = Daemon::start(
        &config(&redis).replace("  bullmq:", "  requeue_batch: 100\n  bullmq:"),
        &[],
    )
    .await;
    let dlq = "dlq:bullmq:render";
    let (code, body) = post(
        &d,
        &format!("/api/system/dlq/requeue?queue={dlq}&error=flag&rate=100&max=150"),
    )
    .await;
    assert_eq!(code, 202, "{body}");
    let url = body["status_url"].as_str().unwrap().to_string();
    let (code, other) = post(&d, &format!("/api/system/dlq/requeue-all?queue={dlq}&async=true")).await;
    assert_eq!(code, 409, "one move task per queue at a time: {other}");
    let done = eventually("the rate-limited task to finish", LIMIT, async || {
        let t = task(&d, &url).await;
        (t["state"] != "running").then_some(t)
    })
    .await;
    assert_eq!(
        (done["state"].as_str(), done["moved"].as_u64()),
        (Some("done"), Some(150)),
        "{done}"
    );
    let at = |k: &str| chrono::DateTime::parse_from_rfc3339(done[k].as_str().unwrap()).unwrap();
    let secs = (at("finished_at") - at("started_at")).num_milliseconds() as f64 / 1000.0;
    // 150 jobs at 100/s: the 150th is due at 1.49 s.
    let rate = 149.0 / secs;
    assert!((80.0..=110.0).contains(&rate), "{rate:.1} jobs/s over {secs:.2} s");
    assert_eq!(count(&redis, "LLEN", "bull:render:wait").await, 150);

    // Cancel stops it after its current step; the counts add up.
    let (code, body) = post(&d, &format!("/api/system/dlq/requeue-all?queue={dlq}&rate=100")).await;
    assert_eq!(code, 202, "{body}");
    let url = body["status_url"].as_str().unwrap().to_string();
    eventually("some jobs to move", LIMIT, async || {
        (task(&d, &url).await["moved"].as_u64().unwrap() >= 30).then_some(())
    })
    .await;
    let resp = reqwest::Client::new().delete(d.url(&url)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let end = eventually("the task to stop", LIMIT, async || {
        let t = task(&d, &url).await;
        (t["state"] != "running").then_some(t)
    })
    .await;
    assert_eq!(end["state"], "cancelled", "{end}");
    let moved = end["moved"].as_u64().unwrap();
    assert!(moved < N - 150, "stopped early: {moved}");
    let waiting = count(&redis, "LLEN", "bull:render:wait").await;
    let failed = count(&redis, "ZCARD", "bull:render:failed").await;
    assert_eq!(waiting, 150 + moved, "the task's count is what moved");
    assert_eq!(waiting + failed, N, "every job in exactly one place");
    let audit = d.get_json("/api/system/dlq/audit").await;
    let actions: Vec<&str> = audit["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions.iter().filter(|a| **a == "requeue_all").count(),
        2,
        "started and ended: {audit}"
    );
}

#[tokio::test]
async fn a_bullmq_queue_added_by_a_reload_is_read_with_its_jobs_in_flight_and_served() {
    let (redis, _dir, _flag) = failed_jobs(5).await;
    let seed_only = config(&redis).replace("  bullmq: {queues: [render]}\n", "");
    let d = Daemon::start(&seed_only, &[]).await;
    let page = d.get_text("/metrics").await;
    assert!(
        !page.contains("bullmq:render") && !page.contains("job_queue_active"),
        "{page}"
    );
    let resp = reqwest::Client::new()
        .post(d.url("/api/system/dlq/requeue-all?queue=dlq:bullmq:render"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404, "not configured yet");

    d.rewrite(&config(&redis));
    d.sighup();
    let page = eventually("the added queue read", LIMIT, async || {
        let page = d.get_text("/metrics").await;
        (sample_value(&page, "dlq_depth{queue=\"bullmq:render\"}") == Some(5.0)).then_some(page)
    })
    .await;
    assert_eq!(
        sample_value(&page, "job_queue_active{queue=\"bullmq:render\"}"),
        Some(0.0),
        "{page}"
    );
    assert_eq!(d.get_json("/api/dlq/jobs/dlq:bullmq:render").await["total"], 5);
}
