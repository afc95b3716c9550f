//! The load: scrapes (the daemon's page, a server's page through the
//! proxy, the health and GPU answers), 500 WebSocket clients, pipeline
//! events, completions on the LLM server, the DLQ moves in a loop, and a
//! worker that fails requeued jobs again. Every loop ends at the stop
//! flag; a daemon or Redis that is down costs a round, never a hang.

use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::task::JoinHandle;

use super::*;

pub fn start(sh: &Sh, sentinels: &[u16], llm: &str) -> Vec<JoinHandle<()>> {
    let mut tasks = vec![
        tokio::spawn(scrapes(sh.clone())),
        tokio::spawn(events(sh.clone())),
        tokio::spawn(completions(sh.clone(), llm.to_string())),
        tokio::spawn(dlq_moves(sh.clone())),
        tokio::spawn(worker(sh.clone(), sentinels.to_vec())),
    ];
    for i in 0..WS_CLIENTS {
        tasks.push(tokio::spawn(ws_client(sh.clone(), i)));
    }
    tasks
}

fn tick(ok: bool, yes: &AtomicU64, no: &AtomicU64) {
    if ok {
        yes.fetch_add(1, Ordering::Relaxed);
    } else {
        no.fetch_add(1, Ordering::Relaxed);
    }
}

