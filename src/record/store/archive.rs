//! D5 retention's statements and passes: moves `communication_traces` rows older than
//! `retention.detail_days` into the archive tables `communication_trace_summaries` (one row per
//! trace) and `communication_trace_daily` (one row per UTC day × workflow × route × status), and
//! deletes summaries older than `retention.summary_days`. The schedule a running proxy keeps is
//! `crate::retention`. Tables and SQL helpers: `sql/0004_retention_archive.sql`.
//!
//! One pass, in order:
//! 1. **resolve**: rows that old still `pending`/`in_progress` become `failed` with
//!    [`OUTCOME_UNKNOWN`], so nothing is archived as pending;
//! 2. **archive**: oldest first, `batch_size` rows at a time, each batch ONE statement in ONE
//!    transaction that deletes the rows and folds them into both tables, so
//!    `count(detail) + sum(summaries.attempt_count)` is the same before and after every commit,
//!    whenever the job is killed. Rows are picked with `FOR UPDATE SKIP LOCKED` through the
//!    `requested_at` index: the proxy's inserts and final updates (other rows) never wait on it,
//!    and a row the proxy is updating right now is simply left for the next pass. Each batch
//!    starts where the previous one ended (keyset on `requested_at`), so a pass never rescans the
//!    dead index entries its own deletes left behind. The client only receives one row of counts
//!    per batch, so memory stays flat whatever the backlog;
//! 3. **expire**: summaries whose last attempt is older than `summary_days` (if not 0).
//!
//! A pass holds a session advisory lock keyed on the `communication_traces` table, so only one
//! proxy replica (or `trace-proxy retention run`) works at a time; others skip their turn.
//! Re-running a pass as of the same time changes nothing.

use std::fmt;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use chrono::{NaiveDate, NaiveDateTime, SubsecRound, TimeDelta};
use deadpool_postgres::{Object, Pool};
use tokio_util::sync::CancellationToken;

use crate::config::RetentionConfig;

use super::unresolved::resolve_set;
pub use super::unresolved::OUTCOME_UNKNOWN;

/// High 32 bits of the advisory lock key; the low 32 bits are the OID of `communication_traces`,
/// so passes over different tables (e.g. schemas) never exclude each other.
pub const LOCK_CLASS: u32 = 0x5245_544e; // "RETN"

/// Per batch transaction: pooled connections carry a short `statement_timeout` meant for the
/// proxy's own statements; a batch may take longer on a busy server, but never unbounded.
/// `synchronous_commit = off` is safe here: a crash can lose only whole recent batches (the
/// delete together with its archive rows), which the next pass simply does again.
const BATCH_SETTINGS: &str = "SET LOCAL statement_timeout = '120s';
SET LOCAL lock_timeout = '10s';
SET LOCAL synchronous_commit = off";

