//! The health monitor against real processes: an HTTP target (Python,
//! switchable between 200, 500 and hanging), a restart command that really
//! starts it, one that fails, and the harness's real `redis-server` and
//! `postgres`, killed and started again. The real binary runs with a tiny
//! `backoff_base`, so the backoff schedule is checked in fractions of a
//! second.

use std::time::Duration;

use crate::common::{eventually, sample_value, Daemon, HealthTarget, Postgres, Redis, WsClient};
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(30);

async fn health(d: &Daemon) -> (u16, Value) {
    let resp = reqwest::get(d.url("/api/system/health")).await.unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

/// Waits until `/api/system/health` shows `service` as `status`.
async fn wait_status(d: &Daemon, service: &str, status: &str) -> (u16, Value) {
    eventually(&format!("{service} to be {status}"), LIMIT, || async {
        let (code, body) = health(d).await;
        (body["services"][service] == status).then_some((code, body))
    })
    .await
}

async fn metric(d: &Daemon, series: &str) -> Option<f64> {
    sample_value(&d.get_text("/metrics").await, series)
}

/// The `to` of every "Service status changed." line for `service`.
fn transitions(d: &Daemon, service: &str) -> Vec<String> {
    d.log()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["fields"]["message"] == "Service status changed." && l["fields"]["service"] == service)
        .map(|l| l["fields"]["to"].as_str().unwrap().to_string())
        .collect()
}

