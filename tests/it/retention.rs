//! D5 retention: detail rows older than `detail_days` are folded into the archive tables and
//! deleted, in batches, without losing a count — boundary, traces archived in pieces, stale
//! pending rows, idempotency, a pass killed mid-run, concurrent proxy traffic, the schedule and
//! its lock, and percentiles merged across runs.

use std::time::{Duration, Instant};

use chrono::{NaiveDateTime, TimeDelta};
use http::Response;
use trace_proxy::config::RetentionConfig;
use trace_proxy::recovery::OUTCOME_UNKNOWN;
use trace_proxy::retention::{self, Report, RetentionError, LOCK_CLASS};

use crate::support::*;

/// The time every test acts as of, unless it says otherwise.
fn t0() -> NaiveDateTime {
    NaiveDateTime::parse_from_str("2025-06-30 12:00:00", "%Y-%m-%d %H:%M:%S").expect("time")
}

fn days(n: i64) -> TimeDelta {
    TimeDelta::try_days(n).expect("days")
}

fn policy(detail_days: u32, summary_days: Option<u32>, batch_size: u32) -> RetentionConfig {
    RetentionConfig {
        detail_days,
        summary_days,
        batch_size,
        interval: None,
    }
}

/// A pool on the test schema, with the migrations applied.
async fn migrated_pool(db: &TestDb) -> deadpool_postgres::Pool {
    let toml = config_toml(&db.url(), "http://127.0.0.1:9", "", "");
    let cfg = trace_proxy::Config::from_toml_str(&toml).expect("config");
    let pool = trace_proxy::store::pool(&cfg.database).expect("pool");
    trace_proxy::migrate_pool(&pool).await.expect("migrate");
    pool
}

async fn run(pool: &deadpool_postgres::Pool, cfg: &RetentionConfig, now: NaiveDateTime) -> Report {
    retention::run_once(pool, cfg, now, false)
        .await
        .expect("retention pass")
}

/// One detail row, as the proxy would have written it.
struct Attempt<'a> {
    trace: &'a str,
    number: i32,
    at: NaiveDateTime,
    status: &'a str,
    error_code: Option<&'a str>,
    duration_ms: Option<i32>,
    workflow: &'a str,
    user: &'a str,
    n8n_execution_id: Option<&'a str>,
}

impl<'a> Attempt<'a> {
    fn new(trace: &'a str, number: i32, at: NaiveDateTime) -> Self {
        Attempt {
            trace,
            number,
            at,
            status: "success",
            error_code: None,
            duration_ms: Some(10),
            workflow: "order-flow",
            user: "user-1",
            n8n_execution_id: None,
        }
    }

    fn failed(mut self, code: &'a str) -> Self {
        self.status = "failed";
        self.error_code = Some(code);
        self
    }

    fn status(mut self, status: &'a str) -> Self {
        self.status = status;
        if matches!(status, "pending" | "in_progress") {
            self.duration_ms = None;
        }
        self
    }

    fn duration(mut self, ms: i32) -> Self {
        self.duration_ms = Some(ms);
        self
    }

    async fn insert(self, db: &TestDb) {
        let responded = self
            .duration_ms
            .map(|d| self.at + TimeDelta::milliseconds(i64::from(d)));
        db.client
            .execute(
                "INSERT INTO communication_traces (trace_id, attempt_number, source_service,
                     destination_service, workflow_id, action, user_id, requested_at, responded_at,
                     duration_ms, request_payload, response_payload, overall_status, error_code,
                     n8n_execution_id)
                 VALUES ($1, $2, 'bilko-app', 'n8n', $3, 'trigger-workflow', $4, $5, $6, $7,
                     '{\"order\": 1}', '{\"ok\": true}', $8, $9, $10)",
                &[
                    &self.trace,
                    &self.number,
                    &self.workflow,
                    &self.user,
                    &self.at,
                    &responded,
                    &self.duration_ms,
                    &self.status,
                    &self.error_code,
                    &self.n8n_execution_id,
                ],
            )
            .await
            .expect("insert detail row");
    }
}

