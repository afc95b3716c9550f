//! The chaos soak (issue 36): the daemon with real Redis under Sentinel,
//! PostgreSQL, the fake NVML, its own Docker engine, llama.cpp's
//! `llama-server` and an HTTP health target, under load (scrapes, 500
//! WebSocket clients, pipeline events, requeue-all, filtered moves, clear
//! and undo in a loop), while every fault is injected on a schedule and
//! several overlap: the Redis master killed (failover) and restarted,
//! PostgreSQL killed for 60 s, the NVML driver lost and back, dockerd
//! restarted, 100,000 kernel-log records, a health target answering
//! garbage, a reload every 30 s and one SIGKILL of the daemon.
//!
//! It ends with one JSON line (`SOAK {...}`): jobs created, moved and
//! present, history samples missing outside the declared outages, RSS and
//! fds at each minute, and each fault with the metric that showed it and
//! when it cleared. The test then holds every figure to its bar.
//!
//! `scripts/soak --minutes N` runs it on the release build; the suite runs
//! it for 3 minutes (`SOAK_MINUTES`).

mod faults;
mod load;
mod report;
mod rig;

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub use report::Fault;

/// Jobs in the DLQ at the start, each with its own id.
pub const JOBS: usize = 20_000;
pub const QUEUE: &str = "soak_queue";
pub const DLQ: &str = "dlq:soak_queue";
/// The GPU poll, and the history store's expected sample spacing.
pub const POLL: Duration = Duration::from_secs(1);
/// WebSocket clients held open the whole run.
pub const WS_CLIENTS: usize = 500;

/// What every task shares: the clock, the daemon's port and current pid,
/// the stop flag and the load's counters.
pub struct Shared {
    pub start: Instant,
    pub port: u16,
    pub pid: AtomicI32,
    pub stop: AtomicBool,
    pub counts: Counts,
    pub faults: Mutex<Vec<Fault>>,
    /// Windows (seconds from the start) in which history may be missing:
    /// the daemon down, the NVML driver lost.
    pub outages: Mutex<Vec<(f64, f64, &'static str)>>,
}

/// The load's counters.
#[derive(Default)]
pub struct Counts {
    pub scrapes_ok: AtomicU64,
    pub scrapes_failed: AtomicU64,
    pub ws_connects: AtomicU64,
    pub ws_messages: AtomicU64,
    pub events_accepted: AtomicU64,
    pub completions: AtomicU64,
    pub requeued: AtomicU64,
    pub filtered_moved: AtomicU64,
    pub cleared: AtomicU64,
    pub restored: AtomicU64,
    pub dlq_calls_failed: AtomicU64,
    pub worker_failed_again: AtomicU64,
    pub reloads: AtomicU64,
    pub reloads_confirmed: AtomicU64,
}

impl Shared {
    /// Seconds since the soak started.
    pub fn t(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn record(&self, f: Fault) {
        eprintln!("soak: {}", serde_json::to_string(&f.to_json()).unwrap());
        self.faults.lock().unwrap().push(f);
    }

    pub fn outage(&self, from: f64, to: f64, why: &'static str) {
        self.outages.lock().unwrap().push((from, to, why));
    }
}

/// How long the soak runs: `SOAK_MINUTES`, 3 by default.
fn minutes() -> f64 {
    std::env::var("SOAK_MINUTES")
        .ok()
        .map(|m| m.parse().expect("SOAK_MINUTES is a number of minutes"))
        .unwrap_or(3.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_chaos_soak_with_every_fault_loses_no_job_and_stays_flat() {
    let minutes = minutes();
    let rig = rig::Rig::start().await;
    let report = rig.run(minutes).await;
    println!("SOAK {report}");
    report::hold_to_the_bars(&report);
}

/// A JSON number rounded to `places` decimals.
pub fn round(v: f64, places: i32) -> Value {
    let f = 10f64.powi(places);
    json!((v * f).round() / f)
}

/// A client for the load and the observers: short timeouts, so a daemon
/// that is down costs a loop one round, never a hang.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .connect_timeout(Duration::from_secs(2))
        .build()
        .unwrap()
}

/// `/metrics` now, or `None` while the daemon does not answer.
pub async fn page(c: &reqwest::Client, sh: &Shared) -> Option<String> {
    let r = c.get(sh.url("/metrics")).send().await.ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.text().await.ok()
}

/// Polls `series` on `/metrics` every 200 ms until `ok` holds for its value
/// (`None` when absent or the daemon is down); the time it held, or `None`
/// after `limit`.
pub async fn when(sh: &Shared, series: &str, limit: Duration, ok: impl Fn(Option<f64>) -> bool) -> Option<f64> {
    let c = client();
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(p) = page(&c, sh).await {
            if ok(crate::common::sample_value(&p, series)) {
                return Some(sh.t());
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

/// Waits until `at` seconds from the start (or the stop flag).
pub async fn at(sh: &Shared, at: f64) {
    let wait = at - sh.t();
    if wait > 0.0 {
        tokio::time::sleep(Duration::from_secs_f64(wait)).await;
    }
}

pub type Sh = Arc<Shared>;
