//! Reads behind the agent bundles (`crate::insight`): failure counts of a workflow and
//! error code, the latest successful attempt before a failure, the failed attempts of a window
//! and a sample of successful requests. Each is bounded: a row limit here, the pool's
//! `statement_timeout` (admin.statement_timeout) for time. Values from callers are bind
//! parameters; status literals are constants so the partial indexes match.

use chrono::NaiveDateTime;
use tokio_postgres::GenericClient;

use super::query::{trace_row, QueryError, TRACE_COLUMNS};
use crate::trace::TraceRow;

/// How often a workflow failed with one error code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureCounts {
    pub last_day: i64,
    pub last_week: i64,
    /// The first failure with this code still stored (retention may have removed older ones).
    pub first_seen: Option<NaiveDateTime>,
}

/// `idx_traces_failures` (workflow_id, requested_at) WHERE failed: only this workflow's failures
/// are read. `error_code IS NOT DISTINCT FROM $2` so a failure without a code counts too.
pub const FAILURE_COUNTS_SQL: &str = "SELECT \
     count(*) FILTER (WHERE requested_at >= $3::timestamp - interval '1 day'), \
     count(*) FILTER (WHERE requested_at >= $3::timestamp - interval '7 days'), \
     min(requested_at) \
     FROM communication_traces \
     WHERE workflow_id = $1 AND overall_status = 'failed' \
       AND error_code IS NOT DISTINCT FROM $2 AND requested_at <= $3";

pub async fn failure_counts(
    client: &impl GenericClient,
    workflow_id: &str,
    error_code: Option<&str>,
    now: NaiveDateTime,
) -> Result<FailureCounts, QueryError> {
    let row = client
        .query_one(FAILURE_COUNTS_SQL, &[&workflow_id, &error_code, &now])
        .await?;
    Ok(FailureCounts {
        last_day: row.try_get(0)?,
        last_week: row.try_get(1)?,
        first_seen: row.try_get(2)?,
    })
}

/// The newest successful attempt of a workflow before a time: `idx_traces_workflow_id`
/// read backwards, the status taken from its INCLUDE columns.
pub fn last_success_sql() -> String {
    format!(
        "SELECT {TRACE_COLUMNS} FROM communication_traces \
         WHERE workflow_id = $1 AND overall_status = 'success' AND requested_at <= $2 \
         ORDER BY requested_at DESC, id DESC LIMIT 1"
    )
}

pub async fn last_success(
    client: &impl GenericClient,
    workflow_id: &str,
    before: NaiveDateTime,
) -> Result<Option<TraceRow>, QueryError> {
    let rows = client
        .query(&last_success_sql(), &[&workflow_id, &before])
        .await?;
    Ok(rows.first().map(trace_row).transpose()?)
}

/// One failed attempt, without payloads: what grouping needs.
#[derive(Debug, Clone, PartialEq)]
pub struct FailedAttempt {
    pub trace_id: String,
    pub workflow_id: String,
    pub error_code: Option<String>,
    pub error_detail: Option<String>,
    pub requested_at: NaiveDateTime,
}

/// Failed attempts of a window, newest first (`idx_traces_failures_by_time`, sql/0009).
pub const FAILURES_IN_WINDOW_SQL: &str = "SELECT trace_id, workflow_id, error_code, \
     left(error_detail, 2000), requested_at FROM communication_traces \
     WHERE overall_status = 'failed' AND requested_at >= $1 AND requested_at < $2 \
     ORDER BY requested_at DESC, id DESC LIMIT $3";

/// At most `max` failed attempts of `[since, until)`, newest first.
pub async fn failures_in_window(
    client: &impl GenericClient,
    since: NaiveDateTime,
    until: NaiveDateTime,
    max: i64,
) -> Result<Vec<FailedAttempt>, QueryError> {
    let rows = client
        .query(FAILURES_IN_WINDOW_SQL, &[&since, &until, &max])
        .await?;
    rows.iter()
        .map(|r| {
            Ok(FailedAttempt {
                trace_id: r.try_get(0)?,
                workflow_id: r.try_get(1)?,
                error_code: r.try_get(2)?,
                error_detail: r.try_get(3)?,
                requested_at: r.try_get(4)?,
            })
        })
        .collect::<Result<_, tokio_postgres::Error>>()
        .map_err(QueryError::from)
}

/// A successful request: its payload and duration.
#[derive(Debug, Clone, PartialEq)]
pub struct SuccessSample {
    pub request_payload: Option<serde_json::Value>,
    pub duration_ms: Option<i32>,
    pub requested_at: NaiveDateTime,
}

/// The newest successful attempts of a workflow (`idx_traces_workflow_id` backwards).
pub const SUCCESS_SAMPLE_SQL: &str = "SELECT request_payload, duration_ms, requested_at \
     FROM communication_traces WHERE workflow_id = $1 AND overall_status = 'success' \
     ORDER BY requested_at DESC, id DESC LIMIT $2";

pub async fn success_sample(
    client: &impl GenericClient,
    workflow_id: &str,
    max: i64,
) -> Result<Vec<SuccessSample>, QueryError> {
    let rows = client
        .query(SUCCESS_SAMPLE_SQL, &[&workflow_id, &max])
        .await?;
    rows.iter()
        .map(|r| {
            Ok(SuccessSample {
                request_payload: r.try_get(0)?,
                duration_ms: r.try_get(1)?,
                requested_at: r.try_get(2)?,
            })
        })
        .collect::<Result<_, tokio_postgres::Error>>()
        .map_err(QueryError::from)
}
