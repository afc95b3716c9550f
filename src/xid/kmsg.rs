//! The kernel log as the kernel writes it (`/dev/kmsg`, or a file or FIFO
//! with the same records for tests): one record per `read()`,
//! `priority,seq,usec,flags;message`, continuation lines (` KEY=value`)
//! after it, and `EPIPE` when the ring buffer overwrote records this reader
//! had not read yet (counted, then reading goes on from the oldest record
//! left). XIDs (`NVRM: Xid (PCI:dddd:bb:dd): N, …`) and NVSwitch SXids
//! (`SXid (PCI:…): N, …`) are picked out; everything else is skipped.
//!
//! The reader runs on its own thread (a blocking `read()` is how
//! `/dev/kmsg` waits for the next record). It skips records up to the
//! position stored for this boot, so a restart neither counts a record
//! twice nor loses one written while the daemon was down.

use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::PciAddr;

/// Where the kernel names the boot, so a stored position is only reused on
/// the boot it was taken on.
pub const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";

/// One record's header and text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    pub seq: u64,
    pub usec: u64,
    pub message: &'a str,
}

/// Parses `priority,seq,usec,flags[,…];message`.
pub fn parse_record(line: &str) -> Option<Record<'_>> {
    let (head, message) = line.split_once(';')?;
    let mut fields = head.split(',');
    fields.next()?.parse::<u32>().ok()?;
    let seq = fields.next()?.parse().ok()?;
    let usec = fields.next()?.parse().ok()?;
    Some(Record { seq, usec, message })
}

/// An XID or SXid line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// `NVRM: Xid (PCI:0000:3b:00): 79, …` from a GPU.
    Xid { pci: PciAddr, xid: u64 },
    /// `nvidia-nvswitchN: SXid (PCI:0000:05:00.0): 12028, …` from an NVSwitch.
    SXid { pci: PciAddr, sxid: u64 },
}

/// Picks an XID or SXid out of a kernel message (with or without the
/// `PCI:` prefix that older drivers leave out).
pub fn parse_xid(message: &str) -> Option<Found> {
    let (sxid, rest) = if let Some(i) = message.find("NVRM: Xid (") {
        (false, &message[i + "NVRM: Xid (".len()..])
    } else if let Some(i) = message.find("SXid (") {
        (true, &message[i + "SXid (".len()..])
    } else {
        return None;
    };
    let rest = rest.strip_prefix("PCI:").unwrap_or(rest);
    let close = rest.find(')')?;
    let pci = PciAddr::parse(&rest[..close])?;
    let after = rest[close + 1..].trim_start_matches(':').trim_start();
    let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
    let n = digits.parse().ok()?;
    Some(if sxid {
        Found::SXid { pci, sxid: n }
    } else {
        Found::Xid { pci, xid: n }
    })
}

/// An XID the reader found, with when it read it.
#[derive(Debug, Clone)]
pub struct KernelXid {
    pub seq: u64,
    pub found: Found,
    pub at: Instant,
    pub message: String,
}

/// What the reader found since the last drain.
#[derive(Debug, Default)]
pub struct Drained {
    pub xids: Vec<KernelXid>,
    /// The last record read (and so counted once drained), if any.
    pub read_seq: Option<u64>,
    /// `EPIPE`s since the last drain: records overwritten before they were read.
    pub overwritten: u64,
    pub records: u64,
    /// Records longer than the record limit, skipped unread (the kernel
    /// writes at most 8 KiB: a longer one is not the kernel's).
    pub oversized: u64,
}

/// The longest record kept by default (`gpu.kernel_log_record_max_bytes`):
/// `/dev/kmsg` records are at most 8 KiB (`PRINTK_MESSAGE_MAX` plus the
/// header); a file or FIFO could send a line without end.
pub const MAX_RECORD: usize = 16 * 1024;

/// Splits a byte stream into records: one per `read()` from `/dev/kmsg`,
/// lines from a file or FIFO. Pure; the thread feeds it.
#[derive(Debug)]
pub struct Splitter {
    partial: Vec<u8>,
    /// The longest record kept; longer ones are skipped as they come.
    pub max_record: usize,
    /// Inside a record longer than `max_record`: bytes are dropped up to
    /// its end.
    skipping: bool,
    /// Records skipped for their length since the last look.
    pub oversized: u64,
    /// Records up to this sequence number were counted before.
    pub resume_after: Option<u64>,
}

