//! Reads of stored traces: DATA-002's "Query Patterns" (getTraceChain, getRecentFailures,
//! getUserHistory), the DATA-004 execution grouping, a filtered search with keyset pagination and
//! duration/failure statistics. Used by the admin API (`crate::api`) and the `traces` CLI alike.
//!
//! Every value that comes from a caller is a bind parameter. The only text spliced into SQL is
//! chosen from fixed whitelists (column lists, `overall_status` literals, the stats group column),
//! never taken from input. Which index serves each pattern is listed in
//! `sql/0006_query_indexes.sql` and asserted with `EXPLAIN` in `tests/it/api.rs`.

use base64::Engine;
use chrono::NaiveDateTime;
use serde::Serialize;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{GenericClient, Row};
use uuid::Uuid;

use super::StoreError;
use crate::trace::{Status, TraceRow};

/// The DATA-002 columns, then trace-proxy's HTTP columns (sql/0002) and n8n's account of the
/// execution (sql/0010), in [`TraceRow`] order.
pub const TRACE_COLUMNS: &str = "id, trace_id, execution_id, attempt_number, source_service, \
    destination_service, workflow_id, action, user_id, requested_at, responded_at, duration_ms, \
    request_payload, response_payload, overall_status, error_code, error_detail, n8n_execution_id, \
    http_method, http_target, http_status, n8n_execution";

/// [`TRACE_COLUMNS`], with the payload columns read as NULL when they are not wanted (they are
/// by far the widest part of a row; not reading them keeps `payloads=none` cheap).
fn columns(payloads: bool) -> &'static str {
    if payloads {
        TRACE_COLUMNS
    } else {
        "id, trace_id, execution_id, attempt_number, source_service, \
         destination_service, workflow_id, action, user_id, requested_at, responded_at, \
         duration_ms, NULL::jsonb, NULL::jsonb, overall_status, error_code, error_detail, \
         n8n_execution_id, http_method, http_target, http_status, n8n_execution"
    }
}

/// A failed query, split by what the caller should tell its user.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The server cancelled the statement (`statement_timeout`).
    #[error("query cancelled after the statement timeout")]
    Timeout,
    /// PostgreSQL refused a value of the query itself (SQLSTATE class 22, e.g. a time out of
    /// range): the asker's input, not the store.
    #[error("a value of the query is out of range: {0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<tokio_postgres::Error> for QueryError {
    fn from(e: tokio_postgres::Error) -> Self {
        if e.code() == Some(&SqlState::QUERY_CANCELED) {
            QueryError::Timeout
        } else if e.code().is_some_and(|c| c.code().starts_with("22")) {
            let message = e.as_db_error().map(|d| d.message().to_owned());
            QueryError::Invalid(message.unwrap_or_else(|| "data exception".into()))
        } else {
            QueryError::Store(e.into())
        }
    }
}

impl From<deadpool_postgres::PoolError> for QueryError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        QueryError::Store(e.into())
    }
}

/// A row selected with [`TRACE_COLUMNS`].
pub fn trace_row(r: &Row) -> Result<TraceRow, tokio_postgres::Error> {
    Ok(TraceRow {
        id: r.try_get(0)?,
        trace_id: r.try_get(1)?,
        execution_id: r.try_get(2)?,
        attempt_number: r.try_get(3)?,
        source_service: r.try_get(4)?,
        destination_service: r.try_get(5)?,
        workflow_id: r.try_get(6)?,
        action: r.try_get(7)?,
        user_id: r.try_get(8)?,
        requested_at: r.try_get(9)?,
        responded_at: r.try_get(10)?,
        duration_ms: r.try_get(11)?,
        request_payload: r.try_get(12)?,
        response_payload: r.try_get(13)?,
        overall_status: r.try_get(14)?,
        error_code: r.try_get(15)?,
        error_detail: r.try_get(16)?,
        n8n_execution_id: r.try_get(17)?,
        http_method: r.try_get(18)?,
        http_target: r.try_get(19)?,
        http_status: r.try_get(20)?,
        n8n_execution: r.try_get(21)?,
    })
}

