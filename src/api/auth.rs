//! Who may call the mutating endpoints (requeue, clear, restore).
//!
//! With `api.token` (or `api.token_file`) set, a request needs
//! `Authorization: Bearer <token>`: none gives 401, a wrong one 403. With no
//! token, only clients whose address is in `api.trusted_networks` (loopback
//! by default) may mutate; others get 403. Read endpoints stay open, as is
//! usual for exporters.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ipnet::IpNet;
use serde_json::json;

use super::{AppError, AppState};
use crate::config::ApiConfig;

/// Why the auth settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("failed to read api.token_file ({path}): {source}")]
    TokenFile {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("invalid value for api.token_file: {0} is empty; allowed: a file holding the token")]
    EmptyTokenFile(std::path::PathBuf),
}

/// The loaded auth settings.
#[derive(Debug, Clone)]
pub struct Auth {
    token: Option<String>,
    trusted: Vec<IpNet>,
}

impl Auth {
    pub fn load(config: &ApiConfig) -> Result<Auth, AuthError> {
        let mut token = (!config.token.trim().is_empty()).then(|| config.token.trim().to_string());
        if let Some(path) = &config.token_file {
            let text = std::fs::read_to_string(path).map_err(|source| AuthError::TokenFile {
                path: path.clone(),
                source,
            })?;
            if text.trim().is_empty() {
                return Err(AuthError::EmptyTokenFile(path.clone()));
            }
            token = Some(text.trim().to_string());
        }
        // Validated in config: every entry is a CIDR or a single address.
        let trusted = config
            .trusted_networks
            .iter()
            .filter_map(|n| {
                n.parse::<IpNet>()
                    .ok()
                    .or_else(|| n.parse::<IpAddr>().ok().map(IpNet::from))
            })
            .collect();
        Ok(Auth { token, trusted })
    }

    /// Decides one request.
    pub fn check(&self, authorization: Option<&str>, peer: Option<IpAddr>) -> Result<(), AppError> {
        if let Some(token) = &self.token {
            let Some(given) = authorization.and_then(|h| h.strip_prefix("Bearer ")) else {
                return Err(AppError::status(
                    StatusCode::UNAUTHORIZED,
                    "this endpoint needs Authorization: Bearer <api.token>",
                    json!({ "scheme": "Bearer" }),
                ));
            };
            if !constant_time_eq(given.trim().as_bytes(), token.as_bytes()) {
                return Err(AppError::status(
                    StatusCode::FORBIDDEN,
                    "the bearer token is not valid",
                    serde_json::Value::Null,
                ));
            }
            return Ok(());
        }
        let peer = peer.map(canonical);
        if peer.is_some_and(|ip| self.trusted.iter().any(|n| n.contains(&ip))) {
            return Ok(());
        }
        Err(AppError::status(
            StatusCode::FORBIDDEN,
            format!(
                "mutating endpoints are open only to api.trusted_networks when no api.token is set; {} is not in them",
                peer.map_or("this client".to_string(), |ip| ip.to_string())
            ),
            json!({ "trusted_networks": self.trusted.iter().map(|n| n.to_string()).collect::<Vec<_>>() }),
        ))
    }
}

/// `::ffff:127.0.0.1` is 127.0.0.1.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Middleware for the mutating routes.
pub async fn require(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let authorization = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
    match state.auth.check(authorization, peer) {
        Ok(()) => next.run(req).await,
        Err(e) => {
            let mut resp = e.into_response();
            if resp.status() == StatusCode::UNAUTHORIZED {
                resp.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
            }
            resp
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(token: &str, nets: &[&str]) -> Auth {
        Auth::load(&ApiConfig {
            token: token.into(),
            token_file: None,
            trusted_networks: nets.iter().map(|s| s.to_string()).collect(),
        })
        .unwrap()
    }

    fn status(r: Result<(), AppError>) -> u16 {
        match r {
            Ok(()) => 200,
            Err(AppError::Status { status, .. }) => status.as_u16(),
            Err(e) => panic!("unexpected {e:?}"),
        }
    }

    #[test]
    fn token_rules() {
        let a = auth("s3cret", &["127.0.0.0/8"]);
        let lo = Some("127.0.0.1".parse().unwrap());
        assert_eq!(status(a.check(None, lo)), 401, "a token is needed even from loopback");
        assert_eq!(status(a.check(Some("Bearer nope"), lo)), 403);
        assert_eq!(status(a.check(Some("Basic s3cret"), lo)), 401);
        assert_eq!(
            status(a.check(Some("Bearer s3cret"), Some("10.1.2.3".parse().unwrap()))),
            200
        );
    }

    #[test]
    fn trusted_networks_without_a_token() {
        let a = auth("", &["127.0.0.0/8", "::1/128", "10.0.0.5"]);
        assert_eq!(status(a.check(None, Some("127.0.0.1".parse().unwrap()))), 200);
        assert_eq!(status(a.check(None, Some("::ffff:127.0.0.1".parse().unwrap()))), 200);
        assert_eq!(status(a.check(None, Some("::1".parse().unwrap()))), 200);
        assert_eq!(status(a.check(None, Some("10.0.0.5".parse().unwrap()))), 200);
        assert_eq!(status(a.check(None, Some("10.0.0.6".parse().unwrap()))), 403);
        assert_eq!(status(a.check(None, None)), 403, "unknown peer is not trusted");
    }
}
