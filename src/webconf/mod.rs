//! `--web.config.file`: TLS, client certificates, bcrypt basic auth and
//! extra response headers, in the prometheus/exporter-toolkit format, so a
//! file written for node_exporter or blackbox_exporter works unchanged.
//!
//! The file is read at startup (a broken file stops startup, naming the
//! key) and checked again for every new connection and request: when it or
//! a file it names changes, it is re-read; a broken file then keeps the
//! last good config and logs an error, as exporter-toolkit does.
//!
//! TLS is rustls (ring provider): TLS 1.2 and 1.3 only. What rustls cannot
//! honour is said once at load: TLS 1.0/1.1 as `min_version` (raised to
//! 1.2), cipher suites it does not implement (CBC, RSA key exchange), and
//! curve P-521. `client_allowed_sans` is checked as the toolkit does.

mod basic_auth;
mod tls;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use rustls::ServerConfig;
use serde::Deserialize;

/// The file, as exporter-toolkit defines it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebConfigFile {
    #[serde(default)]
    pub tls_server_config: Option<TlsServerConfig>,
    #[serde(default)]
    pub http_server_config: Option<HttpServerConfig>,
    /// User name → bcrypt hash.
    #[serde(default)]
    pub basic_auth_users: BTreeMap<String, String>,
    /// The toolkit's server-wide request rate limit.
    #[serde(default)]
    pub rate_limit: Option<RateLimitConfig>,
}

/// `rate_limit`: a token bucket for the whole server, as exporter-toolkit
/// builds it (`rate.NewLimiter(rate.Every(interval), burst)`): a token every
/// `interval`, at most `burst` saved up; a request with no token gets 429.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// A Go duration (`1s`, `100ms`); 0 or absent: no limit.
    pub interval: Option<String>,
    #[serde(default)]
    pub burst: u32,
}

/// The server-wide limiter.
pub type Limiter = governor::DefaultDirectRateLimiter;

/// `tls_server_config`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsServerConfig {
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// The certificate inline (PEM), instead of `cert_file`.
    pub cert: Option<String>,
    /// The key inline (PEM), instead of `key_file`.
    pub key: Option<String>,
    pub client_auth_type: Option<String>,
    pub client_ca_file: Option<PathBuf>,
    pub client_ca: Option<String>,
    pub client_allowed_sans: Option<Vec<String>>,
    pub min_version: Option<String>,
    pub max_version: Option<String>,
    pub cipher_suites: Option<Vec<String>>,
    pub curve_preferences: Option<Vec<String>>,
    pub prefer_server_cipher_suites: Option<bool>,
}

/// `http_server_config`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpServerConfig {
    /// HTTP/2; inferwatch serves HTTP/1.1 only (noted at load when true).
    pub http2: Option<bool>,
    pub headers: Option<BTreeMap<String, String>>,
}

/// The response headers exporter-toolkit lets a file set.
pub const ALLOWED_HEADERS: [&str; 5] = [
    "Content-Security-Policy",
    "X-Frame-Options",
    "X-Content-Type-Options",
    "X-XSS-Protection",
    "Strict-Transport-Security",
];

const CLIENT_AUTH_TYPES: [&str; 4] = [
    "NoClientCert",
    "RequireAnyClientCert",
    "VerifyClientCertIfGiven",
    "RequireAndVerifyClientCert",
];

/// Why a web config file cannot be used; every message names the file and
/// the key.
#[derive(Debug, thiserror::Error)]
pub enum WebConfigError {
    #[error("failed to read web config {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid web config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid web config {path}: {key}: {problem}; allowed: {allowed}")]
    Invalid {
        path: PathBuf,
        key: String,
        problem: String,
        allowed: String,
    },
}

