//! `log`: the daemon's own log level, which a reload can change.

use super::Reload;
use serde::Deserialize;

/// Log settings.
#[derive(Reload, Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `debug`, `info`, `warn` or `error`. Unset: `info`. `--log.level` and
    /// `RUST_LOG` win over it (and then a reload cannot change it).
    #[reload(live)]
    pub level: Option<LogLevel>,
}

/// A log level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}
