//! D1 (pending row committed before forwarding), D2 (every final field), and counts.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use http::Response;
use serde_json::{json, Value};

use crate::support::*;

#[tokio::test]
async fn upstream_sees_committed_pending_row_when_request_arrives() {
    let db = TestDb::new().await;
    let observer = Arc::new(connect(&db.url()).await);
    let seen = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let (obs, seen2) = (observer.clone(), seen.clone());
    let up = upstream(move |req| {
        let (obs, seen) = (obs.clone(), seen2.clone());
        async move {
            let trace = req
                .headers()
                .get("x-trace-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            // A separate connection: only committed rows are visible to it.
            let rows = obs
                .query(
                    "SELECT overall_status FROM communication_traces WHERE trace_id = $1",
                    &[&trace],
                )
                .await
                .expect("observer query");
            let statuses: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
            seen.lock().expect("lock").push(statuses.join(","));
            Response::new(full("{}"))
        }
    })
    .await;
    let proxy = Proxy::start(&config(&db, up, "")).await;
    let trace = new_trace_id();
    let (parts, _) = send(post(&proxy.url("/webhook/x"), &trace, r#"{"a":1}"#)).await;
    assert_eq!(parts.status, 200);
    assert_eq!(seen.lock().expect("lock").as_slice(), ["pending"]);
    let rows = db.final_rows(&trace, 1).await;
    assert_eq!(rows[0].get::<_, &str>("overall_status"), "success");
    proxy.stop().await;
}

#[tokio::test]
async fn final_update_sets_every_d2_field() {
    let db = TestDb::new().await;
    let up = upstream(|_req| async {
        Response::builder()
            .status(201)
            .header("content-type", "application/json")
            .header("x-n8n-execution-id", "n8n-exec-77")
            .body(full(r#"{"ok":true,"token":"s3cret-response"}"#))
            .expect("response")
    })
    .await;
    let proxy = Proxy::start(&config(&db, up, "")).await;
    let trace = new_trace_id();
    let exec = uuid::Uuid::new_v4();
    let req = http::Request::post(proxy.url("/webhook/order-flow/start?x=1&token=abc"))
        .header("x-trace-id", &trace)
        .header("x-execution-id", exec.to_string())
        .header("x-user-id", "user-9")
        .header("x-action", "approve")
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            br#"{"order":5,"password":"hunter2"}"#,
        )))
        .expect("request");
    let (parts, body) = send(req).await;
    assert_eq!(parts.status, 201);
    assert_eq!(parts.headers["x-trace-id"], trace.as_str());
    assert_eq!(
        &body[..],
        br#"{"ok":true,"token":"s3cret-response"}"#,
        "client gets original bytes"
    );

    let rows = db.final_rows(&trace, 1).await;
    let r = &rows[0];
    assert_eq!(r.get::<_, i32>("attempt_number"), 1);
    assert_eq!(r.get::<_, &str>("source_service"), "bilko-app");
    assert_eq!(r.get::<_, &str>("destination_service"), "n8n");
    assert_eq!(r.get::<_, &str>("workflow_id"), "order-flow/start");
    assert_eq!(r.get::<_, Option<&str>>("action"), Some("approve"));
    assert_eq!(r.get::<_, &str>("user_id"), "user-9");
    assert_eq!(r.get::<_, Option<uuid::Uuid>>("execution_id"), Some(exec));
    assert_eq!(r.get::<_, &str>("overall_status"), "success");
    assert_eq!(r.get::<_, Option<&str>>("error_code"), None);
    assert_eq!(
        r.get::<_, Option<&str>>("n8n_execution_id"),
        Some("n8n-exec-77")
    );
    assert_eq!(r.get::<_, Option<i32>>("http_status"), Some(201));
    assert_eq!(r.get::<_, Option<&str>>("http_method"), Some("POST"));
    assert_eq!(
        r.get::<_, Option<&str>>("http_target"),
        Some("/webhook/order-flow/start?x=1&token=%5BREDACTED%5D")
    );
    let requested: chrono::NaiveDateTime = r.get("requested_at");
    let responded: Option<chrono::NaiveDateTime> = r.get("responded_at");
    let responded = responded.expect("responded_at set");
    assert!(responded >= requested);
    let now = chrono::Utc::now().naive_utc();
    assert!(
        (now - requested).num_seconds().abs() < 60,
        "requested_at is UTC: {requested} vs {now}"
    );
    assert!(r
        .get::<_, Option<i32>>("duration_ms")
        .is_some_and(|d| d >= 0));
    assert_eq!(
        r.get::<_, Option<Value>>("request_payload"),
        Some(json!({"order": 5, "password": "[REDACTED]"}))
    );
    assert_eq!(
        r.get::<_, Option<Value>>("response_payload"),
        Some(json!({"ok": true, "token": "[REDACTED]"}))
    );
    assert_eq!(r.get::<_, Option<i64>>("request_bytes"), Some(32));
    assert_eq!(r.get::<_, Option<i64>>("response_bytes"), Some(37));
    proxy.stop().await;
}

#[tokio::test]
async fn n8n_execution_id_from_body_or_waiting_path() {
    let db = TestDb::new().await;
    let up = upstream(|req| async move {
        let body = if req.uri().path().starts_with("/webhook-waiting/") {
            "{}"
        } else {
            r#"{"executionId":"body-42"}"#
        };
        Response::builder()
            .header("content-type", "application/json")
            .body(full(body))
            .expect("response")
    })
    .await;
    let proxy = Proxy::start(&config(&db, up, "")).await;
    let (t1, t2) = (new_trace_id(), new_trace_id());
    send(get(&proxy.url("/webhook/a"), &t1)).await;
    send(get(&proxy.url("/webhook-waiting/9911/resume"), &t2)).await;
    let r1 = db.final_rows(&t1, 1).await;
    let r2 = db.final_rows(&t2, 1).await;
    assert_eq!(
        r1[0].get::<_, Option<&str>>("n8n_execution_id"),
        Some("body-42")
    );
    assert_eq!(
        r2[0].get::<_, Option<&str>>("n8n_execution_id"),
        Some("9911")
    );
    proxy.stop().await;
}

#[tokio::test]
async fn error_status_is_failed_with_http_code() {
    let db = TestDb::new().await;
    let up = upstream(|req| async move {
        let status = if req.uri().path() == "/secret" {
            401
        } else {
            500
        };
        Response::builder()
            .status(status)
            .body(full("nope"))
            .expect("response")
    })
    .await;
    let proxy = Proxy::start(&config(&db, up, "")).await;
    let (t1, t2) = (new_trace_id(), new_trace_id());
    let (p1, _) = send(get(&proxy.url("/boom"), &t1)).await;
    let (p2, _) = send(get(&proxy.url("/secret"), &t2)).await;
    assert_eq!((p1.status.as_u16(), p2.status.as_u16()), (500, 401));
    let r1 = db.final_rows(&t1, 1).await;
    let r2 = db.final_rows(&t2, 1).await;
    assert_eq!(r1[0].get::<_, &str>("overall_status"), "failed");
    assert_eq!(r1[0].get::<_, Option<&str>>("error_code"), Some("HTTP_500"));
    assert_eq!(
        r1[0].get::<_, Option<Value>>("response_payload"),
        Some(json!("nope"))
    );
    assert_eq!(
        r2[0].get::<_, Option<&str>>("error_code"),
        Some("AUTH_FAILED")
    );
    proxy.stop().await;
}

#[tokio::test]
async fn n_concurrent_requests_give_n_finished_rows_in_shared_batches() {
    let db = TestDb::new().await;
    let (up, hits) = counting_upstream(|_| async { Response::new(full(r#"{"ok":true}"#)) }).await;
    let proxy = Proxy::start(&config(&db, up, "")).await;
    const N: usize = 300;
    let url = proxy.url("/webhook/load");
    let mut tasks = Vec::new();
    for i in 0..N {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let (parts, _) = send(post(&url, &format!("load-{i}"), r#"{"n":1}"#)).await;
            parts.status.as_u16()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.expect("task"), 200);
    }
    assert_eq!(hits.load(Ordering::SeqCst), N);
    let mut finished = 0;
    for _ in 0..200 {
        let rows = db
            .rows("SELECT count(*) FROM communication_traces WHERE overall_status = 'success'")
            .await;
        finished = rows[0].get::<_, i64>(0);
        if finished as usize == N {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert_eq!(finished as usize, N);
    let total = db.rows("SELECT count(*) FROM communication_traces").await;
    assert_eq!(total[0].get::<_, i64>(0) as usize, N);
    let m = proxy.metrics.snapshot();
    assert_eq!(
        m.writer_ops,
        2 * N as u64,
        "one insert and one finish per request"
    );
    assert!(
        m.writer_batches < m.writer_ops,
        "concurrent operations shared batches: {} batches for {} ops",
        m.writer_batches,
        m.writer_ops
    );
    proxy.stop().await;
}

/// A generic plan cached while the table was small kept sequential scans in use as the table grew
/// (one full scan per final update). Starting from an empty table, the writer must keep reaching
/// rows through indexes.
#[tokio::test]
async fn writer_keeps_index_plans_as_the_table_grows_from_empty() {
    let db = TestDb::new().await;
    let up = upstream(|_req| async { Response::new(full("{}")) }).await;
    let proxy = Proxy::start(&config(&db, up, "")).await;
    let traces: Vec<String> = (0..60).map(|_| new_trace_id()).collect();
    for t in &traces {
        send(post(&proxy.url("/webhook/grow"), t, r#"{"n":1}"#)).await;
    }
    db.final_rows(&traces[59], 1).await;
    proxy.stop().await;
    // Statistics reach pg_stat_user_tables asynchronously.
    let (mut seq, mut idx) = (0i64, 0i64);
    for _ in 0..100 {
        let row = db
            .client
            .query_one(
                "SELECT coalesce(seq_scan, 0), coalesce(idx_scan, 0) FROM pg_stat_user_tables \
                 WHERE schemaname = $1 AND relname = 'communication_traces'",
                &[&db.schema],
            )
            .await
            .expect("stats");
        (seq, idx) = (row.get(0), row.get(1));
        if idx >= 60 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(idx >= 60, "index scans recorded: {idx}");
    // The test's own queries, migrations and a retention pass scan the small table a few times;
    // writer statements on a sequential-scan plan would add one per request (60 here).
    assert!(seq < 30, "{seq} sequential scans for 120 writes");
}

#[tokio::test]
async fn store_connections_time_out_statements_and_writer_sessions_keep_index_plans() {
    let db = TestDb::new().await;
    let cfg =
        trace_proxy::Config::from_toml_str(&config(&db, closed_port().await, "")).expect("config");
    let show = |pool: deadpool_postgres::Pool, name: &'static str| async move {
        let conn = pool.get().await.expect("connection");
        conn.query_one(&format!("SHOW {name}"), &[])
            .await
            .expect("show")
            .get::<_, String>(0)
    };
    let pool = trace_proxy::store::pool(&cfg.database).expect("pool");
    assert_eq!(show(pool.clone(), "statement_timeout").await, "5s");
    assert_eq!(show(pool.clone(), "search_path").await, db.schema);
    assert_eq!(show(pool, "enable_seqscan").await, "on");
    let writer = trace_proxy::store::writer_pool(&cfg.database).expect("pool");
    assert_eq!(show(writer.clone(), "statement_timeout").await, "5s");
    assert_eq!(
        show(writer.clone(), "plan_cache_mode").await,
        "force_generic_plan"
    );
    assert_eq!(show(writer, "enable_seqscan").await, "off");
}

/// The recorder's boundary on its own: a ticket nobody finished (the proxy always finishes its
/// attempts; this is the safety net) still gets a final row, as an abort.
#[tokio::test]
async fn a_ticket_dropped_unfinished_is_recorded_as_aborted() {
    use trace_proxy::record::Recorder;
    use trace_proxy::shutdown::Shutdown;
    use trace_proxy::trace::{now_utc, AttemptStart};
    let db = TestDb::new().await;
    let up = closed_port().await;
    let cfg = trace_proxy::Config::from_toml_str(&config(&db, up, "")).expect("config");
    let pool = trace_proxy::store::pool(&cfg.database).expect("pool");
    trace_proxy::migrate_pool(&pool).await.expect("migrate");
    let metrics = Arc::new(trace_proxy::metrics::Metrics::default());
    let (recorder, tasks) =
        Recorder::open(&cfg, pool, metrics, uuid::Uuid::new_v4(), None).expect("recorder");
    let trace = new_trace_id();
    let start = || AttemptStart {
        id: uuid::Uuid::now_v7(),
        trace_id: trace.clone(),
        execution_id: None,
        source_service: "bilko-app".into(),
        destination_service: "n8n".into(),
        workflow_id: "w".into(),
        action: None,
        user_id: "u".into(),
        requested_at: now_utc(),
        request_payload: None,
        http_method: "POST".into(),
        http_target: "/webhook/w".into(),
        route_name: "n8n".into(),
        n8n_execution_id: None,
        redactions: None,
    };
    let Ok(ticket) = recorder.start(&trace, "n8n", start).await else {
        panic!("the pending row was not recorded");
    };
    assert_eq!(ticket.number(), Some(1));
    drop(ticket);
    let rows = db.final_rows(&trace, 1).await;
    assert_eq!(rows[0].get::<_, &str>("overall_status"), "failed");
    assert_eq!(
        rows[0].get::<_, Option<&str>>("error_code"),
        Some("CLIENT_ABORTED")
    );
    // The writer ends once the last handle is gone and its queue is written.
    drop(recorder);
    let shutdown = Shutdown::new(std::time::Duration::from_secs(5));
    shutdown.begin();
    assert!(tasks.close(&shutdown).await, "every row written");
}
