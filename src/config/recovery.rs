//! `[recovery]`: crash recovery (`crate::recovery`): the heartbeat and when an instance counts
//! as dead.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::duration::Dur;
use super::problems::Problems;

/// Heartbeats accepted: from a second to an hour.
const HEARTBEAT: std::ops::RangeInclusive<Dur> = Dur::secs(1)..=Dur::secs(3_600);
/// Longest staleness accepted (30 days): beyond that, orphans would wait for retention instead.
const MAX_STALE_AFTER: Dur = Dur::days(30);

/// `[recovery]` as written.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct RawRecovery {
    pub heartbeat: Dur,
    pub stale_after: Dur,
}

impl Default for RawRecovery {
    fn default() -> Self {
        Self {
            heartbeat: Dur::secs(10),
            stale_after: Dur::secs(600),
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
    if !HEARTBEAT.contains(&raw.heartbeat) {
        p.at(
            "recovery.heartbeat",
            format!(
                "({}) must be between {} and {}",
                raw.heartbeat,
                HEARTBEAT.start(),
                HEARTBEAT.end()
            ),
        );
    }
    // Two heartbeats at least: one late heartbeat must not make a live proxy look dead.
    let min_stale = Dur(raw.heartbeat.0.saturating_mul(2)).max(Dur::secs(2));
    if raw.stale_after > MAX_STALE_AFTER {
        p.at(
            "recovery.stale_after",
            format!("({}) must be at most {MAX_STALE_AFTER}", raw.stale_after),
        );
    } else if raw.stale_after < min_stale {
        p.between(
            &["recovery.stale_after", "recovery.heartbeat"],
            format!(
                "{} ({}) must be at least twice {} ({min_stale})",
                p.name("recovery.stale_after"),
                raw.stale_after,
                p.name("recovery.heartbeat"),
            ),
        );
    }
    Some(RecoveryConfig {
        heartbeat: raw.heartbeat.0,
        stale_after: raw.stale_after.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(heartbeat: u64, stale_after: u64) -> Vec<String> {
        let mut p = Problems::default();
        let c = check(
            &RawRecovery {
                heartbeat: Dur::secs(heartbeat),
                stale_after: Dur::secs(stale_after),
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
        assert!(all.contains("recovery.heartbeat"), "{all}");
        assert!(all.contains("recovery.stale_after"), "{all}");
        assert_eq!(
            problems(10, 19).len(),
            1,
            "stale_after below two heartbeats"
        );
        assert_eq!(problems(7200, 100_000).len(), 1, "heartbeat too long");
    }
}
