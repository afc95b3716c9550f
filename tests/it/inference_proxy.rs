//! Discovery and the scrape proxy against the real binary:
//! `/api/sd/inference` with GPUs from attribution and a reload, and
//! `/proxy/{service}/metrics` against `tests/support/metrics_target.py`, a
//! real HTTP server that misbehaves on request (a 2 GiB page with and
//! without a length, a page that never ends, one that trickles, one that
//! never comes, a 500), with the daemon's peak RSS read from /proc; and a
//! real Prometheus scraping a real llama-server through it over TLS with
//! basic auth.

use std::io::Read;
use std::process::Command;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;
use tempfile::TempDir;

use crate::common::*;

const LIMIT: Duration = Duration::from_secs(30);
const GIB: u64 = 1 << 30;

/// `tests/support/metrics_target.py` on a free port; its mode is switched
/// with [`MetricsTarget::set`].
pub struct MetricsTarget {
    pub dir: TempDir,
    pub port: u16,
    _proc: Proc,
}

impl MetricsTarget {
    pub async fn start(mode: &str) -> MetricsTarget {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let script = repo().join("tests/support/metrics_target.py");
        let state = dir.path().join("mode");
        std::fs::write(&state, "page").unwrap();
        let child = Command::new(python())
            .arg(script)
            .arg(port.to_string())
            .arg(&state)
            .spawn()
            .unwrap();
        let t = MetricsTarget {
            dir,
            port,
            _proc: Proc {
                child,
                name: "metrics_target",
            },
        };
        wait_for_2xx("the metrics target", &t.health_url()).await;
        t.set(mode);
        t
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/metrics", self.port)
    }

    pub fn health_url(&self) -> String {
        format!("http://127.0.0.1:{}/health", self.port)
    }

    /// Switches the answer atomically.
    pub fn set(&self, mode: &str) {
        let tmp = self.dir.path().join("mode.tmp");
        std::fs::write(&tmp, mode).unwrap();
        std::fs::rename(&tmp, self.dir.path().join("mode")).unwrap();
    }

    /// Makes `page` answer gzip itself when asked.
    pub fn gzip_itself(&self) {
        std::fs::write(self.dir.path().join("mode.gzip"), "").unwrap();
    }
}

fn config(services: &str, extra: &str) -> String {
    format!("gpu:\n  enabled: false\nqueues:\n  enabled: false\n{extra}health:\n  services:\n{services}")
}

/// A service `name` whose check passes and whose metrics are the target's.
fn service(name: &str, t: &MetricsTarget, extra: &str) -> String {
    format!(
        "    - {{name: {name}, kind: http, url: \"{}\", metrics_url: \"{}\", server: vllm, interval: 1h, timeout: 2s{extra}}}\n",
        t.health_url(),
        t.url()
    )
}

/// Reads a response body to its end: the bytes, and whether it ended
/// cleanly (false: the connection was cut mid-body).
async fn drain(resp: reqwest::Response) -> (u64, bool) {
    let mut n = 0;
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(c) => n += c.len() as u64,
            Err(_) => return (n, false),
        }
    }
    (n, true)
}

fn scrapes(page: &str, service: &str, result: &str) -> f64 {
    sample_value(
        page,
        &format!("inferwatch_proxy_scrapes_total{{result=\"{result}\",service=\"{service}\"}}"),
    )
    .unwrap_or(0.0)
}

