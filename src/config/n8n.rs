//! `[n8n]`: the optional execution lookup. With n8n's base URL and a public-API key, a failed
//! attempt that names an n8n execution gets n8n's own account of it (`crate::n8n`). The key never
//! appears in `Debug` or printed output.

use std::time::Duration;

use http::Uri;
use serde::{Deserialize, Serialize};

use super::duration::Dur;
use super::problems::Problems;
use super::Token;

/// Environment variable that overrides `n8n.api_key`.
pub const ENV_N8N_API_KEY: &str = "TRACE_PROXY_N8N_API_KEY";

/// `[n8n]` as written.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct RawN8n {
    pub api_url: String,
    pub api_key: String,
    pub lookup_delay: Dur,
    pub lookup_timeout: Dur,
    pub lookups_per_minute: u32,
}

impl Default for RawN8n {
    fn default() -> Self {
        Self {
            api_url: String::new(),
            api_key: String::new(),
            lookup_delay: Dur::secs(2),
            lookup_timeout: Dur::secs(5),
            lookups_per_minute: 60,
        }
    }
}

/// The validated `[n8n]` section: `lookup` is `None` unless both the URL and the key are set.
#[derive(Debug, Clone)]
pub struct N8nConfig {
    pub lookup: Option<N8nLookup>,
}

/// Where and how to ask n8n about executions.
#[derive(Debug, Clone)]
pub struct N8nLookup {
    /// n8n's base URL (`http://n8n:5678`), without a trailing slash.
    pub api_url: String,
    /// Sent as `X-N8N-API-KEY`; printed as `<redacted>`.
    pub api_key: Token,
    /// Wait after the final update before asking (n8n finishes writing the execution).
    pub delay: Duration,
    /// One lookup's whole exchange.
    pub timeout: Duration,
    pub per_minute: u32,
}

/// Checks `[n8n]`, pushing every problem.
pub(super) fn check(r: &RawN8n, p: &mut Problems) -> Option<N8nConfig> {
    p.positive("n8n.lookup_timeout", r.lookup_timeout.millis());
    if !(1..=6000).contains(&r.lookups_per_minute) {
        p.at(
            "n8n.lookups_per_minute",
            format!("({}) must be between 1 and 6000", r.lookups_per_minute),
        );
    }
    let url = r.api_url.trim_end_matches('/');
    match (url.is_empty(), r.api_key.is_empty()) {
        (true, true) => return Some(N8nConfig { lookup: None }),
        (false, true) => p.at(
            "n8n.api_key",
            "is required with n8n.api_url (or set TRACE_PROXY_N8N_API_KEY)",
        ),
        (true, false) => p.at("n8n.api_url", "is required with n8n.api_key"),
        (false, false) => {}
    }
    let parsed = url.parse::<Uri>().ok().filter(|u| {
        matches!(u.scheme_str(), Some("http" | "https"))
            && u.authority().is_some()
            && u.query().is_none()
    });
    if !url.is_empty() && parsed.is_none() {
        p.at(
            "n8n.api_url",
            format!("{url:?} must be an http:// or https:// base URL, e.g. \"http://n8n:5678\""),
        );
    }
    Some(N8nConfig {
        lookup: Some(N8nLookup {
            api_url: url.to_owned(),
            api_key: Token::new(r.api_key.clone()),
            delay: r.lookup_delay.0,
            timeout: r.lookup_timeout.0,
            per_minute: r.lookups_per_minute,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_unless_both_are_set_and_each_half_is_named() {
        let mut p = Problems::default();
        let off = check(&RawN8n::default(), &mut p).expect("valid");
        assert!(off.lookup.is_none());
        let half = RawN8n {
            api_url: "http://n8n:5678/".into(),
            ..RawN8n::default()
        };
        let c = check(&half, &mut p);
        let problems = p.finish(c).expect_err("invalid");
        assert!(problems[0].contains("n8n.api_key"), "{problems:?}");
        let mut p = Problems::default();
        let on = RawN8n {
            api_url: "http://n8n:5678/".into(),
            api_key: "n8n_api_0123456789".into(),
            ..RawN8n::default()
        };
        let c = check(&on, &mut p).and_then(|c| c.lookup).expect("on");
        assert_eq!(c.api_url, "http://n8n:5678");
        assert_eq!(format!("{:?}", c.api_key), "<redacted>");
    }
}
