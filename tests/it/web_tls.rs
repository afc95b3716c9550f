//! `--web.config.file` against real clients: certificates made here with
//! `openssl`, curl over HTTPS (basic auth, client certificates), a config
//! rewritten while the daemon runs, a real Prometheus scraping over TLS
//! with basic auth, and a WebSocket over `wss://`. Also the landing page,
//! the HTTP size and in-flight metrics, and the systemd unit.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use crate::common::{eventually, repo, run_tool, sample_value, Certs, Daemon, Prometheus, LIMIT};

fn hash(password: &str) -> String {
    bcrypt::hash(password, 4).unwrap()
}

/// Writes the web config atomically (a new inode, as editors and config
/// management do).
fn write_web(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// curl's status code for `url` (`000` when no HTTP answer came), and its
/// headers and body.
fn curl(args: &[&str], url: &str) -> (String, String) {
    let out = Command::new("curl")
        .args(["-sS", "-i", "--max-time", "10", "-w", "\n%{http_code}"])
        .args(args)
        .arg(url)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let code = text.lines().last().unwrap_or("000").to_string();
    (code, text)
}

/// `inferwatch check-web-config` on `text` (written to `path`): its exit
/// code and everything it printed.
fn check_web_config(path: &Path, text: &str) -> (i32, String) {
    std::fs::write(path, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_inferwatch"))
        .arg("check-web-config")
        .arg(path)
        .output()
        .unwrap();
    let all = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap(), all)
}

fn https(d: &Daemon, path: &str) -> String {
    format!("https://127.0.0.1:{}{path}", d.port)
}

/// Starts the daemon with `web` as its web config and waits until
/// `ready_args` get a 200 from `/-/ready` over HTTPS.
async fn tls_daemon(web: &str, web_path: &Path, ready_args: &[&str]) -> Daemon {
    write_web(web_path, web);
    // Mock GPU mode: the WebSocket snapshot has a gpu_stats to send.
    let cfg = format!(
        "web:\n  config_file: {}\nqueues:\n  enabled: false\ngpu:\n  nvml_library: libnvidia-ml-not-installed.so.1\n",
        web_path.display()
    );
    let d = Daemon::spawn(&cfg, &[], &[], None);
    let url = https(&d, "/-/ready");
    let args: Vec<String> = ready_args.iter().map(|s| s.to_string()).collect();
    eventually("the daemon to answer over HTTPS", LIMIT, || {
        let (url, args) = (url.clone(), args.clone());
        async move {
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            (curl(&a, &url).0 == "200").then_some(())
        }
    })
    .await;
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_basic_auth_and_headers() {
    let c = Certs::new();
    let web_path = c.path("web.yml");
    let web = format!(
        "tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n\
         basic_auth_users:\n  alice: '{}'\n\
         http_server_config:\n  headers:\n    X-Frame-Options: deny\n",
        hash("wonderland")
    );
    let ca = c.s("ca.pem");
    let d = tls_daemon(&web, &web_path, &["--cacert", &ca, "-u", "alice:wonderland"]).await;

    let (code, text) = curl(&["--cacert", &ca, "-u", "alice:wonderland"], &https(&d, "/metrics"));
    assert_eq!(code, "200", "{text}");
    assert!(text.contains("gpu_available 0"), "{text}");
    assert!(text.to_lowercase().contains("x-frame-options: deny"), "{text}");

    let (code, text) = curl(&["--cacert", &ca], &https(&d, "/metrics"));
    assert_eq!(code, "401", "no credentials: {text}");
    assert!(text.to_lowercase().contains("www-authenticate: basic"), "{text}");
    assert!(text.contains("\"code\":\"unauthorized\""), "{text}");
    let (code, _) = curl(&["--cacert", &ca, "-u", "alice:wrong"], &https(&d, "/metrics"));
    assert_eq!(code, "401", "wrong password");
    let (code, _) = curl(&["--cacert", &ca, "-u", "bob:wonderland"], &https(&d, "/-/healthy"));
    assert_eq!(code, "401", "unknown user, and the probes are covered too");
    // The CA decides: another CA's client does not trust the server.
    let (code, _) = curl(
        &["--cacert", &c.s("other-ca.pem"), "-u", "alice:wonderland"],
        &https(&d, "/metrics"),
    );
    assert_eq!(code, "000", "a client that does not trust the CA gets no answer");
    // Plain HTTP on the TLS port gets no HTTP answer either.
    let (code, _) = curl(&[], &format!("http://127.0.0.1:{}/metrics", d.port));
    assert_ne!(code, "200");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_are_required_and_verified() {
    let c = Certs::new();
    let web_path = c.path("web.yml");
    let web = "tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n\
               \x20 client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.pem\n";
    let ca = c.s("ca.pem");
    let (cert, key) = (c.s("client.pem"), c.s("client.key"));
    let with_cert = ["--cacert", ca.as_str(), "--cert", cert.as_str(), "--key", key.as_str()];
    // A self-signed certificate no CA vouches for.
    let (other_cert, other_key) = (c.s("other-ca.pem"), c.s("other.key"));
    let with_other = [
        "--cacert",
        ca.as_str(),
        "--cert",
        other_cert.as_str(),
        "--key",
        other_key.as_str(),
    ];
    let d = tls_daemon(web, &web_path, &with_cert).await;
    let (code, _) = curl(&with_cert, &https(&d, "/metrics"));
    assert_eq!(code, "200");
    let (code, text) = curl(&["--cacert", &ca], &https(&d, "/metrics"));
    assert_eq!(code, "000", "no client certificate: the handshake is refused: {text}");
    let (code, _) = curl(&with_other, &https(&d, "/metrics"));
    assert_eq!(
        code, "000",
        "a certificate from a CA the server does not trust is refused"
    );
    eventually("the refused handshakes to be counted", LIMIT, || async {
        let page = curl(&with_cert, &https(&d, "/metrics")).1;
        let refused = sample_value(
            &page,
            "http_connections_closed_by_server_total{reason=\"tls_handshake\"}",
        );
        (refused >= Some(2.0)).then_some(())
    })
    .await;

    // VerifyClientCertIfGiven: none is fine, a good one is fine, a bad one is refused.
    write_web(
        &web_path,
        &web.replace("RequireAndVerifyClientCert", "VerifyClientCertIfGiven"),
    );
    assert_eq!(curl(&["--cacert", &ca], &https(&d, "/metrics")).0, "200");
    assert_eq!(curl(&with_cert, &https(&d, "/metrics")).0, "200");
    assert_eq!(curl(&with_other, &https(&d, "/metrics")).0, "000");
    // RequireAnyClientCert: any certificate, checked against no CA, but one is needed.
    write_web(
        &web_path,
        &web.replace("RequireAndVerifyClientCert", "RequireAnyClientCert"),
    );
    assert_eq!(curl(&with_other, &https(&d, "/metrics")).0, "200");
    assert_eq!(curl(&["--cacert", &ca], &https(&d, "/metrics")).0, "000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_config_is_reloaded_when_it_changes() {
    let c = Certs::new();
    let web_path = c.path("web.yml");
    let tls = "tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n";
    let ca = c.s("ca.pem");
    let d = tls_daemon(
        &format!("{tls}basic_auth_users:\n  alice: '{}'\n", hash("old")),
        &web_path,
        &["--cacert", &ca, "-u", "alice:old"],
    )
    .await;
    write_web(
        &web_path,
        &format!("{tls}basic_auth_users:\n  alice: '{}'\n", hash("new")),
    );
    let (code, _) = curl(&["--cacert", &ca, "-u", "alice:new"], &https(&d, "/metrics"));
    assert_eq!(code, "200", "the new password works without a restart");
    let (code, _) = curl(&["--cacert", &ca, "-u", "alice:old"], &https(&d, "/metrics"));
    assert_eq!(code, "401", "the old one no longer does");
    // A broken file keeps the last good config, and says so.
    write_web(&web_path, "basic_auth_users:\n  alice: not-a-hash\n");
    let (code, _) = curl(&["--cacert", &ca, "-u", "alice:new"], &https(&d, "/metrics"));
    assert_eq!(code, "200");
    let log = d.log();
    assert!(
        log.contains("Web config could not be reloaded") && log.contains("basic_auth_users.alice"),
        "{log}"
    );
}

#[test]
fn a_broken_web_config_stops_startup_and_check_web_config_names_the_key() {
    let c = Certs::new();
    let bad = c.path("bad.yml");
    std::fs::write(
        &bad,
        "tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n  client_auth_type: Sometimes\n",
    )
    .unwrap();
    let good = c.path("good.yml");
    std::fs::write(
        &good,
        "tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n  min_version: TLS11\n  cipher_suites: [TLS_RSA_WITH_AES_128_CBC_SHA, TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256]\n",
    )
    .unwrap();
    let bin = env!("CARGO_BIN_EXE_inferwatch");
    let out = Command::new(bin).args(["check-web-config"]).arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("tls_server_config.client_auth_type") && err.contains("RequireAndVerifyClientCert"),
        "{err}"
    );
    let out = Command::new(bin)
        .args(["check-web-config"])
        .arg(&good)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("TLS_RSA_WITH_AES_128_CBC_SHA is not implemented by rustls")
            && said.contains("TLS 1.2 is the minimum"),
        "what is not honoured is said: {said}"
    );
    // The daemon refuses to start on the bad file.
    let out = Command::new(bin)
        .args(["--web.listen-address=127.0.0.1:0", "--web.config.file"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("tls_server_config.client_auth_type"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_over_tls_with_basic_auth() {
    let c = Certs::new();
    let web_path = c.path("web.yml");
    let ca = c.s("ca.pem");
    let web = format!(
        "tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\nbasic_auth_users:\n  prometheus: '{}'\n",
        hash("scrape-secret")
    );
    let d = tls_daemon(&web, &web_path, &["--cacert", &ca, "-u", "prometheus:scrape-secret"]).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("password"), "scrape-secret").unwrap();
    let config = format!(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: inferwatch\n    scheme: https\n\
         \x20   basic_auth:\n      username: prometheus\n      password_file: {}\n\
         \x20   tls_config:\n      ca_file: {ca}\n\
         \x20   static_configs:\n      - targets: ['127.0.0.1:{}']\n",
        dir.path().join("password").display(),
        d.port
    );
    let prom = Prometheus::start_with_config(dir, &config).await;
    eventually("up == 1 over TLS", LIMIT, || {
        let prom = &prom;
        async move { (!prom.query("up{job=\"inferwatch\"} == 1").await.is_empty()).then_some(()) }
    })
    .await;
    let series = prom.query("inferwatch_build_info{job=\"inferwatch\"}").await;
    assert_eq!(series.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_over_wss_with_basic_auth_gets_the_snapshot() {
    use base64::Engine;
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;

    let c = Certs::new();
    let web_path = c.path("web.yml");
    let ca = c.s("ca.pem");
    let web = format!(
        "tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\nbasic_auth_users:\n  ops: '{}'\n",
        hash("pw")
    );
    let d = tls_daemon(&web, &web_path, &["--cacert", &ca, "-u", "ops:pw"]).await;

    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(c.path("ca.pem")).unwrap();
    use rustls::pki_types::pem::PemObject;
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connect = |auth: Option<&'static str>| {
        let client = client.clone();
        let port = d.port;
        async move {
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
            let tls = tokio_rustls::TlsConnector::from(Arc::new(client))
                .connect(name, tcp)
                .await
                .unwrap();
            let mut req = format!("wss://127.0.0.1:{port}/ws/system")
                .into_client_request()
                .unwrap();
            if let Some(creds) = auth {
                let v = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(creds));
                req.headers_mut().insert("authorization", v.parse().unwrap());
            }
            tokio_tungstenite::client_async(req, tls).await
        }
    };
    // Without credentials the upgrade is refused with 401.
    match connect(None).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 401),
        other => panic!("expected a 401, got {:?}", other.map(|_| ())),
    }
    let (mut ws, _) = connect(Some("ops:pw")).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => return serde_json::from_str::<serde_json::Value>(&t).unwrap(),
                Some(Ok(_)) => continue,
                other => panic!("connection ended: {other:?}"),
            }
        }
    })
    .await
    .unwrap();
    assert!(first["type"].is_string(), "{first}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn landing_page_and_http_size_and_in_flight_metrics() {
    let d = Daemon::start("queues:\n  enabled: false\ngpu:\n  enabled: false\n", &[]).await;
    let page = reqwest::get(d.url("/")).await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let html = page.text().await.unwrap();
    for link in ["/metrics", "/-/healthy", "/-/ready", "/api/system/gpus"] {
        assert!(html.contains(&format!("href=\"{link}\"")), "{link}: {html}");
    }
    assert!(html.contains(env!("CARGO_PKG_VERSION")));
    assert!(
        html.contains("<td>gpu</td><td>off</td>") && html.contains("<td>storage</td><td>running</td>"),
        "{html}"
    );

    // Sizes: three known bodies in, three known bodies out.
    let client = reqwest::Client::new();
    for _ in 0..3 {
        let body = client
            .get(d.url("/-/healthy"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(body, "Healthy.\n");
    }
    let event = r#"[{"kind":"stage","stage":"detection","duration_seconds":0.5,"status":"ok"}]"#;
    for _ in 0..2 {
        let r = client
            .post(d.url("/api/pipeline/events"))
            .header("content-type", "application/json")
            .body(event)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.status());
    }
    let m = d.get_text("/metrics").await;
    let v = |s: &str| sample_value(&m, s).unwrap_or_else(|| panic!("{s}: {m}"));
    assert_eq!(
        v("http_response_size_bytes_sum{method=\"GET\",route=\"/-/healthy\"}"),
        27.0
    );
    assert_eq!(
        v("http_response_size_bytes_count{method=\"GET\",route=\"/-/healthy\"}"),
        3.0
    );
    assert_eq!(
        v("http_request_size_bytes_sum{method=\"GET\",route=\"/-/healthy\"}"),
        0.0
    );
    assert_eq!(
        v("http_request_size_bytes_sum{method=\"POST\",route=\"/api/pipeline/events\"}"),
        2.0 * event.len() as f64
    );
    // The scrape itself is in flight while the page is rendered.
    assert_eq!(v("http_requests_in_flight"), 1.0);

    // A slow request: headers sent, the body held back.
    use tokio::io::AsyncWriteExt;
    let mut slow = tokio::net::TcpStream::connect(("127.0.0.1", d.port)).await.unwrap();
    slow.write_all(
        b"POST /api/pipeline/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"kind\":",
    )
    .await
    .unwrap();
    eventually("the slow request to be in flight", LIMIT, || async {
        let m = d.get_text("/metrics").await;
        (sample_value(&m, "http_requests_in_flight") == Some(2.0)).then_some(())
    })
    .await;
    drop(slow);
    eventually("the slow request to leave", LIMIT, || async {
        let m = d.get_text("/metrics").await;
        (sample_value(&m, "http_requests_in_flight") == Some(1.0)).then_some(())
    })
    .await;
}

#[test]
fn the_systemd_unit_verifies() {
    let unit = std::fs::read_to_string(repo().join("packaging/systemd/inferwatch.service")).unwrap();
    for want in [
        "User=inferwatch",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "RestrictAddressFamilies=",
        "SystemCallFilter=@system-service",
        "DeviceAllow=/dev/nvidiactl rw",
        "StateDirectory=inferwatch",
        "Restart=on-failure",
        // The kernel log (XIDs) and nothing more.
        "DeviceAllow=/dev/kmsg r",
        "CapabilityBoundingSet=CAP_SYSLOG\n",
        "AmbientCapabilities=CAP_SYSLOG\n",
    ] {
        assert!(unit.contains(want), "{want}");
    }
    assert!(!unit.contains("ProtectKernelLogs=yes"), "it would hide /dev/kmsg");
    // systemd-analyze checks that ExecStart is executable: point it at the
    // binary under test.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("inferwatch.service");
    std::fs::write(
        &path,
        unit.replace("/usr/bin/inferwatch", env!("CARGO_BIN_EXE_inferwatch")),
    )
    .unwrap();
    let (ok, out) = run_tool("systemd-analyze", &["verify", path.to_str().unwrap()]);
    assert!(ok, "{out}");
    assert!(out.trim().is_empty(), "no warnings either: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_health_checks_trust_the_configured_ca() {
    let c = Certs::new();
    let target_dir = tempfile::tempdir().unwrap();
    let port = crate::common::free_port();
    let _target = crate::common::Proc {
        child: Command::new(crate::common::python())
            .arg(crate::common::HealthTarget::script())
            .arg(port.to_string())
            .arg(target_dir.path().join("mode"))
            .env(
                "HEALTH_TARGET_TLS",
                format!("{}:{}", c.s("server.pem"), c.s("server.key")),
            )
            .spawn()
            .unwrap(),
        name: "https health target",
    };
    // A second target that requires a client certificate from the CA.
    let mtls_port = crate::common::free_port();
    let _mtls_target = crate::common::Proc {
        child: Command::new(crate::common::python())
            .arg(crate::common::HealthTarget::script())
            .arg(mtls_port.to_string())
            .arg(target_dir.path().join("mode"))
            .env(
                "HEALTH_TARGET_TLS",
                format!("{}:{}", c.s("server.pem"), c.s("server.key")),
            )
            .env("HEALTH_TARGET_CLIENT_CA", c.s("ca.pem"))
            .spawn()
            .unwrap(),
        name: "mTLS health target",
    };
    let ca = c.s("ca.pem");
    let url = format!("https://127.0.0.1:{port}/health");
    eventually("the HTTPS target", LIMIT, || {
        let (ca, url) = (ca.clone(), url.clone());
        async move { (curl(&["--cacert", &ca], &url).0 == "200").then_some(()) }
    })
    .await;
    let mtls_url = format!("https://127.0.0.1:{mtls_port}/health");
    let (cert, key) = (c.s("client.pem"), c.s("client.key"));
    eventually("the mTLS target", LIMIT, || {
        let (ca, url, cert, key) = (ca.clone(), mtls_url.clone(), cert.clone(), key.clone());
        async move { (curl(&["--cacert", &ca, "--cert", &cert, "--key", &key], &url).0 == "200").then_some(()) }
    })
    .await;
    let at = |url: &str, name: &str, tls: &str| {
        format!("    - {{name: {name}, kind: http, url: \"{url}\", interval: 200ms, timeout: 2s, tls: {{{tls}}}}}\n")
    };
    let svc = |name: &str, tls: &str| at(&url, name, tls);
    let config = format!(
        "gpu:\n  enabled: false\nqueues:\n  enabled: false\nhealth:\n  services:\n{}{}{}{}",
        svc("with_ca", &format!("ca_file: {ca}")),
        svc("wrong_ca", &format!("ca_file: {}", c.s("other-ca.pem"))),
        svc("skip_verify", "insecure_skip_verify: true"),
        svc("by_name", &format!("ca_file: {ca}, server_name: localhost")),
    ) + &svc("by_other_name", &format!("ca_file: {ca}, server_name: model.internal"))
        + &at(
            &mtls_url,
            "mtls_with_cert",
            &format!("ca_file: {ca}, cert_file: {cert}, key_file: {key}"),
        )
        + &at(&mtls_url, "mtls_without_cert", &format!("ca_file: {ca}"));
    let d = Daemon::start(&config, &[]).await;
    let health = eventually("every service checked", LIMIT, || async {
        let body: serde_json::Value = d.get_json("/api/system/health").await;
        let s = &body["services"];
        [
            "with_ca",
            "wrong_ca",
            "skip_verify",
            "by_name",
            "by_other_name",
            "mtls_with_cert",
            "mtls_without_cert",
        ]
        .iter()
        .all(|n| s[n] == "healthy" || s[n] == "unhealthy")
        .then_some(body)
    })
    .await;
    let s = &health["services"];
    assert_eq!(s["with_ca"], "healthy", "{health}");
    assert_eq!(s["skip_verify"], "healthy", "{health}");
    assert_eq!(s["wrong_ca"], "unhealthy", "{health}");
    // The server certificate is for 127.0.0.1 and model.internal, not
    // localhost: the name verified is server_name, while the check still
    // connects to the URL's address.
    assert_eq!(s["by_name"], "unhealthy", "{health}");
    assert_eq!(s["by_other_name"], "healthy", "{health}");
    assert_eq!(s["mtls_with_cert"], "healthy", "{health}");
    assert_eq!(s["mtls_without_cert"], "unhealthy", "{health}");
    let log = d.log();
    let wrong: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("wrong_ca") && l.contains("Service status changed"))
        .collect();
    assert!(
        wrong.iter().any(|l| l.to_lowercase().contains("certificate")),
        "the reason names the certificate: {wrong:?}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("skip_verify") && l.contains("insecure_skip_verify")),
        "{log}"
    );
}

/// The exporter-toolkit rules (web/tls_config.go): header values it
/// refuses, CAs without a policy to use them, and client certificates
/// verified against the system's roots when no CA file is given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exporter_toolkit_rules_hold_against_the_real_binary() {
    let c = Certs::new();
    let tls = "tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n";
    for (name, text, key, allowed) in [
        (
            "nosniff.yml",
            "http_server_config:\n  headers:\n    X-Content-Type-Options: sniff\n".to_string(),
            "http_server_config.headers.X-Content-Type-Options",
            "nosniff",
        ),
        (
            "frame.yml",
            "http_server_config:\n  headers:\n    X-Frame-Options: allow-from https://x\n".to_string(),
            "http_server_config.headers.X-Frame-Options",
            "deny or sameorigin",
        ),
        (
            "ca-no-policy.yml",
            format!("{tls}  client_ca_file: ca.pem\n"),
            "tls_server_config.client_ca_file",
            "without a client auth policy",
        ),
        (
            "ca-noclientcert.yml",
            format!("{tls}  client_ca_file: ca.pem\n  client_auth_type: NoClientCert\n"),
            "tls_server_config.client_ca_file",
            "without a client auth policy",
        ),
    ] {
        let (code, err) = check_web_config(&c.path(name), &text);
        assert_eq!(code, 1, "{name}: {err}");
        assert!(err.contains(key) && err.contains(allowed), "{name}: {err}");
    }

    // Cipher and curve lists: accepted when one entry is implemented (the
    // rest named), refused when none is.
    for (name, text, code, said) in [
        (
            "cbc-only.yml",
            format!("{tls}  cipher_suites: [TLS_RSA_WITH_AES_128_CBC_SHA]\n"),
            1,
            "none of them is implemented by rustls",
        ),
        (
            "p521-only.yml",
            format!("{tls}  curve_preferences: [CurveP521]\n"),
            1,
            "none is implemented",
        ),
        (
            "p521-x25519.yml",
            format!("{tls}  curve_preferences: [CurveP521, X25519]\n"),
            0,
            "CurveP521 is not implemented by rustls",
        ),
    ] {
        let (got, all) = check_web_config(&c.path(name), &text);
        assert_eq!(got, code, "{name}: {all}");
        assert!(all.contains(said), "{name}: {all}");
    }

    // VerifyClientCertIfGiven without a CA file: the system's roots decide.
    // A client without a certificate is served; one whose certificate the
    // test CA signed (no system root) is refused in the handshake.
    let web_path = c.path("web.yml");
    let ca = c.s("ca.pem");
    let d = tls_daemon(
        &format!("{tls}  client_auth_type: VerifyClientCertIfGiven\n"),
        &web_path,
        &["--cacert", &ca],
    )
    .await;
    let (code, text) = curl(&["--cacert", &ca], &https(&d, "/-/healthy"));
    assert_eq!(code, "200", "{text}");
    let (code, text) = curl(
        &[
            "--cacert",
            &ca,
            "--cert",
            &c.s("client.pem"),
            "--key",
            &c.s("client.key"),
        ],
        &https(&d, "/-/healthy"),
    );
    assert_eq!(code, "000", "a certificate no system root signed: {text}");
}