fn trace_rows(rows: &[Row]) -> Result<Vec<TraceRow>, tokio_postgres::Error> {
    rows.iter().map(trace_row).collect()
}

/// getTraceChain: every attempt of a trace, ordered by attempt number.
pub async fn trace_chain(
    client: &impl GenericClient,
    trace_id: &str,
) -> Result<Vec<TraceRow>, StoreError> {
    let sql = format!(
        "SELECT {TRACE_COLUMNS} FROM communication_traces WHERE trace_id = $1 \
         ORDER BY attempt_number, requested_at, id"
    );
    let rows = client.query(&sql, &[&trace_id]).await?;
    rows.iter()
        .map(|r| trace_row(r).map_err(StoreError::from))
        .collect()
}

/// The SQL of [`trace_chain_limited`]. `(trace_id, attempt_number)` is unique
/// (`idx_traces_trace_id`), so the attempt number alone is a stable order, read straight
/// off that index.
pub fn chain_sql(payloads: bool) -> String {
    format!(
        "SELECT {} FROM communication_traces WHERE trace_id = $1 \
         ORDER BY attempt_number LIMIT $2",
        columns(payloads)
    )
}

/// getTraceChain, at most `max` attempts (ask for one more than you show to learn whether there
/// are more).
pub async fn trace_chain_limited(
    client: &impl GenericClient,
    trace_id: &str,
    payloads: bool,
    max: i64,
) -> Result<Vec<TraceRow>, QueryError> {
    let rows = client
        .query(&chain_sql(payloads), &[&trace_id, &max])
        .await?;
    Ok(trace_rows(&rows)?)
}

/// A position in a newest-first list: the last row shown. Opaque to clients (base64url).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub requested_at: NaiveDateTime,
    pub id: Uuid,
}

/// Why a cursor was not accepted.
#[derive(Debug, thiserror::Error)]
#[error("`cursor` is not a cursor this API returned")]
pub struct BadCursor;

impl Cursor {
    /// The cursor continuing after `row`.
    pub fn after(row: &TraceRow) -> Cursor {
        Cursor {
            requested_at: row.requested_at,
            id: row.id,
        }
    }

    pub fn encode(&self) -> String {
        let micros = self.requested_at.and_utc().timestamp_micros();
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(format!("v1:{micros}:{}", self.id.simple()))
    }

    pub fn decode(s: &str) -> Result<Cursor, BadCursor> {
        if s.len() > 128 {
            return Err(BadCursor);
        }
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| BadCursor)?;
        let text = std::str::from_utf8(&bytes).map_err(|_| BadCursor)?;
        let mut parts = text.split(':');
        let (Some("v1"), Some(micros), Some(id), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(BadCursor);
        };
        let micros: i64 = micros.parse().map_err(|_| BadCursor)?;
        let requested_at = chrono::DateTime::from_timestamp_micros(micros)
            .ok_or(BadCursor)?
            .naive_utc();
        if !crate::trace::storable(&requested_at) {
            return Err(BadCursor);
        }
        let id = Uuid::parse_str(id).map_err(|_| BadCursor)?;
        Ok(Cursor { requested_at, id })
    }
}

/// One page of a newest-first list.
#[derive(Debug, Clone, Copy)]
pub struct Page {
    /// Rows wanted; the query reads one more to learn whether more follow.
    pub limit: i64,
    /// Continue after this row.
    pub after: Option<Cursor>,
    /// Read the payload columns.
    pub payloads: bool,
}

/// Rows of one page plus whether more follow.
#[derive(Debug, Clone)]
pub struct PageRows {
    pub rows: Vec<TraceRow>,
    pub has_more: bool,
}

impl PageRows {
    fn from(mut rows: Vec<TraceRow>, limit: i64) -> PageRows {
        let limit = usize::try_from(limit).unwrap_or(0);
        let has_more = rows.len() > limit;
        rows.truncate(limit);
        PageRows { rows, has_more }
    }
}

