//! The Grafana dashboards: their structure (datasource variable, fixed uid,
//! no `__inputs`, units, descriptions, `$__rate_interval`, targets on every
//! panel), and every variable and panel query run through a real Prometheus
//! that scraped the real daemon. A panel that queries a metric the daemon
//! does not expose returns nothing and fails the test.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::common::dashboards::{
    dashboards, every_query_returns_data, panels, regex_value, resolve_variables, variables, DATASOURCE_UID,
};
use crate::common::{
    eventually, gpus_state, repo, run_tool, Daemon, Driver, FakeGpus, HealthTarget, Prometheus, Redis, WsClient,
};
use serde_json::Value;

/// Every `[...]` range in a query must be `$__rate_interval` (or a
/// subquery/offset that the dashboard does not use).
fn ranges(expr: &str) -> Vec<&str> {
    expr.split('[').skip(1).map(|s| s.split(']').next().unwrap()).collect()
}

#[test]
fn dashboards_follow_the_house_rules() {
    let all = dashboards();
    assert!(all.len() >= 4, "{} dashboards", all.len());
    let titles: Vec<&str> = all.iter().map(|(_, d)| d["title"].as_str().unwrap()).collect();
    for want in [
        "Overview",
        "GPU",
        "GPU efficiency",
        "Services & DLQ",
        "Pipeline, WebSocket & HTTP",
        "Fleet",
    ] {
        assert!(
            titles.iter().any(|t| t.ends_with(want)),
            "no {want} dashboard in {titles:?}"
        );
    }
    // Every dashboard can be narrowed to a cluster (all by default), and
    // the Fleet dashboard has its fixed uid.
    for (file, d) in &all {
        let cluster = variables(d).into_iter().find(|v| v["name"] == "cluster");
        let cluster = cluster.unwrap_or_else(|| panic!("{file}: no cluster variable"));
        assert_eq!(cluster["current"]["value"], "$__all", "{file}");
        assert_eq!(cluster["allValue"], ".*", "{file}");
    }
    assert!(all.iter().any(|(_, d)| d["uid"] == "inferwatch-fleet"));
    let mut uids = std::collections::BTreeSet::new();
    for (file, d) in &all {
        let uid = d["uid"].as_str().unwrap_or("");
        assert!(!uid.is_empty() && uid.len() <= 40, "{file}: fixed uid");
        assert!(uids.insert(uid.to_string()), "{file}: duplicate uid {uid}");
        let vars = variables(d);
        let ds = vars
            .iter()
            .find(|v| v["type"] == "datasource")
            .expect("datasource variable");
        assert_eq!(ds["query"], "prometheus");
        assert_eq!(
            ds["current"]["value"], DATASOURCE_UID,
            "{file}: defaults to the provisioned uid"
        );
        let ds_name = format!("${{{}}}", ds["name"].as_str().unwrap());
        let names: Vec<&str> = vars.iter().map(|v| v["name"].as_str().unwrap()).collect();
        assert!(
            names.contains(&"job") && names.contains(&"instance"),
            "{file}: {names:?}"
        );
        if d["title"].as_str().unwrap().contains("GPU") {
            assert!(names.contains(&"gpu"), "{file}: gpu variable");
        }
        for v in vars.iter().filter(|v| v["type"] == "query") {
            assert_eq!(
                v["datasource"]["uid"],
                ds_name.as_str(),
                "{file}: variable {}",
                v["name"]
            );
        }
        for p in panels(d) {
            let title = p["title"].as_str().unwrap();
            assert!(
                !p["description"].as_str().unwrap_or("").is_empty(),
                "{file}: {title} has no description"
            );
            assert!(
                !p["fieldConfig"]["defaults"]["unit"].as_str().unwrap_or("").is_empty(),
                "{file}: {title} has no unit"
            );
            assert_eq!(p["datasource"]["uid"], ds_name.as_str(), "{file}: {title}");
            let targets = p["targets"].as_array().filter(|t| !t.is_empty());
            let targets = targets.unwrap_or_else(|| panic!("{file}: {title} has no targets"));
            for t in targets {
                let expr = t["expr"].as_str().unwrap_or("");
                assert!(!expr.is_empty(), "{file}: {title} target without expr");
                for r in ranges(expr) {
                    assert_eq!(r, "$__rate_interval", "{file}: {title}: range [{r}] in {expr}");
                }
                if expr.contains("rate(") || expr.contains("increase(") {
                    assert!(expr.contains("[$__rate_interval]"), "{file}: {title}: {expr}");
                }
            }
        }
    }
}

