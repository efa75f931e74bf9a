//! The MCP server with a real MCP client (the SDK's own, over Streamable HTTP at `/mcp` and over
//! stdio from `trace-proxy mcp`), on rows that came from real proxied requests: the tools, their
//! schemas, answers on a known failure story, bad input, the token, and the byte budget.

use std::collections::BTreeSet;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use rmcp::model::{CallToolRequestParams, CallToolResult, ClientConfig};
use rmcp::service::{RoleClient, RunningService};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use rmcp::ServiceExt;
use serde_json::{json, Value};

use crate::agent::{large_payload_trace, payload_change_story, TOKEN};
use crate::support::*;

const TOOLS: [&str; 10] = [
    "diff_attempts",
    "execution_traces",
    "explain_failure",
    "get_trace",
    "recent_failures",
    "recurring_failures",
    "request_patterns",
    "search_traces",
    "stats",
    "user_history",
];

type Client = RunningService<RoleClient, ClientConfig>;

async fn http_client(admin: std::net::SocketAddr, token: &str) -> Client {
    // The SDK's HTTP client is reqwest on rustls with no provider of its own.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let transport = StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(format!("http://{admin}/mcp"))
            .auth_header(token),
    );
    ClientConfig::default()
        .serve(transport)
        .await
        .expect("MCP client connects over HTTP")
}

async fn call(client: &Client, tool: &str, args: Value) -> Result<CallToolResult, String> {
    let Value::Object(args) = args else {
        panic!("arguments must be an object")
    };
    client
        .call_tool(CallToolRequestParams::new(tool.to_owned()).with_arguments(args))
        .await
        .map_err(|e| e.to_string())
}

/// The message of a refused call: a tool result with `isError: true`, its text.
async fn refused(client: &Client, tool: &str, args: Value) -> String {
    let r = call(client, tool, args.clone())
        .await
        .unwrap_or_else(|e| panic!("{tool} {args}: a protocol error, not a tool error: {e}"));
    assert_eq!(r.is_error, Some(true), "{tool} {args}: {r:?}");
    r.content
        .first()
        .and_then(|c| c.as_text())
        .map(|t| t.text.clone())
        .unwrap_or_default()
}

/// A successful tool answer's JSON; panics on an error result.
async fn answer(client: &Client, tool: &str, args: Value) -> Value {
    let r = call(client, tool, args.clone())
        .await
        .unwrap_or_else(|e| panic!("{tool} {args}: {e}"));
    assert_eq!(r.is_error, Some(false), "{tool} {args}: {r:?}");
    let v = r.structured_content.clone().expect("structured content");
    // The text copy is the same compact JSON, for clients that only read text.
    let text = r
        .content
        .first()
        .and_then(|c| c.as_text())
        .map(|t| t.text.clone());
    assert_eq!(
        text.as_deref()
            .map(serde_json::from_str::<Value>)
            .and_then(Result::ok),
        Some(v.clone())
    );
    v
}

