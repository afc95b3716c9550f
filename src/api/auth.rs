//! Who may call the mutating endpoints (requeue, clear, restore).
//!
//! With `api.token` (or `api.token_file`) set, a request needs
//! `Authorization: Bearer <token>` (or `X-Inferwatch-Token: <token>`, for
//! clients whose `Authorization` carries basic auth): none or an unknown one
//! gives 401 (RFC 6750 `invalid_token`), the ingest token on a DLQ move 403
//! (`insufficient_scope`). With no
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
    #[error("failed to read {key} ({path}): {source}")]
    TokenFile {
        key: &'static str,
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("invalid value for {key}: {path} is empty; allowed: a file holding the token")]
    EmptyTokenFile {
        key: &'static str,
        path: std::path::PathBuf,
    },
    #[error("invalid value for {key}: {path} has mode {mode:04o}, readable by group or others; allowed: a file only its owner can read (chmod 600)")]
    TokenFileMode {
        key: &'static str,
        path: std::path::PathBuf,
        mode: u32,
    },
}

/// The loaded auth settings.
#[derive(Debug, Clone)]
pub struct Auth {
    token: Option<String>,
    ingest_token: Option<String>,
    trusted: Vec<IpNet>,
}

/// Which rule a route follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// DLQ moves: `api.token`, or trusted networks without one.
    Admin,
    /// Pipeline ingest: `api.token` or `api.ingest_token`, or trusted
    /// networks when neither is set.
    Ingest,
}

/// A token from `inline` or, winning over it, from `file` (which only its
/// owner may read).
fn load_token(inline: &str, file: Option<&std::path::Path>, key: &'static str) -> Result<Option<String>, AuthError> {
    use crate::config::SecretFileError;
    let Some(path) = file else {
        return Ok((!inline.trim().is_empty()).then(|| inline.trim().to_string()));
    };
    let path_buf = path.to_path_buf();
    crate::config::read_secret_file(path).map(Some).map_err(|e| match e {
        SecretFileError::Read(source) => AuthError::TokenFile {
            key,
            path: path_buf,
            source,
        },
        SecretFileError::Mode(mode) => AuthError::TokenFileMode {
            key,
            path: path_buf,
            mode,
        },
        SecretFileError::Empty => AuthError::EmptyTokenFile { key, path: path_buf },
    })
}

impl Auth {
    pub fn load(config: &ApiConfig) -> Result<Auth, AuthError> {
        let token = load_token(&config.token, config.token_file.as_deref(), "api.token_file")?;
        let ingest_token = load_token(
            &config.ingest_token,
            config.ingest_token_file.as_deref(),
            "api.ingest_token_file",
        )?;
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
        Ok(Auth {
            token,
            ingest_token,
            trusted,
        })
    }

    /// True when writes need a token.
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// Decides one admin request.
    pub fn check(&self, authorization: Option<&str>, peer: Option<IpAddr>) -> Result<(), AppError> {
        self.check_scope(Scope::Admin, authorization, peer)
    }

    /// Decides one request for `scope`.
    pub fn check_scope(&self, scope: Scope, authorization: Option<&str>, peer: Option<IpAddr>) -> Result<(), AppError> {
        let accepted: Vec<&String> = match scope {
            Scope::Admin => self.token.iter().collect(),
            Scope::Ingest => self.token.iter().chain(self.ingest_token.iter()).collect(),
        };
        if !accepted.is_empty() {
            let Some(given) = authorization.and_then(bearer) else {
                return Err(AppError::status(
                    StatusCode::UNAUTHORIZED,
                    "this endpoint needs Authorization: Bearer <token> (or X-Inferwatch-Token: <token>)",
                    json!({ "scheme": "Bearer" }),
                ));
            };
            // Every candidate is compared, so timing does not say which matched.
            let ok = accepted
                .iter()
                .fold(false, |ok, t| constant_time_eq(given.as_bytes(), t.as_bytes()) | ok);
            if !ok {
                // RFC 6750: an unknown token is 401 (invalid_token); a good
                // token of another scope (the ingest token on a DLQ move) is
                // 403 (insufficient_scope).
                let known = self
                    .token
                    .iter()
                    .chain(self.ingest_token.iter())
                    .fold(false, |ok, t| constant_time_eq(given.as_bytes(), t.as_bytes()) | ok);
                return Err(if known {
                    AppError::status(
                        StatusCode::FORBIDDEN,
                        "this token is not allowed on this endpoint (the ingest token cannot move DLQ jobs)",
                        json!({ "error": "insufficient_scope" }),
                    )
                } else {
                    AppError::status(
                        StatusCode::UNAUTHORIZED,
                        "the bearer token is not valid",
                        json!({ "scheme": "Bearer", "error": "invalid_token" }),
                    )
                });
            }
            return Ok(());
        }
        let peer = peer.map(canonical);
        if peer.is_some_and(|ip| self.trusted.iter().any(|n| n.contains(&ip))) {
            return Ok(());
        }
        Err(AppError::status(
            StatusCode::FORBIDDEN,
            "writes are open only to api.trusted_networks when no token is set, and this client is not in them",
            json!({ "hint": "set api.token and send Authorization: Bearer <token>" }),
        ))
    }
}

