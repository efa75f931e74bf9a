//! `[recovery]`: crash recovery (`crate::recovery`): the heartbeat and when an instance counts
//! as dead.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::problems::Problems;

/// Longest heartbeat accepted (an hour).
const MAX_HEARTBEAT_SECS: u64 = 3_600;
/// Longest staleness accepted (30 days): beyond that, orphans would wait for retention instead.
const MAX_STALE_AFTER_SECS: u64 = 30 * 24 * 3_600;

/// `[recovery]` as written.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct RawRecovery {
    pub heartbeat_secs: u64,
    pub stale_after_secs: u64,
}

impl Default for RawRecovery {
    fn default() -> Self {
        Self {
            heartbeat_secs: 10,
            stale_after_secs: 600,
        }
    }
}

/// Crash recovery, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryConfig {
    /// How often this process refreshes its `last_seen` and looks for orphans.
    pub heartbeat: Duration,
    /// An instance not seen for this long is dead; an unattributed row this old is an orphan.
    pub stale_after: Duration,
}

/// Checks `[recovery]`, pushing every problem.
pub(super) fn check(raw: &RawRecovery, p: &mut Problems) -> Option<RecoveryConfig> {
    if !(1..=MAX_HEARTBEAT_SECS).contains(&raw.heartbeat_secs) {
        p.at(
            "recovery.heartbeat_secs",
            format!(
                "({}) must be between 1 and {MAX_HEARTBEAT_SECS}",
                raw.heartbeat_secs
            ),
        );
    }
    // Two heartbeats at least: one late heartbeat must not make a live proxy look dead.
    let min_stale = raw.heartbeat_secs.saturating_mul(2).max(2);
    if raw.stale_after_secs > MAX_STALE_AFTER_SECS {
        p.at(
            "recovery.stale_after_secs",
            format!(
                "({}) must be at most {MAX_STALE_AFTER_SECS}",
                raw.stale_after_secs
            ),
        );
    } else if raw.stale_after_secs < min_stale {
        p.between(
            &["recovery.stale_after_secs", "recovery.heartbeat_secs"],
            format!(
                "`recovery.stale_after_secs` ({}) must be at least twice `recovery.heartbeat_secs` ({min_stale})",
                raw.stale_after_secs
            ),
        );
    }
    Some(RecoveryConfig {
        heartbeat: Duration::from_secs(raw.heartbeat_secs),
        stale_after: Duration::from_secs(raw.stale_after_secs),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(heartbeat_secs: u64, stale_after_secs: u64) -> Vec<String> {
        let mut p = Problems::default();
        let c = check(
            &RawRecovery {
                heartbeat_secs,
                stale_after_secs,
            },
            &mut p,
        );
        p.finish(c).err().unwrap_or_default()
    }

    #[test]
    fn defaults_are_valid_and_every_problem_is_reported() {
        let mut p = Problems::default();
        let c = check(&RawRecovery::default(), &mut p);
        let c = p.finish(c).expect("defaults are valid");
        assert_eq!(c.heartbeat, Duration::from_secs(10));
        assert_eq!(c.stale_after, Duration::from_secs(600));
        assert!(problems(1, 2).is_empty());
        let all = problems(0, 0).join("\n");
        assert!(all.contains("recovery.heartbeat_secs"), "{all}");
        assert!(all.contains("recovery.stale_after_secs"), "{all}");
        assert_eq!(
            problems(10, 19).len(),
            1,
            "stale_after below two heartbeats"
        );
        assert_eq!(problems(7200, 100_000).len(), 1, "heartbeat too long");
    }
}
