//! `api`: who may call the writing endpoints (tokens, trusted networks).

use std::path::PathBuf;

use serde::Deserialize;

use super::{invalid, ConfigError};

/// Authorisation of the mutating endpoints (requeue, clear, restore).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Bearer token; when set (here or in `token_file`), it is required.
    pub token: String,
    /// File holding the token (whitespace trimmed), for secrets.
    pub token_file: Option<PathBuf>,
    /// With no token, only these networks may mutate (CIDR).
    pub trusted_networks: Vec<String>,
    /// A second token that may only post pipeline events, for workers.
    pub ingest_token: String,
    /// File holding the ingest token (wins over `ingest_token`).
    pub ingest_token_file: Option<PathBuf>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            token: String::new(),
            token_file: None,
            trusted_networks: vec!["127.0.0.0/8".into(), "::1/128".into()],
            ingest_token: String::new(),
            ingest_token_file: None,
        }
    }
}

impl ApiConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (i, net) in self.trusted_networks.iter().enumerate() {
            if net.parse::<ipnet::IpNet>().is_err() && net.parse::<std::net::IpAddr>().is_err() {
                return Err(invalid(
                    &format!("api.trusted_networks[{i}]"),
                    net,
                    "not a network",
                    "CIDR like 127.0.0.0/8 or ::1/128, or a single address",
                ));
            }
        }
        Ok(())
    }
}
