//! The fleet bundle with real processes on 127.0.0.1: several daemons on
//! the fake NVML (the H100 profile, 8 GPUs each), a real Prometheus that
//! finds them through `file_sd`, evaluates `monitoring/recording_rules.yml`
//! and remote-writes to a real VictoriaMetrics (Debian's
//! `victoria-metrics`), whose Prometheus API must then answer for the raw
//! fleet series and for every recording rule, one series per instance.
//!
//! And two Alertmanagers clustered over gossip that email each alert group
//! once, also after one of them is killed.
//!
//! And the fleet at size: 50 nodes under one Prometheus.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::common::alerting::{fast_rules, shorten_routes, smtp_secret, state, test_alertmanager};
use crate::common::{
    eventually, gpus_state, repo, Alertmanager, Daemon, Driver, FakeGpus, Prometheus, Redis, SmtpSink, VictoriaMetrics,
};

const NODES: usize = 3;
const LIMIT: Duration = Duration::from_secs(120);

/// Every `record:` name of the recording rules.
fn recorded() -> Vec<String> {
    let text = std::fs::read_to_string(repo().join("monitoring/recording_rules.yml")).unwrap();
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
    let mut out = Vec::new();
    for g in doc["groups"].as_sequence().unwrap() {
        for r in g["rules"].as_sequence().unwrap() {
            out.push(r["record"].as_str().unwrap().to_string());
        }
    }
    out
}

/// The file_sd content: node i in cluster "a" (even) or "b" (odd).
fn targets(daemons: &[&Daemon]) -> String {
    let mut s = String::new();
    for (i, d) in daemons.iter().enumerate() {
        let cluster = if i % 2 == 0 { "a" } else { "b" };
        s += &format!(
            "- targets: ['127.0.0.1:{}']\n  labels: {{cluster: {cluster}}}\n",
            d.port
        );
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_remote_writes_fleet_and_recording_series_to_victoriametrics() {
    let fake = FakeGpus::with_profile(Driver::Current, &gpus_state(8), "h100-sxm-580");
    // The nodes share one Redis; each reports its depths.
    let redis = Redis::start().await;
    redis.lpush("dlq:detection_queue", &[crate::common::DLQ_ENTRY]).await;
    let config = format!(
        "gpu:\n  nvml_library: {}\n  poll_interval: 1s\nqueues:\n  redis_url: {}\n  poll_interval: 1s\n\
         health:\n  services:\n    - {{name: down, kind: http, url: \"http://127.0.0.1:9/health\", interval: 1s, timeout: 200ms}}\n",
        fake.lib_str(),
        redis.url()
    );
    let mut daemons = Vec::new();
    for _ in 0..NODES + 1 {
        daemons.push(Daemon::start(&config, &[]).await);
    }
    let vm = VictoriaMetrics::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        repo().join("monitoring/recording_rules.yml"),
        dir.path().join("recording_rules.yml"),
    )
    .unwrap();
    let first: Vec<&Daemon> = daemons.iter().take(NODES).collect();
    std::fs::write(dir.path().join("targets.yml"), targets(&first)).unwrap();
    let prom_config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n  external_labels: {{monitor: fleet-test}}\n\
         rule_files: [recording_rules.yml]\n\
         remote_write:\n  - url: {}\n    queue_config: {{batch_send_deadline: 1s}}\n\
         scrape_configs:\n  - job_name: inferwatch-fleet\n    sample_limit: 20000\n    label_limit: 16\n\
         \x20   file_sd_configs:\n      - files: [{}]\n        refresh_interval: 1s\n\
         \x20   relabel_configs:\n      - {{target_label: job, replacement: inferwatch}}\n",
        vm.write_url(),
        dir.path().join("targets.yml").display()
    );
    let prom = Prometheus::start_with_config(dir, &prom_config).await;

    // Every node is up, in Prometheus and through remote_write in VM.
    eventually("all nodes up in Prometheus", LIMIT, || async {
        let r = prom.query("count(up{job=\"inferwatch\"} == 1)").await;
        (r.first().map(|s| s["value"][1].clone()) == Some(NODES.to_string().into())).then_some(())
    })
    .await;
    eventually("8 GPUs per node in VictoriaMetrics", LIMIT, || async {
        let r = vm
            .query("count by (instance) (gpu_temperature_celsius{monitor=\"fleet-test\"})")
            .await;
        (r.len() == NODES && r.iter().all(|s| s["value"][1] == "8")).then_some(())
    })
    .await;
    // Every recording rule arrives: one series per instance for instance:*,
    // one per cluster (a and b) for cluster:*.
    for name in recorded() {
        let want = if name.starts_with("instance:") { NODES } else { 2 };
        let label = if name.starts_with("instance:") {
            "instance"
        } else {
            "cluster"
        };
        let got = eventually(&format!("{name} in VictoriaMetrics"), LIMIT, || async {
            let r = vm.query(&name).await;
            (r.len() == want).then_some(r)
        })
        .await;
        let keys: BTreeSet<String> = got
            .iter()
            .map(|s| s["metric"][label].as_str().unwrap_or("").to_string())
            .collect();
        assert_eq!(keys.len(), want, "{name}: one series per {label}: {got:?}");
    }
    // The values are the fleet's: the one service each node checks is down.
    let down = vm.query("sum(instance:service_down:count)").await;
    assert_eq!(down[0]["value"][1], NODES.to_string(), "{down:?}");
    let dlq = vm.query("sum(cluster:dlq_depth:sum)").await;
    assert_eq!(
        dlq[0]["value"][1],
        NODES.to_string(),
        "one DLQ job seen by each node: {dlq:?}"
    );

    // A node added to the file_sd file is scraped without a restart.
    let all: Vec<&Daemon> = daemons.iter().collect();
    std::fs::write(prom.dir.path().join("targets.yml"), targets(&all)).unwrap();
    eventually("the added node in VictoriaMetrics", LIMIT, || async {
        let r = vm.query("count(instance:gpu_temperature_celsius:max)").await;
        (r.first().map(|s| s["value"][1].clone()) == Some((NODES + 1).to_string().into())).then_some(())
    })
    .await;
}

