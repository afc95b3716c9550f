//! One GPU's processes as `/metrics` shows them (pure): each with its
//! owner, capped at `gpu.per_process_max` series with the smallest summed
//! into `_other`, the sums per service, and the memory no running process
//! accounts for.

use std::collections::{BTreeMap, HashMap};

use super::Owner;
use crate::nvml::GpuReading;

/// The `process_name` of the row that sums the processes past the cap.
pub const OTHER: &str = "_other";
/// The `service` of processes no configured service matched.
pub const UNATTRIBUTED: &str = "unattributed";

/// One process series (or the `_other` sum, whose `pid` is "").
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ProcessRow {
    pub pid: String,
    pub name: String,
    pub bytes: u64,
    /// SM use (0-1) from the latest driver sample; `None` when not read, or
    /// when the process had no sample (idle).
    pub sm: Option<f64>,
    pub memory_utilization: Option<f64>,
    pub owner: Owner,
}

/// What one service (or `unattributed`) holds on one GPU.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct ServiceUse {
    pub bytes: u64,
    /// Summed SM use; `None` when per-process utilization is not read.
    pub sm: Option<f64>,
}

/// One GPU's process table.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct GpuProcesses {
    pub gpu: u32,
    pub uuid: String,
    /// Largest first; at most the cap, plus `_other`.
    pub rows: Vec<ProcessRow>,
    /// Processes summed into `_other` in this poll.
    pub folded: u64,
    /// Per service, every process counted (folded ones too).
    pub services: BTreeMap<String, ServiceUse>,
    /// Used memory minus what the running compute processes hold.
    pub unattributed_bytes: Option<u64>,
}

/// The table of `r`, or `None` when its processes were not read.
pub fn build(r: &GpuReading, owners: &HashMap<u32, Owner>, max: usize) -> Option<GpuProcesses> {
    let procs = r.processes.as_ref()?;
    let samples: Option<HashMap<u32, (f64, f64)>> = r
        .process_utilization
        .as_ref()
        .map(|s| s.iter().map(|(pid, _, sm, mem)| (*pid, (*sm, *mem))).collect());
    let mut rows: Vec<ProcessRow> = procs
        .iter()
        .map(|(pid, name, bytes)| {
            // An idle process has no sample (the driver's NOT_FOUND): no series.
            let sample = samples.as_ref().and_then(|s| s.get(pid).copied());
            ProcessRow {
                pid: pid.to_string(),
                name: name.clone(),
                bytes: *bytes,
                sm: sample.map(|s| s.0),
                memory_utilization: sample.map(|s| s.1),
                owner: owners.get(pid).cloned().unwrap_or_default(),
            }
        })
        .collect();
    rows.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.pid.cmp(&b.pid)));
    let mut services: BTreeMap<String, ServiceUse> = BTreeMap::new();
    for row in &rows {
        let key = if row.owner.service.is_empty() {
            UNATTRIBUTED
        } else {
            row.owner.service.as_str()
        };
        let entry = services.entry(key.to_string()).or_default();
        entry.bytes += row.bytes;
        // Read samples sum (idle processes add 0); unread ones give no figure.
        if samples.is_some() {
            entry.sm = Some(entry.sm.unwrap_or(0.0) + row.sm.unwrap_or(0.0));
        }
    }
    let held: u64 = rows.iter().map(|row| row.bytes).sum();
    let folded = fold(&mut rows, max);
    Some(GpuProcesses {
        gpu: r.index,
        uuid: r.uuid.clone(),
        rows,
        folded,
        services,
        unattributed_bytes: r.memory_used_bytes.map(|used| used.saturating_sub(held)),
    })
}

/// Keeps the `max` largest rows and sums the rest into one `_other` row;
/// returns how many were summed.
fn fold(rows: &mut Vec<ProcessRow>, max: usize) -> u64 {
    if rows.len() <= max {
        return 0;
    }
    let rest = rows.split_off(max);
    let sum = |f: fn(&ProcessRow) -> Option<f64>| -> Option<f64> { rest.iter().map(f).sum() };
    rows.push(ProcessRow {
        pid: String::new(),
        name: OTHER.to_string(),
        bytes: rest.iter().map(|r| r.bytes).sum(),
        sm: sum(|r| r.sm),
        memory_utilization: sum(|r| r.memory_utilization),
        owner: Owner::default(),
    });
    rest.len() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn reading(procs: &[(u32, u64)], used: u64, samples: Option<&[(u32, f64)]>) -> GpuReading {
        GpuReading {
            index: 1,
            uuid: "GPU-1".into(),
            memory_used_bytes: Some(used),
            processes: Some(procs.iter().map(|(p, b)| (*p, format!("p{p}"), *b)).collect()),
            process_utilization: samples.map(|s| s.iter().map(|(p, sm)| (*p, format!("p{p}"), *sm, 0.1)).collect()),
            ..GpuReading::default()
        }
    }

    fn owner(service: &str) -> Owner {
        Owner {
            service: service.into(),
            ..Owner::default()
        }
    }

    #[test]
    fn services_sum_their_processes_and_the_rest_is_unattributed() {
        let r = reading(
            &[(10, 100 * MIB), (11, 50 * MIB), (12, 7 * MIB)],
            200 * MIB,
            Some(&[(10, 0.5), (11, 0.25)]),
        );
        let owners = HashMap::from([(10, owner("vllm")), (11, owner("vllm"))]);
        let t = build(&r, &owners, 64).unwrap();
        assert_eq!(
            t.services["vllm"],
            ServiceUse {
                bytes: 150 * MIB,
                sm: Some(0.75)
            }
        );
        assert_eq!(
            t.services[UNATTRIBUTED],
            ServiceUse {
                bytes: 7 * MIB,
                sm: Some(0.0)
            }
        );
        assert_eq!(t.unattributed_bytes, Some(43 * MIB));
        assert_eq!(t.folded, 0);
        assert_eq!(
            t.rows.iter().map(|r| r.pid.as_str()).collect::<Vec<_>>(),
            ["10", "11", "12"]
        );
    }

    #[test]
    fn past_the_cap_the_smallest_are_summed_into_other() {
        let r = reading(&[(1, 5), (2, 50), (3, 20), (4, 10)], 100, None);
        let t = build(&r, &HashMap::new(), 2).unwrap();
        assert_eq!(t.rows.len(), 3);
        assert_eq!((t.rows[0].pid.as_str(), t.rows[1].pid.as_str()), ("2", "3"));
        assert_eq!(
            (t.rows[2].name.as_str(), t.rows[2].pid.as_str(), t.rows[2].bytes),
            (OTHER, "", 15)
        );
        assert_eq!(t.folded, 2);
        assert_eq!(t.rows[2].sm, None, "no samples read: no SM figure");
        assert_eq!(
            t.services[UNATTRIBUTED].bytes, 85,
            "folded processes still count for their service"
        );
    }

    #[test]
    fn memory_below_the_processes_sum_is_not_negative_and_unread_processes_give_no_table() {
        let t = build(&reading(&[(1, 100)], 60, None), &HashMap::new(), 64).unwrap();
        assert_eq!(t.unattributed_bytes, Some(0));
        let mut r = reading(&[], 60, None);
        r.processes = None;
        assert!(build(&r, &HashMap::new(), 64).is_none());
    }
}
