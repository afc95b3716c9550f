//! Container names and compose labels from the Docker Engine API, over its
//! Unix socket (`GET /containers/{id}/json`, API v1.24+, which every engine
//! since Docker 1.12 serves). Answers are cached by container id and the
//! API is asked only on a miss, from the GPU collector's poll, never from a
//! scrape. A socket that is absent or refuses costs one WARN line; the ids
//! then go without names until it answers, retried at most every
//! [`RETRY_AFTER`].

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use prometheus::IntCounterVec;
use tokio::time::Instant;

use crate::metrics::{family, Metrics};

/// How long a failing socket is left alone before the next try.
pub const RETRY_AFTER: Duration = Duration::from_secs(30);

/// What one call may take of the engine (`attribution.docker_max_bytes`,
/// `attribution.docker_timeout`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The most bytes of one answer: an inspect answer is a few KiB.
    pub max_bytes: usize,
    /// The whole call: connect, request and the answer.
    pub timeout: Duration,
}

/// What the engine says of a container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Container {
    /// The container's name, without the leading `/`.
    pub name: String,
    /// `com.docker.compose.service`.
    pub compose_service: Option<String>,
    /// `com.docker.compose.project`.
    pub compose_project: Option<String>,
}

/// The Docker Engine API client with its cache.
pub struct Docker {
    socket: PathBuf,
    limits: Limits,
    /// `Some(None)`: the engine does not know the id (it exited).
    cache: HashMap<String, Option<Container>>,
    /// Set while the socket fails: no call before this instant.
    quiet_until: Option<Instant>,
    warned: bool,
    calls: Option<IntCounterVec>,
}

impl Docker {
    pub fn new(socket: PathBuf, limits: Limits, metrics: Option<&Metrics>) -> Docker {
        let calls = metrics.map(|m| {
            let c = family::<IntCounterVec>(
                "inferwatch_docker_api_calls_total",
                "Docker Engine API calls made to name GPU processes' containers, by result: ok, not_found, error. Made on a cache miss only, never per scrape.",
                &["result"],
            );
            // Once per metrics registry; a second client (a test that builds
            // two) counts without being exported twice.
            let _ = m.register(Box::new(c.clone()));
            c
        });
        Docker {
            socket,
            limits,
            cache: HashMap::new(),
            quiet_until: None,
            warned: false,
            calls,
        }
    }

    /// The container `id`: from the cache, or asked once on a miss. `None`
    /// when the engine does not know it or cannot be asked.
    pub async fn lookup(&mut self, id: &str) -> Option<Container> {
        if let Some(known) = self.cache.get(id) {
            return known.clone();
        }
        if self.quiet_until.is_some_and(|t| Instant::now() < t) {
            return None;
        }
        let result = inspect(&self.socket, id, self.limits).await;
        let label = match &result {
            Ok(Some(_)) => "ok",
            Ok(None) => "not_found",
            Err(_) => "error",
        };
        if let Some(c) = &self.calls {
            c.with_label_values(&[label]).inc();
        }
        match result {
            Ok(found) => {
                if self.quiet_until.take().is_some() {
                    tracing::info!(socket = %self.socket.display(), "The Docker socket answers again; GPU processes get container names.");
                }
                self.warned = false;
                self.cache.insert(id.to_string(), found.clone());
                found
            }
            Err(e) => {
                if !self.warned {
                    tracing::warn!(socket = %self.socket.display(), error = %e, "The Docker socket cannot be asked; GPU processes in containers keep their ids but get no names. Retrying every 30s.");
                    self.warned = true;
                }
                self.quiet_until = Some(Instant::now() + RETRY_AFTER);
                None
            }
        }
    }

    /// Whether the engine failed its last call (and is left alone until
    /// [`RETRY_AFTER`] has passed).
    pub fn failing(&self) -> bool {
        self.quiet_until.is_some()
    }

