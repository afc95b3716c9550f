//! The web config's `tls_server_config`: certificate and key, versions,
//! cipher suites and curves (what rustls with ring can honour, the rest
//! said once), and the client-certificate policies.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme};

use super::*;

impl Builder<'_> {
    pub(super) fn tls(&mut self, t: &TlsServerConfig) -> Result<ServerConfig, WebConfigError> {
        let (chain, key) = self.certificate_and_key(t)?;
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
        let mut verifier = self.client_verifier(t, provider)?;
        if let Some(sans) = t.client_allowed_sans.as_ref().filter(|s| !s.is_empty()) {
            let kind = t.client_auth_type.as_deref().unwrap_or("NoClientCert");
            if !matches!(kind, "VerifyClientCertIfGiven" | "RequireAndVerifyClientCert") {
                return Err(self.invalid(
                    "tls_server_config.client_allowed_sans",
                    format!("no verified client certificate to check with client_auth_type {kind}"),
                    "client_auth_type VerifyClientCertIfGiven or RequireAndVerifyClientCert",
                ));
            }
            verifier = Arc::new(ClientCheck {
                inner: verifier,
                pinned: Vec::new(),
                allowed: Some(sans.clone()),
            });
        }
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

    /// The certificate chain and its key, from files or inline PEM.
    fn certificate_and_key(
        &mut self,
        t: &TlsServerConfig,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), WebConfigError> {
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
        Ok((chain, key))
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
            let suites = p.cipher_suites.clone();
            let kept = self.implemented(
                "tls_server_config.cipher_suites",
                wanted,
                |name| {
                    Ok(suites.iter().copied().find(|s| {
                        let n = format!("{:?}", s.suite());
                        n == name || n == format!("{name}_SHA256")
                    }))
                },
                (
                    "none of them is implemented by rustls",
                    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384, TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
                ),
            )?;
            // TLS 1.3 suites are not configurable in Go either.
            p.cipher_suites
                .retain(|s| s.version() == &rustls::version::TLS13 || kept.iter().any(|k| k.suite() == s.suite()));
        }
        if let Some(curves) = &t.curve_preferences {
            let groups = p.kx_groups.clone();
            p.kx_groups = self.implemented(
                "tls_server_config.curve_preferences",
                curves,
                |name| {
                    let want = match name {
                        "X25519" => rustls::NamedGroup::X25519,
                        "CurveP256" => rustls::NamedGroup::secp256r1,
                        "CurveP384" => rustls::NamedGroup::secp384r1,
                        // Known to Go; ring has no P-521 key exchange.
                        "CurveP521" => return Ok(None),
                        _ => return Err("X25519, CurveP256, CurveP384, CurveP521"),
                    };
                    Ok(groups.iter().copied().find(|g| g.name() == want))
                },
                ("none is implemented", "X25519, CurveP256, CurveP384"),
            )?;
        }
        Ok(p)
    }

    /// The entries of a toolkit list that rustls implements: the others are
    /// named in `ignored`; none implemented is an error, and a name the
    /// toolkit does not know (`lookup` gives what it knows) is one too.
    fn implemented<T>(
        &mut self,
        key: &str,
        names: &[String],
        lookup: impl Fn(&str) -> Result<Option<T>, &'static str>,
        (none, implemented): (&str, &str),
    ) -> Result<Vec<T>, WebConfigError> {
        let mut kept = Vec::new();
        for name in names {
            match lookup(name) {
                Ok(Some(found)) => kept.push(found),
                Ok(None) => self
                    .loaded
                    .ignored
                    .push(format!("{key}: {name} is not implemented by rustls (ring)")),
                Err(known) => return Err(self.invalid(key, format!("{name:?}"), known)),
            }
        }
        if kept.is_empty() {
            return Err(self.invalid(key, none, implemented));
        }
        Ok(kept)
    }

    /// The client CAs of `tls_server_config.client_ca_file`.
    fn client_roots(&self, pem: &[u8]) -> Result<RootCertStore, WebConfigError> {
        let mut roots = RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(pem) {
            let c = c.map_err(|e| {
                self.invalid(
                    "tls_server_config.client_ca_file",
                    format!("not PEM: {e}"),
                    "PEM CA certificates",
                )
            })?;
            roots
                .add(c)
                .map_err(|e| self.invalid("tls_server_config.client_ca_file", e.to_string(), "PEM CA certificates"))?;
        }
        Ok(roots)
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
        // The toolkit refuses CAs with no policy to use them
        // ("Client CA's have been configured without a Client Auth Policy").
        if ca.is_some() && kind == "NoClientCert" {
            return Err(self.invalid(
                "tls_server_config.client_ca_file",
                "client CAs configured without a client auth policy",
                "a client_auth_type of VerifyClientCertIfGiven or RequireAndVerifyClientCert with it, or no client_ca_file",
            ));
        }
        // Without a CA file, the toolkit verifies client certificates against
        // the system's roots (Go's nil ClientCAs); so does this.
        let roots = match &ca {
            Some(pem) => Some(Arc::new(self.client_roots(pem)?)),
            None if kind != "NoClientCert" && kind != "RequireAnyClientCert" => Some(Arc::new(system_roots())),
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
        let verifier = match kind {
            "NoClientCert" => return Ok(WebPkiClientVerifier::no_client_auth()),
            "RequireAnyClientCert" => return Ok(Arc::new(AnyClientCert { provider })),
            "VerifyClientCertIfGiven" => web_pki(roots.ok_or_else(|| need_ca(self))?, true, self)?,
            _ => web_pki(roots.ok_or_else(|| need_ca(self))?, false, self)?,
        };
        Ok(pin(ca.as_deref(), verifier))
    }
}

