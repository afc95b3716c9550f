//! Whether a restart gave the GPU memory back. Before the restart command
//! runs, the service's GPU memory, its processes and each GPU's unattributed
//! memory are noted; when the start period after it ends, they are compared
//! (pure, here): memory the old processes still hold, plus the growth of
//! memory no process accounts for (a context that outlived its process), is
//! what was not returned.

use std::collections::{BTreeMap, HashSet};

use crate::attribution::GpuProcesses;

/// What a service held on the GPUs at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Held {
    /// Bytes per GPU uuid.
    pub per_gpu: BTreeMap<String, u64>,
    /// The pids of its processes (`gpu_process_*`'s `pid` label).
    pub pids: HashSet<String>,
    /// Each GPU's memory that no process accounted for.
    pub unattributed: BTreeMap<String, u64>,
}

impl Held {
    pub fn total(&self) -> u64 {
        self.per_gpu.values().sum()
    }

    /// `service`'s share of the latest process tables.
    pub fn of(tables: &[GpuProcesses], service: &str) -> Held {
        let mut held = Held::default();
        for t in tables {
            if let Some(used) = t.services.get(service) {
                held.per_gpu.insert(t.uuid.clone(), used.bytes);
            }
            held.pids.extend(
                t.rows
                    .iter()
                    .filter(|r| r.owner.service == service)
                    .map(|r| r.pid.clone()),
            );
            if let Some(u) = t.unattributed_bytes {
                held.unattributed.insert(t.uuid.clone(), u);
            }
        }
        held
    }
}

/// The comparison, once the start period ends.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub before_bytes: u64,
    /// What the service holds now (its new processes).
    pub after_bytes: u64,
    /// Held by the old processes still, or by no process where none was
    /// before: what the restart did not give back.
    pub leftover_bytes: u64,
    /// True when less than half of what the old processes held is left over.
    pub returned: bool,
}

/// Compares `before` with the latest `tables`.
pub fn judge(before: &Held, tables: &[GpuProcesses], service: &str) -> Verdict {
    let now = Held::of(tables, service);
    let still_held: u64 = tables
        .iter()
        .flat_map(|t| &t.rows)
        .filter(|r| before.pids.contains(&r.pid))
        .map(|r| r.bytes)
        .sum();
    let grown: u64 = now
        .unattributed
        .iter()
        .map(|(uuid, bytes)| bytes.saturating_sub(before.unattributed.get(uuid).copied().unwrap_or(*bytes)))
        .sum();
    let leftover = still_held + grown.min(before.total());
    Verdict {
        before_bytes: before.total(),
        after_bytes: now.total(),
        leftover_bytes: leftover,
        returned: leftover * 2 < before.total().max(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attribution::table::{ProcessRow, ServiceUse};
    use crate::attribution::Owner;

    const GIB: u64 = 1 << 30;

    fn table(rows: &[(&str, &str, u64)], unattributed: u64) -> GpuProcesses {
        let mut services: BTreeMap<String, ServiceUse> = BTreeMap::new();
        for (_, service, bytes) in rows {
            services.entry(service.to_string()).or_default().bytes += bytes;
        }
        GpuProcesses {
            gpu: 0,
            uuid: "GPU-0".into(),
            rows: rows
                .iter()
                .map(|(pid, service, bytes)| ProcessRow {
                    pid: pid.to_string(),
                    name: "p".into(),
                    bytes: *bytes,
                    sm: None,
                    memory_utilization: None,
                    owner: Owner {
                        service: service.to_string(),
                        ..Owner::default()
                    },
                })
                .collect(),
            services,
            unattributed_bytes: Some(unattributed),
            ..GpuProcesses::default()
        }
    }

    #[test]
    fn a_clean_restart_returns_the_memory_and_the_new_process_loads_again() {
        let before = Held::of(&[table(&[("10", "vllm", 40 * GIB)], GIB / 8)], "vllm");
        let v = judge(&before, &[table(&[("11", "vllm", 38 * GIB)], GIB / 8)], "vllm");
        assert_eq!(
            (v.before_bytes, v.after_bytes, v.leftover_bytes, v.returned),
            (40 * GIB, 38 * GIB, 0, true)
        );
    }

    #[test]
    fn memory_left_behind_by_the_old_context_is_not_returned() {
        let before = Held::of(&[table(&[("10", "vllm", 40 * GIB)], 0)], "vllm");
        // The old process is gone, but its 40 GiB now belong to no process.
        let v = judge(&before, &[table(&[("11", "vllm", 2 * GIB)], 40 * GIB)], "vllm");
        assert_eq!((v.leftover_bytes, v.returned), (40 * GIB, false));
        // The old process still holds it (stuck in the driver).
        let v = judge(&before, &[table(&[("10", "", 40 * GIB)], 0)], "vllm");
        assert_eq!((v.after_bytes, v.leftover_bytes, v.returned), (0, 40 * GIB, false));
    }
}
