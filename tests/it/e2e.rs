//! The real binary end to end: fake NVML, a real Prometheus scraping it,
//! and SIGTERM flushing pending history into SQLite.

use std::time::Duration;

use crate::common::{eventually, gpu_lines, gpus_state, sample_value, Daemon, Driver, FakeGpus, Prometheus, SIGTERM};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_real_binary() {
    let fake = FakeGpus::new(Driver::Current, &gpus_state(1));
    let config = format!("gpu:\n  nvml_library: {}\n  poll_interval: 1s\n", fake.lib_str());
    let daemon = Daemon::start(&config, &[]).await;
    let prom = Prometheus::start("inferwatch", &format!("127.0.0.1:{}", daemon.port)).await;

    let up = eventually("Prometheus to scrape inferwatch", Duration::from_secs(60), || {
        let prom = &prom;
        async move {
            let r = prom.query("up{job=\"inferwatch\"}").await;
            r.first().filter(|s| s["value"][1] == "1").cloned()
        }
    })
    .await;
    assert_eq!(up["metric"]["job"], "inferwatch");

    let temps = prom.query("gpu_temperature_celsius").await;
    assert_eq!(temps.len(), 1, "one GPU series: {temps:?}");
    assert_eq!(temps[0]["metric"]["uuid"], "GPU-00000000-1111-2222-3333-444444444444");
    assert_eq!(temps[0]["metric"]["gpu"], "0");
    assert_eq!(temps[0]["value"][1], "60");
    let info = prom
        .query("gpu_info * on(gpu, uuid) group_left gpu_utilization_ratio")
        .await;
    assert_eq!(info.len(), 1, "gpu_info joins on gpu and uuid: {info:?}");
    assert_eq!(info[0]["metric"]["name"], "NVIDIA H100 80GB HBM3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_mode_binary_serves_without_a_gpu() {
    let daemon = Daemon::start("gpu:\n  nvml_library: libnvidia-ml-not-installed.so.1\n", &[]).await;
    let page = daemon.get_text("/metrics").await;
    assert_eq!(sample_value(&page, "gpu_available"), Some(0.0));
    let body: serde_json::Value = reqwest::get(daemon.url("/api/system/gpu"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["gpu_name"], "Mock GPU (No NVIDIA GPU Available)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_flushes_pending_history() {
    let fake = FakeGpus::new(Driver::Current, &gpus_state(2));
    // A flush interval far longer than the test: only the shutdown flush
    // can write these samples.
    let config = format!(
        "data_dir: ./data\ngpu:\n  nvml_library: {}\n  poll_interval: 1s\nstore:\n  flush_interval: 300s\n",
        fake.lib_str()
    );
    let mut daemon = Daemon::start(&config, &[]).await;
    let pending = eventually("samples to be buffered", Duration::from_secs(30), || {
        let d = &daemon;
        async move {
            let page = d.get_text("/metrics").await;
            let p = sample_value(&page, "inferwatch_store_pending_samples")?;
            assert_eq!(sample_value(&page, "inferwatch_store_written_samples_total"), Some(0.0));
            (p >= 4.0).then_some(p as i64)
        }
    })
    .await;
    let status = daemon.proc.stop_with(SIGTERM);
    assert!(status.success(), "clean exit on SIGTERM: {status}");

    let db = daemon.dir.path().join("data/inferwatch.db");
    use sqlx::Connection;
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM gpu_samples")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert!(
        rows >= pending,
        "{rows} rows written on exit, {pending} were pending before SIGTERM"
    );
    assert_eq!(rows % 2, 0, "both GPUs of every poll are stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_warn_once_per_crossing_and_unsupported_fields_once() {
    let at = |temp: u32| {
        format!(
            "driver_version 1\ncount 1\n{}0.unsupported fan\n",
            gpu_lines(0, 50, temp)
        )
    };
    let fake = FakeGpus::new(Driver::Current, &at(70));
    let config = format!("gpu:\n  nvml_library: {}\n  poll_interval: 1s\n", fake.lib_str());
    let daemon = Daemon::start_with_args(&config, &[], &["--log.level=debug", "--log.format=json"]).await;

    // Each temperature is held until a poll has published it.
    for temp in [90, 95, 80, 88] {
        fake.set(&at(temp));
        eventually(&format!("a poll to read {temp} °C"), Duration::from_secs(20), || {
            let d = &daemon;
            async move {
                let page = d.get_text("/metrics").await;
                let t = sample_value(
                    &page,
                    "gpu_temperature_celsius{gpu=\"0\",uuid=\"GPU-00000000-1111-2222-3333-444444444444\"}",
                );
                (t == Some(temp as f64)).then_some(())
            }
        })
        .await;
    }
    let log = daemon.log();
    let lines: Vec<serde_json::Value> = log.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    assert!(!lines.is_empty(), "--log.format=json writes JSON lines: {log}");
    let warnings: Vec<f64> = lines
        .iter()
        .filter(|l| l["level"] == "WARN" && l["fields"]["message"] == "GPU temperature is above the warning threshold.")
        .map(|l| l["fields"]["temperature"].as_f64().unwrap())
        .collect();
    assert_eq!(
        warnings,
        vec![90.0, 88.0],
        "one WARN per upward crossing, none while it stays hot"
    );
    let unsupported = lines
        .iter()
        .filter(|l| l["level"] == "DEBUG" && l["fields"]["field"] == "fan_speed")
        .count();
    assert_eq!(unsupported, 1, "an unsupported field is logged once, not per poll");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_collector_gpu_flag_switches_the_collector_off() {
    let fake = FakeGpus::new(Driver::Current, &gpus_state(1));
    let config = format!("gpu:\n  nvml_library: {}\n", fake.lib_str());
    let daemon = Daemon::start_with_args(&config, &[], &["--no-collector.gpu"]).await;
    let page = daemon.get_text("/metrics").await;
    assert_eq!(sample_value(&page, "gpu_available"), Some(0.0));
    assert!(
        !page.contains("inferwatch_collector_success{collector=\"gpu\"}"),
        "the collector never ran"
    );
    assert!(
        sample_value(&page, "process_resident_memory_bytes").is_some(),
        "process metrics are exported"
    );
}

/// `--collector.<name>` / `--no-collector.<name>` exist for every collector
/// in the registry and win over the config.
#[tokio::test]
async fn collector_flags_come_from_the_registry_and_win_over_the_config() {
    let config = "gpu:\n  enabled: false\n  nvml_library: libnvidia-ml-not-installed.so.1\nqueues:\n  enabled: false\n";
    let d = crate::common::Daemon::start_with_args(config, &[], &["--no-collector.storage", "--collector.gpu"]).await;
    let page = d.get_text("/metrics").await;
    assert!(
        page.contains("inferwatch_collector_success{collector=\"gpu\"} 1"),
        "--collector.gpu starts it (mock mode here): {page}"
    );
    assert!(
        !page.contains("collector=\"storage\""),
        "--no-collector.storage stops it"
    );
    assert!(!page.contains("storage_filesystem_size_bytes{"));
    // The storage endpoint serves the collector's reading, so with it off
    // it says so instead of calling statvfs itself.
    let resp = reqwest::get(d.url("/api/system/storage/stats")).await.unwrap();
    assert_eq!(resp.status(), 503);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("storage collector"), "{body}");
    assert!(!page.contains("collector=\"queues\"") && !page.contains("collector=\"stream\""));
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_inferwatch"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for name in ["gpu", "health", "queues", "stream", "storage"] {
        assert!(
            help.contains(&format!("--collector.{name}")) && help.contains(&format!("--no-collector.{name}")),
            "{help}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_gets_the_page_gzip_compressed_and_reads_the_same_values() {
    use std::io::Read;
    let fake = FakeGpus::new(Driver::Current, &gpus_state(8));
    let config = format!("gpu:\n  nvml_library: {}\n  poll_interval: 1s\n", fake.lib_str());
    let daemon = Daemon::start(&config, &[]).await;
    // A client that asks for gzip gets the compressed page, and the same
    // text once decompressed; one that does not gets it plain.
    let client = reqwest::Client::new();
    let plain = client.get(daemon.url("/metrics")).send().await.unwrap();
    assert_eq!(plain.headers().get("vary").unwrap(), "Accept-Encoding");
    assert!(plain.headers().get("content-encoding").is_none());
    let plain = plain.text().await.unwrap();
    let gz = client
        .get(daemon.url("/metrics"))
        .header("Accept-Encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(gz.headers().get("content-encoding").unwrap(), "gzip");
    assert_eq!(gz.headers().get("vary").unwrap(), "Accept-Encoding");
    let compressed = gz.bytes().await.unwrap();
    let mut text = String::new();
    flate2::read::GzDecoder::new(&compressed[..])
        .read_to_string(&mut text)
        .unwrap();
    let names = |page: &str| -> std::collections::BTreeSet<String> {
        page.lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(|l| l.split(' ').next().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(&text), names(&plain), "the same families");
    assert!(
        compressed.len() * 4 < plain.len(),
        "{} gzip bytes for {} plain",
        compressed.len(),
        plain.len()
    );

    // A real Prometheus (which sends Accept-Encoding: gzip) scrapes it,
    // reporting each scrape's size (scrape_response_size_bytes).
    let prom = Prometheus::start_with_flags(
        tempfile::tempdir().unwrap(),
        &format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: inferwatch\n    static_configs:\n      - targets: ['127.0.0.1:{}']\n",
            daemon.port
        ),
        &["--enable-feature=extra-scrape-metrics"],
    )
    .await;
    // Prometheus reports the uncompressed size it read (scrape_body_size_bytes,
    // Prometheus 2.42): the whole page.
    let body = eventually("a scrape's body size", Duration::from_secs(60), || {
        let prom = &prom;
        async move {
            let r = prom.query("scrape_body_size_bytes{job=\"inferwatch\"}").await;
            r.first()
                .and_then(|s| s["value"][1].as_str().and_then(|v| v.parse::<f64>().ok()))
        }
    })
    .await;
    assert!(
        body > plain.len() as f64 * 0.9,
        "{body} bytes read for a {}-byte page",
        plain.len()
    );
    // The daemon's own response sizes of /metrics: the gzip page went out
    // (Prometheus's scrapes, and ours, against one plain request).
    let route = "{method=\"GET\",route=\"/metrics\"}";
    let (sum, count) = eventually("ten scrapes", Duration::from_secs(60), || {
        let (client, url) = (&client, daemon.url("/metrics"));
        async move {
            // Read compressed too, so that this wait adds no plain answers.
            let gz = client.get(url).header("Accept-Encoding", "gzip").send().await.ok()?;
            let bytes = gz.bytes().await.ok()?;
            let mut page = String::new();
            flate2::read::GzDecoder::new(&bytes[..])
                .read_to_string(&mut page)
                .ok()?;
            let sum = sample_value(&page, &format!("http_response_size_bytes_sum{route}"))?;
            let count = sample_value(&page, &format!("http_response_size_bytes_count{route}"))?;
            (count >= 10.0).then_some((sum, count))
        }
    })
    .await;
    // One plain answer (the first fetch above) among them.
    let mean = sum / count;
    assert!(
        mean * 2.0 < plain.len() as f64,
        "mean /metrics response {mean} bytes for a {}-byte page",
        plain.len()
    );
    // ... and reads the values the plain page has.
    let temps = prom.query("gpu_temperature_celsius").await;
    assert_eq!(temps.len(), 8, "{temps:?}");
    for t in &temps {
        let series = format!(
            "gpu_temperature_celsius{{gpu=\"{}\",uuid=\"{}\"}}",
            t["metric"]["gpu"].as_str().unwrap(),
            t["metric"]["uuid"].as_str().unwrap()
        );
        let want = sample_value(&plain, &series).unwrap();
        assert_eq!(
            t["value"][1].as_str().unwrap().parse::<f64>().unwrap(),
            want,
            "{series}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_and_build_info_say_the_same_revision_date_and_compiler() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_inferwatch"))
        .arg("--version")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let field = |prefix: &str, end: char| -> String {
        let at = text.find(prefix).unwrap_or_else(|| panic!("{prefix} in {text}")) + prefix.len();
        text[at..].split(end).next().unwrap().trim().to_string()
    };
    let revision = field("revision: ", ')');
    let branch = field("branch: ", ',');
    let date = field("build date:", '\n');
    let rustc = field("rustc version:", '\n');
    assert!(
        text.starts_with(&format!("inferwatch {}", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
    let head = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(crate::common::repo())
        .output()
        .unwrap();
    assert_eq!(revision, String::from_utf8_lossy(&head.stdout).trim(), "{text}");
    assert!(rustc.starts_with("rustc "), "{text}");
    assert!(chrono::DateTime::parse_from_rfc3339(&date).is_ok(), "{date}");
    let d = Daemon::start(
        "gpu:\n  nvml_library: libnvidia-ml-not-installed.so.1\nqueues:\n  enabled: false\n",
        &[],
    )
    .await;
    let page = d.get_text("/metrics").await;
    let series = format!(
        "inferwatch_build_info{{branch=\"{branch}\",build_date=\"{date}\",revision=\"{revision}\",rustc_version=\"{rustc}\",version=\"{}\"}}",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(sample_value(&page, &series), Some(1.0), "{series} in:\n{page}");
}