/// What a loaded file means for the server.
#[derive(Default)]
pub struct Loaded {
    /// `None`: plain HTTP.
    pub tls: Option<Arc<ServerConfig>>,
    /// User name → bcrypt hash; empty: no basic auth.
    pub users: HashMap<String, String>,
    pub headers: Vec<(axum::http::HeaderName, axum::http::HeaderValue)>,
    /// `rate_limit`, with what it allows for the 429's text.
    pub limiter: Option<(Arc<Limiter>, String)>,
    /// What rustls cannot honour, said once per load.
    pub ignored: Vec<String>,
    /// Files whose change triggers a reload (the file itself included).
    files: Vec<PathBuf>,
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loaded")
            .field("tls", &self.tls.is_some())
            .field("users", &self.users.keys().collect::<Vec<_>>())
            .field("headers", &self.headers)
            .field("ignored", &self.ignored)
            .finish()
    }
}

/// Reads and checks a web config file.
pub fn load(path: &Path) -> Result<Loaded, WebConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| WebConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let file: WebConfigFile = serde_yaml_ng::from_str(&text).map_err(|e| WebConfigError::Parse {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut b = Builder {
        path,
        base,
        loaded: Loaded {
            files: vec![path.to_owned()],
            ..Default::default()
        },
    };
    b.users(&file.basic_auth_users)?;
    if let Some(http) = &file.http_server_config {
        b.http(http)?;
    }
    if let Some(rl) = &file.rate_limit {
        b.rate_limit(rl)?;
    }
    if let Some(tls) = &file.tls_server_config {
        let config = b.tls(tls)?;
        b.loaded.tls = Some(Arc::new(config));
    }
    Ok(b.loaded)
}

struct Builder<'a> {
    path: &'a Path,
    /// Relative file names are relative to the config file, as in exporter-toolkit.
    base: &'a Path,
    loaded: Loaded,
}

impl Builder<'_> {
    fn invalid(&self, key: &str, problem: impl Into<String>, allowed: impl Into<String>) -> WebConfigError {
        WebConfigError::Invalid {
            path: self.path.to_owned(),
            key: key.to_string(),
            problem: problem.into(),
            allowed: allowed.into(),
        }
    }

    fn rate_limit(&mut self, rl: &RateLimitConfig) -> Result<(), WebConfigError> {
        let Some(text) = &rl.interval else { return Ok(()) };
        let secs = crate::config::parse_duration(text)
            .ok()
            .filter(|s| s.is_finite() && *s >= 0.0)
            .ok_or_else(|| {
                self.invalid(
                    "rate_limit.interval",
                    format!("{text:?} is not a duration"),
                    "a duration such as 1s or 100ms",
                )
            })?;
        if secs == 0.0 {
            return Ok(());
        }
        let burst = std::num::NonZeroU32::new(rl.burst).ok_or_else(|| {
            self.invalid(
                "rate_limit.burst",
                "0 lets no request through",
                "at least 1 (the requests allowed at once)",
            )
        })?;
        let period = std::time::Duration::from_secs_f64(secs);
        let quota = governor::Quota::with_period(period)
            .ok_or_else(|| self.invalid("rate_limit.interval", "too short", "at least 1ns"))?
            .allow_burst(burst);
        let says = format!("one request every {text}, {burst} at once");
        self.loaded.limiter = Some((Arc::new(governor::RateLimiter::direct(quota)), says));
        Ok(())
    }

    fn http(&mut self, http: &HttpServerConfig) -> Result<(), WebConfigError> {
        if http.http2 == Some(true) {
            self.loaded
                .ignored
                .push("http_server_config.http2: inferwatch serves HTTP/1.1 only".into());
        }
        for (name, value) in http.headers.iter().flatten() {
            let key = format!("http_server_config.headers.{name}");
            if !ALLOWED_HEADERS.iter().any(|h| h.eq_ignore_ascii_case(name)) {
                return Err(self.invalid(&key, "this header cannot be set", ALLOWED_HEADERS.join(", ")));
            }
            // The toolkit's own checks (web/tls_config.go, validateHeaderConfig).
            let lower = value.to_ascii_lowercase();
            if name.eq_ignore_ascii_case("X-Content-Type-Options") && lower != "nosniff" {
                return Err(self.invalid(&key, format!("{value:?} is not allowed"), "nosniff"));
            }
            if name.eq_ignore_ascii_case("X-Frame-Options") && lower != "deny" && lower != "sameorigin" {
                return Err(self.invalid(&key, format!("{value:?} is not allowed"), "deny or sameorigin"));
            }
            let value = axum::http::HeaderValue::from_str(value)
                .map_err(|_| self.invalid(&key, "not a valid header value", "visible ASCII text"))?;
            self.loaded.headers.push((
                axum::http::HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| self.invalid(&key, "not a header name", ALLOWED_HEADERS.join(", ")))?,
                value,
            ));
        }
        Ok(())
    }

    fn file(&mut self, key: &str, p: &Path) -> Result<Vec<u8>, WebConfigError> {
        let full = self.base.join(p);
        let bytes = std::fs::read(&full)
            .map_err(|e| self.invalid(key, format!("{}: {e}", full.display()), "a readable PEM file"))?;
        self.loaded.files.push(full);
        Ok(bytes)
    }

    /// PEM from `file_key` (a path) or `inline_key` (the text), exactly one.
    fn pem(
        &mut self,
        file_key: &str,
        file: &Option<PathBuf>,
        inline_key: &str,
        inline: &Option<String>,
    ) -> Result<Option<Vec<u8>>, WebConfigError> {
        match (file, inline) {
            (Some(_), Some(_)) => Err(self.invalid(
                file_key,
                format!("both {file_key} and {inline_key} are set"),
                "one of them",
            )),
            (Some(p), None) => self.file(file_key, p).map(Some),
            (None, Some(text)) => Ok(Some(text.as_bytes().to_vec())),
            (None, None) => Ok(None),
        }
    }
}

