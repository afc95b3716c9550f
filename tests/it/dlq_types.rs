//! No job lost to an odd Redis state: queues and DLQs of the wrong type
//! (through the API and through the scripts themselves), a connection that
//! Redis dropped, and listings of huge entries that stay within their
//! memory and byte budgets. Real `redis-server`, real binary.

use crate::common::{rss_rise, Daemon, Redis};
use redis::AsyncCommands;
use serde_json::Value;

const DLQ: &str = "dlq:analysis_queue";
const QUEUE: &str = "analysis_queue";

fn failure(i: usize) -> String {
    format!(
        r#"{{"original_job":{{"id":"job-{i}"}},"error":"boom","attempt_count":3,"first_failed_at":"2026-11-20T10:00:00Z","last_failed_at":"2026-11-20T10:05:00Z","queue_name":"{QUEUE}"}}"#
    )
}

/// A failure whose error text is `error` (to make entries of any size).
fn failure_with_error(i: usize, error: &str) -> String {
    failure(i).replace(r#""error":"boom""#, &format!(r#""error":"{error}""#))
}

async fn daemon(r: &Redis, extra: &str) -> Daemon {
    daemon_polling(r, "100ms", extra).await
}

async fn daemon_polling(r: &Redis, poll: &str, extra: &str) -> Daemon {
    let config = format!(
        "gpu:\n  enabled: false\nqueues:\n  redis_url: {}\n  poll_interval: {poll}\n{extra}pipeline:\n  stream:\n    enabled: false\n",
        r.url()
    );
    Daemon::start(&config, &[]).await
}

async fn call(method: reqwest::Method, url: &str) -> (u16, Value) {
    let resp = reqwest::Client::new().request(method, url).send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}")),
    )
}

async fn lrange(r: &Redis, key: &str) -> Vec<String> {
    r.connection().await.lrange(key, 0, -1).await.unwrap()
}

/// Sets `key` to a non-list of `kind` and returns Redis's name for it.
async fn make(r: &Redis, key: &str, kind: &str) -> &'static str {
    let mut c = r.connection().await;
    let _: () = c.del(key).await.unwrap();
    match kind {
        "string" => {
            let _: () = c.set(key, "x").await.unwrap();
            "string"
        }
        "hash" => {
            let _: () = c.hset(key, "f", "v").await.unwrap();
            "hash"
        }
        "set" => {
            let _: () = c.sadd(key, "m").await.unwrap();
            "set"
        }
        _ => unreachable!(),
    }
}

#[tokio::test]
async fn requeue_into_a_queue_of_the_wrong_type_moves_nothing_and_says_which_key() {
    let redis = Redis::start().await;
    let d = daemon(&redis, "").await;
    let entries: Vec<String> = (0..5).map(failure).collect();
    for kind in ["string", "hash", "set"] {
        let mut c = redis.connection().await;
        let _: () = c.del(DLQ).await.unwrap();
        let _: () = c.lpush(DLQ, &entries).await.unwrap();
        let before = lrange(&redis, DLQ).await;
        let found = make(&redis, QUEUE, kind).await;
        // The natural reaction to a 409 is to retry: three times.
        for attempt in 0..3 {
            let (code, body) = call(
                reqwest::Method::POST,
                &d.url("/api/system/dlq/requeue-all?queue=dlq:analysis_queue"),
            )
            .await;
            assert_eq!(code, 409, "{kind} attempt {attempt}: {body}");
            assert_eq!(body["code"], "wrong_type", "{body}");
            assert_eq!(body["detail"]["key"], QUEUE, "{body}");
            assert_eq!(body["detail"]["type"], found, "{body}");
            assert!(body["detail"]["expected"].as_str().unwrap().contains("list"), "{body}");
        }
        assert_eq!(
            lrange(&redis, DLQ).await,
            before,
            "{kind}: every entry is still there, once"
        );
        let t: String = redis::cmd("TYPE").arg(QUEUE).query_async(&mut c).await.unwrap();
        assert_eq!(t, found, "the queue key was not touched");
    }
}