/// The credentials of a `Bearer` authorization; the scheme is
/// case-insensitive (RFC 7235).
fn bearer(header: &str) -> Option<&str> {
    let header = header.trim_start();
    let (scheme, rest) = header.split_once([' ', '\t'])?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
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

/// Middleware for the DLQ moves.
pub async fn require(State(state): State<AppState>, req: Request, next: Next) -> Response {
    require_scope(Scope::Admin, state, req, next).await
}

/// Middleware for pipeline ingest.
pub async fn require_ingest(State(state): State<AppState>, req: Request, next: Next) -> Response {
    require_scope(Scope::Ingest, state, req, next).await
}

/// The header that carries the token when `Authorization` carries basic
/// auth (`--web.config.file` with `basic_auth_users`).
pub const TOKEN_HEADER: &str = "x-inferwatch-token";

/// Who made a request, for the DLQ audit trail: `token:<first 8 hex of the
/// token's SHA-256>`, `basic:<user>` (web config basic auth), or
/// `ip:<address>`.
#[derive(Debug, Clone)]
pub struct Actor(pub String);

impl Actor {
    fn of(authorization: Option<&str>, basic: Option<&str>, peer: Option<IpAddr>) -> Actor {
        use sha2::{Digest, Sha256};
        if let Some(token) = authorization.and_then(bearer) {
            let digest = Sha256::digest(token.as_bytes());
            let hex: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
            return Actor(format!("token:{hex}"));
        }
        if let Some(user) = basic {
            return Actor(format!("basic:{user}"));
        }
        Actor(format!(
            "ip:{}",
            peer.map(canonical).map(|p| p.to_string()).unwrap_or_default()
        ))
    }
}

/// The user of a `Basic` authorization header.
fn basic_user(header: Option<&str>) -> Option<String> {
    use base64::Engine;
    let header = header?.trim_start();
    let (scheme, rest) = header.split_once([' ', '\t'])?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(rest.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    text.split_once(':').map(|(u, _)| u.to_string())
}

async fn require_scope(scope: Scope, state: AppState, mut req: Request, next: Next) -> Response {
    let authorization = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let from_header = req
        .headers()
        .get(TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(|t| format!("Bearer {t}"));
    // A bearer token in Authorization wins; else the token header.
    let authorization = match (authorization, &from_header) {
        (Some(a), _) if bearer(a).is_some() => Some(a),
        (_, Some(h)) => Some(h.as_str()),
        (a, None) => a,
    };
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
    match state.auth.check_scope(scope, authorization, peer) {
        Ok(()) => {
            let raw = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
            let basic = (!state.web.current().users.is_empty())
                .then(|| basic_user(raw))
                .flatten();
            let actor = Actor::of(authorization, basic.as_deref(), peer);
            req.extensions_mut().insert(actor);
            next.run(req).await
        }
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
            trusted_networks: nets.iter().map(|s| s.to_string()).collect(),
            ..ApiConfig::default()
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
        assert_eq!(
            status(a.check(Some("Bearer nope"), lo)),
            401,
            "an unknown token is invalid_token"
        );
        assert_eq!(status(a.check(Some("Basic s3cret"), lo)), 401);
        assert_eq!(
            status(a.check(Some("bearer s3cret"), lo)),
            200,
            "the scheme is case-insensitive"
        );
        assert_eq!(status(a.check(Some("BEARER  s3cret"), lo)), 200);
        assert_eq!(status(a.check(Some("Bearers3cret"), lo)), 401);
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
        let Err(e) = a.check(None, Some("10.0.0.6".parse().unwrap())) else {
            panic!()
        };
        let text = format!("{e} {:?}", e);
        assert!(!text.contains("127.0.0.0/8") && !text.contains("10.0.0.5"), "{text}");
    }

    #[test]
    fn ingest_takes_either_token_and_admin_only_its_own() {
        let a = Auth::load(&ApiConfig {
            token: "admin".into(),
            ingest_token: "worker".into(),
            ..ApiConfig::default()
        })
        .unwrap();
        let lo = Some("127.0.0.1".parse().unwrap());
        assert_eq!(status(a.check_scope(Scope::Ingest, Some("Bearer worker"), lo)), 200);
        assert_eq!(status(a.check_scope(Scope::Ingest, Some("Bearer admin"), lo)), 200);
        assert_eq!(status(a.check_scope(Scope::Ingest, None, lo)), 401);
        assert_eq!(status(a.check_scope(Scope::Admin, Some("Bearer worker"), lo)), 403);
        let only_ingest = Auth::load(&ApiConfig {
            ingest_token: "worker".into(),
            ..ApiConfig::default()
        })
        .unwrap();
        assert_eq!(status(only_ingest.check_scope(Scope::Ingest, None, lo)), 401);
        assert_eq!(status(only_ingest.check_scope(Scope::Admin, None, lo)), 200);
    }

    #[test]
    fn token_files_readable_by_others_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cret\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let cfg = ApiConfig {
            token_file: Some(path.clone()),
            ..ApiConfig::default()
        };
        let e = Auth::load(&cfg).unwrap_err().to_string();
        assert!(
            e.contains("api.token_file") && e.contains("0644") && e.contains("token"),
            "{e}"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(Auth::load(&cfg).unwrap().has_token());
    }
}