/// `n` old rows (31..50 days before `now`): 3 attempts per trace a minute apart, 7 workflows,
/// both directions, some failed, some left pending. Deterministic, so two schemas can hold the
/// same data.
async fn bulk_old_rows(db: &TestDb, now: NaiveDateTime, n: i64) {
    db.client
        .execute(
            "INSERT INTO communication_traces (trace_id, attempt_number, source_service,
                 destination_service, workflow_id, action, user_id, requested_at, responded_at,
                 duration_ms, request_payload, overall_status, error_code)
             SELECT 'bulk-' || (i / 3), i % 3 + 1,
                 CASE WHEN i % 5 = 0 THEN 'n8n' ELSE 'bilko-app' END,
                 CASE WHEN i % 5 = 0 THEN 'bilko-app' ELSE 'n8n' END,
                 'wf-' || (i % 7), CASE WHEN i % 4 = 0 THEN 'approve' END, 'user-' || (i % 11),
                 r.at,
                 CASE WHEN r.pending THEN NULL ELSE r.at + make_interval(secs => r.ms / 1000.0) END,
                 CASE WHEN r.pending THEN NULL ELSE r.ms END,
                 jsonb_build_object('i', i),
                 CASE WHEN r.pending THEN 'pending' WHEN i % 13 = 0 THEN 'failed' ELSE 'success' END,
                 CASE WHEN r.pending THEN NULL WHEN i % 13 = 0 THEN 'HTTP_500' END
             FROM generate_series(0, ($2::int8 - 1)::int4) AS i,
             LATERAL (SELECT
                 $1::timestamp - make_interval(days => 31 + (i / 3) % 20,
                     secs => ((i / 3) * 7) % 80000 + (i % 3) * 60) AS at,
                 ((i * 37) % 5000)::int4 AS ms,
                 i % 97 = 0 AS pending) AS r",
            &[&now, &n],
        )
        .await
        .expect("bulk insert");
}

/// (detail rows, sum of summary attempt counts, sum of daily request counts).
async fn counts(db: &TestDb) -> (i64, i64, i64) {
    let row = db
        .client
        .query_one(
            "SELECT (SELECT count(*) FROM communication_traces),
                    (SELECT coalesce(sum(attempt_count), 0)::int8 FROM communication_trace_summaries),
                    (SELECT coalesce(sum(request_count), 0)::int8 FROM communication_trace_daily)",
            &[],
        )
        .await
        .expect("counts");
    (row.get(0), row.get(1), row.get(2))
}

/// Both archive tables as text (everything but `archived_at`, the wall-clock merge time).
async fn archive_snapshot(db: &TestDb) -> String {
    let row = db
        .client
        .query_one(
            "SELECT
                (SELECT coalesce(string_agg(s::text, E'\\n' ORDER BY s.trace_id), '')
                 FROM (SELECT trace_id, workflow_id, user_id, source_service, destination_service,
                           action, execution_id, n8n_execution_id, attempt_count,
                           final_attempt_number, final_status, final_error_code,
                           first_requested_at, last_requested_at, last_responded_at,
                           total_duration_ms
                       FROM communication_trace_summaries) AS s)
                || E'\\n--\\n' ||
                (SELECT coalesce(string_agg(d::text, E'\\n'
                     ORDER BY d.day, d.workflow_id, d.source_service, d.destination_service,
                              d.status), '')
                 FROM communication_trace_daily AS d)",
            &[],
        )
        .await
        .expect("snapshot");
    row.get(0)
}

async fn summary(db: &TestDb, trace: &str) -> tokio_postgres::Row {
    db.client
        .query_one(
            "SELECT * FROM communication_trace_summaries WHERE trace_id = $1",
            &[&trace],
        )
        .await
        .unwrap_or_else(|e| panic!("summary of {trace}: {e}"))
}