/// `rate_limit` as the toolkit builds it: a token every `interval`, `burst`
/// at once, server-wide; a request over it gets 429 before anything else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_toolkit_rate_limit_answers_429_past_its_burst() {
    let c = Certs::new();
    let web_path = c.path("web.yml");
    write_web(&web_path, "rate_limit:\n  interval: 1h\n  burst: 5\n");
    let cfg = format!(
        "web:\n  config_file: {}\nqueues:\n  enabled: false\ngpu:\n  nvml_library: libnvidia-ml-not-installed.so.1\n",
        web_path.display()
    );
    let d = Daemon::spawn(&cfg, &[], &[], None);
    let client = reqwest::Client::new();
    let (mut answered, mut limited) = (Vec::new(), 0);
    while answered.len() + limited < 20 {
        match client.get(d.url("/-/healthy")).send().await {
            // Not listening yet: nothing was counted.
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            Ok(r) if r.status() == 429 => {
                let body: serde_json::Value = r.json().await.unwrap();
                assert_eq!(body["code"], "too_many_requests", "{body}");
                assert!(body["error"].as_str().unwrap().contains("rate_limit"), "{body}");
                limited += 1;
            }
            Ok(r) => answered.push(r.status().as_u16()),
        }
    }
    assert_eq!(answered, [200; 5], "the burst, then nothing for an hour");
    assert_eq!(limited, 15);
    // A burst of 0 lets nothing through: refused, naming the key.
    let (code, err) = check_web_config(&c.path("bad.yml"), "rate_limit:\n  interval: 1s\n  burst: 0\n");
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("rate_limit.burst") && err.contains("at least 1"), "{err}");
}

