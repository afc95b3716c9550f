//! The Prometheus registry, the daemon's own metrics, and the rendered-page
//! cache that keeps scrapes cheap.
//!
//! Collectors write into this registry; `/metrics` only reads it. The
//! rendered text is cached and rebuilt when a collector has finished a round
//! since the last render, or when the page is older than `MAX_PAGE_AGE`
//! (so process metrics stay fresh). A scrape therefore never touches NVML,
//! Redis or a health target, and most scrapes are a copy of cached bytes.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use prometheus::proto::{MetricFamily, MetricType};
use prometheus::{Encoder, GaugeVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

/// What `inferwatch --version` prints: the version and, as Prometheus
/// tools do, the revision, branch, build date and compiler.
pub const VERSION_TEXT: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (branch: ",
    env!("INFERWATCH_BRANCH"),
    ", revision: ",
    env!("INFERWATCH_REVISION"),
    ")\n  build date:       ",
    env!("INFERWATCH_BUILD_DATE"),
    "\n  rustc version:    ",
    env!("INFERWATCH_RUSTC_VERSION"),
);

/// Content type of the Prometheus text format 0.0.4.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Content type of OpenMetrics 1.0.0.
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A rendered page is reused for at most this long.
const MAX_PAGE_AGE: Duration = Duration::from_secs(1);

/// Which exposition format a scrape asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    OpenMetrics,
}

impl Format {
    /// Picks OpenMetrics when the `Accept` header lists it with a non-zero q.
    pub fn negotiate(accept: Option<&str>) -> Format {
        let Some(accept) = accept else { return Format::Text };
        for part in accept.split(',') {
            let mut params = part.split(';').map(str::trim);
            if params.next() != Some("application/openmetrics-text") {
                continue;
            }
            let q_zero = params
                .filter_map(|p| p.strip_prefix("q="))
                .any(|q| q.parse::<f64>().map(|q| q <= 0.0).unwrap_or(false));
            if !q_zero {
                return Format::OpenMetrics;
            }
        }
        Format::Text
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => TEXT_CONTENT_TYPE,
            Format::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
        }
    }
}

/// One rendered page of one format, plain and gzip-compressed.
struct Page {
    rendered_at: Instant,
    generation: u64,
    body: Bytes,
    gzip: Bytes,
}

/// A rendered page: the bytes, and the same bytes gzip-compressed (made
/// once, when the page was rendered; a scrape never compresses).
#[derive(Clone)]
pub struct Rendered {
    pub plain: Bytes,
    pub gzip: Bytes,
}

/// Level 1 (fastest): the page is text of a few dozen KB that compresses
/// about 10x even so, and it is compressed at every render.
const GZIP_LEVEL: u32 = 1;

/// `body`, gzip-compressed.
pub fn gzip(body: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc =
        flate2::write::GzEncoder::new(Vec::with_capacity(body.len() / 6), flate2::Compression::new(GZIP_LEVEL));
    enc.write_all(body).expect("writing to memory");
    enc.finish().expect("writing to memory")
}

/// The registry, `inferwatch_build_info`, the process metrics and the
/// rendered-page cache. Every other family is registered by the module that
/// writes it.
pub struct Metrics {
    registry: Registry,
    generation: AtomicU64,
    /// Cached pages, indexed by [`Format`]; each is rendered only when asked for.
    pages: Mutex<[Option<Page>; 2]>,
}

/// A metric type built from a name, a help text and label names. Names and
/// labels are fixed in the code, so a bad one is a bug: [`family`] panics
/// at startup, in this one place.
pub trait Family: Sized {
    fn build(name: &str, help: &str, labels: &[&str]) -> prometheus::Result<Self>;
}

macro_rules! vec_family {
    ($($t:ty),*) => {$(
        impl Family for $t {
            fn build(name: &str, help: &str, labels: &[&str]) -> prometheus::Result<Self> {
                <$t>::new(Opts::new(name, help), labels)
            }
        }
    )*};
}
macro_rules! scalar_family {
    ($($t:ty),*) => {$(
        impl Family for $t {
            fn build(name: &str, help: &str, labels: &[&str]) -> prometheus::Result<Self> {
                debug_assert!(labels.is_empty(), "{name} is a scalar metric");
                <$t>::new(name, help)
            }
        }
    )*};
}
vec_family!(GaugeVec, prometheus::IntGaugeVec, IntCounterVec, prometheus::CounterVec);
scalar_family!(IntGauge, IntCounter, prometheus::Gauge);

/// Builds a metric family (register it with [`Metrics::add`]).
pub fn family<F: Family>(name: &str, help: &str, labels: &[&str]) -> F {
    F::build(name, help, labels).expect("metric names and labels are fixed in the code")
}

