//! A real Redis Sentinel setup on loopback: one master, two replicas and
//! three Sentinels (`redis-server --sentinel`), with a 1 s down-after so
//! that a killed master fails over within seconds.

use std::process::{Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use super::*;

pub const MASTER_NAME: &str = "mymaster";

pub struct SentinelSet {
    /// The servers; index 0 is the first master.
    pub servers: Vec<Redis>,
    pub sentinel_ports: Vec<u16>,
    _sentinels: Vec<(TempDir, Proc)>,
}

impl SentinelSet {
    pub async fn start() -> SentinelSet {
        let master = Redis::start().await;
        let mut servers = vec![master];
        for _ in 0..2 {
            let args = vec![
                "--replicaof".to_string(),
                "127.0.0.1".into(),
                servers[0].port.to_string(),
            ];
            servers.push(Redis::start_with(&args).await);
        }
        let mut sentinels = Vec::new();
        let mut sentinel_ports = Vec::new();
        for _ in 0..3 {
            let dir = tempfile::tempdir().unwrap();
            let port = free_port();
            let conf = dir.path().join("sentinel.conf");
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {}\n\
                     sentinel monitor {MASTER_NAME} 127.0.0.1 {} 2\n\
                     sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
                     sentinel failover-timeout {MASTER_NAME} 5000\n\
                     sentinel parallel-syncs {MASTER_NAME} 1\n",
                    dir.path().display(),
                    servers[0].port
                ),
            )
            .unwrap();
            let child = Command::new(find_bin("redis-server"))
                .arg(&conf)
                .arg("--sentinel")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            sentinels.push((
                dir,
                Proc {
                    child,
                    name: "redis-sentinel",
                },
            ));
            sentinel_ports.push(port);
        }
        let set = SentinelSet {
            servers,
            sentinel_ports,
            _sentinels: sentinels,
        };
        // Every Sentinel knows both replicas and the two other Sentinels.
        for &port in &set.sentinel_ports {
            eventually(
                "a Sentinel to see the whole set",
                Duration::from_secs(60),
                || async move {
                    let mut c = sentinel_conn(port).await?;
                    let master: Vec<String> = redis::cmd("SENTINEL")
                        .arg(&["MASTER", MASTER_NAME])
                        .query_async(&mut c)
                        .await
                        .ok()?;
                    let field = |k: &str| {
                        master
                            .iter()
                            .position(|x| x == k)
                            .and_then(|i| master.get(i + 1))
                            .cloned()
                            .unwrap_or_default()
                    };
                    (field("num-slaves") == "2" && field("num-other-sentinels") == "2").then_some(())
                },
            )
            .await;
        }
        set
    }

    /// `redis+sentinel://` for the three Sentinels.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self.sentinel_ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        format!("redis+sentinel://{}/{MASTER_NAME}/0", hosts.join(","))
    }

    /// The master's port, as the first Sentinel that answers says.
    pub async fn master_port(&self) -> Option<u16> {
        master_port_of(&self.sentinel_ports).await
    }

    /// `SENTINEL FAILOVER`: a graceful failover, the replica caught up
    /// before it is promoted.
    pub async fn failover(&self) {
        let mut c = sentinel_conn(self.sentinel_ports[0]).await.expect("a Sentinel answers");
        let _: () = redis::cmd("SENTINEL")
            .arg("FAILOVER")
            .arg(MASTER_NAME)
            .query_async(&mut c)
            .await
            .unwrap();
    }

    /// The server on `port`.
    pub fn server(&mut self, port: u16) -> &mut Redis {
        self.servers
            .iter_mut()
            .find(|r| r.port == port)
            .expect("one of the set")
    }
}

/// A connection to the Redis (or Sentinel) on `port`, or `None` when it
/// does not answer within 3 s.
pub async fn sentinel_conn(port: u16) -> Option<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).ok()?;
    tokio::time::timeout(Duration::from_secs(3), client.get_multiplexed_async_connection())
        .await
        .ok()?
        .ok()
}

/// The master's port, as the first of `sentinels` that answers says.
pub async fn master_port_of(sentinels: &[u16]) -> Option<u16> {
    for &port in sentinels {
        let Some(mut c) = sentinel_conn(port).await else {
            continue;
        };
        let addr: Option<(String, String)> = redis::cmd("SENTINEL")
            .arg(&["GET-MASTER-ADDR-BY-NAME", MASTER_NAME])
            .query_async(&mut c)
            .await
            .ok();
        if let Some((_, p)) = addr {
            return p.parse().ok();
        }
    }
    None
}
