//! What utilization hides, against the fake driver's profiles: GPM values
//! in our names and units, read once per slow tick with no sample leaked;
//! a card without GPM has no GPM series and no warning; per-process SM
//! utilization follows the process list (and the older call on a driver
//! without the newer one); clock-event counters grow only while their
//! reason is active, at the rate time passes; and the numbering of the
//! clock-event fields follows the driver version.

use std::collections::HashMap;

use crate::common::{
    eventually, finished, gpus_state, polls, profile_path, sample_value, Daemon, Driver, FakeGpus, LIMIT,
};

const UUID0: &str = "GPU-00000000-1111-2222-3333-444444444444";

fn config(fake: &FakeGpus, extra: &str) -> String {
    format!(
        "gpu:\n  nvml_library: {}\n  poll_interval: 1s\n{extra}queues:\n  enabled: false\n",
        fake.lib_str()
    )
}

/// The owner labels of a process no unit, container or service holds.
const OWNERLESS: &str = ",service=\"\",unit=\"\",container=\"\",compose_project=\"\",compose_service=\"\"";

/// `config` with per-process series, attributed against an empty `/proc`
/// (the fake's pids are not this machine's) and no Docker socket.
fn per_process_config(fake: &FakeGpus, proc_root: &tempfile::TempDir) -> String {
    std::fs::create_dir_all(proc_root.path().join("self")).unwrap();
    format!(
        "{}attribution:\n  proc_root: {}\n  docker_socket: \"\"\n",
        config(fake, "  per_process: true\n  slow_interval: 1s\n"),
        proc_root.path().display()
    )
}

fn series(name: &str, gpu: u32, extra: &str) -> String {
    format!("{name}{{gpu=\"{gpu}\",uuid=\"GPU-0000000{gpu}-1111-2222-3333-444444444444\"{extra}}}")
}

/// `gpus_state(n)` with `extra` lines, under the profile `name` (the
/// state's own driver version dropped, so the profile's wins).
fn profiled(n: u32, name: &str, extra: &str) -> String {
    let body: String = gpus_state(n)
        .lines()
        .filter(|l| !l.starts_with("driver_version "))
        .map(|l| format!("{l}\n"))
        .collect();
    format!("profile {}\n{body}{extra}", profile_path(name).display())
}

