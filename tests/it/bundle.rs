//! The provisioning bundle checked by the real tools: promtool (config,
//! rules, rule unit tests), amtool (config, routes, template), Debian's
//! docker-compose (`config`), plus the conventions the tools do not check:
//! rule naming and annotations, a near miss for every alert, runbook
//! sections, Alertmanager timings and inhibition, Grafana provisioning.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::common::{repo, run_tool};
use serde_yaml_ng::Value;

fn yaml(path: &str) -> Value {
    let text = std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

/// Every alerting rule as (name, severity, rule).
fn rules() -> Vec<(String, String, Value)> {
    let doc = yaml("alert_rules.yml");
    let mut out = Vec::new();
    for g in doc["groups"].as_sequence().unwrap() {
        for r in g["rules"].as_sequence().unwrap() {
            out.push((
                str_of(r, "alert").to_string(),
                str_of(&r["labels"], "severity").to_string(),
                r.clone(),
            ));
        }
    }
    out
}

fn test_files() -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(repo().join("monitoring/tests"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yml"))
        .map(|p| p.strip_prefix(repo()).unwrap().display().to_string())
        .collect();
    files.sort();
    assert!(!files.is_empty());
    files
}

#[test]
fn promtool_checks_config_rules_and_unit_tests() {
    let (ok, out) = run_tool("promtool", &["check", "config", "monitoring/prometheus.yml"]);
    assert!(ok, "{out}");
    assert!(!out.contains("WARNING"), "promtool warned:\n{out}");
    let (ok, out) = run_tool(
        "promtool",
        &[
            "check",
            "rules",
            "alert_rules.yml",
            "monitoring/recording_rules.yml",
            "monitoring/inference_rules.yml",
        ],
    );
    assert!(ok, "{out}");
    let mut args = vec!["test", "rules"];
    let files = test_files();
    args.extend(files.iter().map(String::as_str));
    let (ok, out) = run_tool("promtool", &args);
    assert!(ok, "promtool test rules:\n{out}");
    assert_eq!(out.matches("SUCCESS").count(), files.len(), "{out}");
}

#[test]
fn prometheus_config_has_the_expected_jobs() {
    let p = yaml("monitoring/prometheus.yml");
    assert_eq!(p["global"]["scrape_interval"], Value::from("15s"));
    let jobs: BTreeMap<&str, &Value> = p["scrape_configs"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|j| (str_of(j, "job_name"), j))
        .collect();
    let targets = |job: &str| serde_yaml_ng::to_string(&jobs[job]["static_configs"]).unwrap();
    assert!(targets("inferwatch").contains(":8790"));
    assert!(targets("node-exporter").contains(":9100"));
    assert!(targets("prometheus").contains(":9090"));
    let fleet = serde_yaml_ng::to_string(&jobs["inferwatch-fleet"]["file_sd_configs"]).unwrap();
    assert!(fleet.contains("targets/*.yml"), "{fleet}");
    assert_eq!(p["rule_files"][0], Value::from("../alert_rules.yml"));
    assert_eq!(p["rule_files"][1], Value::from("recording_rules.yml"));
    assert_eq!(p["rule_files"][2], Value::from("inference_rules.yml"));
    // The inference servers, found through each daemon's HTTP SD.
    let sd = serde_yaml_ng::to_string(&jobs["inference"]["http_sd_configs"]).unwrap();
    assert!(sd.contains("/api/sd/inference"), "{sd}");
    let alerting = serde_yaml_ng::to_string(&p["alerting"]).unwrap();
    assert!(
        alerting.contains("alertmanager:9093") && alerting.contains("alertmanager-2:9093"),
        "{alerting}"
    );
    // One misbehaving node cannot flood Prometheus.
    for job in ["inferwatch", "inferwatch-fleet", "inference"] {
        assert_eq!(jobs[job]["sample_limit"], Value::from(20000), "{job}");
        assert_eq!(jobs[job]["label_limit"], Value::from(16), "{job}");
    }
    // The long-term storage example is there, commented out.
    let text = std::fs::read_to_string(repo().join("monitoring/prometheus.yml")).unwrap();
    assert!(text.contains("# remote_write:") && text.contains("/api/v1/write"));
    // The fleet file is valid file_sd content (a list of target groups).
    assert!(yaml("monitoring/targets/fleet.yml").is_sequence());
}

#[test]
fn rules_follow_the_mixin_conventions() {
    let rules = rules();
    assert!(rules.len() >= 16, "{} rules", rules.len());
    let runbooks = std::fs::read_to_string(repo().join("docs/runbooks.md")).unwrap();
    let anchors: BTreeSet<String> = runbooks
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .map(|h| h.trim().to_lowercase())
        .collect();
    for (name, severity, r) in &rules {
        assert!(
            name.chars().next().unwrap().is_ascii_uppercase() && name.chars().all(|c| c.is_ascii_alphanumeric()),
            "{name} is not CamelCase"
        );
        assert!(
            ["critical", "warning", "info"].contains(&severity.as_str()),
            "{name}: {severity}"
        );
        let a = &r["annotations"];
        let summary = str_of(a, "summary");
        assert!(
            !summary.is_empty() && !summary.contains("{{"),
            "{name}: summary must be static"
        );
        assert!(
            str_of(a, "description").contains("{{"),
            "{name}: description must be templated"
        );
        let url = str_of(a, "runbook_url");
        let anchor = url
            .split_once("docs/runbooks.md#")
            .unwrap_or_else(|| panic!("{name}: runbook_url {url}"))
            .1;
        assert_eq!(anchor, name.to_lowercase(), "{name}: the anchor is the alert's name");
        assert!(anchors.contains(anchor), "docs/runbooks.md has no section `## {name}`");
    }
    // The design's rules and the extra ones, by name and severity.
    let have: BTreeSet<(String, String)> = rules.iter().map(|(n, s, _)| (n.clone(), s.clone())).collect();
    for (name, severity) in [
        ("GpuUtilizationHigh", "warning"),
        ("GpuTemperatureHigh", "warning"),
        ("PipelineStageErrorRateHigh", "warning"),
        ("HttpErrorRateHigh", "warning"),
        ("ServiceDown", "critical"),
        ("PipelineNoCompletedJobs", "warning"),
        ("QueueDepthHigh", "warning"),
        ("PipelineJobsSlow", "warning"),
        ("DlqNotEmpty", "warning"),
        ("DiskUsageHigh", "critical"),
        ("ServiceRestartFailed", "warning"),
        ("ServiceMaxRetriesExceeded", "critical"),
        ("InferwatchDown", "critical"),
        ("InferwatchAbsent", "critical"),
        ("InferwatchCollectorFailing", "warning"),
        ("InferwatchCollectorStale", "warning"),
        ("GpuMissing", "critical"),
        ("GpuXidErrors", "warning"),
        ("GpuEccUncorrectedErrors", "critical"),
        ("GpuThermalSlowdown", "warning"),
        ("GpuPowerBrake", "critical"),
        ("GpuNearSlowdownTemperature", "warning"),
        ("GpuRemappedRowsPending", "warning"),
        ("GpuRemappedRowsFailed", "critical"),
        ("GpuPcieLinkDegraded", "warning"),
        ("GpuLowTensorUse", "info"),
        ("DlqGrowing", "warning"),
        ("WebSocketErrorsHigh", "warning"),
        ("Watchdog", "info"),
    ] {
        assert!(
            have.contains(&(name.into(), severity.into())),
            "missing {name} ({severity})"
        );
    }
}

#[test]
fn every_alert_has_a_firing_case_and_a_near_miss() {
    let mut fires: BTreeSet<String> = BTreeSet::new();
    let mut misses: BTreeSet<String> = BTreeSet::new();
    for f in test_files() {
        let doc = yaml(&f);
        for t in doc["tests"].as_sequence().unwrap() {
            for case in t["alert_rule_test"].as_sequence().into_iter().flatten() {
                let name = str_of(case, "alertname").to_string();
                let alerts = case["exp_alerts"].as_sequence().cloned().unwrap_or_default();
                if alerts.is_empty() {
                    misses.insert(name);
                } else {
                    for a in &alerts {
                        // Expected annotations are given in full.
                        for key in ["summary", "description", "runbook_url"] {
                            assert!(
                                a["exp_annotations"].get(key).is_some(),
                                "{f}: {name} case without {key}"
                            );
                        }
                        assert!(
                            a["exp_labels"].get("severity").is_some(),
                            "{f}: {name} without severity"
                        );
                    }
                    fires.insert(name);
                }
            }
        }
    }
    for (name, _, _) in rules() {
        assert!(fires.contains(&name), "{name} has no firing case in monitoring/tests");
        // Watchdog has no condition: it must fire always, so no near miss.
        if name != "Watchdog" {
            assert!(
                misses.contains(&name),
                "{name} has no near-miss case in monitoring/tests"
            );
        }
    }
}

#[test]
fn amtool_checks_config_and_routes_each_severity() {
    let (ok, out) = run_tool("amtool", &["check-config", "alertmanager.yml"]);
    assert!(ok, "{out}");
    for (labels, receiver) in [
        (&["alertname=GpuMissing", "severity=critical"][..], "email-critical"),
        (
            &["alertname=GpuTemperatureHigh", "severity=warning", "instance=a:8790"][..],
            "email-warning",
        ),
        (&["alertname=SomethingNew", "severity=info"][..], "null"),
        (&["alertname=Watchdog", "severity=info"][..], "watchdog"),
        (&["alertname=Unlabelled"][..], "email-warning"),
    ] {
        let mut args = vec!["config", "routes", "test", "--config.file=alertmanager.yml"];
        args.extend(labels);
        let (ok, out) = run_tool("amtool", &args);
        assert!(ok, "{labels:?}: {out}");
        let got = out.lines().find(|l| !l.starts_with("Warning:")).unwrap_or("").trim();
        assert_eq!(got, receiver, "{labels:?} routed to {out}");
        // --verify.receivers makes amtool itself fail on a wrong receiver.
        let verify = format!("--verify.receivers={receiver}");
        args.push(&verify);
        assert!(run_tool("amtool", &args).0);
    }
}

fn seconds(d: &str) -> u64 {
    let (num, unit) = d.split_at(d.find(|c: char| !c.is_ascii_digit()).unwrap());
    let n: u64 = num.parse().unwrap();
    n * match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => panic!("unit in {d}"),
    }
}

#[test]
fn alertmanager_timings_inhibition_and_email() {
    let am = yaml("alertmanager.yml");
    let g = &am["global"];
    assert!(!str_of(g, "smtp_auth_password_file").is_empty());
    assert!(g.get("smtp_auth_password").is_none(), "the password lives in a file");
    let root = &am["route"];
    let group_by: Vec<&str> = root["group_by"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(group_by, ["alertname", "instance", "service"]);
    // Each route inherits what it does not set.
    let mut by_receiver = BTreeMap::new();
    for r in std::iter::once(root).chain(root["routes"].as_sequence().unwrap()) {
        let get = |k: &str| {
            r.get(k)
                .or_else(|| root.get(k))
                .and_then(Value::as_str)
                .unwrap()
                .to_string()
        };
        let (gi, ri) = (seconds(&get("group_interval")), seconds(&get("repeat_interval")));
        assert_eq!(
            ri % gi,
            0,
            "repeat_interval {ri}s is not a multiple of group_interval {gi}s"
        );
        by_receiver.insert(str_of(r, "receiver").to_string(), (get("group_wait"), ri));
    }
    assert_eq!(by_receiver["email-critical"], ("0s".to_string(), 3600));
    assert_eq!(by_receiver["email-warning"].1, 4 * 3600);
    assert!(seconds(&by_receiver["email-warning"].0) > 0, "warnings are grouped");

    let receivers = am["receivers"].as_sequence().unwrap();
    for r in receivers {
        for e in r["email_configs"].as_sequence().into_iter().flatten() {
            assert_eq!(e["send_resolved"], Value::from(true), "{}", str_of(r, "name"));
        }
    }
    assert!(
        receivers
            .iter()
            .any(|r| str_of(r, "name") == "null" && r.get("email_configs").is_none()),
        "info goes to a null receiver"
    );
    let inhibit = am["inhibit_rules"].as_sequence().unwrap();
    let crit = inhibit
        .iter()
        .find(|r| {
            serde_yaml_ng::to_string(&r["source_matchers"])
                .unwrap()
                .contains("severity=\"critical\"")
        })
        .expect("critical inhibits");
    let target = serde_yaml_ng::to_string(&crit["target_matchers"]).unwrap();
    assert!(target.contains("warning") && target.contains("info"), "{target}");
    for r in inhibit {
        assert!(
            !r["equal"].as_sequence().unwrap().is_empty(),
            "an empty equal inhibits everything"
        );
    }
}

#[test]
fn amtool_renders_the_email_template() {
    let render = |t: &str| {
        let text = format!("{{{{ template \"inferwatch.email.{t}\" . }}}}");
        let (ok, out) = run_tool(
            "amtool",
            &[
                "template",
                "render",
                "--template.glob=monitoring/alertmanager/templates/*.tmpl",
                "--template.data=monitoring/tests/email_data.json",
                &format!("--template.text={text}"),
            ],
        );
        assert!(ok, "{t}: {out}");
        out
    };
    assert_eq!(
        render("subject").trim(),
        "[FIRING:1] GpuTemperatureHigh gpu-node-01:8790"
    );
    let text = render("text");
    assert!(text.contains("1 firing:") && text.contains("1 resolved:"), "{text}");
    assert!(text.contains("GPU 1 (GPU-00000001-1111-2222-3333-444444444444) on gpu-node-01:8790 is at 90 °C"));
    assert!(text.contains("Resolved: 2026-11-21 09:30:00 UTC"), "{text}");
    assert!(text
        .contains("Runbook:  https://github.com/inferwatch/inferwatch/blob/main/docs/runbooks.md#gputemperaturehigh"));
    let html = render("html");
    assert!(html.contains("<a href=\"https://github.com/inferwatch/inferwatch/blob/main/docs/runbooks.md#gputemperaturehigh\">Runbook</a>"));
}

#[test]
fn compose_file_validates_with_docker_compose() {
    let (ok, out) = run_tool("docker-compose", &["-f", "docker-compose-monitoring.yml", "config"]);
    assert!(ok, "docker-compose config:\n{out}");
    let c: Value = serde_yaml_ng::from_str(&out).unwrap();
    let services = &c["services"];
    for s in ["inferwatch", "prometheus", "alertmanager", "grafana", "node-exporter"] {
        let svc = &services[s];
        assert!(svc.is_mapping(), "service {s} missing");
        assert!(svc.get("healthcheck").is_some(), "{s} has no healthcheck");
    }
    let iw = &services["inferwatch"];
    assert!(serde_yaml_ng::to_string(&iw["build"]).unwrap().contains("Dockerfile"));
    let devices = serde_yaml_ng::to_string(&iw["deploy"]["resources"]["reservations"]["devices"]).unwrap();
    assert!(devices.contains("nvidia") && devices.contains("gpu"), "{devices}");
    let grafana = serde_yaml_ng::to_string(&services["grafana"]).unwrap();
    assert!(grafana.contains("GF_SECURITY_ADMIN_PASSWORD__FILE"), "{grafana}");
    assert!(
        !grafana.to_lowercase().contains("admin_password: admin"),
        "no admin/admin"
    );
    assert!(c["volumes"].as_mapping().is_some_and(|v| v.len() >= 3), "named volumes");
    // The Dockerfile is multi-stage and drops root.
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    assert!(dockerfile.matches("\nFROM ").count() + usize::from(dockerfile.starts_with("FROM ")) >= 2);
    let user = dockerfile
        .lines()
        .rev()
        .find(|l| l.starts_with("USER "))
        .expect("a USER line");
    assert!(!user.contains("root") && user.trim() != "USER 0", "{user}");
}

#[test]
fn the_ha_profile_clusters_two_alertmanagers() {
    let (ok, out) = run_tool(
        "docker-compose",
        &["-f", "docker-compose-monitoring.yml", "--profile", "ha", "config"],
    );
    assert!(ok, "docker-compose --profile ha config:\n{out}");
    let c: Value = serde_yaml_ng::from_str(&out).unwrap();
    let args = |s: &str| serde_yaml_ng::to_string(&c["services"][s]["command"]).unwrap();
    assert!(args("alertmanager").contains("--cluster.listen-address=0.0.0.0:9094"));
    let second = args("alertmanager-2");
    assert!(second.contains("--cluster.peer=alertmanager:9094"), "{second}");
    assert!(second.contains("--cluster.listen-address"), "{second}");
    // Only the ha profile starts the second one.
    assert_eq!(c["services"]["alertmanager-2"]["profiles"][0], Value::from("ha"));
}

#[test]
fn grafana_provisioning_points_at_the_dashboards() {
    let ds = yaml("monitoring/grafana/provisioning/datasources/prometheus.yml");
    let d = &ds["datasources"][0];
    assert_eq!(d["type"], Value::from("prometheus"));
    assert_eq!(d["uid"], Value::from("inferwatch-prometheus"));
    let prov = yaml("monitoring/grafana/provisioning/dashboards/inferwatch.yml");
    let p = &prov["providers"][0];
    assert_eq!(p["type"], Value::from("file"));
    let path = str_of(&p["options"], "path");
    // The compose file mounts grafana-dashboards/ at this path.
    let compose = std::fs::read_to_string(repo().join("docker-compose-monitoring.yml")).unwrap();
    assert!(
        compose.contains(&format!("./grafana-dashboards:{path}")),
        "{path} is not mounted"
    );
    assert!(Path::new(&repo().join("grafana-dashboards")).is_dir());
}
