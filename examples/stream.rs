//! Streaming measurements for `bench/stream.sh`: an upstream that streams, and a client that
//! times what arrives.
//!
//! - `stream upstream <addr>`: `/big/<bytes>` answers `<bytes>` zero bytes in 64 KiB frames;
//!   `/sse/<events>/<interval_ms>` answers `text/event-stream`, one event every `interval_ms`
//!   whose data is the moment it was sent (nanoseconds since the Unix epoch).
//! - `stream big <url>`: downloads `<url>`, prints `<bytes> <seconds> <MB/s>`.
//! - `stream sse <url> <streams> <pid>`: opens `<streams>` event streams at once (one connection
//!   each), takes every event's delay from its sending to its arrival, and prints
//!   `p50 p99 max` in milliseconds and the number of events; with `<pid>` > 0 also the resident
//!   memory of that process (KiB) once every stream has its first event and at the end.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::too_many_lines,
    clippy::cognitive_complexity,
    unreachable_pub,
    clippy::disallowed_methods,
    reason = "test and measurement code: a failed step should stop it loudly"
)]

#[path = "common/rss.rs"]
mod rss;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Empty, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;

type Body = BoxBody<Bytes, Infallible>;

const FRAME: usize = 64 * 1024;

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_nanos()
}

fn big(bytes: usize) -> Body {
    let zeros = Bytes::from(vec![0u8; FRAME]);
    let frames = futures_util::stream::unfold(bytes, move |left| {
        let zeros = zeros.clone();
        async move {
            (left > 0).then(|| {
                let n = left.min(FRAME);
                (Ok(Frame::data(zeros.slice(..n))), left - n)
            })
        }
    });
    StreamBody::new(frames).boxed()
}

fn sse(events: u32, interval: Duration) -> Body {
    let frames = futures_util::stream::unfold(0u32, move |n| async move {
        if n == events {
            return None;
        }
        tokio::time::sleep(interval).await;
        let event = format!("data: {}\n\n", now_nanos());
        Some((Ok(Frame::data(Bytes::from(event))), n + 1))
    });
    StreamBody::new(frames).boxed()
}

async fn answer(req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let parts: Vec<&str> = req.uri().path().split('/').skip(1).collect();
    let mut resp = match parts.as_slice() {
        ["big", n] => Response::new(big(n.parse().unwrap_or(0))),
        ["sse", events, ms] => {
            let mut r = Response::new(sse(
                events.parse().unwrap_or(1),
                Duration::from_millis(ms.parse().unwrap_or(100)),
            ));
            r.headers_mut()
                .insert("content-type", "text/event-stream".parse().expect("value"));
            r
        }
        _ => Response::new(Empty::new().boxed()),
    };
    resp.headers_mut()
        .insert("cache-control", "no-cache".parse().expect("value"));
    Ok(resp)
}

async fn upstream(addr: &str) {
    let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let _ = Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service_fn(answer))
                .await;
        });
    }
}

type Http = Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

fn client() -> Http {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn download(url: &str) {
    let started = Instant::now();
    let resp = client()
        .get(url.parse().expect("url"))
        .await
        .expect("response");
    let mut body = resp.into_body();
    let mut bytes = 0usize;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.expect("body").into_data() {
            bytes += data.len();
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!("{bytes} {secs:.3} {:.1}", bytes as f64 / secs / 1e6);
}

/// Reads one event stream; the delay of each event in nanoseconds. Signals `first` once.
async fn read_stream(client: Http, url: String, first: Arc<tokio::sync::Barrier>) -> Vec<u128> {
    let resp = client.get(url.parse().expect("url")).await.expect("stream");
    let mut body = resp.into_body();
    let mut delays = Vec::new();
    let mut pending = String::new();
    let mut signalled = false;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.expect("stream body").into_data() else {
            continue;
        };
        let arrived = now_nanos();
        pending.push_str(std::str::from_utf8(&data).expect("utf-8"));
        while let Some(end) = pending.find("\n\n") {
            let event: String = pending.drain(..end + 2).collect();
            if let Some(sent) = event.trim().strip_prefix("data: ") {
                let sent: u128 = sent.parse().expect("timestamp");
                delays.push(arrived.saturating_sub(sent));
            }
        }
        if !signalled && !delays.is_empty() {
            signalled = true;
            first.wait().await;
        }
    }
    if !signalled {
        first.wait().await;
    }
    delays
}

async fn streams(url: &str, n: usize, pid: u32) {
    let first = Arc::new(tokio::sync::Barrier::new(n + 1));
    let mut tasks = Vec::new();
    for _ in 0..n {
        // One client (so one connection) per stream, like separate browsers.
        tasks.push(tokio::spawn(read_stream(
            client(),
            url.to_owned(),
            first.clone(),
        )));
    }
    first.wait().await;
    let open = (pid > 0).then(|| rss::rss_kib(pid));
    let mut delays = Vec::new();
    for t in tasks {
        delays.extend(t.await.expect("stream task"));
    }
    let end = (pid > 0).then(|| rss::rss_kib(pid));
    delays.sort_unstable();
    let pct = |p: f64| {
        let i = ((delays.len() as f64 - 1.0) * p).round() as usize;
        delays.get(i).copied().unwrap_or(0) as f64 / 1e6
    };
    let max = delays.last().copied().unwrap_or(0) as f64 / 1e6;
    print!("{:.3} {:.3} {max:.3} {}", pct(0.5), pct(0.99), delays.len());
    match (open, end) {
        (Some(a), Some(b)) => println!(" {a} {b}"),
        _ => println!(),
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or_default();
    match arg(1) {
        "upstream" => upstream(arg(2)).await,
        "big" => download(arg(2)).await,
        "sse" => {
            streams(
                arg(2),
                arg(3).parse().expect("streams"),
                arg(4).parse().unwrap_or(0),
            )
            .await;
        }
        _ => {
            eprintln!("usage: stream upstream <addr> | big <url> | sse <url> <streams> [pid]");
            std::process::exit(2);
        }
    }
}
