//! Test harness, split by what it starts: the fake NVML (`fake_gpu`), the
//! real daemon (`daemon`), PostgreSQL, Prometheus, Redis, Alertmanager, the
//! SMTP sink, VictoriaMetrics, the health target, the LLM servers
//! (llama.cpp and vLLM), a WebSocket client and Docker containers.
//! Each helper kills its process on drop. What every part shares is here.

pub mod alerting;
pub mod alertmanager;
pub mod certs;
pub mod daemon;
pub mod dashboards;
pub mod docker;
pub mod dockerd;
pub mod fake_gpu;
pub mod health_target;
pub mod llm;
pub mod postgres;
pub mod prometheus;
pub mod redis_server;
pub mod sentinel;
pub mod smtp;
pub mod victoria_metrics;
pub mod ws;

pub use alertmanager::*;
pub use certs::*;
pub use daemon::*;
pub use fake_gpu::*;
pub use health_target::*;
pub use llm::*;
pub use postgres::*;
pub use prometheus::*;
pub use redis_server::*;
pub use sentinel::*;
pub use smtp::*;
pub use victoria_metrics::*;
pub use ws::*;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// A port nobody listens on right now, below the kernel's ephemeral range
/// (`ip_local_port_range`). A port from that range (what binding port 0
/// gives) can be taken as the local end of any outgoing connection while a
/// test's server is down, and the server then cannot listen on it again
/// when the test restarts it.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let low: u32 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    let (from, span) = (10_000u32, low.saturating_sub(10_000).max(1_000));
    // Test processes run side by side: each starts at its own place.
    let seed = std::process::id().wrapping_mul(2_654_435_761) ^ (unix_now().fract() * 1e9) as u32;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = from + seed.wrapping_add(n.wrapping_mul(7_919)) % span;
        if TcpListener::bind(("127.0.0.1", port as u16)).is_ok() {
            return port as u16;
        }
    }
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Polls `check` every 50 ms until it returns `Some`, or panics after `limit`.
/// `check` may be an async closure that borrows mutably (`async || {
/// h.round().await.ok() }`), or a closure that returns a future.
pub async fn eventually<T>(what: &str, limit: Duration, mut check: impl AsyncFnMut() -> Option<T>) -> T {
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

/// A child process killed on drop.
pub struct Proc {
    pub child: Child,
    pub name: &'static str,
}

impl Proc {
    /// Starts `program` with `args`, its output inherited.
    pub fn spawn(program: &'static str, args: &[&str]) -> Proc {
        Proc {
            child: Command::new(program).args(args).spawn().unwrap(),
            name: program,
        }
    }

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

/// Value of the first sample of `name` (with exactly the `labels` given
/// as `k="v"` pairs, in order) in a text-format page.
pub fn sample_value(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .map(|v| v.trim().parse().unwrap())
}

/// The sum of the families `names` on a Prometheus text page.
pub fn page_sum(page: &str, names: &[&str]) -> f64 {
    page.lines()
        .filter(|l| names.iter().any(|n| l.starts_with(&format!("{n}{{"))))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The Python interpreter for `tests/support/*.py` (Debian's when present).
pub fn python() -> String {
    if Path::new("/usr/bin/python3").is_file() {
        "/usr/bin/python3".into()
    } else {
        "python3".into()
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
    (cpu / ticks, status_bytes(pid, "VmRSS:").unwrap_or(0))
}

/// A kB field of /proc/PID/status in bytes (`VmRSS:` now, `VmHWM:` peak).
pub fn status_bytes(pid: i32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())?;
    Some(kb * 1024)
}

/// Runs `work` and returns how far `pid`'s resident memory rose above where
/// it stood: the kernel's peak (VmHWM, reset first through clear_refs) minus
/// the RSS before. What the process held already (the daemon is about 35 MB
/// here, more or less on another machine) is not the work's cost.
pub async fn rss_rise<F: std::future::Future<Output = ()>>(pid: i32, work: F) -> u64 {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("reset the peak RSS");
    let before = status_bytes(pid, "VmRSS:").expect("the process's RSS");
    work.await;
    status_bytes(pid, "VmHWM:")
        .expect("the process's peak RSS")
        .saturating_sub(before)
}
