//! Health and metrics on the admin listener: `/healthz`, `/readyz` and
//! `/metrics` serve without a token; `/metrics` is strict Prometheus text and counts requests by
//! route and status class.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;

use crate::support::*;

/// The proxy plus its admin listener, on 127.0.0.1:0, with no admin token.
struct Running {
    proxy: SocketAddr,
    admin: SocketAddr,
    running: Proxy,
}

impl Running {
    async fn start(toml: &str) -> Running {
        let running = Proxy::start_with_admin(toml).await;
        Running {
            proxy: running.addr,
            admin: running.admin.expect("admin listener"),
            running,
        }
    }

    /// GET on the admin listener without any token: status, content type, body.
    async fn admin_get(&self, path: &str) -> (u16, String, String) {
        let req = Request::get(format!("http://{}{path}", self.admin))
            .body(Full::new(Bytes::new()))
            .expect("request");
        let (parts, body) = send(req).await;
        let ct = parts
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body = String::from_utf8(body.to_vec()).expect("UTF-8 body");
        (parts.status.as_u16(), ct, body)
    }

    async fn stop(self) {
        self.running.stop().await;
    }
}

fn ok_upstream() -> Response<Body> {
    Response::new(full("{\"ok\":true}"))
}

#[tokio::test]
async fn healthz_and_readyz_answer_without_a_token_when_the_database_is_up() {
    let db = TestDb::new().await;
    let r = Running::start(&config(&db, closed_port().await, "")).await;
    let (status, ct, body) = r.admin_get("/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    assert!(ct.starts_with("text/plain"), "{ct}");
    let (status, _, body) = r.admin_get("/readyz").await;
    assert_eq!(status, 200, "{body}");
    // The query API stays closed without a token, and says why.
    let (status, _, body) = r.admin_get("/api/openapi.json").await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("disabled until admin.token"), "{body}");
    r.stop().await;
}

/// `/readyz` of a proxy recording into an unreachable database with `db_extra` in
/// `[database]` and `extra` after it.
async fn readyz_without_database(db_extra: &str, extra: &str) -> (u16, String) {
    let dead = closed_port().await;
    let toml = config_toml(
        &format!("postgres://postgres@{dead}/postgres"),
        &format!("http://{}", closed_port().await),
        db_extra,
        extra,
    );
    let r = Running::start(&toml).await;
    // Alive, whether or not it can record.
    let (status, _, _) = r.admin_get("/healthz").await;
    assert_eq!(status, 200);
    let started = std::time::Instant::now();
    let (status, _, body) = r.admin_get("/readyz").await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "readyz took too long"
    );
    r.stop().await;
    (status, body)
}

#[tokio::test]
async fn readyz_is_503_with_the_reason_when_the_database_is_unreachable() {
    let (status, body) = readyz_without_database("on_unavailable = \"reject\"", "").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.starts_with("not ready: database"), "{body}");
}

#[tokio::test]
async fn readyz_is_ready_without_the_database_while_the_spool_has_room_and_503_when_full() {
    let (status, body) = readyz_without_database("", "").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.starts_with("ready: recording to the spool journal (database"),
        "{body}"
    );

    // A journal filled to within a record of `max_bytes`, left by an earlier process.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut frames = Vec::new();
    let payload = vec![b'x'; 1000];
    while frames.len() < 1024 * 1024 - 2048 {
        trace_proxy::spool::journal::encode(&payload, &mut frames);
    }
    std::fs::write(
        trace_proxy::spool::journal::segment_path(dir.path(), 1),
        &frames,
    )
    .expect("write segment");
    let extra = format!(
        "[spool]\ndir = \"{}\"\nmax_bytes = {}\n",
        dir.path().display(),
        1024 * 1024
    );
    let (status, body) = readyz_without_database("", &extra).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("spool journal full"), "{body}");
}