/// Log lines of the built-in service alerts: `(level, condition)`. Other
/// alerts follow the host (a build machine over 90 % full logs
/// `disk_usage_high`), so they are left out.
fn alerts(d: &Daemon) -> Vec<(String, String)> {
    d.log()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| {
            l["fields"]["condition"]
                .as_str()
                .is_some_and(|c| c.starts_with("service_"))
        })
        .map(|l| {
            (
                l["level"].as_str().unwrap().to_string(),
                l["fields"]["condition"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn service_yaml(name: &str, kind: &str, url: &str, extra: &str) -> String {
    format!("  - name: {name}\n    kind: {kind}\n    url: \"{url}\"\n    interval: 100ms\n{extra}")
}

async fn daemon(services: &[String]) -> Daemon {
    // No queue Redis here: these tests are about the services.
    let config = format!(
        "gpu:\n  enabled: false\nqueues:\n  enabled: false\nhealth:\n  services:\n{}",
        services.concat()
    );
    Daemon::start_with_args(&config, &[], &["--log.format=json", "--log.level=info"]).await
}

#[tokio::test]
async fn restart_command_brings_a_killed_server_back() {
    let mut target = HealthTarget::new();
    target.start().await;
    let restart = format!(
        "    backoff_base: 200ms\n    critical: true\n    restart:\n      command: {}\n      grace_period: 100ms\n",
        serde_json::to_string(&target.restart_command()).unwrap()
    );
    let d = daemon(&[service_yaml("rtdetr", "http", &target.url(), &restart)]).await;
    wait_status(&d, "rtdetr", "healthy").await;
    let mut ws = WsClient::connect(&format!("ws://127.0.0.1:{}/ws/system", d.port)).await;
    let snap = ws
        .wait_for("the snapshot", LIMIT, |m| m["type"] == "service_status")
        .await;
    assert_eq!(snap["data"]["service"], "rtdetr");
    assert_eq!(snap["data"]["status"], "healthy");

    target.kill();
    // Every change arrives on the WebSocket, in order.
    let mut seen = Vec::new();
    while seen.last().map(String::as_str) != Some("healthy") {
        let m = ws
            .wait_for("a service_status change", LIMIT, |m| m["type"] == "service_status")
            .await;
        seen.push(m["data"]["status"].as_str().unwrap().to_string());
    }
    assert_eq!(seen, ["unhealthy", "restarting", "healthy"]);
    assert!(
        std::path::Path::new(&target.pid_file()).exists(),
        "the restart command started the server"
    );
    let (code, body) = health(&d).await;
    assert_eq!((code, body["status"].as_str()), (200, Some("healthy")));
    assert_eq!(
        metric(&d, "service_restarts_total{result=\"success\",service=\"rtdetr\"}").await,
        Some(1.0)
    );
    assert_eq!(
        metric(&d, "service_restarts_total{result=\"failure\",service=\"rtdetr\"}").await,
        Some(0.0)
    );
    assert_eq!(
        metric(&d, "service_restart_attempt{service=\"rtdetr\"}").await,
        Some(1.0)
    );
    assert_eq!(metric(&d, "service_up{service=\"rtdetr\"}").await, Some(1.0));
    assert_eq!(alerts(&d), [("WARN".to_string(), "service_unhealthy".to_string())]);
}

#[tokio::test]
async fn failing_restarts_back_off_give_up_and_a_later_recovery_counts() {
    let mut target = HealthTarget::new(); // not started: connection refused
    let runs = target.dir.path().join("runs.txt");
    let command = vec![
        crate::common::python(),
        "-c".to_string(),
        format!(
            "import sys, time; open({:?}, 'a').write('%f\\n' % time.time()); sys.exit(1)",
            runs.display().to_string()
        ),
    ];
    let extra = format!(
        "    max_retries: 3\n    backoff_base: 200ms\n    restart:\n      command: {}\n      grace_period: 50ms\n",
        serde_json::to_string(&command).unwrap()
    );
    let d = daemon(&[service_yaml("nemotron", "http", &target.url(), &extra)]).await;
    wait_status(&d, "nemotron", "failed").await;
    let failed_at = crate::common::unix_now();

    assert_eq!(
        transitions(&d, "nemotron"),
        [
            "unhealthy",
            "restarting",
            "restart_failed",
            "restarting",
            "restart_failed",
            "restarting",
            "failed"
        ]
    );
    let times: Vec<f64> = std::fs::read_to_string(&runs)
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(times.len(), 3, "exactly max_retries attempts");
    // Attempt n waits backoff_base * 2^(n-1) after the check that failed;
    // between two runs there is also the 50 ms grace and a check.
    for (n, pair) in times.windows(2).enumerate() {
        let gap = pair[1] - pair[0];
        let backoff = 0.2 * 2f64.powi(n as i32 + 1);
        assert!(
            gap >= backoff && gap < backoff + 0.6,
            "gap before attempt {} was {gap:.3} s, backoff {backoff} s",
            n + 2
        );
    }
    // No fourth attempt: wait for checks well past when it would have run
    // (attempt 4 would wait 1.6 s).
    eventually("more checks after giving up", LIMIT, || async {
        let last = metric(&d, "service_last_check_timestamp_seconds{service=\"nemotron\"}").await?;
        (last > failed_at + 2.0).then_some(())
    })
    .await;
    assert_eq!(std::fs::read_to_string(&runs).unwrap().lines().count(), 3);
    assert_eq!(
        metric(&d, "service_restarts_total{result=\"failure\",service=\"nemotron\"}").await,
        Some(3.0)
    );
    assert_eq!(
        metric(&d, "service_restart_attempt{service=\"nemotron\"}").await,
        Some(3.0)
    );
    assert_eq!(
        metric(&d, "service_status{service=\"nemotron\",status=\"failed\"}").await,
        Some(1.0)
    );
    assert!(
        metric(&d, "service_consecutive_failures{service=\"nemotron\"}")
            .await
            .unwrap()
            >= 10.0
    );
    let levels: Vec<(String, String)> = alerts(&d);
    assert_eq!(
        levels,
        [
            ("WARN".to_string(), "service_unhealthy".to_string()),
            ("ERROR".to_string(), "service_restart_failed".to_string()),
            ("ERROR".to_string(), "service_restart_failed".to_string()),
            ("ERROR".to_string(), "service_max_retries_exceeded".to_string()),
        ]
    );
    let log = d.log();
    assert!(
        log.contains("\"severity\":\"CRITICAL\""),
        "the give-up alert is CRITICAL"
    );

    // It comes back by itself: healthy again, still checked after `failed`.
    target.start().await;
    wait_status(&d, "nemotron", "healthy").await;
    assert_eq!(transitions(&d, "nemotron").last().unwrap(), "healthy");
    assert_eq!(metric(&d, "service_up{service=\"nemotron\"}").await, Some(1.0));
    assert_eq!(
        metric(&d, "service_consecutive_failures{service=\"nemotron\"}").await,
        Some(0.0)
    );
}

#[tokio::test]
async fn http_500_and_a_hang_are_unhealthy_and_alert_only_services_stay_so() {
    let mut target = HealthTarget::new();
    target.start().await;
    let d = daemon(&[service_yaml("embedder", "http", &target.url(), "    timeout: 300ms\n")]).await;
    wait_status(&d, "embedder", "healthy").await;

    target.set("500");
    let (code, body) = wait_status(&d, "embedder", "unhealthy").await;
    assert_eq!((code, body["status"].as_str()), (200, Some("degraded")), "not critical");
    let views: Value = reqwest::get(d.url("/api/system/stats"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(views["services"]["by_status"]["unhealthy"], 1);
    assert_eq!(views["services"]["total"], 1);

    target.set("ok");
    wait_status(&d, "embedder", "healthy").await;
    target.set("hang");
    wait_status(&d, "embedder", "unhealthy").await;
    // Still checked, never restarted: alert-only.
    let before = metric(&d, "service_last_check_timestamp_seconds{service=\"embedder\"}")
        .await
        .unwrap();
    eventually("two more (hanging) checks", LIMIT, || async {
        let last = metric(&d, "service_last_check_timestamp_seconds{service=\"embedder\"}").await?;
        (last > before + 0.5).then_some(())
    })
    .await;
    assert_eq!(
        metric(&d, "service_status{service=\"embedder\",status=\"unhealthy\"}").await,
        Some(1.0)
    );
    let changes = transitions(&d, "embedder");
    assert_eq!(changes, ["healthy", "unhealthy", "healthy", "unhealthy"]);
    let log = d.log();
    assert!(log.contains("HTTP 500"), "the 500 is explained");
    assert!(log.contains("no answer within 300ms"), "the hang is explained");
    assert_eq!(
        alerts(&d),
        [
            ("WARN".to_string(), "service_unhealthy".to_string()),
            ("WARN".to_string(), "service_unhealthy".to_string()),
        ]
    );
    let page = d.get_text("/metrics").await;
    assert!(
        sample_value(
            &page,
            "service_health_check_duration_seconds_count{service=\"embedder\"}"
        )
        .unwrap()
            >= 5.0
    );
}

#[tokio::test]
async fn redis_and_postgres_outages_and_recovery() {
    let mut redis = Redis::start().await;
    let mut pg = Postgres::start().await;
    let d = daemon(&[
        service_yaml("redis", "redis", &redis.url(), ""),
        service_yaml("postgres", "postgres", &pg.url(), "    critical: true\n"),
    ])
    .await;
    let (code, body) = wait_status(&d, "postgres", "healthy").await;
    wait_status(&d, "redis", "healthy").await;
    assert_eq!(code, 200);
    assert!(body["timestamp"].as_str().unwrap().ends_with('Z'));

    redis.kill();
    let (code, body) = wait_status(&d, "redis", "unhealthy").await;
    assert_eq!((code, body["status"].as_str()), (200, Some("degraded")));
    assert_eq!(metric(&d, "service_up{service=\"redis\"}").await, Some(0.0));
    assert_eq!(metric(&d, "service_up{service=\"postgres\"}").await, Some(1.0));
    redis.resume().await;
    wait_status(&d, "redis", "healthy").await;
    assert_eq!(metric(&d, "service_up{service=\"redis\"}").await, Some(1.0));

    pg.stop();
    let (code, body) = wait_status(&d, "postgres", "unhealthy").await;
    assert_eq!(
        (code, body["status"].as_str()),
        (503, Some("unhealthy")),
        "postgres is critical"
    );
    assert_eq!(metric(&d, "service_up{service=\"postgres\"}").await, Some(0.0));
    pg.resume().await;
    let (code, body) = wait_status(&d, "postgres", "healthy").await;
    assert_eq!((code, body["status"].as_str()), (200, Some("healthy")));
    assert_eq!(transitions(&d, "redis"), ["healthy", "unhealthy", "healthy"]);
    assert_eq!(transitions(&d, "postgres"), ["healthy", "unhealthy", "healthy"]);
}

/// True while `pid` is a live (not zombie) process.
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'),
        Err(_) => false,
    }
}

#[tokio::test]
async fn a_timed_out_restart_command_takes_its_children_with_it_and_no_argv_leaks() {
    let target = HealthTarget::new(); // not started: connection refused
    let pids = target.dir.path().join("children.txt");
    // `sh -c SCRIPT NAME`: the secret-looking argument is the script's $0.
    let command = vec![
        "sh".to_string(),
        "-c".to_string(),
        format!(
            "sleep 300 & echo $! >> {p}; sleep 300 & echo $! >> {p}; wait",
            p = pids.display()
        ),
        "--token=hunter2".to_string(),
    ];
    let extra = format!(
        "    max_retries: 2\n    backoff_base: 50ms\n    restart:\n      command: {}\n      timeout: 300ms\n      grace_period: 1h\n",
        serde_json::to_string(&command).unwrap()
    );
    let d = daemon(&[service_yaml("embedder", "http", &target.url(), &extra)]).await;
    let mut ws = WsClient::connect(&d.url("/ws/system").replace("http://", "ws://")).await;
    let mut seen = Vec::new();
    ws.wait_for("the service to give up after two killed attempts", LIMIT, |m| {
        seen.push(m.to_string());
        m["type"] == "service_status" && m["data"]["status"] == "failed"
    })
    .await;
    let children: Vec<i32> = std::fs::read_to_string(&pids)
        .unwrap()
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    assert_eq!(children.len(), 4, "two attempts, two children each");
    for pid in children {
        eventually(
            &format!("child {pid} of a killed restart command to be gone"),
            LIMIT,
            || async move { (!alive(pid)).then_some(()) },
        )
        .await;
    }
    let log = d.log();
    assert!(log.contains("killed after"), "{log}");
    assert!(!log.contains("hunter2"), "the argv is never logged: {log}");
    assert!(seen.iter().all(|m| !m.contains("hunter2")), "nor sent: {seen:?}");
}

#[tokio::test]
async fn a_restart_command_that_exits_non_zero_fails_at_once_with_its_stderr_in_the_log() {
    let target = HealthTarget::new(); // not started: connection refused
    let command = vec![
        "sh".to_string(),
        "-c".to_string(),
        "echo 'first line' >&2; echo 'cannot reach the docker socket' >&2; exit 3".to_string(),
        "--token=hunter2".to_string(),
    ];
    // A one-hour grace period: only an immediate decision gets past
    // `restarting` within the test's limit.
    let extra = format!(
        "    max_retries: 3\n    backoff_base: 50ms\n    restart:\n      command: {}\n      grace_period: 1h\n",
        serde_json::to_string(&command).unwrap()
    );
    let d = daemon(&[service_yaml("whisper", "http", &target.url(), &extra)]).await;
    wait_status(&d, "whisper", "restart_failed").await;
    let log = eventually("the failure in the log", LIMIT, || async {
        let log = d.log();
        log.contains("Restart command failed.").then_some(log)
    })
    .await;
    let line = log.lines().find(|l| l.contains("Restart command failed.")).unwrap();
    let v: Value = serde_json::from_str(line).unwrap();
    assert!(
        v["fields"]["error"].as_str().unwrap().contains("exit status: 3"),
        "{line}"
    );
    assert!(
        v["fields"]["stderr"]
            .as_str()
            .unwrap()
            .contains("cannot reach the docker socket"),
        "{line}"
    );
    assert!(!log.contains("hunter2"), "{log}");
    let failures = metric(&d, "service_restarts_total{result=\"failure\",service=\"whisper\"}")
        .await
        .unwrap();
    assert!(failures >= 1.0, "the failed attempt is counted: {failures}");
}

/// A restart command that appends `start END` lines (Unix times) around a
/// `secs` long run to `runs`, then exits `code`.
fn recording_restart(runs: &std::path::Path, secs: f64, code: i32) -> Vec<String> {
    vec![
        crate::common::python(),
        "-c".to_string(),
        format!(
            "import sys, time; f = open({p:?}, 'a'); s = time.time(); time.sleep({secs}); f.write('%f %f\\n' % (s, time.time())); sys.exit({code})",
            p = runs.display().to_string()
        ),
    ]
}

fn runs(path: &std::path::Path) -> Vec<(f64, f64)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let (a, b) = l.split_once(' ').unwrap();
            (a.parse().unwrap(), b.parse().unwrap())
        })
        .collect()
}

#[tokio::test]
async fn failures_under_the_threshold_are_counted_and_change_nothing() {
    let mut target = HealthTarget::new();
    target.start().await;
    let runs_file = target.dir.path().join("runs.txt");
    let extra = format!(
        "    failure_threshold: 10\n    timeout: 300ms\n    restart:\n      command: {}\n",
        serde_json::to_string(&recording_restart(&runs_file, 0.0, 0)).unwrap()
    );
    let d = daemon(&[service_yaml("rtdetr", "http", &target.url(), &extra)]).await;
    wait_status(&d, "rtdetr", "healthy").await;
    // 500s and hangs, each run ended by a pass long before ten in a row
    // (a second of checks: room for a slow machine).
    for (mode, reason) in [("500", "http_status"), ("hang", "timeout")] {
        target.set(mode);
        let series = format!("service_check_failures_total{{reason=\"{reason}\",service=\"rtdetr\"}}");
        eventually(&format!("a {reason} failure"), LIMIT, || async {
            (metric(&d, &series).await? >= 1.0).then_some(())
        })
        .await;
        target.set("ok");
        eventually("a pass after it", LIMIT, || async {
            (metric(&d, "service_consecutive_failures{service=\"rtdetr\"}").await? == 0.0).then_some(())
        })
        .await;
    }
    assert_eq!(transitions(&d, "rtdetr"), ["healthy"], "no status change");
    assert!(alerts(&d).is_empty(), "no alert: {:?}", alerts(&d));
    assert!(runs(&runs_file).is_empty(), "no restart");
    assert_eq!(
        metric(&d, "service_restart_attempt{service=\"rtdetr\"}").await,
        Some(0.0)
    );
    let debug_lines = d.log().lines().filter(|l| l.contains("Health check failed.")).count();
    assert_eq!(debug_lines, 0, "the per-failure line is DEBUG, not INFO");
}

#[tokio::test]
async fn http_checks_take_a_method_body_expected_status_and_body() {
    let mut target = HealthTarget::new();
    target.start().await;
    // The target answers GET /health with 200 and {"status":"ok"}.
    let ok = "    expect_status: [200]\n    expect_body: '\"ok\"'\n    slow_after: 1ms\n    headers: {X-Probe: inferwatch}\n";
    let wrong_body = "    expect_body: 'ready'\n    failure_threshold: 1\n";
    let wrong_status = "    expect_status: ['3xx', 204]\n    failure_threshold: 1\n";
    let d = daemon(&[
        service_yaml("a", "http", &target.url(), ok),
        service_yaml("b", "http", &target.url(), wrong_body),
        service_yaml("c", "http", &target.url(), wrong_status),
    ])
    .await;
    wait_status(&d, "a", "healthy").await;
    wait_status(&d, "b", "unhealthy").await;
    wait_status(&d, "c", "unhealthy").await;
    eventually("failures by reason", LIMIT, || async {
        let body = metric(&d, "service_check_failures_total{reason=\"body\",service=\"b\"}").await?;
        let status = metric(&d, "service_check_failures_total{reason=\"http_status\",service=\"c\"}").await?;
        (body >= 1.0 && status >= 1.0).then_some(())
    })
    .await;
    assert!(
        d.log().contains("the body does not contain \\\"ready\\\""),
        "{}",
        d.log()
    );
    eventually("a slow pass counted", LIMIT, || async {
        (metric(&d, "service_check_slow_total{service=\"a\"}").await? >= 1.0).then_some(())
    })
    .await;
    assert_eq!(
        metric(&d, "service_ready{service=\"a\"}").await,
        Some(1.0),
        "ready is the last check"
    );
    assert_eq!(metric(&d, "service_ready{service=\"b\"}").await, Some(0.0));
}

#[tokio::test]
async fn a_stalled_server_is_restarted_and_a_busy_one_is_not() {
    // nemotron: requests wait and the token counter is frozen. The restart
    // command stands in for a restart that unsticks it: the counter moves.
    let mut stuck = HealthTarget::new();
    stuck.start().await;
    stuck.set_metrics("2 1 frozen");
    let runs_file = stuck.dir.path().join("runs.txt");
    let unstick = vec![
        "sh".to_string(),
        "-c".to_string(),
        format!(
            "echo '0 0 moving' > {m}.tmp && mv {m}.tmp {m} && echo \"$(date +%s.%N) $(date +%s.%N)\" >> {r}",
            m = format!("{}.metrics", stuck.state_file()),
            r = runs_file.display()
        ),
    ];
    let progress = |t: &HealthTarget| {
        format!(
            "    progress: {{metrics_url: '{}', preset: vllm, stall_after: 1s}}\n",
            t.metrics_url()
        )
    };
    let stuck_extra = format!(
        "{}    backoff_base: 100ms\n    restart:\n      command: {}\n      grace_period: 100ms\n",
        progress(&stuck),
        serde_json::to_string(&unstick).unwrap()
    );
    // llama: just as busy, but it generates tokens.
    let mut busy = HealthTarget::new();
    busy.start().await;
    busy.set_metrics("5 4 moving");
    let busy_runs = busy.dir.path().join("runs.txt");
    let busy_extra = format!(
        "{}    backoff_base: 100ms\n    restart:\n      command: {}\n",
        progress(&busy),
        serde_json::to_string(&recording_restart(&busy_runs, 0.0, 0)).unwrap()
    );
    let d = daemon(&[
        service_yaml("nemotron", "http", &stuck.url(), &stuck_extra),
        service_yaml("llama", "http", &busy.url(), &busy_extra),
    ])
    .await;
    eventually("the stall to be seen", LIMIT, || async {
        (metric(&d, "service_stalled{service=\"nemotron\"}").await? == 1.0).then_some(())
    })
    .await;
    eventually("the restart to bring it back", LIMIT, || async {
        let ok = metric(&d, "service_restarts_total{result=\"success\",service=\"nemotron\"}").await?;
        (ok == 1.0).then_some(())
    })
    .await;
    wait_status(&d, "nemotron", "healthy").await;
    assert_eq!(runs(&runs_file).len(), 1, "exactly one restart");
    assert!(
        metric(
            &d,
            "service_check_failures_total{reason=\"stalled\",service=\"nemotron\"}"
        )
        .await
        .unwrap()
            >= 3.0,
        "three stalled checks reached the threshold"
    );
    assert_eq!(
        metric(&d, "service_restarts_total{result=\"success\",service=\"nemotron\"}").await,
        Some(1.0)
    );
    eventually("the stall to clear", LIMIT, || async {
        (metric(&d, "service_stalled{service=\"nemotron\"}").await? == 0.0).then_some(())
    })
    .await;
    assert!(d.log().contains("stalled: 3 pending"), "the reason is explained");

    // The busy one was checked as long, well past stall_after, and never
    // stalled.
    eventually("3 s of busy checks", LIMIT, || async {
        let n = metric(&d, "service_health_check_duration_seconds_count{service=\"llama\"}").await?;
        (n >= 30.0).then_some(())
    })
    .await;
    assert_eq!(metric(&d, "service_stalled{service=\"llama\"}").await, Some(0.0));
    assert_eq!(
        metric(&d, "service_check_failures_total{reason=\"stalled\",service=\"llama\"}").await,
        Some(0.0)
    );
    assert!(runs(&busy_runs).is_empty());
    assert_eq!(transitions(&d, "llama"), ["healthy"]);
}

#[tokio::test]
async fn services_whose_dependency_is_down_are_not_restarted() {
    let mut redis = Redis::start().await;
    let mut rtdetr = HealthTarget::new();
    rtdetr.start().await;
    let mut nemotron = HealthTarget::new();
    nemotron.start().await;
    let dependent = |t: &HealthTarget| {
        let runs = t.dir.path().join("runs.txt");
        format!(
            "    depends_on: [redis]\n    backoff_base: 100ms\n    restart:\n      command: {}\n",
            serde_json::to_string(&recording_restart(&runs, 0.0, 0)).unwrap()
        )
    };
    let d = daemon(&[
        service_yaml("redis", "redis", &redis.url(), "    failure_threshold: 1\n"),
        service_yaml("rtdetr", "http", &rtdetr.url(), &dependent(&rtdetr)),
        service_yaml("nemotron", "http", &nemotron.url(), &dependent(&nemotron)),
    ])
    .await;
    for s in ["redis", "rtdetr", "nemotron"] {
        wait_status(&d, s, "healthy").await;
    }
    // Redis goes down, and with it every AI service's check. (The daemon
    // knows Redis is down once its own check says so: a service failing
    // before that is rightly its own failure, so the services break after.)
    redis.kill();
    wait_status(&d, "redis", "unhealthy").await;
    rtdetr.set("503");
    nemotron.set("503");
    for s in ["rtdetr", "nemotron"] {
        wait_status(&d, s, "unhealthy").await;
        let series = format!("service_check_failures_total{{reason=\"dependency\",service=\"{s}\"}}");
        eventually("many dependency failures", LIMIT, || async {
            (metric(&d, &series).await? >= 10.0).then_some(())
        })
        .await;
    }
    assert!(
        d.log().contains("redis, which it depends on, is not healthy"),
        "the log names the dependency"
    );
    // The services answer again, then Redis comes back: everything is
    // healthy without a restart. (In this order no check fails while Redis
    // is already healthy, which would rightly count as their own failure.)
    rtdetr.set("ok");
    nemotron.set("ok");
    redis.resume().await;
    for s in ["redis", "rtdetr", "nemotron"] {
        wait_status(&d, s, "healthy").await;
    }
    for t in [&rtdetr, &nemotron] {
        assert!(runs(&t.dir.path().join("runs.txt")).is_empty(), "nothing was restarted");
    }
    assert_eq!(
        metric(&d, "service_restart_attempt{service=\"rtdetr\"}").await,
        Some(0.0)
    );
    assert_eq!(
        metric(
            &d,
            "service_check_failures_total{reason=\"http_status\",service=\"rtdetr\"}"
        )
        .await,
        Some(0.0),
        "every failure while redis was down has reason dependency"
    );
}

#[tokio::test]
async fn restarts_of_many_failing_services_never_overlap() {
    // Three services that never come up, and restart commands that take
    // 300 ms and fail: 2 attempts each, one at a time.
    let targets: Vec<HealthTarget> = (0..3).map(|_| HealthTarget::new()).collect();
    let runs_file = targets[0].dir.path().join("all_runs.txt");
    let services: Vec<String> = targets
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let extra = format!(
                "    failure_threshold: 1\n    max_retries: 2\n    backoff_base: 50ms\n    restart:\n      command: {}\n",
                serde_json::to_string(&recording_restart(&runs_file, 0.3, 1)).unwrap()
            );
            service_yaml(&format!("svc{i}"), "http", &t.url(), &extra)
        })
        .collect();
    let config = format!(
        "gpu:\n  enabled: false\nhealth:\n  max_concurrent_restarts: 1\n  services:\n{}",
        services.concat()
    );
    let d = Daemon::start_with_args(&config, &[], &["--log.format=json", "--log.level=info"]).await;
    for i in 0..3 {
        wait_status(&d, &format!("svc{i}"), "failed").await;
    }
    let mut spans = runs(&runs_file);
    assert_eq!(spans.len(), 6, "two attempts for each of three services");
    spans.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
    for pair in spans.windows(2) {
        assert!(pair[1].0 >= pair[0].1, "restart commands overlapped: {spans:?}");
    }
    assert!(d.log().contains("Restart waits its turn"), "the wait is logged");
}

