//! The DLQ console API against a real `redis-server` (and PostgreSQL for the
//! audit outage) and the real binary: job ids, every search filter, cursor
//! continuation over 200,000 entries, single-job moves when the list
//! shifted, dry runs that change nothing, filtered requeues, rate-limited
//! tasks with cancel, SIGKILL mid-task then `interrupted` after restart,
//! the archives (undo), the audit trail through a database outage, and
//! bad input.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use crate::common::{eventually, sample_value, Daemon, Postgres, Redis, SIGKILL};
use redis::AsyncCommands;
use serde_json::Value;
use sha2::{Digest, Sha256};

const LIMIT: Duration = Duration::from_secs(90);
const DLQ: &str = "dlq:detection_queue";
const QUEUE: &str = "detection_queue";
const TOKEN: &str = "console-token-1";

fn id_of(bytes: &str) -> String {
    Sha256::digest(bytes.as_bytes())[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn original(i: usize) -> String {
    format!(r#"{{"id": "job-{i}",  "score": 1.50}}"#)
}

/// A failure `age` seconds old with `attempts`, and `error`.
fn failure(i: usize, error: &str, attempts: u64, age: f64) -> String {
    let last = crate::common::unix_now() - age;
    format!(
        r#"{{"original_job":{},"error":"{error}","attempt_count":{attempts},"first_failed_at":{last},"last_failed_at":{last},"queue_name":"{QUEUE}"}}"#,
        original(i)
    )
}

/// RPUSHes `entries` so that list order is the order given (the config
/// uses push_side: right, so index 0 is the oldest).
async fn seed(r: &Redis, entries: &[String]) {
    let mut c = r.connection().await;
    for chunk in entries.chunks(10_000) {
        let _: () = c.rpush(DLQ, chunk).await.unwrap();
    }
}

async fn lrange(r: &Redis, key: &str) -> Vec<String> {
    r.connection().await.lrange(key, 0, -1).await.unwrap()
}

async fn dump(r: &Redis) -> BTreeMap<String, Vec<String>> {
    let mut c = r.connection().await;
    let keys: Vec<String> = c.keys("*").await.unwrap();
    let mut out = BTreeMap::new();
    for k in keys {
        let t: String = redis::cmd("TYPE").arg(&k).query_async(&mut c).await.unwrap();
        if t == "list" {
            out.insert(k.clone(), c.lrange(&k, 0, -1).await.unwrap());
        } else {
            out.insert(k.clone(), vec![t]);
        }
    }
    out
}

fn config(r: &Redis, extra: &str) -> String {
    format!(
        "gpu:\n  enabled: false\napi:\n  token: {TOKEN}\nqueues:\n  redis_url: {}\n  poll_interval: 100ms\n  push_side: right\n{extra}",
        r.url()
    )
}

async fn call(method: reqwest::Method, url: String) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .request(method, url)
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    let code = resp.status().as_u16();
    (code, resp.json().await.unwrap_or(Value::Null))
}

async fn get(d: &Daemon, path: &str) -> (u16, Value) {
    call(reqwest::Method::GET, d.url(path)).await
}

async fn post(d: &Daemon, path: &str) -> (u16, Value) {
    call(reqwest::Method::POST, d.url(path)).await
}

/// `key` of each object of `list`.
fn strings(list: &Value, key: &str) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|j| j[key].as_str().unwrap().to_string())
        .collect()
}

fn ids(page: &Value) -> Vec<String> {
    strings(&page["jobs"], "id")
}

