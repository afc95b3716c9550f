//! What the job frameworks' adapters share (docs/job-frameworks.md): a
//! framework queue's failed set addressed as `dlq:<framework>:<queue>`,
//! requeue-all as a loop of one-Lua-step batches over a sorted set, a
//! listing page cut at the byte budget, and the `wrong_type` answer every
//! adapter's script gives before it reads or writes anything else.

use serde_json::{json, Value};

use super::adapter::{wrong_type, MoveScript};
use super::{DlqError, Queues};

/// A job framework whose failed jobs inferwatch lists and moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framework {
    Rq,
    Bullmq,
    Dramatiq,
}

impl Framework {
    pub const ALL: [Framework; 3] = [Framework::Rq, Framework::Bullmq, Framework::Dramatiq];

    /// The name in labels and requests (`rq:<q>`, `dlq:rq:<q>`).
    pub fn name(self) -> &'static str {
        match self {
            Framework::Rq => "rq",
            Framework::Bullmq => "bullmq",
            Framework::Dramatiq => "dramatiq",
        }
    }

    /// The queues configured for this framework.
    fn queues(self, config: &crate::config::QueuesConfig) -> Vec<String> {
        match self {
            Framework::Rq => config.rq.as_ref().map(|c| c.queues.clone()),
            Framework::Bullmq => config.bullmq.as_ref().map(|c| c.queues.clone()),
            Framework::Dramatiq => config.dramatiq.as_ref().map(|c| c.queues.clone()),
        }
        .unwrap_or_default()
    }
}

/// One configured queue of a job framework.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameworkQueue {
    pub framework: Framework,
    /// The queue's name as the framework knows it.
    pub queue: String,
}

impl FrameworkQueue {
    /// `<framework>:<queue>`, as labels and job records name it.
    pub fn label(&self) -> String {
        format!("{}:{}", self.framework.name(), self.queue)
    }
}

/// What a framework requeue did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct FrameworkRequeueReport {
    /// `<framework>:<q>`.
    pub queue: String,
    /// Jobs put back where the framework's worker takes them, each once.
    pub requeued: u64,
    /// Jobs someone else took out of the failed set first (another
    /// requeue, the framework's own, its cleanup): not moved by this one.
    pub taken: u64,
    /// Failed entries whose job is gone or belongs to another queue: left
    /// in the failed set.
    pub left: u64,
}

impl Queues {
    /// The framework queue whose failed set `dlq` names
    /// (`<dlq_prefix><framework>:<q>`, as `dlq:rq:default`), when it is
    /// configured.
    pub fn framework_queue(&self, dlq: &str) -> Option<FrameworkQueue> {
        let config = self.config();
        let rest = dlq.strip_prefix(config.dlq_prefix.as_str())?;
        Framework::ALL.into_iter().find_map(|framework| {
            let q = rest.strip_prefix(framework.name())?.strip_prefix(':')?;
            framework
                .queues(&config)
                .into_iter()
                .find(|n| n == q)
                .map(|queue| FrameworkQueue { framework, queue })
        })
    }

    /// Each configured framework queue's label and failed set.
    pub fn framework_failed_sets(&self) -> Vec<(String, String)> {
        let config = self.config();
        let mut out = Vec::new();
        if let Some(c) = &config.rq {
            let l = super::RqLayout::of(c);
            out.extend(c.queues.iter().map(|q| (format!("rq:{q}"), l.failed_key(q))));
        }
        if let Some(c) = &config.bullmq {
            let l = super::BullmqLayout::of(c);
            out.extend(c.queues.iter().map(|q| (format!("bullmq:{q}"), l.key(q, "failed"))));
        }
        if let Some(c) = &config.dramatiq {
            let l = super::DramatiqLayout::of(c);
            out.extend(c.queues.iter().map(|q| (format!("dramatiq:{q}"), l.key(q, ".XQ"))));
        }
        out
    }

