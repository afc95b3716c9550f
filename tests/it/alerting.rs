//! Alerting end to end with the shipped files: a hot GPU on the fake NVML,
//! the real daemon, a real Prometheus evaluating a copy of alert_rules.yml
//! (only the `for:` durations shortened, and the host-disk group left out;
//! promtool's unit tests cover both as shipped), a real Alertmanager running a copy of alertmanager.yml (only the
//! SMTP server and the grouping waits changed) and a real SMTP server that
//! requires the password from `smtp_auth_password_file`.

use std::time::Duration;

use crate::common::alerting::{fast_prometheus, fast_rules, firing, smtp_secret, state, test_alertmanager, USER};
use crate::common::{eventually, Alertmanager, Daemon, Driver, FakeGpus, Prometheus, SmtpSink};

const HOT_UUID: &str = "GPU-00000001-1111-2222-3333-444444444444";

/// The SMTP server, its password file and an Alertmanager sending to it.
async fn mail_path() -> (SmtpSink, Alertmanager, tempfile::TempDir) {
    let (sink, secrets, password_file) = smtp_secret().await;
    let am = Alertmanager::start(&test_alertmanager(sink.port, &password_file)).await;
    (sink, am, secrets)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_gpu_is_emailed_and_then_resolved() {
    let fake = FakeGpus::new(Driver::Current, &state(60));
    let config = format!(
        "gpu:\n  nvml_library: {}\n  poll_interval: 1s\nqueues:\n  enabled: false\n",
        fake.lib_str()
    );
    let daemon = Daemon::start(&config, &[]).await;

    let (sink, am, _secrets) = mail_path().await;

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("alert_rules.yml"), fast_rules()).unwrap();
    let prom_config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [alert_rules.yml]\n\
         alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: ['127.0.0.1:{}']\n\
         scrape_configs:\n  - job_name: inferwatch\n    static_configs:\n      - targets: ['127.0.0.1:{}']\n",
        am.port, daemon.port
    );
    let prom = Prometheus::start_with_config(dir, &prom_config).await;
    eventually("Prometheus to scrape GPU 1 at 60 °C", Duration::from_secs(60), || {
        let prom = &prom;
        async move {
            let r = prom
                .query(&format!("gpu_temperature_celsius{{uuid=\"{HOT_UUID}\"}}"))
                .await;
            r.first().filter(|s| s["value"][1] == "60").map(|_| ())
        }
    })
    .await;
    assert!(sink.messages().is_empty(), "no email while the GPUs are cool");

    fake.set(&state(90));
    let firing = tokio::time::timeout(
        Duration::from_secs(90),
        eventually("the firing email", Duration::from_secs(100), || {
            let sink = &sink;
            async move {
                sink.messages()
                    .into_iter()
                    .find(|m| m["subject"].as_str().unwrap_or("").contains("GpuTemperatureHigh"))
            }
        }),
    )
    .await
    .unwrap_or_else(|_| {
        panic!(
            "no firing email in 90 s\nalertmanager log:\n{}\nsmtp log:\n{}",
            am.log(),
            sink.log()
        )
    });
    let subject = firing["subject"].as_str().unwrap();
    assert!(
        subject.starts_with("[FIRING:1] GpuTemperatureHigh"),
        "subject: {subject}"
    );
    let text = firing["text"].as_str().unwrap();
    assert!(
        text.contains(&format!("GPU 1 ({HOT_UUID})")),
        "body names the GPU:\n{text}"
    );
    assert!(text.contains("is at 90 °C, above 85 °C"), "{text}");
    assert!(text.contains("docs/runbooks.md#gputemperaturehigh"), "{text}");
    assert!(!text.contains("GPU 0 ("), "only the hot GPU fires:\n{text}");
    assert!(firing["html"].as_str().unwrap().contains(HOT_UUID));
    // Warnings go to the warning receiver, authenticated with the file's password.
    assert_eq!(firing["to"], serde_json::json!(["team@example.com"]));
    assert_eq!(firing["login"], USER);

    fake.set(&state(60));
    let resolved = eventually("the resolved email", Duration::from_secs(90), || {
        let sink = &sink;
        async move {
            sink.messages().into_iter().find(|m| {
                m["subject"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("[RESOLVED] GpuTemperatureHigh")
            })
        }
    })
    .await;
    let text = resolved["text"].as_str().unwrap();
    assert!(text.contains("1 resolved:"), "{text}");
    assert!(text.contains(&format!("GPU 1 ({HOT_UUID})")), "{text}");
    assert!(text.contains("Resolved: "), "{text}");

    // Nothing else was emailed: the Watchdog has its own receiver.
    let subjects: Vec<String> = sink
        .messages()
        .iter()
        .map(|m| m["subject"].as_str().unwrap().to_string())
        .collect();
    assert!(
        subjects.iter().all(|s| s.contains("GpuTemperatureHigh")),
        "unexpected emails: {subjects:?}\nalertmanager log:\n{}",
        am.log()
    );
}

/// Posts alerts straight to Alertmanager's v2 API, as Prometheus does.
async fn post_alerts(am: &Alertmanager, alerts: serde_json::Value) {
    let r = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{}/api/v2/alerts", am.port))
        .json(&alerts)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
}

