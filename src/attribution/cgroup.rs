//! What `/proc/<pid>/cgroup` says about a process: its systemd unit, its
//! container and its Kubernetes pod. Both formats are read:
//!
//! - cgroup v1: one line per hierarchy, `N:controllers:/path`, e.g.
//!   `4:memory:/docker/<id>` or `1:name=systemd:/system.slice/vllm.service`;
//! - cgroup v2: the one line `0::/path`, e.g.
//!   `0::/system.slice/docker-<id>.scope`.
//!
//! The path names the container in the forms each runtime writes:
//! Docker with the cgroupfs driver (`/docker/<id>`) or the systemd driver
//! (`docker-<id>.scope`), containerd/CRI (`cri-containerd-<id>.scope`),
//! CRI-O (`crio-<id>.scope`), Podman (`libpod-<id>.scope`), and kubepods
//! (`/kubepods/<qos>/pod<uid>/<id>` or
//! `kubepods-<qos>-pod<uid>.slice/cri-containerd-<id>.scope`, where the
//! systemd form writes the pod uid with `_` for `-`).

/// The container runtimes whose cgroup names are known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    Docker,
    Containerd,
    CriO,
    Podman,
}

/// What a process's cgroup names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupInfo {
    /// The systemd service unit (`vllm.service`), when the process runs in one.
    pub unit: Option<String>,
    /// The container's full id and its runtime.
    pub container: Option<(Runtime, String)>,
    /// The Kubernetes pod uid, with dashes.
    pub pod_uid: Option<String>,
}

/// Reads the text of `/proc/<pid>/cgroup`. The v2 line, then the systemd
/// hierarchy of v1, then any other line: the first that names something
/// wins for each of unit, container and pod.
pub fn parse(text: &str) -> CgroupInfo {
    let mut paths: Vec<(u8, &str)> = text
        .lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            let rank = match (id, controllers) {
                ("0", "") => 0,
                (_, "name=systemd") => 1,
                _ => 2,
            };
            Some((rank, path))
        })
        .collect();
    paths.sort_by_key(|(rank, _)| *rank);
    let mut info = CgroupInfo::default();
    for (_, path) in paths {
        let one = from_path(path);
        info.unit = info.unit.or(one.unit);
        info.container = info.container.or(one.container);
        info.pod_uid = info.pod_uid.or(one.pod_uid);
    }
    info
}

/// What one cgroup path names.
pub fn from_path(path: &str) -> CgroupInfo {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let mut info = CgroupInfo::default();
    let mut in_kubepods = false;
    for (i, seg) in segments.iter().enumerate() {
        if seg.starts_with("kubepods") {
            in_kubepods = true;
        }
        if let Some(uid) = pod_uid(seg) {
            info.pod_uid = Some(uid);
            continue;
        }
        if let Some(c) = scoped_container(seg) {
            info.container = Some(c);
            continue;
        }
        // cgroupfs forms: `/docker/<id>`, `/kubepods/<qos>/pod<uid>/<id>`.
        let parent = i.checked_sub(1).map(|p| segments[p]).unwrap_or("");
        if is_container_id(seg) {
            if parent == "docker" {
                info.container = Some((Runtime::Docker, seg.to_string()));
            } else if in_kubepods && info.pod_uid.is_some() {
                info.container = Some((Runtime::Containerd, seg.to_string()));
            } else if parent == "libpod_parent" || parent.starts_with("libpod-") {
                info.container = Some((Runtime::Podman, seg.to_string()));
            }
            continue;
        }
        if let Some(unit) = seg.strip_suffix(".service") {
            if !unit.is_empty() {
                info.unit = Some(seg.to_string());
            }
        }
    }
    info
}

