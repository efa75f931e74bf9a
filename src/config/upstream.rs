//! `[upstream]`: the pooled client every route forwards through: timeouts, pool and TLS trust.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::problems::Problems;

/// `[upstream]` as written.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct RawUpstream {
    pub connect_timeout_ms: u64,
    pub response_timeout_ms: u64,
    pub idle_timeout_ms: u64,
    pub pool_idle_timeout_ms: u64,
    pub pool_max_idle_per_host: usize,
    pub tls_roots: TlsRoots,
    pub ca_file: String,
    pub preserve_host: bool,
}

impl Default for RawUpstream {
    fn default() -> Self {
        Self {
            connect_timeout_ms: 5_000,
            response_timeout_ms: 120_000,
            idle_timeout_ms: 300_000,
            pool_idle_timeout_ms: 90_000,
            pool_max_idle_per_host: 64,
            tls_roots: TlsRoots::Webpki,
            ca_file: String::new(),
            preserve_host: false,
        }
    }
}

/// Which certificate authorities an `https://` upstream is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsRoots {
    Webpki,
    Native,
    Both,
    /// Only `ca_file`.
    None,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    /// `None` = no idle limit while a response body streams.
    pub idle_timeout: Option<Duration>,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_host: usize,
    pub tls_roots: TlsRoots,
    pub ca_file: Option<PathBuf>,
    pub preserve_host: bool,
}

/// Checks `[upstream]`, pushing every problem.
pub(super) fn check(u: &RawUpstream, p: &mut Problems) -> Option<UpstreamConfig> {
    p.positive("upstream.connect_timeout_ms", u.connect_timeout_ms);
    p.positive("upstream.response_timeout_ms", u.response_timeout_ms);
    let ca_file = (!u.ca_file.is_empty()).then(|| PathBuf::from(&u.ca_file));
    if let Some(f) = &ca_file {
        if !f.is_file() {
            p.at("upstream.ca_file", format!("{}: no such file", f.display()));
        }
    }
    if u.tls_roots == TlsRoots::None && ca_file.is_none() {
        p.between(
            &["upstream.tls_roots", "upstream.ca_file"],
            "`upstream.tls_roots = \"none\"` needs `upstream.ca_file`",
        );
    }
    Some(UpstreamConfig {
        connect_timeout: Duration::from_millis(u.connect_timeout_ms),
        response_timeout: Duration::from_millis(u.response_timeout_ms),
        idle_timeout: (u.idle_timeout_ms > 0).then(|| Duration::from_millis(u.idle_timeout_ms)),
        pool_idle_timeout: Duration::from_millis(u.pool_idle_timeout_ms),
        pool_max_idle_per_host: u.pool_max_idle_per_host,
        tls_roots: u.tls_roots,
        ca_file,
        preserve_host: u.preserve_host,
    })
}
