//! Redis over TLS and as a least-privilege ACL user: a real `redis-server`
//! with `--tls-port` and certificates made by `openssl`, and a user made
//! with the `ACL SETUSER` line that `inferwatch redis-acl` prints.

use std::time::Duration;

use redis::AsyncCommands;
use serde_json::Value;

use crate::common::{acl_line, check_config, eventually, free_port, sample_value, Certs, Daemon, Redis, DLQ_ENTRY};

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
    d.until("dlq_depth{queue=\"detection_queue\"}", "the DLQ depth over TLS", |v| {
        v == 2.0
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
    d.until(
        "pipeline_events_total{source=\"redis_stream\"}",
        "the event read over TLS",
        |v| v == 1.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_certificate_from_another_ca_is_refused_with_the_reason() {
    let certs = Certs::new();
    let (_r, tls_port) = tls_redis(&certs).await;
    let d = Daemon::start(&tls_config(tls_port, &certs.s("other-ca.pem")), &[]).await;
    d.until(
        "inferwatch_collector_success{collector=\"queues\"}",
        "the queue collector to fail",
        |v| v == 0.0,
    )
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
    let p = certs.path("missing-ca.yml");
    let yaml =
        format!("queues:\n  redis_url: rediss://127.0.0.1:{tls_port}/0\n  tls:\n    ca_file: /nonexistent/ca.pem\n");
    std::fs::write(&p, yaml).unwrap();
    let (code, text) = check_config(&p);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("queues.tls.ca_file") && text.contains("is unreadable"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_least_privileged_user_reaches_its_keys_only_and_a_missing_permission_is_a_clear_403() {
    let r = Redis::start().await;
    let base = format!(
        "gpu:\n  enabled: false\nqueues:\n  redis_url: redis://least@127.0.0.1:{}/0\n  poll_interval: 100ms\n",
        r.port
    );
    let line = acl_line(&format!("{base}  names: [a]\n"), "pw-least");
    assert!(line.contains("~a ~dlq:a:* ~dlq:a ~pipeline:events"), "{line}");
    r.apply_acl(&line).await;
    let mut admin = r.connection().await;
    let _: () = admin.set("secret", "not yours").await.unwrap();

    // As that user: its keys, and nothing else.
    let mut least = redis::Client::open(format!("redis://least:pw-least@127.0.0.1:{}/0", r.port))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = least.lpush("a", "job").await.unwrap();
    let _: u64 = least.llen("dlq:a").await.unwrap();
    for (what, result) in [
        ("GET secret", least.get::<_, String>("secret").await.map(|_| ())),
        ("SET secret", least.set::<_, _, ()>("secret", "x").await),
        ("LPUSH b", least.lpush::<_, _, ()>("b", "x").await),
        ("DEL a", least.del::<_, ()>("a").await),
        ("FLUSHALL", redis::cmd("FLUSHALL").query_async::<()>(&mut least).await),
        (
            "CONFIG GET",
            redis::cmd("CONFIG")
                .arg(&["GET", "dir"])
                .query_async::<()>(&mut least)
                .await,
        ),
    ] {
        let e = result.expect_err(what);
        assert_eq!(e.code(), Some("NOPERM"), "{what}: {e}");
    }
    let secret: String = admin.get("secret").await.unwrap();
    assert_eq!(secret, "not yours");

    // A daemon whose config names a queue the user was not made for.
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("redis.password");
    std::fs::write(&pw, "pw-least\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
    let d = Daemon::start(
        &format!("{base}  names: [a, b]\n  password_file: {}\n", pw.display()),
        &[],
    )
    .await;
    let resp = reqwest::get(d.url("/api/dlq/jobs/dlq:a")).await.unwrap();
    assert_eq!(resp.status(), 200, "its own DLQ is readable");
    let resp = reqwest::get(d.url("/api/dlq/jobs/dlq:b")).await.unwrap();
    assert_eq!(resp.status(), 403);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "redis_no_permission", "{body}");
    assert!(body["error"].as_str().unwrap().contains("NOPERM"), "{body}");
    assert!(body["error"].as_str().unwrap().contains("redis-acl"), "{body}");
    eventually(
        "the queue collector to fail on the missing permission",
        LIMIT,
        || async {
            (sample_value(
                &d.get_text("/metrics").await,
                "inferwatch_collector_success{collector=\"queues\"}",
            ) == Some(0.0))
            .then_some(())
        },
    )
    .await;
    // A world-readable password file stops startup, naming the key.
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o644)).unwrap();
    let cfg = dir.path().join("c.yml");
    std::fs::write(&cfg, format!("{base}  names: [a]\n  password_file: {}\n", pw.display())).unwrap();
    let (code, text) = check_config(&cfg);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("queues.password_file") && text.contains("chmod 600"),
        "{text}"
    );
}
