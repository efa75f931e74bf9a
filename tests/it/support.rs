//! Test harness: a schema per test on real PostgreSQL, a real hyper upstream and the real proxy,
//! all on 127.0.0.1 ephemeral ports.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_postgres::{NoTls, Row};
use trace_proxy::metrics::Metrics;
use trace_proxy::Config;

pub type Body = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// Environment variables of the test run that would change what a spawned `trace-proxy`
/// binary reads (its configuration file, overlay, overrides, log level): removed from it.
pub const CONFIG_ENV: [&str; 9] = [
    "TRACE_PROXY_CONFIG",
    "TRACE_PROXY_STATE_DIR",
    "TRACE_PROXY_ENV",
    "TRACE_PROXY_DATABASE_URL",
    "TRACE_PROXY_LISTEN",
    "TRACE_PROXY_ADMIN_TOKEN",
    "TRACE_PROXY_SPOOL_DIR",
    "DATABASE_URL",
    "RUST_LOG",
];

/// The server the tests use; `TRACE_PROXY_TEST_DATABASE_URL` overrides.
pub fn admin_url() -> String {
    std::env::var("TRACE_PROXY_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A private schema; dropped when the value is dropped.
pub struct TestDb {
    pub schema: String,
    pub client: tokio_postgres::Client,
}

impl TestDb {
    pub async fn new() -> TestDb {
        let schema = format!("tp_test_{}", uuid::Uuid::new_v4().simple());
        let admin = connect(&admin_url()).await;
        admin
            .batch_execute(&format!("CREATE SCHEMA {schema}"))
            .await
            .expect("create schema");
        let client = connect(&Self::url_for(&schema)).await;
        TestDb { schema, client }
    }

    /// A connection URL whose sessions use this schema.
    pub fn url(&self) -> String {
        Self::url_for(&self.schema)
    }

    fn url_for(schema: &str) -> String {
        let base = admin_url();
        let sep = if base.contains('?') { '&' } else { '?' };
        format!("{base}{sep}options=-c%20search_path%3D{schema}")
    }

    pub async fn rows(&self, sql: &str) -> Vec<Row> {
        self.client.query(sql, &[]).await.expect("query")
    }

    /// All rows of a trace, oldest attempt first.
    pub async fn trace_rows(&self, trace_id: &str) -> Vec<Row> {
        self.client
            .query(
                "SELECT * FROM communication_traces WHERE trace_id = $1 ORDER BY attempt_number, requested_at",
                &[&trace_id],
            )
            .await
            .expect("query")
    }

    /// Waits until the trace's rows are all final (not pending/in_progress) and there are `n`.
    pub async fn final_rows(&self, trace_id: &str, n: usize) -> Vec<Row> {
        let mut last = Vec::new();
        for _ in 0..200 {
            last = self.trace_rows(trace_id).await;
            let done = last
                .iter()
                .all(|r| matches!(r.get::<_, &str>("overall_status"), "success" | "failed"));
            if last.len() == n && done {
                return last;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!(
            "trace {trace_id}: expected {n} final rows, got {:?}",
            last.iter()
                .map(|r| r.get::<_, String>("overall_status"))
                .collect::<Vec<_>>()
        );
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let schema = self.schema.clone();
        // Async drop is not available; a short-lived thread with its own runtime does it.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(rt) = rt {
                rt.block_on(async move {
                    if let Ok((c, conn)) = tokio_postgres::connect(&admin_url(), NoTls).await {
                        tokio::spawn(conn);
                        let _ = c
                            .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                            .await;
                    }
                });
            }
        })
        .join();
    }
}

pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .expect("connect to PostgreSQL");
    tokio::spawn(conn);
    client
}

pub fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into()).map_err(|e| match e {}).boxed()
}

/// Starts an HTTP/1.1 + h2c upstream on 127.0.0.1:0 answering with `handler`.
pub async fn upstream<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler(req).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// An upstream that numbers the requests it receives (0, 1, …) and answers request `n` with
/// `respond(n)`; returns its address and the number of requests so far.
pub async fn counting_upstream<F, Fut>(
    respond: F,
) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>)
where
    F: Fn(usize) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let h = hits.clone();
    let addr = upstream(move |_req| {
        let n = h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        respond(n)
    })
    .await;
    (addr, hits)
}

/// A closed port: bound, then released.
pub async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let a = l.local_addr().expect("addr");
    drop(l);
    a
}

/// A running proxy.
pub struct Proxy {
    pub addr: SocketAddr,
    /// The admin listener, when started with [`Proxy::start_with_admin`].
    pub admin: Option<SocketAddr>,
    pub metrics: Arc<Metrics>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    /// The spool directory of a config that left `spool.dir` at its default.
    _spool: Option<tempfile::TempDir>,
}

