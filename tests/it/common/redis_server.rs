//! A real `redis-server` on a free port, killed and started again to
//! inject faults; the DLQ entry shape the tests push.

use std::process::{Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use super::*;

/// A DLQ entry in the shape workers write: the failed job plus its history.
pub const DLQ_ENTRY: &str = r#"{"original_job":{"id":"j1"},"error":"CUDA OOM","attempt_count":3,"first_failed_at":"2026-11-20T10:00:00Z","last_failed_at":"2026-11-20T10:05:00Z","queue_name":"detection_queue"}"#;

/// A real `redis-server` on a free port, with persistence off.
pub struct Redis {
    pub dir: TempDir,
    pub port: u16,
    proc: Option<Proc>,
    /// More server arguments (TLS, ACL), kept across restarts.
    args: Vec<String>,
}

impl Redis {
    pub async fn start() -> Redis {
        Self::start_with(&[]).await
    }

    /// A server with more arguments; the plain `port` stays open for the
    /// test's own (default user) connection.
    pub async fn start_with(args: &[String]) -> Redis {
        let mut r = Redis {
            dir: tempfile::tempdir().unwrap(),
            port: free_port(),
            proc: None,
            args: args.to_vec(),
        };
        r.resume().await;
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// A fresh connection to this server.
    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    /// LPUSH `values` onto `key`.
    pub async fn lpush(&self, key: &str, values: &[&str]) {
        use redis::AsyncCommands;
        let _: () = self.connection().await.lpush(key, values).await.unwrap();
    }

    /// Starts the server (again) on the same port and waits for PING.
    pub async fn resume(&mut self) {
        // Users made with ACL SETUSER + ACL SAVE survive a restart.
        let acl = self.dir.path().join("users.acl");
        if !acl.exists() {
            std::fs::write(&acl, "").unwrap();
        }
        let child = Command::new(find_bin("redis-server"))
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .args(&self.args)
            .arg("--aclfile")
            .arg(&acl)
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.proc = Some(Proc {
            child,
            name: "redis-server",
        });
        let client = redis::Client::open(self.url()).unwrap();
        eventually("redis to answer PING", Duration::from_secs(30), || {
            let client = client.clone();
            async move {
                let mut con = client.get_multiplexed_async_connection().await.ok()?;
                redis::cmd("PING").query_async::<String>(&mut con).await.ok()
            }
        })
        .await;
    }

    /// Runs an `ACL SETUSER …` line (as `inferwatch redis-acl` prints it)
    /// as the default user.
    pub async fn apply_acl(&self, line: &str) {
        let mut words = line.split_whitespace();
        let _: () = redis::cmd(words.next().unwrap())
            .arg(words.collect::<Vec<_>>())
            .query_async(&mut self.connection().await)
            .await
            .unwrap();
    }

    /// SIGKILL: an outage with no goodbye.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop_with(SIGKILL);
        }
    }
}

/// Every job id (`{"id": ...}` in `queue`, `original_job.id` in `dlq`) is
/// in exactly one of the two lists, and there are `n` of them.
pub async fn assert_each_job_once(r: &Redis, queue: &str, dlq: &str, n: usize) -> (usize, usize) {
    use redis::AsyncCommands;
    let mut c = r.connection().await;
    let queue: Vec<String> = c.lrange(queue, 0, -1).await.unwrap();
    let dlq: Vec<String> = c.lrange(dlq, 0, -1).await.unwrap();
    let mut seen: std::collections::HashMap<String, u32> = Default::default();
    for q in &queue {
        let v: serde_json::Value = serde_json::from_str(q).unwrap();
        *seen.entry(v["id"].as_str().unwrap().to_string()).or_default() += 1;
    }
    for e in &dlq {
        let v: serde_json::Value = serde_json::from_str(e).unwrap();
        *seen
            .entry(v["original_job"]["id"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert_eq!(queue.len() + dlq.len(), n, "queue {} + DLQ {}", queue.len(), dlq.len());
    assert_eq!(seen.len(), n, "every job is there");
    assert!(seen.values().all(|c| *c == 1), "no job is duplicated");
    (queue.len(), dlq.len())
}

/// The `ACL SETUSER` line `inferwatch redis-acl` prints for `config`, for a
/// user `least` with `password`.
pub fn acl_line(config: &str, password: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yml");
    std::fs::write(&path, config).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_inferwatch"))
        .arg("--config")
        .arg(&path)
        .args(["redis-acl", "--user", "least", "--password", password])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}
