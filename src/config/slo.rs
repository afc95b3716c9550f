//! `slo`: service level objectives on the inference servers' own metrics,
//! as Sloth and Pyrra write them: a short spec per service, from which
//! `inferwatch slo-rules` generates the recording rules and the
//! multi-window, multi-burn-rate alerts (docs/slo.md).
//!
//! The checks hold each SLO against what its server exports
//! ([`super::servers`]): a measure the server has, and a latency threshold
//! that is one of its histogram's bucket boundaries, since a ratio of
//! requests under a threshold can only be read at a boundary.

use serde::Deserialize;

use super::health::HealthConfig;
use super::inference::ServerKind;
use super::servers::{self, Measure};
use super::{format_number, invalid, ConfigError, Range};

/// The `slo` section.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SloConfig {
    /// One entry per service with objectives; a service appears once.
    pub services: Vec<ServiceSlo>,
}

/// The objectives of one service.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSlo {
    /// A `health.services` name with a `metrics_url`; its `server` says
    /// which metrics the SLIs read.
    pub service: String,
    /// The share of requests that must succeed (`<service>-availability`).
    #[serde(default)]
    pub availability: Option<AvailabilityObjective>,
    /// The share of requests that must be faster than a threshold
    /// (`<service>-latency`).
    #[serde(default)]
    pub latency: Option<LatencyObjective>,
}

/// An availability SLO: successful requests over all requests.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AvailabilityObjective {
    /// The target ratio over 30 days, 0.9–0.9999 (e.g. `0.999`).
    pub objective: f64,
}

/// A latency SLO: requests at or under `threshold` over all requests.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatencyObjective {
    /// `time_to_first_token` or `request_duration`.
    pub measure: Measure,
    /// Seconds; a bucket boundary of the server's histogram for `measure`.
    pub threshold: f64,
    /// The target ratio over 30 days, 0.9–0.9999 (e.g. `0.99`).
    pub objective: f64,
}

/// Below 0.9 the budget is so large that the 14.4x alert could never fire
/// (14.4 x 10 % > 100 % errors); above 0.9999 the 30-day budget (4.3
/// minutes) is shorter than what 15 s scrapes and 5 m rates can resolve.
pub const AVAILABILITY_OBJECTIVE: Range =
    Range::new("slo.services[].availability.objective", 0.9, 0.9999, "of requests");
pub const LATENCY_OBJECTIVE: Range = Range::new(
    "slo.services[].latency.objective",
    AVAILABILITY_OBJECTIVE.min,
    AVAILABILITY_OBJECTIVE.max,
    "of requests",
);

impl SloConfig {
    /// Checks every SLO against the services of `health` and what their
    /// servers export.
    pub fn validate(&self, health: &HealthConfig) -> Result<(), ConfigError> {
        let mut seen = std::collections::HashSet::new();
        for (i, slo) in self.services.iter().enumerate() {
            let key = |field: &str| format!("slo.services[{i}].{field}");
            if !seen.insert(slo.service.as_str()) {
                return Err(invalid(
                    &key("service"),
                    &slo.service,
                    "a duplicate",
                    "each service once, with availability and latency in the same entry",
                ));
            }
            slo.validate(i, health)?;
        }
        Ok(())
    }
}

impl ServiceSlo {
    fn validate(&self, i: usize, health: &HealthConfig) -> Result<(), ConfigError> {
        let key = |field: &str| format!("slo.services[{i}].{field}");
        let kind = self.validate_service(i, health)?;
        let sli = servers::sli(kind);
        if let Some(a) = &self.availability {
            if sli.requests.is_none() {
                return Err(invalid(
                    &key("availability"),
                    kind.as_str(),
                    "a server without request outcome counters",
                    "a service whose server is vllm, sglang, tgi, triton or mlserver",
                ));
            }
            AVAILABILITY_OBJECTIVE.check_at(&key("availability.objective"), a.objective)?;
        }
        let Some(l) = &self.latency else { return Ok(()) };
        let Some(h) = sli.histogram(l.measure) else {
            let has = sli.measures();
            return Err(invalid(
                &key("latency.measure"),
                l.measure.as_str(),
                "not a histogram this server exports",
                &format!(
                    "what {} exports: {}",
                    kind.as_str(),
                    if has.is_empty() {
                        "none".to_string()
                    } else {
                        has.join(", ")
                    }
                ),
            ));
        };
        if h.boundary_at(l.threshold).is_none() {
            let list: Vec<String> = h.boundaries().iter().map(|b| format_number(b.seconds)).collect();
            return Err(invalid(
                &key("latency.threshold"),
                &format_number(l.threshold),
                "not a bucket boundary",
                &format!("a bucket boundary of {} in seconds: {}", h.metric, list.join(", ")),
            ));
        }
        LATENCY_OBJECTIVE.check_at(&key("latency.objective"), l.objective)
    }

    /// The service is configured, scraped, and given an objective; its
    /// server kind.
    fn validate_service(&self, i: usize, health: &HealthConfig) -> Result<ServerKind, ConfigError> {
        let key = format!("slo.services[{i}].service");
        let scraped: Vec<&str> = health
            .services
            .iter()
            .filter(|s| s.metrics_url().is_some())
            .map(|s| s.name.as_str())
            .collect();
        let Some(svc) = health.services.iter().find(|s| s.name == self.service) else {
            return Err(invalid(
                &key,
                &self.service,
                "not a configured service",
                &one_of("a health.services name with a metrics_url", &scraped),
            ));
        };
        if svc.metrics_url().is_none() {
            return Err(invalid(
                &key,
                &self.service,
                "a service without metrics_url",
                &one_of("a service whose own metrics Prometheus scrapes", &scraped),
            ));
        }
        if self.availability.is_none() && self.latency.is_none() {
            return Err(invalid(
                &key,
                &self.service,
                "a service without objectives",
                "availability, latency or both",
            ));
        }
        Ok(svc.server())
    }
}

