//! Traffic for `bench/soak.sh`: a stand-in n8n and a mixed load that keeps a ledger.
//!
//! - `soak upstream <listen-addr>`: answers by path — `/webhook/normal` at once, `/webhook/slow`
//!   after 1.5 s, `/webhook/stream` as 20 JSON lines 50 ms apart, `/webhook/echo` with the request
//!   body (poison in, poison out), and any request carrying `x-soak-fail: 1` with a 503.
//! - `soak load <proxy-url> <seconds> <workers> <ledger-file>`: `workers` loops, each sending one
//!   kind of request after another until `seconds` have passed: normal POSTs and GETs, slow ones,
//!   streams, requests the client abandons after 300 ms, poisoned bodies (NUL, invalid UTF-8,
//!   10,000-deep nesting, a password) and client retries (a 503 first, then the same
//!   `X-Trace-Id` again). Each request becomes one ledger line:
//!   `kind,trace_id,attempt,status,answered` — `attempt` from `X-Attempt-Number`, `status` the
//!   HTTP status the client read (0: none), `answered` 1 when the whole response arrived.
//!   Requests refused while the proxy restarts are part of the traffic, not failures; after one,
//!   the worker waits 100 ms.

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
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;

type Body = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|e| match e {}).boxed()
}

fn json(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert("content-type", "application/json".parse().expect("value"));
    r
}

/// Twenty JSON lines, 50 ms apart, in the shape of n8n's streaming mode.
fn stream_body() -> Body {
    let lines = futures_util::stream::unfold(0u32, |n| async move {
        if n == 20 {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let line =
            format!("{{\"type\":\"item\",\"content\":\"chunk {n}\",\"executionId\":\"soak\"}}\n");
        Some((Ok(Frame::data(Bytes::from(line))), n + 1))
    });
    StreamBody::new(lines).boxed()
}

async fn answer(req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let fail = req.headers().contains_key("x-soak-fail");
    let path = req.uri().path().to_owned();
    let Ok(body) = req.into_body().collect().await else {
        return Ok(json(StatusCode::BAD_REQUEST, "{\"error\":\"body\"}"));
    };
    if fail {
        return Ok(json(
            StatusCode::SERVICE_UNAVAILABLE,
            "{\"error\":\"try again\"}",
        ));
    }
    Ok(match path.as_str() {
        "/webhook/slow" => {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            json(StatusCode::OK, "{\"ok\":true,\"slow\":true}")
        }
        "/webhook/stream" => {
            let mut r = Response::new(stream_body());
            r.headers_mut().insert(
                "content-type",
                "application/json-lines".parse().expect("value"),
            );
            r
        }
        "/webhook/echo" => json(StatusCode::OK, body.to_bytes()),
        _ => json(StatusCode::OK, "{\"ok\":true,\"executionId\":\"soak-1\"}"),
    })
}

async fn upstream(addr: &str) {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .expect("bind upstream");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let _ = Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service_fn(answer))
                .await;
        });
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Normal,
    Get,
    Slow,
    Stream,
    Abandoned,
    Poisoned,
    Retried,
}

impl Kind {
    /// Out of every ten requests: three normal POSTs, one GET, one slow, one stream, one
    /// abandoned, one poisoned, two retried traces.
    fn nth(n: u64) -> Kind {
        match n % 10 {
            0..=2 => Kind::Normal,
            3 => Kind::Get,
            4 => Kind::Slow,
            5 => Kind::Stream,
            6 => Kind::Abandoned,
            7 => Kind::Poisoned,
            _ => Kind::Retried,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Normal => "normal",
            Kind::Get => "get",
            Kind::Slow => "slow",
            Kind::Stream => "stream",
            Kind::Abandoned => "abandoned",
            Kind::Poisoned => "poisoned",
            Kind::Retried => "retried",
        }
    }
}

