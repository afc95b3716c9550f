//! `ServiceTls`: how the daemon, as a client, trusts a service and proves
//! itself (a health check over `https://`, Redis over `rediss://`). Plain
//! data and nothing else, so that both `config` (which reads and checks it)
//! and `redis_conn` (which builds a client from it) can use it without one
//! importing the other in a cycle.

use serde::Deserialize;

/// How an `https://` health check or a `rediss://` connection trusts the
/// service and proves itself (checked by `config`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceTls {
    /// PEM CAs to trust instead of the system and webpki roots.
    pub ca_file: Option<std::path::PathBuf>,
    /// Client certificate (PEM) for mutual TLS; needs `key_file`.
    pub cert_file: Option<std::path::PathBuf>,
    /// The client certificate's key (PEM).
    pub key_file: Option<std::path::PathBuf>,
    /// The name to verify the certificate against (and send as SNI) when it
    /// differs from the URL's host.
    pub server_name: Option<String>,
    /// Accept any certificate (a warning is logged at startup).
    #[serde(default)]
    pub insecure_skip_verify: bool,
}
