//! The upstream side: the pooled HTTP/HTTPS client, the request sent upstream, hop-by-hop
//! header handling and the classification of client errors.

use std::net::SocketAddr;
use std::str::FromStr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Uri, Version};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use super::correlate::Correlation;
use super::error::ProxyError;
use crate::capture::RequestBody;
use crate::config::{Config, Route, TlsRoots, UpstreamConfig};
use crate::error::error_chain;

pub(crate) type UpstreamBody = RequestBody<hyper::body::Incoming>;
pub(crate) type UpstreamClient = Client<HttpsConnector<HttpConnector>, UpstreamBody>;

#[derive(Debug, thiserror::Error)]
pub enum ClientSetupError {
    #[error("cannot read upstream.ca_file {path}")]
    CaFile {
        path: String,
        #[source]
        source: CaFileError,
    },
    #[error("no native root certificates found ({0} errors)")]
    NoNativeRoots(usize),
    #[error("TLS protocol versions")]
    Protocols(#[source] rustls::Error),
}

/// What is wrong with `upstream.ca_file`.
#[derive(Debug, thiserror::Error)]
pub enum CaFileError {
    #[error(transparent)]
    Read(#[from] std::io::Error),
    #[error(transparent)]
    Pem(#[from] rustls::pki_types::pem::Error),
    #[error(transparent)]
    Cert(#[from] rustls::Error),
    #[error("no PEM certificates in file")]
    Empty,
}

/// The pooled upstream client: HTTP/1.1 and, over TLS when ALPN agrees, HTTP/2.
pub(crate) fn build_client(cfg: &UpstreamConfig) -> Result<UpstreamClient, ClientSetupError> {
    client_for(cfg)
}

/// A pooled client with `[upstream]`'s TLS roots and timeouts, for request bodies of type `B`.
pub(crate) fn client_for<B>(
    cfg: &UpstreamConfig,
) -> Result<Client<HttpsConnector<HttpConnector>, B>, ClientSetupError>
where
    B: hyper::body::Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut roots = rustls::RootCertStore::empty();
    if matches!(cfg.tls_roots, TlsRoots::Webpki | TlsRoots::Both) {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    if matches!(cfg.tls_roots, TlsRoots::Native | TlsRoots::Both) {
        let native = rustls_native_certs::load_native_certs();
        if native.certs.is_empty() {
            return Err(ClientSetupError::NoNativeRoots(native.errors.len()));
        }
        for cert in native.certs {
            // Unparseable platform certificates are skipped, as browsers do.
            let _ = roots.add(cert);
        }
    }
    if let Some(path) = &cfg.ca_file {
        let err = |source: CaFileError| ClientSetupError::CaFile {
            path: path.display().to_string(),
            source,
        };
        let pem = std::fs::read(path).map_err(|e| err(e.into()))?;
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| err(e.into()))?;
            roots.add(cert).map_err(|e| err(e.into()))?;
            added += 1;
        }
        if added == 0 {
            return Err(err(CaFileError::Empty));
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(ClientSetupError::Protocols)?
        .with_root_certificates(roots)
        .with_no_client_auth();

    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(cfg.connect_timeout));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_idle_timeout(cfg.pool_idle_timeout)
        .pool_max_idle_per_host(cfg.pool_max_idle_per_host)
        .build(connector))
}

/// Hop-by-hop headers (RFC 9110 §7.6.1): never forwarded in either direction.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Removes hop-by-hop headers, including every header the `Connection` header names.
///
/// A `Content-Length` sent together with `Transfer-Encoding` is stale (RFC 9112 §6.3: the
/// transfer coding frames the message) and goes too, so the next hop frames the body anew.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: one pass over the few names present costs less than a hashed
    // removal per hop-by-hop name. (`Connection` is one of them, so the names it lists, and
    // `Transfer-Encoding`, so a stale `Content-Length`, are handled below when present.)
    if !headers
        .keys()
        .any(|k| *k == header::UPGRADE || HOP_BY_HOP.contains(k))
    {
        return;
    }
    if headers.contains_key(header::TRANSFER_ENCODING) {
        headers.remove(header::CONTENT_LENGTH);
    }
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_str(name.trim()).ok())
        .collect();
    for name in listed.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    headers.remove(header::UPGRADE);
}

/// The forwarding headers a client may send. Variants spelled with other separators
/// (`X_Forwarded_For`, `x--forwarded-for`) are dropped too: some servers read them as these.
const FORWARDING: [&str; 7] = [
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-real-ip",
];

/// The headers that frame a message. A name that differs from one of them only in separators
/// (`Content_Length`, `transfer---encoding`) is never forwarded: a server that reads it as the
/// real one would frame the request differently from the proxy (a desync).
const FRAMING: [&str; 2] = ["content-length", "transfer-encoding"];

