//! Reading a `health.services[]` entry: its `kind` picks one of the flat
//! `Raw*` structs below (each `deny_unknown_fields`: the keys every kind
//! shares, plus its own), which then becomes a [`ServiceConfig`] with its
//! [`Check`]. serde cannot deny unknown fields through `flatten`, so the
//! shared keys are declared once, in the `service_kinds!` macro. A key of
//! another kind is refused by name: "`models` is only for kind
//! open_inference".

use std::collections::BTreeMap;
use std::time::Duration;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

use super::check::{
    default_expect_status, Check, HttpCheck, HttpMethod, OpenInferenceCheck, PostgresCheck, RedisCheck, ServiceTls,
    StatusSpec,
};
use super::health::{ProgressConfig, RestartConfig, ServiceConfig, ServiceMatch};
use super::inference::ServerKind;
use super::{de_opt_seconds, de_seconds};

/// Declares, once, the keys every kind shares: each kind's raw struct gets
/// them beside its own keys, and its conversion moves them into the
/// [`ServiceConfig`]. `$own` are the kind's keys, in the order its check
/// struct takes them.
macro_rules! service_kinds {
    ($($variant:ident($raw:ident, $check:ident, $kind:literal) { $($(#[$m:meta])* $own:ident: $t:ty,)* })*) => {
        $(
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct $raw {
                name: String,
                $($(#[$m])* $own: $t,)*
                #[serde(default = "default_check_interval", deserialize_with = "de_seconds")]
                interval: Duration,
                #[serde(default = "default_check_timeout", deserialize_with = "de_seconds")]
                timeout: Duration,
                #[serde(default = "default_max_retries")]
                max_retries: u32,
                #[serde(default = "default_backoff_base", deserialize_with = "de_seconds")]
                backoff_base: Duration,
                #[serde(default = "default_reset_after", deserialize_with = "de_seconds")]
                reset_after: Duration,
                #[serde(default)]
                restart: Option<RestartConfig>,
                #[serde(default)]
                critical: bool,
                #[serde(default = "default_failure_threshold")]
                failure_threshold: u32,
                #[serde(default = "default_success_threshold")]
                success_threshold: u32,
                #[serde(default, deserialize_with = "de_seconds")]
                start_period: Duration,
                #[serde(default, deserialize_with = "de_opt_seconds")]
                start_interval: Option<Duration>,
                #[serde(default, deserialize_with = "de_opt_seconds")]
                slow_after: Option<Duration>,
                #[serde(default)]
                progress: Option<ProgressConfig>,
                #[serde(default)]
                metrics_url: Option<String>,
                #[serde(default)]
                server: Option<ServerKind>,
                #[serde(default)]
                depends_on: Vec<String>,
                #[serde(default, rename = "match")]
                matcher: Option<ServiceMatch>,
            }

            impl From<$raw> for ServiceConfig {
                fn from(r: $raw) -> ServiceConfig {
                    ServiceConfig {
                        check: Check::$variant($check { $($own: r.$own,)* }),
                        name: r.name,
                        interval: r.interval,
                        timeout: r.timeout,
                        max_retries: r.max_retries,
                        backoff_base: r.backoff_base,
                        reset_after: r.reset_after,
                        restart: r.restart,
                        critical: r.critical,
                        failure_threshold: r.failure_threshold,
                        success_threshold: r.success_threshold,
                        start_period: r.start_period,
                        start_interval: r.start_interval,
                        slow_after: r.slow_after,
                        progress: r.progress,
                        metrics_url: r.metrics_url,
                        server: r.server,
                        depends_on: r.depends_on,
                        matcher: r.matcher,
                    }
                }
            }
        )*

        /// Each kind's value and its own keys (besides those all share).
        const OWN_KEYS: &[(&str, &[&str])] = &[$(($kind, &[$(stringify!($own)),*])),*];

        /// Reads one service entry: its `kind`, then the keys of that kind.
        fn read_service(kind: &str, value: serde_yaml_ng::Value) -> Result<ServiceConfig, String> {
            match kind {
                $($kind => read_as::<$raw>(value).map(ServiceConfig::from),)*
                other => Err(format!(
                    "kind: {}",
                    <serde_yaml_ng::Error as serde::de::Error>::unknown_variant(other, KINDS)
                )),
            }
        }
    };
}

/// Reads `value` as `T`; an error names the key inside it (`method: …`).
fn read_as<T: serde::de::DeserializeOwned>(value: serde_yaml_ng::Value) -> Result<T, String> {
    serde_path_to_error::deserialize::<_, T>(value).map_err(|e| match e.path().to_string().as_str() {
        "." => e.inner().to_string(),
        path => format!("{path}: {}", e.inner()),
    })
}

/// The values `kind` takes.
const KINDS: &[&str] = &["http", "redis", "postgres", "open_inference"];

service_kinds! {
    Http(RawHttp, HttpCheck, "http") {
        url: String,
        #[serde(default)]
        tls: Option<ServiceTls>,
        #[serde(default)]
        method: HttpMethod,
        #[serde(default)]
        body: Option<String>,
        #[serde(default)]
        headers: BTreeMap<String, String>,
        #[serde(default = "default_expect_status")]
        expect_status: Vec<StatusSpec>,
        #[serde(default)]
        expect_body: Option<String>,
    }
    Redis(RawRedis, RedisCheck, "redis") {
        url: String,
        #[serde(default)]
        tls: Option<ServiceTls>,
    }
    Postgres(RawPostgres, PostgresCheck, "postgres") {
        url: String,
    }
    OpenInference(RawOpenInference, OpenInferenceCheck, "open_inference") {
        url: String,
        #[serde(default)]
        tls: Option<ServiceTls>,
        #[serde(default)]
        headers: BTreeMap<String, String>,
        #[serde(default)]
        models: Vec<String>,
    }
}

impl<'de> Deserialize<'de> for ServiceConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ServiceConfig, D::Error> {
        let value = serde_yaml_ng::Value::deserialize(d)?;
        let kind = match value.get("kind") {
            Some(serde_yaml_ng::Value::String(k)) => k.clone(),
            Some(_) => {
                return Err(D::Error::custom(
                    "kind: not a string; allowed: one of http, redis, postgres, open_inference",
                ))
            }
            None => return Err(D::Error::missing_field("kind")),
        };
        let mut value = value;
        if let serde_yaml_ng::Value::Mapping(m) = &mut value {
            m.remove("kind");
        }
        read_service(&kind, value).map_err(|e| D::Error::custom(explain(&e, &kind)))
    }
}

/// Says which kinds take a key that this kind does not.
fn explain(error: &str, kind: &str) -> String {
    let Some(field) = error
        .split_once("unknown field `")
        .and_then(|(_, rest)| rest.split('`').next())
    else {
        return error.to_string();
    };
    let takers: Vec<&str> = OWN_KEYS
        .iter()
        .filter(|(_, keys)| keys.contains(&field))
        .map(|(k, _)| *k)
        .collect();
    if takers.is_empty() {
        return error.to_string();
    }
    let others = error.split_once("unknown field").map_or("", |(_, rest)| rest);
    format!(
        "{field}: `{field}` is only for kind {}; this service is kind {kind} (unknown field{others})",
        takers.join(" or ")
    )
}

fn default_check_interval() -> Duration {
    Duration::from_secs(10)
}
fn default_check_timeout() -> Duration {
    Duration::from_secs(3)
}
fn default_max_retries() -> u32 {
    3
}
fn default_backoff_base() -> Duration {
    Duration::from_secs(5)
}
fn default_reset_after() -> Duration {
    Duration::from_secs(600)
}
fn default_failure_threshold() -> u32 {
    3
}
fn default_success_threshold() -> u32 {
    1
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CheckKind;

    fn service(yaml: &str) -> Result<ServiceConfig, String> {
        serde_yaml_ng::from_str::<ServiceConfig>(yaml).map_err(|e| e.to_string())
    }

    #[test]
    fn each_kind_holds_its_own_keys() {
        let s = service("{name: a, kind: http, url: 'http://x/', method: POST, body: '{}'}").unwrap();
        let Check::Http(h) = &s.check else { panic!("{s:?}") };
        assert_eq!((h.method, h.body.as_deref()), (HttpMethod::Post, Some("{}")));
        let s = service("{name: m, kind: open_inference, url: 'http://x', models: [a, b]}").unwrap();
        assert_eq!(s.check.models(), ["a", "b"]);
        assert_eq!(s.check.kind(), CheckKind::OpenInference);
        let s = service("{name: r, kind: redis, url: 'redis://x:6379'}").unwrap();
        assert!(s.check.headers().is_empty() && s.check.models().is_empty());
    }

    #[test]
    fn a_key_of_another_kind_is_refused_by_name() {
        let e = service("{name: a, kind: http, url: 'http://x/', models: [m]}").unwrap_err();
        assert!(
            e.contains("`models` is only for kind open_inference; this service is kind http"),
            "{e}"
        );
        let e = service("{name: r, kind: redis, url: 'redis://x', headers: {X-A: b}}").unwrap_err();
        assert!(e.contains("`headers` is only for kind http or open_inference"), "{e}");
        let e = service("{name: p, kind: postgres, url: 'postgres://x', tls: {}}").unwrap_err();
        assert!(
            e.contains("`tls` is only for kind http or redis or open_inference"),
            "{e}"
        );
    }

    #[test]
    fn an_unknown_key_or_kind_lists_what_is_allowed() {
        let e = service("{name: a, kind: http, url: 'http://x/', zz: 1}").unwrap_err();
        assert!(e.contains("unknown field `zz`, expected one of `name`, `url`"), "{e}");
        let e = service("{name: a, kind: htp, url: 'http://x/'}").unwrap_err();
        assert!(
            e.contains("kind: unknown variant `htp`, expected one of `http`, `redis`"),
            "{e}"
        );
        let e = service("{name: a, url: 'http://x/'}").unwrap_err();
        assert!(e.contains("missing field `kind`"), "{e}");
    }

    #[test]
    fn every_own_key_of_a_kind_is_one_its_check_holds() {
        // The macro's key lists: each kind's own keys, and `url` for all.
        for (kind, keys) in OWN_KEYS {
            assert!(KINDS.contains(kind));
            assert!(keys.contains(&"url"), "{kind}");
        }
        assert_eq!(OWN_KEYS.len(), KINDS.len());
    }
}