impl Proxy {
    /// Starts the proxy with `toml` (a complete config; `server.listen` is ignored).
    pub async fn start(toml: &str) -> Proxy {
        Self::launch(toml, false).await
    }

    /// [`Proxy::start`] plus the admin listener, also on 127.0.0.1:0.
    pub async fn start_with_admin(toml: &str) -> Proxy {
        Self::launch(toml, true).await
    }

    async fn launch(toml: &str, with_admin: bool) -> Proxy {
        let mut config = Config::from_toml_str(toml).unwrap_or_else(|e| panic!("test config: {e}"));
        // Each proxy gets a spool directory of its own unless the test chose one.
        let default_dir = config.server.state_dir.join("spool");
        let spool = (config.spool.dir == default_dir).then(|| {
            let dir = tempfile::tempdir().expect("spool tempdir");
            config.spool.dir = dir.path().to_owned();
            dir
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("addr");
        let admin_listener = match with_admin {
            true => Some(TcpListener::bind("127.0.0.1:0").await.expect("bind admin")),
            false => None,
        };
        let admin = admin_listener
            .as_ref()
            .map(|l| l.local_addr().expect("addr"));
        let metrics = Arc::new(Metrics::default());
        let (stop, stopped) = oneshot::channel::<()>();
        let m = metrics.clone();
        let task = tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            trace_proxy::run_with(listener, admin_listener, Arc::new(config), m, shutdown)
                .await
                .expect("proxy run");
        });
        Proxy {
            addr,
            admin,
            metrics,
            stop: Some(stop),
            task: Some(task),
            _spool: spool,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Graceful stop: returns once the proxy has drained and written its rows.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    }
}

/// The config for one route to `upstream`, recording into `db`, plus `extra` TOML.
pub fn config(db: &TestDb, upstream: SocketAddr, extra: &str) -> String {
    config_toml(&db.url(), &format!("http://{upstream}"), "", extra)
}

/// A whole test config: `db_extra` goes into `[database]` (an insert timeout of 5 s unless it
/// sets one), `extra` after `[capture]` (it may open tables of its own), then one route `n8n`
/// to `upstream_url`.
pub fn config_toml(db_url: &str, upstream_url: &str, db_extra: &str, extra: &str) -> String {
    let insert_timeout = match db_extra.contains("insert_timeout_ms") {
        true => "",
        false => "insert_timeout_ms = 5000",
    };
    format!(
        r#"
[database]
url = "{db_url}"
{insert_timeout}
{db_extra}
[capture]
max_payload_bytes = 1024
{extra}
[[routes]]
name = "n8n"
path_prefix = "/"
upstream = "{upstream_url}"
source_service = "bilko-app"
destination_service = "n8n"
action = "trigger-workflow"
"#
    )
}

pub type TestClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

pub fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Sends a request and reads the whole answer.
pub async fn send(req: Request<Full<Bytes>>) -> (http::response::Parts, Bytes) {
    let resp = client().request(req).await.expect("request through proxy");
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await.expect("response body").to_bytes();
    (parts, bytes)
}

pub fn post(url: &str, trace_id: &str, body: &'static str) -> Request<Full<Bytes>> {
    Request::post(url)
        .header("x-trace-id", trace_id)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .expect("request")
}

pub fn get(url: &str, trace_id: &str) -> Request<Full<Bytes>> {
    Request::get(url)
        .header("x-trace-id", trace_id)
        .body(Full::new(Bytes::new()))
        .expect("request")
}

pub fn new_trace_id() -> String {
    format!("t-{}", uuid::Uuid::new_v4().simple())
}

/// What an upstream saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub version: http::Version,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// Every request a recording upstream received, in arrival order.
pub type SeenLog = Arc<std::sync::Mutex<Vec<Seen>>>;

type BoxedResponse = std::pin::Pin<Box<dyn Future<Output = Response<Body>> + Send>>;

/// A handler that records each request (reading its whole body), then answers `respond()`.
fn record_then(
    log: SeenLog,
    respond: fn() -> Response<Body>,
) -> impl Fn(Request<Incoming>) -> BoxedResponse + Clone + Send + Sync + 'static {
    move |req: Request<Incoming>| {
        let log = log.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let body = body.collect().await.expect("request body").to_bytes();
            log.lock().expect("lock").push(Seen {
                version: parts.version,
                headers: parts.headers,
                body,
            });
            respond()
        }) as BoxedResponse
    }
}

