//! Reads of stored traces (DATA-002 "Query Patterns").

use tokio_postgres::{GenericClient, Row};

use super::StoreError;
use crate::trace::TraceRow;

/// The DATA-002 columns, in [`TraceRow`] order.
pub const TRACE_COLUMNS: &str = "id, trace_id, execution_id, attempt_number, source_service, \
    destination_service, workflow_id, action, user_id, requested_at, responded_at, duration_ms, \
    request_payload, response_payload, overall_status, error_code, error_detail, n8n_execution_id";

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
