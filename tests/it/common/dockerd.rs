//! A Docker engine of the test's own (the soak restarts it): Debian's
//! `dockerd` with its own data root, exec root (so its own containerd),
//! socket and containerd namespace, `--iptables=false --bridge=none`, and
//! `--live-restore`, so containers live through a restart of the engine as
//! they do on a host configured for it. Images are built `FROM scratch`
//! with busybox-static; nothing is pulled.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use super::*;

const IMAGE: &str = "inferwatch-soak-busybox:1";

/// Its own `dockerd`, stopped, its containers removed and its data root
/// unmounted on drop.
pub struct Engine {
    dir: TempDir,
    proc: Option<Proc>,
}

impl Engine {
    /// Starts the engine, waits for `_ping`, and builds the busybox image.
    pub async fn start() -> Engine {
        let mut e = Engine {
            dir: tempfile::tempdir().unwrap(),
            proc: None,
        };
        e.resume().await;
        let ctx = e.dir.path().join("image");
        std::fs::create_dir_all(&ctx).unwrap();
        std::fs::copy("/bin/busybox", ctx.join("busybox")).expect("busybox-static (/bin/busybox)");
        std::fs::write(
            ctx.join("Dockerfile"),
            "FROM scratch\nCOPY busybox /bin/busybox\nENTRYPOINT [\"/bin/busybox\"]\n",
        )
        .unwrap();
        e.docker(&["build", "-q", "-t", IMAGE, &ctx.display().to_string()]);
        e
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("docker.sock")
    }

    /// Starts `dockerd` (again) and waits until it answers `_ping`.
    pub async fn resume(&mut self) {
        let root = self.dir.path();
        let mut cmd = if is_root() {
            Command::new("dockerd")
        } else {
            let mut c = Command::new("sudo");
            c.args(["-n", "dockerd"]);
            c
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(root.join("dockerd.log"))
            .unwrap();
        let child = cmd
            .args(["--iptables=false", "--bridge=none", "--live-restore"])
            .args(["--containerd-namespace", "inferwatch-soak"])
            .args(["--containerd-plugins-namespace", "inferwatch-soak-plugins"])
            .arg("--data-root")
            .arg(root.join("data"))
            .arg("--exec-root")
            .arg(root.join("exec"))
            .arg("--pidfile")
            .arg(root.join("dockerd.pid"))
            .arg("--host")
            .arg(format!("unix://{}", self.socket().display()))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("dockerd (scripts/test installs docker.io)");
        self.proc = Some(Proc { child, name: "dockerd" });
        let socket = self.socket();
        eventually("dockerd to answer _ping", Duration::from_secs(60), || {
            let socket = socket.clone();
            async move { ping(&socket).await.then_some(()) }
        })
        .await;
    }

    /// SIGTERM, and waits for the engine to exit. Containers live on.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop_with(SIGTERM);
        }
    }

    /// Runs `docker` against this engine; panics with its output on failure.
    pub fn docker(&self, args: &[&str]) -> String {
        super::docker::docker_at(&self.socket(), args)
    }

    /// `busybox sleep` in a container named `name` with `labels`
    /// (`--network none`); its id and its main process's host pid.
    pub fn sleeping(&self, name: &str, labels: &[(&str, &str)]) -> (String, u32) {
        let mut args = vec!["run", "-d", "--network", "none", "--name", name];
        let label_args: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        for l in &label_args {
            args.extend(["--label", l.as_str()]);
        }
        args.extend([IMAGE, "sleep", "86400"]);
        let id = self.docker(&args);
        let pid: u32 = self.docker(&["inspect", "-f", "{{.State.Pid}}", &id]).parse().unwrap();
        assert!(pid > 0, "container {name} is running");
        (id, pid)
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if self.proc.is_some() {
            let ids = self.docker(&["ps", "-aq"]);
            for id in ids.split_whitespace() {
                let _ = Command::new("docker")
                    .arg("-H")
                    .arg(format!("unix://{}", self.socket().display()))
                    .args(["rm", "-f", id])
                    .output();
            }
        }
        self.stop();
        // dockerd bind-mounts its data root onto itself; the temp dir can
        // only go once that is undone.
        let _ = Command::new(if is_root() { "umount" } else { "sudo" })
            .args(if is_root() {
                vec!["-R"]
            } else {
                vec!["-n", "umount", "-R"]
            })
            .arg(self.dir.path().join("data"))
            .output();
    }
}

/// Whether the engine on `socket` answers `GET /_ping`.
async fn ping(socket: &std::path::Path) -> bool {
    use http_body_util::Empty;
    use hyper_util::rt::TokioIo;
    let Ok(stream) = tokio::net::UnixStream::connect(socket).await else {
        return false;
    };
    let Ok((mut send, conn)) =
        hyper::client::conn::http1::handshake::<_, Empty<hyper::body::Bytes>>(TokioIo::new(stream)).await
    else {
        return false;
    };
    tokio::spawn(conn);
    let req = hyper::Request::get("/_ping")
        .header("host", "docker")
        .body(Empty::new())
        .unwrap();
    send.send_request(req).await.is_ok_and(|r| r.status() == 200)
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}