#[tokio::test]
async fn cutoff_boundary_archives_only_rows_older_than_detail_days() {
    let db = TestDb::new().await;
    let pool = migrated_pool(&db).await;
    let cutoff = t0() - days(30);
    let us = TimeDelta::microseconds(1);
    Attempt::new("outside", 1, cutoff - us).insert(&db).await;
    Attempt::new("at-cutoff", 1, cutoff).insert(&db).await;
    Attempt::new("inside", 1, cutoff + us).insert(&db).await;

    let r = run(&pool, &policy(30, None, 100), t0()).await;
    assert_eq!(r.detail_cutoff, cutoff);
    assert_eq!(
        (r.archived, r.summaries_created, r.daily_created),
        (1, 1, 1)
    );
    let kept: Vec<String> = db
        .rows("SELECT trace_id FROM communication_traces ORDER BY requested_at")
        .await
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(kept, ["at-cutoff", "inside"]);
    let s = summary(&db, "outside").await;
    assert_eq!(s.get::<_, i32>("attempt_count"), 1);
    assert_eq!(s.get::<_, NaiveDateTime>("first_requested_at"), cutoff - us);

    // One microsecond later, the row exactly at the old cutoff is older than 30 days.
    let r = run(&pool, &policy(30, None, 100), t0() + us).await;
    assert_eq!(r.archived, 1);
    assert_eq!(counts(&db).await, (1, 2, 2));
}

#[tokio::test]
async fn trace_straddling_the_cutoff_is_archived_in_two_runs_into_one_summary() {
    let db = TestDb::new().await;
    let pool = migrated_pool(&db).await;
    let cfg = policy(30, None, 100);
    let trace = "straddle";
    let mut a1 = Attempt::new(trace, 1, t0() - days(40)).failed("HTTP_502");
    a1.duration_ms = Some(120);
    a1.insert(&db).await;
    Attempt::new(trace, 2, t0() - days(35))
        .failed("TIMEOUT")
        .duration(5_000)
        .insert(&db)
        .await;
    let mut a3 = Attempt::new(trace, 3, t0() - days(10)).duration(80);
    a3.n8n_execution_id = Some("n8n-3");
    a3.user = "someone-else";
    a3.insert(&db).await;

    let r = run(&pool, &cfg, t0()).await;
    assert_eq!(
        (r.archived, r.summaries_created, r.summaries_merged),
        (2, 1, 0)
    );
    let s = summary(&db, trace).await;
    assert_eq!(s.get::<_, i32>("attempt_count"), 2);
    assert_eq!(s.get::<_, &str>("final_status"), "failed");
    assert_eq!(
        s.get::<_, Option<&str>>("final_error_code"),
        Some("TIMEOUT")
    );
    assert_eq!(s.get::<_, i64>("total_duration_ms"), 5_120);
    assert_eq!(counts(&db).await, (1, 2, 2));

    // 25 days later the third attempt ages out too: merged into the same summary.
    let r = run(&pool, &cfg, t0() + days(25)).await;
    assert_eq!(
        (r.archived, r.summaries_created, r.summaries_merged),
        (1, 0, 1)
    );
    let rows = db
        .rows("SELECT count(*) FROM communication_trace_summaries")
        .await;
    assert_eq!(rows[0].get::<_, i64>(0), 1, "one summary per trace");
    let s = summary(&db, trace).await;
    assert_eq!(s.get::<_, i32>("attempt_count"), 3);
    assert_eq!(s.get::<_, &str>("final_status"), "success");
    assert_eq!(s.get::<_, Option<&str>>("final_error_code"), None);
    assert_eq!(s.get::<_, i32>("final_attempt_number"), 3);
    assert_eq!(s.get::<_, i64>("total_duration_ms"), 5_200);
    assert_eq!(
        s.get::<_, NaiveDateTime>("first_requested_at"),
        t0() - days(40)
    );
    assert_eq!(
        s.get::<_, NaiveDateTime>("last_requested_at"),
        t0() - days(10)
    );
    assert_eq!(
        s.get::<_, Option<NaiveDateTime>>("last_responded_at"),
        Some(t0() - days(10) + TimeDelta::milliseconds(80))
    );
    assert_eq!(s.get::<_, &str>("user_id"), "user-1", "the first attempt's");
    assert_eq!(s.get::<_, Option<&str>>("n8n_execution_id"), Some("n8n-3"));
    assert_eq!(counts(&db).await, (0, 3, 3));

    // The proxy numbers a later retry from the attempts still in detail, i.e. from 1 again:
    // the latest attempt is the latest by time, not the highest number.
    Attempt::new(trace, 1, t0() - days(5))
        .failed("HTTP_500")
        .insert(&db)
        .await;
    run(&pool, &cfg, t0() + days(30)).await;
    let s = summary(&db, trace).await;
    assert_eq!(s.get::<_, i32>("attempt_count"), 4);
    assert_eq!(s.get::<_, &str>("final_status"), "failed");
    assert_eq!(
        s.get::<_, Option<&str>>("final_error_code"),
        Some("HTTP_500")
    );
    assert_eq!(s.get::<_, i32>("final_attempt_number"), 1);
    assert_eq!(counts(&db).await, (0, 4, 4));
}