/// A file's identity for change detection.
type Stamp = Vec<Option<(SystemTime, u64, u64)>>;

fn stamp(files: &[PathBuf]) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    files
        .iter()
        .map(|f| {
            std::fs::metadata(f)
                .ok()
                .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len(), m.ino()))
        })
        .collect()
}

/// Says once per load what rustls cannot honour.
fn warn_ignored(path: &Path, loaded: &Loaded) {
    for i in &loaded.ignored {
        tracing::warn!(file = %path.display(), "Web config setting not honoured: {i}.");
    }
}

/// The web config in force, re-read when its files change.
pub struct WebRuntime {
    /// The file in force; a reload may name another, or none.
    path: RwLock<Option<PathBuf>>,
    current: RwLock<Arc<Loaded>>,
    stamp: Mutex<Stamp>,
    /// Verified `(user, password)` pairs, keyed by a SHA-256 of both, so
    /// bcrypt (tens of ms) runs once per credential, not per request.
    verified: Mutex<std::collections::HashSet<[u8; 32]>>,
}

impl WebRuntime {
    /// Plain HTTP, no auth: no file given.
    pub fn none() -> Arc<WebRuntime> {
        Arc::new(WebRuntime {
            path: RwLock::new(None),
            current: RwLock::new(Arc::new(Loaded::default())),
            stamp: Mutex::new(Vec::new()),
            verified: Mutex::new(Default::default()),
        })
    }

    /// Loads `path`; an error stops startup.
    pub fn load(path: &Path) -> Result<Arc<WebRuntime>, WebConfigError> {
        let loaded = load(path)?;
        warn_ignored(path, &loaded);
        let s = stamp(&loaded.files);
        Ok(Arc::new(WebRuntime {
            path: RwLock::new(Some(path.to_owned())),
            current: RwLock::new(Arc::new(loaded)),
            stamp: Mutex::new(s),
            verified: Mutex::new(Default::default()),
        }))
    }

    /// The config in force, re-read first when one of its files changed; a
    /// broken file keeps the last good one (logged).
    pub fn current(&self) -> Arc<Loaded> {
        let path = self.path.read().unwrap_or_else(|e| e.into_inner()).clone();
        let Some(path) = &path else {
            return self.current.read().unwrap_or_else(|e| e.into_inner()).clone();
        };
        let mut last = self.stamp.lock().unwrap_or_else(|e| e.into_inner());
        let loaded = self.current.read().unwrap_or_else(|e| e.into_inner()).clone();
        let now = stamp(&loaded.files);
        if now == *last {
            return loaded;
        }
        *last = now;
        match load(path) {
            Ok(fresh) => {
                tracing::info!(file = %path.display(), "Web config reloaded.");
                warn_ignored(path, &fresh);
                *last = stamp(&fresh.files);
                let fresh = Arc::new(fresh);
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = fresh.clone();
                self.verified.lock().unwrap_or_else(|e| e.into_inner()).clear();
                fresh
            }
            Err(e) => {
                tracing::error!(error = %e, "Web config could not be reloaded; keeping the last good one.");
                loaded
            }
        }
    }

