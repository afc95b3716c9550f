//! A real PostgreSQL: `initdb` in a temp dir, started on a free port,
//! stopped and started again to inject faults.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use super::*;

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

/// A real PostgreSQL in a temp dir, on a free port.
pub struct Postgres {
    pub dir: TempDir,
    pub port: u16,
    proc: Option<Proc>,
}

impl Postgres {
    /// `initdb` (as the `postgres` user when we are root: initdb refuses
    /// root) and start.
    pub async fn start() -> Postgres {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        if is_root() {
            let st = Command::new("chown")
                .arg("-R")
                .arg("postgres:postgres")
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(st.success());
        }
        let out = as_pg_user(&find_bin("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", "inferwatch", "--auth=trust", "--no-sync", "-E", "UTF8"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut pg = Postgres {
            dir,
            port: free_port(),
            proc: None,
        };
        pg.resume().await;
        pg
    }

    pub fn url(&self) -> String {
        format!("postgres://inferwatch@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts the server on the existing data dir and waits until it accepts.
    /// Its log goes to `postgres.log` in the temp dir; a server that exits
    /// or does not accept within 30 s fails the test with that log.
    pub async fn resume(&mut self) {
        let data = self.dir.path().join("data");
        let log_path = self.dir.path().join("postgres.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap();
        let child = as_pg_user(&find_bin("postgres"))
            .arg("-D")
            .arg(&data)
            .args([
                "-p",
                &self.port.to_string(),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
            ])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", self.dir.path().display()))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.proc = Some(Proc {
            child,
            name: "postgres",
        });
        let url = self.url();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            use sqlx::Connection;
            if sqlx::PgConnection::connect(&url).await.is_ok() {
                return;
            }
            let exited = self.proc.as_mut().unwrap().child.try_wait().unwrap();
            let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
            assert!(
                exited.is_none(),
                "postgres on port {} exited ({exited:?}): {}",
                self.port,
                log()
            );
            assert!(
                std::time::Instant::now() < deadline,
                "postgres on port {} did not accept within 30 s: {}",
                self.port,
                log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL of the postmaster, as a crash; returns once its backends
    /// (which see the postmaster die and exit) are gone too, so that
    /// [`Postgres::resume`] finds no shared memory still attached.
    pub async fn kill(&mut self) {
        let Some(mut p) = self.proc.take() else {
            return;
        };
        let backends = children_of(p.pid());
        p.stop_with(SIGKILL);
        eventually(
            "the killed postmaster's backends to exit",
            Duration::from_secs(30),
            || {
                let backends = backends.clone();
                async move { backends.iter().all(|b| !is_alive(*b)).then_some(()) }
            },
        )
        .await;
    }

    /// Fast shutdown (SIGINT), as an outage.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop_with(SIGINT);
        }
    }
}

fn as_pg_user(bin: &Path) -> Command {
    if is_root() {
        // setpriv execs the binary itself (no intermediate process), so the
        // child's pid is postgres and signals reach it directly.
        let mut c = Command::new("setpriv");
        c.args(["--reuid=postgres", "--regid=postgres", "--init-groups", "--"])
            .arg(bin);
        c
    } else {
        Command::new(bin)
    }
}