/// Start of the keyset scans: PostgreSQL's `timestamp` range begins in 4714 BC.
fn floor_timestamp() -> NaiveDateTime {
    NaiveDate::from_ymd_opt(-4712, 1, 1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .unwrap_or(NaiveDateTime::MIN)
}

const LOCK: &str =
    "SELECT pg_try_advisory_lock(($1::int8 << 32) | 'communication_traces'::regclass::oid::int8)";
const UNLOCK: &str =
    "SELECT pg_advisory_unlock(($1::int8 << 32) | 'communication_traces'::regclass::oid::int8)";

/// Step 1, one batch. `$1` detail cutoff, `$2` batch size.
static RESOLVE: LazyLock<String> = LazyLock::new(|| {
    let set = resolve_set(
        "'No outcome was recorded: the attempt was still ' || t.overall_status
            || ' when it aged out of the detail retention period.'",
        false,
    );
    format!(
        "
WITH resolved AS (
    UPDATE communication_traces AS t
    SET {set}
    WHERE t.id IN (
        SELECT id FROM communication_traces
        WHERE requested_at < $1 AND overall_status IN ('pending', 'in_progress')
        LIMIT $2
        FOR UPDATE SKIP LOCKED)
    RETURNING 1
)
SELECT count(*) FROM resolved"
    )
});

/// Step 2, one batch. `$1` detail cutoff, `$2` keyset lower bound (inclusive: rows sharing the
/// previous batch's last timestamp are seen again), `$3` batch size.
///
/// Summaries merge: counts and durations add up; identity columns come from the earliest attempt
/// (`action`, `execution_id`: the earliest non-null), `final_*` from the latest one by
/// (`requested_at`, `attempt_number`) — not by attempt number alone, which restarts at 1 when a
/// trace's earlier attempts were already archived. Daily rows merge their duration histograms;
/// p50/p95 are generated columns recomputed from the merged histogram.
const ARCHIVE: &str = "
WITH batch AS (
    SELECT ctid FROM communication_traces
    WHERE requested_at >= $2 AND requested_at < $1
    ORDER BY requested_at
    LIMIT $3
    FOR UPDATE SKIP LOCKED
),
gone AS (
    -- By ctid: the rows are locked, so they stay where they are until this delete.
    DELETE FROM communication_traces AS t
    WHERE t.ctid = ANY (ARRAY(SELECT ctid FROM batch))
    RETURNING t.trace_id, t.execution_id, t.attempt_number, t.source_service,
        t.destination_service, t.workflow_id, t.action, t.user_id, t.requested_at,
        t.responded_at, t.duration_ms, t.n8n_execution_id,
        t.overall_status IN ('pending', 'in_progress') AS unresolved,
        CASE WHEN t.overall_status IN ('pending', 'in_progress') THEN 'failed'
             ELSE t.overall_status END AS status,
        CASE WHEN t.overall_status IN ('pending', 'in_progress') THEN $4
             ELSE t.error_code END AS final_error_code
),
traces AS (
    SELECT * FROM (
        SELECT trace_id,
            row_number() OVER w AS position,
            first_value(workflow_id) OVER w AS workflow_id,
            first_value(user_id) OVER w AS user_id,
            first_value(source_service) OVER w AS source_service,
            first_value(destination_service) OVER w AS destination_service,
            (array_agg(action) FILTER (WHERE action IS NOT NULL) OVER w)[1] AS action,
            (array_agg(execution_id) FILTER (WHERE execution_id IS NOT NULL) OVER w)[1]
                AS execution_id,
            (array_agg(n8n_execution_id) FILTER (WHERE n8n_execution_id IS NOT NULL) OVER w)
                AS n8n_execution_ids,
            count(*) OVER w AS attempt_count,
            last_value(attempt_number) OVER w AS final_attempt_number,
            last_value(status) OVER w AS final_status,
            last_value(final_error_code) OVER w AS final_error_code,
            first_value(requested_at) OVER w AS first_requested_at,
            last_value(requested_at) OVER w AS last_requested_at,
            max(responded_at) OVER w AS last_responded_at,
            coalesce(sum(duration_ms) OVER w, 0) AS total_duration_ms
        FROM gone
        WINDOW w AS (PARTITION BY trace_id ORDER BY requested_at, attempt_number
            ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)
    ) AS per_attempt
    WHERE position = 1
),
summaries AS (
    INSERT INTO communication_trace_summaries AS s (
        trace_id, workflow_id, user_id, source_service, destination_service, action,
        execution_id, n8n_execution_id, attempt_count, final_attempt_number, final_status,
        final_error_code, first_requested_at, last_requested_at, last_responded_at,
        total_duration_ms, archived_at)
    SELECT trace_id, workflow_id, user_id, source_service, destination_service, action,
        execution_id, n8n_execution_ids[array_upper(n8n_execution_ids, 1)], attempt_count,
        final_attempt_number, final_status, final_error_code, first_requested_at,
        last_requested_at, last_responded_at, total_duration_ms, (now() AT TIME ZONE 'UTC')
    FROM traces
    ORDER BY trace_id
    ON CONFLICT (trace_id) DO UPDATE SET
        workflow_id = CASE WHEN EXCLUDED.first_requested_at < s.first_requested_at
            THEN EXCLUDED.workflow_id ELSE s.workflow_id END,
        user_id = CASE WHEN EXCLUDED.first_requested_at < s.first_requested_at
            THEN EXCLUDED.user_id ELSE s.user_id END,
        source_service = CASE WHEN EXCLUDED.first_requested_at < s.first_requested_at
            THEN EXCLUDED.source_service ELSE s.source_service END,
        destination_service = CASE WHEN EXCLUDED.first_requested_at < s.first_requested_at
            THEN EXCLUDED.destination_service ELSE s.destination_service END,
        action = CASE WHEN EXCLUDED.first_requested_at < s.first_requested_at
            THEN coalesce(EXCLUDED.action, s.action) ELSE coalesce(s.action, EXCLUDED.action) END,
        execution_id = CASE WHEN EXCLUDED.first_requested_at < s.first_requested_at
            THEN coalesce(EXCLUDED.execution_id, s.execution_id)
            ELSE coalesce(s.execution_id, EXCLUDED.execution_id) END,
        n8n_execution_id = CASE
            WHEN (EXCLUDED.last_requested_at, EXCLUDED.final_attempt_number)
                >= (s.last_requested_at, s.final_attempt_number)
            THEN coalesce(EXCLUDED.n8n_execution_id, s.n8n_execution_id)
            ELSE coalesce(s.n8n_execution_id, EXCLUDED.n8n_execution_id) END,
        attempt_count = s.attempt_count + EXCLUDED.attempt_count,
        final_attempt_number = CASE
            WHEN (EXCLUDED.last_requested_at, EXCLUDED.final_attempt_number)
                >= (s.last_requested_at, s.final_attempt_number)
            THEN EXCLUDED.final_attempt_number ELSE s.final_attempt_number END,
        final_status = CASE
            WHEN (EXCLUDED.last_requested_at, EXCLUDED.final_attempt_number)
                >= (s.last_requested_at, s.final_attempt_number)
            THEN EXCLUDED.final_status ELSE s.final_status END,
        final_error_code = CASE
            WHEN (EXCLUDED.last_requested_at, EXCLUDED.final_attempt_number)
                >= (s.last_requested_at, s.final_attempt_number)
            THEN EXCLUDED.final_error_code ELSE s.final_error_code END,
        first_requested_at = LEAST(s.first_requested_at, EXCLUDED.first_requested_at),
        last_requested_at = GREATEST(s.last_requested_at, EXCLUDED.last_requested_at),
        last_responded_at = GREATEST(s.last_responded_at, EXCLUDED.last_responded_at),
        total_duration_ms = s.total_duration_ms + EXCLUDED.total_duration_ms,
        archived_at = EXCLUDED.archived_at
    RETURNING (xmax = 0) AS created
),
day_buckets AS (
    SELECT requested_at::date AS day, workflow_id, source_service, destination_service, status,
        trace_proxy_duration_bucket(duration_ms) AS bucket, count(*) AS n
    FROM gone
    WHERE duration_ms IS NOT NULL
    GROUP BY 1, 2, 3, 4, 5, 6
),
day_hists AS (
    SELECT day, workflow_id, source_service, destination_service, status,
        trace_proxy_histogram(array_agg(bucket), array_agg(n)) AS histogram
    FROM day_buckets
    GROUP BY 1, 2, 3, 4, 5
),
days AS (
    SELECT requested_at::date AS day, workflow_id, source_service, destination_service, status,
        count(*) AS request_count,
        count(*) FILTER (WHERE status = 'failed') AS failure_count,
        count(duration_ms) AS duration_count,
        coalesce(sum(duration_ms), 0)::int8 AS total_duration_ms,
        max(duration_ms) AS max_duration_ms
    FROM gone
    GROUP BY 1, 2, 3, 4, 5
),
daily AS (
    INSERT INTO communication_trace_daily AS d (
        day, workflow_id, source_service, destination_service, status, request_count,
        failure_count, duration_count, total_duration_ms, max_duration_ms, duration_histogram)
    SELECT x.day, x.workflow_id, x.source_service, x.destination_service, x.status,
        x.request_count, x.failure_count, x.duration_count, x.total_duration_ms,
        x.max_duration_ms, coalesce(h.histogram, '{}')
    FROM days AS x
    LEFT JOIN day_hists AS h
        USING (day, workflow_id, source_service, destination_service, status)
    ORDER BY 1, 2, 3, 4, 5
    ON CONFLICT (day, workflow_id, source_service, destination_service, status) DO UPDATE SET
        request_count = d.request_count + EXCLUDED.request_count,
        failure_count = d.failure_count + EXCLUDED.failure_count,
        duration_count = d.duration_count + EXCLUDED.duration_count,
        total_duration_ms = d.total_duration_ms + EXCLUDED.total_duration_ms,
        max_duration_ms = GREATEST(d.max_duration_ms, EXCLUDED.max_duration_ms),
        duration_histogram =
            trace_proxy_histogram_add(d.duration_histogram, EXCLUDED.duration_histogram)
    RETURNING (xmax = 0) AS created
)
SELECT
    (SELECT count(*) FROM gone),
    (SELECT count(*) FROM gone WHERE unresolved),
    (SELECT max(requested_at) FROM gone),
    (SELECT count(*) FROM summaries WHERE created),
    (SELECT count(*) FROM summaries WHERE NOT created),
    (SELECT count(*) FROM daily WHERE created),
    (SELECT count(*) FROM daily WHERE NOT created)";

/// Step 3, one batch. `$1` summary cutoff, `$2` keyset lower bound, `$3` batch size.
const EXPIRE: &str = "
WITH doomed AS (
    SELECT trace_id FROM communication_trace_summaries
    WHERE last_requested_at >= $2 AND last_requested_at < $1
    ORDER BY last_requested_at
    LIMIT $3
    FOR UPDATE SKIP LOCKED
),
gone AS (
    DELETE FROM communication_trace_summaries AS s USING doomed
    WHERE s.trace_id = doomed.trace_id
    RETURNING s.last_requested_at
)
SELECT count(*), max(last_requested_at) FROM gone";

/// What a pass would do, in one read-only snapshot. `$1` detail cutoff, `$2` summary cutoff
/// (NULL: summaries are kept forever).
const DRY_RUN: &str = "
WITH old AS (
    SELECT trace_id, requested_at, workflow_id, source_service, destination_service,
        overall_status IN ('pending', 'in_progress') AS unresolved,
        CASE WHEN overall_status IN ('pending', 'in_progress') THEN 'failed'
             ELSE overall_status END AS status
    FROM communication_traces
    WHERE requested_at < $1
),
traces AS (
    SELECT trace_id, max(requested_at) AS last_requested_at FROM old GROUP BY trace_id
),
groups AS (
    SELECT DISTINCT requested_at::date AS day, workflow_id, source_service,
        destination_service, status
    FROM old
),
known AS (
    SELECT t.trace_id, t.last_requested_at, s.trace_id IS NOT NULL AS merged,
        GREATEST(t.last_requested_at, s.last_requested_at) AS merged_last
    FROM traces AS t
    LEFT JOIN communication_trace_summaries AS s USING (trace_id)
),
known_days AS (
    SELECT EXISTS (
        SELECT 1 FROM communication_trace_daily AS d
        WHERE (d.day, d.workflow_id, d.source_service, d.destination_service, d.status)
            = (g.day, g.workflow_id, g.source_service, g.destination_service, g.status)
    ) AS merged
    FROM groups AS g
)
SELECT
    (SELECT count(*) FROM old WHERE unresolved),
    (SELECT count(*) FROM old),
    (SELECT count(*) FROM known WHERE NOT merged),
    (SELECT count(*) FROM known WHERE merged),
    (SELECT count(*) FROM known_days WHERE NOT merged),
    (SELECT count(*) FROM known_days WHERE merged),
    CASE WHEN $2::timestamp IS NULL THEN 0 ELSE
        (SELECT count(*) FROM known WHERE merged_last < $2)
        + (SELECT count(*) FROM communication_trace_summaries AS s
           WHERE s.last_requested_at < $2
             AND NOT EXISTS (SELECT 1 FROM traces AS t WHERE t.trace_id = s.trace_id))
    END";

/// Why a pass stopped. Every batch is atomic, so after any of these a pass can simply be run
/// again; [`RetentionError::Busy`] means "later", the others usually need the database fixed.
#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    /// Another replica (or a `trace-proxy retention run`) is in the middle of a pass.
    #[error("another retention pass holds the lock (another replica or `trace-proxy retention run`); nothing done")]
    Busy,
    #[error("cannot get a database connection")]
    Pool(#[source] deadpool_postgres::PoolError),
    /// A statement failed; every batch committed before it stays committed, and consistent.
    #[error("retention {step} failed (committed before the failure: {done})")]
    Db {
        step: &'static str,
        done: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("{0} minus the retention period is outside the supported time range")]
    OutOfRange(NaiveDateTime),
}

impl RetentionError {
    /// Exit status for the CLI: 75 (EX_TEMPFAIL) when another pass is running, else 1.
    pub fn exit_code(&self) -> u8 {
        match self {
            RetentionError::Busy => 75,
            _ => 1,
        }
    }
}

/// What one pass did (or, for a dry run, would do).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The time the pass acted as of (UTC).
    pub as_of: NaiveDateTime,
    /// Detail rows with `requested_at` before this were archived.
    pub detail_cutoff: NaiveDateTime,
    /// Summaries whose `last_requested_at` is before this were deleted; `None` = kept forever.
    pub summary_cutoff: Option<NaiveDateTime>,
    pub dry_run: bool,
    /// Old rows still `pending`/`in_progress`, marked `failed` / [`OUTCOME_UNKNOWN`].
    pub resolved: u64,
    /// Detail rows folded into the archive tables and deleted.
    pub archived: u64,
    /// Summary rows created (one per trace seen for the first time).
    pub summaries_created: u64,
    /// Updates merging attempts into an existing summary: one per batch that held attempts of
    /// an already summarized trace. A dry run reports the traces that already have a summary.
    pub summaries_merged: u64,
    /// Daily rows created.
    pub daily_created: u64,
    /// Updates merging counts into an existing daily row (one per batch and row); a dry run
    /// reports the daily rows that already exist.
    pub daily_merged: u64,
    pub summaries_expired: u64,
    /// Archive batches committed (0 for a dry run).
    pub batches: u64,
    /// False when the pass was stopped early (proxy shutdown); the rest waits for the next one.
    pub complete: bool,
    pub elapsed: Duration,
}

