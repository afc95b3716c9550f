//! Schemathesis against the live daemon: a real Redis with DLQ jobs (one
//! malformed), the API token so the mutating routes run, and the OpenAPI
//! document from `/api/openapi.json`. Every check is on, positive and
//! negative data: no server error, every status code, content type, header
//! and body as documented, negative data rejected, auth enforced. After it,
//! the DLQ jobs still add up: none was lost to the fuzzer's requeues,
//! clears and restores.

use std::process::Command;

use crate::common::{repo, Daemon, Redis, DLQ_ENTRY};

const TOKEN: &str = "schemathesis-token-0123";

/// 413 (too many events, a body over 1 MiB) refuses a request as surely
/// as 400 does; the rest is Schemathesis's default list.
/// restore gets the seeded archive as one of its values.
const SETTINGS: &str = r#"
[checks.negative_data_rejection]
expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429"]


[[operations]]
include-path = "/api/system/dlq/restore"
parameters = { archive = "dlq:detection_queue:cleared:1700000000" }

# A configured queue, so that the stuck routes reach Redis (the id keeps
# its pattern: an override would turn the negative cases into valid ones).
[[operations]]
include-path = "/api/system/queues/{queue}/stuck"
parameters = { queue = "detection_queue" }

[[operations]]
include-path = "/api/system/queues/{queue}/stuck/{id}/return"
parameters = { queue = "detection_queue" }
"#;
const ARCHIVE: &str = "dlq:detection_queue:cleared:1700000000";

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
    redis
        .lpush("detection_queue:processing", &["{\"id\":\"in-flight\"}"])
        .await;
    // An archive of an earlier clear, so that restore reaches its move.
    redis.lpush(ARCHIVE, &[DLQ_ENTRY, "archived too"]).await;
    let before = jobs_in_lists(&redis).await;
    assert_eq!(before, 9);
    let config = format!(
        "api:\n  token: {TOKEN}\nqueues:\n  redis_url: {}\n  poll_interval: 1s\n  processing_suffix: \":processing\"\n  processing_stuck_after: 1s\n\
         gpu:\n  nvml_library: libnvidia-ml-not-installed.so.1\n\
         pipeline:\n  max_stages: 1000\n",
        redis.url()
    );
    let d = Daemon::start(&config, &[]).await;
    // Hypothesis keeps a cache in its working directory: a scratch one.
    let scratch = tempfile::tempdir().unwrap();
    let settings = scratch.path().join("schemathesis.toml");
    std::fs::write(&settings, SETTINGS).unwrap();
    let cassette = repo().join("target/schemathesis-cassette.yaml");
    let out = tokio::task::spawn_blocking({
        let url = d.url("/api/openapi.json");
        let cwd = scratch.path().to_owned();
        let cassette = cassette.display().to_string();
        move || {
            Command::new(bin)
                .current_dir(cwd)
                .arg("--config-file")
                .arg(settings)
                .args(["run", &url, "--checks", "all", "--mode", "all", "--workers", "1"])
                // DELETE on a task cancels it and the task stays readable
                // (state cancelled), as documented: "deleted resource still
                // available" is by design. The only other DELETE, clear,
                // has no GET at its path.
                .args(["--exclude-checks", "use_after_free"])
                .args(["-H", &format!("Authorization: Bearer {TOKEN}")])
                // The token is given above; header values with control
                // bytes are refused by the HTTP parser before the API sees
                // them, so they test hyper, not the API.
                .args(["--generation-with-security-parameters", "false"])
                .args(["--generation-allow-x00", "false", "--generation-codec", "ascii"])
                .args(["--max-examples", "50", "--generation-deterministic"])
                // The WebSocket upgrade is tested by tests/it/ws.rs.
                .args(["--exclude-path", "/ws/system", "--no-color"])
                // Every request and answer, for reading after a failure.
                .args(["--report", "vcr", "--report-vcr-path", &cassette])
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
    // "Test cases:\n  N generated, N passed": every generated case passed
    // every check.
    let line = text
        .lines()
        .skip_while(|l| l.trim() != "Test cases:")
        .nth(1)
        .unwrap_or_else(|| panic!("{text}"));
    let nums: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    assert_eq!(nums.len(), 2, "{line}");
    assert_eq!(nums[0], nums[1], "{line}");
    assert!(nums[0] >= 500, "only {} cases: {text}", nums[0]);
    for phase in ["Coverage", "Fuzzing"] {
        assert!(text.contains(&format!("✅ {phase}")), "{phase}: {text}");
    }
    // Restore's later calls find the archive gone (404), which
    // Schemathesis reports as a "missing test data" warning, not a failure.
    // The archive was restored by the fuzzer (restore reached its move).
    let mut con = redis.connection().await;
    let left: u64 = redis::cmd("EXISTS").arg(ARCHIVE).query_async(&mut con).await.unwrap();
    assert_eq!(left, 0, "the seeded archive was never restored: {text}");
    println!("schemathesis cases: {}", nums[0]);
    // No job was lost to requeues, clears and restores.
    assert_eq!(jobs_in_lists(&redis).await, before, "{text}");
}
