//! The GPU collector against driver profiles built from real cards
//! (`tests/fake_nvml/profiles`): a fanless H100 keeps the collector
//! successful, fields are read at their cadences (asserted from the fake's
//! own call counts), excluded fields are never called, and `inferwatch
//! doctor` reports every field with its result and cost.

use std::process::Command;

use crate::common::{
    eventually, finished, gpus_state, polls, profile_path, sample_value, Daemon, Driver, FakeGpus, LIMIT,
};
use serde_json::Value;

fn config(fake: &FakeGpus, extra: &str) -> String {
    format!(
        "gpu:\n  nvml_library: {}\n  poll_interval: 1s\n{extra}queues:\n  enabled: false\n",
        fake.lib_str()
    )
}

async fn metric(d: &Daemon, series: &str) -> Option<f64> {
    sample_value(&d.get_text("/metrics").await, series)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fanless_h100_keeps_the_collector_successful() {
    let fake = FakeGpus::with_profile(Driver::Current, &gpus_state(2), "h100-sxm-580");
    let d = Daemon::start(&config(&fake, ""), &[]).await;
    let calls = polls(&fake, 4).await;
    let page = d.get_text("/metrics").await;
    assert_eq!(
        sample_value(&page, "inferwatch_collector_success{collector=\"gpu\"}"),
        Some(1.0),
        "{page}"
    );
    assert_eq!(
        sample_value(&page, "inferwatch_collector_errors_total{collector=\"gpu\"}"),
        Some(0.0)
    );
    assert_eq!(sample_value(&page, "gpu_devices"), Some(2.0));
    assert!(
        !page.contains("gpu_fan_speed_ratio{"),
        "a fanless GPU has no fan series"
    );
    // The fan count is read once per GPU, and no fan is ever asked for.
    assert_eq!(calls.get("nvmlDeviceGetNumFans"), Some(&2));
    assert_eq!(calls.get("nvmlDeviceGetFanSpeed_v2"), Some(&0));
    assert_eq!(
        sample_value(&page, "inferwatch_nvml_calls_total{call=\"num_fans\"}"),
        Some(2.0)
    );
    let warned = d.gpu_warnings();
    assert!(warned.is_empty(), "{warned:?}");
    let log = d.log();
    assert!(
        log.contains("580.159.04"),
        "the profile's driver version is reported: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_driver_that_cannot_count_fans_falls_back_to_fan_0_as_a_field_error() {
    // The H100's answers, with GetNumFans failing: fan 0 is then asked for,
    // and the card answers INVALID_ARGUMENT as the real one does.
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("h100-no-numfans.json");
    let text = std::fs::read_to_string(profile_path("h100-sxm-580")).unwrap().replace(
        r#""nvmlDeviceGetNumFans": {"rc": 0, "value": 0"#,
        r#""nvmlDeviceGetNumFans": {"rc": 13"#,
    );
    std::fs::write(&profile, text).unwrap();
    let fake = FakeGpus::new(
        Driver::Current,
        &format!("profile {}\n{}", profile.display(), gpus_state(2)),
    );
    let d = Daemon::start(&config(&fake, ""), &[]).await;
    polls(&fake, 4).await;
    let page = d.get_text("/metrics").await;
    assert_eq!(
        sample_value(&page, "inferwatch_collector_success{collector=\"gpu\"}"),
        Some(1.0)
    );
    let invalid = sample_value(
        &page,
        "inferwatch_nvml_call_errors_total{call=\"fan_speed\",error=\"invalid_argument\"}",
    )
    .unwrap();
    assert!(invalid >= 4.0, "two GPUs, at least two polls: {invalid}");
    assert!(sample_value(
        &page,
        "inferwatch_nvml_call_errors_total{call=\"num_fans\",error=\"function_not_found\"}"
    )
    .is_some());
    assert!(!page.contains("gpu_fan_speed_ratio{"));
    assert_eq!(
        sample_value(
            &page,
            "gpu_temperature_celsius{gpu=\"1\",uuid=\"GPU-00000001-1111-2222-3333-444444444444\"}"
        ),
        Some(61.0),
        "every other field is still read"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fields_are_read_at_their_cadences() {
    let fake = FakeGpus::with_profile(Driver::Current, &gpus_state(2), "h100-sxm-580");
    let _d = Daemon::start(&config(&fake, "  slow_interval: 3s\n"), &[]).await;
    // The counts are written when poll n starts: they hold n - 1 whole polls.
    let calls = polls(&fake, 7).await;
    let rounds = finished(&calls);
    let per_gpu = |name: &str| calls.get(name).copied().unwrap_or(0) as f64 / 2.0;
    assert_eq!(
        per_gpu("nvmlDeviceGetUtilizationRates"),
        rounds as f64,
        "fast: every poll"
    );
    assert_eq!(per_gpu("nvmlDeviceGetName"), 1.0, "static: once");
    assert_eq!(per_gpu("nvmlDeviceGetPciInfo_v3"), 1.0, "static: once");
    // Slow: the first poll, then every third one (polls 1, 4, 7, ...).
    let energy = per_gpu("nvmlDeviceGetTotalEnergyConsumption");
    let expected = (rounds as f64 / 3.0).ceil();
    assert!(
        (expected - 1.0..=expected).contains(&energy),
        "slow: every 3 s over {rounds} polls, read {energy} times per GPU"
    );
    assert!(energy < per_gpu("nvmlDeviceGetUtilizationRates") / 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_excluded_field_is_never_called() {
    let fake = FakeGpus::with_profile(Driver::Current, &gpus_state(1), "h100-sxm-580");
    let d = Daemon::start(&config(&fake, "  fields:\n    exclude: [energy, ecc]\n"), &[]).await;
    let calls = polls(&fake, 4).await;
    assert_eq!(calls.get("nvmlDeviceGetTotalEnergyConsumption"), Some(&0));
    assert_eq!(calls.get("nvmlDeviceGetTotalEccErrors"), Some(&0));
    assert!(calls["nvmlDeviceGetUtilizationRates"] >= 3);
    let page = d.get_text("/metrics").await;
    assert!(!page.contains("gpu_energy_joules_total{"));
    assert!(!page.contains("gpu_ecc_errors_total{"));
    assert_eq!(
        metric(&d, "inferwatch_collector_success{collector=\"gpu\"}").await,
        Some(1.0)
    );
}

#[test]
fn an_unknown_field_name_stops_startup_naming_the_valid_ones() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.yml");
    std::fs::write(&cfg, "gpu:\n  fields:\n    exclude: [energy, fan]\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_inferwatch"))
        .arg("check-config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("gpu.fields.exclude[1]") && text.contains("\"fan\"") && text.contains("fan_speed, clocks"),
        "{text}"
    );
}

fn doctor(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_inferwatch"))
        .arg("doctor")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn doctor_json(fake: &FakeGpus) -> Value {
    let (code, out, err) = doctor(&["--nvml-library", &fake.lib_str(), "--samples", "5", "--json"]);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap()
}

fn field<'a>(report: &'a Value, gpu: usize, name: &str) -> &'a Value {
    report["gpus"][gpu]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["field"] == name)
        .unwrap_or_else(|| panic!("{name} missing"))
}

#[test]
fn doctor_reports_every_field_of_the_h100_profile_with_its_cost() {
    let fake = FakeGpus::with_profile(Driver::Current, &gpus_state(2), "h100-sxm-580");
    let r = doctor_json(&fake);
    assert_eq!(r["driver_version"], "580.159.04");
    assert_eq!(r["nvml_state"], "up");
    assert_eq!(r["nvml_version"], "13.580.159.04");
    assert_eq!(r["cuda_driver_version"], "13.0");
    assert_eq!(r["gpus"].as_array().unwrap().len(), 2);
    assert_eq!(
        field(&r, 0, "recovery_action")["value"],
        "0",
        "none, as nvidia-smi -q showed"
    );
    let fields = r["gpus"][0]["fields"].as_array().unwrap();
    assert_eq!(fields.len(), 28, "every field is listed");
    for f in fields {
        assert!(
            f["result"].is_string() && f["class"].is_string() && f["call"].is_string(),
            "{f}"
        );
    }
    assert_eq!(field(&r, 0, "num_fans")["value"], "0");
    assert_eq!(field(&r, 0, "energy")["class"], "slow");
    assert_eq!(field(&r, 0, "name")["class"], "static");
    assert_eq!(field(&r, 0, "temperature")["value"], "60");
    // The costs follow the profile: the energy counter's 3.7 ms busy-wait
    // within 2x, and no field below what its profile spends.
    let energy = field(&r, 0, "energy")["median_us"].as_f64().unwrap();
    assert!((3700.0..=7400.0).contains(&energy), "energy median {energy} µs");
    let memory = field(&r, 0, "memory")["median_us"].as_f64().unwrap();
    assert!(memory >= 7.0, "memory median {memory} µs");
    // Energy every 15 s dominates: the estimate is far below a 1 s read.
    let pct = r["gpus"][0]["expected_cpu_percent"].as_f64().unwrap();
    assert!(pct > 0.0 && pct < 0.37 / 5.0 * 2.0, "{pct}");

    // GPM: supported on the H100, one sample and 14 metrics per read
    // (1190 + 110 per metric, plus two 88 µs samples and the support query).
    assert_eq!(field(&r, 0, "gpm")["result"], "ok");
    let gpm = field(&r, 0, "gpm")["median_us"].as_f64().unwrap();
    assert!((2900.0..=6000.0).contains(&gpm), "gpm median {gpm} µs");
    assert_eq!(field(&r, 0, "nvlink")["result"], "not_supported");
    assert_eq!(field(&r, 0, "memory_temperature")["value"], "51");
    assert_eq!(
        field(&r, 0, "temperature_thresholds")["value"],
        "slowdown=89 shutdown=95 gpu_max=87 memory_max=95"
    );
    assert_eq!(field(&r, 0, "process_utilization")["read_by_daemon"], false);
    assert_eq!(field(&r, 0, "process_utilization")["value"], "idle (NOT_FOUND)");

    let (code, table, _) = doctor(&["--nvml-library", &fake.lib_str(), "--samples", "3"]);
    assert_eq!(code, 0);
    assert!(
        table.contains("nvmlDeviceGetTotalEnergyConsumption")
            && table.contains("Summary: 2 GPU(s)")
            && table.contains("NVML state: up; driver 580.159.04, NVML 13.580.159.04, CUDA driver 13.0")
            && table.contains("GPU 0 recovery action: none")
            && table.contains("XID catalog: Xid 1-161"),
        "{table}"
    );
    assert!(
        table.contains("GPM profiling: ") && table.contains("% of one core (read; exclude `gpm`"),
        "{table}"
    );
    assert!(
        table.contains("per-process utilization: ") && table.contains("(not read with this config; gpu.per_process)"),
        "{table}"
    );
}

#[test]
fn doctor_names_the_errors_of_other_cards_and_drivers() {
    let a5500 = FakeGpus::with_profile(Driver::Current, &gpus_state(1), "rtx-a5500-580");
    let r = doctor_json(&a5500);
    assert_eq!(field(&r, 0, "num_fans")["value"], "1");
    assert_eq!(field(&r, 0, "fan_speed")["result"], "ok");
    assert_eq!(field(&r, 0, "fan_speed")["value"], "0=0.3");
    assert_eq!(field(&r, 0, "ecc")["result"], "not_supported");
    // An Ampere card: no GPM, no HBM temperature, no row remapping.
    assert_eq!(field(&r, 0, "gpm")["result"], "not_supported");
    assert_eq!(field(&r, 0, "memory_temperature")["result"], "not_supported");
    assert_eq!(field(&r, 0, "remapped_rows")["result"], "not_supported");
    let (_, table, _) = doctor(&["--nvml-library", &a5500.lib_str()]);
    assert!(table.contains("GPM profiling: not_supported"), "{table}");

    let old = FakeGpus::new(Driver::Old, &gpus_state(1));
    let r = doctor_json(&old);
    for name in ["memory", "energy", "num_fans", "fan_speed"] {
        assert_eq!(field(&r, 0, name)["result"], "function_not_found", "{name}");
    }
    assert_eq!(field(&r, 0, "utilization")["result"], "ok");

    let (code, out, err) = doctor(&["--nvml-library", "/nonexistent/libnvidia-ml.so.1", "--json"]);
    assert_eq!(code, 1);
    assert!(err.contains("no NVML library"), "{err}");
    assert!(err.contains("NVML state: down (library_not_found)"), "{err}");
    assert!(serde_json::from_str::<Value>(&out).unwrap()["error"].is_string());

    let broken = FakeGpus::new(Driver::Current, "init_error 9\n");
    let (code, _, err) = doctor(&["--nvml-library", &broken.lib_str()]);
    assert_eq!(code, 1);
    assert!(err.contains("failed to initialise"), "{err}");
    assert!(err.contains("NVML state: down (driver_not_loaded)"), "{err}");
    let mismatch = FakeGpus::new(Driver::Current, "init_error 18\n");
    let (code, _, err) = doctor(&["--nvml-library", &mismatch.lib_str()]);
    assert_eq!(code, 1);
    assert!(err.contains("NVML state: down (lib_rm_version_mismatch)"), "{err}");

    // The kernel log's state is printed whatever NVML does.
    let out = Command::new(env!("CARGO_BIN_EXE_inferwatch"))
        .args(["doctor", "--nvml-library", &broken.lib_str()])
        .env("GPU_KERNEL_LOG", "/nonexistent/kmsg")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Kernel log: /nonexistent/kmsg cannot be read"), "{err}");
    assert!(err.contains("XID catalog: Xid 1-161"), "{err}");
    let log = tempfile::NamedTempFile::new().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_inferwatch"))
        .args(["doctor", "--nvml-library", &broken.lib_str()])
        .env("GPU_KERNEL_LOG", log.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is readable; XIDs are read from it"), "{err}");

    let empty = FakeGpus::new(Driver::Current, "count 0\n");
    let (code, _, err) = doctor(&["--nvml-library", &empty.lib_str()]);
    assert_eq!(code, 1);
    assert!(err.contains("no GPU answered"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_fields_are_read_again_when_a_lost_gpu_returns() {
    let state = gpus_state(1);
    let fake = FakeGpus::with_profile(Driver::Current, &state, "h100-sxm-580");
    let d = Daemon::start(&config(&fake, ""), &[]).await;
    let before = polls(&fake, 2).await;
    assert_eq!(before["nvmlDeviceGetName"], 1, "static: once while the GPU stays");
    let profile = format!("profile {}\n", profile_path("h100-sxm-580").display());
    let body: String = state
        .lines()
        .filter(|l| !l.starts_with("driver_version "))
        .map(|l| format!("{l}\n"))
        .collect();
    fake.set(&format!("{profile}{body}0.lost 1\n"));
    eventually("the GPU to be gone from /metrics", LIMIT, || async {
        (metric(&d, "gpu_devices").await == Some(0.0)).then_some(())
    })
    .await;
    fake.set(&format!("{profile}{body}"));
    eventually("the GPU to come back", LIMIT, || async {
        (metric(&d, "gpu_devices").await == Some(1.0)).then_some(())
    })
    .await;
    let after = polls(&fake, finished(&fake.calls()) + 1).await;
    assert_eq!(after["nvmlDeviceGetName"], 2, "read again after GpuLost");
    assert_eq!(after["nvmlDeviceGetNumFans"], 2);
}
