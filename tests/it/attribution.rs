//! Who holds the GPU: the fake NVML reports real processes (in real Docker
//! containers, in a real cgroup named like a systemd unit, under a pid file,
//! with a command line) as compute processes, and `/metrics` names their
//! container, compose labels, unit and matched service.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use crate::common::alerting::{fast_prometheus, firing};
use crate::common::docker::{docker_socket, Container};
use crate::common::{eventually, gpus_state, sample_value, Daemon, Driver, FakeGpus};

const GIB: u64 = 1 << 30;

/// Every sample of `name` as (labels, value).
fn samples(page: &str, name: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    page.lines()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix('{'))
        .map(|rest| {
            let (labels, value) = rest.rsplit_once("} ").unwrap();
            let mut map = BTreeMap::new();
            for pair in labels.split("\",") {
                let (k, v) = pair.split_once("=\"").unwrap();
                map.insert(k.to_string(), v.trim_end_matches('"').to_string());
            }
            (map, value.trim().parse().unwrap())
        })
        .collect()
}

/// The labels and value of `name`'s series for `pid`.
fn process(page: &str, name: &str, pid: u32) -> Option<(BTreeMap<String, String>, f64)> {
    samples(page, name)
        .into_iter()
        .find(|(l, _)| l["pid"] == pid.to_string())
}

fn config(fake: &FakeGpus, extra: &str) -> String {
    format!(
        "gpu:\n  nvml_library: {}\n  poll_interval: 1s\n  per_process: true\nqueues:\n  enabled: false\n{extra}",
        fake.lib_str()
    )
}

/// Waits (up to 30 s) until `/metrics` lists `pid`'s GPU memory; the page.
async fn listed(d: &Daemon, pid: u32) -> String {
    eventually(
        &format!("process {pid} on /metrics"),
        Duration::from_secs(30),
        || async move {
            let page = d.get_text("/metrics").await;
            process(&page, "gpu_process_memory_used_bytes", pid).map(|_| page)
        },
    )
    .await
}

/// GPU rounds done so far: each reads the one GPU's compute processes once.
async fn rounds(d: &Daemon) -> f64 {
    sample_value(
        &d.get_text("/metrics").await,
        "inferwatch_nvml_calls_total{call=\"compute_running_processes\"}",
    )
    .unwrap_or(0.0)
}

