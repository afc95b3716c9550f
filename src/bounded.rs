//! Reading what a monitored thing sends, bounded in bytes: an
//! HTTP body, a Docker Engine answer, a file under `/proc` or a cgroup.
//! Each is read incrementally and stops at its limit; nothing is buffered
//! past it. A read that hits a limit is counted in
//! `inferwatch_read_limit_hits_total{source}`. A leaf: it imports nothing
//! from the crate (the registry registers [`HITS`]).

use std::io::Read;
use std::sync::LazyLock;

use prometheus::{IntCounterVec, Opts};

/// `inferwatch_read_limit_hits_total{source}`, registered by the registry.
pub static HITS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    IntCounterVec::new(
        Opts::new(
            "inferwatch_read_limit_hits_total",
            "Reads from a monitored thing stopped at their byte or time limit (source: health_body, metrics_url, docker, kernel_log, proc, cgroup).",
        ),
        &["source"],
    )
    .expect("a valid family")
});

/// Where a bounded read came from: its `source` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// An HTTP check's body (`expect_body`).
    HealthBody,
    /// A server's `/metrics` page, read for stall detection.
    MetricsUrl,
    /// A Docker Engine API answer.
    Docker,
    /// A kernel-log record.
    KernelLog,
    /// A file under `/proc/<pid>/`.
    Proc,
    /// A cgroup file.
    Cgroup,
}

impl Source {
    pub fn label(self) -> &'static str {
        match self {
            Source::HealthBody => "health_body",
            Source::MetricsUrl => "metrics_url",
            Source::Docker => "docker",
            Source::KernelLog => "kernel_log",
            Source::Proc => "proc",
            Source::Cgroup => "cgroup",
        }
    }

    /// Counts one read that hit its limit.
    pub fn hit(self) {
        HITS.with_label_values(&[self.label()]).inc();
    }
}

/// Why a bounded read stopped short.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error("the body is larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("reading the body failed: {0}")]
    Read(String),
}

impl ReadError {
    /// The reason a check or a log line names: `too_large`, `read_error`.
    pub fn reason(&self) -> &'static str {
        match self {
            ReadError::TooLarge { .. } => "too_large",
            ReadError::Read(_) => "read_error",
        }
    }
}

/// Reads `resp`'s body, at most `max` bytes; a `Content-Length` over
/// `max` fails before any byte is read. The caller bounds the time (a
/// check runs under its service's `timeout`).
pub async fn read_body(resp: reqwest::Response, max: usize, source: Source) -> Result<Vec<u8>, ReadError> {
    let result = read_chunks(resp, max).await;
    if matches!(result, Err(ReadError::TooLarge { .. })) {
        source.hit();
    }
    result
}

/// The body's chunks as they come, joined once whole: a body cut at the
/// limit never holds more than the limit, nor a copy of it.
async fn read_chunks(mut resp: reqwest::Response, max: usize) -> Result<Vec<u8>, ReadError> {
    if resp.content_length().is_some_and(|n| n > max as u64) {
        return Err(ReadError::TooLarge { limit: max });
    }
    let (mut chunks, mut len) = (Vec::new(), 0usize);
    while let Some(chunk) = resp.chunk().await.map_err(|e| ReadError::Read(e.to_string()))? {
        len += chunk.len();
        if len > max {
            return Err(ReadError::TooLarge { limit: max });
        }
        chunks.push(chunk);
    }
    Ok(chunks.concat())
}

/// The first `max` bytes of the file at `path`, and whether there was more
/// (counted as a hit of `source`). Never reads past `max + 1` bytes.
pub fn read_file(path: &std::path::Path, max: usize, source: Source) -> std::io::Result<(Vec<u8>, bool)> {
    let mut out = Vec::new();
    std::fs::File::open(path)?.take(max as u64 + 1).read_to_end(&mut out)?;
    let cut = out.len() > max;
    if cut {
        out.truncate(max);
        source.hit();
    }
    Ok((out, cut))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_read_up_to_its_limit_and_the_cut_counted() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cmdline");
        std::fs::write(&p, vec![b'a'; 100]).unwrap();
        let before = HITS.with_label_values(&["proc"]).get();
        assert_eq!(read_file(&p, 100, Source::Proc).unwrap(), (vec![b'a'; 100], false));
        let (head, cut) = read_file(&p, 10, Source::Proc).unwrap();
        assert_eq!((head.len(), cut), (10, true));
        assert_eq!(HITS.with_label_values(&["proc"]).get(), before + 1);
    }

    #[test]
    fn reasons_name_the_limit() {
        assert_eq!(ReadError::TooLarge { limit: 1 }.reason(), "too_large");
        assert_eq!(ReadError::Read("x".into()).reason(), "read_error");
    }
}
