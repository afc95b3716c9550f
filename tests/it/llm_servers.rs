//! The real LLM inference servers of the harness (common/llm.rs):
//! llama.cpp's `llama-server` and vLLM on CPU, each on a tiny model written
//! here. Each serves completions, its `/metrics` page carries the metric
//! names the daemon maps for its server kind, its generated-token counter
//! grows by exactly the tokens the completions report, and the restart
//! command really restarts it, the whole process group with it.

use std::time::Duration;

use crate::common::{complete, eventually, is_alive, LlamaServer, LlmServer, Vllm, LLM_MODEL};

/// The llama.cpp series the daemon reads: throughput, queue and progress.
const LLAMACPP: &[&str] = &[
    "llamacpp:tokens_predicted_total",
    "llamacpp:prompt_tokens_total",
    "llamacpp:requests_processing",
    "llamacpp:requests_deferred",
    "llamacpp:n_decode_total",
];

/// The vLLM series the daemon reads: the latency histograms (time to first
/// token, between tokens, end to end, queued), the queue, the KV cache,
/// preemptions and the token and request counters.
const VLLM: &[&str] = &[
    "vllm:time_to_first_token_seconds_bucket",
    "vllm:inter_token_latency_seconds_bucket",
    "vllm:e2e_request_latency_seconds_bucket",
    "vllm:request_queue_time_seconds_bucket",
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:kv_cache_usage_perc",
    "vllm:num_preemptions_total",
    "vllm:prompt_tokens_total",
    "vllm:generation_tokens_total",
    "vllm:request_success_total",
];

/// The sum of every sample of `name`, whatever its labels; `None` when the
/// page has no sample of it.
fn total(page: &str, name: &str) -> Option<f64> {
    let values: Vec<f64> = page
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let end = l.find(['{', ' '])?;
            (&l[..end] == name).then(|| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        })
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

fn assert_names(page: &str, names: &[&str]) {
    let missing: Vec<&&str> = names.iter().filter(|n| total(page, n).is_none()).collect();
    assert!(missing.is_empty(), "no samples of {missing:?} in:\n{page}");
}

/// Completions through the OpenAI API, counted exactly by `counter`.
async fn counts_completions(server: &LlmServer, counter: &str) {
    let before = total(&server.metrics().await, counter).unwrap();
    // 6 at once, more than the 4 slots or sequences either server runs.
    let tokens = complete(&server.base_url(), LLM_MODEL, 16, 6).await;
    assert_eq!(
        tokens,
        6 * 16,
        "end of sequence is ignored: every request gets max_tokens"
    );
    let expected = before + tokens as f64;
    let seen = eventually(
        "the generated-token counter to count the completions",
        Duration::from_secs(10),
        || async {
            let now = total(&server.metrics().await, counter).unwrap();
            (now >= expected).then_some(now)
        },
    )
    .await;
    assert_eq!(
        seen, expected,
        "{counter} grows by exactly the tokens the completions report"
    );
}

/// The restart command stops the server with its process group and starts
/// a new one on the same port and model, whose counters start from zero.
async fn restarts(server: &LlmServer, counter: &str) {
    let old = server.pid();
    server.restart().await;
    assert_eq!(server.restarts(), 1);
    assert_ne!(server.pid(), old);
    assert!(!is_alive(old), "the old server is gone");
    assert_eq!(total(&server.metrics().await, counter), Some(0.0));
    assert_eq!(complete(&server.base_url(), LLM_MODEL, 8, 1).await, 8);
}

#[tokio::test]
async fn llama_server_serves_completions_and_its_metrics_page_counts_them() {
    let server = LlamaServer::start().await;
    assert!(server.model.is_file(), "the tiny GGUF is in the server's temp dir");
    assert_names(&server.metrics().await, LLAMACPP);
    counts_completions(&server, "llamacpp:tokens_predicted_total").await;
    let page = server.metrics().await;
    assert_names(&page, LLAMACPP);
    assert!(total(&page, "llamacpp:n_decode_total").unwrap() > 0.0);
    // A hung server (SIGSTOP) is restarted all the same.
    server.signal("-STOP");
    restarts(&server, "llamacpp:tokens_predicted_total").await;
}

#[tokio::test]
async fn vllm_serves_completions_and_its_metrics_page_counts_them() {
    let server = Vllm::start().await;
    assert!(
        server.model.join("config.json").is_file(),
        "the tiny model is in the server's temp dir"
    );
    let engine = server.engine_core_pid().expect("vLLM's EngineCore process");
    counts_completions(&server, "vllm:generation_tokens_total").await;
    let page = server.metrics().await;
    assert_names(&page, VLLM);
    assert_eq!(total(&page, "vllm:request_success_total"), Some(6.0));

    restarts(&server, "vllm:generation_tokens_total").await;
    assert!(!is_alive(engine), "the old EngineCore went with its process group");
    let new_engine = server.engine_core_pid().expect("the new EngineCore");
    assert_ne!(new_engine, engine);
}
