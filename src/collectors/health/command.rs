//! Running a restart command: directly (no shell), in its own process
//! group, killed with everything it started at its timeout; the tail of its
//! stderr kept for the log, never its argv.

use std::sync::Arc;

use crate::config::RestartConfig;

/// Why a restart command failed: `summary` is safe to show anywhere (it
/// never holds the argv, which can carry secrets); `stderr` is the tail of
/// the command's standard error, for the log only.
#[derive(Debug)]
pub struct RestartFailure {
    pub summary: String,
    pub stderr: String,
}

/// Lines of a failed command's stderr kept for the log.
const STDERR_LINES: usize = 20;

/// Runs a restart command directly (no shell) in its own process group, so
/// that its children die with it when it is killed at `restart.timeout` or
/// when the daemon stops mid-restart. Its stderr is read into a bounded
/// tail for the log; stdout goes to the daemon's own.
pub async fn run_restart(r: &RestartConfig) -> Result<(), RestartFailure> {
    let fail = |summary: String| RestartFailure {
        summary,
        stderr: String::new(),
    };
    let mut child = tokio::process::Command::new(&r.command[0])
        .args(&r.command[1..])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| fail(format!("the restart command could not be started ({})", e.kind())))?;
    let group = child.id().map(|id| GroupKiller(id as i32));
    // The tail is read until EOF by its own task: a server the command
    // starts may keep the pipe open, and must never block on it.
    let tail = Arc::new(std::sync::Mutex::new(std::collections::VecDeque::new()));
    let reader = child.stderr.take().map(|err| {
        let tail = tail.clone();
        tokio::spawn(async move {
            use tokio::io::AsyncBufReadExt;
            let mut lines = tokio::io::BufReader::new(err).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let mut t = tail.lock().unwrap_or_else(|e| e.into_inner());
                if t.len() == STDERR_LINES {
                    t.pop_front();
                }
                t.push_back(line);
            }
        })
    });
    let waited = tokio::time::timeout(r.timeout, child.wait()).await;
    let summary = match waited {
        Ok(Ok(status)) if status.success() => {
            if let Some(g) = group {
                g.disarm();
            }
            return Ok(());
        }
        Ok(Ok(status)) => format!("the restart command failed ({status})"),
        Ok(Err(e)) => format!("waiting for the restart command failed ({})", e.kind()),
        Err(_) => format!("the restart command was killed after {:?}", r.timeout),
    };
    // The group dies here (the command and every child it left).
    drop(group);
    let _ = child.wait().await;
    if let Some(reader) = reader {
        // With the whole group dead, the pipe reaches EOF at once.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), reader).await;
    }
    let stderr = tail
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .cloned()
        .collect::<Vec<_>>()
        .join("\n");
    Err(RestartFailure { summary, stderr })
}

/// Kills a restart command's whole process group when dropped, unless the
/// command succeeded (a server it started must live on).
struct GroupKiller(i32);

impl GroupKiller {
    fn disarm(self) {
        std::mem::forget(self);
    }
}

impl Drop for GroupKiller {
    fn drop(&mut self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.0) {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
    }
}
