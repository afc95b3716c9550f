//! The DLQ API against a real `redis-server` and the real binary: listing
//! and paging, byte-exact requeue, malformed entries kept, clear and
//! restore, no loss under SIGKILL or CLIENT KILL mid-requeue of 100,000
//! jobs, jobs that fail again not looped, a table of bad requests that
//! change nothing in Redis, and Redis going away.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::common::{eventually, sample_value, Daemon, Redis, SIGKILL};
use redis::AsyncCommands;
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(60);
const DLQ: &str = "dlq:detection_queue";
const QUEUE: &str = "detection_queue";

/// The original job as a producer wrote it: odd spacing and a trailing
/// zero, so any re-encoding would show.
fn original(i: usize) -> String {
    format!(r#"{{"id": "job-{i}",  "image":"frames/{i}.jpg", "score": 1.50}}"#)
}

fn failure(i: usize) -> String {
    format!(
        r#"{{"original_job":{},"error":"CUDA out of memory","attempt_count":3,"first_failed_at":"2026-11-20T10:00:00Z","last_failed_at":"2026-11-20T10:05:00Z","queue_name":"{QUEUE}"}}"#,
        original(i)
    )
}

/// LPUSHes failures `range` (so the first is the oldest, at the tail).
async fn push_failures(r: &Redis, range: std::ops::Range<usize>) {
    let mut c = r.connection().await;
    let all: Vec<String> = range.map(failure).collect();
    for chunk in all.chunks(10_000) {
        let _: () = c.lpush(DLQ, chunk).await.unwrap();
    }
}

async fn lrange(r: &Redis, key: &str) -> Vec<String> {
    r.connection().await.lrange(key, 0, -1).await.unwrap()
}

async fn llen(r: &Redis, key: &str) -> usize {
    r.connection().await.llen(key).await.unwrap()
}

/// Every key with its type and contents, to prove a request changed nothing.
async fn dump(r: &Redis) -> BTreeMap<String, String> {
    let mut c = r.connection().await;
    let keys: Vec<String> = c.keys("*").await.unwrap();
    let mut out = BTreeMap::new();
    for k in keys {
        let t: String = redis::cmd("TYPE").arg(&k).query_async(&mut c).await.unwrap();
        let v = match t.as_str() {
            "list" => format!("{:?}", c.lrange::<_, Vec<String>>(&k, 0, -1).await.unwrap()),
            "string" => c.get::<_, String>(&k).await.unwrap(),
            _ => t.clone(),
        };
        out.insert(k, format!("{t}:{v}"));
    }
    out
}

fn config(r: &Redis, extra: &str) -> String {
    format!(
        "gpu:\n  enabled: false\nqueues:\n  redis_url: {}\n  poll_interval: 100ms\n{extra}",
        r.url()
    )
}

async fn daemon(r: &Redis, extra: &str) -> Daemon {
    Daemon::start_with_args(&config(r, extra), &[], &["--log.format=json"]).await
}

async fn call(method: reqwest::Method, url: &str, token: Option<&str>) -> (u16, Value) {
    let mut req = reqwest::Client::new().request(method, url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}")),
    )
}

async fn get(d: &Daemon, path: &str) -> (u16, Value) {
    call(reqwest::Method::GET, &d.url(path), None).await
}

async fn post(d: &Daemon, path: &str) -> (u16, Value) {
    call(reqwest::Method::POST, &d.url(path), None).await
}

async fn metric(d: &Daemon, series: &str) -> Option<f64> {
    sample_value(&d.get_text("/metrics").await, series)
}

