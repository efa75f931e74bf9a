//! The accept loop both listeners use: accepts connections (bounded), serves HTTP/1.1 and, where
//! enabled, HTTP/2 (prior knowledge) on each, stops accepting when shutdown begins and drains open
//! connections until the shutdown deadline. Knows nothing of PostgreSQL.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::error::Chain;
use crate::proxy::{self, App};
use crate::shutdown::Shutdown;
use crate::stall::{InFlight, RequestGuard, StallGuard};

/// Largest request head buffered per connection (HTTP/1.1 read buffer, HTTP/2 header list): a
/// head still incomplete at this size is refused, so idle half-sent heads cannot pile up memory.
const MAX_HEAD_BUFFER: usize = 64 * 1024;
/// HTTP/2 keep-alive: a ping this often, and the connection closed when one goes unanswered
/// this long (a vanished peer does not hold its slot).
const H2_PING_EVERY: Duration = Duration::from_secs(20);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);

/// How a listener treats its connections.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    /// Which listener, in log lines.
    pub name: &'static str,
    /// Open connections at most; more wait in the accept queue.
    pub max_connections: usize,
    /// Time a client has to send a request head (HTTP/1.1).
    pub header_read_timeout: Duration,
    /// Also serve HTTP/2 with prior knowledge (h2c).
    pub http2: bool,
    /// A write to the client that makes no progress this long fails (the client stopped reading).
    pub send_timeout: Duration,
    /// An HTTP/2 connection with no request in flight this long is closed.
    pub idle_timeout: Duration,
}

/// Waits for the connection's first bytes until `within` (or shutdown): `None` when none came,
/// else whether they are the HTTP/2 preface.
async fn first_bytes(
    stream: &tokio::net::TcpStream,
    within: Duration,
    stop: &tokio_util::sync::CancellationToken,
) -> Option<bool> {
    let mut byte = [0u8; 1];
    let first = tokio::select! {
        r = tokio::time::timeout(within, stream.peek(&mut byte)) => matches!(r, Ok(Ok(n)) if n > 0),
        () = stop.cancelled() => false,
    };
    match first {
        false => None,
        true => Some(byte[0] == b'P' && is_h2_preface(stream, within).await),
    }
}

/// True when the connection starts with the HTTP/2 preface (`PRI * HTTP/2.0…`), read without
/// consuming it, within `within`.
async fn is_h2_preface(stream: &tokio::net::TcpStream, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    let mut head = [0u8; 4];
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut head)).await {
            Ok(Ok(n)) => n,
            _ => return false,
        };
        if n == head.len() || !b"PRI ".starts_with(&head[..n]) {
            return &head[..n] == b"PRI ";
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request counted as in flight until it is done.
    pub(crate) struct Tracked<B> {
        #[pin]
        body: B,
        _guard: Option<RequestGuard>,
    }
}

impl<B: Body> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<B::Data>, B::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// Serves the proxy on `listener` until shutdown begins, then lets open connections finish their
/// in-flight requests until the shutdown's cut-off; what is still open then is cut, and its
/// attempts are recorded as interrupted in the time left.
pub(crate) async fn serve(listener: TcpListener, app: Arc<App>, shutdown: &Shutdown) {
    let cfg = &app.config.server;
    let limits = Limits {
        name: "proxy",
        max_connections: cfg.max_connections,
        header_read_timeout: cfg.header_read_timeout,
        http2: true,
        send_timeout: cfg.send_timeout,
        idle_timeout: cfg.idle_timeout,
    };
    let handler = {
        let app = app.clone();
        move |req, peer| proxy::handle(app.clone(), req, peer)
    };
    let open = accept(listener, &limits, shutdown, handler).await;
    open.drain(shutdown, || {
        app.interrupting
            .store(true, std::sync::atomic::Ordering::Relaxed)
    })
    .await;
    // Tunnels closed when shutdown began; their rows are finished once their tasks end.
    app.tunnels.close();
    if shutdown.within(app.tunnels.wait()).await.is_none() {
        tracing::warn!(
            open = app.tunnels.len(),
            "tunnels still closing at the shutdown deadline"
        );
    }
}

