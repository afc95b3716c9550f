//! `/ws/system` with real WebSocket clients (tokio-tungstenite) against the
//! daemon served in-process on a loopback port: the snapshot, live
//! `gpu_stats` and `service_status`, 200 clients at once, a slow consumer
//! cut off while others keep receiving, silent peers dropped after missed
//! pings, and the four `websocket_*` metrics.

use std::time::Duration;

use crate::common::{eventually, gpus_state, sample_value, Driver, FakeGpus, HealthTarget, WsClient};
use futures_util::StreamExt;
use inferwatch::api::AppState;
use inferwatch::config::Config;
use inferwatch::events::Severity;
use serde_json::Value;
use tokio::sync::oneshot;

const LIMIT: Duration = Duration::from_secs(20);

struct Server {
    state: AppState,
    port: u16,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    _fake: FakeGpus,
    _data: tempfile::TempDir,
    target: HealthTarget,
}

impl Server {
    async fn start(tweak: impl FnOnce(&mut Config)) -> Server {
        let fake = FakeGpus::new(Driver::Current, &gpus_state(2));
        let mut target = HealthTarget::new();
        target.start().await;
        let data = tempfile::tempdir().unwrap();
        let yaml = format!(
            "gpu:\n  nvml_library: {}\n  poll_interval: 1s\nhealth:\n  services:\n    - name: rtdetr\n      kind: http\n      url: {}\n      interval: 100ms\n      timeout: 500ms\n",
            fake.lib_str(),
            target.url()
        );
        let mut config = Config::from_yaml(&yaml).unwrap();
        config.data_dir = data.path().to_owned();
        config.gpu.kernel_log = String::new();
        tweak(&mut config);
        config.validate().unwrap();
        let state = inferwatch::build_state(config).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(inferwatch::run_with_state(state.clone(), listener, async {
            let _ = rx.await;
        }));
        let s = Server {
            state,
            port,
            stop: Some(tx),
            task: Some(tokio::spawn(async move {
                task.await.unwrap().unwrap();
            })),
            _fake: fake,
            _data: data,
            target,
        };
        crate::common::wait_for_2xx("the daemon to be ready", &s.http("/-/ready")).await;
        s
    }

