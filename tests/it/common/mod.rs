//! Test harness: builds the fake NVML library, and spawns real PostgreSQL,
//! Prometheus and the real `inferwatch` binary on free loopback ports in
//! temp dirs. Each helper kills its process on drop.

pub mod alerting;
pub mod dashboards;

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

    /// `state` with the driver profile `name` (tests/fake_nvml/profiles).
    /// The state's own `driver_version` line is dropped: the profile's wins.
    pub fn with_profile(driver: Driver, state: &str, name: &str) -> FakeGpus {
        let state: String = state
            .lines()
            .filter(|l| !l.starts_with("driver_version "))
            .map(|l| format!("{l}\n"))
            .collect();
        FakeGpus::new(driver, &format!("profile {}\n{state}", profile_path(name).display()))
    }

    /// NVML calls made so far, by function, as of the last poll's start.
    pub fn calls(&self) -> std::collections::HashMap<String, u64> {
        std::fs::read_to_string(self.dir.path().join("nvml_calls.txt"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let (k, v) = l.split_once(' ')?;
                Some((k.to_string(), v.parse().ok()?))
            })
            .collect()
    }
}

/// Path of a shipped driver profile.
pub fn profile_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fake_nvml/profiles/{name}.json"))
}

/// How long a test waits for the daemon to get somewhere.
pub const LIMIT: Duration = Duration::from_secs(30);

/// Polls finished as of the fake's last count. The device count is read
/// once when the NVML thread registers for events and once at the start of
/// each poll, and the counts are written at that start: so `count - 2`
/// polls are complete.
pub fn finished(calls: &std::collections::HashMap<String, u64>) -> u64 {
    calls
        .get("nvmlDeviceGetCount_v2")
        .copied()
        .unwrap_or(0)
        .saturating_sub(2)
}

/// Waits until the daemon has finished at least `n` polls (by the fake's
/// own count) and returns the call counts.
pub async fn polls(fake: &FakeGpus, n: u64) -> std::collections::HashMap<String, u64> {
    eventually(&format!("{n} polls"), LIMIT, || async {
        let calls = fake.calls();
        (finished(&calls) >= n).then_some(calls)
    })
    .await
}

/// State text for `n` identical-looking GPUs with distinct identities.
pub fn gpus_state(n: u32) -> String {
    let mut s = format!("driver_version 550.54.15\ncount {n}\n");
    for i in 0..n {
        s += &gpu_lines(i, 40 + i, 60 + i);
    }
    s
}

/// GPM values an H100 answered under a bf16 matmul (shared/gpu/README.md),
/// as the driver gives them: percent, and MiB/s for PCIe.
pub const GPM_UNDER_LOAD: &str = "graphics:99.6,sm:96.3,occupancy:14.2,tensor:93.4,hmma:93.4,dram:25.7,\
     integer:1.4,fp16:0,fp32:0,fp64:0,imma:0,dfma:0,pcie_tx:8.8,pcie_rx:19.6";