#[tokio::test]
async fn old_pending_rows_are_resolved_as_failed_never_archived_as_pending() {
    let db = TestDb::new().await;
    let pool = migrated_pool(&db).await;
    Attempt::new("old-pending", 1, t0() - days(31))
        .status("pending")
        .insert(&db)
        .await;
    Attempt::new("old-streaming", 1, t0() - days(40))
        .status("in_progress")
        .insert(&db)
        .await;
    Attempt::new("old-done", 1, t0() - days(40))
        .insert(&db)
        .await;
    Attempt::new("recent-pending", 1, t0() - days(1))
        .status("pending")
        .insert(&db)
        .await;

    // A dry run says what would happen, and changes nothing.
    let before = db
        .rows("SELECT string_agg(t::text, E'\\n' ORDER BY id) FROM communication_traces t")
        .await[0]
        .get::<_, String>(0);
    let dry = retention::run_once(&pool, &policy(30, None, 100), t0(), true)
        .await
        .expect("dry run");
    assert!(dry.dry_run);
    assert_eq!((dry.resolved, dry.archived), (2, 3));
    assert_eq!((dry.summaries_created, dry.daily_created), (3, 3));
    let after = db
        .rows("SELECT string_agg(t::text, E'\\n' ORDER BY id) FROM communication_traces t")
        .await[0]
        .get::<_, String>(0);
    assert_eq!(before, after, "a dry run changes nothing");
    assert_eq!(archive_snapshot(&db).await, "\n--\n");

    let r = run(&pool, &policy(30, None, 100), t0()).await;
    assert_eq!((r.resolved, r.archived), (2, 3));
    for trace in ["old-pending", "old-streaming"] {
        let s = summary(&db, trace).await;
        assert_eq!(s.get::<_, &str>("final_status"), "failed", "{trace}");
        assert_eq!(
            s.get::<_, Option<&str>>("final_error_code"),
            Some(OUTCOME_UNKNOWN),
            "{trace}"
        );
    }
    let statuses: Vec<(String, i64, i64, i64)> = db
        .rows(
            "SELECT status, sum(request_count)::int8, sum(failure_count)::int8,
                    sum(duration_count)::int8
             FROM communication_trace_daily GROUP BY status ORDER BY status",
        )
        .await
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(
        statuses,
        [
            ("failed".to_owned(), 2, 2, 0),
            ("success".to_owned(), 1, 0, 1)
        ],
        "no pending/in_progress day rows; unknown outcomes have no duration"
    );
    let recent = db.trace_rows("recent-pending").await;
    assert_eq!(recent[0].get::<_, &str>("overall_status"), "pending");
}

