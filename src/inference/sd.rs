//! `GET /api/sd/inference` (pure part): Prometheus HTTP service discovery
//! of every service that names a `metrics_url`, one target group each,
//! labelled `service`, `server` and `gpu` (the GPU indices its processes
//! hold, from attribution: sorted, comma-separated, empty when none).
//!
//! With `inference.scrape: proxy` (the default) each target is this daemon,
//! as the scraper reached it, with `__metrics_path__` set to
//! `/proxy/{service}/metrics`; with `direct`, the server's own address,
//! scheme, path and query (`__param_*`), as Prometheus relabelling spells
//! them. Either way `instance` is this daemon as the scraper reached it: the
//! node, as on the daemon's own series, so the inference rules join a
//! server's tokens with its service's energy by `(instance, service)`.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::config::{ScrapeMode, ServiceConfig};

/// One target group of the HTTP SD format.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct TargetGroup {
    /// `host:port`.
    pub targets: Vec<String>,
    /// `instance` (this daemon), `service`, `server`, `gpu`, and how to reach the target
    /// (`__scheme__`, `__metrics_path__`, `__param_*`).
    pub labels: BTreeMap<String, String>,
}

/// How the scraper reaches this daemon: the `Host` it asked with, and
/// whether the daemon serves TLS.
pub struct Daemon<'a> {
    pub authority: &'a str,
    pub scheme: &'a str,
}

/// The path of a service's proxied metrics.
pub fn proxy_path(service: &str) -> String {
    format!("/proxy/{service}/metrics")
}

/// The target groups, in config order. `gpus` maps a service to the GPU
/// indices its processes hold.
pub fn target_groups(
    services: &[ServiceConfig],
    mode: ScrapeMode,
    daemon: &Daemon,
    gpus: &BTreeMap<String, BTreeSet<u32>>,
) -> Vec<TargetGroup> {
    services
        .iter()
        .filter_map(|svc| {
            let url = reqwest::Url::parse(svc.metrics_url()?).ok()?;
            let held = gpus
                .get(&svc.name)
                .map(|set| set.iter().map(u32::to_string).collect::<Vec<_>>().join(","));
            let mut labels = BTreeMap::from([
                ("instance".to_string(), daemon.authority.to_string()),
                ("service".to_string(), svc.name.clone()),
                ("server".to_string(), svc.server().as_str().to_string()),
                ("gpu".to_string(), held.unwrap_or_default()),
            ]);
            let target = match mode {
                ScrapeMode::Proxy => {
                    labels.insert("__scheme__".into(), daemon.scheme.into());
                    labels.insert("__metrics_path__".into(), proxy_path(&svc.name));
                    daemon.authority.to_string()
                }
                ScrapeMode::Direct => direct(&url, &mut labels)?,
            };
            Some(TargetGroup {
                targets: vec![target],
                labels,
            })
        })
        .collect()
}

/// The server's own address, with its scheme, path and query as labels.
fn direct(url: &reqwest::Url, labels: &mut BTreeMap<String, String>) -> Option<String> {
    let host = url.host_str()?;
    let port = url.port_or_known_default()?;
    labels.insert("__scheme__".into(), url.scheme().into());
    labels.insert("__metrics_path__".into(), url.path().into());
    for (k, v) in url.query_pairs() {
        labels.insert(format!("__param_{k}"), v.into_owned());
    }
    Some(format!("{host}:{port}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn services(yaml: &str) -> Vec<ServiceConfig> {
        let c = crate::config::Config::from_yaml(yaml).unwrap();
        c.validate().unwrap();
        c.health.services
    }

    const TWO: &str = "health:\n  services:\n\
        \x20   - {name: llm, kind: http, url: 'http://127.0.0.1:8000/health', metrics_url: 'http://127.0.0.1:8000/metrics?format=text', server: vllm}\n\
        \x20   - {name: redis, kind: redis, url: 'redis://127.0.0.1:6379'}\n\
        \x20   - {name: old, kind: http, url: 'http://[::1]:9000/health', progress: {metrics_url: 'https://[::1]:9000/m', preset: llamacpp}}\n";

    #[test]
    fn proxied_targets_point_at_the_daemon_with_the_service_labels() {
        let gpus = BTreeMap::from([("llm".to_string(), BTreeSet::from([3, 0, 1]))]);
        let d = Daemon {
            authority: "node-7:8790",
            scheme: "https",
        };
        let groups = target_groups(&services(TWO), ScrapeMode::Proxy, &d, &gpus);
        assert_eq!(groups.len(), 2, "a service without a metrics URL is not a target");
        assert_eq!(groups[0].targets, ["node-7:8790"]);
        let l = &groups[0].labels;
        assert_eq!(l["service"], "llm");
        assert_eq!(l["server"], "vllm");
        assert_eq!(l["gpu"], "0,1,3");
        assert_eq!(l["__metrics_path__"], "/proxy/llm/metrics");
        assert_eq!(l["__scheme__"], "https");
        assert_eq!(l["instance"], "node-7:8790");
        // The deprecated key still counts, and the preset names the server.
        assert_eq!(groups[1].labels["server"], "llamacpp");
        assert_eq!(groups[1].labels["gpu"], "");
    }

    #[test]
    fn direct_targets_are_the_servers_own_urls() {
        let d = Daemon {
            authority: "x:1",
            scheme: "http",
        };
        let groups = target_groups(&services(TWO), ScrapeMode::Direct, &d, &BTreeMap::new());
        assert_eq!(groups[0].targets, ["127.0.0.1:8000"]);
        assert_eq!(groups[0].labels["instance"], "x:1", "the node, not the server");
        assert_eq!(groups[0].labels["__metrics_path__"], "/metrics");
        assert_eq!(groups[0].labels["__param_format"], "text");
        assert_eq!(groups[1].targets, ["[::1]:9000"]);
        assert_eq!(groups[1].labels["__scheme__"], "https");
        assert_eq!(groups[1].labels["__metrics_path__"], "/m");
    }
}
