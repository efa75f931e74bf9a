//! `[recovery]`: crash recovery (`crate::recovery`). Raw keys and their validation.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Longest heartbeat accepted (an hour).
const MAX_HEARTBEAT_SECS: u64 = 3_600;
/// Longest staleness accepted (30 days): beyond that, orphans would wait for retention instead.
const MAX_STALE_AFTER_SECS: u64 = 30 * 24 * 3_600;

/// `[recovery]` as written.
#[derive(Clone, Deserialize, Serialize)]
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

/// Pushes every problem of `raw` onto `problems`; the returned value is only used when there
/// are none.
pub(super) fn validate_recovery(raw: &RawRecovery, problems: &mut Vec<String>) -> RecoveryConfig {
    if !(1..=MAX_HEARTBEAT_SECS).contains(&raw.heartbeat_secs) {
        problems.push(format!(
            "`recovery.heartbeat_secs` ({}) must be between 1 and {MAX_HEARTBEAT_SECS}",
            raw.heartbeat_secs
        ));
    }
    // Two heartbeats at least: one late heartbeat must not make a live proxy look dead.
    let min_stale = raw.heartbeat_secs.saturating_mul(2).max(2);
    if !(min_stale..=MAX_STALE_AFTER_SECS).contains(&raw.stale_after_secs) {
        problems.push(format!(
            "`recovery.stale_after_secs` ({}) must be between twice `recovery.heartbeat_secs` ({min_stale}) and {MAX_STALE_AFTER_SECS}",
            raw.stale_after_secs
        ));
    }
    RecoveryConfig {
        heartbeat: Duration::from_secs(raw.heartbeat_secs),
        stale_after: Duration::from_secs(raw.stale_after_secs),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(heartbeat_secs: u64, stale_after_secs: u64) -> Vec<String> {
        let mut problems = Vec::new();
        validate_recovery(
            &RawRecovery {
                heartbeat_secs,
                stale_after_secs,
            },
            &mut problems,
        );
        problems
    }

    #[test]
    fn defaults_are_valid_and_every_problem_is_reported() {
        let mut problems = Vec::new();
        let c = validate_recovery(&RawRecovery::default(), &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(c.heartbeat, Duration::from_secs(10));
        assert_eq!(c.stale_after, Duration::from_secs(600));
        assert!(check(1, 2).is_empty());
        let all = check(0, 0).join("\n");
        assert!(all.contains("recovery.heartbeat_secs"), "{all}");
        assert!(all.contains("recovery.stale_after_secs"), "{all}");
        assert_eq!(check(10, 19).len(), 1, "stale_after below two heartbeats");
        assert_eq!(check(7200, 100_000).len(), 1, "heartbeat too long");
    }
}
