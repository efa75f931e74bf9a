//! `[retention]`: D5, how long detail rows and their summaries are kept and how often a running
//! proxy archives (`crate::retention`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::duration::Dur;
use super::problems::Problems;

/// Longest retention accepted, in days (a century).
const MAX_RETENTION_DAYS: u64 = 36_500;
/// Largest archive batch accepted: bounded transactions are the point.
const MAX_RETENTION_BATCH: u32 = 100_000;
/// Longest scheduler interval accepted (a year).
const MAX_RETENTION_INTERVAL: Dur = Dur::days(366);

/// `[retention]` as written.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct RawRetention {
    pub detail_max_age: Dur,
    pub summary_max_age: Dur,
    pub batch_size: u32,
    pub interval: Dur,
}

impl Default for RawRetention {
    fn default() -> Self {
        Self {
            detail_max_age: Dur::days(30),
            summary_max_age: Dur::default(),
            batch_size: 5_000,
            interval: Dur::secs(3_600),
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
    let days = |d: Dur| {
        d.whole_days()
            .filter(|d| (1..=MAX_RETENTION_DAYS).contains(d))
    };
    let detail_days = days(r.detail_max_age);
    if detail_days.is_none() {
        p.at(
            "retention.detail_max_age",
            format!(
                "({}) must be a whole number of days between 1d and {MAX_RETENTION_DAYS}d (to stop the proxy running retention, set `retention.interval = \"0\"`)",
                r.detail_max_age
            ),
        );
    }
    let summary_days = days(r.summary_max_age);
    if !r.summary_max_age.is_zero() && summary_days.is_none() {
        p.at(
            "retention.summary_max_age",
            format!(
                "({}) must be \"0\" (keep forever) or a whole number of days up to {MAX_RETENTION_DAYS}d",
                r.summary_max_age
            ),
        );
    }
    if let (Some(summary), Some(detail)) = (summary_days, detail_days) {
        if summary < detail {
            p.between(
                &["retention.summary_max_age", "retention.detail_max_age"],
                format!(
                    "{} ({}) must be \"0\" (keep forever) or at least {} ({})",
                    p.name("retention.summary_max_age"),
                    r.summary_max_age,
                    p.name("retention.detail_max_age"),
                    r.detail_max_age
                ),
            );
        }
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
    if r.interval > MAX_RETENTION_INTERVAL {
        p.at(
            "retention.interval",
            format!(
                "({}) must be at most {MAX_RETENTION_INTERVAL} (a year); \"0\" = never",
                r.interval
            ),
        );
    }
    Some(RetentionConfig {
        detail_days: u32::try_from(detail_days?).ok()?,
        summary_days: summary_days.and_then(|d| u32::try_from(d).ok()),
        batch_size: r.batch_size,
        interval: r.interval.nonzero(),
    })
}
