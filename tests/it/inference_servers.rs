//! The inference itself, against real servers (tests/it/common/llm.rs):
//! llama.cpp's `llama-server` and vLLM's CPU build, each serving a tiny
//! model, found by a real Prometheus through the daemon's HTTP SD and
//! scraped through its proxy, with `monitoring/inference_rules.yml` (and
//! `alert_rules.yml`) loaded.
//!
//! - llama.cpp: its tokens per second equal the rate of its own counter;
//!   its process, attributed to a fake GPU whose energy counter the test
//!   drives at a known power, is charged every joule; tokens per joule
//!   agree with the server's tokens over the GPU's joules; the Inference
//!   dashboard's token panels have data. Then SIGSTOP: `/health` hangs, the
//!   timeouts count, and at the threshold one restart brings it back.
//! - vLLM (vllm#39863): under load, SIGSTOP of its EngineCore alone leaves
//!   `/health` and `/metrics` answering while no token is generated; the
//!   daemon says `stalled`, `ServiceStalled` fires, one real restart brings
//!   a new vLLM, the alert resolves, and the series go on from the new
//!   process.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;

const LIMIT: Duration = Duration::from_secs(60);
/// The fake GPU's draw while the test drives its energy counter.
const WATTS: u64 = 100;
const ENERGY0_MJ: u64 = 5_000_000;