/// Connections still open when a listener stopped accepting.
pub(crate) struct Open {
    name: &'static str,
    graceful: GracefulShutdown,
    conns: JoinSet<()>,
}

impl Open {
    /// Waits until the open connections finish their in-flight requests or the shutdown's cut-off
    /// passes; then calls `on_deadline` and cuts what is left. True when all finished in time.
    pub(crate) async fn drain(mut self, shutdown: &Shutdown, on_deadline: impl FnOnce()) -> bool {
        tracing::info!(
            listener = self.name,
            open = self.graceful.count(),
            "shutting down: draining connections"
        );
        let drained = shutdown
            .before_cut_off(self.graceful.shutdown())
            .await
            .is_some();
        if !drained {
            tracing::warn!(
                listener = self.name,
                open = self.conns.len(),
                "shutdown deadline passed: interrupting open exchanges"
            );
            on_deadline();
            self.conns.abort_all();
        }
        while self.conns.join_next().await.is_some() {}
        drained
    }
}

/// The connection builder of a listener: HTTP/1.1 with the head deadline and buffer cap, and
/// HTTP/2 with keep-alive pings where enabled.
fn builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(MAX_HEAD_BUFFER)
        .keep_alive(true);
    if limits.http2 {
        builder
            .http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(Some(H2_PING_EVERY))
            .keep_alive_timeout(H2_PING_TIMEOUT)
            .max_header_list_size(MAX_HEAD_BUFFER as u32);
    } else {
        builder = builder.http1_only();
    }
    builder
}

/// Accepts connections on `listener` and serves each with `handler` until `shutdown` begins;
/// returns the connections still open.
pub(crate) async fn accept<H, F, B>(
    listener: TcpListener,
    limits: &Limits,
    shutdown: &Shutdown,
    handler: H,
) -> Open
where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // One builder, shared by every connection's task.
    let builder = Arc::new(builder(limits));
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut conns = JoinSet::new();
    let stop = shutdown.token();
    loop {
        // Reap finished connections so the set stays as small as the open ones.
        while conns.try_join_next().is_some() {}
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = stop.cancelled() => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(conn) => conn,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(listener = limits.name, error = %Chain(&e), "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let (first_byte, send_timeout) = (limits.header_read_timeout, limits.send_timeout);
        let handler = handler.clone();
        let idle_timeout = limits.idle_timeout;
        let builder = Arc::clone(&builder);
        let watcher = graceful.watcher();
        let stop = stop.clone();
        let name = limits.name;
        conns.spawn(async move {
            // The request head's deadline starts only after hyper has told HTTP/1 from HTTP/2,
            // which waits for bytes with no timer of its own: a client that sends nothing is
            // cut here, and its slot freed.
            let Some(h2) = first_bytes(&stream, first_byte, &stop).await else {
                tracing::debug!(listener = name, %peer, "nothing sent within the header deadline; closed");
                drop(permit);
                return;
            };
            // Requests are counted only where the count is used: HTTP/2's idle timeout.
            let in_flight = h2.then(InFlight::new);
            let mut io = StallGuard::new(TokioIo::new(stream), send_timeout);
            if let Some(f) = &in_flight {
                io = io.with_idle_timeout(f.clone(), idle_timeout);
            }
            let service = service_fn(move |req| {
                // In flight until its response body is done (or dropped).
                let guard = in_flight.as_ref().map(InFlight::begin);
                let answer = handler(req, peer);
                async move {
                    let resp = answer.await;
                    Ok::<_, Infallible>(resp.map(|body| Tracked {
                        body,
                        _guard: guard,
                    }))
                }
            });
            let conn = builder
                .serve_connection_with_upgrades(io, service)
                .into_owned();
            let result = watcher.watch(conn).await;
            if let Err(e) = result {
                tracing::debug!(listener = name, %peer, error = %Chain(&*e), "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    Open {
        name: limits.name,
        graceful,
        conns,
    }
}
