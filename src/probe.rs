//! `trace-proxy health`: the client side of the admin listener's `/readyz` and `/healthz`, for a
//! container `HEALTHCHECK` or an exec probe in an image without curl (distroless, `FROM
//! scratch`). One GET over plain TCP with hyper, the whole exchange bounded by a timeout; a 2xx
//! answer is healthy, anything else — another status, no connection, no answer in time — is not.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{header, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

use crate::config::{Config, ConfigError, Dur};

/// The most of an answer's body kept for the report: `/readyz` says why in a line.
const MAX_BODY_BYTES: usize = 1024;

/// Arguments of `trace-proxy health`.
#[derive(Debug, Clone, clap::Args)]
pub struct HealthArgs {
    /// The URL to ask (plain http://), instead of `/readyz` on the configured `admin.listen`
    /// (with 0.0.0.0 or [::] asked on loopback). Given a URL, no configuration is read.
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// Ask `/healthz` (the process is alive and serving) instead of `/readyz` (it can record).
    #[arg(long, conflicts_with = "url")]
    pub live: bool,
    /// Give up after this long: connecting, sending and reading the answer together.
    #[arg(long, default_value = "5s", value_name = "DURATION", value_parser = timeout_arg)]
    pub timeout: Duration,
}

/// `--timeout`: a duration as the configuration writes it ("500ms", "5s"), not zero.
fn timeout_arg(text: &str) -> Result<Duration, String> {
    match text.parse::<Dur>()?.nonzero() {
        Some(d) => Ok(d),
        None => Err("the timeout must be longer than 0".into()),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("{path}: {source}")]
    Config { path: PathBuf, source: ConfigError },
    #[error(
        "the admin listener is off (admin.listen = \"\"), so there is nothing to ask; give --url"
    )]
    AdminOff,
    #[error("{url:?} is not a plain http:// URL with a host ({reason})")]
    BadUrl { url: String, reason: &'static str },
    #[error("{url}: cannot connect: {source}")]
    Connect { url: String, source: std::io::Error },
    #[error("{url}: {source}")]
    Http { url: String, source: hyper::Error },
    #[error("{url}: no answer within {}", Dur(*.timeout))]
    Timeout { url: String, timeout: Duration },
    #[error("{0}")]
    Unhealthy(Answer),
}

/// What the endpoint answered.
#[derive(Debug)]
pub struct Answer {
    pub url: String,
    pub status: StatusCode,
    /// The start of the body (at most 1 KiB), lossily decoded and trimmed.
    pub body: String,
}

impl fmt::Display for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.url, self.status.as_u16())?;
        match self.body.is_empty() {
            true => Ok(()),
            false => write!(f, " {}", self.body),
        }
    }
}

/// Asks the endpoint `args` names; `load` reads the configuration, only when `--url` is not
/// given. `Ok` is a 2xx answer.
pub async fn check(
    args: &HealthArgs,
    path: &std::path::Path,
    load: impl FnOnce() -> Result<Config, ConfigError>,
) -> Result<Answer, ProbeError> {
    let url = match &args.url {
        Some(url) => url.clone(),
        None => {
            let config = load().map_err(|source| ProbeError::Config {
                path: path.to_owned(),
                source,
            })?;
            let admin = config.admin.serve_on().ok_or(ProbeError::AdminOff)?;
            admin_url(admin, args.live)
        }
    };
    let answer = get(&url, args.timeout).await?;
    match answer.status.is_success() {
        true => Ok(answer),
        false => Err(ProbeError::Unhealthy(answer)),
    }
}

/// The URL of `/readyz` (or `/healthz` when `live`) on an admin listener bound to `addr`; an
/// unspecified address (0.0.0.0, [::]) is reached on the loopback of its family.
pub fn admin_url(addr: SocketAddr, live: bool) -> String {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let path = match live {
        true => "/healthz",
        false => "/readyz",
    };
    format!("http://{}{path}", SocketAddr::new(ip, addr.port()))
}

