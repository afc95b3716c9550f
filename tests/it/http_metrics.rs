//! `http_requests_total` and `http_request_duration_seconds`: labelled by
//! route template, with one shared label for unmatched paths, so request
//! paths cannot multiply series.

use crate::common::sample_value;
use axum::body::Body;
use axum::http::Request;
use http_body_util::BodyExt;
use inferwatch::config::Config;
use tower::ServiceExt;

async fn get(app: &axum::Router, method: &str, path: &str) -> (u16, String) {
    let resp = app
        .clone()
        .oneshot(Request::builder().method(method).uri(path).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn requests_are_counted_by_route_template_and_code() {
    let data = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.gpu.kernel_log = String::new();
    config.gpu.enabled = false;
    config.queues.enabled = false;
    config.data_dir = data.path().to_owned();
    let state = inferwatch::build_state(config).unwrap();
    let app = inferwatch::api::router(state);

    for i in 0..50 {
        // Fifty distinct unknown paths: one series between them.
        let (code, _) = get(&app, "GET", &format!("/probe/{i}")).await;
        assert_eq!(code, 404);
    }
    for _ in 0..3 {
        assert_eq!(get(&app, "GET", "/-/healthy").await.0, 200);
    }
    // A templated route: the label is the template, never the queue name.
    let (code, _) = get(&app, "GET", "/api/dlq/jobs/some_queue").await;
    assert!((400..600).contains(&code));
    let (bogus, _) = get(&app, "BREW", "/-/healthy").await;

    // The page is cached for up to a second; wait for a fresh render
    // that shows the last request rather than sleeping.
    let page = crate::common::eventually(
        "the request counters on /metrics",
        std::time::Duration::from_secs(5),
        || {
            let app = app.clone();
            async move {
                let (_, page) = get(&app, "GET", "/metrics").await;
                page.contains("method=\"other\"").then_some(page)
            }
        },
    )
    .await;
    assert_eq!(
        sample_value(
            &page,
            r#"http_requests_total{code="404",method="GET",route="unmatched"}"#
        ),
        Some(50.0),
        "{page}"
    );
    assert_eq!(
        sample_value(
            &page,
            r#"http_requests_total{code="200",method="GET",route="/-/healthy"}"#
        ),
        Some(3.0)
    );
    assert_eq!(
        sample_value(
            &page,
            r#"http_request_duration_seconds_count{method="GET",route="/-/healthy"}"#
        ),
        Some(3.0)
    );
    let dlq_series = format!(r#"http_requests_total{{code="{code}",method="GET",route="/api/dlq/jobs/{{dlq}}"}}"#);
    let templated = page
        .lines()
        .filter(|l| l.starts_with("http_requests_total{") && l.contains("some_queue"))
        .count();
    assert_eq!(templated, 0, "a path segment became a label value:\n{page}");
    assert_eq!(sample_value(&page, &dlq_series), Some(1.0), "{page}");
    assert!(
        page.contains(&format!(r#"{{code="{bogus}",method="other",route="/-/healthy"}}"#)),
        "{page}"
    );
    assert!(!page.contains("BREW"));
}