#[tokio::test]
async fn listing_gives_ids_and_every_filter_narrows() {
    let redis = Redis::start().await;
    let entries = vec![
        failure(0, "CUDA out of memory", 3, 7200.0),
        failure(1, "Timeout talking to model", 1, 60.0),
        failure(2, "cuda OUT OF MEMORY again", 5, 30.0),
        "not json at all".to_string(),
        failure(4, "Segfault", 2, 86_400.0 * 3.0),
    ];
    seed(&redis, &entries).await;
    let d = Daemon::start(&config(&redis, ""), &[]).await;
    let (code, page) = get(&d, "/api/dlq/jobs/dlq:detection_queue").await;
    assert_eq!(code, 200, "{page}");
    let want: Vec<String> = entries.iter().map(|e| id_of(e)).collect();
    assert_eq!(ids(&page), want, "ids are SHA-256 prefixes of the stored bytes");
    for (i, j) in page["jobs"].as_array().unwrap().iter().enumerate() {
        assert_eq!(j["index"], i, "{j}");
    }
    assert_eq!(
        page["jobs"][0]["error"], "CUDA out of memory",
        "the entry's own fields stay"
    );

    let search = |q: &str| {
        let url = format!("/api/dlq/jobs/dlq:detection_queue?{q}");
        let q = q.to_string();
        let d = &d;
        async move {
            let (code, page) = get(d, &url).await;
            assert_eq!(code, 200, "{q}: {page}");
            let idx: Vec<u64> = page["jobs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|j| j["index"].as_u64().unwrap())
                .collect();
            (idx, page)
        }
    };
    assert_eq!(
        search("error=out%20of%20memory").await.0,
        vec![0, 2],
        "case-insensitive"
    );
    assert_eq!(search("q=job-4").await.0, vec![4]);
    assert_eq!(search("q=not%20json").await.0, vec![3], "q reads the raw bytes");
    assert_eq!(search("older_than=1h").await.0, vec![0, 4]);
    assert_eq!(search("newer_than=2m").await.0, vec![1, 2]);
    assert_eq!(search("min_attempts=3").await.0, vec![0, 2]);
    assert_eq!(search("malformed=true").await.0, vec![3]);
    assert_eq!(
        search("malformed=false&error=cuda&min_attempts=4").await.0,
        vec![2],
        "filters combine"
    );
    let (idx, page) = search("error=cuda&limit=1").await;
    assert_eq!(idx, vec![0]);
    assert_eq!(page["next_cursor"], 1, "{page}");
    let (idx, page) = search("error=cuda&limit=1&cursor=1").await;
    assert_eq!(idx, vec![2]);
    let (idx, page2) = search(&format!("error=cuda&limit=1&cursor={}", page["next_cursor"])).await;
    assert!(idx.is_empty());
    assert_eq!(page2["next_cursor"], Value::Null, "the end: {page2}");
}

#[tokio::test]
async fn a_cursor_walks_200k_entries_in_bounded_scans() {
    let redis = Redis::start().await;
    const N: usize = 200_000;
    let entries: Vec<String> = (0..N)
        .map(|i| failure(i, if i % 100 == 7 { "needle in the stack" } else { "hay" }, 1, 10.0))
        .collect();
    seed(&redis, &entries).await;
    let d = Daemon::start(&config(&redis, "  search_scan_max: 20000\n"), &[]).await;
    let mut cursor = 0u64;
    let mut found = Vec::new();
    let mut scanned = 0;
    let mut requests = 0;
    loop {
        let (code, page) = get(
            &d,
            &format!("/api/dlq/jobs/dlq:detection_queue?error=needle&limit=1000&cursor={cursor}"),
        )
        .await;
        assert_eq!(code, 200, "{page}");
        requests += 1;
        let n = page["scanned"].as_u64().unwrap();
        assert!(n <= 20_000, "one request scans at most search_scan_max: {n}");
        scanned += n;
        found.extend(
            page["jobs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|j| j["index"].as_u64().unwrap()),
        );
        match page["next_cursor"].as_u64() {
            Some(c) => cursor = c,
            None => break,
        }
        assert!(requests < 100);
    }
    let want: Vec<u64> = (0..N as u64).filter(|i| i % 100 == 7).collect();
    assert_eq!(found, want, "every match once, in order");
    assert_eq!(scanned, N as u64, "each entry read once");
    assert!(requests >= 10, "bounded by search_scan_max: {requests} requests");
}

#[tokio::test]
async fn single_job_moves_follow_the_job_when_the_list_shifts() {
    let redis = Redis::start().await;
    let entries: Vec<String> = (0..10).map(|i| failure(i, "boom", 1, 10.0)).collect();
    seed(&redis, &entries).await;
    let mut c = redis.connection().await;
    let _: () = c.rpush(DLQ, "malformed entry").await.unwrap();
    let d = Daemon::start(&config(&redis, ""), &[]).await;
    let target = &entries[5];
    let id = id_of(target);
    // The list shifts: new entries land in front of everything (LPUSH by
    // another tool), so index 5 now holds another job.
    let _: () = c
        .lpush(DLQ, &[failure(100, "x", 1, 1.0), failure(101, "y", 1, 1.0)])
        .await
        .unwrap();
    let (code, body) = post(&d, &format!("/api/system/dlq/jobs/{id}/requeue?queue={DLQ}&index=5")).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["index"], 7, "found where it moved: {body}");
    assert_eq!(
        lrange(&redis, QUEUE).await,
        vec![original(5)],
        "the original job, byte for byte"
    );
    assert!(!lrange(&redis, DLQ).await.contains(target));
    let (code, body) = post(&d, &format!("/api/system/dlq/jobs/{id}/requeue?queue={DLQ}&index=7")).await;
    assert_eq!(code, 404, "not moved twice: {body}");
    assert_eq!(lrange(&redis, QUEUE).await.len(), 1);

    // Delete moves to the deleted archive; the archive lists and restores.
    let victim = &entries[2];
    let (code, body) = post(
        &d,
        &format!("/api/system/dlq/jobs/{}/delete?queue={DLQ}&index=4", id_of(victim)),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let archive = body["target"].as_str().unwrap().to_string();
    assert!(archive.starts_with("dlq:detection_queue:deleted:"), "{archive}");
    assert_eq!(lrange(&redis, &archive).await, vec![victim.clone()]);
    let ttl: i64 = c.ttl(&archive).await.unwrap();
    assert!(ttl > 0, "the archive TTL applies: {ttl}");
    let (code, list) = get(&d, &format!("/api/system/dlq/archives?queue={DLQ}")).await;
    assert_eq!(code, 200, "{list}");
    assert_eq!(list[0]["archive_key"], archive.as_str());
    assert_eq!(list[0]["kind"], "deleted");
    assert_eq!(list[0]["jobs"], 1);
    let page = d.get_text("/metrics").await;
    assert_eq!(
        sample_value(&page, "dlq_jobs_deleted_total{queue=\"detection_queue\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample_value(&page, "dlq_jobs_requeued_total{queue=\"detection_queue\"}"),
        Some(1.0)
    );
    let (code, body) = post(&d, &format!("/api/system/dlq/restore?archive={archive}")).await;
    assert_eq!(code, 200, "{body}");
    assert!(lrange(&redis, DLQ).await.contains(victim));

    // A malformed entry can be deleted but not requeued.
    let bad = id_of("malformed entry");
    let (code, body) = post(&d, &format!("/api/system/dlq/jobs/{bad}/requeue?queue={DLQ}&index=0")).await;
    assert_eq!(code, 422, "{body}");
    assert!(lrange(&redis, DLQ).await.contains(&"malformed entry".to_string()));
    // 13 entries in all, one requeued: every other one is still here.
    assert_eq!(lrange(&redis, DLQ).await.len(), 13 - 1);
}

#[tokio::test]
async fn dry_run_changes_nothing_and_a_filtered_requeue_moves_only_matches() {
    let redis = Redis::start().await;
    let entries: Vec<String> = (0..300)
        .map(|i| {
            failure(
                i,
                if i % 3 == 0 { "CUDA OOM" } else { "other" },
                1 + (i % 5) as u64,
                10.0,
            )
        })
        .chain(["broken".to_string()])
        .collect();
    seed(&redis, &entries).await;
    let d = Daemon::start(&config(&redis, "  requeue_batch: 37\n"), &[]).await;
    let before = dump(&redis).await;
    let (code, body) = post(
        &d,
        &format!("/api/system/dlq/requeue?queue={DLQ}&error=cuda&dry_run=true"),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["matched"], 100);
    assert_eq!(body["moved"], 0);
    let samples: Vec<String> = body["sample_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let want: Vec<String> = (0..30).step_by(3).map(|i| id_of(&entries[i])).collect();
    assert_eq!(samples, want, "the first 10 matches, oldest first");
    assert_eq!(dump(&redis).await, before, "a dry run changes nothing");

    let (code, body) = post(
        &d,
        &format!("/api/system/dlq/requeue?queue={DLQ}&error=cuda&min_attempts=2&max=20"),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["moved"], 20, "{body}");
    let moved = lrange(&redis, QUEUE).await;
    let want: Vec<String> = (0..300)
        .filter(|i| i % 3 == 0 && 1 + (i % 5) >= 2)
        .take(20)
        .map(original)
        .collect();
    assert_eq!(moved, want, "exactly the first 20 matches, oldest first");
    let left = lrange(&redis, DLQ).await;
    assert_eq!(left.len(), 301 - 20, "nothing else left the DLQ");
    let mut all: Vec<String> = left.clone();
    all.extend(entries.iter().filter(|e| !left.contains(e)).cloned());
    assert_eq!(all.len(), 301);
}

async fn task_state(d: &Daemon, url: &str) -> Value {
    let (code, body) = get(d, url).await;
    assert_eq!(code, 200, "{body}");
    body
}

#[tokio::test]
async fn rate_limited_tasks_hold_their_rate_report_progress_and_cancel() {
    let redis = Redis::start().await;
    let entries: Vec<String> = (0..2000).map(|i| failure(i, "boom", 1, 10.0)).collect();
    seed(&redis, &entries).await;
    let d = Daemon::start(&config(&redis, "  requeue_batch: 1000\n"), &[]).await;
    let (code, body) = post(&d, &format!("/api/system/dlq/requeue?queue={DLQ}&rate=100&max=300")).await;
    assert_eq!(code, 202, "{body}");
    let status_url = body["status_url"].as_str().unwrap().to_string();
    // One move task per queue at a time.
    let (code, other) = post(&d, &format!("/api/system/dlq/requeue-all?queue={DLQ}&async=true")).await;
    assert_eq!(code, 409, "{other}");
    let page = d.get_text("/metrics").await;
    assert_eq!(
        sample_value(&page, "dlq_task_in_progress{queue=\"detection_queue\"}"),
        Some(1.0)
    );
    let done = eventually("the rate-limited task to finish", LIMIT, || async {
        let t = task_state(&d, &status_url).await;
        (t["state"] != "running").then_some(t)
    })
    .await;
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(done["moved"], 300);
    let started = chrono::DateTime::parse_from_rfc3339(done["started_at"].as_str().unwrap()).unwrap();
    let finished = chrono::DateTime::parse_from_rfc3339(done["finished_at"].as_str().unwrap()).unwrap();
    let secs = (finished - started).num_milliseconds() as f64 / 1000.0;
    // 300 jobs at 100/s: the 300th is due at 2.99 s.
    let rate = 299.0 / secs;
    assert!((90.0..=110.0).contains(&rate), "{rate:.1} jobs/s over {secs:.2} s");
    assert_eq!(lrange(&redis, QUEUE).await.len(), 300);

    // Cancel stops the next one after its current step; counts add up.
    let (code, body) = post(&d, &format!("/api/system/dlq/requeue-all?queue={DLQ}&rate=200")).await;
    assert_eq!(code, 202, "{body}");
    let url = body["status_url"].as_str().unwrap().to_string();
    eventually("some jobs to move", LIMIT, || async {
        (task_state(&d, &url).await["moved"].as_u64().unwrap() >= 50).then_some(())
    })
    .await;
    let (code, body) = call(reqwest::Method::DELETE, d.url(&url)).await;
    assert_eq!(code, 200, "{body}");
    let end = eventually("the task to stop", LIMIT, || async {
        let t = task_state(&d, &url).await;
        (t["state"] != "running").then_some(t)
    })
    .await;
    assert_eq!(end["state"], "cancelled", "{end}");
    let moved = end["moved"].as_u64().unwrap();
    assert!(moved < 1700, "stopped early: {moved}");
    let q = lrange(&redis, QUEUE).await.len() as u64;
    let left = lrange(&redis, DLQ).await.len() as u64;
    assert_eq!(q, 300 + moved, "the task's count is what moved");
    assert_eq!(q + left, 2000, "every job in exactly one list");
    let (code, list) = get(&d, "/api/system/dlq/tasks").await;
    assert_eq!(code, 200);
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
    assert_eq!(list[0]["state"], "cancelled", "newest first: {list}");
}

#[tokio::test]
async fn sigkill_during_a_rate_limited_task_of_100k_keeps_each_job_once() {
    let redis = Redis::start().await;
    const N: usize = 100_000;
    let entries: Vec<String> = (0..N).map(|i| failure(i, "boom", 1, 10.0)).collect();
    seed(&redis, &entries).await;
    let data = tempfile::tempdir().unwrap();
    let cfg = config(&redis, "  requeue_batch: 200\n") + &format!("data_dir: {}\n", data.path().display());
    let mut d = Daemon::start(&cfg, &[]).await;
    let (code, body) = post(&d, &format!("/api/system/dlq/requeue-all?queue={DLQ}&rate=20000")).await;
    assert_eq!(code, 202, "{body}");
    let task_id = body["task_id"].as_str().unwrap().to_string();
    eventually("the task to be under way", LIMIT, || async {
        let n: usize = redis.connection().await.llen(QUEUE).await.unwrap();
        (n > 5000).then_some(())
    })
    .await;
    d.proc.stop_with(SIGKILL);
    let queue = lrange(&redis, QUEUE).await;
    let dlq = lrange(&redis, DLQ).await;
    assert!(
        !queue.is_empty() && !dlq.is_empty(),
        "killed mid-way: {} / {}",
        queue.len(),
        dlq.len()
    );
    let index: HashMap<&String, usize> = entries.iter().enumerate().map(|(i, e)| (e, i)).collect();
    let mut seen: HashMap<String, u32> = HashMap::new();
    for q in &queue {
        *seen.entry(q.clone()).or_default() += 1;
    }
    for e in &dlq {
        let i = index.get(e).expect("a seeded entry");
        *seen.entry(original(*i)).or_default() += 1;
    }
    assert_eq!(queue.len() + dlq.len(), N);
    assert_eq!(seen.len(), N, "every job is somewhere");
    assert!(seen.values().all(|c| *c == 1), "no job twice");
    // After a restart the task reads interrupted.
    let d = Daemon::start(&cfg, &[]).await;
    let t = eventually("the task to read interrupted", LIMIT, || async {
        let (code, t) = get(&d, &format!("/api/system/dlq/tasks/{task_id}")).await;
        (code == 200 && t["state"] == "interrupted").then_some(t)
    })
    .await;
    assert_eq!(t["task_id"], task_id.as_str());
}

async fn audit(d: &Daemon) -> Value {
    let (code, body) = get(d, "/api/system/dlq/audit?limit=100").await;
    assert_eq!(code, 200, "{body}");
    body
}

fn actions(body: &Value) -> Vec<String> {
    strings(&body["rows"], "action")
}

/// `n` seeded failures and a daemon whose history store is a real
/// PostgreSQL with a 100-row buffer, flushed every 200 ms.
async fn with_audit_store(n: usize) -> (Redis, Postgres, Vec<String>, Daemon) {
    let redis = Redis::start().await;
    let pg = Postgres::start().await;
    let entries: Vec<String> = (0..n).map(|i| failure(i, "boom", 1, 10.0)).collect();
    seed(&redis, &entries).await;
    let cfg = config(&redis, "")
        + &format!(
            "store:\n  url: {}\n  flush_interval: 200ms\n  buffer_capacity: 100\n",
            pg.url()
        );
    let d = Daemon::start(&cfg, &[]).await;
    (redis, pg, entries, d)
}

#[tokio::test]
async fn every_mutation_is_audited_through_a_postgres_outage() {
    let (redis, mut pg, entries, d) = with_audit_store(50).await;
    let token_actor = format!("token:{}", &id_of(TOKEN)[..8]);
    assert_eq!(
        post(
            &d,
            &format!(
                "/api/system/dlq/jobs/{}/requeue?queue={DLQ}&index=0",
                id_of(&entries[0])
            )
        )
        .await
        .0,
        200
    );
    assert_eq!(
        post(
            &d,
            &format!("/api/system/dlq/jobs/{}/delete?queue={DLQ}&index=0", id_of(&entries[1]))
        )
        .await
        .0,
        200
    );
    assert_eq!(
        post(&d, &format!("/api/system/dlq/requeue?queue={DLQ}&max=3")).await.0,
        200
    );
    let (code, clear) = call(
        reqwest::Method::DELETE,
        d.url(&format!("/api/system/dlq/clear?queue={DLQ}")),
    )
    .await;
    assert_eq!(code, 200, "{clear}");
    let archive = clear["archive_key"].as_str().unwrap().to_string();
    assert_eq!(
        post(&d, &format!("/api/system/dlq/restore?archive={archive}")).await.0,
        200
    );
    let (code, _) = post(&d, &format!("/api/system/dlq/requeue-all?queue={DLQ}&max=1")).await;
    assert_eq!(code, 400, "requeue-all takes no filters");
    assert_eq!(
        post(&d, &format!("/api/system/dlq/requeue-all?queue={DLQ}")).await.0,
        200
    );
    let want = [
        "requeue_all",
        "restore",
        "clear",
        "requeue_filtered",
        "delete_job",
        "requeue_job",
    ];
    let body = eventually("the audit rows to reach PostgreSQL", LIMIT, || async {
        let b = audit(&d).await;
        (b["pending"] == 0 && actions(&b) == want).then_some(b)
    })
    .await;
    let rows = body["rows"].as_array().unwrap();
    assert!(rows.iter().all(|r| r["actor"] == token_actor.as_str()), "{body}");
    assert_eq!(rows[1]["archive_key"], archive.as_str());
    assert_eq!(rows[3]["counts"]["moved"], 3);

    // PostgreSQL goes away: mutations still run, their rows wait.
    pg.stop();
    let _: () = redis.connection().await.rpush(DLQ, &entries[..5]).await.unwrap();
    assert_eq!(
        post(&d, &format!("/api/system/dlq/requeue?queue={DLQ}&max=2")).await.0,
        200
    );
    let b = audit(&d).await;
    assert_eq!(b["store_unavailable"], true, "{b}");
    assert_eq!(actions(&b), ["requeue_filtered"], "the buffered row is shown");
    pg.resume().await;
    let b = eventually("the buffered row to be written", LIMIT, || async {
        let b = audit(&d).await;
        (b["pending"] == 0 && b["store_unavailable"] == false).then_some(b)
    })
    .await;
    let mut all = vec!["requeue_filtered".to_string()];
    all.extend(want.iter().map(|s| s.to_string()));
    assert_eq!(actions(&b), all, "nothing lost, nothing twice");
}

#[tokio::test]
async fn a_full_audit_buffer_refuses_the_mutation_and_changes_nothing() {
    let (redis, mut pg, entries, d) = with_audit_store(200).await;
    pg.stop();
    // 100 single requeues fill the buffer while the database is down.
    for (i, entry) in entries.iter().take(100).enumerate() {
        let (code, body) = post(
            &d,
            &format!("/api/system/dlq/jobs/{}/requeue?queue={DLQ}&index=0", id_of(entry)),
        )
        .await;
        assert_eq!(code, 200, "{i}: {body}");
    }
    let before = dump(&redis).await;
    let (code, body) = post(
        &d,
        &format!(
            "/api/system/dlq/jobs/{}/requeue?queue={DLQ}&index=0",
            id_of(&entries[100])
        ),
    )
    .await;
    assert_eq!(code, 503, "{body}");
    assert!(body["error"].as_str().unwrap().contains("audit"), "{body}");
    assert_eq!(dump(&redis).await, before, "refused before it acted");
    pg.resume().await;
    eventually("the buffer to drain", LIMIT, || async {
        (audit(&d).await["pending"] == 0).then_some(())
    })
    .await;
    let (code, _) = post(
        &d,
        &format!(
            "/api/system/dlq/jobs/{}/requeue?queue={DLQ}&index=0",
            id_of(&entries[100])
        ),
    )
    .await;
    assert_eq!(code, 200);
}

#[tokio::test]
async fn bad_console_input_gets_a_json_4xx_and_changes_nothing() {
    let redis = Redis::start().await;
    let entries: Vec<String> = (0..5).map(|i| failure(i, "boom", 1, 10.0)).collect();
    seed(&redis, &entries).await;
    let d = Daemon::start(&config(&redis, ""), &[]).await;
    let good = id_of(&entries[0]);
    let before = dump(&redis).await;
    let cases: Vec<(&str, String, u16)> = vec![
        (
            "POST",
            format!("/api/system/dlq/jobs/NOTANID/requeue?queue={DLQ}&index=0"),
            400,
        ),
        ("POST", format!("/api/system/dlq/jobs/{good}/requeue?queue={DLQ}"), 400),
        (
            "POST",
            format!("/api/system/dlq/jobs/{good}/requeue?queue={DLQ}&index=-1"),
            400,
        ),
        (
            "POST",
            format!("/api/system/dlq/jobs/0123456789abcdef/requeue?queue={DLQ}&index=0"),
            404,
        ),
        (
            "POST",
            format!("/api/system/dlq/jobs/{good}/delete?queue={QUEUE}&index=0"),
            400,
        ),
        ("POST", format!("/api/system/dlq/requeue?queue={DLQ}&colour=red"), 400),
        ("POST", format!("/api/system/dlq/requeue?queue={DLQ}&rate=0"), 400),
        ("POST", format!("/api/system/dlq/requeue?queue={DLQ}&rate=-5"), 400),
        (
            "POST",
            format!("/api/system/dlq/requeue?queue={DLQ}&older_than=-1h"),
            400,
        ),
        (
            "POST",
            format!("/api/system/dlq/requeue?queue={DLQ}&newer_than=soon"),
            400,
        ),
        (
            "POST",
            format!("/api/system/dlq/requeue?queue={DLQ}&malformed=maybe"),
            400,
        ),
        ("POST", format!("/api/system/dlq/requeue?queue={DLQ}&max=0"), 400),
        ("POST", format!("/api/system/dlq/requeue?queue={DLQ}&dry_run=yes"), 400),
        ("GET", format!("/api/dlq/jobs/{DLQ}?cursor=-3"), 400),
        ("GET", format!("/api/dlq/jobs/{DLQ}?error="), 400),
        ("GET", "/api/system/dlq/tasks/nope".to_string(), 404),
        ("GET", "/api/system/dlq/archives?queue=other".to_string(), 404),
        ("GET", "/api/system/dlq/audit?limit=0".to_string(), 400),
    ];
    for (method, path, want) in cases {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let (code, body) = call(m, d.url(&path)).await;
        assert_eq!(code, want, "{method} {path}: {body}");
        assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()), "{path}: {body}");
    }
    assert_eq!(dump(&redis).await, before, "nothing changed");
    // Without the token a move is refused and nothing changes.
    let resp = reqwest::Client::new()
        .post(d.url(&format!("/api/system/dlq/jobs/{good}/delete?queue={DLQ}&index=0")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    assert_eq!(dump(&redis).await, before);
}

const PROCESSING: &str = "detection_queue:processing";

async fn gauge(d: &Daemon, series: &str) -> Option<f64> {
    sample_value(&d.get_text("/metrics").await, series)
}

#[tokio::test]
async fn stuck_jobs_are_counted_listed_and_returned_once() {
    let redis = Redis::start().await;
    let extra = "  processing_suffix: \":processing\"\n  processing_stuck_after: 10s\n";
    let d = Daemon::start(&config(&redis, extra), &[]).await;
    let mut c = redis.connection().await;
    let (a, b, cc) = (original(1), original(2), original(3));
    let _: () = c.rpush(PROCESSING, &[&a, &b]).await.unwrap();
    let active = r#"job_queue_active{queue="detection_queue"}"#;
    let stuck = r#"job_queue_stuck{queue="detection_queue"}"#;
    eventually("two jobs active", LIMIT, || async {
        (gauge(&d, active).await == Some(2.0)).then_some(())
    })
    .await;
    // Both become stuck once they have been seen for 10 s.
    eventually("two jobs stuck", LIMIT, || async {
        (gauge(&d, stuck).await == Some(2.0)).then_some(())
    })
    .await;
    // A third job arrives: active, not stuck.
    let _: () = c.rpush(PROCESSING, &cc).await.unwrap();
    eventually("three jobs active", LIMIT, || async {
        (gauge(&d, active).await == Some(3.0)).then_some(())
    })
    .await;
    let (code, list) = get(&d, "/api/system/queues/detection_queue/stuck").await;
    assert_eq!(code, 200, "{list}");
    assert_eq!(list["active"], 3);
    assert_eq!(list["processing_key"], PROCESSING);
    assert_eq!(strings(&list["stuck"], "id"), vec![id_of(&a), id_of(&b)], "{list}");
    assert_eq!(list["stuck"][0]["raw"], a.as_str());
    assert!(list["stuck"][0]["age_seconds"].as_f64().unwrap() >= 10.0, "{list}");
    let (code, stats) = get(&d, "/api/system/stats").await;
    assert_eq!(code, 200);
    assert_eq!(stats["dlq"]["active_jobs"], 3, "{stats}");
    assert_eq!(stats["dlq"]["queues"][0]["active"], 3, "{stats}");

    // The new job is not stuck: 409, nothing moves.
    let (code, body) = post(
        &d,
        &format!("/api/system/queues/detection_queue/stuck/{}/return", id_of(&cc)),
    )
    .await;
    assert_eq!((code, body["code"].as_str()), (409, Some("conflict")), "{body}");
    // Return a: it leaves the processing list and is on the queue, once.
    let path = format!("/api/system/queues/detection_queue/stuck/{}/return", id_of(&a));
    let (code, body) = post(&d, &path).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["to"], QUEUE);
    assert_eq!(lrange(&redis, PROCESSING).await, vec![b.clone(), cc.clone()]);
    assert_eq!(lrange(&redis, QUEUE).await, vec![a.clone()]);
    let (code, body) = post(&d, &path).await;
    assert_eq!(code, 404, "a second return finds nothing: {body}");
    // b's worker finishes it before the operator acts: nothing is pushed.
    let _: i64 = c.lrem(PROCESSING, 1, &b).await.unwrap();
    let (code, _) = post(
        &d,
        &format!("/api/system/queues/detection_queue/stuck/{}/return", id_of(&b)),
    )
    .await;
    assert_eq!(code, 404);
    assert_eq!(lrange(&redis, QUEUE).await, vec![a.clone()]);
    assert_eq!(lrange(&redis, PROCESSING).await, vec![cc.clone()]);
    let rows = audit(&d).await;
    assert_eq!(actions(&rows), vec!["return_stuck".to_string()], "{rows}");
    assert_eq!(rows["rows"][0]["queue"], PROCESSING);

    // A wrong-typed processing list is that queue's problem: 409 naming
    // it, and the collector keeps polling the other queue.
    let _: () = c.set("analysis_queue:processing", "x").await.unwrap();
    let (code, body) = get(&d, "/api/system/queues/analysis_queue/stuck").await;
    assert_eq!((code, body["code"].as_str()), (409, Some("wrong_type")), "{body}");
    let _: () = c.rpush(PROCESSING, &b).await.unwrap();
    eventually("polling goes on", LIMIT, || async {
        (gauge(&d, active).await == Some(2.0)).then_some(())
    })
    .await;
    assert_eq!(
        gauge(&d, r#"inferwatch_collector_success{collector="queues"}"#).await,
        Some(1.0)
    );
    // Bad input.
    for (path, want) in [
        ("/api/system/queues/nope/stuck", 404),
        ("/api/system/queues/detection_queue/stuck?x=1", 400),
    ] {
        let (code, body) = get(&d, path).await;
        assert_eq!(code, want, "{path}: {body}");
        assert!(body["error"].is_string(), "{path}: {body}");
    }
    let (code, body) = post(&d, "/api/system/queues/detection_queue/stuck/XYZ/return").await;
    assert_eq!(code, 400, "{body}");
    drop(d);

    // Without a suffix none of it exists.
    let plain = Daemon::start(&config(&redis, ""), &[]).await;
    let (code, body) = get(&plain, "/api/system/queues/detection_queue/stuck").await;
    assert_eq!(code, 404, "{body}");
    let page = plain.get_text("/metrics").await;
    assert!(!page.contains("job_queue_active") && !page.contains("job_queue_stuck"));
    let (_, stats) = get(&plain, "/api/system/stats").await;
    assert!(
        stats["dlq"].is_null() || stats["dlq"]["active_jobs"].is_null(),
        "{stats}"
    );
}
