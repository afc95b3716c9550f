//! How long jobs wait: the age of the job at each queue's consumer end.
//!
//! An entry that is a JSON object with a top-level `enqueued_at`,
//! `created_at` or `timestamp` (RFC 3339 / ISO 8601, or Unix seconds) says
//! when it was queued. Any other entry carries no time, so each poll notes
//! when it first saw the entry at the producer end (the newest) and at the
//! consumer end (the oldest), by a hash of its bytes; the age of the
//! consumer-end job is then measured from the first time it was seen. That
//! is a lower bound: a job queued between two polls and first seen there
//! counts from that poll, so the figure is at most one poll short, and a
//! job that reached the consumer end without ever being seen (the queue
//! was longer than one poll's pushes) counts from when it got there.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};

/// Entries remembered per queue at most; past it the oldest are dropped
/// (they have been consumed, or the queue holds more distinct entries than
/// any consumer-end reading needs).
const REMEMBERED_MAX: usize = 100_000;

/// First-seen times of the entries seen at either end, per queue.
#[derive(Default)]
pub struct WaitAge(HashMap<String, HashMap<u64, f64>>);

impl WaitAge {
    /// One poll of `queue` at `now` (Unix seconds): `head` is the entry at
    /// the consumer end, `tail` at the producer end (`None` when empty).
    /// Returns the age of the head job in seconds (0 when empty).
    pub fn observe(&mut self, queue: &str, head: Option<&[u8]>, tail: Option<&[u8]>, now: f64) -> f64 {
        let Some(head) = head else {
            self.0.remove(queue);
            return 0.0;
        };
        let seen = self.0.entry(queue.to_string()).or_default();
        if let Some(tail) = tail {
            seen.entry(hash(tail)).or_insert(now);
        }
        let first = *seen.entry(hash(head)).or_insert(now);
        // FIFO: entries first seen before the head have been consumed.
        seen.retain(|_, at| *at >= first);
        if seen.len() > REMEMBERED_MAX {
            let mut times: Vec<f64> = seen.values().copied().collect();
            times.sort_by(|a, b| a.total_cmp(b));
            let cut = times[times.len() - REMEMBERED_MAX];
            seen.retain(|_, at| *at >= cut);
        }
        match stamped_at(head) {
            Some(at) => (now - at).max(0.0),
            None => (now - first).max(0.0),
        }
    }
}

fn hash(entry: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    entry.hash(&mut h);
    h.finish()
}

/// When a JSON entry says it was queued: `enqueued_at`, `created_at` or
/// `timestamp`, as RFC 3339 text or Unix seconds (a number, or digits).
pub fn stamped_at(entry: &[u8]) -> Option<f64> {
    if entry.first() != Some(&b'{') {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(entry).ok()?;
    ["enqueued_at", "created_at", "timestamp"]
        .iter()
        .find_map(|k| match &v[*k] {
            serde_json::Value::Number(n) => n.as_f64(),
            serde_json::Value::String(s) => chrono::DateTime::parse_from_rfc3339(s)
                .map(|t| t.timestamp_millis() as f64 / 1000.0)
                .ok()
                .or_else(|| s.parse::<f64>().ok()),
            _ => None,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_waiting_job_ages_from_when_it_was_first_seen_and_a_pop_resets_it() {
        let mut w = WaitAge::default();
        // Two plain jobs: a (older, consumer end) and b (newest).
        assert_eq!(w.observe("q", Some(b"a"), Some(b"b"), 100.0), 0.0);
        assert_eq!(w.observe("q", Some(b"a"), Some(b"b"), 130.0), 30.0);
        // a is consumed: b is at the head, seen since 100.
        assert_eq!(w.observe("q", Some(b"b"), Some(b"b"), 140.0), 40.0);
        // b too: empty, and a new job starts from zero.
        assert_eq!(w.observe("q", None, None, 150.0), 0.0);
        assert_eq!(w.observe("q", Some(b"c"), Some(b"c"), 160.0), 0.0);
        assert_eq!(w.observe("q", Some(b"c"), Some(b"c"), 175.0), 15.0);
    }

    #[test]
    fn consumed_entries_are_forgotten() {
        let mut w = WaitAge::default();
        for i in 0..10 {
            let tail = format!("job{i}");
            w.observe("q", Some(b"job0"), Some(tail.as_bytes()), i as f64);
        }
        assert_eq!(w.0["q"].len(), 10);
        w.observe("q", Some(b"job8"), Some(b"job9"), 20.0);
        assert_eq!(w.0["q"].len(), 2, "job0..job7 were consumed");
    }

    #[test]
    fn a_stamped_job_says_its_own_age() {
        let mut w = WaitAge::default();
        let at = chrono::DateTime::parse_from_rfc3339("2026-12-04T12:00:00Z")
            .unwrap()
            .timestamp() as f64;
        let iso = br#"{"id":1,"enqueued_at":"2026-12-04T12:00:00Z"}"#;
        assert_eq!(w.observe("q", Some(iso), None, at + 90.0), 90.0);
        assert_eq!(stamped_at(br#"{"created_at": 1700000000.5}"#), Some(1_700_000_000.5));
        assert_eq!(stamped_at(br#"{"timestamp": "1700000000"}"#), Some(1_700_000_000.0));
        assert_eq!(stamped_at(br#"{"enqueued_at": "yesterday"}"#), None);
        assert_eq!(stamped_at(b"plain text"), None);
        assert_eq!(stamped_at(br#"["not", "an", "object"]"#), None);
        // A time in the future (clock skew) is no wait, not a negative one.
        assert_eq!(w.observe("q", Some(br#"{"timestamp": 2000}"#), None, 1000.0), 0.0);
    }
}
