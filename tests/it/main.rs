//! The integration tests: one binary with a module per area, as cargo's own
//! `tests/testsuite` is built, so the harness in `common/` is compiled and
//! linked once. Each test still runs in its own process under nextest.

mod common;

mod alerting;
mod attribution;
mod bounded_reads;
mod bullmq;
mod bundle;
mod celery;
mod config;
mod dashboards;
mod dlq;
mod dlq_console;
mod dlq_types;
mod doc_tables;
mod docs;
mod dramatiq;
mod e2e;
mod examples;
mod fleet;
mod golden;
mod gpu;
mod gpu_profiles;
mod gpu_profiling;
mod health;
mod hostile;
mod http_metrics;
mod inference;
mod inference_proxy;
mod inference_servers;
mod job_frameworks;
mod layout;
mod llm_servers;
mod openapi;
mod package;
mod pipeline;
mod properties;
mod redis_tls_acl;
mod reload;
mod schemathesis;
mod sentinel;
mod slo;
mod soak;
mod storage;
mod store;
mod ui;
mod waiting;
mod web_tls;
mod ws;
