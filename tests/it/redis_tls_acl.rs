//! Redis over TLS and as a least-privilege ACL user: a real `redis-server`
//! with `--tls-port` and certificates made by `openssl`, and a user made
//! with the `ACL SETUSER` line that `inferwatch redis-acl` prints.

use std::time::Duration;

use redis::AsyncCommands;
use serde_json::Value;

use crate::common::{eventually, free_port, sample_value, Certs, Daemon, Redis, DLQ_ENTRY};

const LIMIT: Duration = Duration::from_secs(30);

/// A Redis that also speaks TLS on `tls_port`, with `certs`' server pair.
async fn tls_redis(certs: &Certs) -> (Redis, u16) {
    let tls_port = free_port();
    let args: Vec<String> = [
        "--tls-port",
        &tls_port.to_string(),
        "--tls-cert-file",
        &certs.s("server.pem"),
        "--tls-key-file",
        &certs.s("server.key"),
        "--tls-ca-cert-file",
        &certs.s("ca.pem"),
        "--tls-auth-clients",
        "optional",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    (Redis::start_with(&args).await, tls_port)
}

fn tls_config(tls_port: u16, ca: &str) -> String {
    format!(
        "gpu:\n  enabled: false\nqueues:\n  redis_url: rediss://127.0.0.1:{tls_port}/0\n  poll_interval: 100ms\n  \
         names: [detection_queue]\n  tls:\n    ca_file: {ca}\n\
         health:\n  services:\n    - name: cache\n      kind: redis\n      url: rediss://127.0.0.1:{tls_port}\n      \
         interval: 100ms\n      tls:\n        ca_file: {ca}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_the_dlq_api_the_health_check_and_the_stream_all_work() {
    let certs = Certs::new();
    let (r, tls_port) = tls_redis(&certs).await;
    r.lpush("dlq:detection_queue", &[DLQ_ENTRY, DLQ_ENTRY]).await;
    let d = Daemon::start(&tls_config(tls_port, &certs.s("ca.pem")), &[]).await;
    // The health check (PING over TLS).
    let body = eventually("the Redis check over TLS", LIMIT, || async {
        let body = d.get_json("/api/system/health").await;
        (body["services"]["cache"] == "healthy").then_some(body)
    })
    .await;
    assert_eq!(body["status"], "healthy");
    // The queue collector and the DLQ API.
    eventually("the DLQ depth over TLS", LIMIT, || async {
        (sample_value(&d.get_text("/metrics").await, "dlq_depth{queue=\"detection_queue\"}") == Some(2.0)).then_some(())
    })
    .await;
    let resp = reqwest::Client::new()
        .post(d.url("/api/system/dlq/requeue-all?queue=dlq:detection_queue"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let report: Value = resp.json().await.unwrap();
    assert_eq!(report["requeued"], 2, "{report}");
    let mut c = r.connection().await;
    let queued: u64 = c.llen("detection_queue").await.unwrap();
    assert_eq!(queued, 2);
    // The stream input.
    let event = r#"{"kind":"stage","stage":"detection","duration_seconds":0.01,"status":"ok"}"#;
    let _: String = c.xadd("pipeline:events", "*", &[("event", event)]).await.unwrap();
    eventually("the event read over TLS", LIMIT, || async {
        (sample_value(
            &d.get_text("/metrics").await,
            "pipeline_events_total{source=\"redis_stream\"}",
        ) == Some(1.0))
        .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_certificate_from_another_ca_is_refused_with_the_reason() {
    let certs = Certs::new();
    let (_r, tls_port) = tls_redis(&certs).await;
    let d = Daemon::start(&tls_config(tls_port, &certs.s("other-ca.pem")), &[]).await;
    eventually("the queue collector to fail", LIMIT, || async {
        (sample_value(
            &d.get_text("/metrics").await,
            "inferwatch_collector_success{collector=\"queues\"}",
        ) == Some(0.0))
        .then_some(())
    })
    .await;
    let body = eventually("the Redis check to fail", LIMIT, || async {
        let body = d.get_json("/api/system/health").await;
        (body["services"]["cache"] == "unhealthy").then_some(body)
    })
    .await;
    assert_eq!(body["status"], "degraded");
    let log = d.log();
    let line = log
        .lines()
        .find(|l| l.contains("Collection failed") && l.contains("queues"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        line.to_lowercase().contains("certificate"),
        "the reason names the certificate: {line}"
    );
    // A CA file that cannot be read stops startup, naming the key.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_inferwatch"))
        .arg("check-config")
        .arg({
            let p = certs.path("missing-ca.yml");
            let yaml = format!(
                "queues:\n  redis_url: rediss://127.0.0.1:{tls_port}/0\n  tls:\n    ca_file: /nonexistent/ca.pem\n"
            );
            std::fs::write(&p, yaml).unwrap();
            p
        })
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("queues.tls.ca_file") && text.contains("cannot be read"),
        "{text}"
    );
}