/// Builds a histogram family with `buckets`.
pub fn histogram(name: &str, help: &str, labels: &[&str], buckets: Vec<f64>) -> prometheus::HistogramVec {
    prometheus::HistogramVec::new(prometheus::HistogramOpts::new(name, help).buckets(buckets), labels)
        .expect("metric names, labels and buckets are fixed in the code")
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let build_info = family::<GaugeVec>(
            "inferwatch_build_info",
            "Always 1; labelled with the daemon's version, git revision and branch, build date and rustc version (as inferwatch --version prints them).",
            &["version", "revision", "branch", "build_date", "rustc_version"],
        );
        build_info
            .with_label_values(&[
                env!("CARGO_PKG_VERSION"),
                env!("INFERWATCH_REVISION"),
                env!("INFERWATCH_BRANCH"),
                env!("INFERWATCH_BUILD_DATE"),
                env!("INFERWATCH_RUSTC_VERSION"),
            ])
            .set(1.0);

        registry
            .register(Box::new(build_info))
            .expect("metric names are unique");
        registry
            .register(Box::new(crate::bounded::HITS.clone()))
            .expect("metric names are unique");
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))
            .expect("process collector registers once");

        Metrics {
            registry,
            generation: AtomicU64::new(0),
            pages: Mutex::new([None, None]),
        }
    }

    /// Registers another collector's metrics (e.g. the GPU families).
    pub fn register(&self, c: Box<dyn prometheus::core::Collector>) -> Result<(), prometheus::Error> {
        self.registry.register(c)
    }

    /// Registers a clone of a metric the caller keeps writing to. Names are
    /// fixed in the code, so a clash is a bug and panics at startup.
    /// The registry itself, for a family registered later than start-up
    /// (the in-flight families of the first job framework a reload adds).
    pub fn registry(&self) -> Registry {
        self.registry.clone()
    }

    pub fn add<C: prometheus::core::Collector + Clone + 'static>(&self, c: &C) {
        self.registry
            .register(Box::new(c.clone()))
            .expect("metric names are unique");
    }

    /// Marks the cached page stale; called after each collector round.
    pub fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Returns the page in `format`, re-rendering (and compressing) only
    /// when it is stale.
    pub fn render(&self, format: Format) -> Bytes {
        self.render_both(format).plain
    }

    /// The page in `format`, plain and gzip, re-rendered only when stale.
    pub fn render_both(&self, format: Format) -> Rendered {
        let generation = self.generation.load(Ordering::Acquire);
        let mut pages = self.pages.lock().unwrap_or_else(|e| e.into_inner());
        let slot = &mut pages[format as usize];
        let fresh = slot
            .as_ref()
            .is_some_and(|p| p.generation == generation && p.rendered_at.elapsed() < MAX_PAGE_AGE);
        if !fresh {
            let families = self.registry.gather();
            let body = match format {
                Format::Text => {
                    let mut text = Vec::with_capacity(16 * 1024);
                    if let Err(e) = TextEncoder::new().encode(&families, &mut text) {
                        tracing::error!(error = %e, "Failed to encode metrics.");
                    }
                    text
                }
                Format::OpenMetrics => encode_openmetrics(&families),
            };
            let compressed = gzip(&body);
            *slot = Some(Page {
                rendered_at: Instant::now(),
                generation,
                body: Bytes::from(body),
                gzip: Bytes::from(compressed),
            });
        }
        let page = slot.as_ref().expect("rendered above");
        Rendered {
            plain: page.body.clone(),
            gzip: page.gzip.clone(),
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Encodes families as OpenMetrics 1.0.0 text.
///
/// Counters are declared without their `_total` suffix, as the format asks,
/// and the page ends with `# EOF`.
pub fn encode_openmetrics(families: &[MetricFamily]) -> Vec<u8> {
    let mut out = String::with_capacity(16 * 1024);
    for mf in families {
        let name = mf.name();
        let (family, kind) = match mf.get_field_type() {
            MetricType::COUNTER => (name.strip_suffix("_total").unwrap_or(name), "counter"),
            MetricType::GAUGE => (name, "gauge"),
            MetricType::HISTOGRAM => (name, "histogram"),
            MetricType::SUMMARY => (name, "summary"),
            MetricType::UNTYPED => (name, "unknown"),
        };
        let _ = writeln!(out, "# TYPE {family} {kind}");
        if !mf.help().is_empty() {
            let _ = writeln!(out, "# HELP {family} {}", escape_help(mf.help()));
        }
        for m in mf.get_metric() {
            let labels: Vec<(String, String)> = m
                .get_label()
                .iter()
                .map(|l| (l.name().to_string(), l.value().to_string()))
                .collect();
            match mf.get_field_type() {
                MetricType::COUNTER => sample(
                    &mut out,
                    &format!("{family}_total"),
                    &labels,
                    None,
                    m.get_counter().get_value(),
                ),
                MetricType::GAUGE => sample(&mut out, name, &labels, None, m.get_gauge().get_value()),
                #[allow(deprecated)] // the crate never emits untyped; kept for completeness
                MetricType::UNTYPED => sample(&mut out, name, &labels, None, m.get_untyped().get_value()),
                MetricType::HISTOGRAM => histogram_samples(&mut out, name, &labels, m.get_histogram()),
                MetricType::SUMMARY => summary_samples(&mut out, name, &labels, m.get_summary()),
            }
        }
    }
    out.push_str("# EOF\n");
    out.into_bytes()
}

/// A histogram's buckets (with `+Inf`), `_sum` and `_count`.
fn histogram_samples(out: &mut String, name: &str, labels: &[(String, String)], h: &prometheus::proto::Histogram) {
    let bucket = format!("{name}_bucket");
    let mut saw_inf = false;
    for b in h.get_bucket() {
        saw_inf |= b.upper_bound().is_infinite();
        let le = format_float(b.upper_bound());
        sample(out, &bucket, labels, Some(("le", &le)), b.cumulative_count() as f64);
    }
    if !saw_inf {
        sample(out, &bucket, labels, Some(("le", "+Inf")), h.get_sample_count() as f64);
    }
    sample(out, &format!("{name}_sum"), labels, None, h.get_sample_sum());
    sample(out, &format!("{name}_count"), labels, None, h.get_sample_count() as f64);
}

/// A summary's quantiles, `_sum` and `_count`.
fn summary_samples(out: &mut String, name: &str, labels: &[(String, String)], s: &prometheus::proto::Summary) {
    for q in s.get_quantile() {
        let qs = format_float(q.quantile());
        sample(out, name, labels, Some(("quantile", &qs)), q.value());
    }
    sample(out, &format!("{name}_sum"), labels, None, s.sample_sum());
    sample(out, &format!("{name}_count"), labels, None, s.sample_count() as f64);
}

fn sample(out: &mut String, name: &str, labels: &[(String, String)], extra: Option<(&str, &str)>, value: f64) {
    out.push_str(name);
    if !labels.is_empty() || extra.is_some() {
        out.push('{');
        let mut first = true;
        for (k, v) in labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).chain(extra) {
            if !first {
                out.push(',');
            }
            first = false;
            let _ = write!(out, "{k}=\"{}\"", escape_label(v));
        }
        out.push('}');
    }
    let _ = writeln!(out, " {}", format_float(value));
}

fn format_float(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation() {
        assert_eq!(Format::negotiate(None), Format::Text);
        assert_eq!(Format::negotiate(Some("text/plain")), Format::Text);
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text;version=1.0.0,text/plain;q=0.5")),
            Format::OpenMetrics
        );
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text; q=0")),
            Format::Text
        );
    }

    #[test]
    fn openmetrics_counter_suffix_and_eof() {
        let m = Metrics::new();
        let c: IntCounter = family("demo_write_errors_total", "Demo.", &[]);
        m.add(&c);
        c.inc();
        let page = String::from_utf8(m.render(Format::OpenMetrics).to_vec()).unwrap();
        assert!(page.contains("# TYPE demo_write_errors counter\n"), "{page}");
        assert!(page.contains("\ndemo_write_errors_total 1\n"), "{page}");
        assert!(page.ends_with("# EOF\n"));
    }

    #[test]
    fn page_is_cached_until_invalidated() {
        let m = Metrics::new();
        let c: IntCounter = family("demo_write_errors_total", "Demo.", &[]);
        m.add(&c);
        let a = m.render(Format::Text);
        c.inc();
        let b = m.render(Format::Text);
        assert_eq!(a, b, "a page within its age and generation is reused");
        m.invalidate();
        let c = m.render(Format::Text);
        assert!(String::from_utf8_lossy(&c).contains("demo_write_errors_total 1"));
    }

    #[test]
    fn the_gzip_page_is_the_plain_page_compressed_once_per_render() {
        use std::io::Read;
        let m = Metrics::new();
        let c: IntCounter = family("demo_write_errors_total", "Demo.", &[]);
        m.add(&c);
        let a = m.render_both(Format::Text);
        let mut text = Vec::new();
        flate2::read::GzDecoder::new(&a.gzip[..])
            .read_to_end(&mut text)
            .unwrap();
        assert_eq!(text, a.plain);
        assert!(a.gzip.len() < a.plain.len());
        // Within the page's age and generation, the same compressed bytes.
        let b = m.render_both(Format::Text);
        assert_eq!(a.gzip.as_ptr(), b.gzip.as_ptr(), "not compressed again");
    }
}
