//! `[capture]`: how much of each payload is stored, and when a long response is marked
//! `in_progress`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::duration::Dur;
use super::problems::Problems;

/// `[capture]` as written.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct RawCapture {
    pub max_payload_bytes: usize,
    pub in_progress_after: Dur,
}

impl Default for RawCapture {
    fn default() -> Self {
        Self {
            max_payload_bytes: 65_536,
            in_progress_after: Dur::secs(2),
        }
    }
}

#[derive(Debug, Clone)]
pub struct CaptureConfig {
    pub max_payload_bytes: usize,
    /// `None` = never mark rows `in_progress`.
    pub in_progress_after: Option<Duration>,
}

/// Checks `[capture]`, pushing every problem.
pub(super) fn check(c: &RawCapture, p: &mut Problems) -> Option<CaptureConfig> {
    p.positive("capture.max_payload_bytes", c.max_payload_bytes as u64);
    Some(CaptureConfig {
        max_payload_bytes: c.max_payload_bytes,
        in_progress_after: c.in_progress_after.nonzero(),
    })
}