impl Default for Splitter {
    fn default() -> Self {
        Splitter {
            partial: Vec::new(),
            max_record: MAX_RECORD,
            skipping: false,
            oversized: 0,
            resume_after: None,
        }
    }
}

impl Splitter {
    /// Bytes held of a record not yet ended: never more than `max_record`
    /// after a feed.
    pub fn held(&self) -> usize {
        self.partial.len()
    }

    /// Feeds bytes; calls `record` for each complete record line (not the
    /// continuation lines, nor records at or before `resume_after`).
    pub fn feed(&mut self, bytes: &[u8], mut record: impl FnMut(Record<'_>)) {
        let mut bytes = bytes;
        if self.skipping {
            let Some(nl) = bytes.iter().position(|&b| b == b'\n') else {
                return;
            };
            bytes = &bytes[nl + 1..];
            self.skipping = false;
        }
        self.partial.extend_from_slice(bytes);
        let mut start = 0;
        while let Some(nl) = self.partial[start..].iter().position(|&b| b == b'\n') {
            if nl > self.max_record {
                // Ended within this feed, yet longer than the limit.
                start += nl + 1;
                self.oversized += 1;
                continue;
            }
            let line = String::from_utf8_lossy(&self.partial[start..start + nl]).into_owned();
            start += nl + 1;
            if line.starts_with(' ') || line.is_empty() {
                continue;
            }
            if let Some(r) = parse_record(&line) {
                if self.resume_after.is_some_and(|after| r.seq <= after) {
                    continue;
                }
                record(r);
            }
        }
        self.partial.drain(..start);
        if self.partial.len() > self.max_record {
            // Never kept whole: the rest of this record is dropped as it comes.
            self.partial = Vec::new();
            self.skipping = true;
            self.oversized += 1;
        }
    }
}

/// Shared between the reader thread and the collector.
#[derive(Default)]
struct Shared {
    pending: Mutex<Drained>,
    up: AtomicBool,
}

/// A running kernel-log reader.
pub struct KernelLog {
    shared: Arc<Shared>,
    pub path: String,
}

/// The position to resume after: the stored one on the same boot; on a
/// new boot (or none stored) the kernel's whole buffer is read once.
pub fn resume_after(stored: Option<(String, u64)>, boot_id: &str) -> Option<u64> {
    match stored {
        Some((boot, seq)) if boot == boot_id => Some(seq),
        _ => None,
    }
}

/// This boot's id, or empty when the kernel does not say.
pub fn boot_id() -> String {
    std::fs::read_to_string(BOOT_ID_PATH)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// How long [`KernelLog::start`] waits for `open()` to answer before it
/// lets the reader thread wait on alone.
const OPEN_WAIT: Duration = Duration::from_millis(500);

impl KernelLog {
    /// Starts the reader thread, which opens `path` itself: an `open()` that
    /// blocks (a FIFO with no writer, a hung NFS mount) holds up only that
    /// thread. An open that fails within [`OPEN_WAIT`] is the error (so a
    /// permission error is known at once); one still blocked then leaves
    /// the log down (`is_up` false) until it opens.
    pub fn start(path: &str, resume_after: Option<u64>, max_record: usize) -> std::io::Result<KernelLog> {
        let shared = Arc::new(Shared::default());
        let thread_shared = shared.clone();
        let name = path.to_string();
        let (opened, result) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("kmsg".into())
            .spawn(move || match std::fs::File::open(&name) {
                Ok(file) => {
                    thread_shared.up.store(true, Ordering::Release);
                    let _ = opened.send(Ok(()));
                    let splitter = Splitter {
                        resume_after,
                        max_record,
                        ..Default::default()
                    };
                    read_loop(file, splitter, &thread_shared, &name);
                }
                Err(e) => {
                    // Past OPEN_WAIT no one waits for the answer: say it here.
                    if let Err(std::sync::mpsc::SendError(Err(e))) = opened.send(Err(e)) {
                        tracing::warn!(path = %name, error = %e, "The kernel log could not be opened; XIDs come from NVML events only.");
                    }
                }
            })?;
        match result.recv_timeout(OPEN_WAIT) {
            Ok(Err(e)) => return Err(e),
            Ok(Ok(())) => {}
            Err(_) => {
                tracing::warn!(path = %path, "The kernel log has not opened yet (a FIFO with no writer, or a hung mount?); it is read once it opens, and inferwatch_kernel_log_up is 0 until then.")
            }
        }
        Ok(KernelLog {
            shared,
            path: path.to_string(),
        })
    }

    /// Takes what was read since the last call.
    pub fn drain(&self) -> Drained {
        std::mem::take(&mut *self.shared.pending.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// False once reading failed for good.
    pub fn is_up(&self) -> bool {
        self.shared.up.load(Ordering::Acquire)
    }
}

/// Reads until a hard error. End of file (a file, or a FIFO with no writer)
/// is waited out: more may be written.
fn read_loop(mut source: impl Read, mut splitter: Splitter, shared: &Shared, name: &str) {
    // A /dev/kmsg record is at most 8 KiB (PRINTK_MESSAGE_MAX plus header).
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match read_step(&mut source, &mut buf, &mut splitter, shared) {
            Ok(true) => {}
            Ok(false) => std::thread::sleep(Duration::from_millis(200)),
            Err(e) => {
                shared.up.store(false, Ordering::Release);
                tracing::warn!(path = name, error = %e, "Reading the kernel log failed; XIDs from it are no longer counted.");
                return;
            }
        }
    }
}

/// One `read()`: `Ok(true)` after data or an overwrite, `Ok(false)` at end
/// of file, `Err` on a hard error.
pub(crate) fn read_step(
    source: &mut impl Read,
    buf: &mut [u8],
    splitter: &mut Splitter,
    shared_pending: &impl Sink,
) -> std::io::Result<bool> {
    match source.read(buf) {
        Ok(0) => Ok(false),
        Ok(n) => {
            let at = Instant::now();
            let mut records = Vec::new();
            splitter.feed(&buf[..n], |r| {
                records.push((r.seq, parse_xid(r.message).map(|f| (f, r.message.to_string()))));
            });
            let oversized = std::mem::take(&mut splitter.oversized);
            shared_pending.add(|p| {
                p.oversized += oversized;
                for (seq, found) in records {
                    p.records += 1;
                    p.read_seq = Some(seq);
                    if let Some((found, message)) = found {
                        p.xids.push(KernelXid {
                            seq,
                            found,
                            at,
                            message,
                        });
                    }
                }
            });
            Ok(true)
        }
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::PIPE.raw_os_error()) => {
            shared_pending.add(|p| p.overwritten += 1);
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Ok(true),
        Err(e) => Err(e),
    }
}

/// Where read records go (the shared state, or a test's collector).
pub(crate) trait Sink {
    fn add(&self, f: impl FnOnce(&mut Drained));
}

impl Sink for Shared {
    fn add(&self, f: impl FnOnce(&mut Drained)) {
        f(&mut self.pending.lock().unwrap_or_else(|e| e.into_inner()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const XID79: &str = "3,1042,5123456789,-;NVRM: Xid (PCI:0000:3b:00): 79, pid='<unknown>', name=<unknown>, GPU has fallen off the bus.\n";

    #[test]
    fn records_xids_and_sxids_are_parsed_as_the_kernel_writes_them() {
        let r = parse_record(XID79.trim_end()).unwrap();
        assert_eq!((r.seq, r.usec), (1042, 5123456789));
        assert_eq!(
            parse_xid(r.message),
            Some(Found::Xid {
                pci: PciAddr::parse("0000:3b:00").unwrap(),
                xid: 79
            })
        );
        // Older drivers leave out "PCI:"; GSP errors carry more text.
        assert_eq!(
            parse_xid("NVRM: Xid (0000:65:00): 119, pid='N/A', Timeout waiting for RPC from GSP"),
            Some(Found::Xid {
                pci: PciAddr::parse("0000:65:00").unwrap(),
                xid: 119
            })
        );
        assert_eq!(
            parse_xid(
                "nvidia-nvswitch3: SXid (PCI:0000:05:00.0): 12028, Non-fatal, Link 32 egress non-posted PRIV error"
            ),
            Some(Found::SXid {
                pci: PciAddr::parse("0000:05:00").unwrap(),
                sxid: 12028
            })
        );
        assert_eq!(
            parse_xid("NVRM: loading NVIDIA UNIX x86_64 Kernel Module  580.159.04"),
            None
        );
        assert_eq!(parse_xid("NVRM: Xid (PCI:garbage): 79"), None);
        assert_eq!(parse_record("not a record"), None);
    }

    #[test]
    fn continuation_lines_partial_reads_and_the_resume_point() {
        let mut s = Splitter {
            resume_after: Some(10),
            ..Default::default()
        };
        let mut seen = Vec::new();
        let text =
            "6,10,1,-;old record\n SUBSYSTEM=pci\n DEVICE=+pci:0000:3b:00.0\n6,11,2,-;new record\n6,12,3,c;split";
        s.feed(text.as_bytes(), |r| seen.push((r.seq, r.message.to_string())));
        assert_eq!(
            seen,
            [(11, "new record".to_string())],
            "10 was counted before; continuations skipped"
        );
        s.feed(b" record\n", |r| seen.push((r.seq, r.message.to_string())));
        assert_eq!(seen.last().unwrap(), &(12, "split record".to_string()));
    }

    #[test]
    fn a_stored_position_is_used_only_on_its_own_boot() {
        let stored = Some(("boot-a".to_string(), 500));
        assert_eq!(resume_after(stored.clone(), "boot-a"), Some(500));
        assert_eq!(
            resume_after(stored, "boot-b"),
            None,
            "a new boot replays the buffer once"
        );
        assert_eq!(resume_after(None, "boot-a"), None);
    }

    #[test]
    fn a_record_longer_than_the_kernel_writes_is_skipped_without_being_kept() {
        let mut sp = Splitter::default();
        let mut seen = Vec::new();
        let long = vec![b'x'; 1024 * 1024];
        sp.feed(b"6,1,0,-;before\n6,2,0,-;", |r| seen.push(r.seq));
        for chunk in long.chunks(8192) {
            sp.feed(chunk, |r| seen.push(r.seq));
            assert!(sp.partial.len() <= MAX_RECORD + 8192, "{} bytes kept", sp.partial.len());
        }
        sp.feed(b"\n6,3,0,-;after\n", |r| seen.push(r.seq));
        assert_eq!(seen, [1, 3]);
        assert_eq!(sp.oversized, 1);
    }

    #[test]
    fn the_record_limit_is_the_configured_one() {
        let record = format!("6,1,0,-;{}\n", "y".repeat(10 * 1024));
        let count = |max_record: usize| {
            let mut sp = Splitter {
                max_record,
                ..Default::default()
            };
            let mut seen = 0;
            for chunk in record.as_bytes().chunks(4096) {
                sp.feed(chunk, |_| seen += 1);
            }
            (seen, sp.oversized)
        };
        assert_eq!(count(MAX_RECORD), (1, 0), "10 KiB is within the default");
        assert_eq!(count(8192), (0, 1), "and past 8 KiB");
    }

    /// A stand-in for `/dev/kmsg`'s read(): one record per call, and EPIPE
    /// where the ring buffer overwrote records, as the kernel does.
    struct Kmsg(std::collections::VecDeque<Result<String, i32>>);

    impl Read for Kmsg {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            match self.0.pop_front() {
                None => Ok(0),
                Some(Err(errno)) => Err(std::io::Error::from_raw_os_error(errno)),
                Some(Ok(rec)) => {
                    buf[..rec.len()].copy_from_slice(rec.as_bytes());
                    Ok(rec.len())
                }
            }
        }
    }

    #[tokio::test]
    async fn an_overwrite_is_counted_and_reading_goes_on() {
        let mut k = Kmsg(
            [
                Ok("6,1,1,-;hello\n".to_string()),
                Err(rustix::io::Errno::PIPE.raw_os_error()),
                Ok(XID79.to_string()),
            ]
            .into_iter()
            .collect(),
        );
        let shared = Shared::default();
        let mut splitter = Splitter::default();
        let mut buf = vec![0u8; 8192];
        while read_step(&mut k, &mut buf, &mut splitter, &shared).unwrap() {}
        let d = std::mem::take(&mut *shared.pending.lock().unwrap());
        assert_eq!((d.records, d.overwritten, d.read_seq), (2, 1, Some(1042)));
        assert_eq!(d.xids.len(), 1);
        assert!(matches!(d.xids[0].found, Found::Xid { xid: 79, .. }));
        // A hard error ends the reader.
        let mut bad = Kmsg([Err(13)].into_iter().collect());
        assert!(read_step(&mut bad, &mut buf, &mut splitter, &shared).is_err());
    }
}