#[test]
fn the_gpu_dashboards_link_to_each_other_and_overview_shows_real_utilisation() {
    let all: BTreeMap<String, Value> = dashboards()
        .into_iter()
        .map(|(_, d)| (d["uid"].as_str().unwrap().to_string(), d))
        .collect();
    let links_to = |from: &str, to: &str| {
        all[from]["links"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["type"] == "link" && l["url"] == format!("/d/{to}").as_str() && l["includeVars"] == true)
    };
    assert!(links_to("inferwatch-gpu", "inferwatch-gpu-efficiency"));
    assert!(links_to("inferwatch-gpu-efficiency", "inferwatch-gpu"));
    let real = panels(&all["inferwatch-overview"])
        .into_iter()
        .find(|p| p["title"] == "Real utilisation")
        .expect("a Real utilisation stat on the Overview");
    assert_eq!(real["type"], "stat");
    assert!(real["targets"][0]["expr"]
        .as_str()
        .unwrap()
        .starts_with("avg(gpu_sm_active_ratio{"));
    let efficiency: Vec<String> = panels(&all["inferwatch-gpu-efficiency"])
        .into_iter()
        .map(|p| p["title"].as_str().unwrap().to_string())
        .collect();
    for want in [
        "SM active vs occupancy",
        "Tensor active",
        "DRAM active",
        "Pipe mix",
        "PCIe / NVLink throughput",
        "SM use per process",
        "Throttle time per reason",
        "Memory temperature against its limit",
        "Remapped rows",
    ] {
        assert!(
            efficiency.iter().any(|t| t == want),
            "no {want} panel in {efficiency:?}"
        );
    }
}

