//! GPU collector tests against the fake NVML, loaded through nvml-wrapper's
//! real dynamic loading. Each test drives collection rounds by hand
//! (`run_once`), so nothing waits on a timer.

use std::time::Duration;

use crate::common::{eventually, gpu_lines, gpus_state, sample_value, Driver, FakeGpus};
use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use http_body_util::BodyExt;
use inferwatch::api::{router, AppState};
use inferwatch::collectors::gpu::GpuCollector;
use inferwatch::collectors::run_once;
use inferwatch::config::Config;
use inferwatch::events::Event;
use inferwatch::nvml::InitReason;
use tower::ServiceExt;

struct Harness {
    state: AppState,
    runner: std::sync::Arc<inferwatch::collectors::RunnerMetrics>,
    collector: GpuCollector,
    _data: tempfile::TempDir,
}

impl Harness {
    async fn new(lib: &str, tweak: impl FnOnce(&mut Config)) -> Harness {
        let data = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.gpu.kernel_log = String::new();
        config.gpu.nvml_library = lib.to_string();
        config.data_dir = data.path().to_owned();
        tweak(&mut config);
        config.validate().unwrap();
        let state = inferwatch::build_state(config).unwrap();
        state.readiness.expect("gpu");
        let collector = inferwatch::gpu_collector(&state).await;
        Harness {
            runner: inferwatch::collectors::RunnerMetrics::register(state.metrics.clone()),
            state,
            collector,
            _data: data,
        }
    }

    async fn round(&mut self) -> Result<(), String> {
        run_once(&mut self.collector, &self.runner, &self.state.readiness)
            .await
            .map_err(|e| e.to_string())
    }

    async fn get(&self, uri: &str, accept: Option<&str>) -> (StatusCode, String, String) {
        let mut req = Request::get(uri);
        if let Some(a) = accept {
            req = req.header(header::ACCEPT, a);
        }
        let resp = router(self.state.clone())
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let ctype = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, ctype, String::from_utf8(body.to_vec()).unwrap())
    }

    async fn metrics(&self) -> String {
        self.get("/metrics", None).await.2
    }

    async fn json(&self, uri: &str) -> (StatusCode, serde_json::Value) {
        let (status, ctype, body) = self.get(uri, None).await;
        assert!(
            ctype.starts_with("application/json"),
            "{uri}: content type {ctype}: {body}"
        );
        (status, serde_json::from_str(&body).unwrap())
    }
}

const UUID0: &str = "GPU-00000000-1111-2222-3333-444444444444";
const UUID1: &str = "GPU-00000001-1111-2222-3333-444444444444";

fn series(name: &str, gpu: u32, uuid: &str) -> String {
    format!("{name}{{gpu=\"{gpu}\",uuid=\"{uuid}\"}}")
}

/// Fan 0 of a GPU.
fn fan(gpu: u32, uuid: &str) -> String {
    format!("gpu_fan_speed_ratio{{gpu=\"{gpu}\",uuid=\"{uuid}\",fan=\"0\"}}")
}

#[tokio::test]
async fn two_gpus_are_exported_in_base_units() {
    let fake = FakeGpus::new(Driver::Current, &gpus_state(2));
    let mut h = Harness::new(&fake.lib_str(), |_| {}).await;
    h.round().await.unwrap();
    let page = h.metrics().await;

    assert_eq!(sample_value(&page, "gpu_available"), Some(1.0));
    assert_eq!(sample_value(&page, "gpu_devices"), Some(2.0));
    assert_eq!(
        sample_value(&page, &series("gpu_utilization_ratio", 0, UUID0)),
        Some(0.40)
    );
    assert_eq!(
        sample_value(&page, &series("gpu_utilization_ratio", 1, UUID1)),
        Some(0.41)
    );
    assert_eq!(
        sample_value(&page, &series("gpu_temperature_celsius", 1, UUID1)),
        Some(61.0)
    );
    assert_eq!(
        sample_value(&page, &series("gpu_memory_used_bytes", 0, UUID0)),
        Some(21474836480.0)
    );
    assert_eq!(
        sample_value(&page, &series("gpu_power_usage_watts", 0, UUID0)),
        Some(250.5)
    );
    assert_eq!(
        sample_value(&page, &series("gpu_power_limit_watts", 0, UUID0)),
        Some(700.0)
    );
    assert_eq!(sample_value(&page, &fan(0, UUID0)), Some(0.30));
    assert_eq!(
        sample_value(&page, &series("gpu_energy_joules_total", 0, UUID0)),
        Some(123456.789)
    );
    assert_eq!(
        sample_value(
            &page,
            &format!("gpu_clock_hz{{gpu=\"0\",uuid=\"{UUID0}\",clock=\"memory\"}}")
        ),
        Some(2.619e9)
    );
    assert_eq!(
        sample_value(
            &page,
            &format!("gpu_throttle_reason_active{{gpu=\"0\",uuid=\"{UUID0}\",reason=\"sw_power_cap\"}}")
        ),
        Some(1.0)
    );
    assert_eq!(
        sample_value(
            &page,
            &format!("gpu_throttle_reason_active{{gpu=\"0\",uuid=\"{UUID0}\",reason=\"gpu_idle\"}}")
        ),
        Some(0.0)
    );
    assert_eq!(
        sample_value(
            &page,
            &format!("gpu_ecc_errors_total{{gpu=\"0\",uuid=\"{UUID0}\",type=\"corrected\"}}")
        ),
        Some(2.0)
    );
    assert_eq!(
        sample_value(
            &page,
            &format!("gpu_info{{gpu=\"1\",uuid=\"{UUID1}\",name=\"NVIDIA H100 80GB HBM3\",driver_version=\"550.54.15\",pci_bus_id=\"00000000:01:00.0\"}}")
        ),
        Some(1.0)
    );
    assert_eq!(
        sample_value(&page, "inferwatch_collector_success{collector=\"gpu\"}"),
        Some(1.0)
    );

    let (status, all) = h.json("/api/system/gpus").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(all.as_array().unwrap().len(), 2);
    let (_, one) = h.json("/api/system/gpu?gpu=1").await;
    assert_eq!(one["gpu_name"], "NVIDIA H100 80GB HBM3");
    assert_eq!(one["gpu_utilization"], 41.0);
    assert_eq!(one["memory_used"], 20480.0);
    assert_eq!(one["memory_total"], 81920.0);
    assert_eq!(one["temperature"], 61.0);
    assert_eq!(one["power_usage"], 250.5);
    assert!(one["inference_fps"].is_null());
    assert!(one["recorded_at"].as_str().unwrap().ends_with('Z'));
    let (_, first) = h.json("/api/system/gpu").await;
    assert_eq!(first["gpu"], 0);
    let (status, missing) = h.json("/api/system/gpu?gpu=7").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(missing["error"].as_str().unwrap().contains("[0, 1]"), "{missing}");
}

