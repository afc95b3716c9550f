//! The health monitor against a real inference server: MLServer (installed
//! by scripts/test into target/mlserver) serving a tiny scikit-learn model
//! trained here, through a runtime whose `load()` takes 20 s, as a large
//! model's does. Checked with `kind: open_inference` (KServe v2 liveness
//! and readiness), a 60 s start period and a failure threshold of 3; faults
//! are SIGSTOP (a server that stops answering) and MLServer's own
//! repository API (a model unloaded).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::{eventually, free_port, sample_value, Daemon};

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
}

impl MlServer {
    fn new() -> MlServer {
        assert!(
            venv().join("mlserver").is_file(),
            "MLServer is not installed: run scripts/test, which installs it into target/mlserver"
        );
        let dir = tempfile::tempdir().unwrap();
        let http_port = free_port();
        let settings = serde_json::json!({
            "host": "127.0.0.1",
            "http_port": http_port,
            "grpc_port": free_port(),
            "metrics_port": free_port(),
            "parallel_workers": 0,
        });
        std::fs::write(dir.path().join("settings.json"), settings.to_string()).unwrap();
        let model = dir.path().join("iris");
        std::fs::create_dir(&model).unwrap();
        std::fs::copy(support("slow_sklearn.py"), dir.path().join("slow_sklearn.py")).unwrap();
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
        MlServer { dir, http_port }
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
        if let Ok(pid) = std::fs::read_to_string(self.dir.path().join("mlserver.pid")) {
            let _ = std::process::Command::new("kill").args(["-9", pid.trim()]).status();
        }
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
