//! The health monitor against a real inference server: MLServer (installed
//! by scripts/test into target/mlserver) serving a tiny scikit-learn model
//! trained here, through a runtime whose `load()` takes 20 s, as a large
//! model's does. Checked with `kind: open_inference` (KServe v2 liveness
//! and readiness), a 60 s start period and a failure threshold of 3; faults
//! are SIGSTOP (a server that stops answering) and MLServer's own
//! repository API (a model unloaded).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::{eventually, free_port, page_sum, sample_value, Daemon, Prometheus};

const LOAD: Duration = Duration::from_secs(60);
const LIMIT: Duration = Duration::from_secs(30);

fn venv() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/mlserver/bin")
}

fn support(file: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/support/mlserver")
        .join(file)
        .display()
        .to_string()
}

/// An MLServer model repository in a temp dir, started and restarted by
/// `restart.sh` (the daemon's restart command too).
struct MlServer {
    dir: tempfile::TempDir,
    http_port: u16,
    metrics_port: u16,
}

impl MlServer {
    /// The iris model behind a runtime whose load takes SLOW_LOAD_SECONDS,
    /// served in MLServer's own process (`parallel_workers: 0`).
    fn new() -> MlServer {
        let server = Self::with_settings(0);
        let model = server.dir.path().join("iris");
        std::fs::create_dir(&model).unwrap();
        std::fs::copy(support("slow_sklearn.py"), server.dir.path().join("slow_sklearn.py")).unwrap();
        let status = std::process::Command::new(venv().join("python"))
            .arg(support("train.py"))
            .arg(model.join("model.joblib"))
            .status()
            .unwrap();
        assert!(status.success(), "training the model failed");
        let model_settings = serde_json::json!({
            "name": "iris",
            "implementation": "slow_sklearn.SlowSKLearnModel",
            "parameters": {"uri": "./model.joblib"},
        });
        std::fs::write(model.join("model-settings.json"), model_settings.to_string()).unwrap();
        server
    }

    /// The `doubler` model (tests/support/mlserver/doubler.py) on one
    /// parallel worker with adaptive batching: what makes MLServer publish
    /// its request queues.
    fn doubler() -> MlServer {
        let server = Self::with_settings(1);
        let model = server.dir.path().join("doubler");
        std::fs::create_dir(&model).unwrap();
        std::fs::copy(support("doubler.py"), server.dir.path().join("doubler.py")).unwrap();
        let model_settings = serde_json::json!({
            "name": "doubler",
            "implementation": "doubler.Doubler",
            "max_batch_size": 4,
            "max_batch_time": 0.05,
        });
        std::fs::write(model.join("model-settings.json"), model_settings.to_string()).unwrap();
        server
    }

    fn with_settings(parallel_workers: u32) -> MlServer {
        assert!(
            venv().join("mlserver").is_file(),
            "MLServer is not installed: run scripts/test, which installs it into target/mlserver"
        );
        let dir = tempfile::tempdir().unwrap();
        let (http_port, metrics_port) = (free_port(), free_port());
        let settings = serde_json::json!({
            "host": "127.0.0.1",
            "http_port": http_port,
            "grpc_port": free_port(),
            "metrics_port": metrics_port,
            "parallel_workers": parallel_workers,
        });
        std::fs::write(dir.path().join("settings.json"), settings.to_string()).unwrap();
        MlServer {
            dir,
            http_port,
            metrics_port,
        }
    }

    fn restart_command(&self) -> Vec<String> {
        let p = |f: &str| self.dir.path().join(f).display().to_string();
        vec![
            "sh".into(),
            support("restart.sh"),
            venv().join("mlserver").display().to_string(),
            self.dir.path().display().to_string(),
            p("mlserver.pid"),
            p("restarts.txt"),
        ]
    }

    /// Starts it the way the restart command does.
    fn start(&self) {
        let cmd = self.restart_command();
        let status = std::process::Command::new(&cmd[0])
            .args(&cmd[1..])
            .env("SLOW_LOAD_SECONDS", "20")
            .status()
            .unwrap();
        assert!(status.success());
        // The test's own start is not a restart.
        std::fs::remove_file(self.dir.path().join("restarts.txt")).unwrap();
    }