#[tokio::test]
async fn old_driver_missing_symbols_are_skipped() {
    let fake = FakeGpus::new(Driver::Old, &gpus_state(1));
    let mut h = Harness::new(&fake.lib_str(), |_| {}).await;
    h.round().await.expect("missing symbols never fail the poll");
    let page = h.metrics().await;
    for absent in [
        "gpu_memory_used_bytes",
        "gpu_memory_total_bytes",
        "gpu_fan_speed_ratio",
        "gpu_energy_joules_total",
    ] {
        assert!(
            !page.contains(&format!("\n{absent}{{")),
            "{absent} must be skipped on an old driver"
        );
    }
    assert_eq!(
        sample_value(&page, &series("gpu_temperature_celsius", 0, UUID0)),
        Some(60.0)
    );
    assert_eq!(
        sample_value(&page, "inferwatch_collector_success{collector=\"gpu\"}"),
        Some(1.0)
    );
    let (_, one) = h.json("/api/system/gpu").await;
    assert!(one["memory_used"].is_null());
    assert_eq!(one["temperature"], 60.0);
}

#[tokio::test]
async fn not_supported_fields_are_skipped_per_gpu() {
    let state = format!("{}0.unsupported fan,ecc,power\n", gpus_state(2));
    let fake = FakeGpus::new(Driver::Current, &state);
    let mut h = Harness::new(&fake.lib_str(), |_| {}).await;
    h.round().await.unwrap();
    let page = h.metrics().await;
    assert_eq!(sample_value(&page, &fan(0, UUID0)), None);
    assert_eq!(sample_value(&page, &series("gpu_power_usage_watts", 0, UUID0)), None);
    assert!(!page.contains("gpu_ecc_errors_total{gpu=\"0\""));
    // GPU 1 still reports all of them.
    assert_eq!(sample_value(&page, &fan(1, UUID1)), Some(0.30));
    assert_eq!(
        sample_value(&page, &series("gpu_power_usage_watts", 1, UUID1)),
        Some(250.5)
    );
    assert_eq!(
        sample_value(&page, "inferwatch_collector_success{collector=\"gpu\"}"),
        Some(1.0)
    );
}

#[tokio::test]
async fn lost_gpu_loses_its_series_and_the_daemon_keeps_going() {
    let fake = FakeGpus::new(Driver::Current, &gpus_state(2));
    let mut h = Harness::new(&fake.lib_str(), |_| {}).await;
    let mut events = h.state.events.subscribe();
    h.round().await.unwrap();
    assert_eq!(sample_value(&h.metrics().await, "gpu_devices"), Some(2.0));

    fake.set(&format!("{}1.lost 1\n", gpus_state(2)));
    let err = h.round().await.unwrap_err();
    assert!(err.contains("lost"), "{err}");
    let page = h.metrics().await;
    assert_eq!(sample_value(&page, "gpu_devices"), Some(1.0));
    assert_eq!(
        sample_value(&page, "inferwatch_collector_success{collector=\"gpu\"}"),
        Some(0.0)
    );
    assert!(!page.contains(UUID1), "every series of the lost GPU is gone");
    assert_eq!(
        sample_value(&page, &series("gpu_temperature_celsius", 0, UUID0)),
        Some(60.0)
    );
    let first_not_poll = loop {
        match events.recv().await.unwrap() {
            Event::GpuPolled => continue,
            other => break other,
        }
    };
    assert_eq!(
        first_not_poll,
        Event::GpuLost {
            gpu: 1,
            uuid: UUID1.into()
        }
    );

    // When it comes back, so do its series and success.
    fake.set(&gpus_state(2));
    h.round().await.unwrap();
    let page = h.metrics().await;
    assert_eq!(sample_value(&page, "gpu_devices"), Some(2.0));
    assert_eq!(
        sample_value(&page, "inferwatch_collector_success{collector=\"gpu\"}"),
        Some(1.0)
    );
}

