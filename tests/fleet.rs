//! The fleet bundle with real processes on 127.0.0.1: several daemons on
//! the fake NVML (the H100 profile, 8 GPUs each), a real Prometheus that
//! finds them through `file_sd`, evaluates `monitoring/recording_rules.yml`
//! and remote-writes to a real VictoriaMetrics (Debian's
//! `victoria-metrics`), whose Prometheus API must then answer for the raw
//! fleet series and for every recording rule, one series per instance.
//!
//! (The 50-node run, the clustered Alertmanagers and the Fleet dashboard of
//! issue 16 are not built yet.)

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{eventually, gpus_state, repo, Daemon, Driver, FakeGpus, Prometheus, Redis, VictoriaMetrics};

const NODES: usize = 3;
const LIMIT: Duration = Duration::from_secs(120);

/// Every `record:` name of the recording rules.
fn recorded() -> Vec<String> {
    let text = std::fs::read_to_string(repo().join("monitoring/recording_rules.yml")).unwrap();
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
    let mut out = Vec::new();
    for g in doc["groups"].as_sequence().unwrap() {
        for r in g["rules"].as_sequence().unwrap() {
            out.push(r["record"].as_str().unwrap().to_string());
        }
    }
    out
}

/// The file_sd content: node i in cluster "a" (even) or "b" (odd).
fn targets(daemons: &[&Daemon]) -> String {
    let mut s = String::new();
    for (i, d) in daemons.iter().enumerate() {
        let cluster = if i % 2 == 0 { "a" } else { "b" };
        s += &format!(
            "- targets: ['127.0.0.1:{}']\n  labels: {{cluster: {cluster}}}\n",
            d.port
        );
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_remote_writes_fleet_and_recording_series_to_victoriametrics() {
    let fake = FakeGpus::with_profile(Driver::Current, &gpus_state(8), "h100-sxm-580");
    // The nodes share one Redis; each reports its depths.
    let redis = Redis::start().await;
    redis.lpush("dlq:detection_queue", &[common::DLQ_ENTRY]).await;
    let config = format!(
        "gpu:\n  nvml_library: {}\n  poll_interval: 1s\nqueues:\n  redis_url: {}\n  poll_interval: 1s\n\
         health:\n  services:\n    - {{name: down, kind: http, url: \"http://127.0.0.1:9/health\", interval: 1s, timeout: 200ms}}\n",
        fake.lib_str(),
        redis.url()
    );
    let mut daemons = Vec::new();
    for _ in 0..NODES + 1 {
        daemons.push(Daemon::start(&config, &[]).await);
    }
    let vm = VictoriaMetrics::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        repo().join("monitoring/recording_rules.yml"),
        dir.path().join("recording_rules.yml"),
    )
    .unwrap();
    let first: Vec<&Daemon> = daemons.iter().take(NODES).collect();
    std::fs::write(dir.path().join("targets.yml"), targets(&first)).unwrap();
    let prom_config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n  external_labels: {{monitor: fleet-test}}\n\
         rule_files: [recording_rules.yml]\n\
         remote_write:\n  - url: {}\n    queue_config: {{batch_send_deadline: 1s}}\n\
         scrape_configs:\n  - job_name: inferwatch-fleet\n    sample_limit: 20000\n    label_limit: 16\n\
         \x20   file_sd_configs:\n      - files: [{}]\n        refresh_interval: 1s\n\
         \x20   relabel_configs:\n      - {{target_label: job, replacement: inferwatch}}\n",
        vm.write_url(),
        dir.path().join("targets.yml").display()
    );
    let prom = Prometheus::start_with_config(dir, &prom_config).await;

    // Every node is up, in Prometheus and through remote_write in VM.
    eventually("all nodes up in Prometheus", LIMIT, || async {
        let r = prom.query("count(up{job=\"inferwatch\"} == 1)").await;
        (r.first().map(|s| s["value"][1].clone()) == Some(NODES.to_string().into())).then_some(())
    })
    .await;
    eventually("8 GPUs per node in VictoriaMetrics", LIMIT, || async {
        let r = vm
            .query("count by (instance) (gpu_temperature_celsius{monitor=\"fleet-test\"})")
            .await;
        (r.len() == NODES && r.iter().all(|s| s["value"][1] == "8")).then_some(())
    })
    .await;
    // Every recording rule arrives: one series per instance for instance:*,
    // one per cluster (a and b) for cluster:*.
    for name in recorded() {
        let want = if name.starts_with("instance:") { NODES } else { 2 };
        let label = if name.starts_with("instance:") {
            "instance"
        } else {
            "cluster"
        };
        let got = eventually(&format!("{name} in VictoriaMetrics"), LIMIT, || async {
            let r = vm.query(&name).await;
            (r.len() == want).then_some(r)
        })
        .await;
        let keys: BTreeSet<String> = got
            .iter()
            .map(|s| s["metric"][label].as_str().unwrap_or("").to_string())
            .collect();
        assert_eq!(keys.len(), want, "{name}: one series per {label}: {got:?}");
    }
    // The values are the fleet's: the one service each node checks is down.
    let down = vm.query("sum(instance:service_down:count)").await;
    assert_eq!(down[0]["value"][1], NODES.to_string(), "{down:?}");
    let dlq = vm.query("sum(cluster:dlq_depth:sum)").await;
    assert_eq!(
        dlq[0]["value"][1],
        NODES.to_string(),
        "one DLQ job seen by each node: {dlq:?}"
    );

    // A node added to the file_sd file is scraped without a restart.
    let all: Vec<&Daemon> = daemons.iter().collect();
    std::fs::write(prom.dir.path().join("targets.yml"), targets(&all)).unwrap();
    eventually("the added node in VictoriaMetrics", LIMIT, || async {
        let r = vm.query("count(instance:gpu_temperature_celsius:max)").await;
        (r.first().map(|s| s["value"][1].clone()) == Some((NODES + 1).to_string().into())).then_some(())
    })
    .await;
}
