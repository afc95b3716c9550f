//! How a service is checked: `health.services[].kind` is the tag, and each
//! kind holds its own keys ([`Check`]), so a key another kind takes cannot
//! be set on it (`service_de` reads the file into these).

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{invalid, ConfigError};
pub use crate::client_tls::ServiceTls;

/// The kind of a check, without its settings (the `kind` key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckKind {
    /// `GET url` must answer 2xx.
    Http,
    /// `PING` on `redis://…` must answer `PONG`.
    Redis,
    /// Connecting to `postgres://…` and `SELECT 1` must work.
    Postgres,
    /// The Open Inference Protocol (KServe v2: Triton, MLServer, KServe) at
    /// the base `url`: `/v2/health/live` decides liveness,
    /// `/v2/health/ready` and `/v2/models/{m}/ready` readiness.
    OpenInference,
}

impl CheckKind {
    /// The value of `kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckKind::Http => "http",
            CheckKind::Redis => "redis",
            CheckKind::Postgres => "postgres",
            CheckKind::OpenInference => "open_inference",
        }
    }

    /// The URL schemes this kind of check takes.
    pub fn schemes(self) -> &'static [&'static str] {
        match self {
            CheckKind::Http | CheckKind::OpenInference => &["http://", "https://"],
            CheckKind::Redis => &["redis://", "rediss://", "redis+sentinel://", "rediss+sentinel://"],
            CheckKind::Postgres => &["postgres://", "postgresql://"],
        }
    }
}

/// The HTTP method of an `http` check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum HttpMethod {
    #[default]
    #[serde(rename = "GET", alias = "get")]
    Get,
    #[serde(rename = "HEAD", alias = "head")]
    Head,
    #[serde(rename = "POST", alias = "post")]
    Post,
}

/// One entry of `expect_status`: a code (`200`) or a class (`"2xx"`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum StatusSpec {
    Code(u64),
    Text(String),
}

impl StatusSpec {
    /// The codes it covers, as an inclusive range; `None` when it is not a
    /// code 100–599 or a class 1xx–5xx.
    pub fn codes(&self) -> Option<(u16, u16)> {
        let text = match self {
            StatusSpec::Code(c) => c.to_string(),
            StatusSpec::Text(t) => t.trim().to_ascii_lowercase(),
        };
        if let Some(class) = text.strip_suffix("xx") {
            let d: u16 = class.parse().ok().filter(|d| (1..=5).contains(d) && class.len() == 1)?;
            return Some((d * 100, d * 100 + 99));
        }
        let code: u16 = text.parse().ok().filter(|c| (100..=599).contains(c))?;
        Some((code, code))
    }

    fn shown(&self) -> String {
        match self {
            StatusSpec::Code(c) => c.to_string(),
            StatusSpec::Text(t) => t.clone(),
        }
    }
}

pub(super) fn default_expect_status() -> Vec<StatusSpec> {
    vec![StatusSpec::Text("2xx".into())]
}

/// An `http` check: the request, and what its answer must be.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpCheck {
    /// `http://…/health` or `https://…`.
    pub url: String,
    pub tls: Option<ServiceTls>,
    pub method: HttpMethod,
    /// The request body of a `POST` check.
    pub body: Option<String>,
    pub headers: BTreeMap<String, String>,
    /// Codes (`200`) or classes (`"2xx"`) that pass.
    pub expect_status: Vec<StatusSpec>,
    /// A substring the response body must contain.
    pub expect_body: Option<String>,
}

/// A `redis` check: `PING` must answer `PONG`.
#[derive(Debug, Clone, PartialEq)]
pub struct RedisCheck {
    /// `redis://…`, `rediss://…` or `redis+sentinel://…`.
    pub url: String,
    pub tls: Option<ServiceTls>,
}

/// A `postgres` check: connecting and `SELECT 1` must work.
#[derive(Debug, Clone, PartialEq)]
pub struct PostgresCheck {
    /// `postgres://…`.
    pub url: String,
}