#[tokio::test]
async fn a_service_in_its_start_period_is_starting_everywhere_and_its_failures_do_not_count() {
    let target = HealthTarget::new(); // not started: still loading, say
    let extra = "    failure_threshold: 1\n    start_period: 1h\n    start_interval: 100ms\n    restart:\n      command: [\"false\"]\n";
    let d = daemon(&[service_yaml("nemotron", "http", &target.url(), extra)]).await;
    let mut ws = WsClient::connect(&d.url("/ws/system").replace("http://", "ws://")).await;
    let snap = ws
        .wait_for("the snapshot", LIMIT, |m| m["type"] == "service_status")
        .await;
    assert_eq!(snap["data"]["starting"], true, "{snap}");
    eventually("many connect failures", LIMIT, || async {
        (metric(
            &d,
            "service_check_failures_total{reason=\"connect\",service=\"nemotron\"}",
        )
        .await?
            >= 10.0)
            .then_some(())
    })
    .await;
    assert_eq!(metric(&d, "service_starting{service=\"nemotron\"}").await, Some(1.0));
    assert_eq!(
        metric(&d, "service_consecutive_failures{service=\"nemotron\"}").await,
        Some(0.0),
        "failures inside the start period do not count"
    );
    assert_eq!(
        metric(&d, "service_restart_attempt{service=\"nemotron\"}").await,
        Some(0.0)
    );
    assert!(alerts(&d).is_empty(), "{:?}", alerts(&d));
    assert!(d.log().contains("starting: "), "the message says it is starting");
}

