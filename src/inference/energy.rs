//! Energy per service (pure): at each poll, each GPU's energy since the
//! last poll goes to the services that hold processes on it.
//!
//! - The energy is the driver's total energy counter where it has one
//!   (`counter`); else power × the time since the last poll (`power`).
//! - One holder gets all of it. Several split it by the SM use of their
//!   processes where the driver reports it for every holder, else by the
//!   memory each holds (else evenly). Processes no service matches are one
//!   holder, `unattributed`, and so is a GPU nobody holds.
//! - A GPU a service holds while idle is charged to it: that is what the
//!   service costs.
//!
//! The energy counter is a slow field (read every `gpu.slow_interval`), so
//! between two readings the holders' shares are summed over time, and the
//! counter's step is split by those sums: a service that held the GPU for
//! half the interval is charged for that half.

use std::collections::{BTreeMap, HashMap};

use tokio::time::Instant;

use crate::attribution::table::UNATTRIBUTED;
use crate::attribution::GpuProcesses;
use crate::nvml::GpuReading;

/// The running totals `/metrics` shows; keys are `(gpu, uuid)`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EnergyTotals {
    /// Joules charged to each service on each GPU: `(gpu, uuid, service)`.
    pub services: BTreeMap<(String, String, String), f64>,
    /// Joules of each GPU that no service held.
    pub unattributed: BTreeMap<(String, String), f64>,
    /// How each GPU's energy is measured: `counter` or `power`.
    pub method: BTreeMap<(String, String), &'static str>,
}

/// The methods `gpu_energy_method` names.
pub const METHODS: [&str; 2] = ["counter", "power"];

#[derive(Debug, Default)]
struct GpuLedger {
    counter: Option<f64>,
    at: Option<Instant>,
    /// Share × seconds per holder since the counter last moved.
    weights: BTreeMap<String, f64>,
}

/// Splits every GPU's energy between its holders, poll after poll.
#[derive(Debug, Default)]
pub struct EnergyLedger {
    gpus: HashMap<String, GpuLedger>,
    totals: EnergyTotals,
}

impl EnergyLedger {
    /// Charges the energy since the last poll; `tables` are the GPUs'
    /// process tables (empty when per-process reading is off: then every
    /// GPU is unattributed).
    pub fn account(&mut self, readings: &[GpuReading], tables: &[GpuProcesses], now: Instant) {
        for r in readings {
            let key = (r.index.to_string(), r.uuid.clone());
            let shares = shares(tables.iter().find(|t| t.uuid == r.uuid));
            let g = self.gpus.entry(r.uuid.clone()).or_default();
            let dt = g.at.map_or(0.0, |at| now.saturating_duration_since(at).as_secs_f64());
            g.at = Some(now);
            let charge = match (r.energy_joules, r.power_usage_watts) {
                (Some(e), _) => {
                    self.totals.method.insert(key.clone(), "counter");
                    g.counter_step(e, &shares, dt)
                }
                (None, Some(watts)) => {
                    self.totals.method.insert(key.clone(), "power");
                    shares.iter().map(|(h, s)| (h.clone(), s * watts * dt)).collect()
                }
                (None, None) => {
                    self.totals.method.remove(&key);
                    Vec::new()
                }
            };
            // A holder's series shows from its first poll, 0 or not.
            let zero = shares.iter().map(|(h, _)| (h.clone(), 0.0));
            let measured = self.totals.method.contains_key(&key);
            for (holder, joules) in charge.into_iter().chain(zero.filter(|_| measured)) {
                if holder == UNATTRIBUTED {
                    *self.totals.unattributed.entry(key.clone()).or_default() += joules;
                } else {
                    let k = (key.0.clone(), key.1.clone(), holder);
                    *self.totals.services.entry(k).or_default() += joules;
                }
            }
            if self.totals.method.contains_key(&key) {
                // Measured: the GPU's unattributed series shows, 0 or not.
                self.totals.unattributed.entry(key).or_default();
            }
        }
        // A GPU that is gone takes its series with it, as its other series go.
        let live: std::collections::HashSet<&str> = readings.iter().map(|r| r.uuid.as_str()).collect();
        self.gpus.retain(|uuid, _| live.contains(uuid.as_str()));
        self.totals.services.retain(|(_, u, _), _| live.contains(u.as_str()));
        self.totals.unattributed.retain(|(_, u), _| live.contains(u.as_str()));
        self.totals.method.retain(|(_, u), _| live.contains(u.as_str()));
    }

