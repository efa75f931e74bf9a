//! Crash recovery: rows left pending by a proxy instance that died are resolved by a live one;
//! rows of live instances are not.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::Response;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use trace_proxy::Config;
use uuid::Uuid;

use crate::support::*;

/// `[recovery]` with a one-second heartbeat and the given staleness.
fn recovery(stale_after_secs: u64) -> String {
    format!("[recovery]\nheartbeat_secs = 1\nstale_after_secs = {stale_after_secs}\n")
}

/// Polls `sql` (one row, one text column) until it returns `want`, up to `secs`.
async fn wait_for(db: &TestDb, sql: &str, want: &str, secs: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    let mut last = String::new();
    while tokio::time::Instant::now() < deadline {
        last = db.rows(sql).await[0]
            .get::<_, Option<String>>(0)
            .unwrap_or_default();
        if last == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{sql}: expected {want:?} within {secs} s, last saw {last:?}");
}

async fn status(db: &TestDb, trace_id: &str) -> (String, Option<String>) {
    let rows = db.trace_rows(trace_id).await;
    assert_eq!(rows.len(), 1, "{trace_id}");
    (rows[0].get("overall_status"), rows[0].get("error_code"))
}

#[tokio::test]
async fn orphans_of_dead_instances_fail_as_outcome_unknown_and_live_rows_stay_pending() {
    let db = TestDb::new().await;
    let (up, _) = recording_upstream(|| Response::new(full("ok"))).await;
    let proxy = Proxy::start(&config(&db, up, &recovery(30))).await;

    // A real request: its row carries the running proxy's registered instance id.
    let trace = new_trace_id();
    let (parts, _) = send(get(&proxy.url("/x"), &trace)).await;
    assert_eq!(parts.status, 200);
    let own: Uuid = db.final_rows(&trace, 1).await[0]
        .get::<_, Option<Uuid>>("proxy_instance")
        .expect("the writer records the instance id");
    let registered = db
        .client
        .query("SELECT 1 FROM trace_proxy_instances WHERE id = $1", &[&own])
        .await
        .expect("query");
    assert_eq!(registered.len(), 1, "running instance is registered");

    let (dead, live) = (Uuid::new_v4(), Uuid::new_v4());
    db.client
        .execute(
            "INSERT INTO trace_proxy_instances (id, started_at, last_seen, hostname) VALUES
                ($1, now() - interval '2 hours', now() - interval '1 hour', 'gone'),
                ($2, now() - interval '2 hours', now(), 'alive')",
            &[&dead, &live],
        )
        .await
        .expect("fake instances");
    let old = "(now() AT TIME ZONE 'UTC') - interval '2 hours'";
    let new = "(now() AT TIME ZONE 'UTC')";
    let cases: [(&str, Option<Uuid>, &str, &str); 7] = [
        ("dead-pending", Some(dead), "pending", old),
        ("dead-progress", Some(dead), "in_progress", new),
        ("dead-success", Some(dead), "success", old),
        ("live-old", Some(live), "pending", old),
        ("own-old", Some(own), "pending", old),
        ("null-old", None, "pending", old),
        ("null-new", None, "pending", new),
    ];
    let mut tx = Vec::new();
    for (name, instance, status, at) in cases {
        let trace_id = format!("{name}-{}", Uuid::new_v4().simple());
        db.client
            .execute(
                &format!(
                    "INSERT INTO communication_traces (id, trace_id, source_service,
                        destination_service, workflow_id, user_id, requested_at, overall_status,
                        proxy_instance)
                     VALUES ($1, $2, 'bilko-app', 'n8n', 'wf', 'u', {at}, $3, $4)"
                ),
                &[&Uuid::new_v4(), &trace_id, &status, &instance],
            )
            .await
            .expect("insert row");
        tx.push((name, trace_id));
    }
    let trace_of = |name: &str| {
        tx.iter()
            .find(|(n, _)| *n == name)
            .map(|(_, t)| t.clone())
            .expect("case")
    };

    for name in ["dead-pending", "dead-progress", "null-old"] {
        let t = trace_of(name);
        wait_for(
            &db,
            &format!("SELECT overall_status FROM communication_traces WHERE trace_id = '{t}'"),
            "failed",
            15,
        )
        .await;
        let row = &db.trace_rows(&t).await[0];
        assert_eq!(
            row.get::<_, Option<&str>>("error_code"),
            Some("OUTCOME_UNKNOWN")
        );
        let detail: String = row
            .get::<_, Option<String>>("error_detail")
            .expect("detail");
        assert!(detail.contains("stopped before recording"), "{detail}");
        if name != "null-old" {
            assert!(detail.contains(&dead.to_string()), "{detail}");
        }
        assert!(row
            .get::<_, Option<chrono::NaiveDateTime>>("responded_at")
            .is_some());
    }
    // The dead instance is forgotten once nothing of it is left to resolve.
    wait_for(
        &db,
        &format!("SELECT count(*)::text FROM trace_proxy_instances WHERE id = '{dead}'"),
        "0",
        15,
    )
    .await;
    // Those passes saw every row (all inserted before); these were left alone.
    assert_eq!(
        status(&db, &trace_of("dead-success")).await,
        ("success".to_owned(), None)
    );
    for name in ["live-old", "own-old", "null-new"] {
        assert_eq!(
            status(&db, &trace_of(name)).await,
            ("pending".to_owned(), None),
            "{name}"
        );
    }
    let alive = db
        .client
        .query(
            "SELECT id FROM trace_proxy_instances WHERE id = ANY($1)",
            &[&vec![own, live]],
        )
        .await
        .expect("query");
    assert_eq!(alive.len(), 2, "live instances are kept");

    // Graceful shutdown deregisters the instance.
    proxy.stop().await;
    wait_for(
        &db,
        &format!("SELECT count(*)::text FROM trace_proxy_instances WHERE id = '{own}'"),
        "0",
        5,
    )
    .await;
}

