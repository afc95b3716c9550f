//! The NVML call meter and the value a field reads: `Meter` counts and
//! times every call into `inferwatch_nvml_*`; `Value` and `list` are what
//! fields and profiling reads both return. Both of those import from here,
//! so neither imports the other for these.

use std::time::Instant;

use nvml_wrapper::error::NvmlError;
use prometheus::{CounterVec, IntCounterVec};

use crate::metrics::{family, Metrics};

/// The entries of a list field that answered; the last error when none did
/// (a lost GPU wins over any other error).
pub(crate) fn list(items: impl Iterator<Item = (String, Result<f64, NvmlError>)>) -> Result<Value, NvmlError> {
    let mut ok = Vec::new();
    let mut last = None;
    for (k, r) in items {
        match r {
            Ok(v) => ok.push((k, v)),
            Err(NvmlError::GpuLost) => return Err(NvmlError::GpuLost),
            Err(e) => last = Some(e),
        }
    }
    match (ok.is_empty(), last) {
        (true, Some(e)) => Err(e),
        _ => Ok(Value::List(ok)),
    }
}

/// The number under `key` in a list of `(key, number)`.
pub fn list_get(list: &[(String, f64)], key: &str) -> Option<f64> {
    list.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
}

/// A field's value, in the units `/metrics` uses.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Text(String),
    Num(f64),
    List(Vec<(String, f64)>),
    /// `(pid, name, bytes)`.
    Processes(Vec<(u32, String, u64)>),
    /// `(pid, name, SM 0-1, memory 0-1)`.
    ProcessUtilization(Vec<(u32, String, f64, f64)>),
}

impl Value {
    /// The number under `key` in a list.
    pub fn get(&self, key: &str) -> Option<f64> {
        match self {
            Value::List(l) => list_get(l, key),
            _ => None,
        }
    }

    /// The entries of a list; empty for any other value.
    pub fn into_list(self) -> Vec<(String, f64)> {
        match self {
            Value::List(l) => l,
            _ => Vec::new(),
        }
    }

    pub fn num(&self) -> Option<f64> {
        match self {
            Value::Num(v) => Some(*v),
            _ => None,
        }
    }
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Text(t) => write!(f, "{t}"),
            Value::Num(v) => write!(f, "{v}"),
            Value::List(l) if l.is_empty() => write!(f, "(none)"),
            Value::List(l) => {
                let parts: Vec<String> = l.iter().map(|(k, v)| format!("{k}={v}")).collect();
                write!(f, "{}", parts.join(" "))
            }
            Value::Processes(p) => write!(f, "{} process(es)", p.len()),
            Value::ProcessUtilization(p) if p.is_empty() => write!(f, "idle (NOT_FOUND)"),
            Value::ProcessUtilization(p) => {
                let parts: Vec<String> = p.iter().map(|(pid, _, sm, _)| format!("{pid}:sm={sm}")).collect();
                write!(f, "{}", parts.join(" "))
            }
        }
    }
}

/// The error's name in `error` labels and doctor's output.
pub fn error_name(e: &NvmlError) -> &'static str {
    match e {
        NvmlError::NotSupported => "not_supported",
        NvmlError::InvalidArg => "invalid_argument",
        NvmlError::NoPermission => "no_permission",
        NvmlError::GpuLost => "gpu_lost",
        NvmlError::FailedToLoadSymbol(_) | NvmlError::FunctionNotFound => "function_not_found",
        NvmlError::NotFound => "not_found",
        NvmlError::InsufficientSize(_) => "insufficient_size",
        NvmlError::Timeout => "timeout",
        NvmlError::Uninitialized => "uninitialized",
        NvmlError::Unknown => "unknown",
        NvmlError::NoData => "no_data",
        NvmlError::InsufficientPower => "insufficient_power",
        NvmlError::DriverNotLoaded => "driver_not_loaded",
        NvmlError::ResetRequired => "reset_required",
        _ => "other",
    }
}

/// True for the errors that mean "this driver or card has no such field":
/// logged at debug, everything else at info.
pub fn is_absent(e: &NvmlError) -> bool {
    matches!(
        e,
        NvmlError::NotSupported
            | NvmlError::FailedToLoadSymbol(_)
            | NvmlError::FunctionNotFound
            | NvmlError::InvalidArg
    )
}

/// The three `inferwatch_nvml_*` families.
#[derive(Clone)]
pub struct NvmlMetrics {
    calls: IntCounterVec,
    seconds: CounterVec,
    errors: IntCounterVec,
}

impl NvmlMetrics {
    pub fn new(metrics: &Metrics) -> NvmlMetrics {
        let calls = family::<IntCounterVec>("inferwatch_nvml_calls_total", "NVML calls made, by call.", &["call"]);
        let seconds = family::<CounterVec>("inferwatch_nvml_call_duration_seconds_total", "Wall time spent inside NVML calls, by call; divided by inferwatch_nvml_calls_total it is each call's mean cost.", &["call"]);
        let errors = family::<IntCounterVec>("inferwatch_nvml_call_errors_total", "NVML calls that returned an error, by call and error (not_supported, invalid_argument, function_not_found, gpu_lost, ...).", &["call", "error"]);
        metrics.add(&calls);
        metrics.add(&seconds);
        metrics.add(&errors);
        NvmlMetrics { calls, seconds, errors }
    }
}

/// Counts and times NVML calls (or nothing, for doctor's own timing).
#[derive(Clone, Default)]
pub struct Meter {
    metrics: Option<NvmlMetrics>,
}

impl Meter {
    pub fn new(metrics: Option<NvmlMetrics>) -> Meter {
        Meter { metrics }
    }

    /// Runs one NVML call, timing only the call.
    pub fn call<T>(&self, call: &'static str, f: impl FnOnce() -> Result<T, NvmlError>) -> Result<T, NvmlError> {
        let start = Instant::now();
        let r = f();
        let took = start.elapsed();
        if let Some(m) = &self.metrics {
            m.calls.with_label_values(&[call]).inc();
            m.seconds.with_label_values(&[call]).inc_by(took.as_secs_f64());
            if let Err(e) = &r {
                m.errors.with_label_values(&[call, error_name(e)]).inc();
            }
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_fails_only_when_nothing_answered() {
        let ok = list(
            [
                ("0".to_string(), Ok(0.3)),
                ("1".to_string(), Err(NvmlError::InvalidArg)),
            ]
            .into_iter(),
        );
        assert_eq!(ok.unwrap(), Value::List(vec![("0".into(), 0.3)]));
        let none = list([("0".to_string(), Err(NvmlError::InvalidArg))].into_iter());
        assert!(matches!(none, Err(NvmlError::InvalidArg)));
        let lost = list([("0".to_string(), Ok(1.0)), ("1".to_string(), Err(NvmlError::GpuLost))].into_iter());
        assert!(matches!(lost, Err(NvmlError::GpuLost)));
        assert_eq!(list(std::iter::empty()).unwrap(), Value::List(vec![]));
    }
}
