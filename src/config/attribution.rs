//! `attribution`: where the GPU collector learns who holds each GPU
//! process (docs/attribution.md). Used when `gpu.per_process` is on.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{de_seconds, invalid, ConfigError, Range};

/// The host's `/proc` and the Docker socket.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AttributionConfig {
    /// The `/proc` whose pids NVML reports: the host's. In a container,
    /// run with `pid: host`, or mount the host's `/proc` and name it here.
    pub proc_root: PathBuf,
    /// The Docker Engine API socket, for container names and compose
    /// labels. Unset: `/var/run/docker.sock` when it exists; `""`: off.
    pub docker_socket: Option<PathBuf>,
    /// The most bytes read of one `/proc/<pid>/{stat,cmdline}` or
    /// `/proc/<pid>/cgroup` file, 4 KiB–16 MiB: what a process in a
    /// container may write there is bounded, longer files are not read.
    pub proc_file_max_bytes: u64,
    /// The most bytes read of one Docker inspect answer, 4 KiB–64 MiB.
    pub docker_max_bytes: u64,
    /// One Docker call's deadline (connect, request and the whole answer),
    /// 0.1–60 s.
    #[serde(deserialize_with = "de_seconds")]
    pub docker_timeout: Duration,
}

impl Default for AttributionConfig {
    fn default() -> Self {
        AttributionConfig {
            proc_root: PathBuf::from("/proc"),
            docker_socket: None,
            proc_file_max_bytes: 64 << 10,
            docker_max_bytes: 1 << 20,
            docker_timeout: Duration::from_secs(2),
        }
    }
}

pub const PROC_FILE_MAX_BYTES: Range = Range::new("attribution.proc_file_max_bytes", 4096.0, 16777216.0, "bytes");
pub const DOCKER_MAX_BYTES: Range = Range::new("attribution.docker_max_bytes", 4096.0, 67108864.0, "bytes");
pub const DOCKER_TIMEOUT: Range = Range::new("attribution.docker_timeout", 0.1, 60.0, "seconds");

/// The socket used when `docker_socket` is unset and it exists.
pub const DEFAULT_DOCKER_SOCKET: &str = "/var/run/docker.sock";

impl AttributionConfig {
    /// The socket to ask, if any.
    pub fn docker_socket(&self) -> Option<PathBuf> {
        match &self.docker_socket {
            Some(p) if p.as_os_str().is_empty() => None,
            Some(p) => Some(p.clone()),
            None => {
                let p = PathBuf::from(DEFAULT_DOCKER_SOCKET);
                p.exists().then_some(p)
            }
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        PROC_FILE_MAX_BYTES.check(self.proc_file_max_bytes as f64)?;
        DOCKER_MAX_BYTES.check(self.docker_max_bytes as f64)?;
        DOCKER_TIMEOUT.check(self.docker_timeout.as_secs_f64())?;
        if !self.proc_root.join("self").exists() {
            return Err(invalid(
                "attribution.proc_root",
                &self.proc_root.display().to_string(),
                "is not a mounted /proc",
                "the path of a mounted procfs, e.g. /proc or /host/proc",
            ));
        }
        Ok(())
    }
}
