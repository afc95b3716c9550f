//! What a monitored thing sends is read bounded, against the real binary:
//! an HTTP check body (`expect_body`) and a `metrics_url` page read for
//! stall detection, from `tests/support/metrics_target.py` answering a page
//! that never ends, a 2 GiB `Content-Length`, or a line a second. The
//! daemon's peak RSS over the reads is read from /proc and stays within
//! 20 MB of where it was; each read stops at its limit and says so.

use std::time::Duration;

use crate::common::{eventually, rss_rise, sample_value, Daemon};
use crate::inference_proxy::MetricsTarget;

const LIMIT: Duration = Duration::from_secs(60);

/// A daemon checking two services on `t`: `body` reads its check's body
/// (`expect_body`), `page` reads its `metrics_url` for stall detection.
async fn daemon(t: &MetricsTarget, timeout: &str) -> Daemon {
    let cfg = format!(
        "gpu:\n  enabled: false\nqueues:\n  enabled: false\nhealth:\n  body_max_bytes: 1048576\n  page_max_bytes: 8388608\n  services:\n\
         \x20   - {{name: body, kind: http, url: \"{url}\", expect_body: never, interval: 100ms, timeout: {timeout}}}\n\
         \x20   - {{name: page, kind: http, url: \"{health}\", metrics_url: \"{url}\", progress: {{preset: vllm}}, interval: 100ms, timeout: {timeout}}}\n",
        url = t.url(),
        health = t.health_url(),
    );
    Daemon::start(&cfg, &[]).await
}

/// Waits until `n` more reads of `source` hit their limit.
async fn hits(d: &Daemon, source: &str, n: f64) -> String {
    let series = format!("inferwatch_read_limit_hits_total{{source=\"{source}\"}}");
    eventually(
        &format!("{n} reads of {source} cut at their limit"),
        LIMIT,
        async || {
            let page = d.get_text("/metrics").await;
            (sample_value(&page, &series).unwrap_or(0.0) >= n).then_some(page)
        },
    )
    .await
}

fn failures(page: &str, reason: &str) -> f64 {
    sample_value(
        page,
        &format!("service_check_failures_total{{reason=\"{reason}\",service=\"body\"}}"),
    )
    .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_without_end_is_cut_at_each_limit_with_flat_memory() {
    let t = MetricsTarget::start("page").await;
    let d = daemon(&t, "30s").await;
    // A normal page first: the baseline, every reader warm.
    eventually("a first check", LIMIT, async || {
        let page = d.get_text("/metrics").await;
        (failures(&page, "body") >= 1.0).then_some(())
    })
    .await;
    let mut page = String::new();
    let rise = rss_rise(d.proc.pid(), async {
        t.set("endless");
        hits(&d, "health_body", 20.0).await;
        page = hits(&d, "metrics_url", 20.0).await;
    })
    .await;
    assert!(rise < 20_000_000, "RSS rose by {rise} bytes reading pages without end");
    assert!(failures(&page, "too_large") >= 20.0, "{page}");
    assert!(d.log().contains("larger than 8388608 bytes"), "the stall read says why");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_two_gib_body_is_refused_before_a_byte_is_read() {
    let t = MetricsTarget::start(&format!("length {}", 2u64 << 30)).await;
    let d = daemon(&t, "30s").await;
    let mut page = String::new();
    let rise = rss_rise(d.proc.pid(), async {
        hits(&d, "health_body", 20.0).await;
        page = hits(&d, "metrics_url", 20.0).await;
    })
    .await;
    assert!(rise < 20_000_000, "RSS rose by {rise} bytes for 2 GiB pages");
    assert!(failures(&page, "too_large") >= 20.0, "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_trickles_is_cut_at_the_checks_timeout() {
    let t = MetricsTarget::start("trickle").await;
    let d = daemon(&t, "1s").await;
    let page = eventually("checks cut at their timeout", LIMIT, async || {
        let page = d.get_text("/metrics").await;
        (failures(&page, "timeout") >= 2.0).then_some(page)
    })
    .await;
    assert_eq!(failures(&page, "too_large"), 0.0, "{page}");
}

/// A Docker socket stand-in: every inspect answer is a chunked JSON array
/// that never ends, sent as fast as it is read, or (`trickle`) a byte every
/// 100 ms.
fn docker_stand_in(socket: &std::path::Path, trickle: bool) -> tokio::task::JoinHandle<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::UnixListener::bind(socket).unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                let _ = conn.read(&mut request).await;
                let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
                if conn.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                if trickle {
                    let _ = conn.write_all(b"1\r\n[\r\n").await;
                    while conn.write_all(b"2\r\n1,\r\n").await.is_ok() {
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                    return;
                }
                let block = format!("{:x}\r\n[{}\r\n", 8193, "1,".repeat(4096));
                while conn.write_all(block.as_bytes()).await.is_ok() {}
            });
        }
    })
}

