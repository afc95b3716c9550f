//! A real Prometheus (and `promtool`): started with a config in a temp
//! dir, queried over its HTTP API.

use std::process::{Command, Stdio};

use tempfile::TempDir;

use super::*;

/// A real Prometheus scraping `target` every second.
pub struct Prometheus {
    pub dir: TempDir,
    pub port: u16,
    proc: Proc,
}

impl Prometheus {
    pub async fn start(job: &str, target: &str) -> Prometheus {
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: {job}\n    static_configs:\n      - targets: ['{target}']\n"
        );
        Self::start_with_config(tempfile::tempdir().unwrap(), &config).await
    }

    /// Starts Prometheus with `config` written into `dir` (so relative
    /// rule_files can sit beside it) and waits until it is ready.
    pub async fn start_with_config(dir: TempDir, config: &str) -> Prometheus {
        Self::start_with_flags(dir, config, &[]).await
    }

    /// As [`Prometheus::start_with_config`], with more flags.
    pub async fn start_with_flags(dir: TempDir, config: &str, flags: &[&str]) -> Prometheus {
        let (port, proc) =
            start_prometheus_family(&dir, "prometheus", "prometheus", config, "--storage.tsdb.path", flags).await;
        Prometheus { dir, port, proc }
    }

    /// Runs an instant query and returns `data.result`.
    pub async fn query(&self, q: &str) -> Vec<serde_json::Value> {
        instant_query(self.port, q).await
    }

    pub fn pid(&self) -> i32 {
        self.proc.pid()
    }

    /// A Prometheus scraping the daemon (job `inferwatch`) and, through its
    /// HTTP SD, the servers behind it (job `inference`, as
    /// monitoring/prometheus.yml), with the bundle's inference rules and alerts.
    pub async fn for_inference(daemon_port: u16, more_rules: &[&str]) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let mut rules = vec![
            repo().join("monitoring/inference_rules.yml").display().to_string(),
            repo().join("alert_rules.yml").display().to_string(),
        ];
        for (i, text) in more_rules.iter().enumerate() {
            let path = dir.path().join(format!("more-{i}.yml"));
            std::fs::write(&path, text).unwrap();
            rules.push(path.display().to_string());
        }
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files: {rules:?}\n\
             scrape_configs:\n  - job_name: inferwatch\n    static_configs:\n      - {{targets: ['127.0.0.1:{port}'], labels: {{cluster: test}}}}\n\
             \x20 - job_name: inference\n    http_sd_configs:\n      - url: http://127.0.0.1:{port}/api/sd/inference\n        refresh_interval: 1s\n",
            port = daemon_port
        );
        Prometheus::start_with_config(dir, &config).await
    }
}

/// An instant query through the Prometheus HTTP API on `port` (Prometheus
/// or VictoriaMetrics): `data.result`.
pub async fn instant_query(port: u16, q: &str) -> Vec<serde_json::Value> {
    query_at(port, q, None).await
}

/// As [`instant_query`], evaluated at Unix time `at` (now when `None`).
pub async fn query_at(port: u16, q: &str, at: Option<f64>) -> Vec<serde_json::Value> {
    let url = format!("http://127.0.0.1:{port}/api/v1/query");
    let mut params = vec![("query", q.to_string())];
    if let Some(at) = at {
        params.push(("time", at.to_string()));
    }
    let body: serde_json::Value = reqwest::Client::new()
        .get(url)
        .query(&params)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["status"], "success", "query {q} failed: {body}");
    body["data"]["result"].as_array().cloned().unwrap_or_default()
}

/// Runs `promtool check metrics` over `page` and returns its output on failure.
pub fn promtool_check_metrics(page: &str) -> Result<(), String> {
    use std::io::Write;
    let mut child = Command::new(find_bin("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(page.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Starts a Prometheus-family server (`bin`) with `config` written to
/// `<name>.yml` in `dir`, its state in `dir/data`, its log in `<name>.log`
pub(crate) async fn start_prometheus_family(
    dir: &TempDir,
    bin: &str,
    name: &'static str,
    config: &str,
    storage_flag: &str,
    extra: &[&str],
) -> (u16, Proc) {
    let path = dir.path().join(format!("{name}.yml"));
    std::fs::write(&path, config).unwrap();
    let port = free_port();
    let log = std::fs::File::create(dir.path().join(format!("{name}.log"))).unwrap();
    let child = Command::new(find_bin(bin))
        .arg(format!("--config.file={}", path.display()))
        .arg(format!("{storage_flag}={}", dir.path().join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .args(extra)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let proc = Proc { child, name };
    wait_for_2xx(
        &format!("{name} to be ready"),
        &format!("http://127.0.0.1:{port}/-/ready"),
    )
    .await;
    (port, proc)
}