/// The SQL of a newest-first list under `conditions` (`$n` placeholders already numbered);
/// `next` is the next free placeholder number: the keyset and the limit take the following ones.
fn newest_first_sql(conditions: &[String], next: usize, page: &Page) -> String {
    let mut conditions = conditions.to_vec();
    let mut n = next;
    if page.after.is_some() {
        // A row comparison: served as one index range by (…, requested_at, id) indexes.
        conditions.push(format!("(requested_at, id) < (${}, ${})", n, n + 1));
        n += 2;
    }
    let filter = if conditions.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", conditions.join(" AND "))
    };
    format!(
        "SELECT {} FROM communication_traces {filter} \
         ORDER BY requested_at DESC, id DESC LIMIT ${n}",
        columns(page.payloads)
    )
}

async fn newest_first(
    client: &impl GenericClient,
    conditions: &[String],
    mut params: Vec<Box<dyn ToSql + Sync + Send>>,
    page: &Page,
) -> Result<PageRows, QueryError> {
    let sql = newest_first_sql(conditions, params.len() + 1, page);
    if let Some(c) = page.after {
        params.push(Box::new(c.requested_at));
        params.push(Box::new(c.id));
    }
    params.push(Box::new(page.limit.saturating_add(1)));
    let refs: Vec<&(dyn ToSql + Sync)> = params
        .iter()
        .map(|p| p.as_ref() as &(dyn ToSql + Sync))
        .collect();
    let rows = client.query(&sql, &refs).await?;
    Ok(PageRows::from(trace_rows(&rows)?, page.limit))
}

/// The SQL of [`recent_failures`]. The status is a literal so the planner can match the
/// partial index `idx_traces_failures` for any plan, generic ones included.
pub fn failures_sql(page: &Page) -> String {
    newest_first_sql(
        &[
            "workflow_id = $1".into(),
            "overall_status = 'failed'".into(),
        ],
        2,
        page,
    )
}

/// getRecentFailures: the newest failed attempts of a workflow.
pub async fn recent_failures(
    client: &impl GenericClient,
    workflow_id: &str,
    page: &Page,
) -> Result<PageRows, QueryError> {
    newest_first(
        client,
        &[
            "workflow_id = $1".into(),
            "overall_status = 'failed'".into(),
        ],
        vec![Box::new(workflow_id.to_owned())],
        page,
    )
    .await
}

/// The SQL of [`user_history`] (`idx_traces_user_history`).
pub fn history_sql(page: &Page) -> String {
    newest_first_sql(&["user_id = $1".into()], 2, page)
}

/// getUserHistory: a user's attempts, newest first.
pub async fn user_history(
    client: &impl GenericClient,
    user_id: &str,
    page: &Page,
) -> Result<PageRows, QueryError> {
    newest_first(
        client,
        &["user_id = $1".into()],
        vec![Box::new(user_id.to_owned())],
        page,
    )
    .await
}

/// The SQL of [`execution_traces`] (`idx_traces_execution_id`).
pub fn execution_sql(payloads: bool) -> String {
    format!(
        "SELECT {} FROM communication_traces WHERE execution_id = $1 \
         ORDER BY requested_at, trace_id, attempt_number, id LIMIT $2",
        columns(payloads)
    )
}

/// Every attempt of one workflow execution (DATA-004), oldest first, at most `max`.
pub async fn execution_traces(
    client: &impl GenericClient,
    execution_id: Uuid,
    payloads: bool,
    max: i64,
) -> Result<Vec<TraceRow>, QueryError> {
    let rows = client
        .query(&execution_sql(payloads), &[&execution_id, &max])
        .await?;
    Ok(trace_rows(&rows)?)
}

/// Filters of [`search`]; all optional, combined with AND.
#[derive(Debug, Clone, Default)]
pub struct SearchFilter {
    pub status: Option<Status>,
    pub workflow_id: Option<String>,
    pub user_id: Option<String>,
    /// `destination_service`.
    pub destination: Option<String>,
    pub error_code: Option<String>,
    /// `requested_at >= since`.
    pub since: Option<NaiveDateTime>,
    /// `requested_at < until`.
    pub until: Option<NaiveDateTime>,
}

