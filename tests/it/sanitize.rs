//! D4 proof: canaries sent every way — JSON keys at any depth, value patterns in free text,
//! JSON inside strings, headers, query parameters, URL userinfo, the path, form and multipart
//! fields, gzip/deflate/br bodies, bodies cut at the capture cap, and the same in responses —
//! reach neither the rows nor anything else in a full `pg_dump` of the test's schema, while the
//! client and the upstream exchange the original bytes. Negative controls survive.

use std::io::Write;
use std::process::Command;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde_json::{json, Value};

use crate::support::*;

// Canaries: each distinct, each a plain word so it reads the same in any dump format.
const JWT: &str =
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJjbnJ5In0.CNRYjwtSignature0123456789abcdef";
const JWT_SIG: &str = "CNRYjwtSignature0123456789abcdef";
const CARD: &str = "4012 8888 8888 1881"; // Luhn-valid
const CARD_DIGITS: &str = "4012888888881881";
const AWS: &str = "AKIACNRYAWSKEY123456";
const GH: &str = "ghp_CNRYgithubToken0123456789abcdefghijk";
const PEM_BODY: &str = "MIIEvCNRYpemPrivateKeyBody0123456789";

// Negative controls: must be stored as sent.
const UUID: &str = "550e8400-e29b-41d4-a716-446655440000";
const EXECUTION: &str = "48213";
const NOT_A_CARD: &str = "4012888888881882"; // 16 digits, fails Luhn

/// Everything that must never be found in the database.
fn canaries() -> Vec<&'static str> {
    vec![
        "CNRYjsonPassword",
        "CNRYdeepToken",
        "CNRYapiKeyHeaderish",
        "CNRYclientSecret",
        "CNRYnestedJson",
        "CNRYbearerText",
        JWT_SIG,
        CARD_DIGITS,
        "8888 8888 1881",
        AWS,
        GH,
        PEM_BODY,
        "CNRYdsnPassword",
        "CNRYssn",
        "ORDSECRET-4242",
        "CNRYauthHeader",
        "CNRYcookie",
        "CNRYn8nApiKey",
        "CNRYxApiKey",
        "CNRYproxyAuth",
        "CNRYuserHeaderBearer",
        "CNRYqueryToken",
        "CNRYaccessToken",
        "CNRYoauthCode",
        "CNRYsig",
        "CNRYamzSignature",
        "CNRYuserinfo",
        "CNRYformPassword",
        "CNRYformSecret",
        "CNRYmultipartKey",
        "CNRYmultipartFile",
        "CNRYmultipartJson",
        "CNRYgzipPassword",
        "CNRYdeflateToken",
        "CNRYbrotliSecret",
        "CNRYbigEarly",
        "CNRYbigLate",
        "CNRYstraddle",
        "CNRYtextBearer",
        "CNRYrespToken",
        "CNRYrespBearer",
        "CNRYrespNested",
        "CNRYrespCookie",
        "CNRYrespGzip",
        "CNRYrespBrotli",
        "CNRYrespBigEarly",
        "CNRYrespBigLate",
    ]
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).expect("write");
    e.finish().expect("finish")
}

fn deflate(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).expect("write");
    e.finish().expect("finish")
}

fn brotli(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut w = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
        w.write_all(data).expect("write");
    }
    out
}