#[tokio::test]
async fn rerunning_changes_nothing_and_batching_does_not_change_the_result() {
    let (small, whole) = (TestDb::new().await, TestDb::new().await);
    let (pool_small, pool_whole) = (migrated_pool(&small).await, migrated_pool(&whole).await);
    const N: i64 = 2_000;
    bulk_old_rows(&small, t0(), N).await;
    bulk_old_rows(&whole, t0(), N).await;
    Attempt::new("recent", 1, t0() - days(2))
        .insert(&small)
        .await;

    let r = run(&pool_small, &policy(30, None, 7), t0()).await;
    assert_eq!(r.archived, N as u64);
    assert!(r.batches >= (N as u64) / 7, "{r:?}");
    assert!(
        r.summaries_merged > 0,
        "batches split traces, so merging was exercised: {r:?}"
    );
    assert_eq!(counts(&small).await, (1, N, N));
    let first = archive_snapshot(&small).await;

    // Idempotent: the same pass again finds nothing and changes nothing.
    let again = run(&pool_small, &policy(30, None, 7), t0()).await;
    assert!(!again.changed_anything(), "{again:?}");
    assert_eq!(
        (again.summaries_merged, again.daily_merged, again.batches),
        (0, 0, 0)
    );
    assert_eq!(archive_snapshot(&small).await, first);

    // 7-row batches merged across hundreds of commits give exactly what one batch gives.
    let r = run(&pool_whole, &policy(30, None, 100_000), t0()).await;
    assert_eq!((r.archived, r.batches), (N as u64, 1));
    assert_eq!(archive_snapshot(&whole).await, first);
}

#[tokio::test]
async fn summaries_older_than_summary_days_are_deleted() {
    let db = TestDb::new().await;
    let pool = migrated_pool(&db).await;
    Attempt::new("ancient", 1, t0() - days(400))
        .insert(&db)
        .await;
    Attempt::new("old", 1, t0() - days(100)).insert(&db).await;
    let r = run(&pool, &policy(30, Some(365), 1), t0()).await;
    assert_eq!((r.archived, r.summaries_expired), (2, 1));
    let left: Vec<String> = db
        .rows("SELECT trace_id FROM communication_trace_summaries")
        .await
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(left, ["old"]);
    // Daily rows stay: they hold no user data and are what long-term trends are made of.
    assert_eq!(counts(&db).await, (0, 1, 2));
    let again = run(&pool, &policy(30, Some(365), 1), t0()).await;
    assert!(!again.changed_anything(), "{again:?}");
}

/// The pid of the session holding this schema's retention lock, if any.
async fn lock_holder(db: &TestDb) -> Option<i32> {
    db.client
        .query_opt(
            "SELECT pid FROM pg_locks
             WHERE locktype = 'advisory' AND granted AND objsubid = 1
               AND classid = $1::int8::oid
               AND objid = 'communication_traces'::regclass::oid",
            &[&i64::from(LOCK_CLASS)],
        )
        .await
        .expect("pg_locks")
        .map(|r| r.get(0))
}

// Multi-threaded: if an assertion fails while a pass is mid-transaction, the pass still gets to
// finish its batch, so dropping the test schema does not wait on it forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_killed_mid_run_loses_no_count_and_the_next_one_finishes() {
    let db = TestDb::new().await;
    let pool = migrated_pool(&db).await;
    const N: i64 = 20_000;
    bulk_old_rows(&db, t0(), N).await;
    let cfg = policy(30, None, 20);
    let task = {
        let (pool, cfg) = (pool.clone(), cfg.clone());
        tokio::spawn(async move { retention::run_once(&pool, &cfg, t0(), false).await })
    };
    // Wait until some batches have committed, then kill the session wherever it is.
    let deadline = Instant::now() + Duration::from_secs(30);
    let pid = loop {
        let archived = counts(&db).await.1;
        if archived > 0 {
            if let Some(pid) = lock_holder(&db).await {
                break pid;
            }
        }
        assert!(Instant::now() < deadline, "the pass never got going");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    db.client
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .expect("terminate");
    let outcome = task.await.expect("task");
    assert!(
        matches!(outcome, Err(RetentionError::Db { .. })),
        "the pass was killed mid-run: {outcome:?}"
    );
    let (detail, summarized, daily) = counts(&db).await;
    assert!(
        detail > 0 && summarized > 0,
        "killed mid-run: {detail} left"
    );
    assert_eq!(detail + summarized, N, "no row lost or counted twice");
    assert_eq!(summarized, daily);
    // pg_terminate_backend only signals: the backend releases its locks as it exits.
    let deadline = Instant::now() + Duration::from_secs(5);
    while lock_holder(&db).await.is_some() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        lock_holder(&db).await,
        None,
        "the lock died with the session"
    );

    let r = run(&pool, &cfg, t0()).await;
    assert_eq!(r.archived, detail as u64);
    assert_eq!(counts(&db).await, (0, N, N));
}

