//! The proxy against the bytes n8n 2.8.4 really sends (`tests/n8n-samples/`): a stand-in
//! upstream replays each captured response, and the row must name the n8n execution in every
//! shape n8n puts it — a header, a JSON body, JSON labelled `text/html`, a line of a stream
//! (plain or gzip), the `/webhook-waiting/<id>` path — while the client gets the bytes unchanged.

use std::io::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt as _;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use serde_json::{json, Value};

use crate::support::*;

/// One captured response: status, headers (hop-by-hop and framing ones left to hyper), body as
/// sent on the wire (gzip again where n8n compressed it), and whether n8n streamed it.
pub(crate) struct Sample {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    pub chunked: bool,
    /// The body as its reader sees it (decompressed).
    pub text: String,
}

pub(crate) fn sample(name: &str) -> Sample {
    let path = format!(
        "{}/tests/n8n-samples/{name}.txt",
        env!("CARGO_MANIFEST_DIR")
    );
    let raw = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let raw = raw.replace("\r\n", "\n");
    let start = raw.find("HTTP/1.1 ").expect("a status line");
    let (head, body) = raw[start..].split_once("\n\n").expect("headers end");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status");
    let mut headers = Vec::new();
    let (mut chunked, mut gzip) = (false, false);
    for line in lines {
        let (k, v) = line.split_once(':').expect("header");
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_owned());
        match k.as_str() {
            "transfer-encoding" => chunked = true,
            "connection" | "keep-alive" | "content-length" | "date" => {}
            _ => {
                gzip |= k == "content-encoding" && v == "gzip";
                headers.push((k, v));
            }
        }
    }
    let text = body
        .strip_prefix("gunzip ->\n")
        .unwrap_or(body)
        .trim_end_matches('\n')
        .to_owned();
    // A stream's lines end with a newline on the wire.
    let text = if chunked { format!("{text}\n") } else { text };
    let body = if gzip {
        let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(text.as_bytes()).expect("gzip");
        Bytes::from(z.finish().expect("gzip"))
    } else {
        Bytes::from(text.clone())
    };
    Sample {
        status,
        headers,
        body,
        chunked,
        text,
    }
}

/// An upstream answering every request with the sample's response; a streamed one in three
/// chunks, 20 ms apart.
pub(crate) async fn replaying(name: &str) -> SocketAddr {
    let s = std::sync::Arc::new(sample(name));
    upstream(move |_req| {
        let s = s.clone();
        async move {
            let mut b = Response::builder().status(s.status);
            for (k, v) in &s.headers {
                b = b.header(k, v);
            }
            let body = match s.chunked {
                false => full(s.body.clone()),
                true => {
                    let third = s.body.len().div_ceil(3).max(1);
                    let chunks: Vec<Bytes> =
                        s.body.chunks(third).map(Bytes::copy_from_slice).collect();
                    let stream = futures_util::stream::iter(chunks).then(|c| async move {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(c))
                    });
                    BodyExt::boxed(StreamBody::new(stream))
                }
            };
            b.body(body).expect("response")
        }
    })
    .await
}

/// Posts `body` to `path` through a proxy in front of the sample; the client's status, body,
/// and the final row.
async fn through(name: &str, path: &str) -> (u16, Bytes, tokio_postgres::Row, Sample) {
    let db = TestDb::new().await;
    let proxy = Proxy::start(&config(&db, replaying(name).await, "")).await;
    let trace = new_trace_id();
    let req = Request::post(proxy.url(path))
        .header("x-trace-id", &trace)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(b"{\"a\":1}")))
        .expect("request");
    let (parts, body) = send(req).await;
    let row = db.final_rows(&trace, 1).await.remove(0);
    proxy.stop().await;
    (parts.status.as_u16(), body, row, sample(name))
}

fn execution_id(row: &tokio_postgres::Row) -> Option<String> {
    row.get("n8n_execution_id")
}

