//! Query strings, declared once. A handler takes [`Query<T>`] where `T` is
//! a `#[derive(Deserialize, IntoParams)]` struct: utoipa puts `T`'s
//! parameters in the OpenAPI document (the `axum_extras` feature reads the
//! handler's arguments), and this extractor enforces that same list and
//! those same schemas before `T` is built. So a parameter is documented
//! exactly when it is accepted, and its documented range is its checked
//! range.
//!
//! Refused, each with a 400 whose JSON says what is allowed: a parameter
//! the route does not document (`allowed` lists those it does), one given
//! twice (`?queue=A&queue=B` has no one meaning), and a value outside its
//! schema: a whole number or number outside `minimum`–`maximum`, a string
//! outside `minLength`–`maxLength` or not matching `pattern`, anything but
//! `true`/`false` for a boolean, or a value not in `enum`.

use std::collections::HashSet;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use serde_json::{json, Map, Value};
use utoipa::openapi::path::{Parameter, ParameterIn};
use utoipa::openapi::schema::{Object, Schema, SchemaType, Type};
use utoipa::openapi::RefOr;
use utoipa::IntoParams;

use super::AppError;

/// The query string of a request, checked against `T`'s documented
/// parameters, then deserialised into `T`.
pub struct Query<T>(pub T);

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned + IntoParams,
    S: Send + Sync,
{
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, AppError> {
        parse(parts.uri.query().unwrap_or_default()).map(Query)
    }
}

/// A route that takes no query parameters: any one is refused.
#[derive(serde::Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct NoParams {}

/// Two parameter sets as one (`Both<Page, FilterParams>`): each half is
/// documented and deserialised from the same query string. Give the pair a
/// `type` alias so the OpenAPI derive sees a plain name.
#[derive(serde::Deserialize)]
pub struct Both<A, B> {
    #[serde(flatten)]
    pub a: A,
    #[serde(flatten)]
    pub b: B,
}

impl<A: IntoParams, B: IntoParams> IntoParams for Both<A, B> {
    fn into_params(parameter_in: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        let mut out = A::into_params(&parameter_in);
        out.extend(B::into_params(&parameter_in));
        out
    }
}

/// Checks `raw` against `T`'s parameters and builds `T`.
pub(crate) fn parse<T: DeserializeOwned + IntoParams>(raw: &str) -> Result<T, AppError> {
    let documented = T::into_params(|| Some(ParameterIn::Query));
    let allowed: Vec<&str> = documented.iter().map(|p| p.name.as_str()).collect();
    let mut seen = HashSet::new();
    let mut values = Map::new();
    for (key, value) in form_urlencoded::parse(raw.as_bytes()) {
        let Some(param) = documented.iter().find(|p| p.name == key) else {
            return Err(AppError::bad_request(
                format!("unknown query parameter {key:?}"),
                json!({ "allowed": allowed }),
            ));
        };
        if !seen.insert(key.to_string()) {
            return Err(AppError::bad_request(
                format!("query parameter {key:?} is given more than once"),
                json!({ "parameter": key, "allowed": "each parameter at most once" }),
            ));
        }
        values.insert(key.to_string(), typed(param, &value)?);
    }
    serde_json::from_value(Value::Object(values)).map_err(|e| {
        // Every value passed its schema, so this is a schema that says less
        // than the type it feeds: a bug, answered as a 400 all the same.
        tracing::warn!(error = %e, "A query that passed its schema did not deserialise.");
        AppError::bad_request(
            "the query string does not fit this endpoint",
            json!({ "allowed": allowed }),
        )
    })
}

/// The schema object of a parameter (`Option<T>` fields may be `T | null`).
fn object(param: &Parameter) -> Option<&Object> {
    match param.schema.as_ref()? {
        RefOr::T(Schema::Object(o)) => Some(o),
        _ => None,
    }
}

/// Whether the schema's type is (or includes) `t`.
fn is(o: &Object, t: Type) -> bool {
    match &o.schema_type {
        SchemaType::Type(x) => *x == t,
        SchemaType::Array(xs) => xs.contains(&t),
        SchemaType::AnyValue => false,
    }
}