impl Report {
    fn new(as_of: NaiveDateTime, cutoffs: Cutoffs, dry_run: bool) -> Report {
        Report {
            as_of,
            detail_cutoff: cutoffs.detail,
            summary_cutoff: cutoffs.summary,
            dry_run,
            resolved: 0,
            archived: 0,
            summaries_created: 0,
            summaries_merged: 0,
            daily_created: 0,
            daily_merged: 0,
            summaries_expired: 0,
            batches: 0,
            complete: true,
            elapsed: Duration::ZERO,
        }
    }

    /// True when the pass changed (or would change) something.
    pub fn changed_anything(&self) -> bool {
        self.resolved + self.archived + self.summaries_expired > 0
    }

    fn progress(&self) -> String {
        format!(
            "{} resolved, {} archived in {} batches, {} summaries expired",
            self.resolved, self.archived, self.batches, self.summaries_expired
        )
    }
}

fn rfc3339(t: NaiveDateTime) -> String {
    t.and_utc()
        .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let would = if self.dry_run { "would be " } else { "" };
        writeln!(
            f,
            "retention pass as of {}{}",
            rfc3339(self.as_of),
            if self.dry_run {
                " (dry run: nothing changed)"
            } else {
                ""
            }
        )?;
        writeln!(
            f,
            "  detail cutoff:    rows requested before {} {would}archived and deleted",
            rfc3339(self.detail_cutoff)
        )?;
        match self.summary_cutoff {
            Some(c) => writeln!(
                f,
                "  summary cutoff:   summaries last requested before {} {would}deleted",
                rfc3339(c)
            )?,
            None => writeln!(f, "  summary cutoff:   none (summaries are kept forever)")?,
        }
        writeln!(
            f,
            "  resolved:         {} rows still pending/in_progress -> failed ({OUTCOME_UNKNOWN})",
            self.resolved
        )?;
        if self.dry_run {
            writeln!(f, "  archived:         {} detail rows", self.archived)?;
        } else {
            writeln!(
                f,
                "  archived:         {} detail rows (deleted), in {} batches",
                self.archived, self.batches
            )?;
        }
        let (created, merged) = if self.dry_run {
            ("to create", "existing to merge into")
        } else {
            ("created", "merges into existing rows")
        };
        writeln!(
            f,
            "  summaries:        {} {created}, {} {merged}",
            self.summaries_created, self.summaries_merged
        )?;
        writeln!(
            f,
            "  daily rows:       {} {created}, {} {merged}",
            self.daily_created, self.daily_merged
        )?;
        writeln!(f, "  summaries expired: {} deleted", self.summaries_expired)?;
        if !self.complete {
            writeln!(f, "  stopped early: the rest is left for the next pass")?;
        }
        write!(f, "  elapsed:          {:.3} s", self.elapsed.as_secs_f64())
    }
}

