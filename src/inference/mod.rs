//! The inference servers behind the health checks: what kind each is, the
//! Prometheus HTTP service discovery list of their metrics endpoints
//! (`sd`), the bounded scrape proxy in front of them (`proxy`), and the
//! split of each GPU's energy between the services that hold it
//! (`energy`), and the SLO rules generated from the config's `slo`
//! section (`slo`, `inferwatch slo-rules`). The per-server metric names live
//! in `monitoring/inference_rules.yml`, which maps them onto one vocabulary;
//! what SLOs read of them is `config::servers`, which `check-config` needs.

pub mod energy;
pub mod proxy;
pub mod sd;
pub mod slo;

pub use crate::config::ServerKind;
