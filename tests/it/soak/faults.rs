//! The faults, on a schedule. Each kind runs in its own task, which owns
//! the part it breaks, so faults overlap: the Redis master dies while the
//! NVML driver is lost and PostgreSQL is down, during reloads and moves.
//! The schedule repeats every 10 minutes (once in a shorter run); the
//! daemon is SIGKILLed once, early, so the minutes after it show whether
//! the restarted daemon stays flat.
//!
//! Each fault is recorded with the metric that showed it, when it showed
//! it, and when it cleared. The sleeps here are the schedule and the
//! declared lengths of outages, not waits for events.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::*;
use crate::common::dockerd::Engine;
use crate::common::{sample_value, Daemon, HealthTarget, Postgres, SentinelSet};
use rig::Gpus;

/// The parts the faults break, handed back when the schedule is done.
pub struct Parts {
    pub set: SentinelSet,
    pub pg: Postgres,
    pub gpus: Arc<Mutex<Gpus>>,
    pub engine: Engine,
    pub target: HealthTarget,
    pub kernel_log: tempfile::NamedTempFile,
    pub daemon: Daemon,
}

/// How long a fault may take to show, or to clear once undone.
const LIMIT: Duration = Duration::from_secs(120);
/// The schedule's period.
const CYCLE: f64 = 600.0;

/// The start of each cycle within `duration`, and its length.
fn cycles(duration: f64) -> Vec<(f64, f64)> {
    if duration <= CYCLE {
        return vec![(0.0, duration)];
    }
    let n = (duration / CYCLE).floor() as usize;
    (0..n).map(|i| (i as f64 * CYCLE, CYCLE)).collect()
}

/// Runs every fault task; returns the parts once all are done.
pub async fn schedule(sh: Sh, p: Parts, duration: f64) -> Parts {
    let cs = cycles(duration);
    let at_ = |frac: f64| cs.iter().map(|(s, len)| s + frac * len).collect::<Vec<f64>>();
    // Joined, not spawned: the harness's waits borrow across awaits, and
    // the futures run concurrently all the same.
    let (daemon, set, (), pg, engine, kernel_log, target) = tokio::join!(
        kill_daemon(sh.clone(), p.daemon, cs[0].1 * 0.05),
        redis_failovers(sh.clone(), p.set, at_(0.20)),
        driver_losses(sh.clone(), p.gpus.clone(), at_(0.25)),
        postgres_outages(sh.clone(), p.pg, at_(0.30)),
        dockerd_restarts(sh.clone(), p.engine, p.gpus.clone(), at_(0.40)),
        kernel_floods(sh.clone(), p.kernel_log, at_(0.50)),
        garbage_answers(sh.clone(), p.target, at_(0.55)),
    );
    Parts {
        daemon,
        set,
        gpus: p.gpus,
        pg,
        engine,
        kernel_log,
        target,
    }
}

/// SIGKILL of the daemon in the middle of the load (a requeue may be
/// running), then the same daemon again.
async fn kill_daemon(sh: Sh, mut d: Daemon, when: f64) -> Daemon {
    at(&sh, when).await;
    let injected = sh.t();
    d.restart().await;
    sh.pid.store(d.proc.pid(), Ordering::Release);
    let cleared = sh.t();
    // Samples still buffered for the store when it died are lost with it
    // (at most one flush interval's worth, 1 s here).
    sh.outage(injected - 2.0, cleared + 1.0, "daemon SIGKILLed");
    sh.record(Fault {
        name: "daemon SIGKILLed and started again",
        metric: "up (GET /-/ready refused, then 200 from the new process)",
        injected,
        undone: Some(injected),
        seen: Some(injected),
        cleared: Some(cleared),
        detail: json!({"new_pid": d.proc.pid()}),
    });
    d
}

/// The master SIGKILLed; once Sentinel has promoted a replica, the old
/// master is started again (empty: it rejoins as a replica).
async fn redis_failovers(sh: Sh, mut set: SentinelSet, times: Vec<f64>) -> SentinelSet {
    const SERIES: &str = "inferwatch_collector_success{collector=\"queues\"}";
    for t in times {
        at(&sh, t).await;
        let Some(first) = set.master_port().await else {
            continue;
        };
        let injected = sh.t();
        set.server(first).kill();
        let seen = when(&sh, SERIES, LIMIT, |v| v == Some(0.0)).await;
        let promoted = crate::common::eventually("a replica to be promoted", LIMIT, || async {
            set.master_port().await.filter(|p| *p != first)
        })
        .await;
        let promoted_at = sh.t();
        set.server(first).resume().await;
        let undone = sh.t();
        let cleared = when(&sh, SERIES, LIMIT, |v| v == Some(1.0)).await;
        sh.record(Fault {
            name: "Redis master SIGKILLed (failover), then restarted",
            metric: SERIES,
            injected,
            undone: Some(undone),
            seen,
            cleared,
            detail: json!({"old_master": first, "promoted": promoted, "promoted_at_s": round(promoted_at, 1)}),
        });
    }
    set
}

