//! `inferwatch slo-rules`: the Prometheus rules of the config's `slo`
//! section, generated as Sloth and Pyrra generate them, never written by
//! hand per service. Pure: config in, rules file (YAML) out.
//!
//! For each SLO (`slo` label `<service>-availability` or
//! `<service>-latency`):
//! - `slo:sli_error:ratio_rate<w>` for the windows in [`WINDOWS`]: the share
//!   of bad requests, from the server's own counters and histograms (the
//!   table in [`crate::config::servers`]) as Prometheus scrapes them through
//!   the daemon's proxy (job `inference`), per `instance` and `service`.
//!   Absent while no request finished, so the budget's average skips idle
//!   time instead of turning NaN;
//! - `slo:objective:ratio`, per node that serves the service;
//! - `slo:error_budget_remaining:ratio` over [`PERIOD`];
//! - the four `InferenceErrorBudgetBurn` alerts of the Google SRE workbook's
//!   multi-window, multi-burn-rate table ([`BURN_ALERTS`]).

use std::fmt::Write;

use crate::config::servers::{self, Counter, Histogram, Measure, Outcomes, Requests};
use crate::config::Config;

/// The windows the error ratio is recorded over.
pub const WINDOWS: [&str; 7] = ["5m", "30m", "1h", "2h", "6h", "1d", "3d"];

/// The SLO period: the budget is the bad share the objective allows over it.
pub const PERIOD: &str = "30d";

/// Hours in a window (`"1h"`, `"3d"`).
fn hours(window: &str) -> f64 {
    crate::config::parse_duration(window).expect("a window is a duration") / 3600.0
}

/// Who an alert wakes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// Someone acts now.
    Page,
    /// Someone acts this week.
    Ticket,
}

impl Severity {
    /// The `severity` label: this repo's alerts and alertmanager.yml route
    /// `critical` (paged at once) and `warning` (grouped, every 4 h), so a
    /// page is `critical` and a ticket `warning`.
    pub fn label(self) -> &'static str {
        match self {
            Severity::Page => "critical",
            Severity::Ticket => "warning",
        }
    }
}

/// One row of the workbook's table: the alert fires while the error ratio
/// over both windows is above `factor` times the budget.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BurnAlert {
    pub factor: f64,
    pub long: &'static str,
    pub short: &'static str,
    pub severity: Severity,
}

/// The Google SRE workbook, "Alerting on SLOs", multiwindow, multi-burn-rate.
pub const BURN_ALERTS: [BurnAlert; 4] = [
    BurnAlert {
        factor: 14.4,
        long: "1h",
        short: "5m",
        severity: Severity::Page,
    },
    BurnAlert {
        factor: 6.0,
        long: "6h",
        short: "30m",
        severity: Severity::Page,
    },
    BurnAlert {
        factor: 3.0,
        long: "1d",
        short: "2h",
        severity: Severity::Ticket,
    },
    BurnAlert {
        factor: 1.0,
        long: "3d",
        short: "6h",
        severity: Severity::Ticket,
    },
];

/// The alert's name, and its runbook.
pub const ALERT: &str = "InferenceErrorBudgetBurn";
const RUNBOOK: &str = "https://github.com/inferwatch/inferwatch/blob/main/docs/runbooks.md#inferenceerrorbudgetburn";

/// One SLO, resolved against its service's server.
#[derive(Debug, Clone, PartialEq)]
pub struct Slo {
    /// The `slo` label.
    pub name: String,
    pub service: String,
    pub objective: f64,
    pub sli: Sli,
}

/// What makes a request bad.
#[derive(Debug, Clone, PartialEq)]
pub enum Sli {
    /// It failed, by the server's counters.
    Availability(Requests),
    /// It took longer than the boundary `le` of `histogram`.
    Latency {
        histogram: Histogram,
        le: String,
        threshold: f64,
        measure: Measure,
    },
}

