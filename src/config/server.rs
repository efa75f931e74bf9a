//! `[server]`: the proxy's own listener, its connection limits and client timeouts.

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::problems::Problems;

/// `[server]` as written.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct RawServer {
    pub listen: String,
    pub max_connections: usize,
    pub header_read_timeout_ms: u64,
    pub request_body_timeout_ms: u64,
    pub max_request_body_bytes: u64,
    pub shutdown_timeout_ms: u64,
}

impl Default for RawServer {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8080".into(),
            max_connections: 10_000,
            header_read_timeout_ms: 10_000,
            request_body_timeout_ms: 30_000,
            max_request_body_bytes: 100 * 1024 * 1024,
            shutdown_timeout_ms: 30_000,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub request_body_timeout: Duration,
    /// `None` = unlimited.
    pub max_request_body_bytes: Option<u64>,
    pub shutdown_timeout: Duration,
}

/// Checks `[server]`, pushing every problem.
pub(super) fn check(s: &RawServer, p: &mut Problems) -> Option<ServerConfig> {
    let listen = socket_addr("server.listen", &s.listen, "", p);
    p.positive("server.max_connections", s.max_connections as u64);
    p.positive("server.header_read_timeout_ms", s.header_read_timeout_ms);
    p.positive("server.request_body_timeout_ms", s.request_body_timeout_ms);
    Some(ServerConfig {
        listen: listen?,
        max_connections: s.max_connections,
        header_read_timeout: Duration::from_millis(s.header_read_timeout_ms),
        request_body_timeout: Duration::from_millis(s.request_body_timeout_ms),
        max_request_body_bytes: (s.max_request_body_bytes > 0).then_some(s.max_request_body_bytes),
        shutdown_timeout: Duration::from_millis(s.shutdown_timeout_ms),
    })
}

/// A listen address (`server.listen`, `admin.listen`); `hint` is appended to its problem.
pub(super) fn socket_addr(key: &str, v: &str, hint: &str, p: &mut Problems) -> Option<SocketAddr> {
    SocketAddr::from_str(v)
        .map_err(|e| p.at(key, format!("{v:?}: {e}{hint}")))
        .ok()
}