/// A certificate of `client_ca_file` presented as it is (a self-signed one
/// with CA:TRUE, as `openssl req -x509` makes) is accepted as a pinned
/// certificate, as Go does; chains still go through `verifier`.
fn pin(ca: Option<&[u8]>, verifier: Arc<dyn ClientCertVerifier>) -> Arc<dyn ClientCertVerifier> {
    match ca {
        Some(pem) => Arc::new(ClientCheck {
            inner: verifier,
            pinned: CertificateDer::pem_slice_iter(pem).filter_map(Result::ok).collect(),
            allowed: None,
        }),
        None => verifier,
    }
}

/// The system's trusted roots (rustls-native-certs: the same store Go's
/// crypto/x509 reads); certificates it cannot parse are skipped and logged.
fn system_roots() -> RootCertStore {
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        tracing::warn!(error = %e, "Could not read part of the system's root certificates.");
    }
    let mut roots = RootCertStore::empty();
    let (added, skipped) = roots.add_parsable_certificates(found.certs);
    tracing::debug!(added, skipped, "System roots for client certificates.");
    roots
}

/// What is checked of a client certificate beyond `inner`:
///
/// - `pinned`: a certificate byte-identical to one of `client_ca_file` is
///   trusted as itself (within its validity), as Go's `crypto/x509` does
///   when a root is presented as the leaf; rustls-webpki refuses a CA as an
///   end entity (`CaUsedAsEndEntity`). Anything else goes to `inner`.
/// - `allowed` (`client_allowed_sans`): after that, the certificate must
///   carry one of the listed SANs (DNS name, IP address, email address or
///   URI, compared as text), as the toolkit's `VerifyPeerCertificate`
///   does; else the handshake fails.
#[derive(Debug)]
struct ClientCheck {
    inner: Arc<dyn ClientCertVerifier>,
    pinned: Vec<CertificateDer<'static>>,
    allowed: Option<Vec<String>>,
}

/// The SANs of a DER certificate, as text.
fn sans_of(der: &[u8]) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let Ok(Some(ext)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    ext.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(d.to_string()),
            GeneralName::RFC822Name(e) => Some(e.to_string()),
            GeneralName::URI(u) => Some(u.to_string()),
            GeneralName::IPAddress(b) => match b.len() {
                4 => Some(std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]).to_string()),
                16 => <[u8; 16]>::try_from(*b)
                    .ok()
                    .map(|a| std::net::Ipv6Addr::from(a).to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

impl ClientCertVerifier for ClientCheck {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: rustls::pki_types::UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let pinned = self.pinned.iter().any(|p| p.as_ref() == end_entity.as_ref());
        let verified = if pinned && valid_at(end_entity, now.as_secs() as i64) {
            ClientCertVerified::assertion()
        } else {
            self.inner.verify_client_cert(end_entity, intermediates, now)?
        };
        let Some(allowed) = &self.allowed else {
            return Ok(verified);
        };
        let found = sans_of(end_entity);
        if found.iter().any(|s| allowed.contains(s)) {
            Ok(verified)
        } else {
            Err(rustls::Error::General(format!(
                "could not find allowed SANs in client cert, found: {found:?}"
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Whether the DER certificate is valid at `now` (Unix seconds).
fn valid_at(der: &[u8], now: i64) -> bool {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, c)| c.validity().not_before.timestamp() <= now && now <= c.validity().not_after.timestamp())
        .unwrap_or(false)
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
