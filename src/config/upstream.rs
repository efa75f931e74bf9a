//! `[upstream]`: the pooled client every route forwards through: timeouts, pool and TLS trust.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::duration::Dur;
use super::problems::Problems;

/// `[upstream]` as written.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct RawUpstream {
    pub connect_timeout: Dur,
    pub response_timeout: Dur,
    pub idle_timeout: Dur,
    pub pool_idle_timeout: Dur,
    pub pool_max_idle_per_host: usize,
    pub tls_roots: TlsRoots,
    pub ca_file: String,
    pub preserve_host: bool,
}

impl Default for RawUpstream {
    fn default() -> Self {
        Self {
            connect_timeout: Dur::secs(5),
            response_timeout: Dur::secs(120),
            idle_timeout: Dur::secs(300),
            pool_idle_timeout: Dur::secs(90),
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
    p.positive("upstream.connect_timeout", u.connect_timeout.millis());
    p.positive("upstream.response_timeout", u.response_timeout.millis());
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
        connect_timeout: u.connect_timeout.0,
        response_timeout: u.response_timeout.0,
        idle_timeout: u.idle_timeout.nonzero(),
        pool_idle_timeout: u.pool_idle_timeout.0,
        pool_max_idle_per_host: u.pool_max_idle_per_host,
        tls_roots: u.tls_roots,
        ca_file,
        preserve_host: u.preserve_host,
    })
}
