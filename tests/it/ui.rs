//! The DLQ monitor page (`/ui/dlq`) in a real browser: headless Chromium
//! from Debian's `chromium` and `chromium-driver`, driven by
//! `python3-selenium` (all installed by scripts/test), against the real
//! daemon and a real `redis-server`. The browser steps and their checks in
//! Redis are in `tests/ui/dlq_page.py`; screenshots go to `target/ui/`.

use crate::common::{repo, Daemon, Redis};

const TOKEN: &str = "page-token-1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dlq_page_shows_and_moves_jobs_in_headless_chromium() {
    let redis = Redis::start().await;
    let config = format!(
        "gpu:\n  enabled: false\napi:\n  token: {TOKEN}\nqueues:\n  redis_url: {}\n  poll_interval: 200ms\n  \
         push_side: right\n  processing_suffix: \":processing\"\n",
        redis.url()
    );
    let d = Daemon::start(&config, &[]).await;
    browser_checks(
        &d,
        &redis,
        ("tests/ui/dlq_page.py", "ui: all checks passed", &[]),
        &["dlq-1280x800.png", "dlq-390x844.png", "dlq-after-actions.png"],
    )
    .await;
}

/// Runs the browser steps of `script` against `d` and `redis`, with the
/// token, the screenshot folder (target/ui) and `env`: they pass, say
/// `passed`, and leave each of `shots` as a PNG.
async fn browser_checks(
    d: &Daemon,
    redis: &Redis,
    (script, passed, env): (&str, &str, &[(&str, String)]),
    shots: &[&str],
) {
    let dir = repo().join("target/ui");
    std::fs::create_dir_all(&dir).unwrap();
    for old in shots.iter().copied().chain(["dlq-failure.png"]) {
        let _ = std::fs::remove_file(dir.join(old));
    }
    let out = tokio::process::Command::new("/usr/bin/python3")
        .arg(repo().join(script))
        .env("BASE", d.url(""))
        .env("REDIS_PORT", redis.port.to_string())
        .env("TOKEN", TOKEN)
        .env("SHOTS", &dir)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .kill_on_drop(true)
        .output()
        .await
        .expect("/usr/bin/python3 runs (scripts/test installs python3-selenium)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "the browser checks failed:\n{text}");
    assert!(text.contains(passed), "{text}");
    for shot in shots {
        let bytes = std::fs::read(dir.join(shot)).unwrap();
        assert!(
            bytes.starts_with(b"\x89PNG") && bytes.len() > 10_000,
            "{shot}: {} bytes",
            bytes.len()
        );
    }
}

/// The job frameworks' failed sets in the console: jobs that RQ's,
/// BullMQ's and Dramatiq's own workers failed are listed with their errors
/// and requeued by clicking (the browser steps: tests/ui/framework_page.py).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_frameworks_failed_jobs_are_listed_and_requeued_in_headless_chromium() {
    const N: u64 = 12;
    let redis = Redis::start().await;
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("flag");
    std::fs::write(&flag, "up").unwrap();
    crate::job_frameworks::write_jobs(dir.path());
    crate::job_frameworks::enqueue(dir.path(), &redis, "default", N as usize, &flag);
    crate::job_frameworks::burst_worker(dir.path(), &redis, "default", "failed", N).await;
    crate::bullmq::add(dir.path(), &redis, N as usize);
    let w = crate::bullmq::Worker::start(dir.path(), &redis, &flag, 4);
    crate::bullmq::settled(&redis, "bull:render:failed", N).await;
    drop(w);
    crate::dramatiq::send(dir.path(), &redis, &flag, N as usize, 1);
    let w = crate::dramatiq::Worker::start(dir.path(), &redis, 1);
    crate::dramatiq::settled(&redis, N, 0).await;
    drop(w);

    let config = format!(
        "gpu:\n  enabled: false\napi:\n  token: {TOKEN}\nqueues:\n  redis_url: {}\n  poll_interval: 200ms\n  names: [seed]\n  \
         rq: {{queues: [default]}}\n  bullmq: {{queues: [render]}}\n  dramatiq: {{queues: [default]}}\n",
        redis.url()
    );
    let d = Daemon::start(&config, &[]).await;
    let env = [("N", N.to_string())];
    let script = (
        "tests/ui/framework_page.py",
        "ui: all framework checks passed",
        &env[..],
    );
    browser_checks(&d, &redis, script, &["dlq-frameworks.png"]).await;
}
