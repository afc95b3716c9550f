//! A real Alertmanager (and `amtool`), alone or clustered.

use tempfile::TempDir;

use super::*;

/// A real Alertmanager on a free port, clustering off.
pub struct Alertmanager {
    pub dir: TempDir,
    pub port: u16,
    proc: Proc,
}

impl Alertmanager {
    /// A lone Alertmanager (clustering off).
    pub async fn start(config: &str) -> Alertmanager {
        Self::launch(config, &["--cluster.listen-address="]).await
    }

    async fn launch(config: &str, args: &[&str]) -> Alertmanager {
        let dir = tempfile::tempdir().unwrap();
        let (port, proc) = start_prometheus_family(
            &dir,
            "prometheus-alertmanager",
            "alertmanager",
            config,
            "--storage.path",
            args,
        )
        .await;
        Alertmanager { dir, port, proc }
    }

    /// One peer of a gossip cluster on loopback: it listens for gossip on
    /// `cluster_port` and joins `peers`. `peer_timeout` is how long each
    /// position in the notification order waits for the ones before it.
    pub async fn start_clustered(config: &str, cluster_port: u16, peers: &[u16], peer_timeout: &str) -> Alertmanager {
        let mut args = vec![
            format!("--cluster.listen-address=127.0.0.1:{cluster_port}"),
            format!("--cluster.peer-timeout={peer_timeout}"),
            "--cluster.gossip-interval=100ms".to_string(),
            "--cluster.pushpull-interval=2s".to_string(),
            "--log.level=debug".to_string(),
        ];
        args.extend(peers.iter().map(|p| format!("--cluster.peer=127.0.0.1:{p}")));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Self::launch(config, &args).await
    }

    /// Stops it with `signal`.
    pub fn kill(&mut self, signal: i32) {
        self.proc.stop_with(signal);
    }

    /// A sample of its own `/metrics` (0 when absent).
    pub async fn metric(&self, series: &str) -> f64 {
        let page = reqwest::get(format!("http://127.0.0.1:{}/metrics", self.port))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        sample_value(&page, series).unwrap_or(0.0)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("alertmanager.log")).unwrap_or_default()
    }
}