/// Every device answers UNINITIALIZED for 20 s (the kernel module gone),
/// then the driver is back.
async fn driver_losses(sh: Sh, gpus: Arc<Mutex<Gpus>>, times: Vec<f64>) {
    const SERIES: &str = "inferwatch_nvml_up";
    for t in times {
        at(&sh, t).await;
        let injected = sh.t();
        set_lost(&gpus, true);
        let seen = when(&sh, SERIES, LIMIT, |v| v == Some(0.0)).await;
        at(&sh, injected + 20.0).await;
        set_lost(&gpus, false);
        let undone = sh.t();
        let cleared = when(&sh, SERIES, LIMIT, |v| v == Some(1.0)).await;
        sh.outage(injected - 1.0, cleared.unwrap_or(f64::MAX) + 1.0, "NVML driver lost");
        sh.record(Fault {
            name: "NVML driver lost for 20 s, then back",
            metric: SERIES,
            injected,
            undone: Some(undone),
            seen,
            cleared,
            detail: json!({}),
        });
    }
}

fn set_lost(gpus: &Mutex<Gpus>, lost: bool) {
    let mut g = gpus.lock().unwrap();
    g.lost = lost;
    g.apply();
}

/// PostgreSQL SIGKILLed for 60 s. Samples wait in the daemon's buffer and
/// reach the store after: none is missing.
async fn postgres_outages(sh: Sh, mut pg: Postgres, times: Vec<f64>) -> Postgres {
    const SERIES: &str = "inferwatch_store_write_errors_total";
    for t in times {
        at(&sh, t).await;
        let errors_before = now(&sh, SERIES).await;
        let injected = sh.t();
        pg.kill().await;
        let seen = when(&sh, SERIES, LIMIT, |v| v.is_some_and(|v| v > errors_before)).await;
        // What waits in the buffer, read every second of the outage.
        let mut pending_peak = 0.0f64;
        while sh.t() < injected + 60.0 {
            pending_peak = pending_peak.max(now(&sh, "inferwatch_store_pending_samples").await);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        pg.resume().await;
        let undone = sh.t();
        // Cleared: the buffer drained (what is left is one flush's worth).
        let cleared = when(&sh, "inferwatch_store_pending_samples", LIMIT, |v| {
            v.is_some_and(|v| v <= 16.0)
        })
        .await;
        sh.record(Fault {
            name: "PostgreSQL SIGKILLed for 60 s, then started again",
            metric: "inferwatch_store_write_errors_total rising; cleared when inferwatch_store_pending_samples drained",
            injected,
            undone: Some(undone),
            seen,
            cleared,
            detail: json!({"pending_samples_while_down": pending_peak}),
        });
    }
    pg
}

/// `series` on `/metrics` now (0 when absent or the daemon is down).
async fn now(sh: &Shared, series: &str) -> f64 {
    page(&client(), sh)
        .await
        .and_then(|p| sample_value(&p, series))
        .unwrap_or(0.0)
}

/// dockerd stopped; meanwhile a container the daemon has not named yet
/// starts to hold GPU 2 (its name cannot be asked); dockerd starts again
/// and the process gets its container's name. Containers live through the
/// restart (`--live-restore`).
async fn dockerd_restarts(sh: Sh, mut engine: Engine, gpus: Arc<Mutex<Gpus>>, times: Vec<f64>) -> Engine {
    const SERIES: &str = "inferwatch_docker_api_calls_total{result=\"error\"}";
    for (i, t) in times.into_iter().enumerate() {
        at(&sh, t).await;
        let name = format!("inferwatch-soak-late-{i}");
        let (_, pid) = engine.sleeping(&name, &[]);
        let errors_before = now(&sh, SERIES).await;
        let injected = sh.t();
        engine.stop();
        gpus.lock().unwrap().procs.push((2, pid, 1 << 30, "late".into()));
        gpus.lock().unwrap().apply();
        let seen = when(&sh, SERIES, LIMIT, |v| v.is_some_and(|v| v > errors_before)).await;
        engine.resume().await;
        let undone = sh.t();
        let cleared = named(&sh, pid, &name).await;
        sh.record(Fault {
            name: "dockerd restarted while a new container took a GPU",
            metric: SERIES,
            injected,
            undone: Some(undone),
            seen,
            cleared,
            detail: json!({"container": name, "pid": pid, "named_by": "gpu_process_memory_used_bytes{container}"}),
        });
    }
    engine
}

/// When `/metrics` names `pid`'s container `name`.
async fn named(sh: &Shared, pid: u32, name: &str) -> Option<f64> {
    let c = client();
    let deadline = std::time::Instant::now() + LIMIT;
    let needle = format!("pid=\"{pid}\"");
    let container = format!("container=\"{name}\"");
    while std::time::Instant::now() < deadline {
        if let Some(p) = page(&c, sh).await {
            if p.lines().any(|l| {
                l.starts_with("gpu_process_memory_used_bytes{") && l.contains(&needle) && l.contains(&container)
            }) {
                return Some(sh.t());
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

/// 100,000 records appended to the kernel log at once, in `/dev/kmsg`'s
/// format. Every one is counted, none twice.
async fn kernel_floods(sh: Sh, mut log: tempfile::NamedTempFile, times: Vec<f64>) -> tempfile::NamedTempFile {
    const SERIES: &str = "inferwatch_kernel_log_records_total";
    const RECORDS: u64 = 100_000;
    let mut seq = 0u64;
    for t in times {
        at(&sh, t).await;
        let before = now(&sh, SERIES).await;
        let mut text = String::with_capacity(64 * RECORDS as usize);
        for _ in 0..RECORDS {
            seq += 1;
            text += &format!("6,{seq},{},-;inferwatch-soak: record {seq}\n", seq * 10);
        }
        let injected = sh.t();
        log.write_all(text.as_bytes()).unwrap();
        log.flush().unwrap();
        let seen = when(&sh, SERIES, LIMIT, |v| v.is_some_and(|v| v > before)).await;
        let cleared = when(&sh, SERIES, LIMIT, |v| v.is_some_and(|v| v >= before + RECORDS as f64)).await;
        let after = now(&sh, SERIES).await;
        sh.record(Fault {
            name: "kernel-log flood of 100,000 records",
            metric: SERIES,
            injected,
            undone: Some(injected),
            seen,
            cleared,
            detail: json!({"records": RECORDS, "counted": after - before}),
        });
    }
    log
}

/// The health target answers 4 KiB of bytes that are not HTTP for 20 s.
async fn garbage_answers(sh: Sh, target: HealthTarget, times: Vec<f64>) -> HealthTarget {
    const SERIES: &str = "service_up{service=\"target\"}";
    for t in times {
        at(&sh, t).await;
        let injected = sh.t();
        target.set("garbage");
        let seen = when(&sh, SERIES, LIMIT, |v| v == Some(0.0)).await;
        at(&sh, injected + 20.0).await;
        target.set("ok");
        let undone = sh.t();
        let cleared = when(&sh, SERIES, LIMIT, |v| v == Some(1.0)).await;
        sh.record(Fault {
            name: "health target answering garbage for 20 s",
            metric: SERIES,
            injected,
            undone: Some(undone),
            seen,
            cleared,
            detail: json!({}),
        });
    }
    target
}

/// Every 30 s: the target's check interval switched (1 s, 2 s) in the
/// file, and SIGHUP. Confirmed by the reload metrics.
pub async fn reload_every_30s(sh: Sh, config: PathBuf, duration: f64) {
    const STAMP: &str = "inferwatch_config_last_reload_success_timestamp_seconds";
    let mut next = 30.0;
    let mut failed = Vec::new();
    while next < duration {
        at(&sh, next).await;
        next += 30.0;
        let before = now(&sh, STAMP).await;
        let text = std::fs::read_to_string(&config).unwrap();
        let (from, to) = if text.contains("interval: 1s, timeout: 2s, failure_threshold") {
            (
                "interval: 1s, timeout: 2s, failure_threshold",
                "interval: 2s, timeout: 2s, failure_threshold",
            )
        } else {
            (
                "interval: 2s, timeout: 2s, failure_threshold",
                "interval: 1s, timeout: 2s, failure_threshold",
            )
        };
        let tmp = config.with_extension("tmp");
        std::fs::write(&tmp, text.replace(from, to)).unwrap();
        std::fs::rename(&tmp, &config).unwrap();
        let pid = sh.pid.load(Ordering::Acquire);
        let sent = std::process::Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        if !sent {
            continue;
        }
        sh.counts.reloads.fetch_add(1, Ordering::Relaxed);
        let applied = when(&sh, STAMP, Duration::from_secs(25), |v| v.is_some_and(|v| v > before)).await;
        let ok = now(&sh, "inferwatch_config_last_reload_successful").await;
        if applied.is_some() && ok == 1.0 {
            sh.counts.reloads_confirmed.fetch_add(1, Ordering::Relaxed);
        } else {
            failed.push(round(sh.t(), 1));
        }
    }
    if !failed.is_empty() {
        eprintln!("soak: reloads not confirmed at {failed:?} s");
    }
}
