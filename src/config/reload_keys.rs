//! What a reload does with each config key, declared on the field itself:
//! `#[derive(Reload)]` with `#[reload(live)]`, `#[reload(kept = REASON)]`,
//! `#[reload(nested)]` or `#[reload(skip = "why")]` on every field (the
//! derive is in `macros/`). A field without one does not compile, so a new
//! key cannot be dropped by a reload without a word. [`crate::reload::plan`]
//! walks the fields through [`Reload::reload`]; `docs/reload.md` is checked
//! against [`Reload::keys`].

use serde::Serialize;

pub use inferwatch_macros::Reload;

/// Why a key waits for a restart (the `reason` a reload answers).
pub mod reasons {
    pub const RESTART: &str = "read once at start; restart inferwatch to apply it";
    pub const LISTENER: &str = "the listener is bound at start; restart inferwatch to apply it";
    pub const STORE: &str = "the history store is opened at start; restart inferwatch to apply it";
    pub const SERVER: &str = "the HTTP server's limits are set at start; restart inferwatch to apply it";
    pub const REDIS: &str = "the Redis connection is made at start; restart inferwatch to apply it";
    pub const KEYS: &str = "running moves and archives derive their keys from it; restart inferwatch to apply it";
    pub const NVML: &str = "NVML and the history ring are set up at start; restart inferwatch to apply it";
    pub const GATE: &str = "the restart gate is built at start; restart inferwatch to apply it";
}

/// A change a reload did not apply, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Kept {
    /// The config key (or section) that changed.
    pub key: String,
    pub reason: &'static str,
}

/// What one walk over the fields found.
#[derive(Debug, Default)]
pub struct Changes {
    /// Keys that took their new value.
    pub changed: Vec<String>,
    /// Keys that kept their old value.
    pub kept: Vec<Kept>,
}

/// A key's declared decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyDecision {
    Live,
    Kept(&'static str),
}

/// A config struct whose fields each declare what a reload does with them
/// (derived, never written by hand).
pub trait Reload {
    /// Takes from `new` every live field that differs; lists the kept
    /// ones that differ and leaves them as they are.
    fn reload(&mut self, new: &Self, prefix: &str, out: &mut Changes);
    /// Every key under `prefix`, with its decision, in field order.
    fn keys(prefix: &str, out: &mut Vec<(String, KeyDecision)>);
}

/// `prefix.key`, or `key` at the top.
pub fn reload_key(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

/// Every key of `T` with its decision.
pub fn keys_of<T: Reload>() -> Vec<(String, KeyDecision)> {
    let mut out = Vec::new();
    T::keys("", &mut out);
    out
}