#[tokio::test]
async fn a_dlq_of_the_wrong_type_is_refused_by_every_endpoint() {
    let redis = Redis::start().await;
    let d = daemon(&redis, "").await;
    let mut c = redis.connection().await;
    let _: () = c.hset(DLQ, "job", failure(1)).await.unwrap();
    // A real archive of the other queue's DLQ, to restore into a hash.
    let archive = "dlq:analysis_queue:cleared:1795168800";
    let _: () = c.rpush(archive, &[failure(7), failure(8)]).await.unwrap();
    for (method, path) in [
        (
            reqwest::Method::POST,
            "/api/system/dlq/requeue-all?queue=dlq:analysis_queue",
        ),
        (
            reqwest::Method::DELETE,
            "/api/system/dlq/clear?queue=dlq:analysis_queue",
        ),
        (
            reqwest::Method::POST,
            "/api/system/dlq/restore?archive=dlq:analysis_queue:cleared:1795168800",
        ),
        (reqwest::Method::GET, "/api/dlq/jobs/dlq:analysis_queue"),
    ] {
        for _ in 0..3 {
            let (code, body) = call(method.clone(), &d.url(path)).await;
            assert_eq!(code, 409, "{method} {path}: {body}");
            assert_eq!(body["detail"]["key"], DLQ, "{body}");
            assert_eq!(body["detail"]["type"], "hash", "{body}");
        }
    }
    let h: std::collections::HashMap<String, String> = c.hgetall(DLQ).await.unwrap();
    assert_eq!(h.len(), 1);
    assert_eq!(
        lrange(&redis, archive).await,
        vec![failure(7), failure(8)],
        "the archive is whole"
    );
    let ttl: i64 = c.ttl(archive).await.unwrap();
    assert_eq!(ttl, -1, "the archive was not renamed or touched");
}