/// A JSON body of about `size` bytes whose secret straddles byte `cut` (the capture cap).
fn big_json(early: &str, straddle: &str, late: &str, cut: usize, size: usize) -> Vec<u8> {
    let head = format!(r#"{{"token":"{early}","items":[1,2,3],"note":"padding "#);
    let secret = format!("ghp_{straddle}0123456789abcdefghijklmnopqrstuvwxyz");
    // Place the token so that the cut falls in its middle.
    let pad = cut - head.len() - secret.len() / 2;
    let mut body = format!("{head}{}{secret} tail\",\"blob\":\"", "p".repeat(pad));
    let rest = size.saturating_sub(body.len() + 40);
    body.push_str(&"x".repeat(rest));
    body.push_str(&format!(r#"","password":"{late}"}}"#));
    body.into_bytes()
}

const CAP: usize = 1024;

fn response_for(path: &str) -> Response<Body> {
    let json = |body: Vec<u8>| {
        Response::builder()
            .header("content-type", "application/json")
            .header("set-cookie", "session=CNRYrespCookie; HttpOnly")
            .body(full(body))
            .expect("response")
    };
    let encoded = |body: Vec<u8>, coding: &str| {
        Response::builder()
            .header("content-type", "application/json")
            .header("content-encoding", coding)
            .body(full(body))
            .expect("response")
    };
    match path {
        "/webhook/resp/json" => json(
            json!({
                "executionId": EXECUTION,
                "token": "CNRYrespToken",
                "message": "Bearer CNRYrespBearer issued",
                "payload": json!({"refresh_token": "CNRYrespNested", "id": UUID}).to_string(),
            })
            .to_string()
            .into_bytes(),
        ),
        "/webhook/resp/gzip" => encoded(gzip(br#"{"password":"CNRYrespGzip","ok":true}"#), "gzip"),
        "/webhook/resp/br" => encoded(brotli(br#"{"secret":"CNRYrespBrotli","ok":true}"#), "br"),
        "/webhook/resp/big" => json(big_json(
            "CNRYrespBigEarly",
            "CNRYstraddle",
            "CNRYrespBigLate",
            CAP,
            20_000,
        )),
        _ => json(br#"{"ok":true}"#.to_vec()),
    }
}

/// The response body the client must receive for `path`, byte for byte.
async fn expected_body(path: &str) -> Bytes {
    response_for(path)
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes()
}

async fn canary_upstream() -> (std::net::SocketAddr, SeenLog) {
    let log = SeenLog::default();
    let seen = log.clone();
    let addr = upstream(move |req: Request<Incoming>| {
        let log = log.clone();
        async move {
            let path = req.uri().path().to_owned();
            let (parts, body) = req.into_parts();
            let body = body.collect().await.expect("request body").to_bytes();
            log.lock().expect("lock").push(Seen {
                version: parts.version,
                headers: parts.headers,
                body,
            });
            response_for(&path)
        }
    })
    .await;
    (addr, seen)
}

struct Sent {
    trace: String,
    path: String,
    body: Vec<u8>,
    headers: Vec<(&'static str, String)>,
}

fn request(path: &str, ctype: &str, body: Vec<u8>, headers: &[(&'static str, &str)]) -> Sent {
    let mut h: Vec<(&'static str, String)> = vec![("content-type", ctype.to_owned())];
    h.extend(headers.iter().map(|(k, v)| (*k, (*v).to_owned())));
    Sent {
        trace: new_trace_id(),
        path: path.to_owned(),
        body,
        headers: h,
    }
}

/// Every channel of the issue, as requests.
fn requests() -> Vec<Sent> {
    let json_body = json!({
        "user": {"name": "bob", "Password": "CNRYjsonPassword", "id": UUID},
        "items": [{"nested": [{"refresh_token": "CNRYdeepToken"}]}],
        "x-n8n-api-key": "CNRYapiKeyHeaderish",
        "client_secret": "CNRYclientSecret",
        "bodyAsString": json!({"password": "CNRYnestedJson", "ok": 1}).to_string(),
        "note": format!("call with Bearer CNRYbearerText and {JWT} then"),
        "card": CARD,
        "aws": AWS,
        "gh": GH,
        "pem": format!("-----BEGIN PRIVATE KEY-----\n{PEM_BODY}\n-----END PRIVATE KEY-----"),
        "dsn": "postgres://app:CNRYdsnPassword@db:5432/x",
        "ssn": "CNRYssn",
        "ref": "order ORDSECRET-4242 placed",
        "executionId": EXECUTION,
        "uuid": UUID,
        "notACard": NOT_A_CARD,
    });
    let multipart = "--XBOUNDARY\r\nContent-Disposition: form-data; name=\"user\"\r\n\r\nbob\r\n\
        --XBOUNDARY\r\nContent-Disposition: form-data; name=\"api_key\"\r\n\r\nCNRYmultipartKey\r\n\
        --XBOUNDARY\r\nContent-Disposition: form-data; name=\"config\"\r\nContent-Type: application/json\r\n\r\n{\"token\":\"CNRYmultipartJson\"}\r\n\
        --XBOUNDARY\r\nContent-Disposition: form-data; name=\"upload\"; filename=\"creds.txt\"\r\nContent-Type: text/plain\r\n\r\npassword=CNRYmultipartFile\r\n\
        --XBOUNDARY--\r\n";
    let mut big_text = format!("log line Bearer CNRYtextBearer {}", "z ".repeat(600));
    big_text.push_str("then a late password=CNRYbigLate");
    vec![
        request("/webhook/json", "application/json", json_body.to_string().into_bytes(), &[]),
        request(
            &format!("/webhook/flow/{JWT}?a=1&token=CNRYqueryToken&access_token=CNRYaccessToken&code=CNRYoauthCode&sig=CNRYsig&X-Amz-Signature=CNRYamzSignature&id={UUID}"),
            "application/json",
            b"{}".to_vec(),
            &[
                ("authorization", "Bearer CNRYauthHeader"),
                ("cookie", "sid=CNRYcookie"),
                ("x-n8n-api-key", "CNRYn8nApiKey"),
                ("x-api-key", "CNRYxApiKey"),
                ("x-user-id", "Bearer CNRYuserHeaderBearer"),
                ("x-action", "send token=CNRYaccessToken"),
            ],
        ),
        request(
            "/webhook/form",
            "application/x-www-form-urlencoded",
            b"user=bob&password=CNRYformPassword&client_secret=CNRYformSecret&code=CNRYoauthCode&id=48213".to_vec(),
            &[],
        ),
        request(
            "/webhook/multipart",
            "multipart/form-data; boundary=XBOUNDARY",
            multipart.as_bytes().to_vec(),
            &[],
        ),
        request(
            "/webhook/gzip",
            "application/json",
            gzip(br#"{"password":"CNRYgzipPassword","executionId":"48213"}"#),
            &[("content-encoding", "gzip")],
        ),
        request(
            "/webhook/deflate",
            "application/json",
            deflate(br#"{"token":"CNRYdeflateToken"}"#),
            &[("content-encoding", "deflate")],
        ),
        request(
            "/webhook/br",
            "application/json",
            brotli(br#"{"secret":"CNRYbrotliSecret"}"#),
            &[("content-encoding", "br")],
        ),
        request(
            "/webhook/big",
            "application/json",
            big_json("CNRYbigEarly", "CNRYstraddle", "CNRYbigLate", CAP, 50_000),
            &[],
        ),
        request("/webhook/bigtext", "text/plain", big_text.into_bytes(), &[]),
        request("/webhook/resp/json", "application/json", b"{}".to_vec(), &[]),
        request("/webhook/resp/gzip", "application/json", b"{}".to_vec(), &[]),
        request("/webhook/resp/br", "application/json", b"{}".to_vec(), &[]),
        request("/webhook/resp/big", "application/json", b"{}".to_vec(), &[]),
    ]
}

/// The whole test schema as `pg_dump` writes it (schema and data).
fn pg_dump(db: &TestDb) -> String {
    let exe = std::env::var("PG_DUMP").ok().or_else(|| {
        let on_path = Command::new("pg_dump").arg("--version").output().is_ok();
        if on_path {
            return Some("pg_dump".to_owned());
        }
        let mut found: Vec<_> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("bin/pg_dump"))
            .filter(|p| p.is_file())
            .collect();
        found.sort();
        found.pop().map(|p| p.display().to_string())
    });
    let exe = exe.expect("pg_dump on PATH or under /usr/lib/postgresql/*/bin");
    let out = Command::new(&exe)
        .arg(format!("--schema={}", db.schema))
        .arg("--no-owner")
        .arg(format!("--dbname={}", admin_url()))
        .output()
        .expect("run pg_dump");
    assert!(
        out.status.success(),
        "pg_dump failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 dump")
}

#[tokio::test]
async fn no_canary_reaches_the_database_and_both_sides_see_the_originals() {
    let db = TestDb::new().await;
    let (up, seen) = canary_upstream().await;
    let extra = r#"
[sanitize]
add_keys = ["ssn"]
[[sanitize.add_patterns]]
name = "order_secret"
regex = "ORDSECRET-[0-9]+"
"#;
    let proxy = Proxy::start(&config(&db, up, extra)).await;
    let sent = requests();
    for s in &sent {
        let mut req = Request::post(proxy.url(&s.path)).header("x-trace-id", &s.trace);
        for (k, v) in &s.headers {
            req = req.header(*k, v.as_str());
        }
        let req = req
            .body(Full::new(Bytes::from(s.body.clone())))
            .expect("request");
        let (parts, body) = send(req).await;
        assert_eq!(parts.status, 200, "{}", s.path);
        // The client sees the upstream's bytes, untouched.
        assert_eq!(
            body,
            expected_body(&s.path).await,
            "{}: response altered",
            s.path
        );
        // The upstream sees the client's bytes and headers, untouched.
        let got = seen_with_trace(&seen, &s.trace);
        assert!(got.body == s.body, "{}: request body altered", s.path);
        for (k, v) in &s.headers {
            assert_eq!(
                got.headers[*k],
                v.as_str(),
                "{}: header {k} altered",
                s.path
            );
        }
    }
    // URL userinfo in an absolute-form request target.
    let ui_trace = new_trace_id();
    let resp = raw_http(
        proxy.addr,
        &format!(
            "GET http://bob:CNRYuserinfo@{addr}/webhook/userinfo?x=1 HTTP/1.1\r\nHost: {addr}\r\n\
             Proxy-Authorization: Basic CNRYproxyAuth\r\nX-Trace-Id: {ui_trace}\r\nConnection: close\r\n\r\n",
            addr = proxy.addr
        ),
    )
    .await;
    assert_eq!(resp.status, 200);

    let mut rows = Vec::new();
    for s in &sent {
        rows.push((s.path.clone(), db.final_rows(&s.trace, 1).await.remove(0)));
    }
    db.final_rows(&ui_trace, 1).await;
    let dump = pg_dump(&db);
    assert!(
        dump.contains("communication_traces") && dump.contains("COPY"),
        "not a full dump"
    );
    let found: Vec<&str> = canaries()
        .into_iter()
        .filter(|c| dump.contains(c))
        .collect();
    assert!(found.is_empty(), "canaries in pg_dump: {found:?}");
    // A sanity check that the scan can fail: the same canaries do appear in what was sent.
    let sent_text: String = sent
        .iter()
        .map(|s| {
            format!(
                "{} {:?} {}",
                s.path,
                s.headers,
                String::from_utf8_lossy(&s.body)
            )
        })
        .collect();
    assert!(sent_text.contains("CNRYjsonPassword") && sent_text.contains(JWT_SIG));
    for control in [UUID, NOT_A_CARD, "\"48213\""] {
        assert!(dump.contains(control), "negative control {control} lost");
    }

    let row = |path: &str| {
        &rows
            .iter()
            .find(|(p, _)| p.starts_with(path))
            .unwrap_or_else(|| panic!("row for {path}"))
            .1
    };
    // Keys stay; values go; what fired is recorded, by rule and path.
    let json_row = row("/webhook/json");
    let payload: Value = json_row
        .get::<_, Option<Value>>("request_payload")
        .expect("payload");
    assert_eq!(payload["user"]["Password"], "[REDACTED]");
    assert_eq!(payload["user"]["name"], "bob");
    assert_eq!(payload["notACard"], NOT_A_CARD);
    let nested: Value =
        serde_json::from_str(payload["bodyAsString"].as_str().expect("still a string"))
            .expect("still JSON");
    assert_eq!(nested, json!({"password": "[REDACTED]", "ok": 1}));
    let record: Value = json_row
        .get::<_, Option<Value>>("redactions")
        .expect("record");
    let entries = record["request_payload"].as_array().expect("list");
    let has = |rule: &str, path: &str| {
        entries
            .iter()
            .any(|e| e["rule"] == rule && e["path"] == path)
    };
    assert!(has("key:*password*", "$.user.Password"), "{record}");
    assert!(
        has("key:*token*", "$.items[*].nested[*].refresh_token"),
        "{record}"
    );
    assert!(
        has("key:*password*", "$.bodyAsString(json).password"),
        "{record}"
    );
    assert!(
        has("jwt", "$.note") && has("card_number", "$.card"),
        "{record}"
    );
    assert!(
        has("order_secret", "$.ref") && has("key:ssn", "$.ssn"),
        "{record}"
    );

    let target_row = row("/webhook/flow/");
    let target: &str = target_row.get("http_target");
    assert!(
        target.starts_with("/webhook/flow/[REDACTED]?a=1&token=%5BREDACTED%5D"),
        "{target}"
    );
    assert!(target.ends_with(&format!("&id={UUID}")), "{target}");
    assert_eq!(target_row.get::<_, &str>("workflow_id"), "flow/[REDACTED]");
    assert_eq!(target_row.get::<_, &str>("user_id"), "Bearer [REDACTED]");
    let record: Value = target_row
        .get::<_, Option<Value>>("redactions")
        .expect("record");
    assert!(
        record["http_target"].is_array() && record["user_id"].is_array(),
        "{record}"
    );
    // Nothing secret in a row: no record at all.
    let clean = row("/webhook/resp/gzip");
    assert_eq!(
        clean
            .get::<_, Option<Value>>("redactions")
            .map(|r| r.get("request_payload").cloned()),
        Some(None)
    );

    // Compressed bodies were decoded, then redacted.
    let gz: Value = row("/webhook/gzip")
        .get::<_, Option<Value>>("request_payload")
        .expect("payload");
    assert_eq!(
        gz,
        json!({"password": "[REDACTED]", "executionId": EXECUTION})
    );

    // Cut bodies: structure kept, within the cap, with the indicator; the metric counted them.
    for path in ["/webhook/big", "/webhook/bigtext"] {
        let p: Value = row(path)
            .get::<_, Option<Value>>("request_payload")
            .expect("payload");
        let t = &p["_truncated"];
        assert_eq!(t["cut"], true, "{path}: {p}");
        assert!(t["original_bytes"].as_u64().expect("size") > CAP as u64);
        assert!(
            p.to_string().len() <= CAP + 320,
            "{path}: {}",
            p.to_string().len()
        );
    }
    let big: Value = row("/webhook/big")
        .get::<_, Option<Value>>("request_payload")
        .expect("payload");
    assert_eq!(big["token"], "[REDACTED]");
    assert_eq!(big["items"], json!([1, 2, 3]));
    let resp_big: Value = row("/webhook/resp/big")
        .get::<_, Option<Value>>("response_payload")
        .expect("payload");
    assert_eq!(
        resp_big["_truncated"]["original_bytes"],
        expected_body("/webhook/resp/big").await.len()
    );
    assert!(proxy.metrics.snapshot().truncated_payloads >= 3);
    let resp: Value = row("/webhook/resp/json")
        .get::<_, Option<Value>>("response_payload")
        .expect("payload");
    assert_eq!(resp["message"], "Bearer [REDACTED] issued");
    assert_eq!(
        row("/webhook/resp/json").get::<_, Option<&str>>("n8n_execution_id"),
        Some(EXECUTION)
    );
    proxy.stop().await;
}

#[tokio::test]
async fn a_secret_sent_as_trace_id_or_resume_id_is_stored_only_as_a_keyed_hash() {
    let db = TestDb::new().await;
    let (up, seen) = recording_upstream(|| Response::new(full("ok"))).await;
    let proxy = Proxy::start(&config(&db, up, "")).await;
    for _ in 0..2 {
        let req = Request::post(proxy.url("/webhook/x"))
            .header("x-trace-id", JWT)
            .body(Full::new(Bytes::from_static(b"{}")))
            .expect("request");
        let (parts, _) = send(req).await;
        // Transparent: the client's own id goes upstream and comes back unchanged.
        assert_eq!(parts.headers["x-trace-id"], JWT);
    }
    assert_eq!(seen_with_trace(&seen, JWT).headers["x-trace-id"], JWT);
    let resume = format!("/webhook-waiting/{JWT}");
    let (parts, _) = send(get(&proxy.url(&resume), &new_trace_id())).await;
    assert_eq!(parts.status, 200);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    proxy.stop().await;

    // Correlation still works: both attempts share one stored id, numbered 1 and 2.
    let rows = db
        .rows("SELECT trace_id, attempt_number FROM communication_traces WHERE trace_id LIKE 'redacted:%' ORDER BY attempt_number")
        .await;
    assert_eq!(rows.len(), 2);
    let stored: &str = rows[0].get(0);
    assert_eq!(stored.len(), "redacted:".len() + 32, "{stored}");
    assert_eq!(rows[1].get::<_, &str>(0), stored);
    assert_eq!((rows[0].get::<_, i32>(1), rows[1].get::<_, i32>(1)), (1, 2));
    let dump = pg_dump(&db);
    assert!(
        !dump.contains("eyJhbGciOiJIUzI1NiJ9"),
        "a JWT reached the database"
    );
}
