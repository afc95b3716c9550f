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
    /// The flags and environment it was started with, for [`Daemon::restart`].
    args: Vec<String>,
    env: Vec<(String, String)>,
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
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inferwatch.yml");
        std::fs::write(&path, config).unwrap();
        if std::env::var_os("INFERWATCH_TEST_REDIS_ACL").is_some() {
            least_privileged(&path);
        }
        let port = free_port();
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let child = launch(dir.path(), port, &args, &env, nofile);
        Daemon {
            dir,
            port,
            proc: Proc {
                child,
                name: "inferwatch",
            },
            args,
            env,
        }
    }

    /// SIGKILL, then the same binary again on the same port, config, data
    /// dir, flags and environment (its log goes on in the same file); waits
    /// for `/-/ready`.
    pub async fn restart(&mut self) {
        self.proc.stop_with(SIGKILL);
        self.proc.child = launch(self.dir.path(), self.port, &self.args, &self.env, None);
        wait_for_2xx("inferwatch to be ready again", &self.url("/-/ready")).await;
    }

    /// Replaces the config file atomically, as an editor does.
    pub fn rewrite(&self, config: &str) {
        let path = self.dir.path().join("inferwatch.yml");
        let tmp = self.dir.path().join("inferwatch.yml.tmp");
        std::fs::write(&tmp, config).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    /// `kill -HUP`: reload the config.
    pub fn sighup(&self) {
        let ok = Command::new("kill")
            .args(["-HUP", &self.proc.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -HUP");
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

    /// Waits (up to 90 s) until the sample `series` on `/metrics`
    /// satisfies `ok`; its value.
    pub async fn until(&self, series: &str, what: &str, ok: impl Fn(f64) -> bool) -> f64 {
        eventually(what, std::time::Duration::from_secs(90), || async {
            sample_value(&self.get_text("/metrics").await, series).filter(|v| ok(*v))
        })
        .await
    }

    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        reqwest::get(self.url(path)).await.unwrap().json().await.unwrap()
    }

    pub async fn get_text(&self, path: &str) -> String {
        reqwest::get(self.url(path)).await.unwrap().text().await.unwrap()
    }

    /// The config file the daemon runs on.
    pub fn config_path(&self) -> std::path::PathBuf {
        self.dir.path().join("inferwatch.yml")
    }

    /// `POST path` (no body), and the JSON it answers.
    pub async fn post_json(&self, path: &str) -> serde_json::Value {
        let resp = reqwest::Client::new().post(self.url(path)).send().await.unwrap();
        resp.json().await.unwrap()
    }
}

/// The binary the tests run: `INFERWATCH_TEST_BIN` when set (the soak runs
/// the release build), else the one cargo built for this test run.
pub fn daemon_bin() -> std::path::PathBuf {
    std::env::var_os("INFERWATCH_TEST_BIN")
        .map(Into::into)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_inferwatch").into())
}

/// Starts the daemon in `dir` (its config `inferwatch.yml`, its log
/// `inferwatch.log`, appended to) on `port`.
fn launch(
    dir: &std::path::Path,
    port: u16,
    args: &[String],
    env: &[(String, String)],
    nofile: Option<u64>,
) -> std::process::Child {
    use std::os::unix::process::CommandExt;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("inferwatch.log"))
        .unwrap();
    let mut cmd = Command::new(daemon_bin());
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
    cmd.arg("--config")
        .arg(dir.join("inferwatch.yml"))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .args(args)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        // The machine's own kernel log stays out of tests unless a test
        // asks for it (it holds what earlier runs wrote there).
        .env("GPU_KERNEL_LOG", "")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// `inferwatch check-config PATH`: its exit code and what it printed.
pub fn check_config(path: &std::path::Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_inferwatch"))
        .arg("check-config")
        .arg(path)
        .env_remove("GPU_POLL_INTERVAL_SECONDS")
        .env_remove("GPU_STATS_HISTORY_MINUTES")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap(), text)
}

/// With `INFERWATCH_TEST_REDIS_ACL` set (scripts/test sets it for a second
/// run of the DLQ suites): the daemon of `path` connects as a user made with
/// the line `inferwatch redis-acl` prints for that config, its password in
/// `queues.password_file`, instead of as Redis's default user. The user is
/// saved to the server's ACL file, so a restarted Redis keeps it.
fn least_privileged(path: &std::path::Path) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
    let Some(url) = doc["queues"]["redis_url"].as_str().map(str::to_string) else {
        return;
    };
    if doc["queues"]["enabled"].as_bool() == Some(false) || !url.starts_with("redis://") || url.contains('@') {
        return;
    }
    let password = "least-privileged-pw";
    let out = Command::new(env!("CARGO_BIN_EXE_inferwatch"))
        .arg("--config")
        .arg(path)
        .args(["redis-acl", "--user", "iw-least", "--password", password])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "redis-acl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8(out.stdout).unwrap();
    let mut con = redis::Client::open(url.as_str()).unwrap().get_connection().unwrap();
    let mut words = line.split_whitespace();
    let mut cmd = redis::cmd(words.next().unwrap());
    cmd.arg(words.collect::<Vec<_>>());
    let _: () = cmd.query(&mut con).unwrap();
    let _: () = redis::cmd("ACL").arg("SAVE").query(&mut con).unwrap();
    let secret = path.with_file_name("redis.password");
    std::fs::write(&secret, password).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    doc["queues"]["redis_url"] = url.replacen("redis://", "redis://iw-least@", 1).into();
    doc["queues"]["password_file"] = secret.display().to_string().into();
    std::fs::write(path, serde_yaml_ng::to_string(&doc).unwrap()).unwrap();
}
