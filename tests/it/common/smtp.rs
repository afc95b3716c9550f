//! `tests/support/smtp_sink.py`: a real SMTP server that keeps every mail.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use super::*;

/// A real SMTP server (aiosmtpd, `tests/support/smtp_sink.py`) that needs
/// AUTH with one user and password and writes each message it accepts as
/// JSON (`subject`, `to`, `text`, `html`, `login`) into its directory.
pub struct SmtpSink {
    pub dir: TempDir,
    pub port: u16,
    /// Killed when the sink is dropped.
    _proc: Proc,
}

impl SmtpSink {
    pub async fn start(user: &str, password: &str) -> SmtpSink {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let script = repo().join("tests/support/smtp_sink.py");
        let log = std::fs::File::create(dir.path().join("smtp.log")).unwrap();
        let child = Command::new(python())
            .arg(&script)
            .args(["--port", &port.to_string(), "--dir"])
            .arg(dir.path().join("mail"))
            .args(["--user", user, "--password", password])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let s = SmtpSink {
            dir,
            port,
            _proc: Proc {
                child,
                name: "smtp_sink",
            },
        };
        eventually("the SMTP sink to listen", Duration::from_secs(30), || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
                .map(|_| ())
        })
        .await;
        s
    }

    /// Every message received so far, oldest first.
    pub fn messages(&self) -> Vec<serde_json::Value> {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(self.dir.path().join("mail"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        paths.retain(|p| p.extension().is_some_and(|e| e == "json"));
        paths.sort();
        paths
            .iter()
            .map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap())
            .collect()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("smtp.log")).unwrap_or_default()
    }
}