/// The daemon's own dependencies in `/api/system/health`, as the seed
/// names them: `redis` (the queue Redis) and `database` (the history
/// store), alert-only: one down makes the answer degraded, never 503.
#[tokio::test]
async fn the_queue_redis_and_the_history_store_are_listed_as_the_seed_names_them() {
    let mut redis = Redis::start().await;
    let mut pg = Postgres::start().await;
    let cfg = format!(
        "gpu:\n  enabled: false\npipeline:\n  stream:\n    enabled: false\nqueues:\n  redis_url: {}\n  poll_interval: 100ms\n\
         store:\n  url: {}\n  flush_interval: 100ms\n",
        redis.url(),
        pg.url()
    );
    let d = Daemon::start(&cfg, &[]).await;
    let status = async |want: (&str, &str, &str)| {
        eventually(&format!("{want:?}"), Duration::from_secs(30), async || {
            let resp = reqwest::get(d.url("/api/system/health")).await.unwrap();
            let code = resp.status().as_u16();
            let body: Value = resp.json().await.unwrap();
            let got = (
                body["status"].as_str()?,
                body["services"]["redis"].as_str()?,
                body["services"]["database"].as_str()?,
            );
            (got == want).then_some((code, body))
        })
        .await
    };
    let (code, _) = status(("healthy", "healthy", "healthy")).await;
    assert_eq!(code, 200);
    redis.kill();
    let (code, _) = status(("degraded", "unhealthy", "healthy")).await;
    assert_eq!(code, 200, "alert-only: never a 503");
    pg.stop();
    status(("degraded", "unhealthy", "unhealthy")).await;
    assert!(d
        .get_text("/metrics")
        .await
        .contains("inferwatch_collector_success{collector=\"queues\"} 0"));
}
