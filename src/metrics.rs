//! Process-wide counters. Labels stay low-cardinality: no trace ids, paths or users.

use std::sync::atomic::{AtomicU64, Ordering};

/// Every counter here must also be listed in [`Metrics::render`] (`/metrics`).
#[derive(Debug, Default)]
pub struct Metrics {
    /// Requests that reached a route.
    pub requests: AtomicU64,
    /// Pending rows committed (D1).
    pub rows_started: AtomicU64,
    /// Final updates written (D2).
    pub rows_finished: AtomicU64,
    /// Requests forwarded without a pending row (`on_unavailable = "forward"`).
    pub unrecorded: AtomicU64,
    /// Requests answered 503 because no pending row could be written.
    pub rejected_unavailable: AtomicU64,
    /// Final updates that could not be written.
    pub finish_failed: AtomicU64,
    /// Payloads stored with a truncation indicator.
    pub truncated_payloads: AtomicU64,
    /// Attempts the proxy repeated (D3).
    pub retries: AtomicU64,
    /// Writer batches and the rows they carried.
    pub writer_batches: AtomicU64,
    pub writer_ops: AtomicU64,
    /// Records appended to the spool journal (pending rows and final updates).
    pub spooled: AtomicU64,
    /// Journal records applied to PostgreSQL after an outage.
    pub replayed: AtomicU64,
    /// Replayed pending rows found already stored (an insert that timed out but committed, or
    /// a replay repeated after a crash): skipped, never stored twice.
    pub replay_already_stored: AtomicU64,
    /// Records refused because the journal was full (`spool.max_bytes`).
    pub spool_full: AtomicU64,
    /// Records that could not be written to the journal (I/O error, spool stopped).
    pub spool_failed: AtomicU64,
    /// Journal segments whose torn tail (an interrupted write) was cut off at startup.
    pub spool_torn: AtomicU64,
    /// Journal records that could not be decoded during replay (skipped, logged).
    pub spool_undecodable: AtomicU64,
    /// Journal records PostgreSQL rejected on their own (invalid data): stored with the payload
    /// replaced by a note, or skipped if even that was rejected; logged.
    pub spool_rejected: AtomicU64,
    /// Gauges: what the journal holds now (maintained by `crate::spool`, which bounds the
    /// journal by them).
    pub spool_records: AtomicU64,
    pub spool_bytes: AtomicU64,
    /// Answers by route and status class.
    pub route_requests: RouteCounters,
    /// Attempt durations (as stored in `duration_ms`).
    pub attempt_duration: Histogram<AttemptSeconds>,
    /// Waits for the pending row's commit (D1).
    pub d1_insert: Histogram<InsertSeconds>,
    /// Operations per writer batch.
    pub writer_batch_ops: Histogram<BatchOps>,
}

/// A point-in-time copy of [`Metrics`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub requests: u64,
    pub rows_started: u64,
    pub rows_finished: u64,
    pub unrecorded: u64,
    pub rejected_unavailable: u64,
    pub finish_failed: u64,
    pub truncated_payloads: u64,
    pub retries: u64,
    pub writer_batches: u64,
    pub writer_ops: u64,
    pub spooled: u64,
    pub replayed: u64,
    pub spool_full: u64,
    pub replay_already_stored: u64,
}

impl Metrics {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Snapshot {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Snapshot {
            requests: g(&self.requests),
            rows_started: g(&self.rows_started),
            rows_finished: g(&self.rows_finished),
            unrecorded: g(&self.unrecorded),
            rejected_unavailable: g(&self.rejected_unavailable),
            finish_failed: g(&self.finish_failed),
            truncated_payloads: g(&self.truncated_payloads),
            retries: g(&self.retries),
            writer_batches: g(&self.writer_batches),
            writer_ops: g(&self.writer_ops),
            spooled: g(&self.spooled),
            replayed: g(&self.replayed),
            spool_full: g(&self.spool_full),
            replay_already_stored: g(&self.replay_already_stored),
        }
    }
}

/// Fixed histogram buckets: upper bounds in the unit values are observed in (nanoseconds for
/// durations, plain counts otherwise), and the factor that turns that unit into the exported one.
pub trait Buckets {
    /// Upper bounds, ascending; `+Inf` is implied.
    const BOUNDS: &'static [u64];
    /// Observed units per exported unit (1e9: nanoseconds → seconds). Dividing (not multiplying
    /// by 1e-9) gives the nearest float, so bounds print as `0.025`, not `0.025000000000000001`.
    const PER_UNIT: f64;
}

