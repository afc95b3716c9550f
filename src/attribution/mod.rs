//! Who holds each GPU process: its systemd unit, its container (with the
//! name and compose labels the Docker Engine API gives) and the inferwatch
//! service whose `match` it fits. The GPU collector asks once per poll for
//! the pids NVML reported; `/metrics` and the API read the published
//! result, never `/proc` or the Docker socket.
//!
//! Cost: two small `/proc` reads per new process (`stat` for its start time,
//! `cgroup`), a `cmdline` read when a service matches on it, and a Docker
//! call per new container. A process already seen (same pid, same start
//! time) costs one `stat` read.

pub mod cgroup;
pub mod docker;
pub mod table;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use crate::config::{Config, ServiceConfig};

pub use table::{GpuProcesses, ProcessRow, OTHER, UNATTRIBUTED};

/// Who holds one process. Empty strings where unknown.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Owner {
    /// The configured service it matched, or "".
    pub service: String,
    /// The systemd service unit.
    pub unit: String,
    /// The container's name, or its 12-digit short id when the engine
    /// cannot be asked.
    pub container: String,
    pub compose_service: String,
    pub compose_project: String,
}

/// One service's `match`, ready to test.
struct Matcher {
    service: String,
    unit: Option<String>,
    container: Option<String>,
    compose_service: Option<String>,
    pid_file: Option<PathBuf>,
    cmdline: Option<regex_lite::Regex>,
}

/// What a process is, before services are matched.
#[derive(Debug, Clone, Default)]
struct Facts {
    start_time: u64,
    unit: String,
    container_id: String,
    container: String,
    compose_service: String,
    compose_project: String,
    /// Read once, when a service matches on it.
    cmdline: Option<String>,
    /// The pid and its ancestors below init, read once when a service
    /// matches on a pid file.
    lineage: Vec<u32>,
    /// A Docker container whose engine could not be asked (down, or
    /// restarting): asked again at a later poll, not left unnamed for the
    /// process's life.
    unnamed: bool,
}

/// Resolves pids to owners, caching per (pid, start time).
pub struct Attributor {
    procfs: Procfs,
    docker: Option<docker::Docker>,
    matchers: Vec<Matcher>,
    known: HashMap<u32, Facts>,
}

impl Attributor {
    pub fn new(config: &Config, metrics: Option<&crate::metrics::Metrics>) -> Attributor {
        let matchers = config.health.services.iter().filter_map(matcher).collect();
        Attributor {
            procfs: Procfs {
                root: config.attribution.proc_root.clone(),
                max: config.attribution.proc_file_max_bytes as usize,
            },
            docker: config.attribution.docker_socket().map(|s| {
                let limits = docker::Limits {
                    max_bytes: config.attribution.docker_max_bytes as usize,
                    timeout: config.attribution.docker_timeout,
                };
                docker::Docker::new(s, limits, metrics)
            }),
            matchers,
            known: HashMap::new(),
        }
    }

    /// Matches processes to the services of a reloaded config.
    pub fn set_services(&mut self, services: &[crate::config::ServiceConfig]) {
        self.matchers = services.iter().filter_map(matcher).collect();
        // The cached facts hold only what the old matches read (a cmdline,
        // a pid lineage): read them again for the new ones.
        self.known.clear();
    }