/// `client_allowed_sans`: a verified client certificate must carry one of
/// the listed SANs (the test client's are IP:127.0.0.1 and
/// DNS:model.internal), or the handshake fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_allowed_sans_admit_only_the_listed_names() {
    let c = Certs::new();
    let ca = c.s("ca.pem");
    let client = [
        "--cacert",
        ca.as_str(),
        "--cert",
        &c.s("client.pem"),
        "--key",
        &c.s("client.key"),
    ];
    let tls = "tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n  \
               client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.pem\n";
    let listed = tls_daemon(
        &format!("{tls}  client_allowed_sans: [other.internal, model.internal]\n"),
        &c.path("web.yml"),
        &client,
    )
    .await;
    let (code, text) = curl(&client, &https(&listed, "/-/healthy"));
    assert_eq!(code, "200", "{text}");
    drop(listed);

    let web = c.path("web2.yml");
    write_web(
        &web,
        &format!("{tls}  client_allowed_sans: [other.internal, \"10.0.0.1\"]\n"),
    );
    let cfg = format!(
        "web:\n  config_file: {}\nqueues:\n  enabled: false\ngpu:\n  nvml_library: libnvidia-ml-not-installed.so.1\n",
        web.display()
    );
    let d = Daemon::spawn(&cfg, &[], &[], None);
    // Served at all: a TCP connect succeeds once it listens; the handshake
    // with this certificate never does.
    eventually("the daemon to listen", LIMIT, || async {
        std::net::TcpStream::connect(("127.0.0.1", d.port)).ok().map(|_| ())
    })
    .await;
    let (code, text) = curl(&client, &https(&d, "/-/healthy"));
    assert_eq!(code, "000", "no listed SAN: {text}");
    // Without a client certificate it is refused too (the auth type requires one).
    let (code, _) = curl(&["--cacert", &ca], &https(&d, "/-/healthy"));
    assert_eq!(code, "000");
    // With NoClientCert there is no verified certificate to check: refused.
    let (code, err) = check_web_config(
        &c.path("bad.yml"),
        "tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n  client_allowed_sans: [x]\n",
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("tls_server_config.client_allowed_sans"), "{err}");
}

