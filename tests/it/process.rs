//! The real `trace-proxy` binary as a child process: killed with SIGKILL mid-request and
//! restarted on the same spool directory, stopped with SIGTERM during a slow request, and a
//! journal written while PostgreSQL was down replayed by the next process.

use std::fs::File;
use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::sync::mpsc;
use tokio_postgres::Row;
use uuid::Uuid;

use crate::support::*;

/// Where one proxy deployment lives across its restarts: a temporary directory holding its
/// config files, logs and spool directory, and the two 127.0.0.1 ports it listens on.
struct Site {
    dir: tempfile::TempDir,
    listen: SocketAddr,
    admin: SocketAddr,
    starts: AtomicUsize,
}

impl Site {
    async fn new() -> Site {
        Site {
            dir: tempfile::tempdir().expect("site tempdir"),
            // Bound, then released for the child to bind.
            listen: closed_port().await,
            admin: closed_port().await,
            starts: AtomicUsize::new(0),
        }
    }

    fn spool_dir(&self) -> PathBuf {
        self.dir.path().join("spool")
    }

    /// The site's tables for [`config_toml`]'s `extra`: listeners (with `server_extra` in
    /// `[server]`), the spool directory, no retention passes, then `extra`.
    fn tables(&self, server_extra: &str, extra: &str) -> String {
        format!(
            "[server]\nlisten = \"{}\"\n{server_extra}\n[admin]\nlisten = \"{}\"\n\
             [spool]\ndir = \"{}\"\n[retention]\ninterval_secs = 0\n{extra}\n",
            self.listen,
            self.admin,
            self.spool_dir().display()
        )
    }

    /// The journal segment files in the spool directory.
    fn journal_files(&self) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(self.spool_dir()) else {
            return Vec::new();
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "journal"))
            .collect();
        files.sort();
        files
    }
}

/// One run of the `trace-proxy` binary on a [`Site`]; killed (SIGKILL) in Drop if still
/// running, and its log tail printed when the test is failing.
struct RunningBinary<'a> {
    site: &'a Site,
    child: Child,
    log: PathBuf,
    exited: Option<ExitStatus>,
}

impl<'a> RunningBinary<'a> {
    /// Writes `config` to a new file of the site, runs `trace-proxy serve --config <file>` with
    /// stdout and stderr going to a log file beside it, and waits until `/healthz` answers.
    async fn start(site: &'a Site, config: &str) -> RunningBinary<'a> {
        let n = site.starts.fetch_add(1, Ordering::Relaxed) + 1;
        let config_path = site.dir.path().join(format!("proxy-{n}.toml"));
        std::fs::write(&config_path, config).expect("write config");
        let log = site.dir.path().join(format!("proxy-{n}.log"));
        let out = File::create(&log).expect("create log file");
        let err = out.try_clone().expect("clone log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_trace-proxy"));
        cmd.arg("serve")
            .arg("--config")
            .arg(&config_path)
            .current_dir(site.dir.path())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .env("NO_COLOR", "1");
        for var in CONFIG_ENV {
            cmd.env_remove(var);
        }
        let child = cmd.spawn().expect("spawn trace-proxy");
        let mut bin = RunningBinary {
            site,
            child,
            log,
            exited: None,
        };
        bin.wait_healthy(Duration::from_secs(15)).await;
        bin
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.site.listen, path)
    }

    async fn wait_healthy(&mut self, limit: Duration) {
        let url = format!("http://{}/healthz", self.site.admin);
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.try_exit() {
                panic!("trace-proxy exited before it was healthy ({status})");
            }
            let probe = client().request(
                http::Request::get(&url)
                    .body(Full::new(Bytes::new()))
                    .expect("request"),
            );
            if let Ok(Ok(resp)) = tokio::time::timeout(Duration::from_millis(500), probe).await {
                if resp.status() == StatusCode::OK {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("trace-proxy not healthy on {url} within {limit:?}");
    }

    fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().expect("try_wait");
        }
        self.exited
    }

    fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("run kill -TERM");
        assert!(status.success(), "kill -TERM {}: {status}", self.pid());
    }

    /// SIGKILL (`Child::kill`), then reaps the process.
    async fn sigkill(&mut self) -> ExitStatus {
        self.child.kill().expect("SIGKILL trace-proxy");
        self.wait_exit(Duration::from_secs(5)).await
    }

    /// Waits (polling, so the test's runtime keeps running) until the process has exited.
    async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.try_exit() {
                return status;
            }
            if Instant::now() >= deadline {
                panic!("trace-proxy still running {limit:?} later");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The last lines of the process's log.
    fn log_tail(&self) -> String {
        let text = std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_else(|e| format!("(cannot read {}: {e})", self.log.display()));
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(60)..].join("\n");
        format!("--- tail of {} ---\n{tail}\n---", self.log.display())
    }
}

