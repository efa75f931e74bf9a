//! The HTTP/1.1 desync corpus that ships in the `http_desync_guardian` crate (its `tests/*.yaml`),
//! sent raw through the proxy. The same crate then judges what reached the upstream: whatever
//! the proxy forwards must be unambiguous (`Compliant` or `Acceptable`), whatever the client
//! sent. A request the proxy cannot make unambiguous must be refused, not passed on.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_desync_guardian::request_analyzer::HttpRequestData;
use http_desync_guardian::RequestSafetyTier;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use yaml_rust2::{Yaml, YamlLoader};

use crate::support::{config, Proxy, TestDb};

/// The header that ties a head seen upstream to the corpus case that produced it.
const CASE_HEADER: &str = "x-guardian-case";

struct Case {
    file: String,
    name: String,
    expected: String,
    raw: Vec<u8>,
}

/// The crate's source directory, as cargo resolved it for this lock file (for this host only:
/// other platforms' packages need not be downloaded).
fn corpus_dir() -> PathBuf {
    let rustc = std::process::Command::new("rustc")
        .arg("-vV")
        .output()
        .expect("rustc -vV");
    let host = String::from_utf8_lossy(&rustc.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
        .expect("host triple");
    let out = std::process::Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--locked", "--offline"])
        .args(["--filter-platform", &host])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata JSON");
    let manifest = meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .find(|p| p["name"] == "http_desync_guardian")
        .and_then(|p| p["manifest_path"].as_str())
        .expect("http_desync_guardian in the dependency graph");
    PathBuf::from(manifest)
        .parent()
        .expect("crate dir")
        .join("tests")
}

/// The corpus's own escape scheme (`\xNN`, `\r`, `\n`, ...), applied after YAML's, to bytes.
fn unescape(s: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            let mut buf = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            continue;
        }
        match chars.next() {
            Some('x') => {
                let hex: String = chars.by_ref().take(2).collect();
                out.push(u8::from_str_radix(&hex, 16).expect("\\x escape"));
            }
            Some('b') => out.push(0x08),
            Some('f') => out.push(0x0c),
            Some('n') => out.push(b'\n'),
            Some('r') => out.push(b'\r'),
            Some('t') => out.push(b'\t'),
            Some(other) => out.push(u8::try_from(other).expect("ASCII escape")),
            None => panic!("trailing backslash in {s:?}"),
        }
    }
    out
}

fn field(y: &Yaml, key: &str) -> Vec<u8> {
    match &y[key] {
        Yaml::String(s) => unescape(s),
        Yaml::Integer(n) => n.to_string().into_bytes(),
        Yaml::Real(r) => r.clone().into_bytes(),
        Yaml::Boolean(b) => b.to_string().into_bytes(),
        Yaml::Null | Yaml::BadValue => Vec::new(),
        other => panic!("field {key}: {other:?}"),
    }
}

/// One raw request: the case's request line and headers after a marker header,
/// `connection: close` and a `host` (none of which changes how the request is framed), then a
/// body of `0\r\n\r\n`.
fn raw_request(index: usize, y: &Yaml) -> Vec<u8> {
    let mut raw = field(y, "method");
    raw.push(b' ');
    raw.extend(field(y, "uri"));
    let version = field(y, "version");
    if !version.is_empty() {
        raw.push(b' ');
        raw.extend(version);
    }
    raw.extend(format!("\r\n{CASE_HEADER}: {index}\r\nconnection: close\r\n").as_bytes());
    let headers = y["headers"].as_vec().map(Vec::as_slice).unwrap_or_default();
    // HTTP/1.1 requires a Host (RFC 9112 §3.2); the corpus, written for an analyser, has none.
    if !headers
        .iter()
        .any(|h| field(h, "name").eq_ignore_ascii_case(b"host"))
    {
        raw.extend(b"host: example.test\r\n");
    }
    for h in headers {
        raw.extend(field(h, "name"));
        raw.extend(b": ");
        raw.extend(field(h, "value"));
        raw.extend(b"\r\n");
    }
    raw.extend(b"\r\n0\r\n\r\n");
    raw
}

fn load_corpus() -> Vec<Case> {
    let dir = corpus_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    let mut cases = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).expect("read corpus file");
        let docs = YamlLoader::load_from_str(&text).expect("corpus YAML");
        let file = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        for y in docs
            .iter()
            .flat_map(|d| d.as_vec().cloned().unwrap_or_default())
        {
            let index = cases.len();
            cases.push(Case {
                file: file.clone(),
                name: y["name"].as_str().unwrap_or("?").to_owned(),
                expected: y["expected"]["tier"].as_str().unwrap_or("?").to_owned(),
                raw: raw_request(index, &y),
            });
        }
    }
    cases
}

type Heads = Arc<Mutex<Vec<Vec<u8>>>>;