fn search_parts(f: &SearchFilter) -> (Vec<String>, Vec<Box<dyn ToSql + Sync + Send>>) {
    let mut conditions = Vec::new();
    let mut params: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
    if let Some(s) = f.status {
        // A fixed literal (see the module note): lets `status=failed` use the partial index.
        conditions.push(format!("overall_status = '{}'", s.as_str()));
    }
    let mut text = |column: &str, v: &Option<String>| {
        if let Some(v) = v {
            params.push(Box::new(v.clone()));
            conditions.push(format!("{column} = ${}", params.len()));
        }
    };
    text("workflow_id", &f.workflow_id);
    text("user_id", &f.user_id);
    text("destination_service", &f.destination);
    text("error_code", &f.error_code);
    if let Some(t) = f.since {
        params.push(Box::new(t));
        conditions.push(format!("requested_at >= ${}", params.len()));
    }
    if let Some(t) = f.until {
        params.push(Box::new(t));
        conditions.push(format!("requested_at < ${}", params.len()));
    }
    (conditions, params)
}

/// The SQL of [`search`] for this filter and page.
pub fn search_sql(f: &SearchFilter, page: &Page) -> String {
    let (conditions, params) = search_parts(f);
    newest_first_sql(&conditions, params.len() + 1, page)
}

/// Attempts matching `filter`, newest first, keyset-paginated.
pub async fn search(
    client: &impl GenericClient,
    filter: &SearchFilter,
    page: &Page,
) -> Result<PageRows, QueryError> {
    let (conditions, params) = search_parts(filter);
    newest_first(client, &conditions, params, page).await
}

/// What [`stats`] groups by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    Workflow,
    Destination,
    ErrorCode,
}

impl GroupBy {
    pub fn parse(s: &str) -> Option<GroupBy> {
        match s {
            "workflow" => Some(GroupBy::Workflow),
            "destination" => Some(GroupBy::Destination),
            "errorCode" => Some(GroupBy::ErrorCode),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            GroupBy::Workflow => "workflow",
            GroupBy::Destination => "destination",
            GroupBy::ErrorCode => "errorCode",
        }
    }

    fn column(self) -> &'static str {
        match self {
            GroupBy::Workflow => "workflow_id",
            GroupBy::Destination => "destination_service",
            GroupBy::ErrorCode => "error_code",
        }
    }
}

/// Counts and durations of one group (or of the whole window).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatsRow {
    /// The group's value (`null` for rows without an error code); absent for the totals.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<Option<String>>,
    pub count: i64,
    pub success: i64,
    pub failed: i64,
    /// `pending` and `in_progress`.
    pub unfinished: i64,
    /// failed / (success + failed); `null` when nothing finished.
    pub failure_rate: Option<f64>,
    /// Of the attempts with a duration (nearest rank, an observed value).
    pub p50_duration_ms: Option<i32>,
    pub p95_duration_ms: Option<i32>,
}

impl StatsRow {
    /// Nothing counted.
    pub fn empty() -> StatsRow {
        StatsRow {
            key: None,
            count: 0,
            success: 0,
            failed: 0,
            unfinished: 0,
            failure_rate: None,
            p50_duration_ms: None,
            p95_duration_ms: None,
        }
    }
}

/// A [`StatsRow`] (without key) from the columns `n`, `ok`, `failed`, `p50`, `p95`.
fn stats_row(r: &Row) -> Result<StatsRow, tokio_postgres::Error> {
    let count: i64 = r.try_get("n")?;
    let success: i64 = r.try_get("ok")?;
    let failed: i64 = r.try_get("failed")?;
    let finished = success + failed;
    Ok(StatsRow {
        key: None,
        count,
        success,
        failed,
        unfinished: count - finished,
        failure_rate: (finished > 0).then(|| failed as f64 / finished as f64),
        p50_duration_ms: r.try_get("p50")?,
        p95_duration_ms: r.try_get("p95")?,
    })
}

/// Stats of a window: the totals, the largest groups (by count, then key) and whether groups
/// were left out.
#[derive(Debug, Clone)]
pub struct Stats {
    pub totals: StatsRow,
    pub groups: Vec<StatsRow>,
    pub groups_total: i64,
}

