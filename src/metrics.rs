//! Process-wide counters. Labels stay low-cardinality: no trace ids, paths or users.

use std::sync::atomic::{AtomicU64, Ordering};

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
        }
    }
}