    /// Forgets containers that are no longer among `live` ids, so the cache
    /// stays as small as the set of containers holding a GPU.
    pub fn retain(&mut self, live: &std::collections::HashSet<String>) {
        self.cache.retain(|id, _| live.contains(id));
    }
}

/// `GET /containers/{id}/json`: `Ok(None)` on 404. The whole call has
/// `limits.timeout`; an answer that does not arrive whole within it, or
/// passes `limits.max_bytes`, counts in `inferwatch_read_limit_hits_total`.
async fn inspect(socket: &std::path::Path, id: &str, limits: Limits) -> Result<Option<Container>, String> {
    let deadline = tokio::time::Instant::now() + limits.timeout;
    let resp = tokio::time::timeout_at(deadline, request(socket, id))
        .await
        .map_err(|_| format!("no answer within {:?}", limits.timeout))??;
    let status = resp.status();
    let limited = http_body_util::Limited::new(resp.into_body(), limits.max_bytes).collect();
    let body = match tokio::time::timeout_at(deadline, limited).await {
        Ok(Ok(body)) => body.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            crate::bounded::Source::Docker.hit();
            return Err(format!("the answer is larger than {} bytes", limits.max_bytes));
        }
        Ok(Err(e)) => return Err(format!("body: {e}")),
        Err(_) => {
            crate::bounded::Source::Docker.hit();
            return Err(format!("no whole answer within {:?}", limits.timeout));
        }
    };
    match status.as_u16() {
        200 => parse_inspect(&body).map(Some),
        404 => Ok(None),
        s => Err(format!("HTTP {s}")),
    }
}

/// Connects, sends the inspect request, and returns the answer's head.
async fn request(socket: &std::path::Path, id: &str) -> Result<hyper::Response<hyper::body::Incoming>, String> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = hyper::Request::get(format!("/containers/{id}/json"))
        .header(hyper::header::HOST, "docker")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    sender.send_request(req).await.map_err(|e| format!("request: {e}"))
}

/// The fields of an inspect answer that name a container.
fn parse_inspect(body: &[u8]) -> Result<Container, String> {
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| format!("inspect JSON: {e}"))?;
    let labels = &v["Config"]["Labels"];
    let label = |k: &str| labels[k].as_str().filter(|s| !s.is_empty()).map(str::to_string);
    Ok(Container {
        name: v["Name"]
            .as_str()
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_string(),
        compose_service: label("com.docker.compose.service"),
        compose_project: label("com.docker.compose.project"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inspect_answers_name_the_container_and_its_compose_service() {
        // The shape of moby's ContainerJSON (api/types/container): Name with
        // a leading slash, labels under Config.
        let body = br#"{"Id":"abc","Name":"/proj-detector-1","Config":{"Labels":{"com.docker.compose.service":"detector","com.docker.compose.project":"proj"}}}"#;
        let c = parse_inspect(body).unwrap();
        assert_eq!(c.name, "proj-detector-1");
        assert_eq!(c.compose_service.as_deref(), Some("detector"));
        assert_eq!(c.compose_project.as_deref(), Some("proj"));
        let bare = parse_inspect(br#"{"Name":"/plain","Config":{"Labels":null}}"#).unwrap();
        assert_eq!((bare.name.as_str(), bare.compose_service), ("plain", None));
        assert!(parse_inspect(b"not json").is_err());
    }

    #[tokio::test]
    async fn an_absent_socket_is_one_failed_call_then_quiet() {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits {
            max_bytes: 1 << 20,
            timeout: Duration::from_secs(2),
        };
        let mut d = Docker::new(dir.path().join("docker.sock"), limits, None);
        assert_eq!(d.lookup("abc").await, None);
        assert!(d.quiet_until.is_some() && d.warned);
        // Within the quiet period nothing is tried (no connect error again).
        assert_eq!(d.lookup("abc").await, None);
        assert!(d.cache.is_empty());
    }
}