/// The SQL of [`stats`] (a `requested_at` range: `idx_traces_requested_at`). `GROUPING SETS`
/// computes the groups and the window's totals in one pass.
pub fn stats_sql(group_by: GroupBy) -> String {
    let col = group_by.column();
    format!(
        "SELECT grouping({col}) AS is_total, {col} AS key, count(*) AS n, \
             count(*) FILTER (WHERE overall_status = 'success') AS ok, \
             count(*) FILTER (WHERE overall_status = 'failed') AS failed, \
             percentile_disc(0.5) WITHIN GROUP (ORDER BY duration_ms) AS p50, \
             percentile_disc(0.95) WITHIN GROUP (ORDER BY duration_ms) AS p95, \
             count(*) OVER () - 1 AS groups_total \
         FROM communication_traces WHERE requested_at >= $1 AND requested_at < $2 \
         GROUP BY GROUPING SETS (({col}), ()) \
         ORDER BY is_total DESC, n DESC, key NULLS LAST LIMIT $3"
    )
}

/// Counts, failure rate and p50/p95 duration of attempts requested in `[since, until)`, per
/// group, the `max_groups` largest groups.
pub async fn stats(
    client: &impl GenericClient,
    since: NaiveDateTime,
    until: NaiveDateTime,
    group_by: GroupBy,
    max_groups: i64,
) -> Result<Stats, QueryError> {
    let limit = max_groups.saturating_add(1);
    let rows = client
        .query(&stats_sql(group_by), &[&since, &until, &limit])
        .await?;
    let mut totals = StatsRow::empty();
    let mut groups = Vec::new();
    let mut groups_total = 0;
    for r in &rows {
        let row = stats_row(r)?;
        if r.try_get::<_, i32>("is_total")? == 1 {
            groups_total = r.try_get("groups_total")?;
            totals = row;
        } else {
            groups.push(StatsRow {
                key: Some(r.try_get("key")?),
                ..row
            });
        }
    }
    Ok(Stats {
        totals,
        groups,
        groups_total,
    })
}

/// The spans the explorer's overview shows, each cut into equal buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Window {
    /// 60 buckets of a minute.
    Hour,
    /// 96 buckets of 15 minutes.
    Day,
    /// 168 buckets of an hour.
    Week,
}

impl Window {
    pub fn parse(s: &str) -> Option<Window> {
        match s {
            "hour" => Some(Window::Hour),
            "day" => Some(Window::Day),
            "week" => Some(Window::Week),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Window::Hour => "hour",
            Window::Day => "day",
            Window::Week => "week",
        }
    }

    /// The width of one bucket.
    pub fn bucket(self) -> chrono::TimeDelta {
        match self {
            Window::Hour => chrono::TimeDelta::minutes(1),
            Window::Day => chrono::TimeDelta::minutes(15),
            Window::Week => chrono::TimeDelta::hours(1),
        }
    }

    /// Buckets in the window.
    pub fn buckets(self) -> i32 {
        match self {
            Window::Hour => 60,
            Window::Day => 96,
            Window::Week => 168,
        }
    }

    /// The window ending at the bucket boundary at or after `now`: `[since, until)`. Aligned, so
    /// the same buckets come back all through one bucket's time.
    pub fn ending_at(self, now: NaiveDateTime) -> (NaiveDateTime, NaiveDateTime) {
        let width = self.bucket().num_microseconds().unwrap_or(1).max(1);
        let t = now.and_utc().timestamp_micros();
        let until_micros =
            t.div_euclid(width) * width + if t.rem_euclid(width) == 0 { 0 } else { width };
        let until =
            chrono::DateTime::from_timestamp_micros(until_micros).map_or(now, |u| u.naive_utc());
        (until - self.bucket() * self.buckets(), until)
    }
}

/// One bucket of the overview: its start and its counts.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Bucket {
    #[serde(serialize_with = "iso")]
    pub start: NaiveDateTime,
    #[serde(flatten)]
    pub stats: StatsRow,
}

fn iso<S: serde::Serializer>(t: &NaiveDateTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&crate::trace::iso_utc(t))
}

/// A workflow or error code ranked by its failures.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Ranked {
    pub key: String,
    pub count: i64,
    pub failed: i64,
}

/// Attempts not final yet, whenever they started.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Unfinished {
    pub pending: i64,
    pub in_progress: i64,
    #[serde(serialize_with = "iso_opt")]
    pub oldest_requested_at: Option<NaiveDateTime>,
}