/// Firing and resolved GpuTemperatureHigh emails per instance, by subject
/// (`[FIRING:1] GpuTemperatureHigh <instance>`).
fn mails(sink: &SmtpSink) -> BTreeMap<(String, String), usize> {
    let mut out = BTreeMap::new();
    for m in sink.messages() {
        let subject = m["subject"].as_str().unwrap_or("").to_string();
        let Some(rest) = subject.split_once("] GpuTemperatureHigh ") else {
            continue;
        };
        let status = if rest.0.starts_with("[FIRING") {
            "firing"
        } else {
            "resolved"
        };
        *out.entry((status.to_string(), rest.1.to_string())).or_default() += 1;
    }
    out
}

fn count(m: &BTreeMap<(String, String), usize>, status: &str, instance: &str) -> usize {
    m.get(&(status.to_string(), instance.to_string())).copied().unwrap_or(0)
}

/// Emails this Alertmanager sent (0 once it is gone).
async fn sent(am: &Alertmanager) -> f64 {
    let Ok(r) = reqwest::get(format!("http://127.0.0.1:{}/metrics", am.port)).await else {
        return 0.0;
    };
    let page = r.text().await.unwrap_or_default();
    page.lines()
        .filter(|l| l.starts_with("alertmanager_notifications_total{") && l.contains("integration=\"email\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Two Alertmanagers clustered over gossip on loopback, one Prometheus
/// sending every alert to both, a real SMTP server: a hot GPU on three
/// nodes is emailed once per alert group (the groups are per instance), and
/// resolved once. Then, with the Alertmanager that sent killed, the group's
/// next notification (a repeat after 20 s) and its resolution are still
/// sent exactly once, by the survivor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clustered_alertmanagers_email_each_group_once_even_with_one_killed() {
    // 2 s let a duplicate through once on this loaded 2-core machine: the
    // first peer's email and gossip took longer than the second peer's wait.
    const PEER_TIMEOUT_S: u64 = 5;
    let fake = FakeGpus::new(Driver::Current, &state(60));
    let config = format!(
        "gpu:\n  nvml_library: {}\n  poll_interval: 1s\nqueues:\n  enabled: false\n",
        fake.lib_str()
    );
    let mut daemons = Vec::new();
    for _ in 0..3 {
        daemons.push(Daemon::start(&config, &[]).await);
    }
    let instances: Vec<String> = daemons.iter().map(|d| format!("127.0.0.1:{}", d.port)).collect();

    let (sink, _secrets, password_file) = smtp_secret().await;
    let mut am: serde_yaml_ng::Value = serde_yaml_ng::from_str(&test_alertmanager(sink.port, &password_file)).unwrap();
    // Each peer flushes a group every group_interval, on a timer that
    // starts when the alert arrives (at the same time on both). A later
    // peer acts on what it saw at the flush, after its wait: with a group
    // interval shorter than that wait, its view is older than the first
    // peer's next notification, and it sends again (seen here with 1 s and
    // 3 s). So the interval stays above the peer timeout, as the defaults
    // (5 m and 15 s) do.
    shorten_routes(am.get_mut("route").unwrap(), "group_interval", "10s");
    shorten_routes(am.get_mut("route").unwrap(), "repeat_interval", "30s");
    let am_config = serde_yaml_ng::to_string(&am).unwrap();
    let (g1, g2) = (crate::common::free_port(), crate::common::free_port());
    let timeout = format!("{PEER_TIMEOUT_S}s");
    let mut ams = vec![
        Alertmanager::start_clustered(&am_config, g1, &[], &timeout).await,
        Alertmanager::start_clustered(&am_config, g2, &[g1], &timeout).await,
    ];
    eventually("a cluster of two", LIMIT, || async {
        let mut members = Vec::new();
        for a in &ams {
            members.push(a.metric("alertmanager_cluster_members").await);
        }
        (members == [2.0, 2.0]).then_some(())
    })
    .await;

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("alert_rules.yml"), fast_rules()).unwrap();
    let targets: Vec<String> = instances.iter().map(|i| format!("'{i}'")).collect();
    let prom_config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [alert_rules.yml]\n\
         alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: ['127.0.0.1:{}', '127.0.0.1:{}']\n\
         scrape_configs:\n  - job_name: inferwatch\n    static_configs:\n      - targets: [{}]\n",
        ams[0].port,
        ams[1].port,
        targets.join(", ")
    );
    let prom = Prometheus::start_with_config(dir, &prom_config).await;
    eventually("three cool nodes scraped", LIMIT, || async {
        let r = prom.query("count(gpu_temperature_celsius{gpu=\"1\"} == 60)").await;
        (r.first().map(|s| s["value"][1].clone()) == Some("3".into())).then_some(())
    })
    .await;
    // Long enough for a second peer to send what the first already sent
    // (it waits its position × the peer timeout, then reads the gossiped log).
    let duplicate_window = Duration::from_secs(2 * PEER_TIMEOUT_S);

    // 1. Both alive: one firing and one resolved email per group.
    fake.set(&state(90));
    eventually("a firing email per node", LIMIT, || async {
        let m = mails(&sink);
        instances.iter().all(|i| count(&m, "firing", i) >= 1).then_some(())
    })
    .await;
    tokio::time::sleep(duplicate_window).await;
    fake.set(&state(60));
    eventually("a resolved email per node", LIMIT, || async {
        let m = mails(&sink);
        instances.iter().all(|i| count(&m, "resolved", i) >= 1).then_some(())
    })
    .await;
    tokio::time::sleep(duplicate_window).await;
    let m = mails(&sink);
    let by_am = (sent(&ams[0]).await, sent(&ams[1]).await);
    for i in &instances {
        assert_eq!(
            (count(&m, "firing", i), count(&m, "resolved", i)),
            (1, 1),
            "{i}: {m:?} sent by each: {by_am:?}\n{}\n{}",
            ams[0].log(),
            ams[1].log()
        );
    }
    let total = sent(&ams[0]).await + sent(&ams[1]).await;
    assert_eq!(total, 6.0, "the two Alertmanagers sent 6 emails between them");

    // 2. The sender is killed after the next firing email: the repeat and
    // the resolution still go out once each, from the survivor.
    let start = [sent(&ams[0]).await, sent(&ams[1]).await];
    // Notification log entries a peer first learnt from the other (each is
    // counted once, however often gossip repeats it).
    let learnt = |a: usize| {
        let am = &ams[a];
        async move { am.metric("alertmanager_nflog_gossip_messages_propagated_total").await }
    };
    let heard = [learnt(0).await, learnt(1).await];
    fake.set(&state(90));
    eventually("the second firing email per node", LIMIT, || async {
        let m = mails(&sink);
        instances.iter().all(|i| count(&m, "firing", i) >= 2).then_some(())
    })
    .await;
    let now = [sent(&ams[0]).await, sent(&ams[1]).await];
    let dead = if now[0] - start[0] >= 3.0 { 0 } else { 1 };
    let survivor = 1 - dead;
    assert_eq!(
        now[dead] - start[dead],
        3.0,
        "one Alertmanager sent the 3 firing emails: {start:?} {now:?}"
    );
    // The survivor has the sender's three notification log entries before
    // the sender dies.
    eventually("the notification log gossiped", LIMIT, || async {
        (learnt(survivor).await - heard[survivor] >= 3.0).then_some(())
    })
    .await;
    tokio::time::sleep(duplicate_window).await;
    assert_eq!(
        sent(&ams[survivor]).await,
        start[survivor],
        "the survivor sent none of them\n{}\n{}",
        ams[0].log(),
        ams[1].log()
    );
    ams[dead].kill(crate::common::SIGKILL);
    let survivor_before = sent(&ams[survivor]).await;
    eventually("the repeat (30 s) from the survivor", LIMIT, || async {
        let m = mails(&sink);
        instances.iter().all(|i| count(&m, "firing", i) >= 3).then_some(())
    })
    .await;
    fake.set(&state(60));
    eventually("the resolved emails from the survivor", LIMIT, || async {
        let m = mails(&sink);
        instances.iter().all(|i| count(&m, "resolved", i) >= 2).then_some(())
    })
    .await;
    tokio::time::sleep(duplicate_window).await;
    let m = mails(&sink);
    for i in &instances {
        assert_eq!(
            (count(&m, "firing", i), count(&m, "resolved", i)),
            (3, 2),
            "{i}: {m:?}\n{}\n{}",
            ams[survivor].log(),
            ams[dead].log()
        );
    }
    assert_eq!(
        sent(&ams[survivor]).await - survivor_before,
        6.0,
        "the survivor sent each group's repeat and resolution"
    );
}