/// The limits a default config sets.
fn default_docker_limits() -> inferwatch::attribution::docker::Limits {
    let config = inferwatch::config::AttributionConfig::default();
    inferwatch::attribution::docker::Limits {
        max_bytes: config.docker_max_bytes as usize,
        timeout: config.docker_timeout,
    }
}

/// An inspect answer without end: the lookup fails at the answer's byte
/// limit, counted, and the process's memory does not follow the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_docker_socket_answering_without_end_is_cut_at_its_limit() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("docker.sock");
    let server = docker_stand_in(&socket, false);
    let hits = inferwatch::bounded::HITS.with_label_values(&["docker"]);
    let before = hits.get();
    let mut docker = inferwatch::attribution::docker::Docker::new(socket, default_docker_limits(), None);
    let rise = rss_rise(std::process::id() as i32, async {
        assert!(
            docker.lookup(&"a".repeat(64)).await.is_none(),
            "no container from an endless answer"
        );
    })
    .await;
    assert_eq!(hits.get(), before + 1, "the cut is counted");
    assert!(rise < 20_000_000, "RSS rose by {rise} bytes for an endless answer");
    server.abort();
}

/// An inspect answer that trickles a byte every 100 ms: the lookup ends at
/// `attribution.docker_timeout` (here 1 s), counted as a read-limit hit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_docker_answer_that_trickles_is_cut_at_its_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("docker.sock");
    let server = docker_stand_in(&socket, true);
    let hits = inferwatch::bounded::HITS.with_label_values(&["docker"]);
    let before = hits.get();
    let limits = inferwatch::attribution::docker::Limits {
        timeout: std::time::Duration::from_secs(1),
        ..default_docker_limits()
    };
    let mut docker = inferwatch::attribution::docker::Docker::new(socket, limits, None);
    assert!(docker.lookup(&"b".repeat(64)).await.is_none());
    assert_eq!(hits.get(), before + 1, "the cut is counted");
    server.abort();
}

/// A process whose command line is 1 MiB (nine arguments of 120 KiB):
/// what is read of it stops at 64 KiB, and the cut is counted.
#[test]
fn a_one_mib_command_line_is_read_up_to_its_limit() {
    let arg = "y".repeat(120 * 1024);
    let mut holder = std::process::Command::new("python3");
    holder
        .args(["-c", "import time; time.sleep(600)"])
        .args(std::iter::repeat_n(&arg, 9));
    let mut p = holder.spawn().unwrap();
    let path = std::path::PathBuf::from(format!("/proc/{}/cmdline", p.id()));
    // Until the child has exec'd, its command line is empty: wait for it.
    for _ in 0..1000 {
        if std::fs::read(&path).is_ok_and(|c| c.len() > 1_000_000) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let hits = inferwatch::bounded::HITS.with_label_values(&["proc"]);
    let before = hits.get();
    let (head, cut) = inferwatch::bounded::read_file(&path, 64 * 1024, inferwatch::bounded::Source::Proc).unwrap();
    let whole = std::fs::read(&path).unwrap();
    let _ = p.kill();
    let _ = p.wait();
    assert!(whole.len() > 1_000_000, "the command line is {} bytes", whole.len());
    assert_eq!((head.len(), cut), (64 * 1024, true));
    assert_eq!(&head[..], &whole[..64 * 1024]);
    assert_eq!(hits.get(), before + 1);
}
