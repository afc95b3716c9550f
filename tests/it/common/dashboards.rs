//! Shared by the dashboard tests: the committed dashboards, their panels
//! and variables, and resolving the variables and running every panel
//! query against a real Prometheus, as Grafana would.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use super::{eventually, repo, Prometheus};

pub const DATASOURCE_UID: &str = "inferwatch-prometheus";

pub fn dashboards() -> Vec<(String, Value)> {
    let mut out: Vec<(String, Value)> = std::fs::read_dir(repo().join("grafana-dashboards"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            assert!(
                !text.contains("__inputs"),
                "{}: __inputs breaks file provisioning",
                p.display()
            );
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, serde_json::from_str(&text).unwrap())
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

pub fn panels(d: &Value) -> Vec<&Value> {
    // Rows may nest panels; flatten them.
    let mut out = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        if p["type"] == "row" {
            out.extend(p["panels"].as_array().into_iter().flatten());
        } else {
            out.push(p);
        }
    }
    out
}

pub fn variables(d: &Value) -> Vec<&Value> {
    d["templating"]["list"].as_array().unwrap().iter().collect()
}

/// `label_values(selector, label)` or `label_values(label)`.
pub fn parse_label_values(q: &str) -> (Option<String>, String) {
    let inner = q
        .trim()
        .strip_prefix("label_values(")
        .and_then(|s| s.strip_suffix(')'))
        .unwrap_or_else(|| panic!("unsupported variable query {q}"));
    match inner.rsplit_once(',') {
        Some((sel, label)) => (Some(sel.trim().to_string()), label.trim().to_string()),
        None => (None, inner.trim().to_string()),
    }
}

/// As Grafana formats a multi-value variable inside `=~"..."`.
pub fn regex_value(values: &[String]) -> String {
    let esc: Vec<String> = values
        .iter()
        .map(|v| {
            v.chars()
                .map(|c| {
                    if ".+*?^$()[]{}|\\".contains(c) {
                        format!("\\\\{c}")
                    } else {
                        c.to_string()
                    }
                })
                .collect()
        })
        .collect();
    if esc.len() == 1 {
        esc[0].clone()
    } else {
        format!("({})", esc.join("|"))
    }
}

pub fn substitute(expr: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = expr.replace("$__rate_interval", "10s");
    // Longest names first, so $gpu never eats part of a longer name.
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort_by_key(|n| std::cmp::Reverse(n.len()));
    for n in names {
        out = out
            .replace(&format!("${{{n}}}"), &vars[n])
            .replace(&format!("${n}"), &vars[n]);
    }
    assert!(!out.contains('$'), "unsubstituted variable in {out}");
    out
}

pub async fn label_values(prom: &Prometheus, selector: Option<&str>, label: &str) -> Vec<String> {
    let mut req = reqwest::Client::new().get(format!("http://127.0.0.1:{}/api/v1/label/{label}/values", prom.port));
    if let Some(s) = selector {
        req = req.query(&[("match[]", s)]);
    }
    let body: Value = req.send().await.unwrap().json().await.unwrap();
    assert_eq!(body["status"], "success", "{body}");
    body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

/// Resolves `d`'s variables in order against `prom`, as Grafana does (All
/// for multi-value ones); every variable must have values.
pub async fn resolve_variables(prom: &Prometheus, file: &str, d: &Value) -> BTreeMap<String, String> {
    let mut vars: BTreeMap<String, String> = BTreeMap::new();
    for v in variables(d) {
        let name = v["name"].as_str().unwrap().to_string();
        if v["type"] == "datasource" {
            vars.insert(name, DATASOURCE_UID.into());
            continue;
        }
        let (selector, label) = parse_label_values(v["query"]["query"].as_str().unwrap());
        let selector = selector.map(|s| substitute(&s, &vars));
        let values = label_values(prom, selector.as_deref(), &label).await;
        assert!(
            !values.is_empty(),
            "{file}: variable {name} ({selector:?}, {label}) has no values"
        );
        vars.insert(name, regex_value(&values));
    }
    vars
}

/// Runs every panel query of `d` with `vars` substituted; each must return
/// data (waiting, bounded, for series that appear a little later: ALERTS
/// after the first evaluation, rates after two samples). Returns how many
/// queries ran.
pub async fn every_query_returns_data(
    prom: &Prometheus,
    file: &str,
    d: &Value,
    vars: &BTreeMap<String, String>,
) -> usize {
    let mut queried = 0;
    for p in panels(d) {
        for t in p["targets"].as_array().unwrap() {
            let expr = substitute(t["expr"].as_str().unwrap(), vars);
            let title = p["title"].as_str().unwrap();
            eventually(&format!("{file}: {title}: {expr}"), Duration::from_secs(30), || {
                let expr = &expr;
                async move {
                    let r = prom.query(expr).await;
                    (!r.is_empty()).then_some(r)
                }
            })
            .await;
            queried += 1;
        }
    }
    queried
}