#[tokio::test]
async fn a_pass_skips_while_another_holds_the_lock() {
    let db = TestDb::new().await;
    let pool = migrated_pool(&db).await;
    Attempt::new("old", 1, t0() - days(40)).insert(&db).await;
    let other = connect(&db.url()).await;
    let key = "($1::int8 << 32) | 'communication_traces'::regclass::oid::int8";
    let locked: bool = other
        .query_one(
            &format!("SELECT pg_try_advisory_lock({key})"),
            &[&i64::from(LOCK_CLASS)],
        )
        .await
        .expect("lock")
        .get(0);
    assert!(locked);
    let busy = retention::run_once(&pool, &policy(30, None, 100), t0(), false).await;
    assert!(matches!(busy, Err(RetentionError::Busy)), "{busy:?}");
    assert_eq!(counts(&db).await, (1, 0, 0), "nothing done");
    other
        .execute(
            &format!("SELECT pg_advisory_unlock({key})"),
            &[&i64::from(LOCK_CLASS)],
        )
        .await
        .expect("unlock");
    let r = run(&pool, &policy(30, None, 100), t0()).await;
    assert_eq!(r.archived, 1);
}

// Multi-threaded: if an assertion fails while a pass is mid-transaction, the pass still gets to
// finish its batch, so dropping the test schema does not wait on it forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_traffic_flows_while_a_pass_archives() {
    let db = TestDb::new().await;
    let up = upstream(|_req| async { Response::new(full(r#"{"ok":true}"#)) }).await;
    let proxy = Proxy::start(&config(&db, up, "[retention]\ninterval_secs = 0\n")).await;
    wait_for_migrations(&db).await;
    let pool = migrated_pool(&db).await;
    const OLD: i64 = 30_000;
    let now = trace_proxy::trace::now_utc();
    bulk_old_rows(&db, now, OLD).await;

    let started = Instant::now();
    let pass = {
        let pool = pool.clone();
        tokio::spawn(async move {
            let r = retention::run_once(&pool, &policy(30, None, 200), now, false).await;
            (r, started.elapsed())
        })
    };
    const REQUESTS: usize = 200;
    let url = proxy.url("/webhook/during-retention");
    let mut senders = Vec::new();
    for worker in 0..8 {
        let url = url.clone();
        senders.push(tokio::spawn(async move {
            let mut done = Vec::new();
            for i in 0..REQUESTS / 8 {
                let sent = Instant::now();
                let (parts, _) =
                    send(post(&url, &format!("live-{worker}-{i}"), r#"{"n":1}"#)).await;
                done.push((parts.status.as_u16(), sent.elapsed(), started.elapsed()));
            }
            done
        }));
    }
    let mut answers = Vec::new();
    for s in senders {
        answers.extend(s.await.expect("sender"));
    }
    let (report, pass_took) = pass.await.expect("pass");
    let report = report.expect("retention pass");
    assert!(answers.iter().all(|(status, _, _)| *status == 200));
    let during = answers.iter().filter(|(_, _, at)| *at < pass_took).count();
    assert!(
        during > 0,
        "some requests completed while the pass ran ({pass_took:?})"
    );
    let slowest = answers.iter().map(|(_, took, _)| *took).max();
    assert_eq!(report.archived, OLD as u64);
    assert_eq!(proxy.metrics.snapshot().rejected_unavailable, 0);

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let rows = db
            .rows(
                "SELECT count(*) FILTER (WHERE overall_status = 'success'), count(*)
                 FROM communication_traces",
            )
            .await;
        let (success, all): (i64, i64) = (rows[0].get(0), rows[0].get(1));
        if success == REQUESTS as i64 {
            assert_eq!(all, REQUESTS as i64, "only the live rows are left");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{success} of {REQUESTS} live rows final"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(counts(&db).await, (REQUESTS as i64, OLD, OLD));
    eprintln!("retention pass {pass_took:?}; {during} requests during it; slowest {slowest:?}");
    proxy.stop().await;
}

// Multi-threaded: if an assertion fails while a pass is mid-transaction, the pass still gets to
// finish its batch, so dropping the test schema does not wait on it forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_proxies_archive_on_their_interval_and_never_double_count() {
    let db = TestDb::new().await;
    let pool = migrated_pool(&db).await;
    const OLD: i64 = 3_000;
    bulk_old_rows(&db, trace_proxy::trace::now_utc(), OLD).await;
    let up = upstream(|_req| async { Response::new(full("{}")) }).await;
    let extra = "[retention]\ninterval_secs = 1\nbatch_size = 50\n";
    let first = Proxy::start(&config(&db, up, extra)).await;
    let second = Proxy::start(&config(&db, up, extra)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (detail, summarized, daily) = counts(&db).await;
        assert_eq!(detail + summarized, OLD, "never lost or double counted");
        assert_eq!(summarized, daily);
        if detail == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{detail} rows still not archived"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(pool);
    first.stop().await;
    second.stop().await;
}

#[tokio::test]
async fn daily_percentiles_are_recomputed_from_histograms_merged_across_runs() {
    let db = TestDb::new().await;
    let pool = migrated_pool(&db).await;
    let day = t0() - days(40);
    let morning = day.date().and_hms_opt(1, 0, 0).expect("time");
    let evening = day.date().and_hms_opt(23, 0, 0).expect("time");
    // Durations 1..=100 ms: odd ones in the morning, even ones in the evening, so the day is
    // archived in two runs; plus one unresolved attempt without a duration.
    for ms in 1..=100 {
        let at = if ms % 2 == 1 { morning } else { evening };
        Attempt::new(
            &format!("p-{ms}"),
            1,
            at + TimeDelta::seconds(i64::from(ms)),
        )
        .duration(ms)
        .insert(&db)
        .await;
    }
    // First run: the cutoff falls at noon of that day.
    let noon = day.date().and_hms_opt(12, 0, 0).expect("time");
    let r = run(&pool, &policy(30, None, 16), noon + days(30)).await;
    assert_eq!(r.archived, 50);
    let r = run(&pool, &policy(30, None, 16), t0()).await;
    assert_eq!(r.archived, 50);
    assert!(r.daily_merged > 0);
    let row = db
        .client
        .query_one(
            "SELECT request_count, failure_count, duration_count, total_duration_ms,
                    max_duration_ms, p50_duration_ms, p95_duration_ms
             FROM communication_trace_daily",
            &[],
        )
        .await
        .expect("one daily row for the day");
    let got: (i64, i64, i64, i64, Option<i32>, Option<i32>, Option<i32>) = (
        row.get(0),
        row.get(1),
        row.get(2),
        row.get(3),
        row.get(4),
        row.get(5),
        row.get(6),
    );
    // True p50 = 50 ms, p95 = 95 ms. Reported: the top of the bucket holding it (bucket width
    // <= 19%), never below the truth, capped at the maximum.
    assert_eq!(got, (100, 0, 100, 5_050, Some(100), Some(53), Some(100)));
    let (p50, p95) = (got.5.unwrap_or(0), got.6.unwrap_or(0));
    assert!((50..=59).contains(&p50) && (95..=100).contains(&p95));

    // Any period: the next day holds 101..=200 ms; summed, the two days' histograms give the
    // percentiles of 1..=200 (true p50 = 100 -> bucket top 107; p95 = 190 -> capped at 200).
    for ms in 101..=200 {
        Attempt::new(&format!("q-{ms}"), 1, morning + days(1))
            .duration(ms)
            .insert(&db)
            .await;
    }
    run(&pool, &policy(30, None, 16), t0()).await;
    let row = db
        .client
        .query_one(
            "SELECT sum(request_count)::int8,
                 trace_proxy_histogram_quantile(trace_proxy_histogram_sum(duration_histogram),
                     0.5, max(max_duration_ms)),
                 trace_proxy_histogram_quantile(trace_proxy_histogram_sum(duration_histogram),
                     0.95, max(max_duration_ms))
             FROM communication_trace_daily
             WHERE workflow_id = 'order-flow'",
            &[],
        )
        .await
        .expect("percentiles over two days");
    let got: (i64, Option<i32>, Option<i32>) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(got, (200, Some(107), Some(200)));
}