fn alert(name: &str, severity: &str, extra: &[(&str, &str)]) -> serde_json::Value {
    let mut labels = serde_json::json!({
        "alertname": name, "severity": severity, "job": "inferwatch", "instance": "gpu-node-01:8790",
    });
    for (k, v) in extra {
        labels[*k] = (*v).into();
    }
    serde_json::json!({
        "labels": labels,
        "annotations": {"summary": format!("{name} summary"), "description": format!("{name} {severity} description")},
        "generatorURL": "http://prometheus.example:9090/graph",
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_and_inhibition_in_a_real_alertmanager() {
    let (sink, am, _secrets) = mail_path().await;

    post_alerts(
        &am,
        serde_json::json!([
            // Two tiers of one alert: the critical one inhibits the warning.
            alert("DiskUsageHigh", "critical", &[("path", "/data")]),
            alert("DiskUsageHigh", "warning", &[("path", "/data")]),
            // Giving up on a service inhibits its failed-restart warnings.
            alert("ServiceMaxRetriesExceeded", "critical", &[("service", "rtdetr")]),
            alert("ServiceRestartFailed", "warning", &[("service", "rtdetr")]),
            // Not inhibited: another service, and info (never emailed).
            alert("ServiceRestartFailed", "warning", &[("service", "nemotron")]),
            alert("GpuInfoOnly", "info", &[]),
            alert("Watchdog", "info", &[]),
        ]),
    )
    .await;

    // Alertmanager's own verdict on each alert.
    let states = eventually("the inhibitions to apply", Duration::from_secs(30), || {
        let port = am.port;
        async move {
            let alerts: Vec<serde_json::Value> = reqwest::get(format!("http://127.0.0.1:{port}/api/v2/alerts"))
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            let suppressed = alerts.iter().filter(|a| a["status"]["state"] == "suppressed").count();
            (alerts.len() == 7 && suppressed == 2).then_some(alerts)
        }
    })
    .await;
    for a in &states {
        let l = &a["labels"];
        let inhibited = !a["status"]["inhibitedBy"].as_array().unwrap().is_empty();
        let expect = (l["alertname"] == "DiskUsageHigh" && l["severity"] == "warning")
            || (l["alertname"] == "ServiceRestartFailed" && l["service"] == "rtdetr");
        assert_eq!(inhibited, expect, "{l}");
    }

    // Three emails: the two criticals to on-call, the free warning to the team.
    let mails = eventually("three emails", Duration::from_secs(30), || {
        let sink = &sink;
        async move {
            let m = sink.messages();
            (m.len() >= 3).then_some(m)
        }
    })
    .await;
    let mut got: Vec<(String, String)> = mails
        .iter()
        .map(|m| {
            (
                m["subject"].as_str().unwrap().to_string(),
                m["to"][0].as_str().unwrap().to_string(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            (
                "[FIRING:1] DiskUsageHigh gpu-node-01:8790".to_string(),
                "oncall@example.com".to_string()
            ),
            (
                "[FIRING:1] ServiceMaxRetriesExceeded gpu-node-01:8790 rtdetr".into(),
                "oncall@example.com".into()
            ),
            (
                "[FIRING:1] ServiceRestartFailed gpu-node-01:8790 nemotron".into(),
                "team@example.com".into()
            ),
        ]
    );
    let disk = mails
        .iter()
        .find(|m| m["subject"].as_str().unwrap().contains("DiskUsageHigh"))
        .unwrap();
    assert!(disk["text"]
        .as_str()
        .unwrap()
        .contains("DiskUsageHigh critical description"));
    assert!(!disk["text"].as_str().unwrap().contains("warning description"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpu_driver_down_fires_in_prometheus_and_resolves_when_the_driver_loads() {
    // nvmlInit answers DRIVER_NOT_LOADED (nvml.h: 9) until the test "loads
    // the module" by rewriting the state file.
    let fake = FakeGpus::new(Driver::Current, &format!("init_error 9\n{}", state(60)));
    let config = format!(
        "gpu:\n  nvml_library: {}\n  poll_interval: 1s\nqueues:\n  enabled: false\n",
        fake.lib_str()
    );
    let daemon = Daemon::start_with_args(&config, &[], &["--log.format=json"]).await;
    let prom = fast_prometheus(daemon.port).await;
    let alert = "ALERTS{alertname=\"GpuDriverDown\",alertstate=\"firing\"}";
    let firing = firing(&prom, "GpuDriverDown").await;
    assert_eq!(firing["metric"]["reason"], "driver_not_loaded", "{firing}");
    assert_eq!(firing["metric"]["severity"], "critical");
    let success = prom.query("inferwatch_collector_success{collector=\"gpu\"}").await;
    assert_eq!(success[0]["value"][1], "0", "a failing collector, not mock mode");

    fake.set(&state(60));
    eventually("the GPUs to appear in Prometheus", Duration::from_secs(60), || {
        let prom = &prom;
        async move {
            let r = prom.query("gpu_devices").await;
            r.first().filter(|s| s["value"][1] == "2").map(|_| ())
        }
    })
    .await;
    eventually("GpuDriverDown to resolve", Duration::from_secs(60), || {
        let prom = &prom;
        async move { prom.query(alert).await.is_empty().then_some(()) }
    })
    .await;
    let log = daemon.log();
    assert!(log.contains("NVML is up again"), "recovered without a restart: {log}");
    assert_eq!(
        log.matches("NVML is down: the GPU collector is failing").count(),
        1,
        "one log line for the reason, not one per try: {log}"
    );
    assert_eq!(log.matches("Collection failed.").count(), 1, "{log}");
}
