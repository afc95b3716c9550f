//! `inferwatch redis-acl`: the least-privilege Redis ACL user for a config.
//! Its keys are the configured queues, their processing lists, their DLQs
//! and the DLQs' archives (`<dlq>:cleared:<ts>`, `<dlq>:deleted:<ts>`), and
//! the watched streams, and the job frameworks' keys it watches and moves
//! between (RQ's started registry read only); its
//! commands are the ones the queue collector, the
//! DLQ moves (their Lua steps included), the stream reader and the health
//! check's `PING` send, and nothing else.

use crate::config::Config;

/// Every command inferwatch sends to the queues' Redis. `EVALSHA` runs the
/// move scripts (`EVAL` and `SCRIPT LOAD` when Redis lost them); inside
/// them Redis checks each key and command against the same user.
pub const COMMANDS: &[&str] = &[
    "ping",
    "select",
    "type",
    "exists",
    "scan",
    "llen",
    "lindex",
    "lrange",
    "lpush",
    "rpush",
    "lpop",
    "rpop",
    "lrem",
    "lmove",
    "rename",
    "expire",
    "persist",
    "ttl",
    "evalsha",
    "eval",
    "script|load",
    "xlen",
    "xinfo|groups",
    "xgroup|create",
    "xreadgroup",
    "xautoclaim",
    "xack",
    // RQ's registries and job hashes: the poll's read-only script, and the
    // requeue's (ZREM from the failed set, HSET of the job).
    "eval_ro",
    "zcard",
    "zrange",
    "zrem",
    "zscore",
    "hget",
    "hmget",
    "hset",
    "xrevrange",
    // BullMQ's and Dramatiq's requeues (the waiting event, the marker, the
    // priority counter; the message moved between hashes) and polls.
    "xadd",
    "zadd",
    "incr",
    "hdel",
    "hexists",
    "hlen",
];

/// The key patterns of `config`'s queues, DLQs, archives and streams.
pub fn key_patterns(config: &Config) -> Vec<String> {
    let q = &config.queues;
    let mut keys = Vec::new();
    for name in &q.names {
        keys.push(name.clone());
        if let Some(suffix) = &q.processing_suffix {
            keys.push(format!("{name}{suffix}"));
        }
        let dlq = format!("{}{name}", q.dlq_prefix);
        keys.push(format!("{dlq}:*"));
        keys.push(dlq);
    }
    if config.pipeline.stream.enabled {
        keys.push(config.pipeline.stream.key.clone());
    }
    keys.extend(q.streams.iter().map(|s| s.stream.clone()));
    let mut seen = std::collections::HashSet::new();
    keys.retain(|k| seen.insert(k.clone()));
    keys
}

/// The job frameworks' keys: what inferwatch writes (each failed set and
/// the queue it requeues into, with what the framework's own retry writes
/// beside), and what it only reads (Redis 7's `%R~`: RQ's started registry
/// and results streams). BullMQ keeps a queue's job hashes beside its lists
/// under `<prefix>:<q>:<id>`, so its grant is the queue's whole
/// `<prefix>:<q>:*`: the scripts never write `active` or the locks, but no
/// ACL pattern can tell those apart from the job hashes.
pub fn framework_patterns(config: &Config) -> (Vec<String>, Vec<String>) {
    let (mut write, mut read) = (Vec::new(), Vec::new());
    if let Some(rq) = &config.queues.rq {
        let layout = crate::dlq::RqLayout::of(rq);
        for q in &rq.queues {
            write.extend([glob_escape(&layout.queue_key(q)), glob_escape(&layout.failed_key(q))]);
            read.push(glob_escape(&layout.wip_key(q)));
        }
        write.push(format!("{}*", glob_escape(&layout.job_prefix())));
        read.push(format!("{}*", glob_escape(&layout.results_prefix())));
    }
    if let Some(b) = &config.queues.bullmq {
        let layout = crate::dlq::BullmqLayout::of(b);
        write.extend(
            b.queues
                .iter()
                .map(|q| format!("{}*", glob_escape(&layout.job_prefix(q)))),
        );
    }
    if let Some(d) = &config.queues.dramatiq {
        let layout = crate::dlq::DramatiqLayout::of(d);
        for q in &d.queues {
            write.extend(
                ["", ".msgs", ".XQ", ".XQ.msgs"]
                    .iter()
                    .map(|s| glob_escape(&layout.key(q, s))),
            );
        }
    }
    // The archives a clear of a framework's failed set makes
    // (`<dlq_prefix><framework>:<q>:cleared:<ts>`, and `:msgs` beside).
    let movable = config
        .queues
        .all_names()
        .into_iter()
        .filter(|n| n.contains(':') && !n.starts_with("celery:"));
    for label in movable {
        write.push(format!(
            "{}:*",
            glob_escape(&format!("{}{label}", config.queues.dlq_prefix))
        ));
    }
    if let Some(c) = &config.queues.celery {
        // kombu's priority lists are `<q>\x06\x16<p>`: a pattern with `?`
        // for the two control characters keeps the line printable.
        for q in &c.queues {
            read.extend([glob_escape(q), format!("{}??[369]", glob_escape(q))]);
        }
        read.extend(["unacked".to_string(), "unacked_index".to_string()]);
    }
    (write, read)
}

/// `ACL SETUSER <user> on >PASSWORD resetkeys ~k1 ~k2 … %R~r1 … resetchannels -@all +cmd …`.
pub fn setuser_line(config: &Config, user: &str, password: &str) -> String {
    let (fw_write, fw_read) = framework_patterns(config);
    let keys: Vec<String> = key_patterns(config)
        .iter()
        .map(|k| format!("~{}", glob_escape(k)))
        .chain(fw_write.iter().map(|k| format!("~{k}")))
        .chain(fw_read.iter().map(|k| format!("%R~{k}")))
        .collect();
    let commands: Vec<String> = COMMANDS.iter().map(|c| format!("+{c}")).collect();
    format!(
        "ACL SETUSER {user} on >{password} resetkeys {} resetchannels -@all {}",
        keys.join(" "),
        commands.join(" ")
    )
}

/// A key as a literal in an ACL glob pattern (the archives' `:*` stays a
/// glob).
fn glob_escape(key: &str) -> String {
    let (literal, glob) = match key.strip_suffix(":*") {
        Some(base) => (base, ":*"),
        None => (key, ""),
    };
    let mut out = String::with_capacity(key.len());
    for c in literal.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out + glob
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_names_every_key_of_the_config_and_no_other() {
        let mut c = Config::default();
        c.queues.names = vec!["detect".into(), "odd[1]".into()];
        c.queues.processing_suffix = Some(":processing".into());
        let line = setuser_line(&c, "inferwatch", "s3cret");
        assert!(
            line.starts_with(
                "ACL SETUSER inferwatch on >s3cret resetkeys ~detect ~detect:processing ~dlq:detect:* ~dlq:detect "
            ),
            "{line}"
        );
        assert!(
            line.contains(r"~odd\[1\] ~odd\[1\]:processing ~dlq:odd\[1\]:* ~dlq:odd\[1\]"),
            "{line}"
        );
        assert!(line.contains("~pipeline:events resetchannels -@all +ping"), "{line}");
        assert!(!line.contains("~*"), "{line}");
        c.pipeline.stream.enabled = false;
        assert!(!setuser_line(&c, "u", "p").contains("pipeline:events"));
    }
}