    /// The owner of each of `pids`; processes that are gone are forgotten.
    pub async fn owners(&mut self, pids: &HashSet<u32>) -> HashMap<u32, Owner> {
        self.known.retain(|pid, _| pids.contains(pid));
        // Each pid file once per poll, not once per process.
        let mains: HashMap<PathBuf, Option<u32>> = self
            .matchers
            .iter()
            .filter_map(|m| m.pid_file.clone())
            .map(|f| {
                let pid = std::fs::read_to_string(&f).ok().and_then(|t| t.trim().parse().ok());
                (f, pid)
            })
            .collect();
        let mut out = HashMap::with_capacity(pids.len());
        for &pid in pids {
            let Some(start_time) = start_time(&self.procfs, pid) else {
                // Not visible here (another PID namespace, or exited).
                self.known.remove(&pid);
                out.insert(pid, Owner::default());
                continue;
            };
            if self.known.get(&pid).map(|f| f.start_time) != Some(start_time) {
                let facts = self.facts(pid, start_time).await;
                self.known.insert(pid, facts);
            } else if let Some(facts) = self.known.get_mut(&pid).filter(|f| f.unnamed) {
                name_container(self.docker.as_mut(), facts).await;
            }
            let facts = &self.known[&pid];
            let service = self.service_of(facts, &mains);
            out.insert(
                pid,
                Owner {
                    service,
                    unit: facts.unit.clone(),
                    container: facts.container.clone(),
                    compose_service: facts.compose_service.clone(),
                    compose_project: facts.compose_project.clone(),
                },
            );
        }
        if let Some(d) = &mut self.docker {
            let live: HashSet<String> = self.known.values().map(|f| f.container_id.clone()).collect();
            d.retain(&live);
        }
        out
    }