/// Whether `name` and `canonical` have the same letters and digits in the same order (header
/// names are lowercase already), whatever separators stand between them.
fn same_but_separators(name: &str, canonical: &str) -> bool {
    let mut a = name.bytes().filter(u8::is_ascii_alphanumeric);
    let mut b = canonical.bytes().filter(u8::is_ascii_alphanumeric);
    loop {
        match (a.next(), b.next()) {
            (None, None) => return true,
            (x, y) if x == y => {}
            _ => return false,
        }
    }
}

/// Whether a client's header `name` is dropped before forwarding: a look-alike of a framing
/// header, or a forwarding header the client is not trusted to send (any spelling).
fn dropped_client_header(name: &str, trusted: bool) -> bool {
    let lookalike = |canonical: &&str| name != *canonical && same_but_separators(name, canonical);
    FRAMING.iter().any(lookalike)
        || FORWARDING
            .iter()
            .any(|f| same_but_separators(name, f) && (!trusted || name != *f))
}

/// Sets this hop's forwarding headers. From a trusted proxy (`server.trusted_proxies`) the chain
/// it sent is kept and this hop's client address appended to `X-Forwarded-For`; from anyone
/// else whatever forwarding headers the client sent are removed first, so the upstream can
/// trust what it gets: `X-Forwarded-For` = the peer, `X-Forwarded-Host` = the original host,
/// `X-Forwarded-Proto` = `http`. Look-alikes of the framing headers go in the same pass.
fn forwarding_headers(
    headers: &mut HeaderMap,
    peer: SocketAddr,
    host: Option<HeaderValue>,
    trusted: bool,
) {
    let dropped: Vec<HeaderName> = headers
        .keys()
        .filter(|k| dropped_client_header(k.as_str(), trusted))
        .cloned()
        .collect();
    for k in dropped {
        headers.remove(k);
    }
    let peer_ip = peer.ip().to_string();
    let xff = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.trim().is_empty() => format!("{prev}, {peer_ip}"),
        _ => peer_ip,
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert("x-forwarded-for", v);
    }
    if let Some(h) = host {
        headers.entry("x-forwarded-host").or_insert(h);
    }
    headers
        .entry("x-forwarded-proto")
        .or_insert(HeaderValue::from_static("http"));
}

/// The original host: the single `Host` header, else the request URI's authority (HTTP/2).
pub(crate) fn original_host(
    parts: &http::request::Parts,
) -> Result<Option<HeaderValue>, ProxyError> {
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    let first = hosts.next().cloned();
    if hosts.next().is_some() {
        return Err(ProxyError::BadRequest("more than one Host header"));
    }
    match (first, parts.version) {
        (Some(h), _) => Ok(Some(h)),
        (None, Version::HTTP_2) | (None, Version::HTTP_3) => Ok(parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())),
        (None, Version::HTTP_10) => Ok(None),
        (None, _) => Err(ProxyError::BadRequest("missing Host header")),
    }
}

/// Builds the request sent upstream from the client's request parts.
pub(crate) fn upstream_request(
    original: &http::request::Parts,
    body: UpstreamBody,
    route: &Route,
    corr: &Correlation,
    cfg: &Config,
    host: Option<HeaderValue>,
    peer: SocketAddr,
) -> Result<Request<UpstreamBody>, ProxyError> {
    let path = original.uri.path();
    let rest = if route.strip_prefix {
        let r = &path[route.path_prefix.len().min(path.len())..];
        if r.starts_with('/') {
            r.to_owned()
        } else {
            format!("/{r}")
        }
    } else {
        path.to_owned()
    };
    let mut target = format!("{}{}", route.upstream_base_path, rest);
    if let Some(q) = original.uri.query() {
        target.push('?');
        target.push_str(q);
    }
    let uri = Uri::builder()
        .scheme(route.upstream_scheme.clone())
        .authority(route.upstream_authority.clone())
        .path_and_query(target)
        .build()
        .map_err(|_| ProxyError::BadRequest("request target cannot be forwarded"))?;

    let (ccfg, ucfg) = (&cfg.correlation, &cfg.upstream);
    let mut req = Request::new(body);
    *req.method_mut() = original.method.clone();
    *req.uri_mut() = uri;
    // The client picks HTTP/2 itself when ALPN negotiates it.
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = original.headers.clone();
    let headers = req.headers_mut();
    strip_hop_by_hop(headers);
    headers.remove(header::HOST);
    // The proxy already answered `Expect: 100-continue` by reading the body prefix.
    headers.remove(header::EXPECT);
    if ucfg.preserve_host {
        if let Some(h) = &host {
            headers.insert(header::HOST, h.clone());
        }
    }
    forwarding_headers(headers, peer, host, cfg.server.trusts(peer.ip()));
    if let Ok(v) = HeaderValue::from_str(corr.wire_trace_id()) {
        headers.insert(ccfg.trace_id_header.clone(), v);
    }
    if let Ok(v) = HeaderValue::from_str(&corr.traceparent) {
        headers.insert("traceparent", v);
    }
    Ok(req)
}