fn iso_opt<S: serde::Serializer>(t: &Option<NaiveDateTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => iso(t, s),
        None => s.serialize_none(),
    }
}

/// What the overview (and a workflow's page) shows of one window.
#[derive(Debug, Clone)]
pub struct Overview {
    pub totals: StatsRow,
    /// Every bucket of the window, oldest first, empty ones included.
    pub buckets: Vec<Bucket>,
    pub top_workflows: Vec<Ranked>,
    pub top_error_codes: Vec<Ranked>,
}

/// `AND workflow_id = $n` when the overview is of one workflow.
fn workflow_condition(workflow: bool, n: usize) -> String {
    match workflow {
        true => format!(" AND workflow_id = ${n}"),
        false => String::new(),
    }
}

/// The SQL of the overview's buckets and totals: `$1` since, `$2` until, `$3` bucket width in
/// seconds, `$4` the workflow when `workflow`. One pass over a `requested_at` range
/// (`idx_traces_requested_at`, or `idx_traces_workflow_id` for one workflow); `GROUPING
/// SETS` gives the window's totals in the same pass.
pub fn overview_buckets_sql(workflow: bool) -> String {
    format!(
        "SELECT grouping(b) AS is_total, b, count(*) AS n, \
             count(*) FILTER (WHERE overall_status = 'success') AS ok, \
             count(*) FILTER (WHERE overall_status = 'failed') AS failed, \
             percentile_disc(0.5) WITHIN GROUP (ORDER BY duration_ms) AS p50, \
             percentile_disc(0.95) WITHIN GROUP (ORDER BY duration_ms) AS p95 \
         FROM (SELECT floor(extract(epoch FROM requested_at - $1)::float8 / $3::float8)::int AS b, \
                      overall_status, duration_ms \
               FROM communication_traces \
               WHERE requested_at >= $1 AND requested_at < $2{}) w \
         GROUP BY GROUPING SETS ((b), ())",
        workflow_condition(workflow, 4)
    )
}

/// The SQL of the overview's top failing workflows and error codes: `$1` since, `$2` until,
/// `$3` how many of each, `$4` the workflow when `workflow`. Same range as the buckets.
pub fn overview_top_sql(workflow: bool) -> String {
    format!(
        "SELECT by_code, key, n, failed FROM ( \
             SELECT by_code, key, n, failed, \
                    row_number() OVER (PARTITION BY by_code ORDER BY failed DESC, n DESC, key) AS rank \
             FROM (SELECT grouping(workflow_id) AS by_code, \
                          CASE WHEN grouping(workflow_id) = 1 THEN error_code ELSE workflow_id END AS key, \
                          count(*) AS n, count(*) FILTER (WHERE overall_status = 'failed') AS failed \
                   FROM communication_traces \
                   WHERE requested_at >= $1 AND requested_at < $2{} \
                   GROUP BY GROUPING SETS ((workflow_id), (error_code))) g \
             WHERE failed > 0 AND key IS NOT NULL) r \
         WHERE rank <= $3 ORDER BY by_code, rank",
        workflow_condition(workflow, 4)
    )
}

/// The SQL of the attempts not final now (`$1` the workflow when `workflow`): the partial
/// index of unresolved rows (`idx_traces_unresolved_by_instance`) or `idx_traces_status`.
pub fn unfinished_sql(workflow: bool) -> String {
    format!(
        "SELECT count(*) FILTER (WHERE overall_status = 'pending') AS pending, \
                count(*) FILTER (WHERE overall_status = 'in_progress') AS in_progress, \
                min(requested_at) AS oldest \
         FROM communication_traces \
         WHERE overall_status IN ('pending', 'in_progress'){}",
        workflow_condition(workflow, 1)
    )
}