/// A proxy on its own runtime, killed (its runtime dropped: no graceful shutdown, nothing more
/// written) when `kill` is sent.
struct Killable {
    addr: SocketAddr,
    kill: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Killable {
    fn start(toml: String) -> Killable {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (kill, killed) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            let config = Config::from_toml_str(&toml).expect("config");
            let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).expect("bind");
            addr_tx
                .send(listener.local_addr().expect("addr"))
                .expect("send addr");
            rt.spawn(async move {
                let _ = trace_proxy::run(listener, Arc::new(config), std::future::pending()).await;
            });
            let _ = killed.recv();
            rt.shutdown_background();
        });
        let addr = addr_rx.recv().expect("proxy address");
        Killable { addr, kill, thread }
    }

    fn kill(self) {
        let _ = self.kill.send(());
        self.thread.join().expect("proxy thread");
    }
}

#[tokio::test]
async fn proxy_killed_mid_request_leaves_a_row_that_another_proxy_resolves_once_stale() {
    let db = TestDb::new().await;
    let (arrived_tx, mut arrived) = mpsc::channel::<()>(1);
    // The upstream holds the request far longer than the test runs.
    let up = upstream(move |_req| {
        let arrived_tx = arrived_tx.clone();
        async move {
            let _ = arrived_tx.send(()).await;
            tokio::time::sleep(Duration::from_secs(120)).await;
            Response::new(full("too late"))
        }
    })
    .await;
    const STALE: u64 = 3;
    let first = Killable::start(config(&db, up, &recovery(STALE)));
    let trace = new_trace_id();
    let url = format!("http://{}/hold", first.addr);
    let t = trace.clone();
    let request = tokio::spawn(async move { client().request(get(&url, &t)).await });
    tokio::time::timeout(Duration::from_secs(10), arrived.recv())
        .await
        .expect("the request reaches the upstream");
    // D1: the pending row was committed before forwarding.
    let row = &db.trace_rows(&trace).await[0];
    let instance: Uuid = row
        .get::<_, Option<Uuid>>("proxy_instance")
        .expect("instance");
    assert_eq!(row.get::<_, &str>("overall_status"), "pending");

    first.kill();
    assert!(
        request.await.expect("client task").is_err(),
        "the client sees the proxy die"
    );
    let last_seen: chrono::DateTime<chrono::Utc> = db
        .client
        .query_one(
            "SELECT last_seen FROM trace_proxy_instances WHERE id = $1",
            &[&instance],
        )
        .await
        .expect("the killed instance is still registered")
        .get(0);
    assert_eq!(
        status(&db, &trace).await.0,
        "pending",
        "nothing resolved it yet"
    );

    let (up2, _) = recording_upstream(|| Response::new(full("ok"))).await;
    let second = Proxy::start(&config(&db, up2, &recovery(STALE))).await;
    wait_for(
        &db,
        &format!("SELECT error_code FROM communication_traces WHERE trace_id = '{trace}'"),
        "OUTCOME_UNKNOWN",
        20,
    )
    .await;
    let row = &db.trace_rows(&trace).await[0];
    assert_eq!(row.get::<_, &str>("overall_status"), "failed");
    let detail: String = row
        .get::<_, Option<String>>("error_detail")
        .expect("detail");
    assert!(detail.contains(&instance.to_string()), "{detail}");
    // Not before the killed instance's heartbeat was stale.
    let waited: f64 = db
        .client
        .query_one(
            "SELECT extract(epoch FROM responded_at - ($2::timestamptz AT TIME ZONE 'UTC'))::float8
             FROM communication_traces WHERE trace_id = $1",
            &[&trace, &last_seen],
        )
        .await
        .expect("query")
        .get(0);
    assert!(
        waited >= STALE as f64,
        "resolved {waited} s after the last heartbeat"
    );
    wait_for(
        &db,
        &format!("SELECT count(*)::text FROM trace_proxy_instances WHERE id = '{instance}'"),
        "0",
        10,
    )
    .await;
    second.stop().await;
}

/// With the admin listener up (it keeps answering `/readyz` while the proxy drains), a graceful
/// stop still writes every row and deregisters the instance, well before the shutdown deadline.
#[tokio::test]
async fn a_graceful_stop_with_the_admin_listener_writes_everything_and_deregisters() {
    let db = TestDb::new().await;
    let up = upstream(|_req| async { Response::new(full("{\"ok\":true}")) }).await;
    let proxy = Proxy::start_with_admin(&config(&db, up, "")).await;
    let trace = new_trace_id();
    let (parts, _) = send(get(&proxy.url("/webhook/w"), &trace)).await;
    assert_eq!(parts.status, 200);
    let started = std::time::Instant::now();
    // `stop` gives up after 10 s; the default shutdown_timeout is 30 s.
    proxy.stop().await;
    let took = started.elapsed();
    let rows = db.trace_rows(&trace).await;
    assert_eq!(rows[0].get::<_, &str>("overall_status"), "success");
    let left = db.rows("SELECT count(*) FROM trace_proxy_instances").await;
    assert_eq!(
        left[0].get::<_, i64>(0),
        0,
        "instance still registered after a stop of {took:?}"
    );
}