/// Lines for GPU `i` with utilization `util` % and temperature `temp` °C.
pub fn gpu_lines(i: u32, util: u32, temp: u32) -> String {
    format!(
        "{i}.name NVIDIA H100 80GB HBM3\n{i}.uuid GPU-0000000{i}-1111-2222-3333-444444444444\n\
         {i}.pci_bus_id 00000000:0{i}:00.0\n{i}.util_gpu {util}\n{i}.util_mem 25\n\
         {i}.mem_total 85899345920\n{i}.mem_used 21474836480\n{i}.mem_free 64424509440\n\
         {i}.temp {temp}\n{i}.power_mw 250500\n{i}.power_limit_mw 700000\n{i}.fan 30\n\
         {i}.clock_graphics 1755\n{i}.clock_sm 1755\n{i}.clock_mem 2619\n{i}.enc 5\n{i}.dec 10\n\
         {i}.energy_mj 123456789\n{i}.ecc_corrected 2\n{i}.ecc_uncorrected 0\n{i}.throttle 0x4\n\
         {i}.mem_temp 51\n{i}.temp_slowdown 89\n{i}.temp_shutdown 95\n{i}.temp_gpu_max 87\n\
         {i}.temp_mem_max 95\n{i}.max_clock_graphics 1980\n{i}.max_clock_sm 1980\n{i}.max_clock_mem 2619\n\
         {i}.pcie_gen 5\n{i}.pcie_width 16\n{i}.pcie_replay 3\n{i}.remapped_cor 1\n{i}.remapped_unc 0\n\
         {i}.gpm {GPM_UNDER_LOAD}\n"
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
        let name = self.name;
        self.child
            .wait()
            .unwrap_or_else(|e| panic!("waiting for {name} failed: {e}"))
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
pub fn find_bin(name: &str) -> PathBuf {
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

/// Starts a Prometheus-family server (`bin`) with `config` written to
/// `<name>.yml` in `dir`, its state in `dir/data`, its log in `<name>.log`
/// and `extra` flags, on a free port; returns once `/-/ready` answers.
async fn start_prometheus_family(
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
        let (port, proc) =
            start_prometheus_family(&dir, "prometheus", "prometheus", config, "--storage.tsdb.path", &[]).await;
        Prometheus { dir, port, proc }
    }

    /// Runs an instant query and returns `data.result`.
    pub async fn query(&self, q: &str) -> Vec<serde_json::Value> {
        instant_query(self.port, q).await
    }

    pub fn pid(&self) -> i32 {
        self.proc.pid()
    }
}

/// An instant query through the Prometheus HTTP API on `port` (Prometheus
/// or VictoriaMetrics): `data.result`.
pub async fn instant_query(port: u16, q: &str) -> Vec<serde_json::Value> {
    let url = format!("http://127.0.0.1:{port}/api/v1/query");
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

/// A DLQ entry in the shape workers write: the failed job plus its history.
pub const DLQ_ENTRY: &str = r#"{"original_job":{"id":"j1"},"error":"CUDA OOM","attempt_count":3,"first_failed_at":"2026-11-20T10:00:00Z","last_failed_at":"2026-11-20T10:05:00Z","queue_name":"detection_queue"}"#;

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

/// A real `redis-server` on a free port, with persistence off.
pub struct Redis {
    pub dir: TempDir,
    pub port: u16,
    proc: Option<Proc>,
}

impl Redis {
    pub async fn start() -> Redis {
        let mut r = Redis {
            dir: tempfile::tempdir().unwrap(),
            port: free_port(),
            proc: None,
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
        let child = Command::new(find_bin("redis-server"))
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
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

    /// SIGKILL: an outage with no goodbye.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop_with(SIGKILL);
        }
    }
}

/// The Python interpreter for `tests/support/*.py` (Debian's when present).
pub fn python() -> String {
    if Path::new("/usr/bin/python3").is_file() {
        "/usr/bin/python3".into()
    } else {
        "python3".into()
    }
}

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

/// A WebSocket client for `/ws/system` that parses every text message.
pub struct WsClient {
    pub stream: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
}

impl WsClient {
    pub async fn connect(url: &str) -> WsClient {
        let (stream, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        WsClient { stream }
    }

    /// The next JSON message (pings are answered and skipped), or `None`
    /// when the connection ended or `limit` passed.
    pub async fn next_json(&mut self, limit: Duration) -> Option<serde_json::Value> {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.stream.next()).await.ok()??;
            match msg.ok()? {
                Message::Text(t) => return Some(serde_json::from_str(&t).unwrap()),
                Message::Close(_) => return None,
                _ => continue,
            }
        }
    }

    /// Reads until a message satisfies `pred`; panics after `limit`.
    pub async fn wait_for(
        &mut self,
        what: &str,
        limit: Duration,
        mut pred: impl FnMut(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_json(left).await {
                Some(m) if pred(&m) => return m,
                Some(_) => continue,
                None => panic!("no message matching {what} within {limit:?}"),
            }
        }
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs a real tool from the repository root; returns its status and its
/// stdout and stderr together.
pub fn run_tool(name: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(find_bin(name))
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap_or_else(|e| panic!("running {name}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A real Alertmanager on a free port, clustering off.
pub struct Alertmanager {
    pub dir: TempDir,
    pub port: u16,
    proc: Proc,
}

impl Alertmanager {
    /// A lone Alertmanager (clustering off).
    pub async fn start(config: &str) -> Alertmanager {
        Self::launch(config, &["--cluster.listen-address="]).await
    }

    async fn launch(config: &str, args: &[&str]) -> Alertmanager {
        let dir = tempfile::tempdir().unwrap();
        let (port, proc) = start_prometheus_family(
            &dir,
            "prometheus-alertmanager",
            "alertmanager",
            config,
            "--storage.path",
            args,
        )
        .await;
        Alertmanager { dir, port, proc }
    }

    /// One peer of a gossip cluster on loopback: it listens for gossip on
    /// `cluster_port` and joins `peers`. `peer_timeout` is how long each
    /// position in the notification order waits for the ones before it.
    pub async fn start_clustered(config: &str, cluster_port: u16, peers: &[u16], peer_timeout: &str) -> Alertmanager {
        let mut args = vec![
            format!("--cluster.listen-address=127.0.0.1:{cluster_port}"),
            format!("--cluster.peer-timeout={peer_timeout}"),
            "--cluster.gossip-interval=100ms".to_string(),
            "--cluster.pushpull-interval=2s".to_string(),
            "--log.level=debug".to_string(),
        ];
        args.extend(peers.iter().map(|p| format!("--cluster.peer=127.0.0.1:{p}")));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Self::launch(config, &args).await
    }

    /// Stops it with `signal`.
    pub fn kill(&mut self, signal: i32) {
        self.proc.stop_with(signal);
    }

    /// A sample of its own `/metrics` (0 when absent).
    pub async fn metric(&self, series: &str) -> f64 {
        let page = reqwest::get(format!("http://127.0.0.1:{}/metrics", self.port))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        sample_value(&page, series).unwrap_or(0.0)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("alertmanager.log")).unwrap_or_default()
    }
}

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

/// CPU seconds (user + system) and resident memory in bytes of `pid`, from
/// /proc (for figures, not assertions).
pub fn cpu_and_rss(pid: i32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = 100.0; // USER_HZ on Linux
    let cpu = f.get(11).and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0);
    (cpu / ticks, rss_kb * 1024)
}