/// The overview of `window` ending at `until` (aligned by [`Window::ending_at`]), of every
/// workflow or of one, with the `top` workflows and error codes by failures. The two statements
/// are pipelined on one connection.
pub async fn overview(
    client: &impl GenericClient,
    window: Window,
    until: NaiveDateTime,
    workflow_id: Option<&str>,
    top: i64,
) -> Result<Overview, QueryError> {
    let since = until - window.bucket() * window.buckets();
    let width = window.bucket().num_seconds() as f64;
    let wf = workflow_id.is_some();
    let (buckets_sql, top_sql) = (overview_buckets_sql(wf), overview_top_sql(wf));
    let mut bucket_params: Vec<&(dyn ToSql + Sync)> = vec![&since, &until, &width];
    let mut top_params: Vec<&(dyn ToSql + Sync)> = vec![&since, &until, &top];
    if let Some(w) = &workflow_id {
        bucket_params.push(w);
        top_params.push(w);
    }
    let (bucket_rows, top_rows) = tokio::try_join!(
        client.query(&buckets_sql, &bucket_params),
        client.query(&top_sql, &top_params),
    )?;
    let mut totals = StatsRow::empty();
    let mut buckets: Vec<Bucket> = (0..window.buckets())
        .map(|i| Bucket {
            start: since + window.bucket() * i,
            stats: StatsRow::empty(),
        })
        .collect();
    for r in &bucket_rows {
        let stats = stats_row(r)?;
        if r.try_get::<_, i32>("is_total")? == 1 {
            totals = stats;
        } else if let Some(b) = r
            .try_get::<_, Option<i32>>("b")?
            .and_then(|b| usize::try_from(b).ok())
            .and_then(|b| buckets.get_mut(b))
        {
            b.stats = stats;
        }
    }
    let (mut top_workflows, mut top_error_codes) = (Vec::new(), Vec::new());
    for r in &top_rows {
        let ranked = Ranked {
            key: r.try_get("key")?,
            count: r.try_get("n")?,
            failed: r.try_get("failed")?,
        };
        match r.try_get::<_, i32>("by_code")? {
            0 => top_workflows.push(ranked),
            _ => top_error_codes.push(ranked),
        }
    }
    Ok(Overview {
        totals,
        buckets,
        top_workflows,
        top_error_codes,
    })
}

/// The attempts pending or in progress now, of every workflow or of one.
pub async fn unfinished(
    client: &impl GenericClient,
    workflow_id: Option<&str>,
) -> Result<Unfinished, QueryError> {
    let sql = unfinished_sql(workflow_id.is_some());
    let rows = match &workflow_id {
        Some(w) => client.query(&sql, &[w]).await?,
        None => client.query(&sql, &[]).await?,
    };
    Ok(match rows.first() {
        Some(r) => Unfinished {
            pending: r.try_get("pending")?,
            in_progress: r.try_get("in_progress")?,
            oldest_requested_at: r.try_get("oldest")?,
        },
        None => Unfinished {
            pending: 0,
            in_progress: 0,
            oldest_requested_at: None,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_and_rejects_garbage() {
        let c = Cursor {
            requested_at: chrono::DateTime::from_timestamp_micros(1_750_000_000_123_456)
                .expect("time")
                .naive_utc(),
            id: Uuid::now_v7(),
        };
        assert_eq!(Cursor::decode(&c.encode()).expect("decodes"), c);
        for bad in ["", "x", "djE6MTI6bm90LWEtdXVpZA", &"A".repeat(200)] {
            assert!(Cursor::decode(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn search_sql_binds_every_value() {
        let f = SearchFilter {
            status: Some(Status::Failed),
            workflow_id: Some("w'; DROP TABLE x; --".into()),
            user_id: Some("u".into()),
            destination: None,
            error_code: Some("TIMEOUT".into()),
            since: Some(NaiveDateTime::default()),
            until: None,
        };
        let page = Page {
            limit: 10,
            after: Some(Cursor {
                requested_at: NaiveDateTime::default(),
                id: Uuid::nil(),
            }),
            payloads: false,
        };
        let sql = search_sql(&f, &page);
        assert!(!sql.contains("DROP"), "{sql}");
        assert!(sql.contains("workflow_id = $1"), "{sql}");
        assert!(sql.contains("requested_at >= $4"), "{sql}");
        assert!(sql.contains("(requested_at, id) < ($5, $6)"), "{sql}");
        assert!(sql.ends_with("LIMIT $7"), "{sql}");
    }
}
