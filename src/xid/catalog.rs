//! The XID catalog (`src/xid/xid_catalog.json`, embedded): for each XID a
//! severity (`critical`, `warning`, `info`), a likely cause and an action,
//! built from NVIDIA's published Xid Catalog; the file says which version.

use std::collections::HashMap;
use std::sync::OnceLock;

use serde::Deserialize;

/// One XID's entry.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Entry {
    pub mnemonic: String,
    pub severity: String,
    pub cause: String,
    pub action: String,
    /// NVIDIA's resolution bucket (immediate action).
    pub resolution: String,
}

/// The whole catalog.
#[derive(Debug, Deserialize)]
pub struct Catalog {
    pub version: String,
    pub source: String,
    /// Action name -> what to do.
    pub actions: HashMap<String, String>,
    pub xids: HashMap<String, Entry>,
}

const FILE: &str = include_str!("xid_catalog.json");

/// The embedded catalog (parsed once; the file is checked by a test).
pub fn catalog() -> &'static Catalog {
    static CATALOG: OnceLock<Catalog> = OnceLock::new();
    CATALOG.get_or_init(|| serde_json::from_str(FILE).expect("src/xid/xid_catalog.json is valid (tested)"))
}

/// The severity and action of `xid`: an XID the catalog does not know is a
/// warning with action `unknown`.
pub fn classify(xid: u64) -> (&'static str, &'static str) {
    match catalog().xids.get(&xid.to_string()) {
        Some(e) => (e.severity.as_str(), e.action.as_str()),
        None => ("warning", "unknown"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalog_parses_and_every_action_is_explained() {
        let c = catalog();
        assert!(c.version.contains("Xid 1-161"), "{}", c.version);
        assert_eq!(c.xids.len(), 161);
        for (n, e) in &c.xids {
            assert!(
                ["critical", "warning", "info"].contains(&e.severity.as_str()),
                "{n}: {}",
                e.severity
            );
            assert!(
                c.actions.contains_key(&e.action),
                "{n}: action {} has no text",
                e.action
            );
            assert!(!e.cause.is_empty());
        }
    }

    #[test]
    fn the_worst_xids_are_critical_with_the_right_action() {
        assert_eq!(classify(79), ("critical", "reboot_node"));
        assert_eq!(classify(119), ("critical", "reset_gpu"));
        assert_eq!(classify(120), ("critical", "reset_gpu"));
        assert_eq!(classify(48), ("critical", "reset_gpu"));
        assert_eq!(classify(13), ("warning", "restart_app"));
        assert_eq!(classify(63), ("info", "none"));
        assert_eq!(classify(9999), ("warning", "unknown"));
    }
}
