//! Config validation: a table of bad values, each with its clear error, and
//! the `check-config` exit codes of the real binary. The shipped example
//! config must pass.

use std::path::Path;
use std::process::Command;

use crate::common::check_config;
use inferwatch::config::Config;

fn check(yaml: &str, env: &[(&str, &str)]) -> Result<Config, String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yml");
    std::fs::write(&path, yaml).unwrap();
    let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let config = Config::load(Some(&path), move |k| {
        env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    })
    .map_err(|e| e.to_string())?;
    // What check-config, startup and reload add: each URL parsed by its
    // client, the token files read.
    inferwatch::check_config(&config).map_err(|e| e.to_string())?;
    Ok(config)
}

#[test]
fn bad_values_name_the_key_the_value_and_the_range() {
    // (yaml, env, every fragment the message must contain)
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a [&'a str]);
    let table: &[Case] = &[
        (
            "gpu:\n  poll_interval: 0.5\n",
            &[],
            &["gpu.poll_interval", "0.5", "1–60"],
        ),
        ("gpu:\n  poll_interval: 61\n", &[], &["gpu.poll_interval", "61", "1–60"]),
        (
            "gpu:\n  history_minutes: 0\n",
            &[],
            &["gpu.history_minutes", "0", "1–1440"],
        ),
        (
            "gpu:\n  history_minutes: 1441\n",
            &[],
            &["gpu.history_minutes", "1441", "1–1440"],
        ),
        ("gpu:\n  history_minutes: -3\n", &[], &["history_minutes"]),
        ("gpu:\n  timeout: 0s\n", &[], &["gpu.timeout", "0.1–60"]),
        (
            "gpu:\n  temperature_warning_celsius: 200\n",
            &[],
            &["gpu.temperature_warning_celsius", "200", "1–150"],
        ),
        ("gpu:\n  nvml_library: ''\n", &[], &["gpu.nvml_library"]),
        ("gpu:\n  poll_interval: fast\n", &[], &["poll_interval", "fast", "5s"]),
        (
            "gpu:\n  pol_interval: 5\n",
            &[],
            &["unknown field", "pol_interval", "poll_interval"],
        ),
        ("gpus: {}\n", &[], &["unknown field", "gpus"]),
        (
            "store:\n  retention_days: 0\n",
            &[],
            &["store.retention_days", "1–3650"],
        ),
        (
            "store:\n  buffer_capacity: 5\n",
            &[],
            &["store.buffer_capacity", "100–10000000"],
        ),
        ("store:\n  batch_size: 0\n", &[], &["store.batch_size", "1–10000"]),
        (
            "store:\n  url: mysql://db\n",
            &[],
            &["store.url", "mysql://db", "postgres://"],
        ),
        (
            "store:\n  url: 'postgres://u@h:notaport/db'\n",
            &[],
            &["store.url", "PostgreSQL URL"],
        ),
        (
            "web:\n  listen_address: 'nonsense'\n",
            &[],
            &["web.listen_address", "HOST:PORT"],
        ),
        (
            "health:\n  services:\n    - {name: a, kind: http, url: 'http://x/health', interval: 0s}\n",
            &[],
            &["health.services[0].interval", "0.05–3600"],
        ),
        (
            "health:\n  services:\n    - {name: a, kind: http, url: 'http://x/h'}\n    - {name: b, kind: redis, url: 'http://x/h'}\n",
            &[],
            &["health.services[1].url", "redis://"],
        ),
        (
            "health:\n  services:\n    - {name: a, kind: http, url: 'http://x/h'}\n    - {name: a, kind: http, url: 'http://y/h'}\n",
            &[],
            &["health.services[1].name", "duplicate"],
        ),
        (
            "health:\n  services:\n    - {name: 'bad name', kind: http, url: 'http://x/h'}\n",
            &[],
            &["health.services[0].name", "A-Za-z0-9_.-"],
        ),
        (
            "health:\n  services:\n    - {name: a, kind: http, url: 'http://x/h', max_retries: 0}\n",
            &[],
            &["health.services[0].max_retries", "1–100"],
        ),
        (
            "health:\n  services:\n    - {name: a, kind: http, url: 'http://x/h', restart: {command: []}}\n",
            &[],
            &["health.services[0].restart.command", "empty"],
        ),
        (
            "health:\n  services:\n    - {name: a, kind: smtp, url: 'http://x/h'}\n",
            &[],
            &["kind", "smtp", "http"],
        ),
        (
            "health:\n  services:\n    - {name: a, kind: http, url: 'http://x/h', restart: {command: [x], shell: true}}\n",
            &[],
            &["unknown field", "shell"],
        ),
        (
            "health:\n  services:\n    - {name: a, kind: http, url: 'http://x/h', expect_status: ['7xx']}\n",
            &[],
            &["health.services[0].expect_status[0]", "7xx", "1xx–5xx"],
        ),
        (
            "health:\n  services:\n    - {name: a, kind: http, url: 'http://x/h', expect_status: [600]}\n",
            &[],
            &["health.services[0].expect_status[0]", "600", "100–599"],
        ),
        (
            "health:\n  services:\n    - {name: a, kind: http, url: 'http://x/h', failure_threshold: 0}\n",
            &[],
            &["health.services[0].failure_threshold", "1–100"],
        ),
        (
            "health:\n  services:\n    - {name: a, kind: http, url: 'http://x/h', success_threshold: 101}\n",
            &[],
            &["health.services[0].success_threshold", "1–100"],
        ),
        (
            "health:\n  services:\n    - {name: a, kind: http, url: 'http://x/h', start_period: 2d}\n",
            &[],
            &["health.services[0].start_period", "0–86400"],
        ),
        (
            "health:\n  services:\n    - {name: a, kind: http, url: 'http://x/h', start_interval: 0s}\n",
            &[],
            &["health.services[0].start_interval", "0.05–3600"],
        ),
        (
            "health:\n  services:\n    - {name: a, kind: http, url: 'http://x/h', body: x}\n",
            &[],
            &["health.services[0].body", "only for method POST"],
        ),
        (
            "health:\n  services:\n    - {name: a, kind: http, url: 'http://x/h', method: PUT}\n",
            &[],
            &["method", "PUT", "GET"],
        ),
        (
            "health:\n  services:\n    - {name: a, kind: http, url: 'http://x/h', models: [m]}\n",
            &[],
            &["health.services[0]", "models: `models` is only for kind open_inference; this service is kind http"],
        ),
        (
            "health:\n  services:\n    - {name: a, kind: http, url: 'http://x/h', progress: {preset: vllm}}\n",
            &[],
            &["health.services[0].metrics_url", "required by progress"],
        ),
        (
            "health:\n  services:\n    - {name: a, kind: http, url: 'http://x/h', metrics_url: 'http://x/m', progress: {metrics_url: 'http://y/m', preset: vllm}}\n",
            &[],
            &["health.services[0].progress.metrics_url", "http://y/m", "metrics_url alone"],
        ),
        (
            "health:\n  services:\n    - {name: a, kind: http, url: 'http://x/h', metrics_url: 'ftp://x/m'}\n",
            &[],
            &["health.services[0].metrics_url", "ftp://x/m", "http://HOST:PORT/metrics"],
        ),
        (
            "health:\n  services:\n    - {name: a, kind: http, url: 'http://x/h', server: nginx}\n",
            &[],
            &["health.services[0]", "server: unknown variant", "nginx"],
        ),
        (
            "health:\n  proxy_max_bytes: 100\n",
            &[],
            &["health.proxy_max_bytes", "100", "4096"],
        ),
        (
            "gpu:\n  kernel_log_record_max_bytes: 100\n",
            &[],
            &["gpu.kernel_log_record_max_bytes", "100", "8192"],
        ),
        (
            "attribution:\n  proc_file_max_bytes: 2000000000\n",
            &[],
            &["attribution.proc_file_max_bytes", "2000000000", "16777216"],
        ),
        (
            "attribution:\n  docker_max_bytes: 10\n",
            &[],
            &["attribution.docker_max_bytes", "10", "4096"],
        ),
        (
            "attribution:\n  docker_timeout: 0s\n",
            &[],
            &["attribution.docker_timeout", "0.1"],
        ),
        (
            "inference:\n  scrape: sideways\n",
            &[],
            &["inference.scrape", "sideways", "proxy"],
        ),
        (
            "health:\n  services:\n    - {name: a, kind: http, url: 'http://x/h', progress: {metrics_url: 'http://x/metrics', preset: sglang}}\n",
            &[],
            &["health.services[0].progress.preset", "sglang", "vllm, tgi, triton, llamacpp, mlserver"],
        ),
        (
            "health:\n  services:\n    - {name: a, kind: http, url: 'http://x/h', progress: {metrics_url: 'http://x/metrics', pending: [a]}}\n",
            &[],
            &["health.services[0].progress", "both pending and done"],
        ),
        (
            "health:\n  services:\n    - {name: a, kind: http, url: 'http://x/h', progress: {metrics_url: 'http://x/metrics', preset: vllm, stall_after: 0s}}\n",
            &[],
            &["health.services[0].progress.stall_after", "1–86400"],
        ),
        (
            "health:\n  services:\n    - {name: a, kind: http, url: 'http://x/h', depends_on: [a]}\n",
            &[],
            &["health.services[0].depends_on[0]", "the service itself"],
        ),
        (
            "health:\n  services:\n    - {name: a, kind: http, url: 'http://x/h', depends_on: [nope]}\n    - {name: b, kind: redis, url: 'redis://x:6379'}\n",
            &[],
            &["health.services[0].depends_on[0]", "nope", "one of a, b"],
        ),
        (
            "health:\n  services:\n    - {name: a, kind: http, url: 'http://x/h', depends_on: [b]}\n    - {name: b, kind: http, url: 'http://x/h', depends_on: [c]}\n    - {name: c, kind: http, url: 'http://x/h', depends_on: [a]}\n",
            &[],
            &["health.services[", "depends_on", "a -> b -> c -> a", "a cycle"],
        ),
        (
            "health:\n  max_concurrent_restarts: 0\n",
            &[],
            &["health.max_concurrent_restarts", "1–100"],
        ),
        (
            "health:\n  services:\n    - {name: r, kind: redis, url: 'redis://x:6379', headers: {X-A: b}}\n",
            &[],
            &["health.services[0]", "headers: `headers` is only for kind http or open_inference; this service is kind redis"],
        ),
        (
            "health:\n  services:\n    - {name: a, kind: http, url: 'http://x/h', headers: {'Bad Name': b}}\n",
            &[],
            &["health.services[0].headers.Bad Name", "not a valid HTTP header"],
        ),
        (
            "health:\n  services:\n    - {name: a, kind: postgres, url: 'postgres://u@h:port/db'}\n",
            &[],
            &["health.services[0].url", "not a valid URL"],
        ),
        (
            "queues:\n  redis_url: 'http://x'\n",
            &[],
            &["queues.redis_url", "redis://"],
        ),
        // The right scheme, refused by the Redis client itself (parsed once,
        // by the client that connects; check-config runs it too).
        (
            "queues:\n  redis_url: 'redis://cache:notaport/0'\n",
            &[],
            &["queues.redis_url", "not a valid Redis URL", "redis://[[USER]:PASSWORD@]HOST:PORT"],
        ),
        (
            "queues:\n  redis_url: 'redis+sentinel://:6379/'\n",
            &[],
            &["queues.redis_url", "not a valid Sentinel URL"],
        ),

        ("queues:\n  names: []\n", &[], &["queues.names", "at least one"]),
        (
            "queues:\n  names: [detection_queue, 'bad name']\n",
            &[],
            &["queues.names[1]", "A-Za-z0-9_.-"],
        ),
        (
            "queues:\n  clear_archive_ttl: 10s\n",
            &[],
            &["queues.clear_archive_ttl", "60–31536000"],
        ),
        ("queues:\n  push_side: middle\n", &[], &["push_side", "middle", "left"]),
        (
            "api:\n  trusted_networks: ['10.0.0.0/33']\n",
            &[],
            &["api.trusted_networks[0]", "CIDR"],
        ),
        ("pipeline:\n  max_stages: 0\n", &[], &["pipeline.max_stages", "1–1000"]),
        (
            "pipeline:\n  buckets: [1, 0.5]\n",
            &[],
            &["pipeline.buckets", "strictly increasing"],
        ),
        (
            "pipeline:\n  stream:\n    batch: 0\n",
            &[],
            &["pipeline.stream.batch", "1–10000"],
        ),
        (
            "storage:\n  alert_used_percent: 150\n",
            &[],
            &["storage.alert_used_percent", "1–100"],
        ),
        (
            "storage:\n  retention:\n    - {path: /tmp, days: 0}\n",
            &[],
            &["storage.retention[0].days", "1–36500"],
        ),
        (
            "websocket:\n  client_queue: 4\n",
            &[],
            &["websocket.client_queue", "16–65536"],
        ),
        (
            "websocket:\n  ping_interval: 0\n",
            &[],
            &["websocket.ping_interval", "0.05–3600"],
        ),
        (
            "",
            &[("GPU_POLL_INTERVAL_SECONDS", "0.9")],
            &["GPU_POLL_INTERVAL_SECONDS", "0.9", "1–60"],
        ),
        (
            "",
            &[("GPU_POLL_INTERVAL_SECONDS", "soon")],
            &["GPU_POLL_INTERVAL_SECONDS", "soon", "not a number"],
        ),
        (
            "",
            &[("GPU_STATS_HISTORY_MINUTES", "2000")],
            &["GPU_STATS_HISTORY_MINUTES", "2000", "1–1440"],
        ),
        (
            "",
            &[("GPU_STATS_HISTORY_MINUTES", "1.5")],
            &["GPU_STATS_HISTORY_MINUTES", "1.5", "whole number"],
        ),
    ];
    let mut wrong = Vec::new();
    for (yaml, env, fragments) in table {
        let err = check(yaml, env).expect_err(&format!("{yaml:?} {env:?} must be rejected"));
        for f in *fragments {
            if !err.contains(f) {
                wrong.push(format!("error for {yaml:?} {env:?} lacks {f:?}: {err}"));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn good_values_at_the_edges_are_accepted() {
    let c = check(
        "gpu:\n  poll_interval: 1\n  history_minutes: 1440\n",
        &[("GPU_POLL_INTERVAL_SECONDS", "60")],
    )
    .unwrap();
    assert_eq!(c.gpu.poll_interval.as_secs(), 60, "env overrides the file");
    assert_eq!(c.gpu.history_minutes, 1440);

    let c = check(
        "health:\n  max_concurrent_restarts: 100\n  services:\n    - name: vllm\n      kind: http\n      url: 'http://x/health'\n      method: POST\n      body: '{}'\n      headers: {Authorization: 'Bearer t'}\n      expect_status: [200, '3xx', 204]\n      expect_body: ok\n      failure_threshold: 100\n      success_threshold: 1\n      start_period: 24h\n      start_interval: 50ms\n      slow_after: 1ms\n      progress: {metrics_url: 'http://x/metrics', preset: vllm, stall_after: 1s}\n      depends_on: [redis]\n    - {name: redis, kind: redis, url: 'redis://x:6379'}\n    - {name: triton, kind: open_inference, url: 'http://x:8000', models: [resnet, bert], depends_on: [redis, vllm]}\n",
        &[],
    )
    .unwrap();
    let s = &c.health.services[0];
    assert_eq!((s.failure_threshold, s.start_period.as_secs()), (100, 86_400));
    let inferwatch::config::Check::Http(h) = &s.check else {
        panic!("an http check: {s:?}")
    };
    assert_eq!(
        h.expect_status.iter().map(|e| e.codes().unwrap()).collect::<Vec<_>>(),
        [(200, 200), (300, 399), (204, 204)]
    );
    let defaults = &c.health.services[1];
    assert_eq!(
        (defaults.failure_threshold, defaults.success_threshold),
        (3, 1),
        "the documented defaults"
    );
    assert!(defaults.start_period.is_zero());
}

#[test]
fn check_config_exit_codes() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("monitoring/inferwatch.yml");
    let (code, text) = check_config(&example);
    assert_eq!(code, 0, "the shipped example must be valid: {text}");
    assert!(text.contains("SUCCESS"));

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yml");
    std::fs::write(&bad, "gpu:\n  poll_interval: 0.2\n").unwrap();
    let (code, text) = check_config(&bad);
    assert_eq!(code, 1);
    assert!(text.contains("FAILED") && text.contains("gpu.poll_interval"), "{text}");

    let (code, text) = check_config(&dir.path().join("missing.yml"));
    assert_eq!(code, 1);
    assert!(text.contains("missing.yml"), "{text}");
}

#[test]
fn check_config_and_startup_refuse_the_same_files() {
    // Each is refused beyond the parser: by reading the file the config
    // names. check-config, startup and a reload run the one check
    // (inferwatch::check_config; tests/it/reload.rs has the reload side).
    let dir = tempfile::tempdir().unwrap();
    let web = dir.path().join("web.yml");
    for (yaml, says) in [
        (format!("web:\n  config_file: {}\n", web.display()), "web.yml"),
        (
            "health:\n  services:\n    - {name: a, kind: http, url: 'https://127.0.0.1:1/', tls: {ca_file: /nonexistent/ca.pem}}\n".to_string(),
            "health.services[0].tls.ca_file",
        ),
    ] {
        let cfg = dir.path().join("c.yml");
        std::fs::write(&cfg, &yaml).unwrap();
        let (code, text) = check_config(&cfg);
        assert_eq!(code, 1, "{yaml}: {text}");
        assert!(text.contains(says), "{text}");
        let stderr = refused_start(&[], &["--config".as_ref(), cfg.as_os_str()]);
        assert!(stderr.contains(says), "{stderr}");
    }
    // The web config file there and valid: both accept.
    std::fs::write(&web, "basic_auth_users: {}\n").unwrap();
    let cfg = dir.path().join("c.yml");
    std::fs::write(&cfg, format!("web:\n  config_file: {}\n", web.display())).unwrap();
    let (code, text) = check_config(&cfg);
    assert_eq!(code, 0, "{text}");
}

/// Starts the daemon with `env` and `args`, expects it to refuse (exit 1),
/// and returns its stderr.
fn refused_start(env: &[(&str, &str)], args: &[&std::ffi::OsStr]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_inferwatch"))
        .envs(env.iter().copied())
        .args(args)
        .arg("--web.listen-address=127.0.0.1:0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[test]
fn daemon_refuses_to_start_on_a_bad_env_value() {
    let stderr = refused_start(&[("GPU_STATS_HISTORY_MINUTES", "0")], &[]);
    assert!(
        stderr.contains("GPU_STATS_HISTORY_MINUTES") && stderr.contains("1–1440"),
        "{stderr}"
    );
}

#[test]
fn token_files_are_read_by_check_config_and_must_be_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let cfg = dir.path().join("c.yml");
    std::fs::write(&cfg, format!("api:\n  token_file: {}\n", token.display())).unwrap();
    let (code, text) = check_config(&cfg);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("api.token_file") && text.contains("0644") && text.contains("chmod 600"),
        "{text}"
    );

    // The daemon refuses to start on it too, naming the file and its mode.
    let stderr = refused_start(&[], &["--config".as_ref(), cfg.as_os_str()]);
    assert!(
        stderr.contains(&token.display().to_string()) && stderr.contains("0644"),
        "{stderr}"
    );

    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (code, text) = check_config(&cfg);
    assert_eq!(code, 0, "{text}");

    std::fs::remove_file(&token).unwrap();
    let (code, text) = check_config(&cfg);
    assert_eq!(code, 1, "a missing token file is an error: {text}");
    assert!(text.contains("api.token_file"), "{text}");
}

#[test]
fn config_errors_never_echo_a_password() {
    let dir = tempfile::tempdir().unwrap();
    for (yaml, key) in [
        (
            "queues:\n  redis_url: 'https://:hunter2@cache:6379/0'\n",
            "queues.redis_url",
        ),
        ("store:\n  url: 'mysql://app:hunter2@db/history'\n", "store.url"),
        (
            "health:\n  services:\n    - name: a\n      kind: redis\n      url: 'http://:hunter2@cache:6379'\n",
            "health.services[0].url",
        ),
    ] {
        let cfg = dir.path().join("c.yml");
        std::fs::write(&cfg, yaml).unwrap();
        let (code, text) = check_config(&cfg);
        assert_eq!(code, 1, "{text}");
        assert!(text.contains(key), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }
}