    fn pid(&self) -> i32 {
        std::fs::read_to_string(self.dir.path().join("mlserver.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    fn signal(&self, sig: &str) {
        let ok = std::process::Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} failed");
    }

    fn restarts(&self) -> usize {
        std::fs::read_to_string(self.dir.path().join("restarts.txt"))
            .map(|t| t.lines().count())
            .unwrap_or(0)
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }
}

impl Drop for MlServer {
    fn drop(&mut self) {
        // Its parallel workers (its children), then the server, each by its
        // own pid. Never a negative pid: procps' kill takes `-PID` after a
        // signal for something else, and on this machine `kill -9 -PID`
        // took every process of the session down with it.
        let Ok(text) = std::fs::read_to_string(self.dir.path().join("mlserver.pid")) else {
            return;
        };
        let Ok(pid) = text.trim().parse::<i32>() else { return };
        let mut pids: Vec<String> = crate::common::children_of(pid).iter().map(i32::to_string).collect();
        pids.push(pid.to_string());
        let _ = std::process::Command::new("kill").arg("-9").args(&pids).status();
    }
}

async fn metric(d: &Daemon, series: &str) -> Option<f64> {
    sample_value(&d.get_text("/metrics").await, series)
}

async fn health(d: &Daemon) -> serde_json::Value {
    reqwest::get(d.url("/api/system/health"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_loading_a_stopped_and_an_unloaded_model_on_a_real_mlserver() {
    let server = MlServer::new();
    server.start();
    let config = format!(
        "gpu:\n  enabled: false\nhealth:\n  services:\n    - name: iris\n      kind: open_inference\n      url: '{}'\n      models: [iris]\n      interval: 1s\n      timeout: 500ms\n      failure_threshold: 3\n      start_period: 60s\n      backoff_base: 100ms\n      restart:\n        command: {}\n        timeout: 30s\n        grace_period: 0s\n",
        server.url(),
        serde_json::to_string(&server.restart_command()).unwrap()
    );
    let d = Daemon::start_with_args(
        &config,
        &[("SLOW_LOAD_SECONDS", "20")],
        &["--log.format=json", "--log.level=info"],
    )
    .await;

    // 1. The daemon starts while the model loads: live but not ready, then
    //    ready, healthy throughout, never restarted.
    eventually("live while the model loads", LOAD, || async {
        let up = metric(&d, "service_up{service=\"iris\"}").await?;
        let ready = metric(&d, "service_ready{service=\"iris\"}").await?;
        let model = metric(&d, "inference_model_ready{model=\"iris\",service=\"iris\"}").await?;
        let not_ready = metric(
            &d,
            "service_check_failures_total{reason=\"not_ready\",service=\"iris\"}",
        )
        .await?;
        (up == 1.0 && ready == 0.0 && model == 0.0 && not_ready >= 1.0).then_some(())
    })
    .await;
    eventually("the model to be ready", LOAD, || async {
        (metric(&d, "service_ready{service=\"iris\"}").await? == 1.0).then_some(())
    })
    .await;
    assert_eq!(
        metric(&d, "inference_model_ready{model=\"iris\",service=\"iris\"}").await,
        Some(1.0)
    );
    assert_eq!(health(&d).await["services"]["iris"], "healthy");
    assert_eq!(metric(&d, "service_starting{service=\"iris\"}").await, Some(0.0));
    assert_eq!(server.restarts(), 0);

    // 2. Stopped for one check: counted, nothing else.
    server.signal("-STOP");
    eventually("a timed-out check", LIMIT, || async {
        (metric(&d, "service_check_failures_total{reason=\"timeout\",service=\"iris\"}").await? >= 1.0).then_some(())
    })
    .await;
    server.signal("-CONT");
    eventually("a pass after it", LIMIT, || async {
        (metric(&d, "service_consecutive_failures{service=\"iris\"}").await? == 0.0).then_some(())
    })
    .await;
    assert_eq!(server.restarts(), 0, "one failed check restarts nothing");
    assert_eq!(health(&d).await["services"]["iris"], "healthy");

    // 3. Stopped past the threshold: exactly one restart, which kills it
    //    and starts it again; it loads for 20 s inside its start period.
    let old = server.pid();
    server.signal("-STOP");
    eventually("the restart", LOAD, || async { (server.restarts() == 1).then_some(()) }).await;
    assert_ne!(server.pid(), old);
    eventually("healthy after the restart", LOAD, || async {
        let ok = metric(&d, "service_restarts_total{result=\"success\",service=\"iris\"}").await?;
        (ok == 1.0).then_some(())
    })
    .await;
    eventually("ready again after loading", LOAD, || async {
        (metric(&d, "service_ready{service=\"iris\"}").await? == 1.0).then_some(())
    })
    .await;
    assert_eq!(server.restarts(), 1, "no second restart while it loaded");
    assert_eq!(
        metric(&d, "service_restarts_total{result=\"failure\",service=\"iris\"}").await,
        Some(0.0)
    );
    assert!(
        metric(&d, "service_check_failures_total{reason=\"timeout\",service=\"iris\"}")
            .await
            .unwrap()
            >= 3.0
    );

    // 4. The model is unloaded through MLServer's repository API: not
    //    ready, reason not_ready, and never restarted.
    let before = metric(
        &d,
        "service_check_failures_total{reason=\"not_ready\",service=\"iris\"}",
    )
    .await
    .unwrap();
    let resp = reqwest::Client::new()
        .post(format!("{}/v2/repository/models/iris/unload", server.url()))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "unload: {}", resp.status());
    eventually("not ready after the unload", LIMIT, || async {
        let ready = metric(&d, "service_ready{service=\"iris\"}").await?;
        let model = metric(&d, "inference_model_ready{model=\"iris\",service=\"iris\"}").await?;
        let n = metric(
            &d,
            "service_check_failures_total{reason=\"not_ready\",service=\"iris\"}",
        )
        .await?;
        (ready == 0.0 && model == 0.0 && n >= before + 5.0).then_some(())
    })
    .await;
    assert_eq!(
        server.restarts(),
        1,
        "a live server that is not ready is never restarted"
    );
    assert_eq!(health(&d).await["services"]["iris"], "healthy");
    assert!(d.log().contains("model iris not ready"), "the reason is logged");
}

/// One Open Inference request to `model` with `data` as its FP32 input:
/// the HTTP status.
async fn infer(client: &reqwest::Client, server: &MlServer, model: &str, data: [f32; 2]) -> u16 {
    let body = serde_json::json!({
        "inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": data}]
    });
    let url = format!("{}/v2/models/{model}/infer", server.url());
    client.post(url).json(&body).send().await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mlserver_request_outcomes_and_queues_reach_the_inference_records_through_the_daemon() {
    let server = MlServer::doubler();
    server.start();
    let ready = format!("{}/v2/models/doubler/ready", server.url());
    eventually("the doubler to be ready", LOAD, || async {
        let r = reqwest::get(&ready).await.ok()?;
        r.status().is_success().then_some(())
    })
    .await;
    let config = format!(
        "gpu:\n  enabled: false\nqueues:\n  enabled: false\nhealth:\n  services:\n    - name: mls\n      kind: open_inference\n      url: '{}'\n      models: [doubler]\n      metrics_url: 'http://127.0.0.1:{}/metrics'\n      server: mlserver\n      interval: 1s\n",
        server.url(),
        server.metrics_port
    );
    let d = Daemon::start(&config, &[]).await;
    let prom = Prometheus::for_inference(d.port, &[]).await;
    let client = reqwest::Client::new();
    // Rounds of 8 good requests at once (they queue for the worker and the
    // batcher), then one that fails on its own (a failing batch fails all
    // of its requests), until Prometheus has both outcomes.
    let (mut ok, mut failed) = (0u32, 0u32);
    let outcome =
        |o: &str| format!("inference:requests:rate5m{{service=\"mls\",server=\"mlserver\",outcome=\"{o}\"}} > 0");
    for round in 0.. {
        let good: Vec<_> = (0..8)
            .map(|i| infer(&client, &server, "doubler", [1.0, i as f32]))
            .collect();
        for status in futures_util::future::join_all(good).await {
            assert_eq!(status, 200);
            ok += 1;
        }
        let status = infer(&client, &server, "doubler", [-1.0, -2.0]).await;
        assert!(status >= 400, "a negative input fails: {status}");
        failed += 1;
        let both = !prom.query(&outcome("success")).await.is_empty() && !prom.query(&outcome("error")).await.is_empty();
        if both {
            break;
        }
        assert!(round < 300, "no outcomes in Prometheus after {round} rounds");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The queue histograms give running and waiting; the duration summary
    // a mean; what MLServer does not measure is absent.
    for record in [
        "inference:requests_running",
        "inference:requests_waiting",
        "inference:request_duration_seconds:mean",
    ] {
        let q = format!("{record}{{service=\"mls\",server=\"mlserver\"}}");
        eventually(&q, LIMIT, || async { (!prom.query(&q).await.is_empty()).then_some(()) }).await;
    }
    for record in [
        "inference:time_to_first_token_seconds:p99",
        "inference:output_tokens:rate5m",
        "inference:kv_cache_usage:ratio",
    ] {
        let q = format!("{record}{{service=\"mls\"}}");
        assert!(prom.query(&q).await.is_empty(), "{q} is absent for MLServer");
    }
    // Its own counters, through the proxy, count exactly what was sent.
    let page = d.get_text("/proxy/mls/metrics").await;
    let sum = |family: &str| page_sum(&page, &[family]);
    assert_eq!(sum("model_infer_request_success_total"), ok as f64, "{page}");
    assert_eq!(sum("model_infer_request_failure_total"), failed as f64);
}
