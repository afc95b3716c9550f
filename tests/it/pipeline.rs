//! Pipeline-stage ingest through the real binary: HTTP batches and the
//! Redis stream (a real `redis-server`) feed the same histograms; bad
//! batches get clear 4xx answers; events written while the daemon is
//! stopped, and entries a dead consumer left pending, are all counted.

use std::time::Duration;

use crate::common::{eventually, sample_value, Daemon, Redis, SIGTERM};
use redis::AsyncCommands;
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(30);

fn config(r: &Redis, extra: &str) -> String {
    format!(
        "gpu:\n  nvml_library: libnvidia-ml-not-installed.so.1\n  poll_interval: 1s\nqueues:\n  redis_url: {}\n  poll_interval: 200ms\npipeline:\n  stream:\n    claim_idle: 1s\n{extra}",
        r.url()
    )
}

async fn ingest(d: &Daemon, body: impl Into<reqwest::Body>) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(d.url("/api/pipeline/events"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

async fn metric(d: &Daemon, series: &str) -> Option<f64> {
    sample_value(&d.get_text("/metrics").await, series)
}

async fn wait_metric(d: &Daemon, series: &str, want: f64) {
    eventually(&format!("{series} == {want}"), LIMIT, || async {
        (metric(d, series).await == Some(want)).then_some(())
    })
    .await;
}

fn stage(name: &str, secs: f64, ok: bool) -> Value {
    if ok {
        json!({"kind": "stage", "stage": name, "duration_seconds": secs, "status": "ok", "items": 1, "job_id": "j"})
    } else {
        json!({"kind": "stage", "stage": name, "duration_seconds": secs, "status": "error", "error_type": "timeout"})
    }
}

#[tokio::test]
async fn http_batches_feed_the_histograms_and_reject_bad_events_by_index() {
    let redis = Redis::start().await;
    let d = Daemon::start(&config(&redis, "  max_stages: 3\n"), &[]).await;
    let (_, gpu) = (
        0,
        reqwest::get(d.url("/api/system/gpu"))
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap(),
    );
    assert!(gpu["inference_fps"].is_null(), "null before any event: {gpu}");

    let batch = json!([
        stage("detection", 0.042, true),
        stage("detection", 0.5, true),
        stage("analysis", 2.5, false),
        {"kind": "job", "status": "completed", "duration_seconds": 93.5},
        {"kind": "job", "status": "failed", "duration_seconds": 130.0},
        {"kind": "stage", "stage": "detection", "duration_seconds": -1, "status": "ok"},
        {"kind": "frame"},
        "not an object",
    ]);
    let (code, report) = ingest(&d, batch.to_string()).await;
    assert_eq!(code, 200, "{report}");
    assert_eq!(
        (report["accepted"].as_u64(), report["rejected"].as_u64()),
        (Some(5), Some(3))
    );
    let indexes: Vec<u64> = report["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["index"].as_u64().unwrap())
        .collect();
    assert_eq!(indexes, [5, 6, 7]);
    assert!(report["errors"][0]["detail"]
        .as_str()
        .unwrap()
        .contains("duration_seconds"));
    assert_eq!(report["errors"][0]["reason"], "invalid_event");

    let page = d.get_text("/metrics").await;
    let v = |s: &str| sample_value(&page, s);
    assert_eq!(
        v("pipeline_stage_duration_seconds_count{stage=\"detection\"}"),
        Some(2.0)
    );
    assert_eq!(
        v("pipeline_stage_duration_seconds_bucket{stage=\"detection\",le=\"0.05\"}"),
        Some(1.0)
    );
    assert_eq!(
        v("pipeline_stage_duration_seconds_bucket{stage=\"detection\",le=\"0.5\"}"),
        Some(2.0)
    );
    assert_eq!(
        v("pipeline_stage_errors_total{error_type=\"timeout\",stage=\"analysis\"}"),
        Some(1.0)
    );
    assert_eq!(v("pipeline_jobs_total{status=\"completed\"}"), Some(1.0));
    assert_eq!(v("pipeline_jobs_total{status=\"failed\"}"), Some(1.0));
    assert_eq!(v("pipeline_job_duration_seconds_bucket{le=\"120\"}"), Some(1.0));
    assert_eq!(v("pipeline_job_duration_seconds_count"), Some(2.0));
    assert_eq!(v("pipeline_items_processed_total"), Some(2.0));
    assert_eq!(v("pipeline_events_total{source=\"http\"}"), Some(5.0));
    assert_eq!(v("pipeline_events_rejected_total{reason=\"invalid_event\"}"), Some(3.0));

    // inference_fps: 2 items over the last 60 s, from the next GPU poll on.
    let gpu = eventually("inference_fps on the next poll", LIMIT, || async {
        let g: Value = reqwest::get(d.url("/api/system/gpu")).await.ok()?.json().await.ok()?;
        (!g["inference_fps"].is_null()).then_some(g)
    })
    .await;
    assert!(
        (gpu["inference_fps"].as_f64().unwrap() - 2.0 / 60.0).abs() < 1e-9,
        "{gpu}"
    );

    // The cardinality cap: detection and analysis exist; one more fits.
    let (code, _) = ingest(&d, json!([stage("shape", 1.0, true)]).to_string()).await;
    assert_eq!(code, 200);
    let (code, report) = ingest(&d, json!([stage("texture", 1.0, true)]).to_string()).await;
    assert_eq!(code, 400, "{report}");
    assert_eq!(report["errors"][0]["reason"], "stage_limit");
    assert!(report["errors"][0]["detail"].as_str().unwrap().contains("at most 3"));
    assert!(
        !d.get_text("/metrics").await.contains("stage=\"texture\""),
        "no new series"
    );

    // Batch-level refusals.
    let big = format!(
        "[{}]",
        vec![stage("detection", 0.1, true).to_string(); 15_000].join(",")
    );
    assert!(big.len() > 1024 * 1024);
    let (code, body) = ingest(&d, big).await;
    assert_eq!(code, 413, "{body}");
    assert!(body["error"].as_str().unwrap().contains("1 MiB"));
    let short = json!({"kind": "job", "status": "completed", "duration_seconds": 1}).to_string();
    let many = format!("[{}]", vec![short; 10_001].join(","));
    assert!(many.len() < 1024 * 1024);
    let (code, body) = ingest(&d, many).await;
    assert_eq!(code, 413, "{body}");
    assert!(body["error"].as_str().unwrap().contains("at most 10000 events"));
    let (code, body) = ingest(&d, "{\"kind\":").await;
    assert_eq!(code, 400);
    assert!(body["error"]
        .as_str()
        .unwrap()
        .contains("one JSON event object or an array"));
    let page = d.get_text("/metrics").await;
    assert_eq!(
        sample_value(&page, "pipeline_jobs_total{status=\"completed\"}"),
        Some(1.0),
        "nothing of those applied"
    );
    // One event may come bare, without the array.
    let (code, body) = ingest(
        &d,
        json!({"kind": "job", "status": "completed", "duration_seconds": 2.0}).to_string(),
    )
    .await;
    assert_eq!((code, body["accepted"].as_u64()), (200, Some(1)), "{body}");
    let page = d.get_text("/metrics").await;
    assert_eq!(
        sample_value(&page, "pipeline_jobs_total{status=\"completed\"}"),
        Some(2.0)
    );
    assert_eq!(
        sample_value(&page, "pipeline_events_rejected_total{reason=\"body_too_large\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample_value(&page, "pipeline_events_rejected_total{reason=\"too_many_events\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample_value(&page, "pipeline_events_rejected_total{reason=\"stage_limit\"}"),
        Some(1.0)
    );

    // A full batch of 10,000 is fine.
    let ok = json!({"kind": "job", "status": "completed", "duration_seconds": 1}).to_string();
    let (code, body) = ingest(&d, format!("[{}]", vec![ok; 10_000].join(","))).await;
    assert_eq!((code, body["accepted"].as_u64()), (200, Some(10_000)));
    let stats: Value = reqwest::get(d.url("/api/system/stats"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["pipeline"]["events_ingested"]["http"], 10_007);
}

async fn xadd(c: &mut redis::aio::MultiplexedConnection, events: impl IntoIterator<Item = Value>) {
    let mut pipe = redis::pipe();
    for e in events {
        pipe.xadd("pipeline:events", "*", &[("event", e.to_string())]).ignore();
    }
    let _: () = pipe.query_async(c).await.unwrap();
}

#[tokio::test]
async fn stream_events_are_counted_including_those_written_while_stopped() {
    let redis = Redis::start().await;
    let mut c = redis.connection().await;
    // Written before the daemon ever ran.
    xadd(&mut c, (0..200).map(|i| stage("detection", 0.01 * i as f64, true))).await;
    let cfg = config(&redis, "");
    let mut d = Daemon::start(&cfg, &[]).await;
    wait_metric(&d, "pipeline_events_total{source=\"redis_stream\"}", 200.0).await;
    xadd(&mut c, (0..50).map(|_| stage("analysis", 1.0, false))).await;
    xadd(&mut c, [json!({"kind": "bogus"})]).await;
    wait_metric(&d, "pipeline_events_total{source=\"redis_stream\"}", 250.0).await;
    wait_metric(&d, "pipeline_events_rejected_total{reason=\"invalid_event\"}", 1.0).await;
    assert_eq!(
        metric(
            &d,
            "pipeline_stage_errors_total{error_type=\"timeout\",stage=\"analysis\"}"
        )
        .await,
        Some(50.0)
    );
    assert_eq!(
        metric(&d, "pipeline_stage_duration_seconds_count{stage=\"detection\"}").await,
        Some(200.0),
        "stream and HTTP feed the same histograms"
    );
    d.proc.stop_with(SIGTERM);

    // Written while no daemon runs, and 100 taken but never acknowledged by
    // a consumer that then died.
    xadd(&mut c, (0..300).map(|_| stage("detection", 0.2, true))).await;
    let _: redis::streams::StreamReadReply = c
        .xread_options(
            &["pipeline:events"],
            &[">"],
            &redis::streams::StreamReadOptions::default()
                .group("inferwatch", "dead-worker")
                .count(100),
        )
        .await
        .unwrap();
    let pending: redis::streams::StreamPendingReply = c.xpending("pipeline:events", "inferwatch").await.unwrap();
    assert_eq!(pending.count(), 100);

    let d = Daemon::start(&cfg, &[]).await;
    wait_metric(&d, "pipeline_events_total{source=\"redis_stream\"}", 300.0).await;
    let pending: redis::streams::StreamPendingReply = c.xpending("pipeline:events", "inferwatch").await.unwrap();
    assert_eq!(
        pending.count(),
        0,
        "everything acknowledged, the dead worker's entries too"
    );
    assert!(d
        .log()
        .contains("Claimed pipeline events a dead consumer left pending."));
    assert_eq!(
        metric(&d, "pipeline_stage_duration_seconds_count{stage=\"detection\"}").await,
        Some(300.0)
    );
}

/// Ingest is a write: with tokens set it needs one (the admin token or the
/// narrower ingest token), and without tokens only trusted networks may
/// post. A refused request uses up no stage name.
#[tokio::test]
async fn ingest_needs_a_token_or_a_trusted_network() {
    let redis = Redis::start().await;
    let tokens = Daemon::start(
        &config(&redis, "api:\n  token: admin-s3cret\n  ingest_token: worker-s3cret\n"),
        &[],
    )
    .await;
    let untrusted = Daemon::start(&config(&redis, "api:\n  trusted_networks: ['127.0.0.2/32']\n"), &[]).await;
    let body = serde_json::to_string(&[stage("forged", 0.1, true)]).unwrap();
    let post = |d: &Daemon, auth: Option<&str>| {
        let mut req = reqwest::Client::new()
            .post(d.url("/api/pipeline/events"))
            .header("content-type", "application/json")
            .body(body.clone());
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        req.send()
    };
    for (d, auth, want) in [
        (&tokens, None, 401),
        (&tokens, Some("Bearer nope"), 401),
        (&tokens, Some("Basic d29ya2Vy"), 401),
        (&untrusted, None, 403),
        (&untrusted, Some("Bearer anything"), 403),
    ] {
        let resp = post(d, auth).await.unwrap();
        assert_eq!(resp.status().as_u16(), want, "{auth:?}");
        let body: Value = resp.json().await.unwrap();
        assert!(body["error"].is_string() && body["code"].is_string(), "{body}");
        assert!(
            !body.to_string().contains("127.0.0.2"),
            "a 403 does not echo the trusted networks: {body}"
        );
    }
    for d in [&tokens, &untrusted] {
        assert_eq!(
            metric(d, "pipeline_stage_duration_seconds_count{stage=\"forged\"}").await,
            None,
            "a refused batch creates no series"
        );
    }
    // The ingest token, the admin token, and a lower-case scheme all work.
    for auth in ["Bearer worker-s3cret", "Bearer admin-s3cret", "bearer worker-s3cret"] {
        let resp = post(&tokens, Some(auth)).await.unwrap();
        assert_eq!(resp.status().as_u16(), 200, "{auth}");
    }
    wait_metric(&tokens, "pipeline_stage_duration_seconds_count{stage=\"forged\"}", 3.0).await;
    // The ingest token cannot move DLQ jobs.
    let resp = reqwest::Client::new()
        .post(tokens.url("/api/system/dlq/requeue-all?queue=dlq:detection_queue"))
        .header("authorization", "Bearer worker-s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 403);
}
