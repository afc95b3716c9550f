//! `GET /`: the exporter landing page. A small HTML page with no external
//! assets: the version, links to `/metrics`, the probes and the JSON
//! endpoints, and which collectors run. Everything on it is fixed at build
//! or startup; nothing a client sends is echoed.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use super::AppState;

/// The links on the page: path and what it serves.
pub const LINKS: [(&str, &str); 10] = [
    (
        "/ui/dlq",
        "the DLQ monitor: failed jobs, requeue, clear and undo, in the browser",
    ),
    ("/metrics", "Prometheus metrics"),
    ("/api/openapi.json", "the OpenAPI 3.1 document of this API"),
    ("/-/healthy", "liveness probe"),
    ("/-/ready", "readiness probe (503 until every collector has run once)"),
    ("/api/system/gpus", "every GPU's latest reading (JSON)"),
    ("/api/system/health", "service health (JSON)"),
    ("/api/system/stats", "daemon and system summary (JSON)"),
    ("/api/system/dlq/stats", "queue and dead-letter-queue depths (JSON)"),
    ("/api/system/storage/stats", "data directory usage (JSON)"),
];

/// HTML-escapes text for the page.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The page for this version and these collectors (`name`, `about`, `on`).
pub fn page(version: &str, collectors: &[(&str, &str, bool)]) -> String {
    let links: String = LINKS
        .iter()
        .map(|(path, what)| format!("<li><a href=\"{path}\">{path}</a> &mdash; {}</li>\n", escape(what)))
        .collect();
    let rows: String = collectors
        .iter()
        .map(|(name, about, on)| {
            format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>\n",
                escape(name),
                if *on { "running" } else { "off" },
                escape(about)
            )
        })
        .collect();
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\"><title>inferwatch</title>\n\
         <style>body{{font-family:sans-serif;max-width:48em;margin:2em auto;padding:0 1em}}\
         td{{padding:0.2em 1em 0.2em 0}}</style></head>\n<body>\n\
         <h1>inferwatch</h1>\n<p>GPU inference monitoring daemon, version {}.</p>\n\
         <h2>Endpoints</h2>\n<ul>\n{links}</ul>\n\
         <h2>Collectors</h2>\n<table>\n<tr><th>name</th><th>state</th><th>reads</th></tr>\n{rows}</table>\n\
         </body>\n</html>\n",
        escape(version)
    )
}

/// `GET /`.
#[utoipa::path(get, path = "/", tag = "probes",
    responses((status = 200, description = "The landing page", content_type = "text/html; charset=utf-8", body = String)))]
pub async fn landing(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        page(env!("CARGO_PKG_VERSION"), &state.collectors),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_links_every_endpoint_and_lists_the_collectors() {
        let p = page("1.2.3", &[("gpu", "GPUs <NVML>", true), ("queues", "Redis", false)]);
        assert!(p.contains("version 1.2.3"));
        for (path, _) in LINKS {
            assert!(p.contains(&format!("<a href=\"{path}\">")), "{path}");
        }
        assert!(p.contains("<td>gpu</td><td>running</td><td>GPUs &lt;NVML&gt;</td>"));
        assert!(p.contains("<td>queues</td><td>off</td>"));
        assert!(!p.contains("http://") && !p.contains("https://"), "no external assets");
    }
}