/// A raw upstream: keeps each request head exactly as it arrived, answers `200 ok`, closes.
async fn head_recording_upstream() -> (SocketAddr, Heads) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().expect("addr");
    let heads: Heads = Arc::default();
    let kept = heads.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let kept = kept.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let read_head = async {
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 65_536 {
                        match conn.read(&mut chunk).await {
                            Ok(0) | Err(_) => return false,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    true
                };
                if !matches!(
                    tokio::time::timeout(Duration::from_secs(5), read_head).await,
                    Ok(true)
                ) {
                    return;
                }
                let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(0) + 4;
                kept.lock().expect("lock").push(buf[..end].to_vec());
                let _ = conn
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .await;
                let _ = conn.shutdown().await;
            });
        }
    });
    (addr, heads)
}

/// Sends one case and reads until the proxy closes (a reset counts as a close); an error when
/// the proxy neither answers nor closes.
async fn send_case(proxy: SocketAddr, raw: Vec<u8>) -> Result<(), String> {
    let mut conn = tokio::net::TcpStream::connect(proxy)
        .await
        .map_err(|e| e.to_string())?;
    conn.write_all(&raw).await.map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut answer))
        .await
        .map(drop)
        .map_err(|_| "no answer and no close within 10 s".to_owned())
}

fn case_of(head: &[u8]) -> Option<usize> {
    let text = String::from_utf8_lossy(head);
    text.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        (name.eq_ignore_ascii_case(CASE_HEADER))
            .then(|| value.trim().parse().ok())
            .flatten()
    })
}

#[tokio::test]
async fn the_desync_guardian_corpus_reaches_the_upstream_only_unambiguous() {
    let cases = load_corpus();
    assert!(cases.len() >= 150, "corpus too small: {}", cases.len());
    let db = TestDb::new().await;
    let (up, heads) = head_recording_upstream().await;
    let proxy = Proxy::start(&config(
        &db,
        up,
        "[server]\nheader_read_timeout = \"2s\"\nrequest_body_timeout = \"2s\"\n",
    ))
    .await;

    let limit = Arc::new(tokio::sync::Semaphore::new(16));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, case) in cases.iter().enumerate() {
        let (limit, raw, addr) = (limit.clone(), case.raw.clone(), proxy.addr);
        tasks.spawn(async move {
            let _permit = limit.acquire_owned().await.expect("semaphore");
            (i, send_case(addr, raw).await)
        });
    }
    let mut answers = BTreeMap::new();
    while let Some(done) = tasks.join_next().await {
        let (i, answer) = done.expect("case task");
        answers.insert(i, answer);
    }
    // A head forwarded just before its client's connection ended is still on its way.
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.stop().await;

    let mut problems = Vec::new();
    let mut forwarded = BTreeMap::new();
    for head in heads.lock().expect("lock").iter() {
        let verdict = HttpRequestData::analyze_raw_request(head);
        let Some(i) = case_of(head) else {
            problems.push(format!(
                "a head without its case marker reached the upstream: {:?}",
                String::from_utf8_lossy(head)
            ));
            continue;
        };
        if *forwarded.entry(i).or_insert(0) > 0 {
            problems.push(format!("case {i} reached the upstream twice"));
        }
        *forwarded.entry(i).or_insert(0) += 1;
        if verdict.tier > RequestSafetyTier::Acceptable {
            let case = &cases[i];
            problems.push(format!(
                "{}: {:?} (corpus: {}) was forwarded {:?} ({:?}: {}):\n{}",
                case.file,
                case.name,
                case.expected,
                verdict.tier,
                verdict.reason,
                verdict.message.unwrap_or_default(),
                String::from_utf8_lossy(head)
            ));
        }
    }
    for (i, answer) in &answers {
        if let Err(e) = answer {
            problems.push(format!("{}: {:?}: {e}", cases[*i].file, cases[*i].name));
        }
    }
    let severe = cases.iter().filter(|c| c.expected == "Severe").count();
    let severe_forwarded = forwarded
        .keys()
        .filter(|i| cases[**i].expected == "Severe")
        .count();
    eprintln!(
        "guardian corpus: {} cases ({severe} severe); {} forwarded ({severe_forwarded} of the severe, each normalised); {} refused or closed",
        cases.len(),
        forwarded.len(),
        cases.len() - forwarded.len()
    );
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
    // A proxy (or a harness) that refused everything would pass the checks above: most of the
    // corpus's compliant and acceptable requests must reach the upstream (41 do).
    assert!(
        forwarded.len() >= 30,
        "only {} of {} cases reached the upstream",
        forwarded.len(),
        cases.len()
    );

    // Every forwarded request has its final row: nothing is left pending or in progress.
    let open = db
        .rows("SELECT count(*) FROM communication_traces WHERE overall_status IN ('pending', 'in_progress')")
        .await;
    assert_eq!(open[0].get::<_, i64>(0), 0, "rows left open");
    let rows = db.rows("SELECT count(*) FROM communication_traces").await;
    assert!(
        rows[0].get::<_, i64>(0) >= i64::try_from(forwarded.len()).expect("count"),
        "fewer rows than forwarded requests"
    );
}
