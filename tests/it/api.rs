//! The admin query API: auth, every endpoint (order, limits, filters, pagination,
//! payload modes, byte budget, 400/404), the attempt diff on a real two-attempt trace, the
//! `traces` CLI, and `EXPLAIN` proof that each query pattern is served by an index.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use chrono::{NaiveDateTime, TimeDelta, Timelike};
use http::{Request, Response};
use http_body_util::Full;
use serde_json::{json, Value};
use trace_proxy::store::query::{self, Cursor, GroupBy, Page, SearchFilter};
use trace_proxy::trace::Status;
use trace_proxy::Config;

use crate::support::*;

const TOKEN: &str = "test-admin-token-0123456789";

/// The proxy with its admin listener, both on 127.0.0.1:0.
struct Admin {
    proxy: SocketAddr,
    admin: SocketAddr,
    running: Proxy,
}

impl Admin {
    async fn start(toml: &str) -> Admin {
        let running = Proxy::start_with_admin(toml).await;
        Admin {
            proxy: running.addr,
            admin: running.admin.expect("admin listener"),
            running,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    /// GET with the token; the status and the JSON body.
    async fn get(&self, path: &str) -> (u16, Value) {
        let req = Request::get(self.url(path))
            .header("authorization", format!("Bearer {TOKEN}"))
            .body(Full::new(Bytes::new()))
            .expect("request");
        let (parts, body) = send(req).await;
        let v = serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {body:?}"));
        (parts.status.as_u16(), v)
    }

    /// GET that must answer 200.
    async fn ok(&self, path: &str) -> Value {
        let (status, v) = self.get(path).await;
        assert_eq!(status, 200, "{path}: {v}");
        v
    }

    async fn stop(self) {
        self.running.stop().await;
    }
}

fn admin_config(db: &TestDb, upstream: SocketAddr, admin_extra: &str) -> String {
    config(
        db,
        upstream,
        &format!("[admin]\ntoken = \"{TOKEN}\"\n{admin_extra}\n"),
    )
}

/// A proxy + admin on `db` with the schema migrated, forwarding to a closed port.
async fn started(db: &TestDb, admin_extra: &str) -> Admin {
    let a = Admin::start(&admin_config(db, closed_port().await, admin_extra)).await;
    wait_for_migrations(db).await;
    a
}

/// Recent enough that retention (30 days by default) never touches the rows.
fn base() -> NaiveDateTime {
    trace_proxy::trace::now_utc() - TimeDelta::hours(2)
}

/// One stored attempt, as the proxy would have written it.
#[derive(Clone)]
struct Row {
    trace: String,
    attempt: i32,
    workflow: String,
    user: String,
    destination: String,
    status: &'static str,
    code: Option<&'static str>,
    at: NaiveDateTime,
    duration: Option<i32>,
    payload: Option<Value>,
    execution: Option<uuid::Uuid>,
}

impl Row {
    fn new(trace: &str, attempt: i32, at: NaiveDateTime) -> Row {
        Row {
            trace: trace.into(),
            attempt,
            workflow: "wf".into(),
            user: "alice".into(),
            destination: "n8n".into(),
            status: "success",
            code: None,
            at,
            duration: Some(10),
            payload: Some(json!({"n": attempt})),
            execution: None,
        }
    }
}

/// Row ids increase in insertion order, so tests know the tie-break order of equal times.
static NEXT_ID: AtomicUsize = AtomicUsize::new(1);

async fn insert(db: &TestDb, rows: &[Row]) {
    for r in rows {
        let id = uuid::Uuid::from_u128(NEXT_ID.fetch_add(1, Ordering::SeqCst) as u128);
        db.client
            .execute(
                "INSERT INTO communication_traces (id, trace_id, attempt_number, source_service, \
                 destination_service, workflow_id, action, user_id, requested_at, responded_at, \
                 duration_ms, request_payload, response_payload, overall_status, error_code, \
                 error_detail, execution_id) \
                 VALUES ($1, $2, $3, 'bilko-app', $4, $5, 'trigger-workflow', $6, $7, $7, $8, $9, \
                 '{\"ok\": true}', $10, $11, $12, $13)",
                &[
                    &id,
                    &r.trace,
                    &r.attempt,
                    &r.destination,
                    &r.workflow,
                    &r.user,
                    &r.at,
                    &r.duration,
                    &r.payload,
                    &r.status,
                    &r.code,
                    &r.code.map(|c| format!("{c} happened")),
                    &r.execution,
                ],
            )
            .await
            .expect("insert row");
    }
}

fn items(v: &Value) -> &Vec<Value> {
    v["items"].as_array().expect("items array")
}

fn col<'a>(v: &'a Value, field: &str) -> Vec<&'a Value> {
    items(v).iter().map(|i| &i[field]).collect()
}

fn secs(n: i64) -> TimeDelta {
    TimeDelta::seconds(n)
}

#[tokio::test]
async fn every_request_needs_the_bearer_token_and_only_get_is_allowed() {
    let db = TestDb::new().await;
    let a = started(&db, "").await;
    let path = "/api/openapi.json";
    for auth in [
        None,
        Some("Bearer wrong-token-wrong-token-00".to_owned()),
        Some(TOKEN.to_owned()),
        Some(format!("Basic {TOKEN}")),
        Some(format!("Bearer {TOKEN}x")),
    ] {
        let mut req = Request::get(a.url(path));
        if let Some(v) = &auth {
            req = req.header("authorization", v);
        }
        let (parts, body) = send(req.body(Full::new(Bytes::new())).expect("req")).await;
        assert_eq!(parts.status, 401, "{auth:?}");
        assert!(parts.headers["www-authenticate"]
            .to_str()
            .expect("header")
            .starts_with("Bearer"));
        let v: Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(v["error"]["code"], "UNAUTHORIZED");
    }
    // Unauthorised requests learn nothing, not even whether a path exists.
    let (parts, _) = send(
        Request::get(a.url("/api/traces/some-trace"))
            .body(Full::new(Bytes::new()))
            .expect("req"),
    )
    .await;
    assert_eq!(parts.status, 401);
    // `bearer` is case-insensitive (RFC 6750 / RFC 9110 §11.1).
    let (parts, _) = send(
        Request::get(a.url(path))
            .header("authorization", format!("bearer {TOKEN}"))
            .body(Full::new(Bytes::new()))
            .expect("req"),
    )
    .await;
    assert_eq!(parts.status, 200);
    // Read-only.
    let (parts, _) = send(
        Request::post(a.url("/api/traces"))
            .header("authorization", format!("Bearer {TOKEN}"))
            .body(Full::new(Bytes::from_static(b"{}")))
            .expect("req"),
    )
    .await;
    assert_eq!(parts.status, 405);
    assert_eq!(parts.headers["allow"], "GET");
    let (status, v) = a.get("/api/nope").await;
    assert_eq!(status, 404);
    assert_eq!(v["error"]["code"], "NOT_FOUND");
    a.stop().await;
}

