//! `inference:` how Prometheus reaches each inference server that
//! `/api/sd/inference` lists, and `ServerKind`, what a service's `server:`
//! names.

use super::Reload;
use serde::{Deserialize, Serialize};

/// What serves a service's inference: the `server` label of its scraped
/// series, and the key the recording rules and SLO generator read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ServerKind {
    Vllm,
    Sglang,
    Tgi,
    Triton,
    Llamacpp,
    Mlserver,
    Other,
}

impl ServerKind {
    /// Every kind, in the order the docs list them.
    pub const ALL: [ServerKind; 7] = [
        ServerKind::Vllm,
        ServerKind::Sglang,
        ServerKind::Tgi,
        ServerKind::Triton,
        ServerKind::Llamacpp,
        ServerKind::Mlserver,
        ServerKind::Other,
    ];

    /// The config spelling and the `server` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ServerKind::Vllm => "vllm",
            ServerKind::Sglang => "sglang",
            ServerKind::Tgi => "tgi",
            ServerKind::Triton => "triton",
            ServerKind::Llamacpp => "llamacpp",
            ServerKind::Mlserver => "mlserver",
            ServerKind::Other => "other",
        }
    }

    /// The kind a `progress.preset` names (the presets are server names).
    pub fn from_preset(preset: &str) -> Option<ServerKind> {
        ServerKind::ALL.into_iter().find(|k| k.as_str() == preset)
    }
}

/// The `inference` section.
#[derive(Reload, Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InferenceConfig {
    /// `proxy` (default): the discovered targets point at this daemon's
    /// `/proxy/{service}/metrics`, behind its TLS, auth and rate limit.
    /// `direct`: they list each server's own `metrics_url`.
    #[reload(live)]
    pub scrape: ScrapeMode,
}

/// How the discovered inference targets are reached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScrapeMode {
    #[default]
    Proxy,
    Direct,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_progress_preset_names_a_server_kind() {
        for (preset, _, _) in super::super::health::PRESETS {
            assert!(ServerKind::from_preset(preset).is_some(), "{preset}");
        }
        assert_eq!(ServerKind::from_preset("other"), Some(ServerKind::Other));
        assert_eq!(ServerKind::from_preset("nginx"), None);
    }

    #[test]
    fn the_label_is_the_config_spelling() {
        for k in ServerKind::ALL {
            let parsed: ServerKind = serde_yaml_ng::from_str(k.as_str()).unwrap();
            assert_eq!(parsed, k);
        }
    }
}
