//! `attribution`: where the GPU collector learns who holds each GPU
//! process (docs/attribution.md). Used when `gpu.per_process` is on.

use std::path::PathBuf;

use serde::Deserialize;

use super::{invalid, ConfigError};

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
}

impl Default for AttributionConfig {
    fn default() -> Self {
        AttributionConfig {
            proc_root: PathBuf::from("/proc"),
            docker_socket: None,
        }
    }
}

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