/// Runs rounds (100 ms apart: the first retry is due 1 s after the
/// failure) until one succeeds, or panics after 10 s.
async fn rounds_until_ok(h: &mut Harness) {
    eventually("a round that succeeds", Duration::from_secs(10), async || {
        h.round().await.ok()
    })
    .await
}

/// Asserts what a failing GPU collector shows for `reason`.
async fn assert_down(h: &mut Harness, reason: &str, errors: f64) {
    let err = h.round().await.unwrap_err();
    assert!(err.contains(&format!("NVML is down ({reason})")), "{err}");
    let page = h.metrics().await;
    assert_eq!(
        sample_value(&page, "inferwatch_collector_success{collector=\"gpu\"}"),
        Some(0.0)
    );
    assert_eq!(sample_value(&page, "inferwatch_nvml_up"), Some(0.0));
    assert_eq!(sample_value(&page, "gpu_available"), Some(0.0));
    assert_eq!(sample_value(&page, "gpu_devices"), Some(0.0));
    let counted = sample_value(
        &page,
        &format!("inferwatch_nvml_init_errors_total{{reason=\"{reason}\"}}"),
    )
    .unwrap();
    assert!(counted >= errors, "{reason}: {counted} < {errors}");
    assert!(!page.contains("gpu_driver_info"), "no driver info while down");
    let (status, body) = h.json("/api/system/gpu").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.to_string().contains(reason), "the error names the reason: {body}");
    let (status, _) = h.json("/api/system/gpus").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "no mock object while down");
    assert!(!h.collector.is_mock());
}