#[derive(Debug, Clone, Copy)]
struct Cutoffs {
    detail: NaiveDateTime,
    summary: Option<NaiveDateTime>,
}

fn cutoffs(config: &RetentionConfig, now: NaiveDateTime) -> Result<Cutoffs, RetentionError> {
    let minus_days = |days: u32| {
        TimeDelta::try_days(i64::from(days))
            .and_then(|d| now.checked_sub_signed(d))
            .filter(|t| *t > floor_timestamp())
            .ok_or(RetentionError::OutOfRange(now))
    };
    Ok(Cutoffs {
        detail: minus_days(config.detail_days)?,
        summary: config.summary_days.map(minus_days).transpose()?,
    })
}

/// One full pass as of `now` (UTC). `dry_run` reports what a pass would do and changes nothing.
/// Returns [`RetentionError::Busy`] when another pass holds the lock.
pub async fn run_once(
    pool: &Pool,
    config: &RetentionConfig,
    now: NaiveDateTime,
    dry_run: bool,
) -> Result<Report, RetentionError> {
    run_until(pool, config, now, dry_run, &CancellationToken::new()).await
}

/// [`run_once`], stopping between batches once `stop` is cancelled.
pub async fn run_until(
    pool: &Pool,
    config: &RetentionConfig,
    now: NaiveDateTime,
    dry_run: bool,
    stop: &CancellationToken,
) -> Result<Report, RetentionError> {
    let started = Instant::now();
    // PostgreSQL keeps microseconds; cut here so the cutoff compared is the cutoff reported.
    let now = now.trunc_subsecs(6);
    let mut report = Report::new(now, cutoffs(config, now)?, dry_run);
    let mut conn = pool.get().await.map_err(RetentionError::Pool)?;
    let class = i64::from(LOCK_CLASS);
    let locked: bool = conn
        .query_one(LOCK, &[&class])
        .await
        .map_err(|e| db_error("lock", e, &report))?
        .get(0);
    if !locked {
        return Err(RetentionError::Busy);
    }
    let result = if dry_run {
        dry_run_counts(&mut conn, &mut report).await
    } else {
        pass(&mut conn, config, &mut report, stop).await
    };
    match result {
        Ok(()) => {
            if conn.query_one(UNLOCK, &[&class]).await.is_err() {
                // Never hand a connection that may still hold the lock back to the pool.
                drop(Object::take(conn));
            }
            report.elapsed = started.elapsed();
            Ok(report)
        }
        Err(e) => {
            // Closing the connection releases the lock and any open transaction server-side.
            drop(Object::take(conn));
            Err(e)
        }
    }
}