#[tokio::test]
async fn respond_immediately_json_labelled_text_html_is_stored_as_json_with_its_id() {
    let (status, body, row, s) = through(
        "26-onReceived-responseData-executionId",
        "/webhook/bilko/immediate-body",
    )
    .await;
    assert_eq!((status, &body[..]), (200, s.body.as_ref()));
    assert_eq!(execution_id(&row).as_deref(), Some("10"));
    let payload: Value = row.get("response_payload");
    assert_eq!(
        payload,
        json!({"accepted": true, "executionId": "10", "_content_type": "text/html; charset=utf-8"})
    );
    assert_eq!(row.get::<_, &str>("overall_status"), "success");
}

#[tokio::test]
async fn a_streamed_answer_names_the_execution_in_its_item_line() {
    let (status, body, row, s) = through("06-streaming", "/webhook/bilko/stream").await;
    assert_eq!((status, &body[..]), (200, s.body.as_ref()));
    assert_eq!(execution_id(&row).as_deref(), Some("6"));
    // The stream is stored as the text it is.
    let payload: Value = row.get("response_payload");
    assert_eq!(payload, Value::String(s.text.clone()));
}

#[tokio::test]
async fn a_gzip_stream_passes_compressed_and_is_read_decompressed() {
    let (status, body, row, s) = through("27-streaming-gzip", "/webhook/bilko/stream").await;
    assert_eq!((status, &body[..]), (200, s.body.as_ref()));
    assert_eq!(execution_id(&row).as_deref(), Some("12"));
}

