//! How long jobs wait, and how far stream consumers lag: a real Redis, a
//! real daemon, producers and consumers played by the test.

use redis::AsyncCommands;

use crate::common::{sample_value, unix_now, Daemon, Redis};

fn config(r: &Redis, extra: &str) -> String {
    format!(
        "gpu:\n  enabled: false\nqueues:\n  redis_url: {}\n  poll_interval: 100ms\n  names: [detection_queue, analysis_queue]\n{extra}",
        r.url()
    )
}

async fn value(d: &Daemon, series: &str) -> Option<f64> {
    sample_value(&d.get_text("/metrics").await, series)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wait_grows_while_nothing_consumes_and_resets_when_a_consumer_pops() {
    let r = Redis::start().await;
    let d = Daemon::start(
        &config(&r, "  max_wait: 1m\n  max_wait_by_queue: {analysis_queue: 90s}\n"),
        &[],
    )
    .await;
    let age = "job_queue_oldest_age_seconds{queue=\"detection_queue\"}";
    assert_eq!(d.until(age, "an empty queue's age", |v| v == 0.0).await, 0.0);
    assert_eq!(
        value(&d, "job_queue_max_wait_seconds{queue=\"detection_queue\"}").await,
        Some(60.0)
    );
    assert_eq!(
        value(&d, "job_queue_max_wait_seconds{queue=\"analysis_queue\"}").await,
        Some(90.0)
    );
    // Plain jobs (no timestamp): LPUSH, so the consumer end is the right.
    let mut c = r.connection().await;
    let _: () = c.lpush("detection_queue", "job-1").await.unwrap();
    d.until(age, "job-1 to have waited 1 s", |v| v >= 1.0).await;
    let _: () = c.lpush("detection_queue", "job-2").await.unwrap();
    let before = d.until(age, "job-1 to have waited 2 s", |v| v >= 2.0).await;
    // A consumer takes job-1: job-2, seen later, is at the head now.
    let popped: String = c.rpop("detection_queue", None).await.unwrap();
    assert_eq!(popped, "job-1");
    let after = d.until(age, "the head to be job-2", |v| v < before).await;
    assert!(after >= 0.0, "{after}");
    let _: String = c.rpop("detection_queue", None).await.unwrap();
    d.until(age, "the emptied queue to read 0", |v| v == 0.0).await;

    // A job that says when it was queued: an hour ago.
    let stamped = format!(r#"{{"id":"j3","enqueued_at":{}}}"#, unix_now() - 3600.0);
    let _: () = c.lpush("analysis_queue", &stamped).await.unwrap();
    let v = d
        .until(
            "job_queue_oldest_age_seconds{queue=\"analysis_queue\"}",
            "the stamped job's age",
            |v| v > 0.0,
        )
        .await;
    assert!((3600.0..3660.0).contains(&v), "{v}");
    let iso = chrono::Utc::now() - chrono::Duration::minutes(5);
    let _: () = c.del("analysis_queue").await.unwrap();
    let _: () = c
        .lpush("analysis_queue", format!(r#"{{"created_at":"{}"}}"#, iso.to_rfc3339()))
        .await
        .unwrap();
    let v = d
        .until(
            "job_queue_oldest_age_seconds{queue=\"analysis_queue\"}",
            "the ISO-stamped job's age",
            |v| v < 3600.0 && v > 0.0,
        )
        .await;
    assert!((300.0..360.0).contains(&v), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_and_pending_grow_while_the_reader_is_stopped_and_fall_when_it_resumes() {
    let r = Redis::start().await;
    // The daemon's own reader runs once: it creates its group at the
    // stream's start.
    let reader = Daemon::start(&config(&r, ""), &[]).await;
    let lag = "redis_stream_group_lag{group=\"inferwatch\",stream=\"pipeline:events\"}";
    reader.until(lag, "the group to exist", |v| v == 0.0).await;
    drop(reader);

    // The reader is stopped; a producer writes, and a second group that the
    // test consumes by hand is watched too.
    let mut c = r.connection().await;
    let _: () = redis::cmd("XGROUP")
        .arg(&["CREATE", "jobs", "workers", "0", "MKSTREAM"])
        .query_async(&mut c)
        .await
        .unwrap();
    let event = r#"{"kind":"stage","stage":"detection","duration_seconds":0.01,"status":"ok"}"#;
    for _ in 0..5 {
        let _: String = c.xadd("pipeline:events", "*", &[("event", event)]).await.unwrap();
        let _: String = c.xadd("jobs", "*", &[("job", "x")]).await.unwrap();
    }
    let stopped = Daemon::start(
        &format!(
            "{}  streams:\n    - {{stream: \"pipeline:events\", group: inferwatch}}\n    - {{stream: jobs, group: workers}}\npipeline:\n  stream:\n    enabled: false\n",
            config(&r, "")
        ),
        &[],
    )
    .await;
    assert_eq!(stopped.until(lag, "the reader's lag", |v| v == 5.0).await, 5.0);
    assert_eq!(
        value(&stopped, "redis_stream_length{stream=\"pipeline:events\"}").await,
        Some(5.0)
    );
    // A worker takes 3 jobs without acknowledging them: lag 2, pending 3.
    let wlag = "redis_stream_group_lag{group=\"workers\",stream=\"jobs\"}";
    let wpending = "redis_stream_group_pending{group=\"workers\",stream=\"jobs\"}";
    assert_eq!(stopped.until(wlag, "the workers' lag", |v| v == 5.0).await, 5.0);
    let read: redis::streams::StreamReadReply = c
        .xread_options(
            &["jobs"],
            &[">"],
            &redis::streams::StreamReadOptions::default()
                .group("workers", "w1")
                .count(3),
        )
        .await
        .unwrap();
    let ids: Vec<String> = read.keys[0].ids.iter().map(|i| i.id.clone()).collect();
    assert_eq!(stopped.until(wpending, "3 pending", |v| v == 3.0).await, 3.0);
    assert_eq!(stopped.until(wlag, "lag 2", |v| v == 2.0).await, 2.0);
    let _: u64 = c.xack("jobs", "workers", &ids).await.unwrap();
    assert_eq!(stopped.until(wpending, "none pending", |v| v == 0.0).await, 0.0);
    drop(stopped);

    // The reader resumes: it reads and acknowledges everything.
    let resumed = Daemon::start(&config(&r, ""), &[]).await;
    resumed.until(lag, "the reader to catch up", |v| v == 0.0).await;
    assert_eq!(
        resumed
            .until(
                "redis_stream_group_pending{group=\"inferwatch\",stream=\"pipeline:events\"}",
                "nothing pending",
                |v| v == 0.0
            )
            .await,
        0.0
    );
    assert_eq!(
        value(&resumed, "pipeline_events_total{source=\"redis_stream\"}").await,
        Some(5.0),
        "the five events written while it was stopped were read"
    );
}
