//! The dry-run file scan behind `/api/system/cleanup/preview`: which files
//! under a retention path are older than its `days`. Reads only; the API
//! caches its answer for `storage.poll_interval`.

use std::path::Path;
use std::time::{Duration, SystemTime};

use serde::Serialize;

/// Files under one retention path that a cleanup would delete.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct FilePreview {
    pub path: String,
    pub days: u32,
    pub files: u64,
    pub bytes: u64,
    pub oldest: Option<String>,
    /// Set when the scan could not read something (e.g. the path is missing).
    pub error: Option<String>,
}

/// Most entries one preview scan visits.
const MAX_SCAN: u64 = 1_000_000;

/// Walks `root` (not following symlinks) and sums the regular files whose
/// modification time is older than `days`. Reads only.
pub fn preview_files(root: &Path, days: u32, now: SystemTime) -> FilePreview {
    let cutoff = now - Duration::from_secs(u64::from(days) * 86_400);
    let mut out = FilePreview {
        path: root.display().to_string(),
        days,
        files: 0,
        bytes: 0,
        oldest: None,
        error: None,
    };
    let mut oldest: Option<SystemTime> = None;
    let mut stack = vec![root.to_path_buf()];
    let mut visited = 0u64;
    while let Some(dir) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) => {
                out.error.get_or_insert(format!("{}: {e}", dir.display()));
                continue;
            }
        };
        for entry in entries.flatten() {
            visited += 1;
            if visited > MAX_SCAN {
                out.error = Some(format!("stopped after {MAX_SCAN} entries"));
                return finish(out, oldest);
            }
            let Ok(meta) = entry.path().symlink_metadata() else {
                continue;
            };
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() {
                let Ok(modified) = meta.modified() else { continue };
                if modified < cutoff {
                    out.files += 1;
                    out.bytes += meta.len();
                    if oldest.map_or(true, |o| modified < o) {
                        oldest = Some(modified);
                    }
                }
            }
        }
    }
    finish(out, oldest)
}

fn finish(mut out: FilePreview, oldest: Option<SystemTime>) -> FilePreview {
    out.oldest = oldest.map(|t| crate::history::format_time(&chrono::DateTime::<chrono::Utc>::from(t)));
    out
}
