//! Counting XIDs once: NVML events and kernel-log lines both report most
//! XIDs, so the same `(GPU, XID)` from the other source within the window
//! is one XID, not two. Pure: times come in as arguments.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

/// `(gpu, uuid, xid)` labels.
pub type Key = (String, String, String);

/// Where an XID was seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Nvml,
    Kernel,
}

#[derive(Debug, Clone)]
struct Recent {
    key: Key,
    source: Source,
    at: Instant,
    matched: bool,
}

/// How long a counted XID's series stays after its GPU is gone: an XID 79
/// is most interesting exactly when the GPU has fallen off the bus.
pub const KEEP_GONE: Duration = Duration::from_secs(3600);

/// Totals, last-seen times and the recent XIDs for matching.
#[derive(Debug)]
pub struct Ledger {
    window: Duration,
    recent: VecDeque<Recent>,
    pub totals: BTreeMap<Key, u64>,
    /// Unix time each key was last counted.
    pub last_seen: BTreeMap<Key, f64>,
    touched: BTreeMap<Key, Instant>,
}

impl Ledger {
    pub fn new(window: Duration) -> Ledger {
        Ledger {
            window,
            recent: VecDeque::new(),
            totals: BTreeMap::new(),
            last_seen: BTreeMap::new(),
            touched: BTreeMap::new(),
        }
    }

    /// Records one XID seen by `source` at `at`; false when it was the
    /// other source's report of an XID already counted.
    /// A reload changed the poll interval, which the window covers.
    pub fn set_window(&mut self, window: Duration) {
        self.window = window;
    }

    pub fn record(&mut self, key: Key, source: Source, at: Instant, unix_now: f64) -> bool {
        let window = self.window;
        let near = |a: Instant, b: Instant| a.max(b).saturating_duration_since(a.min(b)) <= window;
        // Forget what can no longer match anything.
        self.recent.retain(|r| at.saturating_duration_since(r.at) <= window * 2);
        if let Some(r) = self
            .recent
            .iter_mut()
            .find(|r| !r.matched && r.key == key && r.source != source && near(r.at, at))
        {
            r.matched = true;
            return false;
        }
        *self.totals.entry(key.clone()).or_default() += 1;
        self.last_seen.insert(key.clone(), unix_now);
        self.touched.insert(key.clone(), at);
        self.recent.push_back(Recent {
            key,
            source,
            at,
            matched: false,
        });
        true
    }

    /// Drops the series of GPUs that are gone, once nothing was counted
    /// for them for [`KEEP_GONE`].
    pub fn retain(&mut self, live_uuids: &HashSet<&str>, now: Instant) {
        let touched = &self.touched;
        let keep = |k: &Key| {
            live_uuids.contains(k.1.as_str())
                || touched
                    .get(k)
                    .is_some_and(|t| now.saturating_duration_since(*t) < KEEP_GONE)
        };
        self.totals.retain(|k, _| keep(k));
        self.last_seen.retain(|k, _| keep(k));
        let totals = &self.totals;
        self.touched.retain(|k, _| totals.contains_key(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(gpu: &str, xid: &str) -> Key {
        (gpu.to_string(), format!("GPU-{gpu}"), xid.to_string())
    }

    #[tokio::test(start_paused = true)]
    async fn the_same_xid_from_both_sources_within_the_window_counts_once() {
        let mut l = Ledger::new(Duration::from_secs(5));
        assert!(l.record(key("0", "79"), Source::Kernel, Instant::now(), 1.0));
        tokio::time::advance(Duration::from_secs(4)).await;
        assert!(
            !l.record(key("0", "79"), Source::Nvml, Instant::now(), 2.0),
            "NVML's report of it"
        );
        assert_eq!(l.totals[&key("0", "79")], 1);
        // A second XID 79 from NVML is a new one (the kernel line was matched).
        assert!(l.record(key("0", "79"), Source::Nvml, Instant::now(), 3.0));
        // Another GPU, another XID, or the same source twice: counted.
        assert!(l.record(key("1", "79"), Source::Kernel, Instant::now(), 3.0));
        assert!(l.record(key("0", "13"), Source::Kernel, Instant::now(), 3.0));
        assert!(l.record(key("0", "13"), Source::Kernel, Instant::now(), 3.0));
        assert_eq!(l.totals[&key("0", "13")], 2);
        assert_eq!(l.last_seen[&key("0", "79")], 3.0);
    }

    #[tokio::test(start_paused = true)]
    async fn outside_the_window_both_count() {
        let mut l = Ledger::new(Duration::from_secs(5));
        assert!(l.record(key("0", "48"), Source::Nvml, Instant::now(), 1.0));
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(l.record(key("0", "48"), Source::Kernel, Instant::now(), 2.0));
        assert_eq!(l.totals[&key("0", "48")], 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_gone_gpu_keeps_its_series_for_an_hour() {
        let mut l = Ledger::new(Duration::from_secs(5));
        l.record(key("0", "79"), Source::Kernel, Instant::now(), 1.0);
        let none = HashSet::new();
        tokio::time::advance(KEEP_GONE - Duration::from_secs(1)).await;
        l.retain(&none, Instant::now());
        assert_eq!(l.totals.len(), 1);
        tokio::time::advance(Duration::from_secs(1)).await;
        l.retain(&none, Instant::now());
        assert!(l.totals.is_empty() && l.last_seen.is_empty());
    }
}