fn db_error(step: &'static str, e: tokio_postgres::Error, report: &Report) -> RetentionError {
    RetentionError::Db {
        step,
        done: report.progress(),
        source: e,
    }
}

fn count(row: &tokio_postgres::Row, i: usize) -> u64 {
    u64::try_from(row.get::<_, i64>(i)).unwrap_or(0)
}

async fn pass(
    conn: &mut Object,
    config: &RetentionConfig,
    report: &mut Report,
    stop: &CancellationToken,
) -> Result<(), RetentionError> {
    let limit = i64::from(config.batch_size);
    let detail_cutoff = report.detail_cutoff;

    // 1. resolve
    loop {
        if stop.is_cancelled() {
            report.complete = false;
            return Ok(());
        }
        let row = batch(conn, "resolve", report, &RESOLVE, &[&detail_cutoff, &limit]).await?;
        let resolved = count(&row, 0);
        report.resolved += resolved;
        if resolved < u64::from(config.batch_size) {
            break;
        }
    }

    // 2. archive
    let mut from = floor_timestamp();
    loop {
        if stop.is_cancelled() {
            report.complete = false;
            return Ok(());
        }
        let row = batch(
            conn,
            "archive",
            report,
            ARCHIVE,
            &[&detail_cutoff, &from, &limit, &OUTCOME_UNKNOWN],
        )
        .await?;
        let archived = count(&row, 0);
        report.archived += archived;
        report.resolved += count(&row, 1);
        report.summaries_created += count(&row, 3);
        report.summaries_merged += count(&row, 4);
        report.daily_created += count(&row, 5);
        report.daily_merged += count(&row, 6);
        if archived > 0 {
            report.batches += 1;
        }
        tracing::debug!(
            archived,
            total = report.archived,
            batches = report.batches,
            "retention batch committed"
        );
        match row.get::<_, Option<NaiveDateTime>>(2) {
            Some(last) if archived >= u64::from(config.batch_size) => from = last,
            _ => break,
        }
    }

    // 3. expire
    if let Some(summary_cutoff) = report.summary_cutoff {
        let mut from = floor_timestamp();
        loop {
            if stop.is_cancelled() {
                report.complete = false;
                return Ok(());
            }
            let row = batch(
                conn,
                "expire",
                report,
                EXPIRE,
                &[&summary_cutoff, &from, &limit],
            )
            .await?;
            let expired = count(&row, 0);
            report.summaries_expired += expired;
            match row.get::<_, Option<NaiveDateTime>>(1) {
                Some(last) if expired >= u64::from(config.batch_size) => from = last,
                _ => break,
            }
        }
    }
    Ok(())
}

