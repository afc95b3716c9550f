//! Shared by the alerting tests: the shipped rules and Alertmanager config
//! with only their waits shortened, and the GPU state that heats GPU 1.

use serde_yaml_ng::Value;

use super::{gpu_lines, repo, SmtpSink};

pub const USER: &str = "inferwatch@example.com";
pub const PASSWORD: &str = "s3cret-from-a-file";

/// GPU 1 does not report its slowdown threshold, so the fixed 85 °C rule
/// (GpuTemperatureHigh) is the one that watches it.
pub fn state(temp1: u32) -> String {
    format!(
        "driver_version 550.54.15\ncount 2\n{}{}1.temp_slowdown 0\n",
        gpu_lines(0, 40, 60),
        gpu_lines(1, 41, temp1)
    )
}

/// The group whose alerts follow the host's real disk, which the test does
/// not control: a build machine near 80 % full fires DiskUsageHigh.
pub const HOST_GROUP: &str = "inferwatch-storage";

/// alert_rules.yml with every `for:` cut to 1 s and the host-disk group left
/// out; every other rule is as shipped.
pub fn fast_rules() -> String {
    let text = std::fs::read_to_string(repo().join("alert_rules.yml")).unwrap();
    let mut rules: Value = serde_yaml_ng::from_str(&text).unwrap();
    let groups = rules["groups"].as_sequence_mut().unwrap();
    let before = groups.len();
    groups.retain(|g| g["name"].as_str() != Some(HOST_GROUP));
    assert_eq!(groups.len(), before - 1, "alert_rules.yml has a {HOST_GROUP} group");
    let mut shortened = 0;
    for group in groups.iter_mut() {
        for rule in group["rules"].as_sequence_mut().unwrap() {
            if let Some(m) = rule.as_mapping_mut().filter(|m| m.contains_key("for")) {
                m.insert("for".into(), "1s".into());
                shortened += 1;
            }
        }
    }
    assert!(shortened > 10, "expected the rules to have for: durations");
    serde_yaml_ng::to_string(&rules).unwrap()
}

/// A real Prometheus scraping the daemon on `port` every second and
/// evaluating the shipped rules with their waits cut ([`fast_rules`]).
pub async fn fast_prometheus(port: u16) -> super::Prometheus {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("alert_rules.yml"), fast_rules()).unwrap();
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [alert_rules.yml]\n\
         scrape_configs:\n  - job_name: inferwatch\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
    );
    super::Prometheus::start_with_config(dir, &config).await
}

/// Waits (up to 60 s) for `alertname` to fire in `prom`; its series.
pub async fn firing(prom: &super::Prometheus, alertname: &str) -> serde_json::Value {
    let alert = format!("ALERTS{{alertname=\"{alertname}\",alertstate=\"firing\"}}");
    super::eventually(
        &format!("{alertname} to fire"),
        std::time::Duration::from_secs(60),
        || {
            let alert = &alert;
            async move { prom.query(alert).await.into_iter().next() }
        },
    )
    .await
}

/// Sets `key` on every route of the tree that has it, and on the root.
pub fn shorten_routes(route: &mut Value, key: &str, to: &str) {
    let Value::Mapping(m) = route else { return };
    if m.contains_key(key) || m.contains_key("receiver") {
        m.insert(key.into(), to.into());
    }
    if let Some(Value::Sequence(children)) = m.get_mut("routes") {
        for c in children {
            shorten_routes(c, key, to);
        }
    }
}

/// alertmanager.yml pointed at the sink, with 1 s grouping waits.
pub fn test_alertmanager(smtp_port: u16, password_file: &std::path::Path) -> String {
    let text = std::fs::read_to_string(repo().join("alertmanager.yml")).unwrap();
    let mut am: Value = serde_yaml_ng::from_str(&text).unwrap();
    let global = am.get_mut("global").unwrap();
    assert_eq!(global["smtp_auth_username"], Value::from(USER));
    assert!(global.get("smtp_auth_password").is_none(), "no password in the file");
    global["smtp_smarthost"] = format!("127.0.0.1:{smtp_port}").into();
    global["smtp_require_tls"] = false.into();
    global["smtp_auth_password_file"] = password_file.display().to_string().into();
    am["templates"] = Value::Sequence(vec![repo()
        .join("monitoring/alertmanager/templates/*.tmpl")
        .display()
        .to_string()
        .into()]);
    let route = am.get_mut("route").unwrap();
    shorten_routes(route, "group_wait", "1s");
    shorten_routes(route, "group_interval", "1s");
    serde_yaml_ng::to_string(&am).unwrap()
}

/// The SMTP server that needs USER/PASSWORD, and the password file for
/// Alertmanager's `smtp_auth_password_file` (in the returned folder).
pub async fn smtp_secret() -> (SmtpSink, tempfile::TempDir, std::path::PathBuf) {
    let sink = SmtpSink::start(USER, PASSWORD).await;
    let secrets = tempfile::tempdir().unwrap();
    let password_file = secrets.path().join("smtp_password");
    // Alertmanager 0.25 sends the file's bytes as they are, so the file
    // has no trailing newline (the README says to write it with printf).
    std::fs::write(&password_file, PASSWORD).unwrap();
    (sink, secrets, password_file)
}