/// `docker-<id>.scope`, `cri-containerd-<id>.scope`, `crio-<id>.scope`,
/// `libpod-<id>.scope`.
fn scoped_container(seg: &str) -> Option<(Runtime, String)> {
    let name = seg.strip_suffix(".scope")?;
    for (prefix, runtime) in [
        ("docker-", Runtime::Docker),
        ("cri-containerd-", Runtime::Containerd),
        ("crio-", Runtime::CriO),
        ("libpod-", Runtime::Podman),
    ] {
        if let Some(id) = name.strip_prefix(prefix) {
            if is_container_id(id) {
                return Some((runtime, id.to_string()));
            }
        }
    }
    None
}

/// `pod<uid>` (cgroupfs) or `kubepods-<qos>-pod<uid_with_underscores>.slice`.
fn pod_uid(seg: &str) -> Option<String> {
    let raw = if let Some(rest) = seg.strip_suffix(".slice") {
        rest.rsplit_once("-pod")?.1
    } else {
        seg.strip_prefix("pod")?
    };
    let uid = raw.replace('_', "-");
    let valid = uid.len() == 36 && uid.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
    valid.then_some(uid)
}

/// A full container id: 64 lowercase hex digits.
fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "a2e1dee29e70712cb8493149ae782f0dd278deb2450cbaafba933d604ff14cb9";
    const UID: &str = "5f3c1a2b-1234-4cde-9f00-0123456789ab";

    #[test]
    fn docker_with_cgroupfs_on_v1_as_read_on_this_machine() {
        let text =
            format!("9:name=systemd:/docker/{ID}\n8:pids:/docker/{ID}\n4:memory:/docker/{ID}\n0::/docker/{ID}\n");
        let info = parse(&text);
        assert_eq!(info.container, Some((Runtime::Docker, ID.to_string())));
        assert_eq!(info.unit, None);
    }

    #[test]
    fn cgroup_v2_lines() {
        let info = parse(&format!("0::/system.slice/docker-{ID}.scope\n"));
        assert_eq!(info.container, Some((Runtime::Docker, ID.to_string())));
        assert_eq!(info.unit, None, "a scope is not a service unit");
        let info = parse("0::/system.slice/vllm.service\n");
        assert_eq!(info.unit.as_deref(), Some("vllm.service"));
        let info = parse("0::/user.slice/user-1000.slice/user@1000.service/app.slice/tgi.service\n");
        assert_eq!(info.unit.as_deref(), Some("tgi.service"), "the innermost unit");
        let info = parse(&format!("0::/machine.slice/libpod-{ID}.scope/container\n"));
        assert_eq!(info.container, Some((Runtime::Podman, ID.to_string())));
        let info = parse(&format!("0::/system.slice/crio-{ID}.scope\n"));
        assert_eq!(info.container, Some((Runtime::CriO, ID.to_string())));
    }

    #[test]
    fn kubepods_in_both_drivers() {
        let systemd = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{ID}.scope\n",
            UID.replace('-', "_")
        );
        let info = parse(&systemd);
        assert_eq!(info.pod_uid.as_deref(), Some(UID));
        assert_eq!(info.container, Some((Runtime::Containerd, ID.to_string())));
        let cgroupfs = format!("4:memory:/kubepods/besteffort/pod{UID}/{ID}\n");
        let info = parse(&cgroupfs);
        assert_eq!(info.pod_uid.as_deref(), Some(UID));
        assert_eq!(info.container, Some((Runtime::Containerd, ID.to_string())));
    }

    #[test]
    fn v1_systemd_hierarchy_names_the_unit_and_others_fill_in() {
        let text = format!("9:name=systemd:/system.slice/triton.service\n4:memory:/docker/{ID}\n");
        let info = parse(&text);
        assert_eq!(info.unit.as_deref(), Some("triton.service"));
        assert_eq!(info.container, Some((Runtime::Docker, ID.to_string())));
    }

    #[test]
    fn nothing_is_made_up() {
        for text in [
            "",
            "0::/\n",
            "garbage",
            "0::/docker/not-an-id\n",
            "0::/system.slice/.service\n",
            &format!("0::/somewhere/{ID}\n"),
            "0::/system.slice/docker-abc.scope\n",
        ] {
            assert_eq!(parse(text), CgroupInfo::default(), "{text:?}");
        }
    }
}
