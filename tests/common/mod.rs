//! Test harness: builds the fake NVML library, and spawns real PostgreSQL,
//! Prometheus and the real `inferwatch` binary on free loopback ports in
//! temp dirs. Each helper kills its process on drop.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Polls `check` every 50 ms until it returns `Some`, or panics after `limit`.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (up to 30 s) until `url` answers with a 2xx status.
pub async fn wait_for_2xx(what: &str, url: &str) {
    eventually(what, Duration::from_secs(30), || async move {
        reqwest::get(url)
            .await
            .ok()
            .filter(|r| r.status().is_success())
            .map(|_| ())
    })
    .await;
}

fn target_dir() -> PathBuf {
    // CARGO_TARGET_TMPDIR is per-package scratch space inside target/.
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

/// Which build of the fake library.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    /// Every symbol the collector uses.
    Current,
    /// Without the `_v2` memory/fan calls and energy: an old driver.
    Old,
}

/// Compiles `tests/fake_nvml/fake_nvml.c` once per variant.
pub fn fake_nvml_lib(driver: Driver) -> PathBuf {
    static CURRENT: OnceLock<PathBuf> = OnceLock::new();
    static OLD: OnceLock<PathBuf> = OnceLock::new();
    let (cell, name, flags): (_, _, &[&str]) = match driver {
        Driver::Current => (&CURRENT, "libfake_nvml.so", &[]),
        Driver::Old => (&OLD, "libfake_nvml_old.so", &["-DOLD_DRIVER"]),
    };
    cell.get_or_init(|| {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fake_nvml/fake_nvml.c");
        let out = target_dir().join(name);
        // Several test processes may build at once: compile to a unique
        // name, then rename into place atomically.
        let tmp = target_dir().join(format!("{name}.{}.tmp", std::process::id()));
        let status = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
            .args(["-shared", "-fPIC", "-O2", "-Wall", "-o"])
            .arg(&tmp)
            .arg(&src)
            .args(flags)
            .arg("-lpthread")
            .status()
            .expect("a C compiler (cc) is needed to build the fake NVML");
        assert!(status.success(), "building the fake NVML failed");
        std::fs::rename(&tmp, &out).unwrap();
        out
    })
    .clone()
}

/// One fake machine: a private copy of the library and its state file.
pub struct FakeGpus {
    pub dir: TempDir,
    pub lib: PathBuf,
}

impl FakeGpus {
    pub fn new(driver: Driver, state: &str) -> FakeGpus {
        let dir = tempfile::tempdir().unwrap();
        let lib = dir.path().join("libnvidia-ml.so.1");
        std::fs::copy(fake_nvml_lib(driver), &lib).unwrap();
        let f = FakeGpus { dir, lib };
        f.set(state);
        f
    }

    /// Replaces the state atomically (write, then rename over).
    pub fn set(&self, state: &str) {
        let tmp = self.dir.path().join("nvml_state.tmp");
        std::fs::write(&tmp, state).unwrap();
        std::fs::rename(&tmp, self.dir.path().join("nvml_state.txt")).unwrap();
    }

    pub fn lib_str(&self) -> String {
        self.lib.to_str().unwrap().to_string()
    }
}

/// State text for `n` identical-looking GPUs with distinct identities.
pub fn gpus_state(n: u32) -> String {
    let mut s = format!("driver_version 550.54.15\ncount {n}\n");
    for i in 0..n {
        s += &gpu_lines(i, 40 + i, 60 + i);
    }
    s
}