/// An `open_inference` check: liveness, readiness and the models' readiness.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenInferenceCheck {
    /// The server's base `http://HOST:PORT`.
    pub url: String,
    pub tls: Option<ServiceTls>,
    pub headers: BTreeMap<String, String>,
    /// Models whose `/v2/models/{m}/ready` decides readiness.
    pub models: Vec<String>,
}

/// How a service is checked, with the keys of its kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Check {
    Http(HttpCheck),
    Redis(RedisCheck),
    Postgres(PostgresCheck),
    OpenInference(OpenInferenceCheck),
}

/// No headers, for the kinds that send none.
static NO_HEADERS: BTreeMap<String, String> = BTreeMap::new();

impl Check {
    pub fn kind(&self) -> CheckKind {
        match self {
            Check::Http(_) => CheckKind::Http,
            Check::Redis(_) => CheckKind::Redis,
            Check::Postgres(_) => CheckKind::Postgres,
            Check::OpenInference(_) => CheckKind::OpenInference,
        }
    }

    /// What is checked.
    pub fn url(&self) -> &str {
        match self {
            Check::Http(c) => &c.url,
            Check::Redis(c) => &c.url,
            Check::Postgres(c) => &c.url,
            Check::OpenInference(c) => &c.url,
        }
    }

    /// The TLS settings of an `https://` or `rediss://` check.
    pub fn tls(&self) -> Option<&ServiceTls> {
        match self {
            Check::Http(c) => c.tls.as_ref(),
            Check::Redis(c) => c.tls.as_ref(),
            Check::Postgres(_) => None,
            Check::OpenInference(c) => c.tls.as_ref(),
        }
    }

    /// The request headers of an HTTP check (none for the other kinds).
    pub fn headers(&self) -> &BTreeMap<String, String> {
        match self {
            Check::Http(c) => &c.headers,
            Check::OpenInference(c) => &c.headers,
            Check::Redis(_) | Check::Postgres(_) => &NO_HEADERS,
        }
    }

    /// The models whose readiness counts (`open_inference` only).
    pub fn models(&self) -> &[String] {
        match self {
            Check::OpenInference(c) => &c.models,
            _ => &[],
        }
    }
}

impl Check {
    /// The URL's scheme fits the kind; TLS only for `https://` and
    /// `rediss`; the request settings of an HTTP check are valid. `key`
    /// names a field of service `i`.
    pub(super) fn validate(&self, i: usize) -> Result<(), ConfigError> {
        let key = |field: &str| format!("health.services[{i}].{field}");
        let schemes = self.kind().schemes();
        if !schemes.iter().any(|s| self.url().starts_with(s)) {
            return Err(invalid(
                &key("url"),
                self.url(),
                "not a URL for this kind",
                &format!("a URL starting with {}", schemes.join(" or ")),
            ));
        }
        if let Some(tls) = self.tls() {
            if !self.url().starts_with("https://") && !self.url().starts_with("rediss") {
                return Err(invalid(
                    &key("tls"),
                    "set",
                    "only for https:// and rediss:// checks",
                    "an https:// or rediss:// url, or no tls",
                ));
            }
            tls.validate(&key("tls"))?;
        }
        validate_headers(self.headers(), i)?;
        match self {
            Check::Http(h) => h.validate(i),
            Check::OpenInference(o) => validate_models(&o.models, i),
            Check::Redis(_) | Check::Postgres(_) => Ok(()),
        }
    }
}

impl HttpCheck {
    /// A body only with `POST`; codes and classes that exist.
    fn validate(&self, i: usize) -> Result<(), ConfigError> {
        let key = |field: &str| format!("health.services[{i}].{field}");
        if self.body.is_some() && self.method != HttpMethod::Post {
            return Err(invalid(
                &key("body"),
                "set",
                "only for method POST",
                "method: POST, or no body",
            ));
        }
        if self.expect_status.is_empty() {
            return Err(invalid(
                &key("expect_status"),
                "[]",
                "empty",
                "codes (200) or classes (\"2xx\")",
            ));
        }
        for (j, spec) in self.expect_status.iter().enumerate() {
            if spec.codes().is_none() {
                return Err(invalid(
                    &key(&format!("expect_status[{j}]")),
                    &spec.shown(),
                    "not a status code or class",
                    "a code 100–599 or a class 1xx–5xx",
                ));
            }
        }
        Ok(())
    }
}

