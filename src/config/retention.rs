//! `[retention]`: D5, how long detail rows and their summaries are kept and how often a running
//! proxy archives (`crate::retention`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::problems::Problems;

/// Longest retention accepted, in days (a century).
const MAX_RETENTION_DAYS: u32 = 36_500;
/// Largest archive batch accepted: bounded transactions are the point.
const MAX_RETENTION_BATCH: u32 = 100_000;
/// Longest scheduler interval accepted (a year).
const MAX_RETENTION_INTERVAL_SECS: u64 = 366 * 24 * 3600;

/// `[retention]` as written.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct RawRetention {
    pub detail_days: u32,
    pub summary_days: u32,
    pub batch_size: u32,
    pub interval_secs: u64,
}

impl Default for RawRetention {
    fn default() -> Self {
        Self {
            detail_days: 30,
            summary_days: 0,
            batch_size: 5_000,
            interval_secs: 3_600,
        }
    }
}

/// D5 retention (`crate::retention`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionConfig {
    /// Detail rows older than this many days are archived and deleted (1..=36500).
    pub detail_days: u32,
    /// Summaries older than this many days are deleted; `None` = kept forever.
    pub summary_days: Option<u32>,
    /// Rows per archive transaction (1..=100000).
    pub batch_size: u32,
    /// How often a running proxy runs a pass; `None` = never (only `trace-proxy retention run`).
    pub interval: Option<Duration>,
}

/// Checks `[retention]`, pushing every problem.
pub(super) fn check(r: &RawRetention, p: &mut Problems) -> Option<RetentionConfig> {
    if !(1..=MAX_RETENTION_DAYS).contains(&r.detail_days) {
        p.at(
            "retention.detail_days",
            format!(
                "({}) must be between 1 and {MAX_RETENTION_DAYS} (to stop the proxy running retention, set `retention.interval_secs = 0`)",
                r.detail_days
            ),
        );
    }
    if r.summary_days > MAX_RETENTION_DAYS {
        p.at(
            "retention.summary_days",
            format!(
                "({}) must be 0 (keep forever) or at most {MAX_RETENTION_DAYS}",
                r.summary_days
            ),
        );
    } else if r.summary_days != 0 && r.summary_days < r.detail_days {
        p.between(
            &["retention.summary_days", "retention.detail_days"],
            format!(
                "`retention.summary_days` ({}) must be 0 (keep forever) or at least `retention.detail_days` ({})",
                r.summary_days, r.detail_days
            ),
        );
    }
    if !(1..=MAX_RETENTION_BATCH).contains(&r.batch_size) {
        p.at(
            "retention.batch_size",
            format!(
                "({}) must be between 1 and {MAX_RETENTION_BATCH}",
                r.batch_size
            ),
        );
    }
    if r.interval_secs > MAX_RETENTION_INTERVAL_SECS {
        p.at(
            "retention.interval_secs",
            format!(
                "({}) must be at most {MAX_RETENTION_INTERVAL_SECS} (a year); 0 = never",
                r.interval_secs
            ),
        );
    }
    Some(RetentionConfig {
        detail_days: r.detail_days,
        summary_days: (r.summary_days > 0).then_some(r.summary_days),
        batch_size: r.batch_size,
        interval: (r.interval_secs > 0).then(|| Duration::from_secs(r.interval_secs)),
    })
}