/// Every 250 ms: `/metrics` (gzip and plain, as Prometheus and a browser
/// ask), the LLM's page through the proxy, the health and GPU answers.
async fn scrapes(sh: Sh) {
    let c = client();
    let paths = [
        "/metrics",
        "/proxy/llm/metrics",
        "/api/system/health",
        "/api/system/gpus",
    ];
    let n = &sh.counts;
    let mut i = 0usize;
    while !sh.stopped() {
        let path = paths[i % paths.len()];
        let mut req = c.get(sh.url(path));
        if i % 8 == 0 {
            req = req.header("accept-encoding", "gzip");
        }
        let ok = match req.send().await {
            // 503 is /api/system/health's answer while a critical part is
            // down: an answer, not a failed scrape.
            Ok(r) => r.bytes().await.is_ok(),
            Err(_) => false,
        };
        tick(ok, &n.scrapes_ok, &n.scrapes_failed);
        i += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// One `/ws/system` client, reconnecting whenever its connection ends.
async fn ws_client(sh: Sh, i: usize) {
    let url = format!(
        "ws://127.0.0.1:{}/ws/system?client={}",
        sh.port,
        if i % 2 == 0 { "api" } else { "browser" }
    );
    while !sh.stopped() {
        let Ok(Ok((mut s, _))) =
            tokio::time::timeout(Duration::from_secs(5), tokio_tungstenite::connect_async(&url)).await
        else {
            tokio::time::sleep(Duration::from_millis(250)).await;
            continue;
        };
        sh.counts.ws_connects.fetch_add(1, Ordering::Relaxed);
        while !sh.stopped() {
            match tokio::time::timeout(Duration::from_secs(1), s.next()).await {
                Ok(Some(Ok(m))) if m.is_text() => {
                    sh.counts.ws_messages.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Some(Ok(_))) | Err(_) => {}
                Ok(None) | Ok(Some(Err(_))) => break,
            }
        }
    }
}

/// 50 pipeline events every 500 ms.
async fn events(sh: Sh) {
    let c = client();
    let batch: Vec<Value> = (0..50)
        .map(|i| {
            let stage = ["decode", "detect", "track"][i % 3];
            let status = if i % 10 == 0 { "error" } else { "ok" };
            json!({"kind": "stage", "stage": stage, "duration_seconds": 0.001 * (i as f64 + 1.0),
                   "status": status, "error_type": "timeout", "items": 2})
        })
        .collect();
    while !sh.stopped() {
        if let Ok(r) = c.post(sh.url("/api/pipeline/events")).json(&batch).send().await {
            if let Ok(v) = r.json::<Value>().await {
                let accepted = v["accepted"].as_u64().unwrap_or(0);
                sh.counts.events_accepted.fetch_add(accepted, Ordering::Relaxed);
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A completion of 8 tokens every 2 s, so the server's counters move.
async fn completions(sh: Sh, base: String) {
    let c = client();
    let body = json!({"model": crate::common::LLM_MODEL, "prompt": "Once", "max_tokens": 8, "temperature": 0});
    while !sh.stopped() {
        let ok = match c.post(format!("{base}/v1/completions")).json(&body).send().await {
            Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
            Err(_) => false,
        };
        if ok {
            sh.counts.completions.fetch_add(1, Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// The operator's loop: requeue-all, a filtered requeue, a clear and its
/// undo, one step every 2 s. What each answer says was moved is counted.
async fn dlq_moves(sh: Sh) {
    let c = client();
    let n = &sh.counts;
    let steps = [
        (
            reqwest::Method::POST,
            format!("/api/system/dlq/requeue-all?queue={DLQ}"),
            "requeued",
        ),
        (
            reqwest::Method::POST,
            format!("/api/system/dlq/requeue?queue={DLQ}&error=cuda"),
            "moved",
        ),
        (
            reqwest::Method::DELETE,
            format!("/api/system/dlq/clear?queue={DLQ}"),
            "cleared",
        ),
    ];
    let mut i = 0usize;
    while !sh.stopped() {
        let (method, path, field) = &steps[i % steps.len()];
        let answer = call(&c, &sh, method.clone(), path).await;
        match answer {
            Some(v) => {
                let moved = v[*field].as_u64().unwrap_or(0);
                let counter = match *field {
                    "requeued" => &n.requeued,
                    "moved" => &n.filtered_moved,
                    _ => &n.cleared,
                };
                counter.fetch_add(moved, Ordering::Relaxed);
                if let Some(key) = v["archive_key"].as_str() {
                    undo(&c, &sh, key).await;
                }
            }
            None => {
                n.dlq_calls_failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        i += 1;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Restores the archive a clear made (the console's Undo).
async fn undo(c: &reqwest::Client, sh: &Sh, key: &str) {
    tokio::time::sleep(Duration::from_millis(500)).await;
    match call(
        c,
        sh,
        reqwest::Method::POST,
        &format!("/api/system/dlq/restore?archive={key}"),
    )
    .await
    {
        Some(v) => {
            let restored = v["restored"].as_u64().or(v["moved"].as_u64()).unwrap_or(0);
            sh.counts.restored.fetch_add(restored, Ordering::Relaxed);
        }
        None => {
            sh.counts.dlq_calls_failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A move through the API: its JSON answer when it was a 200.
async fn call(c: &reqwest::Client, sh: &Sh, method: reqwest::Method, path: &str) -> Option<Value> {
    let r = c
        .request(method, sh.url(path))
        .timeout(Duration::from_secs(120))
        .send()
        .await
        .ok()?;
    if r.status() != 200 {
        return None;
    }
    r.json().await.ok()
}

/// The application's worker: takes up to 200 requeued jobs every 250 ms,
/// and each fails again, back into the DLQ with the failure wrapper, in one
/// Lua step per call (a pop and its push are one atomic step).
const FAIL_AGAIN: &str = r#"
if redis.call('TYPE', KEYS[1]).ok ~= 'list' or (redis.call('EXISTS', KEYS[2]) == 1 and redis.call('TYPE', KEYS[2]).ok ~= 'list') then
  return -1
end
local moved = 0
for i = 1, tonumber(ARGV[1]) do
  local raw = redis.call('RPOP', KEYS[1])
  if not raw then break end
  local job = cjson.decode(raw)
  local n = tonumber(string.match(job.id, '%d+')) or 0
  local err = (n % 2 == 0) and 'CUDA out of memory' or 'timeout after 30s'
  redis.call('LPUSH', KEYS[2], cjson.encode({original_job = job, error = err, attempt_count = 2,
    first_failed_at = '2026-12-07T10:00:00Z', last_failed_at = ARGV[2], queue_name = ARGV[3]}))
  moved = moved + 1
end
return moved
"#;

async fn worker(sh: Sh, sentinels: Vec<u16>) {
    let script = redis::Script::new(FAIL_AGAIN);
    let mut conn = None;
    while !sh.stopped() {
        if conn.is_none() {
            conn = super::rig::master(&sentinels).await;
        }
        if let Some(c) = conn.as_mut() {
            let r: redis::RedisResult<i64> = script
                .key(QUEUE)
                .key(DLQ)
                .arg(200)
                .arg("2026-12-07T12:00:00Z")
                .arg(QUEUE)
                .invoke_async(c)
                .await;
            match r {
                Ok(n) if n > 0 => {
                    sh.counts.worker_failed_again.fetch_add(n as u64, Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(_) => conn = None,
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
