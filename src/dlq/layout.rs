//! Where a family of queues keeps its jobs in Redis. The seed's convention
//! is [`ListLayout`]: a list per queue, pushed at `queues.push_side` and
//! popped at the other end, its failures in the list
//! `<queues.dlq_prefix><queue>`, its jobs in flight in
//! `<queue><queues.processing_suffix>`. A job framework's layout (RQ,
//! BullMQ, Dramatiq, Celery keep theirs in other keys and types) is a
//! layout beside this one, and the client side asks its layout for every
//! key it touches, so no request reaches a key the config did not name.

use crate::config::{PushSide, QueuesConfig};

use super::ResolveError;

/// One end of a Redis list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    Left,
    Right,
}

impl End {
    pub fn opposite(self) -> End {
        match self {
            End::Left => End::Right,
            End::Right => End::Left,
        }
    }

    /// The word Redis commands (and the scripts' ARGV) use.
    pub fn as_arg(self) -> &'static str {
        match self {
            End::Left => "LEFT",
            End::Right => "RIGHT",
        }
    }
}

/// The seed's layout, from the `queues` section in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListLayout {
    dlq_prefix: String,
    processing_suffix: Option<String>,
    push_side: PushSide,
}

impl ListLayout {
    pub fn of(config: &QueuesConfig) -> ListLayout {
        ListLayout {
            dlq_prefix: config.dlq_prefix.clone(),
            processing_suffix: config.processing_suffix.clone(),
            push_side: config.push_side,
        }
    }

    /// `queue`'s DLQ.
    pub fn dlq_key(&self, queue: &str) -> String {
        format!("{}{queue}", self.dlq_prefix)
    }

    /// `queue`'s list of jobs in flight, when a suffix is configured.
    pub fn processing_key(&self, queue: &str) -> Option<String> {
        Some(format!("{queue}{}", self.processing_suffix.as_ref()?))
    }

    /// The end producers (and requeues) push to.
    pub fn push_end(&self) -> End {
        match self.push_side {
            PushSide::Left => End::Left,
            PushSide::Right => End::Right,
        }
    }

    /// The end workers pop, where the oldest entry sits.
    pub fn pop_end(&self) -> End {
        self.push_end().opposite()
    }

    /// Maps a DLQ key from a request to its queue, one of `names`.
    pub fn resolve(&self, dlq: &str, names: &[String]) -> Result<String, ResolveError> {
        if let Some(base) = dlq.strip_prefix(self.dlq_prefix.as_str()) {
            if names.iter().any(|q| q == base) {
                return Ok(base.to_string());
            }
        }
        if names.iter().any(|q| q == dlq) {
            return Err(ResolveError::NotADlq(dlq.to_string()));
        }
        Err(ResolveError::Unknown(dlq.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(prefix: &str, suffix: Option<&str>, push: PushSide) -> ListLayout {
        ListLayout {
            dlq_prefix: prefix.into(),
            processing_suffix: suffix.map(str::to_string),
            push_side: push,
        }
    }

    #[test]
    fn keys_come_from_the_prefix_and_the_suffix() {
        let l = layout("dlq:", Some(":processing"), PushSide::Left);
        assert_eq!(l.dlq_key("q"), "dlq:q");
        assert_eq!(l.processing_key("q").as_deref(), Some("q:processing"));
        assert_eq!(layout("dlq:", None, PushSide::Left).processing_key("q"), None);
    }

    #[test]
    fn the_oldest_entry_sits_at_the_end_opposite_the_producers() {
        let l = layout("dlq:", None, PushSide::Left);
        assert_eq!((l.push_end(), l.pop_end()), (End::Left, End::Right));
        let r = layout("dlq:", None, PushSide::Right);
        assert_eq!((r.push_end(), r.pop_end()), (End::Right, End::Left));
    }

    #[test]
    fn only_a_configured_queues_dlq_resolves() {
        let l = layout("dlq:", None, PushSide::Left);
        let names = vec!["a".to_string()];
        assert_eq!(l.resolve("dlq:a", &names).unwrap(), "a");
        assert!(matches!(l.resolve("a", &names), Err(ResolveError::NotADlq(_))));
        assert!(matches!(l.resolve("dlq:b", &names), Err(ResolveError::Unknown(_))));
        assert!(matches!(l.resolve("other", &names), Err(ResolveError::Unknown(_))));
    }
}