/// One GET of `url`, connect to end of body within `timeout`.
pub async fn get(url: &str, timeout: Duration) -> Result<Answer, ProbeError> {
    let parsed = url::Url::parse(url).map_err(|_| ProbeError::BadUrl {
        url: url.to_owned(),
        reason: "unparseable",
    })?;
    let bad = |reason| ProbeError::BadUrl {
        url: url.to_owned(),
        reason,
    };
    if parsed.scheme() != "http" {
        return Err(bad("the admin listener speaks plain HTTP"));
    }
    let host = parsed.host_str().ok_or_else(|| bad("no host"))?;
    let port = parsed
        .port_or_known_default()
        .ok_or_else(|| bad("no port"))?;
    let authority = format!("{host}:{port}");
    let target = match parsed.query() {
        Some(q) => format!("{}?{q}", parsed.path()),
        None => parsed.path().to_owned(),
    };
    let exchange = exchange(url, &authority, &target);
    match tokio::time::timeout(timeout, exchange).await {
        Ok(answer) => answer,
        Err(_) => Err(ProbeError::Timeout {
            url: url.to_owned(),
            timeout,
        }),
    }
}

/// Connects to `authority` (`host:port`, `[v6]:port`; a name is resolved), sends `GET target`
/// over HTTP/1.1 and reads the status and the start of the body.
async fn exchange(url: &str, authority: &str, target: &str) -> Result<Answer, ProbeError> {
    let http = |source| ProbeError::Http {
        url: url.to_owned(),
        source,
    };
    let stream = tokio::net::TcpStream::connect(authority)
        .await
        .map_err(|source| ProbeError::Connect {
            url: url.to_owned(),
            source,
        })?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(http)?;
    // Driven beside the request; it ends with the exchange (`Connection: close`) or when the
    // timeout drops this future, closing the socket.
    let connection = tokio::spawn(connection);
    let request = Request::get(target)
        .header(header::HOST, authority)
        .header(header::USER_AGENT, "trace-proxy-health")
        .header(header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|_| ProbeError::BadUrl {
            url: url.to_owned(),
            reason: "not a valid request target",
        })?;
    let response = sender.send_request(request).await.map_err(http)?;
    let status = response.status();
    let mut body = response.into_body();
    let mut start = BytesMut::new();
    while start.len() < MAX_BODY_BYTES {
        match body.frame().await {
            Some(frame) => {
                if let Ok(data) = frame.map_err(http)?.into_data() {
                    let room = MAX_BODY_BYTES - start.len();
                    start.extend_from_slice(&data[..data.len().min(room)]);
                }
            }
            None => break,
        }
    }
    connection.abort();
    Ok(Answer {
        url: url.to_owned(),
        status,
        body: String::from_utf8_lossy(&start).trim().to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unspecified_admin_address_is_asked_on_loopback() {
        let url = |a: &str, live| admin_url(a.parse().expect("addr"), live);
        assert_eq!(url("0.0.0.0:8079", false), "http://127.0.0.1:8079/readyz");
        assert_eq!(url("[::]:8079", true), "http://[::1]:8079/healthz");
        assert_eq!(url("10.1.2.3:9", false), "http://10.1.2.3:9/readyz");
    }

    #[test]
    fn the_timeout_needs_a_unit_and_is_not_zero() {
        assert_eq!(timeout_arg("500ms"), Ok(Duration::from_millis(500)));
        assert!(timeout_arg("5").is_err());
        assert!(timeout_arg("0").is_err());
    }

    #[tokio::test]
    async fn a_url_that_is_not_plain_http_is_refused_before_connecting() {
        for url in ["https://127.0.0.1:1/readyz", "127.0.0.1:8079", "http://"] {
            let e = get(url, Duration::from_secs(1)).await.unwrap_err();
            assert!(matches!(e, ProbeError::BadUrl { .. }), "{url}: {e}");
        }
    }
}
