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

/// The DATA-002 columns, in [`TraceRow`] order.
pub const TRACE_COLUMNS: &str = "id, trace_id, execution_id, attempt_number, source_service, \
    destination_service, workflow_id, action, user_id, requested_at, responded_at, duration_ms, \
    request_payload, response_payload, overall_status, error_code, error_detail, n8n_execution_id";

/// [`TRACE_COLUMNS`], with the payload columns read as NULL when they are not wanted (they are
/// by far the widest part of a row; not reading them keeps `payloads=none` cheap).
fn columns(payloads: bool) -> &'static str {
    if payloads {
        TRACE_COLUMNS
    } else {
        "id, trace_id, execution_id, attempt_number, source_service, \
         destination_service, workflow_id, action, user_id, requested_at, responded_at, \
         duration_ms, NULL::jsonb, NULL::jsonb, overall_status, error_code, error_detail, \
         n8n_execution_id"
    }
}

/// A failed query, split by what the caller should tell its user.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The server cancelled the statement (`statement_timeout`).
    #[error("query cancelled after the statement timeout")]
    Timeout,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<tokio_postgres::Error> for QueryError {
    fn from(e: tokio_postgres::Error) -> Self {
        if e.code() == Some(&SqlState::QUERY_CANCELED) {
            QueryError::Timeout
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
/// (`idx_traces_trace_attempt`), so the attempt number alone is a stable order, read straight
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
    let mut totals = StatsRow {
        key: None,
        count: 0,
        success: 0,
        failed: 0,
        unfinished: 0,
        failure_rate: None,
        p50_duration_ms: None,
        p95_duration_ms: None,
    };
    let mut groups = Vec::new();
    let mut groups_total = 0;
    for r in &rows {
        let count: i64 = r.try_get("n")?;
        let success: i64 = r.try_get("ok")?;
        let failed: i64 = r.try_get("failed")?;
        let finished = success + failed;
        let row = StatsRow {
            key: None,
            count,
            success,
            failed,
            unfinished: count - finished,
            failure_rate: (finished > 0).then(|| failed as f64 / finished as f64),
            p50_duration_ms: r.try_get("p50")?,
            p95_duration_ms: r.try_get("p95")?,
        };
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