async fn error_of(d: &Daemon, path: &str) -> (u16, Value) {
    let resp = reqwest::get(d.url(path)).await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_lists_each_metrics_url_with_the_gpus_its_processes_hold_and_follows_a_reload() {
    // `llm` holds GPUs 1 and 0 through a real process matched by its
    // command line; `plain` has no metrics URL; `legacy` names its URL the
    // deprecated way.
    let holder = Proc::spawn("sleep", &["611"]);
    let state = format!(
        "{}0.procs {p}:{g}:sleep\n1.procs {p}:{g}:sleep\n",
        gpus_state(2),
        p = holder.pid(),
        g = GIB
    );
    let fake = FakeGpus::new(Driver::Current, &state);
    let services = "    - {name: llm, kind: http, url: \"http://127.0.0.1:9/health\", interval: 1h, metrics_url: \"http://127.0.0.1:9/metrics\", server: vllm, match: {cmdline: \"^sleep 611$\"}}\n\
         \x20   - {name: plain, kind: http, url: \"http://127.0.0.1:9/health\", interval: 1h}\n\
         \x20   - {name: legacy, kind: http, url: \"http://127.0.0.1:8/health\", interval: 1h, progress: {metrics_url: \"https://127.0.0.1:8/m?x=1\", preset: llamacpp}}\n";
    let gpu = format!(
        "gpu:\n  nvml_library: {}\n  poll_interval: 1s\n  per_process: true\nqueues:\n  enabled: false\nattribution:\n  docker_socket: \"\"\n",
        fake.lib_str()
    );
    let cfg = format!("{gpu}health:\n  services:\n{services}");
    let d = Daemon::start(&cfg, &[]).await;
    assert!(
        d.log()
            .contains("health.services[2].progress.metrics_url (legacy) is deprecated"),
        "{}",
        d.log()
    );
    let groups = eventually("llm's GPUs in the discovery list", LIMIT, || async {
        let g = d.get_json("/api/sd/inference").await;
        (g[0]["labels"]["gpu"] == "0,1").then_some(g)
    })
    .await;
    let groups = groups.as_array().unwrap();
    assert_eq!(groups.len(), 2, "{groups:?}");
    let here = format!("127.0.0.1:{}", d.port);
    assert_eq!(groups[0]["targets"], serde_json::json!([here]));
    let l = &groups[0]["labels"];
    assert_eq!(
        (l["service"].as_str(), l["server"].as_str()),
        (Some("llm"), Some("vllm"))
    );
    assert_eq!(l["__metrics_path__"], "/proxy/llm/metrics");
    assert_eq!(l["__scheme__"], "http");
    let l = &groups[1]["labels"];
    assert_eq!(
        (l["service"].as_str(), l["server"].as_str(), l["gpu"].as_str()),
        (Some("legacy"), Some("llamacpp"), Some(""))
    );

    reload_to_direct_scraping_with_a_service_more(&d, &gpu, services).await;
}

/// A reload: direct scraping, and a service more; `instance` stays the node.
async fn reload_to_direct_scraping_with_a_service_more(d: &Daemon, gpu: &str, services: &str) {
    let here = format!("127.0.0.1:{}", d.port);
    let added = "    - {name: added, kind: http, url: \"http://127.0.0.1:7/health\", interval: 1h, metrics_url: \"http://127.0.0.1:7/metrics\", server: sglang}\n";
    d.rewrite(&format!(
        "{gpu}inference:\n  scrape: direct\nhealth:\n  services:\n{services}{added}"
    ));
    d.sighup();
    let groups = eventually("the reloaded discovery list", LIMIT, || async {
        let g = d.get_json("/api/sd/inference").await;
        (g.as_array().unwrap().len() == 3).then_some(g)
    })
    .await;
    assert_eq!(groups[0]["targets"], serde_json::json!(["127.0.0.1:9"]));
    assert_eq!(groups[0]["labels"]["instance"], here, "the node, not the server");
    assert_eq!(groups[0]["labels"]["__metrics_path__"], "/metrics");
    assert_eq!(groups[1]["labels"]["__scheme__"], "https");
    assert_eq!(groups[1]["labels"]["__param_x"], "1");
    assert_eq!(groups[2]["labels"]["server"], "sglang");
    assert_eq!(groups[2]["targets"], serde_json::json!(["127.0.0.1:7"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_passes_a_page_through_with_the_scrapers_accept_and_gzip() {
    let t = MetricsTarget::start("page").await;
    let d = Daemon::start(&config(&service("t", &t, ""), ""), &[]).await;
    let client = reqwest::Client::new();
    let om = "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.4";
    let resp = client
        .get(d.url("/proxy/t/metrics"))
        .header("Accept", om)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let plain = resp.text().await.unwrap();
    assert!(plain.starts_with(&format!("# accept: {om}\n")), "{plain}");
    assert!(plain.contains("vllm:generation_tokens_total{engine=\"0\",model_name=\"tiny\"} 42.0"));

    // A scraper that takes gzip gets it: compressed here as the page
    // streams, or as the server compressed it.
    for server_gzips in [false, true] {
        if server_gzips {
            t.gzip_itself();
        }
        let resp = client
            .get(d.url("/proxy/t/metrics"))
            .header("Accept", om)
            .header("Accept-Encoding", "gzip")
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.headers()["content-encoding"],
            "gzip",
            "server gzips: {server_gzips}"
        );
        let bytes = resp.bytes().await.unwrap();
        let mut text = String::new();
        flate2::read::GzDecoder::new(&bytes[..])
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, plain, "server gzips: {server_gzips}");
    }

    // Errors are JSON, and name the service and the reason.
    let (status, body) = error_of(&d, "/proxy/nope/metrics").await;
    assert_eq!((status, body["code"].as_str()), (404, Some("unknown_service")));
    assert_eq!(body["detail"]["services"], serde_json::json!(["t"]));
    t.set("status 500");
    let (status, body) = error_of(&d, "/proxy/t/metrics").await;
    assert_eq!((status, body["code"].as_str()), (502, Some("upstream_error")), "{body}");
    assert_eq!(body["detail"]["service"], "t");
    assert!(body["error"].as_str().unwrap().contains("HTTP 500"), "{body}");

    let page = d.get_text("/metrics").await;
    assert_eq!(scrapes(&page, "t", "ok"), 3.0, "{page}");
    assert_eq!(scrapes(&page, "t", "upstream_error"), 1.0);
    assert_eq!(scrapes(&page, "t", "too_large"), 0.0, "every result from 0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_gib_page_is_refused_or_cut_at_the_limit_and_passes_whole_under_a_larger_one_with_flat_memory() {
    let t = MetricsTarget::start(&format!("length {}", 2 * GIB)).await;
    let d = Daemon::start(
        &config(&service("big", &t, "").replace("timeout: 2s", "timeout: 300s"), ""),
        &[],
    )
    .await;

    // Declared 2 GiB against the default 32 MiB: a 502 before any byte.
    let (status, body) = error_of(&d, "/proxy/big/metrics").await;
    assert_eq!((status, body["code"].as_str()), (502, Some("too_large")), "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("health.proxy_max_bytes"),
        "{body}"
    );

    // The same 2 GiB chunked: the page has started, so the connection is
    // cut at the limit, never a truncated 200 that ends cleanly.
    t.set(&format!("chunked {}", 2 * GIB));
    let resp = reqwest::get(d.url("/proxy/big/metrics")).await.unwrap();
    assert_eq!(resp.status(), 200);
    let (got, clean) = drain(resp).await;
    assert!(!clean, "a page over the limit must not end cleanly ({got} bytes)");
    assert!(got <= 32 << 20, "{got} bytes passed, over the 32 MiB limit");

    // Under a 4 GiB limit (a live key) the whole 2 GiB passes, chunk by
    // chunk: the daemon's peak memory does not grow with it.
    d.rewrite(
        &config(&service("big", &t, "").replace("timeout: 2s", "timeout: 300s"), "")
            .replace("health:\n", "health:\n  proxy_max_bytes: 4294967296\n"),
    );
    d.sighup();
    eventually("the 4 GiB limit in force", LIMIT, || async {
        let log = d.log();
        (log.contains("Config reloaded.") && log.contains("health.proxy_max_bytes")).then_some(())
    })
    .await;
    let mut whole = (0, false);
    let rise = rss_rise(d.proc.pid(), async {
        let resp = reqwest::get(d.url("/proxy/big/metrics")).await.unwrap();
        whole = drain(resp).await;
    })
    .await;
    assert_eq!(whole, (2 * GIB, true));
    assert!(rise < 32 << 20, "RSS rose by {rise} bytes for a 2 GiB page");
    let page = d.get_text("/metrics").await;
    assert_eq!(scrapes(&page, "big", "too_large"), 2.0, "{page}");
    assert_eq!(scrapes(&page, "big", "ok"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_past_the_timeout_is_cut_and_a_server_that_never_answers_is_a_502() {
    let t = MetricsTarget::start("hang").await;
    let d = Daemon::start(&config(&service("slow", &t, ""), ""), &[]).await;
    let (status, body) = error_of(&d, "/proxy/slow/metrics").await;
    assert_eq!((status, body["code"].as_str()), (502, Some("timeout")), "{body}");
    assert_eq!(body["detail"]["reason"], "timeout");

    // Headers at once, then a line a second: cut at the 2 s timeout.
    t.set("trickle");
    let resp = reqwest::get(d.url("/proxy/slow/metrics")).await.unwrap();
    assert_eq!(resp.status(), 200);
    let (_, clean) = drain(resp).await;
    assert!(!clean, "a page that never ends must be cut");
    let page = d.get_text("/metrics").await;
    assert_eq!(scrapes(&page, "slow", "timeout"), 2.0, "{page}");
    assert!(
        d.log().contains("took longer than the service's timeout"),
        "{}",
        d.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_discovers_and_scrapes_a_real_llama_server_through_the_daemon_over_tls_with_basic_auth() {
    let llama = LlamaServer::start().await;
    let tokens = complete(&llama.base_url(), LLM_MODEL, 16, 3).await;
    let c = Certs::new();
    let web_path = c.path("web.yml");
    std::fs::write(
        &web_path,
        format!(
            "tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\nbasic_auth_users:\n  prometheus: '{}'\n",
            bcrypt::hash("scrape-secret", 4).unwrap()
        ),
    )
    .unwrap();
    let web = format!("web:\n  config_file: {}\n", web_path.display());
    let llm = format!(
        "    - {{name: llm, kind: http, url: \"{}\", metrics_url: \"{}\", server: llamacpp, interval: 1h}}\n",
        llama.health_url(),
        llama.metrics_url()
    );
    let d = Daemon::spawn(&config(&llm, &web), &[], &[], None);
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("password");
    std::fs::write(&password, "scrape-secret").unwrap();
    let auth = format!(
        "    basic_auth:\n      username: prometheus\n      password_file: {}\n    tls_config:\n      ca_file: {}\n",
        password.display(),
        c.s("ca.pem")
    );
    // As monitoring/prometheus.yml's inference job: HTTP SD on the daemon,
    // and the same credentials for the targets it lists.
    let prom_config = format!(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: inference\n    scheme: https\n{auth}\
         \x20   http_sd_configs:\n      - url: https://127.0.0.1:{}/api/sd/inference\n        refresh_interval: 1s\n{}",
        d.port,
        auth.replace("    ", "        ")
    );
    let prom = Prometheus::start_with_config(dir, &prom_config).await;
    let q = "llamacpp:tokens_predicted_total{job=\"inference\",service=\"llm\",server=\"llamacpp\",gpu=\"\"}";
    let got = eventually(
        "the server's series through the daemon",
        Duration::from_secs(60),
        || {
            let prom = &prom;
            async move { prom.query(q).await.into_iter().next() }
        },
    )
    .await;
    assert_eq!(got["value"][1], tokens.to_string(), "the tokens the server served");
    assert_eq!(got["metric"]["instance"], format!("127.0.0.1:{}", d.port));
    // Without the credentials, the proxy is closed like every other path.
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--cacert",
            &c.s("ca.pem"),
        ])
        .arg(format!("https://127.0.0.1:{}/proxy/llm/metrics", d.port))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "401");
}
