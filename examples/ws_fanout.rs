//! Benchmark client for `/ws/system` fan-out (run by `scripts/bench`).
//!
//! Connects N WebSocket clients, then for S seconds measures, for every
//! `gpu_stats` message every client receives, the time from the message's
//! `recorded_at` (stamped when the poll finished, just before the broadcast)
//! to its receipt. Prints p50/p99/max over all (client, message) pairs and
//! the daemon's resident memory per connected client.
//!
//! Usage: ws_fanout URL CLIENTS SECONDS DAEMON_PID

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

fn rss_kb(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn now_ms() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64() * 1000.0
}

/// `recorded_at` of a `gpu_stats` message, in Unix milliseconds.
fn recorded_at_ms(text: &str) -> Option<f64> {
    // Keys are serialised in order: data, timestamp, type.
    if !text.ends_with("\"type\":\"gpu_stats\"}") {
        return None;
    }
    let start = text.find("\"recorded_at\":\"")? + "\"recorded_at\":\"".len();
    let end = start + text[start..].find('"')?;
    let t = chrono::DateTime::parse_from_rfc3339(&text[start..end]).ok()?;
    Some(t.timestamp_millis() as f64)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i]
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, clients, seconds, pid] = &args[..] else {
        eprintln!("usage: ws_fanout URL CLIENTS SECONDS DAEMON_PID");
        std::process::exit(2);
    };
    let clients: usize = clients.parse().unwrap();
    let seconds: u64 = seconds.parse().unwrap();

    let rss_before = rss_kb(pid);
    let mut streams = Vec::with_capacity(clients);
    for _ in 0..clients {
        let (ws, _) = tokio_tungstenite::connect_async(url.as_str()).await.expect("connect");
        streams.push(ws);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_connected = rss_kb(pid);

    // Only messages stamped after this point count (not the snapshots).
    let start_ms = now_ms();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
    let tasks: Vec<_> = streams
        .into_iter()
        .map(|mut ws| {
            tokio::spawn(async move {
                let mut lat = Vec::new();
                while let Ok(Some(Ok(msg))) = tokio::time::timeout_at(deadline, ws.next()).await {
                    let received = now_ms();
                    if let Message::Text(t) = msg {
                        if let Some(at) = recorded_at_ms(&t) {
                            if at > start_ms {
                                lat.push(received - at);
                            }
                        }
                    }
                }
                (lat, ws)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut keep = Vec::new();
    for t in tasks {
        let (lat, ws) = t.await.unwrap();
        all.extend(lat);
        keep.push(ws);
    }
    let rss_end = rss_kb(pid);
    all.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let per_client = (rss_connected.saturating_sub(rss_before)) as f64 / clients as f64;
    println!("clients={clients}");
    println!("messages={}", all.len());
    println!("p50_ms={:.2}", percentile(&all, 50.0));
    println!("p99_ms={:.2}", percentile(&all, 99.0));
    println!("max_ms={:.2}", all.last().copied().unwrap_or(f64::NAN));
    println!("rss_before_kb={rss_before}");
    println!("rss_connected_kb={rss_connected}");
    println!("rss_end_kb={rss_end}");
    println!("kb_per_client={per_client:.1}");
    drop(keep);
}
