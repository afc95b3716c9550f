//! Storage stats against real temp dirs (checked against `df`), the disk
//! alert, and the cleanup preview, which must delete nothing.

use std::process::Command;
use std::time::{Duration, SystemTime};

use crate::common::{eventually, sample_value, Daemon};
use axum::body::Body;
use axum::http::Request;
use chrono::Utc;
use http_body_util::BodyExt;
use inferwatch::config::Config;
use inferwatch::history::GpuSample;
use serde_json::Value;
use tower::ServiceExt;

/// `df -B1` for `path`: (size, used, avail).
fn df(path: &std::path::Path) -> (u64, u64, u64) {
    let out = Command::new("df")
        .args(["-B1", "--output=size,used,avail"])
        .arg(path)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let nums: Vec<u64> = text
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    (nums[0], nums[1], nums[2])
}

#[tokio::test]
async fn storage_stats_match_df_and_the_disk_alert_fires_once() {
    let extra = tempfile::tempdir().unwrap();
    let (size, used, avail) = df(extra.path());
    let used_percent = used as f64 / (used + avail) as f64 * 100.0;
    assert!(used_percent > 2.0, "the test needs a filesystem more than 2 % used");
    // A threshold just below the current use, so the alert must fire.
    let threshold = (used_percent - 1.0).floor();
    let config = format!(
        "gpu:\n  enabled: false\nqueues:\n  enabled: false\nstorage:\n  poll_interval: 1s\n  alert_used_percent: {threshold}\n  paths: ['{}']\n",
        extra.path().display()
    );
    let d = Daemon::start_with_args(&config, &[], &["--log.format=json"]).await;
    let body: Value = reqwest::get(d.url("/api/system/storage/stats"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let fs = body["filesystems"].as_array().unwrap();
    assert_eq!(fs.len(), 2, "data_dir and the extra path: {body}");
    // Served from the collector's last round, which says how old it is.
    assert!(body["recorded_at"].is_string(), "{body}");
    assert!(body["age_seconds"].as_f64().is_some_and(|a| a >= 0.0), "{body}");
    let mine = &fs[1];
    assert_eq!(mine["path"], extra.path().display().to_string());
    assert_eq!(mine["total_bytes"].as_u64(), Some(size));
    let near = |a: u64, b: u64| (a as f64 - b as f64).abs() <= 0.01 * b as f64 + 1e6;
    assert!(
        near(mine["used_bytes"].as_u64().unwrap(), used),
        "{mine} vs df used {used}"
    );
    assert!(
        near(mine["available_bytes"].as_u64().unwrap(), avail),
        "{mine} vs df avail {avail}"
    );
    assert!((mine["used_percent"].as_f64().unwrap() - used_percent).abs() < 1.0);
    assert!(mine["free_bytes"].as_u64().unwrap() >= mine["available_bytes"].as_u64().unwrap());

    let page = d.get_text("/metrics").await;
    let series = format!("storage_filesystem_size_bytes{{path=\"{}\"}}", extra.path().display());
    assert_eq!(sample_value(&page, &series), Some(size as f64));
    assert!(sample_value(
        &page,
        &format!("storage_filesystem_avail_bytes{{path=\"{}\"}}", extra.path().display())
    )
    .is_some());

    // Two paths above the threshold: one CRITICAL each, not one per poll.
    let before = d.get_text("/metrics").await;
    eventually("a few more polls", Duration::from_secs(10), || async {
        let now = sample_value(
            &d.get_text("/metrics").await,
            "inferwatch_collector_last_success_timestamp_seconds{collector=\"storage\"}",
        )?;
        let then = sample_value(
            &before,
            "inferwatch_collector_last_success_timestamp_seconds{collector=\"storage\"}",
        )?;
        (now >= then + 2.0).then_some(())
    })
    .await;
    let alerts: Vec<Value> = d
        .log()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["fields"]["condition"] == "disk_usage_high")
        .collect();
    assert_eq!(alerts.len(), 2, "one per path and crossing");
    assert_eq!(alerts[0]["fields"]["severity"], "CRITICAL");
    assert_eq!(alerts[0]["level"], "ERROR");
}

#[tokio::test]
async fn cleanup_preview_reports_what_retention_would_delete_and_deletes_nothing() {
    let data = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    std::fs::create_dir(files.path().join("sub")).unwrap();
    let ten_days_ago = SystemTime::now() - Duration::from_secs(10 * 86_400);
    let mut old_bytes = 0;
    for (name, len, old) in [
        ("a.glb", 1000, true),
        ("sub/b.png", 2500, true),
        ("sub/c.png", 7, true),
        ("new.glb", 4000, false),
        ("sub/new.png", 300, false),
    ] {
        let path = files.path().join(name);
        std::fs::write(&path, vec![0u8; len]).unwrap();
        if old {
            std::fs::File::options()
                .write(true)
                .open(&path)
                .unwrap()
                .set_modified(ten_days_ago)
                .unwrap();
            old_bytes += len as u64;
        }
    }
    let yaml = format!(
        "data_dir: {}\nstore:\n  retention_days: 7\nstorage:\n  retention:\n    - path: {}\n      days: 7\n    - path: {}/missing\n      days: 1\n",
        data.path().display(),
        files.path().display(),
        files.path().display()
    );
    let config = Config::from_yaml(&yaml).unwrap();
    config.validate().unwrap();
    let state = inferwatch::build_state(config).unwrap();
    let store = state.store.clone().unwrap();
    let oldest = sample(9, 0).recorded_at;
    store.push((0..5).map(|i| sample(9, i)).chain((0..3).map(|i| sample(1, i))));
    assert_eq!(store.flush().await.unwrap(), 8);

    let resp = inferwatch::api::router(state.clone())
        .oneshot(Request::get("/api/system/cleanup/preview").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["dry_run"], true);
    assert_eq!(body["gpu_history"]["rows"], 5);
    assert_eq!(body["gpu_history"]["retention_days"], 7);
    assert_eq!(
        body["gpu_history"]["oldest"],
        inferwatch::history::format_time(&oldest),
        "{body}"
    );
    assert_eq!(body["files"][0]["files"], 3);
    assert_eq!(body["files"][0]["bytes"], old_bytes);
    assert!(body["files"][0]["error"].is_null());
    assert_eq!(body["files"][1]["files"], 0);
    assert!(
        body["files"][1]["error"].as_str().unwrap().contains("missing"),
        "{body}"
    );

    // Nothing was deleted.
    for name in ["a.glb", "sub/b.png", "sub/c.png", "new.glb", "sub/new.png"] {
        assert!(files.path().join(name).exists(), "{name} still there");
    }
    assert_eq!(
        store
            .history(0, oldest - chrono::Duration::seconds(1))
            .await
            .unwrap()
            .len(),
        8
    );

    // Within storage.poll_interval (30 s) the preview is served from its
    // cache: two more old rows do not show until it expires.
    store.push((10..12).map(|i| sample(9, i)));
    assert_eq!(store.flush().await.unwrap(), 2);
    let again = preview(&state).await;
    assert_eq!(again["gpu_history"]["rows"], 5);
    assert_eq!(again["timestamp"], body["timestamp"], "the same computation");

    // The history part uses the recorded_at_ms index, not a table scan.
    let db = data.path().join("inferwatch.db");
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let plan: Vec<(i64, i64, i64, String)> = sqlx::query_as(
        "EXPLAIN QUERY PLAN SELECT COUNT(*), MIN(recorded_at_ms) FROM gpu_samples WHERE recorded_at_ms < 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let plan: Vec<&str> = plan.iter().map(|r| r.3.as_str()).collect();
    assert!(plan.iter().any(|d| d.contains("gpu_samples_recorded_at")), "{plan:?}");
}

/// A sample of GPU 0 taken `days_ago` days (plus `i` seconds) ago.
/// A sample `days_ago` days (plus `i` seconds) before one fixed instant,
/// so two calls with the same arguments give the same time.
fn sample(days_ago: i64, i: i64) -> GpuSample {
    static BASE: std::sync::OnceLock<chrono::DateTime<Utc>> = std::sync::OnceLock::new();
    let base = *BASE.get_or_init(Utc::now);
    GpuSample {
        gpu: Some(0),
        uuid: Some("GPU-x".into()),
        gpu_name: "Fake".into(),
        gpu_utilization: Some(50.0),
        memory_used: None,
        memory_total: None,
        temperature: None,
        power_usage: None,
        inference_fps: None,
        recorded_at: base - chrono::Duration::days(days_ago) + chrono::Duration::seconds(i),
    }
}

async fn preview(state: &inferwatch::api::AppState) -> Value {
    let resp = inferwatch::api::router(state.clone())
        .oneshot(Request::get("/api/system/cleanup/preview").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap()
}

#[tokio::test]
async fn the_cleanup_preview_cache_expires_after_the_poll_interval() {
    let data = tempfile::tempdir().unwrap();
    let yaml = format!(
        "data_dir: {}\nstore:\n  retention_days: 1\nstorage:\n  poll_interval: 1s\n",
        data.path().display()
    );
    let config = Config::from_yaml(&yaml).unwrap();
    config.validate().unwrap();
    let state = inferwatch::build_state(config).unwrap();
    let store = state.store.clone().unwrap();
    let first = preview(&state).await;
    assert_eq!(first["gpu_history"]["rows"], 0);
    store.push([sample(3, 0)]);
    assert_eq!(store.flush().await.unwrap(), 1);
    eventually("the preview to be computed afresh", Duration::from_secs(30), || {
        let state = state.clone();
        async move { (preview(&state).await["gpu_history"]["rows"] == 1).then_some(()) }
    })
    .await;
}
