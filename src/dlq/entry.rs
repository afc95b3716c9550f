//! The `JobFailure` shape of a DLQ entry (docs/dlq-console.md), and reading it
//! without copying `original_job`: a requeue pushes those bytes exactly.

use chrono::{DateTime, Utc};
use serde_json::value::RawValue;

/// A DLQ entry in the `JobFailure` shape (docs/dlq-console.md), checked.
#[derive(Debug)]
pub struct JobFailure<'a> {
    /// `original_job`, exactly as it appears in the entry.
    pub original_job: &'a RawValue,
    /// `first_failed_at` as Unix seconds.
    pub first_failed_at: f64,
    /// `last_failed_at` as Unix seconds.
    pub last_failed_at: f64,
    pub error: String,
    pub attempt_count: u64,
}

/// Parses a DLQ entry; `Err` says what is wrong with it.
pub fn parse_entry(raw: &str) -> Result<JobFailure<'_>, String> {
    #[derive(serde::Deserialize)]
    struct Shape<'a> {
        #[serde(borrow)]
        original_job: Option<&'a RawValue>,
        error: Option<serde_json::Value>,
        attempt_count: Option<serde_json::Value>,
        first_failed_at: Option<serde_json::Value>,
        last_failed_at: Option<serde_json::Value>,
        queue_name: Option<serde_json::Value>,
    }
    let shape: Shape = serde_json::from_str(raw).map_err(|e| format!("not JSON in the JobFailure shape: {e}"))?;
    let original_job = shape.original_job.ok_or("missing field original_job")?;
    if !original_job.get().starts_with('{') {
        return Err("original_job is not a JSON object".into());
    }
    let Some(serde_json::Value::String(error)) = shape.error else {
        return Err("missing or non-string field error".into());
    };
    let attempt_count = shape
        .attempt_count
        .as_ref()
        .and_then(|v| v.as_u64())
        .ok_or("missing field attempt_count (a whole number)")?;
    if !shape.queue_name.as_ref().is_some_and(|v| v.is_string()) {
        return Err("missing or non-string field queue_name".into());
    }
    let first_failed_at = timestamp(shape.first_failed_at.as_ref()).ok_or("missing or unreadable first_failed_at")?;
    let last_failed_at = timestamp(shape.last_failed_at.as_ref()).ok_or("missing or unreadable last_failed_at")?;
    Ok(JobFailure {
        original_job,
        first_failed_at,
        last_failed_at,
        error,
        attempt_count,
    })
}

/// An RFC 3339 string (a naive one is taken as UTC) or Unix seconds.
fn timestamp(v: Option<&serde_json::Value>) -> Option<f64> {
    match v? {
        serde_json::Value::Number(n) => n.as_f64(),
        serde_json::Value::String(s) => DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .or_else(|_| s.parse::<chrono::NaiveDateTime>().map(|t| t.and_utc()))
            .ok()
            .map(|t| t.timestamp_millis() as f64 / 1000.0),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"original_job":{"id":"j1","image":"a.jpg","n":1.50},"error":"CUDA OOM","attempt_count":3,"first_failed_at":"2026-11-20T10:00:00Z","last_failed_at":"2026-11-20T10:05:00Z","queue_name":"detection_queue"}"#;

    #[test]
    fn original_job_is_taken_byte_for_byte() {
        let j = parse_entry(GOOD).unwrap();
        assert_eq!(j.original_job.get(), r#"{"id":"j1","image":"a.jpg","n":1.50}"#);
        assert_eq!(j.first_failed_at, 1_795_168_800.0);
    }

    #[test]
    fn timestamps_may_be_numbers_or_naive() {
        let t = GOOD.replace(r#""2026-11-20T10:00:00Z""#, "1795168800.5");
        assert_eq!(parse_entry(&t).unwrap().first_failed_at, 1_795_168_800.5);
        let t = GOOD.replace(r#""2026-11-20T10:00:00Z""#, r#""2026-11-20T10:00:00""#);
        assert_eq!(parse_entry(&t).unwrap().first_failed_at, 1_795_168_800.0);
    }

    #[test]
    fn malformed_entries_say_why() {
        let cases = [
            ("not json", "not JSON"),
            ("[1,2]", "not JSON"),
            (r#"{"error":"x"}"#, "original_job"),
            (
                &GOOD.replace(r#"{"id":"j1","image":"a.jpg","n":1.50}"#, "\"text\""),
                "not a JSON object",
            ),
            (
                &GOOD.replace(r#""attempt_count":3"#, r#""attempt_count":"3""#),
                "attempt_count",
            ),
            (
                &GOOD.replace(r#""2026-11-20T10:00:00Z""#, r#""yesterday""#),
                "first_failed_at",
            ),
            (&GOOD.replace(r#","queue_name":"detection_queue""#, ""), "queue_name"),
        ];
        for (raw, want) in cases {
            let err = parse_entry(raw).unwrap_err();
            assert!(err.contains(want), "{raw}: {err}");
        }
    }
}