#[tokio::test]
async fn without_a_token_the_query_api_is_disabled_but_health_serves() {
    let db = TestDb::new().await;
    let toml = config(&db, closed_port().await, "");
    let a = Admin::start(&toml).await;
    wait_for_migrations(&db).await;
    // Every query endpoint refuses, whatever token is presented, and says why.
    for (path, auth) in [
        ("/api/openapi.json", None),
        ("/api/traces/some-trace", Some(format!("Bearer {TOKEN}"))),
        ("/api/nope", None),
    ] {
        let mut req = Request::get(a.url(path));
        if let Some(v) = &auth {
            req = req.header("authorization", v);
        }
        let (parts, body) = send(req.body(Full::new(Bytes::new())).expect("req")).await;
        assert_eq!(parts.status, 403, "{path}");
        let v: Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(v["error"]["code"], "API_DISABLED", "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("disabled until admin.token")),
            "{v}"
        );
    }
    // The listener itself serves health without a token; the proxy serves too.
    let (parts, body) = send(
        Request::get(a.url("/healthz"))
            .body(Full::new(Bytes::new()))
            .expect("req"),
    )
    .await;
    assert_eq!((parts.status.as_u16(), &body[..]), (200, &b"ok\n"[..]));
    assert!(tokio::net::TcpStream::connect(a.proxy).await.is_ok());
    a.stop().await;
}

#[tokio::test]
async fn admin_listener_shuts_down_with_the_proxy() {
    let db = TestDb::new().await;
    let a = started(&db, "").await;
    a.ok("/api/openapi.json").await;
    let addr = a.admin;
    a.stop().await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "admin listener still open after shutdown"
    );
}

#[tokio::test]
async fn chain_is_ordered_by_attempt_with_fields_payload_modes_and_404() {
    let db = TestDb::new().await;
    let a = started(&db, "").await;
    let t0 = base();
    let mut r3 = Row::new("order/42", 3, t0 + secs(3));
    r3.status = "failed";
    r3.code = Some("TIMEOUT");
    // Inserted out of order; one attempt of another trace as a decoy.
    insert(
        &db,
        &[
            r3,
            Row::new("order/42", 1, t0 + secs(1)),
            Row::new("order/42", 2, t0 + secs(2)),
            Row::new("other", 1, t0),
        ],
    )
    .await;
    // A trace id with '/' travels percent-encoded.
    let v = a.ok("/api/traces/order%2F42").await;
    assert_eq!(v["traceId"], "order/42");
    assert_eq!(col(&v, "attemptNumber"), [&json!(1), &json!(2), &json!(3)]);
    assert_eq!(
        (
            v["count"].clone(),
            v["hasMore"].clone(),
            v["truncated"].clone()
        ),
        (json!(3), json!(false), json!(false))
    );
    let first = &items(&v)[0];
    // Exactly DATA-002's CommunicationTrace fields, ISO-8601 UTC times.
    let mut keys: Vec<&str> = first
        .as_object()
        .expect("obj")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    let mut expected =
        trace_proxy::api::render::FIELDS[..trace_proxy::api::render::SPEC_FIELDS].to_vec();
    expected.sort_unstable();
    assert_eq!(keys, expected);
    let at = first["requestedAt"].as_str().expect("time");
    assert!(at.ends_with('Z') && at.len() == 24, "{at}");
    assert_eq!(first["requestPayload"], json!({"n": 1}));
    assert_eq!(items(&v)[2]["errorCode"], "TIMEOUT");

    let v = a
        .ok("/api/traces/order%2F42?fields=attemptNumber,overallStatus")
        .await;
    assert_eq!(
        items(&v)[2],
        json!({"attemptNumber": 3, "overallStatus": "failed"})
    );
    let v = a.ok("/api/traces/order%2F42?payloads=none").await;
    assert!(items(&v)[0].get("requestPayload").is_none());
    assert!(items(&v)[0].get("responsePayload").is_none());

    let (status, v) = a.get("/api/traces/no-such-trace").await;
    assert_eq!(status, 404, "{v}");
    assert!(v["error"]["message"]
        .as_str()
        .expect("msg")
        .contains("no-such-trace"));
    let (status, _) = a.get("/api/traces/no-such-trace/diff").await;
    assert_eq!(status, 404);
    a.stop().await;
}