#[tokio::test]
async fn the_respond_node_header_and_the_last_node_body_name_the_execution() {
    let (status, body, row, s) = through("05-responseNode-headers", "/webhook/bilko/respond").await;
    assert_eq!((status, &body[..]), (201, s.body.as_ref()));
    assert_eq!(execution_id(&row).as_deref(), Some("5"));
    let (status, _, row, _) = through(
        "25-lastNode-responseHeaders-workflowId",
        "/webhook/bilko/last",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(execution_id(&row).as_deref(), Some("9"));
}

#[tokio::test]
async fn a_resumed_wait_names_the_execution_of_its_path() {
    let (status, _, row, _) = through("12-webhook-waiting-resume", "/webhook-waiting/8").await;
    assert_eq!(status, 200);
    assert_eq!(execution_id(&row).as_deref(), Some("8"));
}

const API_KEY: &str = "n8n_api_test_key_0123456789";

/// A stand-in n8n: its webhook fails as n8n's "Respond immediately" error does, naming
/// execution 4 in the header; its public API answers execution 4 with the captured document
/// (`21-public-api-execution-includeData`) to the right key, and 401 to any other.
async fn failing_n8n() -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let api_calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let calls = api_calls.clone();
    let document = std::sync::Arc::new(sample("21-public-api-execution-includeData"));
    let addr = upstream(move |req: Request<hyper::body::Incoming>| {
        let (calls, document) = (calls.clone(), document.clone());
        async move {
            if req.uri().path().starts_with("/api/v1/executions/") {
                calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let key_ok = req
                    .headers()
                    .get("x-n8n-api-key")
                    .is_some_and(|k| k.as_bytes() == API_KEY.as_bytes());
                let right = req.uri().path() == "/api/v1/executions/4"
                    && req.uri().query() == Some("includeData=true");
                return match (key_ok, right) {
                    (true, true) => Response::builder()
                        .header("content-type", "application/json; charset=utf-8")
                        .body(full(document.body.clone())),
                    (false, _) => Response::builder()
                        .status(401)
                        .body(full(r#"{"message":"'X-N8N-API-KEY' header required"}"#)),
                    (true, false) => Response::builder()
                        .status(404)
                        .body(full(r#"{"message":"Not Found"}"#)),
                }
                .expect("response");
            }
            Response::builder()
                .status(500)
                .header("x-n8n-execution-id", "4")
                .header("content-type", "application/json; charset=utf-8")
                .body(full(
                    r#"{"code":0,"message":"There was a problem executing the workflow"}"#,
                ))
                .expect("response")
        }
    })
    .await;
    (addr, api_calls)
}

/// The row's `n8n_execution` once it is set (or `None` after `wait`).
async fn account_of(db: &TestDb, trace: &str, wait: Duration) -> Option<Value> {
    let sql = format!("SELECT n8n_execution FROM communication_traces WHERE trace_id = '{trace}'");
    let until = std::time::Instant::now() + wait;
    loop {
        let v: Option<Value> = db.rows(&sql).await.first().and_then(|r| r.get(0));
        if v.is_some() || std::time::Instant::now() >= until {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_failed_execution_gets_n8ns_own_account_of_it() {
    let db = TestDb::new().await;
    let (up, api_calls) = failing_n8n().await;
    let token = crate::agent::TOKEN;
    let extra = format!(
        "[admin]\ntoken = \"{token}\"\n[n8n]\napi_url = \"http://{up}/\"\napi_key = \"{API_KEY}\"\nlookup_delay = \"50ms\"\n"
    );
    let proxy = Proxy::start_with_admin(&config(&db, up, &extra)).await;
    let trace = new_trace_id();
    let req = Request::post(proxy.url("/webhook/bilko/error-immediate"))
        .header("x-trace-id", &trace)
        .body(Full::new(Bytes::from_static(
            b"{\"action\":\"explode_later\"}",
        )))
        .expect("request");
    let (parts, _) = send(req).await;
    assert_eq!(parts.status, 500);
    let account = account_of(&db, &trace, Duration::from_secs(10))
        .await
        .expect("n8n's account stored");
    assert_eq!(account["status"], "error");
    assert_eq!(
        account["failingNode"],
        json!({"name": "Fail", "type": "n8n-nodes-base.stopAndError"})
    );
    assert_eq!(
        account["error"]["message"],
        "boom from bilko/error-immediate"
    );
    assert_eq!(account["lastNodeExecuted"], "Fail");
    assert_eq!(account["stoppedAt"], "2026-11-26T10:59:27.041Z");
    assert_eq!(api_calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(proxy.metrics.n8n_lookups.get(), 1);
    // The key goes to n8n only.
    let all = db
        .rows(&format!(
            "SELECT to_jsonb(t)::text FROM communication_traces t WHERE trace_id = '{trace}'"
        ))
        .await;
    assert!(!all[0].get::<_, String>(0).contains(API_KEY));

    // The query API shows it with the trace, and the explanation carries it.
    let admin = proxy.admin.expect("admin listener");
    for path in [
        format!("/api/traces/{trace}"),
        format!("/api/traces/{trace}/explain"),
    ] {
        let req = Request::get(format!("http://{admin}{path}"))
            .header("authorization", format!("Bearer {token}"))
            .body(Full::new(Bytes::new()))
            .expect("request");
        let (_, body) = send(req).await;
        let v: Value = serde_json::from_slice(&body).expect("JSON");
        let shown = match v.get("items") {
            Some(items) => items[0]["n8nExecution"].clone(),
            None => v["n8nExecution"].clone(),
        };
        assert_eq!(shown["failingNode"]["name"], "Fail", "{path}: {v}");
    }
    proxy.stop().await;
}

#[tokio::test]
async fn a_refused_key_leaves_the_row_as_it_is_and_is_counted() {
    let db = TestDb::new().await;
    let (up, api_calls) = failing_n8n().await;
    let extra = format!(
        "[n8n]\napi_url = \"http://{up}\"\napi_key = \"wrong-key-0123456789\"\nlookup_delay = \"10ms\"\n"
    );
    let proxy = Proxy::start(&config(&db, up, &extra)).await;
    let trace = new_trace_id();
    let req = Request::post(proxy.url("/webhook/bilko/error-immediate"))
        .header("x-trace-id", &trace)
        .body(Full::new(Bytes::from_static(b"{}")))
        .expect("request");
    send(req).await;
    db.final_rows(&trace, 1).await;
    for _ in 0..100 {
        if proxy.metrics.n8n_lookups_failed.get() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(proxy.metrics.n8n_lookups_failed.get(), 1);
    assert_eq!(api_calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(account_of(&db, &trace, Duration::ZERO).await, None);
    proxy.stop().await;
}
