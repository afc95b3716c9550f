//! XIDs from both sources, each counted once: NVML's events and the kernel
//! log (`gpu.kernel_log`), whose lines name the PCI bus of the GPU, also of
//! one that has just fallen off it. Each XID is logged with the catalog's
//! severity and action, and published as an event.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use tokio::time::Instant;

use crate::collectors::unix_now;
use crate::events::{Event, EventBus};
use crate::nvml::GpuReading;
use crate::store::Store;
use crate::xid::kmsg::{self, Found, KernelLog};
use crate::xid::ledger::{Ledger, Source};
use crate::xid::{catalog, PciAddr};

/// What the collector knows of XIDs, and where it reads them.
pub(super) struct XidWatch {
    /// Each XID from NVML events and the kernel log, counted once.
    pub(super) ledger: Ledger,
    /// The kernel-log reader, when `gpu.kernel_log` is set and readable.
    reader: Option<KernelLog>,
    /// `Some(readable)` when `gpu.kernel_log` is set.
    pub(super) up: Option<bool>,
    /// Records the kernel overwrote before they were read.
    pub(super) overwritten: u64,
    /// Records read.
    pub(super) records: u64,
    boot_id: String,
    /// Every GPU seen this run, by PCI address.
    buses: HashMap<PciAddr, (u32, String)>,
}

impl XidWatch {
    pub(super) fn new(poll_interval: Duration) -> XidWatch {
        XidWatch {
            ledger: Ledger::new(Self::window(poll_interval)),
            reader: None,
            up: None,
            overwritten: 0,
            records: 0,
            boot_id: String::new(),
            buses: HashMap::new(),
        }
    }

    /// NVML events reach us up to a poll late: the window that matches them
    /// with kernel-log lines covers it.
    fn window(poll_interval: Duration) -> Duration {
        Duration::from_secs(5) + poll_interval
    }

    /// A reload changed the poll interval.
    pub(super) fn set_poll_interval(&mut self, poll_interval: Duration) {
        self.ledger.set_window(Self::window(poll_interval));
    }