impl Drop for RunningBinary<'_> {
    fn drop(&mut self) {
        if self.try_exit().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // A failing test (a panic here or anywhere after the start) shows what the proxy said.
        if std::thread::panicking() {
            eprintln!("{}", self.log_tail());
        }
    }
}

/// Sends a request and reads the whole answer; an error instead of a panic, for requests whose
/// connection may be cut.
async fn fetch(req: http::Request<Full<Bytes>>) -> Result<(StatusCode, Bytes), String> {
    let resp = client().request(req).await.map_err(|e| format!("{e:?}"))?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("{e:?}"))?
        .to_bytes();
    Ok((status, body))
}

/// Polls until the trace has exactly one row with one of `statuses`, up to `secs`.
async fn wait_for_row(db: &TestDb, trace_id: &str, statuses: &[&str], secs: u64) -> Row {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        let mut rows = db.trace_rows(trace_id).await;
        seen = rows
            .iter()
            .map(|r| r.get::<_, String>("overall_status"))
            .collect();
        if rows.len() == 1 && statuses.contains(&seen[0].as_str()) {
            return rows.remove(0);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("trace {trace_id}: expected one row {statuses:?} within {secs} s, saw {seen:?}");
}

#[tokio::test]
async fn a_proxy_killed_with_sigkill_mid_request_is_resolved_when_restarted_on_its_spool_dir() {
    let db = TestDb::new().await;
    let (arrived_tx, mut arrived) = mpsc::channel::<()>(1);
    // `/hold` is held far longer than the test runs; anything else answers at once.
    let up = upstream(move |req| {
        let arrived_tx = arrived_tx.clone();
        async move {
            if req.uri().path() == "/hold" {
                let _ = arrived_tx.send(()).await;
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
            Response::new(full("ok"))
        }
    })
    .await;
    let site = Site::new().await;
    // Staleness far beyond the test: only the same-spool-directory path can resolve the row.
    let tables = site.tables("", "[recovery]\nstale_after_secs = 600\n");
    let (mut first, toml) = recording(&site, &db, up, &tables).await;

    let trace = new_trace_id();
    let held = tokio::spawn(fetch(get(&first.url("/hold"), &trace)));
    let row = wait_for_row(&db, &trace, &["pending", "in_progress"], 10).await;
    tokio::time::timeout(Duration::from_secs(10), arrived.recv())
        .await
        .expect("the request reaches the upstream");
    let instance: Uuid = row
        .get::<_, Option<Uuid>>("proxy_instance")
        .expect("the row carries the instance id");

    let exit = first.sigkill().await;
    assert_eq!(exit.signal(), Some(9), "{exit}");
    let answer = tokio::time::timeout(Duration::from_secs(10), held)
        .await
        .expect("the client notices the proxy died")
        .expect("client task");
    assert!(answer.is_err(), "the client sees the proxy die: {answer:?}");
    let rows = db.trace_rows(&trace).await;
    assert_eq!(rows.len(), 1);
    let status: String = rows[0].get("overall_status");
    assert!(
        status == "pending" || status == "in_progress",
        "nothing resolved the row yet: {status}"
    );
    assert_eq!(rows[0].get::<_, Option<&str>>("error_code"), None);

    // The same config, so the same spool directory: its lock is free again (the kernel dropped
    // it with the process) and it names the dead instance.
    let mut second = RunningBinary::start(&site, &toml).await;
    let row = wait_for_row(&db, &trace, &["failed"], 10).await;
    assert_eq!(
        row.get::<_, Option<&str>>("error_code"),
        Some("OUTCOME_UNKNOWN")
    );
    let detail: String = row
        .get::<_, Option<String>>("error_detail")
        .expect("error_detail");
    assert!(detail.contains("spool directory"), "{detail}");
    assert!(detail.contains(&instance.to_string()), "{detail}");
    assert!(row
        .get::<_, Option<chrono::NaiveDateTime>>("responded_at")
        .is_some());

    // The restarted proxy serves and records as usual.
    let fresh = new_trace_id();
    let (status, body) = fetch(post(&second.url("/webhook/after"), &fresh, r#"{"n":1}"#))
        .await
        .expect("request through the restarted proxy");
    assert_eq!(status, 200);
    assert_eq!(body, "ok");
    let rows = db.final_rows(&fresh, 1).await;
    assert_eq!(rows[0].get::<_, &str>("overall_status"), "success");
    assert_eq!(rows[0].get::<_, Option<i32>>("http_status"), Some(200));
    let new_instance = rows[0].get::<_, Option<Uuid>>("proxy_instance");
    assert!(
        new_instance.is_some_and(|i| i != instance),
        "{new_instance:?}"
    );

    second.sigterm();
    assert_eq!(
        second.wait_exit(Duration::from_secs(15)).await.code(),
        Some(0)
    );
}

#[tokio::test]
async fn sigterm_during_a_slow_request_lets_it_finish_records_it_and_exits_0() {
    let db = TestDb::new().await;
    let up = upstream(|_req| async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        Response::new(full("slow but complete"))
    })
    .await;
    let site = Site::new().await;
    let tables = site.tables("shutdown_timeout_ms = 10000", "");
    let (mut proxy, _) = recording(&site, &db, up, &tables).await;

    let trace = new_trace_id();
    let request = tokio::spawn(fetch(post(
        &proxy.url("/webhook/slow"),
        &trace,
        r#"{"slow":true}"#,
    )));
    wait_for_row(&db, &trace, &["pending", "in_progress"], 10).await;
    assert!(!request.is_finished(), "SIGTERM comes mid-request");
    proxy.sigterm();

    let (status, body) = tokio::time::timeout(Duration::from_secs(15), request)
        .await
        .expect("the client gets its answer")
        .expect("client task")
        .expect("the whole response");
    assert_eq!(status, 200);
    assert_eq!(body, "slow but complete");
    let exit = proxy.wait_exit(Duration::from_secs(15)).await;
    assert_eq!(exit.code(), Some(0), "{exit}");

    // Exited: every row was written before.
    let rows = db.trace_rows(&trace).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, &str>("overall_status"), "success");
    assert_eq!(rows[0].get::<_, Option<i32>>("http_status"), Some(200));
    assert_eq!(rows[0].get::<_, Option<&str>>("error_code"), None);
}

#[tokio::test]
async fn records_spooled_while_the_database_was_down_are_replayed_by_the_next_process() {
    let db = TestDb::new().await;
    let up = upstream(|_req| async { Response::new(full("stored later")) }).await;
    let upstream_url = format!("http://{up}");
    let site = Site::new().await;
    let tables = site.tables("shutdown_timeout_ms = 10000", "");

    // Nothing listens at the database URL: the proxy still serves, journaling every record.
    let down_config = without_database(&upstream_url, &tables).await;
    let mut first = RunningBinary::start(&site, &down_config).await;
    let traces: Vec<String> = (0..5).map(|_| new_trace_id()).collect();
    for trace in &traces {
        let (status, body) = fetch(post(&first.url("/webhook/spooled"), trace, r#"{"n":1}"#))
            .await
            .expect("request through the proxy whose database is down");
        assert_eq!(status, 200, "{trace}: {body:?}");
        assert_eq!(body, "stored later");
    }
    first.sigterm();
    let exit = first.wait_exit(Duration::from_secs(15)).await;
    assert_eq!(exit.code(), Some(0), "{exit}");
    assert!(
        !site.journal_files().is_empty(),
        "no journal in {}",
        site.spool_dir().display()
    );

    // The next process, on the same spool directory, with the database back.
    let up_config = config_toml(&db.url(), &upstream_url, "", &tables);
    let mut second = RunningBinary::start(&site, &up_config).await;
    wait_for_migrations(&db).await;
    let count = "SELECT count(*), count(DISTINCT id), count(DISTINCT trace_id),
                    count(*) FILTER (WHERE overall_status = 'success' AND http_status = 200)
                 FROM communication_traces WHERE trace_id = ANY($1)";
    let deadline = Instant::now() + Duration::from_secs(10);
    let counts = loop {
        let row = db
            .client
            .query_one(count, &[&traces])
            .await
            .expect("count rows");
        let counts: [i64; 4] = std::array::from_fn(|i| row.get(i));
        if counts[0] >= 5 && counts[3] == 5 {
            break counts;
        }
        assert!(
            Instant::now() < deadline,
            "replayed rows within 10 s: [rows, ids, traces, success] = {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert_eq!(
        counts,
        [5, 5, 5, 5],
        "[rows, distinct ids, distinct traces, success]"
    );
    let all: i64 = db.rows("SELECT count(*) FROM communication_traces").await[0].get(0);
    assert_eq!(all, 5, "no other rows");

    // Replayed segments are trimmed.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !site.journal_files().is_empty() {
        assert!(
            Instant::now() < deadline,
            "journal not trimmed: {:?}",
            site.journal_files()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    second.sigterm();
    let exit = second.wait_exit(Duration::from_secs(15)).await;
    assert_eq!(exit.code(), Some(0), "{exit}");
}

/// The binary recording into `db`, to the upstream `up`, with the site's `tables`, once its
/// migrations are applied; and its config.
async fn recording<'a>(
    site: &'a Site,
    db: &TestDb,
    up: SocketAddr,
    tables: &str,
) -> (RunningBinary<'a>, String) {
    let toml = config_toml(&db.url(), &format!("http://{up}"), "", tables);
    let running = RunningBinary::start(site, &toml).await;
    wait_for_migrations(db).await;
    (running, toml)
}

/// A config whose database URL points where nothing listens, with short database deadlines.
async fn without_database(upstream_url: &str, tables: &str) -> String {
    let down = format!("postgres://postgres@{}/postgres", closed_port().await);
    config_toml(
        &down,
        upstream_url,
        "connect_timeout_ms = 500\npool_wait_timeout_ms = 500\ninsert_timeout_ms = 1000\n",
        tables,
    )
}

/// Runs `trace-proxy <args> --config <config>` to completion.
fn run_cli(site: &Site, config: &str, args: &[&str]) -> std::process::Output {
    let n = site.starts.fetch_add(1, Ordering::Relaxed) + 1;
    let config_path = site.dir.path().join(format!("cli-{n}.toml"));
    std::fs::write(&config_path, config).expect("write config");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_trace-proxy"));
    cmd.args(args)
        .arg("--config")
        .arg(&config_path)
        .current_dir(site.dir.path())
        .stdin(Stdio::null())
        .env("NO_COLOR", "1");
    for var in CONFIG_ENV {
        cmd.env_remove(var);
    }
    cmd.output().expect("run trace-proxy")
}

#[tokio::test]
async fn spool_status_and_replay_drain_a_journal_whose_proxy_will_not_run_again() {
    let db = TestDb::new().await;
    let up = upstream(|_req| async { Response::new(full("kept")) }).await;
    let upstream_url = format!("http://{up}");
    let site = Site::new().await;
    let tables = site.tables("", "");
    let down_config = without_database(&upstream_url, &tables).await;
    let up_config = config_toml(&db.url(), &upstream_url, "", &tables);
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();

    // A proxy without its database journals three requests, and is still running.
    let mut proxy = RunningBinary::start(&site, &down_config).await;
    let traces: Vec<String> = (0..3).map(|_| new_trace_id()).collect();
    for trace in &traces {
        let (status, _) = fetch(post(&proxy.url("/webhook/w"), trace, "{}"))
            .await
            .expect("request");
        assert_eq!(status, 200);
    }
    let out = run_cli(&site, &up_config, &["spool", "status"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains(": in use by a running proxy"),
        "{}",
        text(&out.stdout)
    );
    // The running proxy owns the journal: replaying it from elsewhere is refused.
    let out = run_cli(&site, &up_config, &["spool", "replay"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("in use by another trace-proxy process"),
        "{}",
        text(&out.stderr)
    );
    proxy.sigterm();
    assert_eq!(
        proxy.wait_exit(Duration::from_secs(15)).await.code(),
        Some(0)
    );

    // The proxy will not run again: what it left is reported, then replayed by hand.
    let out = run_cli(&site, &up_config, &["spool", "status"]);
    let status = text(&out.stdout);
    assert!(status.contains(": not in use"), "{status}");
    assert!(status.contains(", 6 record(s), "), "{status}");
    let out = run_cli(&site, &up_config, &["spool", "replay"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("replayed 6 journal record(s); 0 row(s)"),
        "{}",
        text(&out.stdout)
    );
    for trace in &traces {
        let rows = db.trace_rows(trace).await;
        assert_eq!(rows.len(), 1, "{trace}");
        assert_eq!(
            rows[0].get::<_, &str>("overall_status"),
            "success",
            "{trace}"
        );
    }
    assert!(
        site.journal_files().is_empty(),
        "{:?}",
        site.journal_files()
    );
    let out = run_cli(&site, &up_config, &["spool", "status"]);
    assert!(
        text(&out.stdout).contains(", 0 record(s), "),
        "{}",
        text(&out.stdout)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_killed_with_sigkill_while_spooling_loses_nothing_it_answered() {
    let db = TestDb::new().await;
    let up = upstream(|_req| async { Response::new(full("spooled")) }).await;
    let upstream_url = format!("http://{up}");
    let site = Site::new().await;
    let tables = site.tables("", "[recovery]\nstale_after_secs = 600\n");
    let mut first =
        RunningBinary::start(&site, &without_database(&upstream_url, &tables).await).await;

    // Steady load while the database is unreachable, then SIGKILL in the middle of it.
    let answered = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (url, answered) = (first.url("/webhook/w"), answered.clone());
        clients.push(tokio::spawn(async move {
            loop {
                let trace = new_trace_id();
                match fetch(post(&url, &trace, "{}")).await {
                    Ok((status, body)) => {
                        assert_eq!((status.as_u16(), body.as_ref()), (200, &b"spooled"[..]));
                        answered.lock().expect("lock").push(trace);
                    }
                    // The proxy is gone.
                    Err(_) => return,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let killed = first.sigkill().await;
    assert_eq!(killed.signal(), Some(9), "{killed}");
    for c in clients {
        c.await.expect("client");
    }
    let answered = std::mem::take(&mut *answered.lock().expect("lock"));
    assert!(
        answered.len() > 50,
        "only {} requests answered",
        answered.len()
    );

    // The next process, on the same journal, with the database.
    let up_config = config_toml(&db.url(), &upstream_url, "", &tables);
    let mut second = RunningBinary::start(&site, &up_config).await;
    wait_for_migrations(&db).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let (rows, distinct, success, unknown, open) = loop {
        let r = db
            .client
            .query_one(
                "SELECT count(*), count(DISTINCT trace_id),
                        count(*) FILTER (WHERE overall_status = 'success'),
                        count(*) FILTER (WHERE error_code = 'OUTCOME_UNKNOWN'),
                        (SELECT count(*) FROM communication_traces
                         WHERE overall_status IN ('pending', 'in_progress'))
                 FROM communication_traces WHERE trace_id = ANY($1)",
                &[&answered],
            )
            .await
            .expect("count");
        let c: (i64, i64, i64, i64, i64) = (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
        if (c.0 == answered.len() as i64 && c.4 == 0) || Instant::now() > deadline {
            break c;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!(
        "{} answered before SIGKILL: {rows} rows, {success} success, {unknown} OUTCOME_UNKNOWN",
        answered.len()
    );
    // Every answered request has exactly one row, and no row anywhere is left open.
    assert_eq!(
        (rows, distinct),
        (answered.len() as i64, answered.len() as i64)
    );
    assert_eq!(open, 0, "rows left pending/in_progress");
    // Only a final update still in the journal's unsynced group at the kill can be missing;
    // its row is resolved as OUTCOME_UNKNOWN, never left pending.
    assert_eq!(success + unknown, rows);
    assert!(
        unknown <= 8,
        "{unknown} answered requests lost their outcome"
    );
    second.sigterm();
    assert_eq!(
        second.wait_exit(Duration::from_secs(15)).await.code(),
        Some(0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_is_never_replayed_into_another_database() {
    let (db_a, db_b) = (TestDb::new().await, TestDb::new().await);
    let up = upstream(|_req| async { Response::new(full("kept")) }).await;
    let upstream_url = format!("http://{up}");
    let site = Site::new().await;
    let tables = site.tables("", "");
    let config_a = config_toml(&db_a.url(), &upstream_url, "", &tables);
    let config_b = config_toml(&db_b.url(), &upstream_url, "", &tables);
    let down_config = without_database(&upstream_url, &tables).await;
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();

    // A proxy on database A binds the spool directory to it.
    let mut proxy = RunningBinary::start(&site, &config_a).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.sigterm();
    assert_eq!(
        proxy.wait_exit(Duration::from_secs(15)).await.code(),
        Some(0)
    );
    // Then, with A unreachable, requests go to the journal.
    let mut proxy = RunningBinary::start(&site, &down_config).await;
    let trace = new_trace_id();
    let (status, _) = fetch(post(&proxy.url("/webhook/w"), &trace, "{}"))
        .await
        .expect("request");
    assert_eq!(status, 200);
    proxy.sigterm();
    assert_eq!(
        proxy.wait_exit(Duration::from_secs(15)).await.code(),
        Some(0)
    );

    // Replaying into database B is refused, and says why; nothing reaches B.
    let out = run_cli(&site, &config_b, &["spool", "replay"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("holds records for database"),
        "{}",
        text(&out.stderr)
    );
    assert!(db_b.trace_rows(&trace).await.is_empty());
    // Asked for explicitly, it goes to B after all (and the journal is bound to B).
    let out = run_cli(
        &site,
        &config_b,
        &["spool", "replay", "--into-other-database"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(db_b.trace_rows(&trace).await.len(), 1);
    assert!(db_a.trace_rows(&trace).await.is_empty());
}

/// The managed PostgreSQL of a state directory, over its socket.
async fn managed_client(state: &std::path::Path) -> Result<tokio_postgres::Client, String> {
    let mut pg = tokio_postgres::Config::new();
    pg.host_path(state.join("postgres"))
        .port(5432)
        .user("trace_proxy")
        .dbname("postgres");
    let (client, conn) = pg
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    Ok(client)
}

/// Makes `dir` searchable by everyone: as root, the managed PostgreSQL runs as `postgres`,
/// which must reach the state directory inside it (a temporary directory is owner-only).
fn traversable(dir: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

#[tokio::test]
async fn without_a_database_url_the_proxy_initialises_records_into_and_stops_its_own_postgresql() {
    let site = Site::new().await;
    traversable(site.dir.path());
    let state = site.dir.path().join("state");
    let up = upstream(|_req| async { Response::new(full("{\"ok\":true}")) }).await;
    let config = format!(
        "[server]\nlisten = \"{}\"\nstate_dir = \"{}\"\n[admin]\nlisten = \"{}\"\n\
         [retention]\ninterval = \"0\"\n[[routes]]\nname = \"n8n\"\nupstream = \"http://{up}\"\n\
         source_service = \"bilko-app\"\ndestination_service = \"n8n\"\n",
        site.listen,
        state.display(),
        site.admin
    );
    let mut proxy = RunningBinary::start(&site, &config).await;
    let trace = Uuid::new_v4().simple().to_string();
    let req = post(
        &proxy.url("/webhook/managed"),
        &trace,
        r#"{"password":"hunter2"}"#,
    );
    let (status, _) = fetch(req).await.expect("answered");
    assert_eq!(status, StatusCode::OK);
    let pg = managed_client(&state)
        .await
        .expect("the managed server's socket");
    let deadline = Instant::now() + Duration::from_secs(10);
    let row = loop {
        let rows = pg
            .query(
                "SELECT overall_status, request_payload::text FROM communication_traces WHERE trace_id = $1",
                &[&trace],
            )
            .await
            .expect("query");
        if rows
            .first()
            .is_some_and(|r| r.get::<_, String>(0) == "success")
        {
            break rows.into_iter().next().expect("row");
        }
        assert!(
            Instant::now() < deadline,
            "no final row in the managed database"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!row.get::<_, String>(1).contains("hunter2"));

    // A command of the same instance uses the running server and leaves it running.
    let path = site.dir.path().join("proxy-1.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_trace-proxy"))
        .args(["traces", "--config"])
        .arg(&path)
        .args(["chain", &trace])
        .env_remove("TRACE_PROXY_DATABASE_URL")
        .output()
        .expect("traces");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains(&trace),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    pg.query_one("SELECT 1", &[])
        .await
        .expect("still running after the command");

    proxy.sigterm();
    let status = proxy.wait_exit(Duration::from_secs(20)).await;
    assert!(status.success(), "{status}");
    let pid_file = state.join("postgres/data/postmaster.pid");
    assert!(!pid_file.exists(), "the server was left running");
    assert!(managed_client(&state).await.is_err());
    drop(proxy);

    // The next start reuses the cluster: the row is still there.
    let mut proxy = RunningBinary::start(&site, &config).await;
    let pg = managed_client(&state).await.expect("restarted");
    let n: i64 = pg
        .query_one(
            "SELECT count(*) FROM communication_traces WHERE trace_id = $1",
            &[&trace],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 1);
    proxy.sigterm();
    assert!(proxy.wait_exit(Duration::from_secs(20)).await.success());
    assert!(!pid_file.exists());
}

#[tokio::test]
async fn without_the_postgresql_server_installed_the_managed_database_says_how_to_get_it() {
    let site = Site::new().await;
    let empty = site.dir.path().join("no-binaries");
    std::fs::create_dir(&empty).expect("dir");
    let config = format!(
        "[server]\nlisten = \"{}\"\nstate_dir = \"{}\"\n[database]\npostgres_bin_dir = \"{}\"\n\
         [[routes]]\nname = \"n8n\"\nupstream = \"http://127.0.0.1:9\"\n\
         source_service = \"bilko-app\"\ndestination_service = \"n8n\"\n",
        site.listen,
        site.dir.path().join("state").display(),
        empty.display()
    );
    let path = site.dir.path().join("proxy.toml");
    std::fs::write(&path, config).expect("write");
    for (args, code) in [
        (&["serve"][..], 69),
        (&["check-config", "--connect"][..], 1),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_trace-proxy"))
            .args(args)
            .arg("--config")
            .arg(&path)
            .env("NO_COLOR", "1")
            .env_remove("TRACE_PROXY_DATABASE_URL")
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
        assert!(
            err.contains("server binaries (initdb, pg_ctl, postgres) were not found"),
            "{err}"
        );
        assert!(err.contains("apt-get install postgresql"), "{err}");
    }
    // `spool status` reads the journal only: it needs no database, managed or not.
    std::fs::create_dir_all(site.dir.path().join("state/spool")).expect("spool dir");
    let out = Command::new(env!("CARGO_BIN_EXE_trace-proxy"))
        .args(["spool", "status", "--config"])
        .arg(&path)
        .env_remove("TRACE_PROXY_DATABASE_URL")
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("journal: 0 segment(s)"), "{text}");
}

#[tokio::test]
async fn a_state_directory_the_server_user_cannot_enter_is_named_with_the_remedy() {
    // An owner-only directory: as root, the managed server (run as `postgres`) cannot enter
    // it; as anyone else, the server runs as the owner and can.
    let site = Site::new().await;
    {
        use std::os::unix::fs::PermissionsExt;
        let owner_only = std::fs::Permissions::from_mode(0o700);
        std::fs::set_permissions(site.dir.path(), owner_only).expect("chmod");
    }
    let config = format!(
        "[server]\nstate_dir = \"{}\"\n[[routes]]\nname = \"n8n\"\nupstream = \"http://127.0.0.1:9\"\n\
         source_service = \"bilko-app\"\ndestination_service = \"n8n\"\n",
        site.dir.path().join("state").display()
    );
    let path = site.dir.path().join("proxy.toml");
    std::fs::write(&path, config).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_trace-proxy"))
        .args(["check-config", "--connect", "--config"])
        .arg(&path)
        .env_remove("TRACE_PROXY_DATABASE_URL")
        .env_remove("TRACE_PROXY_STATE_DIR")
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    if nix::unistd::geteuid().is_root() {
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("runs as the `postgres` user"), "{err}");
        assert!(err.contains("server.state_dir"), "{err}");
    } else {
        assert_eq!(out.status.code(), Some(0), "{err}");
        assert!(err.contains("ok   managed PostgreSQL"), "{err}");
    }
}
