//! `[server]`: the proxy's own listener, its connection limits and client timeouts.

use std::net::{SocketAddr, ToSocketAddrs};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::duration::Dur;
use super::problems::Problems;

/// `[server]` as written.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct RawServer {
    pub listen: String,
    pub max_connections: usize,
    pub header_read_timeout: Dur,
    pub request_body_timeout: Dur,
    pub max_request_body_bytes: u64,
    pub shutdown_timeout: Dur,
    pub send_timeout: Dur,
    pub idle_timeout: Dur,
    pub trusted_proxies: Vec<String>,
    /// "" = the default for who runs it ([`default_state_dir`]); filled in when read.
    pub state_dir: String,
}

/// The state directory when `server.state_dir` is not set: `/var/lib/trace-proxy` for root, else
/// a per-user one, `$XDG_STATE_HOME/trace-proxy` or `$HOME/.local/state/trace-proxy`
/// (`/var/lib/trace-proxy` when neither is set). `var` reads the environment.
pub fn default_state_dir(var: &dyn Fn(&str) -> Option<String>) -> String {
    state_dir_for(nix::unistd::geteuid().is_root(), var)
}

fn state_dir_for(root: bool, var: &dyn Fn(&str) -> Option<String>) -> String {
    const SYSTEM: &str = "/var/lib/trace-proxy";
    if root {
        return SYSTEM.into();
    }
    let set = |k: &str| var(k).filter(|v| v.starts_with('/'));
    match (set("XDG_STATE_HOME"), set("HOME")) {
        (Some(xdg), _) => format!("{}/trace-proxy", xdg.trim_end_matches('/')),
        (None, Some(home)) => format!("{}/.local/state/trace-proxy", home.trim_end_matches('/')),
        (None, None) => SYSTEM.into(),
    }
}

impl Default for RawServer {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8080".into(),
            max_connections: 10_000,
            header_read_timeout: Dur::secs(10),
            request_body_timeout: Dur::secs(30),
            max_request_body_bytes: 100 * 1024 * 1024,
            shutdown_timeout: Dur::secs(30),
            send_timeout: Dur::secs(60),
            idle_timeout: Dur::secs(300),
            trusted_proxies: Vec::new(),
            state_dir: String::new(),
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
    /// A response write that makes no progress this long cuts the connection (the client
    /// stopped reading).
    pub send_timeout: Duration,
    /// An HTTP/2 connection with no request in flight this long is closed (HTTP/1.1
    /// keep-alive connections are closed at `header_read_timeout`).
    pub idle_timeout: Duration,
    /// Peers whose `X-Forwarded-*`/`Forwarded` headers are passed on (appended to); from
    /// anyone else they are replaced by the proxy's own.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// This instance's state: the spool journal and the managed PostgreSQL, unless configured
    /// elsewhere. Two instances on one machine use two state directories.
    pub state_dir: std::path::PathBuf,
}

impl ServerConfig {
    /// True when `peer` is a trusted proxy.
    pub fn trusts(&self, peer: std::net::IpAddr) -> bool {
        self.trusted_proxies.iter().any(|n| n.contains(&peer))
    }
}

/// Checks `[server]`, pushing every problem.
pub(super) fn check(s: &RawServer, p: &mut Problems) -> Option<ServerConfig> {
    let listen = socket_addr("server.listen", &s.listen, "", p);
    p.positive("server.max_connections", s.max_connections as u64);
    p.positive("server.header_read_timeout", s.header_read_timeout.millis());
    p.positive(
        "server.request_body_timeout",
        s.request_body_timeout.millis(),
    );
    let mut trusted_proxies = Vec::new();
    for t in &s.trusted_proxies {
        let parsed = ipnet::IpNet::from_str(t)
            .or_else(|_| std::net::IpAddr::from_str(t).map(ipnet::IpNet::from));
        match parsed {
            Ok(n) => trusted_proxies.push(n),
            Err(_) => p.at(
                "server.trusted_proxies",
                format!(
                    "{t:?} is not an IP address or CIDR block (e.g. \"10.0.0.0/8\", \"127.0.0.1\")"
                ),
            ),
        }
    }
    p.positive("server.send_timeout", s.send_timeout.millis());
    p.positive("server.idle_timeout", s.idle_timeout.millis());
    if !s.state_dir.starts_with('/') {
        p.at(
            "server.state_dir",
            format!("{:?} must be an absolute path", s.state_dir),
        );
    }
    Some(ServerConfig {
        state_dir: s.state_dir.clone().into(),
        send_timeout: s.send_timeout.0,
        idle_timeout: s.idle_timeout.0,
        trusted_proxies,
        listen: listen?,
        max_connections: s.max_connections,
        header_read_timeout: s.header_read_timeout.0,
        request_body_timeout: s.request_body_timeout.0,
        max_request_body_bytes: (s.max_request_body_bytes > 0).then_some(s.max_request_body_bytes),
        shutdown_timeout: s.shutdown_timeout.0,
    })
}

/// A listen address (`server.listen`, `admin.listen`): `ip:port`, or `host:port` resolved here,
/// once, when the configuration is read (the first address the system resolver returns is the
/// one bound). `hint` is appended to its problem.
pub(super) fn socket_addr(key: &str, v: &str, hint: &str, p: &mut Problems) -> Option<SocketAddr> {
    if let Ok(addr) = SocketAddr::from_str(v) {
        return Some(addr);
    }
    let problem = match v.to_socket_addrs() {
        Ok(mut addrs) => match addrs.next() {
            Some(addr) => return Some(addr),
            None => "resolves to no address".to_owned(),
        },
        Err(e) => e.to_string(),
    };
    p.at(
        key,
        format!("{v:?}: {problem} (expected ip:port or host:port, e.g. \"0.0.0.0:8080\" or \"localhost:8080\"){hint}"),
    );
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_directory_is_per_user_unless_root() {
        let home = |k: &str| (k == "HOME").then(|| "/home/ana".to_owned());
        let xdg = |k: &str| match k {
            "HOME" => Some("/home/ana".to_owned()),
            "XDG_STATE_HOME" => Some("/home/ana/state/".to_owned()),
            _ => None,
        };
        let relative = |k: &str| (k == "HOME").then(|| "ana".to_owned());
        assert_eq!(
            state_dir_for(false, &home),
            "/home/ana/.local/state/trace-proxy"
        );
        assert_eq!(state_dir_for(false, &xdg), "/home/ana/state/trace-proxy");
        assert_eq!(state_dir_for(false, &relative), "/var/lib/trace-proxy");
        assert_eq!(state_dir_for(true, &xdg), "/var/lib/trace-proxy");
    }
}
