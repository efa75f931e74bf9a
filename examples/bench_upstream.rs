//! Stand-in upstream for the benchmark in `bench/run.sh`.
//!
//! Usage: `bench_upstream <listen-addr>` (for example `127.0.0.1:18081`).
//!
//! Every request is answered with `200 OK`, `content-type: application/json`
//! and a fixed small JSON body, after the request body has been read to the
//! end. It does as little work as possible so that the benchmark measures the
//! proxy in front of it, not this server.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::too_many_lines,
    clippy::cognitive_complexity,
    unreachable_pub,
    clippy::disallowed_methods,
    reason = "test and measurement code: a failed step should stop it loudly"
)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use tokio::net::TcpListener;

const BODY: &[u8] = br#"{"ok":true,"executionId":"bench-1"}"#;

async fn handle(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    // Drain the request body so keep-alive connections stay usable and the
    // proxy sees the same behaviour as from a real upstream.
    let status = match req.into_body().collect().await {
        Ok(_) => StatusCode::OK,
        Err(_) => StatusCode::BAD_REQUEST,
    };
    let mut resp = Response::new(Full::new(Bytes::from_static(BODY)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(resp)
}

fn parse_args() -> SocketAddr {
    let mut args = std::env::args().skip(1);
    let (Some(addr), None) = (args.next(), args.next()) else {
        eprintln!("usage: bench_upstream <listen-addr>   (e.g. 127.0.0.1:18081)");
        std::process::exit(2);
    };
    match addr.parse() {
        Ok(addr) => addr,
        Err(e) => {
            eprintln!("bench_upstream: invalid listen address {addr:?}: {e}");
            std::process::exit(2);
        }
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let addr = parse_args();
    let listener = match TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("bench_upstream: cannot listen on {addr}: {e}");
            std::process::exit(1);
        }
    };
    eprintln!("bench_upstream: listening on {addr}");

    // HTTP/1.1 keep-alive is on by default; set it explicitly because the
    // benchmark depends on it.
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http1().keep_alive(true);
    let builder = Arc::new(builder);

    loop {
        let stream = match listener.accept().await {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                // Typically EMFILE under load: back off briefly instead of
                // spinning or dying.
                eprintln!("bench_upstream: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Small request/response pairs: don't let Nagle delay them.
        let _ = stream.set_nodelay(true);
        let builder = Arc::clone(&builder);
        tokio::spawn(async move {
            let io = TokioIo::new(stream);
            // Errors here are client disconnects and the like; nothing to do.
            let _ = builder.serve_connection(io, service_fn(handle)).await;
        });
    }
}