#[tokio::test]
async fn list_page_and_requeue_byte_for_byte_keeping_malformed_entries() {
    let redis = Redis::start().await;
    push_failures(&redis, 0..25).await;
    let mut c = redis.connection().await;
    let _: () = c.lpush(DLQ, "this is not json").await.unwrap();
    let _: () = c
        .lpush(DLQ, r#"{"original_job":{"id":"x"},"error":"e"}"#)
        .await
        .unwrap();
    let d = daemon(&redis, "").await;

    let (code, stats) = get(&d, "/api/system/dlq/stats").await;
    assert_eq!(code, 200);
    assert_eq!(
        stats,
        serde_json::json!({"detection_queue_count": 27, "analysis_queue_count": 0, "total_count": 27})
    );

    // List order is the list's: newest first.
    let (code, page) = get(&d, "/api/dlq/jobs/dlq:detection_queue?start=0&limit=10").await;
    assert_eq!(code, 200, "{page}");
    assert_eq!(
        (page["total"].as_u64(), page["start"].as_u64(), page["limit"].as_u64()),
        (Some(27), Some(0), Some(10))
    );
    assert_eq!(page["queue_name"], DLQ);
    let jobs = page["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 10);
    assert_eq!(jobs[0]["malformed"], true);
    assert!(
        jobs[0]["parse_error"].as_str().unwrap().contains("attempt_count"),
        "{}",
        jobs[0]
    );
    assert_eq!(jobs[1]["raw"], "this is not json");
    assert_eq!(jobs[2]["original_job"]["id"], "job-24");
    assert_eq!(jobs[2]["attempt_count"], 3);
    let (_, page) = get(&d, "/api/system/dlq/jobs?queue=dlq:detection_queue&start=20&limit=10").await;
    let jobs = page["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 7);
    assert_eq!(jobs[6]["original_job"]["id"], "job-0", "the oldest is last");

    let (code, report) = post(&d, "/api/system/dlq/requeue-all?queue=dlq:detection_queue").await;
    assert_eq!(code, 200, "{report}");
    assert_eq!(report["requeued"], 25);
    assert_eq!(report["skipped_malformed"], 2);
    assert_eq!(report["remaining"], 2);
    assert_eq!(report["malformed"].as_array().unwrap().len(), 2);

    // Byte for byte, and the oldest failure is the first a worker pops.
    let queue = lrange(&redis, QUEUE).await;
    let expected: Vec<String> = (0..25).rev().map(original).collect();
    assert_eq!(queue, expected);
    let left = lrange(&redis, DLQ).await;
    assert_eq!(left.len(), 2);
    assert!(left.contains(&"this is not json".to_string()));

    eventually("the DLQ depth to be polled", LIMIT, || async {
        (metric(&d, "dlq_depth{queue=\"detection_queue\"}").await == Some(2.0)).then_some(())
    })
    .await;
    assert_eq!(
        metric(&d, "dlq_jobs_requeued_total{queue=\"detection_queue\"}").await,
        Some(25.0)
    );
    assert_eq!(
        metric(&d, "job_queue_depth{queue=\"detection_queue\"}").await,
        Some(25.0)
    );
    assert_eq!(
        metric(&d, "dlq_requeue_in_progress{queue=\"detection_queue\"}").await,
        Some(0.0)
    );
    // The oldest entry left ("this is not json") has no readable
    // first_failed_at, so the age read from job-0 (first failed
    // 2026-11-20T10:00:00Z) before the requeue stays.
    let age = metric(&d, "dlq_oldest_job_age_seconds{queue=\"detection_queue\"}")
        .await
        .unwrap();
    let expected = crate::common::unix_now() - 1_795_168_800.0;
    assert!((age - expected).abs() < 30.0, "age {age}, expected about {expected}");
    let alerts: Vec<Value> = d
        .log()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["fields"]["condition"] == "dlq_jobs_present")
        .collect();
    assert_eq!(alerts.len(), 1, "one alert when the DLQ was first seen non-empty");
    assert_eq!(alerts[0]["level"], "WARN");
}

#[tokio::test]
async fn clear_archives_with_a_ttl_and_restore_gives_back_the_same_order() {
    let redis = Redis::start().await;
    push_failures(&redis, 0..10).await;
    let before = lrange(&redis, DLQ).await;
    let d = daemon(&redis, "").await;

    let (code, report) = call(
        reqwest::Method::DELETE,
        &d.url("/api/system/dlq/clear?queue=dlq:detection_queue"),
        None,
    )
    .await;
    assert_eq!(code, 200, "{report}");
    assert_eq!(report["cleared"], 10);
    let archive = report["archive_key"].as_str().unwrap().to_string();
    assert!(archive.starts_with("dlq:detection_queue:cleared:"), "{archive}");
    assert!(report["expires_at"].as_str().unwrap().ends_with('Z'));
    let mut c = redis.connection().await;
    let ttl: i64 = c.ttl(&archive).await.unwrap();
    assert!((604_700..=604_800).contains(&ttl), "TTL {ttl}");
    assert_eq!(llen(&redis, DLQ).await, 0);
    assert_eq!(lrange(&redis, &archive).await, before);

    // Failures that arrive after the clear are newer than the archive.
    push_failures(&redis, 100..102).await;
    let (code, report) = post(&d, &format!("/api/system/dlq/restore?archive={archive}")).await;
    assert_eq!(code, 200, "{report}");
    assert_eq!(report["restored"], 10);
    let mut want = vec![failure(101), failure(100)];
    want.extend(before.iter().cloned());
    assert_eq!(lrange(&redis, DLQ).await, want);
    let exists: bool = c.exists(&archive).await.unwrap();
    assert!(!exists);
    let (code, _) = post(&d, &format!("/api/system/dlq/restore?archive={archive}")).await;
    assert_eq!(code, 404, "restoring twice finds nothing");

    // Clear and restore into a missing DLQ keeps order and drops the TTL.
    let (_, report) = call(
        reqwest::Method::DELETE,
        &d.url("/api/system/dlq/clear?queue=dlq:detection_queue"),
        None,
    )
    .await;
    let archive2 = report["archive_key"].as_str().unwrap().to_string();
    let (code, _) = post(&d, &format!("/api/system/dlq/restore?archive={archive2}")).await;
    assert_eq!(code, 200);
    assert_eq!(lrange(&redis, DLQ).await, want);
    let ttl: i64 = c.ttl(DLQ).await.unwrap();
    assert_eq!(ttl, -1, "the restored DLQ does not expire");

    // Clearing an empty DLQ archives nothing.
    let (code, report) = call(
        reqwest::Method::DELETE,
        &d.url("/api/system/dlq/clear?queue=dlq:analysis_queue"),
        None,
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(report["cleared"], 0);
    assert!(report["archive_key"].is_null());
    eventually("cleared and restored counters", LIMIT, || async {
        let cleared = metric(&d, "dlq_jobs_cleared_total{queue=\"detection_queue\"}").await?;
        let restored = metric(&d, "dlq_jobs_restored_total{queue=\"detection_queue\"}").await?;
        (cleared == 22.0 && restored == 22.0).then_some(())
    })
    .await;
}

/// Counts each job id across the queue (original jobs) and the DLQ
/// (failures) and checks each of `n` appears exactly once.
async fn assert_each_job_once(r: &Redis, n: usize) -> (usize, usize) {
    crate::common::assert_each_job_once(r, QUEUE, DLQ, n).await
}

const N: usize = 100_000;

#[tokio::test]
async fn sigkill_mid_requeue_of_100k_loses_and_duplicates_nothing() {
    let redis = Redis::start().await;
    push_failures(&redis, 0..N).await;
    let mut d = daemon(&redis, "  requeue_batch: 50\n").await;
    let url = d.url("/api/system/dlq/requeue-all?queue=dlq:detection_queue");
    let req = tokio::spawn(async move { reqwest::Client::new().post(url).send().await });
    eventually("the requeue to be under way", LIMIT, || async {
        (llen(&redis, QUEUE).await > 1000).then_some(())
    })
    .await;
    d.proc.stop_with(SIGKILL);
    assert!(req.await.unwrap().is_err(), "the daemon died before answering");
    let (queued, in_dlq) = assert_each_job_once(&redis, N).await;
    assert!(
        queued > 0 && in_dlq > 0,
        "killed mid-way: {queued} requeued, {in_dlq} left"
    );
}

#[tokio::test]
async fn client_kill_mid_requeue_loses_nothing_and_a_second_run_finishes() {
    let redis = Redis::start().await;
    push_failures(&redis, 0..N).await;
    let d = daemon(&redis, "  requeue_batch: 50\n").await;
    let url = d.url("/api/system/dlq/requeue-all?queue=dlq:detection_queue");
    let req = tokio::spawn(async move {
        let resp = reqwest::Client::new().post(url).send().await.unwrap();
        (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
    });
    eventually("the requeue to be under way", LIMIT, || async {
        (llen(&redis, QUEUE).await > 1000).then_some(())
    })
    .await;
    let mut c = redis.connection().await;
    let killed: u64 = redis::cmd("CLIENT")
        .arg(&["KILL", "TYPE", "normal", "SKIPME", "yes"])
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(killed >= 1);
    let (code, body) = req.await.unwrap();
    let (queued, in_dlq) = assert_each_job_once(&redis, N).await;
    eprintln!("after CLIENT KILL: HTTP {code}, {queued} requeued, {in_dlq} still in the DLQ");
    if code == 503 {
        assert!(body["error"].as_str().unwrap().contains("Redis"), "{body}");
        assert!(in_dlq > 0, "stopped mid-way");
    } else {
        // The kill landed between two batches and the next one reconnected.
        assert_eq!((code, in_dlq), (200, 0), "{body}");
    }
    // A second requeue finishes the job, and the daemon reconnected.
    let (code, body) = post(&d, "/api/system/dlq/requeue-all?queue=dlq:detection_queue").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["requeued"].as_u64().unwrap() as usize, in_dlq);
    let (queued2, in_dlq2) = assert_each_job_once(&redis, N).await;
    assert_eq!((queued2, in_dlq2), (queued + in_dlq, 0));
}

#[tokio::test]
async fn jobs_that_fail_again_during_a_requeue_are_not_requeued_twice() {
    const M: usize = 20_000;
    let redis = Redis::start().await;
    push_failures(&redis, 0..M).await;
    let d = daemon(&redis, "  requeue_batch: 100\n").await;
    // A worker that fails every job it takes, straight back into the DLQ.
    let stop = tokio_util::sync::CancellationToken::new();
    let worker = {
        let (stop, url) = (stop.clone(), redis.url());
        tokio::spawn(async move {
            let mut c = redis::Client::open(url)
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                .unwrap();
            let mut failed = 0usize;
            while !stop.is_cancelled() {
                let job: Option<String> = c.rpop(QUEUE, None).await.unwrap();
                match job {
                    Some(job) => {
                        let again = format!(
                            r#"{{"original_job":{job},"error":"failed again","attempt_count":4,"first_failed_at":"2026-11-20T10:00:00Z","last_failed_at":"2026-11-21T10:00:00Z","queue_name":"{QUEUE}"}}"#
                        );
                        let _: () = c.lpush(DLQ, again).await.unwrap();
                        failed += 1;
                    }
                    None => tokio::task::yield_now().await,
                }
            }
            failed
        })
    };
    let (code, report) = post(&d, "/api/system/dlq/requeue-all?queue=dlq:detection_queue").await;
    stop.cancel();
    let failed_again = worker.await.unwrap();
    assert_eq!(code, 200, "{report}");
    assert_eq!(
        report["requeued"].as_u64().unwrap() as usize,
        M,
        "each job exactly once"
    );
    assert!(failed_again > 0, "the worker re-failed jobs during the requeue");
    let (queued, in_dlq) = assert_each_job_once(&redis, M).await;
    assert_eq!(in_dlq, failed_again);
    assert_eq!(queued, M - failed_again);
    let attempts: Vec<Value> = lrange(&redis, DLQ)
        .await
        .iter()
        .map(|e| serde_json::from_str::<Value>(e).unwrap()["attempt_count"].clone())
        .collect();
    assert!(attempts.iter().all(|a| a == 4), "only re-failed jobs are left");
}

#[tokio::test]
async fn bad_requests_get_4xx_and_change_nothing_in_redis() {
    let redis = Redis::start().await;
    push_failures(&redis, 0..5).await;
    let mut c = redis.connection().await;
    let _: () = c.set("unrelated:key", "keep me").await.unwrap();
    let _: () = c.rpush(QUEUE, "a job").await.unwrap();
    let open = daemon(&redis, "").await;
    let token = daemon(&redis, "api:\n  token: s3cret\n").await;
    let untrusted = daemon(&redis, "api:\n  trusted_networks: ['127.0.0.2/32']\n").await;
    // The daemons create their pipeline stream (with its consumer group)
    // at start; the snapshot is taken once that is done.
    eventually("the pipeline stream's group", LIMIT, || async {
        let mut c = redis.connection().await;
        let groups: redis::RedisResult<redis::Value> = redis::cmd("XINFO")
            .arg(&["GROUPS", "pipeline:events"])
            .query_async(&mut c)
            .await;
        groups.ok().map(|_| ())
    })
    .await;
    let before = dump(&redis).await;
    use reqwest::Method as M;
    // (daemon, method, path, token, status, fragment of the error)
    type Case<'a> = (&'a Daemon, M, &'a str, Option<&'a str>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (&open, M::GET, "/api/dlq/jobs/dlq:nope", None, 404, "unknown DLQ"),
        (
            &open,
            M::GET,
            "/api/system/dlq/jobs?queue=dlq:nope",
            None,
            404,
            "unknown DLQ",
        ),
        (
            &open,
            M::GET,
            "/api/dlq/jobs/dlq:detection_queue?limit=0",
            None,
            400,
            "limit must be from 1 to 1000",
        ),
        (
            &open,
            M::GET,
            "/api/dlq/jobs/dlq:detection_queue?limit=1001",
            None,
            400,
            "limit must be from 1 to 1000",
        ),
        (
            &open,
            M::GET,
            "/api/dlq/jobs/dlq:detection_queue?start=-1",
            None,
            400,
            "start must be a whole number",
        ),
        (
            &open,
            M::GET,
            "/api/dlq/jobs/dlq:detection_queue?limit=abc",
            None,
            400,
            "limit must be a whole number",
        ),
        (
            &open,
            M::GET,
            "/api/dlq/jobs/dlq:detection_queue?page=2",
            None,
            400,
            "unknown query parameter",
        ),
        (
            &open,
            M::POST,
            "/api/system/dlq/requeue-all?queue=detection_queue",
            None,
            400,
            "not a DLQ",
        ),
        (
            &open,
            M::POST,
            "/api/system/dlq/requeue-all?queue=unrelated:key",
            None,
            404,
            "unknown DLQ",
        ),
        (
            &open,
            M::POST,
            "/api/system/dlq/requeue-all",
            None,
            400,
            "missing query parameter queue",
        ),
        (
            &open,
            M::POST,
            "/api/system/dlq/requeue-all?queue=dlq:analysis_queue&queue=dlq:detection_queue",
            None,
            400,
            "more than once",
        ),
        (
            &open,
            M::DELETE,
            "/api/system/dlq/clear?queue=dlq:detection_queue&queue=dlq:detection_queue",
            None,
            400,
            "more than once",
        ),
        (&open, M::GET, "/api/dlq/jobs/%FF", None, 400, "bad_request"),
        (
            &open,
            M::GET,
            "/api/system/dlq/requeue-all?queue=dlq:detection_queue",
            None,
            405,
            "",
        ),
        (
            &open,
            M::DELETE,
            "/api/system/dlq/clear?queue=unrelated:key",
            None,
            404,
            "unknown DLQ",
        ),
        (
            &open,
            M::POST,
            "/api/system/dlq/restore?archive=unrelated:key",
            None,
            400,
            "not an archive",
        ),
        (
            &open,
            M::POST,
            "/api/system/dlq/restore?archive=dlq:detection_queue:cleared:abc",
            None,
            400,
            "not an archive",
        ),
        (
            &open,
            M::POST,
            "/api/system/dlq/restore?archive=dlq:detection_queue:cleared:1",
            None,
            404,
            "no archive",
        ),
        (
            &token,
            M::POST,
            "/api/system/dlq/requeue-all?queue=dlq:detection_queue",
            None,
            401,
            "Bearer",
        ),
        (
            &token,
            M::POST,
            "/api/system/dlq/requeue-all?queue=dlq:detection_queue",
            Some("wrong"),
            401,
            "not valid",
        ),
        (
            &token,
            M::DELETE,
            "/api/system/dlq/clear?queue=dlq:detection_queue",
            None,
            401,
            "Bearer",
        ),
        (
            &token,
            M::POST,
            "/api/system/dlq/restore?archive=dlq:detection_queue:cleared:1",
            Some("wrong"),
            401,
            "not valid",
        ),
        (
            &untrusted,
            M::POST,
            "/api/system/dlq/requeue-all?queue=dlq:detection_queue",
            None,
            403,
            "trusted_networks",
        ),
        (
            &untrusted,
            M::DELETE,
            "/api/system/dlq/clear?queue=dlq:detection_queue",
            None,
            403,
            "trusted_networks",
        ),
    ];
    for (d, method, path, tok, want, fragment) in cases {
        let resp = {
            let mut req = reqwest::Client::new().request(method.clone(), d.url(path));
            if let Some(t) = tok {
                req = req.bearer_auth(t);
            }
            req.send().await.unwrap()
        };
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        assert_eq!(status, want, "{method} {path}: {text}");
        if !fragment.is_empty() {
            let body: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{path}: not JSON: {text}"));
            let all = body.to_string();
            assert!(all.contains(fragment), "{method} {path}: {all} lacks {fragment:?}");
        }
    }
    assert_eq!(dump(&redis).await, before, "nothing in Redis changed");

    // Reads stay open everywhere, and the right token works.
    assert_eq!(get(&untrusted, "/api/system/dlq/stats").await.0, 200);
    let (code, body) = call(
        M::POST,
        &token.url("/api/system/dlq/requeue-all?queue=dlq:detection_queue"),
        Some("s3cret"),
    )
    .await;
    assert_eq!((code, body["requeued"].as_u64()), (200, Some(5)));
}

#[tokio::test]
async fn redis_down_keeps_the_last_values_and_answers_503() {
    let mut redis = Redis::start().await;
    push_failures(&redis, 0..3).await;
    let d = daemon(&redis, "").await;
    eventually("the first poll", LIMIT, || async {
        (metric(&d, "dlq_depth{queue=\"detection_queue\"}").await == Some(3.0)).then_some(())
    })
    .await;
    redis.kill();
    eventually("the collector to notice", LIMIT, || async {
        (metric(&d, "inferwatch_collector_success{collector=\"queues\"}").await == Some(0.0)).then_some(())
    })
    .await;
    assert_eq!(
        metric(&d, "dlq_depth{queue=\"detection_queue\"}").await,
        Some(3.0),
        "last value kept"
    );
    for path in ["/api/system/dlq/stats", "/api/dlq/jobs/dlq:detection_queue"] {
        let (code, body) = get(&d, path).await;
        assert_eq!(code, 503, "{path}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains("Redis is unavailable"),
            "{body}"
        );
    }
    let (code, _) = post(&d, "/api/system/dlq/requeue-all?queue=dlq:detection_queue").await;
    assert_eq!(code, 503);
    // One WARN per outage per collector: the queues collector, and the
    // stream collector that shares the Redis.
    let failed: Vec<String> = d
        .log()
        .lines()
        .filter(|l| l.contains("\"message\":\"Collection failed.\""))
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["fields"]["collector"].to_string())
        .collect();
    assert_eq!(
        failed.iter().filter(|c| c.as_str() == "\"queues\"").count(),
        1,
        "one WARN per outage: {failed:?}"
    );
    assert!(
        failed.iter().filter(|c| c.as_str() == "\"stream\"").count() <= 1,
        "{failed:?}"
    );
    redis.resume().await;
    eventually("the collector to recover", LIMIT, || async {
        (metric(&d, "inferwatch_collector_success{collector=\"queues\"}").await == Some(1.0)).then_some(())
    })
    .await;
    assert_eq!(
        metric(&d, "dlq_depth{queue=\"detection_queue\"}").await,
        Some(0.0),
        "a fresh Redis is empty"
    );
    assert_eq!(get(&d, "/api/system/dlq/stats").await.0, 200);
}

#[tokio::test]
async fn right_push_layout_requeues_and_restores_in_order() {
    // Producers RPUSH and workers BLPOP: the oldest entry is at the head.
    let redis = Redis::start().await;
    let mut c = redis.connection().await;
    let all: Vec<String> = (0..6).map(failure).collect();
    let _: () = c.rpush(DLQ, &all).await.unwrap();
    let _: () = c.rpush(QUEUE, "waiting").await.unwrap();
    let d = daemon(&redis, "  push_side: right\n  requeue_batch: 4\n").await;
    eventually("the oldest age", LIMIT, || async {
        let age = metric(&d, "dlq_oldest_job_age_seconds{queue=\"detection_queue\"}").await?;
        (age > 3600.0).then_some(())
    })
    .await;

    let (code, report) = post(&d, "/api/system/dlq/requeue-all?queue=dlq:detection_queue").await;
    assert_eq!((code, report["requeued"].as_u64()), (200, Some(6)), "{report}");
    let mut want = vec!["waiting".to_string()];
    want.extend((0..6).map(original));
    assert_eq!(lrange(&redis, QUEUE).await, want, "appended at the tail, oldest first");

    let _: () = c.rpush(DLQ, &all).await.unwrap();
    let (_, report) = call(
        reqwest::Method::DELETE,
        &d.url("/api/system/dlq/clear?queue=dlq:detection_queue"),
        None,
    )
    .await;
    let archive = report["archive_key"].as_str().unwrap().to_string();
    let _: () = c.rpush(DLQ, failure(100)).await.unwrap();
    let (code, _) = post(&d, &format!("/api/system/dlq/restore?archive={archive}")).await;
    assert_eq!(code, 200);
    let mut want = all.clone();
    want.push(failure(100));
    assert_eq!(
        lrange(&redis, DLQ).await,
        want,
        "the archive goes back before the newer failure"
    );
}

#[tokio::test]
async fn dlq_alert_reaches_the_websocket_and_stats() {
    let redis = Redis::start().await;
    let d = daemon(&redis, "").await;
    let mut ws = crate::common::WsClient::connect(&format!("ws://127.0.0.1:{}/ws/system", d.port)).await;
    push_failures(&redis, 0..3).await;
    let alert = ws
        .wait_for("the DLQ alert", LIMIT, |m| {
            m["type"] == "alert" && m["data"]["condition"] == "dlq_jobs_present"
        })
        .await;
    assert_eq!(alert["data"]["severity"], "WARNING");
    assert!(alert["data"]["message"]
        .as_str()
        .unwrap()
        .contains("dlq:detection_queue holds 3 job(s)"));
    let (_, stats) = get(&d, "/api/system/stats").await;
    assert_eq!(stats["dlq"]["total"], 3, "{stats}");
    assert_eq!(stats["dlq"]["by_queue"]["detection_queue"], 3);
    assert_eq!(stats["dlq"]["by_queue"]["analysis_queue"], 0);
}
