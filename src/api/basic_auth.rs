//! The rate limit, basic auth and response headers from
//! `--web.config.file`, on every route, the WebSocket included. With `basic_auth_users` set, a request
//! without a matching `Authorization: Basic` gets 401 with
//! `WWW-Authenticate`. `api.token` still guards the mutating routes on top;
//! with basic auth in the `Authorization` header, the token goes in
//! `X-Inferwatch-Token` (see [`super::auth`]).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;

use super::AppError;
use crate::webconf::{Loaded, WebRuntime};

pub async fn check(State(web): State<Arc<WebRuntime>>, req: Request, next: Next) -> Response {
    let loaded = web.current();
    // The toolkit's rate limit comes first: a request over it is not
    // authenticated or served.
    let limited = loaded.limiter.as_ref().filter(|(l, _)| l.check().is_err());
    let mut resp = if let Some((_, says)) = limited {
        AppError::status(
            StatusCode::TOO_MANY_REQUESTS,
            format!("too many requests: the web config's rate_limit allows {says}"),
            serde_json::Value::Null,
        )
        .into_response()
    } else if loaded.users.is_empty() || authorized(&web, &loaded, &req) {
        next.run(req).await
    } else {
        let mut r = AppError::status(
            StatusCode::UNAUTHORIZED,
            "authentication required: HTTP basic auth with a user of the web config file".to_string(),
            serde_json::Value::Null,
        )
        .with_code("unauthorized")
        .into_response();
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"inferwatch\", charset=\"UTF-8\""),
        );
        r
    };
    for (name, value) in &loaded.headers {
        resp.headers_mut().insert(name.clone(), value.clone());
    }
    resp
}

/// `user:password` from an `Authorization: Basic ...` header.
fn credentials(value: &str) -> Option<(String, String)> {
    let (scheme, rest) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(rest.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

fn authorized(web: &WebRuntime, loaded: &Loaded, req: &Request) -> bool {
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(credentials)
        .is_some_and(|(user, password)| web.check_password(loaded, &user, &password))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_parsed() {
        assert_eq!(
            credentials("Basic YWxpY2U6cHc6eA=="),
            Some(("alice".into(), "pw:x".into()))
        );
        assert_eq!(credentials("basic YWxpY2U6cHc="), Some(("alice".into(), "pw".into())));
        assert_eq!(credentials("Bearer abc"), None);
        assert_eq!(credentials("Basic !!!"), None);
        assert_eq!(credentials("Basic YWxpY2U="), None, "no colon");
    }
}