/// A body that is valid JSON at no point: NUL, invalid UTF-8, a lone surrogate escape, a
/// password, then 10,000 unclosed arrays.
fn poison() -> Bytes {
    let mut b = br#"{"password":"hunter2-soak","nul":"a"#.to_vec();
    b.extend([0, 0xff, 0xfe]);
    b.extend(br#"","s":"\ud800","deep":"#);
    b.extend(std::iter::repeat_n(b'[', 10_000));
    Bytes::from(b)
}

struct Outcome {
    attempt: String,
    status: u16,
    answered: bool,
}

type Http = Client<HttpConnector, Full<Bytes>>;

async fn send(client: &Http, req: Request<Full<Bytes>>, give_up: Option<Duration>) -> Outcome {
    let exchange = async {
        let resp = client.request(req).await.map_err(|_| (String::new(), 0))?;
        let attempt = resp
            .headers()
            .get("x-attempt-number")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let status = resp.status().as_u16();
        match resp.into_body().collect().await {
            Ok(_) => Ok((attempt, status)),
            Err(_) => Err((attempt, status)),
        }
    };
    let limit = give_up.unwrap_or(Duration::from_secs(60));
    match tokio::time::timeout(limit, exchange).await {
        Ok(Ok((attempt, status))) => Outcome {
            attempt,
            status,
            answered: true,
        },
        Ok(Err((attempt, status))) => Outcome {
            attempt,
            status,
            answered: false,
        },
        Err(_) => Outcome {
            attempt: String::new(),
            status: 0,
            answered: false,
        },
    }
}

fn request(base: &str, method: &str, path: &str, trace: &str) -> http::request::Builder {
    Request::builder()
        .method(method)
        .uri(format!("{base}{path}"))
        .header("x-trace-id", trace)
        .header("x-workflow-id", "soak")
        .header("x-user-id", "soak-user")
        .header("content-type", "application/json")
}

type Ledger = Arc<Mutex<std::io::BufWriter<std::fs::File>>>;

fn record(ledger: &Ledger, kind: Kind, trace: &str, o: &Outcome) {
    let mut w = ledger.lock().expect("ledger");
    writeln!(
        w,
        "{},{trace},{},{},{}",
        kind.name(),
        o.attempt,
        o.status,
        u8::from(o.answered)
    )
    .expect("ledger write");
}

async fn one(client: &Http, base: &str, kind: Kind, ledger: &Ledger) {
    let trace = uuid::Uuid::new_v4().simple().to_string();
    let build = |method: &str, path: &str, body: Bytes| {
        request(base, method, path, &trace)
            .body(Full::new(body))
            .expect("request")
    };
    let small = Bytes::from_static(br#"{"order":42,"api_key":"sk-soak-0123456789abcdef"}"#);
    let outcome = match kind {
        Kind::Normal => send(client, build("POST", "/webhook/normal", small), None).await,
        Kind::Get => send(client, build("GET", "/webhook/normal", Bytes::new()), None).await,
        Kind::Slow => send(client, build("POST", "/webhook/slow", small), None).await,
        Kind::Stream => send(client, build("GET", "/webhook/stream", Bytes::new()), None).await,
        Kind::Abandoned => {
            let req = build("POST", "/webhook/slow", small);
            send(client, req, Some(Duration::from_millis(300))).await
        }
        Kind::Poisoned => send(client, build("POST", "/webhook/echo", poison()), None).await,
        Kind::Retried => {
            let mut first = build("POST", "/webhook/normal", small.clone());
            first
                .headers_mut()
                .insert("x-soak-fail", "1".parse().expect("value"));
            let o = send(client, first, None).await;
            record(ledger, kind, &trace, &o);
            send(client, build("POST", "/webhook/normal", small), None).await
        }
    };
    record(ledger, kind, &trace, &outcome);
    // Nothing came back (the proxy is restarting): do not spin on refused connections.
    if outcome.status == 0 && !matches!(kind, Kind::Abandoned) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn load(base: String, seconds: u64, workers: u64, ledger_path: &str) {
    let file = std::fs::File::create(ledger_path).expect("ledger file");
    let ledger: Ledger = Arc::new(Mutex::new(std::io::BufWriter::new(file)));
    let client: Http = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(5))
        .build_http();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (client, base, ledger) = (client.clone(), base.clone(), ledger.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = w;
            while Instant::now() < deadline {
                one(&client, &base, Kind::nth(n), &ledger).await;
                n += 1;
            }
        }));
    }
    for t in tasks {
        t.await.expect("worker");
    }
    ledger
        .lock()
        .expect("ledger")
        .flush()
        .expect("ledger flush");
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("upstream") => upstream(args.get(2).expect("listen address")).await,
        Some("load") => {
            let base = args
                .get(2)
                .expect("proxy URL")
                .trim_end_matches('/')
                .to_owned();
            let seconds = args.get(3).and_then(|s| s.parse().ok()).expect("seconds");
            let workers = args.get(4).and_then(|s| s.parse().ok()).expect("workers");
            load(base, seconds, workers, args.get(5).expect("ledger file")).await;
        }
        _ => {
            eprintln!(
                "usage: soak upstream <addr> | soak load <proxy-url> <seconds> <workers> <ledger>"
            );
            std::process::exit(2);
        }
    }
}
