//! D3: one row per attempt, proxy retries when safe, client retries numbered atomically.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Response;
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};

use crate::support::*;

const RETRY3: &str =
    "[routes.retry]\nmax_attempts = 3\nbackoff_initial_ms = 10\nbackoff_max_ms = 2000\n";

/// A config whose single route has `retry` (TOML lines under `[routes.retry]`).
fn retry_config(db: &TestDb, upstream: std::net::SocketAddr, retry: &str) -> String {
    format!("{}{retry}", config(db, upstream, ""))
}

/// An upstream answering 503 to its first `failures` requests, then 200; counts requests and
/// remembers when each arrived and what body it carried.
async fn flaky_upstream(
    failures: usize,
    retry_after: Option<&'static str>,
) -> (
    std::net::SocketAddr,
    Arc<AtomicUsize>,
    Arc<Mutex<Vec<(Instant, Bytes)>>>,
) {
    let hits = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (h, s) = (hits.clone(), seen.clone());
    let addr = upstream(move |req| {
        let (h, s) = (h.clone(), s.clone());
        async move {
            let body = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            s.lock().expect("lock").push((Instant::now(), body));
            if h.fetch_add(1, Ordering::SeqCst) < failures {
                let mut r = Response::builder().status(503);
                if let Some(ra) = retry_after {
                    r = r.header("retry-after", ra);
                }
                r.body(full("busy")).expect("response")
            } else {
                Response::new(full(r#"{"ok":true}"#))
            }
        }
    })
    .await;
    (addr, hits, seen)
}

fn statuses(rows: &[tokio_postgres::Row]) -> Vec<(i32, String)> {
    rows.iter()
        .map(|r| (r.get("attempt_number"), r.get("overall_status")))
        .collect()
}

#[tokio::test]
async fn flaky_get_is_retried_into_three_rows() {
    let db = TestDb::new().await;
    let (up, hits, _) = flaky_upstream(2, None).await;
    let proxy = Proxy::start(&retry_config(&db, up, RETRY3)).await;
    let trace = new_trace_id();
    let (parts, body) = send(get(&proxy.url("/webhook/flaky"), &trace)).await;
    assert_eq!(parts.status, 200);
    assert_eq!(&body[..], br#"{"ok":true}"#);
    assert_eq!(parts.headers["x-attempt-number"], "3");
    assert_eq!(hits.load(Ordering::SeqCst), 3);
    let rows = db.final_rows(&trace, 3).await;
    assert_eq!(
        statuses(&rows),
        [
            (1, "failed".into()),
            (2, "failed".into()),
            (3, "success".into())
        ]
    );
    assert_eq!(
        rows[0].get::<_, Option<&str>>("error_code"),
        Some("HTTP_503")
    );
    assert!(rows[0]
        .get::<_, Option<&str>>("error_detail")
        .is_some_and(|d| d.contains("retrying in")));
    assert_eq!(
        rows[0].get::<_, Option<Value>>("response_payload"),
        Some(json!("busy"))
    );
    let ids: std::collections::HashSet<uuid::Uuid> = rows.iter().map(|r| r.get("id")).collect();
    assert_eq!(ids.len(), 3, "each attempt is its own row");
    assert_eq!(proxy.metrics.snapshot().retries, 2);
    proxy.stop().await;
}

#[tokio::test]
async fn flaky_post_is_not_retried_and_says_why() {
    let db = TestDb::new().await;
    let (up, hits, _) = flaky_upstream(2, None).await;
    let proxy = Proxy::start(&retry_config(&db, up, RETRY3)).await;
    let trace = new_trace_id();
    let (parts, _) = send(post(&proxy.url("/webhook/flaky"), &trace, r#"{"a":1}"#)).await;
    assert_eq!(parts.status, 503);
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    let rows = db.final_rows(&trace, 1).await;
    assert_eq!(
        rows[0].get::<_, Option<&str>>("error_code"),
        Some("HTTP_503")
    );
    assert!(rows[0]
        .get::<_, Option<&str>>("error_detail")
        .is_some_and(|d| d.contains("not retried: POST already sent")));
    proxy.stop().await;
}

#[tokio::test]
async fn exhausted_retries_return_the_last_response() {
    let db = TestDb::new().await;
    let (up, hits, _) = flaky_upstream(100, None).await;
    let proxy = Proxy::start(&retry_config(&db, up, RETRY3)).await;
    let trace = new_trace_id();
    let (parts, body) = send(get(&proxy.url("/x"), &trace)).await;
    assert_eq!((parts.status.as_u16(), &body[..]), (503, &b"busy"[..]));
    assert_eq!(hits.load(Ordering::SeqCst), 3);
    let rows = db.final_rows(&trace, 3).await;
    assert!(rows[2]
        .get::<_, Option<&str>>("error_detail")
        .is_some_and(|d| d.contains("not retried: all 3 attempts used")));
    proxy.stop().await;
}

#[tokio::test]
async fn refused_connection_retries_even_post_then_502() {
    let db = TestDb::new().await;
    let proxy = Proxy::start(&retry_config(&db, closed_port().await, RETRY3)).await;
    let trace = new_trace_id();
    let (parts, _) = send(post(&proxy.url("/webhook/x"), &trace, r#"{"a":1}"#)).await;
    assert_eq!(parts.status, 502);
    assert_eq!(parts.headers["x-attempt-number"], "3");
    let rows = db.final_rows(&trace, 3).await;
    for r in &rows {
        assert_eq!(
            r.get::<_, Option<&str>>("error_code"),
            Some("CONNECTION_FAILED")
        );
        assert_eq!(
            r.get::<_, Option<Value>>("request_payload"),
            Some(json!({"a": 1}))
        );
    }
    proxy.stop().await;
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let db = TestDb::new().await;
    let (up, hits, seen) = flaky_upstream(1, Some("1")).await;
    let proxy = Proxy::start(&retry_config(&db, up, RETRY3)).await;
    let (parts, _) = send(get(&proxy.url("/x"), &new_trace_id())).await;
    assert_eq!(parts.status, 200);
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    let gap = {
        let seen = seen.lock().expect("lock");
        seen[1].0 - seen[0].0
    };
    // backoff_initial_ms = 10 alone would retry within 10 ms.
    assert!(
        gap >= Duration::from_millis(950),
        "second attempt after {gap:?}"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn timeout_on_get_is_retried() {
    let db = TestDb::new().await;
    let (up, hits) = counting_upstream(|n| async move {
        if n == 0 {
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        Response::new(full("ok"))
    })
    .await;
    let toml = format!(
        "{}{RETRY3}",
        config(&db, up, "[upstream]\nresponse_timeout_ms = 200")
    );
    let proxy = Proxy::start(&toml).await;
    let trace = new_trace_id();
    let (parts, _) = send(get(&proxy.url("/slow"), &trace)).await;
    assert_eq!(parts.status, 200);
    let rows = db.final_rows(&trace, 2).await;
    assert_eq!(
        rows[0].get::<_, Option<&str>>("error_code"),
        Some("TIMEOUT")
    );
    assert_eq!(rows[1].get::<_, &str>("overall_status"), "success");
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    proxy.stop().await;
}

#[tokio::test]
async fn body_larger_than_replay_buffer_is_not_retried() {
    let db = TestDb::new().await;
    let (up, hits, seen) = flaky_upstream(2, None).await;
    let proxy = Proxy::start(&retry_config(&db, up, RETRY3)).await;
    let trace = new_trace_id();
    let big = vec![b'x'; 5000]; // capture cap in tests: 1024 bytes
    let req = http::Request::put(proxy.url("/x"))
        .header("x-trace-id", &trace)
        .body(Full::new(Bytes::from(big.clone())))
        .expect("request");
    let (parts, _) = send(req).await;
    assert_eq!(parts.status, 503);
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    assert_eq!(seen.lock().expect("lock")[0].1.len(), big.len());
    let rows = db.final_rows(&trace, 1).await;
    assert!(rows[0]
        .get::<_, Option<&str>>("error_detail")
        .is_some_and(|d| d.contains("request body larger than the replay buffer")));
    proxy.stop().await;
}

#[tokio::test]
async fn client_retries_with_one_trace_id_continue_the_numbering() {
    let db = TestDb::new().await;
    let (up, _, _) = flaky_upstream(0, None).await;
    let proxy = Proxy::start(&config(&db, up, "")).await;
    let trace = new_trace_id();
    let (p1, _) = send(post(
        &proxy.url("/webhook/x"),
        &trace,
        r#"{"try":1,"keep":true}"#,
    ))
    .await;
    let (p2, _) = send(post(
        &proxy.url("/webhook/x"),
        &trace,
        r#"{"try":2,"keep":true}"#,
    ))
    .await;
    assert_eq!(p1.headers["x-attempt-number"], "1");
    assert_eq!(p2.headers["x-attempt-number"], "2");
    let rows = db.final_rows(&trace, 2).await;
    assert_eq!(
        rows[0].get::<_, Option<Value>>("request_payload"),
        Some(json!({"try": 1, "keep": true}))
    );
    assert_eq!(
        rows[1].get::<_, Option<Value>>("request_payload"),
        Some(json!({"try": 2, "keep": true}))
    );

    // The chain and the diff between its attempts, as the store serves them.
    let chain = trace_proxy::store::query::trace_chain(&db.client, &trace)
        .await
        .expect("chain");
    assert_eq!(
        chain.iter().map(|r| r.attempt_number).collect::<Vec<_>>(),
        [1, 2]
    );
    let diffs = trace_proxy::diff::diff_chain(&chain);
    assert_eq!(diffs.len(), 1);
    assert_eq!(
        serde_json::to_value(&diffs[0].request).expect("json"),
        json!([{"op": "changed", "path": "/try", "old": 1, "new": 2}])
    );
    assert!(diffs[0].overall_status.is_none());
    proxy.stop().await;
}

#[tokio::test]
async fn concurrent_requests_on_one_trace_get_distinct_gap_free_numbers() {
    let db = TestDb::new().await;
    let (up, _, _) = flaky_upstream(0, None).await;
    let proxy = Proxy::start(&config(&db, up, "")).await;
    let trace = new_trace_id();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let url = proxy.url("/webhook/x");
        let trace = trace.clone();
        tasks.push(tokio::spawn(async move {
            let req = http::Request::post(&url)
                .header("x-trace-id", &trace)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(format!(
                    r#"{{"n":{i},"password":"hunter2"}}"#
                ))))
                .expect("request");
            let (parts, _) = send(req).await;
            parts.headers["x-attempt-number"]
                .to_str()
                .expect("header")
                .parse::<i32>()
                .expect("number")
        }));
    }
    let mut numbers = Vec::new();
    for t in tasks {
        numbers.push(t.await.expect("task"));
    }
    numbers.sort();
    assert_eq!(numbers, (1..=8).collect::<Vec<_>>());
    let rows = db.final_rows(&trace, 8).await;
    let mut stored: Vec<i32> = rows.iter().map(|r| r.get("attempt_number")).collect();
    stored.sort();
    assert_eq!(stored, (1..=8).collect::<Vec<_>>());
    // Rows renumbered after losing a race keep everything else they carried.
    for r in &rows {
        let payload: serde_json::Value = r.get("request_payload");
        assert_eq!(payload["password"], "[REDACTED]", "{payload}");
        let redactions: Option<serde_json::Value> = r.get("redactions");
        assert!(
            redactions.is_some_and(|v| v.to_string().contains("request_payload")),
            "attempt {}: redactions record lost",
            r.get::<_, i32>("attempt_number")
        );
    }
    proxy.stop().await;
}

#[tokio::test]
async fn each_retry_has_its_pending_row_committed_before_it_is_sent() {
    let db = TestDb::new().await;
    let observer = Arc::new(connect(&db.url()).await);
    let seen = Arc::new(Mutex::new(Vec::<Vec<(i32, String)>>::new()));
    let (obs, s) = (observer.clone(), seen.clone());
    let up = upstream(move |req| {
        let (obs, s) = (obs.clone(), s.clone());
        async move {
            let trace = req.headers()["x-trace-id"]
                .to_str()
                .unwrap_or("")
                .to_owned();
            // Another connection sees only committed rows.
            let rows = obs
                .query(
                    "SELECT attempt_number, overall_status FROM communication_traces \
                     WHERE trace_id = $1 ORDER BY attempt_number",
                    &[&trace],
                )
                .await
                .expect("observer query");
            let n = {
                let mut s = s.lock().expect("lock");
                s.push(rows.iter().map(|r| (r.get(0), r.get(1))).collect());
                s.len()
            };
            let status = if n < 3 { 503 } else { 200 };
            Response::builder()
                .status(status)
                .body(full(""))
                .expect("response")
        }
    })
    .await;
    let proxy = Proxy::start(&retry_config(&db, up, RETRY3)).await;
    let (parts, _) = send(get(&proxy.url("/x"), &new_trace_id())).await;
    assert_eq!(parts.status, 200);
    let seen = seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 3);
    for (i, rows) in seen.iter().enumerate() {
        // Attempt i+1 arrives with its own row (and every earlier one) committed; an earlier
        // attempt's final update may still be in flight, so only the newest status is fixed.
        let numbers: Vec<i32> = rows.iter().map(|r| r.0).collect();
        assert_eq!(numbers, (1..=i as i32 + 1).collect::<Vec<_>>(), "{rows:?}");
        assert_eq!(rows[i].1, "pending");
    }
    proxy.stop().await;
}