    /// The job framework whose configured queue `label` is (`rq`,
    /// `bullmq`, `dramatiq`, or `celery`, which is read only).
    pub fn framework_of(&self, label: &str) -> Option<&'static str> {
        if let Some(fq) = self.framework_label(label) {
            return Some(fq.framework.name());
        }
        let q = label.strip_prefix("celery:")?;
        let config = self.config();
        config
            .celery
            .as_ref()?
            .queues
            .iter()
            .any(|n| n == q)
            .then_some("celery")
    }

    /// The framework queue `label` (`rq:default`) when it is configured.
    pub fn framework_label(&self, label: &str) -> Option<FrameworkQueue> {
        let dlq = format!("{}{label}", self.config().dlq_prefix);
        self.framework_queue(&dlq)
    }

    /// Requeues every job that was in `fq`'s failed set when it started,
    /// in the set's order, in batches of `queues.requeue_batch`, each one
    /// Lua step of the framework's script; jobs that fail again meanwhile
    /// are not looped.
    pub async fn requeue_all_framework(&self, fq: &FrameworkQueue) -> Result<FrameworkRequeueReport, DlqError> {
        let script = self.move_script(fq)?;
        let failed = script.keys[0].clone();
        let mut report = FrameworkRequeueReport {
            queue: fq.label(),
            ..Default::default()
        };
        let start: u64 = self.run(redis::cmd("ZCARD").arg(&failed)).await?;
        let batch = self.config().requeue_batch as u64;
        let mut seen = 0u64;
        // The entries left in place stay at the front: skip past them.
        while seen < start {
            let stop = report.left + batch.min(start - seen) - 1;
            let ids: Vec<String> = self
                .run(redis::cmd("ZRANGE").arg(&failed).arg(report.left).arg(stop))
                .await?;
            if ids.is_empty() {
                break;
            }
            let (moved, taken, left) = self.move_batch(&script, &ids).await?;
            report.requeued += moved;
            report.taken += taken;
            report.left += left;
            seen += ids.len() as u64;
        }
        self.metrics
            .requeued
            .with_label_values(&[&report.queue])
            .inc_by(report.requeued);
        Ok(report)
    }

    /// The requeue script of `fq`'s framework.
    pub(super) fn move_script(&self, fq: &FrameworkQueue) -> Result<MoveScript, DlqError> {
        let config = self.config();
        let missing = || DlqError::NotFound(format!("{} is not a configured queue", fq.label()));
        if !fq.framework.queues(&config).contains(&fq.queue) {
            return Err(missing());
        }
        match fq.framework {
            Framework::Rq => Ok(super::rq::requeue_script(
                config.rq.as_ref().ok_or_else(missing)?,
                &fq.queue,
            )),
            Framework::Bullmq => Ok(super::bullmq::requeue_script(
                config.bullmq.as_ref().ok_or_else(missing)?,
                &fq.queue,
            )),
            Framework::Dramatiq => Ok(super::dramatiq::requeue_script(
                config.dramatiq.as_ref().ok_or_else(missing)?,
                &fq.queue,
            )),
        }
    }

    /// One batch of ids through a framework's script, never retried (a
    /// move whose reply was lost may have happened).
    pub(super) async fn move_batch(&self, script: &MoveScript, ids: &[String]) -> Result<(u64, u64, u64), DlqError> {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(script.lua).arg(script.keys.len()).arg(&script.keys);
        cmd.arg(&script.args).arg(ids);
        let mut con = self.conn().await?;
        let reply: redis::Value = self.redis.check(cmd.query_async(&mut con).await)?;
        if let Some(e) = wrong_type(&reply) {
            return Err(e);
        }
        redis::from_redis_value(&reply)
            .map_err(|e| DlqError::Unavailable(format!("a requeue step answered in an unknown shape: {e}")))
    }

    /// Runs a read-only `script` with `EVAL_RO` (Redis 7): its keys are
    /// then checked as reads, so a user with read-only access to a
    /// framework's keys (`%R~`, what `inferwatch redis-acl` grants) may run
    /// it. A Redis without `EVAL_RO` (6.x) gets `EVAL`. A `wrong_type`
    /// answer is the error naming the key.
    pub(super) async fn eval_read_only(
        &self,
        script: &str,
        keys: &[String],
        args: &[String],
    ) -> Result<redis::Value, DlqError> {
        let call = |eval: &'static str| {
            let mut cmd = redis::cmd(eval);
            cmd.arg(script).arg(keys.len()).arg(keys).arg(args);
            cmd
        };
        let reply = match self.run::<redis::Value>(&call("EVAL_RO")).await {
            Err(DlqError::Unavailable(e)) if e.contains("unknown command") => self.run(&call("EVAL")).await,
            r => r,
        }?;
        match wrong_type(&reply) {
            Some(e) => Err(e),
            None => Ok(reply),
        }
    }

    /// A page of `fq`'s failed jobs in the seed's `JobFailure` shape, in
    /// the failed set's order (`dlq` as the request named it).
    pub async fn list_framework(
        &self,
        fq: &FrameworkQueue,
        dlq: &str,
        start: u64,
        limit: u64,
    ) -> Result<Value, DlqError> {
        let config = self.config();
        let (cap, budget) = (config.list_entry_max_bytes, config.list_page_max_bytes);
        let stop = start + limit.max(1) - 1;
        let (total, jobs) = match fq.framework {
            Framework::Rq => self.list_rq(&fq.queue, start, stop, cap).await?,
            Framework::Bullmq => self.list_bullmq(&fq.queue, start, stop, cap).await?,
            Framework::Dramatiq => self.list_dramatiq(&fq.queue, start, stop, cap).await?,
        };
        Ok(page(dlq, (start, limit), total, jobs, budget))
    }
}

/// A listing page: the jobs up to the byte budget (at least one), with the
/// seed's page fields.
fn page(dlq: &str, (start, limit): (u64, u64), total: u64, listed: Vec<Value>, budget: usize) -> Value {
    let (mut jobs, mut shown, mut reached) = (Vec::new(), 0usize, false);
    for job in listed {
        shown += job.to_string().len();
        if shown > budget && !jobs.is_empty() {
            reached = true;
            break;
        }
        jobs.push(job);
    }
    let returned = jobs.len() as u64;
    json!({
        "jobs": jobs,
        "queue_name": dlq,
        "start": start,
        "limit": if reached { returned } else { limit },
        "requested_limit": limit,
        "byte_budget_reached": if reached { json!(budget) } else { Value::Null },
        "total": total,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_stops_at_the_budget_but_holds_at_least_one_job() {
        let jobs: Vec<Value> = (0..10).map(|i| json!({"id": i, "pad": "x".repeat(100)})).collect();
        let p = page("dlq:rq:default", (0, 10), 10, jobs.clone(), 360);
        assert_eq!(p["jobs"].as_array().unwrap().len(), 3);
        assert_eq!(
            (p["limit"].as_u64(), p["byte_budget_reached"].as_u64()),
            (Some(3), Some(360))
        );
        let p = page("dlq:rq:default", (0, 10), 10, jobs, 10);
        assert_eq!(p["jobs"].as_array().unwrap().len(), 1);
    }
}