#[tokio::test]
async fn diff_of_a_real_two_attempt_trace_names_only_what_changed() {
    let db = TestDb::new().await;
    let (up, _) = counting_upstream(|n| async move {
        match n {
            0 => Response::builder()
                .status(503)
                .body(full("busy"))
                .expect("response"),
            _ => Response::new(full(r#"{"ok":true}"#)),
        }
    })
    .await;
    let a = Admin::start(&admin_config(&db, up, "")).await;
    let trace = new_trace_id();
    let url = format!("http://{}/webhook/orders", a.proxy);
    let (p1, _) = send(post(&url, &trace, r#"{"order":7,"qty":1,"note":"x"}"#)).await;
    assert_eq!(p1.status, 503);
    let (p2, _) = send(post(&url, &trace, r#"{"order":7,"qty":2,"coupon":"Z"}"#)).await;
    assert_eq!(p2.status, 200);
    db.final_rows(&trace, 2).await;

    let v = a.ok(&format!("/api/traces/{trace}/diff")).await;
    assert_eq!(v["attempts"], 2);
    let d = &items(&v)[0];
    assert_eq!(
        (d["fromAttempt"].clone(), d["toAttempt"].clone()),
        (json!(1), json!(2))
    );
    assert_eq!(
        d["overallStatus"],
        json!({"old": "failed", "new": "success"})
    );
    assert_eq!(d["errorCode"], json!({"old": "HTTP_503", "new": null}));
    let mut changes: Vec<Value> = d["request"].as_array().expect("request").clone();
    changes.sort_by_key(|c| c["path"].as_str().unwrap_or_default().to_owned());
    assert_eq!(
        changes,
        [
            json!({"op": "added", "path": "/coupon", "value": "Z"}),
            json!({"op": "removed", "path": "/note", "old": "x"}),
            json!({"op": "changed", "path": "/qty", "old": 1, "new": 2}),
        ]
    );
    assert!(
        !changes.iter().any(|c| c["path"] == "/order"),
        "unchanged fields are left out"
    );
    // payloads=none: only the op and the path.
    let v = a
        .ok(&format!("/api/traces/{trace}/diff?payloads=none"))
        .await;
    assert!(items(&v)[0]["request"]
        .as_array()
        .expect("request")
        .iter()
        .all(|c| c.get("old").is_none() && c.get("new").is_none() && c.get("value").is_none()));
    // The chain through the same API.
    let v = a.ok(&format!("/api/traces/{trace}")).await;
    assert_eq!(
        col(&v, "overallStatus"),
        [&json!("failed"), &json!("success")]
    );
    a.stop().await;
}

/// 7 failures of `wf` (two sharing one timestamp), successes, and failures elsewhere.
fn failure_rows(t0: NaiveDateTime) -> Vec<Row> {
    let mut rows = Vec::new();
    for i in 0..7 {
        let mut r = Row::new(&format!("f{i}"), 1, t0 + secs(i.min(5)));
        r.status = "failed";
        r.code = Some(if i % 2 == 0 { "TIMEOUT" } else { "HTTP_500" });
        rows.push(r);
    }
    for i in 0..5 {
        rows.push(Row::new(&format!("s{i}"), 1, t0 + secs(100 + i)));
    }
    let mut other = Row::new("elsewhere", 1, t0 + secs(200));
    other.workflow = "wf-other".into();
    other.status = "failed";
    rows.push(other);
    rows
}

/// Follows `nextCursor` from `path` (which has a `?`) to the end; every page's `items`.
async fn all_pages(a: &Admin, path: &str) -> Vec<Vec<Value>> {
    let mut pages = Vec::new();
    let mut url = path.to_owned();
    for _ in 0..50 {
        let v = a.ok(&url).await;
        pages.push(items(&v).clone());
        match v["nextCursor"].as_str() {
            Some(c) => {
                assert_eq!(v["hasMore"], true);
                url = format!("{path}&cursor={c}");
            }
            None => {
                assert_eq!(v["hasMore"], false);
                return pages;
            }
        }
    }
    panic!("pagination did not end");
}

#[tokio::test]
async fn failures_are_newest_first_limited_and_page_without_gaps_or_repeats() {
    let db = TestDb::new().await;
    let a = started(&db, "").await;
    let t0 = base();
    insert(&db, &failure_rows(t0)).await;
    let v = a.ok("/api/workflows/wf/failures?limit=3").await;
    assert_eq!(v["limit"], 3);
    assert_eq!(v["count"], 3);
    assert_eq!(v["hasMore"], true);
    assert!(col(&v, "overallStatus").iter().all(|s| *s == "failed"));
    assert!(col(&v, "workflowId").iter().all(|s| *s == "wf"));
    let pages = all_pages(
        &a,
        "/api/workflows/wf/failures?limit=3&fields=id,traceId,requestedAt",
    )
    .await;
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [3, 3, 1]);
    let all: Vec<&Value> = pages.iter().flatten().collect();
    let traces: Vec<&str> = all
        .iter()
        .map(|i| i["traceId"].as_str().expect("id"))
        .collect();
    let mut unique = traces.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), 7, "every failure exactly once: {traces:?}");
    // Newest first; f5 and f6 share a timestamp and come in a stable (id) order.
    let times: Vec<&str> = all
        .iter()
        .map(|i| i["requestedAt"].as_str().expect("t"))
        .collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "{times:?}");
    assert_eq!(&traces[2..], ["f4", "f3", "f2", "f1", "f0"]);
    let again = all_pages(
        &a,
        "/api/workflows/wf/failures?limit=3&fields=id,traceId,requestedAt",
    )
    .await;
    assert_eq!(pages, again, "stable ordering");
    // Default and maximum limit; no failures is an empty list, not a 404.
    let v = a.ok("/api/workflows/wf/failures").await;
    assert_eq!(
        (v["count"].clone(), v["limit"].clone()),
        (json!(7), json!(50))
    );
    a.ok("/api/workflows/wf/failures?limit=500").await;
    let v = a.ok("/api/workflows/nothing-failed/failures").await;
    assert_eq!(
        (v["count"].clone(), v["hasMore"].clone()),
        (json!(0), json!(false))
    );
    a.stop().await;
}

#[tokio::test]
async fn user_history_is_newest_first_for_that_user_only() {
    let db = TestDb::new().await;
    let a = started(&db, "").await;
    let t0 = base();
    let mut rows = Vec::new();
    for i in 0..6 {
        let mut r = Row::new(&format!("h{i}"), 1, t0 + secs(i));
        r.status = if i % 3 == 0 { "failed" } else { "success" };
        rows.push(r);
    }
    let mut bob = Row::new("bob-1", 1, t0 + secs(50));
    bob.user = "bob".into();
    rows.push(bob);
    insert(&db, &rows).await;
    let v = a.ok("/api/users/alice/history?limit=4").await;
    let traces: Vec<&Value> = col(&v, "traceId");
    assert_eq!(
        traces,
        [&json!("h5"), &json!("h4"), &json!("h3"), &json!("h2")]
    );
    assert_eq!(v["hasMore"], true);
    let pages = all_pages(&a, "/api/users/alice/history?limit=4&payloads=none").await;
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [4, 2]);
    let v = a.ok("/api/users/bob/history").await;
    assert_eq!(col(&v, "traceId"), [&json!("bob-1")]);
    a.stop().await;
}

#[tokio::test]
async fn execution_traces_group_one_run_and_check_the_id() {
    let db = TestDb::new().await;
    let a = started(&db, "").await;
    let t0 = base();
    let exec = uuid::Uuid::new_v4();
    let mut rows = Vec::new();
    for (i, (trace, attempt)) in [("e-a", 1), ("e-b", 1), ("e-a", 2)].iter().enumerate() {
        let mut r = Row::new(trace, *attempt, t0 + secs(i as i64));
        r.execution = Some(exec);
        rows.push(r);
    }
    rows.push(Row::new("no-exec", 1, t0));
    insert(&db, &rows).await;
    let v = a.ok(&format!("/api/executions/{exec}/traces")).await;
    assert_eq!(v["executionId"], exec.to_string());
    let pairs: Vec<(Value, Value)> = items(&v)
        .iter()
        .map(|i| (i["traceId"].clone(), i["attemptNumber"].clone()))
        .collect();
    assert_eq!(
        pairs,
        [
            (json!("e-a"), json!(1)),
            (json!("e-b"), json!(1)),
            (json!("e-a"), json!(2))
        ]
    );
    let (status, v) = a.get("/api/executions/not-a-uuid/traces").await;
    assert_eq!(status, 400);
    assert!(v["error"]["message"]
        .as_str()
        .expect("m")
        .contains("executionId"));
    let (status, _) = a
        .get(&format!("/api/executions/{}/traces", uuid::Uuid::new_v4()))
        .await;
    assert_eq!(status, 404);
    a.stop().await;
}

#[tokio::test]
async fn search_filters_combine_and_keyset_pages_cover_every_row_once() {
    let db = TestDb::new().await;
    let a = started(&db, "").await;
    let t0 = base();
    let mut rows = Vec::new();
    for i in 0..30i64 {
        let mut r = Row::new(&format!("q{i:02}"), 1, t0 + secs(i / 2)); // pairs share a time
        r.workflow = format!("w{}", i % 3);
        r.user = format!("u{}", i % 2);
        r.destination = if i % 5 == 0 {
            "bilko-app".into()
        } else {
            "n8n".into()
        };
        if i % 4 == 0 {
            r.status = "failed";
            r.code = Some(if i % 8 == 0 { "TIMEOUT" } else { "HTTP_502" });
        }
        rows.push(r);
    }
    insert(&db, &rows).await;
    let expect = |f: &dyn Fn(i64) -> bool| -> Vec<String> {
        let mut v: Vec<i64> = (0..30).filter(|i| f(*i)).collect();
        // Newest first; equal times in descending id (insertion) order.
        v.sort_by_key(|i| std::cmp::Reverse((i / 2, *i)));
        v.iter().map(|i| format!("q{i:02}")).collect()
    };
    let got = |pages: Vec<Vec<Value>>| -> Vec<String> {
        pages
            .into_iter()
            .flatten()
            .map(|i| i["traceId"].as_str().expect("id").to_owned())
            .collect()
    };
    assert_eq!(
        got(all_pages(&a, "/api/traces?limit=7&fields=traceId").await),
        expect(&|_| true)
    );
    assert_eq!(
        got(all_pages(&a, "/api/traces?status=failed&limit=2&fields=traceId").await),
        expect(&|i| i % 4 == 0)
    );
    assert_eq!(
        got(all_pages(&a, "/api/traces?workflowId=w1&userId=u1&limit=3").await),
        expect(&|i| i % 3 == 1 && i % 2 == 1)
    );
    assert_eq!(
        got(all_pages(&a, "/api/traces?destination=bilko-app&limit=50").await),
        expect(&|i| i % 5 == 0)
    );
    assert_eq!(
        got(all_pages(&a, "/api/traces?errorCode=TIMEOUT&status=failed").await),
        expect(&|i| i % 8 == 0)
    );
    let since = trace_proxy::trace::iso_utc(&(t0 + secs(5)));
    let until = trace_proxy::trace::iso_utc(&(t0 + secs(10)));
    assert_eq!(
        got(all_pages(
            &a,
            &format!("/api/traces?since={since}&until={until}&limit=4")
        )
        .await),
        expect(&|i| (5..10).contains(&(i / 2)))
    );
    assert_eq!(
        got(all_pages(&a, "/api/traces?workflowId=nope").await),
        Vec::<String>::new()
    );
    a.stop().await;
}

#[tokio::test]
async fn bad_input_is_a_400_that_names_the_problem() {
    let db = TestDb::new().await;
    let a = started(&db, "").await;
    insert(&db, &[Row::new("t1", 1, base())]).await;
    for (path, needle) in [
        ("/api/traces?limit=abc", "limit"),
        ("/api/traces?limit=100000", "between 1 and 500"),
        ("/api/traces?limit=0", "limit"),
        ("/api/traces?limit=-5", "limit"),
        (
            "/api/workflows/wf/failures?limit=9999999999999999999999",
            "limit",
        ),
        ("/api/users/u/history?limit=1.5", "limit"),
        ("/api/traces?since=yesterday", "since"),
        ("/api/traces?until=2025-13-01T00:00:00Z", "until"),
        (
            "/api/traces?since=2025-06-02T00:00:00Z&until=2025-06-01T00:00:00Z",
            "earlier",
        ),
        ("/api/traces/t1?fields=id,password", "password"),
        ("/api/traces?fields=", "fields"),
        ("/api/traces?payloads=some", "payloads"),
        ("/api/traces?status=broken", "status"),
        ("/api/traces?cursor=garbage", "cursor"),
        ("/api/traces?workflow_id=x", "workflow_id"),
        ("/api/traces?limit=1&limit=2", "more than once"),
        ("/api/traces/t1?limit=5", "limit"),
        ("/api/traces/t1/diff?fields=id", "fields"),
        ("/api/stats?groupBy=user", "groupBy"),
        ("/api/stats?since=2025-06-01", "since"),
        ("/api/openapi.json?x=1", "x"),
        ("/api/traces/%ZZ", "percent"),
        ("/api/traces/a%00b", "NUL"),
    ] {
        let (status, v) = a.get(path).await;
        assert_eq!(status, 400, "{path}: {v}");
        assert_eq!(v["error"]["code"], "BAD_REQUEST", "{path}");
        let msg = v["error"]["message"].as_str().expect("message");
        assert!(
            msg.contains(needle),
            "{path}: {msg:?} should mention {needle:?}"
        );
    }
    a.stop().await;
}

#[tokio::test]
async fn stats_count_failure_rates_and_duration_percentiles_per_group() {
    let db = TestDb::new().await;
    let a = started(&db, "").await;
    let t0 = base();
    let mut rows = Vec::new();
    // wf-a: durations 1..=20 ms, 5 failed (4 TIMEOUT, 1 HTTP_500), 1 pending.
    for i in 1..=20 {
        let mut r = Row::new(&format!("a{i}"), 1, t0 + secs(i));
        r.workflow = "wf-a".into();
        r.duration = Some(i as i32);
        if i <= 5 {
            r.status = "failed";
            r.code = Some(if i == 5 { "HTTP_500" } else { "TIMEOUT" });
        }
        if i == 20 {
            r.status = "pending";
            r.duration = None;
        }
        rows.push(r);
    }
    // wf-b: 2 successes to bilko-app; one outside the window.
    for i in 1..=3 {
        let mut r = Row::new(
            &format!("b{i}"),
            1,
            t0 + secs(if i == 3 { 4000 } else { i }),
        );
        r.workflow = "wf-b".into();
        r.destination = "bilko-app".into();
        r.duration = Some(100);
        rows.push(r);
    }
    insert(&db, &rows).await;
    let window = format!(
        "since={}&until={}",
        trace_proxy::trace::iso_utc(&t0),
        trace_proxy::trace::iso_utc(&(t0 + secs(3600)))
    );
    let v = a.ok(&format!("/api/stats?{window}")).await;
    assert_eq!(v["groupBy"], "workflow");
    assert_eq!(v["groupsTotal"], 2);
    assert_eq!(v["truncated"], false);
    let wa = &items(&v)[0];
    assert_eq!(wa["key"], "wf-a");
    assert_eq!(
        (
            wa["count"].clone(),
            wa["success"].clone(),
            wa["failed"].clone(),
            wa["unfinished"].clone()
        ),
        (json!(20), json!(14), json!(5), json!(1))
    );
    let rate = wa["failureRate"].as_f64().expect("rate");
    assert!((rate - 5.0 / 19.0).abs() < 1e-9, "{rate}");
    // Nearest rank over the 19 durations 1..=19.
    assert_eq!(
        (wa["p50DurationMs"].clone(), wa["p95DurationMs"].clone()),
        (json!(10), json!(19))
    );
    assert_eq!(items(&v)[1]["key"], "wf-b");
    assert_eq!(items(&v)[1]["failureRate"], 0.0);
    assert_eq!(v["totals"]["count"], 22);
    assert!(v["totals"].get("key").is_none());

    let v = a
        .ok(&format!("/api/stats?{window}&groupBy=errorCode"))
        .await;
    let keyed: Vec<(Value, Value)> = items(&v)
        .iter()
        .map(|g| (g["key"].clone(), g["count"].clone()))
        .collect();
    assert_eq!(
        keyed,
        [
            (Value::Null, json!(17)),
            (json!("TIMEOUT"), json!(4)),
            (json!("HTTP_500"), json!(1))
        ]
    );
    let v = a
        .ok(&format!("/api/stats?{window}&groupBy=destination&limit=1"))
        .await;
    assert_eq!(col(&v, "key"), [&json!("n8n")]);
    assert_eq!(
        (v["truncated"].clone(), v["groupsTotal"].clone()),
        (json!(true), json!(2))
    );
    // The default window is the last 24 h: every row here is inside it.
    let v = a.ok("/api/stats").await;
    assert_eq!(v["totals"]["count"], 23);
    a.stop().await;
}

#[tokio::test]
async fn payload_modes_and_the_byte_budget_flag_what_they_cut() {
    let db = TestDb::new().await;
    let a = started(&db, "max_response_bytes = 65536").await;
    let t0 = base();
    let big = "x".repeat(20_000);
    let rows: Vec<Row> = (0..6)
        .map(|i| {
            let mut r = Row::new(&format!("big{i}"), 1, t0 + secs(i));
            r.user = "heavy".into();
            r.payload = Some(json!({"blob": big, "i": i}));
            r
        })
        .collect();
    insert(&db, &rows).await;
    // full: 6 x 20 KB cannot fit 64 KiB; cut, flagged, and continuable.
    let v = a.ok("/api/users/heavy/history?payloads=full").await;
    assert_eq!(v["truncated"], true);
    assert!(v["truncatedReason"]
        .as_str()
        .expect("reason")
        .contains("max_response_bytes"));
    let shown = items(&v).len();
    assert!((1..6).contains(&shown), "{shown}");
    assert_eq!(v["hasMore"], true);
    let body = serde_json::to_vec(&v).expect("json");
    assert!(body.len() <= 65_536, "{} bytes", body.len());
    let mut seen = shown;
    let mut cursor = v["nextCursor"].as_str().expect("cursor").to_owned();
    loop {
        let v = a
            .ok(&format!(
                "/api/users/heavy/history?payloads=full&cursor={cursor}"
            ))
            .await;
        seen += items(&v).len();
        match v["nextCursor"].as_str() {
            Some(c) => cursor = c.to_owned(),
            None => break,
        }
    }
    assert_eq!(seen, 6, "following the cursor reaches every row");
    // truncated (default): a preview with the stored truncation indicator's shape.
    let v = a.ok("/api/users/heavy/history").await;
    assert_eq!(v["truncated"], false);
    let p = &items(&v)[0]["requestPayload"];
    assert_eq!(p["_truncated"]["limit_bytes"], 2048);
    assert!(p["_truncated"]["original_bytes"].as_u64().expect("n") > 20_000);
    assert!(p["preview"]
        .as_str()
        .expect("preview")
        .starts_with("{\"blob\":\"xxx"));
    // none: not there at all.
    let v = a.ok("/api/users/heavy/history?payloads=none").await;
    assert!(items(&v).iter().all(|i| i.get("requestPayload").is_none()));
    // A single row larger than the budget is still shown, its payload replaced by a size note.
    insert(
        &db,
        &[{
            let mut r = Row::new("huge", 1, t0);
            r.payload = Some(json!({"blob": "y".repeat(100_000)}));
            r
        }],
    )
    .await;
    let v = a.ok("/api/traces/huge?payloads=full").await;
    assert_eq!(v["truncated"], true);
    assert!(
        items(&v)[0]["requestPayload"]["_omitted"]["original_bytes"]
            .as_u64()
            .expect("n")
            > 100_000
    );
    a.stop().await;
}

#[tokio::test]
async fn openapi_describes_every_endpoint_and_each_answers() {
    let db = TestDb::new().await;
    let a = started(&db, "").await;
    let exec = uuid::Uuid::new_v4();
    let mut r = Row::new("t1", 1, base());
    r.execution = Some(exec);
    insert(&db, &[r]).await;
    let doc = a.ok("/api/openapi.json").await;
    assert!(doc["openapi"].as_str().expect("version").starts_with("3."));
    let mut paths: Vec<&str> = doc["paths"]
        .as_object()
        .expect("paths")
        .keys()
        .map(String::as_str)
        .collect();
    paths.sort_unstable();
    assert_eq!(
        paths,
        [
            "/api/executions/{executionId}/traces",
            "/api/failures/recurring",
            "/api/openapi.json",
            "/api/overview",
            "/api/stats",
            "/api/traces",
            "/api/traces/{traceId}",
            "/api/traces/{traceId}/diff",
            "/api/traces/{traceId}/explain",
            "/api/users/{userId}/history",
            "/api/workflows/{workflowId}/failures",
            "/api/workflows/{workflowId}/patterns",
        ]
    );
    for p in paths {
        let concrete = p
            .replace("{executionId}", &exec.to_string())
            .replace("{traceId}", "t1")
            .replace("{userId}", "alice")
            .replace("{workflowId}", "wf");
        a.ok(&concrete).await;
    }
    // The schemas are the types': a real row (every field) and a real diff have only keys the
    // document names.
    let mut second = Row::new("t1", 2, base() + secs(1));
    second.status = "failed";
    insert(&db, &[second]).await;
    let schema_keys = |name: &str| -> Vec<String> {
        doc["components"]["schemas"][name]["properties"]
            .as_object()
            .unwrap_or_else(|| panic!("no schema {name}"))
            .keys()
            .cloned()
            .collect()
    };
    let row_keys = schema_keys("CommunicationTrace");
    let rows = a.ok("/api/traces/t1?fields=*&payloads=full").await;
    let item = rows["items"][0].as_object().expect("a row");
    assert_eq!(item.len(), row_keys.len(), "fields=* returns every field");
    for k in item.keys() {
        assert!(row_keys.contains(k), "row field {k} is not in the schema");
    }
    let diff_keys = schema_keys("AttemptDiff");
    let diff = a.ok("/api/traces/t1/diff").await;
    let change = diff["items"][0].as_object().expect("a diff");
    assert!(change.contains_key("overallStatus"), "{change:?}");
    for k in change.keys() {
        assert!(diff_keys.contains(k), "diff field {k} is not in the schema");
    }
    a.stop().await;
}

#[tokio::test]
async fn overview_buckets_counts_failures_durations_and_top_failures() {
    let db = TestDb::new().await;
    let a = started(&db, "").await;
    // A whole hour in the recent past: the window's end, aligned for every window size.
    let now = trace_proxy::trace::now_utc();
    let until = now
        .date()
        .and_hms_opt(now.time().hour(), 0, 0)
        .expect("hour")
        - TimeDelta::hours(1);
    let at = |secs_before: i64| until - secs(secs_before);
    let row = |trace: &str, t, wf: &str, status, code, ms| {
        let mut r = Row::new(trace, 1, t);
        r.workflow = String::from(wf);
        r.status = status;
        r.code = code;
        r.duration = Some(ms);
        r
    };
    insert(
        &db,
        &[
            row("o1", at(3570), "a", "success", None, 10),
            row("o2", at(3565), "a", "success", None, 30),
            row("o3", at(3560), "a", "failed", Some("HTTP_503"), 50),
            row("o4", at(60), "b", "failed", Some("TIMEOUT"), 100),
            // Outside the window on either side.
            row("o5", until, "a", "failed", Some("HTTP_500"), 1),
            row("o6", at(3660), "a", "failed", Some("HTTP_500"), 1),
            // Unfinished now, whenever it started.
            row("o7", at(7200), "b", "pending", None, 0),
        ],
    )
    .await;
    let iso = |t: NaiveDateTime| trace_proxy::trace::iso_utc(&t);
    let v = a
        .ok(&format!("/api/overview?window=hour&until={}", iso(until)))
        .await;
    assert_eq!(v["since"], iso(until - TimeDelta::hours(1)));
    assert_eq!(v["until"], iso(until));
    assert_eq!(v["bucketSeconds"], 60);
    let buckets = v["buckets"].as_array().expect("buckets");
    assert_eq!(buckets.len(), 60, "every bucket, empty ones included");
    assert_eq!(buckets[0]["start"], iso(until - TimeDelta::hours(1)));
    assert_eq!(
        (&buckets[0]["count"], &buckets[0]["failed"]),
        (&json!(3), &json!(1))
    );
    assert_eq!(
        (&buckets[0]["p50DurationMs"], &buckets[0]["p95DurationMs"]),
        (&json!(30), &json!(50))
    );
    assert_eq!(buckets[59]["count"], 1);
    assert_eq!(buckets[30]["count"], 0);
    assert_eq!(buckets[30]["p50DurationMs"], Value::Null);
    let t = &v["totals"];
    assert_eq!(
        (&t["count"], &t["failed"], &t["success"]),
        (&json!(4), &json!(2), &json!(2))
    );
    assert_eq!(t["failureRate"], 0.5);
    assert_eq!(
        v["topFailingWorkflows"],
        json!([{"key": "a", "count": 3, "failed": 1}, {"key": "b", "count": 1, "failed": 1}])
    );
    assert_eq!(
        v["topErrorCodes"],
        json!([{"key": "HTTP_503", "count": 1, "failed": 1}, {"key": "TIMEOUT", "count": 1, "failed": 1}])
    );
    assert_eq!(v["unfinishedNow"]["pending"], 1);
    assert_eq!(v["unfinishedNow"]["inProgress"], 0);
    assert_eq!(v["unfinishedNow"]["oldestRequestedAt"], iso(at(7200)));
    // One workflow; `until` between boundaries ends the window at the next one.
    let v = a
        .ok(&format!(
            "/api/overview?window=hour&workflowId=b&limit=1&until={}",
            iso(until - secs(50))
        ))
        .await;
    assert_eq!(v["until"], iso(until));
    assert_eq!(v["workflowId"], "b");
    assert_eq!(v["totals"]["count"], 1);
    assert_eq!(
        v["topErrorCodes"],
        json!([{"key": "TIMEOUT", "count": 1, "failed": 1}])
    );
    assert_eq!(v["unfinishedNow"]["pending"], 1);
    let v = a
        .ok(&format!("/api/overview?window=week&until={}", iso(until)))
        .await;
    assert_eq!(v["buckets"].as_array().map(Vec::len), Some(168));
    assert_eq!(v["bucketSeconds"], 3600);
    assert_eq!(v["totals"]["count"], 6);
    let v = a.ok("/api/overview").await;
    assert_eq!(
        (&v["window"], v["buckets"].as_array().map(Vec::len)),
        (&json!("day"), Some(96))
    );
    for bad in [
        "window=month",
        "limit=0",
        "workflowId=",
        "until=yesterday",
        "since=x",
    ] {
        let (status, v) = a.get(&format!("/api/overview?{bad}")).await;
        assert_eq!(status, 400, "{bad}: {v}");
    }
    a.stop().await;
}

/// The current window is kept for a few seconds (hour: 5 s) and then read again; the unfinished
/// attempts are read on every request.
#[tokio::test]
async fn the_current_overview_is_kept_briefly_and_unfinished_counts_stay_live() {
    let db = TestDb::new().await;
    let a = started(&db, "").await;
    let recent = trace_proxy::trace::now_utc() - secs(30);
    insert(&db, &[Row::new("k1", 1, recent)]).await;
    let first = a.ok("/api/overview?window=hour").await;
    assert_eq!(first["totals"]["count"], 1);
    let mut pending = Row::new("k2", 1, recent);
    pending.status = "pending";
    insert(&db, &[Row::new("k3", 1, recent), pending]).await;
    let kept = a.ok("/api/overview?window=hour").await;
    assert_eq!(kept["generatedAt"], first["generatedAt"], "{kept}");
    assert_eq!(
        kept["totals"]["count"], 1,
        "buckets come from the kept read"
    );
    assert_eq!(kept["unfinishedNow"]["pending"], 1, "unfinished is live");
    // A past window is read as asked, never from what is kept.
    let until = trace_proxy::trace::iso_utc(&(recent + TimeDelta::minutes(2)));
    let past = a
        .ok(&format!("/api/overview?window=hour&until={until}"))
        .await;
    assert_eq!(past["totals"]["count"], 3);
    // Once stale, the kept read is served once more while it is read again.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let v = a.ok("/api/overview?window=hour").await;
        if v["totals"]["count"] == 3 {
            assert_ne!(v["generatedAt"], first["generatedAt"]);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never read again: {v}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    a.stop().await;
}

/// `fields=*` adds trace-proxy's HTTP columns to the DATA-002 fields.
#[tokio::test]
async fn fields_star_adds_the_http_columns_of_a_real_request() {
    let db = TestDb::new().await;
    let (up, _) = counting_upstream(|_| async {
        Response::builder()
            .status(502)
            .body(full("bad gateway"))
            .expect("response")
    })
    .await;
    let a = Admin::start(&admin_config(&db, up, "")).await;
    let trace = new_trace_id();
    let (parts, _) = send(get(
        &format!("http://{}/webhook/x?token=s3cret", a.proxy),
        &trace,
    ))
    .await;
    assert_eq!(parts.status, 502);
    db.final_rows(&trace, 1).await;
    let v = a.ok(&format!("/api/traces/{trace}?fields=*")).await;
    let row = &items(&v)[0];
    assert_eq!(row.as_object().map(|m| m.len()), Some(22));
    assert_eq!(row["n8nExecution"], serde_json::Value::Null);
    assert_eq!(row["httpMethod"], "GET");
    assert_eq!(row["httpTarget"], "/webhook/x?token=%5BREDACTED%5D");
    assert_eq!(row["httpStatus"], 502);
    let v = a.ok(&format!("/api/traces/{trace}")).await;
    assert!(
        items(&v)[0].get("httpStatus").is_none(),
        "DATA-002 fields only by default"
    );
    let v = a
        .ok("/api/traces?fields=traceId,httpStatus&userId=anonymous")
        .await;
    assert_eq!(items(&v)[0], json!({"traceId": trace, "httpStatus": 502}));
    a.stop().await;
}

/// The query functions the CLI uses, and the CLI binary itself.
#[tokio::test]
async fn traces_cli_prints_tables_and_the_api_json() {
    let db = TestDb::new().await;
    let a = started(&db, "").await;
    let t0 = base();
    let mut r1 = Row::new("cli-trace", 1, t0);
    r1.status = "failed";
    r1.code = Some("HTTP_503");
    r1.payload = Some(json!({"try": 1}));
    let mut r2 = Row::new("cli-trace", 2, t0 + secs(1));
    r2.payload = Some(json!({"try": 2}));
    insert(&db, &[r1, r2]).await;
    a.stop().await;

    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("proxy.toml");
    std::fs::write(&cfg, config(&db, closed_port().await, "")).expect("write config");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_trace-proxy"))
            .arg("--config")
            .arg(&cfg)
            .arg("traces")
            .args(args)
            .env_remove("TRACE_PROXY_ENV")
            .env_remove("TRACE_PROXY_DATABASE_URL")
            .env_remove("DATABASE_URL")
            .output()
            .expect("run trace-proxy");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = run(&["chain", "cli-trace"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("2 attempt(s)") && out.contains("HTTP_503") && out.contains("STATUS"),
        "{out}"
    );
    let (code, out, _) = run(&["chain", "cli-trace", "--json"]);
    assert_eq!(code, Some(0));
    let v: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(col(&v, "attemptNumber"), [&json!(1), &json!(2)]);
    let (_, out, _) = run(&["failures", "wf", "--limit", "5"]);
    assert!(
        out.contains("cli-trace") && out.contains("1 shown"),
        "{out}"
    );
    let (_, out, _) = run(&["history", "alice", "--json"]);
    let v: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["count"], 2);
    let (_, out, _) = run(&["diff", "cli-trace"]);
    assert!(
        out.contains("attempt 1 -> 2")
            && out.contains("failed -> success")
            && out.contains("/try: 1 -> 2"),
        "{out}"
    );
    let (_, out, _) = run(&["diff", "cli-trace", "--json"]);
    let v: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(items(&v)[0]["request"][0]["path"], "/try");
    let (_, out, _) = run(&["stats", "--group-by", "errorCode"]);
    assert!(
        out.contains("TOTAL") && out.contains("HTTP_503") && out.contains("50.0%"),
        "{out}"
    );
    let (_, out, _) = run(&["stats", "--json"]);
    let v: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["totals"]["count"], 2);
    let (code, _, err) = run(&["chain", "no-such-trace"]);
    assert_ne!(code, Some(0));
    assert!(err.contains("no trace"), "{err}");
    let (code, _, _) = run(&["failures", "wf", "--limit", "100000"]);
    assert_eq!(code, Some(2), "clap refuses an out-of-range limit");
}

/// Plan node types and index names anywhere in an `EXPLAIN (FORMAT JSON)` plan.
fn plan_nodes(plan: &Value, out: &mut Vec<(String, Option<String>)>) {
    if let Some(t) = plan.get("Node Type").and_then(Value::as_str) {
        out.push((
            t.to_owned(),
            plan.get("Index Name")
                .and_then(Value::as_str)
                .map(str::to_owned),
        ));
    }
    if let Some(children) = plan.get("Plans").and_then(Value::as_array) {
        for c in children {
            plan_nodes(c, out);
        }
    }
}

async fn explain(
    db: &TestDb,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Vec<(String, Option<String>)> {
    let rows = db
        .client
        .query(&format!("EXPLAIN (FORMAT JSON) {sql}"), params)
        .await
        .unwrap_or_else(|e| panic!("explain {sql}: {e}"));
    let v: Value = rows[0].get(0);
    let mut nodes = Vec::new();
    plan_nodes(&v[0]["Plan"], &mut nodes);
    nodes
}

/// `index` may list alternatives separated by `|` (the planner picks between equivalent ones).
fn assert_uses(nodes: &[(String, Option<String>)], index: &str, what: &str) {
    assert!(
        nodes.iter().any(|(_, i)| i
            .as_deref()
            .is_some_and(|i| index.split('|').any(|x| x == i))),
        "{what}: expected {index} in {nodes:?}"
    );
    assert!(
        !nodes.iter().any(|(t, _)| t == "Seq Scan"),
        "{what}: sequential scan in {nodes:?}"
    );
}

#[tokio::test]
async fn every_query_pattern_is_served_by_an_index() {
    let db = TestDb::new().await;
    let toml = config_toml(&db.url(), "http://127.0.0.1:9", "", "");
    let cfg = Config::from_toml_str(&toml).expect("config");
    let pool = trace_proxy::store::pool(&cfg.database).expect("pool");
    trace_proxy::migrate_pool(&pool).await.expect("migrate");
    // 50k rows: 25k traces x 2 attempts, 200 workflows, 2000 users, ~8% failed, 30 days.
    db.client
        .batch_execute(
            "INSERT INTO communication_traces (trace_id, attempt_number, source_service, \
             destination_service, workflow_id, user_id, requested_at, duration_ms, overall_status, \
             error_code, execution_id, request_payload) \
             SELECT 't' || (g / 2), g % 2 + 1, 'bilko-app', CASE WHEN g % 10 = 0 THEN 'bilko-app' ELSE 'n8n' END, \
                    'wf-' || (g % 200), 'user-' || (g % 2000), \
                    timestamp '2025-06-01' + g * interval '50 seconds', g % 997, \
                    CASE WHEN g % 13 = 0 THEN 'failed' ELSE 'success' END, \
                    CASE WHEN g % 13 = 0 THEN 'TIMEOUT' END, \
                    CASE WHEN g % 3 = 0 THEN md5((g / 30)::text)::uuid END, \
                    jsonb_build_object('n', g) \
             FROM generate_series(0, 49999) g; \
             ANALYZE communication_traces;",
        )
        .await
        .expect("load rows");
    let payloads = true;
    let limit: i64 = 51;
    let t: &str = "t777";
    assert_uses(
        &explain(&db, &query::chain_sql(payloads), &[&t, &limit]).await,
        // The unique (trace_id, attempt_number) index gives the order directly; the spec's
        // trace_id index plus a sort of a handful of attempts is as good, and the planner
        // chooses either.
        "idx_traces_trace_id",
        "getTraceChain",
    );
    let page = Page {
        limit: 50,
        after: None,
        payloads,
    };
    let w: &str = "wf-13";
    assert_uses(
        &explain(&db, &query::failures_sql(&page), &[&w, &limit]).await,
        "idx_traces_failures",
        "getRecentFailures",
    );
    let u: &str = "user-13";
    assert_uses(
        &explain(&db, &query::history_sql(&page), &[&u, &limit]).await,
        "idx_traces_user_history",
        "getUserHistory",
    );
    // Later pages: the keyset is part of the same index range.
    let cursor = Cursor {
        requested_at: NaiveDateTime::parse_from_str("2025-06-20 00:00:00", "%Y-%m-%d %H:%M:%S")
            .expect("time"),
        id: uuid::Uuid::max(),
    };
    let paged = Page {
        after: Some(cursor),
        ..page
    };
    assert_uses(
        &explain(
            &db,
            &query::history_sql(&paged),
            &[&u, &cursor.requested_at, &cursor.id, &limit],
        )
        .await,
        "idx_traces_user_history",
        "getUserHistory, page 2",
    );
    assert_uses(
        &explain(
            &db,
            &query::failures_sql(&paged),
            &[&w, &cursor.requested_at, &cursor.id, &limit],
        )
        .await,
        "idx_traces_failures",
        "getRecentFailures, page 2",
    );
    let exec: uuid::Uuid = db
        .rows(
            "SELECT execution_id FROM communication_traces WHERE execution_id IS NOT NULL LIMIT 1",
        )
        .await[0]
        .get(0);
    let max: i64 = 1001;
    assert_uses(
        &explain(&db, &query::execution_sql(payloads), &[&exec, &max]).await,
        "idx_traces_execution_id",
        "execution traces",
    );
    // Search: newest first over everything walks the time index; a user filter its index.
    assert_uses(
        &explain(
            &db,
            &query::search_sql(&SearchFilter::default(), &page),
            &[&limit],
        )
        .await,
        "idx_traces_requested_at",
        "search, no filter",
    );
    let by_user = SearchFilter {
        user_id: Some("user-13".into()),
        ..SearchFilter::default()
    };
    assert_uses(
        &explain(&db, &query::search_sql(&by_user, &page), &[&u, &limit]).await,
        "idx_traces_user_history",
        "search by user",
    );
    let failed_in_wf = SearchFilter {
        status: Some(Status::Failed),
        workflow_id: Some(w.into()),
        ..SearchFilter::default()
    };
    assert_uses(
        &explain(&db, &query::search_sql(&failed_in_wf, &page), &[&w, &limit]).await,
        "idx_traces_failures",
        "search failed in workflow",
    );
    // Stats over one day of a month of rows: a time-index range.
    let since =
        NaiveDateTime::parse_from_str("2025-06-10 00:00:00", "%Y-%m-%d %H:%M:%S").expect("t");
    let until = since + TimeDelta::days(1);
    let groups: i64 = 51;
    let nodes = explain(
        &db,
        &query::stats_sql(GroupBy::Workflow),
        &[&since, &until, &groups],
    )
    .await;
    assert!(
        nodes
            .iter()
            .any(|(_, i)| i.as_deref() == Some("idx_traces_requested_at")),
        "stats: {nodes:?}"
    );
    // The explorer's overview: one day of buckets and top failures over the time index, one
    // workflow over its own time index, and the unfinished rows over the partial index.
    let width: f64 = 900.0;
    let top: i64 = 10;
    for workflow in [false, true] {
        let (index, buckets, tops): (
            _,
            Vec<&(dyn tokio_postgres::types::ToSql + Sync)>,
            Vec<&(dyn tokio_postgres::types::ToSql + Sync)>,
        ) = match workflow {
            false => (
                "idx_traces_requested_at",
                vec![&since, &until, &width],
                vec![&since, &until, &top],
            ),
            true => (
                "idx_traces_workflow_id",
                vec![&since, &until, &width, &w],
                vec![&since, &until, &top, &w],
            ),
        };
        assert_uses(
            &explain(&db, &query::overview_buckets_sql(workflow), &buckets).await,
            index,
            "overview buckets",
        );
        assert_uses(
            &explain(&db, &query::overview_top_sql(workflow), &tops).await,
            index,
            "overview top failures",
        );
    }
    assert_uses(
        &explain(&db, &query::unfinished_sql(false), &[]).await,
        "idx_traces_unresolved_by_instance|idx_traces_status",
        "unfinished now",
    );
    assert_uses(
        &explain(&db, &query::unfinished_sql(true), &[&w]).await,
        "idx_traces_unresolved_by_instance|idx_traces_status|idx_traces_workflow_id",
        "unfinished now, one workflow",
    );
    let by_workflow = SearchFilter {
        workflow_id: Some(w.into()),
        ..SearchFilter::default()
    };
    assert_uses(
        &explain(&db, &query::search_sql(&by_workflow, &page), &[&w, &limit]).await,
        "idx_traces_workflow_id",
        "search by workflow",
    );
    let o = query::overview(&db.client, query::Window::Day, until, None, top)
        .await
        .expect("overview");
    let unfinished = query::unfinished(&db.client, Some(w))
        .await
        .expect("unfinished");
    assert_eq!(unfinished.pending, 0);
    assert_eq!(o.buckets.len(), 96);
    assert_eq!(
        o.buckets.iter().map(|b| b.stats.count).sum::<i64>(),
        o.totals.count
    );
    assert!(o.totals.count > 1000 && !o.top_workflows.is_empty());
    // And the query functions agree with the SQL explained above.
    let c = &db.client;
    let found = query::recent_failures(c, w, &page).await.expect("failures");
    assert!(!found.rows.is_empty() && found.rows.iter().all(|r| r.overall_status == "failed"));
    let found = query::user_history(c, u, &page).await.expect("history");
    assert_eq!(found.rows.len(), 25);
    let chain = query::trace_chain_limited(c, t, false, 10)
        .await
        .expect("chain");
    assert_eq!(chain.len(), 2);
}

#[tokio::test]
async fn a_query_over_the_statement_timeout_is_a_504_not_a_hang() {
    let db = TestDb::new().await;
    let a = started(&db, "statement_timeout_ms = 1").await;
    db.client
        .batch_execute(
            "INSERT INTO communication_traces (trace_id, source_service, destination_service, \
             workflow_id, user_id, requested_at, duration_ms, overall_status) \
             SELECT 'slow' || g, 'a', 'n8n', 'wf-' || (g % 500), 'u', \
                    timestamp '2025-06-01' + g * interval '1 second', g % 1000, 'success' \
             FROM generate_series(1, 200000) g",
        )
        .await
        .expect("load rows");
    let (status, v) = a
        .get("/api/stats?since=2025-06-01T00:00:00Z&until=2025-06-10T00:00:00Z")
        .await;
    assert_eq!(status, 504, "{v}");
    assert_eq!(v["error"]["code"], "QUERY_TIMEOUT");
    a.stop().await;
}

#[tokio::test]
async fn an_unreachable_database_is_a_503() {
    let dead = closed_port().await;
    let toml = config_toml(
        &format!("postgres://postgres@{dead}/postgres"),
        "http://127.0.0.1:9",
        "connect_timeout_ms = 200\npool_wait_timeout_ms = 200",
        &format!("[admin]\ntoken = \"{TOKEN}\"\n"),
    );
    let a = Admin::start(&toml).await;
    let (status, v) = a.get("/api/traces/anything").await;
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["error"]["code"], "STORE_UNAVAILABLE");
    a.stop().await;
}

#[tokio::test]
async fn input_out_of_range_is_400_and_only_an_unreachable_store_is_503() {
    use base64::Engine as _;
    let db = TestDb::new().await;
    let a = started(&db, "").await;
    // A well-formed cursor whose time is in the year -200000.
    let far = chrono::NaiveDate::from_ymd_opt(-200_000, 1, 1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .expect("date")
        .and_utc()
        .timestamp_micros();
    let cursor = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(format!("v1:{far}:{}", uuid::Uuid::nil().simple()));
    for path in [
        format!("/api/traces?cursor={cursor}"),
        format!("/api/workflows/w/failures?cursor={cursor}"),
        "/api/traces?since=10000-01-01T00:00:00Z".to_owned(),
        "/api/stats?until=0000-06-01T00:00:00Z".to_owned(),
    ] {
        let (status, v) = a.get(&path).await;
        assert_eq!(status, 400, "{path}: {v}");
        assert_eq!(v["error"]["code"], "BAD_REQUEST", "{path}");
    }
    a.stop().await;

    // The store itself unreachable: 503.
    let toml = admin_config(&db, closed_port().await, "")
        .replace(&db.url(), "postgres://postgres@127.0.0.1:1/none");
    let down = Admin::start(&toml).await;
    let (status, v) = down.get("/api/traces").await;
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["error"]["code"], "STORE_UNAVAILABLE");
    down.stop().await;
}