/// A self-signed client certificate with `CA:TRUE`, as `openssl req -x509`
/// makes with Debian's default openssl.cnf and as exporter-toolkit's own
/// tests present: listed in `client_ca_file` it is accepted as a pinned
/// certificate (Go accepts it; rustls-webpki alone refuses a CA as an end
/// entity), with `client_allowed_sans` checked. Another self-signed one is
/// still refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_self_signed_ca_true_client_certificate_in_client_ca_file_is_accepted_as_pinned() {
    let c = Certs::new();
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ])
        .args([
            "-keyout",
            "self.key",
            "-out",
            "self.pem",
            "-days",
            "2",
            "-subj",
            "/CN=self-client",
        ])
        .args(["-addext", "subjectAltName=DNS:self-client"])
        .current_dir(c.dir.path())
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let text = Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(c.path("self.pem"))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&text.stdout).contains("CA:TRUE"),
        "openssl made a CA:TRUE certificate"
    );
    let web_path = c.path("web.yml");
    let web = "tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n\
               \x20 client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: self.pem\n  client_allowed_sans: [self-client]\n";
    let ca = c.s("ca.pem");
    let (cert, key) = (c.s("self.pem"), c.s("self.key"));
    let with_self = ["--cacert", ca.as_str(), "--cert", cert.as_str(), "--key", key.as_str()];
    let d = tls_daemon(web, &web_path, &with_self).await;
    let (code, text) = curl(&with_self, &https(&d, "/metrics"));
    assert_eq!(code, "200", "{text}");
    let (other_cert, other_key) = (c.s("other-ca.pem"), c.s("other.key"));
    let with_other = [
        "--cacert",
        ca.as_str(),
        "--cert",
        other_cert.as_str(),
        "--key",
        other_key.as_str(),
    ];
    let (code, _) = curl(&with_other, &https(&d, "/metrics"));
    assert_eq!(
        code, "000",
        "a self-signed certificate not in client_ca_file is refused"
    );
}