/// Every tool answers on the story, and refuses bad input clearly.
async fn tools_tell_the_story(client: &Client, failed: &[String]) {
    let tools = client.list_all_tools().await.expect("tools/list");
    let names: BTreeSet<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    assert_eq!(names, TOOLS.into_iter().collect());
    for t in &tools {
        assert_eq!(
            t.input_schema.get("type"),
            Some(&json!("object")),
            "{}",
            t.name
        );
        assert!(
            t.description.as_deref().is_some_and(|d| d.len() > 40),
            "{}",
            t.name
        );
        let ann = t.annotations.as_ref().expect("annotations");
        assert_eq!(ann.read_only_hint, Some(true), "{} is read-only", t.name);
    }
    let explain_schema = &tools
        .iter()
        .find(|t| t.name == "explain_failure")
        .expect("explain_failure")
        .input_schema;
    assert_eq!(explain_schema.get("required"), Some(&json!(["traceId"])));

    let last = &failed[1];
    let e = answer(client, "explain_failure", json!({"traceId": last})).await;
    assert_eq!(e["traceId"], json!(last));
    assert_eq!(e["overallStatus"], "failed");
    assert_eq!(e["history"]["lastDay"], 2);
    assert_eq!(
        e["lastSuccess"]["request"]["typeChanges"],
        json!([{"path": "/customer", "failed": "string", "succeeded": "object"}])
    );
    let workflow = e["workflowId"].as_str().expect("workflowId").to_owned();

    let r = answer(client, "recurring_failures", json!({})).await;
    assert_eq!(r["groups"][0]["count"], 2, "{r}");
    assert_eq!(r["groups"][0]["examples"], json!([failed[1], failed[0]]));
    let p = answer(client, "request_patterns", json!({"workflowId": workflow})).await;
    assert_eq!(p["samples"], 3, "{p}");

    let chain = answer(
        client,
        "get_trace",
        json!({"traceId": last, "payloads": "full"}),
    )
    .await;
    assert_eq!(chain["count"], 1, "{chain}");
    assert_eq!(chain["items"][0]["requestPayload"]["customer"], "Eve");
    let d = answer(client, "diff_attempts", json!({"traceId": last})).await;
    assert_eq!(d["attempts"], 1, "{d}");
    let f = answer(
        client,
        "recent_failures",
        json!({"workflowId": workflow, "limit": 1}),
    )
    .await;
    assert_eq!(f["count"], 1, "{f}");
    assert_eq!(f["hasMore"], true);
    let next = answer(
        client,
        "recent_failures",
        json!({"workflowId": workflow, "cursor": f["nextCursor"]}),
    )
    .await;
    assert_eq!(next["items"][0]["traceId"], json!(failed[0]), "{next}");
    let s = answer(
        client,
        "search_traces",
        json!({"status": "failed", "payloads": "none"}),
    )
    .await;
    assert_eq!(s["count"], 2, "{s}");
    let h = answer(client, "user_history", json!({"userId": "nobody"})).await;
    assert_eq!(h["count"], 0, "{h}");
    let st = answer(client, "stats", json!({"groupBy": "errorCode"})).await;
    assert_eq!(st["totals"]["failed"], 2, "{st}");

    // Bad input is refused with a sentence naming the argument; an unknown id is a NOT_FOUND.
    let e = refused(client, "get_trace", json!({})).await;
    assert!(e.contains("traceId"), "{e}");
    let e = refused(client, "get_trace", json!({"traceId": last, "bogus": 1})).await;
    assert!(e.contains("bogus"), "{e}");
    let e = refused(client, "search_traces", json!({"status": "lost"})).await;
    assert!(e.contains("lost"), "{e}");
    let e = refused(client, "search_traces", json!({"since": "yesterday"})).await;
    assert!(e.contains("BAD_REQUEST") && e.contains("since"), "{e}");
    let e = refused(
        client,
        "recurring_failures",
        json!({"since": "2026-01-01T00:00:00Z", "until": "2026-06-01T00:00:00Z"}),
    )
    .await;
    assert!(e.contains("31 days"), "{e}");
    let e = refused(
        client,
        "explain_failure",
        json!({"traceId": "no-such-trace"}),
    )
    .await;
    assert!(e.contains("NOT_FOUND"), "{e}");
    let e = refused(
        client,
        "execution_traces",
        json!({"executionId": "not-a-uuid"}),
    )
    .await;
    assert!(e.contains("executionId"), "{e}");
}

async fn post_mcp(admin: std::net::SocketAddr, token: Option<&str>) -> u16 {
    let mut req = Request::post(format!("http://{admin}/mcp"))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{}}"#;
    let (parts, _) = send(
        req.body(Full::new(Bytes::from_static(body.as_bytes())))
            .expect("request"),
    )
    .await;
    parts.status.as_u16()
}

#[tokio::test]
async fn mcp_over_http_answers_every_tool_behind_the_token() {
    let db = TestDb::new().await;
    let (running, _, failed) = payload_change_story(&db, "").await;
    let admin = running.admin.expect("admin listener");
    assert_eq!(post_mcp(admin, None).await, 401);
    assert_eq!(post_mcp(admin, Some("wrong-token-0123456789")).await, 401);

    let client = http_client(admin, TOKEN).await;
    tools_tell_the_story(&client, &failed).await;
    client.cancel().await.expect("close");
    running.stop().await;
}

#[tokio::test]
async fn mcp_over_stdio_is_the_same_tools() {
    let db = TestDb::new().await;
    let (running, toml, failed) = payload_change_story(&db, "").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, &toml).expect("config");
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_trace-proxy"));
    cmd.arg("mcp").arg("--config").arg(&path);
    let transport = TokioChildProcess::new(cmd).expect("spawn trace-proxy mcp");
    let client = ClientConfig::default()
        .serve(transport)
        .await
        .expect("MCP client connects over stdio");
    let info = client.peer_info().expect("server info");
    let name = info.server_info.as_ref().map(|s| s.name.clone());
    assert_eq!(name.as_deref(), Some("trace-proxy"));
    assert!(info
        .instructions
        .as_deref()
        .is_some_and(|i| i.contains("explain_failure")));
    tools_tell_the_story(&client, &failed).await;
    client.cancel().await.expect("close");
    running.stop().await;
}

