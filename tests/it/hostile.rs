//! The real binary against hostile and broken clients: idle and slowloris
//! floods under a low `ulimit -n`, a body that is declared but never sent,
//! SIGTERM with a half-sent request, and an error walk asserting that every
//! non-2xx answer of every route is JSON.

use std::time::Duration;

use crate::common::{eventually, gpus_state, sample_value, Daemon, Driver, FakeGpus, SIGTERM};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LIMIT: Duration = Duration::from_secs(30);

fn base(extra: &str) -> String {
    format!("gpu:\n  enabled: false\nqueues:\n  enabled: false\n{extra}")
}

/// Reads until the peer closes (or fails); true when it closed.
async fn closed_by_server(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 512];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return true,
            Ok(_) => continue,
        }
    }
}

/// Reads one whole HTTP/1.1 response (headers, and the body by
/// Content-Length) from a raw socket.
async fn read_response(s: &mut TcpStream) -> (u16, String, Value) {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before a response: {:?}", String::from_utf8_lossy(&data));
        data.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&data).to_string();
        let Some(end) = text.find("\r\n\r\n") else { continue };
        let head = text[..end].to_string();
        let len: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse().unwrap())
            })
            .unwrap_or(0);
        if data.len() >= end + 4 + len {
            let body = &data[end + 4..end + 4 + len];
            let status = head[9..12].parse().unwrap();
            return (status, head, serde_json::from_slice(body).unwrap_or(Value::Null));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slowloris_floods_under_a_low_ulimit_do_not_stall_metrics() {
    // web.max_connections stays at its default (1024): the daemon must cap
    // itself below the 256 descriptors it has.
    let config = base("web:\n  header_read_timeout: 1s\n");
    let d = Daemon::start_limited(&config, &[], &[], Some(256)).await;
    let addr = format!("127.0.0.1:{}", d.port);

    // More idle connections than the daemon has file descriptors...
    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(TcpStream::connect(&addr).await.unwrap());
    }
    // ...and more slowloris clients than the cap, each with half a head.
    let mut slow = Vec::new();
    for _ in 0..150 {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .unwrap();
        slow.push(s);
    }

    // /metrics still answers (a few times, on fresh connections).
    let client = reqwest::Client::builder().timeout(LIMIT).build().unwrap();
    for _ in 0..5 {
        let resp = client.get(d.url("/metrics")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert!(resp.text().await.unwrap().contains("http_open_connections"));
    }

    // Every idle and slow connection is closed by the server: evicted to
    // make room, or at the header timeout.
    for s in idle.iter_mut().chain(slow.iter_mut()) {
        let closed = tokio::time::timeout(LIMIT, closed_by_server(s)).await;
        assert!(closed.is_ok(), "a hostile connection was left open");
    }
    // The server counts a close right after the socket goes, so the
    // counters may trail the client's EOF by a moment: wait for them.
    let (evicted, timed_out) = eventually("the closes to be counted", LIMIT, || async {
        let page = d.get_text("/metrics").await;
        let reason = |r: &str| {
            sample_value(
                &page,
                &format!("http_connections_closed_by_server_total{{reason=\"{r}\"}}"),
            )
            .unwrap()
        };
        let (evicted, timed_out) = (reason("idle_evicted"), reason("header_timeout"));
        (evicted > 0.0 && timed_out > 0.0 && evicted + timed_out >= 450.0 - 192.0).then_some((evicted, timed_out))
    })
    .await;
    // The test's own /metrics connections may be closed too, idle later.
    assert!(evicted + timed_out <= 460.0, "evicted {evicted}, timed out {timed_out}");
    let log = d.log();
    assert!(!log.contains("Too many open files"), "{log}");
    assert!(
        log.contains("capping at what it allows") && log.contains("192"),
        "{log}"
    );
}

/// Sends `raw` on a fresh connection and reads the one answer.
async fn exchange(addr: &str, raw: &[u8]) -> (u16, String, Value) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(raw).await.unwrap();
    read_response(&mut s).await
}

