//! The real `inferwatch` binary, started on a free port with a config in a
//! temp dir, its log kept.

use std::process::{Command, Stdio};

use tempfile::TempDir;

use super::*;

/// The real `inferwatch` binary.
pub struct Daemon {
    pub dir: TempDir,
    pub port: u16,
    pub proc: Proc,
}

impl Daemon {
    /// Starts the binary with `config` (YAML) and waits for `/-/ready`.
    pub async fn start(config: &str, env: &[(&str, &str)]) -> Daemon {
        Self::start_with_args(config, env, &[]).await
    }

    /// As [`Daemon::start`], with extra flags. Its log goes to `log()`.
    pub async fn start_with_args(config: &str, env: &[(&str, &str)], args: &[&str]) -> Daemon {
        Self::start_limited(config, env, args, None).await
    }

    /// As [`Daemon::start_with_args`], with `RLIMIT_NOFILE` (soft and hard)
    /// set to `nofile` for the daemon, as `ulimit -n` would.
    pub async fn start_limited(config: &str, env: &[(&str, &str)], args: &[&str], nofile: Option<u64>) -> Daemon {
        let d = Self::spawn(config, env, args, nofile);
        wait_for_2xx("inferwatch to be ready", &d.url("/-/ready")).await;
        d
    }

    /// Starts the binary and returns at once, without waiting for it to be
    /// ready (for a daemon behind TLS or auth, or one expected to fail).
    pub fn spawn(config: &str, env: &[(&str, &str)], args: &[&str], nofile: Option<u64>) -> Daemon {
        use std::os::unix::process::CommandExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inferwatch.yml");
        std::fs::write(&path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("inferwatch.log")).unwrap();
        let port = free_port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_inferwatch"));
        if let Some(n) = nofile {
            let limit = rustix::process::Rlimit {
                current: Some(n),
                maximum: Some(n),
            };
            // SAFETY: setrlimit is async-signal-safe; nothing else runs here.
            unsafe {
                cmd.pre_exec(move || {
                    rustix::process::setrlimit(rustix::process::Resource::Nofile, limit).map_err(std::io::Error::from)
                });
            }
        }
        let child = cmd
            .arg("--config")
            .arg(&path)
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .args(args)
            .current_dir(dir.path())
            .env_remove("RUST_LOG")
            // The machine's own kernel log stays out of tests unless a test
            // asks for it (it holds what earlier runs wrote there).
            .env("GPU_KERNEL_LOG", "")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Daemon {
            dir,
            port,
            proc: Proc {
                child,
                name: "inferwatch",
            },
        }
    }

    /// Everything the daemon has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("inferwatch.log")).unwrap()
    }

    /// The WARN and ERROR lines about GPUs or NVML. Other conditions of the
    /// host (a nearly full disk on a CI runner) are left out.
    pub fn gpu_warnings(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| (l.contains("WARN") || l.contains("ERROR")) && (l.contains("gpu") || l.contains("nvml")))
            .map(str::to_string)
            .collect()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        reqwest::get(self.url(path)).await.unwrap().json().await.unwrap()
    }

    pub async fn get_text(&self, path: &str) -> String {
        reqwest::get(self.url(path)).await.unwrap().text().await.unwrap()
    }
}
