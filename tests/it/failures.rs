//! Failures: upstream down/slow/reset, client abort, store unavailable, limits, streaming.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::support::*;

/// A response body fed frame by frame through the returned sender; ends when it is dropped.
fn channel_body() -> (mpsc::Sender<Bytes>, Body) {
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| {
            (
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(b)),
                rx,
            )
        })
    });
    (tx, StreamBody::new(stream).boxed())
}

/// A config recording into `db_url` (which may be unreachable, so with short store timeouts)
/// with one route to `upstream`; `db_extra` goes into `[database]`.
fn config_at(db_url: &str, upstream: SocketAddr, db_extra: &str) -> String {
    let db_extra = format!("connect_timeout_ms = 500\npool_wait_timeout_ms = 500\n{db_extra}");
    config_toml(db_url, &format!("http://{upstream}"), &db_extra, "")
}

#[tokio::test]
async fn upstream_unreachable_is_502_connection_failed() {
    let db = TestDb::new().await;
    let proxy = Proxy::start(&config(&db, closed_port().await, "")).await;
    let trace = new_trace_id();
    let (parts, _) = send(post(&proxy.url("/webhook/x"), &trace, "{}")).await;
    assert_eq!(parts.status, 502);
    assert_eq!(parts.headers["x-trace-proxy-error"], "CONNECTION_FAILED");
    assert_eq!(parts.headers["x-trace-id"], trace.as_str());
    let rows = db.final_rows(&trace, 1).await;
    assert_eq!(rows[0].get::<_, &str>("overall_status"), "failed");
    assert_eq!(
        rows[0].get::<_, Option<&str>>("error_code"),
        Some("CONNECTION_FAILED")
    );
    assert!(rows[0].get::<_, Option<&str>>("error_detail").is_some());
    assert_eq!(rows[0].get::<_, Option<i32>>("http_status"), None);
    proxy.stop().await;
}

#[tokio::test]
async fn upstream_slower_than_response_timeout_is_504_timeout() {
    let db = TestDb::new().await;
    let up = upstream(|_req| async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        Response::new(full("late"))
    })
    .await;
    let proxy = Proxy::start(&config(&db, up, "[upstream]\nresponse_timeout_ms = 200")).await;
    let trace = new_trace_id();
    let (parts, _) = send(get(&proxy.url("/slow"), &trace)).await;
    assert_eq!(parts.status, 504);
    let rows = db.final_rows(&trace, 1).await;
    assert_eq!(
        rows[0].get::<_, Option<&str>>("error_code"),
        Some("TIMEOUT")
    );
    assert!(rows[0]
        .get::<_, Option<i32>>("duration_ms")
        .is_some_and(|d| d >= 200));
    proxy.stop().await;
}

