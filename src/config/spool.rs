//! `[spool]`: the durable journal used while PostgreSQL is unavailable (`crate::spool`). Raw
//! keys and their validation.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Where the journal lives unless `spool.dir` says otherwise.
pub const DEFAULT_SPOOL_DIR: &str = "/var/lib/trace-proxy/spool";

/// Smallest bound accepted: room for a few hundred typical records.
const MIN_MAX_BYTES: u64 = 1024 * 1024;

/// `[spool]` as written.
#[derive(Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct RawSpool {
    pub dir: String,
    pub max_bytes: u64,
    pub spool_full: String,
    pub replay_batch_records: usize,
}

impl Default for RawSpool {
    fn default() -> Self {
        Self {
            dir: DEFAULT_SPOOL_DIR.into(),
            max_bytes: 1024 * 1024 * 1024,
            spool_full: "reject".into(),
            replay_batch_records: 500,
        }
    }
}

/// What to do with a request when PostgreSQL is unavailable and the journal is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpoolFull {
    /// Answer 503 and forward nothing.
    Reject,
    /// Forward anyway; the request is counted and logged as unrecorded.
    Forward,
}

/// The journal, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolConfig {
    /// Where the journal lives; created if missing, locked by one process at a time.
    pub dir: PathBuf,
    /// Bound on the journal's total size on disk.
    pub max_bytes: u64,
    pub spool_full: SpoolFull,
    /// Records applied to PostgreSQL per replay transaction.
    pub replay_batch: usize,
}

impl SpoolConfig {
    /// The part of `max_bytes` pending rows may fill. The rest is kept for final updates, so
    /// every attempt whose pending row was journaled can journal its outcome too.
    pub fn pending_limit(&self) -> u64 {
        self.max_bytes - self.max_bytes / 8
    }

    /// Size at which the journal's file being appended to is closed and a new one started, so
    /// replayed records can be trimmed a file at a time.
    pub fn segment_bytes(&self) -> u64 {
        (self.max_bytes / 16).clamp(64 * 1024, 64 * 1024 * 1024)
    }
}

/// Pushes every problem of `raw` onto `problems`; the returned value is only used when there
/// are none.
pub(super) fn validate_spool(raw: &RawSpool, problems: &mut Vec<String>) -> SpoolConfig {
    if raw.dir.trim().is_empty() {
        problems.push("`spool.dir` must not be empty".into());
    }
    if raw.max_bytes < MIN_MAX_BYTES {
        problems.push(format!(
            "`spool.max_bytes` ({}) must be at least {MIN_MAX_BYTES}",
            raw.max_bytes
        ));
    }
    let spool_full = match raw.spool_full.as_str() {
        "reject" => SpoolFull::Reject,
        "forward" => SpoolFull::Forward,
        other => {
            problems.push(format!(
                "`spool.spool_full` {other:?}: expected \"reject\" or \"forward\""
            ));
            SpoolFull::Reject
        }
    };
    if !(1..=10_000).contains(&raw.replay_batch_records) {
        problems.push(format!(
            "`spool.replay_batch_records` ({}) must be between 1 and 10000",
            raw.replay_batch_records
        ));
    }
    SpoolConfig {
        dir: PathBuf::from(&raw.dir),
        max_bytes: raw.max_bytes,
        spool_full,
        replay_batch: raw.replay_batch_records,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_every_problem_is_reported() {
        let mut problems = Vec::new();
        let c = validate_spool(&RawSpool::default(), &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(c.dir, PathBuf::from("/var/lib/trace-proxy/spool"));
        assert_eq!(c.max_bytes, 1 << 30);
        assert_eq!(c.spool_full, SpoolFull::Reject);
        assert_eq!(c.segment_bytes(), 64 * 1024 * 1024);
        assert_eq!(c.pending_limit(), (1 << 30) / 8 * 7);
        let bad = RawSpool {
            dir: " ".into(),
            max_bytes: 10,
            spool_full: "drop".into(),
            replay_batch_records: 0,
        };
        let mut problems = Vec::new();
        validate_spool(&bad, &mut problems);
        let all = problems.join("\n");
        assert_eq!(problems.len(), 4, "{all}");
        for key in [
            "spool.dir",
            "spool.max_bytes",
            "spool.spool_full",
            "replay_batch",
        ] {
            assert!(all.contains(key), "{key} missing from {all}");
        }
    }
}