    fn http(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn ws(&self, query: &str) -> String {
        format!("ws://127.0.0.1:{}/ws/system{query}", self.port)
    }

    async fn metric(&self, series: &str) -> Option<f64> {
        let page = reqwest::get(self.http("/metrics")).await.unwrap().text().await.unwrap();
        sample_value(&page, series)
    }

    /// Waits until `series` has the value `want`.
    async fn wait_metric(&self, series: &str, want: f64) {
        eventually(&format!("{series} == {want}"), LIMIT, || async {
            (self.metric(series).await == Some(want)).then_some(())
        })
        .await;
    }

    async fn shutdown(mut self) {
        self.stop.take().unwrap().send(()).unwrap();
        self.task.take().unwrap().await.unwrap();
    }
}

fn alert_text(m: &Value) -> Option<&str> {
    (m["type"] == "alert").then(|| m["data"]["message"].as_str()).flatten()
}

#[tokio::test]
async fn snapshot_then_live_gpu_stats_service_status_and_alerts() {
    let server = Server::start(|_| {}).await;
    let mut ws = WsClient::connect(&server.ws("")).await;

    // The snapshot: both GPUs, then every service.
    let mut snap = Vec::new();
    for _ in 0..3 {
        snap.push(ws.next_json(LIMIT).await.unwrap());
    }
    let types: Vec<&str> = snap.iter().map(|m| m["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["gpu_stats", "gpu_stats", "service_status"]);
    assert_eq!(snap[0]["data"]["gpu"], 0);
    assert_eq!(snap[1]["data"]["gpu"], 1);
    assert_eq!(snap[2]["data"]["service"], "rtdetr");
    assert_eq!(snap[2]["data"]["status"], "healthy");
    assert!(snap[2]["timestamp"].as_str().unwrap().ends_with('Z'));

    // The same fields as /api/system/gpu, plus the index.
    let rest: Value = reqwest::get(server.http("/api/system/gpu?gpu=0"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut rest_keys: Vec<_> = rest.as_object().unwrap().keys().cloned().collect();
    let mut ws_keys: Vec<_> = snap[0]["data"].as_object().unwrap().keys().cloned().collect();
    rest_keys.sort();
    ws_keys.sort();
    assert_eq!(ws_keys, rest_keys);
    assert!(ws_keys.contains(&"gpu".to_string()));

    // A fresh gpu_stats within one poll (1 s), newer than the snapshot.
    let first_at = snap[0]["data"]["recorded_at"].as_str().unwrap().to_string();
    let next = ws
        .wait_for("a new gpu_stats", Duration::from_millis(2500), |m| {
            m["type"] == "gpu_stats" && m["data"]["recorded_at"].as_str().unwrap() > first_at.as_str()
        })
        .await;
    assert_eq!(next["data"]["gpu"], 0);

    // A status change, then its WARNING alert.
    server.target.set("500");
    let change = ws
        .wait_for("service_status unhealthy", LIMIT, |m| m["type"] == "service_status")
        .await;
    assert_eq!(change["data"]["status"], "unhealthy");
    assert!(change["data"]["message"].as_str().unwrap().contains("500"));
    // Service alerts only: a host over 90 % full adds a disk alert.
    let alert = ws
        .wait_for("the service alert", LIMIT, |m| {
            m["type"] == "alert"
                && m["data"]["condition"]
                    .as_str()
                    .is_some_and(|c| c.starts_with("service_"))
        })
        .await;
    assert_eq!(alert["data"]["severity"], "WARNING");
    assert_eq!(alert["data"]["condition"], "service_unhealthy");
    server.target.set("ok");
    let back = ws
        .wait_for("service_status healthy", LIMIT, |m| m["type"] == "service_status")
        .await;
    assert_eq!(back["data"]["status"], "healthy");

    // Sent counters count what this one client got.
    assert!(
        server
            .metric("websocket_messages_sent_total{event_type=\"service_status\"}")
            .await
            .unwrap()
            >= 3.0
    );
    assert!(
        server
            .metric("websocket_messages_sent_total{event_type=\"gpu_stats\"}")
            .await
            .unwrap()
            >= 4.0
    );
    server.shutdown().await;
}

#[tokio::test]
async fn two_hundred_clients_all_receive_each_broadcast() {
    let server = Server::start(|_| {}).await;
    let mut clients = Vec::new();
    for i in 0..200 {
        let query = if i % 2 == 0 { "?client=browser" } else { "" };
        clients.push(WsClient::connect(&server.ws(query)).await);
    }
    server
        .wait_metric("websocket_connections_active{client_type=\"browser\"}", 100.0)
        .await;
    // tokio-tungstenite sends no User-Agent, so these count as api.
    server
        .wait_metric("websocket_connections_active{client_type=\"api\"}", 100.0)
        .await;
    let stats: Value = reqwest::get(server.http("/api/system/stats"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["websocket"]["clients"], 200);

    for round in 0..3 {
        let text = format!("broadcast {round}");
        server.state.events.alert(Severity::Info, "test", text.clone());
        let waits = clients.iter_mut().map(|c| {
            let text = text.clone();
            async move {
                c.wait_for(&text, LIMIT, |m| alert_text(m) == Some(text.as_str())).await;
            }
        });
        futures_util::future::join_all(waits).await;
    }
    server
        .wait_metric("websocket_messages_sent_total{event_type=\"alert\"}", 600.0)
        .await;

    for mut c in clients {
        c.stream.close(None).await.unwrap();
    }
    server
        .wait_metric("websocket_connections_active{client_type=\"browser\"}", 0.0)
        .await;
    server
        .wait_metric("websocket_connections_active{client_type=\"api\"}", 0.0)
        .await;
    server
        .wait_metric("websocket_connection_duration_seconds_count", 200.0)
        .await;
    assert_eq!(
        server
            .metric("websocket_connection_duration_seconds_bucket{le=\"10\"}")
            .await,
        Some(200.0)
    );
    assert_eq!(
        server
            .metric("websocket_errors_total{error_type=\"slow_consumer\"}")
            .await,
        Some(0.0)
    );
    server.shutdown().await;
}

/// A client whose socket has a tiny receive buffer and that never reads.
async fn never_reading_client(url: &str, port: u16) -> impl Drop {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(([127, 0, 0, 1], port).into()).await.unwrap();
    let (ws, _) = tokio_tungstenite::client_async(url, tcp).await.unwrap();
    struct Holder<T>(T);
    impl<T> Drop for Holder<T> {
        fn drop(&mut self) {}
    }
    Holder(ws)
}

#[tokio::test]
async fn a_slow_consumer_is_cut_off_while_others_keep_receiving() {
    let server = Server::start(|c| c.websocket.client_queue = 16).await;
    let mut good = WsClient::connect(&server.ws("")).await;
    let slow = never_reading_client(&server.ws(""), server.port).await;
    server
        .wait_metric("websocket_connections_active{client_type=\"api\"}", 2.0)
        .await;

    // 64 KiB alerts in lockstep with the good client, until the hub gives
    // up on the slow one; the good client must see every single one.
    let pad = "x".repeat(64 * 1024);
    let mut sent = 0;
    let mut cut_at = None;
    for i in 0..2000 {
        let text = format!("{i} {pad}");
        server.state.events.alert(Severity::Info, "test", text.clone());
        let got = good
            .wait_for("the next test alert", LIMIT, |m| {
                m["data"]["condition"] == "test" && alert_text(m).is_some()
            })
            .await;
        assert_eq!(alert_text(&got), Some(text.as_str()), "in order, none lost");
        sent += 1;
        if server
            .metric("websocket_errors_total{error_type=\"slow_consumer\"}")
            .await
            == Some(1.0)
        {
            cut_at = Some(i);
            break;
        }
    }
    let cut_at = cut_at.expect("the never-reading client was cut off");
    assert!(cut_at >= 16, "not before its queue of 16 was full (cut at {cut_at})");
    server
        .wait_metric("websocket_connections_active{client_type=\"api\"}", 1.0)
        .await;
    // The good one carries on.
    for i in 0..5 {
        let text = format!("after {i}");
        server.state.events.alert(Severity::Info, "test", text.clone());
        good.wait_for(&text, LIMIT, |m| alert_text(m) == Some(text.as_str()))
            .await;
    }
    assert!(sent > 16);
    drop(slow);
    server.shutdown().await;
}

#[tokio::test]
async fn silent_peers_are_dropped_after_missed_pings_live_ones_stay() {
    let server = Server::start(|c| c.websocket.ping_interval = Duration::from_millis(100)).await;
    // The live client reads all along (tungstenite answers pings while
    // reading) until it has seen 8 pings: well past the two missed intervals
    // that drop a silent peer. Counted, not timed.
    let mut live = WsClient::connect(&server.ws("")).await;
    let reader = tokio::spawn(async move {
        let mut pings = 0;
        while pings < 8 {
            match live.stream.next().await {
                Some(Ok(msg)) if msg.is_ping() => pings += 1,
                Some(Ok(_)) => {}
                other => panic!("the live client lost its connection: {other:?}"),
            }
        }
        (pings, live)
    });
    let silent = never_reading_client(&server.ws("?client=browser"), server.port).await;
    server
        .wait_metric("websocket_errors_total{error_type=\"ping_timeout\"}", 1.0)
        .await;
    server
        .wait_metric("websocket_connections_active{client_type=\"browser\"}", 0.0)
        .await;
    let (pings, _live) = tokio::time::timeout(LIMIT, reader)
        .await
        .expect("8 pings reach a client that reads")
        .unwrap();
    assert_eq!(pings, 8);
    assert_eq!(
        server.metric("websocket_connections_active{client_type=\"api\"}").await,
        Some(1.0),
        "the live client is still connected"
    );
    assert_eq!(
        server
            .metric("websocket_errors_total{error_type=\"ping_timeout\"}")
            .await,
        Some(1.0)
    );
    drop(silent);
    server.shutdown().await;
}

#[tokio::test]
async fn bad_websocket_requests_get_json_errors() {
    let server = Server::start(|c| c.websocket.max_clients = 1).await;
    let resp = reqwest::get(server.http("/ws/system")).await.unwrap();
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("WebSocket upgrade"), "{body}");

    let err = tokio_tungstenite::connect_async(server.ws("?client=robot"))
        .await
        .unwrap_err();
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => {
            assert_eq!(resp.status(), 400);
            let body: Value = serde_json::from_slice(resp.body().as_deref().unwrap()).unwrap();
            assert_eq!(body["detail"]["allowed"], serde_json::json!(["browser", "api"]));
        }
        other => panic!("expected an HTTP 400, got {other}"),
    }

    let _one = WsClient::connect(&server.ws("")).await;
    server
        .wait_metric("websocket_connections_active{client_type=\"api\"}", 1.0)
        .await;
    match tokio_tungstenite::connect_async(server.ws("")).await.unwrap_err() {
        tokio_tungstenite::tungstenite::Error::Http(resp) => assert_eq!(resp.status(), 503),
        other => panic!("expected an HTTP 503, got {other}"),
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_clients_is_exact_under_simultaneous_handshakes() {
    let server = Server::start(|c| c.websocket.max_clients = 5).await;
    let url = server.ws("?client=api");
    let attempts = (0..100).map(|_| {
        let url = url.clone();
        tokio::spawn(async move { tokio_tungstenite::connect_async(url).await })
    });
    let mut admitted = Vec::new();
    let mut refused = 0;
    for a in futures_util::future::join_all(attempts).await {
        match a.unwrap() {
            Ok((socket, _)) => admitted.push(socket),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 503);
                let body: Value = serde_json::from_slice(resp.body().as_deref().unwrap()).unwrap();
                assert_eq!(body["code"], "too_many_clients", "{body}");
                refused += 1;
            }
            Err(other) => panic!("unexpected handshake error: {other}"),
        }
    }
    assert_eq!(admitted.len(), 5, "exactly websocket.max_clients are admitted");
    assert_eq!(refused, 95);
    server
        .wait_metric("websocket_connections_active{client_type=\"api\"}", 5.0)
        .await;
    // A slot comes back when a client leaves.
    drop(admitted.pop());
    server
        .wait_metric("websocket_connections_active{client_type=\"api\"}", 4.0)
        .await;
    let _again = eventually("a freed slot to admit a new client", LIMIT, || {
        let url = url.clone();
        async move { tokio_tungstenite::connect_async(url).await.ok() }
    })
    .await;
    server.shutdown().await;
}
