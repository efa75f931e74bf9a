//! `[spool]`: the durable journal used while PostgreSQL is unavailable (`crate::spool`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::problems::Problems;

/// Smallest bound accepted: room for a few hundred typical records.
const MIN_MAX_BYTES: u64 = 1024 * 1024;

/// `[spool]` as written.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct RawSpool {
    /// "" = `spool` in `server.state_dir` (filled in when the configuration is read).
    pub dir: String,
    pub max_bytes: u64,
    pub spool_full: SpoolFull,
    pub replay_batch_records: usize,
}

impl Default for RawSpool {
    fn default() -> Self {
        Self {
            dir: String::new(),
            max_bytes: 1024 * 1024 * 1024,
            spool_full: SpoolFull::Reject,
            replay_batch_records: 500,
        }
    }
}

/// What to do with a request when PostgreSQL is unavailable and the journal is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
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

/// Checks `[spool]`, pushing every problem. Its `dir` is filled in before (`fill_state_dir`).
pub(super) fn check(raw: &RawSpool, p: &mut Problems) -> Option<SpoolConfig> {
    let dir = PathBuf::from(raw.dir.trim());
    if dir.as_os_str().is_empty() {
        p.at("spool.dir", "must not be empty");
    }
    if raw.max_bytes < MIN_MAX_BYTES {
        p.at(
            "spool.max_bytes",
            format!("({}) must be at least {MIN_MAX_BYTES}", raw.max_bytes),
        );
    }
    if !(1..=10_000).contains(&raw.replay_batch_records) {
        p.at(
            "spool.replay_batch_records",
            format!("({}) must be between 1 and 10000", raw.replay_batch_records),
        );
    }
    Some(SpoolConfig {
        dir,
        max_bytes: raw.max_bytes,
        spool_full: raw.spool_full,
        replay_batch: raw.replay_batch_records,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_every_problem_is_reported() {
        let mut p = Problems::default();
        let raw = RawSpool {
            dir: "/srv/state/spool".into(),
            ..RawSpool::default()
        };
        let c = check(&raw, &mut p);
        let c = p.finish(c).expect("defaults are valid");
        assert_eq!(c.dir, PathBuf::from("/srv/state/spool"));
        assert_eq!(c.max_bytes, 1 << 30);
        assert_eq!(c.spool_full, SpoolFull::Reject);
        assert_eq!(c.segment_bytes(), 64 * 1024 * 1024);
        assert_eq!(c.pending_limit(), (1 << 30) / 8 * 7);
        let text = "[spool]\ndir = \" \"\nmax_bytes = 10\nspool_full = \"drop\"\nreplay_batch_records = 0\n\
                    [[routes]]\nname = \"n8n\"\nupstream = \"http://127.0.0.1:5678\"\n\
                    source_service = \"a\"\ndestination_service = \"b\"\n";
        let Err(crate::config::ConfigError::Invalid(problems)) =
            crate::config::Config::from_toml_str(text)
        else {
            panic!("expected invalid config");
        };
        let all = problems.join("\n");
        assert_eq!(problems.len(), 3, "{all}");
        for key in ["spool.max_bytes", "spool.spool_full", "replay_batch"] {
            assert!(all.contains(key), "{key} missing from {all}");
        }
    }
}
