//! A real VictoriaMetrics (Debian's `victoria-metrics`) for remote_write.

use std::process::{Command, Stdio};

use tempfile::TempDir;

use super::*;

/// A real single-node VictoriaMetrics (Debian's `victoria-metrics`) on a
/// free port, for remote_write.
pub struct VictoriaMetrics {
    /// Its data, removed when it is dropped.
    _dir: TempDir,
    pub port: u16,
    proc: Proc,
}

impl VictoriaMetrics {
    pub async fn start() -> VictoriaMetrics {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("victoria-metrics.log")).unwrap();
        let child = Command::new(find_bin("victoria-metrics"))
            .arg(format!("-httpListenAddr=127.0.0.1:{port}"))
            .arg(format!("-storageDataPath={}", dir.path().join("data").display()))
            .arg("-retentionPeriod=1d")
            // Fresh samples are queryable at once (the default hides 30 s).
            .arg("-search.latencyOffset=0s")
            .arg("-search.disableCache")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let proc = Proc {
            child,
            name: "victoria-metrics",
        };
        wait_for_2xx(
            "victoria-metrics to be ready",
            &format!("http://127.0.0.1:{port}/health"),
        )
        .await;
        VictoriaMetrics { _dir: dir, port, proc }
    }

    pub fn write_url(&self) -> String {
        format!("http://127.0.0.1:{}/api/v1/write", self.port)
    }

    /// An instant query through its Prometheus API: `data.result`.
    pub async fn query(&self, q: &str) -> Vec<serde_json::Value> {
        let _ = &self.proc;
        instant_query(self.port, q).await
    }
}