    /// Reads the cgroup of a process first seen, and names its container.
    async fn facts(&mut self, pid: u32, start_time: u64) -> Facts {
        let path = self.procfs.root.join(pid.to_string()).join("cgroup");
        let text = crate::bounded::read_file(&path, self.procfs.max, crate::bounded::Source::Cgroup)
            .map(|(b, _)| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let info = cgroup::parse(&text);
        let mut facts = Facts {
            start_time,
            unit: info.unit.unwrap_or_default(),
            cmdline: self
                .matchers
                .iter()
                .any(|m| m.cmdline.is_some())
                .then(|| cmdline(&self.procfs, pid))
                .flatten(),
            lineage: if self.matchers.iter().any(|m| m.pid_file.is_some()) {
                lineage(&self.procfs, pid)
            } else {
                Vec::new()
            },
            ..Facts::default()
        };
        if let Some((runtime, id)) = info.container {
            facts.container = id[..12].to_string();
            facts.container_id = id;
            facts.unnamed = runtime == cgroup::Runtime::Docker;
            name_container(self.docker.as_mut(), &mut facts).await;
        }
        facts
    }

    /// The first service whose every given key matches; `mains` holds each
    /// pid file's pid, read this poll.
    fn service_of(&self, facts: &Facts, mains: &HashMap<PathBuf, Option<u32>>) -> String {
        for m in &self.matchers {
            let fits = m.unit.as_ref().map_or(true, |u| *u == facts.unit)
                && m.container.as_ref().map_or(true, |c| {
                    !facts.container_id.is_empty()
                        && (*c == facts.container || (c.len() >= 12 && facts.container_id.starts_with(c.as_str())))
                })
                && m.compose_service
                    .as_ref()
                    .map_or(true, |s| !s.is_empty() && *s == facts.compose_service)
                && m.pid_file.as_ref().map_or(true, |f| {
                    mains
                        .get(f)
                        .copied()
                        .flatten()
                        .is_some_and(|main| facts.lineage.contains(&main))
                })
                && m.cmdline
                    .as_ref()
                    .map_or(true, |re| facts.cmdline.as_ref().is_some_and(|line| re.is_match(line)));
            if fits {
                return m.service.clone();
            }
        }
        String::new()
    }
}

fn matcher(s: &ServiceConfig) -> Option<Matcher> {
    let m = s.matcher.as_ref()?;
    Some(Matcher {
        service: s.name.clone(),
        unit: m.unit.clone(),
        container: m.container.clone(),
        compose_service: m.compose_service.clone(),
        pid_file: m.pid_file.clone(),
        // Validation compiled it already.
        cmdline: m.cmdline.as_ref().and_then(|re| regex_lite::Regex::new(re).ok()),
    })
}

/// Fields of `/proc/<pid>/stat` after the command name (which may hold
/// spaces and parentheses): index 0 is the state, 1 the parent pid, 19 the
/// start time.
fn stat_fields(p: &Procfs, pid: u32) -> Option<Vec<String>> {
    let path = p.root.join(pid.to_string()).join("stat");
    let (raw, _) = crate::bounded::read_file(&path, p.max, crate::bounded::Source::Proc).ok()?;
    let text = String::from_utf8_lossy(&raw);
    let after = &text[text.rfind(')')? + 1..];
    Some(after.split_whitespace().map(str::to_string).collect())
}

/// The process's start time in clock ticks since boot: with the pid, it
/// names one process even after the pid is reused.
fn start_time(p: &Procfs, pid: u32) -> Option<u64> {
    stat_fields(p, pid)?.get(19)?.parse().ok()
}

fn parent(p: &Procfs, pid: u32) -> Option<u32> {
    stat_fields(p, pid)?.get(1)?.parse().ok()
}

/// Asks the engine for an unnamed Docker container's name and compose
/// labels. When the engine cannot be asked the container stays
/// `unnamed`, and a later poll asks again (at most every
/// [`docker::RETRY_AFTER`]: the client keeps quiet in between).
async fn name_container(docker: Option<&mut docker::Docker>, facts: &mut Facts) {
    let Some(d) = docker.filter(|_| facts.unnamed) else {
        facts.unnamed = false;
        return;
    };
    match d.lookup(&facts.container_id).await {
        Some(c) => {
            facts.container = c.name;
            facts.compose_service = c.compose_service.unwrap_or_default();
            facts.compose_project = c.compose_project.unwrap_or_default();
            facts.unnamed = false;
        }
        // Not found (it exited) is an answer; a failing engine is not.
        None => facts.unnamed = d.failing(),
    }
}

/// The `/proc` read, and the most bytes read of one of its files
/// (`attribution.proc_file_max_bytes`): what a process in a container
/// writes there (its command line) is its own; 64 KiB, the default, holds
/// every field read here.
struct Procfs {
    root: PathBuf,
    max: usize,
}

/// The command line, its arguments joined by spaces.
fn cmdline(p: &Procfs, pid: u32) -> Option<String> {
    let path = p.root.join(pid.to_string()).join("cmdline");
    let (raw, _) = crate::bounded::read_file(&path, p.max, crate::bounded::Source::Proc).ok()?;
    let args: Vec<String> = raw
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    Some(args.join(" "))
}

/// `pid` and its ancestors up to (not including) init: a pid file's
/// process matches itself and its descendants (a server's GPU workers are
/// often its children).
fn lineage(p: &Procfs, pid: u32) -> Vec<u32> {
    let mut out = vec![pid];
    let mut at = pid;
    // Bounded: a process tree is far shallower than this.
    for _ in 0..64 {
        match parent(p, at) {
            Some(p) if p > 1 && p != at => {
                out.push(p);
                at = p;
            }
            _ => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn procfs(root: &Path) -> Procfs {
        Procfs {
            root: root.to_path_buf(),
            max: 64 << 10,
        }
    }

    #[test]
    fn stat_is_read_past_a_command_name_with_spaces_and_parens() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("42");
        std::fs::create_dir(&p).unwrap();
        let mut fields = vec!["S", "7"];
        fields.extend(std::iter::repeat("0").take(17));
        fields.push("123456");
        std::fs::write(p.join("stat"), format!("42 (my (odd) name) {}\n", fields.join(" "))).unwrap();
        let p = procfs(dir.path());
        assert_eq!(start_time(&p, 42), Some(123456));
        assert_eq!(parent(&p, 42), Some(7));
        assert_eq!(start_time(&p, 43), None);
    }

    #[test]
    fn the_lineage_of_this_process_holds_itself_and_its_parent_not_init() {
        let me = std::process::id();
        let proc = procfs(Path::new("/proc"));
        let parent_pid = parent(&proc, me).unwrap();
        let line = lineage(&proc, me);
        assert_eq!(line[0], me);
        assert!(parent_pid == 1 || line.contains(&parent_pid), "{line:?}");
        assert!(!line.contains(&1));
        assert_eq!(lineage(&proc, 999_999_999), [999_999_999]);
    }
}
