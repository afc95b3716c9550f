//! Golden `/metrics`: renders the page from a known fake-NVML state, drops
//! the volatile lines, and diffs the rest against `tests/golden/metrics.txt`.
//! `promtool check metrics` must be clean on the whole page.
//! `UPDATE_GOLDEN=1 cargo nextest run --test it -E 'test(/^golden::/)'` rewrites the file.

use std::path::Path;

use crate::common::{gpus_state, promtool_check_metrics, Driver, FakeGpus};
use axum::body::Body;
use axum::http::Request;
use http_body_util::BodyExt;
use inferwatch::collectors::collect_rounds;
use inferwatch::config::Config;
use tower::ServiceExt;

/// Series whose values change from run to run.
const VOLATILE: &[&str] = &[
    "process_",
    "inferwatch_collector_duration_seconds{",
    "inferwatch_collector_last_success_timestamp_seconds{",
    "dlq_oldest_job_age_seconds{",
    // A plain job's wait counts from when the first round saw it.
    "job_queue_oldest_age_seconds{",
    "storage_filesystem_",
    "http_request_duration_seconds_bucket{",
    "http_request_duration_seconds_sum{",
    "inferwatch_proxy_scrape_duration_seconds_bucket{",
    "inferwatch_proxy_scrape_duration_seconds_sum{",
    // Time spent inside the (fake) driver: the counts stay, the seconds vary.
    "inferwatch_nvml_call_duration_seconds_total{",
    "inferwatch_gpu_attribution_duration_seconds",
    // The revision and build date change with every commit (tests/it/e2e.rs
    // checks them against --version).
    "inferwatch_build_info{",
    // Wall-clock times of the XIDs (their labels are checked in tests/it/gpu.rs).
    "gpu_xid_last_seen_timestamp_seconds{",
    // When the daemon loaded its config (tests/it/reload.rs checks it moves).
    "inferwatch_config_last_reload_success_timestamp_seconds ",
];

