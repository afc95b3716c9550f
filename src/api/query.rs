//! Query-string parsing shared by the API handlers: unknown parameters and
//! parameters given twice are refused, integers are range-checked, and every
//! refusal is a 400 that says what is allowed.

use std::collections::HashMap;

use serde::Serialize;
use serde_json::json;

use super::AppError;

pub(crate) type RawQuery = axum::extract::RawQuery;

/// Parses the query string, refusing parameters the endpoint does not know
/// and parameters given twice (`?queue=A&queue=B` has no one meaning).
pub(crate) fn params(q: RawQuery, allowed: &[&str]) -> Result<HashMap<String, String>, AppError> {
    let mut map = HashMap::new();
    let raw = q.0.unwrap_or_default();
    for (key, value) in form_urlencoded::parse(raw.as_bytes()) {
        if !allowed.contains(&key.as_ref()) {
            return Err(AppError::bad_request(
                format!("unknown query parameter {key:?}"),
                json!({ "allowed": allowed }),
            ));
        }
        if map.insert(key.to_string(), value.into_owned()).is_some() {
            return Err(AppError::bad_request(
                format!("query parameter {key:?} is given more than once"),
                json!({ "parameter": key, "allowed": "each parameter at most once" }),
            ));
        }
    }
    Ok(map)
}

/// Parses an integer parameter and checks its range.
pub(crate) fn int_param<T>(map: &HashMap<String, String>, key: &str, range: (T, T)) -> Result<Option<T>, AppError>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display + Serialize + Copy,
{
    let Some(raw) = map.get(key) else { return Ok(None) };
    let allowed = json!({ "parameter": key, "min": range.0, "max": range.1 });
    let v: T = raw.trim().parse().map_err(|_| {
        AppError::bad_request(
            format!(
                "{key} must be a whole number from {} to {}, got {raw:?}",
                range.0, range.1
            ),
            allowed.clone(),
        )
    })?;
    if v < range.0 || v > range.1 {
        return Err(AppError::bad_request(
            format!("{key} must be from {} to {}, got {v}", range.0, range.1),
            allowed,
        ));
    }
    Ok(Some(v))
}
