//! The Memory Explorer (issue 11) over HTTP against the real admin listener: sign-in sessions and
//! their cookie, sign-out, CSRF and throttling of sign-ins, the security headers of every admin
//! response, assets, caching and redirects; then the whole explorer in headless Chromium
//! (`tests/browser/explorer.mjs`) against rows that came from real proxied requests.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
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