#[tokio::test]
async fn metrics_are_strict_prometheus_text_and_count_requests_by_route_and_class() {
    let db = TestDb::new().await;
    let (up, _log) = recording_upstream(ok_upstream).await;
    let down = closed_port().await;
    let extra = format!(
        "[[routes]]\nname = \"down\"\npath_prefix = \"/down\"\nupstream = \"http://{down}\"\nsource_service = \"bilko-app\"\ndestination_service = \"n8n\"\n"
    );
    let r = Running::start(&config(&db, up, &extra)).await;
    wait_for_migrations(&db).await;

    let (status, ct, text) = r.admin_get("/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(ct, "text/plain; version=0.0.4; charset=utf-8");
    let before = parse_exposition(&text);
    let ok_key = r#"trace_proxy_route_requests_total{class="2xx",route="n8n"}"#;
    let err_key = r#"trace_proxy_route_requests_total{class="error",route="down"}"#;
    assert_eq!(before.samples.get(ok_key), Some(&0.0), "{text}");
    assert_eq!(before.samples.get(err_key), Some(&0.0), "{text}");

    for _ in 0..3 {
        let (parts, _) = send(post(
            &format!("http://{}/webhook/x", r.proxy),
            &new_trace_id(),
            "{}",
        ))
        .await;
        assert_eq!(parts.status, 200);
    }
    let (parts, _) = send(get(&format!("http://{}/down/x", r.proxy), &new_trace_id())).await;
    assert_eq!(parts.status, 502);

    // Attempts finish (and their durations are observed) when the body ends: poll.
    let mut after = parse_exposition("");
    let mut text = String::new();
    for _ in 0..200 {
        text = r.admin_get("/metrics").await.2;
        after = parse_exposition(&text);
        let n = |k: &str| after.samples.get(k).copied().unwrap_or(0.0);
        if n("trace_proxy_attempt_duration_seconds_count") >= 4.0
            && n("trace_proxy_rows_finished_total") >= 4.0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let n = |k: &str| after.samples.get(k).copied().unwrap_or(-1.0);
    assert_eq!(n(ok_key), 3.0, "{text}");
    assert_eq!(n(err_key), 1.0, "{text}");
    assert_eq!(n("trace_proxy_requests_total"), 4.0, "{text}");
    assert_eq!(n("trace_proxy_rows_started_total"), 4.0, "{text}");
    assert!(
        n("trace_proxy_attempt_duration_seconds_count") >= 4.0,
        "{text}"
    );
    assert!(n("trace_proxy_d1_insert_seconds_count") >= 4.0, "{text}");
    assert!(n("trace_proxy_d1_insert_seconds_sum") > 0.0, "{text}");
    assert!(n("trace_proxy_writer_batch_ops_count") >= 1.0, "{text}");
    for family in [
        "trace_proxy_attempt_duration_seconds",
        "trace_proxy_d1_insert_seconds",
        "trace_proxy_writer_batch_ops",
    ] {
        assert_eq!(
            after.types.get(family).map(String::as_str),
            Some("histogram")
        );
    }
    // The spool, idle while PostgreSQL is up: empty, nothing written or replayed.
    for (family, kind) in [
        ("trace_proxy_spool_records", "gauge"),
        ("trace_proxy_spool_bytes", "gauge"),
        ("trace_proxy_spooled_total", "counter"),
        ("trace_proxy_replayed_total", "counter"),
        ("trace_proxy_unrecorded_total", "counter"),
    ] {
        assert_eq!(
            after.types.get(family).map(String::as_str),
            Some(kind),
            "{family}"
        );
        assert_eq!(n(family), 0.0, "{family}: {text}");
    }
    // No per-request values leak into labels.
    assert!(!text.contains("/webhook"), "{text}");
    r.stop().await;
}

#[test]
fn the_test_parser_rejects_malformed_exposition() {
    let good = "# HELP a_total x\n# TYPE a_total counter\na_total 1\n";
    parse_exposition(good);
    for bad in [
        "a_total 1\n",                                          // no TYPE
        "# HELP a_total x\n# TYPE a_total counter\na_total\n",  // no value
        "# HELP a_total x\n# TYPE a_total counter\na_total{x=\"1} 1\n", // open quote
        "# HELP h x\n# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
        "# HELP h x\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n",
        "# HELP h x\n# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 1\n",
    ] {
        let r = std::panic::catch_unwind(|| parse_exposition(bad));
        assert!(r.is_err(), "accepted: {bad:?}");
    }
}

/// A parsed exposition: samples by `name{sorted labels}` (no braces without labels), and the
/// declared type of each family.
struct Exposition {
    samples: HashMap<String, f64>,
    types: HashMap<String, String>,
}

/// A strict parser of the Prometheus text format 0.0.4; panics on anything malformed: every
/// family has HELP and TYPE before its samples, counters end in `_total`, histogram buckets are
/// cumulative and end with `+Inf` equal to `_count`.
fn parse_exposition(text: &str) -> Exposition {
    let mut samples = HashMap::new();
    let mut types: HashMap<String, String> = HashMap::new();
    let mut helps = std::collections::HashSet::new();
    // histogram family → label set without `le` → (le, value) in order
    let mut buckets: HashMap<String, BTreeMap<String, Vec<(f64, f64)>>> = HashMap::new();
    assert!(text.is_empty() || text.ends_with('\n'), "no final newline");
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, _) = rest.split_once(' ').unwrap_or((rest, ""));
            assert!(valid_name(name), "bad HELP name: {line}");
            assert!(helps.insert(name.to_owned()), "HELP twice: {line}");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or_else(|| panic!("{line}"));
            assert!(valid_name(name), "bad TYPE name: {line}");
            assert!(
                matches!(
                    kind,
                    "counter" | "gauge" | "histogram" | "summary" | "untyped"
                ),
                "bad type: {line}"
            );
            assert!(helps.contains(name), "TYPE before HELP: {line}");
            assert!(
                types.insert(name.to_owned(), kind.to_owned()).is_none(),
                "TYPE twice: {line}"
            );
            if kind == "counter" {
                assert!(name.ends_with("_total"), "counter without _total: {line}");
            }
            continue;
        }
        assert!(!line.starts_with('#'), "unexpected comment: {line}");
        assert!(!line.is_empty(), "empty line");
        let (name, labels, rest) = split_sample(line);
        let value = parse_value(rest.trim_start_matches(' '), line);
        assert!(rest.starts_with(' '), "no space before value: {line}");
        let family = family_of(&name, &types).unwrap_or_else(|| panic!("no TYPE for {line}"));
        let mut sorted: BTreeMap<String, String> = labels.into_iter().collect();
        if types[&family] == "histogram" && name.ends_with("_bucket") {
            let le_raw = sorted
                .remove("le")
                .unwrap_or_else(|| panic!("bucket without le: {line}"));
            let le = parse_value(&le_raw, line);
            buckets
                .entry(family.clone())
                .or_default()
                .entry(label_key(&sorted))
                .or_default()
                .push((le, value));
            sorted.insert("le".into(), le_raw);
        }
        let key = format!("{name}{}", label_key(&sorted));
        assert!(
            samples.insert(key, value).is_none(),
            "duplicate sample: {line}"
        );
    }
    for (family, kind) in &types {
        if kind != "histogram" {
            continue;
        }
        let sets = buckets
            .get(family)
            .unwrap_or_else(|| panic!("{family}: no buckets"));
        for (labels, series) in sets {
            let mut last_le = f64::NEG_INFINITY;
            let mut last_v = 0.0;
            for &(le, v) in series {
                assert!(le > last_le, "{family}{labels}: le not ascending");
                assert!(v >= last_v, "{family}{labels}: buckets not cumulative");
                (last_le, last_v) = (le, v);
            }
            assert_eq!(
                last_le,
                f64::INFINITY,
                "{family}{labels}: last bucket is not +Inf"
            );
            let count = samples.get(&format!("{family}_count{labels}"));
            assert_eq!(count, Some(&last_v), "{family}{labels}: +Inf != _count");
            assert!(
                samples.contains_key(&format!("{family}_sum{labels}")),
                "{family}{labels}: no _sum"
            );
        }
    }
    Exposition { samples, types }
}