/// `raw` as the JSON value its schema says, or a 400 naming the parameter
/// and what its schema allows.
fn typed(param: &Parameter, raw: &str) -> Result<Value, AppError> {
    let key = param.name.as_str();
    let Some(o) = object(param) else {
        return Ok(Value::String(raw.to_string()));
    };
    let (min, max) = (number(&o.minimum), number(&o.maximum));
    let value = if is(o, Type::Integer) {
        // A minimum of 0 or more makes `-1` not a whole number here.
        let v: Option<i128> = if min.is_some_and(|m| m >= 0.0) {
            raw.trim().parse::<u64>().ok().map(i128::from)
        } else {
            raw.trim().parse::<i64>().ok().map(i128::from)
        };
        let v = v.ok_or_else(|| range_error(key, format!("a whole number{}", range_text(min, max)), raw, min, max))?;
        check_range(key, v as f64, raw, min, max)?;
        json!(v as i64)
    } else if is(o, Type::Number) {
        let v: f64 = raw
            .trim()
            .parse()
            .ok()
            .filter(|v: &f64| v.is_finite())
            .ok_or_else(|| range_error(key, format!("a number{}", range_text(min, max)), raw, min, max))?;
        check_range(key, v, raw, min, max)?;
        json!(v)
    } else if is(o, Type::Boolean) {
        match raw {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => {
                return Err(AppError::bad_request(
                    format!("{key} must be true or false, got {raw:?}"),
                    json!({ "parameter": key, "allowed": ["true", "false"] }),
                ))
            }
        }
    } else {
        check_string(key, o, raw)?;
        Value::String(raw.to_string())
    };
    if let Some(allowed) = &o.enum_values {
        if !allowed.contains(&value) {
            return Err(AppError::bad_request(
                format!("{key} must be one of {}, got {raw:?}", list(allowed)),
                json!({ "parameter": key, "allowed": allowed }),
            ));
        }
    }
    Ok(value)
}

fn number(n: &Option<utoipa::Number>) -> Option<f64> {
    match n.as_ref()? {
        utoipa::Number::Int(i) => Some(*i as f64),
        utoipa::Number::UInt(u) => Some(*u as f64),
        utoipa::Number::Float(f) => Some(*f),
    }
}

/// " from 1 to 1000", " of at least 0", or "".
fn range_text(min: Option<f64>, max: Option<f64>) -> String {
    match (min, max) {
        (Some(a), Some(b)) => format!(" from {a} to {b}"),
        (Some(a), None) => format!(" of at least {a}"),
        (None, Some(b)) => format!(" of at most {b}"),
        (None, None) => String::new(),
    }
}

fn range_error(key: &str, what: String, raw: &str, min: Option<f64>, max: Option<f64>) -> AppError {
    AppError::bad_request(
        format!("{key} must be {what}, got {raw:?}"),
        json!({ "parameter": key, "min": min, "max": max }),
    )
}

fn check_range(key: &str, v: f64, raw: &str, min: Option<f64>, max: Option<f64>) -> Result<(), AppError> {
    if min.is_some_and(|m| v < m) || max.is_some_and(|m| v > m) {
        let what = range_text(min, max);
        return Err(AppError::bad_request(
            format!("{key} must be{what}, got {}", raw.trim()),
            json!({ "parameter": key, "min": min, "max": max }),
        ));
    }
    Ok(())
}

/// Length in bytes, then the pattern.
fn check_string(key: &str, o: &Object, raw: &str) -> Result<(), AppError> {
    let (lo, hi) = (o.min_length.unwrap_or(0), o.max_length.unwrap_or(usize::MAX));
    if raw.len() < lo || raw.len() > hi {
        let what = match o.max_length {
            Some(hi) => format!("{lo}–{hi} bytes"),
            None => format!("at least {lo} bytes"),
        };
        return Err(AppError::bad_request(
            format!("{key} must be {what}"),
            json!({ "parameter": key, "min_length": lo, "max_length": o.max_length }),
        ));
    }
    let Some(pattern) = &o.pattern else { return Ok(()) };
    let matches = regex_lite::Regex::new(pattern).map(|re| re.is_match(raw));
    debug_assert!(
        matches.is_ok(),
        "{key}: the documented pattern {pattern} does not compile"
    );
    if matches == Ok(false) {
        let about = o.description.as_deref().or(param_hint(o)).unwrap_or_default();
        return Err(AppError::bad_request(
            format!("{key} must match {pattern} ({about}), got {raw:?}"),
            json!({ "parameter": key, "pattern": pattern }),
        ));
    }
    Ok(())
}

fn param_hint(o: &Object) -> Option<&str> {
    o.examples.first().and_then(Value::as_str)
}