#[tokio::test]
async fn a_declared_huge_body_is_refused_at_once_and_a_stalled_one_times_out() {
    let d = Daemon::start(&base("web:\n  body_read_timeout: 500ms\n"), &[]).await;
    let addr = format!("127.0.0.1:{}", d.port);

    let (status, _, body) = exchange(&addr, b"POST /api/pipeline/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2000000000\r\n\r\n[").await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["code"], "payload_too_large");

    let (status, _, body) = exchange(
        &addr,
        b"POST /api/pipeline/events HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n[{\"kind\"",
    )
    .await;
    assert_eq!(status, 408, "{body}");
    assert_eq!(body["code"], "request_timeout");

    // A body that breaks mid-way (a bad chunk) is a read error: a 400 of
    // its own, not "too large".
    let (status, _, body) = exchange(
        &addr,
        b"POST /api/pipeline/events HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n[{\"k\"\r\nzz\r\n",
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], "body_read_error");

    // Neither was a "too large" batch in the ingest counters but the first.
    let page = d.get_text("/metrics").await;
    assert_eq!(
        sample_value(&page, "pipeline_events_rejected_total{reason=\"body_too_large\"}"),
        Some(1.0),
        "{page}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_half_sent_request_exits_within_the_deadline_and_keeps_history() {
    let fake = FakeGpus::new(Driver::Current, &gpus_state(1));
    let config = format!(
        "gpu:\n  nvml_library: {}\n  poll_interval: 1s\nqueues:\n  enabled: false\nstore:\n  flush_interval: 300s\nweb:\n  shutdown_timeout: 1s\n  body_read_timeout: 600s\n  request_timeout: 600s\n",
        fake.lib_str()
    );
    let mut d = Daemon::start(&config, &[]).await;
    // A few polls are buffered, none flushed (the flush interval is 5 min).
    eventually("three GPU polls", LIMIT, || {
        let url = d.url("/api/system/gpu/history?minutes=1");
        async move {
            let v: Value = reqwest::get(url).await.ok()?.json().await.ok()?;
            (v["samples"].as_array()?.len() >= 3).then_some(())
        }
    })
    .await;
    let mut half = TcpStream::connect(format!("127.0.0.1:{}", d.port)).await.unwrap();
    half.write_all(b"POST /api/pipeline/events HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n[")
        .await
        .unwrap();

    let pid = d.proc.pid();
    let status = tokio::task::spawn_blocking(move || {
        let _ = std::process::Command::new("kill")
            .arg(format!("-{SIGTERM}"))
            .arg(pid.to_string())
            .status();
        // Bounded: shutdown_timeout (1 s) + 2 s, or the test fails.
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        loop {
            if let Some(s) = d.proc.child.try_wait().unwrap() {
                return Some((s, d));
            }
            if std::time::Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await
    .unwrap();
    let (status, d) = status.expect("the daemon exited within web.shutdown_timeout + 2 s");
    assert!(status.success(), "{status}");
    let log = d.log();
    assert!(log.contains("Shutdown deadline reached"), "{log}");

    let db = d.dir.path().join("data/inferwatch.db");
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let (rows,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM gpu_samples")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(rows >= 3, "the buffered polls were flushed at shutdown, got {rows}");
    drop(half);
}

/// Every route with the methods it answers.
const ROUTES: &[(&str, &str)] = &[
    ("/metrics", "GET"),
    ("/-/healthy", "GET"),
    ("/-/ready", "GET"),
    ("/ws/system", "GET"),
    ("/api/system/gpu", "GET"),
    ("/api/system/gpus", "GET"),
    ("/api/system/gpu/history", "GET"),
    ("/api/system/health", "GET"),
    ("/api/system/stats", "GET"),
    ("/api/system/dlq/stats", "GET"),
    ("/api/system/dlq/jobs", "GET"),
    ("/api/dlq/jobs/dlq:detection_queue", "GET"),
    ("/api/system/dlq/requeue-all", "POST"),
    ("/api/system/dlq/clear", "DELETE"),
    ("/api/system/dlq/restore", "POST"),
    ("/api/pipeline/events", "POST"),
    ("/api/system/storage/stats", "GET"),
    ("/api/system/cleanup/preview", "GET"),
];

async fn assert_json_error(resp: reqwest::Response, want: u16, what: &str) -> Value {
    let status = resp.status().as_u16();
    let ctype = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let text = resp.text().await.unwrap();
    assert_eq!(status, want, "{what}: {text}");
    assert!(ctype.starts_with("application/json"), "{what}: content-type {ctype:?}");
    let body: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{what}: not JSON: {text}"));
    assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()), "{what}: {body}");
    assert!(
        body.get("detail").is_some() && body["code"].is_string(),
        "{what}: {body}"
    );
    body
}

#[tokio::test]
async fn every_error_answer_of_every_route_is_json() {
    let d = Daemon::start(&base(""), &[]).await;
    let client = reqwest::Client::new();
    let methods = ["GET", "POST", "PUT", "DELETE", "PATCH"];
    for (path, allowed) in ROUTES {
        for m in methods.iter().filter(|m| *m != allowed) {
            let method = reqwest::Method::from_bytes(m.as_bytes()).unwrap();
            let resp = client.request(method, d.url(path)).send().await.unwrap();
            let allow = resp.headers().get("allow").map(|v| v.to_str().unwrap().to_string());
            assert_json_error(resp, 405, &format!("{m} {path}")).await;
            assert!(allow.is_some_and(|a| a.contains(allowed)), "{m} {path}: Allow header");
        }
    }

    let cases: Vec<(String, u16)> = vec![
        ("/api/dlq/jobs/%FF".into(), 400),
        ("/api/dlq/jobs/%FF%FE".into(), 400),
        ("/no/such/endpoint".into(), 404),
        ("/api/system/gpu/history?minutes=5&minutes=10".into(), 400),
        ("/api/system/gpu/history?minutes=%FF".into(), 400),
        (format!("/metrics?{}", "a".repeat(16 * 1024)), 414),
    ];
    for (path, want) in cases {
        let resp = client.get(d.url(&path)).send().await.unwrap();
        assert_json_error(resp, want, &path[..path.len().min(60)]).await;
    }
    // Queues are disabled here: the DLQ routes answer 404 in JSON.
    let resp = client.get(d.url("/api/system/dlq/stats")).send().await.unwrap();
    assert_json_error(resp, 404, "dlq stats with queues off").await;

    // Oversized headers: many small ones, and a few large ones.
    let mut req = client.get(d.url("/metrics"));
    for i in 0..120 {
        req = req.header(format!("x-h{i}"), "v");
    }
    assert_json_error(req.send().await.unwrap(), 431, "120 headers").await;
    let mut req = client.get(d.url("/metrics"));
    for i in 0..3 {
        req = req.header(format!("x-big{i}"), "v".repeat(8 * 1024));
    }
    assert_json_error(req.send().await.unwrap(), 431, "24 KiB of headers").await;

    // A broken body is a 400 of its own, not "too large".
    let resp = client
        .post(d.url("/api/pipeline/events"))
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_json_error(resp, 400, "bad ingest body").await;
}
