//! Redis Sentinel: a real master, two replicas and three Sentinels. The
//! master is SIGKILLed in the middle of a requeue-all of 100,000 jobs; a
//! replica is promoted, the daemon finds it, and on the new master every
//! job is in exactly one of the DLQ or the queue. The health check and the
//! stream reader follow the failover too.

use std::time::Duration;

use redis::AsyncCommands;
use serde_json::Value;

use crate::common::{eventually, sample_value, Daemon, Redis, SentinelSet};

const N: usize = 100_000;
const DLQ: &str = "dlq:detection_queue";
const QUEUE: &str = "detection_queue";
const LIMIT: Duration = Duration::from_secs(90);

fn failure(i: usize) -> String {
    format!(
        r#"{{"original_job":{{"id":"job-{i}"}},"error":"CUDA out of memory","attempt_count":3,"first_failed_at":"2026-11-20T10:00:00Z","last_failed_at":"2026-11-20T10:05:00Z","queue_name":"{QUEUE}"}}"#
    )
}

/// Every job id on `r` exactly once, across the queue and the DLQ.
async fn assert_each_job_once(r: &Redis) -> (usize, usize) {
    crate::common::assert_each_job_once(r, QUEUE, DLQ, N).await
}

async fn llen(r: &Redis, key: &str) -> usize {
    r.connection().await.llen(key).await.unwrap()
}

