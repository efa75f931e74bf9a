//! The agent bundles over /api on a known story built from real proxied requests:
//! the `orders` workflow works while `customer` is an object, then the caller starts sending
//! it as a string and every request fails with the same 422.

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use serde_json::{json, Value};

use crate::support::*;

pub(crate) const TOKEN: &str = "test-admin-token-0123456789";

async fn get(admin: std::net::SocketAddr, path: &str, token: Option<&str>) -> (u16, Value) {
    let mut req = Request::get(format!("http://{admin}{path}"));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let (parts, body) = send(req.body(Full::new(Bytes::new())).expect("request")).await;
    let v = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {body:?}"));
    (parts.status.as_u16(), v)
}

/// A proxy with the admin token whose `orders` workflow succeeded three times with `customer`
/// as an object, then failed twice (422) once it became a string. Returns the running proxy
/// and its configuration, and the failed trace ids, oldest first.
pub(crate) async fn payload_change_story(
    db: &TestDb,
    admin_extra: &str,
) -> (Proxy, String, Vec<String>) {
    let (up, _) = counting_upstream(|n| async move {
        if n < 3 {
            Response::new(full(r#"{"ok":true}"#))
        } else {
            Response::builder()
                .status(422)
                .body(full(r#"{"error":"invalid customer"}"#))
                .expect("response")
        }
    })
    .await;
    let toml = config(
        db,
        up,
        &format!("[admin]\ntoken = \"{TOKEN}\"\n{admin_extra}"),
    );
    let running = Proxy::start_with_admin(&toml).await;
    let url = format!("http://{}/webhook/orders", running.addr);
    let good = [
        r#"{"order":1,"customer":{"name":"Ann","tier":"gold"},"qty":1}"#,
        r#"{"order":2,"customer":{"name":"Bob","tier":"gold"},"qty":2}"#,
        r#"{"order":3,"customer":{"name":"Cy","tier":"blue"},"qty":3}"#,
    ];
    let bad = [
        r#"{"order":4,"customer":"Dee","qty":1}"#,
        r#"{"order":5,"customer":"Eve","qty":2}"#,
    ];
    let mut failed = Vec::new();
    for body in good {
        let t = new_trace_id();
        let (p, _) = send(post(&url, &t, body)).await;
        assert_eq!(p.status, 200);
        db.final_rows(&t, 1).await;
    }
    for body in bad {
        let t = new_trace_id();
        let (p, _) = send(post(&url, &t, body)).await;
        assert_eq!(p.status, 422);
        db.final_rows(&t, 1).await;
        failed.push(t);
    }
    (running, toml, failed)
}

#[tokio::test]
async fn explain_recurring_and_patterns_tell_the_payload_change_story() {
    let db = TestDb::new().await;
    let (running, toml, failed) = payload_change_story(&db, "").await;
    let admin = running.admin.expect("admin listener");
    let last = &failed[1];

    // The token is required, as on every /api route.
    let (status, _) = get(admin, &format!("/api/traces/{last}/explain"), None).await;
    assert_eq!(status, 401);

    let (status, e) = get(admin, &format!("/api/traces/{last}/explain"), Some(TOKEN)).await;
    assert_eq!(status, 200, "{e}");
    println!(
        "explain: {}",
        serde_json::to_string_pretty(&e).unwrap_or_default()
    );
    assert_eq!(e["traceId"], json!(last));
    assert_eq!(e["overallStatus"], "failed");
    assert_eq!(e["truncated"], false);
    let workflow = e["workflowId"].clone();
    assert_eq!(e["chain"].as_array().map(Vec::len), Some(1));
    assert!(e["errorCode"].is_string(), "{e}");
    assert_eq!(e["history"]["lastDay"], 2);
    assert_eq!(e["history"]["lastWeek"], 2);
    assert!(e["history"]["firstSeen"].is_string());
    let diff = &e["lastSuccess"]["request"];
    assert_eq!(
        diff["typeChanges"],
        json!([{"path": "/customer", "failed": "string", "succeeded": "object"}])
    );
    assert_eq!(
        diff["onlyInSucceeded"],
        json!(["/customer/name", "/customer/tier"])
    );
    assert_eq!(diff["onlyInFailed"], json!([]));

    let (status, r) = get(admin, "/api/failures/recurring", Some(TOKEN)).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["failures"], 2);
    assert_eq!(r["truncated"], false);
    let groups = r["groups"].as_array().expect("groups");
    assert_eq!(groups.len(), 1, "{r}");
    assert_eq!(groups[0]["workflowId"], workflow);
    assert_eq!(groups[0]["count"], 2);
    assert_eq!(groups[0]["errorCode"], e["errorCode"]);
    assert_eq!(groups[0]["examples"], json!([failed[1], failed[0]]));

    let wf = workflow.as_str().expect("workflowId");
    let (status, p) = get(admin, &format!("/api/workflows/{wf}/patterns"), Some(TOKEN)).await;
    assert_eq!(status, 200, "{p}");
    assert_eq!(p["samples"], 3);
    assert_eq!(
        p["requiredKeys"],
        json!([
            "/customer",
            "/customer/name",
            "/customer/tier",
            "/order",
            "/qty"
        ])
    );
    assert!(p["durationMs"]["p50"].is_number(), "{p}");

    // Bad input and unknown traces are clear errors.
    let (status, _) = get(admin, "/api/traces/nope/explain", Some(TOKEN)).await;
    assert_eq!(status, 404);
    let (status, _) = get(
        admin,
        "/api/failures/recurring?since=2026-01-01T00:00:00Z&until=2026-06-01T00:00:00Z",
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = get(admin, "/api/failures/recurring?bogus=1", Some(TOKEN)).await;
    assert_eq!(status, 400);

    // The CLI front-end answers the same bundles.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, &toml).expect("config");
    let cli = |args: Vec<String>| {
        let path = path.clone();
        async move {
            let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_trace-proxy"))
                .arg("--config")
                .arg(&path)
                .arg("traces")
                .args(&args)
                .output()
                .await
                .expect("run trace-proxy traces");
            let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
            (out.status.code(), v)
        }
    };
    let (code, ce) = cli(vec!["explain".into(), last.clone()]).await;
    assert_eq!(code, Some(0), "{ce}");
    assert_eq!(ce["lastSuccess"], e["lastSuccess"]);
    assert_eq!(ce["history"], e["history"]);
    let (code, cr) = cli(vec!["recurring".into()]).await;
    assert_eq!(code, Some(0), "{cr}");
    assert_eq!(cr["groups"], r["groups"]);
    let (code, cp) = cli(vec!["patterns".into(), wf.to_owned()]).await;
    assert_eq!(code, Some(0), "{cp}");
    assert_eq!(cp["requiredKeys"], p["requiredKeys"]);
    let (code, _) = cli(vec!["explain".into(), "no-such-trace".into()]).await;
    assert_eq!(code, Some(1));
    running.stop().await;
}

/// A proxy with the admin token (and `admin_extra`) and one trace of three failed attempts, each
/// with a 45 KB request payload stored whole: more than a 64 KiB budget. Returns the proxy and
/// the trace id.
pub(crate) async fn large_payload_trace(db: &TestDb, admin_extra: &str) -> (Proxy, String) {
    let (up, _) = counting_upstream(|_| async move {
        Response::builder()
            .status(500)
            .body(full("boom"))
            .expect("response")
    })
    .await;
    let toml = config(
        db,
        up,
        &format!("[admin]\ntoken = \"{TOKEN}\"\n{admin_extra}"),
    )
    // Payloads stored whole (the test default keeps 1 KiB).
    .replace("max_payload_bytes = 1024", "max_payload_bytes = 262144");
    let running = Proxy::start_with_admin(&toml).await;
    let url = format!("http://{}/webhook/big", running.addr);
    let body: &'static str = Box::leak(
        serde_json::to_string(&json!((0..400)
            .map(|i| (format!("k{i}"), json!("x".repeat(100))))
            .collect::<serde_json::Map<_, _>>()))
        .expect("json")
        .into_boxed_str(),
    );
    let t = new_trace_id();
    for _ in 0..3 {
        send(post(&url, &t, body)).await;
    }
    db.final_rows(&t, 3).await;
    (running, t)
}

#[tokio::test]
async fn bundles_stay_within_the_byte_budget_on_large_payloads() {
    let db = TestDb::new().await;
    let budget = 65_536;
    let (running, t) = large_payload_trace(&db, &format!("max_response_bytes = {budget}\n")).await;
    let admin = running.admin.expect("admin listener");
    let (status, e) = get(admin, &format!("/api/traces/{t}/explain"), Some(TOKEN)).await;
    assert_eq!(status, 200, "{e}");
    assert_eq!(e["truncated"], true, "{} bytes", e.to_string().len());
    assert!(e.to_string().len() <= budget, "{}", e.to_string().len());
    assert_eq!(e["history"]["lastDay"], 3);
    running.stop().await;
}