fn valid_name(n: &str) -> bool {
    let mut b = n.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_' || c == b':')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b':')
}

/// `name{k="v",...} rest` → (name, labels, rest starting at the space before the value).
fn split_sample(line: &str) -> (String, Vec<(String, String)>, &str) {
    let end = line
        .find(['{', ' '])
        .unwrap_or_else(|| panic!("no value: {line}"));
    let name = &line[..end];
    assert!(valid_name(name), "bad metric name: {line}");
    let mut labels = Vec::new();
    let mut rest = &line[end..];
    if let Some(mut inner) = rest.strip_prefix('{') {
        loop {
            if let Some(after) = inner.strip_prefix('}') {
                rest = after;
                break;
            }
            let (k, after) = inner
                .split_once("=\"")
                .unwrap_or_else(|| panic!("bad label: {line}"));
            assert!(
                valid_name(k) && !k.starts_with("__"),
                "bad label name: {line}"
            );
            let mut v = String::new();
            let mut chars = after.char_indices();
            let close = loop {
                match chars.next() {
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => v.push('\n'),
                        Some((_, c @ ('\\' | '"'))) => v.push(c),
                        _ => panic!("bad escape: {line}"),
                    },
                    Some((i, '"')) => break i,
                    Some((_, c)) => v.push(c),
                    None => panic!("unterminated label value: {line}"),
                }
            };
            labels.push((k.to_owned(), v));
            inner = &after[close + 1..];
            if let Some(more) = inner.strip_prefix(',') {
                inner = more;
            } else {
                assert!(inner.starts_with('}'), "bad label list: {line}");
            }
        }
    }
    (name.to_owned(), labels, rest)
}

fn parse_value(v: &str, line: &str) -> f64 {
    match v {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        _ => v
            .parse()
            .unwrap_or_else(|_| panic!("bad value {v:?}: {line}")),
    }
}

/// The declared family of a sample name (histogram samples carry a suffix).
fn family_of(name: &str, types: &HashMap<String, String>) -> Option<String> {
    if types.contains_key(name) {
        return Some(name.to_owned());
    }
    ["_bucket", "_sum", "_count"].iter().find_map(|s| {
        let f = name.strip_suffix(s)?;
        (types.get(f).map(String::as_str) == Some("histogram")).then(|| f.to_owned())
    })
}

fn label_key(labels: &BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return String::new();
    }
    let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    format!("{{{}}}", inner.join(","))
}
