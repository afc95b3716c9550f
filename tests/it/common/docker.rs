//! A real Docker engine (`scripts/test` starts `dockerd --iptables=false
//! --bridge=none` when none answers): an image built `FROM scratch` with
//! busybox-static, and containers run with `--network none`, removed on
//! drop. Nothing is pulled.

use std::path::PathBuf;
use std::process::Command;

/// The engine's socket (`INFERWATCH_TEST_DOCKER_SOCKET`, set by scripts/test).
pub fn docker_socket() -> PathBuf {
    PathBuf::from(std::env::var("INFERWATCH_TEST_DOCKER_SOCKET").unwrap_or_else(|_| "/var/run/docker.sock".into()))
}

/// Runs `docker` against the test engine; panics with its output on failure.
pub fn docker(args: &[&str]) -> String {
    docker_at(&docker_socket(), args)
}

/// Runs `docker` against the engine on `socket`; panics with its output on
/// failure.
pub fn docker_at(socket: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new("docker")
        .arg("-H")
        .arg(format!("unix://{}", socket.display()))
        .args(args)
        .output()
        .expect("the docker client (scripts/test installs docker.io)");
    assert!(
        out.status.success(),
        "docker {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The test image: busybox-static alone, `FROM scratch`. Built once per
/// run; a rebuild of the same context is a cache hit.
pub fn busybox_image() -> &'static str {
    const TAG: &str = "inferwatch-test-busybox:1";
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        let ctx = tempfile::tempdir().unwrap();
        std::fs::copy("/bin/busybox", ctx.path().join("busybox")).expect("busybox-static (/bin/busybox)");
        std::fs::write(
            ctx.path().join("Dockerfile"),
            "FROM scratch\nCOPY busybox /bin/busybox\nENTRYPOINT [\"/bin/busybox\"]\n",
        )
        .unwrap();
        docker(&["build", "-q", "-t", TAG, &ctx.path().display().to_string()]);
    });
    TAG
}

/// A running container, removed (with its processes) on drop.
pub struct Container {
    pub id: String,
    pub name: String,
    /// Its main process's pid in the host's PID namespace.
    pub pid: u32,
}

impl Container {
    /// `busybox sleep 600` in a container named `name` with `labels`.
    pub fn sleeping(name: &str, labels: &[(&str, &str)]) -> Container {
        let image = busybox_image();
        // A leftover of an interrupted run with the same name goes first.
        let _ = Command::new("docker")
            .arg("-H")
            .arg(format!("unix://{}", docker_socket().display()))
            .args(["rm", "-f", name])
            .output();
        let mut args = vec!["run", "-d", "--network", "none", "--name", name];
        let label_args: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        for l in &label_args {
            args.extend(["--label", l.as_str()]);
        }
        args.extend([image, "sleep", "600"]);
        let id = docker(&args);
        let pid: u32 = docker(&["inspect", "-f", "{{.State.Pid}}", &id]).parse().unwrap();
        assert!(pid > 0, "container {name} is running");
        Container {
            id,
            name: name.to_string(),
            pid,
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .arg("-H")
            .arg(format!("unix://{}", docker_socket().display()))
            .args(["rm", "-f", &self.id])
            .output();
    }
}
