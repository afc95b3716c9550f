//! The `service_*` and `inference_model_ready` families: registered once,
//! a service's series made at start or when a reload adds it, and dropped
//! when a reload removes it.

use prometheus::{GaugeVec, HistogramVec, IntCounterVec};

use super::check::Reason;
use crate::config::ServiceConfig;
use crate::metrics::{family, histogram, Metrics};
use crate::restart::Status;

/// The `service_*` and `inference_model_ready` families.
pub struct HealthMetrics {
    pub(super) up: GaugeVec,
    pub(super) status: GaugeVec,
    pub(super) check_duration: HistogramVec,
    pub(super) restarts: IntCounterVec,
    pub(super) restart_attempt: GaugeVec,
    pub(super) consecutive_failures: GaugeVec,
    pub(super) last_check: GaugeVec,
    pub(super) check_failures: IntCounterVec,
    pub(super) check_slow: IntCounterVec,
    pub(super) starting: GaugeVec,
    pub(super) ready: GaugeVec,
    pub(super) model_ready: GaugeVec,
    pub(super) stalled: GaugeVec,
}

impl HealthMetrics {
    /// Registers the families and creates every series of every configured
    /// service, so each status, reason and restart result exists from the
    /// start.
    pub fn register(metrics: &Metrics, services: &[ServiceConfig]) -> HealthMetrics {
        let m = HealthMetrics::families();
        metrics.add(&m.up);
        metrics.add(&m.status);
        metrics.add(&m.check_duration);
        metrics.add(&m.restarts);
        metrics.add(&m.restart_attempt);
        metrics.add(&m.consecutive_failures);
        metrics.add(&m.last_check);
        metrics.add(&m.check_failures);
        metrics.add(&m.check_slow);
        metrics.add(&m.starting);
        metrics.add(&m.ready);
        metrics.add(&m.model_ready);
        metrics.add(&m.stalled);
        for s in services {
            m.init(s);
        }
        m
    }

    /// The families, not registered yet.
    fn families() -> HealthMetrics {
        let svc = &["service"];
        let gauge = |name: &str, help: &str, labels: &[&str]| family::<GaugeVec>(name, help, labels);
        HealthMetrics {
            up: gauge("service_up", "1 if the service is healthy (its checks passed per the thresholds), else 0.", svc),
            status: gauge(
                "service_status",
                "1 for the service's current status, 0 for the other four (healthy, unhealthy, restarting, restart_failed, failed).",
                &["service", "status"],
            ),
            check_duration: histogram("service_health_check_duration_seconds", "How long each health check took.", svc, prometheus::DEFAULT_BUCKETS.to_vec()),
            restarts: family::<IntCounterVec>("service_restarts_total", "Restart attempts, by whether the check after them passed.", &["service", "result"]),
            restart_attempt: gauge(
                "service_restart_attempt",
                "Restart attempts used since the service was last healthy for reset_after.",
                svc,
            ),
            consecutive_failures: gauge(
                "service_consecutive_failures",
                "Health checks failed in a row (failures inside a start period do not count).",
                svc,
            ),
            last_check: gauge(
                "service_last_check_timestamp_seconds",
                "Unix time of the service's last health check.",
                svc,
            ),
            check_failures: family::<IntCounterVec>(
                "service_check_failures_total",
                "Failed health checks by reason (timeout, connect, tls, http_status, body, too_large, not_ready, stalled, dependency, error), including those under the failure threshold.",
                &["service", "reason"],
            ),
            check_slow: family::<IntCounterVec>(
                "service_check_slow_total",
                "Health checks that passed but took longer than slow_after.",
                svc,
            ),
            starting: gauge("service_starting", "1 while the service is in its start period (after the daemon starts or a restart).", svc),
            ready: gauge(
                "service_ready",
                "1 if the service is ready to serve: Open Inference readiness, or the last check for other kinds.",
                svc,
            ),
            model_ready: gauge(
                "inference_model_ready",
                "1 if the Open Inference server says this model is ready.",
                &["service", "model"],
            ),
            stalled: gauge(
                "service_stalled",
                "1 while the service has work pending and its progress counters have not grown for stall_after.",
                svc,
            ),
        }
    }

    /// Creates every series of service `s`, so each status, reason and
    /// restart result exists from the start.
    pub(super) fn init(&self, s: &ServiceConfig) {
        let m = self;
        let name = s.name.as_str();
        m.up.with_label_values(&[name]).set(0.0);
        for st in Status::ALL {
            m.status
                .with_label_values(&[name, st.as_str()])
                .set(if st == Status::Unhealthy { 1.0 } else { 0.0 });
        }
        m.check_duration.with_label_values(&[name]);
        for r in ["success", "failure"] {
            m.restarts.with_label_values(&[name, r]);
        }
        for r in Reason::ALL {
            m.check_failures.with_label_values(&[name, r.as_str()]);
        }
        m.check_slow.with_label_values(&[name]);
        m.restart_attempt.with_label_values(&[name]).set(0.0);
        m.consecutive_failures.with_label_values(&[name]).set(0.0);
        m.starting
            .with_label_values(&[name])
            .set(if s.start_period.is_zero() { 0.0 } else { 1.0 });
        m.ready.with_label_values(&[name]).set(0.0);
        for model in s.check.models() {
            m.model_ready.with_label_values(&[name, model]).set(0.0);
        }
        if s.progress.is_some() {
            m.stalled.with_label_values(&[name]).set(0.0);
        }
    }

    /// Drops every series of service `s` (a reload removed it).
    pub(super) fn remove(&self, s: &ServiceConfig) {
        let m = self;
        let name = s.name.as_str();
        for g in [
            &m.up,
            &m.restart_attempt,
            &m.consecutive_failures,
            &m.last_check,
            &m.starting,
            &m.ready,
            &m.stalled,
        ] {
            let _ = g.remove_label_values(&[name]);
        }
        let _ = m.check_duration.remove_label_values(&[name]);
        let _ = m.check_slow.remove_label_values(&[name]);
        for st in Status::ALL {
            let _ = m.status.remove_label_values(&[name, st.as_str()]);
        }
        for r in ["success", "failure"] {
            let _ = m.restarts.remove_label_values(&[name, r]);
        }
        for r in Reason::ALL {
            let _ = m.check_failures.remove_label_values(&[name, r.as_str()]);
        }
        for model in s.check.models() {
            let _ = m.model_ready.remove_label_values(&[name, model]);
        }
    }

    /// A reload changed service `new`: models and stall detection that
    /// came get their series, those that went lose theirs.
    pub(super) fn change(&self, old: &ServiceConfig, new: &ServiceConfig) {
        let name = new.name.as_str();
        for model in old.check.models().iter().filter(|m| !new.check.models().contains(m)) {
            let _ = self.model_ready.remove_label_values(&[name, model]);
        }
        for model in new.check.models().iter().filter(|m| !old.check.models().contains(m)) {
            self.model_ready.with_label_values(&[name, model]).set(0.0);
        }
        match (old.progress.is_some(), new.progress.is_some()) {
            (true, false) => {
                let _ = self.stalled.remove_label_values(&[name]);
            }
            (false, true) => self.stalled.with_label_values(&[name]).set(0.0),
            _ => {}
        }
    }

    pub(super) fn set_status(&self, service: &str, status: Status) {
        self.up
            .with_label_values(&[service])
            .set(if status == Status::Healthy { 1.0 } else { 0.0 });
        for st in Status::ALL {
            self.status
                .with_label_values(&[service, st.as_str()])
                .set(if st == status { 1.0 } else { 0.0 });
        }
    }
}
