//! What the health monitor last saw of each service, for
//! `/api/system/health` and the WebSocket snapshot. The `service_*` metric
//! families live with the monitor, which writes them.

use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::config::ServiceConfig;
use crate::restart::Status;

/// What the API reads about one service.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceView {
    pub name: String,
    pub critical: bool,
    pub status: Status,
    /// True during a start period (after the daemon starts or a restart).
    pub starting: bool,
    /// Ready to serve: Open Inference readiness, or the last check.
    pub ready: bool,
    /// Why the service has this status, e.g. the last check's error.
    pub message: String,
    pub restart_attempts: u32,
    pub consecutive_failures: u32,
    pub last_check: Option<DateTime<Utc>>,
}

/// Every service's view, in config order.
pub struct HealthState {
    services: RwLock<Vec<ServiceView>>,
}

/// A service not checked yet.
fn fresh(s: &ServiceConfig) -> ServiceView {
    ServiceView {
        name: s.name.clone(),
        critical: s.critical,
        status: Status::Unhealthy,
        starting: !s.start_period.is_zero(),
        ready: false,
        message: "not checked yet".into(),
        restart_attempts: 0,
        consecutive_failures: 0,
        last_check: None,
    }
}

impl HealthState {
    /// One "not checked yet" view per configured service.
    pub fn new(services: &[ServiceConfig]) -> Arc<HealthState> {
        Arc::new(HealthState {
            services: RwLock::new(services.iter().map(fresh).collect()),
        })
    }

    pub fn services(&self) -> Vec<ServiceView> {
        self.services.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The view of service `name`.
    pub fn service(&self, name: &str) -> Option<ServiceView> {
        self.services
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|v| v.name == name)
            .cloned()
    }

    /// Changes service `name`'s view (the health monitor).
    pub fn update(&self, name: &str, f: impl FnOnce(&mut ServiceView)) {
        let mut services = self.services.write().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = services.iter_mut().find(|v| v.name == name) {
            f(v);
        }
    }

    /// After a reload: the views of `services`, in their order. A service
    /// that stays keeps its view (its `critical` flag follows the config);
    /// a new one is not checked yet; a removed one is gone.
    pub fn set_services(&self, services: &[ServiceConfig]) {
        let mut views = self.services.write().unwrap_or_else(|e| e.into_inner());
        let next = services
            .iter()
            .map(|s| match views.iter().find(|v| v.name == s.name) {
                Some(v) => ServiceView {
                    critical: s.critical,
                    ..v.clone()
                },
                None => fresh(s),
            })
            .collect();
        *views = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn services(yaml: &str) -> Vec<ServiceConfig> {
        crate::config::Config::from_yaml(yaml).unwrap().health.services
    }

    #[test]
    fn a_reload_keeps_the_views_of_services_that_stay() {
        let before = services(
            "health: {services: [{name: a, kind: http, url: 'http://h/'}, {name: b, kind: http, url: 'http://h/'}]}",
        );
        let state = HealthState::new(&before);
        state.update("b", |v| {
            v.status = Status::Healthy;
            v.message = "check passed".into();
        });
        let after = services("health: {services: [{name: b, kind: http, url: 'http://h/', critical: true}, {name: c, kind: http, url: 'http://h/'}]}");
        state.set_services(&after);
        let views = state.services();
        let names: Vec<&str> = views.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["b", "c"], "a is gone, in the new order");
        assert_eq!(
            (views[0].status, views[0].message.as_str()),
            (Status::Healthy, "check passed")
        );
        assert!(views[0].critical, "the flag follows the config");
        assert_eq!(
            (views[1].status, views[1].message.as_str()),
            (Status::Unhealthy, "not checked yet")
        );
        assert!(state.service("a").is_none());
    }
}
