//! Listing a DLQ page: one Lua step returns each entry's size and at most
//! `queues.list_entry_max_bytes` of it, so a page of huge entries costs its
//! byte budget and no more; each entry gets its id and index.

use serde::Serialize;
use serde_json::value::RawValue;

use super::scripts::{int_at, Scripts};
use super::{job_id, parse_entry, DlqError, Queues};

/// One listed entry: the JobFailure as stored, or the raw text and why it
/// could not be read.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Listed {
    /// The entry with `"id"` and `"index"` added at its end.
    Job(Box<RawValue>),
    Malformed {
        index: u64,
        id: String,
        malformed: bool,
        raw: String,
        parse_error: String,
    },
    /// Larger than `queues.list_entry_max_bytes`: the first bytes of it.
    Truncated {
        index: u64,
        id: String,
        truncated: bool,
        /// The entry's full size in bytes.
        size: u64,
        raw: String,
    },
}

/// A page of a DLQ.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Page {
    /// Each entry: the JobFailure as stored, or `{index, malformed, raw,
    /// parse_error}`, or `{index, truncated, size, raw}`.
    #[schema(value_type = Vec<Object>)]
    pub jobs: Vec<Listed>,
    pub queue_name: String,
    pub start: u64,
    /// The limit applied: the requested one, or fewer when the page's byte
    /// budget was reached.
    pub limit: u64,
    pub requested_limit: u64,
    /// `queues.list_page_max_bytes` when it cut the page short, else null.
    pub byte_budget_reached: Option<u64>,
    pub total: u64,
}

/// Turns one stored entry (at most `cap` of its `size` bytes) into its
/// listed form without copying it.
pub(super) fn listed(index: u64, size: u64, bytes: Vec<u8>, cap: usize, id: String) -> Listed {
    if size > cap as u64 {
        return Listed::Truncated {
            index,
            id,
            truncated: true,
            size,
            raw: String::from_utf8_lossy(&bytes).into_owned(),
        };
    }
    let text = match String::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            return Listed::Malformed {
                index,
                id,
                malformed: true,
                raw: String::from_utf8_lossy(e.as_bytes()).into_owned(),
                parse_error: "not UTF-8".into(),
            }
        }
    };
    match parse_entry(&text).map(|_| ()) {
        Ok(()) => {
            // A JobFailure is a non-empty object: the added keys go last, so
            // they win over any same-named key of the entry.
            let body = text.trim_end();
            let body = body.strip_suffix('}').unwrap_or(body);
            let with_id = format!("{body},\"id\":\"{id}\",\"index\":{index}}}");
            match RawValue::from_string(with_id) {
                Ok(raw) => Listed::Job(raw),
                Err(e) => Listed::Malformed {
                    index,
                    id,
                    malformed: true,
                    raw: String::new(),
                    parse_error: e.to_string(),
                },
            }
        }
        Err(parse_error) => Listed::Malformed {
            index,
            id,
            malformed: true,
            raw: text,
            parse_error,
        },
    }
}

impl Queues {
    /// One page of a DLQ, newest first for LPUSH layouts (list order).
    /// Entries over `list_entry_max_bytes` come back truncated, and the page
    /// stops early at `list_page_max_bytes` of shown bytes.
    pub async fn list(&self, queue: &str, start: u64, limit: u64) -> Result<Page, DlqError> {
        let key = self.dlq_key(queue);
        let (cap, budget) = (self.config().list_entry_max_bytes, self.config().list_page_max_bytes);
        let args = [start, limit, cap as u64, budget as u64].map(|n| n.to_string());
        let arg_refs: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        let reply = self.script(&Scripts::List, &[&key], &arg_refs).await?;
        let total = int_at(&reply, 1);
        let budget_reached = int_at(&reply, 2) == 1;
        let mut jobs = Vec::with_capacity((reply.len().saturating_sub(3)) / 2);
        let mut rest = reply.into_iter().skip(3);
        let mut index = start;
        while let (Some(size), Some(bytes)) = (rest.next(), rest.next()) {
            let size: u64 = redis::from_redis_value(&size).unwrap_or(0);
            // Taken, not copied: the page holds each shown byte once.
            let bytes = match bytes {
                redis::Value::BulkString(b) => b,
                _ => Vec::new(),
            };
            let id = if size > cap as u64 {
                // The id is of the whole entry: read it once, here.
                let full: Option<Vec<u8>> = self.run(redis::cmd("LINDEX").arg(&key).arg(index)).await?;
                full.map(|b| job_id(&b)).unwrap_or_default()
            } else {
                job_id(&bytes)
            };
            jobs.push(listed(index, size, bytes, cap, id));
            index += 1;
        }
        let returned = jobs.len() as u64;
        Ok(Page {
            jobs,
            queue_name: key,
            start,
            limit: if budget_reached { returned } else { limit },
            requested_limit: limit,
            byte_budget_reached: budget_reached.then_some(budget as u64),
            total,
        })
    }
}