/// Attempt durations: 1 ms .. 60 s.
#[derive(Debug)]
pub struct AttemptSeconds;
impl Buckets for AttemptSeconds {
    const BOUNDS: &'static [u64] = &[
        1_000_000,
        5_000_000,
        10_000_000,
        25_000_000,
        50_000_000,
        100_000_000,
        250_000_000,
        500_000_000,
        1_000_000_000,
        2_500_000_000,
        5_000_000_000,
        10_000_000_000,
        30_000_000_000,
        60_000_000_000,
    ];
    const PER_UNIT: f64 = 1e9;
}

/// D1 insert waits: 0.25 ms .. 5 s (the insert timeout is usually a few seconds).
#[derive(Debug)]
pub struct InsertSeconds;
impl Buckets for InsertSeconds {
    const BOUNDS: &'static [u64] = &[
        250_000,
        500_000,
        1_000_000,
        2_500_000,
        5_000_000,
        10_000_000,
        25_000_000,
        50_000_000,
        100_000_000,
        250_000_000,
        500_000_000,
        1_000_000_000,
        2_500_000_000,
        5_000_000_000,
    ];
    const PER_UNIT: f64 = 1e9;
}

/// Writer batch sizes (operations per batch).
#[derive(Debug)]
pub struct BatchOps;
impl Buckets for BatchOps {
    const BOUNDS: &'static [u64] = &[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024];
    const PER_UNIT: f64 = 1.0;
}

/// A fixed-bucket histogram of relaxed atomics: an observation is one bucket scan and three
/// `fetch_add`s, no lock. Buckets are stored per bucket and made cumulative when rendered.
pub struct Histogram<B: Buckets> {
    /// One slot per bound, then the `+Inf` slot.
    counts: Box<[AtomicU64]>,
    /// Sum of observations, in the observed unit.
    sum: AtomicU64,
    count: AtomicU64,
    _buckets: std::marker::PhantomData<B>,
}