/// `a, b or c`.
fn list(values: &[Value]) -> String {
    let names: Vec<String> = values
        .iter()
        .map(|v| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string()))
        .collect();
    match names.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => names.join(""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, IntoParams, Debug)]
    #[into_params(parameter_in = Query)]
    #[allow(dead_code)]
    struct Page {
        #[param(minimum = 1, maximum = 1000, nullable = false)]
        limit: Option<u64>,
        #[param(nullable = false)]
        dry_run: Option<bool>,
        #[param(min_length = 1, max_length = 4, nullable = false)]
        q: Option<String>,
        #[param(pattern = "^[0-9]+s$", nullable = false)]
        older_than: Option<String>,
        #[param(minimum = 0.1, maximum = 10.0, nullable = false)]
        rate: Option<f64>,
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 512, ..Default::default() })]

        /// Any query string is a value or a 400 that says what is allowed:
        /// never a panic nor another error, for every DLQ parameter type.
        #[test]
        fn any_query_string_is_a_value_or_a_clear_400(raw in "([a-z_]{0,12}(=[^&]{0,12})?&?){0,6}") {
            fn check<T: serde::de::DeserializeOwned + IntoParams>(raw: &str) -> Result<(), String> {
                match parse::<T>(raw) {
                    Ok(_) => Ok(()),
                    Err(AppError::BadRequest { message, .. }) if !message.is_empty() => Ok(()),
                    Err(other) => Err(format!("{raw}: {other:?}")),
                }
            }
            use crate::api::dlq::params as p;
            for r in [check::<Page>(&raw), check::<p::RequeueAllParams>(&raw), check::<p::JobAt>(&raw),
                      check::<p::Listing>(&raw), check::<p::Filtered>(&raw), check::<p::ListingIn>(&raw)] {
                proptest::prop_assert!(r.is_ok(), "{}", r.unwrap_err());
            }
        }
    }

    fn error(raw: &str) -> (String, Value) {
        match parse::<Page>(raw) {
            Err(AppError::BadRequest { message, detail }) => (message, detail),
            Err(other) => panic!("{raw}: {other:?}"),
            Ok(p) => panic!("{raw}: accepted as {p:?}"),
        }
    }

    #[test]
    fn values_inside_their_schema_are_typed() {
        let p: Page = parse("limit=1000&dry_run=true&q=abcd&older_than=90s&rate=0.1").unwrap();
        assert_eq!(p.limit, Some(1000));
        assert_eq!(p.dry_run, Some(true));
        assert_eq!(p.q.as_deref(), Some("abcd"));
        assert_eq!(p.rate, Some(0.1));
        let p: Page = parse("").unwrap();
        assert_eq!(p.limit, None);
    }

    #[test]
    fn each_refusal_names_the_parameter_and_what_is_allowed() {
        let (m, d) = error("limit=0");
        assert_eq!(m, "limit must be from 1 to 1000, got 0");
        assert_eq!((d["min"].as_f64(), d["max"].as_f64()), (Some(1.0), Some(1000.0)));
        assert!(error("limit=abc")
            .0
            .starts_with("limit must be a whole number from 1 to 1000"));
        assert!(error("limit=-1")
            .0
            .starts_with("limit must be a whole number from 1 to 1000"));
        assert_eq!(error("dry_run=yes").0, "dry_run must be true or false, got \"yes\"");
        assert_eq!(error("q=").0, "q must be 1–4 bytes");
        assert_eq!(error("q=abcde").1["max_length"], 4);
        assert!(error("older_than=5x").0.starts_with("older_than must match ^[0-9]+s$"));
        assert!(error("rate=11").0.starts_with("rate must be from 0.1 to 10"));
        assert!(error("rate=NaN").0.starts_with("rate must be a number"));
        let (m, d) = error("page=2");
        assert_eq!(m, "unknown query parameter \"page\"");
        assert_eq!(d["allowed"], json!(["limit", "dry_run", "q", "older_than", "rate"]));
        assert!(error("limit=1&limit=2").0.contains("more than once"));
    }

    #[test]
    fn no_params_refuses_every_parameter() {
        assert!(parse::<NoParams>("").is_ok());
        assert!(matches!(parse::<NoParams>("x=1"), Err(AppError::BadRequest { .. })));
    }

    #[test]
    fn both_halves_are_documented_and_read() {
        #[derive(serde::Deserialize, IntoParams)]
        #[into_params(parameter_in = Query)]
        struct Queue {
            queue: Option<String>,
        }
        let names: Vec<String> = <Both<Queue, Page>>::into_params(|| None)
            .into_iter()
            .map(|p| p.name)
            .collect();
        assert_eq!(names[..2], ["queue".to_string(), "limit".to_string()]);
        let p: Both<Queue, Page> = parse("queue=dlq:a&limit=5").unwrap();
        assert_eq!((p.a.queue.as_deref(), p.b.limit), (Some("dlq:a"), Some(5)));
        assert!(parse::<Both<Queue, Page>>("queue=a&limit=0").is_err());
    }
}
