//! Outages of PostgreSQL: the database stopped abruptly under load, frozen, or gone
//! with the journal full or torn. Every client gets its normal answer; afterwards every request
//! has exactly one final row. The database is a private cluster (`cluster.rs`), so stopping it
//! touches no other test.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::Response;

use crate::cluster::TestCluster;
use crate::support::*;

/// Short database deadlines, so an outage is detected within about a second.
const FAST_FAILURE: &str = "insert_timeout_ms = 1000
connect_timeout_ms = 500
pool_wait_timeout_ms = 500
statement_timeout_ms = 1000";

fn echo_upstream() -> impl Fn(
    http::Request<hyper::body::Incoming>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Response<Body>> + Send>>
       + Clone
       + Send
       + Sync
       + 'static {
    |req| {
        Box::pin(async move {
            let trace = req
                .headers()
                .get("x-trace-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            Response::new(full(format!("{{\"ok\":true,\"trace\":\"{trace}\"}}")))
        })
    }
}

async fn wait_for_schema(url: &str) -> tokio_postgres::Client {
    let client = connect(url).await;
    for _ in 0..400 {
        let rows = client
            .query(
                "SELECT to_regclass('communication_traces') IS NOT NULL",
                &[],
            )
            .await
            .expect("query");
        if rows[0].get::<_, bool>(0) {
            return client;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("communication_traces was not created within 10 s");
}

/// What the rows of `traces` look like: (rows, distinct ids, distinct traces, final rows,
/// successful rows).
async fn tally(client: &tokio_postgres::Client, traces: &[String]) -> (i64, i64, i64, i64, i64) {
    let row = client
        .query_one(
            "SELECT count(*), count(DISTINCT id), count(DISTINCT trace_id),
                    count(*) FILTER (WHERE overall_status IN ('success', 'failed')),
                    count(*) FILTER (WHERE overall_status = 'success')
             FROM communication_traces WHERE trace_id = ANY($1)",
            &[&traces],
        )
        .await
        .expect("tally");
    (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4))
}

/// Waits until every trace has its one final, successful row and the journal is empty; returns
/// how long that took.
async fn wait_until_recorded(
    url: &str,
    traces: &[String],
    proxy: &Proxy,
    limit: Duration,
) -> Duration {
    let started = Instant::now();
    let n = traces.len() as i64;
    let mut last = (0, 0, 0, 0, 0);
    while started.elapsed() < limit {
        // The database may still be starting: reconnect each round.
        if let Ok((client, conn)) = tokio_postgres::connect(url, tokio_postgres::NoTls).await {
            tokio::spawn(conn);
            last = tally(&client, traces).await;
            let spooled = proxy.metrics.spool_records.get();
            if last == (n, n, n, n, n) && spooled == 0 {
                return started.elapsed();
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "{n} requests: (rows, ids, traces, final, success) = {last:?} after {limit:?}; journal holds {}",
        proxy.metrics.spool_records.get()
    );
}

/// Steady load: `clients` loops sending requests with fresh trace ids until `stop`; every
/// answer must be the upstream's. Returns the trace ids sent and the slowest answer.
fn load(
    proxy_url: String,
    clients: usize,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<(Vec<String>, Duration)> {
    tokio::spawn(async move {
        let sent = Arc::new(Mutex::new(Vec::new()));
        let slowest = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let (url, stop, sent, slowest) = (
                proxy_url.clone(),
                stop.clone(),
                sent.clone(),
                slowest.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let client = client();
                while !stop.load(Ordering::Relaxed) {
                    let trace = new_trace_id();
                    let began = Instant::now();
                    let resp = client
                        .request(post(&url, &trace, "{\"workflow\":\"w\"}"))
                        .await
                        .unwrap_or_else(|e| panic!("{trace}: {e}"));
                    let status = resp.status();
                    let body = http_body_util::BodyExt::collect(resp.into_body())
                        .await
                        .expect("body")
                        .to_bytes();
                    let took = began.elapsed();
                    slowest.fetch_max(took.as_micros() as u64, Ordering::Relaxed);
                    assert_eq!(status, 200, "{trace}: {body:?}");
                    assert_eq!(
                        body,
                        format!("{{\"ok\":true,\"trace\":\"{trace}\"}}").as_bytes(),
                        "{trace}"
                    );
                    sent.lock().expect("lock").push(trace);
                }
            }));
        }
        for t in tasks {
            t.await.expect("client task");
        }
        let sent = std::mem::take(&mut *sent.lock().expect("lock"));
        (sent, Duration::from_micros(slowest.load(Ordering::Relaxed)))
    })
}

/// A proxy recording into `cluster`, to an echoing upstream, once its schema is there.
async fn proxy_on(cluster: &TestCluster) -> Proxy {
    let up = upstream(echo_upstream()).await;
    let proxy = Proxy::start(&config_toml(
        &cluster.url(),
        &format!("http://{up}"),
        FAST_FAILURE,
        "",
    ))
    .await;
    drop(wait_for_schema(&cluster.url()).await);
    proxy
}

/// A proxy whose database URL points where nothing listens, spooling into `dir` (with
/// `spool_extra` in `[spool]`), to the upstream `up`.
async fn proxy_without_database(
    up: std::net::SocketAddr,
    dir: &std::path::Path,
    spool_extra: &str,
) -> Proxy {
    let dead = closed_port().await;
    Proxy::start(&config_toml(
        &format!("postgres://postgres@{dead}/postgres"),
        &format!("http://{up}"),
        "insert_timeout_ms = 500",
        &format!("[spool]\ndir = \"{}\"\n{spool_extra}", dir.display()),
    ))
    .await
}

async fn blocking(f: impl FnOnce() + Send + 'static) {
    tokio::task::spawn_blocking(f).await.expect("blocking task");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_immediately_under_load_loses_no_request_and_no_row() {
    let cluster = Arc::new(TestCluster::start().await);
    let proxy = proxy_on(&cluster).await;

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let running = load(proxy.url("/webhook/w"), 4, stop.clone());
    tokio::time::sleep(Duration::from_millis(700)).await;
    let c = cluster.clone();
    let before = proxy.metrics.snapshot();
    blocking(move || c.stop_immediate()).await;
    let down_at = Instant::now();
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let at_restart = proxy.metrics.snapshot();
    cluster.restart().await;
    let outage = down_at.elapsed();
    // Load goes on: the journal drains while new requests still arrive.
    let restarted = Instant::now();
    let mut emptied = None;
    while restarted.elapsed() < Duration::from_secs(20) {
        if proxy.metrics.spool_records.get() == 0 {
            emptied = Some(restarted.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let emptied = emptied.expect("the journal emptied after the restart");
    stop.store(true, Ordering::Relaxed);
    let (traces, slowest) = running.await.expect("load");

    let m = proxy.metrics.snapshot();
    assert!(m.spooled > 0, "the outage was not spooled: {m:?}");
    let drained =
        wait_until_recorded(&cluster.url(), &traces, &proxy, Duration::from_secs(30)).await;
    let m = proxy.metrics.snapshot();
    println!(
        "outage {outage:?}: {} journal records ({} requests) written while PostgreSQL was \
         down; journal empty {emptied:?} after the restart, under continued load; {} requests \
         in all, slowest answer {slowest:?}; all rows final {drained:?} after the load ended; \
         {} records replayed",
        at_restart.spooled - before.spooled,
        at_restart.requests - before.requests,
        traces.len(),
        m.replayed
    );
    assert_eq!(m.unrecorded + m.rejected_unavailable, 0, "{m:?}");
    assert!(m.replayed >= m.spooled, "{m:?}");
    let unique: HashSet<&String> = traces.iter().collect();
    assert_eq!(unique.len(), traces.len());
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_database_does_not_hold_requests_past_the_deadline() {
    let cluster = TestCluster::start().await;
    let proxy = proxy_on(&cluster).await;

    // Before: recorded directly.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let running = load(proxy.url("/webhook/w"), 2, stop.clone());
    tokio::time::sleep(Duration::from_millis(400)).await;
    cluster.freeze();
    // Connections to a stopped server are accepted by the kernel and then hang: only deadlines
    // get requests through. Three seconds frozen: longer than every database deadline.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let during = proxy.metrics.snapshot();
    cluster.thaw();
    tokio::time::sleep(Duration::from_millis(400)).await;
    stop.store(true, Ordering::Relaxed);
    let (traces, slowest) = running.await.expect("load");

    assert!(
        during.spooled > 0,
        "nothing spooled while frozen: {during:?}"
    );
    // insert_timeout_ms = 1000, then the journal's fsync: well under two seconds.
    assert!(
        slowest < Duration::from_millis(2000),
        "a request waited {slowest:?}"
    );
    let drained =
        wait_until_recorded(&cluster.url(), &traces, &proxy, Duration::from_secs(30)).await;
    let m = proxy.metrics.snapshot();
    println!(
        "frozen 3 s: {} requests, slowest answer {slowest:?}, {} journal records, drained \
         {drained:?}; {} replayed pending rows had been committed by inserts that timed out",
        traces.len(),
        m.spooled,
        m.replay_already_stored
    );
    // Statements sent to the frozen server timed out and were given up, but the server ran them
    // once thawed: their rows were committed and also journaled, and are stored once.
    assert!(m.replay_already_stored >= 1, "{m:?}");
    proxy.stop().await;
}

/// A journal segment left by an earlier process, 100 bytes short of `max_bytes`: no record
/// fits any more.
fn nearly_full_journal(dir: &std::path::Path, max_bytes: usize) {
    let mut frames = Vec::new();
    let goal = max_bytes - 100;
    while frames.len() + 2 * 1008 <= goal {
        trace_proxy::spool::journal::encode(&[b'x'; 1000], &mut frames);
    }
    let last = goal - frames.len() - 8;
    trace_proxy::spool::journal::encode(&vec![b'x'; last], &mut frames);
    assert_eq!(frames.len(), goal);
    std::fs::write(trace_proxy::spool::journal::segment_path(dir, 1), &frames)
        .expect("write segment");
}

#[tokio::test]
async fn a_full_journal_rejects_or_forwards_as_configured() {
    for (policy, want_status, want_seen) in [("reject", 503, 0), ("forward", 200, 1)] {
        let (up, log) = recording_upstream(|| Response::new(full("{\"ok\":true}"))).await;
        let dir = tempfile::tempdir().expect("tempdir");
        nearly_full_journal(dir.path(), 1024 * 1024);
        let spool = format!("max_bytes = 1048576\nspool_full = \"{policy}\"\n");
        let proxy = proxy_without_database(up, dir.path(), &spool).await;
        let trace = new_trace_id();
        let (parts, body) = send(post(&proxy.url("/webhook/w"), &trace, "{\"a\":1}")).await;
        assert_eq!(parts.status.as_u16(), want_status, "{policy}: {body:?}");
        assert_eq!(log.lock().expect("log").len(), want_seen, "{policy}");
        let m = proxy.metrics.snapshot();
        assert!(m.spool_full >= 1, "{policy}: {m:?}");
        if policy == "reject" {
            assert!(
                String::from_utf8_lossy(&body).contains("trace store unavailable"),
                "{body:?}"
            );
            assert_eq!(m.rejected_unavailable, 1, "{m:?}");
        } else {
            assert_eq!(m.unrecorded, 1, "{m:?}");
        }
        proxy.stop().await;
    }
}

#[tokio::test]
async fn a_torn_journal_tail_is_cut_and_the_rest_replayed_into_the_database() {
    // A proxy without its database spools three requests, then stops.
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = format!("[spool]\ndir = \"{}\"\n", dir.path().display());
    let up = upstream(echo_upstream()).await;
    let proxy = proxy_without_database(up, dir.path(), "").await;
    let traces: Vec<String> = (0..3).map(|_| new_trace_id()).collect();
    for t in &traces {
        let (parts, _) = send(post(&proxy.url("/webhook/w"), t, "{\"a\":1}")).await;
        assert_eq!(parts.status, 200);
    }
    // Pending rows and final updates: six records.
    for _ in 0..100 {
        if proxy.metrics.snapshot().spooled == 6 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(proxy.metrics.snapshot().spooled, 6);
    proxy.stop().await;

    // A crash in the middle of a write: half a frame at the end of the last segment.
    let mut segments: Vec<_> = std::fs::read_dir(dir.path())
        .expect("read dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "journal"))
        .collect();
    segments.sort();
    let last = segments.last().expect("a journal segment");
    let mut torn = Vec::new();
    trace_proxy::spool::journal::encode(b"{\"op\":\"start\",\"never\":\"whole\"}", &mut torn);
    torn.truncate(torn.len() / 2);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(last)
        .expect("open segment");
    std::io::Write::write_all(&mut f, &torn).expect("append");
    drop(f);

    // The next process, with its database, replays the whole records and drops the torn one.
    let db = TestDb::new().await;
    let proxy = Proxy::start(&config_toml(&db.url(), &format!("http://{up}"), "", &spool)).await;
    wait_for_migrations(&db).await;
    for t in &traces {
        let rows = db.final_rows(t, 1).await;
        assert_eq!(rows[0].get::<_, &str>("overall_status"), "success", "{t}");
        assert_eq!(
            rows[0].get::<_, Option<i32>>("http_status"),
            Some(200),
            "{t}"
        );
    }
    assert_eq!(proxy.metrics.spool_torn.get(), 1);
    for _ in 0..100 {
        if proxy.metrics.spool_records.get() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .expect("read dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "journal"))
        .collect();
    assert!(left.is_empty(), "replayed segments are trimmed: {left:?}");
    proxy.stop().await;
}

#[tokio::test]
async fn a_record_postgresql_rejects_is_stored_without_its_payload_and_the_rest_replayed() {
    use trace_proxy::spool::{journal, Record};
    use trace_proxy::trace::{now_utc, AttemptStart};
    let start = |trace: &str, payload: serde_json::Value| Record::Start {
        instance: uuid::Uuid::now_v7(),
        start: Box::new(AttemptStart {
            id: uuid::Uuid::now_v7(),
            trace_id: trace.to_owned(),
            execution_id: None,
            source_service: "bilko-app".into(),
            destination_service: "n8n".into(),
            workflow_id: "w".into(),
            action: None,
            user_id: "u".into(),
            requested_at: now_utc(),
            request_payload: Some(payload),
            http_method: "POST".into(),
            http_target: "/webhook/w".into(),
            route_name: "n8n".into(),
            n8n_execution_id: None,
            redactions: None,
        }),
    };
    // The middle record holds a NUL in a JSON string, which jsonb refuses (SQLSTATE 22P05).
    let traces: Vec<String> = (0..3).map(|_| new_trace_id()).collect();
    let mut frames = Vec::new();
    for (i, t) in traces.iter().enumerate() {
        let payload = match i {
            1 => serde_json::json!({ "bad": "a\u{0}b" }),
            _ => serde_json::json!({ "good": i }),
        };
        let bytes = serde_json::to_vec(&start(t, payload)).expect("encode");
        journal::encode(&bytes, &mut frames);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(journal::segment_path(dir.path(), 1), &frames).expect("write segment");

    let db = TestDb::new().await;
    let up = upstream(echo_upstream()).await;
    let proxy = Proxy::start(&config(
        &db,
        up,
        &format!("[spool]\ndir = \"{}\"\n", dir.path().display()),
    ))
    .await;
    wait_for_migrations(&db).await;
    for _ in 0..200 {
        if proxy.metrics.spool_records.get() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(proxy.metrics.spool_records.get(), 0);
    assert_eq!(proxy.metrics.spool_rejected.get(), 1);
    for (i, t) in traces.iter().enumerate() {
        let rows = db.trace_rows(t).await;
        assert_eq!(rows.len(), 1, "{t}");
        let payload: serde_json::Value = rows[0].get("request_payload");
        match i {
            1 => assert!(
                payload["_unstorable"]
                    .as_str()
                    .is_some_and(|n| n.contains("PostgreSQL refused this payload")),
                "{payload}"
            ),
            _ => assert_eq!(payload, serde_json::json!({ "good": i })),
        }
    }
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_gone_while_their_pending_row_is_synced_still_get_a_final_record() {
    use tokio::io::AsyncWriteExt;
    use trace_proxy::spool::{journal, Record};
    let dir = tempfile::tempdir().expect("tempdir");
    let up = upstream(echo_upstream()).await;
    let proxy = proxy_without_database(up, dir.path(), "").await;
    // Clients that send a request and hang up at once, many at a time: some leave while their
    // pending row is being synced.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let addr = proxy.addr;
        tasks.push(tokio::spawn(async move {
            for i in 0..60u64 {
                let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
                let req = format!(
                    "POST /webhook/w HTTP/1.1\r\nhost: x\r\nx-trace-id: {}\r\ncontent-length: 2\r\n\r\n{{}}",
                    new_trace_id()
                );
                s.write_all(req.as_bytes()).await.expect("write");
                // Gone after 0 to 3 ms: before, during or after the pending row's sync.
                tokio::time::sleep(Duration::from_micros(i % 30 * 100)).await;
                drop(s);
            }
        }));
    }
    for t in tasks {
        t.await.expect("client");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.stop().await;

    let (mut starts, mut finishes) = (HashSet::new(), HashSet::new());
    for entry in std::fs::read_dir(dir.path()).expect("read dir") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|x| x != "journal") {
            continue;
        }
        let mut r = journal::Reader::open(&path).expect("open segment");
        while let Ok(Some(p)) = r.next_frame() {
            match serde_json::from_slice::<Record>(&p).expect("record") {
                Record::Start { start, .. } => starts.insert(start.id),
                Record::Finish { finish } => finishes.insert(finish.id),
            };
        }
    }
    assert!(!starts.is_empty(), "nothing was spooled");
    let orphans: Vec<_> = starts.difference(&finishes).collect();
    assert!(
        orphans.is_empty(),
        "{} of {} spooled pending rows have no final record",
        orphans.len(),
        starts.len()
    );
}

/// `server.shutdown_timeout` bounds the whole stop: with a request that never ends and a frozen
/// database (so writing its row, syncing and deregistering are all slow too), the proxy and its
/// admin listener are gone within one timeout, not one per stage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_takes_one_deadline_in_all_when_every_stage_is_slow() {
    let cluster = TestCluster::start().await;
    let up = upstream(|_req| async {
        tokio::time::sleep(Duration::from_secs(60)).await;
        Response::new(full("too late"))
    })
    .await;
    let proxy = Proxy::start_with_admin(&config_toml(
        &cluster.url(),
        &format!("http://{up}"),
        "statement_timeout_ms = 30000",
        "[server]\nshutdown_timeout = \"2s\"\n",
    ))
    .await;
    let db = wait_for_schema(&cluster.url()).await;
    let trace = new_trace_id();
    let req = get(&proxy.url("/webhook/stuck"), &trace);
    let inflight = tokio::spawn(async move { client().request(req).await });
    let mut pending = false;
    for _ in 0..500 {
        let rows = db
            .query(
                "SELECT 1 FROM communication_traces WHERE trace_id = $1",
                &[&trace],
            )
            .await
            .expect("query");
        if !rows.is_empty() {
            pending = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(pending, "the stuck request's pending row was never written");
    drop(db);
    let (addr, admin) = (proxy.addr, proxy.admin.expect("admin listener"));
    cluster.freeze();
    let started = Instant::now();
    proxy.stop().await;
    let took = started.elapsed();
    cluster.thaw();

    // The open exchange held the drain until the cut-off (1.5 s), and nothing took a fresh 2 s.
    assert!(
        took >= Duration::from_millis(1400),
        "stopped after {took:?}"
    );
    assert!(
        took < Duration::from_millis(2800),
        "stopping took {took:?}, more than one shutdown_timeout (2 s)"
    );
    assert!(
        inflight.await.expect("request task").is_err(),
        "the stuck exchange was cut"
    );
    for listener in [addr, admin] {
        assert!(
            tokio::net::TcpStream::connect(listener).await.is_err(),
            "{listener} still accepts connections after shutdown"
        );
    }
}
