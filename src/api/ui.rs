//! `GET /ui/dlq`: the DLQ monitor page, vanilla HTML, CSS and JS embedded
//! in the binary. It loads nothing from elsewhere: the
//! `Content-Security-Policy` allows only this origin's script, style and
//! API calls, and no inline code at all, so text from a DLQ entry can never
//! run as script (the page sets it with `textContent` as well).

use axum::http::header;
use axum::response::IntoResponse;

const HTML: &str = include_str!("ui/dlq.html");
const CSS: &str = include_str!("ui/dlq.css");
const JS: &str = include_str!("ui/dlq.js");

/// Sent with every part of the page.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                       connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
}

/// `GET /ui/dlq`.
#[utoipa::path(get, path = "/ui/dlq", tag = "ui",
    responses((status = 200, description = "The DLQ monitor page", content_type = "text/html; charset=utf-8", body = String)))]
pub async fn page() -> impl IntoResponse {
    asset("text/html; charset=utf-8", HTML)
}

/// `GET /ui/dlq.js`.
#[utoipa::path(get, path = "/ui/dlq.js", tag = "ui",
    responses((status = 200, description = "The DLQ monitor's script", content_type = "text/javascript; charset=utf-8", body = String)))]
pub async fn script() -> impl IntoResponse {
    asset("text/javascript; charset=utf-8", JS)
}

/// `GET /ui/dlq.css`.
#[utoipa::path(get, path = "/ui/dlq.css", tag = "ui",
    responses((status = 200, description = "The DLQ monitor's style sheet", content_type = "text/css; charset=utf-8", body = String)))]
pub async fn style() -> impl IntoResponse {
    asset("text/css; charset=utf-8", CSS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_is_small_and_self_contained() {
        let total = HTML.len() + CSS.len() + JS.len();
        assert!(total < 60 * 1024, "{total} bytes");
        for (name, text) in [("html", HTML), ("css", CSS), ("js", JS)] {
            assert!(
                !text.contains("http://") && !text.contains("https://"),
                "{name} names another origin"
            );
            assert!(
                !text.contains("innerHTML") && !text.contains("eval("),
                "{name} builds code or HTML from text"
            );
        }
        // No inline script or style for the CSP to have to allow.
        assert!(!HTML.contains("<script>") && !HTML.contains("<style") && !HTML.contains(" style="));
        let inline_handler = HTML.split(" on").skip(1).any(|rest| {
            let name: String = rest.chars().take_while(|c| c.is_ascii_lowercase()).collect();
            !name.is_empty() && rest[name.len()..].starts_with('=')
        });
        assert!(!inline_handler, "an inline on…= handler");
    }
}