/// Waits for `n` more GPU rounds.
async fn more_rounds(d: &Daemon, n: f64) {
    let start = rounds(d).await;
    eventually("more GPU rounds", Duration::from_secs(30), || async move {
        (rounds(d).await >= start + n).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_are_named_with_their_compose_labels_and_the_matched_service() {
    let tag = std::process::id();
    let detector = Container::sleeping(
        &format!("iw-attr-detector-{tag}"),
        &[
            ("com.docker.compose.service", "detector"),
            ("com.docker.compose.project", "iwtest"),
        ],
    );
    let plain = Container::sleeping(&format!("iw-attr-plain-{tag}"), &[]);
    let (detector_pid, plain_pid) = (detector.pid, plain.pid);
    let procs = move |with_plain: bool| {
        let mut p = format!("0.procs {detector_pid}:{}:detector", GIB);
        if with_plain {
            p += &format!(";{plain_pid}:{}:sleep", GIB / 2);
        }
        format!("{}{p}\n", gpus_state(1))
    };
    let fake = FakeGpus::new(Driver::Current, &procs(true));
    let d = Daemon::start(
        &config(
            &fake,
            &format!(
                "attribution:\n  docker_socket: {}\nhealth:\n  services:\n    - {{name: detector, kind: http, url: \"http://127.0.0.1:9/health\", interval: 1h, match: {{compose_service: detector}}}}\n",
                docker_socket().display()
            ),
        ),
        &[],
    )
    .await;
    let page = listed(&d, plain.pid).await;
    let (l, bytes) = process(&page, "gpu_process_memory_used_bytes", detector.pid).unwrap();
    assert_eq!(bytes, GIB as f64);
    assert_eq!(l["container"], detector.name, "{l:?}");
    assert_eq!(l["compose_service"], "detector");
    assert_eq!(l["compose_project"], "iwtest");
    assert_eq!(l["service"], "detector", "matched by compose_service");
    assert_eq!(l["unit"], "");
    let (l, _) = process(&page, "gpu_process_memory_used_bytes", plain.pid).unwrap();
    assert_eq!(
        (
            l["container"].as_str(),
            l["compose_service"].as_str(),
            l["service"].as_str()
        ),
        (plain.name.as_str(), "", "")
    );
    let uuid = "GPU-00000000-1111-2222-3333-444444444444";
    let service = |s: &str| format!("gpu_service_memory_used_bytes{{gpu=\"0\",uuid=\"{uuid}\",service=\"{s}\"}}");
    assert_eq!(sample_value(&page, &service("detector")), Some(GIB as f64));
    assert_eq!(sample_value(&page, &service("unattributed")), Some((GIB / 2) as f64));
    // The fake's 20 GiB used, minus the 1.5 GiB the processes hold.
    assert_eq!(
        sample_value(
            &page,
            &format!("gpu_unattributed_memory_bytes{{gpu=\"0\",uuid=\"{uuid}\"}}")
        ),
        Some((20 * GIB - GIB - GIB / 2) as f64)
    );

    // The engine was asked once per container, and never again: not per
    // poll, not per scrape.
    let calls = "inferwatch_docker_api_calls_total{result=\"ok\"}";
    assert_eq!(sample_value(&page, calls), Some(2.0));
    for _ in 0..5 {
        d.get_text("/metrics").await;
    }
    more_rounds(&d, 3.0).await;
    assert_eq!(sample_value(&d.get_text("/metrics").await, calls), Some(2.0));

    // The plain container's process exits: its series go at the next poll.
    let gone = plain.pid;
    drop(plain);
    fake.set(&procs(false));
    eventually("the exited process's series to go", Duration::from_secs(30), || {
        let d = &d;
        async move {
            let page = d.get_text("/metrics").await;
            process(&page, "gpu_process_memory_used_bytes", gone)
                .is_none()
                .then_some(page)
        }
    })
    .await;
    let page = d.get_text("/metrics").await;
    assert!(process(&page, "gpu_process_memory_used_bytes", detector.pid).is_some());
    assert_eq!(
        sample_value(&page, &service("unattributed")),
        None,
        "no process left unattributed"
    );
}

/// A cgroup named like a systemd unit, made in the machine's real cgroup
/// hierarchy (the v1 `pids` controller where it is mounted, else v2), and
/// removed again.
struct UnitCgroup {
    dir: PathBuf,
    pub unit: String,
}

impl UnitCgroup {
    fn new(unit: &str) -> UnitCgroup {
        let v1 = Path::new("/sys/fs/cgroup/pids");
        let root = if v1.join("cgroup.procs").exists() {
            v1.to_path_buf()
        } else {
            PathBuf::from("/sys/fs/cgroup")
        };
        let dir = root.join("system.slice").join(unit);
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("mkdir {}: {e} (the tests run as root)", dir.display()));
        UnitCgroup {
            dir,
            unit: unit.to_string(),
        }
    }

    fn adopt(&self, pid: u32) {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string()).unwrap();
    }
}

impl Drop for UnitCgroup {
    fn drop(&mut self) {
        // Empty by now (its process was killed and reaped).
        let _ = std::fs::remove_dir(&self.dir);
        let _ = std::fs::remove_dir(self.dir.parent().unwrap());
    }
}

/// A child process killed and reaped on drop.
struct Proc(Child);

impl Proc {
    fn spawn(program: &str, args: &[&str]) -> Proc {
        Proc(Command::new(program).args(args).spawn().unwrap())
    }
    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A process that is not our child, killed on drop.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.0.to_string()).status();
    }
}