#[tokio::test]
async fn a_route_with_its_own_response_timeout_waits_longer_than_upstreams() {
    let db = TestDb::new().await;
    let up = upstream(|_req| async {
        tokio::time::sleep(Duration::from_millis(700)).await;
        Response::new(full(r#"{"done":true}"#))
    })
    .await;
    let extra = format!(
        "[upstream]\nresponse_timeout = \"200ms\"\n\
         [[routes]]\nname = \"long\"\npath_prefix = \"/webhook/long/\"\n\
         upstream = \"http://{up}\"\nsource_service = \"bilko-app\"\n\
         destination_service = \"n8n\"\n[routes.timeouts]\nresponse = \"5s\"\nidle = \"0s\"\n"
    );
    let proxy = Proxy::start(&config(&db, up, &extra)).await;
    let long = new_trace_id();
    let (parts, body) = send(get(&proxy.url("/webhook/long/report"), &long)).await;
    assert_eq!(parts.status, 200, "{body:?}");
    let rows = db.final_rows(&long, 1).await;
    assert_eq!(rows[0].get::<_, &str>("overall_status"), "success");
    assert_eq!(rows[0].get::<_, &str>("route_name"), "long");
    // Every other route keeps [upstream]'s 200 ms.
    let short = new_trace_id();
    let (parts, _) = send(get(&proxy.url("/webhook/other"), &short)).await;
    assert_eq!(parts.status, 504);
    let rows = db.final_rows(&short, 1).await;
    assert_eq!(
        rows[0].get::<_, Option<&str>>("error_code"),
        Some("TIMEOUT")
    );
    proxy.stop().await;
}

/// An upstream that promises 100 bytes, sends 10 and closes the connection.
async fn resetting_upstream() -> SocketAddr {
    raw_upstream_holding(
        b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789",
        Duration::ZERO,
    )
    .await
}

#[tokio::test]
async fn upstream_reset_mid_body_is_upstream_aborted() {
    let db = TestDb::new().await;
    let proxy = Proxy::start(&config(&db, resetting_upstream().await, "")).await;
    let trace = new_trace_id();
    let resp = client()
        .request(get(&proxy.url("/reset"), &trace))
        .await
        .expect("headers arrive");
    assert_eq!(resp.status(), 200);
    assert!(
        resp.into_body().collect().await.is_err(),
        "client sees the cut"
    );
    let rows = db.final_rows(&trace, 1).await;
    assert_eq!(rows[0].get::<_, &str>("overall_status"), "failed");
    assert_eq!(
        rows[0].get::<_, Option<&str>>("error_code"),
        Some("UPSTREAM_ABORTED")
    );
    assert_eq!(rows[0].get::<_, Option<i64>>("response_bytes"), Some(10));
    assert_eq!(rows[0].get::<_, Option<i32>>("http_status"), Some(200));
    proxy.stop().await;
}

#[tokio::test]
async fn first_frame_reaches_client_before_upstream_finishes_and_row_is_in_progress() {
    let db = TestDb::new().await;
    let (release_tx, release_rx) = mpsc::channel::<()>(1);
    let release_rx = Arc::new(tokio::sync::Mutex::new(release_rx));
    let up = upstream(move |_req| {
        let release_rx = release_rx.clone();
        async move {
            let (tx, body) = channel_body();
            tokio::spawn(async move {
                let _ = tx.send(Bytes::from_static(b"data: first\n\n")).await;
                let _ = release_rx.lock().await.recv().await;
                let _ = tx.send(Bytes::from_static(b"data: second\n\n")).await;
            });
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(body)
                .expect("response")
        }
    })
    .await;
    let proxy = Proxy::start(&config(&db, up, "in_progress_after_ms = 100")).await;
    let trace = new_trace_id();
    let resp = client()
        .request(get(&proxy.url("/sse"), &trace))
        .await
        .expect("headers");
    let mut body = resp.into_body();
    let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("first frame arrives while the upstream still holds the rest")
        .expect("frame")
        .expect("ok");
    assert_eq!(
        first.into_data().expect("data"),
        Bytes::from_static(b"data: first\n\n")
    );
    let mut status = String::new();
    for _ in 0..100 {
        status = db.trace_rows(&trace).await[0].get("overall_status");
        if status == "in_progress" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status, "in_progress");
    release_tx.send(()).await.expect("release");
    let rest = body.collect().await.expect("rest").to_bytes();
    assert_eq!(&rest[..], b"data: second\n\n");
    let rows = db.final_rows(&trace, 1).await;
    assert_eq!(rows[0].get::<_, &str>("overall_status"), "success");
    assert_eq!(
        rows[0].get::<_, Option<Value>>("response_payload"),
        Some(Value::String("data: first\n\ndata: second\n\n".into()))
    );
    proxy.stop().await;
}

#[tokio::test]
async fn response_larger_than_cap_streams_whole_and_is_stored_truncated() {
    let db = TestDb::new().await;
    const SIZE: usize = 3 * 1024 * 1024;
    let up = upstream(|_req| async {
        let (tx, body) = channel_body();
        tokio::spawn(async move {
            for _ in 0..(SIZE / 65536) {
                if tx.send(Bytes::from(vec![b'x'; 65536])).await.is_err() {
                    return;
                }
            }
        });
        Response::builder()
            .header("content-type", "text/plain")
            .body(body)
            .expect("response")
    })
    .await;
    let proxy = Proxy::start(&config(&db, up, "")).await;
    let trace = new_trace_id();
    let (parts, body) = send(get(&proxy.url("/big"), &trace)).await;
    assert_eq!(parts.status, 200);
    assert_eq!(body.len(), SIZE);
    let rows = db.final_rows(&trace, 1).await;
    let payload: Value = rows[0]
        .get::<_, Option<Value>>("response_payload")
        .expect("payload");
    assert_eq!(payload["_truncated"]["original_bytes"], SIZE as u64);
    assert!(
        payload.to_string().len() < 1024 + 512,
        "stored {} bytes",
        payload.to_string().len()
    );
    assert_eq!(
        rows[0].get::<_, Option<i64>>("response_bytes"),
        Some(SIZE as i64)
    );
    assert_eq!(proxy.metrics.snapshot().truncated_payloads, 1);
    proxy.stop().await;
}

/// A proxy in front of a heartbeat stream of `content_type` that never ends on its own; a client
/// reads one frame and disconnects. Returns the final row.
async fn client_leaves_a_stream_of(content_type: &'static str) -> tokio_postgres::Row {
    let db = TestDb::new().await;
    let up = upstream(move |_req| async move {
        let (tx, body) = channel_body();
        tokio::spawn(async move {
            while tx.send(Bytes::from_static(b": ping\n\n")).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        Response::builder()
            .header("content-type", content_type)
            .body(body)
            .expect("response")
    })
    .await;
    let proxy = Proxy::start(&config(&db, up, "")).await;
    let trace = new_trace_id();
    {
        let resp = client()
            .request(get(&proxy.url("/stream"), &trace))
            .await
            .expect("headers");
        let mut body = resp.into_body();
        body.frame().await.expect("a frame").expect("ok");
        // Dropping the body and its client closes the connection.
    }
    let mut rows = db.final_rows(&trace, 1).await;
    assert_eq!(rows[0].get::<_, Option<i32>>("http_status"), Some(200));
    assert_eq!(proxy.metrics.snapshot().rows_finished, 1);
    proxy.stop().await;
    rows.remove(0)
}

#[tokio::test]
async fn client_abort_mid_response_is_recorded_once() {
    let row = client_leaves_a_stream_of("application/octet-stream").await;
    assert_eq!(row.get::<_, &str>("overall_status"), "failed");
    assert_eq!(
        row.get::<_, Option<&str>>("error_code"),
        Some("CLIENT_ABORTED")
    );
}

#[tokio::test]
async fn a_client_closing_an_event_stream_ends_it_normally() {
    let row = client_leaves_a_stream_of("text/event-stream; charset=utf-8").await;
    assert_eq!(row.get::<_, &str>("overall_status"), "success");
    assert_eq!(row.get::<_, Option<&str>>("error_code"), None);
    let detail: Option<String> = row.get("error_detail");
    assert!(
        detail
            .as_deref()
            .is_some_and(|d| d.starts_with("client closed the event stream after ")),
        "{detail:?}"
    );
}

#[tokio::test]
async fn client_abort_while_waiting_for_upstream_is_recorded() {
    let db = TestDb::new().await;
    let up = upstream(|_req| async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        Response::new(full("late"))
    })
    .await;
    let proxy = Proxy::start(&config(&db, up, "")).await;
    let trace = new_trace_id();
    let req = get(&proxy.url("/wait"), &trace);
    let _ = tokio::time::timeout(Duration::from_millis(300), client().request(req)).await;
    let rows = db.final_rows(&trace, 1).await;
    assert_eq!(
        rows[0].get::<_, Option<&str>>("error_code"),
        Some("CLIENT_ABORTED")
    );
    proxy.stop().await;
}

#[tokio::test]
async fn store_unreachable_with_reject_answers_503_and_forwards_nothing() {
    let (up, hits) = counting_upstream(|_| async { Response::new(full("ok")) }).await;
    let db_url = format!("postgres://postgres@{}/postgres", closed_port().await);
    let proxy = Proxy::start(&config_at(&db_url, up, "on_unavailable = \"reject\"")).await;
    let (parts, _) = send(post(&proxy.url("/webhook/x"), &new_trace_id(), "{}")).await;
    assert_eq!(parts.status, 503);
    assert_eq!(parts.headers["x-trace-proxy-error"], "STORE_UNAVAILABLE");
    assert_eq!(hits.load(Ordering::SeqCst), 0);
    assert_eq!(proxy.metrics.snapshot().rejected_unavailable, 1);
    proxy.stop().await;
}

#[tokio::test]
async fn store_unreachable_with_forward_forwards_and_counts_unrecorded() {
    let (up, hits) = counting_upstream(|_| async { Response::new(full("ok")) }).await;
    let db_url = format!("postgres://postgres@{}/postgres", closed_port().await);
    let proxy = Proxy::start(&config_at(&db_url, up, "on_unavailable = \"forward\"")).await;
    for _ in 0..3 {
        let (parts, body) = send(post(&proxy.url("/webhook/x"), &new_trace_id(), "{}")).await;
        assert_eq!((parts.status.as_u16(), &body[..]), (200, &b"ok"[..]));
    }
    assert_eq!(hits.load(Ordering::SeqCst), 3);
    let m = proxy.metrics.snapshot();
    assert_eq!((m.unrecorded, m.rows_started), (3, 0));
    proxy.stop().await;
}

#[tokio::test]
async fn body_over_limit_is_413_and_recorded() {
    let db = TestDb::new().await;
    // Counts request bodies the upstream received whole.
    let whole = Arc::new(AtomicUsize::new(0));
    let w = whole.clone();
    let up = upstream(move |req| {
        let w = w.clone();
        async move {
            if req.into_body().collect().await.is_ok() {
                w.fetch_add(1, Ordering::SeqCst);
            }
            Response::new(full("ok"))
        }
    })
    .await;
    let proxy = Proxy::start(&config(&db, up, "[server]\nmax_request_body_bytes = 2000")).await;
    // Declared too large: refused before anything is forwarded.
    let trace = new_trace_id();
    let req = http::Request::post(proxy.url("/webhook/x"))
        .header("x-trace-id", &trace)
        .body(Full::new(Bytes::from(vec![b'a'; 3000])))
        .expect("request");
    let (parts, _) = send(req).await;
    assert_eq!(parts.status, 413);
    let rows = db.final_rows(&trace, 1).await;
    assert_eq!(
        rows[0].get::<_, Option<&str>>("error_code"),
        Some("BODY_TOO_LARGE")
    );
    assert_eq!(rows[0].get::<_, Option<i64>>("request_bytes"), Some(0));
    // Chunked, discovered while streaming (past the 1024-byte capture): the upstream's copy is cut.
    let trace2 = new_trace_id();
    let (tx, body) = channel_body();
    tokio::spawn(async move {
        for _ in 0..10 {
            if tx.send(Bytes::from(vec![b'b'; 500])).await.is_err() {
                return;
            }
        }
    });
    let req = http::Request::post(proxy.url("/webhook/x"))
        .header("x-trace-id", &trace2)
        .body(body)
        .expect("request");
    let resp = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Body>()
        .request(req)
        .await
        .expect("an answer");
    assert_eq!(resp.status(), 413);
    let rows = db.final_rows(&trace2, 1).await;
    assert_eq!(
        rows[0].get::<_, Option<&str>>("error_code"),
        Some("BODY_TOO_LARGE")
    );
    assert_eq!(
        whole.load(Ordering::SeqCst),
        0,
        "no oversized body reached the upstream whole"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn route_requiring_user_id_rejects_without_it() {
    let db = TestDb::new().await;
    let (up, hits) = counting_upstream(|_| async { Response::new(full("ok")) }).await;
    let toml = config(&db, up, "").replace(
        "action = \"trigger-workflow\"",
        "action = \"trigger-workflow\"\nrequire_user_id = true",
    );
    let proxy = Proxy::start(&toml).await;
    let trace = new_trace_id();
    let (parts, _) = send(post(&proxy.url("/webhook/x"), &trace, "{}")).await;
    assert_eq!(parts.status, 400);
    assert_eq!(hits.load(Ordering::SeqCst), 0);
    let rows = db.final_rows(&trace, 1).await;
    assert_eq!(
        rows[0].get::<_, Option<&str>>("error_code"),
        Some("MISSING_USER_ID")
    );
    let mut req = post(&proxy.url("/webhook/x"), &new_trace_id(), "{}");
    req.headers_mut()
        .insert("x-user-id", "u1".parse().expect("header"));
    let (parts, _) = send(req).await;
    assert_eq!(parts.status, 200);
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    proxy.stop().await;
}

#[tokio::test]
async fn two_routes_record_their_own_services() {
    let db = TestDb::new().await;
    let n8n =
        upstream(|req| async move { Response::new(full(format!("n8n:{}", req.uri().path()))) })
            .await;
    let app =
        upstream(|req| async move { Response::new(full(format!("app:{}", req.uri().path()))) })
            .await;
    let toml = format!(
        r#"
{base}
[[routes]]
name = "callbacks"
path_prefix = "/bilko/"
upstream = "http://{app}/api"
source_service = "n8n"
destination_service = "bilko-app"
strip_prefix = true
"#,
        base = config(&db, n8n, "")
    );
    let proxy = Proxy::start(&toml).await;
    let (t1, t2) = (new_trace_id(), new_trace_id());
    let (_, b1) = send(get(&proxy.url("/webhook/flow"), &t1)).await;
    let (_, b2) = send(get(&proxy.url("/bilko/callback/done"), &t2)).await;
    assert_eq!(&b1[..], b"n8n:/webhook/flow");
    assert_eq!(&b2[..], b"app:/api/callback/done");
    let r1 = db.final_rows(&t1, 1).await;
    let r2 = db.final_rows(&t2, 1).await;
    let services = |r: &tokio_postgres::Row| {
        (
            r.get::<_, String>("source_service"),
            r.get::<_, String>("destination_service"),
            r.get::<_, Option<String>>("route_name"),
        )
    };
    assert_eq!(
        services(&r1[0]),
        ("bilko-app".into(), "n8n".into(), Some("n8n".into()))
    );
    assert_eq!(
        services(&r2[0]),
        ("n8n".into(), "bilko-app".into(), Some("callbacks".into()))
    );
    proxy.stop().await;
}

/// Waits until the trace has a pending row (the request reached the upstream side).
async fn wait_pending(db: &TestDb, trace: &str) {
    for _ in 0..200 {
        // The table may not exist yet: the proxy migrates before it serves.
        let rows = db
            .client
            .query(
                "SELECT 1 FROM communication_traces WHERE trace_id = $1",
                &[&trace],
            )
            .await;
        if rows.is_ok_and(|r| !r.is_empty()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no pending row for {trace}");
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish_within_the_deadline() {
    let db = TestDb::new().await;
    let up = upstream(|_req| async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        Response::new(full("done"))
    })
    .await;
    let proxy = Proxy::start(&config(&db, up, "[server]\nshutdown_timeout_ms = 5000")).await;
    let trace = new_trace_id();
    let req = get(&proxy.url("/slow"), &trace);
    let inflight = tokio::spawn(async move { send(req).await });
    wait_pending(&db, &trace).await;
    proxy.stop().await;
    let (parts, body) = inflight.await.expect("request task");
    assert_eq!((parts.status.as_u16(), &body[..]), (200, &b"done"[..]));
    let rows = db.final_rows(&trace, 1).await;
    assert_eq!(rows[0].get::<_, &str>("overall_status"), "success");
}

#[tokio::test]
async fn requests_open_at_the_shutdown_deadline_are_recorded_as_interrupted() {
    let db = TestDb::new().await;
    let up = upstream(|_req| async {
        tokio::time::sleep(Duration::from_secs(10)).await;
        Response::new(full("too late"))
    })
    .await;
    let proxy = Proxy::start(&config(&db, up, "[server]\nshutdown_timeout_ms = 300")).await;
    let trace = new_trace_id();
    let req = get(&proxy.url("/stuck"), &trace);
    let inflight = tokio::spawn(async move { client().request(req).await });
    wait_pending(&db, &trace).await;
    proxy.stop().await;
    assert!(
        inflight.await.expect("task").is_err(),
        "the connection was cut"
    );
    let rows = db.final_rows(&trace, 1).await;
    assert_eq!(
        rows[0].get::<_, Option<&str>>("error_code"),
        Some("INTERRUPTED")
    );
}

/// An upstream that reads a request head and answers every request with `answer`, verbatim,
/// then holds the connection open a while, as a real upstream would.
async fn raw_upstream(answer: &'static [u8]) -> SocketAddr {
    raw_upstream_holding(answer, Duration::from_secs(2)).await
}

/// [`raw_upstream`], closing the connection `hold` after the answer.
async fn raw_upstream_holding(answer: &'static [u8], hold: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s.write_all(answer).await;
                let _ = s.flush().await;
                tokio::time::sleep(hold).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn stale_content_length_beside_transfer_encoding_is_dropped() {
    let db = TestDb::new().await;
    let up = raw_upstream(
        b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n\
          5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )
    .await;
    let proxy = Proxy::start(&config(&db, up, "")).await;
    let trace = new_trace_id();
    let resp = raw_http(
        proxy.addr,
        &format!(
            "GET /framing HTTP/1.1\r\nHost: x\r\nX-Trace-Id: {trace}\r\nConnection: close\r\n\r\n"
        ),
    )
    .await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-length"), None, "{resp:?}");
    assert_eq!(
        resp.header("transfer-encoding"),
        Some("chunked"),
        "{resp:?}"
    );
    let body = String::from_utf8_lossy(&resp.body).into_owned();
    assert!(
        body.contains("hello") && body.contains(" world"),
        "{body:?}"
    );
    let rows = db.final_rows(&trace, 1).await;
    assert_eq!(rows[0].get::<_, &str>("overall_status"), "success");
    assert_eq!(rows[0].get::<_, Option<&str>>("error_code"), None);
    assert_eq!(rows[0].get::<_, Option<i64>>("response_bytes"), Some(11));
    proxy.stop().await;
}

#[tokio::test]
async fn untunnelled_101_is_answered_502_and_recorded_as_failed() {
    let db = TestDb::new().await;
    let up = raw_upstream(
        b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n",
    )
    .await;
    let proxy = Proxy::start(&config(&db, up, "")).await;
    let trace = new_trace_id();
    let resp = raw_http(
        proxy.addr,
        &format!("GET /ws HTTP/1.1\r\nHost: x\r\nX-Trace-Id: {trace}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(resp.status, 502, "{resp:?}");
    assert_eq!(resp.header("upgrade"), None, "{resp:?}");
    assert_eq!(resp.header("x-trace-id"), Some(trace.as_str()), "{resp:?}");
    let rows = db.final_rows(&trace, 1).await;
    assert_eq!(rows[0].get::<_, &str>("overall_status"), "failed");
    let code = rows[0].get::<_, Option<&str>>("error_code");
    assert_eq!(code, Some("UPSTREAM_ABORTED"));
    let detail = rows[0].get::<_, Option<&str>>("error_detail").unwrap_or("");
    assert!(detail.contains("101"), "{detail}");
    proxy.stop().await;
}

#[tokio::test]
async fn a_client_leaving_mid_upload_is_blamed_not_the_upstream() {
    let db = TestDb::new().await;
    // An upstream that reads the whole request body before answering.
    let up = upstream(|req: http::Request<hyper::body::Incoming>| async move {
        let read = req.into_body().collect().await;
        Response::new(full(if read.is_ok() { "read" } else { "cut" }))
    })
    .await;
    let proxy = Proxy::start(&config(&db, up, "")).await;
    let trace = new_trace_id();
    let mut conn = tokio::net::TcpStream::connect(proxy.addr)
        .await
        .expect("connect");
    let head = format!(
        "POST /webhook/upload HTTP/1.1\r\nhost: x\r\nx-trace-id: {trace}\r\n\
         content-type: application/octet-stream\r\ncontent-length: 100000\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).await.expect("head");
    // More than the capture buffer (1 KiB here), so the request is forwarded while it streams.
    conn.write_all(&[b'x'; 5000])
        .await
        .expect("part of the body");
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(conn);
    let row = db.final_rows(&trace, 1).await.remove(0);
    assert_eq!(row.get::<_, &str>("overall_status"), "failed");
    assert_eq!(
        row.get::<_, Option<&str>>("error_code"),
        Some("CLIENT_ABORTED"),
        "{:?}",
        row.get::<_, Option<&str>>("error_detail")
    );
    proxy.stop().await;
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_at_the_send_timeout() {
    let db = TestDb::new().await;
    let released = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = released.clone();
    // An upstream with an endless body; it notices when the proxy lets go of it.
    let up = upstream(move |_req| {
        let flag = flag.clone();
        async move {
            let (tx, body) = channel_body();
            tokio::spawn(async move {
                let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
                while tx.send(chunk.clone()).await.is_ok() {}
                flag.store(true, Ordering::SeqCst);
            });
            Response::new(body)
        }
    })
    .await;
    let extra = "[server]\nsend_timeout = \"500ms\"\n[upstream]\nidle_timeout = \"60s\"\n";
    let proxy = Proxy::start(&config(&db, up, extra)).await;
    let trace = new_trace_id();
    let mut conn = tokio::net::TcpStream::connect(proxy.addr)
        .await
        .expect("connect");
    let head = format!("GET /big HTTP/1.1\r\nhost: x\r\nx-trace-id: {trace}\r\n\r\n");
    conn.write_all(head.as_bytes()).await.expect("request");
    let mut first = [0u8; 1024];
    let _ = conn.read(&mut first).await.expect("the response starts");
    // Then the client reads nothing more, with the connection open.
    let row = db.final_rows(&trace, 1).await.remove(0);
    assert_eq!(row.get::<_, &str>("overall_status"), "failed");
    assert_eq!(
        row.get::<_, Option<&str>>("error_code"),
        Some("CLIENT_ABORTED")
    );
    for _ in 0..100 {
        if released.load(Ordering::SeqCst) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        released.load(Ordering::SeqCst),
        "the upstream exchange was not released"
    );
    drop(conn);
    proxy.stop().await;
}