/// Runs one batch statement (which returns one row of counts) in its own transaction, and
/// commits it.
async fn batch(
    conn: &mut Object,
    step: &'static str,
    report: &Report,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<tokio_postgres::Row, RetentionError> {
    let err = |e: tokio_postgres::Error| db_error(step, e, report);
    let tx = conn.transaction().await.map_err(err)?;
    tx.batch_execute(BATCH_SETTINGS).await.map_err(err)?;
    let stmt = tx.prepare_cached(sql).await.map_err(err)?;
    let row = tx.query_one(&stmt, params).await.map_err(err)?;
    tx.commit().await.map_err(err)?;
    Ok(row)
}

async fn dry_run_counts(conn: &mut Object, report: &mut Report) -> Result<(), RetentionError> {
    let err = |e: tokio_postgres::Error, r: &Report| db_error("dry run", e, r);
    let tx = conn
        .build_transaction()
        .read_only(true)
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .start()
        .await
        .map_err(|e| err(e, report))?;
    tx.batch_execute("SET LOCAL statement_timeout = '600s'")
        .await
        .map_err(|e| err(e, report))?;
    let row = tx
        .query_one(DRY_RUN, &[&report.detail_cutoff, &report.summary_cutoff])
        .await
        .map_err(|e| err(e, report))?;
    tx.rollback().await.map_err(|e| err(e, report))?;
    report.resolved = count(&row, 0);
    report.archived = count(&row, 1);
    report.summaries_created = count(&row, 2);
    report.summaries_merged = count(&row, 3);
    report.daily_created = count(&row, 4);
    report.daily_merged = count(&row, 5);
    report.summaries_expired = count(&row, 6);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Smallest t with t^4 >= 2^k, i.e. ceil(2^(k/4)), in exact integer arithmetic.
    fn bound(k: u32) -> u128 {
        let target = 1u128 << k;
        let mut t = (2f64.powf(f64::from(k) / 4.0).ceil() as u128).saturating_sub(2);
        while t.pow(4) < target {
            t += 1;
        }
        t
    }

    #[test]
    fn every_copy_of_the_histogram_bounds_in_the_migration_is_ceil_2_pow_k_over_4() {
        let sql = include_str!("../../../sql/0004_retention_archive.sql");
        let expected: Vec<u128> = (0..124).map(bound).collect();
        let mut copies = 0;
        for (start, _) in sql.match_indices("'{1,") {
            let body = &sql[start + 2..];
            let end = body.find('}').expect("closing brace");
            let values: Vec<u128> = body[..end]
                .split(',')
                .map(|v| v.parse().expect("integer"))
                .collect();
            assert_eq!(values, expected, "bounds literal #{copies}");
            copies += 1;
        }
        assert_eq!(copies, 2, "bucket function and quantile function");
        // The last bucket is the int4 maximum, so every duration_ms has a bucket.
        assert!(expected[123] < i32::MAX as u128);
        assert!(bound(124) > i32::MAX as u128);
    }

    #[test]
    fn shipped_configs_set_retention_per_environment() {
        let main = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("proxy.toml");
        let load = |env: Option<&str>| {
            crate::Config::load_with(&main, env, &|_| None)
                .unwrap_or_else(|e| panic!("{env:?}: {e}"))
                .retention
        };
        let hourly = Some(Duration::from_secs(3600));
        let base = load(None);
        assert_eq!(
            (
                base.detail_days,
                base.summary_days,
                base.batch_size,
                base.interval
            ),
            (30, None, 5000, hourly)
        );
        let prod = load(Some("production"));
        assert_eq!(
            (prod.detail_days, prod.summary_days, prod.interval),
            (30, None, hourly)
        );
        let dev = load(Some("development"));
        assert_eq!((dev.detail_days, dev.summary_days), (7, Some(90)));
        assert_eq!(load(Some("test")).interval, None);
    }

    fn config(detail_days: u32, summary_days: Option<u32>) -> RetentionConfig {
        RetentionConfig {
            detail_days,
            summary_days,
            batch_size: 10,
            interval: None,
        }
    }

    fn at(s: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f").expect("timestamp")
    }

    #[test]
    fn cutoffs_are_whole_days_before_now() {
        let c = cutoffs(&config(30, Some(400)), at("2025-03-31 12:00:00.5")).expect("in range");
        assert_eq!(c.detail, at("2025-03-01 12:00:00.5"));
        assert_eq!(c.summary, Some(at("2024-02-25 12:00:00.5")));
        assert!(cutoffs(&config(30, None), at("2025-03-31 00:00:00"))
            .expect("in range")
            .summary
            .is_none());
        assert!(matches!(
            cutoffs(&config(30, None), at("-4712-01-02 00:00:00")),
            Err(RetentionError::OutOfRange(_))
        ));
    }

    #[test]
    fn report_says_what_was_done() {
        let now = at("2025-03-31 00:00:00");
        let mut r = Report::new(now, cutoffs(&config(30, None), now).expect("range"), false);
        r.archived = 12;
        r.batches = 2;
        r.resolved = 1;
        let text = r.to_string();
        assert!(text.contains("as of 2025-03-31T00:00:00Z"), "{text}");
        assert!(text.contains("before 2025-03-01T00:00:00Z"), "{text}");
        assert!(
            text.contains("12 detail rows (deleted), in 2 batches"),
            "{text}"
        );
        assert!(text.contains("kept forever"), "{text}");
        assert!(r.changed_anything());
        r.dry_run = true;
        assert!(r.to_string().contains("dry run: nothing changed"));
    }
}