    /// Starts the kernel-log reader at `path` after the position stored for
    /// this boot. Not being able to read it is one WARN line and
    /// `inferwatch_kernel_log_up 0`, never a failed round. Records longer
    /// than `max_record` bytes are skipped.
    pub(super) async fn open(&mut self, path: &str, max_record: usize, store: Option<&Store>) {
        if path.is_empty() {
            return;
        }
        self.boot_id = kmsg::boot_id();
        let stored = match store {
            Some(store) => match store.kernel_log_position(path).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(path = %path, error = %e, "The stored kernel-log position could not be read; the kernel's buffer is read from its start.");
                    None
                }
            },
            None => None,
        };
        let resume = kmsg::resume_after(stored, &self.boot_id);
        // Opening may wait up to half a second: not on the runtime's threads.
        let owned = path.to_string();
        let started = tokio::task::spawn_blocking(move || KernelLog::start(&owned, resume, max_record))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
        match started {
            Ok(k) => {
                tracing::info!(path = %path, resume_after = ?resume, boot_id = %self.boot_id, "Reading XIDs from the kernel log.");
                self.up = Some(k.is_up());
                self.reader = Some(k);
            }
            Err(e) => {
                tracing::warn!(path = %path, error = %e, "The kernel log cannot be read: XIDs come from NVML events only, which miss some (79, 119, 120). /dev/kmsg needs CAP_SYSLOG when kernel.dmesg_restrict is 1 (the systemd unit grants it).");
                self.up = Some(false);
            }
        }
    }

    /// Remembers the bus of every GPU just read.
    pub(super) fn note_buses(&mut self, readings: &[GpuReading]) {
        for r in readings {
            if let Some(pci) = PciAddr::parse(&r.pci_bus_id) {
                self.buses.insert(pci, (r.index, r.uuid.clone()));
            }
        }
    }

    /// Forgets what only GPUs that are gone had.
    pub(super) fn retain(&mut self, live: &HashSet<&str>, now: Instant) {
        self.ledger.retain(live, now);
    }

    /// Counts one XID (once across NVML and the kernel log) and reports it
    /// with the catalog's severity and action.
    fn report(&mut self, events: &EventBus, gpu: String, uuid: String, xid: u64, source: Source, at: Instant) {
        let (severity, action) = catalog::classify(xid);
        let key = (gpu.clone(), uuid.clone(), xid.to_string());
        if !self.ledger.record(key, source, at, unix_now()) {
            return;
        }
        let cause = catalog::catalog()
            .xids
            .get(&xid.to_string())
            .map(|e| e.cause.as_str())
            .unwrap_or("not in the XID catalog");
        let from = match source {
            Source::Nvml => "nvml",
            Source::Kernel => "kernel_log",
        };
        match severity {
            "critical" => {
                tracing::error!(gpu = %gpu, uuid = %uuid, xid, severity, action, from, cause, "GPU reported an XID error.")
            }
            "warning" => {
                tracing::warn!(gpu = %gpu, uuid = %uuid, xid, severity, action, from, cause, "GPU reported an XID error.")
            }
            _ => {
                tracing::info!(gpu = %gpu, uuid = %uuid, xid, severity, action, from, cause, "GPU reported an XID error.")
            }
        }
        events.publish(Event::GpuXid {
            gpu,
            uuid,
            xid: xid.to_string(),
        });
    }

    /// Counts the XIDs NVML delivered since the last poll.
    pub(super) fn report_nvml(&mut self, events: &EventBus, xids: &[(u32, String, u64)]) {
        let now = Instant::now();
        for (gpu, uuid, xid) in xids {
            self.report(events, gpu.to_string(), uuid.clone(), *xid, Source::Nvml, now);
        }
    }

    /// Counts what the kernel-log reader found since the last round, maps
    /// each bus to its GPU, and stores how far it has read.
    pub(super) async fn drain(&mut self, events: &EventBus, store: Option<&Store>) {
        let Some(k) = &self.reader else { return };
        let drained = k.drain();
        let up = k.is_up();
        let path = k.path.clone();
        self.up = Some(up);
        self.overwritten += drained.overwritten;
        self.records += drained.records;
        if drained.oversized > 0 {
            crate::bounded::HITS
                .with_label_values(&[crate::bounded::Source::KernelLog.label()])
                .inc_by(drained.oversized);
            tracing::warn!(path = %path, records = drained.oversized, "Kernel-log records longer than the kernel writes were skipped unread.");
        }
        if drained.overwritten > 0 {
            tracing::warn!(path = %path, overwritten = drained.overwritten, "The kernel log overwrote records before they were read; XIDs in them are lost.");
        }
        for x in drained.xids {
            match x.found {
                Found::Xid { pci, xid } => {
                    let (gpu, uuid) = match self.buses.get(&pci) {
                        Some((index, uuid)) => (index.to_string(), uuid.clone()),
                        // A bus no GPU of this run had: its address stands in for the UUID.
                        None => ("unknown".to_string(), pci.to_string()),
                    };
                    self.report(events, gpu, uuid, xid, Source::Kernel, x.at);
                }
                Found::SXid { pci, sxid } => {
                    let key = ("nvswitch".to_string(), pci.to_string(), format!("sxid_{sxid}"));
                    if self.ledger.record(key, Source::Kernel, x.at, unix_now()) {
                        tracing::warn!(nvswitch = %pci, sxid, message = %x.message, "NVSwitch reported an SXid error.");
                    }
                }
            }
        }
        if let (Some(store), Some(seq)) = (store, drained.read_seq) {
            self.save_position(store, &path, seq).await;
        }
    }

    /// Stores how far the kernel log was read; a failure waits for the
    /// next round.
    async fn save_position(&self, store: &Store, path: &str, seq: u64) {
        let save = store.save_kernel_log_position(path, &self.boot_id, seq);
        match tokio::time::timeout(Duration::from_secs(1), save).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "Storing the kernel-log position failed; the next round stores it.")
            }
            Err(_) => tracing::debug!("Storing the kernel-log position timed out; the next round stores it."),
        }
    }
}
