//! The Memory Explorer over HTTP against the real admin listener: sign-in sessions and
//! their cookie, sign-out, CSRF and throttling of sign-ins, the security headers of every admin
//! response, assets, caching and redirects; then the whole explorer in headless Chromium
//! (`tests/browser/explorer.mjs`) against rows that came from real proxied requests.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::Value;

use crate::support::*;

const TOKEN: &str = "ui-admin-token-0123456789";
const N8N_URL: &str = "https://n8n.example.com/workflow/{workflowId}/executions/{executionId}";
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// A proxy with its admin listener; `token` "" leaves the query API (and sign-in) disabled.
async fn start(db: &TestDb, upstream: SocketAddr, token: &str) -> Proxy {
    let admin = format!("[admin]\ntoken = \"{token}\"\nn8n_execution_url = \"{N8N_URL}\"\n");
    let p = Proxy::start_with_admin(&config(db, upstream, &admin)).await;
    wait_for_migrations(db).await;
    p
}

/// One admin request: method, path, headers, body; the status, headers and body.
async fn call(
    p: &Proxy,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (StatusCode, HeaderMap, Bytes) {
    let admin = p.admin.expect("admin listener");
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://{admin}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(Full::new(Bytes::from(body.to_owned())))
        .expect("request");
    let resp = client().request(req).await.expect("admin request");
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await.expect("body").to_bytes();
    (parts.status, parts.headers, bytes)
}

fn origin(p: &Proxy) -> String {
    format!("http://{}", p.admin.expect("admin listener"))
}

fn json(body: &Bytes) -> Value {
    serde_json::from_slice(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"))
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> &'a str {
    h.get(name)
        .unwrap_or_else(|| panic!("no {name} in {h:?}"))
        .to_str()
        .expect("ASCII header")
}

/// Signs in from this origin; the `Set-Cookie` value.
async fn sign_in(p: &Proxy, token: &str, origin: &str) -> (StatusCode, HeaderMap) {
    let body = serde_json::json!({ "token": token }).to_string();
    let (status, headers, _) = call(
        p,
        "POST",
        "/ui/signin",
        &[("origin", origin), ("content-type", "application/json")],
        &body,
    )
    .await;
    (status, headers)
}

/// `name=value` of a `Set-Cookie` header.
fn cookie_pair(set_cookie: &str) -> String {
    set_cookie
        .split(';')
        .next()
        .expect("cookie pair")
        .to_owned()
}

#[tokio::test]
async fn a_session_cookie_opens_the_api_until_sign_out_ends_it() {
    let db = TestDb::new().await;
    let p = start(&db, closed_port().await, TOKEN).await;
    let (status, _, body) = call(&p, "GET", "/ui/session", &[], "").await;
    assert_eq!(status, 200);
    assert_eq!(
        json(&body),
        serde_json::json!({"tokenConfigured": true, "signedIn": false, "n8nExecutionUrl": null})
    );
    let (status, _, _) = call(&p, "GET", "/api/traces", &[], "").await;
    assert_eq!(status, 401);

    let (status, headers) = sign_in(&p, TOKEN, &origin(&p)).await;
    assert_eq!(status, 204);
    let set = header(&headers, "set-cookie");
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"] {
        assert!(set.split("; ").any(|a| a == attr), "{attr} in {set}");
    }
    assert!(
        !set.contains("Secure"),
        "plain HTTP page: no Secure ({set})"
    );
    let pair = cookie_pair(set);
    assert!(
        pair.starts_with("trace_proxy_session=") && pair.len() > 40,
        "{pair}"
    );
    let with_cookie = [("cookie", pair.as_str())];

    let (status, _, body) = call(&p, "GET", "/api/traces?limit=1", &with_cookie, "").await;
    assert_eq!(status, 200, "{body:?}");
    let (_, _, body) = call(&p, "GET", "/ui/session", &with_cookie, "").await;
    assert_eq!(json(&body)["signedIn"], true);
    assert_eq!(json(&body)["n8nExecutionUrl"], N8N_URL);
    // Bearer keeps working beside sessions; a forged cookie does not.
    let bearer = format!("Bearer {TOKEN}");
    let (status, _, _) = call(&p, "GET", "/api/traces", &[("authorization", &bearer)], "").await;
    assert_eq!(status, 200);
    let forged = [(
        "cookie",
        "trace_proxy_session=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    )];
    let (status, _, _) = call(&p, "GET", "/api/traces", &forged, "").await;
    assert_eq!(status, 401);

    let sign_out = [("origin", origin(&p)), ("cookie", pair.clone())];
    let sign_out: Vec<(&str, &str)> = sign_out.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (status, headers, _) = call(&p, "POST", "/ui/signout", &sign_out, "").await;
    assert_eq!(status, 204);
    assert!(header(&headers, "set-cookie").contains("Max-Age=0"));
    // Ended server-side: the old cookie no longer opens anything.
    let (status, _, body) = call(&p, "GET", "/api/traces", &with_cookie, "").await;
    assert_eq!(status, 401, "{body:?}");
    let (_, _, body) = call(&p, "GET", "/ui/session", &with_cookie, "").await;
    assert_eq!(json(&body)["signedIn"], false);

    // Behind a TLS-terminating proxy the page's origin is https: the cookie is Secure.
    let https = origin(&p).replace("http://", "https://");
    let (status, headers) = sign_in(&p, TOKEN, &https).await;
    assert_eq!(status, 204);
    assert!(header(&headers, "set-cookie").ends_with("; Secure"));
    p.stop().await;
}

#[tokio::test]
async fn sign_in_and_out_refuse_cross_site_requests_and_other_bodies() {
    let db = TestDb::new().await;
    let p = start(&db, closed_port().await, TOKEN).await;
    let body = serde_json::json!({ "token": TOKEN }).to_string();
    let json_type = ("content-type", "application/json");
    let own = origin(&p);
    for (headers, expected) in [
        (vec![json_type], 403),
        (vec![json_type, ("origin", "http://evil.example")], 403),
        (vec![json_type, ("origin", "null")], 403),
        (vec![json_type, ("sec-fetch-site", "cross-site")], 403),
        (
            vec![json_type, ("sec-fetch-site", "same-site"), ("origin", &own)],
            403,
        ),
        (vec![("content-type", "text/plain"), ("origin", &own)], 400),
        (
            vec![
                ("content-type", "application/x-www-form-urlencoded"),
                ("origin", &own),
            ],
            400,
        ),
    ] {
        let (status, h, resp) = call(&p, "POST", "/ui/signin", &headers, &body).await;
        assert_eq!(status.as_u16(), expected, "{headers:?}: {resp:?}");
        assert!(h.get("set-cookie").is_none());
    }
    let own_json = [json_type, ("origin", own.as_str())];
    let huge = format!("{{\"token\": \"{}\"}}", "x".repeat(10_000));
    let (status, _, _) = call(&p, "POST", "/ui/signin", &own_json, &huge).await;
    assert_eq!(status, 400);
    let (status, _, _) = call(&p, "POST", "/ui/signin", &own_json, "{\"token\": 1}").await;
    assert_eq!(status, 400);
    // Sec-Fetch-Site alone (an older browser without Origin on same-origin POSTs) is enough.
    let fetch_metadata_only = [json_type, ("sec-fetch-site", "same-origin")];
    let (status, _, _) = call(&p, "POST", "/ui/signin", &fetch_metadata_only, &body).await;
    assert_eq!(status, 204);
    // Sign-in and sign-out are POST only; the sign-in page itself is a GET of the shell.
    let (status, h, _) = call(&p, "GET", "/ui/signout", &[], "").await;
    assert_eq!(status, 405);
    assert_eq!(header(&h, "allow"), "POST");
    let (status, _, _) = call(&p, "PUT", "/ui/signin", &own_json, &body).await;
    assert_eq!(status, 405);
    let (status, h, _) = call(&p, "GET", "/ui/signin", &[], "").await;
    assert_eq!(status, 200);
    assert!(header(&h, "content-type").starts_with("text/html"));
    let (status, _, _) = call(
        &p,
        "POST",
        "/ui/signout",
        &[("origin", "http://evil.example")],
        "",
    )
    .await;
    assert_eq!(status, 403);
    p.stop().await;
}

/// Log lines the code under test writes while the guard lives (this test's runtime is
/// single-threaded, so the proxy's tasks log on this thread).
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

#[tokio::test]
async fn failed_sign_ins_are_throttled_and_logged_without_the_value() {
    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let db = TestDb::new().await;
    let p = start(&db, closed_port().await, TOKEN).await;
    let own = origin(&p);
    let guess = "guess-NOT-THE-TOKEN-7f3a";
    let mut refused = 0;
    loop {
        let (status, h) = sign_in(&p, guess, &own).await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            let wait: u64 = header(&h, "retry-after").parse().expect("seconds");
            assert!((1..=12).contains(&wait), "Retry-After {wait}");
            break;
        }
        assert_eq!(status, 401);
        refused += 1;
        assert!(refused <= 5, "never throttled");
    }
    assert_eq!(refused, 5, "five failures per client before the limit");
    // While throttled even the right token is refused: guessing cannot go on at speed.
    let (status, _) = sign_in(&p, TOKEN, &own).await;
    assert_eq!(status, 429);
    // Bearer requests are not sign-ins and are never throttled.
    let bearer = format!("Bearer {TOKEN}");
    let (status, _, _) = call(&p, "GET", "/api/traces", &[("authorization", &bearer)], "").await;
    assert_eq!(status, 200);
    p.stop().await;
    let text = String::from_utf8(logs.0.lock().expect("lock").clone()).expect("UTF-8 logs");
    assert_eq!(
        text.matches("explorer sign-in refused").count(),
        5,
        "{text}"
    );
    assert!(text.contains("explorer sign-in throttled"), "{text}");
    assert!(text.contains("127.0.0.1"), "the peer is logged: {text}");
    assert!(
        !text.contains(guess),
        "the attempted value was logged: {text}"
    );
    assert!(!text.contains(TOKEN), "the token was logged: {text}");
}

#[tokio::test]
async fn every_admin_response_has_the_security_headers_and_assets_are_cached_by_version() {
    let db = TestDb::new().await;
    let p = start(&db, closed_port().await, TOKEN).await;
    let (status, h, _) = call(&p, "GET", "/", &[], "").await;
    assert_eq!(status, 302);
    assert_eq!(header(&h, "location"), "/ui/");
    let (status, h, _) = call(&p, "GET", "/ui", &[], "").await;
    assert_eq!(status, 302);
    assert_eq!(header(&h, "location"), "/ui/");
    let (status, h, shell) = call(&p, "GET", "/ui/", &[], "").await;
    assert_eq!(status, 200);
    assert_eq!(header(&h, "cache-control"), "no-cache");
    let shell = String::from_utf8(shell.to_vec()).expect("UTF-8");
    assert!(
        !shell.contains("<script>") && !shell.contains("style="),
        "{shell}"
    );
    // The shell names the versioned entry points; every module they import is served too.
    let app = shell
        .split('"')
        .find(|s| s.starts_with("/ui/assets/") && s.ends_with("/app.js"))
        .expect("app.js in the shell")
        .to_owned();
    let dir = app.trim_end_matches("app.js").to_owned();
    let mut pending = vec!["app.js".to_owned(), "app.css".to_owned()];
    let mut seen = Vec::new();
    let mut total = shell.len();
    while let Some(file) = pending.pop() {
        if seen.contains(&file) {
            continue;
        }
        let (status, h, body) = call(&p, "GET", &format!("{dir}{file}"), &[], "").await;
        assert_eq!(status, 200, "{file}");
        assert_eq!(
            header(&h, "cache-control"),
            "public, max-age=31536000, immutable"
        );
        assert_eq!(header(&h, "content-security-policy"), CSP);
        total += body.len();
        let text = String::from_utf8(body.to_vec()).expect("UTF-8");
        let imports = text
            .lines()
            .filter(|l| l.starts_with("import "))
            .filter_map(|l| l.split("from '").nth(1)?.split('\'').next());
        for rel in imports {
            let base = Path::new(&file).parent().expect("parent");
            let joined = base.join(rel);
            let mut parts: Vec<String> = Vec::new();
            for c in joined.components() {
                match c.as_os_str().to_str().expect("UTF-8 path") {
                    "." => {}
                    ".." => {
                        parts.pop();
                    }
                    s => parts.push(s.to_owned()),
                }
            }
            pending.push(parts.join("/"));
        }
        seen.push(file);
    }
    assert!(seen.len() > 10, "{seen:?}");
    assert!(total < 250 * 1024, "assets weigh {total} bytes");
    let (status, _, _) = call(&p, "GET", "/ui/assets/00000000/app.js", &[], "").await;
    assert_eq!(status, 404, "an old version is not served as the new one");
    let (status, _, _) = call(&p, "GET", "/ui/no-such-view", &[], "").await;
    assert_eq!(status, 404);

    for (method, path) in [
        ("GET", "/"),
        ("GET", "/ui/"),
        ("GET", "/ui/traces/abc"),
        ("GET", "/ui/session"),
        ("POST", "/ui/signin"),
        ("GET", "/ui/nope"),
        ("GET", "/api/traces"),
        ("GET", "/api/nope"),
        ("GET", "/healthz"),
        ("GET", "/metrics"),
    ] {
        let (_, h, _) = call(&p, method, path, &[], "").await;
        assert_eq!(header(&h, "content-security-policy"), CSP, "{path}");
        assert_eq!(header(&h, "x-content-type-options"), "nosniff", "{path}");
        assert_eq!(header(&h, "referrer-policy"), "no-referrer", "{path}");
    }
    p.stop().await;
}

#[tokio::test]
async fn without_a_token_the_page_says_how_to_enable_it_and_sign_in_is_refused() {
    let db = TestDb::new().await;
    let p = start(&db, closed_port().await, "").await;
    let (_, _, body) = call(&p, "GET", "/ui/session", &[], "").await;
    assert_eq!(json(&body)["tokenConfigured"], false);
    let (status, _) = sign_in(&p, TOKEN, &origin(&p)).await;
    assert_eq!(status, 403);
    let (status, _, _) = call(&p, "GET", "/ui/", &[], "").await;
    assert_eq!(status, 200, "the page still loads, to explain");
    p.stop().await;
}

const CHROMIUM: &str = "/usr/bin/chromium";
const CANARY_USER: &str = "<img src=x onerror=window.__xss=1>";
const CANARY_WORKFLOW: &str = "</script><script>window.__xss=2</script>";
const CANARY_TRACE: &str = "\"><svg/onload=window.__xss=3>";

/// The browser test's directory, once node, Debian's chromium and playwright-core are there
/// (`scripts/setup-browser.sh` installs them); else why not.
fn browser_test_dir() -> Result<PathBuf, String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    if !Path::new(CHROMIUM).exists() {
        return Err(format!("{CHROMIUM} is missing (apt-get install chromium)"));
    }
    if !dir.join("node_modules/playwright-core").is_dir() {
        return Err(format!(
            "playwright-core is missing (npm ci in {})",
            dir.display()
        ));
    }
    match Command::new("node").arg("--version").output() {
        Ok(o) if o.status.success() => Ok(dir),
        _ => Err("node is missing (apt-get install nodejs)".into()),
    }
}

/// A stand-in for n8n: `/webhook/order-sync` fails (503, 500, 503, …), everything else answers
/// 200 with an n8n execution id.
async fn n8n_stand_in() -> SocketAddr {
    let failures = Arc::new(AtomicUsize::new(0));
    let executions = Arc::new(AtomicUsize::new(1000));
    upstream(move |req: Request<hyper::body::Incoming>| {
        let (failures, executions) = (failures.clone(), executions.clone());
        async move {
            let failing = req.uri().path().starts_with("/webhook/order-sync");
            let _ = req.into_body().collect().await;
            let answer = Response::builder().header("content-type", "application/json");
            if failing {
                let status = [503, 500][failures.fetch_add(1, Ordering::SeqCst) % 2];
                return answer
                    .status(status)
                    .body(full(r#"{"message": "n8n is overloaded, try again"}"#))
                    .expect("response");
            }
            let n = executions.fetch_add(1, Ordering::SeqCst);
            answer
                .header("x-n8n-execution-id", n.to_string())
                .body(full(format!(r#"{{"ok": true, "executionId": "{n}"}}"#)))
                .expect("response")
        }
    })
    .await
}

/// One request through the proxy: `POST path` with these headers and JSON body; its status.
async fn through(p: &Proxy, path: &str, headers: &[(&str, &str)], body: &Value) -> u16 {
    let mut req = Request::post(p.url(path)).header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("request");
    send(req).await.0.status.as_u16()
}

/// What the browser test is given to look for.
struct Sent {
    failed_trace: String,
    execution: uuid::Uuid,
}

/// Real traffic through the proxy: a trace bilko-app retried twice (same `X-Trace-Id`, a
/// changed body each time) that failed all three times; a request whose ids and body carry
/// script-injection canaries; and enough successful requests to page through.
async fn send_traffic(p: &Proxy, db: &TestDb) -> Sent {
    let failed_trace = new_trace_id();
    let execution = uuid::Uuid::new_v4();
    let exec = execution.to_string();
    for attempt in 1..=3 {
        let mut body = serde_json::json!({
            "order": 42, "attempt": attempt, "password": "hunter2-do-not-store",
            "items": [{"sku": "A-1", "qty": attempt}],
        });
        if attempt == 3 {
            // Beyond capture.max_payload_bytes (1024 in tests): stored with `_truncated`.
            body["note"] = Value::String("long note ".repeat(110));
        }
        let headers = [
            ("x-trace-id", failed_trace.as_str()),
            ("x-workflow-id", "order-sync"),
            ("x-user-id", "alice"),
            ("x-execution-id", exec.as_str()),
        ];
        let status = through(p, "/webhook/order-sync", &headers, &body).await;
        assert_eq!(status, if attempt == 2 { 500 } else { 503 });
    }
    let canary = serde_json::json!({
        "comment": CANARY_USER, "html": CANARY_WORKFLOW, CANARY_USER: [CANARY_WORKFLOW],
    });
    let headers = [
        ("x-trace-id", CANARY_TRACE),
        ("x-workflow-id", CANARY_WORKFLOW),
        ("x-user-id", CANARY_USER),
    ];
    assert_eq!(through(p, "/webhook/canary", &headers, &canary).await, 200);
    for i in 0..11 {
        let trace = new_trace_id();
        let mut headers = vec![
            ("x-trace-id", trace.as_str()),
            ("x-workflow-id", "nightly-report"),
            ("x-user-id", "bob"),
        ];
        if i < 4 {
            headers.push(("x-execution-id", exec.as_str()));
        }
        let body = serde_json::json!({"report": i});
        assert_eq!(
            through(p, "/webhook/nightly-report", &headers, &body).await,
            200
        );
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let rows = db
            .rows("SELECT count(*) FROM communication_traces WHERE overall_status IN ('success', 'failed')")
            .await;
        if rows[0].get::<_, i64>(0) == 15 {
            break;
        }
        assert!(Instant::now() < deadline, "rows not final within 10 s");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Sent {
        failed_trace,
        execution,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_explorer_works_in_a_real_browser() {
    let dir = match browser_test_dir() {
        Ok(dir) => dir,
        Err(why) if std::env::var_os("CI").is_some() => {
            panic!("the browser test must run in CI: {why}; scripts/test.sh installs it")
        }
        Err(why) => {
            eprintln!("SKIPPED the_explorer_works_in_a_real_browser: {why}; scripts/setup-browser.sh installs it");
            return;
        }
    };
    let db = TestDb::new().await;
    let p = start(&db, n8n_stand_in().await, TOKEN).await;
    // A second proxy without a token: its page explains how to enable the explorer.
    let disabled_db = TestDb::new().await;
    let disabled = start(&disabled_db, closed_port().await, "").await;
    let sent = send_traffic(&p, &db).await;
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("explorer");
    let log_dir = tempfile::tempdir().expect("tempdir");
    let log_path = log_dir.path().join("browser.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut child = Command::new("node")
        .arg(dir.join("explorer.mjs"))
        .current_dir(&dir)
        .env("ADMIN_URL", origin(&p))
        .env("DISABLED_ADMIN_URL", origin(&disabled))
        .env("PROXY_URL", format!("http://{}", p.addr))
        .env("TOKEN", TOKEN)
        .env("FAILED_TRACE", &sent.failed_trace)
        .env("CANARY_TRACE", CANARY_TRACE)
        .env("CANARY_USER", CANARY_USER)
        .env("CANARY_WORKFLOW", CANARY_WORKFLOW)
        .env("EXECUTION_ID", sent.execution.to_string())
        .env("OUT_DIR", &out)
        .env("CHROMIUM", CHROMIUM)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log file"))
        .stderr(log)
        .spawn()
        .expect("spawn node");
    let deadline = Instant::now() + Duration::from_secs(240);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for node") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let output = std::fs::read_to_string(&log_path).unwrap_or_default();
    p.stop().await;
    disabled.stop().await;
    eprintln!("{output}");
    match status {
        Some(s) if s.success() => {}
        Some(s) => panic!(
            "browser test failed ({s}); screenshots in {}",
            out.display()
        ),
        None => panic!("browser test did not finish within 240 s"),
    }
    for view in [
        "disabled",
        "overview",
        "traces",
        "trace",
        "canary",
        "live-tail",
        "workflow",
        "user",
        "execution",
    ] {
        assert!(
            out.join(format!("{view}.png")).is_file(),
            "no screenshot of {view}"
        );
    }
}
