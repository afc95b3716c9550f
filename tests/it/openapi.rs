//! The OpenAPI document against the router: every `.route(...)` in
//! `src/api/` is in `/api/openapi.json` with the same methods, and every
//! documented path is served by the real daemon (no `unmatched` 404). The
//! document itself is OpenAPI 3.1 with the auth schemes and the error shape.

use std::collections::{BTreeMap, BTreeSet};

use crate::common::{repo, Daemon};
use serde_json::Value;

/// Every `.rs` file under `dir`, in its folders too.
fn rust_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().and_then(|e| e.to_str()) == Some("rs") {
            out.push(path);
        }
    }
    out
}

/// The file a `routes!(a::b::handler)` in `file` names: `handler`'s own
/// module, next to `file` (or in `file`'s folder for a `mod.rs`).
fn handler_file(file: &std::path::Path, handler: &str) -> (std::path::PathBuf, String) {
    let mut parts: Vec<&str> = handler.trim().split("::").collect();
    let name = parts.pop().unwrap().to_string();
    if parts.is_empty() {
        return (file.to_path_buf(), name);
    }
    let mut dir = file.parent().unwrap().to_path_buf();
    if file.file_name().unwrap() != "mod.rs" {
        dir = dir.join(file.file_stem().unwrap());
    }
    let (last, folders) = parts.split_last().unwrap();
    for f in folders {
        dir = dir.join(f);
    }
    let flat = dir.join(format!("{last}.rs"));
    let path = if flat.exists() {
        flat
    } else {
        dir.join(last).join("mod.rs")
    };
    (path, name)
}

/// `(method, path)` of the `#[utoipa::path(method, path = "...")]` on `fn name`.
fn annotated_route(file: &std::path::Path, name: &str) -> (String, String) {
    let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let at = text
        .find(&format!("async fn {name}("))
        .unwrap_or_else(|| panic!("no fn {name} in {}", file.display()));
    let attr_at = text[..at].rfind("#[utoipa::path(").expect("an annotated handler");
    let attr = &text[attr_at + "#[utoipa::path(".len()..at];
    let method = attr.split(',').next().unwrap().trim().to_string();
    let path = attr.split("path = \"").nth(1).unwrap();
    (method, path[..path.find('"').unwrap()].to_string())
}

/// `(path, methods)` of every route in src/api: each
/// `.route("...", get(..).post(..))`, and each `routes!(handler)` with the
/// path and method of the handler's annotation.
fn router_routes() -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in rust_files(&repo().join("src/api")) {
        let text = std::fs::read_to_string(&file).unwrap();
        // `.route("path", get(..))`, on one line or as rustfmt splits it.
        for (i, _) in text.match_indices(".route(") {
            let rest = text[i + 7..].trim_start();
            let Some(rest) = rest.strip_prefix('"') else { continue };
            let path = &rest[..rest.find('"').unwrap()];
            let after = &rest[path.len() + 1..];
            let call = &after[..after.find(")\n").unwrap_or(after.len())];
            let methods = out.entry(path.to_string()).or_default();
            for m in ["get", "post", "delete", "put", "patch"] {
                if call.contains(&format!(" {m}(")) || call.contains(&format!(".{m}(")) {
                    methods.insert(m.to_string());
                }
            }
            assert!(!methods.is_empty(), "no method found for {path}: {call}");
        }
        for (i, _) in text.match_indices("routes!(") {
            let rest = &text[i + 8..];
            for handler in rest[..rest.find(')').unwrap()]
                .split(',')
                .filter(|h| !h.trim().is_empty())
            {
                let (source, name) = handler_file(&file, handler);
                let (method, path) = annotated_route(&source, &name);
                out.entry(path).or_default().insert(method);
            }
        }
    }
    out
}

async fn document(d: &Daemon) -> Value {
    let r = reqwest::get(d.url("/api/openapi.json")).await.unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_is_documented_and_every_documented_path_is_served() {
    let d = Daemon::start("queues:\n  enabled: false\ngpu:\n  nvml_library: /nonexistent\n", &[]).await;
    let doc = document(&d).await;
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    let paths = doc["paths"].as_object().unwrap();
    let routes = router_routes();
    assert!(routes.len() >= 19, "{routes:?}");
    for (path, methods) in &routes {
        let documented = paths
            .get(path)
            .unwrap_or_else(|| panic!("{path} is routed but not in the OpenAPI document"));
        for m in methods {
            assert!(documented.get(m).is_some(), "{m} {path} is routed but not documented");
        }
    }
    for (path, ops) in paths {
        assert!(routes.contains_key(path), "{path} is documented but not routed");
        for (m, op) in ops.as_object().unwrap() {
            assert!(routes[path].contains(m), "{m} {path} is documented but not routed");
            assert!(
                op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                "{m} {path}: no responses"
            );
        }
    }
    // The documented paths are served: a request matches a route (the
    // answer may be 4xx for missing parameters, never the fallback 404).
    let client = reqwest::Client::new();
    for (path, ops) in paths {
        for m in ops.as_object().unwrap().keys() {
            let url = d.url(&path.replace("{dlq}", "dlq:x"));
            let r = client
                .request(m.to_uppercase().parse().unwrap(), &url)
                .send()
                .await
                .unwrap();
            let body = r.text().await.unwrap();
            assert!(!body.contains("no such endpoint"), "{m} {path}: {body}");
        }
    }
    // Auth schemes and the error shape.
    let schemes = doc["components"]["securitySchemes"].as_object().unwrap();
    for s in ["api_token", "api_token_header", "basic_auth"] {
        assert!(schemes.contains_key(s), "{s}");
    }
    let err = &doc["components"]["schemas"]["ErrorBody"]["properties"];
    for f in ["error", "code", "detail"] {
        assert!(err.get(f).is_some(), "ErrorBody.{f}");
    }
    // Ranges are in the parameters.
    let minutes = doc["paths"]["/api/system/gpu/history"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "minutes")
        .unwrap();
    assert_eq!(minutes["schema"]["minimum"], 1);
    assert_eq!(minutes["schema"]["maximum"], 1440);
}

/// A handler's documented query parameters are the ones its `Query<T>`
/// checks: the `params(...)` of its annotation names `T`, and a handler
/// without a `Query<T>` documents no query struct.
#[test]
fn every_query_struct_is_the_documented_one() {
    let mut checked = 0;
    for file in rust_files(&repo().join("src/api")) {
        let text = std::fs::read_to_string(&file).unwrap();
        for (at, _) in text.match_indices("#[utoipa::path(") {
            let sig_at = at + text[at..].find("async fn ").unwrap();
            let attr = &text[at..sig_at];
            let sig = &text[sig_at..sig_at + text[sig_at..].find('{').unwrap()];
            let Some(q) = sig.find("Query<") else { continue };
            let ty = &sig[q + 6..q + 6 + sig[q + 6..].find('>').unwrap()];
            if ty == "NoParams" {
                continue;
            }
            let params = attr
                .split("params(")
                .nth(1)
                .unwrap_or_else(|| panic!("{}: {sig} takes Query<{ty}> but documents no params", file.display()));
            let names = &params[..params.find("responses(").unwrap_or(params.len())];
            assert!(
                names.split(|c: char| !c.is_alphanumeric() && c != '_').any(|w| w == ty),
                "{}: {sig} takes Query<{ty}> but its params(...) does not name {ty}",
                file.display()
            );
            checked += 1;
        }
    }
    assert!(checked >= 12, "{checked}");
}