/// The scripts check types themselves, so a key that changes type between
/// the API's check and the script's run still loses nothing.
#[tokio::test]
async fn the_move_scripts_check_every_key_before_their_first_pop() {
    use inferwatch::dlq::{CHECK_LUA, CLEAR_LUA, REQUEUE_LUA, RESTORE_LUA};
    let redis = Redis::start().await;
    let mut c = redis.connection().await;
    let run = |body: &str| redis::Script::new(&format!("{CHECK_LUA}{body}"));

    // Requeue into a string queue.
    let _: () = c.rpush(DLQ, &[failure(0), failure(1)]).await.unwrap();
    let _: () = c.set(QUEUE, "x").await.unwrap();
    let reply: Vec<redis::Value> = run(REQUEUE_LUA)
        .key(DLQ)
        .key(QUEUE)
        .arg("LEFT")
        .arg("LEFT")
        .arg(failure(0))
        .arg(r#"{"id":"job-0"}"#)
        .invoke_async(&mut c)
        .await
        .unwrap();
    let decoded: (i64, String, String) = redis::from_redis_value(&redis::Value::Array(reply)).unwrap();
    assert_eq!(decoded, (1, QUEUE.to_string(), "string".to_string()));
    assert_eq!(lrange(&redis, DLQ).await, vec![failure(0), failure(1)]);

    // Restore into a set DLQ.
    let archive = "dlq:analysis_queue:cleared:5";
    let _: () = c.rpush(archive, failure(9)).await.unwrap();
    let _: () = c.del(DLQ).await.unwrap();
    let _: () = c.sadd(DLQ, "m").await.unwrap();
    let reply: Vec<redis::Value> = run(RESTORE_LUA)
        .key(archive)
        .key(DLQ)
        .arg(1000)
        .arg("LEFT")
        .invoke_async(&mut c)
        .await
        .unwrap();
    let decoded: (i64, String, String) = redis::from_redis_value(&redis::Value::Array(reply)).unwrap();
    assert_eq!(decoded, (1, DLQ.to_string(), "set".to_string()));
    assert_eq!(lrange(&redis, archive).await, vec![failure(9)]);

    // Clear of a set DLQ renames nothing.
    let reply: Vec<redis::Value> = run(CLEAR_LUA)
        .key(DLQ)
        .key("dlq:analysis_queue:cleared:6")
        .arg(60)
        .invoke_async(&mut c)
        .await
        .unwrap();
    let decoded: (i64, String, String) = redis::from_redis_value(&redis::Value::Array(reply)).unwrap();
    assert_eq!(decoded.0, 1);
    let exists: bool = c.exists("dlq:analysis_queue:cleared:6").await.unwrap();
    assert!(!exists);
}

#[tokio::test]
async fn the_first_request_after_redis_dropped_the_connection_succeeds() {
    let redis = Redis::start().await;
    // The collector polls once an hour, so only the requests below can
    // notice the dropped connection.
    let d = daemon_polling(&redis, "1h", "").await;
    let _: () = redis.connection().await.lpush(DLQ, failure(1)).await.unwrap();
    for round in 0..3 {
        let (code, _) = call(reqwest::Method::GET, &d.url("/api/system/dlq/stats")).await;
        assert_eq!(code, 200);
        // Drop every connection but this one (the daemon's included).
        let mut admin = redis.connection().await;
        let killed: i64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("SKIPME")
            .arg("yes")
            .arg("TYPE")
            .arg("normal")
            .query_async(&mut admin)
            .await
            .unwrap();
        assert!(killed >= 1, "the daemon's connection was dropped");
        let (code, body) = call(reqwest::Method::GET, &d.url("/api/system/dlq/stats")).await;
        assert_eq!(code, 200, "round {round}: {body}");
        assert_eq!(body["analysis_queue_count"], 1);
        let (code, body) = call(reqwest::Method::GET, &d.url("/api/dlq/jobs/dlq:analysis_queue")).await;
        assert_eq!(code, 200, "round {round}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_entries_are_listed_truncated_within_the_memory_budget() {
    let redis = Redis::start().await;
    let mut c = redis.connection().await;
    // 100 entries of 1 MiB each: valid JSON failures with a huge error text.
    let big = "x".repeat(1024 * 1024);
    for i in 0..100 {
        let _: () = c.lpush(DLQ, failure_with_error(i, &big)).await.unwrap();
    }
    let d = daemon(&redis, "").await;
    let url = d.url("/api/dlq/jobs/dlq:analysis_queue?limit=100");
    let mut page = Value::Null;
    let one = rss_rise(d.proc.pid(), async {
        let (code, body) = call(reqwest::Method::GET, &url).await;
        assert_eq!(code, 200);
        page = body;
    })
    .await;
    let jobs = page["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 100, "64 KiB shown of each fits the 8 MiB page");
    for (i, j) in jobs.iter().enumerate() {
        assert_eq!(j["truncated"], true, "{i}");
        assert_eq!(j["index"], i);
        assert!(j["size"].as_u64().unwrap() > 1024 * 1024);
        assert_eq!(j["raw"].as_str().unwrap().len(), 64 * 1024);
    }
    assert_eq!(page["byte_budget_reached"], Value::Null);
    // 100 MiB are stored; a listing shows 6.4 MB of it. Holding the page,
    // Redis's reply and the JSON body at once is a few times that, and well
    // under the 100 MiB that reading the entries whole would take.
    const ONE_LISTING: u64 = 48 << 20;
    assert!(one < ONE_LISTING, "one listing raised RSS by {one} bytes");
    let four = rss_rise(d.proc.pid(), async {
        let parallel: Vec<_> = (0..4)
            .map(|_| {
                let url = url.clone();
                tokio::spawn(async move { call(reqwest::Method::GET, &url).await.0 })
            })
            .collect();
        for h in parallel {
            assert_eq!(h.await.unwrap(), 200);
        }
    })
    .await;
    assert!(
        four < 4 * ONE_LISTING,
        "four parallel listings raised RSS by {four} bytes"
    );
}

#[tokio::test]
async fn a_page_stops_at_its_byte_budget_and_says_so() {
    let redis = Redis::start().await;
    let mut c = redis.connection().await;
    let mid = "y".repeat(30 * 1024);
    for i in 0..10 {
        let _: () = c.rpush(DLQ, failure_with_error(i, &mid)).await.unwrap();
    }
    let d = daemon(&redis, "  list_entry_max_bytes: 65536\n  list_page_max_bytes: 65536\n").await;
    let (code, page) = call(
        reqwest::Method::GET,
        &d.url("/api/dlq/jobs/dlq:analysis_queue?limit=10"),
    )
    .await;
    assert_eq!(code, 200, "{page}");
    assert_eq!(page["requested_limit"], 10);
    assert_eq!(page["limit"], 2, "two 30 KiB entries fit in 64 KiB, three do not");
    assert_eq!(page["byte_budget_reached"], 65536);
    assert_eq!(page["total"], 10);
    let jobs = page["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 2);
    assert_eq!(
        jobs[0]["original_job"]["id"], "job-0",
        "whole entries are shown as they are"
    );
    // The next page starts where this one stopped.
    let (_, next) = call(
        reqwest::Method::GET,
        &d.url("/api/dlq/jobs/dlq:analysis_queue?start=2&limit=10"),
    )
    .await;
    assert_eq!(next["jobs"][0]["original_job"]["id"], "job-2");
}

/// The requeue step checks before it pops: it moves only the run of
/// expected entries at the oldest end, leaves the first unexpected entry
/// and everything after it untouched, puts malformed entries (empty
/// payload) back at the newest end in their order, and works from either
/// end.
#[tokio::test]
async fn the_requeue_step_moves_only_the_expected_run_in_order() {
    use inferwatch::dlq::{CHECK_LUA, REQUEUE_LUA};
    let redis = Redis::start().await;
    let mut c = redis.connection().await;
    let script = redis::Script::new(&format!("{CHECK_LUA}{REQUEUE_LUA}"));
    for (pop, push) in [("LEFT", "RIGHT"), ("RIGHT", "LEFT")] {
        let _: () = c.del(&[DLQ, QUEUE]).await.unwrap();
        // Oldest first in list order for LPOP, reversed for RPOP.
        let mut stored = vec![
            failure(0),
            "bad entry".to_string(),
            failure(2),
            "intruder".to_string(),
            failure(4),
        ];
        if pop == "RIGHT" {
            stored.reverse();
        }
        let _: () = c.rpush(DLQ, &stored).await.unwrap();
        let mut inv = script.key(DLQ);
        inv.key(QUEUE).arg(pop).arg(push);
        // Expected: job 0, the malformed entry, job 2, then job 3 (but the
        // list holds "intruder" there), then job 4.
        for (entry, payload) in [
            (failure(0), r#"{"id":"job-0"}"#.to_string()),
            ("bad entry".to_string(), String::new()),
            (failure(2), r#"{"id":"job-2"}"#.to_string()),
            (failure(3), r#"{"id":"job-3"}"#.to_string()),
            (failure(4), r#"{"id":"job-4"}"#.to_string()),
        ] {
            inv.arg(entry).arg(payload);
        }
        let reply: Vec<i64> = inv.invoke_async(&mut c).await.unwrap();
        assert_eq!(reply, vec![0, 2, 1, 1], "{pop}: 2 requeued, 1 kept, stopped");
        let queue = lrange(&redis, QUEUE).await;
        let dlq = lrange(&redis, DLQ).await;
        // The queue gets the payloads in order on the push side; the DLQ
        // keeps the intruder and job 4 at the oldest end and the malformed
        // entry at the newest.
        if push == "RIGHT" {
            assert_eq!(queue, vec![r#"{"id":"job-0"}"#, r#"{"id":"job-2"}"#]);
            assert_eq!(dlq, vec!["intruder".to_string(), failure(4), "bad entry".to_string()]);
        } else {
            assert_eq!(queue, vec![r#"{"id":"job-2"}"#, r#"{"id":"job-0"}"#]);
            assert_eq!(dlq, vec!["bad entry".to_string(), failure(4), "intruder".to_string()]);
        }
    }
}