/// The child of `parent` (a shell that started one command).
fn child_of(parent: u32) -> Option<u32> {
    let text = std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children")).ok()?;
    text.split_whitespace().next()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_unit_cgroup_a_pid_file_and_a_command_line_name_their_services_and_the_cap_folds_the_rest() {
    let tag = std::process::id();
    let cgroup = UnitCgroup::new(&format!("iw-attr-{tag}.service"));
    let in_unit = Proc::spawn("sleep", &["600"]);
    cgroup.adopt(in_unit.pid());
    // A server whose GPU work runs in a child: the pid file names the parent.
    let server = Proc::spawn("sh", &["-c", "sleep 601 & wait"]);
    let worker = eventually("the shell's child", Duration::from_secs(10), || async {
        child_of(server.pid())
    })
    .await;
    // Killing the shell leaves its child: that one is killed by pid.
    let _worker = KillOnDrop(worker);
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("server.pid");
    std::fs::write(&pid_file, format!("{}\n", server.pid())).unwrap();
    let by_cmdline = Proc::spawn("sleep", &["602"]);
    let nobody = Proc::spawn("sleep", &["603"]);

    let state = format!(
        "{}0.procs {}:{}:a;{}:{}:b;{}:{}:c;{}:{}:d\n",
        gpus_state(1),
        in_unit.pid(),
        4 * GIB,
        worker,
        3 * GIB,
        by_cmdline.pid(),
        2 * GIB,
        nobody.pid(),
        GIB
    );
    let fake = FakeGpus::new(Driver::Current, &state);
    let services = format!(
        "attribution:\n  docker_socket: \"\"\nhealth:\n  services:\n\
         \x20   - {{name: in-unit, kind: http, url: \"http://127.0.0.1:9/\", interval: 1h, match: {{unit: {}}}}}\n\
         \x20   - {{name: by-pid-file, kind: http, url: \"http://127.0.0.1:9/\", interval: 1h, match: {{pid_file: {}}}}}\n\
         \x20   - {{name: by-cmdline, kind: http, url: \"http://127.0.0.1:9/\", interval: 1h, match: {{cmdline: \"^sleep 602$\"}}}}\n",
        cgroup.unit,
        pid_file.display()
    );
    let mut cfg = config(&fake, &services);
    cfg = cfg.replace("per_process: true\n", "per_process: true\n  per_process_max: 3\n");
    let d = Daemon::start(&cfg, &[]).await;
    let page = listed(&d, worker).await;
    let name = "gpu_process_memory_used_bytes";
    let (l, _) = process(&page, name, in_unit.pid()).unwrap();
    assert_eq!(
        (l["unit"].as_str(), l["service"].as_str()),
        (cgroup.unit.as_str(), "in-unit")
    );
    let (l, _) = process(&page, name, worker).unwrap();
    assert_eq!(l["service"], "by-pid-file", "a child of the pid file's process: {l:?}");
    let (l, _) = process(&page, name, by_cmdline.pid()).unwrap();
    assert_eq!(l["service"], "by-cmdline");
    // Four processes, three series: the smallest is folded into _other.
    assert!(process(&page, name, nobody.pid()).is_none());
    let other: Vec<_> = samples(&page, name)
        .into_iter()
        .filter(|(l, _)| l["process_name"] == "_other")
        .collect();
    assert_eq!(other.len(), 1, "{other:?}");
    assert_eq!((other[0].0["pid"].as_str(), other[0].1), ("", GIB as f64));
    let uuid = "GPU-00000000-1111-2222-3333-444444444444";
    assert_eq!(
        sample_value(&page, &format!("gpu_processes_folded{{gpu=\"0\",uuid=\"{uuid}\"}}")),
        Some(1.0)
    );
    assert_eq!(
        sample_value(
            &page,
            &format!("gpu_service_memory_used_bytes{{gpu=\"0\",uuid=\"{uuid}\",service=\"unattributed\"}}")
        ),
        Some(GIB as f64),
        "a folded process still counts for its service"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_docker_socket_is_one_warning_ids_without_names_and_no_failed_round() {
    let c = Container::sleeping(&format!("iw-attr-nosock-{}", std::process::id()), &[]);
    let dir = tempfile::tempdir().unwrap();
    // A socket file nobody listens on: connect() is refused.
    let sock = dir.path().join("docker.sock");
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    let fake = FakeGpus::new(
        Driver::Current,
        &format!("{}0.procs {}:{}:sleep\n", gpus_state(1), c.pid, GIB),
    );
    let d = Daemon::start(
        &config(&fake, &format!("attribution:\n  docker_socket: {}\n", sock.display())),
        &[],
    )
    .await;
    let page = listed(&d, c.pid).await;
    let (l, _) = process(&page, "gpu_process_memory_used_bytes", c.pid).unwrap();
    assert_eq!(l["container"], c.id[..12], "the short id, without a name: {l:?}");
    more_rounds(&d, 3.0).await;
    let page = d.get_text("/metrics").await;
    assert_eq!(
        sample_value(&page, "inferwatch_collector_success{collector=\"gpu\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample_value(&page, "inferwatch_docker_api_calls_total{result=\"error\"}"),
        Some(1.0),
        "one try, then quiet for 30 s"
    );
    let log = d.log();
    assert_eq!(log.matches("The Docker socket cannot be asked").count(), 1, "{log}");
}

/// A container that takes a GPU while its Docker engine is down (here the
/// test's own engine, stopped, with `--live-restore` keeping the container)
/// is listed by its short id, and named once the engine answers again, at
/// the client's next try after its 30 s quiet: not left unnamed for the
/// process's life (the chaos soak found it; a reload had hidden it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_first_seen_while_its_engine_is_down_is_named_once_it_answers() {
    let mut engine = crate::common::dockerd::Engine::start().await;
    let name = format!("iw-attr-late-{}", std::process::id());
    let (id, pid) = engine.sleeping(&name, &[("com.docker.compose.service", "late")]);
    let fake = FakeGpus::new(Driver::Current, &gpus_state(1));
    let d = Daemon::start(
        &config(
            &fake,
            &format!("attribution:\n  docker_socket: {}\n", engine.socket().display()),
        ),
        &[],
    )
    .await;
    engine.stop();
    fake.set(&format!("{}0.procs {pid}:{GIB}:late\n", gpus_state(1)));
    let page = listed(&d, pid).await;
    let (l, _) = process(&page, "gpu_process_memory_used_bytes", pid).unwrap();
    assert_eq!(
        (l["container"].as_str(), l["compose_service"].as_str()),
        (&id[..12], ""),
        "{l:?}"
    );
    assert_eq!(
        sample_value(&page, "inferwatch_docker_api_calls_total{result=\"error\"}"),
        Some(1.0)
    );
    engine.resume().await;
    let page = eventually("the container to be named", Duration::from_secs(90), || {
        let d = &d;
        async move {
            let page = d.get_text("/metrics").await;
            process(&page, "gpu_process_memory_used_bytes", pid)
                .filter(|(l, _)| l["compose_service"] == "late")
                .map(|_| page)
        }
    })
    .await;
    let (l, _) = process(&page, "gpu_process_memory_used_bytes", pid).unwrap();
    assert_eq!(l["container"], name, "{l:?}");
    assert_eq!(
        sample_value(&page, "inferwatch_docker_api_calls_total{result=\"ok\"}"),
        Some(1.0),
        "asked once more, once it answered"
    );
    // Named, it is not asked again, and the polls go on.
    more_rounds(&d, 3.0).await;
    let page = d.get_text("/metrics").await;
    let (l, _) = process(&page, "gpu_process_memory_used_bytes", pid).unwrap();
    assert_eq!(l["container"], name, "{l:?}");
    assert_eq!(
        sample_value(&page, "inferwatch_docker_api_calls_total{result=\"ok\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample_value(&page, "inferwatch_collector_success{collector=\"gpu\"}"),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_no_process_holds_fires_gpu_memory_unattributed_in_a_real_prometheus() {
    // 20 GiB used, 1 GiB held by the one compute process (this test's own
    // pid, in no container): 19 GiB no process accounts for.
    let fake = FakeGpus::new(
        Driver::Current,
        &format!("{}0.procs {}:{}:it\n", gpus_state(1), std::process::id(), GIB),
    );
    let d = Daemon::start(&config(&fake, "attribution:\n  docker_socket: \"\"\n"), &[]).await;
    let prom = fast_prometheus(d.port).await;
    let alert = "ALERTS{alertname=\"GpuMemoryUnattributed\",alertstate=\"firing\"}";
    let firing = firing(&prom, "GpuMemoryUnattributed").await;
    assert_eq!(firing["metric"]["gpu"], "0", "{firing}");
    let held = prom.query("gpu_unattributed_memory_bytes").await;
    assert_eq!(held[0]["value"][1], (19 * GIB).to_string());

    // The memory comes back (used drops to what the process holds): resolved.
    fake.set(&format!(
        "{}0.procs {}:{}:it\n0.mem_used {}\n",
        gpus_state(1),
        std::process::id(),
        GIB,
        GIB
    ));
    eventually("GpuMemoryUnattributed to resolve", Duration::from_secs(60), || {
        let prom = &prom;
        async move { prom.query(alert).await.is_empty().then_some(()) }
    })
    .await;
}

/// A real health target holding `held` GiB on GPU 0 is killed; its restart
/// command starts it again and, as its model loads, the fake NVML lists the
/// new process with `new_gib` and `used_gib` in use. Returns the daemon,
/// the WebSocket's `gpu_memory_after_restart` message and the log.
async fn restart_holding_gpu_memory(held: u64, new_gib: u64, used_gib: u64) -> (Daemon, serde_json::Value, String) {
    use crate::common::{HealthTarget, WsClient};
    let mut target = HealthTarget::new();
    target.start().await;
    let base = gpus_state(1);
    let fake = FakeGpus::new(
        Driver::Current,
        &format!("{base}0.procs {}:{}:python3\n", target.pid().unwrap(), held * GIB),
    );
    // The restart command starts the server again, then "loads the model":
    // the GPU now lists the new process (written atomically, as FakeGpus::set).
    let dir = fake.dir.path();
    std::fs::write(dir.join("base.txt"), format!("{base}0.mem_used {}\n", used_gib * GIB)).unwrap();
    let mut argv = target.restart_command();
    let start = argv.iter().map(|a| format!("'{a}'")).collect::<Vec<_>>().join(" ");
    argv = vec![
        "sh".into(),
        "-c".into(),
        format!(
            "{start} && {{ cat {d}/base.txt; echo \"0.procs $(cat {pid}):{bytes}:python3\"; }} > {d}/next.txt && mv {d}/next.txt {d}/nvml_state.txt",
            d = dir.display(),
            pid = target.pid_file(),
            bytes = new_gib * GIB
        ),
    ];
    let services = format!(
        "health:\n  services:\n    - name: detector\n      kind: http\n      url: \"{}\"\n      interval: 100ms\n      \
         backoff_base: 100ms\n      start_period: 30s\n      match: {{cmdline: \"health_target\\\\.py {}\"}}\n      \
         restart:\n        command: {}\n        grace_period: 100ms\n",
        target.url(),
        target.port,
        serde_json::to_string(&argv).unwrap()
    );
    let d = Daemon::start_with_args(
        &config(&fake, &format!("attribution:\n  docker_socket: \"\"\n{services}")),
        &[],
        &["--log.format=json", "--log.level=info"],
    )
    .await;
    // The service holds its memory, in the API too.
    let body: serde_json::Value = eventually("the service's GPU memory", Duration::from_secs(30), || {
        let d = &d;
        async move {
            let body: serde_json::Value = reqwest::get(d.url("/api/system/health"))
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            (body["services"]["detector"] == "healthy" && body["gpu_memory"]["detector"][0].is_object()).then_some(body)
        }
    })
    .await;
    assert_eq!(
        body["gpu_memory"]["detector"][0]["memory_used_bytes"],
        held * GIB,
        "{body}"
    );
    assert_eq!(body["gpu_memory"]["detector"][0]["gpu"], 0);
    let mut ws = WsClient::connect(&format!("ws://127.0.0.1:{}/ws/system", d.port)).await;
    target.kill();
    let m = ws
        .wait_for("the GPU memory verdict", Duration::from_secs(60), |m| {
            m["data"]["condition"] == "gpu_memory_after_restart"
        })
        .await;
    let log = d.log();
    (d, m, log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_logs_the_gpu_memory_it_held_and_says_it_was_returned() {
    // 12 GiB belong to no process throughout (20 GiB used, 8 by the
    // service); after the restart the new process holds 6: 18 GiB used.
    let (d, m, log) = restart_holding_gpu_memory(8, 6, 18).await;
    assert_eq!(m["data"]["returned"], true, "{m}");
    assert_eq!(m["data"]["before_bytes"], 8 * GIB);
    assert_eq!(
        m["data"]["after_bytes"],
        6 * GIB,
        "the new process, after its start period"
    );
    assert_eq!(m["data"]["leftover_bytes"], 0);
    assert_eq!(m["data"]["severity"], "INFO");
    let restart = log
        .lines()
        .find(|l| l.contains("Restarting a service that holds GPU memory"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        restart.contains(&format!("\"gpu_memory_bytes\":{}", 8 * GIB)),
        "{restart}"
    );
    assert!(log.contains("The restart returned the service's GPU memory."), "{log}");
    let body: serde_json::Value = d.get_json("/api/system/health").await;
    assert_eq!(body["gpu_memory"]["detector"][0]["memory_used_bytes"], 6 * GIB);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_a_restart_leaves_behind_is_reported_as_not_returned() {
    // 12 GiB belong to no process throughout. The old process's 8 GiB stay
    // in use with no process while the new one holds 2 GiB: 22 GiB used.
    let (_d, m, log) = restart_holding_gpu_memory(8, 2, 22).await;
    assert_eq!(m["data"]["returned"], false, "{m}");
    assert_eq!(m["data"]["leftover_bytes"], 8 * GIB);
    assert_eq!(m["data"]["severity"], "WARNING");
    assert!(m["data"]["message"].as_str().unwrap().contains("did not return"), "{m}");
    assert!(
        log.contains("The restart did not return the service's GPU memory"),
        "{log}"
    );
}