#[tokio::test]
async fn mcp_answers_stay_within_their_own_budget() {
    let db = TestDb::new().await;
    let budget = 65_536;
    let (running, t) =
        large_payload_trace(&db, &format!("mcp_max_response_bytes = {budget}\n")).await;
    let admin = running.admin.expect("admin listener");
    let client = http_client(admin, TOKEN).await;
    for (tool, args) in [
        ("explain_failure", json!({"traceId": t})),
        ("get_trace", json!({"traceId": t, "payloads": "full"})),
        ("search_traces", json!({"payloads": "full"})),
    ] {
        let v = answer(&client, tool, args).await;
        let size = v.to_string().len();
        assert_eq!(v["truncated"], true, "{tool}: {size} bytes");
        assert!(size <= budget, "{tool}: {size} bytes");
    }
    client.cancel().await.expect("close");
    running.stop().await;
}

/// The external client's directory once `scripts/setup-browser.sh` has installed it; else why not.
fn inspector() -> Result<std::path::PathBuf, String> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mcp-client");
    let bin = dir.join("node_modules/.bin/mcp-inspector");
    if !bin.exists() {
        return Err(format!(
            "{} is missing (npm ci in {})",
            bin.display(),
            dir.display()
        ));
    }
    match std::process::Command::new("node").arg("--version").output() {
        Ok(o) if o.status.success() => Ok(bin),
        _ => Err("node is missing (apt-get install nodejs)".into()),
    }
}

/// Runs the MCP Inspector CLI with `args`; its exit status and stdout parsed as JSON.
async fn run_inspector(bin: &std::path::Path, args: &[&str]) -> (bool, Value) {
    let out = tokio::process::Command::new("node")
        .arg(bin)
        .arg("--cli")
        .args(args)
        .output()
        .await
        .expect("run the MCP Inspector CLI");
    let v = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    if !out.status.success() {
        println!(
            "inspector: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    (out.status.success(), v)
}

#[tokio::test]
async fn an_external_mcp_client_uses_both_transports() {
    let bin = match inspector() {
        Ok(bin) => bin,
        Err(why) if std::env::var_os("CI").is_some() => {
            panic!("the external MCP client must run in CI: {why}; scripts/test.sh installs it")
        }
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    let db = TestDb::new().await;
    let (running, toml, failed) = payload_change_story(&db, "").await;
    let admin = running.admin.expect("admin listener");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, &toml).expect("config");

    // stdio: the client starts `trace-proxy mcp` itself.
    let config_env = format!("TRACE_PROXY_CONFIG={}", path.display());
    let exe = env!("CARGO_BIN_EXE_trace-proxy");
    let (ok, tools) = run_inspector(
        &bin,
        &["-e", &config_env, exe, "mcp", "--method", "tools/list"],
    )
    .await;
    assert!(ok, "{tools}");
    let names: BTreeSet<&str> = tools["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(names, TOOLS.into_iter().collect());

    // Streamable HTTP at /mcp, with the token.
    let url = format!("http://{admin}/mcp");
    let auth = format!("Authorization: Bearer {TOKEN}");
    let trace = format!("traceId={}", failed[1]);
    let http = [url.as_str(), "--transport", "http"];
    let call = [
        "--method",
        "tools/call",
        "--tool-name",
        "explain_failure",
        "--tool-arg",
        &trace,
    ];
    let with_token: Vec<&str> = http
        .iter()
        .chain(&["--header", &auth])
        .chain(&call)
        .copied()
        .collect();
    let (ok, e) = run_inspector(&bin, &with_token).await;
    assert!(ok, "{e}");
    assert_eq!(e["isError"], false, "{e}");
    assert_eq!(
        e["structuredContent"]["lastSuccess"]["request"]["typeChanges"],
        json!([{"path": "/customer", "failed": "string", "succeeded": "object"}])
    );
    // Without the token the connection is refused.
    let without: Vec<&str> = http.iter().chain(&call).copied().collect();
    let (ok, _) = run_inspector(&bin, &without).await;
    assert!(!ok, "an MCP call without the token succeeded");
    running.stop().await;
}