/// One failover in the middle of a requeue-all: the master dies once its DLQ
/// holds `kill_below` jobs or fewer.
async fn failover_mid_requeue(kill_below: usize) {
    let mut set = SentinelSet::start().await;
    let first = set.master_port().await.unwrap();
    {
        let master = set.server(first);
        let mut c = master.connection().await;
        let all: Vec<String> = (0..N).map(failure).collect();
        for chunk in all.chunks(10_000) {
            let _: () = c.lpush(DLQ, chunk).await.unwrap();
        }
        // Both replicas have every job before the move starts.
        let acked: u64 = redis::cmd("WAIT").arg(2).arg(10_000).query_async(&mut c).await.unwrap();
        assert_eq!(acked, 2);
    }
    let d = Daemon::start(
        &format!(
            "gpu:\n  enabled: false\nqueues:\n  redis_url: \"{}\"\n  poll_interval: 200ms\n  names: [{QUEUE}]\n  \
             requeue_batch: 200\n  replica_wait: 1s\nhealth:\n  services:\n    - name: cache\n      kind: redis\n      \
             url: \"{}\"\n      interval: 200ms\n",
            set.url(),
            set.url()
        ),
        &[],
    )
    .await;
    let url = d.url(&format!("/api/system/dlq/requeue-all?queue={DLQ}"));
    let req = tokio::spawn({
        let url = url.clone();
        async move { reqwest::Client::new().post(url).send().await }
    });
    {
        let master = set.server(first);
        eventually("the requeue to pass the kill point", LIMIT, || async {
            (llen(master, DLQ).await <= kill_below).then_some(())
        })
        .await;
        master.kill();
    }
    // The request in flight fails (or, had it just finished, succeeds).
    let answered = req.await.unwrap().map(|r| r.status().as_u16());
    assert!(matches!(answered, Ok(503) | Ok(200) | Err(_)), "{answered:?}");
    // Sentinel promotes a replica.
    let promoted = eventually("a replica to be promoted", LIMIT, || async {
        set.master_port().await.filter(|p| *p != first)
    })
    .await;
    // Killed mid-way: the new master holds a part of the move (each batch
    // whole or not at all), and the rest still waits in its DLQ.
    let (queued, left) = assert_each_job_once(set.server(promoted)).await;
    assert!(queued > 0 && left > 0, "killed mid-way: {queued} requeued, {left} left");
    assert!(left <= kill_below + 2_000, "{left} left, killed at {kill_below}");
    // The daemon follows: its next requeue-all runs on the new master. A
    // try may fail part-way (under load the 1 s down-after of the test's
    // Sentinels can see the new master down too, and fail over again: the
    // move answers 503 with whole batches done, which it does not report);
    // so what every try moved is read from dlq_jobs_requeued_total, which
    // counts each batch as it lands, and must add up to what was left.
    let moved = "dlq_jobs_requeued_total{queue=\"detection_queue\"}";
    let before = sample_value(&d.get_text("/metrics").await, moved).unwrap_or(0.0);
    let mut tries = 0;
    let report: Value = eventually("a requeue-all on the new master", LIMIT, || {
        let url = url.clone();
        tries += 1;
        async move {
            let r = reqwest::Client::new().post(url).send().await.ok()?;
            if r.status() != 200 {
                return None;
            }
            r.json().await.ok()
        }
    })
    .await;
    assert_eq!(report["remaining"], 0, "{report}");
    // Every job left is counted as moved. More only when a try failed
    // part-way (tries > 1) on a second failover: a batch the failing master
    // moved but no replica had yet is rolled back by the promotion (its
    // jobs are in the DLQ again, as docs/redis.md says), and is moved, and
    // counted, again. That no job is lost or doubled is checked on the
    // master below, job by job.
    let counted = eventually("every job left counted as moved", LIMIT, || async {
        let now = sample_value(&d.get_text("/metrics").await, moved)?;
        (now - before >= left as f64).then_some(now - before)
    })
    .await;
    let excess = counted - left as f64;
    assert!(
        excess == 0.0 || tries > 1,
        "{counted} moved, {left} were left, in {tries} try: a single try moves each job left once"
    );
    if tries == 1 {
        assert_eq!(
            report["requeued"], left,
            "one try moved exactly what was left: {report}"
        );
    } else {
        eprintln!(
            "the requeue-all took {tries} tries after the failover; the last moved {}",
            report["requeued"]
        );
    }
    let rep = &report["replication"];
    assert!(rep["batches"].as_u64().unwrap() >= 1, "{report}");
    assert_eq!(
        rep["batches"].as_u64().unwrap(),
        rep["confirmed_batches"].as_u64().unwrap() + rep["unconfirmed_batches"].as_array().unwrap().len() as u64,
        "{report}"
    );
    // On the master now (another failover may have promoted another).
    let master = set.master_port().await.unwrap();
    let (queued, in_dlq) = assert_each_job_once(set.server(master)).await;
    assert_eq!((queued, in_dlq), (N, 0));
    // The audit row says what the replicas confirmed.
    let audit = d.get_json("/api/system/dlq/audit?limit=1").await;
    assert_eq!(
        audit["rows"][0]["counts"]["replication"]["batches"], rep["batches"],
        "{audit}"
    );
    // The health check follows the failover as well.
    eventually("the Redis check to pass on the new master", LIMIT, || async {
        (d.get_json("/api/system/health").await["services"]["cache"] == "healthy").then_some(())
    })
    .await;
    assert_eq!(
        sample_value(
            &d.get_text("/metrics").await,
            &format!("dlq_depth{{queue=\"{QUEUE}\"}}")
        )
        .map(|v| v <= 0.0),
        Some(true)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_in_the_middle_of_a_requeue_loses_and_doubles_no_job_three_times() {
    for kill_below in [75_000, 50_000, 25_000] {
        failover_mid_requeue(kill_below).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_reader_follows_a_failover() {
    let mut set = SentinelSet::start().await;
    let first = set.master_port().await.unwrap();
    let d = Daemon::start(
        &format!(
            "gpu:\n  enabled: false\nqueues:\n  redis_url: \"{}\"\n  poll_interval: 200ms\n  names: [{QUEUE}]\n",
            set.url()
        ),
        &[],
    )
    .await;
    let event = r#"{"kind":"stage","stage":"detection","duration_seconds":0.01,"status":"ok"}"#;
    let read = |n: f64| {
        let d = &d;
        async move {
            (sample_value(
                &d.get_text("/metrics").await,
                "pipeline_events_total{source=\"redis_stream\"}",
            ) == Some(n))
            .then_some(())
        }
    };
    {
        let mut c = set.server(first).connection().await;
        let _: String = c.xadd("pipeline:events", "*", &[("event", event)]).await.unwrap();
        let _: u64 = redis::cmd("WAIT").arg(2).arg(10_000).query_async(&mut c).await.unwrap();
    }
    eventually("the first event", LIMIT, || read(1.0)).await;
    // A filtered requeue waits for a replica after each batch, too.
    {
        let mut c = set.server(first).connection().await;
        let all: Vec<String> = (0..10).map(failure).collect();
        let _: () = c.lpush(DLQ, all).await.unwrap();
    }
    let resp = reqwest::Client::new()
        .post(d.url(&format!("/api/system/dlq/requeue?queue={DLQ}&error=cuda")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let report: Value = resp.json().await.unwrap();
    assert_eq!(report["moved"], 10, "{report}");
    let rep = &report["replication"];
    assert!(rep["batches"].as_u64().unwrap() >= 1, "{report}");
    assert_eq!(
        rep["confirmed_batches"], rep["batches"],
        "both replicas are up: {report}"
    );
    assert!(rep["min_replicas"].as_u64().unwrap() >= 1, "{report}");
    set.server(first).kill();
    let promoted = eventually("a replica to be promoted", LIMIT, || async {
        set.master_port().await.filter(|p| *p != first)
    })
    .await;
    let mut c = set.server(promoted).connection().await;
    let _: String = c.xadd("pipeline:events", "*", &[("event", event)]).await.unwrap();
    eventually("the event written after the failover", LIMIT, || read(2.0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_sentinels_are_a_failing_collector_and_a_url_without_a_master_name_stops_startup() {
    let (a, b) = (crate::common::free_port(), crate::common::free_port());
    let d = Daemon::start(
        &format!(
            "gpu:\n  enabled: false\nqueues:\n  redis_url: \"redis+sentinel://127.0.0.1:{a},127.0.0.1:{b}/mymaster/0\"\n  \
             poll_interval: 200ms\n  names: [{QUEUE}]\n"
        ),
        &[],
    )
    .await;
    d.until(
        "inferwatch_collector_success{collector=\"queues\"}",
        "the queue collector to fail",
        |v| v == 0.0,
    )
    .await;
    assert_eq!(d.get_text("/-/healthy").await, "Healthy.\n", "the daemon serves on");
    let resp = reqwest::get(d.url(&format!("/api/dlq/jobs/{DLQ}"))).await.unwrap();
    assert_eq!(resp.status(), 503, "Redis unavailable, not a 500");

    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.yml");
    std::fs::write(
        &cfg,
        format!("queues:\n  redis_url: \"redis+sentinel://127.0.0.1:{a}\"\n"),
    )
    .unwrap();
    let (code, text) = crate::common::check_config(&cfg);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("queues.redis_url") && text.contains("no master name"),
        "{text}"
    );
}

/// Issue 36's failover failure, made to happen on purpose: after a
/// failover the old test's second requeue-all moved 7,200 and reported
/// `remaining: 0` while 24,400 were left. No job was lost: the test retried
/// the requeue-all until one answered 200, and an earlier try had failed
/// part-way on a second failover after moving 17,200 in whole batches,
/// which its 503 does not report; it compared the last try's report with
/// all that was left. Here a forced failover (`SENTINEL FAILOVER`, which
/// promotes a replica without waiting for it) cuts a rate-limited requeue
/// task mid-way: the task fails having moved part; the next requeue-all on
/// the new master reports only the rest. The two add up to every job, or
/// more: batches the old master moved after the promotion never reached
/// the new one, so those jobs are in its DLQ again and are moved (and
/// counted) again. On the new master each job is in exactly one place.
#[tokio::test]
async fn a_requeue_cut_by_a_failover_and_run_again_moves_each_job_once_though_each_report_counts_its_own() {
    const JOBS: usize = 20_000;
    let mut set = SentinelSet::start().await;
    let first = set.master_port().await.unwrap();
    {
        let mut c = set.server(first).connection().await;
        let all: Vec<String> = (0..JOBS).map(failure).collect();
        let _: () = c.lpush(DLQ, &all).await.unwrap();
        let acked: u64 = redis::cmd("WAIT").arg(2).arg(10_000).query_async(&mut c).await.unwrap();
        assert_eq!(acked, 2);
    }
    let d = Daemon::start(
        &format!(
            "gpu:\n  enabled: false\nqueues:\n  redis_url: \"{}\"\n  poll_interval: 200ms\n  names: [{QUEUE}]\n  requeue_batch: 100\n",
            set.url()
        ),
        &[],
    )
    .await;
    let started: Value = d
        .post_json(&format!("/api/system/dlq/requeue-all?queue={DLQ}&rate=2000"))
        .await;
    let status_url = started["status_url"].as_str().expect("a task").to_string();
    eventually("the task to be under way", LIMIT, || async {
        (d.get_json(&status_url).await["moved"].as_u64()? >= 2_000).then_some(())
    })
    .await;
    // A graceful failover: the replica is caught up before it is promoted.
    set.failover().await;
    let task = eventually("the task to stop on the failover", LIMIT, || async {
        let t = d.get_json(&status_url).await;
        (t["state"] != "running").then_some(t)
    })
    .await;
    assert_eq!(task["state"], "failed", "cut mid-way: {task}");
    let first_try = task["moved"].as_u64().unwrap();
    assert!(first_try > 0 && first_try < JOBS as u64, "{task}");
    let promoted = eventually("a replica promoted", LIMIT, || async {
        set.master_port().await.filter(|p| *p != first)
    })
    .await;
    let report = eventually("a requeue-all on the new master", LIMIT, || async {
        let r = reqwest::Client::new()
            .post(d.url(&format!("/api/system/dlq/requeue-all?queue={DLQ}")))
            .send()
            .await
            .ok()?;
        (r.status() == 200).then_some(())?;
        r.json::<Value>().await.ok()
    })
    .await;
    let second_try = report["requeued"].as_u64().unwrap();
    assert!(
        second_try < JOBS as u64,
        "the last report counts only its own try: {report}"
    );
    assert!(
        first_try + second_try >= JOBS as u64,
        "the tries cover every job: {first_try} + {report}"
    );
    eprintln!("moved {first_try} before the failover and {second_try} after, of {JOBS}");
    let (queued, left) = crate::common::assert_each_job_once(set.server(promoted), QUEUE, DLQ, JOBS).await;
    assert_eq!((queued, left), (JOBS, 0));
}