/// The SLOs of a validated config, in config order, availability first.
pub fn slos(config: &Config) -> Vec<Slo> {
    let mut out = Vec::new();
    for spec in &config.slo.services {
        let Some(svc) = config.health.services.iter().find(|s| s.name == spec.service) else {
            continue;
        };
        let table = servers::sli(svc.server());
        if let (Some(a), Some(requests)) = (&spec.availability, table.requests) {
            out.push(Slo {
                name: format!("{}-availability", spec.service),
                service: spec.service.clone(),
                objective: a.objective,
                sli: Sli::Availability(requests),
            });
        }
        let Some(l) = &spec.latency else { continue };
        let Some(h) = table.histogram(l.measure) else { continue };
        let Some(b) = h.boundary_at(l.threshold) else { continue };
        out.push(Slo {
            name: format!("{}-latency", spec.service),
            service: spec.service.clone(),
            objective: l.objective,
            sli: Sli::Latency {
                histogram: *h,
                le: b.le,
                threshold: l.threshold,
                measure: l.measure,
            },
        });
    }
    out
}

/// `{job="inference", service="S", <extra>}`.
fn selector(service: &str, extra: &str) -> String {
    let extra = if extra.is_empty() {
        String::new()
    } else {
        format!(", {extra}")
    };
    format!(r#"{{job="inference", service="{service}"{extra}}}"#)
}

/// `sum by (instance, service) (rate(metric{…}[w]))`.
fn rate(metric: &str, service: &str, extra: &str, window: &str) -> String {
    format!(
        "sum by (instance, service) (rate({metric}{}[{window}]))",
        selector(service, extra)
    )
}

fn counter_rate(c: &Counter, service: &str, window: &str) -> String {
    rate(c.metric, service, c.matchers, window)
}

/// The share of bad requests of `slo` over `window`, as PromQL. A counter
/// a server creates at its first use (TGI's, the 5xx class) counts as 0
/// while its partner exists; a window without requests gives no sample.
pub fn error_ratio(slo: &Slo, window: &str) -> String {
    let s = slo.service.as_str();
    match &slo.sli {
        Sli::Availability(r) => match &r.outcomes {
            Outcomes::Total { total, failed } => {
                let t = counter_rate(total, s, window);
                let f = counter_rate(failed, s, window);
                format!("(\n  {f}\n  or 0 * {t}\n)\n/\n({t} > 0)")
            }
            Outcomes::Split { success, failed } => {
                let ok = counter_rate(success, s, window);
                let bad = counter_rate(failed, s, window);
                let ok = format!("({ok}\n    or 0 * {bad})");
                let bad = format!("({bad}\n    or 0 * {ok})");
                format!("{bad}\n/\n(\n  {ok}\n  + {bad}\n  > 0\n)")
            }
        },
        Sli::Latency { histogram, le, .. } => {
            let fast = rate(
                &format!("{}_bucket", histogram.metric),
                s,
                &format!(r#"le="{le}""#),
                window,
            );
            let all = rate(&format!("{}_count", histogram.metric), s, "", window);
            format!("1 - (\n  {fast}\n  /\n  ({all} > 0)\n)")
        }
    }
}

/// `expr: |` with `text` indented under it, at `indent` spaces.
fn block(out: &mut String, indent: usize, text: &str) {
    let pad = " ".repeat(indent);
    let _ = writeln!(out, "{pad}expr: |");
    for line in text.lines() {
        let _ = writeln!(out, "{pad}  {line}");
    }
}

/// `(1 - 0.999)`: the budget, written as the objective it comes from.
fn budget(objective: f64) -> String {
    format!("(1 - {objective})")
}

fn recording_rules(out: &mut String, slo: &Slo) {
    for window in WINDOWS {
        let _ = writeln!(out, "      - record: slo:sli_error:ratio_rate{window}");
        let _ = writeln!(out, "        labels:\n          slo: {}", slo.name);
        block(out, 8, &error_ratio(slo, window));
    }
    let _ = writeln!(
        out,
        "      # Per node that serves the service (its target is up or down)."
    );
    let _ = writeln!(out, "      - record: slo:objective:ratio");
    let _ = writeln!(out, "        labels:\n          slo: {}", slo.name);
    let up = format!("up{}", selector(&slo.service, ""));
    let _ = writeln!(
        out,
        "        expr: 0 * max by (instance, service) ({up}) + {}",
        slo.objective
    );
    let _ = writeln!(
        out,
        "      # 1 = untouched, 0 = spent, below 0 = overspent; over {PERIOD}, or what Prometheus keeps."
    );
    let _ = writeln!(out, "      - record: slo:error_budget_remaining:ratio");
    let _ = writeln!(out, "        labels:\n          slo: {}", slo.name);
    let _ = writeln!(
        out,
        "        expr: 1 - avg_over_time(slo:sli_error:ratio_rate5m{{slo=\"{}\"}}[{PERIOD}]) / {}",
        slo.name,
        budget(slo.objective)
    );
}

/// What the SLO promises, for the alert's description.
fn promise(slo: &Slo) -> String {
    let pct = format_percent(slo.objective);
    match &slo.sli {
        Sli::Availability(_) => format!("{pct} of requests succeed"),
        Sli::Latency { threshold, measure, .. } => {
            let what = match measure {
                Measure::TimeToFirstToken => "a first token",
                Measure::RequestDuration => "a complete answer",
            };
            format!("{pct} of requests get {what} within {threshold} s")
        }
    }
}

fn format_percent(ratio: f64) -> String {
    let pct = format!("{:.4}", ratio * 100.0);
    format!("{}%", pct.trim_end_matches('0').trim_end_matches('.'))
}

fn alert(out: &mut String, slo: &Slo, a: &BurnAlert) {
    let threshold = format!("({} * {})", a.factor, budget(slo.objective));
    let ratio = |w: &str| format!("slo:sli_error:ratio_rate{w}{{slo=\"{}\"}} > {threshold}", slo.name);
    let _ = writeln!(out, "      - alert: {ALERT}");
    block(out, 8, &format!("{}\nand\n{}", ratio(a.long), ratio(a.short)));
    let _ = writeln!(out, "        labels:");
    let _ = writeln!(out, "          severity: {}", a.severity.label());
    let _ = writeln!(
        out,
        "          long_window: {}\n          short_window: {}",
        a.long, a.short
    );
    let _ = writeln!(out, "          slo: {}\n          service: {}", slo.name, slo.service);
    let summary = match a.severity {
        Severity::Page => "An inference SLO is burning its error budget fast.",
        Severity::Ticket => "An inference SLO is burning its error budget.",
    };
    let spent = a.factor * hours(a.long) / hours(PERIOD) * 100.0;
    let days = hours(PERIOD) / 24.0 / a.factor;
    let _ = writeln!(out, "        annotations:\n          summary: {summary}");
    let _ = writeln!(
        out,
        "          description: '{{{{ $labels.slo }}}} on {{{{ $labels.instance }}}}: {{{{ $value | humanizePercentage }}}} of requests were bad over the last {long}, and over {short} too: more than {factor} times the error rate the objective ({promise}) allows. At {factor} times, {spent:.0}% of the {PERIOD} error budget goes in {long} and all of it in {days:.1} days.'",
        long = a.long,
        short = a.short,
        factor = a.factor,
        promise = promise(slo),
    );
    let _ = writeln!(out, "          runbook_url: {RUNBOOK}");
}

/// The whole rules file. `command` is how it was made, for its header.
pub fn render(config: &Config, command: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# Generated by `{command}`: do not edit.");
    let _ = writeln!(
        out,
        "# Change the config's slo: section and run it again (docs/slo.md)."
    );
    let _ = writeln!(out, "# Check with: promtool check rules <this file>");
    let slos = slos(config);
    if slos.is_empty() {
        out.push_str("groups: []\n");
        return out;
    }
    out.push_str("groups:\n");
    for slo in &slos {
        let _ = writeln!(out, "  - name: slo-{}", slo.name);
        let _ = writeln!(out, "    rules:");
        recording_rules(&mut out, slo);
        for a in &BURN_ALERTS {
            alert(&mut out, slo, a);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = "health:\n  services:\n\
        \x20   - {name: llm, kind: http, url: 'http://127.0.0.1:8000/health', metrics_url: 'http://127.0.0.1:8000/metrics', server: vllm}\n\
        \x20   - {name: tgi, kind: http, url: 'http://127.0.0.1:8081/health', metrics_url: 'http://127.0.0.1:8081/metrics', server: tgi}\n\
        \x20   - {name: triton, kind: open_inference, url: 'http://127.0.0.1:8001', metrics_url: 'http://127.0.0.1:8002/metrics', server: triton}\n\
        slo:\n  services:\n\
        \x20   - service: llm\n      availability: {objective: 0.999}\n      latency: {measure: time_to_first_token, threshold: 0.5, objective: 0.99}\n\
        \x20   - service: tgi\n      availability: {objective: 0.995}\n\
        \x20   - service: triton\n      latency: {measure: time_to_first_token, threshold: 0.1, objective: 0.95}\n";

    fn config() -> Config {
        let c = Config::from_yaml(CONFIG).unwrap();
        c.validate().unwrap();
        c
    }

    #[test]
    fn each_objective_is_one_slo_named_after_its_service() {
        let names: Vec<String> = slos(&config()).into_iter().map(|s| s.name).collect();
        assert_eq!(
            names,
            ["llm-availability", "llm-latency", "tgi-availability", "triton-latency"]
        );
    }

    #[test]
    fn latency_reads_the_servers_own_le_and_count() {
        let s = slos(&config());
        let q = error_ratio(&s[1], "5m");
        assert!(
            q.contains(r#"vllm:time_to_first_token_seconds_bucket{job="inference", service="llm", le="0.5"}[5m]"#),
            "{q}"
        );
        assert!(
            q.contains(r#"vllm:time_to_first_token_seconds_count{job="inference", service="llm"}[5m]"#),
            "{q}"
        );
        assert!(q.starts_with("1 - ("), "{q}");
        // Triton's milliseconds: 0.1 s is le="100".
        assert!(error_ratio(&s[3], "1h").contains(r#"le="100""#));
    }

    #[test]
    fn availability_reads_failures_over_all_and_survives_lazy_counters() {
        let s = slos(&config());
        let q = error_ratio(&s[0], "30m");
        assert!(
            q.contains(r#"http_requests_total{job="inference", service="llm", method="POST", status="5xx"}[30m]"#),
            "{q}"
        );
        assert!(
            q.contains("or 0 * sum by (instance, service) (rate(http_requests_total"),
            "{q}"
        );
        assert!(q.contains("> 0)"), "no NaN while idle: {q}");
        let q = error_ratio(&s[2], "1h");
        assert!(
            q.contains(r#"tgi_request_failure{job="inference", service="tgi", err!~"validation|dropped"}[1h]"#),
            "{q}"
        );
        // Either counter may be missing until its first increment.
        assert!(
            q.contains("or 0 * sum by (instance, service) (rate(tgi_request_failure"),
            "{q}"
        );
        assert!(
            q.contains("or 0 * (sum by (instance, service) (rate(tgi_request_success"),
            "{q}"
        );
    }

    #[test]
    fn the_file_has_every_window_the_meta_records_and_four_alerts_per_slo() {
        let text = render(&config(), "inferwatch slo-rules --config x.yml");
        assert!(text.starts_with("# Generated by `inferwatch slo-rules --config x.yml`"));
        for w in WINDOWS {
            assert_eq!(
                text.matches(&format!("record: slo:sli_error:ratio_rate{w}\n")).count(),
                4,
                "{w}"
            );
        }
        assert_eq!(text.matches("record: slo:objective:ratio\n").count(), 4);
        assert_eq!(text.matches("record: slo:error_budget_remaining:ratio\n").count(), 4);
        assert_eq!(text.matches("alert: InferenceErrorBudgetBurn\n").count(), 16);
        assert!(text.contains("slo:sli_error:ratio_rate1h{slo=\"llm-availability\"} > (14.4 * (1 - 0.999))"));
        assert!(text.contains("avg_over_time(slo:sli_error:ratio_rate5m{slo=\"llm-availability\"}[30d]) / (1 - 0.999)"));
        assert!(text.contains("long_window: 3d\n          short_window: 6h"));
        assert!(text.contains("99.9% of requests succeed"), "{text}");
        assert!(
            text.contains("95% of requests get a first token within 0.1 s"),
            "{text}"
        );
        let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
        assert_eq!(doc["groups"].as_sequence().unwrap().len(), 4);
    }

    #[test]
    fn the_workbook_table_spends_the_budget_it_says() {
        // 2 %, 5 %, 10 %, 10 % of a 30-day budget in the long window.
        let spent: Vec<f64> = BURN_ALERTS
            .iter()
            .map(|a| a.factor * hours(a.long) / hours(PERIOD))
            .collect();
        for (s, want) in spent.iter().zip([0.02, 0.05, 0.1, 0.1]) {
            assert!((s - want).abs() < 1e-9, "{spent:?}");
        }
        for a in BURN_ALERTS {
            assert!(WINDOWS.contains(&a.long) && WINDOWS.contains(&a.short));
        }
        assert_eq!(Severity::Page.label(), "critical");
    }

    #[test]
    fn no_slo_is_an_empty_group_list() {
        let text = render(&Config::default(), "x");
        assert!(text.ends_with("groups: []\n"));
    }
}