    pub fn totals(&self) -> &EnergyTotals {
        &self.totals
    }
}

impl GpuLedger {
    /// The counter read `e`: the step since the last reading, split by the
    /// shares summed over the time it covers.
    fn counter_step(&mut self, e: f64, shares: &[(String, f64)], dt: f64) -> Vec<(String, f64)> {
        for (h, s) in shares {
            *self.weights.entry(h.clone()).or_default() += s * dt;
        }
        let last = self.counter.replace(e);
        let step = match last {
            Some(last) if e > last => e - last,
            // First reading, the same reading again (a slow field between
            // two reads), or a counter that went back (the driver reloaded).
            Some(last) if e < last => {
                self.weights.clear();
                return Vec::new();
            }
            _ => return Vec::new(),
        };
        let total: f64 = self.weights.values().sum();
        let split: Vec<(String, f64)> = if total > 0.0 {
            self.weights
                .iter()
                .map(|(h, w)| (h.clone(), step * w / total))
                .collect()
        } else {
            shares.iter().map(|(h, s)| (h.clone(), step * s)).collect()
        };
        self.weights.clear();
        split
    }
}

/// Each holder's share of a GPU (summing to 1): by SM use when every
/// holder has a sample and some is busy, else by memory, else evenly;
/// `unattributed` alone when nobody holds it.
pub fn shares(table: Option<&GpuProcesses>) -> Vec<(String, f64)> {
    let holders: Vec<(&String, &crate::attribution::table::ServiceUse)> =
        table.map(|t| t.services.iter().collect()).unwrap_or_default();
    if holders.is_empty() {
        return vec![(UNATTRIBUTED.to_string(), 1.0)];
    }
    let by = |f: &dyn Fn(&crate::attribution::table::ServiceUse) -> f64| -> Option<Vec<(String, f64)>> {
        let sum: f64 = holders.iter().map(|(_, u)| f(u)).sum();
        (sum > 0.0).then(|| holders.iter().map(|(h, u)| ((*h).clone(), f(u) / sum)).collect())
    };
    let every_sm = holders.iter().all(|(_, u)| u.sm.is_some());
    every_sm
        .then(|| by(&|u| u.sm.unwrap_or(0.0)))
        .flatten()
        .or_else(|| by(&|u| u.bytes as f64))
        .unwrap_or_else(|| {
            let n = holders.len() as f64;
            holders.iter().map(|(h, _)| ((*h).clone(), 1.0 / n)).collect()
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attribution::table::ServiceUse;
    use std::time::Duration;

    fn reading(energy: Option<f64>, watts: Option<f64>) -> GpuReading {
        GpuReading {
            index: 0,
            uuid: "GPU-0".into(),
            energy_joules: energy,
            power_usage_watts: watts,
            ..Default::default()
        }
    }

    fn table(holders: &[(&str, u64, Option<f64>)]) -> GpuProcesses {
        GpuProcesses {
            gpu: 0,
            uuid: "GPU-0".into(),
            services: holders
                .iter()
                .map(|(s, bytes, sm)| (s.to_string(), ServiceUse { bytes: *bytes, sm: *sm }))
                .collect(),
            ..Default::default()
        }
    }

    fn charged(l: &EnergyLedger, service: &str) -> f64 {
        let k = ("0".to_string(), "GPU-0".to_string(), service.to_string());
        l.totals().services.get(&k).copied().unwrap_or(0.0)
    }

    fn unattributed(l: &EnergyLedger) -> f64 {
        l.totals()
            .unattributed
            .get(&("0".into(), "GPU-0".into()))
            .copied()
            .unwrap_or(0.0)
    }

    #[test]
    fn one_holder_gets_all_of_it_and_the_first_reading_is_a_baseline() {
        let mut l = EnergyLedger::default();
        let t0 = Instant::now();
        let t = [table(&[("vllm", 100, None)])];
        l.account(&[reading(Some(1000.0), Some(300.0))], &t, t0);
        assert_eq!(charged(&l, "vllm"), 0.0);
        l.account(&[reading(Some(1450.0), Some(300.0))], &t, t0 + Duration::from_secs(1));
        assert_eq!(charged(&l, "vllm"), 450.0);
        assert_eq!(l.totals().method[&("0".into(), "GPU-0".into())], "counter");
    }

    fn near(got: Vec<(String, f64)>, want: &[(&str, f64)]) {
        assert_eq!(got.len(), want.len(), "{got:?}");
        for ((h, s), (wh, ws)) in got.iter().zip(want) {
            assert!(h == wh && (s - ws).abs() < 1e-12, "{got:?} != {want:?}");
        }
    }

    #[test]
    fn several_split_by_sm_else_by_memory() {
        near(
            shares(Some(&table(&[("a", 100, Some(0.3)), ("b", 300, Some(0.1))]))),
            &[("a", 0.75), ("b", 0.25)],
        );
        // One holder without a sample: by memory.
        near(
            shares(Some(&table(&[("a", 100, Some(0.3)), ("b", 300, None)]))),
            &[("a", 0.25), ("b", 0.75)],
        );
        // All idle (SM 0): by memory too.
        near(
            shares(Some(&table(&[("a", 100, Some(0.0)), ("b", 300, Some(0.0))]))),
            &[("a", 0.25), ("b", 0.75)],
        );
        // Nothing to go by: evenly.
        near(
            shares(Some(&table(&[("a", 0, None), ("b", 0, None)]))),
            &[("a", 0.5), ("b", 0.5)],
        );
        near(shares(None), &[(UNATTRIBUTED, 1.0)]);
        near(shares(Some(&table(&[]))), &[(UNATTRIBUTED, 1.0)]);
    }

    #[test]
    fn a_counter_step_is_split_by_who_held_the_gpu_over_the_interval() {
        let mut l = EnergyLedger::default();
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let a = [table(&[("a", 1, None)])];
        let ab = [table(&[("a", 1, None), ("b", 1, None)])];
        l.account(&[reading(Some(0.0), None)], &a, t0);
        // The slow counter stands still for 3 polls, then moves by 400 J:
        // a held it alone for 2 s, then shared it evenly for 2 s.
        l.account(&[reading(Some(0.0), None)], &a, t0 + s);
        l.account(&[reading(Some(0.0), None)], &a, t0 + 2 * s);
        l.account(&[reading(Some(0.0), None)], &ab, t0 + 3 * s);
        l.account(&[reading(Some(400.0), None)], &ab, t0 + 4 * s);
        assert!((charged(&l, "a") - 300.0).abs() < 1e-9, "{:?}", l.totals());
        assert!((charged(&l, "b") - 100.0).abs() < 1e-9);
    }

    #[test]
    fn without_a_counter_power_times_the_interval() {
        let mut l = EnergyLedger::default();
        let t0 = Instant::now();
        l.account(&[reading(None, Some(200.0))], &[], t0);
        l.account(&[reading(None, Some(250.0))], &[], t0 + Duration::from_millis(2000));
        assert_eq!(unattributed(&l), 500.0);
        assert_eq!(l.totals().method[&("0".into(), "GPU-0".into())], "power");
    }

    #[test]
    fn a_counter_that_goes_back_charges_nothing_and_restarts_from_there() {
        let mut l = EnergyLedger::default();
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let t = [table(&[("a", 1, None)])];
        l.account(&[reading(Some(5000.0), None)], &t, t0);
        l.account(&[reading(Some(10.0), None)], &t, t0 + s);
        assert_eq!(charged(&l, "a"), 0.0);
        l.account(&[reading(Some(30.0), None)], &t, t0 + 2 * s);
        assert_eq!(charged(&l, "a"), 20.0);
    }

    #[test]
    fn unattributed_processes_are_a_holder_of_their_own() {
        let mut l = EnergyLedger::default();
        let t0 = Instant::now();
        let t = [table(&[("a", 100, None), (UNATTRIBUTED, 300, None)])];
        l.account(&[reading(Some(0.0), None)], &t, t0);
        l.account(&[reading(Some(100.0), None)], &t, t0 + Duration::from_secs(1));
        assert_eq!(charged(&l, "a"), 25.0);
        assert_eq!(unattributed(&l), 75.0);
        assert_eq!(charged(&l, UNATTRIBUTED), 0.0);
    }

    #[test]
    fn a_gpu_that_is_gone_takes_its_totals_with_it() {
        let mut l = EnergyLedger::default();
        let t0 = Instant::now();
        l.account(&[reading(None, Some(100.0))], &[], t0);
        l.account(&[reading(None, Some(100.0))], &[], t0 + Duration::from_secs(1));
        assert_eq!(unattributed(&l), 100.0);
        l.account(&[], &[], t0 + Duration::from_secs(2));
        assert_eq!(l.totals(), &EnergyTotals::default());
    }
}
