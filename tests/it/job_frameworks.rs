//! The job frameworks' queues, read where the frameworks keep them, with
//! the frameworks' own workers: RQ (PyPI `rq`, in target/rq) fails real
//! jobs into its failed registry, and the daemon's queue metrics say so
//! under `queue="rq:<q>"`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::common::{acl_line, eventually, repo, sample_value, Daemon, Redis};

/// RQ's Python, from scripts/test's venv.
fn rq_python() -> PathBuf {
    let p = repo().join("target/rq/bin/python");
    assert!(p.exists(), "{} is missing: scripts/test installs RQ", p.display());
    p
}

/// A job module: `work(flag, n)` raises while the flag file exists, else
/// appends `n` to the Redis list `ran` (so the test can count each run;
/// the worker gets the Redis URL in `REDIS_URL`).
pub fn write_jobs(dir: &Path) {
    std::fs::write(
        dir.join("rqjobs.py"),
        "import os\nfrom redis import Redis\n\n\
         def work(flag, n):\n    if os.path.exists(flag):\n        raise RuntimeError(f'job {n}: the flag is up')\n\
         \x20   Redis.from_url(os.environ['REDIS_URL']).rpush('ran', n)\n",
    )
    .unwrap();
}

/// Runs Python with RQ against `redis`, in `dir` (where the job module is).
fn rq(dir: &Path, redis: &Redis, code: &str) {
    let out = Command::new(rq_python())
        .arg("-c")
        .arg(code)
        .env("REDIS_URL", redis.url())
        .env("PYTHONPATH", dir)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Enqueues `n` jobs on queue `q` through RQ's own `Queue.enqueue`.
pub fn enqueue(dir: &Path, redis: &Redis, q: &str, n: usize, flag: &Path) {
    rq(
        dir,
        redis,
        &format!(
            "import os\nfrom redis import Redis\nfrom rq import Queue\n\
             q = Queue('{q}', connection=Redis.from_url(os.environ['REDIS_URL']))\n\
             for i in range({n}):\n    q.enqueue('rqjobs.work', {flag:?}, i)\n",
            flag = flag.display().to_string()
        ),
    );
}

/// RQ's own worker in burst mode, until `registry` (RQ's failed or
/// finished set of `q`) holds `count` jobs and none is waiting or in
/// flight: the worker has then done its work. It is stopped there rather
/// than awaited, as RQ's worker can take up to a minute more to exit (its
/// command listener is a pubsub thread polled with a 60 s timeout, which
/// it joins on the way out).
pub async fn burst_worker(dir: &Path, redis: &Redis, q: &str, registry: &str, count: u64) {
    let worker = rq_worker(dir, redis, q, true);
    worked(redis, q, registry, count).await;
    drop(worker);
}

/// RQ's own worker on queue `q` (`--burst`: until the queue is empty),
/// killed when dropped.
fn rq_worker(dir: &Path, redis: &Redis, q: &str, burst: bool) -> crate::common::Proc {
    let child = std::process::Command::new(dir_bin("rq"))
        .arg("worker")
        .args(burst.then_some("--burst"))
        .args(["--url", &redis.url(), "--path"])
        .arg(dir)
        .arg(q)
        .env("REDIS_URL", redis.url())
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    crate::common::Proc { child, name: "rq" }
}

/// Waits until RQ's `registry` of `q` holds `count` jobs and none waits
/// or runs.
async fn worked(redis: &Redis, q: &str, registry: &str, count: u64) {
    let keys = [
        format!("rq:{registry}:{q}"),
        format!("rq:queue:{q}"),
        format!("rq:wip:{q}"),
    ];
    eventually(
        &format!("RQ's worker to leave {count} jobs in {}", keys[0]),
        LIMIT,
        async || {
            let mut c = redis.connection().await;
            let mut p = redis::pipe();
            p.cmd("ZCARD")
                .arg(&keys[0])
                .cmd("LLEN")
                .arg(&keys[1])
                .cmd("ZCARD")
                .arg(&keys[2]);
            let (done, waiting, running): (u64, u64, u64) = p.query_async(&mut c).await.unwrap();
            (done == count && waiting == 0 && running == 0).then_some(())
        },
    )
    .await;
}

fn dir_bin(name: &str) -> PathBuf {
    rq_python().with_file_name(name)
}

fn config(redis: &Redis) -> String {
    format!(
        "gpu:\n  enabled: false\npipeline:\n  stream:\n    enabled: false\nqueues:\n  redis_url: {}\n  poll_interval: 100ms\n  names: [seed]\n  rq: {{queues: [default]}}\n",
        redis.url()
    )
}

const LIMIT: Duration = Duration::from_secs(60);

/// A Redis and a job module, the flag up, and `n` jobs of queue `default`
/// that RQ's own worker failed.
async fn failed_jobs(n: u64) -> (Redis, tempfile::TempDir, PathBuf) {
    let redis = Redis::start().await;
    let dir = tempfile::tempdir().unwrap();
    write_jobs(dir.path());
    let flag = dir.path().join("flag");
    std::fs::write(&flag, "up").unwrap();
    enqueue(dir.path(), &redis, "default", n as usize, &flag);
    burst_worker(dir.path(), &redis, "default", "failed", n).await;
    (redis, dir, flag)
}

#[tokio::test]
async fn rq_jobs_its_worker_failed_are_counted_with_their_age_and_the_queue_waiting() {
    let (redis, dir, flag) = failed_jobs(200).await;

    let d = Daemon::start(&config(&redis), &[]).await;
    let series = |name: &str| format!("{name}{{queue=\"rq:default\"}}");
    let page = eventually("RQ's failed jobs counted", LIMIT, async || {
        let page = d.get_text("/metrics").await;
        (sample_value(&page, &series("dlq_depth")) == Some(200.0)).then_some(page)
    })
    .await;
    assert_eq!(
        sample_value(&page, &series("job_queue_depth")),
        Some(0.0),
        "the worker took every job"
    );
    assert_eq!(
        sample_value(&page, &series("job_queue_active")),
        Some(0.0),
        "none in flight"
    );
    let age = sample_value(&page, &series("dlq_oldest_job_age_seconds")).unwrap();
    assert!(age > 0.0, "the oldest failure has an age: {age}");
    assert_eq!(
        sample_value(&page, &series("job_queue_max_wait_seconds")),
        Some(600.0),
        "QueueWaitTooLong has its limit for the RQ queue too"
    );
    // The seed's queue beside it, unchanged.
    assert_eq!(sample_value(&page, "dlq_depth{queue=\"seed\"}"), Some(0.0));
    // The system stats count RQ's failed jobs with the seed's.
    let stats: serde_json::Value = reqwest::get(d.url("/api/system/stats"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["dlq"]["by_queue"]["rq:default"], 200, "{stats}");
    assert_eq!(stats["dlq"]["total"], 200, "{stats}");

    // Jobs waiting with no worker: the depth, and the wait of the next one.
    enqueue(dir.path(), &redis, "default", 5, &flag);
    let page = eventually("the waiting RQ jobs counted", LIMIT, async || {
        let page = d.get_text("/metrics").await;
        (sample_value(&page, &series("job_queue_depth")) == Some(5.0)).then_some(page)
    })
    .await;
    assert!(sample_value(&page, &series("job_queue_oldest_age_seconds")).unwrap() >= 0.0);
    let ran = count(&redis, "LLEN", "ran").await as i64;
    assert_eq!(ran, 0, "no job ran: each failed while the flag was up");
}

#[tokio::test]
async fn an_rq_key_of_another_type_fails_the_poll_naming_it() {
    let redis = Redis::start().await;
    let _: () = redis::cmd("SET")
        .arg("rq:failed:default")
        .arg("x")
        .query_async(&mut redis.connection().await)
        .await
        .unwrap();
    let d = Daemon::start(&config(&redis), &[]).await;
    eventually("the failing queue collector", LIMIT, async || {
        let page = d.get_text("/metrics").await;
        (sample_value(&page, "inferwatch_collector_success{collector=\"queues\"}") == Some(0.0)).then_some(())
    })
    .await;
    eventually("the log naming the key", LIMIT, async || {
        d.log()
            .contains("rq:failed:default holds a string, not a zset")
            .then_some(())
    })
    .await;
    let kind: String = redis::cmd("TYPE")
        .arg("rq:failed:default")
        .query_async(&mut redis.connection().await)
        .await
        .unwrap();
    assert_eq!(kind, "string", "the poll wrote nothing");
}

#[tokio::test]
async fn the_least_privileged_user_reaches_rqs_keys_it_moves_between_and_only_reads_the_rest() {
    let (redis, _dir, _flag) = failed_jobs(3).await;

    // The line `inferwatch redis-acl` prints for the config, applied.
    let least = config(&redis).replace("redis://", "redis://least@");
    let line = acl_line(&least, "pw-least");
    for part in [
        "~rq:queue:default ~rq:failed:default ~rq:job:* ",
        "~dlq:rq:default:* ",
        "%R~rq:wip:default %R~rq:results:*",
    ] {
        assert!(line.contains(part), "{part} in {line}");
    }
    redis.apply_acl(&line).await;

    // The daemon as that user reads RQ's counts...
    let d = Daemon::start(&least.replace("least@", "least:pw-least@"), &[]).await;
    eventually("RQ's failed jobs counted as the least user", LIMIT, async || {
        let page = d.get_text("/metrics").await;
        (sample_value(&page, "dlq_depth{queue=\"rq:default\"}") == Some(3.0)).then_some(())
    })
    .await;
    // ... lists them with their tracebacks (read only) ...
    let page = d.get_json("/api/dlq/jobs/dlq:rq:default").await;
    assert_eq!(page["total"], 3, "{page}");
    assert!(
        page["jobs"][0]["error"].as_str().unwrap().contains("the flag is up"),
        "{page}"
    );
    // ... and requeues them through the API (its own keys: the failed set,
    // the queue, the job hashes) ...
    let resp = reqwest::Client::new()
        .post(d.url("/api/system/dlq/requeue-all?queue=dlq:rq:default"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let report: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(report["requeued"], 3, "{report}");
    // ... and may not write RQ's started registry, nor any other key.
    refused_to_least(
        &redis,
        [
            redis::cmd("ZADD").arg("rq:wip:default").arg(1).arg("x").clone(),
            redis::cmd("RPUSH").arg("rq:queue:other").arg("x").clone(),
            redis::cmd("DEL").arg("rq:failed:default").clone(),
        ],
    )
    .await;
}

#[tokio::test]
async fn rq_failed_jobs_requeued_through_the_api_run_once_each_and_the_move_is_audited() {
    let (redis, dir, flag) = failed_jobs(50).await;
    let d = Daemon::start(&config(&redis), &[]).await;
    let client = reqwest::Client::new();
    let post = |q: &str| {
        client
            .post(d.url(&format!("/api/system/dlq/requeue-all?queue={q}")))
            .send()
    };

    // Listed in the seed's JobFailure shape, with RQ's own words.
    let page = d.get_json("/api/dlq/jobs/dlq:rq:default?start=5&limit=10").await;
    assert_eq!(
        (page["total"].as_u64(), page["start"].as_u64()),
        (Some(50), Some(5)),
        "{page}"
    );
    let jobs = page["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 10, "{page}");
    for (i, j) in jobs.iter().enumerate() {
        assert_eq!(
            (j["framework"].as_str(), j["index"].as_u64()),
            (Some("rq"), Some(5 + i as u64)),
            "{j}"
        );
        assert_eq!(j["queue_name"], "rq:default");
        assert_eq!(j["status"], "failed", "{j}");
        assert!(
            j["original_job"]["description"]
                .as_str()
                .unwrap()
                .starts_with("rqjobs.work("),
            "{j}"
        );
        assert!(
            j["error"].as_str().unwrap().contains("RuntimeError: job "),
            "the traceback: {j}"
        );
        assert!(
            inferwatch::dlq::parse_rq_time(j["last_failed_at"].as_str().unwrap()).is_some(),
            "{j}"
        );
    }
    let by_query = d.get_json("/api/system/dlq/jobs?queue=dlq:rq:default&limit=2").await;
    assert_eq!(by_query["jobs"].as_array().unwrap().len(), 2, "{by_query}");
    // A filter over the tracebacks, in bounded scans (a cursor to go on).
    let scan = d.get_json("/api/dlq/jobs/dlq:rq:default?error=JOB%207:&limit=10").await;
    let found = scan["jobs"].as_array().unwrap();
    assert_eq!(found.len(), 1, "job 7 only: {scan}");
    assert!(found[0]["error"].as_str().unwrap().contains("job 7: the flag is up"));
    assert_eq!(scan["next_cursor"], serde_json::Value::Null, "{scan}");
    let resp = client
        .get(d.url("/api/dlq/jobs/dlq:rq:default?older_than=soon"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400, "a bad filter is refused, saying so");
    // Each traceback is cut at list_entry_max_bytes (RQ's run over 256).
    let small = config(&redis).replace(
        "  rq:",
        "  list_entry_max_bytes: 256\n  list_page_max_bytes: 65536\n  rq:",
    );
    let tight = Daemon::start(&small, &[]).await;
    let page = tight.get_json("/api/dlq/jobs/dlq:rq:default?limit=50").await;
    let jobs = page["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 50);
    assert!(jobs.iter().all(|j| j["error"].as_str().unwrap().len() == 256), "{page}");
    drop(tight);

    clear_and_restore(&d, "dlq:rq:default", 50).await;
    std::fs::remove_file(&flag).unwrap();
    // One job, those whose traceback names jobs 1x, then the rest.
    requeue_three_ways(&d, "dlq:rq:default", 50, "job 1").await;
    burst_worker(dir.path(), &redis, "default", "finished", 50).await;
    assert_eq!(runs(&redis).await, (50, 50), "each job ran exactly once");

    let page = d.get_text("/metrics").await;
    assert_eq!(
        sample_value(&page, "dlq_jobs_requeued_total{queue=\"rq:default\"}"),
        Some(50.0)
    );
    let audit = d.get_json("/api/system/dlq/audit").await;
    // Each of the three moves audited, newest first, the moves adding up.
    let rows = &audit["rows"].as_array().unwrap()[..3];
    let actions: Vec<&str> = rows.iter().map(|r| r["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["requeue_all", "requeue_filtered", "requeue_job"], "{audit}");
    assert!(rows.iter().all(|r| r["queue"] == "dlq:rq:default"), "{audit}");
    let moved: u64 = rows.iter().map(|r| r["counts"]["moved"].as_u64().unwrap()).sum();
    assert_eq!(moved, 50, "{audit}");
    // An RQ queue that is not configured is no DLQ.
    assert_eq!(post("dlq:rq:other").await.unwrap().status(), 404);
}

/// RQ queue `q`.
fn rq_queue(q: &str) -> inferwatch::dlq::FrameworkQueue {
    inferwatch::dlq::FrameworkQueue {
        framework: inferwatch::dlq::Framework::Rq,
        queue: q.into(),
    }
}

fn rq_default() -> inferwatch::dlq::FrameworkQueue {
    rq_queue("default")
}

/// The queues' client for the config `yaml`, as the daemon builds it,
/// moving `batch` jobs a step.
pub fn queues_for(yaml: &str, batch: usize) -> std::sync::Arc<inferwatch::dlq::Queues> {
    let mut config = inferwatch::config::Config::from_yaml(yaml).unwrap();
    config.queues.requeue_batch = batch;
    config.validate().unwrap();
    inferwatch::dlq::Queues::new(config.queues, &inferwatch::metrics::Metrics::new()).unwrap()
}

/// Every member of the list or sorted set `key` (`LRANGE`/`ZRANGE … 0 -1`).
pub async fn all(redis: &Redis, range: &str, key: impl redis::ToRedisArgs) -> Vec<String> {
    let mut c = redis.connection().await;
    redis::cmd(range)
        .arg(key)
        .arg(0)
        .arg(-1)
        .query_async(&mut c)
        .await
        .unwrap()
}

/// The length of the list or sorted set `key` (`LLEN`/`ZCARD`).
pub async fn count(redis: &Redis, len: &str, key: impl redis::ToRedisArgs) -> u64 {
    let mut c = redis.connection().await;
    redis::cmd(len).arg(key).query_async(&mut c).await.unwrap()
}

/// The runs RQ's worker recorded: how many, and how many distinct jobs.
pub async fn runs(redis: &Redis) -> (usize, usize) {
    let ran = all(redis, "LRANGE", "ran").await;
    let distinct: std::collections::HashSet<&String> = ran.iter().collect();
    (ran.len(), distinct.len())
}

#[tokio::test]
async fn rq_failed_jobs_requeued_by_two_requeues_at_once_run_exactly_once_by_rqs_worker() {
    let (redis, dir, flag) = failed_jobs(200).await;
    let count = |key: &'static str, cmd: &'static str| {
        let redis = &redis;
        async move {
            let n: u64 = redis::cmd(cmd)
                .arg(key)
                .query_async(&mut redis.connection().await)
                .await
                .unwrap();
            n
        }
    };
    assert_eq!(count("rq:failed:default", "ZCARD").await, 200);

    // The cause is fixed; two requeues race over the same failed set, in
    // batches of 7 so that their batches interleave.
    std::fs::remove_file(&flag).unwrap();
    // RQ's own worker runs all along, taking jobs as they arrive.
    let worker = rq_worker(dir.path(), &redis, "default", false);
    let (a, b) = (queues_for(&config(&redis), 7), queues_for(&config(&redis), 7));
    let fq = rq_default();
    let (ra, rb) = tokio::join!(a.requeue_all_framework(&fq), b.requeue_all_framework(&fq));
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert!(
        ra.taken + rb.taken > 0,
        "the two requeues met over the same jobs: {ra:?} {rb:?}"
    );
    assert_eq!(
        ra.requeued + rb.requeued,
        200,
        "each job pushed once between them: {ra:?} {rb:?}"
    );
    assert_eq!((ra.left, rb.left), (0, 0));
    assert_eq!(count("rq:failed:default", "ZCARD").await, 0);

    // RQ's worker, running while they raced, runs every job exactly once.
    worked(&redis, "default", "finished", 200).await;
    drop(worker);
    assert_eq!(runs(&redis).await, (200, 200));
    assert_eq!(count("rq:failed:default", "ZCARD").await, 0);
    let status: String = redis::cmd("HGET")
        .arg(format!("rq:job:{}", first_job_id(&redis).await))
        .arg("status")
        .query_async(&mut redis.connection().await)
        .await
        .unwrap();
    assert_eq!(status, "finished", "RQ finished the requeued job");
}

/// An id of a job RQ knows (from its finished registry).
async fn first_job_id(redis: &Redis) -> String {
    let ids: Vec<String> = redis::cmd("ZRANGE")
        .arg("rq:finished:default")
        .arg(0)
        .arg(0)
        .query_async(&mut redis.connection().await)
        .await
        .unwrap();
    ids.into_iter().next().expect("a finished job")
}

#[tokio::test]
async fn an_rq_requeue_checks_every_key_before_it_moves_and_leaves_what_is_not_its_queues() {
    let (redis, _dir, _flag) = failed_jobs(4).await;
    let mut c = redis.connection().await;
    // One failed entry whose job hash is gone, one whose origin is another queue.
    let ids = all(&redis, "ZRANGE", "rq:failed:default").await;
    let _: () = redis::cmd("DEL")
        .arg(format!("rq:job:{}", ids[0]))
        .query_async(&mut c)
        .await
        .unwrap();
    let _: () = redis::cmd("HSET")
        .arg(format!("rq:job:{}", ids[1]))
        .arg("origin")
        .arg("other")
        .query_async(&mut c)
        .await
        .unwrap();
    // The queue key of another type: nothing moves, and the error names it.
    let _: () = redis::cmd("SET")
        .arg("rq:queue:default")
        .arg("x")
        .query_async(&mut c)
        .await
        .unwrap();
    let q = queues_for(&config(&redis), 100);
    let e = q.requeue_all_framework(&rq_default()).await.unwrap_err().to_string();
    assert!(e.contains("rq:queue:default holds a string, not a list"), "{e}");
    let n = count(&redis, "ZCARD", "rq:failed:default").await;
    assert_eq!(n, 4, "nothing moved");
    let _: () = redis::cmd("DEL")
        .arg("rq:queue:default")
        .query_async(&mut c)
        .await
        .unwrap();
    let r = q.requeue_all_framework(&rq_default()).await.unwrap();
    assert_eq!((r.requeued, r.left, r.taken), (2, 2, 0), "{r:?}");
    let left = all(&redis, "ZRANGE", "rq:failed:default").await;
    assert_eq!(left, ids[..2].to_vec(), "the two it may not move stay failed");
    let e = q
        .requeue_all_framework(&rq_queue("other"))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("rq:other is not a configured queue"), "{e}");
}

/// `n` jobs put in RQ's failed registry by RQ's own code
/// (`FailedJobRegistry.add`, which RQ's worker calls on a failure): far
/// faster than failing them one by one through a worker. Ids `job-000000`…
fn fail_through_rqs_registry(dir: &Path, redis: &Redis, n: usize, flag: &Path) {
    rq(
        dir,
        redis,
        &format!(
            "import os\nfrom redis import Redis\nfrom rq.job import Job, JobStatus\nfrom rq.registry import FailedJobRegistry\n\
             r = Redis.from_url(os.environ['REDIS_URL'])\nreg = FailedJobRegistry('default', connection=r)\n\
             for start in range(0, {n}, 1000):\n    p = r.pipeline()\n\
             \x20   for i in range(start, min({n}, start + 1000)):\n\
             \x20       job = Job.create('rqjobs.work', args=({flag:?}, i), connection=r, origin='default', id=f'job-{{i:06d}}')\n\
             \x20       job._status = JobStatus.FAILED\n\
             \x20       reg.add(job, exc_string='RuntimeError: the flag is up', pipeline=p)\n\
             \x20   p.execute()\n",
            flag = flag.display().to_string()
        ),
    );
}

#[tokio::test]
async fn sigkill_of_the_daemon_mid_rq_requeue_leaves_each_job_in_one_place() {
    let redis = Redis::start().await;
    let dir = tempfile::tempdir().unwrap();
    write_jobs(dir.path());
    let flag = dir.path().join("flag");
    const N: u64 = 20_000;
    fail_through_rqs_registry(dir.path(), &redis, N as usize, &flag);
    assert_eq!(count(&redis, "ZCARD", "rq:failed:default").await, N);
    // One job a Lua step, so that the kill lands between steps mid-way.
    let cfg = config(&redis).replace("  rq:", "  requeue_batch: 1\n  rq:");
    let moves = Moves {
        dlq: "dlq:rq:default",
        failed: "rq:failed:default",
        queue: "rq:queue:default",
    };
    // (That RQ's worker then runs each requeued job once is shown above on
    // 200 and 50 jobs: here it would take it minutes.)
    sigkill_mid_requeue(&redis, &cfg, moves, (N, 1000), async |queued: &[String]| {
        let mut c = redis.connection().await;
        for id in queued {
            let status: String = redis::cmd("HGET")
                .arg(format!("rq:job:{id}"))
                .arg("status")
                .query_async(&mut c)
                .await
                .unwrap();
            assert_eq!(status, "queued", "{id} was pushed with its status");
        }
    })
    .await;
}

#[tokio::test]
async fn the_least_privileged_user_moves_bullmqs_and_dramatiqs_failed_jobs_and_only_reads_celerys() {
    let redis = Redis::start().await;
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("flag");
    std::fs::write(&flag, "up").unwrap();
    crate::bullmq::add(dir.path(), &redis, 3);
    let w = crate::bullmq::Worker::start(dir.path(), &redis, &flag, 2);
    crate::bullmq::settled(&redis, "bull:render:failed", 3).await;
    drop(w);
    crate::dramatiq::send(dir.path(), &redis, &flag, 3, 0);
    let w = crate::dramatiq::Worker::start(dir.path(), &redis, 0);
    crate::dramatiq::settled(&redis, 3, 0).await;
    drop(w);
    crate::celery::python(
        dir.path(),
        &redis,
        "import ctasks\nfor i in range(4):\n    ctasks.work.apply_async(('/none', i), priority=i * 3)\n",
    );

    let cfg = format!(
        "gpu:\n  enabled: false\npipeline:\n  stream:\n    enabled: false\nqueues:\n  redis_url: redis://least@127.0.0.1:{}/0\n  \
         poll_interval: 100ms\n  names: [seed]\n  bullmq: {{queues: [render]}}\n  dramatiq: {{queues: [default]}}\n  celery: {{queues: [celery]}}\n",
        redis.port
    );
    let line = acl_line(&cfg, "pw-least");
    assert!(line.contains(" ~bull:render:* "), "{line}");
    assert!(
        line.contains("~dramatiq:default ~dramatiq:default.msgs ~dramatiq:default.XQ ~dramatiq:default.XQ.msgs"),
        "{line}"
    );
    assert!(
        line.contains("%R~celery %R~celery??[369] %R~unacked %R~unacked_index"),
        "{line}"
    );
    redis.apply_acl(&line).await;
    let d = Daemon::start(&cfg.replace("least@", "least:pw-least@"), &[]).await;
    eventually("every framework's queue read as the least user", LIMIT, async || {
        let page = d.get_text("/metrics").await;
        (sample_value(&page, "dlq_depth{queue=\"bullmq:render\"}") == Some(3.0)
            && sample_value(&page, "dlq_depth{queue=\"dramatiq:default\"}") == Some(3.0)
            && sample_value(&page, "job_queue_depth{queue=\"celery:celery\"}") == Some(4.0))
        .then_some(())
    })
    .await;
    for dlq in ["dlq:bullmq:render", "dlq:dramatiq:default"] {
        assert_eq!(d.get_json(&format!("/api/dlq/jobs/{dlq}")).await["total"], 3, "{dlq}");
        clear_and_restore(&d, dlq, 3).await;
        let report = d.post_json(&format!("/api/system/dlq/requeue-all?queue={dlq}")).await;
        assert_eq!(report["requeued"], 3, "{dlq}: {report}");
    }
    assert_eq!(count(&redis, "LLEN", "bull:render:wait").await, 3);
    assert_eq!(count(&redis, "LLEN", "dramatiq:default").await, 3);
    // Celery's keys are read only, and nothing else is reachable.
    refused_to_least(
        &redis,
        [
            redis::cmd("RPUSH").arg("celery").arg("x").clone(),
            redis::cmd("HSET").arg("unacked").arg("t").arg("x").clone(),
            redis::cmd("RPUSH").arg("bull:other:wait").arg("x").clone(),
            redis::cmd("SADD").arg("dramatiq:__acks__.w.default").arg("x").clone(),
        ],
    )
    .await;
}

/// Requeues the `n` failed jobs of framework DLQ `dlq` through the API in
/// the three ways it offers: one job by the framework's id (a second try
/// is 404: it is no longer failed), those whose error holds `pattern`
/// (after a dry run that moves nothing), then the rest. Each job is moved
/// once: the three counts add up to `n`.
pub async fn requeue_three_ways(d: &Daemon, dlq: &str, n: u64, pattern: &str) {
    let client = reqwest::Client::new();
    let post = |path: String| client.post(d.url(&path)).send();
    let total = async || {
        d.get_json(&format!("/api/dlq/jobs/{dlq}?limit=1")).await["total"]
            .as_u64()
            .unwrap()
    };
    let first = d.get_json(&format!("/api/dlq/jobs/{dlq}?limit=1")).await;
    let id = first["jobs"][0]["id"].as_str().unwrap().to_string();
    let one = post(format!("/api/system/dlq/jobs/{id}/requeue?queue={dlq}&index=0"))
        .await
        .unwrap();
    assert_eq!(one.status(), 200, "{:?}", one.text().await);
    let again = post(format!("/api/system/dlq/jobs/{id}/requeue?queue={dlq}"))
        .await
        .unwrap();
    assert_eq!(again.status(), 404, "a job no longer failed is not moved twice");
    let bad = post(format!("/api/system/dlq/jobs/a%20b/requeue?queue={dlq}"))
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert_eq!(total().await, n - 1);

    let filter = format!("queue={dlq}&error={}", pattern.replace(' ', "%20"));
    let dry: serde_json::Value = post(format!("/api/system/dlq/requeue?{filter}&dry_run=true"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let matched = dry["matched"].as_u64().unwrap();
    assert!(matched > 0 && matched < n - 1, "{dry}");
    assert_eq!(
        (dry["requeued"].as_u64(), total().await),
        (Some(0), n - 1),
        "a dry run moves nothing"
    );
    let search = d
        .get_json(&format!(
            "/api/dlq/jobs/{dlq}?{}&limit=1000",
            &filter[filter.find('&').unwrap() + 1..]
        ))
        .await;
    assert_eq!(search["jobs"].as_array().unwrap().len() as u64, matched, "{search}");
    let moved: serde_json::Value = post(format!("/api/system/dlq/requeue?{filter}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(moved["requeued"].as_u64(), Some(matched), "{moved}");
    assert_eq!(total().await, n - 1 - matched);
    let rest: serde_json::Value = post(format!("/api/system/dlq/requeue-all?queue={dlq}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(rest["requeued"].as_u64(), Some(n - 1 - matched), "{rest}");
    assert_eq!(total().await, 0);
}

/// Clears framework DLQ `dlq` (its `n` failed jobs) into an archive
/// through the API, and restores it: nothing is lost, and the archive is
/// gone afterwards.
pub async fn clear_and_restore(d: &Daemon, dlq: &str, n: u64) {
    let client = reqwest::Client::new();
    let total = async || {
        d.get_json(&format!("/api/dlq/jobs/{dlq}?limit=1")).await["total"]
            .as_u64()
            .unwrap()
    };
    let cleared: serde_json::Value = client
        .delete(d.url(&format!("/api/system/dlq/clear?queue={dlq}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(cleared["cleared"].as_u64(), Some(n), "{cleared}");
    let archive = cleared["archive_key"].as_str().unwrap().to_string();
    assert!(archive.starts_with(&format!("{dlq}:cleared:")), "{archive}");
    assert_eq!(total().await, 0, "the failed set moved into the archive");
    let archives = d.get_json(&format!("/api/system/dlq/archives?queue={dlq}")).await;
    assert_eq!(
        archives[0]["archive_key"].as_str(),
        Some(archive.as_str()),
        "{archives}"
    );
    assert_eq!(
        (archives[0]["jobs"].as_u64(), archives[0]["kind"].as_str()),
        (Some(n), Some("cleared"))
    );
    assert!(archives[0]["ttl_seconds"].as_i64().unwrap() > 0, "{archives}");
    let restored = d.post_json(&format!("/api/system/dlq/restore?archive={archive}")).await;
    assert_eq!(restored["restored"].as_u64(), Some(n), "{restored}");
    assert_eq!(total().await, n, "every job back");
    let archives = d.get_json(&format!("/api/system/dlq/archives?queue={dlq}")).await;
    assert_eq!(archives.as_array().map(Vec::len), Some(0), "{archives}");
    let again = client
        .post(d.url(&format!("/api/system/dlq/restore?archive={archive}")))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 404, "an archive restores once");
}

/// Where a framework keeps what a requeue moves: its DLQ's name, the
/// failed set (a sorted set) and the list jobs are requeued onto.
pub struct Moves<'a> {
    pub dlq: &'a str,
    pub failed: &'a str,
    pub queue: &'a str,
}

/// Requeues the `n` failed jobs of `m` one Lua step a job through a daemon
/// on `cfg` (which holds `requeue_batch: 1`), SIGKILLs it once more than
/// `at` jobs are queued, and checks that every id is in exactly one of the
/// failed set and the queue; `check` then looks at the ids queued. A second
/// daemon requeues the rest, each once.
pub async fn sigkill_mid_requeue(
    redis: &Redis,
    cfg: &str,
    m: Moves<'_>,
    (n, at): (u64, u64),
    check: impl AsyncFn(&[String]),
) {
    let mut d = Daemon::start(cfg, &[]).await;
    let url = d.url(&format!("/api/system/dlq/requeue-all?queue={}", m.dlq));
    let request = tokio::spawn(async move { reqwest::Client::new().post(url).send().await });
    eventually("the requeue to be under way", LIMIT, async || {
        (count(redis, "LLEN", m.queue).await > at).then_some(())
    })
    .await;
    d.proc.stop_with(crate::common::SIGKILL);
    let _ = request.await;

    let queued = all(redis, "LRANGE", m.queue).await;
    let failed = all(redis, "ZRANGE", m.failed).await;
    assert!(
        !queued.is_empty() && !failed.is_empty(),
        "killed mid-way: {} / {}",
        queued.len(),
        failed.len()
    );
    let mut seen: std::collections::HashMap<&String, u32> = Default::default();
    for id in queued.iter().chain(&failed) {
        *seen.entry(id).or_default() += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "in two places: {twice:?}");
    assert_eq!(
        seen.len() as u64,
        n,
        "every job in exactly one place: {} + {}",
        queued.len(),
        failed.len()
    );
    check(&queued).await;

    let d = Daemon::start(&cfg.replace("requeue_batch: 1\n", "requeue_batch: 1000\n"), &[]).await;
    let report = d
        .post_json(&format!("/api/system/dlq/requeue-all?queue={}", m.dlq))
        .await;
    assert_eq!(report["requeued"].as_u64(), Some(failed.len() as u64), "{report}");
    let queued = all(redis, "LRANGE", m.queue).await;
    let distinct: std::collections::HashSet<&String> = queued.iter().collect();
    assert_eq!(
        (queued.len() as u64, distinct.len() as u64),
        (n, n),
        "every job queued once"
    );
    assert_eq!(count(redis, "ZCARD", m.failed).await, 0);
}

/// Waits until the daemon counts `failed` failed jobs of queue `label`
/// (`bullmq:render`), none waiting and none in flight, and the oldest
/// failure's age (under ten minutes: they failed in this test).
pub async fn counted(d: &Daemon, label: &str, failed: f64) {
    let series = |name: &str| format!("{name}{{queue=\"{label}\"}}");
    let page = eventually(&format!("{label}'s failed jobs counted"), LIMIT, async || {
        let page = d.get_text("/metrics").await;
        (sample_value(&page, &series("dlq_depth")) == Some(failed)).then_some(page)
    })
    .await;
    assert_eq!(sample_value(&page, &series("job_queue_depth")), Some(0.0));
    assert_eq!(sample_value(&page, &series("job_queue_active")), Some(0.0));
    let age = sample_value(&page, &series("dlq_oldest_job_age_seconds")).unwrap();
    assert!((0.0..600.0).contains(&age), "the oldest failure's age: {age}");
}

/// The API's requeue-all of `fq`'s failed set and a second requeue in
/// batches of 7 (a client on the daemon's config) race over the same `n`
/// failed jobs: each job is moved once between them. The API's report.
pub async fn racing_requeues(d: &Daemon, fq: inferwatch::dlq::FrameworkQueue, n: u64) -> serde_json::Value {
    let other = queues_for(&std::fs::read_to_string(d.config_path()).unwrap(), 7);
    let dlq = format!("/api/system/dlq/requeue-all?queue=dlq:{}", fq.label());
    let (report, direct) = tokio::join!(d.post_json(&dlq), other.requeue_all_framework(&fq));
    let direct = direct.unwrap();
    assert_eq!(
        report["requeued"].as_u64().unwrap() + direct.requeued,
        n,
        "each job moved once between them: {report} {direct:?}"
    );
    assert_eq!((report["left"].as_u64(), direct.left), (Some(0), 0));
    report
}

/// Each of `cmds`, sent as the ACL user `least` (password `pw-least`), is
/// refused with `NOPERM`.
async fn refused_to_least<const N: usize>(redis: &Redis, cmds: [redis::Cmd; N]) {
    let mut user = redis::Client::open(format!("redis://least:pw-least@127.0.0.1:{}/0", redis.port))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    for cmd in cmds {
        let what = String::from_utf8_lossy(&cmd.get_packed_command()).replace("\r\n", " ");
        let e = cmd.query_async::<()>(&mut user).await.expect_err(&what);
        assert_eq!(e.code(), Some("NOPERM"), "{what}: {e}");
    }
}