/// An HTTP/1.1 + h2c upstream that records every request and answers `respond()`.
pub async fn recording_upstream(respond: fn() -> Response<Body>) -> (SocketAddr, SeenLog) {
    let log = SeenLog::default();
    (upstream(record_then(log.clone(), respond)).await, log)
}

/// The request the upstream saw with this `x-trace-id`.
pub fn seen_with_trace(log: &SeenLog, trace_id: &str) -> Seen {
    let seen = log.lock().expect("lock");
    seen.iter()
        .find(|s| s.headers.get("x-trace-id").is_some_and(|v| v == trace_id))
        .cloned()
        .unwrap_or_else(|| panic!("upstream never saw trace {trace_id}"))
}

/// A private CA and a server certificate it signed for `localhost` and `127.0.0.1`.
pub struct TestPki {
    pub ca_pem: String,
    pub server: Arc<rustls::ServerConfig>,
}

pub fn localhost_pki() -> TestPki {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "trace-proxy test CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).expect("CA cert");
    let issuer = Issuer::new(ca, ca_key);

    let leaf_key = KeyPair::generate().expect("server key");
    let mut leaf = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .expect("server params");
    leaf.distinguished_name
        .push(DnType::CommonName, "localhost");
    leaf.use_authority_key_identifier_extension = true;
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).expect("server cert");

    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
    let mut server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_no_client_auth()
    .with_single_cert(vec![leaf_cert.der().clone()], key)
    .expect("server TLS config");
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    TestPki {
        ca_pem: ca_cert.pem(),
        server: Arc::new(server),
    }
}

/// An HTTPS upstream (HTTP/2 or HTTP/1.1 by ALPN) on 127.0.0.1:0 that records every request.
pub async fn recording_tls_upstream(
    tls: Arc<rustls::ServerConfig>,
    respond: fn() -> Response<Body>,
) -> (SocketAddr, SeenLog) {
    let log = SeenLog::default();
    let handler = record_then(log.clone(), respond);
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind TLS upstream");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, handler) = (acceptor.clone(), handler.clone());
            tokio::spawn(async move {
                // A failed handshake (untrusted client) just ends this connection.
                let Ok(stream) = acceptor.accept(stream).await else {
                    return;
                };
                let svc = hyper::service::service_fn(move |req| {
                    let fut = handler(req);
                    async move { Ok::<_, Infallible>(fut.await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, log)
}

/// [`config`] with the route's upstream given as a whole base URL (e.g. `https://localhost:1`).
pub fn config_with_upstream_url(db: &TestDb, upstream_url: &str, extra: &str) -> String {
    config_toml(&db.url(), upstream_url, "", extra)
}

/// A response read off a raw connection.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    /// Names lowercased, in wire order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The only value of header `name`; panics if it appears more than once.
    pub fn header(&self, name: &str) -> Option<&str> {
        let mut values = self.headers.iter().filter(|(n, _)| n == name);
        let first = values.next().map(|(_, v)| v.as_str());
        assert!(values.next().is_none(), "header {name} repeated: {self:?}");
        first
    }
}

/// Writes `request` verbatim to `addr` (send `Connection: close`) and reads the response to EOF.
pub async fn raw_http(addr: SocketAddr, request: &str) -> RawResponse {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("write request");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .expect("response within 10 s (did the request say Connection: close?)")
        .expect("read response");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(&raw)));
    let head = std::str::from_utf8(&raw[..split]).expect("ASCII response head");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    RawResponse {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    }
}

/// Waits until the proxy's startup migrations have created `communication_traces`.
pub async fn wait_for_migrations(db: &TestDb) {
    for _ in 0..200 {
        let rows = db
            .rows("SELECT to_regclass('communication_traces') IS NOT NULL")
            .await;
        if rows[0].get::<_, bool>(0) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("communication_traces was not created within 5 s");
}

/// True for a W3C `traceparent` (version 00, lowercase hex, non-zero ids).
pub fn is_w3c_traceparent(v: &str) -> bool {
    let parts: Vec<&str> = v.split('-').collect();
    let hex = |s: &str, n: usize| {
        s.len() == n && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    matches!(parts.as_slice(), [ver, trace, parent, flags]
        if *ver == "00" && hex(trace, 32) && hex(parent, 16) && hex(flags, 2)
            && trace.bytes().any(|b| b != b'0') && parent.bytes().any(|b| b != b'0'))
}

/// True for a generated W3C trace id: 32 lowercase hex digits.
pub fn is_w3c_trace_id(v: &str) -> bool {
    v.len() == 32 && v.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}