/// Classifies a failed upstream exchange (no response headers received).
pub(crate) fn classify(
    err: &hyper_util::client::legacy::Error,
    body_over_limit: Option<u64>,
    client_body_error: Option<&String>,
) -> ProxyError {
    if let Some(limit) = body_over_limit {
        return ProxyError::BodyTooLarge(limit);
    }
    // The client's own body failed first: whatever the exchange reports next is its echo.
    if let Some(e) = client_body_error {
        return ProxyError::ClientBody(format!("mid-upload: {e}"));
    }
    let detail = error_chain(err);
    if is_tls(err) {
        ProxyError::UpstreamTls(detail)
    } else if err.is_connect() {
        ProxyError::UpstreamConnect(detail)
    } else {
        ProxyError::UpstreamAborted(detail)
    }
}

fn is_tls(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if e.downcast_ref::<rustls::Error>().is_some() {
            return true;
        }
        // io::Error's `source()` skips the error it wraps (hyper-rustls wraps rustls's error in
        // two io::Errors), so step into the wrapped error instead.
        cur = match e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_with_ca(pem: &[u8]) -> Result<UpstreamClient, ClientSetupError> {
        let file = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(file.path(), pem).expect("write CA file");
        let toml = format!(
            "[upstream]\nca_file = \"{}\"\ntls_roots = \"none\"\n\n[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"http://127.0.0.1:9\"\nsource_service = \"a\"\ndestination_service = \"b\"\n",
            file.path().display()
        );
        let config = Config::from_toml_str(&toml).expect("config");
        build_client(&config.upstream)
    }

    #[test]
    fn ca_file_certificates_are_read_from_pem() {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
        let pem = cert.cert.pem();
        assert!(client_with_ca(pem.as_bytes()).is_ok());
        // Other PEM sections are skipped, as long as one certificate is there.
        let with_key = format!("{}\n{pem}", cert.signing_key.serialize_pem());
        assert!(client_with_ca(with_key.as_bytes()).is_ok());
    }

    #[test]
    fn ca_file_without_certificates_or_with_a_broken_one_is_refused_by_name() {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
        let only_key = cert.signing_key.serialize_pem();
        let e = client_with_ca(only_key.as_bytes()).expect_err("refused");
        assert!(
            error_chain(&e).contains("no PEM certificates in file"),
            "{e}"
        );
        assert!(
            error_chain(&e).starts_with("cannot read upstream.ca_file "),
            "{e}"
        );
        let broken = "-----BEGIN CERTIFICATE-----\n!!!not base64!!!\n-----END CERTIFICATE-----\n";
        let e = client_with_ca(broken.as_bytes()).expect_err("refused");
        assert!(
            error_chain(&e).starts_with("cannot read upstream.ca_file "),
            "{e}"
        );
    }

    #[test]
    fn look_alikes_of_framing_and_forwarding_headers_are_dropped() {
        for name in [
            "content_length",
            "transfer_encoding",
            "transfer---encoding",
            "content.length",
        ] {
            assert!(dropped_client_header(name, false), "{name}");
            assert!(dropped_client_header(name, true), "{name} (trusted peer)");
        }
        for name in ["x_forwarded_for", "x--forwarded-host", "x-real_ip"] {
            assert!(dropped_client_header(name, true), "{name} (trusted peer)");
        }
        assert!(dropped_client_header("x-forwarded-for", false));
        assert!(!dropped_client_header("x-forwarded-for", true));
        // The real framing headers are the framing code's to handle; neighbours stay.
        for name in [
            "content-length",
            "transfer-encoding",
            "content-type",
            "content-lengths",
            "x-custom_header",
        ] {
            assert!(!dropped_client_header(name, false), "{name}");
        }
    }

    #[test]
    fn strips_standard_and_connection_listed_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Custom-Hop"),
        );
        h.insert("x-custom-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-end-to-end", HeaderValue::from_static("kept"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-end-to-end"));
    }

    #[test]
    fn strips_each_hop_by_hop_header_on_its_own_and_keeps_the_rest() {
        for name in HOP_BY_HOP.iter().chain([&header::UPGRADE]) {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            h.insert(name.clone(), HeaderValue::from_static("x"));
            strip_hop_by_hop(&mut h);
            assert_eq!(h.len(), 1, "{name}: {h:?}");
            assert!(h.contains_key(header::CONTENT_TYPE), "{name}");
        }
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        h.insert("x-end-to-end", HeaderValue::from_static("kept"));
        let before = h.clone();
        strip_hop_by_hop(&mut h);
        assert_eq!(h, before);
    }
}