#[test]
fn committed_dashboards_match_their_generator() {
    let (ok, out) = run_tool("python3", &["scripts/gen_dashboards.py", "--check"]);
    assert!(ok, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_panel_query_returns_data_from_the_real_daemon() {
    // Two H100s (the measured driver profile: GPM, no NVLink), one with an
    // XID, one compute process with a utilization sample, GPU 0 held at its
    // power cap (clock-event time grows).
    let fake = FakeGpus::with_profile(
        Driver::Current,
        &format!(
            "{}1.xid 79\n0.procs 4242:1073741824:python3\n0.proc_util 4242:96:25\n",
            gpus_state(2)
        ),
        "h100-sxm-580",
    );
    // Jobs waiting and failed jobs in DLQs.
    let redis = Redis::start().await;
    redis
        .lpush(
            "dlq:detection_queue",
            &[crate::common::DLQ_ENTRY, crate::common::DLQ_ENTRY],
        )
        .await;
    redis
        .lpush(
            "detection_queue",
            &["{\"id\":\"a\"}", "{\"id\":\"b\"}", "{\"id\":\"c\"}"],
        )
        .await;
    // One service up, one down.
    let mut up = HealthTarget::new();
    up.start().await;
    let down_port = crate::common::free_port();
    let config = format!(
        "gpu:\n  nvml_library: {}\n  poll_interval: 1s\n  per_process: true\n\
         queues:\n  redis_url: {}\n  poll_interval: 1s\n  processing_suffix: \":processing\"\n\
         storage:\n  poll_interval: 1s\n\
         health:\n  services:\n\
         \x20   - {{name: rtdetr, kind: http, url: \"{}\", interval: 1s, progress: {{metrics_url: \"{}\", preset: vllm}}}}\n\
         \x20   - {{name: nemotron, kind: http, url: \"http://127.0.0.1:{down_port}/health\", interval: 1s, timeout: 500ms}}\n\
         \x20   - {{name: triton, kind: open_inference, url: \"http://127.0.0.1:{down_port}\", models: [resnet], interval: 1s, timeout: 500ms}}\n",
        fake.lib_str(),
        redis.url(),
        up.url(),
        up.metrics_url(),
    );
    // A kernel log to read (empty: XIDs come from NVML's event here).
    let kmsg = tempfile::NamedTempFile::new().unwrap();
    let kmsg_path = kmsg.path().display().to_string();
    let daemon = Daemon::start(&config, &[("GPU_KERNEL_LOG", kmsg_path.as_str())]).await;
    let _ws = WsClient::connect(&format!("ws://127.0.0.1:{}/ws/system", daemon.port)).await;
    // A second box: a fan-cooled workstation card (no GPM, one fan), so the
    // panels for what an H100 does not have (fans) have data too.
    let workstation = FakeGpus::with_profile(Driver::Current, &gpus_state(1), "rtx-a5500-580");
    let second = Daemon::start(
        &format!(
            "gpu:\n  nvml_library: {}\n  poll_interval: 1s\nqueues:\n  enabled: false\n",
            workstation.lib_str()
        ),
        &[],
    )
    .await;

    // Pipeline events keep arriving while Prometheus scrapes.
    let events_url = daemon.url("/api/pipeline/events");
    let sender = tokio::spawn(async move {
        let client = reqwest::Client::new();
        let batch = serde_json::json!([
            {"kind": "stage", "stage": "detection", "duration_seconds": 0.04, "status": "ok", "items": 4},
            {"kind": "stage", "stage": "analysis", "duration_seconds": 2.5, "status": "error", "error_type": "timeout"},
            {"kind": "job", "status": "completed", "duration_seconds": 42.0},
        ]);
        loop {
            let r = client.post(&events_url).json(&batch).send().await.unwrap();
            assert!(r.status().is_success(), "{}", r.status());
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });

    // A real Prometheus with the real rules (for the ALERTS panels) and the
    // fleet recording rules, the two nodes in clusters a and b.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(repo().join("alert_rules.yml"), dir.path().join("alert_rules.yml")).unwrap();
    std::fs::copy(
        repo().join("monitoring/recording_rules.yml"),
        dir.path().join("recording_rules.yml"),
    )
    .unwrap();
    let prom_config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [alert_rules.yml, recording_rules.yml]\n\
         scrape_configs:\n  - job_name: inferwatch\n    static_configs:\n\
         \x20     - {{targets: ['127.0.0.1:{}'], labels: {{cluster: a}}}}\n\
         \x20     - {{targets: ['127.0.0.1:{}'], labels: {{cluster: b}}}}\n",
        daemon.port, second.port
    );
    let prom = Prometheus::start_with_config(dir, &prom_config).await;
    eventually("10 s of scrapes", Duration::from_secs(90), || {
        let prom = &prom;
        async move {
            let r = prom
                .query("count(count_over_time(up{job=\"inferwatch\"}[10s]) >= 8) == 2")
                .await;
            (!r.is_empty()).then_some(())
        }
    })
    .await;

    let mut queried = 0;
    // The Inference dashboard needs real inference servers behind the
    // daemon: tests/it/inference_servers.rs runs every one of its queries.
    for (file, d) in dashboards()
        .into_iter()
        .filter(|(f, _)| !f.ends_with("inferwatch-inference.json"))
    {
        let vars = resolve_variables(&prom, &file, &d).await;
        assert_eq!(vars["job"], "inferwatch");
        let mut instances = vec![
            format!("127.0.0.1:{}", daemon.port),
            format!("127.0.0.1:{}", second.port),
        ];
        instances.sort();
        assert_eq!(vars["instance"], regex_value(&instances));
        assert_eq!(vars["cluster"], regex_value(&["a".to_string(), "b".to_string()]));
        queried += every_query_returns_data(&prom, &file, &d, &vars).await;
    }
    sender.abort();
    assert!(queried >= 50, "only {queried} queries");
}