    /// Puts in force what a reload read: `path`'s config, already loaded
    /// (and so checked) by the reloader, or plain HTTP with no file.
    pub fn install(&self, path: Option<&Path>, loaded: Option<Loaded>) {
        let loaded = loaded.unwrap_or_default();
        if let Some(path) = path {
            warn_ignored(path, &loaded);
        }
        let mut last = self.stamp.lock().unwrap_or_else(|e| e.into_inner());
        *last = stamp(&loaded.files);
        *self.path.write().unwrap_or_else(|e| e.into_inner()) = path.map(Path::to_owned);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(loaded);
        self.verified.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Whether `user:password` matches a `basic_auth_users` entry of `loaded`.
    pub fn check_password(&self, loaded: &Loaded, user: &str, password: &str) -> bool {
        let Some(hash) = loaded.users.get(user) else {
            return false;
        };
        use sha2::Digest;
        let key: [u8; 32] = sha2::Sha256::new()
            .chain_update(user.as_bytes())
            .chain_update([0u8])
            .chain_update(password.as_bytes())
            .chain_update([0u8])
            .chain_update(hash.as_bytes())
            .finalize()
            .into();
        if self.verified.lock().unwrap_or_else(|e| e.into_inner()).contains(&key) {
            return true;
        }
        let ok = bcrypt::verify(password, hash).unwrap_or(false);
        if ok {
            let mut v = self.verified.lock().unwrap_or_else(|e| e.into_inner());
            // Bounded: a stream of distinct good credentials cannot grow it.
            if v.len() >= 1024 {
                v.clear();
            }
            v.insert(key);
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn errors_name_the_key() {
        let d = tempfile::tempdir().unwrap();
        let cases = [
            ("basic_auth_users:\n  alice: plain\n", "basic_auth_users.alice"),
            (
                "http_server_config:\n  headers:\n    Server: x\n",
                "http_server_config.headers.Server",
            ),
            (
                "tls_server_config:\n  cert_file: nope.pem\n  key_file: nope.key\n",
                "tls_server_config.cert_file",
            ),
            ("tls_server_config:\n  cert: x\n", "tls_server_config"),
            ("nonsense: 1\n", "unknown field `nonsense`"),
            (
                "http_server_config:\n  headers:\n    X-Content-Type-Options: sniff\n",
                "http_server_config.headers.X-Content-Type-Options",
            ),
            (
                "http_server_config:\n  headers:\n    x-frame-options: allow-from x\n",
                "allowed: deny or sameorigin",
            ),
        ];
        for (text, key) in cases {
            let p = write(d.path(), "web.yml", text);
            let e = load(&p).unwrap_err().to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
    }

    #[test]
    fn allowed_headers_and_bcrypt_users_load() {
        let d = tempfile::tempdir().unwrap();
        let hash = bcrypt::hash("pw", 4).unwrap();
        let p = write(
            d.path(),
            "web.yml",
            &format!(
                "basic_auth_users:\n  alice: '{hash}'\nhttp_server_config:\n  headers:\n    x-frame-options: deny\n"
            ),
        );
        let rt = WebRuntime::load(&p).unwrap();
        let l = rt.current();
        assert!(l.tls.is_none());
        assert_eq!(l.headers[0].0.as_str(), "x-frame-options");
        assert!(rt.check_password(&l, "alice", "pw"));
        assert!(rt.check_password(&l, "alice", "pw"), "cached");
        assert!(!rt.check_password(&l, "alice", "wrong"));
        assert!(!rt.check_password(&l, "bob", "pw"));
    }
}
