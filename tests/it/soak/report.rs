//! What the soak measures and reports: RSS and fds each minute, the history
//! store's samples against the declared outages, the faults, the counts;
//! and the bars the figures are held to.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::*;
use crate::common::Postgres;

/// One injected fault.
pub struct Fault {
    pub name: &'static str,
    pub metric: &'static str,
    /// Seconds from the start: when it was injected, when the test undid it
    /// (restarted what it killed), when the metric showed it, when the
    /// metric cleared.
    pub injected: f64,
    pub undone: Option<f64>,
    pub seen: Option<f64>,
    pub cleared: Option<f64>,
    pub detail: Value,
}

impl Fault {
    pub fn to_json(&self) -> Value {
        let s = |v: Option<f64>| v.map(|v| round(v, 1)).unwrap_or(Value::Null);
        json!({
            "fault": self.name,
            "metric": self.metric,
            "injected_s": round(self.injected, 1),
            "undone_s": s(self.undone),
            "seen_s": s(self.seen),
            "cleared_s": s(self.cleared),
            "cleared_after_undo_s": match (self.undone, self.cleared) {
                (Some(u), Some(c)) => round(c - u, 1),
                _ => Value::Null,
            },
            "detail": self.detail,
        })
    }
}

/// The daemon's RSS (MB) and open fds at the end of each minute, and at the
/// end of a shorter last one.
pub async fn every_minute(sh: Sh, duration: f64) -> Vec<Value> {
    let mut out = Vec::new();
    let mut next = 60.0f64.min(duration);
    loop {
        at(&sh, next).await;
        let pid = sh.pid.load(Ordering::Acquire);
        let rss = crate::common::status_bytes(pid, "VmRSS:").unwrap_or(0) as f64 / 1e6;
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count())
            .unwrap_or(0);
        out.push(json!({"minute": round(next / 60.0, 2), "pid": pid, "rss_mb": round(rss, 1), "fds": fds}));
        if next >= duration {
            return out;
        }
        next = (next + 60.0).min(duration);
    }
}