fn stable(page: &str) -> String {
    page.lines()
        .filter(|l| {
            let name = l
                .strip_prefix("# HELP ")
                .or_else(|| l.strip_prefix("# TYPE "))
                .unwrap_or(l);
            // An entry ending in `{` or a space names sample lines only; the
            // family's HELP and TYPE stay.
            !VOLATILE.iter().any(|v| match v.ends_with(['{', ' ']) {
                true => l.starts_with(v),
                false => name.starts_with(v),
            })
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

#[tokio::test]
async fn metrics_page_matches_golden_file() {
    let state_text = format!(
        // No clock-event reason active (their counters grow with time), one
        // process with a utilization sample, and NVLink on GPU 1 only.
        "{}1.xid 79\n0.procs 4242:1073741824:python3\n0.proc_util 4242:96:25\n1.procs 5151:536870912:tritonserver\n1.unsupported fan\n\
         0.throttle 0x1\n1.throttle 0x0\n1.nvlinks 18\n1.gpm nvlink_tx:1024,nvlink_rx:2048\n",
        gpus_state(2)
    );
    let fake = FakeGpus::new(Driver::Current, &state_text);
    let data = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.gpu.nvml_library = fake.lib_str();
    // A kernel log with GPU 1's XID 79 (also an NVML event above: counted
    // once), an XID 13 from a bus no GPU has, and an NVSwitch SXid.
    let kmsg = data.path().join("kmsg");
    std::fs::write(
        &kmsg,
        "6,1,100,-;NVRM: loading NVIDIA UNIX x86_64 Kernel Module\n\
         3,2,200,-;NVRM: Xid (PCI:0000:01:00): 79, pid='<unknown>', name=<unknown>, GPU has fallen off the bus.\n \
         SUBSYSTEM=pci\n\
         3,3,300,-;NVRM: Xid (PCI:0000:3b:00): 13, pid=1234, name=python3, Graphics Exception\n\
         4,4,400,-;nvidia-nvswitch0: SXid (PCI:0000:05:00.0): 12028, Non-fatal, Link 32 egress non-posted PRIV error\n",
    )
    .unwrap();
    config.gpu.kernel_log = kmsg.display().to_string();
    config.gpu.per_process = true;
    config.data_dir = data.path().to_owned();
    // A /proc of its own, so the owners do not depend on this machine's
    // pids: 4242 in the unit rtdetr.service (matched by the service below),
    // 5151 in a Docker container no service names (no Docker socket).
    let proc_root = data.path().join("proc");
    std::fs::create_dir_all(proc_root.join("self")).unwrap();
    for (pid, cgroup) in [
        (4242, "0::/system.slice/rtdetr.service\n".to_string()),
        (
            5151,
            format!("0::/system.slice/docker-{}.scope\n", "c0ffee".repeat(10) + "c0ff"),
        ),
    ] {
        let dir = proc_root.join(pid.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("stat"), format!("{pid} (p) S 1 {}\n", "0 ".repeat(17) + "777")).unwrap();
        std::fs::write(dir.join("cgroup"), cgroup).unwrap();
    }
    config.attribution.proc_root = proc_root;
    config.attribution.docker_socket = Some(std::path::PathBuf::new());
    // Two services, never checked here: every service_* series at its
    // start, and an Open Inference server's model and stall series.
    config.health = Config::from_yaml(
        "health:\n  services:\n    - {name: rtdetr, kind: http, url: \"http://127.0.0.1:9/health\", match: {unit: rtdetr.service}}\n    - {name: triton, kind: open_inference, url: \"http://127.0.0.1:9\", models: [resnet], start_period: 5m, progress: {metrics_url: \"http://127.0.0.1:9/metrics\", preset: triton}}\n",
    )
    .unwrap()
    .health;
    // A real Redis with two failed jobs and one waiting job.
    let redis = crate::common::Redis::start().await;
    config.queues.redis_url = redis.url();
    // Workers' processing lists are watched: one job in flight.
    config.queues.processing_suffix = Some(":processing".into());
    redis.lpush("detection_queue:processing", &["{\"id\":\"j1\"}"]).await;
    redis
        .lpush(
            "dlq:detection_queue",
            &[crate::common::DLQ_ENTRY, crate::common::DLQ_ENTRY],
        )
        .await;
    redis.lpush("detection_queue", &["{\"id\":\"j2\"}"]).await;
    // One reading of every collector, through the registry the daemon uses:
    // GPUs from the fake driver, the queues above, the data directory, and
    // the (empty) pipeline stream of the same Redis. Health checks nothing.
    let state = inferwatch::build_state(config).unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    // Two rounds: GPM metrics come from two samples.
    let failed = collect_rounds(&inferwatch::shared(&state, stop), 2).await.unwrap();
    assert!(failed.is_empty(), "every collector's round succeeds: {failed:?}");
    // Known pipeline events: two stages, an error, a job.
    let events = [
        r#"{"kind":"stage","stage":"detection","duration_seconds":0.042,"status":"ok","items":1}"#,
        r#"{"kind":"stage","stage":"analysis","duration_seconds":2.5,"status":"error","error_type":"timeout"}"#,
        r#"{"kind":"job","status":"completed","duration_seconds":93.5}"#,
        r#"{"kind":"bogus"}"#,
    ];
    let report = state.pipeline.ingest(inferwatch::pipeline::Source::Http, events);
    assert_eq!((report.accepted, report.rejected), (3, 1));

    // Known API traffic: a matched route, a templated route and a miss.
    let app = inferwatch::api::router(state);
    // A proxied scrape of a server that is not there (502, unreachable).
    for path in [
        "/api/system/gpus",
        "/api/dlq/jobs/nope",
        "/no/such/path",
        "/proxy/triton/metrics",
    ] {
        app.clone()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
    }
    let resp = app
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let page = String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();

    // promtool's linter must find nothing at all on the page.
    if let Err(report) = promtool_check_metrics(&page) {
        panic!("promtool check metrics:\n{report}");
    }

    let golden_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/metrics.txt");
    let got = stable(&page);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(golden_path.parent().unwrap()).unwrap();
        std::fs::write(&golden_path, &got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&golden_path).expect("golden file missing: run with UPDATE_GOLDEN=1");
    if got != want {
        let diff: Vec<String> = want
            .lines()
            .filter(|l| !got.lines().any(|g| g == *l))
            .map(|l| format!("- {l}"))
            .chain(
                got.lines()
                    .filter(|l| !want.lines().any(|w| w == *l))
                    .map(|l| format!("+ {l}")),
            )
            .collect();
        panic!("/metrics differs from {}:\n{}", golden_path.display(), diff.join("\n"));
    }
}

/// Every family on the golden page is in the README's metrics table (the
/// `process_*` families as one row), and every GPU field row says its class.
#[test]
fn readme_metrics_table_covers_the_golden_page() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("docs/metrics.md")).unwrap();
    let golden = std::fs::read_to_string(root.join("tests/golden/metrics.txt")).unwrap();
    let rows: Vec<&str> = readme.lines().filter(|l| l.starts_with("| `")).collect();
    let row = |name: &str| rows.iter().find(|r| r.starts_with(&format!("| `{name}` |"))).copied();
    let mut missing = Vec::new();
    for name in golden
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
    {
        if name.starts_with("process_") {
            continue;
        }
        match row(name) {
            None => missing.push(name.to_string()),
            Some(r) if name.starts_with("gpu_") && name != "gpu_available" => {
                let class = r.split('|').nth(4).unwrap_or("");
                assert!(
                    ["static", "fast", "slow", "events"].iter().any(|c| class.contains(c)),
                    "{name} has no cadence class in docs/metrics.md: {r}"
                );
            }
            Some(_) => {}
        }
    }
    assert!(
        missing.is_empty(),
        "families missing from the metrics table in docs/metrics.md: {missing:?}"
    );
}
