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
//! curve P-521. `client_allowed_sans` is refused rather than ignored: a
//! file that relies on it would otherwise let other clients in.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme};
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
}

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

    fn users(&mut self, users: &BTreeMap<String, String>) -> Result<(), WebConfigError> {
        for (user, hash) in users {
            if user.is_empty() || user.contains(':') {
                return Err(self.invalid(
                    "basic_auth_users",
                    format!("user name {user:?}"),
                    "a non-empty name without ':'",
                ));
            }
            if hash.parse::<bcrypt::HashParts>().is_err() {
                return Err(self.invalid(
                    &format!("basic_auth_users.{user}"),
                    "not a bcrypt hash",
                    "a bcrypt hash ($2a$, $2b$ or $2y$), e.g. from htpasswd -nBC 10 \"\" or python3 -c 'import bcrypt; print(bcrypt.hashpw(b\"pw\", bcrypt.gensalt()).decode())'",
                ));
            }
            self.loaded.users.insert(user.clone(), hash.clone());
        }
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

    fn tls(&mut self, t: &TlsServerConfig) -> Result<ServerConfig, WebConfigError> {
        let cert = self.pem(
            "tls_server_config.cert_file",
            &t.cert_file,
            "tls_server_config.cert",
            &t.cert,
        )?;
        let key = self.pem(
            "tls_server_config.key_file",
            &t.key_file,
            "tls_server_config.key",
            &t.key,
        )?;
        let (Some(cert), Some(key)) = (cert, key) else {
            return Err(self.invalid(
                "tls_server_config",
                "a certificate and a key are both required",
                "cert_file (or cert) and key_file (or key)",
            ));
        };
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert)
            .collect::<Result<_, _>>()
            .map_err(|e| {
                self.invalid(
                    "tls_server_config.cert_file",
                    format!("not PEM certificates: {e}"),
                    "a PEM certificate chain",
                )
            })?;
        if chain.is_empty() {
            return Err(self.invalid(
                "tls_server_config.cert_file",
                "no certificate in it",
                "a PEM certificate chain",
            ));
        }
        let key = PrivateKeyDer::from_pem_slice(&key).map_err(|e| {
            self.invalid(
                "tls_server_config.key_file",
                format!("no private key: {e}"),
                "a PEM private key (PKCS#8, PKCS#1 or SEC1)",
            )
        })?;
        if t.client_allowed_sans.is_some() {
            return Err(self.invalid(
                "tls_server_config.client_allowed_sans",
                "not supported by inferwatch",
                "leave it out and restrict clients with client_ca_file",
            ));
        }
        let provider = Arc::new(self.provider(t)?);
        let versions = self.versions(t)?;
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&versions)
            .map_err(|e| {
                self.invalid(
                    "tls_server_config.cipher_suites",
                    e.to_string(),
                    "suites that fit the TLS versions",
                )
            })?;
        let verifier = self.client_verifier(t, provider)?;
        let mut config = builder
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(|e| {
                self.invalid(
                    "tls_server_config.key_file",
                    format!("does not fit the certificate: {e}"),
                    "the key of cert_file",
                )
            })?;
        config.ignore_client_order = t.prefer_server_cipher_suites.unwrap_or(false);
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }

    fn versions(
        &mut self,
        t: &TlsServerConfig,
    ) -> Result<Vec<&'static rustls::SupportedProtocolVersion>, WebConfigError> {
        let rank = |key: &str, v: &Option<String>, default: u8, this: &mut Self| -> Result<u8, WebConfigError> {
            match v.as_deref() {
                None => Ok(default),
                Some("TLS10") => Ok(10),
                Some("TLS11") => Ok(11),
                Some("TLS12") => Ok(12),
                Some("TLS13") => Ok(13),
                Some(other) => Err(this.invalid(key, format!("{other:?}"), "TLS10, TLS11, TLS12, TLS13")),
            }
        };
        let min = rank("tls_server_config.min_version", &t.min_version, 12, self)?;
        let max = rank("tls_server_config.max_version", &t.max_version, 13, self)?;
        if min > max {
            return Err(self.invalid(
                "tls_server_config.min_version",
                "above max_version",
                "a min_version at or below max_version",
            ));
        }
        if max < 12 {
            return Err(self.invalid(
                "tls_server_config.max_version",
                "below TLS12",
                "TLS12 or TLS13 (rustls has no TLS 1.0/1.1)",
            ));
        }
        if min < 12 {
            self.loaded
                .ignored
                .push("tls_server_config.min_version: rustls has no TLS 1.0/1.1; TLS 1.2 is the minimum".into());
        }
        let mut v = Vec::new();
        if min <= 12 {
            v.push(&rustls::version::TLS12);
        }
        if max >= 13 {
            v.push(&rustls::version::TLS13);
        }
        Ok(v)
    }

    /// ring's suites and groups, narrowed by `cipher_suites` (TLS 1.2 only,
    /// as in Go) and `curve_preferences`.
    fn provider(&mut self, t: &TlsServerConfig) -> Result<rustls::crypto::CryptoProvider, WebConfigError> {
        let mut p = rustls::crypto::ring::default_provider();
        if let Some(wanted) = &t.cipher_suites {
            let mut kept = Vec::new();
            for name in wanted {
                let found = p.cipher_suites.iter().find(|s| {
                    let n = format!("{:?}", s.suite());
                    n == *name || n == format!("{name}_SHA256")
                });
                match found {
                    Some(s) => kept.push(*s),
                    None => self.loaded.ignored.push(format!(
                        "tls_server_config.cipher_suites: {name} is not implemented by rustls"
                    )),
                }
            }
            if kept.is_empty() {
                return Err(self.invalid(
                    "tls_server_config.cipher_suites",
                    "none of them is implemented by rustls",
                    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384, TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
                ));
            }
            // TLS 1.3 suites are not configurable in Go either.
            p.cipher_suites
                .retain(|s| s.version() == &rustls::version::TLS13 || kept.iter().any(|k| k.suite() == s.suite()));
        }
        if let Some(curves) = &t.curve_preferences {
            let mut groups = Vec::new();
            for c in curves {
                let want = match c.as_str() {
                    "X25519" => Some(rustls::NamedGroup::X25519),
                    "CurveP256" => Some(rustls::NamedGroup::secp256r1),
                    "CurveP384" => Some(rustls::NamedGroup::secp384r1),
                    "CurveP521" => None,
                    other => {
                        return Err(self.invalid(
                            "tls_server_config.curve_preferences",
                            format!("{other:?}"),
                            "X25519, CurveP256, CurveP384, CurveP521",
                        ))
                    }
                };
                match want.and_then(|w| p.kx_groups.iter().find(|g| g.name() == w)) {
                    Some(g) => groups.push(*g),
                    None => self.loaded.ignored.push(format!(
                        "tls_server_config.curve_preferences: {c} is not implemented by rustls (ring)"
                    )),
                }
            }
            if groups.is_empty() {
                return Err(self.invalid(
                    "tls_server_config.curve_preferences",
                    "none is implemented",
                    "X25519, CurveP256, CurveP384",
                ));
            }
            p.kx_groups = groups;
        }
        Ok(p)
    }

    fn client_verifier(
        &mut self,
        t: &TlsServerConfig,
        provider: Arc<rustls::crypto::CryptoProvider>,
    ) -> Result<Arc<dyn ClientCertVerifier>, WebConfigError> {
        let kind = t.client_auth_type.as_deref().unwrap_or("NoClientCert");
        if !CLIENT_AUTH_TYPES.contains(&kind) {
            return Err(self.invalid(
                "tls_server_config.client_auth_type",
                format!("{kind:?}"),
                CLIENT_AUTH_TYPES.join(", "),
            ));
        }
        let ca = self.pem(
            "tls_server_config.client_ca_file",
            &t.client_ca_file,
            "tls_server_config.client_ca",
            &t.client_ca,
        )?;
        let roots = match &ca {
            Some(pem) => {
                let mut roots = RootCertStore::empty();
                for c in CertificateDer::pem_slice_iter(pem) {
                    let c = c.map_err(|e| {
                        self.invalid(
                            "tls_server_config.client_ca_file",
                            format!("not PEM: {e}"),
                            "PEM CA certificates",
                        )
                    })?;
                    roots.add(c).map_err(|e| {
                        self.invalid("tls_server_config.client_ca_file", e.to_string(), "PEM CA certificates")
                    })?;
                }
                Some(Arc::new(roots))
            }
            None => None,
        };
        let need_ca = |this: &Self| {
            this.invalid(
                "tls_server_config.client_ca_file",
                format!("required with client_auth_type {kind}"),
                "a PEM file of the CAs that sign client certificates",
            )
        };
        let web_pki = |roots: Arc<RootCertStore>, optional: bool, this: &Self| {
            let b = WebPkiClientVerifier::builder_with_provider(roots, provider.clone());
            let b = if optional { b.allow_unauthenticated() } else { b };
            b.build()
                .map_err(|e| this.invalid("tls_server_config.client_ca_file", e.to_string(), "PEM CA certificates"))
        };
        Ok(match kind {
            "NoClientCert" => WebPkiClientVerifier::no_client_auth(),
            "RequireAnyClientCert" => Arc::new(AnyClientCert { provider }),
            "VerifyClientCertIfGiven" => web_pki(roots.ok_or_else(|| need_ca(self))?, true, self)?,
            _ => web_pki(roots.ok_or_else(|| need_ca(self))?, false, self)?,
        })
    }
}

/// `RequireAnyClientCert`: a client must present a certificate and prove it
/// holds its key, but the certificate is not checked against any CA.
#[derive(Debug)]
struct AnyClientCert {
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ClientCertVerifier for AnyClientCert {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
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
    path: Option<PathBuf>,
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
            path: None,
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
            path: Some(path.to_owned()),
            current: RwLock::new(Arc::new(loaded)),
            stamp: Mutex::new(s),
            verified: Mutex::new(Default::default()),
        }))
    }

    /// The config in force, re-read first when one of its files changed; a
    /// broken file keeps the last good one (logged).
    pub fn current(&self) -> Arc<Loaded> {
        let Some(path) = &self.path else {
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