/// Lines for GPU `i` with utilization `util` % and temperature `temp` °C.
pub fn gpu_lines(i: u32, util: u32, temp: u32) -> String {
    format!(
        "{i}.name NVIDIA H100 80GB HBM3\n{i}.uuid GPU-0000000{i}-1111-2222-3333-444444444444\n\
         {i}.pci_bus_id 00000000:0{i}:00.0\n{i}.util_gpu {util}\n{i}.util_mem 25\n\
         {i}.mem_total 85899345920\n{i}.mem_used 21474836480\n{i}.mem_free 64424509440\n\
         {i}.temp {temp}\n{i}.power_mw 250500\n{i}.power_limit_mw 700000\n{i}.fan 30\n\
         {i}.clock_graphics 1755\n{i}.clock_sm 1755\n{i}.clock_mem 2619\n{i}.enc 5\n{i}.dec 10\n\
         {i}.energy_mj 123456789\n{i}.ecc_corrected 2\n{i}.ecc_uncorrected 0\n{i}.throttle 0x4\n"
    )
}

/// A child process killed on drop.
pub struct Proc {
    pub child: Child,
    pub name: &'static str,
}

impl Proc {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends `signal` and waits for the process to exit.
    pub fn stop_with(&mut self, signal: i32) -> std::process::ExitStatus {
        unsafe_kill(self.pid(), signal);
        self.child.wait().unwrap()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn unsafe_kill(pid: i32, signal: i32) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} {pid} failed");
}

pub const SIGINT: i32 = 2;
pub const SIGKILL: i32 = 9;
pub const SIGTERM: i32 = 15;

/// Finds a binary on PATH or in the PostgreSQL package's bin dir.
fn find_bin(name: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<PathBuf> = entries.flatten().map(|e| e.path().join("bin")).collect();
        versions.sort();
        dirs.extend(versions.into_iter().rev());
    }
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} not found: run scripts/test, which installs it"))
}

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
    pub async fn resume(&mut self) {
        let data = self.dir.path().join("data");
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
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.proc = Some(Proc {
            child,
            name: "postgres",
        });
        let url = self.url();
        eventually("postgres to accept connections", Duration::from_secs(30), || {
            let url = url.clone();
            async move {
                use sqlx::Connection;
                sqlx::PgConnection::connect(&url).await.ok().map(|_| ())
            }
        })
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

/// A real Prometheus scraping `target` every second.
pub struct Prometheus {
    pub dir: TempDir,
    pub port: u16,
    proc: Proc,
}

impl Prometheus {
    pub async fn start(job: &str, target: &str) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: {job}\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let child = Command::new(find_bin("prometheus"))
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("tsdb").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let p = Prometheus {
            dir,
            port,
            proc: Proc {
                child,
                name: "prometheus",
            },
        };
        wait_for_2xx("prometheus to be ready", &format!("http://127.0.0.1:{port}/-/ready")).await;
        p
    }

    /// Runs an instant query and returns `data.result`.
    pub async fn query(&self, q: &str) -> Vec<serde_json::Value> {
        let url = format!("http://127.0.0.1:{}/api/v1/query", self.port);
        let body: serde_json::Value = reqwest::Client::new()
            .get(url)
            .query(&[("query", q)])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(body["status"], "success", "query {q} failed: {body}");
        body["data"]["result"].as_array().cloned().unwrap_or_default()
    }
}

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
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inferwatch.yml");
        std::fs::write(&path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("inferwatch.log")).unwrap();
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_inferwatch"))
            .arg("--config")
            .arg(&path)
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .args(args)
            .current_dir(dir.path())
            .env_remove("RUST_LOG")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let d = Daemon {
            dir,
            port,
            proc: Proc {
                child,
                name: "inferwatch",
            },
        };
        wait_for_2xx("inferwatch to be ready", &d.url("/-/ready")).await;
        d
    }

    /// Everything the daemon has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("inferwatch.log")).unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub async fn get_text(&self, path: &str) -> String {
        reqwest::get(self.url(path)).await.unwrap().text().await.unwrap()
    }
}

/// Value of the first sample of `name` (with exactly the `labels` given
/// as `k="v"` pairs, in order) in a text-format page.
pub fn sample_value(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .map(|v| v.trim().parse().unwrap())
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