/// Completion requests from `workers` clients, back to back, until
/// stopped; errors (a stopped server) are retried, not fatal.
struct Load {
    stop: Arc<AtomicBool>,
    tokens: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(base_url: &str, workers: usize, max_tokens: u32) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let tokens = Arc::new(AtomicU64::new(0));
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        let body = serde_json::json!({
            "model": LLM_MODEL, "prompt": "Once upon a time", "max_tokens": max_tokens,
            "temperature": 0, "ignore_eos": true,
        });
        let tasks = (0..workers)
            .map(|_| {
                let (stop, tokens, client, body) = (stop.clone(), tokens.clone(), client.clone(), body.clone());
                let url = format!("{base_url}/v1/completions");
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let sent = client.post(&url).json(&body).send().await;
                        let Ok(r) = sent else {
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            continue;
                        };
                        if let Ok(v) = r.json::<serde_json::Value>().await {
                            tokens.fetch_add(v["usage"]["completion_tokens"].as_u64().unwrap_or(0), Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        Load { stop, tokens, tasks }
    }

    /// Stops, waits for the requests in flight; the tokens served.
    async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        self.tokens.load(Ordering::Relaxed)
    }
}

/// The fake GPU 0 with `pid` (the server) holding 1 GiB and its energy
/// counter at `mj`.
fn gpu_state(pid: i32, mj: u64) -> String {
    let state = gpus_state(1).replace("0.energy_mj 123456789", &format!("0.energy_mj {mj}"));
    format!("{state}0.procs {pid}:{}:server\n", 1u64 << 30)
}

/// Drives the fake GPU's energy counter at [`WATTS`] from [`ENERGY0_MJ`]
/// until stopped; the last value written, in mJ.
struct Ramp {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<u64>,
}

impl Ramp {
    fn start(fake: Arc<FakeGpus>, pid: i32) -> Ramp {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let task = tokio::spawn(async move {
            let t0 = Instant::now();
            loop {
                let mj = ENERGY0_MJ + t0.elapsed().as_millis() as u64 * WATTS;
                fake.set(&gpu_state(pid, mj));
                if s.load(Ordering::Relaxed) {
                    return mj;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        Ramp { stop, task }
    }

    async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

/// The value of the one series `q` selects, once it exists.
async fn value(prom: &Prometheus, q: &str) -> f64 {
    eventually(q, LIMIT, || async {
        let r = prom.query(q).await;
        r.first().and_then(|s| s["value"][1].as_str()?.parse::<f64>().ok())
    })
    .await
}

/// A value of the record `q` and the time its rule evaluation stamped it,
/// taken 5 s back, so that every scrape before it has been ingested (a
/// scrape's samples carry its start time, and a busy server's page comes
/// later).
async fn sample(prom: &Prometheus, q: &str) -> (f64, f64) {
    let range = format!("{q}[20s]");
    eventually(q, LIMIT, || async {
        let now = unix_now();
        let r = prom.query(&range).await;
        let values = r.first()?["values"].as_array()?.clone();
        values.iter().rev().find_map(|v| {
            let at = v[0].as_f64()?;
            (at <= now - 5.0).then(|| Some((v[1].as_str()?.parse().ok()?, at)))?
        })
    })
    .await
}

/// The value of `q` evaluated at Unix time `at`.
async fn value_at(prom: &Prometheus, q: &str, at: f64) -> f64 {
    let r = query_at(prom.port, q, Some(at)).await;
    r.first()
        .and_then(|s| s["value"][1].as_str()?.parse().ok())
        .unwrap_or_else(|| panic!("{q} at {at}: {r:?}"))
}

fn near(got: f64, want: f64, tolerance: f64, what: &str) {
    assert!(
        want > 0.0 && ((got - want) / want).abs() <= tolerance,
        "{what}: {got} against {want} (tolerance {tolerance})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llama_server_through_the_daemon_has_its_tokens_per_second_and_per_joule_in_prometheus() {
    let llama = LlamaServer::start().await;
    let fake = Arc::new(FakeGpus::new(Driver::Current, &gpu_state(llama.pid(), ENERGY0_MJ)));
    let cfg = format!(
        "gpu:\n  nvml_library: {}\n  poll_interval: 1s\n  slow_interval: 1s\n  per_process: true\n\
         queues:\n  enabled: false\nattribution:\n  docker_socket: \"\"\nhealth:\n  services:\n\
         \x20   - {{name: llm, kind: http, url: \"{}\", metrics_url: \"{}\", server: llamacpp, interval: 1s, timeout: 2s, match: {{pid_file: {}}}}}\n",
        fake.lib_str(),
        llama.health_url(),
        llama.metrics_url(),
        llama.pid_file()
    );
    // The daemon and Prometheus run first; the server is added to the
    // config by a reload, and scraped through the daemon within a minute
    // with no Prometheus edit.
    let without = cfg.split("health:").next().unwrap().to_string();
    let d = Daemon::start(&without, &[]).await;
    let prom = Prometheus::for_inference(d.port, &[]).await;
    d.rewrite(&cfg);
    d.sighup();
    eventually(
        "llama-server scraped through the daemon",
        Duration::from_secs(60),
        || async {
            let q = "up{job=\"inference\",service=\"llm\",server=\"llamacpp\",gpu=\"0\"} == 1";
            (!prom.query(q).await.is_empty()).then_some(())
        },
    )
    .await;
    // The daemon has its baseline reading, with the server's process on GPU 0.
    let service_energy =
        "gpu_service_energy_joules_total{gpu=\"0\",uuid=\"GPU-00000000-1111-2222-3333-444444444444\",service=\"llm\"}";
    d.until(service_energy, "llm holding GPU 0", |j| j == 0.0).await;
    let ramp = Ramp::start(fake.clone(), llama.pid());
    let load = Load::start(&llama.base_url(), 4, 32);
    eventually("20 samples of llama.cpp's token counter", Duration::from_secs(120), || async {
        let q = "count_over_time(llamacpp:tokens_predicted_total{job=\"inference\",service=\"llm\",server=\"llamacpp\"}[5m]) >= 20";
        (!prom.query(q).await.is_empty()).then_some(())
    })
    .await;

    // Output tokens per second are the rate of the server's own counter,
    // both at the instant the rule evaluated.
    let (record, at) = sample(
        &prom,
        "inference:output_tokens:rate5m{service=\"llm\",server=\"llamacpp\"}",
    )
    .await;
    let own = value_at(
        &prom,
        "sum(rate(llamacpp:tokens_predicted_total{service=\"llm\"}[5m]))",
        at,
    )
    .await;
    near(
        record,
        own,
        0.01,
        "inference:output_tokens:rate5m against the server's counter",
    );
    // Tokens per joule: the server's tokens over the fake GPU's joules,
    // all of which its process is charged for (checked to the joule below),
    // over the same window as the service's counter.
    let (per_joule, at) = sample(&prom, "inference:output_tokens_per_joule{service=\"llm\"}").await;
    let own = value_at(
        &prom,
        "sum(rate(llamacpp:tokens_predicted_total{service=\"llm\"}[5m]))",
        at,
    )
    .await;
    let joules = value_at(
        &prom,
        "sum(rate(gpu_service_energy_joules_total{job=\"inferwatch\",service=\"llm\"}[5m]))",
        at,
    )
    .await;
    // The test itself drives the counter at WATTS (a 5m rate divides by
    // the whole window while the series is younger than it, so look at 10 s).
    let power = value(
        &prom,
        "sum(rate(gpu_service_energy_joules_total{job=\"inferwatch\",service=\"llm\"}[10s]))",
    )
    .await;
    near(power, WATTS as f64, 0.1, "the service's power from its counter");
    near(per_joule, own / joules, 0.02, "inference:output_tokens_per_joule");
    let (wh, at) = sample(&prom, "inference:energy_per_million_output_tokens_wh{service=\"llm\"}").await;
    let per_joule = value_at(&prom, "inference:output_tokens_per_joule{service=\"llm\"}", at).await;
    near(
        wh,
        1e6 / per_joule / 3600.0,
        1e-9,
        "inference:energy_per_million_output_tokens_wh",
    );
    inference_panels_have_data(&prom, LLAMA_PANELS).await;

    every_joule_and_token_counted(&d, &llama, load, ramp, service_energy).await;
}

/// After the load and the ramp stop: every joule the counter moved after
/// the baseline is the service's, and the server counted exactly the
/// tokens its answers reported.
async fn every_joule_and_token_counted(d: &Daemon, llama: &LlamaServer, load: Load, ramp: Ramp, service_energy: &str) {
    let served = load.finish().await;
    let last_mj = ramp.finish().await;
    let gpu_energy = "gpu_energy_joules_total{gpu=\"0\",uuid=\"GPU-00000000-1111-2222-3333-444444444444\"}";
    d.until(gpu_energy, "the daemon reads the last counter value", |j| {
        (j - last_mj as f64 / 1000.0).abs() < 1e-6
    })
    .await;
    let page = d.get_text("/metrics").await;
    let charged = sample_value(&page, service_energy).unwrap();
    let moved = (last_mj - ENERGY0_MJ) as f64 / 1000.0;
    assert!(
        (charged - moved).abs() < 1e-6,
        "charged {charged} J, the counter moved {moved} J"
    );
    let unattributed =
        "gpu_unattributed_energy_joules_total{gpu=\"0\",uuid=\"GPU-00000000-1111-2222-3333-444444444444\"}";
    assert_eq!(sample_value(&page, unattributed), Some(0.0));
    let own_total = sample_value(&llama.metrics().await, "llamacpp:tokens_predicted_total").unwrap();
    assert_eq!(own_total, served as f64);
}

/// The Inference dashboard's panels whose queries both server tests run:
/// tokens and energy (their processes hold a fake GPU there).
const LLAMA_PANELS: &[&str] = &[
    "Tokens per second",
    "Output tokens per joule",
    "Energy per million output tokens",
];
/// The rest, which the vLLM test runs too: latency, load, outcomes and SLOs.
const VLLM_PANELS: &[&str] = &[
    "Time to first token",
    "Time per output token",
    "Request duration",
    "Queue time",
    "Requests running and waiting",
    "KV cache used",
    "Preemptions",
    "Requests by outcome",
    "Error ratio",
    "Error budget left",
];

fn inference_dashboard() -> (String, serde_json::Value) {
    crate::common::dashboards::dashboards()
        .into_iter()
        .find(|(f, _)| f.ends_with("inferwatch-inference.json"))
        .expect("grafana-dashboards/inferwatch-inference.json")
}

#[test]
fn the_two_server_tests_cover_every_inference_dashboard_panel() {
    let (_, d) = inference_dashboard();
    let mut titles: Vec<&str> = crate::common::dashboards::panels(&d)
        .into_iter()
        .filter(|p| p["targets"].as_array().is_some_and(|t| !t.is_empty()))
        .map(|p| p["title"].as_str().unwrap())
        .collect();
    titles.sort_unstable();
    let mut covered: Vec<&str> = LLAMA_PANELS.iter().chain(VLLM_PANELS).copied().collect();
    covered.sort_unstable();
    assert_eq!(titles, covered);
}

/// Every query of the Inference dashboard's panels named `titles` returns
/// data, with its variables resolved against `prom`.
async fn inference_panels_have_data(prom: &Prometheus, titles: &[&str]) {
    let (file, d) = inference_dashboard();
    let vars = crate::common::dashboards::resolve_variables(prom, &file, &d).await;
    let mut ran = 0;
    for p in crate::common::dashboards::panels(&d) {
        if !titles.contains(&p["title"].as_str().unwrap_or("")) {
            continue;
        }
        for t in p["targets"].as_array().unwrap() {
            let expr = crate::common::dashboards::substitute(t["expr"].as_str().unwrap(), &vars);
            eventually(&format!("{}: {expr}", p["title"]), LIMIT, || {
                let expr = &expr;
                async move { (!prom.query(expr).await.is_empty()).then_some(()) }
            })
            .await;
            ran += 1;
        }
    }
    assert!(ran >= titles.len(), "{ran} queries for {titles:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llama_server_stopped_hangs_its_health_check_and_is_restarted_once_at_the_threshold() {
    let llama = LlamaServer::start().await;
    let restart = serde_json::to_string(&llama.restart_command()).unwrap();
    let cfg = format!(
        "gpu:\n  enabled: false\nqueues:\n  enabled: false\nhealth:\n  services:\n\
         \x20   - {{name: llm, kind: http, url: \"{}\", metrics_url: \"{}\", server: llamacpp, interval: 1s, timeout: 1s, \
         failure_threshold: 3, start_period: 60s, restart: {{command: {restart}, grace_period: 1s}}}}\n",
        llama.health_url(),
        llama.metrics_url()
    );
    let d = Daemon::start(&cfg, &[]).await;
    d.until("service_up{service=\"llm\"}", "llm healthy", |v| v == 1.0)
        .await;
    let first = llama.pid();
    llama.signal("-STOP");
    // A hang is a timeout, counted, and below the threshold no restart.
    d.until(
        "service_check_failures_total{reason=\"timeout\",service=\"llm\"}",
        "a timed-out check",
        |v| v >= 1.0,
    )
    .await;
    assert_eq!(llama.restarts(), 0, "one timeout is a data point, not a verdict");
    // At the threshold: one restart, and the new server passes.
    eventually("the restart", LIMIT, || async { (llama.restarts() == 1).then_some(()) }).await;
    d.until("service_up{service=\"llm\"}", "llm healthy again", |v| v == 1.0)
        .await;
    assert_ne!(llama.pid(), first);
    assert!(!is_alive(first), "the stopped server is gone");
    let checks = "service_health_check_duration_seconds_count{service=\"llm\"}";
    let now = d.until(checks, "checks", |_| true).await;
    d.until(checks, "five more checks", |v| v >= now + 5.0).await;
    assert_eq!(llama.restarts(), 1, "no second restart");
    let page = d.get_text("/metrics").await;
    assert_eq!(
        sample_value(&page, "service_restarts_total{result=\"success\",service=\"llm\"}"),
        Some(1.0),
        "{page}"
    );
    assert!(d
        .get_text("/proxy/llm/metrics")
        .await
        .contains("llamacpp:tokens_predicted_total"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vllm_engine_core_stopped_under_load_is_a_stall_that_fires_and_resolves_with_one_real_restart() {
    let vllm = Vllm::start().await;
    // Its API server holds the fake GPU 0 (its pid file names it).
    let fake = Arc::new(FakeGpus::new(Driver::Current, &gpu_state(vllm.pid(), ENERGY0_MJ)));
    let restart = serde_json::to_string(&vllm.restart_command()).unwrap();
    let cfg = format!(
        "gpu:\n  nvml_library: {}\n  poll_interval: 1s\n  slow_interval: 1s\n  per_process: true\n\
         queues:\n  enabled: false\nattribution:\n  docker_socket: \"\"\nhealth:\n  services:\n\
         \x20   - {{name: vllm, kind: http, url: \"{}\", metrics_url: \"{}\", server: vllm, interval: 1s, timeout: 3s, \
         failure_threshold: 3, start_period: 180s, progress: {{preset: vllm, stall_after: 15s}}, \
         restart: {{command: {restart}, timeout: 120s, grace_period: 1s}}, match: {{pid_file: {}}}}}\n",
        fake.lib_str(),
        vllm.health_url(),
        vllm.metrics_url(),
        vllm.pid_file()
    );
    // SLOs on it: their rules are what `inferwatch slo-rules` prints.
    let cfg = format!(
        "{cfg}slo:\n  services:\n    - service: vllm\n      availability: {{objective: 0.99}}\n\
         \x20     latency: {{measure: time_to_first_token, threshold: 0.5, objective: 0.99}}\n"
    );
    let d = Daemon::start(&cfg, &[]).await;
    let slo_rules = slo_rules(&d);
    let prom = Prometheus::for_inference(d.port, &[&slo_rules]).await;
    let ramp = Ramp::start(fake.clone(), vllm.pid());
    let load = Load::start(&vllm.base_url(), 6, 32);
    vllm_is_normalized(&prom, &d, &vllm).await;
    // Its tokens per joule, and the dashboard's token and energy panels.
    value(
        &prom,
        "inference:output_tokens_per_joule{service=\"vllm\",server=\"vllm\"} > 0",
    )
    .await;
    inference_panels_have_data(&prom, LLAMA_PANELS).await;
    engine_core_stop_is_a_stall_and_one_restart(&prom, &d, &vllm).await;
    load.finish().await;
    ramp.finish().await;
}

/// What `inferwatch slo-rules` prints for the daemon's config.
fn slo_rules(d: &Daemon) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_inferwatch"))
        .args(["slo-rules", "--config"])
        .arg(d.dir.path().join("inferwatch.yml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// The normalized series and the SLIs from vLLM's own through the proxy;
/// the dashboard's panels; the scraper's Accept passed on.
async fn vllm_is_normalized(prom: &Prometheus, d: &Daemon, vllm: &Vllm) {
    for record in [
        "inference:time_to_first_token_seconds:p99",
        "inference:time_per_output_token_seconds:p99",
        "inference:request_duration_seconds:p99",
        "inference:queue_time_seconds:p99",
        "inference:requests_running",
        "inference:requests_waiting",
        "inference:kv_cache_usage:ratio",
        "inference:output_tokens:rate5m",
        "inference:input_tokens:rate5m",
    ] {
        value(prom, &format!("{record}{{service=\"vllm\",server=\"vllm\"}}")).await;
    }
    value(
        prom,
        "inference:requests:rate5m{service=\"vllm\",outcome=\"success\"} > 0",
    )
    .await;
    for slo in ["vllm-availability", "vllm-latency"] {
        value(
            prom,
            &format!("slo:sli_error:ratio_rate5m{{slo=\"{slo}\",service=\"vllm\"}}"),
        )
        .await;
    }
    inference_panels_have_data(prom, VLLM_PANELS).await;
    // vLLM's answer comes back as it is: the same Content-Type as asked
    // directly (vLLM 0.32 answers text 1.0.0 even to an OpenMetrics Accept).
    let accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5";
    let content_type = |url: String| async move {
        let r = reqwest::Client::new()
            .get(url)
            .header("Accept", accept)
            .send()
            .await
            .unwrap();
        r.headers()["content-type"].to_str().unwrap().to_string()
    };
    assert_eq!(
        content_type(d.url("/proxy/vllm/metrics")).await,
        content_type(vllm.metrics_url()).await
    );
}

/// SIGSTOPs the EngineCore at a moment its last published step had work
/// running or waiting (its gauges freeze with it): a stop between two
/// batches, with nothing pending, is no stall, so it is let go
/// (SIGCONT), and tried again once a token more was generated.
async fn stop_with_work_in_flight(vllm: &Vllm, engine: i32) {
    let kill = |sig: &str| {
        let ok = std::process::Command::new("kill")
            .args([sig, &engine.to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} {engine}");
    };
    for _ in 0..20 {
        kill("-STOP");
        let page = vllm.metrics().await;
        if page_sum(&page, &["vllm:num_requests_running", "vllm:num_requests_waiting"]) > 0.0 {
            return;
        }
        let tokens = page_sum(&page, &["vllm:generation_tokens_total"]);
        kill("-CONT");
        eventually("a token more", LIMIT, || async {
            (page_sum(&vllm.metrics().await, &["vllm:generation_tokens_total"]) > tokens).then_some(())
        })
        .await;
    }
    panic!("vLLM had nothing in flight at 20 stops under load");
}

/// vllm#39863: the engine stops, the API server still answers. Stalled,
/// ServiceStalled fires, one restart brings a new vLLM, the alert
/// resolves, the series go on from the new process, and no second restart.
async fn engine_core_stop_is_a_stall_and_one_restart(prom: &Prometheus, d: &Daemon, vllm: &Vllm) {
    let engine = vllm.engine_core_pid().expect("vLLM's EngineCore");
    let api = vllm.pid();
    let stopped_at = unix_now();
    stop_with_work_in_flight(vllm, engine).await;
    d.until("service_stalled{service=\"vllm\"}", "the stall", |v| v == 1.0)
        .await;
    assert_eq!(
        reqwest::get(vllm.health_url()).await.unwrap().status(),
        200,
        "/health still answers"
    );
    value(
        prom,
        "ALERTS{alertname=\"ServiceStalled\",alertstate=\"firing\",service=\"vllm\"}",
    )
    .await;
    eventually("the restart", Duration::from_secs(120), || async {
        (vllm.restarts() == 1).then_some(())
    })
    .await;
    d.until("service_up{service=\"vllm\"}", "vllm healthy again", |v| v == 1.0)
        .await;
    d.until("service_stalled{service=\"vllm\"}", "no stall", |v| v == 0.0)
        .await;
    assert_ne!(vllm.pid(), api);
    assert!(!is_alive(engine) && !is_alive(api), "the old processes are gone");
    eventually("ServiceStalled resolved", LIMIT, || async {
        let q = "ALERTS{alertname=\"ServiceStalled\",service=\"vllm\"}";
        prom.query(q).await.is_empty().then_some(())
    })
    .await;
    // The series go on from the new process: a counter created after the
    // stop (prometheus_client's `_created`), and growing. (Its `gpu` label
    // is new too: the fake GPU lists the old process only.)
    let q = format!(
        "vllm:generation_tokens_total{{service=\"vllm\"}} > 0 \
         and on (instance, service) vllm:generation_tokens_created{{service=\"vllm\"}} > {stopped_at}"
    );
    value(prom, &q).await;
    let checks = "service_health_check_duration_seconds_count{service=\"vllm\"}";
    let now = d.until(checks, "checks", |_| true).await;
    d.until(checks, "ten more checks", |v| v >= now + 10.0).await;
    assert_eq!(vllm.restarts(), 1, "no second restart");
}