#[tokio::test]
async fn auto_mode_with_no_library_installed_is_mock_mode() {
    // A soname the loader cannot find: no NVIDIA driver on this machine.
    let mut h = Harness::new("libnvidia-ml-not-installed.so.1", |_| {}).await;
    assert!(h.collector.is_mock());
    h.round().await.unwrap();
    let page = h.metrics().await;
    assert_eq!(sample_value(&page, "gpu_available"), Some(0.0));
    assert_eq!(sample_value(&page, "gpu_devices"), Some(0.0));
    assert_eq!(
        sample_value(&page, "inferwatch_collector_success{collector=\"gpu\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample_value(&page, "inferwatch_nvml_init_errors_total{reason=\"library_not_found\"}"),
        Some(0.0),
        "no driver installed is not an error"
    );
    let per_gpu: Vec<&str> = page
        .lines()
        .filter(|l| l.starts_with("gpu_") && !l.starts_with("gpu_available") && !l.starts_with("gpu_devices"))
        .collect();
    assert!(per_gpu.is_empty(), "no per-GPU series in mock mode: {per_gpu:?}");
    let (status, mock) = h.json("/api/system/gpu").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(mock["gpu_name"], "Mock GPU (No NVIDIA GPU Available)");
    for k in [
        "gpu_utilization",
        "memory_used",
        "memory_total",
        "temperature",
        "power_usage",
        "inference_fps",
    ] {
        assert!(mock[k].is_null(), "{k} is null in mock mode");
    }
    let (_, all) = h.json("/api/system/gpus").await;
    assert_eq!(all[0]["gpu_name"], "Mock GPU (No NVIDIA GPU Available)");
}

#[tokio::test]
async fn an_explicit_path_that_does_not_exist_is_a_failing_collector_not_mock_mode() {
    let mut h = Harness::new("/nonexistent/libnvidia-ml.so.1", |_| {}).await;
    assert_eq!(h.collector.down_reason().map(|r| r.as_str()), Some("library_not_found"));
    assert_down(&mut h, "library_not_found", 1.0).await;
    // `mock` mocks whatever the library; `nvml` never does.
    let fake = FakeGpus::new(Driver::Current, &gpus_state(1));
    let mut h = Harness::new(&fake.lib_str(), |c| c.gpu.mode = inferwatch::config::GpuMode::Mock).await;
    assert!(h.collector.is_mock());
    h.round().await.unwrap();
    assert_eq!(sample_value(&h.metrics().await, "gpu_devices"), Some(0.0));
    let h = Harness::new("libnvidia-ml-not-installed.so.1", |c| {
        c.gpu.mode = inferwatch::config::GpuMode::Nvml
    })
    .await;
    assert_eq!(h.collector.down_reason().map(|r| r.as_str()), Some("library_not_found"));
}

#[tokio::test]
async fn a_driver_that_is_not_loaded_yet_fails_then_appears_without_a_restart() {
    // The library loads but nvmlInit_v2 answers DRIVER_NOT_LOADED (nvml.h: 9),
    // as before the kernel module is loaded at boot.
    let fake = FakeGpus::new(Driver::Current, &format!("init_error 9\n{}", gpus_state(2)));
    let mut h = Harness::new(&fake.lib_str(), |_| {}).await;
    assert_eq!(h.collector.down_reason().map(|r| r.as_str()), Some("driver_not_loaded"));
    assert_down(&mut h, "driver_not_loaded", 1.0).await;
    // The module is loaded: the next retry finds the GPUs.
    fake.set(&gpus_state(2));
    rounds_until_ok(&mut h).await;
    let page = h.metrics().await;
    assert_eq!(sample_value(&page, "gpu_devices"), Some(2.0));
    assert_eq!(sample_value(&page, "inferwatch_nvml_up"), Some(1.0));
    assert_eq!(
        sample_value(&page, "inferwatch_collector_success{collector=\"gpu\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample_value(
            &page,
            "gpu_driver_info{driver_version=\"550.54.15\",nvml_version=\"13.550.54.15\",cuda_driver_version=\"13.0\"}"
        ),
        Some(1.0)
    );
    let (status, _) = h.json("/api/system/gpu").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn a_driver_upgraded_under_the_daemon_is_lost_retried_and_found_again() {
    let fake = FakeGpus::new(Driver::Current, &gpus_state(2));
    let mut h = Harness::new(&fake.lib_str(), |_| {}).await;
    h.round().await.unwrap();
    // 1. The old kernel module is unloaded: every device answers
    //    UNINITIALIZED (nvml.h: 1) while the count still answers.
    fake.set(&format!("device_error 1\n{}", gpus_state(2)));
    let err = h.round().await.unwrap_err();
    assert!(err.contains("NVML is down (driver_not_loaded)"), "{err}");
    assert_eq!(h.collector.down_reason().map(|r| r.as_str()), Some("driver_not_loaded"));
    let page = h.metrics().await;
    assert_eq!(sample_value(&page, "inferwatch_nvml_up"), Some(0.0));
    assert_eq!(sample_value(&page, "gpu_devices"), Some(0.0), "no stale GPU series");
    // 2. The new library meets the old module: LIB_RM_VERSION_MISMATCH (18).
    fake.set(&format!("init_error 18\n{}", gpus_state(2)));
    eventually(
        "a retry that finds the new reason",
        Duration::from_secs(10),
        async || {
            let _ = h.round().await;
            (h.collector.down_reason() == Some(InitReason::LibRmVersionMismatch)).then_some(())
        },
    )
    .await;
    assert_down(&mut h, "lib_rm_version_mismatch", 1.0).await;
    // 3. After the reboot (or module reload) init works: GPUs are back.
    fake.set(&gpus_state(2));
    rounds_until_ok(&mut h).await;
    let page = h.metrics().await;
    assert_eq!(sample_value(&page, "gpu_devices"), Some(2.0));
    assert_eq!(sample_value(&page, "inferwatch_nvml_up"), Some(1.0));
    assert!(
        sample_value(&page, "inferwatch_nvml_init_errors_total{reason=\"driver_not_loaded\"}").unwrap() >= 1.0,
        "the loss mid-run was counted"
    );
}

#[tokio::test]
async fn the_recovery_action_is_an_enum_gauge_where_the_driver_knows_the_field() {
    let state = format!("{}0.recovery_action 2\n1.unsupported recovery\n", gpus_state(2));
    let fake = FakeGpus::new(Driver::Current, &state);
    let mut h = Harness::new(&fake.lib_str(), |_| {}).await;
    h.round().await.unwrap();
    let page = h.metrics().await;
    let action = |gpu: u32, uuid: &str, a: &str| {
        sample_value(
            &page,
            &format!("gpu_recovery_action{{gpu=\"{gpu}\",uuid=\"{uuid}\",action=\"{a}\"}}"),
        )
    };
    assert_eq!(action(0, UUID0, "node_reboot"), Some(1.0));
    assert_eq!(action(0, UUID0, "none"), Some(0.0));
    assert_eq!(action(0, UUID0, "gpu_reset"), Some(0.0));
    assert_eq!(
        action(1, UUID1, "none"),
        None,
        "NOT_SUPPORTED: no series, as on older drivers"
    );
    assert_eq!(
        sample_value(&page, "inferwatch_collector_success{collector=\"gpu\"}"),
        Some(1.0),
        "an unsupported field is skipped, not a failed round"
    );
}

#[tokio::test]
async fn temperature_warning_fires_once_per_crossing() {
    let at = |temp: u32| format!("driver_version 1\ncount 1\n{}", gpu_lines(0, 50, temp));
    let fake = FakeGpus::new(Driver::Current, &at(80));
    let mut h = Harness::new(&fake.lib_str(), |_| {}).await;
    let mut events = h.state.events.subscribe();
    for temp in [80, 90, 91, 92, 85, 86, 70] {
        fake.set(&at(temp));
        h.round().await.unwrap();
    }
    let mut crossings = vec![];
    while let Ok(e) = events.try_recv() {
        if let Event::GpuTemperatureHigh {
            temperature, threshold, ..
        } = e
        {
            assert_eq!(threshold, 85.0);
            crossings.push(temperature);
        }
    }
    assert_eq!(crossings, vec![90.0, 86.0], "one event per upward crossing of 85 °C");
}

#[tokio::test]
async fn xid_events_feed_a_counter() {
    let base = gpus_state(2);
    let fake = FakeGpus::new(Driver::Current, &base);
    let mut h = Harness::new(&fake.lib_str(), |_| {}).await;
    h.round().await.unwrap();
    assert!(!h.metrics().await.contains("gpu_xid_errors_total{"));

    fake.set(&format!("{base}1.xid 79,13\n"));
    h.round().await.unwrap();
    let xid = |x: &str| format!("gpu_xid_errors_total{{gpu=\"1\",uuid=\"{UUID1}\",xid=\"{x}\"}}");
    let page = h.metrics().await;
    assert_eq!(sample_value(&page, &xid("79")), Some(1.0));
    assert_eq!(sample_value(&page, &xid("13")), Some(1.0));

    // One more 79: the counter grows, and an unchanged state adds nothing.
    fake.set(&format!("{base}1.xid 79,13,79\n"));
    h.round().await.unwrap();
    h.round().await.unwrap();
    let page = h.metrics().await;
    assert_eq!(sample_value(&page, &xid("79")), Some(2.0));
    assert_eq!(sample_value(&page, &xid("13")), Some(1.0));
}

#[tokio::test]
async fn per_process_series_follow_running_processes() {
    let base = gpus_state(1);
    let fake = FakeGpus::new(
        Driver::Current,
        &format!("{base}0.procs 4242:1073741824:python3;5151:2147483648:tritonserver\n"),
    );
    // A /proc of its own: the pids are the fake's, not this machine's.
    let proc_root = tempfile::tempdir().unwrap();
    std::fs::create_dir(proc_root.path().join("self")).unwrap();
    let root = proc_root.path().to_owned();
    let mut h = Harness::new(&fake.lib_str(), move |c| {
        c.gpu.per_process = true;
        c.attribution.proc_root = root.clone();
        c.attribution.docker_socket = Some(Default::default());
    })
    .await;
    h.round().await.unwrap();
    let proc = |pid: &str, name: &str| {
        format!(
            "gpu_process_memory_used_bytes{{gpu=\"0\",uuid=\"{UUID0}\",pid=\"{pid}\",process_name=\"{name}\",\
             service=\"\",unit=\"\",container=\"\",compose_project=\"\",compose_service=\"\"}}"
        )
    };
    let page = h.metrics().await;
    assert_eq!(sample_value(&page, &proc("4242", "python3")), Some(1073741824.0));
    assert_eq!(sample_value(&page, &proc("5151", "tritonserver")), Some(2147483648.0));

    fake.set(&format!("{base}0.procs 5151:2147483648:tritonserver\n"));
    h.round().await.unwrap();
    let page = h.metrics().await;
    assert_eq!(
        sample_value(&page, &proc("4242", "python3")),
        None,
        "exited process is removed"
    );
    assert_eq!(sample_value(&page, &proc("5151", "tritonserver")), Some(2147483648.0));
}

#[tokio::test]
async fn per_process_is_off_by_default() {
    let fake = FakeGpus::new(
        Driver::Current,
        &format!("{}0.procs 4242:1073741824:python3\n", gpus_state(1)),
    );
    let mut h = Harness::new(&fake.lib_str(), |_| {}).await;
    h.round().await.unwrap();
    assert!(!h.metrics().await.contains("gpu_process_memory_used_bytes"));
}

#[tokio::test]
async fn metrics_content_negotiation() {
    let fake = FakeGpus::new(Driver::Current, &gpus_state(1));
    let mut h = Harness::new(&fake.lib_str(), |_| {}).await;
    h.round().await.unwrap();
    let (status, ctype, body) = h.get("/metrics", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ctype, "text/plain; version=0.0.4; charset=utf-8");
    assert!(body.contains("# TYPE gpu_energy_joules_total counter"));
    let (_, ctype, body) = h
        .get(
            "/metrics",
            Some("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"),
        )
        .await;
    assert_eq!(ctype, "application/openmetrics-text; version=1.0.0; charset=utf-8");
    assert!(body.contains("# TYPE gpu_energy_joules counter"));
    assert!(body.contains(&format!(
        "gpu_energy_joules_total{{gpu=\"0\",uuid=\"{UUID0}\"}} 123456.789"
    )));
    assert!(body.ends_with("# EOF\n"));
}

#[tokio::test]
async fn readiness_follows_the_first_round() {
    let fake = FakeGpus::new(Driver::Current, &gpus_state(1));
    let mut h = Harness::new(&fake.lib_str(), |_| {}).await;
    let (status, _, body) = h.get("/-/ready", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("gpu"), "{body}");
    assert_eq!(h.get("/-/healthy", None).await.0, StatusCode::OK);
    let (status, body) = h.json("/api/system/gpu").await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "no reading yet is not the mock object: {body}"
    );
    h.round().await.unwrap();
    assert_eq!(h.get("/-/ready", None).await.0, StatusCode::OK);
    assert_eq!(h.json("/api/system/gpu").await.0, StatusCode::OK);
}

#[tokio::test]
async fn a_stuck_driver_call_times_out_and_scrapes_serve_the_cache() {
    let fake = FakeGpus::new(Driver::Current, &gpus_state(1));
    let mut h = Harness::new(&fake.lib_str(), |c| {
        c.gpu.timeout = std::time::Duration::from_millis(200)
    })
    .await;
    h.round().await.unwrap();

    // The next temperature read blocks for 30 s inside the driver.
    fake.set(&format!(
        "{}0.hang_ms 30000
",
        gpus_state(1)
    ));
    let err = h.round().await.unwrap_err();
    assert!(err.contains("timed out"), "{err}");
    // While the NVML thread is stuck, a new poll is refused at once instead
    // of queueing behind it.
    let err = h.round().await.unwrap_err();
    assert!(err.contains("still running"), "{err}");

    // Scrapes never wait on the driver: they answer from the last snapshot.
    let page = tokio::time::timeout(std::time::Duration::from_secs(5), h.metrics())
        .await
        .expect("a scrape must not block on a stuck NVML call");
    assert_eq!(
        sample_value(&page, &series("gpu_temperature_celsius", 0, UUID0)),
        Some(60.0)
    );
    assert_eq!(
        sample_value(&page, "inferwatch_collector_success{collector=\"gpu\"}"),
        Some(0.0)
    );
}

#[tokio::test]
async fn history_parameters_are_validated_with_json_errors() {
    let fake = FakeGpus::new(Driver::Current, &gpus_state(1));
    let mut h = Harness::new(&fake.lib_str(), |_| {}).await;
    h.round().await.unwrap();
    for (query, needle) in [
        ("minutes=0", "from 1 to 1440"),
        ("minutes=1441", "from 1 to 1440"),
        ("minutes=abc", "whole number"),
        ("minutes=-5", "whole number"),
        ("minutes=5&gpu=x", "gpu"),
        ("minute=5", "unknown query parameter"),
    ] {
        let (status, body) = h.json(&format!("/api/system/gpu/history?{query}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert!(body["error"].as_str().unwrap().contains(needle), "{query}: {body}");
        assert!(body.get("detail").is_some(), "{query}: {body}");
    }
    let (status, body) = h.json("/api/system/gpu/history?minutes=5").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["source"], "memory");
    assert_eq!(body["samples"].as_array().unwrap().len(), 1);
    let (status, body) = h.json("/api/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["error"].is_string());
}

#[tokio::test]
async fn history_beyond_the_window_comes_from_sqlite() {
    let fake = FakeGpus::new(Driver::Current, &gpus_state(2));
    let mut h = Harness::new(&fake.lib_str(), |c| c.gpu.history_minutes = 1).await;
    for _ in 0..3 {
        h.round().await.unwrap();
        // Distinct timestamps: the store keys rows by (uuid, millisecond).
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    }
    let store = h.state.store.clone().unwrap();
    assert_eq!(store.pending(), 6);
    assert_eq!(store.flush().await.unwrap(), 6);
    assert_eq!(store.pending(), 0);
    let (status, body) = h.json("/api/system/gpu/history?minutes=120&gpu=1").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["source"], "store");
    let samples = body["samples"].as_array().unwrap();
    assert_eq!(samples.len(), 3);
    assert_eq!(samples[0]["temperature"], 61.0);
    assert_eq!(samples[0]["uuid"], UUID1);
}

/// `/dev/kmsg`-style records: `priority,seq,usec,flags;message`, each
/// followed by the continuation lines the kernel adds for device messages.
fn kmsg_record(seq: u64, message: &str) -> String {
    format!(
        "3,{seq},{},-;{message}\n SUBSYSTEM=pci\n DEVICE=+pci:0000:00:00.0\n",
        1_000_000 + seq
    )
}

fn xid_line(bus: &str, xid: u64) -> String {
    format!("NVRM: Xid (PCI:{bus}): {xid}, pid='<unknown>', name=<unknown>, test record")
}

fn append(path: &std::path::Path, text: &str) {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
}

/// Runs rounds until `series` reads `want` (the reader thread is its own
/// clock), or panics after 10 s.
async fn rounds_until(h: &mut Harness, series: &str, want: Option<f64>) -> String {
    eventually(
        &format!("{series} to read {want:?}"),
        Duration::from_secs(10),
        async || {
            let _ = h.round().await;
            let page = h.metrics().await;
            (sample_value(&page, series) == want).then_some(page)
        },
    )
    .await
}

#[tokio::test]
async fn xids_from_the_kernel_log_are_counted_once_with_the_catalog_labels() {
    let log_dir = tempfile::tempdir().unwrap();
    let log = log_dir.path().join("kmsg");
    // GPU 0 raises XID 119 (GSP timeout): NVML's event and the kernel line
    // are one XID. GPU 1 falls off the bus (79: NVML events never carry it).
    let state = format!("{}0.xid 119\n", gpus_state(2));
    let fake = FakeGpus::new(Driver::Current, &state);
    append(
        &log,
        &[
            kmsg_record(1, "NVRM: loading NVIDIA UNIX x86_64 Kernel Module  550.54.15"),
            kmsg_record(2, &xid_line("0000:00:00", 119)),
            kmsg_record(3, &xid_line("0000:01:00", 79)),
            kmsg_record(4, &xid_line("0000:3b:00", 13)),
            kmsg_record(
                5,
                "nvidia-nvswitch0: SXid (PCI:0000:05:00.0): 12028, Non-fatal, Link 32 egress non-posted PRIV error",
            ),
        ]
        .concat(),
    );
    let path = log.display().to_string();
    let mut h = Harness::new(&fake.lib_str(), |c| c.gpu.kernel_log = path.clone()).await;
    let unknown = "gpu_xid_errors_total{gpu=\"unknown\",uuid=\"0000:3b:00\",xid=\"13\"}";
    let page = rounds_until(&mut h, unknown, Some(1.0)).await;
    let xid = |gpu: &str, uuid: &str, xid: &str| {
        sample_value(
            &page,
            &format!("gpu_xid_errors_total{{gpu=\"{gpu}\",uuid=\"{uuid}\",xid=\"{xid}\"}}"),
        )
    };
    assert_eq!(
        xid("0", UUID0, "119"),
        Some(1.0),
        "NVML and the kernel line counted once"
    );
    assert_eq!(xid("1", UUID1, "79"), Some(1.0), "a kernel-only XID");
    assert_eq!(xid("nvswitch", "0000:05:00", "sxid_12028"), Some(1.0));
    let seen = |rest: &str| {
        page.lines()
            .any(|l| l.starts_with("gpu_xid_last_seen_timestamp_seconds{") && l.contains(rest))
    };
    assert!(seen("gpu=\"1\",uuid=\"GPU-00000001-1111-2222-3333-444444444444\",xid=\"79\",severity=\"critical\",action=\"reboot_node\""), "{page}");
    assert!(seen("xid=\"119\",severity=\"critical\",action=\"reset_gpu\""), "{page}");
    assert!(seen("xid=\"13\",severity=\"warning\",action=\"restart_app\""), "{page}");
    assert_eq!(sample_value(&page, "inferwatch_kernel_log_up"), Some(1.0));
    assert_eq!(
        sample_value(&page, "inferwatch_kernel_log_overwritten_total"),
        Some(0.0)
    );
    assert_eq!(
        sample_value(&page, "inferwatch_collector_success{collector=\"gpu\"}"),
        Some(1.0)
    );

    // More records while the daemon runs (a file is tailed like the device).
    append(&log, &kmsg_record(6, &xid_line("0000:01:00", 79)));
    rounds_until(
        &mut h,
        "gpu_xid_errors_total{gpu=\"1\",uuid=\"GPU-00000001-1111-2222-3333-444444444444\",xid=\"79\"}",
        Some(2.0),
    )
    .await;
}

#[tokio::test]
async fn a_restart_between_records_counts_nothing_twice_and_loses_nothing() {
    let log_dir = tempfile::tempdir().unwrap();
    let log = log_dir.path().join("kmsg");
    let data = tempfile::tempdir().unwrap();
    let fake = FakeGpus::new(Driver::Current, &gpus_state(2));
    let path = log.display().to_string();
    let data_dir = data.path().to_owned();
    let tweak = |c: &mut Config| {
        c.gpu.kernel_log = path.clone();
        c.data_dir = data_dir.clone();
    };
    append(
        &log,
        &[
            kmsg_record(10, &xid_line("0000:00:00", 13)),
            kmsg_record(11, &xid_line("0000:01:00", 31)),
        ]
        .concat(),
    );
    let mut h = Harness::new(&fake.lib_str(), tweak).await;
    let x13 = format!("gpu_xid_errors_total{{gpu=\"0\",uuid=\"{UUID0}\",xid=\"13\"}}");
    let x31 = format!("gpu_xid_errors_total{{gpu=\"1\",uuid=\"{UUID1}\",xid=\"31\"}}");
    let x48 = format!("gpu_xid_errors_total{{gpu=\"0\",uuid=\"{UUID0}\",xid=\"48\"}}");
    rounds_until(&mut h, &x31, Some(1.0)).await;
    drop(h);
    // Written while the daemon was down.
    append(&log, &kmsg_record(12, &xid_line("0000:00:00", 48)));
    let mut h = Harness::new(&fake.lib_str(), tweak).await;
    let page = rounds_until(&mut h, &x48, Some(1.0)).await;
    assert_eq!(
        sample_value(&page, &x13),
        None,
        "record 10 was counted by the first run"
    );
    assert_eq!(sample_value(&page, &x31), None, "record 11 too");
}

#[tokio::test]
async fn an_unreadable_kernel_log_is_said_once_and_is_not_a_failed_round() {
    let fake = FakeGpus::new(Driver::Current, &gpus_state(1));
    let mut h = Harness::new(&fake.lib_str(), |c| c.gpu.kernel_log = "/nonexistent/kmsg".into()).await;
    h.round().await.unwrap();
    let page = h.metrics().await;
    assert_eq!(sample_value(&page, "inferwatch_kernel_log_up"), Some(0.0));
    assert_eq!(
        sample_value(&page, "inferwatch_collector_success{collector=\"gpu\"}"),
        Some(1.0)
    );
}

/// The reader on the real `/dev/kmsg`, as root. It writes no XID there:
/// on a GPU server that would page every XID reader of the host (and a
/// later run of ours). It writes lines tagged as this test's, which no XID
/// reader can take for one, and sees the reader count them; XID parsing is
/// tested on files and FIFOs above.
#[tokio::test]
async fn the_real_dev_kmsg_when_running_as_root() {
    let root = std::process::Command::new("id").arg("-u").output().unwrap().stdout == b"0\n";
    if !root {
        eprintln!("skipped: writing a record into /dev/kmsg needs root; the FIFO/file tests cover the reader");
        return;
    }
    let fake = FakeGpus::new(Driver::Current, &gpus_state(1));
    let mut h = Harness::new(&fake.lib_str(), |c| c.gpu.kernel_log = "/dev/kmsg".into()).await;
    let series = "inferwatch_kernel_log_records_total";
    h.round().await.unwrap();
    let page = h.metrics().await;
    assert_eq!(sample_value(&page, "inferwatch_kernel_log_up"), Some(1.0), "{page}");
    // The replay of the buffer first: what it counts is the baseline.
    let mut before = sample_value(&page, series);
    let before = eventually(
        "the replay of the buffer to settle",
        Duration::from_secs(10),
        async || {
            tokio::time::sleep(Duration::from_millis(200)).await;
            h.round().await.unwrap();
            let now = sample_value(&h.metrics().await, series);
            let settled = now == before;
            before = now;
            settled.then_some(now)
        },
    )
    .await
    .unwrap_or(0.0);
    // What the buffer held before (earlier runs of an older suite wrote
    // XID lines into this boot's log): the probes must add no XID to it.
    let xids = |page: &str| -> Vec<String> {
        page.lines()
            .filter(|l| l.starts_with("gpu_xid_errors_total{"))
            .map(str::to_string)
            .collect()
    };
    let xids_before = xids(&h.metrics().await);
    for i in 0..3 {
        std::fs::write(
            "/dev/kmsg",
            format!("<6>inferwatch-test: kernel log reader probe {i}\n"),
        )
        .unwrap();
    }
    let page = eventually("the reader to count the probes", Duration::from_secs(30), async || {
        h.round().await.unwrap();
        let page = h.metrics().await;
        sample_value(&page, series)
            .is_some_and(|n| n >= before + 3.0)
            .then_some(page)
    })
    .await;
    assert_eq!(xids(&page), xids_before, "no XID from the probe lines");
}

/// A kernel log that blocks on `open()` (a FIFO with no writer) holds up
/// neither a round nor the daemon: the log is down until a writer comes,
/// then read. A record of 1 MiB (the kernel writes at most 8 KiB) is
/// skipped as it streams, never held whole, and counted as a read-limit
/// hit; the records around it are read.
#[tokio::test]
async fn a_fifo_kernel_log_never_blocks_a_round_and_a_one_mib_record_is_skipped_unheld() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("kmsg");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let fake = FakeGpus::new(Driver::Current, &gpus_state(2));
    let path = fifo.display().to_string();
    let mut h = Harness::new(&fake.lib_str(), |c| c.gpu.kernel_log = path.clone()).await;
    // No writer: open() blocks in the reader's thread, not in the round.
    h.round().await.unwrap();
    let page = h.metrics().await;
    assert_eq!(sample_value(&page, "inferwatch_kernel_log_up"), Some(0.0), "{page}");
    assert_eq!(
        sample_value(&page, "inferwatch_collector_success{collector=\"gpu\"}"),
        Some(1.0)
    );

    let hits = "inferwatch_read_limit_hits_total{source=\"kernel_log\"}";
    let before = sample_value(&page, hits).unwrap_or(0.0);
    let xid = format!("gpu_xid_errors_total{{gpu=\"1\",uuid=\"{UUID1}\",xid=\"79\"}}");
    let rise = crate::common::rss_rise(std::process::id() as i32, async {
        let writer = std::thread::spawn(move || {
            use std::io::Write;
            let mut w = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
            w.write_all(kmsg_record(1, "before").as_bytes()).unwrap();
            w.write_all(b"3,2,1000002,-;").unwrap();
            for _ in 0..128 {
                w.write_all(&[b'x'; 8192]).unwrap();
            }
            w.write_all(b"\n").unwrap();
            w.write_all(kmsg_record(3, &xid_line("0000:01:00", 79)).as_bytes())
                .unwrap();
            w
        });
        rounds_until(&mut h, &xid, Some(1.0)).await;
        drop(writer.join().unwrap());
    })
    .await;
    let page = h.metrics().await;
    assert_eq!(
        sample_value(&page, "inferwatch_kernel_log_up"),
        Some(1.0),
        "opened once a writer came"
    );
    assert_eq!(sample_value(&page, hits), Some(before + 1.0), "{page}");
    assert_eq!(
        sample_value(&page, "inferwatch_kernel_log_records_total"),
        Some(2.0),
        "{page}"
    );
    assert!(rise < 20_000_000, "RSS rose by {rise} bytes for a 1 MiB record");
}
