//! Protocol-level behaviour: HTTP/2 clients, TLS upstreams, header handling, poison payloads,
//! correlation ids, and the DATA-002 schema as drizzle sees it.

use std::io::Write;

use bytes::Bytes;
use http::{Request, Response, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

use crate::support::*;

fn ok_json() -> Response<Body> {
    Response::builder()
        .header("content-type", "application/json")
        .body(full(r#"{"ok":true}"#))
        .expect("response")
}

/// A request with an explicit trace id, content type and arbitrary body bytes.
fn post_bytes(url: &str, trace_id: &str, ctype: &str, body: Vec<u8>) -> Request<Full<Bytes>> {
    Request::post(url)
        .header("x-trace-id", trace_id)
        .header("content-type", ctype)
        .body(Full::new(Bytes::from(body)))
        .expect("request")
}

fn header<'a>(parts: &'a http::response::Parts, name: &str) -> Option<&'a str> {
    parts
        .headers
        .get(name)
        .map(|v| v.to_str().expect("ASCII header"))
}

#[tokio::test]
async fn http2_client_is_proxied_to_http1_upstream() {
    let db = TestDb::new().await;
    let (up, seen) = recording_upstream(ok_json).await;
    let proxy = Proxy::start(&config(&db, up, "")).await;
    let trace = new_trace_id();
    let h2c: TestClient = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let req = post_bytes(
        &proxy.url("/webhook/h2"),
        &trace,
        "application/json",
        br#"{"via":"h2c"}"#.to_vec(),
    );
    let resp = h2c.request(req).await.expect("h2c request");
    assert_eq!(resp.version(), Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(&body[..], br#"{"ok":true}"#);

    let got = seen_with_trace(&seen, &trace);
    assert_eq!(got.version, Version::HTTP_11);
    assert_eq!(&got.body[..], br#"{"via":"h2c"}"#);
    let rows = db.final_rows(&trace, 1).await;
    assert_eq!(rows[0].get::<_, &str>("overall_status"), "success");
    assert_eq!(rows[0].get::<_, Option<i32>>("http_status"), Some(200));
    proxy.stop().await;
}

#[tokio::test]
async fn https_upstream_with_private_ca() {
    let db = TestDb::new().await;
    let pki = localhost_pki();
    let (up, seen) = recording_tls_upstream(pki.server.clone(), ok_json).await;
    let mut ca_file = tempfile::NamedTempFile::new().expect("temp file");
    ca_file
        .write_all(pki.ca_pem.as_bytes())
        .expect("write CA PEM");
    let extra = format!(
        "[upstream]\nca_file = \"{}\"\ntls_roots = \"none\"\n",
        ca_file.path().display()
    );
    let url = format!("https://localhost:{}", up.port());
    let proxy = Proxy::start(&config_with_upstream_url(&db, &url, &extra)).await;
    let trace = new_trace_id();
    let (parts, body) = send(post(&proxy.url("/webhook/tls"), &trace, r#"{"a":1}"#)).await;
    assert_eq!(parts.status, 200);
    assert_eq!(&body[..], br#"{"ok":true}"#);
    let got = seen_with_trace(&seen, &trace);
    assert_eq!(got.version, Version::HTTP_2, "ALPN negotiates h2");
    assert_eq!(&got.body[..], br#"{"a":1}"#);
    let rows = db.final_rows(&trace, 1).await;
    assert_eq!(rows[0].get::<_, &str>("overall_status"), "success");
    assert_eq!(rows[0].get::<_, Option<&str>>("error_code"), None);
    proxy.stop().await;
}

#[tokio::test]
async fn https_upstream_with_untrusted_cert_is_502_tls_failed() {
    let db = TestDb::new().await;
    let pki = localhost_pki();
    let (up, seen) = recording_tls_upstream(pki.server.clone(), ok_json).await;
    let url = format!("https://localhost:{}", up.port());
    let proxy = Proxy::start(&config_with_upstream_url(&db, &url, "")).await;
    let trace = new_trace_id();
    let (parts, _) = send(post(&proxy.url("/webhook/tls"), &trace, r#"{"a":1}"#)).await;
    assert_eq!(parts.status, 502);
    assert_eq!(header(&parts, "x-trace-id"), Some(trace.as_str()));
    assert!(seen.lock().expect("lock").is_empty(), "nothing served");
    let rows = db.final_rows(&trace, 1).await;
    let detail = rows[0].get::<_, Option<&str>>("error_detail");
    assert_eq!(rows[0].get::<_, &str>("overall_status"), "failed");
    assert_eq!(
        rows[0].get::<_, Option<&str>>("error_code"),
        Some("TLS_FAILED"),
        "error_detail: {detail:?}"
    );
    assert_eq!(header(&parts, "x-trace-proxy-error"), Some("TLS_FAILED"));
    proxy.stop().await;
}

fn response_with_hop_headers() -> Response<Body> {
    Response::builder()
        .header("connection", "x-resp-hop")
        .header("x-resp-hop", "1")
        .header("keep-alive", "timeout=9")
        .header("x-resp-kept", "1")
        .body(full("ok"))
        .expect("response")
}

#[tokio::test]
async fn hop_by_hop_headers_are_stripped_both_ways() {
    let db = TestDb::new().await;
    let (up, seen) = recording_upstream(response_with_hop_headers).await;
    let proxy = Proxy::start(&config(&db, up, "")).await;
    let trace = new_trace_id();
    // Written by hand: an HTTP client library would manage Connection/TE itself.
    let resp = raw_http(
        proxy.addr,
        &format!(
            "GET /webhook/hop HTTP/1.1\r\n\
             Host: client-facing.example:8080\r\n\
             Connection: close, X-Custom-Hop\r\n\
             X-Custom-Hop: 1\r\n\
             Keep-Alive: timeout=5\r\n\
             Proxy-Authorization: x\r\n\
             TE: trailers\r\n\
             X-End-To-End: kept\r\n\
             X-Trace-Id: {trace}\r\n\r\n"
        ),
    )
    .await;
    assert_eq!((resp.status, &resp.body[..]), (200, &b"ok"[..]));
    assert_eq!(resp.header("x-resp-hop"), None);
    assert_eq!(resp.header("keep-alive"), None);
    assert_eq!(resp.header("x-resp-kept"), Some("1"));
    assert_eq!(resp.header("x-trace-id"), Some(trace.as_str()));
    assert_ne!(resp.header("connection"), Some("x-resp-hop"));

    let got = seen_with_trace(&seen, &trace).headers;
    for hop in [
        "connection",
        "x-custom-hop",
        "keep-alive",
        "proxy-authorization",
        "te",
    ] {
        assert!(!got.contains_key(hop), "{hop} forwarded: {got:?}");
    }
    assert_eq!(got["x-end-to-end"], "kept");
    assert_eq!(got["x-forwarded-for"], "127.0.0.1");
    assert_eq!(got["x-forwarded-host"], "client-facing.example:8080");
    assert_eq!(got["x-forwarded-proto"], "http");
    let traceparent = got["traceparent"].to_str().expect("ASCII");
    assert!(is_w3c_traceparent(traceparent), "{traceparent}");
    db.final_rows(&trace, 1).await;
    proxy.stop().await;
}

#[tokio::test]
async fn duplicate_or_missing_host_is_400() {
    let db = TestDb::new().await;
    let (up, seen) = recording_upstream(ok_json).await;
    let proxy = Proxy::start(&config(&db, up, "")).await;
    let (two, none) = (new_trace_id(), new_trace_id());
    let requests = [
        (
            &two,
            format!("GET /webhook/h HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\nX-Trace-Id: {two}\r\nConnection: close\r\n\r\n"),
        ),
        (
            &none,
            format!("GET /webhook/h HTTP/1.1\r\nX-Trace-Id: {none}\r\nConnection: close\r\n\r\n"),
        ),
    ];
    for (trace, request) in requests {
        let resp = raw_http(proxy.addr, &request).await;
        assert_eq!(
            (resp.status, &resp.body[..]),
            (400, &b"malformed request\n"[..]),
            "{request:?}"
        );
        assert_eq!(resp.header("x-trace-proxy-error"), Some("BAD_REQUEST"));
        let rows = db.final_rows(trace, 1).await;
        assert_eq!(rows[0].get::<_, &str>("overall_status"), "failed");
        assert_eq!(
            rows[0].get::<_, Option<&str>>("error_code"),
            Some("BAD_REQUEST")
        );
    }
    assert_eq!(seen.lock().expect("lock").len(), 0, "nothing forwarded");
    proxy.stop().await;
}

/// Sends `body` and checks: forwarded byte for byte, 200, one final success row with a payload.
async fn send_poison(
    proxy: &Proxy,
    db: &TestDb,
    seen: &SeenLog,
    ctype: &str,
    body: &[u8],
) -> Value {
    let trace = new_trace_id();
    let req = post_bytes(&proxy.url("/webhook/poison"), &trace, ctype, body.to_vec());
    let (parts, _) = send(req).await;
    assert_eq!(parts.status, 200, "{trace}");
    let got = seen_with_trace(seen, &trace);
    assert!(got.body == body, "{trace}: upstream got different bytes");
    let rows = db.final_rows(&trace, 1).await;
    assert_eq!(rows[0].get::<_, &str>("overall_status"), "success");
    rows[0]
        .get::<_, Option<Value>>("request_payload")
        .unwrap_or_else(|| panic!("{trace}: request_payload is NULL"))
}

#[tokio::test]
async fn poison_payloads_are_recorded_and_forwarded_byte_exact() {
    let db = TestDb::new().await;
    let (up, seen) = recording_upstream(ok_json).await;
    let proxy = Proxy::start(&config(&db, up, "")).await;
    let poison = |ctype: &'static str, body: &[u8]| {
        let body = body.to_vec();
        let (proxy, db, seen) = (&proxy, &db, &seen);
        async move { send_poison(proxy, db, seen, ctype, &body).await }
    };

    let stored = poison("text/plain", b"a\0b\0").await;
    assert_eq!(stored, json!("a\u{FFFD}b\u{FFFD}"));
    let stored = poison("application/json", br#"{"a":"x\u0000y"}"#).await;
    assert_eq!(stored, json!({"a": "x\u{FFFD}y"}));
    let stored = poison("application/json", br#"{"a":"\ud800"}"#).await;
    assert_eq!(stored, json!(r#"{"a":"\ud800"}"#));
    poison("application/json", b"{\"a\":\"\xff\xfe\xc3\"}").await;
    poison("application/json", "[".repeat(10_000).as_bytes()).await;

    let big = format!(r#"{{"blob":"{}"}}"#, "x".repeat(5_000_000));
    let stored = poison("application/json", big.as_bytes()).await;
    assert_eq!(stored["_truncated"]["original_bytes"], json!(big.len()));
    let stored_len = stored.to_string().len();
    assert!(stored_len < 2048, "stored {stored_len} bytes");
    let sizes = db
        .rows(
            "SELECT max(pg_column_size(request_payload)), max(length(request_payload::text))
             FROM communication_traces",
        )
        .await;
    let (col, text) = (sizes[0].get::<_, i32>(0), sizes[0].get::<_, i32>(1));
    assert!(
        col < 2048 && text < 2048,
        "column {col} B, text {text} chars"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn trace_id_comes_from_traceparent_or_is_generated() {
    let db = TestDb::new().await;
    let (up, seen) = recording_upstream(ok_json).await;
    let proxy = Proxy::start(&config(&db, up, "")).await;

    // (a) A valid traceparent supplies the trace id and travels upstream unchanged.
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let w3c = "4bf92f3577b34da6a3ce929d0e0e4736";
    let req = Request::get(proxy.url("/webhook/a"))
        .header("traceparent", parent)
        .body(Full::new(Bytes::new()))
        .expect("request");
    let (parts, _) = send(req).await;
    assert_eq!(header(&parts, "x-trace-id"), Some(w3c));
    assert_eq!(seen_with_trace(&seen, w3c).headers["traceparent"], parent);
    db.final_rows(w3c, 1).await;

    // (b) No correlation headers: a fresh W3C trace id, used everywhere.
    let req = Request::get(proxy.url("/webhook/b"))
        .body(Full::new(Bytes::new()))
        .expect("request");
    let (parts, _) = send(req).await;
    let generated = header(&parts, "x-trace-id").expect("x-trace-id").to_owned();
    assert!(is_w3c_trace_id(&generated), "{generated}");
    let got = seen_with_trace(&seen, &generated).headers;
    let traceparent = got["traceparent"].to_str().expect("ASCII");
    assert!(is_w3c_traceparent(traceparent), "{traceparent}");
    assert_eq!(&traceparent[3..35], generated);
    db.final_rows(&generated, 1).await;

    // (c) An insane X-Trace-Id is replaced, not stored.
    let insane = "a".repeat(130);
    let (parts, _) = send(get(&proxy.url("/webhook/c"), &insane)).await;
    let replaced = header(&parts, "x-trace-id").expect("x-trace-id").to_owned();
    assert!(is_w3c_trace_id(&replaced), "{replaced}");
    seen_with_trace(&seen, &replaced);
    db.final_rows(&replaced, 1).await;
    assert!(db.trace_rows(&insane).await.is_empty());

    // (d) workflow_id from the n8n URL, else "unknown"; user_id falls back to "anonymous".
    let (t17, tother) = (new_trace_id(), new_trace_id());
    send(get(&proxy.url("/api/v1/workflows/17/activate"), &t17)).await;
    send(get(&proxy.url("/other"), &tother)).await;
    for (trace, workflow) in [(&t17, "17"), (&tother, "unknown")] {
        let rows = db.final_rows(trace, 1).await;
        assert_eq!(rows[0].get::<_, &str>("workflow_id"), workflow);
        assert_eq!(rows[0].get::<_, &str>("user_id"), "anonymous");
    }
    proxy.stop().await;
}

/// DATA-002's columns: (name, data_type, is_nullable).
const DATA_002_COLUMNS: [(&str, &str, &str); 18] = [
    ("id", "uuid", "NO"),
    ("trace_id", "text", "NO"),
    ("execution_id", "uuid", "YES"),
    ("attempt_number", "integer", "NO"),
    ("source_service", "text", "NO"),
    ("destination_service", "text", "NO"),
    ("workflow_id", "text", "NO"),
    ("action", "text", "YES"),
    ("user_id", "text", "NO"),
    ("requested_at", "timestamp without time zone", "NO"),
    ("responded_at", "timestamp without time zone", "YES"),
    ("duration_ms", "integer", "YES"),
    ("request_payload", "jsonb", "YES"),
    ("response_payload", "jsonb", "YES"),
    ("overall_status", "text", "NO"),
    ("error_code", "text", "YES"),
    ("error_detail", "text", "YES"),
    ("n8n_execution_id", "text", "YES"),
];

#[tokio::test]
async fn spec_insert_and_column_types_match_data_002() {
    let db = TestDb::new().await;
    let (up, _) = recording_upstream(ok_json).await;
    let proxy = Proxy::start(&config(&db, up, "")).await;
    wait_for_migrations(&db).await;

    // The insert drizzle issues with only the spec's required columns.
    let requested_at = chrono::Utc::now().naive_utc();
    let row = db
        .client
        .query_one(
            "INSERT INTO communication_traces
                 (trace_id, source_service, destination_service, workflow_id, user_id, requested_at)
             VALUES ($1, $2, $3, $4, $5, $6)
             RETURNING id, attempt_number, overall_status",
            &[
                &"spec-1",
                &"bilko-app",
                &"n8n",
                &"wf-1",
                &"user-1",
                &requested_at,
            ],
        )
        .await
        .expect("the spec's insert works");
    assert_eq!(row.get::<_, uuid::Uuid>("id").get_version_num(), 4);
    assert_eq!(row.get::<_, i32>("attempt_number"), 1);
    assert_eq!(row.get::<_, &str>("overall_status"), "pending");

    let columns = db
        .client
        .query(
            "SELECT column_name::text, data_type::text, is_nullable::text, column_default::text
             FROM information_schema.columns
             WHERE table_schema = $1 AND table_name = 'communication_traces'",
            &[&db.schema],
        )
        .await
        .expect("columns");
    let column = |name: &str| {
        columns
            .iter()
            .find(|c| c.get::<_, &str>(0) == name)
            .unwrap_or_else(|| panic!("column {name} missing"))
    };
    for (name, data_type, nullable) in DATA_002_COLUMNS {
        let c = column(name);
        assert_eq!(
            (c.get::<_, &str>(1), c.get::<_, &str>(2)),
            (data_type, nullable),
            "{name}"
        );
    }
    let default = |name: &str| column(name).get::<_, Option<String>>(3).unwrap_or_default();
    assert!(
        default("id").contains("gen_random_uuid()"),
        "{}",
        default("id")
    );
    assert_eq!(default("attempt_number"), "1");
    assert_eq!(default("overall_status"), "'pending'::text");
    for c in &columns {
        let name: &str = c.get(0);
        let extra = !DATA_002_COLUMNS.iter().any(|(n, _, _)| *n == name);
        let addable = c.get::<_, &str>(2) == "YES" || c.get::<_, Option<&str>>(3).is_some();
        assert!(
            !extra || addable,
            "extra column {name} breaks the spec's insert"
        );
    }

    let indexes = db
        .client
        .query(
            "SELECT indexname::text, indexdef FROM pg_indexes
             WHERE schemaname = $1 AND tablename = 'communication_traces'",
            &[&db.schema],
        )
        .await
        .expect("indexes");
    // The spec's five names, each serving lookups by its column (which leads it); three are
    // built to cost fewer index writes per request (migration 0012).
    for (name, definition) in [
        ("idx_traces_trace_id", "UNIQUE INDEX idx_traces_trace_id ON {s}.communication_traces USING btree (trace_id, attempt_number)"),
        ("idx_traces_execution_id", "INDEX idx_traces_execution_id ON {s}.communication_traces USING btree (execution_id) WHERE (execution_id IS NOT NULL)"),
        ("idx_traces_workflow_id", "INDEX idx_traces_workflow_id ON {s}.communication_traces USING btree (workflow_id, requested_at, id) INCLUDE (overall_status, duration_ms, error_code)"),
        ("idx_traces_requested_at", "INDEX idx_traces_requested_at ON {s}.communication_traces USING btree (requested_at)"),
        ("idx_traces_status", "INDEX idx_traces_status ON {s}.communication_traces USING btree (overall_status)"),
    ] {
        let def: &str = indexes
            .iter()
            .find(|i| i.get::<_, &str>(0) == name)
            .unwrap_or_else(|| panic!("index {name} missing"))
            .get(1);
        let expected = format!("CREATE {}", definition.replace("{s}", &db.schema));
        assert_eq!(def, expected);
    }
    // No second index on a column these already lead.
    let names: Vec<&str> = indexes.iter().map(|i| i.get::<_, &str>(0)).collect();
    for gone in ["idx_traces_trace_attempt", "idx_traces_workflow_time"] {
        assert!(!names.contains(&gone), "{gone} still exists: {names:?}");
    }
    proxy.stop().await;
}

#[tokio::test]
async fn concurrent_migrations_apply_once() {
    let db = TestDb::new().await;
    let runs: Vec<_> = (0..4)
        .map(|_| {
            let url = db.url();
            tokio::spawn(async move {
                let mut client = connect(&url).await;
                trace_proxy::store::migrate(&mut client).await
            })
        })
        .collect();
    let mut applied = Vec::new();
    for run in runs {
        applied.extend(run.await.expect("task").expect("migrate"));
    }
    let expected: Vec<i32> = trace_proxy::store::MIGRATIONS.iter().map(|m| m.0).collect();
    applied.sort_unstable();
    assert_eq!(applied, expected, "each version applied by exactly one run");
    let recorded = db
        .rows("SELECT version, count(*) FROM trace_proxy_migrations GROUP BY version ORDER BY version")
        .await;
    let recorded: Vec<(i32, i64)> = recorded.iter().map(|r| (r.get(0), r.get(1))).collect();
    let once: Vec<(i32, i64)> = expected.iter().map(|v| (*v, 1)).collect();
    assert_eq!(recorded, once);
}

/// A request carrying forwarding headers of its own, one with underscores.
fn spoofing_request(trace: &str) -> String {
    format!(
        "GET /webhook/fwd HTTP/1.1\r\n\
         Host: client-facing.example\r\n\
         X-Forwarded-For: 6.6.6.6\r\n\
         X-Forwarded-Host: evil.example\r\n\
         X-Forwarded-Proto: https\r\n\
         Forwarded: for=6.6.6.6;proto=https\r\n\
         X-Real-IP: 6.6.6.6\r\n\
         X_Forwarded_For: 7.7.7.7\r\n\
         Connection: close\r\n\
         X-Trace-Id: {trace}\r\n\r\n"
    )
}

#[tokio::test]
async fn forwarding_headers_are_the_proxys_own_unless_the_peer_is_trusted() {
    let db = TestDb::new().await;
    let (up, seen) = recording_upstream(|| Response::new(full("ok"))).await;
    let proxy = Proxy::start(&config(&db, up, "")).await;
    let trace = new_trace_id();
    let resp = raw_http(proxy.addr, &spoofing_request(&trace)).await;
    assert_eq!(resp.status, 200);
    let got = seen_with_trace(&seen, &trace).headers;
    assert_eq!(got["x-forwarded-for"], "127.0.0.1");
    assert_eq!(got["x-forwarded-host"], "client-facing.example");
    assert_eq!(got["x-forwarded-proto"], "http");
    for spoofed in ["forwarded", "x-real-ip", "x_forwarded_for"] {
        assert!(!got.contains_key(spoofed), "{spoofed} passed: {got:?}");
    }
    proxy.stop().await;

    // Behind a trusted proxy the chain it sent is kept and this hop appended.
    let extra = "[server]\ntrusted_proxies = [\"127.0.0.0/8\"]\n";
    let proxy = Proxy::start(&config(&db, up, extra)).await;
    let trace = new_trace_id();
    raw_http(proxy.addr, &spoofing_request(&trace)).await;
    let got = seen_with_trace(&seen, &trace).headers;
    assert_eq!(got["x-forwarded-for"], "6.6.6.6, 127.0.0.1");
    assert_eq!(got["x-forwarded-host"], "evil.example");
    assert_eq!(got["x-forwarded-proto"], "https");
    assert_eq!(got["forwarded"], "for=6.6.6.6;proto=https");
    assert!(!got.contains_key("x_forwarded_for"), "{got:?}");
    proxy.stop().await;
}

/// Whether the server closed `conn` within `within` (EOF or reset on read).
async fn closed_within(conn: &mut tokio::net::TcpStream, within: std::time::Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(within, conn.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_at_the_header_deadline() {
    let db = TestDb::new().await;
    let extra = "[server]\nheader_read_timeout = \"300ms\"\n";
    let proxy = Proxy::start(&config(&db, closed_port().await, extra)).await;
    let mut silent = tokio::net::TcpStream::connect(proxy.addr)
        .await
        .expect("connect");
    assert!(
        closed_within(&mut silent, std::time::Duration::from_secs(3)).await,
        "a silent connection was held open"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn health_answers_while_idle_sockets_try_to_hold_every_admin_slot() {
    let db = TestDb::new().await;
    let proxy = Proxy::start_with_admin(&config(&db, closed_port().await, "")).await;
    let admin = proxy.admin.expect("admin listener");
    // More silent sockets than the admin listener has slots (64).
    let mut idle = Vec::new();
    for _ in 0..80 {
        idle.push(
            tokio::net::TcpStream::connect(admin)
                .await
                .expect("connect"),
        );
    }
    let req = http::Request::get(format!("http://{admin}/healthz"))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("request");
    let answered = tokio::time::timeout(std::time::Duration::from_secs(8), send(req)).await;
    let (parts, _) = answered.expect("/healthz answered while idle sockets were open");
    assert_eq!(parts.status, 200);
    drop(idle);
    proxy.stop().await;
}

/// Request-smuggling vectors: each carries a second request (`GET /smuggled`) that a proxy
/// disagreeing with its upstream about where the first one ends would forward.
const DESYNC: [(&str, &str); 12] = [
    ("CL.TE", "Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("TE.CL", "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n5c\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\nContent-Length: 15\r\n\r\nx=1\r\n0\r\n\r\n"),
    ("duplicate CL", "Content-Length: 0\r\nContent-Length: 44\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("CL list", "Content-Length: 0, 44\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("TE obfuscated", "Transfer-Encoding: xchunked\r\nContent-Length: 0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("TE obs-fold", "Transfer-Encoding:\r\n chunked\r\nContent-Length: 0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("TE space before colon", "Transfer-Encoding : chunked\r\nContent-Length: 0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("TE chunked, identity", "Transfer-Encoding: chunked, identity\r\nContent-Length: 0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("bad chunk size", "Transfer-Encoding: chunked\r\n\r\nzz\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("chunk size overflow", "Transfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("CL plus sign", "Content-Length: +0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("bare LF chunk", "Transfer-Encoding: chunked\r\n\r\n0\n\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"),
];

#[tokio::test]
async fn no_desync_vector_smuggles_a_second_request_upstream() {
    let db = TestDb::new().await;
    let paths: std::sync::Arc<std::sync::Mutex<Vec<String>>> = std::sync::Arc::default();
    let seen = paths.clone();
    let up = upstream(move |req: http::Request<hyper::body::Incoming>| {
        let seen = seen.clone();
        async move {
            seen.lock().expect("lock").push(req.uri().path().to_owned());
            let _ = http_body_util::BodyExt::collect(req.into_body()).await;
            Response::new(full("ok"))
        }
    })
    .await;
    let proxy = Proxy::start(&config(&db, up, "[server]\nheader_read_timeout = \"1s\"\n")).await;
    for (name, rest) in DESYNC {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut conn = tokio::net::TcpStream::connect(proxy.addr)
            .await
            .expect("connect");
        let request = format!("POST /webhook/first HTTP/1.1\r\nHost: x\r\n{rest}");
        conn.write_all(request.as_bytes()).await.expect("write");
        let mut answer = Vec::new();
        // Answered (or closed) and done: the proxy must not wait for more, nor forward more.
        let read = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            conn.read_to_end(&mut answer),
        )
        .await;
        let _ = (name, read);
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let seen = paths.lock().expect("lock").clone();
    assert!(
        !seen.iter().any(|p| p == "/smuggled"),
        "a smuggled request reached the upstream: {seen:?}"
    );
    assert!(seen.len() <= DESYNC.len(), "{seen:?}");
    proxy.stop().await;
}

/// One HTTP/2 frame: 9-byte header, then `payload`.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("frame length");
    let mut f = len.to_be_bytes()[1..].to_vec();
    f.extend([kind, flags]);
    f.extend((stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

#[tokio::test]
async fn http2_control_frame_floods_do_not_take_the_proxy_down() {
    use tokio::io::AsyncWriteExt;
    const FRAMES: usize = 50_000;
    let db = TestDb::new().await;
    let up = upstream(|_req| async { Response::new(full("ok")) }).await;
    let proxy = Proxy::start(&config(&db, up, "")).await;
    let floods: [(&str, Vec<u8>); 4] = [
        ("PING", h2_frame(0x6, 0, 0, &[7u8; 8])),
        ("SETTINGS", h2_frame(0x4, 0, 0, &[])),
        ("WINDOW_UPDATE", h2_frame(0x8, 0, 0, &1u32.to_be_bytes())),
        // Empty DATA on a stream that was never opened.
        ("empty DATA", h2_frame(0x0, 0, 1, &[])),
    ];
    for (name, frame) in floods {
        let mut conn = tokio::net::TcpStream::connect(proxy.addr)
            .await
            .expect("connect");
        let mut flood = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        flood.extend(h2_frame(0x4, 0, 0, &[]));
        for _ in 0..FRAMES {
            flood.extend_from_slice(&frame);
        }
        // Written without reading a byte back; the proxy may stop reading or close.
        let _ =
            tokio::time::timeout(std::time::Duration::from_secs(5), conn.write_all(&flood)).await;
        // Meanwhile another client is served.
        let trace = new_trace_id();
        let answered = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            send(get(&proxy.url("/webhook/after-flood"), &trace)),
        )
        .await;
        let (parts, _) = answered.unwrap_or_else(|_| panic!("no answer during a {name} flood"));
        assert_eq!(parts.status, 200, "{name}");
        drop(conn);
    }
    proxy.stop().await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_at_the_header_deadline() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let db = TestDb::new().await;
    let up = upstream(|_req| async { Response::new(full("ok")) }).await;
    let extra = "[server]\nheader_read_timeout = \"300ms\"\n";
    let proxy = Proxy::start(&config(&db, up, extra)).await;
    let mut conn = tokio::net::TcpStream::connect(proxy.addr)
        .await
        .expect("connect");
    let trace = new_trace_id();
    let req = format!("GET /webhook/ka HTTP/1.1\r\nHost: x\r\nX-Trace-Id: {trace}\r\n\r\n");
    conn.write_all(req.as_bytes()).await.expect("request");
    let mut buf = vec![0u8; 4096];
    let n = conn.read(&mut buf).await.expect("response");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Then nothing: the next request head never comes.
    assert!(
        closed_within(&mut conn, std::time::Duration::from_secs(3)).await,
        "an idle keep-alive connection was held open"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn an_http2_connection_without_requests_is_closed_at_the_idle_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let db = TestDb::new().await;
    let up = upstream(|_req| async {
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        Response::new(full("slow but answered"))
    })
    .await;
    let extra = "[server]\nidle_timeout = \"500ms\"\n";
    let proxy = Proxy::start(&config(&db, up, extra)).await;

    // A request in flight longer than the idle timeout is not cut.
    let h2c: TestClient = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let resp = h2c
        .request(get(&proxy.url("/webhook/slow"), &new_trace_id()))
        .await
        .expect("h2c request");
    assert_eq!(resp.status(), 200);

    // A connection that opens HTTP/2 and then asks nothing is closed.
    let mut conn = tokio::net::TcpStream::connect(proxy.addr)
        .await
        .expect("connect");
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend(h2_frame(0x4, 0, 0, &[]));
    conn.write_all(&hello).await.expect("preface");
    let closed = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        let mut buf = [0u8; 1024];
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "an idle HTTP/2 connection was held open");
    proxy.stop().await;
}