/// The fleet at size: 50 daemons, each on its own port with 8 fake H100s
/// (the measured profile, so NVML costs what the real driver costs), one
/// real Prometheus finding them through file_sd and scraping every 2 s for
/// 60 s with the shipped recording and alert rules. Every node is up with
/// no missed scrape, every recording rule has one series per node, every
/// Fleet dashboard query answers with its variables resolved, and a 51st
/// node added to the file is scraped without a restart. CPU and memory of
/// the daemons and Prometheus are printed as a figure (README, Fleet).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_nodes_under_one_prometheus() {
    const FLEET: usize = 50;
    const WINDOW_S: u64 = 60;
    const SCRAPE_S: u64 = 2;
    // One XID on GPU 1, so an alert with node labels fires everywhere.
    let fake = FakeGpus::with_profile(Driver::Current, &format!("{}1.xid 79\n", gpus_state(8)), "h100-sxm-580");
    let redis = Redis::start().await;
    let config = format!(
        "gpu:\n  nvml_library: {}\n  poll_interval: 2s\nqueues:\n  redis_url: {}\n  poll_interval: 5s\n\
         pipeline:\n  stream:\n    enabled: false\n",
        fake.lib_str(),
        redis.url()
    );
    // Start them all at once, then wait for each.
    let daemons: Vec<Daemon> = (0..=FLEET).map(|_| Daemon::spawn(&config, &[], &[], None)).collect();
    for d in &daemons {
        crate::common::wait_for_2xx("a fleet daemon to be ready", &d.url("/-/ready")).await;
    }
    let dir = tempfile::tempdir().unwrap();
    for f in ["alert_rules.yml", "monitoring/recording_rules.yml"] {
        let name = std::path::Path::new(f).file_name().unwrap();
        std::fs::copy(repo().join(f), dir.path().join(name)).unwrap();
    }
    let fleet: Vec<&Daemon> = daemons.iter().take(FLEET).collect();
    let targets_file = dir.path().join("targets.yml");
    std::fs::write(&targets_file, targets(&fleet)).unwrap();
    let prom_config = format!(
        "global:\n  scrape_interval: {SCRAPE_S}s\n  scrape_timeout: {SCRAPE_S}s\n  evaluation_interval: {SCRAPE_S}s\n\
         rule_files: [alert_rules.yml, recording_rules.yml]\n\
         scrape_configs:\n  - job_name: inferwatch-fleet\n    sample_limit: 20000\n    label_limit: 16\n\
         \x20   file_sd_configs:\n      - files: [{}]\n        refresh_interval: 2s\n\
         \x20   relabel_configs:\n      - {{target_label: job, replacement: inferwatch}}\n",
        targets_file.display()
    );
    let prom = Prometheus::start_with_config(dir, &prom_config).await;
    let started = std::time::Instant::now();
    let cpu_before: Vec<f64> = daemons
        .iter()
        .map(|d| crate::common::cpu_and_rss(d.proc.pid()).0)
        .collect();
    let prom_cpu_before = crate::common::cpu_and_rss(prom.pid()).0;

    eventually("all 50 nodes up", LIMIT, || async {
        let r = prom.query("count(up{job=\"inferwatch\"} == 1)").await;
        (r.first().map(|s| s["value"][1].clone()) == Some(FLEET.to_string().into())).then_some(())
    })
    .await;
    // A full window of scrapes, then no target may have missed more than one.
    let expected = WINDOW_S / SCRAPE_S;
    let window = eventually(
        "a full window of scrapes",
        Duration::from_secs(WINDOW_S + 60),
        || async {
            let r = prom
                .query(&format!("count_over_time(up{{job=\"inferwatch\"}}[{WINDOW_S}s])"))
                .await;
            let full = r.len() == FLEET
                && r.iter()
                    .all(|s| s["value"][1].as_str().unwrap().parse::<u64>().unwrap() >= expected - 1);
            full.then_some(r)
        },
    )
    .await;
    let elapsed = started.elapsed().as_secs_f64();
    for s in &window {
        let n: u64 = s["value"][1].as_str().unwrap().parse().unwrap();
        assert!(
            n.abs_diff(expected) <= 1,
            "{}: {n} scrapes in {WINDOW_S}s, expected {expected}",
            s["metric"]["instance"]
        );
    }
    let up = prom.query("count(up{job=\"inferwatch\"} == 1)").await;
    assert_eq!(up[0]["value"][1], FLEET.to_string(), "every node still up");

    // Every recording rule: one series per node, or one per cluster.
    for name in recorded() {
        let (want, label) = if name.starts_with("instance:") {
            (FLEET, "instance")
        } else {
            (2, "cluster")
        };
        let r = prom.query(&name).await;
        let keys: BTreeSet<&str> = r.iter().map(|s| s["metric"][label].as_str().unwrap_or("")).collect();
        assert_eq!((r.len(), keys.len()), (want, want), "{name}: one series per {label}");
    }
    // Every Fleet dashboard query answers, its variables resolved.
    let (file, d) = crate::common::dashboards::dashboards()
        .into_iter()
        .find(|(_, d)| d["uid"] == "inferwatch-fleet")
        .expect("the Fleet dashboard");
    let vars = crate::common::dashboards::resolve_variables(&prom, &file, &d).await;
    assert_eq!(vars["cluster"], "(a|b)");
    assert_eq!(vars["instance"].matches('|').count() + 1, FLEET);
    assert!(crate::common::dashboards::every_query_returns_data(&prom, &file, &d, &vars).await >= 10);

    // The figure: CPU over the window and memory, daemons and Prometheus.
    let mut daemon_cpu = 0.0;
    let mut daemon_rss = Vec::new();
    for (d, before) in daemons.iter().zip(&cpu_before) {
        let (cpu, rss) = crate::common::cpu_and_rss(d.proc.pid());
        daemon_cpu += cpu - before;
        daemon_rss.push(rss);
    }
    let (prom_cpu, prom_rss) = crate::common::cpu_and_rss(prom.pid());
    daemon_rss.sort();
    let mib = |b: u64| b as f64 / 1048576.0;
    eprintln!(
        "fleet figure: {} daemons x 8 GPUs over {elapsed:.0} s: daemons {:.1} % of a core in all ({:.2} % each), \
         RSS median {:.1} MiB (max {:.1}); Prometheus {:.1} % of a core, RSS {:.0} MiB",
        FLEET + 1,
        daemon_cpu / elapsed * 100.0,
        daemon_cpu / elapsed * 100.0 / (FLEET + 1) as f64,
        mib(daemon_rss[daemon_rss.len() / 2]),
        mib(*daemon_rss.last().unwrap()),
        (prom_cpu - prom_cpu_before) / elapsed * 100.0,
        mib(prom_rss)
    );

    // A 51st node added to the file is scraped without a restart.
    let all: Vec<&Daemon> = daemons.iter().collect();
    std::fs::write(&targets_file, targets(&all)).unwrap();
    eventually("the 51st node", LIMIT, || async {
        let r = prom.query("count(instance:gpu_devices:sum)").await;
        (r.first().map(|s| s["value"][1].clone()) == Some((FLEET + 1).to_string().into())).then_some(())
    })
    .await;
}