fn per_gpu(calls: &HashMap<String, u64>, name: &str, gpus: u64) -> u64 {
    calls.get(name).copied().unwrap_or(0) / gpus
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpm_values_appear_as_ratios_and_bytes_once_per_slow_tick() {
    let fake = FakeGpus::new(Driver::Current, &profiled(2, "h100-sxm-580", ""));
    let d = Daemon::start(&config(&fake, "  slow_interval: 3s\n"), &[]).await;
    let page = eventually("GPM series", LIMIT, || async {
        let page = d.get_text("/metrics").await;
        page.contains("gpu_sm_active_ratio{").then_some(page)
    })
    .await;
    // The fake answers like the H100 under a bf16 matmul, in the driver's
    // units (percent, MiB/s); ours are ratios and bytes per second.
    let v = |name: &str, extra: &str| sample_value(&page, &series(name, 0, extra)).map(|x| (x * 1e6).round() / 1e6);
    assert_eq!(v("gpu_sm_active_ratio", ""), Some(0.963));
    assert_eq!(v("gpu_sm_occupancy_ratio", ""), Some(0.142));
    assert_eq!(v("gpu_tensor_active_ratio", ""), Some(0.934));
    assert_eq!(v("gpu_dram_active_ratio", ""), Some(0.257));
    assert_eq!(v("gpu_graphics_engine_active_ratio", ""), Some(0.996));
    assert_eq!(v("gpu_pipe_active_ratio", ",pipe=\"tensor_hmma\""), Some(0.934));
    assert_eq!(v("gpu_pipe_active_ratio", ",pipe=\"integer\""), Some(0.014));
    assert_eq!(v("gpu_pipe_active_ratio", ",pipe=\"fp32\""), Some(0.0));
    assert_eq!(
        v("gpu_pcie_throughput_bytes_per_second", ",direction=\"rx\""),
        Some(((19.6 * 1024.0 * 1024.0) * 1e6_f64).round() / 1e6)
    );
    // The H100 profile has no NVLink: no NVLink series, and GPM is not
    // asked for NVLink traffic.
    assert!(!page.contains("gpu_nvlink_throughput_bytes_per_second{"), "{page}");
    // Measured facts from the profile and the state.
    assert_eq!(
        v("gpu_temperature_threshold_celsius", ",threshold=\"slowdown\""),
        Some(89.0)
    );
    assert_eq!(v("gpu_clock_max_hz", ",clock=\"sm\""), Some(1.98e9));
    assert_eq!(v("gpu_memory_temperature_celsius", ""), Some(51.0));
    assert_eq!(v("gpu_pcie_link_generation", ""), Some(5.0));
    assert_eq!(v("gpu_pcie_link_width", ""), Some(16.0));
    assert_eq!(v("gpu_remapped_rows_pending", ""), Some(0.0));
    assert_eq!(
        sample_value(&page, "inferwatch_collector_success{collector=\"gpu\"}"),
        Some(1.0)
    );

    // Cadence from the fake's own counts: one nvmlGpmMetricsGet per GPU per
    // slow tick (the energy counter is read once per slow tick too; GPM's
    // first metrics come one poll after its first sample), one sample more
    // than metric reads, and exactly one live sample per GPU between ticks.
    let calls = polls(&fake, finished(&fake.calls()) + 7).await;
    let energy = per_gpu(&calls, "nvmlDeviceGetTotalEnergyConsumption", 2);
    let metrics = per_gpu(&calls, "nvmlGpmMetricsGet", 2);
    assert!(energy >= 3, "{calls:?}");
    assert!(
        metrics == energy || metrics + 1 == energy,
        "GPM {metrics} vs energy {energy}"
    );
    assert!(metrics < finished(&calls) / 2, "GPM is not read every poll: {calls:?}");
    assert_eq!(per_gpu(&calls, "nvmlGpmSampleGet", 2), metrics + 1);
    let live = calls["nvmlGpmSampleAlloc"] - calls["nvmlGpmSampleFree"];
    assert_eq!(live, 2, "one kept sample per GPU, the rest freed: {calls:?}");
    assert_eq!(calls["nvmlDeviceGetNvLinkState"], 2, "NVLink is a static field");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gpu_lost_between_samples_starts_over_and_frees_its_sample() {
    let state = profiled(1, "h100-sxm-580", "");
    let fake = FakeGpus::new(Driver::Current, &state);
    let d = Daemon::start(&config(&fake, "  slow_interval: 1s\n"), &[]).await;
    let has_gpm = |page: &str| sample_value(page, &series("gpu_sm_active_ratio", 0, "")).is_some();
    eventually("GPM series", LIMIT, || async {
        has_gpm(&d.get_text("/metrics").await).then_some(())
    })
    .await;
    fake.set(&format!("{state}0.lost 1\n"));
    eventually("the GPU to be gone", LIMIT, || async {
        let page = d.get_text("/metrics").await;
        (sample_value(&page, "gpu_devices") == Some(0.0) && !has_gpm(&page)).then_some(())
    })
    .await;
    let gone = polls(&fake, finished(&fake.calls()) + 1).await;
    assert_eq!(
        gone["nvmlGpmSampleAlloc"], gone["nvmlGpmSampleFree"],
        "a lost GPU's sample is freed: {gone:?}"
    );
    let metrics_before = gone["nvmlGpmMetricsGet"];
    fake.set(&state);
    eventually("GPM back after the GPU returns", LIMIT, || async {
        has_gpm(&d.get_text("/metrics").await).then_some(())
    })
    .await;
    let back = polls(&fake, finished(&fake.calls()) + 1).await;
    // Starting over: a new first sample, then metrics from two new samples.
    assert!(back["nvmlGpmSampleGet"] >= gone["nvmlGpmSampleGet"] + 2, "{back:?}");
    assert!(back["nvmlGpmMetricsGet"] > metrics_before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_card_without_gpm_has_no_gpm_series_and_no_warning() {
    let fake = FakeGpus::new(Driver::Current, &profiled(1, "rtx-a5500-580", ""));
    let d = Daemon::start(&config(&fake, "  slow_interval: 1s\n"), &[]).await;
    let calls = polls(&fake, 4).await;
    let page = d.get_text("/metrics").await;
    for name in [
        "gpu_sm_active_ratio",
        "gpu_tensor_active_ratio",
        "gpu_pipe_active_ratio",
        "gpu_pcie_throughput_bytes_per_second",
        // No HBM and no row remapping on this class of card.
        "gpu_memory_temperature_celsius",
        "gpu_remapped_rows",
    ] {
        assert!(!page.contains(&format!("{name}{{")), "{name}: {page}");
    }
    assert_eq!(calls["nvmlGpmQueryDeviceSupport"], 1, "asked once, as a static field");
    assert_eq!(calls["nvmlGpmSampleGet"], 0, "never sampled");
    assert_eq!(
        sample_value(&page, "inferwatch_collector_success{collector=\"gpu\"}"),
        Some(1.0)
    );
    // Everything else is there.
    assert_eq!(
        sample_value(&page, &series("gpu_pcie_link_generation", 0, "")),
        Some(5.0)
    );
    let warned = d.gpu_warnings();
    assert!(warned.is_empty(), "{warned:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_process_sm_follows_the_process_list_and_exited_processes_disappear() {
    let procs = "0.procs 4242:5368709120:python3;5151:1073741824:tritonserver\n\
                 0.proc_util 4242:96:25;5151:3:1\n";
    let state = profiled(1, "h100-sxm-580", "");
    let fake = FakeGpus::new(Driver::Current, &format!("{state}{procs}"));
    let proc_root = tempfile::tempdir().unwrap();
    let d = Daemon::start(&per_process_config(&fake, &proc_root), &[]).await;
    let sm = |page: &str, pid: u32, name: &str| {
        sample_value(
            page,
            &series(
                "gpu_process_sm_utilization_ratio",
                0,
                &format!(",pid=\"{pid}\",process_name=\"{name}\"{OWNERLESS}"),
            ),
        )
    };
    let page = eventually("per-process SM series", LIMIT, || async {
        let page = d.get_text("/metrics").await;
        sm(&page, 5151, "tritonserver").is_some().then_some(page)
    })
    .await;
    assert_eq!(sm(&page, 4242, "python3"), Some(0.96));
    assert_eq!(sm(&page, 5151, "tritonserver"), Some(0.03));
    assert_eq!(
        sample_value(
            &page,
            &series(
                "gpu_process_memory_utilization_ratio",
                0,
                &format!(",pid=\"4242\",process_name=\"python3\"{OWNERLESS}")
            )
        ),
        Some(0.25)
    );
    // tritonserver exits: its memory and utilization series go together.
    fake.set(&format!(
        "{state}0.procs 4242:5368709120:python3\n0.proc_util 4242:90:20\n"
    ));
    let page = eventually("the exited process to disappear", LIMIT, || async {
        let page = d.get_text("/metrics").await;
        (!page.contains("pid=\"5151\"") && sm(&page, 4242, "python3") == Some(0.9)).then_some(page)
    })
    .await;
    assert!(page.contains("gpu_process_memory_used_bytes{"));
    // Idle: the driver answers NOT_FOUND, which is no error.
    fake.set(&format!("{state}0.procs 4242:5368709120:python3\n"));
    let page = eventually("no utilization series when idle", LIMIT, || async {
        let page = d.get_text("/metrics").await;
        (!page.contains("gpu_process_sm_utilization_ratio{")).then_some(page)
    })
    .await;
    assert!(
        !page.contains("call=\"processes_utilization_info\",error="),
        "NOT_FOUND is not counted as an error: {page}"
    );
    assert_eq!(
        sample_value(&page, "inferwatch_collector_success{collector=\"gpu\"}"),
        Some(1.0)
    );
    let calls = polls(&fake, finished(&fake.calls()) + 1).await;
    assert!(calls["nvmlDeviceGetProcessesUtilizationInfo"] >= 2);
    assert_eq!(calls["nvmlDeviceGetProcessUtilization"], 0, "the newer call is used");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_driver_without_the_newer_call_falls_back_to_process_utilization() {
    let state = format!(
        "{}0.procs 4242:5368709120:python3\n0.proc_util 4242:77:12\n",
        gpus_state(1)
    );
    let fake = FakeGpus::new(Driver::Old, &state);
    let proc_root = tempfile::tempdir().unwrap();
    let d = Daemon::start(&per_process_config(&fake, &proc_root), &[]).await;
    let key = series(
        "gpu_process_sm_utilization_ratio",
        0,
        &format!(",pid=\"4242\",process_name=\"python3\"{OWNERLESS}"),
    );
    let v = eventually("per-process SM from the older call", LIMIT, || async {
        sample_value(&d.get_text("/metrics").await, &key)
    })
    .await;
    assert_eq!(v, 0.77);
    let calls = polls(&fake, finished(&fake.calls()) + 1).await;
    assert!(calls["nvmlDeviceGetProcessUtilization"] >= 1, "{calls:?}");
}

/// The clock-event counter of `reason` on GPU 0, and the time of the poll
/// that read it (the collector's last success).
async fn clock_event(d: &Daemon, reason: &str) -> (f64, f64) {
    let page = d.get_text("/metrics").await;
    let v = sample_value(
        &page,
        &format!("gpu_clock_event_seconds_total{{gpu=\"0\",uuid=\"{UUID0}\",reason=\"{reason}\"}}"),
    )
    .unwrap_or_else(|| panic!("no {reason} counter: {page}"));
    let at = sample_value(
        &page,
        "inferwatch_collector_last_success_timestamp_seconds{collector=\"gpu\"}",
    )
    .unwrap();
    (v, at)
}

/// Waits for the next poll after `after` (by the collector's timestamp).
async fn next_reading(d: &Daemon, reason: &str, after: f64) -> (f64, f64) {
    eventually("the next poll", LIMIT, || async {
        let r = clock_event(d, reason).await;
        (r.1 > after).then_some(r)
    })
    .await
}

async fn clock_events_follow_the_throttle_mask(profile: Option<&str>, reason: &str, bit: &str) {
    let base = match profile {
        Some(p) => profiled(1, p, ""),
        None => gpus_state(1),
    };
    // No reason active at first (gpus_state's 0x4 replaced).
    let fake = FakeGpus::new(Driver::Current, &format!("{base}0.throttle 0x0\n"));
    let d = Daemon::start(&config(&fake, ""), &[]).await;
    eventually("a clock-event counter", LIMIT, || async {
        let page = d.get_text("/metrics").await;
        page.contains("gpu_clock_event_seconds_total{").then_some(())
    })
    .await;
    let (idle, t0) = clock_event(&d, reason).await;
    let (still, _) = next_reading(&d, reason, t0).await;
    assert_eq!(still, idle, "no growth while {reason} is inactive");

    fake.set(&format!("{base}0.throttle {bit}\n"));
    // Readings over several polls: monotonic, and growing at the rate time
    // passes (the reason is active all the time).
    let (mut last, mut at) = eventually("the counter to grow", LIMIT, || async {
        let r = clock_event(&d, reason).await;
        (r.0 > idle).then_some(r)
    })
    .await;
    let (start, started) = (last, at);
    for _ in 0..3 {
        let (v, t) = next_reading(&d, reason, at).await;
        assert!(v >= last, "{reason} went backwards: {last} -> {v}");
        (last, at) = (v, t);
    }
    let rate = (last - start) / (at - started);
    assert!((0.7..=1.3).contains(&rate), "{reason} grew {rate} s per s");
    // The other reasons stay still.
    let other = if reason == "sw_power_cap" {
        "sync_boost"
    } else {
        "sw_power_cap"
    };
    assert_eq!(clock_event(&d, other).await.0, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clock_event_counters_grow_only_while_the_reason_is_active() {
    clock_events_follow_the_throttle_mask(None, "sw_power_cap", "0x4").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clock_event_field_ids_follow_the_driver_numbering() {
    // Driver 580.159: the thermal and power-brake durations are 269-271 on
    // the wire; the counter is found only if the IDs are translated.
    clock_events_follow_the_throttle_mask(Some("h100-sxm-580"), "hw_thermal_slowdown", "0x40").await;
}
