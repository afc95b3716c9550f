//! Schemathesis against the live daemon: a real Redis with DLQ jobs (one
//! malformed), the API token so the mutating routes run, and the OpenAPI
//! document from `/api/openapi.json`. Every check is on, positive and
//! negative data: no server error, every status code, content type, header
//! and body as documented, negative data rejected, auth enforced. After it,
//! the DLQ jobs still add up: none was lost to the fuzzer's requeues,
//! clears and restores.

mod common;

use std::process::Command;

use common::{repo, Daemon, Redis, DLQ_ENTRY};

const TOKEN: &str = "schemathesis-token-0123";

/// Sum of the lengths of every list key (queues, DLQs, archives).
async fn jobs_in_lists(redis: &Redis) -> u64 {
    let mut con = redis.connection().await;
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query_async(&mut con).await.unwrap();
    let mut total = 0;
    for k in keys {
        let kind: String = redis::cmd("TYPE").arg(&k).query_async(&mut con).await.unwrap();
        if kind == "list" && (k.contains("queue")) {
            let n: u64 = redis::cmd("LLEN").arg(&k).query_async(&mut con).await.unwrap();
            total += n;
        }
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_schema_violation() {
    let bin = repo().join("target/schemathesis/bin/schemathesis");
    assert!(
        bin.exists(),
        "{} is missing: scripts/test installs Schemathesis there",
        bin.display()
    );
    let redis = Redis::start().await;
    redis
        .lpush("dlq:detection_queue", &[DLQ_ENTRY, DLQ_ENTRY, DLQ_ENTRY, "not json"])
        .await;
    redis.lpush("dlq:analysis_queue", &[DLQ_ENTRY]).await;
    redis.lpush("detection_queue", &["{\"id\":\"waiting\"}"]).await;
    let before = jobs_in_lists(&redis).await;
    assert_eq!(before, 6);
    let config = format!(
        "api:\n  token: {TOKEN}\nqueues:\n  redis_url: {}\n  poll_interval: 1s\n\
         gpu:\n  nvml_library: /nonexistent/libnvidia-ml.so.1\n",
        redis.url()
    );
    let d = Daemon::start(&config, &[]).await;
    // Hypothesis keeps a cache in its working directory: a scratch one.
    let scratch = tempfile::tempdir().unwrap();
    let out = tokio::task::spawn_blocking({
        let url = d.url("/api/openapi.json");
        let cwd = scratch.path().to_owned();
        move || {
            Command::new(bin)
                .current_dir(cwd)
                .args([
                    "run",
                    &url,
                    "--experimental=openapi-3.1",
                    "--checks",
                    "all",
                    "-D",
                    "all",
                ])
                .args(["-H", &format!("Authorization: Bearer {TOKEN}")])
                // The token is given above; header values with control
                // bytes are refused by the HTTP parser before the API sees
                // them, so they test hyper, not the API.
                .args(["--generation-with-security-parameters", "false"])
                .args(["--generation-allow-x00", "false", "--generation-codec", "ascii"])
                .args(["--hypothesis-max-examples", "50", "--hypothesis-derandomize"])
                // The WebSocket upgrade is tested by tests/ws.rs.
                .args(["--exclude-path", "/ws/system", "--no-color"])
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    // "not_a_server_error   N / N passed": every generated case checked.
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("not_a_server_error"))
        .unwrap_or_else(|| panic!("{text}"));
    let nums: Vec<u64> = line.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    assert_eq!(nums.len(), 2, "{line}");
    assert_eq!(nums[0], nums[1], "{line}");
    assert!(nums[0] >= 300, "only {} cases: {text}", nums[0]);
    for check in [
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
        "negative_data_rejection",
        "ignored_auth",
    ] {
        let l = text
            .lines()
            .find(|l| l.contains(check))
            .unwrap_or_else(|| panic!("{check}: {text}"));
        assert!(l.contains("PASSED"), "{l}");
    }
    println!("schemathesis cases: {}", nums[0]);
    // No job was lost to requeues, clears and restores.
    assert_eq!(jobs_in_lists(&redis).await, before, "{text}");
}