/// GPU 0's samples in the history store over the run, against one per
/// poll: the gaps outside the declared outages.
pub async fn history(sh: &Shared, pg: &Postgres) -> Value {
    use sqlx::Connection;
    let start_ms = unix_ms() - (sh.t() * 1000.0) as i64;
    let mut c = crate::common::eventually("the store after the soak", Duration::from_secs(60), || async {
        sqlx::PgConnection::connect(&pg.url()).await.ok()
    })
    .await;
    // The daemon flushes every second: what it polled last is written by now
    // plus one flush.
    let times: Vec<(i64,)> = sqlx::query_as(
        "SELECT recorded_at_ms FROM gpu_samples WHERE gpu_index = 0 AND recorded_at_ms >= $1 ORDER BY recorded_at_ms",
    )
    .bind(start_ms)
    .fetch_all(&mut c)
    .await
    .unwrap();
    let outages = sh.outages.lock().unwrap().clone();
    let at = |ms: i64| (ms - start_ms) as f64 / 1000.0;
    let gaps: Vec<(f64, f64)> = times.windows(2).map(|w| (at(w[0].0), at(w[1].0))).collect();
    let (inside, outside): (Vec<_>, Vec<_>) = gaps
        .iter()
        .partition(|(a, b)| outages.iter().any(|(from, to, _)| *a < *to && *b > *from));
    // The poll's real period (the median spacing: a poll that comes late
    // and the next one early miss nothing), and so how many samples each
    // stretch should hold.
    let mut spacing: Vec<f64> = gaps.iter().map(|(a, b)| b - a).collect();
    spacing.sort_by(f64::total_cmp);
    let pick = |q: f64| {
        spacing
            .get(((spacing.len() as f64 - 1.0) * q) as usize)
            .map(|v| round(*v, 3))
    };
    let period = spacing.get(spacing.len() / 2).copied().unwrap_or(POLL.as_secs_f64());
    let missing = |gs: &[(f64, f64)]| {
        let span: f64 = gs.iter().map(|(a, b)| b - a).sum();
        ((span / period).round() as i64 - gs.len() as i64).max(0)
    };
    let long: Vec<Value> = outside
        .iter()
        .filter(|(a, b)| b - a > 1.9 * period)
        .map(|(a, b)| json!([round(*a, 1), round(*b, 1)]))
        .collect();
    json!({
        "samples": times.len(),
        "poll_period_s": round(period, 4),
        "spacing_s": {"min": pick(0.0), "p50": pick(0.5), "p99": pick(0.99), "max": pick(1.0)},
        "missing_outside_outages": missing(&outside),
        "long_gaps_outside_outages": long,
        "missing_in_declared_outages": missing(&inside),
        "declared_outages": outages.iter().map(|(a, b, why)| json!({"from_s": round(*a, 1), "to_s": round(*b, 1), "why": why})).collect::<Vec<_>>(),
    })
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// The one JSON line.
pub fn build(sh: &Shared, minutes: f64, jobs: Value, history: Value, per_minute: Vec<Value>) -> Value {
    let n = &sh.counts;
    let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
    json!({
        "minutes": minutes,
        "jobs": jobs,
        "history": history,
        "per_minute": per_minute,
        "faults": sh.faults.lock().unwrap().iter().map(Fault::to_json).collect::<Vec<_>>(),
        "reloads": {"sent": l(&n.reloads), "confirmed": l(&n.reloads_confirmed),
                    "metric": "inferwatch_config_last_reload_success_timestamp_seconds"},
        "load": {
            "scrapes_ok": l(&n.scrapes_ok), "scrapes_failed": l(&n.scrapes_failed),
            "ws_clients": WS_CLIENTS, "ws_connects": l(&n.ws_connects), "ws_messages": l(&n.ws_messages),
            "pipeline_events_accepted": l(&n.events_accepted), "completions": l(&n.completions),
            "dlq_calls_failed": l(&n.dlq_calls_failed),
        },
    })
}

/// The bars: every job in one place, no sample missing outside the
/// declared outages, every fault seen and cleared, every reload applied,
/// RSS and fds flat after the first minute of the restarted daemon.
pub fn hold_to_the_bars(r: &Value) {
    let jobs = &r["jobs"];
    assert_eq!(jobs["present"], jobs["created"], "every job is somewhere: {jobs}");
    assert_eq!(jobs["distinct"], jobs["created"], "{jobs}");
    assert_eq!(jobs["duplicated"], 0, "{jobs}");
    assert_eq!(jobs["missing"], 0, "{jobs}");
    assert_eq!(r["history"]["missing_outside_outages"], 0, "{}", r["history"]);
    let faults = r["faults"].as_array().unwrap();
    assert!(faults.len() >= 7, "every kind of fault ran: {faults:?}");
    for f in faults {
        assert!(f["seen_s"].is_number(), "the fault showed on its metric: {f}");
        assert!(f["cleared_s"].is_number(), "the fault cleared: {f}");
    }
    for f in faults
        .iter()
        .filter(|f| f["fault"].as_str().unwrap().starts_with("kernel-log"))
    {
        assert_eq!(f["detail"]["counted"], 100_000.0, "each record counted once: {f}");
    }
    let reloads = &r["reloads"];
    assert!(reloads["sent"].as_u64().unwrap() >= 1, "{reloads}");
    assert_eq!(reloads["sent"], reloads["confirmed"], "every reload applied: {reloads}");
    let load = &r["load"];
    for k in ["scrapes_ok", "ws_messages", "pipeline_events_accepted", "completions"] {
        assert!(load[k].as_u64().unwrap() > 0, "{k}: {load}");
    }
    assert!(r["jobs"]["moved"]["requeued"].as_u64().unwrap() > 0, "{}", r["jobs"]);
    flat(r["per_minute"].as_array().unwrap());
}

/// After warm-up (the first minute sample), RSS grows by at most 16 MB and
/// fds by at most 32 to the last minute.
fn flat(minutes: &[Value]) {
    assert!(minutes.len() >= 2, "{minutes:?}");
    let last = minutes.last().unwrap();
    let warm = &minutes[0];
    assert_eq!(warm["pid"], last["pid"], "one process after the restart: {minutes:?}");
    let rss = |m: &Value| m["rss_mb"].as_f64().unwrap();
    let fds = |m: &Value| m["fds"].as_u64().unwrap() as i64;
    assert!(rss(last) - rss(warm) <= 16.0, "RSS flat after warm-up: {minutes:?}");
    assert!(fds(last) - fds(warm) <= 32, "fds flat after warm-up: {minutes:?}");
}
