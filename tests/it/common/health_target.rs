//! `tests/support/health_target.py`: an HTTP health target whose answer
//! and `/metrics` the test switches.

use std::path::Path;
use std::process::Command;

use tempfile::TempDir;

use super::*;

/// `tests/support/health_target.py`: an HTTP `/health` whose answer the test
/// switches with [`HealthTarget::set`] (`ok`, `500`, `hang`).
pub struct HealthTarget {
    pub dir: TempDir,
    pub port: u16,
    proc: Option<Proc>,
}

impl HealthTarget {
    /// A target on a free port that is not started yet.
    pub fn new() -> HealthTarget {
        let t = HealthTarget {
            dir: tempfile::tempdir().unwrap(),
            port: free_port(),
            proc: None,
        };
        t.set("ok");
        t
    }

    pub fn script() -> String {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/support/health_target.py")
            .display()
            .to_string()
    }

    pub fn state_file(&self) -> String {
        self.dir.path().join("mode").display().to_string()
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/health", self.port)
    }

    /// Switches the answer atomically.
    pub fn set(&self, mode: &str) {
        let tmp = self.dir.path().join("mode.tmp");
        std::fs::write(&tmp, mode).unwrap();
        std::fs::rename(&tmp, self.state_file()).unwrap();
    }

    /// Switches what `/metrics` serves: `"WAITING RUNNING frozen|moving"`.
    pub fn set_metrics(&self, state: &str) {
        let tmp = self.dir.path().join("metrics.tmp");
        std::fs::write(&tmp, state).unwrap();
        std::fs::rename(&tmp, format!("{}.metrics", self.state_file())).unwrap();
    }

    pub fn metrics_url(&self) -> String {
        format!("http://127.0.0.1:{}/metrics", self.port)
    }

    /// Runs the server in the foreground (as a child of the test).
    pub async fn start(&mut self) {
        let child = Command::new(python())
            .arg(Self::script())
            .arg(self.port.to_string())
            .arg(self.state_file())
            .spawn()
            .unwrap();
        self.proc = Some(Proc {
            child,
            name: "health_target",
        });
        wait_for_2xx("the health target", &self.url()).await;
    }

    /// The argv of a restart command that starts this target as a daemon,
    /// writing its pid to `pid_file()`.
    pub fn restart_command(&self) -> Vec<String> {
        vec![
            python(),
            Self::script(),
            self.port.to_string(),
            self.state_file(),
            "--daemon".into(),
            self.pid_file(),
        ]
    }

    /// The foreground server's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(|p| p.pid() as u32)
    }

    pub fn pid_file(&self) -> String {
        self.dir.path().join("daemon.pid").display().to_string()
    }

    /// SIGKILL the foreground server.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop_with(SIGKILL);
        }
    }
}

impl Drop for HealthTarget {
    fn drop(&mut self) {
        // A server started by a restart command is not our child.
        if let Ok(pid) = std::fs::read_to_string(self.pid_file()) {
            let _ = Command::new("kill").arg("-9").arg(pid.trim()).status();
        }
    }
}
