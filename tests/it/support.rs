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
    pub metrics: Arc<Metrics>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Proxy {
    /// Starts the proxy with `toml` (a complete config; `server.listen` is ignored).
    pub async fn start(toml: &str) -> Proxy {
        let config = Config::from_toml_str(toml).unwrap_or_else(|e| panic!("test config: {e}"));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("addr");
        let metrics = Arc::new(Metrics::default());
        let (stop, stopped) = oneshot::channel::<()>();
        let m = metrics.clone();
        let task = tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            trace_proxy::run_with_metrics(listener, Arc::new(config), m, shutdown)
                .await
                .expect("proxy run");
        });
        Proxy {
            addr,
            metrics,
            stop: Some(stop),
            task: Some(task),
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
    format!(
        r#"
[database]
url = "{url}"
insert_timeout_ms = 5000
[capture]
max_payload_bytes = 1024
{extra}
[[routes]]
name = "n8n"
path_prefix = "/"
upstream = "http://{upstream}"
source_service = "bilko-app"
destination_service = "n8n"
action = "trigger-workflow"
"#,
        url = db.url()
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
