//! `examples/emit_events.py` against the real daemon: its HTTP batch and
//! its stream entries are both counted.

use std::process::Command;
use std::time::Duration;

use crate::common::{eventually, sample_value, Daemon, Redis};

#[tokio::test]
async fn emit_events_example_reaches_the_daemon_both_ways() {
    let redis = Redis::start().await;
    let config = format!("gpu:\n  enabled: false\nqueues:\n  redis_url: {}\n", redis.url());
    let d = Daemon::start(&config, &[]).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/emit_events.py");
    for args in [["--url", &d.url("")], ["--redis", &redis.url()]] {
        let out = Command::new(crate::common::python())
            .arg(script)
            .args(args)
            .args(["--jobs", "3"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    // 3 jobs x (2 stages + 1 job event) + 1 failed stage + 1 failed job.
    let page = eventually("both inputs counted", Duration::from_secs(30), || async {
        let page = d.get_text("/metrics").await;
        (sample_value(&page, "pipeline_events_total{source=\"redis_stream\"}") == Some(11.0)).then_some(page)
    })
    .await;
    assert_eq!(
        sample_value(&page, "pipeline_events_total{source=\"http\"}"),
        Some(11.0)
    );
    assert_eq!(
        sample_value(&page, "pipeline_jobs_total{status=\"completed\"}"),
        Some(6.0)
    );
    assert_eq!(sample_value(&page, "pipeline_jobs_total{status=\"failed\"}"), Some(2.0));
    assert_eq!(
        sample_value(
            &page,
            "pipeline_stage_errors_total{error_type=\"timeout\",stage=\"analysis\"}"
        ),
        Some(2.0)
    );
    assert_eq!(sample_value(&page, "pipeline_items_processed_total"), Some(12.0));
    assert_eq!(
        sample_value(&page, "pipeline_events_rejected_total{reason=\"invalid_event\"}"),
        Some(0.0)
    );
}
