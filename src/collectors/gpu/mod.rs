//! The GPU collector: polls NVML through [`crate::nvml`], keeps the latest
//! readings as a snapshot, feeds the history ring and the store, and turns
//! the snapshot into the `gpu_*` metric families on demand.
//!
//! The families are built from the snapshot at render time, so a GPU that
//! disappears or a process that exits simply has no series in the next
//! page; nothing stale lingers. Driver-cumulative values (energy, ECC) are
//! exposed as counters with the driver's own totals; XID errors arrive as
//! events and are summed here.

//!
//! By idea: `poller` (NVML, rounds, the snapshot), `link` (up, down and
//! retried, mock; init failures by reason), `xids` (NVML events and the
//! kernel log, each XID counted once) and `render` (the families).

mod link;
mod poller;
mod render;
mod xids;

pub use link::Retry;
pub use poller::GpuCollector;
pub use render::GpuFamilies;

use crate::attribution::Attributor;

/// The registry entry: NVML is loaded in the task, so a slow driver init
/// does not hold up the others.
pub const ENTRY: super::Entry = super::Entry {
    name: "gpu",
    about: "GPUs through NVML (gpu.mode: auto mocks only without a driver installed)",
    enabled,
    switch: Some(|c, on| c.gpu.enabled = on),
    build,
};

fn enabled(c: &crate::config::Config) -> bool {
    c.gpu.enabled
}

fn build(sh: &super::Shared) -> Result<super::Built, super::StartError> {
    let whole = sh.config.get();
    let (config, state, events, store, live) = (
        whole.gpu.clone(),
        sh.gpu.clone(),
        sh.events.clone(),
        sh.store.clone(),
        sh.config.clone(),
    );
    let attributor = config.per_process.then(|| Attributor::new(&whole, Some(&sh.metrics)));
    Ok(super::Built::Polled(Box::pin(async move {
        let collector = GpuCollector::start(config, state, events, store, attributor).await;
        Box::new(collector.follow(live)) as Box<dyn super::DynCollector>
    })))
}