impl ServiceTls {
    /// A client certificate comes with its key, and every file named can be
    /// read; `prefix` is the key of this section (`queues.tls`).
    pub fn validate(&self, prefix: &str) -> Result<(), ConfigError> {
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err(invalid(
                &format!("{prefix}.cert_file"),
                "only one of cert_file and key_file",
                "incomplete",
                "both cert_file and key_file, or neither",
            ));
        }
        for (field, file) in [
            ("ca_file", &self.ca_file),
            ("cert_file", &self.cert_file),
            ("key_file", &self.key_file),
        ] {
            if let Some(f) = file {
                if let Err(e) = std::fs::File::open(f) {
                    return Err(invalid(
                        &format!("{prefix}.{field}"),
                        &f.display().to_string(),
                        "unreadable",
                        &format!("a readable PEM file ({e})"),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Valid HTTP header names and values.
fn validate_headers(headers: &BTreeMap<String, String>, i: usize) -> Result<(), ConfigError> {
    for (name, value) in headers {
        let ok = reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_ok()
            && reqwest::header::HeaderValue::from_str(value).is_ok();
        if !ok {
            return Err(invalid(
                &format!("health.services[{i}].headers.{name}"),
                name,
                "not a valid HTTP header",
                "a token name and a visible-ASCII value",
            ));
        }
    }
    Ok(())
}

/// Model names fit a URL path segment.
fn validate_models(models: &[String], i: usize) -> Result<(), ConfigError> {
    for (j, m) in models.iter().enumerate() {
        if m.is_empty() || m.contains(['/', '?', '#']) || m.chars().any(char::is_whitespace) {
            return Err(invalid(
                &format!("health.services[{i}].models[{j}]"),
                m,
                "not a model name",
                "a non-empty name without /, ?, # or spaces",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(url: &str) -> HttpCheck {
        HttpCheck {
            url: url.into(),
            tls: None,
            method: HttpMethod::Get,
            body: None,
            headers: BTreeMap::new(),
            expect_status: default_expect_status(),
            expect_body: None,
        }
    }

    fn error(check: Check) -> String {
        check.validate(2).unwrap_err().to_string()
    }

    #[test]
    fn the_url_scheme_fits_the_kind() {
        assert!(Check::Http(http("http://x/h")).validate(0).is_ok());
        let e = error(Check::Postgres(PostgresCheck { url: "http://x".into() }));
        assert!(e.contains("health.services[2].url") && e.contains("postgres://"), "{e}");
        let e = error(Check::Redis(RedisCheck {
            url: "redis://x:6379".into(),
            tls: Some(ServiceTls::default()),
        }));
        assert!(e.contains("health.services[2].tls") && e.contains("rediss://"), "{e}");
    }

    #[test]
    fn an_http_checks_request_and_expectations_are_checked() {
        let mut h = http("http://x/h");
        h.body = Some("{}".into());
        assert!(error(Check::Http(h.clone())).contains("only for method POST"));
        h.method = HttpMethod::Post;
        assert!(Check::Http(h.clone()).validate(0).is_ok());
        h.expect_status = vec![StatusSpec::Text("6xx".into())];
        assert!(error(Check::Http(h.clone())).contains("health.services[2].expect_status[0]"));
        h.expect_status = default_expect_status();
        h.headers.insert("Bad Name".into(), "v".into());
        assert!(error(Check::Http(h)).contains("health.services[2].headers.Bad Name"));
    }

    #[test]
    fn model_names_fit_a_path_segment() {
        let check = |m: &str| {
            Check::OpenInference(OpenInferenceCheck {
                url: "http://x:8000".into(),
                tls: None,
                headers: BTreeMap::new(),
                models: vec!["ok".into(), m.into()],
            })
        };
        assert!(check("resnet-50").validate(0).is_ok());
        for bad in ["", "a/b", "a b", "a?"] {
            assert!(error(check(bad)).contains("health.services[2].models[1]"), "{bad:?}");
        }
    }
}