fn one_of(what: &str, names: &[&str]) -> String {
    if names.is_empty() {
        format!("{what} (there is none)")
    } else {
        format!("{what}: {}", names.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const SERVICES: &str = "health:\n  services:\n\
        \x20   - {name: llm, kind: http, url: 'http://127.0.0.1:8000/health', metrics_url: 'http://127.0.0.1:8000/metrics', server: vllm}\n\
        \x20   - {name: llama, kind: http, url: 'http://127.0.0.1:8080/health', metrics_url: 'http://127.0.0.1:8080/metrics', server: llamacpp}\n\
        \x20   - {name: tgi, kind: http, url: 'http://127.0.0.1:8081/health', metrics_url: 'http://127.0.0.1:8081/metrics', server: tgi}\n\
        \x20   - {name: triton, kind: open_inference, url: 'http://127.0.0.1:8001', metrics_url: 'http://127.0.0.1:8002/metrics', server: triton}\n\
        \x20   - {name: plain, kind: http, url: 'http://127.0.0.1:9000/health'}\n";

    fn check(slo: &str) -> Result<Config, String> {
        let c = Config::from_yaml(&format!("{SERVICES}slo:\n  services:\n{slo}")).map_err(|e| e.to_string())?;
        c.validate().map_err(|e| e.to_string())?;
        Ok(c)
    }

    #[test]
    fn a_valid_spec_is_accepted() {
        let c = check(
            "    - service: llm\n      availability: {objective: 0.999}\n      latency: {measure: time_to_first_token, threshold: 0.5, objective: 0.99}\n\
             \x20   - service: triton\n      latency: {measure: time_to_first_token, threshold: 0.1, objective: 0.95}\n",
        )
        .unwrap();
        assert_eq!(c.slo.services.len(), 2);
        assert!(check("    - service: tgi\n      latency: {measure: request_duration, threshold: 0.49878850951194753, objective: 0.99}\n").is_ok());
    }

    #[test]
    fn a_threshold_between_buckets_is_refused_with_the_boundaries_named() {
        let e = check(
            "    - service: llm\n      latency: {measure: time_to_first_token, threshold: 0.3, objective: 0.99}\n",
        )
        .unwrap_err();
        assert!(
            e.contains("slo.services[0].latency.threshold")
                && e.contains("\"0.3\" is not a bucket boundary")
                && e.contains("vllm:time_to_first_token_seconds")
                && e.contains("0.25, 0.5, 0.75, 1,"),
            "{e}"
        );
        // Triton's milliseconds are named in seconds.
        let e = check(
            "    - service: triton\n      latency: {measure: time_to_first_token, threshold: 1, objective: 0.99}\n",
        )
        .unwrap_err();
        assert!(e.contains("in seconds: 0.1, 0.5, 2, 5"), "{e}");
    }

    #[test]
    fn an_unknown_service_is_refused_with_the_scraped_ones_named() {
        let e = check("    - service: nope\n      availability: {objective: 0.999}\n").unwrap_err();
        assert!(
            e.contains("slo.services[0].service")
                && e.contains("not a configured service")
                && e.contains("llm, llama, tgi, triton"),
            "{e}"
        );
        let e = check("    - service: plain\n      availability: {objective: 0.999}\n").unwrap_err();
        assert!(e.contains("without metrics_url"), "{e}");
    }

    #[test]
    fn what_the_server_does_not_export_is_refused() {
        let e = check("    - service: llama\n      availability: {objective: 0.999}\n").unwrap_err();
        assert!(
            e.contains("slo.services[0].availability") && e.contains("\"llamacpp\"") && e.contains("outcome counters"),
            "{e}"
        );
        let e = check(
            "    - service: llama\n      latency: {measure: time_to_first_token, threshold: 0.5, objective: 0.99}\n",
        )
        .unwrap_err();
        assert!(
            e.contains("slo.services[0].latency.measure") && e.contains("what llamacpp exports: none"),
            "{e}"
        );
        let e = check(
            "    - service: tgi\n      latency: {measure: time_to_first_token, threshold: 0.5, objective: 0.99}\n",
        )
        .unwrap_err();
        assert!(e.contains("what tgi exports: request_duration"), "{e}");
    }

    #[test]
    fn objectives_duplicates_and_empty_entries() {
        let e = check("    - service: llm\n      availability: {objective: 0.99999}\n").unwrap_err();
        assert!(
            e.contains("slo.services[0].availability.objective") && e.contains("0.9–0.9999"),
            "{e}"
        );
        let e = check("    - service: llm\n      availability: {objective: 1}\n").unwrap_err();
        assert!(e.contains("out of range"), "{e}");
        let e = check("    - service: llm\n      availability: {objective: 0.99}\n    - service: llm\n      availability: {objective: 0.999}\n")
            .unwrap_err();
        assert!(
            e.contains("slo.services[1].service") && e.contains("a duplicate"),
            "{e}"
        );
        let e = check("    - service: llm\n").unwrap_err();
        assert!(e.contains("without objectives"), "{e}");
        let e =
            check("    - service: llm\n      latency: {measure: ttft, threshold: 0.5, objective: 0.99}\n").unwrap_err();
        assert!(e.contains("latency.measure"), "{e}");
    }
}