impl<B: Buckets> Default for Histogram<B> {
    fn default() -> Self {
        Histogram {
            counts: (0..=B::BOUNDS.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
            count: AtomicU64::new(0),
            _buckets: std::marker::PhantomData,
        }
    }
}

impl<B: Buckets> std::fmt::Debug for Histogram<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Histogram")
            .field("count", &self.count.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl<B: Buckets> Histogram<B> {
    /// Records one value in the observed unit.
    pub fn observe(&self, value: u64) {
        let slot = B::BOUNDS
            .iter()
            .position(|&b| value <= b)
            .unwrap_or(B::BOUNDS.len());
        if let Some(c) = self.counts.get(slot) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        self.sum.fetch_add(value, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Records a duration (for histograms observed in nanoseconds).
    pub fn observe_duration(&self, d: std::time::Duration) {
        self.observe(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    /// Observations recorded so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Appends the histogram in Prometheus text format. `_count` is the sum of the buckets read,
    /// so `+Inf` always equals it even while observations race the read.
    fn render(&self, out: &mut String, name: &str, help: &str) {
        use std::fmt::Write;
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0u64;
        for (i, c) in self.counts.iter().enumerate() {
            cumulative += c.load(Ordering::Relaxed);
            match B::BOUNDS.get(i) {
                Some(&b) => {
                    let le = b as f64 / B::PER_UNIT;
                    let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
                }
                None => {
                    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
                }
            }
        }
        let sum = self.sum.load(Ordering::Relaxed) as f64 / B::PER_UNIT;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

/// Status class of an answer to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// An upstream response, by its first digit (1..=5).
    Http(u16),
    /// A proxy-generated failure (no upstream response passed on).
    Error,
}

impl Class {
    const LABELS: [&'static str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "error"];

    pub fn of_status(status: u16) -> Class {
        Class::Http(status / 100)
    }

    fn slot(self) -> usize {
        match self {
            Class::Http(d @ 1..=5) => usize::from(d - 1),
            // Out-of-range statuses cannot come from hyper; count them as errors.
            _ => 5,
        }
    }
}

/// Answers per configured route and status class. The label set is fixed at startup from the
/// configured route names (bounded cardinality); counting is a name scan and a relaxed add.
#[derive(Debug, Default)]
pub struct RouteCounters {
    routes: std::sync::OnceLock<Box<[(String, ClassCounts)]>>,
}

/// One route's counts, indexed like [`Class::LABELS`].
type ClassCounts = [AtomicU64; 6];

impl RouteCounters {
    /// Sets the route names once; later calls (a second run sharing the metrics) are ignored.
    pub fn register<'a>(&self, names: impl IntoIterator<Item = &'a str>) {
        let _ = self.routes.set(
            names
                .into_iter()
                .map(|n| (n.to_owned(), Default::default()))
                .collect(),
        );
    }

    /// The slot of route `name`, if registered.
    pub fn slot(&self, name: &str) -> Option<usize> {
        self.routes.get()?.iter().position(|(n, _)| n == name)
    }

    /// Counts one answer on route `slot`.
    pub fn count(&self, slot: Option<usize>, class: Class) {
        if let Some((_, c)) = slot.and_then(|s| self.routes.get()?.get(s)) {
            c[class.slot()].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The count for `route` and class label (`2xx`, `error`, …), for tests.
    pub fn get(&self, route: &str, class: &str) -> u64 {
        let i = Class::LABELS.iter().position(|l| *l == class);
        self.routes
            .get()
            .and_then(|r| r.iter().find(|(n, _)| n == route))
            .zip(i)
            .map_or(0, |((_, c), i)| c[i].load(Ordering::Relaxed))
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        use std::fmt::Write;
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} counter");
        for (route, counts) in self.routes.get().into_iter().flatten() {
            let route = escape_label(route);
            for (label, c) in Class::LABELS.iter().zip(counts) {
                let v = c.load(Ordering::Relaxed);
                let _ = writeln!(out, "{name}{{route=\"{route}\",class=\"{label}\"}} {v}");
            }
        }
    }
}

/// A label value as the exposition format wants it: `\`, `"` and newline escaped.
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// One unlabelled sample with its HELP and TYPE lines.
fn scalar(out: &mut String, name: &str, kind: &str, value: &AtomicU64, help: &str) {
    use std::fmt::Write;
    let v = value.load(Ordering::Relaxed);
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
    );
}

/// Content type of [`Metrics::render`]'s output.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The counters: name (after `trace_proxy_`), field, help.
type Field = fn(&Metrics) -> &AtomicU64;
const COUNTERS: [(&str, Field, &str); 18] = [
    (
        "requests",
        |m| &m.requests,
        "Requests that reached a route.",
    ),
    (
        "rows_started",
        |m| &m.rows_started,
        "Pending rows committed (D1).",
    ),
    (
        "rows_finished",
        |m| &m.rows_finished,
        "Final updates written (D2).",
    ),
    (
        "unrecorded",
        |m| &m.unrecorded,
        "Requests forwarded without a pending row (on_unavailable = forward).",
    ),
    (
        "rejected_unavailable",
        |m| &m.rejected_unavailable,
        "Requests answered 503 because no pending row could be written.",
    ),
    (
        "finish_failed",
        |m| &m.finish_failed,
        "Final updates that could not be written.",
    ),
    (
        "truncated_payloads",
        |m| &m.truncated_payloads,
        "Payloads stored with a truncation indicator.",
    ),
    (
        "retries",
        |m| &m.retries,
        "Attempts the proxy repeated (D3).",
    ),
    (
        "writer_batches",
        |m| &m.writer_batches,
        "Batches the store writer wrote.",
    ),
    (
        "writer_ops",
        |m| &m.writer_ops,
        "Operations (inserts, updates) the store writer wrote.",
    ),
    (
        "spooled",
        |m| &m.spooled,
        "Records appended to the spool journal while PostgreSQL was unavailable.",
    ),
    (
        "replayed",
        |m| &m.replayed,
        "Spool journal records applied to PostgreSQL.",
    ),
    (
        "replay_already_stored",
        |m| &m.replay_already_stored,
        "Replayed pending rows found already stored (timed out but committed): skipped.",
    ),
    (
        "spool_full",
        |m| &m.spool_full,
        "Records refused because the spool journal was full.",
    ),
    (
        "spool_failed",
        |m| &m.spool_failed,
        "Records that could not be written to the spool journal.",
    ),
    (
        "spool_torn",
        |m| &m.spool_torn,
        "Journal segments whose torn tail was cut off at startup.",
    ),
    (
        "spool_undecodable",
        |m| &m.spool_undecodable,
        "Journal records skipped during replay because they could not be decoded.",
    ),
    (
        "spool_rejected",
        |m| &m.spool_rejected,
        "Journal records PostgreSQL rejected at replay (stored without their payload, or skipped).",
    ),
];

/// The gauges: name (after `trace_proxy_`), field, help.
const GAUGES: [(&str, Field, &str); 2] = [
    (
        "spool_records",
        |m| &m.spool_records,
        "Records in the spool journal waiting for replay.",
    ),
    (
        "spool_bytes",
        |m| &m.spool_bytes,
        "Bytes of the spool journal waiting for replay.",
    ),
];

impl Metrics {
    /// Everything, in the Prometheus text exposition format 0.0.4.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8192);
        for (name, c, help) in COUNTERS {
            let c = c(self);
            scalar(
                &mut out,
                &format!("trace_proxy_{name}_total"),
                "counter",
                c,
                help,
            );
        }
        for (name, g, help) in GAUGES {
            let g = g(self);
            scalar(&mut out, &format!("trace_proxy_{name}"), "gauge", g, help);
        }
        self.route_requests.render(
            &mut out,
            "trace_proxy_route_requests_total",
            "Answers to clients by route and status class (error: generated by the proxy).",
        );
        self.attempt_duration.render(
            &mut out,
            "trace_proxy_attempt_duration_seconds",
            "Attempt duration, from forwarding (or arrival) to the end of the exchange.",
        );
        self.d1_insert.render(
            &mut out,
            "trace_proxy_d1_insert_seconds",
            "Time spent waiting for the pending row's commit (D1) before forwarding.",
        );
        self.writer_batch_ops.render(
            &mut out,
            "trace_proxy_writer_batch_ops",
            "Operations per store writer batch.",
        );
        out
    }
}

#[cfg(test)]
mod exposition_tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_end_at_count() {
        let h = Histogram::<BatchOps>::default();
        for v in [1, 1, 3, 5000] {
            h.observe(v);
        }
        let mut out = String::new();
        h.render(&mut out, "b", "x");
        assert!(out.contains("b_bucket{le=\"1\"} 2\n"), "{out}");
        assert!(out.contains("b_bucket{le=\"2\"} 2\n"), "{out}");
        assert!(out.contains("b_bucket{le=\"4\"} 3\n"), "{out}");
        assert!(out.contains("b_bucket{le=\"1024\"} 3\n"), "{out}");
        assert!(
            out.contains("b_bucket{le=\"+Inf\"} 4\nb_sum 5005\nb_count 4\n"),
            "{out}"
        );
        let d = Histogram::<AttemptSeconds>::default();
        d.observe_duration(std::time::Duration::from_millis(3));
        let mut out = String::new();
        d.render(&mut out, "d", "x");
        assert!(out.contains("d_bucket{le=\"0.001\"} 0\n"), "{out}");
        assert!(out.contains("d_bucket{le=\"0.005\"} 1\n"), "{out}");
        assert!(out.contains("d_sum 0.003\n"), "{out}");
    }

    #[test]
    fn route_counters_only_count_registered_routes_and_escape_labels() {
        let m = Metrics::default();
        m.route_requests.register(["n8n", "a\"b"]);
        let slot = m.route_requests.slot("n8n");
        m.route_requests.count(slot, Class::of_status(204));
        m.route_requests.count(slot, Class::Error);
        m.route_requests
            .count(m.route_requests.slot("other"), Class::Error);
        assert_eq!(m.route_requests.get("n8n", "2xx"), 1);
        assert_eq!(m.route_requests.get("n8n", "error"), 1);
        let text = m.render();
        assert!(text.contains("trace_proxy_route_requests_total{route=\"n8n\",class=\"2xx\"} 1\n"));
        assert!(
            text.contains("{route=\"a\\\"b\",class=\"5xx\"} 0\n"),
            "{text}"
        );
        assert!(!text.contains("other"));
    }
}
