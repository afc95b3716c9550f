//! Live reload against the real binary: `SIGHUP` and `POST /-/reload`
//! add and remove health services (checked against real HTTP targets),
//! rename queues (a real Redis), change GPU cadences and exclusions (the
//! fake NVML's own call counts), switch on a web config and the log level;
//! a broken file changes nothing; WebSocket clients and the history ring
//! live through it.

use std::time::Duration;

use serde_json::Value;

use crate::common::fake_gpu::{finished, gpus_state, polls, Driver, FakeGpus};
use crate::common::health_target::HealthTarget;
use crate::common::redis_server::Redis;
use crate::common::ws::WsClient;
use crate::common::*;

const LIMIT: Duration = Duration::from_secs(30);

/// `POST /-/reload`: the status and the JSON body.
async fn post_reload(d: &Daemon, token: Option<&str>) -> (u16, Value) {
    let mut req = reqwest::Client::new().post(d.url("/-/reload"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    let code = resp.status().as_u16();
    (code, resp.json().await.unwrap())
}

/// Waits until the log has `n` lines containing `text`.
async fn logged(d: &Daemon, text: &str, n: usize) -> String {
    eventually(&format!("{n}× {text:?} in the log"), LIMIT, || async {
        let log = d.log();
        (log.matches(text).count() >= n).then_some(log)
    })
    .await
}

fn services(targets: &[(&str, &HealthTarget)]) -> String {
    let mut s = String::from("gpu:\n  enabled: false\nqueues:\n  enabled: false\nhealth:\n  services:\n");
    for (name, t) in targets {
        s += &format!(
            "    - {{name: {name}, kind: http, url: \"{}\", interval: 200ms, failure_threshold: 1}}\n",
            t.url()
        );
    }
    s
}

fn series_of(page: &str, service: &str) -> Vec<String> {
    let label = format!("service=\"{service}\"");
    page.lines()
        .filter(|l| !l.starts_with('#') && l.contains(&label))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_added_by_sighup_are_checked_and_removed_ones_lose_their_series() {
    let (mut a, mut b) = (HealthTarget::new(), HealthTarget::new());
    a.start().await;
    b.start().await;
    let d = Daemon::start_with_args(&services(&[("a", &a)]), &[], &["--web.enable-lifecycle"]).await;
    d.until("service_up{service=\"a\"}", "a healthy", |v| v == 1.0).await;
    assert!(series_of(&d.get_text("/metrics").await, "b").is_empty());

    d.rewrite(&services(&[("a", &a), ("b", &b)]));
    d.sighup();
    d.until(
        "service_up{service=\"b\"}",
        "b, added by SIGHUP, checked and healthy",
        |v| v == 1.0,
    )
    .await;
    let checks = d
        .until(
            "service_health_check_duration_seconds_count{service=\"b\"}",
            "b checked",
            |v| v >= 1.0,
        )
        .await;
    assert!(checks >= 1.0);
    // Checked for real: the target going bad turns it unhealthy.
    b.set("500");
    d.until("service_up{service=\"b\"}", "b down after its target fails", |v| {
        v == 0.0
    })
    .await;
    b.set("ok");
    d.until("service_up{service=\"b\"}", "b back", |v| v == 1.0).await;

    // Remove a by the endpoint: its series go, b keeps its state.
    d.rewrite(&services(&[("b", &b)]));
    let (code, body) = post_reload(&d, None).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["changed"], serde_json::json!(["health.services"]), "{body}");
    assert_eq!(body["not_applied"], serde_json::json!([]));
    let page = d.get_text("/metrics").await;
    assert_eq!(series_of(&page, "a"), Vec::<String>::new(), "every series of a is gone");
    assert_eq!(
        sample_value(&page, "service_up{service=\"b\"}"),
        Some(1.0),
        "a service that stays keeps its status through the reload"
    );
    let health = d.get_json("/api/system/health").await;
    // The configured services (the daemon's own redis and database beside
    // them are not configured ones).
    let names: Vec<&String> = health["services"]
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| !["redis", "database"].contains(&k.as_str()))
        .collect();
    assert_eq!(names, ["b"], "{health}");
    assert_eq!(
        sample_value(&page, "inferwatch_config_last_reload_successful"),
        Some(1.0)
    );
    // a is checked no more: killing its target changes nothing.
    a.kill();
    d.until(
        "service_health_check_duration_seconds_count{service=\"b\"}",
        "b checked again",
        |v| v >= checks + 3.0,
    )
    .await;
    assert!(series_of(&d.get_text("/metrics").await, "a").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_file_changes_nothing_and_says_why() {
    let mut a = HealthTarget::new();
    a.start().await;
    let good = services(&[("a", &a)]);
    let d = Daemon::start_with_args(&good, &[], &["--web.enable-lifecycle"]).await;
    d.until("service_up{service=\"a\"}", "a healthy", |v| v == 1.0).await;
    let started = d
        .until(
            "inferwatch_config_last_reload_success_timestamp_seconds",
            "the startup load",
            |v| v > 0.0,
        )
        .await;

    // Not YAML: SIGHUP fails, logs why, and the metric says so.
    d.rewrite("health: [\n");
    d.sighup();
    d.until("inferwatch_config_last_reload_successful", "the failed reload", |v| {
        v == 0.0
    })
    .await;
    let log = logged(&d, "Config reload failed; the config in force is unchanged.", 1).await;
    assert!(log.contains("SIGHUP"), "{log}");

    // Valid YAML, a value out of range: a 400 naming the key and the range.
    let mut bad = services(&[("a", &a)]);
    bad = bad.replace(
        "gpu:\n  enabled: false\n",
        "gpu:\n  enabled: false\n  poll_interval: 0.01\n",
    );
    bad += "    - {name: b, kind: http, url: \"http://127.0.0.1:9/\"}\n";
    d.rewrite(&bad);
    let (code, body) = post_reload(&d, None).await;
    assert_eq!(code, 400, "{body}");
    assert_eq!(body["code"], "invalid_config");
    let msg = body["error"].as_str().unwrap();
    assert!(
        msg.contains("gpu.poll_interval") && msg.contains("1–60 seconds"),
        "{msg}"
    );
    assert_eq!(body["detail"]["config_in_force"], "unchanged");

    // Nothing changed: no b, a still checked and healthy, the old timestamp.
    let page = d.get_text("/metrics").await;
    assert!(series_of(&page, "b").is_empty(), "b of the broken file was not started");
    assert_eq!(sample_value(&page, "service_up{service=\"a\"}"), Some(1.0));
    assert_eq!(
        sample_value(&page, "inferwatch_config_last_reload_success_timestamp_seconds"),
        Some(started)
    );
    let before = sample_value(&page, "service_health_check_duration_seconds_count{service=\"a\"}").unwrap();
    d.until(
        "service_health_check_duration_seconds_count{service=\"a\"}",
        "a still checked",
        |v| v >= before + 2.0,
    )
    .await;

    // The file fixed: the next reload succeeds.
    d.rewrite(&good);
    let (code, body) = post_reload(&d, None).await;
    assert_eq!((code, body["changed"].clone()), (200, serde_json::json!([])), "{body}");
    let page = d.get_text("/metrics").await;
    assert_eq!(
        sample_value(&page, "inferwatch_config_last_reload_successful"),
        Some(1.0)
    );
    assert!(sample_value(&page, "inferwatch_config_last_reload_success_timestamp_seconds").unwrap() > started);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_that_need_a_restart_are_reported_and_kept() {
    let base = "gpu:\n  enabled: false\nqueues:\n  enabled: false\n";
    let d = Daemon::start_with_args(base, &[], &["--web.enable-lifecycle", "--log.level=info"]).await;
    let elsewhere = d.dir.path().join("elsewhere");
    d.rewrite(&format!(
        "data_dir: {}\nstore:\n  url: sqlite://{}/h.db\n{base}websocket:\n  max_clients: 7\nlog:\n  level: debug\n",
        elsewhere.display(),
        elsewhere.display()
    ));
    let (code, body) = post_reload(&d, None).await;
    assert_eq!(code, 200, "{body}");
    let kept: Vec<&str> = body["not_applied"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["key"].as_str().unwrap())
        .collect();
    assert_eq!(kept, ["data_dir", "store", "websocket", "log.level"], "{body}");
    let why = &body["not_applied"][0]["reason"];
    assert!(why.as_str().unwrap().contains("restart inferwatch"), "{why}");
    assert!(
        body["not_applied"][3]["reason"]
            .as_str()
            .unwrap()
            .contains("--log.level"),
        "{body}"
    );
    assert_eq!(body["changed"], serde_json::json!([]));
    // Kept means kept: the old store stays, the new directory is not made,
    // and the fixed level logs no DEBUG line.
    assert!(!elsewhere.exists());
    assert!(d.dir.path().join("data").exists());
    let log = logged(&d, "these changes wait for a restart", 1).await;
    assert!(log.contains("data_dir") && log.contains("websocket"), "{log}");
    assert!(!log.contains("DEBUG"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoint_needs_the_lifecycle_flag_and_the_token_and_sighup_needs_neither() {
    let base = "gpu:\n  enabled: false\nqueues:\n  enabled: false\napi:\n  token: s3cret-token-for-tests\n";
    let off = Daemon::start(base, &[]).await;
    let (code, body) = post_reload(&off, Some("s3cret-token-for-tests")).await;
    assert_eq!(
        (code, body["code"].as_str()),
        (403, Some("lifecycle_disabled")),
        "{body}"
    );
    assert!(body["error"].as_str().unwrap().contains("--web.enable-lifecycle"));
    // SIGHUP works without the flag: the log level goes to debug.
    off.rewrite(&format!("{base}log:\n  level: debug\n"));
    off.sighup();
    logged(&off, "Config reloaded.", 1).await;
    logged(&off, "DEBUG", 1).await;

    let on = Daemon::start_with_args(base, &[], &["--web.enable-lifecycle"]).await;
    let (code, _) = post_reload(&on, None).await;
    assert_eq!(code, 401, "no token");
    let (code, _) = post_reload(&on, Some("wrong")).await;
    assert_eq!(code, 401, "a wrong token");
    let (code, body) = post_reload(&on, Some("s3cret-token-for-tests")).await;
    assert_eq!(code, 200, "{body}");
    let get = reqwest::Client::new()
        .get(on.url("/-/reload"))
        .bearer_auth("s3cret-token-for-tests")
        .send()
        .await
        .unwrap();
    assert_eq!(get.status().as_u16(), 405, "POST only");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_switches_on_a_web_config() {
    let base = "gpu:\n  enabled: false\nqueues:\n  enabled: false\n";
    let d = Daemon::start_with_args(base, &[], &["--web.enable-lifecycle"]).await;
    let web = d.dir.path().join("web.yml");
    let hash = bcrypt::hash("pw", 4).unwrap();
    std::fs::write(&web, format!("basic_auth_users:\n  alice: '{hash}'\n")).unwrap();
    d.rewrite(&format!("{base}web:\n  config_file: {}\n", web.display()));
    let (code, body) = post_reload(&d, None).await;
    assert_eq!(
        (code, body["changed"].clone()),
        (200, serde_json::json!(["web.config_file"])),
        "{body}"
    );
    let client = reqwest::Client::new();
    let plain = client.get(d.url("/metrics")).send().await.unwrap();
    assert_eq!(plain.status().as_u16(), 401, "basic auth is on");
    let authed = client
        .get(d.url("/metrics"))
        .basic_auth("alice", Some("pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(authed.status().as_u16(), 200);
    // A broken web config fails the whole reload, and the good one stays.
    std::fs::write(&web, "basic_auth_users:\n  alice: not-a-hash\n").unwrap();
    let (code, body) = client
        .post(d.url("/-/reload"))
        .basic_auth("alice", Some("pw"))
        .send()
        .await
        .map(|r| (r.status().as_u16(), r))
        .unwrap();
    let body: Value = body.json().await.unwrap();
    assert_eq!(code, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("basic_auth_users.alice"),
        "{body}"
    );
    let authed = client
        .get(d.url("/metrics"))
        .basic_auth("alice", Some("pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(authed.status().as_u16(), 200, "the last good web config stays");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_names_change_live() {
    let redis = Redis::start().await;
    redis.lpush("dlq:b", &["{\"id\":\"j1\"}", "{\"id\":\"j2\"}"]).await;
    let queues = |names: &str| {
        format!(
            "gpu:\n  enabled: false\nqueues:\n  redis_url: {}\n  poll_interval: 100ms\n  names: [{names}]\n",
            redis.url()
        )
    };
    let d = Daemon::start_with_args(&queues("a"), &[], &["--web.enable-lifecycle"]).await;
    d.until("dlq_depth{queue=\"a\"}", "a polled", |v| v == 0.0).await;
    let unknown = reqwest::get(d.url("/api/dlq/jobs/dlq:b")).await.unwrap();
    assert_eq!(unknown.status().as_u16(), 404, "b is not a configured queue yet");

    d.rewrite(&queues("a, b"));
    let (code, body) = post_reload(&d, None).await;
    assert_eq!(
        (code, body["changed"].clone()),
        (200, serde_json::json!(["queues.names"])),
        "{body}"
    );
    d.until("dlq_depth{queue=\"b\"}", "b polled after the reload", |v| v == 2.0)
        .await;
    let jobs: Value = reqwest::get(d.url("/api/dlq/jobs/dlq:b"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(jobs["total"], 2, "{jobs}");

    d.rewrite(&queues("b"));
    let (code, _) = post_reload(&d, None).await;
    assert_eq!(code, 200);
    let page = eventually("a's depth series gone", LIMIT, || async {
        let page = d.get_text("/metrics").await;
        (!page.contains("queue=\"a\"")).then_some(page)
    })
    .await;
    assert_eq!(sample_value(&page, "dlq_depth{queue=\"b\"}"), Some(2.0));
    let gone = reqwest::get(d.url("/api/dlq/jobs/dlq:a")).await.unwrap();
    assert_eq!(gone.status().as_u16(), 404, "a is no longer a configured queue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_clients_and_the_history_ring_live_through_a_reload_of_the_gpu_cadence_and_exclusions() {
    let fake = FakeGpus::new(Driver::Current, &gpus_state(1));
    let gpu = |extra: &str| {
        format!(
            "gpu:\n  nvml_library: {}\n  poll_interval: 1s\n{extra}queues:\n  enabled: false\n",
            fake.lib_str()
        )
    };
    let d = Daemon::start_with_args(&gpu(""), &[], &["--web.enable-lifecycle"]).await;
    let mut ws = WsClient::connect(&format!("ws://127.0.0.1:{}/ws/system", d.port)).await;
    ws.wait_for("a GPU update", LIMIT, |m| m["type"] == "gpu_stats").await;
    let calls = polls(&fake, 3).await;
    let fan_before = calls["nvmlDeviceGetFanSpeed_v2"];
    assert!(fan_before > 0, "the fan is read before the reload");

    d.rewrite(&gpu("  fields:\n    exclude: [fan_speed]\n").replace("poll_interval: 1s", "poll_interval: 2s"));
    let (code, body) = post_reload(&d, None).await;
    assert_eq!(
        (code, body["changed"].clone()),
        (200, serde_json::json!(["gpu.poll_interval", "gpu.fields"])),
        "{body}"
    );
    // The runner asks for the interval each round, and says what it uses.
    d.until(
        "inferwatch_collector_interval_seconds{collector=\"gpu\"}",
        "the new cadence",
        |v| v == 2.0,
    )
    .await;
    // The same connection keeps getting updates.
    let after = finished(&fake.calls());
    let polled = polls(&fake, after + 2).await;
    ws.wait_for("a GPU update after the reload", LIMIT, |m| m["type"] == "gpu_stats")
        .await;
    let later = polls(&fake, finished(&polled) + 2).await;
    assert_eq!(
        later["nvmlDeviceGetFanSpeed_v2"], polled["nvmlDeviceGetFanSpeed_v2"],
        "the excluded field is read no more"
    );
    assert!(!d.get_text("/metrics").await.contains("\ngpu_fan_speed_ratio{"));

    // Every poll since the start has its sample in the ring, before and
    // after the reload: the ring was not reset and no poll was skipped.
    let before = finished(&fake.calls());
    let history = d.get_json("/api/system/gpu/history?minutes=5&gpu=0").await;
    let upto = finished(&fake.calls());
    let samples = history["samples"].as_array().unwrap();
    let n = samples.len() as u64;
    assert!(n >= before && n <= upto + 1, "{n} samples for {before}..={upto} polls");
    let times: Vec<&str> = samples.iter().map(|s| s["recorded_at"].as_str().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] < w[1]), "{times:?}");
    // The socket was never closed.
    ws.wait_for("one more update", LIMIT, |m| m["type"] == "gpu_stats")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_threshold_applies_to_the_running_service() {
    let mut a = HealthTarget::new();
    a.start().await;
    let d = Daemon::start_with_args(&services(&[("a", &a)]), &[], &["--web.enable-lifecycle"]).await;
    d.until("service_up{service=\"a\"}", "a healthy", |v| v == 1.0).await;
    // From one failure to fifty before a verdict.
    d.rewrite(&services(&[("a", &a)]).replace("failure_threshold: 1", "failure_threshold: 50"));
    let (code, body) = post_reload(&d, None).await;
    assert_eq!(
        (code, body["changed"].clone()),
        (200, serde_json::json!(["health.services"])),
        "{body}"
    );
    a.set("500");
    d.until("service_consecutive_failures{service=\"a\"}", "three failures", |v| {
        v >= 3.0
    })
    .await;
    let page = d.get_text("/metrics").await;
    assert_eq!(
        sample_value(&page, "service_up{service=\"a\"}"),
        Some(1.0),
        "under the new threshold three failures are no verdict"
    );
    assert!(d.log().contains("Service changed by a reload"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_service_before_its_first_check_ends_does_not_hold_readiness() {
    let mut hung = HealthTarget::new();
    hung.start().await;
    hung.set("hang");
    let config = format!(
        "gpu:\n  enabled: false\nqueues:\n  enabled: false\nhealth:\n  services:\n    - {{name: slow, kind: http, url: \"{}\", timeout: 60s}}\n",
        hung.url()
    );
    let d = Daemon::spawn(&config, &[], &["--web.enable-lifecycle"], None);
    wait_for_2xx("the daemon to serve", &d.url("/-/healthy")).await;
    let not_ready = reqwest::get(d.url("/-/ready")).await.unwrap();
    assert_eq!(not_ready.status().as_u16(), 503, "the first check hangs");
    d.rewrite("gpu:\n  enabled: false\nqueues:\n  enabled: false\n");
    let (code, body) = post_reload(&d, None).await;
    assert_eq!(code, 200, "{body}");
    wait_for_2xx("ready once the hanging service is gone", &d.url("/-/ready")).await;
}
