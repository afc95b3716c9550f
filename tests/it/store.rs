//! History store against a real PostgreSQL (initdb in a temp dir): an
//! outage of 60 polls (one a second) must lose no sample, and polling goes
//! on through it.

use std::time::Duration;

use crate::common::{eventually, gpus_state, Driver, FakeGpus, Postgres};
use chrono::{TimeZone, Utc};
use inferwatch::config::Config;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_outage_of_60_polls_loses_no_sample() {
    let mut pg = Postgres::start().await;
    let fake = FakeGpus::new(Driver::Current, &gpus_state(2));
    let data = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.gpu.kernel_log = String::new();
    config.gpu.nvml_library = fake.lib_str();
    config.gpu.poll_interval = Duration::from_secs(1);
    config.store.url = pg.url();
    config.store.flush_interval = Duration::from_millis(500);
    config.data_dir = data.path().to_owned();
    config.validate().unwrap();

    let state = inferwatch::build_state(config).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let daemon = tokio::spawn(inferwatch::run_with_state(state.clone(), listener, async {
        let _ = stop_rx.await;
    }));
    let store = state.store.clone().unwrap();
    let m = store.metrics();

    eventually("the first samples to reach PostgreSQL", Duration::from_secs(30), || {
        let n = m.written.get();
        async move { (n >= 4).then_some(()) }
    })
    .await;

    pg.stop();
    eventually(
        "a failed write while PostgreSQL is down",
        Duration::from_secs(30),
        || {
            let e = m.write_errors.get();
            async move { (e > 0).then_some(()) }
        },
    )
    .await;
    // The outage itself: 60 polls (2 GPUs each) buffered with the database
    // gone. Polling that waited on the store would never get there.
    eventually(
        "60 polls buffered while PostgreSQL is down",
        Duration::from_secs(240),
        || {
            let p = m.pending.get();
            async move { (p >= 2 * 60).then_some(()) }
        },
    )
    .await;
    assert!(m.write_errors.get() > 0, "the store kept trying");
    pg.resume().await;

    eventually(
        "the buffer to drain after PostgreSQL is back",
        Duration::from_secs(60),
        || {
            let p = m.pending.get();
            async move { (p == 0).then_some(()) }
        },
    )
    .await;
    stop_tx.send(()).unwrap();
    daemon.await.unwrap().unwrap();

    assert_eq!(m.dropped.get(), 0);
    let epoch = Utc.timestamp_opt(0, 0).unwrap();
    let taken: Vec<_> = (0..2).map(|g| state.gpu.with_history(|h| h.since(g, epoch))).collect();
    let total: usize = taken.iter().map(Vec::len).sum();

    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&pg.url()).await.unwrap();
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM gpu_samples")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(rows as usize, total, "every sample taken is in PostgreSQL exactly once");
    assert!(total >= 2 * 60, "polling went on through the outage: {total} samples");

    let stored: Vec<i64> =
        sqlx::query_scalar("SELECT recorded_at_ms FROM gpu_samples WHERE gpu_index = 0 ORDER BY recorded_at_ms")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    let expected: Vec<i64> = taken[0].iter().map(|s| s.recorded_at.timestamp_millis()).collect();
    assert_eq!(stored, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_history_beyond_the_window_and_retention() {
    let pg = Postgres::start().await;
    let data = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.gpu.kernel_log = String::new();
    config.store.url = pg.url();
    config.data_dir = data.path().to_owned();
    let metrics = std::sync::Arc::new(inferwatch::metrics::Metrics::new());
    let store = inferwatch::store::Store::open(&config, &metrics).unwrap();
    let now = Utc::now();
    let mk = |age_days: i64, gpu: u32| {
        let mut s = inferwatch::history::GpuSample::mock(now - chrono::Duration::days(age_days));
        s.gpu = Some(gpu);
        s.uuid = Some(format!("GPU-{gpu}"));
        s.temperature = Some(70.0 + age_days as f64);
        s
    };
    store.push([mk(10, 0), mk(3, 0), mk(1, 0), mk(1, 1)]);
    assert_eq!(store.flush().await.unwrap(), 4);
    let got = store.history(0, now - chrono::Duration::days(5)).await.unwrap();
    assert_eq!(
        got.iter().map(|s| s.temperature.unwrap()).collect::<Vec<_>>(),
        vec![73.0, 71.0]
    );
    assert_eq!(
        store.apply_retention(now).await.unwrap(),
        1,
        "only the 10-day-old row is past 7 days"
    );
    assert_eq!(
        store.history(0, now - chrono::Duration::days(30)).await.unwrap().len(),
        2
    );
}
