//! `[log]`: the tracing filter and the log line format.

use serde::{Deserialize, Serialize};

use super::problems::Problems;

/// `[log]` as written.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct RawLog {
    pub level: String,
    pub format: LogFormat,
}

impl Default for RawLog {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

/// `log.format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub level: String,
    pub json: bool,
}

/// Checks `[log]`, pushing every problem.
pub(super) fn check(l: &RawLog, p: &mut Problems) -> Option<LogConfig> {
    if tracing_subscriber::EnvFilter::try_new(&l.level).is_err() {
        p.at("log.level", format!("{:?} is not a valid filter", l.level));
    }
    Some(LogConfig {
        level: l.level.clone(),
        json: l.format == LogFormat::Json,
    })
}
